"""Azure Service Bus adapter: sends change events with a deterministic MessageId.

The Functions output binding cannot set MessageId, so the SDK is used directly. One client and
one sender live for the life of the worker (creating them costs an AMQP handshake); a lock keeps
the sender to one thread at a time, since the SDK's senders are not thread-safe.
"""
from __future__ import annotations

import logging
import threading
from datetime import datetime, timezone
from typing import Any, Callable, Sequence

from azure.servicebus import ServiceBusClient, ServiceBusMessage

from shared.domain.events import SCHEMA_VERSION, ChangeEvent
from shared.ports import QueueUnavailable

log = logging.getLogger(__name__)


def to_message(event: ChangeEvent, attempt: int = 1) -> ServiceBusMessage:
    return ServiceBusMessage(
        body=event.to_json(),
        message_id=event.id,
        content_type="application/json",
        subject=event.kind,
        correlation_id=event.origin.correlation_id,
        application_properties={"kind": event.kind, "table": event.table, "schema": SCHEMA_VERSION, "attempt": attempt},
    )


class ServiceBusEventQueue:
    """EventQueue and RetryQueue over the changes queue (and the parking queue for give-ups).

    Parking: a trigger-bound message cannot be dead-lettered from Python, so an event that keeps
    failing is sent to the parking queue and at once received there and dead-lettered with its
    reason; what a failed sweep leaves behind stays in the parking queue, and the next park
    sweeps it. ``straddle dlq list`` reads both dead-letter queues.
    """

    def __init__(self, client_factory: Callable[[], ServiceBusClient], queue_name: str,
                 parked_queue: str | None = None):
        self._client_factory = client_factory
        self._queue_name = queue_name
        self._parked_queue = parked_queue or f"{queue_name}-parked"
        self._lock = threading.Lock()
        self._client: ServiceBusClient | None = None
        self._sender: Any = None

    @classmethod
    def from_connection_string(cls, connection_string: str, queue_name: str,
                               parked_queue: str | None = None) -> "ServiceBusEventQueue":
        return cls(lambda: ServiceBusClient.from_connection_string(connection_string, retry_total=2), queue_name,
                   parked_queue)

    @classmethod
    def from_namespace(cls, namespace: str, credential: Any, queue_name: str,
                       parked_queue: str | None = None) -> "ServiceBusEventQueue":
        return cls(lambda: ServiceBusClient(namespace, credential, retry_total=2), queue_name, parked_queue)

    def send(self, events: Sequence[ChangeEvent]) -> None:
        self._send([to_message(e) for e in events], None)

    def send_later(self, event: ChangeEvent, delay_seconds: int, attempt: int) -> None:
        """Re-sends an event that failed, to be delivered after ``delay_seconds``.

        The copy gets its own MessageId (event id, attempt and due time): duplicate detection would
        otherwise drop it as a repeat of the original, or of an earlier retry of a replayed event.
        """
        when = datetime.now(timezone.utc).timestamp() + delay_seconds
        message = to_message(event, attempt)
        message.message_id = f"{event.id}.{attempt}.{int(when)}"
        self._send([message], datetime.fromtimestamp(when, tz=timezone.utc))

    def send_raw(self, queue_name: str, messages: list[tuple[str, bytes]]) -> None:
        """Sends (MessageId, JSON body) pairs to another queue (the reconciliation's chunks)."""
        batch = [ServiceBusMessage(body=body, message_id=mid, content_type="application/json") for mid, body in messages]
        with self._lock:
            try:
                if self._client is None:
                    self._client = self._client_factory()
                with self._client.get_queue_sender(queue_name) as sender:
                    pending = sender.create_message_batch()
                    for message in batch:  # as many per send as the tier's batch size allows
                        try:
                            pending.add_message(message)
                        except ValueError:  # MessageSizeExceededError: this batch is full
                            sender.send_messages(pending)
                            pending = sender.create_message_batch()
                            pending.add_message(message)
                    if len(pending):
                        sender.send_messages(pending)
            except Exception as exc:
                log.warning("servicebus.send_failed queue=%s error=%s", queue_name, type(exc).__name__)
                self._reset()
                raise QueueUnavailable(f"Service Bus did not take the messages ({type(exc).__name__})") from exc

    def park(self, body: bytes, reason: str, attempt: int, message_id: str | None = None) -> None:
        message = ServiceBusMessage(body=body, message_id=message_id, content_type="application/json",
                                    application_properties={"park_reason": reason[:1000], "attempt": attempt})
        with self._lock:
            try:
                if self._client is None:
                    self._client = self._client_factory()
                with self._client.get_queue_sender(self._parked_queue) as sender:
                    sender.send_messages(message)
                with self._client.get_queue_receiver(self._parked_queue, max_wait_time=5) as receiver:
                    for received in receiver.receive_messages(max_message_count=100, max_wait_time=5):
                        props = {(k.decode() if isinstance(k, bytes) else k): v
                                 for k, v in (received.application_properties or {}).items()}
                        why = props.get("park_reason", "parked")
                        why = why.decode() if isinstance(why, bytes) else str(why)
                        receiver.dead_letter_message(received, reason="StraddleGaveUp", error_description=why[:1000])
            except Exception as exc:
                log.warning("servicebus.park_failed queue=%s error=%s", self._parked_queue, type(exc).__name__)
                self._reset()
                raise QueueUnavailable(f"Service Bus did not take the parked event ({type(exc).__name__})") from exc

    def _send(self, messages: list[ServiceBusMessage], at: datetime | None) -> None:
        if not messages:
            return
        with self._lock:
            try:
                if self._sender is None:
                    self._client = self._client_factory()
                    self._sender = self._client.get_queue_sender(self._queue_name)
                if at is None:
                    self._sender.send_messages(messages)
                else:
                    self._sender.schedule_messages(messages, at)
            except Exception as exc:  # any failure means "not enqueued": the caller answers 503
                log.warning("servicebus.send_failed queue=%s error=%s", self._queue_name, type(exc).__name__)
                self._reset()
                raise QueueUnavailable(f"Service Bus did not take the message ({type(exc).__name__})") from exc

    def _reset(self) -> None:
        for closable in (self._sender, self._client):
            try:
                if closable is not None:
                    closable.close()
            except Exception:  # closing a broken link must not hide the original failure
                pass
        self._sender = self._client = None
