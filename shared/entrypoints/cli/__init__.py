"""``python -m shared`` (installed as ``straddle``): the administrator's command line.

Every command reads the same app settings as the function app (environment variables, or a
``local.settings.json`` in the current folder). Bad input is one line on stderr and exit code 2;
a Dataverse or Azure failure is one line and exit code 1; "not found" is exit code 3.
``--output json`` (``--json``) is stable for scripts, ``--output tsv`` feeds shell loops
(``output``). No command prints an email address, except ``explain`` the one it was asked about.
The use cases live in ``shared.service_layer`` (one module each); this package parses, calls and
prints: one module per command group, each registering its own sub-parser (``register``), over
``common`` (errors, settings, container, flags, logging) and ``output`` (formats, examples).
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from shared.entrypoints.cli import (activity, common, compliance, dlq, doctor, explain, mappings, output, reconcile,
                                    webhooks)
from shared.entrypoints.cli.common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, CommandError, CommandFailed, Parser

#: The command groups, in the order --help lists them.
COMMANDS = (mappings, webhooks, explain, dlq, doctor, reconcile, activity, compliance)


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = Parser(prog=prog or output.prog_name(),
                    description="Straddle: one opt-out for Dynamics 365 Outbound and Real-time marketing.")
    common.add_global_flags(parser)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=Parser)
    flags = common.command_flags()
    for group in COMMANDS:
        group.register(commands, flags)
    add_examples(parser)
    return parser


def add_examples(parser: argparse.ArgumentParser, prog: str | None = None, path: str = "") -> None:
    """Examples at the end of every command's --help (``output.EXAMPLES``)."""
    prog = prog or parser.prog
    epilog = output.examples_epilog(path, prog)
    if epilog:
        parser.epilog = epilog
        parser.formatter_class = argparse.RawDescriptionHelpFormatter
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                add_examples(sub, prog, f"{path} {name}".strip())


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    from shared.adapters.dataverse.errors import DataverseError
    from shared.adapters.deadletters import DeadLettersUnavailable
    from shared.adapters.settings import SettingsError
    from shared.domain.mappings import MappingsError
    from shared.ports import TransientError

    output.begin(prog or output.prog_name())
    parser = build_parser(output.program())
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2, already printed)
        return int(exc.code or 0)
    handler: Callable[[argparse.Namespace], int] = args.handler
    common.allow_static_token(args.allow_static_token)
    # Handlers ask args.json for "machine-readable"; print_json then writes JSON or TSV.
    args.json = args.output in ("json", "tsv")
    output.choose(args.output, getattr(args, "tsv_rows", None))
    common.configure_logging(args.verbose)
    try:
        common.load_local_settings()
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


def _fail(message: str, code: int) -> int:
    from shared.telemetry import redact

    print(f"{output.program()}: {redact(message)}", file=sys.stderr)
    return code


def _explain_failure(exc: BaseException) -> str:
    """One line: what failed (which URL or setting) and what to do (``shared.service_layer.failures.describe_failure``)."""
    from shared.service_layer.failures import describe_failure

    what, fix = describe_failure(exc, common.storage_url())
    return f"{what}; {fix}" if fix else what


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

