"""Typed Dataverse failures: callers branch on the type, never on message text.

``code`` is Dataverse's own error code (e.g. ``0x80040217``, "object does not exist") when the
response carried one. Messages come from Dataverse and may quote a filter value, so callers log
``kind``/``status``/``code``, not ``message``.
"""
from __future__ import annotations

import json
from typing import Any


class DataverseError(RuntimeError):
    """Base of every error this client raises."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None,
                 kind: str | None = None, retry_after: float | None = None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.kind = kind  # the request kind ("GET contacts"), never the URL
        self.retry_after = retry_after

    def __str__(self) -> str:
        bits = [b for b in (self.kind, str(self.status) if self.status else None, self.code) if b]
        return f"{self.message} [{' '.join(bits)}]" if bits else self.message


class DataverseAuthError(DataverseError):
    """401/403, or no token could be obtained."""


class DataverseNotFound(DataverseError):
    """404, or a name/id the caller asked for does not exist (the message names it)."""


class DataverseAmbiguous(DataverseError):
    """A name matched more than one row where exactly one was expected."""


class DataverseThrottled(DataverseError):
    """429s outlasted the retry budget (``retry_after`` holds the last Retry-After, if any)."""


class DataverseUnavailable(DataverseError):
    """5xx, timeouts or connection errors outlasted the retry budget."""


class DataverseUnreachable(DataverseUnavailable):
    """No connection could be made at all (refused, the name does not resolve, no answer to the
    connect): not a throttle, so it is given up on within seconds. ``url`` is the service root
    (no query: it never holds data), ``reason`` says which of the three it was."""

    def __init__(self, url: str, reason: str, *, kind: str | None = None):
        super().__init__(f"cannot reach Dataverse at {url} ({reason})", kind=kind)
        self.url, self.reason = url, reason


class DataverseBadRequest(DataverseError):
    """400/412 and other 4xx that retrying cannot fix."""


def parse_error_body(body: bytes | str | None) -> tuple[str | None, str | None]:
    """(code, message) from ``{"error": {"code": ..., "message": ...}}``; (None, None) otherwise."""
    if not body:
        return None, None
    try:
        data: Any = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None, None
    err = data.get("error") if isinstance(data, dict) else None
    if not isinstance(err, dict):
        return None, None
    code, message = err.get("code"), err.get("message")
    return (str(code) if code not in (None, "") else None), (str(message) if message is not None else None)


def error_for(status: int, body: bytes | str | None, kind: str | None = None,
              retry_after: float | None = None) -> DataverseError:
    """The typed exception for a non-success response."""
    code, message = parse_error_body(body)
    message = message or f"Dataverse returned HTTP {status}"
    cls: type[DataverseError]
    if status in (401, 403):
        cls = DataverseAuthError
    elif status == 404:
        cls = DataverseNotFound
    elif status == 429:
        cls = DataverseThrottled
    elif status >= 500:
        cls = DataverseUnavailable
    elif 400 <= status < 500:
        cls = DataverseBadRequest
    else:
        cls = DataverseError
    return cls(message, status=status, code=code, kind=kind, retry_after=retry_after)
