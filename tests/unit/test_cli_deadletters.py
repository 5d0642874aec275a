"""The dead-letters port: the Azure Service Bus implementation against fake receivers and a sender,
and which implementation the settings select."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest

from shared.adapters.deadletters import (
    DeadLettersUnavailable,
    LocalHostDeadLetters,
    ServiceBusDeadLetters,
    dead_letters_for,
    describe,
)
from shared.adapters.settings import Settings
from shared.domain.events import ChangeEvent, ConsentChanged, Origin

EMAIL = "secret.person@example.test"


def event(n: int) -> ChangeEvent:
    return ChangeEvent(f"ev{n}", "msdynmkt_contactpointconsent4", f"row{n}", "Update",
                       Origin("2026-01-01T00:00:00Z", "u", "u", "c", "o", 1),
                       ConsentChanged(EMAIL, 534120000, 534120001, 534120002, "p", "t", 534120000, None))


@dataclass
class Msg:
    sequence_number: int
    body: Any
    message_id: str
    dead_letter_reason: str | None = "StraddleGaveUp"
    dead_letter_error_description: str | None = None
    enqueued_time_utc: datetime = datetime(2026, 1, 2, tzinfo=UTC)
    application_properties: dict = field(default_factory=lambda: {b"attempt": 5})


class FakeReceiver:
    def __init__(self, bus: FakeBus, queue: str):
        self.bus, self.queue = bus, queue

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def peek_messages(self, max_message_count: int = 1, sequence_number: int = 0):
        msgs = [m for m in self.bus.dlq[self.queue] if m.sequence_number >= sequence_number]
        return msgs[:min(max_message_count, 2)]  # pages smaller than asked, as the service may give

    def receive_messages(self, max_message_count: int = 1, max_wait_time: float | None = None):
        out = [m for m in self.bus.dlq[self.queue] if m.sequence_number not in self.bus.locked][:max_message_count]
        self.bus.locked.update(m.sequence_number for m in out)
        return out

    def complete_message(self, m):
        self.bus.dlq[self.queue].remove(m)
        self.bus.locked.discard(m.sequence_number)
        self.bus.completed.append(m.message_id)

    def abandon_message(self, m):
        self.bus.locked.discard(m.sequence_number)
        self.bus.abandoned.append(m.message_id)


class FakeSender:
    def __init__(self, bus):
        self.bus = bus

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def send_messages(self, message):
        self.bus.sent.append(message)


class FakeBus:
    def __init__(self, dlq: dict[str, list[Msg]]):
        self.dlq = dlq
        self.locked: set[int] = set()
        self.sent: list[Any] = []
        self.completed: list[str] = []
        self.abandoned: list[str] = []
        self.sub_queues: list[Any] = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def get_queue_receiver(self, queue, sub_queue=None, max_wait_time=None):
        self.sub_queues.append(sub_queue)
        return FakeReceiver(self, queue)

    def get_queue_sender(self, queue):
        assert queue == "changes"
        return FakeSender(self)


def bus_with(n_changes: int, n_parked: int, bad: bool = False) -> FakeBus:
    changes = [Msg(i, [event(i).to_json().encode()], f"ev{i}", "MaxDeliveryCountExceeded") for i in range(n_changes)]
    parked = [Msg(100 + i, [event(100 + i).to_json().encode()], f"ev{100 + i}",
                  dead_letter_error_description=f"gave up after 5 attempts: 400 quoting {EMAIL}")
              for i in range(n_parked)]
    if bad:
        parked.append(Msg(999, [b"not json"], "junk"))
    return FakeBus({"changes": changes, "changes-parked": parked})


def port(bus: FakeBus) -> ServiceBusDeadLetters:
    return ServiceBusDeadLetters(lambda: bus, "changes", "changes-parked", wait_seconds=0)


def test_list_peeks_both_dead_letter_queues_without_the_body():
    from azure.servicebus import ServiceBusSubQueue

    bus = bus_with(3, 2, bad=True)
    items = port(bus).list(50)
    assert [(d.queue, d.message_id) for d in items] == [
        ("changes", "ev0"), ("changes", "ev1"), ("changes", "ev2"),
        ("changes-parked", "ev100"), ("changes-parked", "ev101"), ("changes-parked", "junk")]
    assert set(bus.sub_queues) == {ServiceBusSubQueue.DEAD_LETTER}
    d = items[3]
    assert (d.event_id, d.kind, d.reason, d.attempt) == ("ev100", "consent_changed", "StraddleGaveUp", 5)
    assert d.enqueued_time == "2026-01-02T00:00:00+00:00"
    assert items[-1].kind is None and items[-1].event_id is None
    assert EMAIL not in repr(items) and "<email>" in d.description
    assert bus.completed == [] and bus.sent == []  # peek only


def test_list_respects_max_across_queues():
    items = port(bus_with(3, 3)).list(4)
    assert [d.message_id for d in items] == ["ev0", "ev1", "ev2", "ev100"]


def test_replay_resends_with_a_new_message_id_and_attempt_one_then_completes():
    bus = bus_with(2, 1, bad=True)
    report = port(bus).replay(100)
    assert report.replayed == 3 and report.skipped == 1
    assert [m.message_id for m in bus.sent] == ["ev0.replay.0", "ev1.replay.1", "ev100.replay.100"]
    assert all(m.application_properties["attempt"] == 1 for m in bus.sent)
    assert bus.sent[0].subject == "consent_changed"
    from shared.domain.events import event_from_json

    assert event_from_json(b"".join(bus.sent[0].body)) == event(0)  # the body goes back as it was
    assert bus.completed == ["ev0", "ev1", "ev100"]
    assert bus.dlq["changes"] == [] and [m.message_id for m in bus.dlq["changes-parked"]] == ["junk"]
    assert "junk" in bus.abandoned  # not a change event: left where it was
    first = report.messages[0]
    assert (first.queue, first.new_message_id, first.kind) == ("changes", "ev0.replay.0", "consent_changed")


def test_replay_stops_at_max():
    bus = bus_with(3, 3)
    assert port(bus).replay(2).replayed == 2
    assert len(bus.dlq["changes"]) == 1 and len(bus.dlq["changes-parked"]) == 3


def test_service_bus_failure_is_one_line_without_details():
    def broken():
        raise ConnectionError("amqps://secret-namespace.servicebus.windows.net refused")

    with pytest.raises(DeadLettersUnavailable) as exc:
        ServiceBusDeadLetters(broken, "changes", "changes-parked").list(1)
    text = str(exc.value)
    assert text.startswith("Service Bus could not be reached: check ServiceBusConnection") and "secret" not in text


def test_describe_reads_event_id_and_kind_only():
    d = describe("q", event(7).to_json().encode(), message_id="m", sequence_number="3", reason=b"r",
                 description=None, enqueued_time=None, properties={"attempt": "2"})
    assert (d.event_id, d.kind, d.sequence_number, d.reason, d.attempt) == ("ev7", "consent_changed", 3, "r", 2)


def settings(**env: str) -> Settings:
    return Settings.from_env({"CHANGES_QUEUE": "changes", **env})


def test_selection():
    local = dead_letters_for(settings(ServiceBusConnection="LocalHost=http://127.0.0.1:7071;Key=mk"))
    assert isinstance(local, LocalHostDeadLetters) and local.base_url == "http://127.0.0.1:7071"
    assert local._headers == {"x-functions-key": "mk"} and local.queues == ("changes", "changes-parked")
    by_env = dead_letters_for(settings(), local_host="http://127.0.0.1:9999/", local_key="k2")
    assert isinstance(by_env, LocalHostDeadLetters) and by_env.base_url == "http://127.0.0.1:9999"
    sb = dead_letters_for(settings(ServiceBusConnection="Endpoint=sb://x.servicebus.windows.net/;"
                                   "SharedAccessKeyName=k;SharedAccessKey=v", PARKED_QUEUE="parked"))
    assert isinstance(sb, ServiceBusDeadLetters) and sb.queues == ("changes", "parked")
    from shared.adapters.settings import SettingsError

    with pytest.raises(SettingsError):
        dead_letters_for(settings())
