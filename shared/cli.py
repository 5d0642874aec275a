"""``python -m shared`` (installed as ``straddle``): the administrator's command line.

Every command reads the same app settings as the function app (environment variables, or a
``local.settings.json`` in the current folder). Bad input is one line on stderr and exit code 2;
a Dataverse or Azure failure is one line and exit code 1; ``--json`` output is stable for
scripts. No command prints an email address, except ``explain`` the one it was asked about.
The use cases live in ``shared.admin``; this module parses, calls and prints.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlparse

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class CommandError(Exception):
    """Bad input or a missing precondition: one line, exit 2."""


class CommandFailed(Exception):
    """The outside world failed (Dataverse, Azure, the local host): one line, exit 1."""


def load_local_settings(path: Path = Path("local.settings.json")) -> None:
    """Fills the environment from local.settings.json "Values" (the environment wins), as Core Tools does."""
    if not path.is_file():
        return
    try:
        values = json.loads(path.read_text()).get("Values", {})
    except (OSError, ValueError) as exc:
        raise CommandError(f"{path} is not valid JSON: {exc}") from None
    for key, value in values.items():
        if isinstance(value, str) and value != "":
            os.environ.setdefault(key, value)


def _container():
    from shared import bootstrap

    return bootstrap.container()


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False))


def _stored_mappings(c: Any, required: bool = False) -> Any:
    """The imported mappings, or None (with ``required``: a one-line error saying how to import)."""
    from shared.domain.mappings import Mappings

    doc = c.tables().mappings.load()
    if doc is None and required:
        raise CommandError("no mappings imported yet (straddle mappings import FILE)")
    return Mappings.from_dict(doc) if doc else None


# --- mappings ------------------------------------------------------------------------------------

def cmd_mappings_import(args: argparse.Namespace) -> int:
    from shared.admin import import_mappings, summary

    try:
        doc = json.loads(Path(args.file).read_text())
    except OSError as exc:
        raise CommandError(f"cannot read {args.file}: {exc.strerror}") from None
    except ValueError as exc:
        raise CommandError(f"{args.file} is not valid JSON: {exc}") from None
    c = _container()
    store = None if args.dry_run else c.tables().mappings
    mappings = import_mappings(doc, c.dataverse(), store)
    if args.json:
        _print_json({"imported": not args.dry_run, "mappings": mappings.to_dict()})
    else:
        print(("checked (dry run): " if args.dry_run else "imported: ") + summary(mappings))
    return EXIT_OK


def cmd_mappings_export(args: argparse.Namespace) -> int:
    from shared.admin import export_mappings

    doc = export_mappings(_container().tables().mappings)
    if doc is None:
        raise CommandError("no mappings imported yet (python -m shared mappings import FILE)")
    text = json.dumps(doc, indent=2) + "\n"
    if args.file:
        Path(args.file).write_text(text)
        print(f"wrote {args.file}")
    else:
        sys.stdout.write(text)
    return EXIT_OK


def cmd_mappings_discover(args: argparse.Namespace) -> int:
    from shared.admin import discover_mappings
    from shared.domain.mappings import parse_mappings_file, resolve_mappings

    if args.out and Path(args.out).is_dir():
        raise CommandError(f"{args.out} is a folder; give a file name")
    client = _container().dataverse()
    lists, topics, purposes = client.marketing_lists(), client.topics(), client.purposes()
    found = discover_mappings(lists, topics, purposes, mode=args.mode, threshold=args.threshold)
    doc = found["mappings"]
    if doc is not None:
        # The proposal must import as written: check it the way `mappings import` will.
        resolve_mappings(parse_mappings_file(doc), lists, topics, purposes)
    text = json.dumps(doc, indent=2) + "\n" if doc is not None else None
    if text is not None and args.out:
        try:
            Path(args.out).write_text(text)
        except OSError as exc:
            raise CommandError(f"cannot write {args.out}: {exc.strerror}") from None
    if args.json:
        _print_json({**found, "written": args.out if (doc is not None and args.out) else None})
    else:
        # Without --out the file goes to standard output, so the report goes to standard error.
        report = sys.stdout if args.out else sys.stderr
        brands = len(doc["brands"]) if doc else 0
        print(f"matched {len(found['matched'])} list(s) to topics in {brands} brand(s) ({found['mode']}, "
              f"threshold {found['threshold']}):", file=report)
        for m in found["matched"]:
            print(f"  [{m['brand']}] {m['list']!r} -> {m['topic']!r}  {m['why']}", file=report)
        for o in found["opt_out_lists"]:
            print(f"  [{o['brand']}] opt-out list {o['list']!r}", file=report)
        for label, key in (("lists", "unmatched_lists"), ("topics", "unmatched_topics"),
                           ("opt-out-like lists", "unused_opt_out_lists")):
            if found[key]:
                print(f"unmatched {label}: " + ", ".join(repr(n) for n in found[key]), file=report)
        if doc is None:
            print("nothing matched: no mappings file written (lower --threshold, or write it by hand: "
                  "docs/mappings.md)", file=report)
        elif args.out:
            print(f"wrote {args.out}: review it, then: straddle mappings import {args.out}", file=report)
        else:
            sys.stdout.write(text)
    return EXIT_OK if doc is not None else EXIT_FAILED


# --- webhooks ------------------------------------------------------------------------------------

def _print_webhook_status(status: dict) -> None:
    e = status["endpoint"]
    if e is None:
        print("endpoint: not registered")
    else:
        print(f"endpoint: {e['name']} {e['url'] or ''} ({e['auth_type']})")
    for s in status["steps"]:
        print(f"  {s['state']:<18} {s['step']}" + (f"  ({s['detail']})" if s["detail"] else ""))
    for s in status["extra_steps"]:
        print(f"  {'not needed':<18} {s}")
    print("ok: every step the sync needs is registered" if status["ok"] else
          "missing: run straddle webhooks register --url URL")


def _email_columns(c: Any) -> tuple[str, ...] | None:
    from shared.adapters.settings import SettingsError

    try:
        m = _stored_mappings(c)
    except SettingsError:
        return None  # no storage configured: the default columns
    return m.email_columns if m else None


def cmd_webhooks_register(args: argparse.Namespace) -> int:
    from shared.admin import register_webhooks, webhook_status

    c = _container()
    key = args.function_key or os.environ.get("STRADDLE_FUNCTION_KEY")
    s = c.settings
    if not key and not (s.webhook_secret_header and s.webhook_secret):
        raise CommandError("a function key is needed: --function-key KEY or STRADDLE_FUNCTION_KEY "
                           "(or set WEBHOOK_SECRET_HEADER and WEBHOOK_SECRET)")
    columns = _email_columns(c)
    client = c.dataverse()
    result = register_webhooks(client, args.url, function_key=key, secret_header=s.webhook_secret_header,
                               secret=s.webhook_secret, email_columns=columns)
    status = webhook_status(client, args.url, email_columns=columns)
    counts = {"endpoint_created": result.endpoint_created, "created_steps": result.created_steps,
              "updated_steps": result.updated_steps, "created_images": result.created_images,
              "updated_images": result.updated_images}
    if args.json:
        _print_json({"registered": True, **counts, "status": status})
    else:
        print(f"registered: endpoint {'created' if result.endpoint_created else 'updated'}, "
              f"{result.created_steps} step(s) created, {result.updated_steps} updated, "
              f"{result.created_images} image(s) created, {result.updated_images} updated")
        _print_webhook_status(status)
    return EXIT_OK if status["ok"] else EXIT_FAILED


def cmd_webhooks_status(args: argparse.Namespace) -> int:
    from shared.admin import webhook_status

    c = _container()
    status = webhook_status(c.dataverse(), args.url, email_columns=_email_columns(c))
    if args.json:
        _print_json(status)
    else:
        _print_webhook_status(status)
    return EXIT_OK if status["ok"] else EXIT_FAILED


def cmd_webhooks_remove(args: argparse.Namespace) -> int:
    from shared.admin import WEBHOOK_NAME

    removed = _container().dataverse().remove_webhook(args.url or WEBHOOK_NAME)
    if args.json:
        _print_json({"removed_rows": removed})
    else:
        print(f"removed {removed} row(s) (endpoint, steps, images)" if removed else "nothing registered")
    return EXIT_OK


# --- explain -------------------------------------------------------------------------------------

_ADDRESS = re.compile(r"^[^@\s]+@[^@\s]+$")


def cmd_explain(args: argparse.Namespace) -> int:
    from shared.admin import explain

    email = args.email.strip()
    if not _ADDRESS.match(email) or len(email) > 320:
        raise CommandError("EMAIL must be a single email address, with one @ and no spaces")
    c = _container()
    client = c.dataverse()
    mappings = _stored_mappings(c)
    result = explain(email, client, mappings, c.tables().ledger)
    if args.json:
        _print_json(result)
        return EXIT_OK
    print(f"{result['email']}")
    people = result["contacts"] + result["leads"]
    if not people:
        print("  no contact or lead has this address")
    for p in people:
        flags = [f for f in ("donotbulkemail", "donotemail") if p[f]]
        print(f"  {p['table']} {p['id']}{'' if p['active'] else ' (inactive)'}: in {', '.join(p['email_columns'])}"
              f"; flags: {', '.join(flags) or 'none'}"
              + (f"; {p['other_addresses']} other address(es)" if p["other_addresses"] else ""))
        for l in p["lists"]:
            mark = f"  [{l['brand']}: {l['role']}]" if l["mapped"] else ""
            print(f"      list {l['name']!r}{mark}")
    print("consent rows (newest first):" if result["consent"] else "consent rows: none")
    for r in result["consent"]:
        what = f"topic {r['topic']!r} of {r['purpose']!r}" if r["topic"] else f"purpose {r['purpose']!r}"
        print(f"  {r['value']:<10} {what}; source {r['source'] or '-'}; modified {r['modified_on']}"
              + ("" if r["active"] else "; inactive") + (f"; reason {r['reason']!r}" if r["reason"] else ""))
    if result["mappings"] is None:
        print("rules: no mappings imported, nothing to check")
    else:
        print(f"rules ({result['mappings']}):")
        for r in result["rules"]:
            if r["kind"] == "list-topic":
                subject = f"list {r['list']!r} / topic {r['topic']!r}"
            elif r["kind"] == "purpose":
                subject = f"purpose {r['purpose']!r}"
            else:
                subject = f"opt-out list {r['list']!r}"
            print(f"  {r['status']:<12} [{r['brand']}] {subject}")
        for a in result["pending"]:
            print(f"  pending {a['rule']}: {a['action']}")
        if result["pending_elsewhere"]:
            print(f"  pending: {result['pending_elsewhere']} change(s) on this person's other addresses "
                  "or people sharing them")
        if not result["closure_complete"]:
            print("  (the check stopped before reading everyone linked to this address)")
        print("  consistent" if result["consistent"] else "  not consistent: the sync or reconcile will fix it")
    _print_timeline(result.get("timeline") or ())
    print("ledger (newest first):" if result["ledger"] else "ledger: nothing recorded")
    for h in result["ledger"] or ():
        print(f"  {h['recorded_at']} {h['rule']:<6} {h['outcome']:<9} {h['target_system']} {h['target_table']} "
              f"{h['target_id'] or ''}: {h['action']}" + (f" ({h['detail']})" if h["detail"] else ""))
    return EXIT_OK


def _print_timeline(timeline) -> None:
    """The person's re-consents: when, against which opt-outs (with the evidence of their time), the verdict."""
    if not timeline:
        return
    print("timeline (the person's own opt-ins met by opt-outs):")
    for t in timeline:
        print(f"  {t['scope']}: opted in {t['reconsented_at']} from {t['source'] or '-'}: {t['verdict']}")
        for j in t["against"]:
            when = f"{'at' if j['dated'] else 'at or before'} {j['at']}" if j["at"] else "time unknown"
            print(f"      vs {j['opt_out']}: {when} ({j['evidence']})"
                  + ("; remembered" if j["remembered"] else "") + ("; older" if j["stands"] else "; wins"))
        print(f"      {t['why']}")


# --- dead letters --------------------------------------------------------------------------------

def _dead_letters(c: Any) -> Any:
    from shared.adapters.deadletters import dead_letters_for

    return dead_letters_for(c.settings, os.environ.get("STRADDLE_LOCAL_HOST"), os.environ.get("STRADDLE_LOCAL_HOST_KEY"))


def cmd_dlq_list(args: argparse.Namespace) -> int:
    port = _dead_letters(_container())
    items = port.list(args.max)
    if args.json:
        _print_json({"queues": list(port.queues), "dead_letters": [d.to_dict() for d in items]})
        return EXIT_OK
    if not items:
        print(f"no dead letters in {' or '.join(port.queues)}")
    for d in items:
        print(f"{d.enqueued_time or '-'}  {d.queue}  {d.message_id}  {d.kind or 'not a change event'}  "
              f"{d.reason or '-'}" + (f": {d.description}" if d.description else ""))
    return EXIT_OK


def cmd_dlq_replay(args: argparse.Namespace) -> int:
    c = _container()
    port = _dead_letters(c)
    report = port.replay(args.max)
    if args.json:
        _print_json({**report.to_dict(), "to": c.settings.changes_queue})
        return EXIT_OK
    print(f"replayed {report.replayed} message(s) to {c.settings.changes_queue}"
          + (f"; {report.skipped} left in place (not change events)" if report.skipped else ""))
    for m in report.messages:
        print(f"  {m.queue}  {m.message_id} -> {m.new_message_id}  {m.kind}")
    return EXIT_OK


# --- doctor --------------------------------------------------------------------------------------

def cmd_doctor(args: argparse.Namespace) -> int:
    from shared.adapters.settings import SettingsError
    from shared.admin import doctor
    from shared.telemetry import redact

    try:
        c = _container()
    except SettingsError as exc:
        checks = doctor(None, None, None, settings_error=str(exc))
    else:
        checks = doctor(c.settings, c.dataverse, c.tables, lambda: _dead_letters(c), webhook_url=args.url,
                        local_host=os.environ.get("STRADDLE_LOCAL_HOST"))
    for check in checks:  # a safety net: no check should quote data, but none may print an address
        check["detail"], check["fix"] = redact(check["detail"]), redact(check["fix"])
    failed = any(ch["status"] == "fail" for ch in checks)
    if args.json:
        _print_json({"ok": not failed, "checks": checks})
    else:
        for ch in checks:
            print(f"{ch['status'].upper():<4}  {ch['check']}" + (f": {ch['detail']}" if ch["detail"] else ""))
            if ch["status"] == "fail" and ch["fix"]:
                print(f"      fix: {ch['fix']}")
        print("all checks passed" if not failed else f"{sum(ch['status'] == 'fail' for ch in checks)} check(s) failed")
    return EXIT_FAILED if failed else EXIT_OK


# --- the parser ----------------------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    """Usage errors in one line (argparse prints the whole usage block)."""

    def error(self, message: str) -> NoReturn:
        print(f"straddle: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def _url(value: str) -> str:
    parsed = urlparse(value.strip())
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise argparse.ArgumentTypeError(f"not an absolute http(s) URL: {value!r}")
    return value.strip()


def _positive(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {value!r}") from None
    if n <= 0:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


def _ratio(value: str) -> float:
    try:
        x = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if not 0 < x <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {x}")
    return x


def build_parser() -> argparse.ArgumentParser:
    from shared.admin import DEFAULT_THRESHOLD

    parser = _Parser(prog="straddle", description="Straddle: one opt-out for Dynamics 365 Outbound and Real-time marketing.")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--verbose", action="store_true", help="log requests and retries on standard error")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_Parser)
    # --json and --verbose also after the command (`straddle doctor --json`); SUPPRESS keeps a
    # sub-command's default from hiding the global flag.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output")
    common.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="log requests and retries on standard error")

    mappings = commands.add_parser("mappings", help="import, export or discover the list-to-topic mappings")
    mappings_cmds = mappings.add_subparsers(dest="action", metavar="ACTION", required=True, parser_class=_Parser)
    imp = mappings_cmds.add_parser(parents=[common], name="import", help="validate a mappings file against Dataverse and store it")
    imp.add_argument("file", help="mappings JSON file (see docs/mappings.md)")
    imp.add_argument("--dry-run", action="store_true", help="validate and resolve only; store nothing")
    imp.set_defaults(handler=cmd_mappings_import)
    exp = mappings_cmds.add_parser(parents=[common], name="export", help="write the stored mappings as a file")
    exp.add_argument("file", nargs="?", help="where to write (default: standard output)")
    exp.set_defaults(handler=cmd_mappings_export)
    disc = mappings_cmds.add_parser(parents=[common], name="discover", help="propose list-to-topic pairs from Dataverse names and write a mappings file to review",
        description="Pairs subscription lists with topics of the same or a similar name (including the topics "
                    "Microsoft's subscription-list migration creates), one brand per purpose of the matched topics.")
    disc.add_argument("--out", metavar="FILE", help="where to write the proposal (default: standard output)")
    disc.add_argument("--mode", choices=("single-brand", "multi-brand"),
                      help="default: multi-brand when the matched topics span several purposes")
    disc.add_argument("--threshold", type=_ratio, default=DEFAULT_THRESHOLD,
                      help=f"lowest name similarity (difflib ratio) that pairs a list and a topic (default {DEFAULT_THRESHOLD})")
    disc.set_defaults(handler=cmd_mappings_discover)

    hooks = commands.add_parser("webhooks", help="register, check or remove the Dataverse webhook steps")
    hooks_cmds = hooks.add_subparsers(dest="action", metavar="ACTION", required=True, parser_class=_Parser)
    reg = hooks_cmds.add_parser(parents=[common], name="register", help="create or update the service endpoint and every step the sync needs")
    reg.add_argument("--url", type=_url, required=True, help="the dataverse_webhook function's URL")
    reg.add_argument("--function-key", help="the function key (default: env STRADDLE_FUNCTION_KEY); "
                                            "not needed with WEBHOOK_SECRET_HEADER/WEBHOOK_SECRET")
    reg.set_defaults(handler=cmd_webhooks_register)
    st = hooks_cmds.add_parser(parents=[common], name="status", help="show what is registered and what is missing (exit 1 if anything is)")
    st.add_argument("--url", type=_url, help="the endpoint's URL (default: the endpoint named Straddle)")
    st.set_defaults(handler=cmd_webhooks_status)
    rm = hooks_cmds.add_parser(parents=[common], name="remove", help="delete the service endpoint, its steps and images")
    rm.add_argument("--url", type=_url, help="the endpoint's URL (default: the endpoint named Straddle)")
    rm.set_defaults(handler=cmd_webhooks_remove)

    ex = commands.add_parser(parents=[common], name="explain", help="one person's state in both systems, the rules' verdict, their ledger")
    ex.add_argument("email", help="the email address to explain")
    ex.set_defaults(handler=cmd_explain)

    dlq = commands.add_parser("dlq", help="list or replay the dead-lettered change events")
    dlq_cmds = dlq.add_subparsers(dest="action", metavar="ACTION", required=True, parser_class=_Parser)
    ls = dlq_cmds.add_parser(parents=[common], name="list", help="peek at the dead letters of the changes and parking queues")
    ls.add_argument("--max", type=_positive, default=50, help="at most this many (default 50)")
    ls.set_defaults(handler=cmd_dlq_list)
    rp = dlq_cmds.add_parser(parents=[common], name="replay", help="resubmit dead letters to the changes queue (after a fix)")
    rp.add_argument("--max", type=_positive, default=100, help="at most this many (default 100)")
    rp.set_defaults(handler=cmd_dlq_replay)

    doc = commands.add_parser(parents=[common], name="doctor", help="check settings, Dataverse access, mappings, webhooks and storage")
    doc.add_argument("--url", type=_url, help="the webhook endpoint's URL to check (default: the endpoint named Straddle)")
    doc.set_defaults(handler=cmd_doctor)
    rec = commands.add_parser(parents=[common], name="reconcile",
                              help="find (and unless --dry-run heal) every drift between the two systems")
    rec.add_argument("--dry-run", action="store_true", help="report what it would fix; write nothing")
    rec.set_defaults(handler=cmd_reconcile)
    return parser


REPORT_LINES = (("found_D1", "D1 list member opted out of the list's topic (R2 missed)"),
                ("found_D2", "D2 opted out of a brand purpose, Outbound not in line (R4 missed)"),
                ("found_D3", "D3 global opt-out not reflected in Real-time marketing (R3 missed)"),
                ("found_D4", "D4 left a mapped list, topic not opted out (R1 missed)"),
                ("found_D5", "D5 in a brand opt-out list, not in line (R5 missed)"),
                ("found_follow_on", "   follow-on opt-outs of the sync's own removals"))


def cmd_reconcile(args: argparse.Namespace) -> int:
    from shared.reconcile import run_reconciliation

    progress = _progress_line() if sys.stderr.isatty() and not args.json else None
    report = run_reconciliation(_container(), dry_run=args.dry_run, progress=progress)
    if progress:
        print(file=sys.stderr)
    if args.json:
        _print_json(report)
    else:
        verb = "would fix" if args.dry_run else "fixed"
        print(f"run {report['run_id']} ({'dry run' if args.dry_run else 'healing'}): {report['status']}, "
              f"{report.get('duration_ms', 0) / 1000:.1f} s, {report.get('dataverse_requests', 0)} Dataverse requests")
        for key, text in REPORT_LINES:
            found = report.get(key, 0)
            fixed = report.get(key.replace("found_", "fixed_"), 0)
            print(f"  {text:72} found {found:6d}" + ("" if args.dry_run else f"  {verb} {fixed:6d}"))
        if report.get("failures"):
            print(f"  failures: {report['failures']} (see the ledger and the function log)")
        if report.get("oldest_unhealed_opt_out_hours") is not None:
            print(f"  oldest unhealed opt-out: {report['oldest_unhealed_opt_out_hours']} h")
        if report.get("note"):
            print(f"  note: {report['note']}")
    if report.get("status") == "no_mappings":
        raise CommandError("no mappings imported yet (python -m shared mappings import FILE)")
    return EXIT_OK if report.get("status") in ("succeeded", "running") else EXIT_FAILED


def _progress_line():
    """A one-line progress display on a terminal (stderr, rewritten in place)."""
    def show(stage: str, done: int, total: int | None) -> None:
        text = f"{stage}: {done}/{total}" if total else f"{stage}: {done}"
        sys.stderr.write("\r" + text.ljust(60))
        sys.stderr.flush()
    return show


def _configure_logging(verbose: bool) -> None:
    """Quiet by default: the adapters' warnings (retries) would otherwise reach stderr through
    logging's last-resort handler and break the one-line error promise."""
    import logging

    from shared.telemetry import install_redaction

    install_redaction()
    root = logging.getLogger()
    if verbose:
        if not any(isinstance(h, logging.StreamHandler) for h in root.handlers):
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
            root.addHandler(handler)
        root.setLevel(logging.INFO)
    elif not root.handlers:
        root.addHandler(logging.NullHandler())


def _fail(message: str, code: int) -> int:
    from shared.telemetry import redact

    print(f"straddle: {redact(message)}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    from shared.adapters.dataverse.errors import DataverseError
    from shared.adapters.deadletters import DeadLettersUnavailable
    from shared.adapters.settings import SettingsError
    from shared.domain.mappings import MappingsError
    from shared.ports import TransientError

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2, already printed)
        return int(exc.code or 0)
    handler: Callable[[argparse.Namespace], int] = args.handler
    _configure_logging(args.verbose)
    try:
        load_local_settings()
        return handler(args)
    except (CommandError, SettingsError, MappingsError, ValueError) as exc:
        return _fail(str(exc), EXIT_USAGE)
    except DataverseError as exc:
        # Dataverse's message can quote a filter value (an address): kind, status and code only.
        return _fail(f"Dataverse: {exc.status or ''} {exc.code or ''} {exc.kind or ''} {type(exc).__name__}"
                     .replace("  ", " ").strip(), EXIT_FAILED)
    except (CommandFailed, DeadLettersUnavailable, TransientError) as exc:
        return _fail(str(exc), EXIT_FAILED)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # Azure SDK and network errors: the type, never a traceback
        where = "Table Storage" if "azure.data.tables" in type(exc).__module__ or "azure.core" in type(exc).__module__ else "error"
        return _fail(f"{where}: {type(exc).__name__}", EXIT_FAILED)
