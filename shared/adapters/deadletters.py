"""Dead letters of the change path: read them, and resubmit them after a fix (``straddle dlq``).

Two sub-queues hold them: the changes queue's (the broker moved a message there after its max
delivery count) and the parking queue's (the app gave up: reason ``StraddleGaveUp``, the why in
the description). Replay sends each body back to the changes queue with ``attempt`` = 1 and a
new MessageId, ``<event id>.replay.<sequence number>``: duplicate detection would drop a copy
under the original id, and the sequence number makes a second replay of a later dead letter of
the same event a new message too.

What is shown never includes the body: it holds the email address. Descriptions pass through
the same email mask as the logs, since a failure reason can quote Dataverse.

Two implementations behind one port: Azure Service Bus (azure-servicebus receivers on the
dead-letter sub-queue), and the local Functions host's admin API (sandbox/host/README.md).
"""
from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from shared.domain.events import EventFormatError, event_from_json
from shared.telemetry import redact


class DeadLettersUnavailable(RuntimeError):
    """The queue service could not be reached or refused the request (one line, no secrets)."""


@dataclass(frozen=True)
class DeadLetter:
    queue: str
    message_id: str | None
    sequence_number: int | None
    event_id: str | None  # None: the body is not a change event
    kind: str | None
    reason: str | None
    description: str | None
    enqueued_time: str | None
    attempt: int | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Replayed:
    queue: str
    message_id: str | None
    new_message_id: str | None
    event_id: str | None
    kind: str | None


@dataclass
class ReplayReport:
    replayed: int = 0
    skipped: int = 0  # not change events: left in the dead-letter queue
    messages: list[Replayed] = field(default_factory=list)  # empty when the service does not say

    def to_dict(self) -> dict[str, Any]:
        return {"replayed": self.replayed, "skipped": self.skipped, "messages": [asdict(m) for m in self.messages]}


class DeadLetters(Protocol):
    queues: tuple[str, ...]

    def list(self, max_count: int) -> list[DeadLetter]: ...

    def replay(self, max_count: int) -> ReplayReport: ...


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode("utf-8", "replace") if isinstance(value, (bytes, bytearray)) else str(value)


def _props(raw: Any) -> dict[str, Any]:
    return {_text(k): (_text(v) if isinstance(v, (bytes, bytearray)) else v) for k, v in (raw or {}).items()}


def _iso(value: Any) -> str | None:
    if isinstance(value, datetime):
        return value.isoformat()
    return _text(value)


def _int(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _body_bytes(body: Any) -> bytes:
    if body is None:
        return b""
    if isinstance(body, (bytes, bytearray)):
        return bytes(body)
    if isinstance(body, str):
        return body.encode("utf-8")
    return b"".join(part if isinstance(part, (bytes, bytearray)) else str(part).encode() for part in body)


def describe(queue: str, body: bytes, *, message_id: Any, sequence_number: Any, reason: Any, description: Any,
             enqueued_time: Any, properties: Any) -> DeadLetter:
    """The shown form of one dead letter: event id and kind from the body, nothing else of it."""
    try:
        event = event_from_json(body)
        event_id, kind = event.id, event.kind
    except EventFormatError:
        event_id, kind = None, None
    props = _props(properties)
    desc = _text(description)
    return DeadLetter(queue, _text(message_id), _int(sequence_number), event_id, kind, _text(reason),
                      redact(desc) if desc else desc, _iso(enqueued_time), _int(props.get("attempt")))


def replay_message_id(event_id: str, sequence_number: int | None) -> str:
    return f"{event_id}.replay.{sequence_number if sequence_number is not None else 0}"


# --- Azure Service Bus ---------------------------------------------------------------------------

class ServiceBusDeadLetters:
    """Reads with peek (list) or peek-lock receive (replay) on each queue's dead-letter sub-queue."""

    def __init__(self, client_factory: Callable[[], Any], changes_queue: str, parked_queue: str,
                 wait_seconds: float = 5.0):
        self._client_factory = client_factory
        self.changes_queue = changes_queue
        self.queues = (changes_queue, parked_queue)
        self._wait = wait_seconds

    def _receiver(self, client: Any, queue: str) -> Any:
        from azure.servicebus import ServiceBusSubQueue

        return client.get_queue_receiver(queue, sub_queue=ServiceBusSubQueue.DEAD_LETTER, max_wait_time=self._wait)

    def _run(self, work: Callable[[Any], Any]) -> Any:
        try:
            client = self._client_factory()
            with client:
                return work(client)
        except DeadLettersUnavailable:
            raise
        except Exception as exc:  # SDK errors can carry a connection string's parts: say what to check
            name = type(exc).__name__
            if "Auth" in name or "Unauthorized" in name:
                why = ("refused access: check the identity's 'Azure Service Bus Data Receiver' and 'Data Sender' "
                       "roles, or the key in ServiceBusConnection")
            elif "EntityNotFound" in name or "MessagingEntityNotFound" in name:
                why = "has no such queue: check CHANGES_QUEUE and PARKED_QUEUE"
            else:
                why = ("could not be reached: check ServiceBusConnection (or "
                       "ServiceBusConnection__fullyQualifiedNamespace) and the network")
            raise DeadLettersUnavailable(f"Service Bus {why} ({name})") from None

    def list(self, max_count: int) -> list[DeadLetter]:
        def work(client: Any) -> list[DeadLetter]:
            out: list[DeadLetter] = []
            for queue in self.queues:
                with self._receiver(client, queue) as receiver:
                    next_seq = 0
                    while len(out) < max_count:
                        page = receiver.peek_messages(max_message_count=min(max_count - len(out), 250),
                                                      sequence_number=next_seq)
                        if not page:
                            break
                        out.extend(self._describe(queue, m) for m in page)
                        next_seq = max(int(m.sequence_number) for m in page) + 1
            return out[:max_count]

        return self._run(work)

    def replay(self, max_count: int) -> ReplayReport:
        from shared.adapters.servicebus import to_message

        def work(client: Any) -> ReplayReport:
            report = ReplayReport()
            with client.get_queue_sender(self.changes_queue) as sender:
                for queue in self.queues:
                    seen: set[Any] = set()  # a skipped message comes round again: stop there
                    with self._receiver(client, queue) as receiver:
                        while report.replayed < max_count:
                            batch = receiver.receive_messages(max_message_count=min(max_count - report.replayed, 100),
                                                              max_wait_time=self._wait)
                            fresh = [m for m in batch if m.sequence_number not in seen]
                            if not fresh:
                                for m in batch:
                                    receiver.abandon_message(m)
                                break
                            for m in batch:
                                if m.sequence_number in seen:
                                    receiver.abandon_message(m)
                                    continue
                                seen.add(m.sequence_number)
                                body = _body_bytes(m.body)
                                try:
                                    event = event_from_json(body)
                                except EventFormatError:
                                    # Replaying cannot fix a body that is not a change event.
                                    receiver.abandon_message(m)
                                    report.skipped += 1
                                    continue
                                message = to_message(event, attempt=1)
                                message.message_id = replay_message_id(event.id, _int(m.sequence_number))
                                # Sent before the dead letter is completed: a crash between the two
                                # replays it twice, which processing by event id absorbs.
                                sender.send_messages(message)
                                receiver.complete_message(m)
                                report.replayed += 1
                                report.messages.append(Replayed(queue, _text(m.message_id), message.message_id,
                                                                event.id, event.kind))
            return report

        return self._run(work)

    @staticmethod
    def _describe(queue: str, m: Any) -> DeadLetter:
        return describe(queue, _body_bytes(m.body), message_id=m.message_id, sequence_number=m.sequence_number,
                        reason=m.dead_letter_reason, description=m.dead_letter_error_description,
                        enqueued_time=m.enqueued_time_utc, properties=m.application_properties)


# --- the local Functions host (sandbox/host) -----------------------------------------------------

class LocalHostDeadLetters:
    """The local host's admin API: ``GET /admin/queues/<q>/deadletter?max=N`` and
    ``POST /admin/queues/<q>/deadletter/replay`` (master key in ``x-functions-key``)."""

    def __init__(self, base_url: str, key: str | None, changes_queue: str, parked_queue: str, timeout: float = 10.0,
                 session: Any = None):
        import requests

        self.base_url = base_url.rstrip("/")
        self.queues = (changes_queue, parked_queue)
        self._session = session or requests.Session()
        self._headers = {"x-functions-key": key} if key else {}
        self._timeout = timeout

    def _call(self, method: str, path: str, **kw: Any) -> Any:
        import requests

        try:
            resp = self._session.request(method, f"{self.base_url}{path}", headers=self._headers,
                                         timeout=self._timeout, **kw)
        except requests.RequestException as exc:
            raise DeadLettersUnavailable(f"local host at {self.base_url} unreachable: is the local stack running "
                                         "(make keep)? Check STRADDLE_LOCAL_HOST") from None
        if resp.status_code in (401, 403):
            raise DeadLettersUnavailable(f"local host refused the master key (HTTP {resp.status_code})")
        if resp.status_code == 404:
            return None  # the host does not know this queue: nothing dead-lettered there
        if resp.status_code >= 300:
            raise DeadLettersUnavailable(f"local host answered HTTP {resp.status_code} to {method} {path.split('?')[0]}")
        try:
            return resp.json()
        except ValueError:
            raise DeadLettersUnavailable(f"local host answered {method} {path.split('?')[0]} with something not JSON") from None

    def list(self, max_count: int) -> list[DeadLetter]:
        out: list[DeadLetter] = []
        for queue in self.queues:
            if len(out) >= max_count:
                break
            answer = self._call("GET", f"/admin/queues/{queue}/deadletter", params={"max": max_count - len(out)})
            for m in _messages(answer):
                out.append(describe(
                    queue, _body_bytes(m.get("body")), message_id=m.get("message_id"),
                    sequence_number=m.get("sequence_number"),
                    reason=m.get("dead_letter_reason", m.get("reason")),
                    description=m.get("dead_letter_error_description", m.get("description")),
                    enqueued_time=m.get("enqueued_time_utc", m.get("enqueued_time")),
                    properties=m.get("application_properties")))
        return out[:max_count]

    def replay(self, max_count: int) -> ReplayReport:
        report = ReplayReport()
        for queue in self.queues:
            left = max_count - report.replayed
            if left <= 0:
                break
            answer = self._call("POST", f"/admin/queues/{queue}/deadletter/replay", json={"max": left},
                                params={"max": left})
            report.replayed += int((answer or {}).get("replayed", 0))
        return report


def _messages(answer: Any) -> Iterable[dict]:
    if isinstance(answer, dict):
        answer = answer.get("messages")
    return [m for m in (answer or []) if isinstance(m, dict)]


# --- selection ---------------------------------------------------------------------------------

LOCAL_STATE = Path("sandbox/host/.state/host.json")


def parse_local_connection(value: str) -> tuple[str, str | None]:
    """``LocalHost=http://127.0.0.1:7071;Key=<master key>`` -> (url, key)."""
    parts = dict(p.split("=", 1) for p in value.split(";") if "=" in p)
    return parts["LocalHost"].strip(), (parts.get("Key") or "").strip() or None


def local_host_key(explicit: str | None, state_file: Path = LOCAL_STATE) -> str | None:
    if explicit:
        return explicit
    try:
        return json.loads(state_file.read_text()).get("master_key")
    except (OSError, ValueError, AttributeError):
        return None


def dead_letters_for(settings: Any, local_host: str | None = None, local_key: str | None = None) -> DeadLetters:
    """The local host when ``local_host`` (STRADDLE_LOCAL_HOST) is given or the Service Bus setting
    is ``LocalHost=...``; otherwise Azure Service Bus from the app's own settings."""
    conn = settings.servicebus_connection_string or ""
    parked = settings.parked_queue or f"{settings.changes_queue}-parked"
    if local_host:
        return LocalHostDeadLetters(local_host, local_host_key(local_key), settings.changes_queue, parked)
    if conn.startswith("LocalHost="):
        url, key = parse_local_connection(conn)
        return LocalHostDeadLetters(url, local_host_key(local_key or key), settings.changes_queue, parked)
    settings.require_servicebus()
    from azure.servicebus import ServiceBusClient

    if conn:
        return ServiceBusDeadLetters(lambda: ServiceBusClient.from_connection_string(conn, retry_total=2),
                                     settings.changes_queue, parked)
    from shared.bootstrap import azure_credential

    credential = azure_credential(settings.servicebus_client_id)
    return ServiceBusDeadLetters(lambda: ServiceBusClient(settings.servicebus_namespace, credential, retry_total=2),
                                 settings.changes_queue, parked)


__all__ = ["DeadLetter", "DeadLetters", "DeadLettersUnavailable", "LocalHostDeadLetters", "ReplayReport", "Replayed",
           "ServiceBusDeadLetters", "dead_letters_for", "describe", "replay_message_id"]
