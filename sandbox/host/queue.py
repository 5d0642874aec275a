"""An in-process message broker with the Azure Service Bus semantics Straddle relies on.

Kept: peek-lock (a received message is invisible until completed or abandoned), delivery count,
max delivery count (10, as Service Bus) then the dead-letter sub-queue with a reason, scheduled
messages, MessageId duplicate detection (10-minute window), FIFO by sequence number. Not kept:
sessions, transactions, TTL expiry, lock expiry (the Functions host renews locks while a function
runs, up to maxAutoLockRenewalDuration, so an in-process run never loses one).

``LocalServiceBus`` implements the app's ``EventQueue`` and ``RetryQueue`` ports exactly as
``shared.adapters.servicebus.ServiceBusEventQueue`` does (same MessageIds, same application
properties, same parking), so the code under ``shared/`` cannot tell the two apart.
"""
from __future__ import annotations

import heapq
import itertools
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable, Sequence

from shared.domain.events import SCHEMA_VERSION, ChangeEvent

MAX_DELIVERY_COUNT = 10
DUPLICATE_WINDOW_SECONDS = 600.0
PARK_REASON = "StraddleGaveUp"
MAX_DELIVERY_REASON = "MaxDeliveryCountExceeded"


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=timezone.utc)


@dataclass
class Message:
    body: bytes
    message_id: str
    application_properties: dict = field(default_factory=dict)
    content_type: str | None = "application/json"
    subject: str | None = None
    correlation_id: str | None = None
    sequence_number: int = 0
    enqueued_time: float = 0.0
    scheduled_time: float | None = None
    delivery_count: int = 0
    lock_token: str | None = None
    dead_letter_reason: str | None = None
    dead_letter_description: str | None = None
    dead_lettered_time: float | None = None

    def to_json(self) -> dict:
        return {"message_id": self.message_id, "sequence_number": self.sequence_number,
                "body": self.body.decode("utf-8", "replace"), "application_properties": self.application_properties,
                "content_type": self.content_type, "subject": self.subject, "delivery_count": self.delivery_count,
                "enqueued_time_utc": _utc(self.enqueued_time).isoformat(),
                "dead_letter_reason": self.dead_letter_reason,
                "dead_letter_error_description": self.dead_letter_description,
                "dead_lettered_time_utc": _utc(self.dead_lettered_time).isoformat() if self.dead_lettered_time else None}


class LocalQueue:
    """One queue entity with its dead-letter sub-queue."""

    def __init__(self, name: str, clock: Callable[[], float] = time.time, max_delivery_count: int = MAX_DELIVERY_COUNT,
                 duplicate_window: float = DUPLICATE_WINDOW_SECONDS):
        self.name = name
        self.clock = clock
        self.max_delivery_count = max_delivery_count
        self.duplicate_window = duplicate_window
        self.cond = threading.Condition()
        self._active: list[tuple[int, Message]] = []  # heap by sequence number (abandoned ones keep their place)
        self._scheduled: list[tuple[float, int, Message]] = []
        self._locked: dict[str, Message] = {}
        self.deadletter: list[Message] = []
        self._seen: dict[str, float] = {}
        self._seq = itertools.count(1)
        self.completed = 0
        self.duplicates_dropped = 0

    # --- sending ---------------------------------------------------------------------------------

    def send(self, messages: Sequence[Message], at: float | None = None) -> int:
        """Enqueues (or schedules for ``at``); returns how many were accepted (not duplicates)."""
        accepted = 0
        with self.cond:
            now = self.clock()
            self._expire_seen(now)
            for m in messages:
                if m.message_id in self._seen:
                    self.duplicates_dropped += 1  # Service Bus accepts the send and silently drops the copy
                    continue
                self._seen[m.message_id] = now
                m.sequence_number, m.enqueued_time = next(self._seq), now
                if at is not None and at > now:
                    m.scheduled_time = at
                    heapq.heappush(self._scheduled, (at, m.sequence_number, m))
                else:
                    heapq.heappush(self._active, (m.sequence_number, m))
                accepted += 1
            self.cond.notify_all()
        return accepted

    def _expire_seen(self, now: float) -> None:
        if self._seen:
            cutoff = now - self.duplicate_window
            # dict order is insertion order, so the oldest ids come first
            for mid in list(itertools.takewhile(lambda k: self._seen[k] < cutoff, self._seen)):
                del self._seen[mid]

    def _promote(self, now: float) -> None:
        while self._scheduled and self._scheduled[0][0] <= now:
            _, seq, m = heapq.heappop(self._scheduled)
            heapq.heappush(self._active, (seq, m))

    # --- receiving (peek-lock) ---------------------------------------------------------------------

    def receive(self, max_count: int, max_wait: float, min_count: int = 1, stop: threading.Event | None = None,
                wait_for_first: float | None = None) -> list[Message]:
        """Locks and returns up to ``max_count`` messages: waits (up to ``wait_for_first``, default
        ``max_wait``) for the first, then up to ``max_wait`` in all for ``min_count`` of them."""
        first_deadline = time.monotonic() + (max_wait if wait_for_first is None else wait_for_first)
        with self.cond:
            while True:
                self._promote(self.clock())
                if self._active or (stop is not None and stop.is_set()) or time.monotonic() >= first_deadline:
                    break
                self.cond.wait(timeout=min(0.05, max(0.0, first_deadline - time.monotonic())))
            if not self._active:
                return []
            deadline = time.monotonic() + max_wait
            while len(self._active) < min_count and time.monotonic() < deadline and not (stop and stop.is_set()):
                self.cond.wait(timeout=min(0.05, max(0.0, deadline - time.monotonic())))
                self._promote(self.clock())
            out = []
            while self._active and len(out) < max_count:
                _, m = heapq.heappop(self._active)
                m.delivery_count += 1
                m.lock_token = str(uuid.uuid4())
                self._locked[m.lock_token] = m
                out.append(m)
            return out

    def complete(self, messages: Sequence[Message]) -> None:
        with self.cond:
            for m in messages:
                if self._locked.pop(m.lock_token or "", None) is not None:
                    self.completed += 1
                m.lock_token = None

    def abandon(self, messages: Sequence[Message]) -> None:
        """Back to the queue, or to the dead-letter sub-queue once delivered max_delivery_count times."""
        with self.cond:
            for m in messages:
                if self._locked.pop(m.lock_token or "", None) is None:
                    continue
                m.lock_token = None
                if m.delivery_count >= self.max_delivery_count:
                    self._dead_letter(m, MAX_DELIVERY_REASON,
                                      f"Message could not be consumed after {m.delivery_count} delivery attempts.")
                else:
                    heapq.heappush(self._active, (m.sequence_number, m))
            self.cond.notify_all()

    def dead_letter(self, message: Message, reason: str, description: str | None = None) -> None:
        with self.cond:
            self._locked.pop(message.lock_token or "", None)
            message.lock_token = None
            self._dead_letter(message, reason, description)

    def _dead_letter(self, m: Message, reason: str, description: str | None) -> None:
        m.dead_letter_reason, m.dead_letter_description, m.dead_lettered_time = reason, description, self.clock()
        self.deadletter.append(m)

    # --- inspection ------------------------------------------------------------------------------

    def stats(self) -> dict:
        with self.cond:
            self._promote(self.clock())
            return {"name": self.name, "active": len(self._active), "scheduled": len(self._scheduled),
                    "locked": len(self._locked), "deadletter": len(self.deadletter),
                    "duplicates_dropped": self.duplicates_dropped, "completed": self.completed}

    def peek(self, max_count: int = 100) -> list[Message]:
        with self.cond:
            return [m for _, m in sorted(self._active)[:max_count]]

    def take_deadletters(self, max_count: int | None = None) -> list[Message]:
        with self.cond:
            n = len(self.deadletter) if max_count is None else max(0, max_count)
            out, self.deadletter = self.deadletter[:n], self.deadletter[n:]
            return out

    def idle(self) -> bool:
        """Nothing active, scheduled or locked."""
        with self.cond:
            return not (self._active or self._scheduled or self._locked)

    def next_scheduled_in(self) -> float | None:
        with self.cond:
            return self._scheduled[0][0] - self.clock() if self._scheduled else None


def event_message(event: ChangeEvent, attempt: int = 1, message_id: str | None = None) -> Message:
    """The same message ``shared.adapters.servicebus.to_message`` builds."""
    return Message(body=event.to_json().encode("utf-8"), message_id=message_id or event.id,
                   subject=event.kind, correlation_id=event.origin.correlation_id,
                   application_properties={"kind": event.kind, "table": event.table, "schema": SCHEMA_VERSION,
                                           "attempt": attempt})


class LocalServiceBus:
    """A namespace of local queues, and the app's EventQueue + RetryQueue ports over it.

    ``time_scale`` multiplies the delays of scheduled retries (tests run a 30 s back-off in 0.3 s
    with 0.01).
    """

    def __init__(self, changes_queue: str, parked_queue: str, time_scale: float = 1.0,
                 clock: Callable[[], float] = time.time):
        self.changes_queue, self.parked_queue = changes_queue, parked_queue
        self.time_scale = time_scale
        self.clock = clock
        self._queues: dict[str, LocalQueue] = {}
        self._lock = threading.Lock()
        self.queue(changes_queue)
        self.queue(parked_queue)

    def queue(self, name: str) -> LocalQueue:
        with self._lock:
            if name not in self._queues:
                self._queues[name] = LocalQueue(name, self.clock)
            return self._queues[name]

    def get(self, name: str) -> LocalQueue | None:
        with self._lock:
            return self._queues.get(name)

    def queues(self) -> list[LocalQueue]:
        with self._lock:
            return list(self._queues.values())

    # --- EventQueue ------------------------------------------------------------------------------

    def send(self, events: Sequence[ChangeEvent]) -> None:
        self.queue(self.changes_queue).send([event_message(e) for e in events])

    # --- RetryQueue ------------------------------------------------------------------------------

    def send_later(self, event: ChangeEvent, delay_seconds: int, attempt: int) -> None:
        # The adapter's MessageId (event id, attempt, due time): duplicate detection would drop a repeat.
        now = self.clock()
        mid = f"{event.id}.{attempt}.{int(now + delay_seconds)}"
        self.queue(self.changes_queue).send([event_message(event, attempt, mid)], at=now + delay_seconds * self.time_scale)

    def send_raw(self, queue_name: str, messages: Sequence[tuple[str, bytes]]) -> None:
        """(MessageId, JSON body) pairs to another queue, as the adapter (the reconciliation's chunks)."""
        self.queue(queue_name).send([Message(body=body, message_id=mid) for mid, body in messages])

    def park(self, body: bytes, reason: str, attempt: int, message_id: str | None = None) -> None:
        # As the adapter: onto the parking queue, then received there and dead-lettered with the reason.
        parked = self.queue(self.parked_queue)
        m = Message(body=body, message_id=message_id or str(uuid.uuid4()),
                    application_properties={"park_reason": reason[:1000], "attempt": attempt})
        if not parked.send([m]):
            # A repeat MessageId inside the window (the same event parked twice): still keep the evidence.
            m.message_id = f"{m.message_id}.{uuid.uuid4().hex[:8]}"
            parked.send([m])
        for received in parked.receive(100, 0.0, wait_for_first=0.0):
            why = str(received.application_properties.get("park_reason", "parked"))
            parked.dead_letter(received, PARK_REASON, why[:1000])

    # --- admin -----------------------------------------------------------------------------------

    def replay(self, name: str, max_count: int | None = None) -> int:
        """Resubmits dead letters of ``name`` to the changes queue as first attempts."""
        source = self.get(name)
        if source is None:
            raise KeyError(name)
        target = self.queue(self.changes_queue)
        taken = source.take_deadletters(max_count)
        fresh = []
        for m in taken:
            props = {k: v for k, v in m.application_properties.items() if k != "park_reason"}
            props["attempt"] = 1
            fresh.append(Message(body=m.body, message_id=f"{m.message_id}.replay-{m.sequence_number}",
                                 application_properties=props, content_type=m.content_type, subject=m.subject,
                                 correlation_id=m.correlation_id))
        target.send(fresh)
        return len(taken)

    def idle(self) -> bool:
        return all(q.idle() for q in self.queues())
