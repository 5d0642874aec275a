"""The webhook use case: one Dataverse notification in, at most one change event enqueued.

Status codes are chosen for Dataverse's delivery rules (docs/domain.md, change notifications): any 2xx is success, and
it retries once only on 502/503/504, so 503 is the answer whenever the event was not enqueued
but a retry could succeed. Every other failure is the notification's own and gets a 4xx.
"""
from __future__ import annotations

import hmac
import logging
from dataclasses import dataclass, field
from typing import Any, Mapping

from shared.ingest.notification import Irrelevant, NotificationError, parse_notification
from shared.ports import EventQueue, QueueUnavailable
from shared.telemetry import redact

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024


@dataclass(frozen=True)
class WebhookConfig:
    secret_header: str | None = None  # lower-case header name
    secret: str | None = None


@dataclass(frozen=True)
class WebhookResponse:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


def error(status: int, code: str, message: str, **headers: str) -> WebhookResponse:
    return WebhookResponse(status, {"error": {"code": code, "message": message}}, dict(headers))


def accept_notification(body: bytes, headers: Mapping[str, str], config: WebhookConfig,
                        queue: EventQueue | None) -> WebhookResponse:
    """``headers`` keys lower-case. ``queue`` None means the queue is not configured (503)."""
    if config.secret_header and config.secret:
        presented = headers.get(config.secret_header)
        if presented is None or not hmac.compare_digest(presented.encode(), config.secret.encode()):
            log.warning("webhook.rejected reason=secret header=%s present=%s", config.secret_header, presented is not None)
            return error(401, "unauthorized", f"missing or wrong {config.secret_header} header")
    if len(body) > MAX_BODY_BYTES:
        log.warning("webhook.rejected reason=too_large bytes=%d", len(body))
        return error(413, "too_large", f"notification is {len(body)} bytes; the limit is {MAX_BODY_BYTES}")
    try:
        result = parse_notification(body, headers)
    except NotificationError as exc:  # redact: a path or name taken from the body could be an address
        log.warning("webhook.rejected reason=invalid path=%s problem=%s", redact(exc.path), redact(exc.problem))
        return error(400, "invalid_notification", redact(str(exc)))
    except RecursionError:  # absurdly deep JSON: json.loads gives up
        return error(400, "invalid_notification", "body: JSON nested too deeply")
    if isinstance(result, Irrelevant):
        reason = redact(result.reason)
        log.info("webhook.ignored reason=%s", reason)
        return WebhookResponse(200, {"status": "ignored", "reason": reason})
    if queue is None:
        return error(503, "queue_unavailable", "the change queue is not configured", **{"Retry-After": "60"})
    try:
        queue.send([result])
    except QueueUnavailable as exc:
        return error(503, "queue_unavailable", str(exc), **{"Retry-After": "10"})
    log.info("webhook.accepted event_id=%s kind=%s table=%s record_id=%s", result.id, result.kind, result.table, result.record_id)
    return WebhookResponse(202, {"status": "accepted", "event_id": result.id, "kind": result.kind})
