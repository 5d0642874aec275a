"""The Service Bus adapter, with a fake client factory (Service Bus cannot run on this machine)."""
from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from shared.adapters.servicebus import ServiceBusEventQueue, to_message
from shared.domain.events import ChangeEvent, MembershipChanged, Origin, event_from_json
from shared.ports import QueueUnavailable
from tests import notifications as n

EVENT = ChangeEvent("0b0b0b0b-1111-2222-3333-444455556666", "list", n.LIST_ID, "RemoveMember",
                    Origin(None, None, None, n.CORRELATION_ID, n.ORG_ID, 1),
                    MembershipChanged("removed", (n.LIST_ID,), (n.CONTACT_ID,), None))
OTHER = ChangeEvent("1c1c1c1c-1111-2222-3333-444455556666", "list", n.LIST_ID, "AddMember",
                    Origin(None, None, None, None, None, None),
                    MembershipChanged("added", (n.LIST_ID,), (n.CONTACT_ID,), None))


def body_bytes(message) -> bytes:
    return b"".join(bytes(part) if not isinstance(part, str) else part.encode() for part in message.body)


def test_to_message():
    m = to_message(EVENT)
    assert m.message_id == EVENT.id
    assert m.content_type == "application/json"
    assert m.subject == "membership_changed" and m.correlation_id == n.CORRELATION_ID
    assert m.application_properties == {"kind": "membership_changed", "table": "list", "schema": 1, "attempt": 1}
    assert json.loads(body_bytes(m)) == EVENT.to_dict()
    assert event_from_json(body_bytes(m)) == EVENT


def test_to_message_attempt():
    assert to_message(EVENT, 3).application_properties["attempt"] == 3


class FakeSender:
    def __init__(self, client):
        self.client, self.sent, self.scheduled, self.closed = client, [], [], False

    def send_messages(self, messages):
        if self.client.factory.failures:
            self.client.factory.failures -= 1
            raise ConnectionError("link detached")
        self.sent.extend(messages)

    def schedule_messages(self, messages, at):
        self.scheduled.append((messages, at))

    def close(self):
        self.closed = True


class FakeClient:
    def __init__(self, factory):
        self.factory, self.senders, self.closed = factory, [], False

    def get_queue_sender(self, queue_name):
        self.factory.queue_names.append(queue_name)
        sender = FakeSender(self)
        self.senders.append(sender)
        return sender

    def close(self):
        self.closed = True


class FakeFactory:
    def __init__(self, failures=0):
        self.clients, self.queue_names, self.failures = [], [], failures

    def __call__(self):
        client = FakeClient(self)
        self.clients.append(client)
        return client

    def senders(self):
        return [s for c in self.clients for s in c.senders]


def test_one_sender_is_reused_across_sends():
    factory = FakeFactory()
    queue = ServiceBusEventQueue(factory, "straddle-changes")
    queue.send([EVENT])
    queue.send([OTHER])
    assert len(factory.clients) == 1 and len(factory.senders()) == 1
    assert factory.queue_names == ["straddle-changes"]
    assert [m.message_id for m in factory.senders()[0].sent] == [EVENT.id, OTHER.id]


def test_nothing_to_send_opens_nothing():
    factory = FakeFactory()
    ServiceBusEventQueue(factory, "q").send([])
    assert factory.clients == []


def test_failure_resets_and_raises_queue_unavailable_then_recovers():
    factory = FakeFactory(failures=1)
    queue = ServiceBusEventQueue(factory, "q")
    with pytest.raises(QueueUnavailable) as exc:
        queue.send([EVENT])
    assert "ConnectionError" in str(exc.value)
    first = factory.clients[0]
    assert first.closed and first.senders[0].closed
    queue.send([EVENT])  # the next send builds a fresh client and sender
    assert len(factory.clients) == 2 and not factory.clients[1].closed
    assert [m.message_id for m in factory.clients[1].senders[0].sent] == [EVENT.id]


def test_a_failing_factory_is_queue_unavailable_too():
    def factory():
        raise ValueError("bad connection string")

    with pytest.raises(QueueUnavailable):
        ServiceBusEventQueue(factory, "q").send([EVENT])


def test_close_errors_do_not_hide_the_send_failure():
    factory = FakeFactory(failures=1)
    queue = ServiceBusEventQueue(factory, "q")

    def broken_close():
        raise RuntimeError("already closed")

    original = FakeClient.close
    FakeClient.close = lambda self: broken_close()
    try:
        with pytest.raises(QueueUnavailable):
            queue.send([EVENT])
    finally:
        FakeClient.close = original
    queue.send([EVENT])
    assert len(factory.clients) == 2


def test_send_later_schedules_with_the_attempt():
    factory = FakeFactory()
    queue = ServiceBusEventQueue(factory, "q")
    before = datetime.now(timezone.utc).timestamp()
    queue.send_later(EVENT, 60, attempt=2)
    (messages, at), = factory.senders()[0].scheduled
    # Its own MessageId: duplicate detection would drop a copy that reused the original's.
    assert messages[0].message_id == f"{EVENT.id}.2.{int(at.timestamp())}"
    assert messages[0].application_properties["attempt"] == 2
    assert json.loads(str(messages[0]))["id"] == EVENT.id
    assert before + 59 <= at.timestamp() <= datetime.now(timezone.utc).timestamp() + 61
    assert at.tzinfo is not None
