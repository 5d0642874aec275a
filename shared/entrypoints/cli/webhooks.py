"""``webhooks register|status|remove``: the Dataverse webhook steps the sync needs."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from shared.entrypoints.cli.common import (EXIT_FAILED, EXIT_OK, CommandError, Parser, container, http_url,
                                           stored_mappings)
from shared.entrypoints.cli.output import print_json, program


def register(commands: Any, flags: argparse.ArgumentParser) -> None:
    hooks = commands.add_parser("webhooks", help="register, check or remove the Dataverse webhook steps")
    hooks_cmds = hooks.add_subparsers(dest="action", metavar="ACTION", required=True, parser_class=Parser)
    reg = hooks_cmds.add_parser(parents=[flags], name="register", help="create or update the service endpoint and every step the sync needs")
    reg.add_argument("--url", type=http_url, required=True, help="the dataverse_webhook function's URL")
    reg.add_argument("--function-key", help="the function key (default: env STRADDLE_FUNCTION_KEY); "
                                            "not needed with WEBHOOK_SECRET_HEADER/WEBHOOK_SECRET")
    reg.add_argument("--dry-run", action="store_true", help="show what would be created or updated; write nothing")
    reg.set_defaults(handler=cmd_webhooks_register)
    st = hooks_cmds.add_parser(parents=[flags], name="status", help="show what is registered and what is missing (exit 1 if anything is)")
    st.add_argument("--url", type=http_url, help="the endpoint's URL (default: the endpoint named Straddle)")
    st.set_defaults(handler=cmd_webhooks_status, tsv_rows="steps")
    rm = hooks_cmds.add_parser(parents=[flags], name="remove", help="delete the service endpoint, its steps and images")
    rm.add_argument("--url", type=http_url, help="the endpoint's URL (default: the endpoint named Straddle)")
    rm.add_argument("--yes", action="store_true",
                    help="do not ask (needed when not at a terminal): removing stops the sync")
    rm.set_defaults(handler=cmd_webhooks_remove)


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
          f"missing: run {program()} webhooks register --url URL")



def _secret_header(settings: Any) -> str | None:
    return settings.webhook_secret_header if settings.webhook_secret else None



def _email_columns(c: Any) -> tuple[str, ...] | None:
    from shared.adapters.settings import SettingsError

    try:
        m = stored_mappings(c)
    except SettingsError:
        return None  # no storage configured: the default columns
    return m.email_columns if m else None



def cmd_webhooks_register(args: argparse.Namespace) -> int:
    from shared.service_layer.webhooks import register_webhooks, webhook_changes, webhook_status

    c = container()
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
            print_json({"registered": False, "dry_run": True, "changes": changes})
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
        print_json({"registered": True, **counts, "status": status})
    else:
        print(f"registered: endpoint {'created' if result.endpoint_created else 'updated'}, "
              f"{result.created_steps} step(s) created, {result.updated_steps} updated, "
              f"{result.created_images} image(s) created, {result.updated_images} updated")
        _print_webhook_status(status)
    return EXIT_OK if status["ok"] else EXIT_FAILED



def cmd_webhooks_status(args: argparse.Namespace) -> int:
    from shared.service_layer.webhooks import webhook_status

    c = container()
    status = webhook_status(c.dataverse(), args.url, email_columns=_email_columns(c),
                            secret_header=_secret_header(c.settings))
    if args.json:
        print_json(status)
    else:
        _print_webhook_status(status)
    return EXIT_OK if status["ok"] else EXIT_FAILED



def cmd_webhooks_remove(args: argparse.Namespace) -> int:
    from shared.service_layer.webhooks import WEBHOOK_NAME, webhook_status

    client = container().dataverse()
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
        print_json({"removed_rows": removed})
    else:
        print(f"removed {removed} row(s) (endpoint, steps, images)" if removed else "nothing registered")
    return EXIT_OK

