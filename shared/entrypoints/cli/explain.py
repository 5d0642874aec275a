"""``explain EMAIL``: one person's state in both systems, the rules' verdict, their ledger (the one
command that prints an address: the one it was asked about)."""
from __future__ import annotations

import argparse
import re
from typing import Any

from shared.entrypoints.cli.common import EXIT_NOT_FOUND, EXIT_OK, CommandError, container, stored_mappings
from shared.entrypoints.cli.output import print_json


def register(commands: Any, flags: argparse.ArgumentParser) -> None:
    ex = commands.add_parser(parents=[flags], name="explain", help="one person's state in both systems, the rules' verdict, their ledger")
    ex.add_argument("email", help="the email address to explain")
    ex.set_defaults(handler=cmd_explain)


_ADDRESS = re.compile(r"^[^@\s]+@[^@\s]+$")



def cmd_explain(args: argparse.Namespace) -> int:
    from shared.service_layer.explain import explain

    email = args.email.strip()
    if not _ADDRESS.match(email) or len(email) > 320:
        raise CommandError("EMAIL must be a single email address, with one @ and no spaces")
    c = container()
    client = c.dataverse()
    mappings = stored_mappings(c)
    result = explain(email, client, mappings, c.tables().ledger)
    # Neither world knows it: no contact, lead or consent row (a typo, or a person long gone).
    known = bool(result["contacts"] or result["leads"] or result["consent"])
    if args.json:
        print_json({**result, "known": known})
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

