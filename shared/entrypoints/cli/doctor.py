"""``doctor``: the checklist (settings, Dataverse access, mappings, webhooks, storage) and where each
setting came from."""
from __future__ import annotations

import argparse
import os
from typing import Any

from shared.entrypoints.cli.common import (EXIT_FAILED, EXIT_OK, SETTING_SOURCES, CommandError, container,
                                           dead_letters, http_url)
from shared.entrypoints.cli.output import print_json, program


def register(commands: Any, flags: argparse.ArgumentParser) -> None:
    doc = commands.add_parser(parents=[flags], name="doctor", help="check settings, Dataverse access, mappings, webhooks and storage")
    doc.add_argument("--url", type=http_url, help="the webhook endpoint's URL to check (default: the endpoint named Straddle)")
    doc.set_defaults(handler=cmd_doctor, tsv_rows="checks")


def cmd_doctor(args: argparse.Namespace) -> int:
    from shared.adapters.settings import SettingsError
    from shared.service_layer.doctor import doctor
    from shared.telemetry import redact

    try:
        c = container()
    except (SettingsError, CommandError) as exc:
        checks = doctor(None, None, None, settings_error=str(exc))
    else:
        checks = doctor(c.settings, c.dataverse, c.tables, lambda: dead_letters(c), webhook_url=args.url,
                        local_host=os.environ.get("STRADDLE_LOCAL_HOST"))
    for check in checks:  # a safety net: no check should quote data, but none may print an address
        check["detail"], check["fix"] = redact(check["detail"]), redact(check["fix"])
        # The fixes name commands: as the user runs them (python -m shared or straddle).
        check["detail"], check["fix"] = (t.replace("straddle ", f"{program()} ") for t in (check["detail"], check["fix"]))
    failed = any(ch["status"] == "fail" for ch in checks)
    if args.json:
        print_json({"ok": not failed, "checks": checks, "settings_sources": dict(sorted(SETTING_SOURCES.items()))})
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

