"""The Azure Functions edge: bound input in, use case called, binding output back.

``function_app.py`` declares the bindings and calls these; nothing below this module sees an
Azure Functions type. Each handler catches what it must so that no input yields a 500.
"""
from __future__ import annotations

import json
import logging
from typing import Sequence

import azure.functions as func

from shared import bootstrap
from shared.adapters.settings import SettingsError
from shared.domain.events import EventFormatError, event_from_json
from shared.ingest.webhook import WebhookResponse, accept_notification, error
from shared.telemetry import emit

log = logging.getLogger("straddle")


def dataverse_webhook(req: func.HttpRequest) -> func.HttpResponse:
    try:
        body = req.get_body() or b""
        headers = {k.lower(): v for k, v in req.headers.items()}
        try:
            container = bootstrap.container()
            config = container.webhook_config
        except SettingsError as exc:
            log.error("webhook.misconfigured %s", exc)
            return _http(error(503, "misconfigured", "the app settings are incomplete; see the function log",
                               **{"Retry-After": "60"}))
        try:
            queue = container.event_queue()
        except SettingsError as exc:
            log.error("webhook.misconfigured %s", exc)
            queue = None
        return _http(accept_notification(body, headers, config, queue))
    except Exception:  # last line of defence: a bug must still not surface as a 500 with a trace
        log.exception("webhook.failed")
        return _http(error(503, "internal", "the notification could not be handled; retry later"))


def _http(resp: WebhookResponse) -> func.HttpResponse:
    return func.HttpResponse(json.dumps(resp.body), status_code=resp.status, headers=resp.headers,
                             mimetype="application/json")


def process_changes(messages: Sequence[func.ServiceBusMessage]) -> None:
    """Decodes the batch; the sync engine (issue #4) applies the rules to the decoded events."""
    for message in messages:
        try:
            event = event_from_json(message.get_body())
        except EventFormatError as exc:
            emit(log, "process.undecodable", logging.ERROR, message_id=message.message_id, problem=str(exc))
            continue
        emit(log, "process.received", event_id=event.id, kind=event.kind, table=event.table,
             delivery_count=message.delivery_count)


def nightly_reconcile(timer: func.TimerRequest) -> None:
    """The nightly safety net; the reconciliation itself is issue #5."""
    emit(log, "reconcile.triggered", past_due=timer.past_due)
