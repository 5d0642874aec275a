"""Logging conventions: structured fields for Application Insights, and no email addresses.

Log lines are ``event.name key=value ...``; the same fields go in ``extra`` so that, in the
Functions host's OpenTelemetry mode, they arrive as ``customDimensions``. As a safety net for any
library that might log a URL or body holding an address (urllib3 logs request lines at DEBUG,
and Dataverse filters carry addresses), ``install_redaction`` masks anything email-shaped in every
record before any handler sees it.

Spans are private by construction too: a Dataverse call never reaches the HTTP libraries'
OpenTelemetry instrumentation (whose dependency spans carry the full URL, and GET lookups carry
addresses in ``$filter``). ``http_dependency`` suppresses it and records one client span of its own
whose URL has no query string, whoever configured the exporter (the Functions worker or us).
"""
from __future__ import annotations

import contextlib
import logging
import re
from typing import Any, Iterator
from urllib.parse import urlsplit, urlunsplit

EMAIL = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*")
MASK = "<email>"

# Linear time whatever the input: a match may start only where a run of address characters
# starts (the lookbehind), and the possessive quantifiers never give back what they took, so
# no position is scanned twice. EMAIL above is the plain form, for callers matching one address.
_LOCAL = r"A-Za-z0-9.!#$%&'*+/=?^_`{|}~-"
_ADDRESS = re.compile(rf"(?<![{_LOCAL}])[{_LOCAL}]++@[A-Za-z0-9-]++(?:\.[A-Za-z0-9-]++)*+")
#: A percent-encoded at sign (a query string, a URL-encoded body) hides an address just as well.
_ENCODED_AT = re.compile("%40", re.IGNORECASE)


def redact(text: str) -> str:
    """``text`` with everything email-shaped, plain or with ``%40`` for the at sign, masked."""
    if "%" in text and "%40" in text.upper():
        text = _ENCODED_AT.sub("@", text)
    return _ADDRESS.sub(MASK, text) if "@" in text else text


#: Control characters (and the Unicode line separators) that could start a forged log line.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
#: The longest piece of outside text a log line or a response quotes.
SHOWN_MAX = 200


def shown(text: str, limit: int = SHOWN_MAX) -> str:
    """Outside text (a name or a problem taken from a notification) fit for one log line or a
    response: at most ``limit`` characters, addresses masked, control characters escaped. The cut
    comes after masking (on a window an address longer than the cut still fits in), so no
    address is cut in half and left readable."""
    out = redact(text[:limit + 330])
    if len(out) > limit or len(text) > limit + 330:
        out = out[:limit] + "..."
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100 else f"\\u{ord(m.group()):04x}", out)


def emit(logger: logging.Logger, name: str, level: int = logging.INFO, **fields: Any) -> None:
    """One structured log record; values must already be free of personal data."""
    if logger.isEnabledFor(level):
        line = " ".join([name, *(f"{k}={v}" for k, v in fields.items())])
        logger.log(level, "%s", line, extra={"event": name, **{f"straddle_{k}": v for k, v in fields.items()}})


_installed = False


def install_redaction() -> None:
    """Wraps the log record factory so every record's message is email-free. Idempotent."""
    global _installed
    if _installed:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a broken format string is the logger's problem, not ours
            return record
        if "@" in message:
            record.msg, record.args = redact(message), ()
        return record

    logging.setLogRecordFactory(factory)
    _installed = True


def safe_url(url: str) -> str:
    """``scheme://host/path`` with the query and fragment dropped and anything email-shaped masked:
    OData queries (``$filter``) and alternate keys can hold addresses."""
    parts = urlsplit(url)
    return redact(urlunsplit((parts.scheme, parts.netloc, parts.path, "", "")))


_otel: Any = None  # (trace module, tracer, suppress_http_instrumentation), False without OpenTelemetry


def _opentelemetry() -> Any:
    global _otel
    if _otel is None:
        try:
            from opentelemetry import trace
            from opentelemetry.instrumentation.utils import suppress_http_instrumentation
            # A proxy until a provider is configured (by the worker or by us), then that provider's.
            _otel = (trace, trace.get_tracer("straddle.dataverse"), suppress_http_instrumentation)
        except ImportError:  # the exporter is optional locally: then there is nothing to keep private
            _otel = False
    return _otel


class _NoSpan:
    def set_attribute(self, key: str, value: Any) -> None:
        pass


@contextlib.contextmanager
def http_dependency(method: str, url: str, name: str) -> Iterator[Any]:
    """Around one HTTP call: a client span named ``name`` (e.g. ``GET contacts``) with a query-free
    URL, and the HTTP libraries' own instrumentation suppressed inside it. Yields the span, for
    ``set_attribute("http.response.status_code", ...)``. Exceptions are recorded by type only: a
    requests error message quotes the full URL."""
    otel = _opentelemetry()
    if not otel:
        yield _NoSpan()
        return
    trace, tracer, suppress = otel
    parts = urlsplit(url)
    attributes = {"http.request.method": method, "server.address": parts.hostname or "",
                  "url.full": redact(urlunsplit((parts.scheme, parts.netloc, parts.path, "", "")))}
    with tracer.start_as_current_span(name, kind=trace.SpanKind.CLIENT, attributes=attributes,
                                      record_exception=False, set_status_on_exception=False) as span:
        try:
            with suppress():
                yield span
        except BaseException as exc:
            span.set_attribute("error.type", type(exc).__name__)
            span.set_status(trace.Status(trace.StatusCode.ERROR))
            raise
