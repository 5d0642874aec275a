"""``python -m shared`` (installed as ``straddle``): the administrator's command line.

Every command reads the same app settings as the function app (environment variables, or a
``local.settings.json`` in the current folder). Bad input is one line on stderr and exit code 2;
a Dataverse or Azure failure is one line and exit code 1; "not found" is exit code 3.
``--output json`` (``--json``) is stable for scripts, ``--output tsv`` feeds shell loops
(``shared.entrypoints.output``). No command prints an email address, except ``explain`` the one it was asked
about. The use cases live in ``shared.service_layer`` (one module each); this module parses, calls
and prints.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlparse

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
EXIT_NOT_FOUND = 3  # explain: neither system knows the address; runs show: no such run
#: This invocation's output format and tsv rows (set by main; one command per process).
_OUTPUT: dict[str, Any] = {}


class CommandError(Exception):
    """Bad input or a missing precondition: one line, exit 2."""


class CommandFailed(Exception):
    """The outside world failed (Dataverse, Azure, the local host): one line, exit 1."""


#: Where each app setting the command sees came from: "environment" or a local.settings.json path
#: (``doctor`` lists it, and the static-token refusal names it).
SETTING_SOURCES: dict[str, str] = {}
_LOADED: dict[str, str] = {}


def load_local_settings(path: Path = Path("local.settings.json")) -> None:
    """Fills the environment from local.settings.json "Values" (the environment wins), as Core Tools
    does, and records where each app setting came from."""
    from shared.adapters.settings import SETTINGS

    for key, value in _LOADED.items():  # a second run in one process (tests): the file's, not the environment's
        if os.environ.get(key) == value:
            del os.environ[key]
    _LOADED.clear()
    SETTING_SOURCES.clear()
    SETTING_SOURCES.update({st.name: "environment" for st in SETTINGS if os.environ.get(st.name, "").strip()})
    if not path.is_file():
        return
    try:
        values = json.loads(path.read_text()).get("Values", {})
    except (OSError, ValueError) as exc:
        raise CommandError(f"{path} is not valid JSON: {exc}") from None
    for key, value in values.items():
        if isinstance(value, str) and value != "" and key not in os.environ:
            os.environ[key] = _LOADED[key] = value
            if key in {st.name for st in SETTINGS}:
                SETTING_SOURCES[key] = str(path.resolve())


LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")
_ALLOW_STATIC_TOKEN = False


def is_local_url(url: str) -> bool:
    host = (urlparse(url).hostname or "").lower()
    return host in LOCAL_HOSTS or host.endswith(".localhost")


def refuse_dev_token(settings: Any) -> None:
    """A static token is a development shortcut: against a real environment it is almost always a
    local stack's settings picked up by mistake, so it needs --allow-static-token."""
    if _ALLOW_STATIC_TOKEN or not (settings.dataverse_access_token and settings.dataverse_url):
        return
    if is_local_url(settings.dataverse_url):
        return
    source = SETTING_SOURCES.get("DATAVERSE_ACCESS_TOKEN", "environment")
    source = "the environment" if source == "environment" else source
    raise CommandError(
        f"DATAVERSE_ACCESS_TOKEN (a static development token, from {source}) is set while DATAVERSE_URL is "
        f"{settings.dataverse_url}, not a local sandbox: unset it to sign in with Entra ID "
        "(client secret or managed identity), or pass --allow-static-token if you mean it")


_CONTAINER: Any = None


def _container():
    """The app's container, with storage failing fast: an administrator at a terminal should hear
    within seconds that an endpoint is unreachable, not after the SDK's two-minute retry budget."""
    global _CONTAINER
    from shared import bootstrap

    _CONTAINER = bootstrap.container()
    _CONTAINER.interactive = True
    refuse_dev_token(_CONTAINER.settings)
    return _CONTAINER


def _prog() -> str:
    """The program as the user invoked it (``straddle`` or ``python -m shared``), for messages."""
    return _OUTPUT.get("prog") or "straddle"


def _print_json(data: Any) -> None:
    """Machine-readable output: JSON, or with ``--output tsv`` tab-separated values (Azure CLI style)."""
    if _OUTPUT.get("format") == "tsv":
        from shared.entrypoints.output import tsv

        sys.stdout.write(tsv(data, _OUTPUT.get("rows")))
        return
    print(json.dumps(data, indent=2, ensure_ascii=False))


def _stored_mappings(c: Any, required: bool = False) -> Any:
    """The imported mappings, or None (with ``required``: a one-line error saying how to import)."""
    from shared.domain.mappings import Mappings

    doc = c.tables().mappings.load()
    if doc is None and required:
        raise CommandError(f"no mappings imported yet ({_prog()} mappings import FILE)")
    return Mappings.from_dict(doc) if doc else None


# --- mappings ------------------------------------------------------------------------------------

def cmd_mappings_import(args: argparse.Namespace) -> int:
    from shared.service_layer.mappings import import_mappings, mappings_changes, summary

    try:
        doc = json.loads(Path(args.file).read_text())
    except OSError as exc:
        raise CommandError(f"cannot read {args.file}: {exc.strerror}") from None
    except ValueError as exc:
        raise CommandError(f"{args.file} is not valid JSON: {exc}") from None
    c = _container()
    before = _stored_mappings(c)
    store = None if args.dry_run else c.tables().mappings
    mappings = import_mappings(doc, c.dataverse(), store)
    changes = mappings_changes(before, mappings)
    if args.json:
        _print_json({"imported": not args.dry_run, "mappings": mappings.to_dict(), "changes": changes})
    else:
        print(("checked (dry run): " if args.dry_run else "imported: ") + summary(mappings))
        _print_changes(changes, "against the stored mappings" + (" (nothing stored)" if args.dry_run else ""),
                       "same as the stored mappings")
    return EXIT_OK


def _print_changes(changes: Sequence[str], heading: str, nothing: str) -> None:
    if not changes:
        print(f"  {nothing}")
        return
    print(f"  changes {heading}:")
    for line in changes:
        print(f"    {line}")


def cmd_mappings_export(args: argparse.Namespace) -> int:
    from shared.service_layer.mappings import export_mappings

    doc = export_mappings(_container().tables().mappings)
    if doc is None:
        raise CommandError(f"no mappings imported yet ({_prog()} mappings import FILE)")
    text = json.dumps(doc, indent=2) + "\n"
    if args.file:
        Path(args.file).write_text(text)
        print(f"wrote {args.file}")
    else:
        sys.stdout.write(text)
    return EXIT_OK


def cmd_mappings_discover(args: argparse.Namespace) -> int:
    from shared.service_layer.discovery import discover_mappings
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
            print(f"wrote {args.out}: review it, then: {_prog()} mappings import {args.out}", file=report)
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
    if status.get("auth_problem"):
        print(f"authentication: FAILS: {status['auth_problem']}; fix: straddle webhooks register --url URL "
              "--function-key KEY (with the current WEBHOOK_SECRET_HEADER/WEBHOOK_SECRET)")
    print("ok: every step the sync needs is registered" if status["ok"] else
          f"missing: run {_prog()} webhooks register --url URL")


def _secret_header(settings: Any) -> str | None:
    return settings.webhook_secret_header if settings.webhook_secret else None


def _email_columns(c: Any) -> tuple[str, ...] | None:
    from shared.adapters.settings import SettingsError

    try:
        m = _stored_mappings(c)
    except SettingsError:
        return None  # no storage configured: the default columns
    return m.email_columns if m else None


def cmd_webhooks_register(args: argparse.Namespace) -> int:
    from shared.service_layer.webhooks import register_webhooks, webhook_changes, webhook_status

    c = _container()
    key = args.function_key or os.environ.get("STRADDLE_FUNCTION_KEY")
    s = c.settings
    if not key:  # dataverse_webhook takes a function key, whatever else is configured
        raise CommandError("the function key of dataverse_webhook is needed: --function-key KEY or STRADDLE_FUNCTION_KEY")
    columns = _email_columns(c)
    client = c.dataverse()
    if args.dry_run:
        auth = "HttpHeader" if (s.webhook_secret_header and s.webhook_secret) else "WebhookKey"
        changes = webhook_changes(webhook_status(client, email_columns=columns), args.url, auth)
        if args.json:
            _print_json({"registered": False, "dry_run": True, "changes": changes})
        else:
            print("dry run: nothing written; register would:" if changes else "dry run: nothing to change")
            for ch in changes:
                print(f"  {ch['action']:<7} {ch['what']}" + (f"  ({ch['detail']})" if ch["detail"] else ""))
        return EXIT_OK
    result = register_webhooks(client, args.url, function_key=key, secret_header=s.webhook_secret_header,
                               secret=s.webhook_secret, email_columns=columns)
    status = webhook_status(client, args.url, email_columns=columns, secret_header=_secret_header(s))
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
    from shared.service_layer.webhooks import webhook_status

    c = _container()
    status = webhook_status(c.dataverse(), args.url, email_columns=_email_columns(c),
                            secret_header=_secret_header(c.settings))
    if args.json:
        _print_json(status)
    else:
        _print_webhook_status(status)
    return EXIT_OK if status["ok"] else EXIT_FAILED


def cmd_webhooks_remove(args: argparse.Namespace) -> int:
    from shared.service_layer.webhooks import WEBHOOK_NAME, webhook_status

    client = _container().dataverse()
    if not args.yes:
        # Removing stops the sync: say what goes, then ask (or refuse without a terminal).
        status = webhook_status(client, args.url)
        e = status["endpoint"]
        if e is None:
            print("nothing registered")
            return EXIT_OK
        steps = sum(1 for st in status["steps"] if st["state"] != "missing") + len(status["extra_steps"])
        what = (f"endpoint {e['name']} ({e['url'] or 'no URL'}) and its {steps} step(s) with their images; "
                "Dataverse stops sending changes, so the sync stops until webhooks register")
        if not sys.stdin.isatty():
            raise CommandError(f"webhooks remove deletes the {what}: pass --yes to confirm")
        print(f"This deletes the {what}.", file=sys.stderr)
        answer = input("Remove? [y/N] ").strip().lower()
        if answer not in ("y", "yes"):
            print("not removed", file=sys.stderr)
            return EXIT_FAILED
    removed = client.remove_webhook(args.url or WEBHOOK_NAME)
    if args.json:
        _print_json({"removed_rows": removed})
    else:
        print(f"removed {removed} row(s) (endpoint, steps, images)" if removed else "nothing registered")
    return EXIT_OK


# --- explain -------------------------------------------------------------------------------------

_ADDRESS = re.compile(r"^[^@\s]+@[^@\s]+$")


def cmd_explain(args: argparse.Namespace) -> int:
    from shared.service_layer.explain import explain

    email = args.email.strip()
    if not _ADDRESS.match(email) or len(email) > 320:
        raise CommandError("EMAIL must be a single email address, with one @ and no spaces")
    c = _container()
    client = c.dataverse()
    mappings = _stored_mappings(c)
    result = explain(email, client, mappings, c.tables().ledger)
    # Neither world knows it: no contact, lead or consent row (a typo, or a person long gone).
    known = bool(result["contacts"] or result["leads"] or result["consent"])
    if args.json:
        _print_json({**result, "known": known})
        return EXIT_OK if known else EXIT_NOT_FOUND
    print(f"{result['email']}")
    if not known:
        print("  unknown: neither Outbound marketing (no contact or lead) nor Real-time marketing (no consent row) "
              "has this address")
        for h in result["ledger"] or ():
            print(f"  ledger {h['recorded_at']} {h['rule']} {h['outcome']}: {h['action_named']}")
        return EXIT_NOT_FOUND
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
              f"{h['target_id'] or ''}: {h['action_named']}" + (f" ({h['detail']})" if h["detail"] else "")
              + (f" [from person {h['carried_from']}]" if h.get("carried_from") else ""))
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
    if args.dry_run:
        # The selection replay makes: queue by queue, oldest first, up to --max change events;
        # what is not a change event is left in place and does not count.
        items, would = [], []
        for d in port.list(args.max + 1000):
            if len(would) >= args.max:
                break
            items.append(d)
            if d.kind:
                would.append(d)
        if args.json:
            _print_json({"dry_run": True, "to": c.settings.changes_queue, "would_replay": [d.to_dict() for d in would],
                         "would_skip": len(items) - len(would)})
            return EXIT_OK
        print(f"dry run: would replay {len(would)} message(s) to {c.settings.changes_queue}"
              + (f"; {len(items) - len(would)} left in place (not change events)" if len(items) > len(would) else ""))
        for d in would:
            print(f"  {d.queue}  {d.message_id}  {d.kind}  {d.reason or '-'}")
        return EXIT_OK
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
    from shared.service_layer.doctor import doctor
    from shared.telemetry import redact

    try:
        c = _container()
    except (SettingsError, CommandError) as exc:
        checks = doctor(None, None, None, settings_error=str(exc))
    else:
        checks = doctor(c.settings, c.dataverse, c.tables, lambda: _dead_letters(c), webhook_url=args.url,
                        local_host=os.environ.get("STRADDLE_LOCAL_HOST"))
    for check in checks:  # a safety net: no check should quote data, but none may print an address
        check["detail"], check["fix"] = redact(check["detail"]), redact(check["fix"])
        # The fixes name commands: as the user runs them (python -m shared or straddle).
        check["detail"], check["fix"] = (t.replace("straddle ", f"{_prog()} ") for t in (check["detail"], check["fix"]))
    failed = any(ch["status"] == "fail" for ch in checks)
    if args.json:
        _print_json({"ok": not failed, "checks": checks, "settings_sources": dict(sorted(SETTING_SOURCES.items()))})
    else:
        for ch in checks:
            print(f"{ch['status'].upper():<4}  {ch['check']}" + (f": {ch['detail']}" if ch["detail"] else ""))
            if ch["status"] == "fail" and ch["fix"]:
                print(f"      fix: {ch['fix']}")
        _print_sources()
        print("all checks passed" if not failed else f"{sum(ch['status'] == 'fail' for ch in checks)} check(s) failed")
    return EXIT_FAILED if failed else EXIT_OK


def _print_sources() -> None:
    """Which file or the environment each setting came from (the rest are defaults or unset)."""
    by_source: dict[str, list[str]] = {}
    for name, source in sorted(SETTING_SOURCES.items()):
        by_source.setdefault(source, []).append(name)
    if not by_source:
        print("settings from: none set (defaults only)")
    for source, names in by_source.items():
        print(f"settings from {source}: {', '.join(names)}")


# --- a view of what happened: runs, activity, the dry run's review file ---------------------------

class _Review:
    """The dry run's review file: every proposed change, one row per record (shared.service_layer.review)."""

    def __init__(self, path: str, fmt: str, names: dict[str, str], person: Callable[[str], str]):
        from shared.service_layer.review import CaseWriter

        # Written beside the target and moved into place only when the run finished: a failed
        # run leaves no half a review file that reads like a whole one.
        self.path, self._names, self._person = path, names, person
        self._partial = Path(path).with_name(Path(path).name + ".partial")
        try:
            # Owner only (0600) from the first byte: the file names people (pseudonyms, or addresses).
            self._partial.unlink(missing_ok=True)
            fd = os.open(self._partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            self._file = open(fd, "w", newline="", encoding="utf-8")
        except OSError as exc:
            raise CommandError(f"cannot write {path}: {exc.strerror}") from None
        self._writer = CaseWriter(self._file, fmt)

    @property
    def count(self) -> int:
        return self._writer.count

    def case(self, drift_class: str, action: Any) -> None:
        from shared.service_layer.review import describe_case

        self._writer.write(describe_case(drift_class, action, self._names, self._person))

    def close(self, complete: bool) -> None:
        if complete:
            self._writer.close()
        self._file.close()
        if complete:
            os.replace(self._partial, self.path)
        else:
            self._partial.unlink(missing_ok=True)


def add_review_arguments(rec: argparse.ArgumentParser) -> None:
    from shared.service_layer.review import FORMATS

    rec.add_argument("--changes", metavar="FILE",
                     help="with --dry-run: write every proposed change, one row per record, to FILE (.csv or .json) "
                          "for review; people appear as pseudonyms")
    rec.add_argument("--changes-format", choices=FORMATS, help="the file's format (default: from its extension)")
    rec.add_argument("--show-addresses", action="store_true",
                     help="with --changes: write email addresses instead of pseudonyms (the file then holds personal data)")


def open_review(args: argparse.Namespace, c: Any) -> "_Review | None":
    from shared.service_layer.review import format_for, names_of, pseudonymiser

    if not args.changes:
        if args.show_addresses or args.changes_format:
            raise CommandError("--show-addresses and --changes-format go with --changes FILE")
        return None
    if not args.dry_run:
        raise CommandError("--changes writes what a dry run proposes: add --dry-run (review, then run without it)")
    if Path(args.changes).is_dir():
        raise CommandError(f"{args.changes} is a folder; give a file name")
    fmt = format_for(args.changes, args.changes_format)
    mappings = _stored_mappings(c, required=True)
    person = (lambda e: e) if args.show_addresses else pseudonymiser(c.tables().ledger.partition_for)
    return _Review(args.changes, fmt, names_of(mappings), person)


def cmd_runs(args: argparse.Namespace) -> int:
    from shared.service_layer.runs import SUMMARY_COLUMNS, recent

    rows = recent(_container().tables().runs, args.max)
    if args.json:
        _print_json({"runs": rows})
        return EXIT_OK
    if not rows:
        print(f"no reconciliation runs stored yet (they are kept from healing runs: {_prog()} reconcile, "
              "or the nightly timer)")
        return EXIT_OK
    print(_columns(rows, SUMMARY_COLUMNS))
    return EXIT_OK


def cmd_runs_show(args: argparse.Namespace) -> int:
    from shared.service_layer.runs import find, report_lines, unhealed_lines, with_mismatches

    report = find(_container().tables().runs, args.run)
    if report is None:
        print(f"{_prog()}: no run {args.run!r} stored (list them: {_prog()} runs)", file=sys.stderr)
        return EXIT_NOT_FOUND
    if args.json:
        _print_json(with_mismatches(report))
        return EXIT_OK
    print("\n".join(report_lines(report, _prog())))
    print("\n".join(unhealed_lines(report)))
    return EXIT_OK


def cmd_activity(args: argparse.Namespace) -> int:
    from datetime import datetime, timezone

    from shared.service_layer.activity import activity, activity_lines, parse_since

    now = datetime.now(timezone.utc)
    since = parse_since(args.since, now)
    c = _container()
    tables = c.tables()
    view = activity(tables.ledger, since, now, dead_letters=lambda: _dead_letters(c), runs=tables.runs)
    if args.json:
        _print_json(view)
    else:
        print("\n".join(activity_lines(view, _prog())))
    return EXIT_OK


def _window(args: argparse.Namespace):
    from datetime import datetime, timezone

    from shared.service_layer.activity import parse_since

    now = datetime.now(timezone.utc)
    return parse_since(args.since, now), now


def cmd_compliance(args: argparse.Namespace) -> int:
    from shared.service_layer.compliance import compliance_lines, compliance_view

    since, now = _window(args)
    c = _container()
    hours = args.deadline_hours or c.settings.opt_out_deadline_hours
    view = compliance_view(c.tables().compliance, since, now, hours)
    if args.json:
        _print_json(view)
    else:
        print("\n".join(compliance_lines(view, _prog())))
    return EXIT_OK


def cmd_compliance_export(args: argparse.Namespace) -> int:
    from shared.service_layer.compliance import export_rows, write_export

    if Path(args.to).is_dir():
        raise CommandError(f"{args.to} is a folder; give a file name")
    since, now = _window(args)
    records = _container().tables().compliance.window(since, now)
    try:
        count = write_export(args.to, export_rows(records, now))
    except OSError as exc:
        raise CommandError(f"cannot write {args.to}: {exc.strerror}") from None
    if args.json:
        _print_json({"written": args.to, "rows": count, "since": since.isoformat(), "until": now.isoformat()})
    else:
        print(f"wrote {count} opt-out(s) given since {since:%Y-%m-%dT%H:%M:%SZ} to {args.to} "
              "(people pseudonymised, readable by you only)")
    return EXIT_OK


def _columns(rows: list[dict[str, Any]], columns: Sequence[str]) -> str:
    """Rows as a plain table: a header, then one aligned line per row."""
    cells = [[c.replace("_", " ") for c in columns]] + [["-" if r.get(c) is None else str(r.get(c)) for c in columns]
                                                        for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in cells)


def add_view_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    runs = commands.add_parser(parents=[common], name="runs", help="recent reconciliation runs, one line each; "
                               "'runs show RUN' for one")
    runs.add_argument("--max", type=_positive, default=10, help="at most this many runs, newest first (default 10)")
    runs.set_defaults(handler=cmd_runs, tsv_rows="runs")
    runs_cmds = runs.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser)
    ls = runs_cmds.add_parser(parents=[common], name="list", help="recent runs, one line each (the default)")
    ls.add_argument("--max", type=_positive, default=10, help="at most this many runs, newest first (default 10)")
    ls.set_defaults(handler=cmd_runs, tsv_rows="runs")
    show = runs_cmds.add_parser(parents=[common], name="show", help="one run's report and the changes it could not make")
    show.add_argument("run", help="the run id (from 'runs'), or 'latest'")
    show.set_defaults(handler=cmd_runs_show, tsv_rows="unhealed")
    act = commands.add_parser(parents=[common], name="activity",
                              help="what the sync did: changes by rule and direction, failures, dead letters, "
                                   "the oldest opt-out not yet propagated")
    act.add_argument("--since", default="24h", help="a span back from now (90m, 24h, 7d, 2w) or an ISO 8601 moment "
                                                    "(default 24h)")
    act.set_defaults(handler=cmd_activity, tsv_rows="by_rule")
    since_help = "a span back from now (90m, 24h, 7d, 2w) or an ISO 8601 moment (default 30d)"
    comp = commands.add_parser(parents=[common], name="compliance",
                               help="did every opt-out meet its deadline: received, propagated, time to effect by "
                                    "rule and direction, open ones, breaches of 48 h and 10 business days; "
                                    "'compliance export' for an auditor's CSV")
    comp.add_argument("--since", default="30d", help=since_help)
    comp.add_argument("--deadline-hours", type=_positive_float,
                      help="report opt-outs open longer than this (default: OPT_OUT_DEADLINE_HOURS, 24)")
    comp.set_defaults(handler=cmd_compliance, tsv_rows="by_rule")
    comp_cmds = comp.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser)
    ex = comp_cmds.add_parser(parents=[common], name="export",
                              help="one row per opt-out (pseudonym, given at, source, sides, effective at, rule) "
                                   "to a CSV file only you can read")
    ex.add_argument("--since", default="30d", help=since_help)
    ex.add_argument("--to", required=True, metavar="FILE.csv", help="the CSV file to write")
    ex.set_defaults(handler=cmd_compliance_export)


def add_examples(parser: argparse.ArgumentParser, prog: str | None = None, path: str = "") -> None:
    """Examples at the end of every command's --help (shared.entrypoints.output.EXAMPLES)."""
    from shared.entrypoints.output import examples_epilog

    prog = prog or parser.prog
    epilog = examples_epilog(path, prog)
    if epilog:
        parser.epilog = epilog
        parser.formatter_class = argparse.RawDescriptionHelpFormatter
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                add_examples(sub, prog, f"{path} {name}".strip())


# --- the parser ----------------------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    """Usage errors in one line (argparse prints the whole usage block)."""

    def error(self, message: str) -> NoReturn:
        print(f"{_prog()}: {message} (see {self.prog} --help)", file=sys.stderr)
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


def _positive_float(value: str) -> float:
    try:
        x = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if not x > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {value}")
    return x


def _ratio(value: str) -> float:
    try:
        x = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if not 0 < x <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {x}")
    return x


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    from shared.service_layer.discovery import DEFAULT_THRESHOLD

    from shared.entrypoints.output import FORMATS, prog_name, version

    parser = _Parser(prog=prog or prog_name(), description="Straddle: one opt-out for Dynamics 365 Outbound and Real-time marketing.")
    parser.add_argument("--output", "-o", choices=FORMATS, default="table",
                        help="table (default, for people), json (stable, for scripts) or tsv (tab-separated, no keys)")
    parser.add_argument("--json", dest="output", action="store_const", const="json", help="the same as --output json")
    parser.add_argument("--verbose", action="store_true",
                        help="log each Dataverse request (method, path, status, time) and retry on standard error")
    parser.add_argument("--version", action="version", version=f"straddle {version()}")
    parser.add_argument("--allow-static-token", action="store_true",
                        help="use DATAVERSE_ACCESS_TOKEN (a development token) against a non-local DATAVERSE_URL")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_Parser)
    # --json and --verbose also after the command (`straddle doctor --json`); SUPPRESS keeps a
    # sub-command's default from hiding the global flag.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--output", "-o", choices=FORMATS, default=argparse.SUPPRESS,
                        help="table (default), json or tsv")
    common.add_argument("--json", dest="output", action="store_const", const="json", default=argparse.SUPPRESS,
                        help="the same as --output json")
    common.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="log each Dataverse request and retry on standard error")

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
    reg.add_argument("--dry-run", action="store_true", help="show what would be created or updated; write nothing")
    reg.set_defaults(handler=cmd_webhooks_register)
    st = hooks_cmds.add_parser(parents=[common], name="status", help="show what is registered and what is missing (exit 1 if anything is)")
    st.add_argument("--url", type=_url, help="the endpoint's URL (default: the endpoint named Straddle)")
    st.set_defaults(handler=cmd_webhooks_status, tsv_rows="steps")
    rm = hooks_cmds.add_parser(parents=[common], name="remove", help="delete the service endpoint, its steps and images")
    rm.add_argument("--url", type=_url, help="the endpoint's URL (default: the endpoint named Straddle)")
    rm.add_argument("--yes", action="store_true",
                    help="do not ask (needed when not at a terminal): removing stops the sync")
    rm.set_defaults(handler=cmd_webhooks_remove)

    ex = commands.add_parser(parents=[common], name="explain", help="one person's state in both systems, the rules' verdict, their ledger")
    ex.add_argument("email", help="the email address to explain")
    ex.set_defaults(handler=cmd_explain)

    dlq = commands.add_parser("dlq", help="list or replay the dead-lettered change events")
    dlq_cmds = dlq.add_subparsers(dest="action", metavar="ACTION", required=True, parser_class=_Parser)
    ls = dlq_cmds.add_parser(parents=[common], name="list", help="peek at the dead letters of the changes and parking queues")
    ls.add_argument("--max", type=_positive, default=50, help="at most this many (default 50)")
    ls.set_defaults(handler=cmd_dlq_list, tsv_rows="dead_letters")
    rp = dlq_cmds.add_parser(parents=[common], name="replay", help="resubmit dead letters to the changes queue (after a fix)")
    rp.add_argument("--max", type=_positive, default=100, help="at most this many (default 100)")
    rp.add_argument("--dry-run", action="store_true", help="list what would be replayed; move nothing")
    rp.set_defaults(handler=cmd_dlq_replay)

    doc = commands.add_parser(parents=[common], name="doctor", help="check settings, Dataverse access, mappings, webhooks and storage")
    doc.add_argument("--url", type=_url, help="the webhook endpoint's URL to check (default: the endpoint named Straddle)")
    doc.set_defaults(handler=cmd_doctor, tsv_rows="checks")
    rec = commands.add_parser(parents=[common], name="reconcile",
                              help="find (and unless --dry-run heal) every drift between the two systems")
    rec.add_argument("--dry-run", action="store_true", help="report what it would fix; write nothing")
    add_review_arguments(rec)
    rec.set_defaults(handler=cmd_reconcile)
    add_view_commands(commands, common)
    add_examples(parser)
    return parser


def cmd_reconcile(args: argparse.Namespace) -> int:
    from shared.service_layer.reconcile import run_reconciliation
    from shared.service_layer.runs import report_lines, with_mismatches

    c = _container()
    review = open_review(args, c)
    progress = _progress_line() if sys.stderr.isatty() and not args.json else None
    try:
        report = run_reconciliation(c, dry_run=args.dry_run, progress=progress,
                                    cases=review.case if review else None)
    except BaseException:
        if review:
            review.close(complete=False)
        raise
    if review:
        review.close(complete=True)
    if progress:
        print(file=sys.stderr)
    if review:
        report = {**report, "changes_file": review.path, "changes_written": review.count}
    if args.json:
        _print_json(with_mismatches(report))
    else:
        print("\n".join(report_lines(report, _prog())))
        if review:
            print(f"wrote {review.count} proposed change(s) to {review.path} "
                  + ("(with addresses)" if args.show_addresses else "(people pseudonymised)"))
    if report.get("status") == "no_mappings":
        raise CommandError(f"no mappings imported yet ({_prog()} mappings import FILE)")
    return EXIT_OK if report.get("status") in ("succeeded", "running") else EXIT_FAILED


def _progress_line():
    """A one-line progress display on a terminal (stderr, rewritten in place)."""
    def show(stage: str, done: int, total: int | None) -> None:
        text = f"{stage}: {done}/{total}" if total else f"{stage}: {done}"
        sys.stderr.write("\r" + text.ljust(60))
        sys.stderr.flush()
    return show


_NOISY = ("azure", "urllib3", "msal")


def _configure_logging(verbose: bool) -> None:
    """Quiet by default: the adapters' warnings (retries) would otherwise reach stderr through
    logging's last-resort handler and break the one-line error promise. ``--verbose`` shows
    Straddle's own lines (each Dataverse request and retry), not the Azure SDK's HTTP headers."""
    from shared.telemetry import install_redaction

    install_redaction()
    root = logging.getLogger()
    if verbose:
        if not any(getattr(h, "straddle_verbose", False) for h in root.handlers):
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
            # The Azure SDK logs storage request and response headers at INFO: warnings only.
            handler.addFilter(lambda r: r.levelno >= logging.WARNING or not r.name.startswith(_NOISY))
            handler.straddle_verbose = True  # type: ignore[attr-defined]
            root.addHandler(handler)
        root.setLevel(logging.INFO)
        logging.getLogger("straddle.dataverse").setLevel(logging.DEBUG)  # each request
    elif not root.handlers:
        root.addHandler(logging.NullHandler())
    dataverse_log = logging.getLogger("straddle.dataverse")
    if not verbose and sys.stderr.isatty() and not any(isinstance(h, WaitNotice) for h in dataverse_log.handlers):
        dataverse_log.addHandler(WaitNotice(sys.stderr))


class WaitNotice(logging.Handler):
    """On a terminal, one line each time a command legitimately waits (Dataverse throttling or
    failing, retried within DATAVERSE_RETRY_BUDGET_SECONDS), so a wait never looks like a hang."""

    MIN_DELAY = 1.0  # shorter back-offs pass unnoticed

    def __init__(self, stream: Any):
        super().__init__(logging.WARNING)  # the transport logs each retry at that level
        self.stream = stream

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "event", None) != "dataverse.retry":
            return
        delay = float(getattr(record, "straddle_delay", 0) or 0)
        if delay < self.MIN_DELAY:
            return
        reason = str(getattr(record, "straddle_reason", ""))
        why = ("is throttling" if reason in ("429", "part throttled") else
               f"answered {reason}" if reason.isdigit() else f"did not answer ({reason})")
        self.stream.write(f"waiting {delay:.0f} s: Dataverse {why} ({getattr(record, 'straddle_kind', '')}); "
                          "retrying (Ctrl-C stops)\n")
        self.stream.flush()


def _fail(message: str, code: int) -> int:
    from shared.telemetry import redact

    print(f"{_prog()}: {redact(message)}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    from shared.adapters.dataverse.errors import DataverseError
    from shared.adapters.deadletters import DeadLettersUnavailable
    from shared.adapters.settings import SettingsError
    from shared.domain.mappings import MappingsError
    from shared.entrypoints.output import prog_name
    from shared.ports import TransientError

    _OUTPUT.clear()
    _OUTPUT["prog"] = prog or prog_name()
    parser = build_parser(_OUTPUT["prog"])
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2, already printed)
        return int(exc.code or 0)
    handler: Callable[[argparse.Namespace], int] = args.handler
    global _ALLOW_STATIC_TOKEN
    _ALLOW_STATIC_TOKEN = args.allow_static_token
    # Handlers ask args.json for "machine-readable"; _print_json then writes JSON or TSV.
    args.json = args.output in ("json", "tsv")
    _OUTPUT.update(format=args.output, rows=getattr(args, "tsv_rows", None))
    _configure_logging(args.verbose)
    try:
        load_local_settings()
        return _flushed(handler(args))
    except (CommandError, SettingsError, MappingsError, ValueError) as exc:
        return _fail(str(exc), EXIT_USAGE)
    except (CommandFailed, DeadLettersUnavailable) as exc:
        return _fail(str(exc), EXIT_FAILED)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return _stdout_closed()
    except Exception as exc:  # Dataverse, Azure SDK and network errors: what failed and what to do
        if isinstance(exc, TransientError) and isinstance(exc.__cause__, DataverseError):
            exc = exc.__cause__
        return _fail(_explain_failure(exc), EXIT_FAILED)


def _explain_failure(exc: BaseException) -> str:
    """One line: what failed (which URL or setting) and what to do (``shared.service_layer.failures.describe_failure``)."""
    from shared.service_layer.failures import describe_failure

    what, fix = describe_failure(exc, _storage_url())
    return f"{what}; {fix}" if fix else what


def _storage_url() -> str | None:
    """The Table Storage endpoint the command used, when it got as far as building it."""
    tables = getattr(_CONTAINER, "_tables", None)
    try:
        return tables.service.url.rstrip("/") if tables is not None else None
    except Exception:  # an error message must not fail on its way out
        return None


def _flushed(code: int) -> int:
    """Flushes standard output now, so a reader that went away is noticed here, not at exit."""
    sys.stdout.flush()
    return code


def _stdout_closed() -> int:
    """The reader went away (``straddle dlq list | head``): stop quietly, as Unix tools do."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # the interpreter's final flush must not fail again
    except (OSError, ValueError):
        pass
    return EXIT_OK
