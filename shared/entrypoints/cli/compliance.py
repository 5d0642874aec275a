"""``compliance [export]``: did every opt-out meet its deadline; the auditor's CSV."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from shared.entrypoints.cli.common import EXIT_OK, CommandError, Parser, container, positive_number
from shared.entrypoints.cli.output import print_json, program


def register(commands: Any, flags: argparse.ArgumentParser) -> None:
    since_help = "a span back from now (90m, 24h, 7d, 2w) or an ISO 8601 moment (default 30d)"
    comp = commands.add_parser(parents=[flags], name="compliance",
                               help="did every opt-out meet its deadline: received, propagated, time to effect by "
                                    "rule and direction, open ones, breaches of 48 h and 10 business days; "
                                    "'compliance export' for an auditor's CSV")
    comp.add_argument("--since", default="30d", help=since_help)
    comp.add_argument("--deadline-hours", type=positive_number,
                      help="report opt-outs open longer than this (default: OPT_OUT_DEADLINE_HOURS, 24)")
    comp.set_defaults(handler=cmd_compliance, tsv_rows="by_rule")
    comp_cmds = comp.add_subparsers(dest="action", metavar="ACTION", parser_class=Parser)
    ex = comp_cmds.add_parser(parents=[flags], name="export",
                              help="one row per opt-out (pseudonym, given at, source, sides, effective at, rule) "
                                   "to a CSV file only you can read")
    ex.add_argument("--since", default="30d", help=since_help)
    ex.add_argument("--to", required=True, metavar="FILE.csv", help="the CSV file to write")
    ex.set_defaults(handler=cmd_compliance_export)


def _window(args: argparse.Namespace):
    from datetime import datetime, timezone

    from shared.service_layer.activity import parse_since

    now = datetime.now(timezone.utc)
    return parse_since(args.since, now), now



def cmd_compliance(args: argparse.Namespace) -> int:
    from shared.service_layer.compliance import compliance_lines, compliance_view

    since, now = _window(args)
    c = container()
    hours = args.deadline_hours or c.settings.opt_out_deadline_hours
    view = compliance_view(c.tables().compliance, since, now, hours)
    if args.json:
        print_json(view)
    else:
        print("\n".join(compliance_lines(view, program())))
    return EXIT_OK



def cmd_compliance_export(args: argparse.Namespace) -> int:
    from shared.service_layer.compliance import export_rows, write_export

    if Path(args.to).is_dir():
        raise CommandError(f"{args.to} is a folder; give a file name")
    since, now = _window(args)
    records = container().tables().compliance.window(since, now)
    try:
        count = write_export(args.to, export_rows(records, now))
    except OSError as exc:
        raise CommandError(f"cannot write {args.to}: {exc.strerror}") from None
    if args.json:
        print_json({"written": args.to, "rows": count, "since": since.isoformat(), "until": now.isoformat()})
    else:
        print(f"wrote {count} opt-out(s) given since {since:%Y-%m-%dT%H:%M:%SZ} to {args.to} "
              "(people pseudonymised, readable by you only)")
    return EXIT_OK

