"""Logging conventions: structured fields for Application Insights, and no email addresses.

Log lines are ``event.name key=value ...``; the same fields go in ``extra`` so that, in the
Functions host's OpenTelemetry mode, they arrive as ``customDimensions``. As a safety net for any
library that might log a URL or body holding an address (urllib3 logs request lines at DEBUG,
and Dataverse filters carry addresses), ``install_redaction`` masks anything email-shaped in every
record before any handler sees it.
"""
from __future__ import annotations

import logging
import re
from typing import Any

EMAIL = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*")
MASK = "<email>"


def redact(text: str) -> str:
    return EMAIL.sub(MASK, text) if "@" in text else text


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
