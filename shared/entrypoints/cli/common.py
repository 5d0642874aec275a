"""What every command shares: exit codes and errors, the app settings as the command sees them (and
the static-token refusal), the container, the flags every command takes, the argument types, and
the quiet-by-default logging."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlparse

from shared.entrypoints.cli.output import FORMATS, program

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
EXIT_NOT_FOUND = 3  # explain: neither system knows the address; runs show: no such run



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



def allow_static_token(allowed: bool) -> None:
    """What ``--allow-static-token`` says, for this invocation."""
    global _ALLOW_STATIC_TOKEN
    _ALLOW_STATIC_TOKEN = allowed


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



def container():
    """The app's container, with storage failing fast: an administrator at a terminal should hear
    within seconds that an endpoint is unreachable, not after the SDK's two-minute retry budget."""
    global _CONTAINER
    from shared import bootstrap

    _CONTAINER = bootstrap.container()
    _CONTAINER.interactive = True
    refuse_dev_token(_CONTAINER.settings)
    return _CONTAINER



def storage_url() -> str | None:
    """The Table Storage endpoint the command used, when it got as far as building it."""
    tables = getattr(_CONTAINER, "_tables", None)
    try:
        return tables.service.url.rstrip("/") if tables is not None else None
    except Exception:  # an error message must not fail on its way out
        return None



def stored_mappings(c: Any, required: bool = False) -> Any:
    """The imported mappings, or None (with ``required``: a one-line error saying how to import)."""
    from shared.domain.mappings import Mappings

    doc = c.tables().mappings.load()
    if doc is None and required:
        raise CommandError(f"no mappings imported yet ({program()} mappings import FILE)")
    return Mappings.from_dict(doc) if doc else None



def dead_letters(c: Any) -> Any:
    from shared.adapters.deadletters import dead_letters_for

    return dead_letters_for(c.settings, os.environ.get("STRADDLE_LOCAL_HOST"), os.environ.get("STRADDLE_LOCAL_HOST_KEY"))



# --- the parser ----------------------------------------------------------------------------------

class Parser(argparse.ArgumentParser):
    """Usage errors in one line (argparse prints the whole usage block)."""

    def error(self, message: str) -> NoReturn:
        print(f"{program()}: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)



def add_global_flags(parser: argparse.ArgumentParser) -> None:
    """The flags before the command."""
    from shared.entrypoints.cli.output import version

    parser.add_argument("--output", "-o", choices=FORMATS, default="table",
                        help="table (default, for people), json (stable, for scripts) or tsv (tab-separated, no keys)")
    parser.add_argument("--json", dest="output", action="store_const", const="json", help="the same as --output json")
    parser.add_argument("--verbose", action="store_true",
                        help="log each Dataverse request (method, path, status, time) and retry on standard error")
    parser.add_argument("--version", action="version", version=f"straddle {version()}")
    parser.add_argument("--allow-static-token", action="store_true",
                        help="use DATAVERSE_ACCESS_TOKEN (a development token) against a non-local DATAVERSE_URL")


def command_flags() -> argparse.ArgumentParser:
    """The parent of every command's parser: --output, --json and --verbose also after the command
    (`straddle doctor --json`); SUPPRESS keeps a sub-command's default from hiding the global flag."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--output", "-o", choices=FORMATS, default=argparse.SUPPRESS,
                        help="table (default), json or tsv")
    common.add_argument("--json", dest="output", action="store_const", const="json", default=argparse.SUPPRESS,
                        help="the same as --output json")
    common.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="log each Dataverse request and retry on standard error")
    return common


def http_url(value: str) -> str:
    parsed = urlparse(value.strip())
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise argparse.ArgumentTypeError(f"not an absolute http(s) URL: {value!r}")
    return value.strip()



def positive_int(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {value!r}") from None
    if n <= 0:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n



def positive_number(value: str) -> float:
    try:
        x = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if not x > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {value}")
    return x



def ratio(value: str) -> float:
    try:
        x = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if not 0 < x <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {x}")
    return x



# --- logging -------------------------------------------------------------------------------------

_NOISY = ("azure", "urllib3", "msal")



def configure_logging(verbose: bool) -> None:
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

