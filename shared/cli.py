"""``python -m shared`` (installed as ``straddle``): the administrator's command line.

Every command reads the same app settings as the function app (environment variables, or a
``local.settings.json`` in the current folder). Errors are one line on stderr and exit code 2;
``--json`` output is stable for scripts.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class CommandError(Exception):
    """A failure to report in one line, without a traceback."""


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
        print(json.dumps({"imported": not args.dry_run, "mappings": mappings.to_dict()}, indent=2))
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="straddle", description="Straddle: one opt-out for Dynamics 365 Outbound and Real-time marketing.")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    mappings = commands.add_parser("mappings", help="import or export the list-to-topic mappings")
    mappings_cmds = mappings.add_subparsers(dest="action", metavar="ACTION", required=True)
    imp = mappings_cmds.add_parser("import", help="validate a mappings file against Dataverse and store it")
    imp.add_argument("file", help="mappings JSON file (see docs/mappings.md)")
    imp.add_argument("--dry-run", action="store_true", help="validate and resolve only; store nothing")
    imp.set_defaults(handler=cmd_mappings_import)
    exp = mappings_cmds.add_parser("export", help="write the stored mappings as a file")
    exp.add_argument("file", nargs="?", help="where to write (default: standard output)")
    exp.set_defaults(handler=cmd_mappings_export)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from shared.adapters.dataverse.errors import DataverseError
    from shared.adapters.settings import SettingsError
    from shared.domain.mappings import MappingsError

    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        load_local_settings()
        return handler(args)
    except (CommandError, SettingsError, MappingsError) as exc:
        print(f"straddle: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except DataverseError as exc:
        print(f"straddle: Dataverse: {exc.status or ''} {exc.code or ''} {exc.kind or ''}".rstrip(), file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130
