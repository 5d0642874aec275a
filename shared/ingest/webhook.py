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

from shared.ingest.notification import ForeignOrganization, Irrelevant, NotificationError, parse_notification
from shared.ports import EventQueue, QueueUnavailable
from shared.telemetry import shown

log = logging.getLogger(__name__)

#: Dataverse never sends more: above 256 KB it strips the context and sends the
#: x-ms-dynamics-msg-size-exceeded header instead (docs/domain.md, change notifications).
MAX_BODY_BYTES = 256 * 1024


@dataclass(frozen=True)
class WebhookConfig:
    secret_header: str | None = None  # lower-case header name
    secret: str | None = None
    #: During a rotation: the secret before ``secret``, accepted too until Dataverse sends the new one.
    previous_secret: str | None = None

    def accepts(self, presented: str | None) -> bool:
        """Whether ``presented`` is the secret (or the previous one), in constant time: both are
        always compared, so the answer's timing says nothing about which, or how much, matched."""
        if presented is None:
            return False
        given = presented.encode("utf-8", "surrogateescape")
        current = hmac.compare_digest(given, (self.secret or "").encode())
        previous = hmac.compare_digest(given, (self.previous_secret or "").encode()) and bool(self.previous_secret)
        return current | previous


@dataclass(frozen=True)
class WebhookResponse:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


def error(status: int, code: str, message: str, **headers: str) -> WebhookResponse:
    return WebhookResponse(status, {"error": {"code": code, "message": message}}, dict(headers))


def too_large(headers: Mapping[str, str]) -> WebhookResponse | None:
    """413 when the declared Content-Length is over the limit: answered before the body is read.
    ``headers`` keys lower-case."""
    declared = headers.get("content-length", "")
    if declared.strip().isdigit() and int(declared) > MAX_BODY_BYTES:
        return _too_large(int(declared))
    return None


def _too_large(size: int) -> WebhookResponse:
    log.warning("webhook.rejected reason=too_large bytes=%d", size)
    return error(413, "too_large", f"notification is {size} bytes; Dataverse sends at most {MAX_BODY_BYTES}")


def accept_notification(body: bytes, headers: Mapping[str, str], config: WebhookConfig,
                        queue: EventQueue | None, organization_id: str | None = None) -> WebhookResponse:
    """``headers`` keys lower-case. ``queue`` None means the queue is not configured (503).
    ``organization_id``: the organization the app serves, when known; another one's notification
    is refused (403). When not known yet, the event carries the notification's own and the
    worker drops it if it turns out to be foreign."""
    if config.secret_header and config.secret:
        presented = headers.get(config.secret_header)
        if not config.accepts(presented):
            log.warning("webhook.rejected reason=secret header=%s present=%s", config.secret_header, presented is not None)
            return error(401, "unauthorized", f"missing or wrong {config.secret_header} header")
    if len(body) > MAX_BODY_BYTES:
        return _too_large(len(body))
    try:
        result = parse_notification(body, headers, organization_id)
    except ForeignOrganization as exc:
        log.warning("webhook.rejected reason=foreign_organization organization_id=%s expected=%s",
                    exc.organization_id, organization_id)
        return error(403, "foreign_organization", "the notification is from another Dataverse organization than the "
                                                  "one this app is configured for (DATAVERSE_URL)")
    except NotificationError as exc:  # shown(): a path or name taken from the body could be an address or a newline
        log.warning("webhook.rejected reason=invalid path=%s problem=%s", shown(exc.path), shown(exc.problem))
        return error(400, "invalid_notification", shown(str(exc)))
    except RecursionError:  # absurdly deep JSON: json.loads gives up
        return error(400, "invalid_notification", "body: JSON nested too deeply")
    if isinstance(result, Irrelevant):
        reason = shown(result.reason)
        log.info("webhook.ignored reason=%s", reason)
        return WebhookResponse(200, {"status": "ignored", "reason": reason})
    if queue is None:
        return error(503, "queue_unavailable", "the change queue is not configured", **{"Retry-After": "60"})
    try:
        queue.send([result])
    except QueueUnavailable as exc:
        return error(503, "queue_unavailable", str(exc), **{"Retry-After": "10"})
    # The table of an Associate may be any name the body gives: escaped like every other name from it.
    log.info("webhook.accepted event_id=%s kind=%s table=%s record_id=%s", result.id, result.kind, shown(result.table),
             result.record_id)
    return WebhookResponse(202, {"status": "accepted", "event_id": result.id, "kind": result.kind})
