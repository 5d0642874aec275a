"""``activity``: what the sync did, by rule and direction, its failures, dead letters and the oldest
opt-out not yet propagated."""
from __future__ import annotations

import argparse
from typing import Any

from shared.entrypoints.cli.common import EXIT_OK, container, dead_letters
from shared.entrypoints.cli.output import print_json, program


def register(commands: Any, flags: argparse.ArgumentParser) -> None:
    act = commands.add_parser(parents=[flags], name="activity",
                              help="what the sync did: changes by rule and direction, failures, dead letters, "
                                   "the oldest opt-out not yet propagated")
    act.add_argument("--since", default="24h", help="a span back from now (90m, 24h, 7d, 2w) or an ISO 8601 moment "
                                                    "(default 24h)")
    act.set_defaults(handler=cmd_activity, tsv_rows="by_rule")


def cmd_activity(args: argparse.Namespace) -> int:
    from datetime import datetime, timezone

    from shared.service_layer.activity import activity, activity_lines, parse_since

    now = datetime.now(timezone.utc)
    since = parse_since(args.since, now)
    c = container()
    tables = c.tables()
    view = activity(tables.ledger, since, now, dead_letters=lambda: dead_letters(c), runs=tables.runs)
    if args.json:
        print_json(view)
    else:
        print("\n".join(activity_lines(view, program())))
    return EXIT_OK

