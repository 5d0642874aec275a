"""The Azure Functions edge: bound input in, use case called, binding output back.

``function_app.py`` declares the bindings and calls these; nothing below this module sees an
Azure Functions type. Each handler catches what it must so that no input yields a 500.
"""
from __future__ import annotations

import json
import logging
import time
from typing import Sequence

import azure.functions as func

from shared import bootstrap
from shared.adapters.settings import SettingsError
from shared.ingest.webhook import WebhookResponse, accept_notification, error, too_large
from shared.service_layer.process_changes import Incoming
from shared.telemetry import emit

log = logging.getLogger("straddle")


def dataverse_webhook(req: func.HttpRequest) -> func.HttpResponse:
    try:
        headers = {k.lower(): v for k, v in req.headers.items()}
        refused = too_large(headers)  # before the body is touched
        if refused:
            return _http(refused)
        body = req.get_body() or b""
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
        return _http(accept_notification(body, headers, config, queue, container.known_organization_id()))
    except Exception:  # last line of defence: a bug must still not surface as a 500 with a trace
        log.exception("webhook.failed")
        return _http(error(503, "internal", "the notification could not be handled; retry later"))


def _http(resp: WebhookResponse) -> func.HttpResponse:
    return func.HttpResponse(json.dumps(resp.body), status_code=resp.status, headers=resp.headers,
                             mimetype="application/json")


def process_changes(messages: Sequence[func.ServiceBusMessage]) -> None:
    """Hands the batch to the sync engine. Raising abandons the whole batch (Service Bus then
    redelivers it), so this raises only when nothing could be settled: misconfiguration, or the
    queue itself refusing a retry. Everything else ends processed, retried or parked."""
    incoming = [Incoming(body=m.get_body(), message_id=m.message_id, attempt=_attempt(m)) for m in messages]
    try:
        engine = bootstrap.container().sync_engine()
    except SettingsError as exc:
        emit(log, "process.misconfigured", logging.ERROR, problem=str(exc), messages=len(incoming))
        _pause_before_abandon(messages)
        raise
    started = time.monotonic()
    try:
        report = engine.process(incoming)
    except Exception as exc:  # not even a retry could be scheduled: the queue itself failed
        emit(log, "process.abandoned", logging.ERROR, error=type(exc).__name__, messages=len(incoming))
        _pause_before_abandon(messages)
        raise
    emit(log, "process.batch", messages=len(incoming), processed=report.count("processed"),
         duplicates=report.count("duplicate"), echoes=report.count("echo"), foreign=report.count("foreign"), no_effect=report.count("no_effect"),
         retried=report.count("retry"), parked=report.count("parked"), applied=report.actions_applied,
         failed=report.actions_failed, rounds=report.rounds, incomplete=report.incomplete,
         duration_ms=int((time.monotonic() - started) * 1000))


#: Longest pause before abandoning a batch; well inside Service Bus's default 1-minute lock.
ABANDON_PAUSE_MAX_SECONDS = 30.0


def _pause_before_abandon(messages: Sequence[func.ServiceBusMessage]) -> None:
    """Abandoning makes Service Bus redeliver at once; without a pause a lasting failure would
    use up the delivery count (and dead-letter the batch) within a second. Doubles with the
    delivery count: 1 s, 2 s, 4 s ... up to ABANDON_PAUSE_MAX_SECONDS."""
    deliveries = max((getattr(m, "delivery_count", None) or 1 for m in messages), default=1)
    time.sleep(min(ABANDON_PAUSE_MAX_SECONDS, 2.0 ** (deliveries - 1)))


def _attempt(message: func.ServiceBusMessage) -> int:
    """Our own attempt count (application property), not the broker's delivery count."""
    props = message.application_properties or {}
    try:
        return max(1, int(props.get("attempt", 1)))
    except (TypeError, ValueError):
        return 1


def nightly_reconcile(timer: func.TimerRequest) -> None:
    """The nightly safety net. A failure propagates so the run shows as failed in the host's
    telemetry (and the "no successful reconciliation" alert fires); nothing is half-written."""
    from shared.service_layer.reconcile import nightly

    emit(log, "reconcile.triggered", past_due=timer.past_due)
    try:
        nightly(bootstrap.container())
    except Exception as exc:
        emit(log, "reconcile.failed", logging.ERROR, error=type(exc).__name__)
        raise


def compliance_check(timer: func.TimerRequest) -> None:
    """Hourly: the opt-outs still open past OPT_OUT_DEADLINE_HOURS, as the ``compliance.check``
    record the deadline alert queries. Reads Table Storage only."""
    from datetime import datetime, timezone

    from shared.service_layer.compliance import check

    container = bootstrap.container()
    try:
        check(container.tables().compliance, datetime.now(timezone.utc), container.settings.opt_out_deadline_hours)
    except Exception as exc:
        emit(log, "compliance.check_failed", logging.ERROR, error=type(exc).__name__)
        raise


def reconcile_chunk(message: func.ServiceBusMessage) -> None:
    """One chunk of a fanned-out reconciliation, or the next stretch of a run's scan (a "scan"
    message). Raising abandons it: Service Bus redelivers, and a chunk or scan partition already
    recorded is skipped, so the run resumes rather than repeats."""
    from shared.service_layer.reconcile import run_chunk

    try:
        run_chunk(bootstrap.container(), message.get_body())
    except Exception as exc:
        emit(log, "reconcile.chunk_failed", logging.ERROR, message_id=message.message_id, error=type(exc).__name__)
        _pause_before_abandon([message])  # a lasting failure must not use up the deliveries at once
        raise
