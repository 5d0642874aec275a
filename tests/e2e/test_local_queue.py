"""The local host's queue keeps the Service Bus semantics the app relies on (no network)."""
from __future__ import annotations

import time

from sandbox.host.queue import (MAX_DELIVERY_REASON, PARK_REASON, LocalQueue, LocalServiceBus, Message,
                                event_message)
from shared.domain.events import ChangeEvent, ContactChanged, Origin


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def msg(mid: str, body: bytes = b"{}") -> Message:
    return Message(body=body, message_id=mid)


def event(eid: str = "6f0e6c1e-0000-4000-8000-000000000001") -> ChangeEvent:
    return ChangeEvent(eid, "contact", "6f0e6c1e-0000-4000-8000-0000000000c1", "Update",
                       Origin(None, "u", "u", None, None, 1), ContactChanged(("donotbulkemail",), True, False, {}))


def test_peek_lock_hides_a_received_message_until_it_is_settled():
    q = LocalQueue("q")
    q.send([msg("a"), msg("b")])
    (first,) = q.receive(1, 0.0)
    assert first.message_id == "a" and first.delivery_count == 1
    (second,) = q.receive(5, 0.0)
    assert second.message_id == "b" and q.receive(5, 0.0, wait_for_first=0.0) == []
    q.abandon([first])
    q.complete([second])
    (again,) = q.receive(5, 0.0)
    assert again.message_id == "a" and again.delivery_count == 2
    assert q.stats()["completed"] == 1


def test_dead_letter_after_max_delivery_count_with_the_reason():
    q = LocalQueue("q")
    q.send([msg("poison")])
    for n in range(1, 11):
        (m,) = q.receive(1, 0.0)
        assert m.delivery_count == n
        q.abandon([m])
    assert q.receive(1, 0.0, wait_for_first=0.0) == []
    (dead,) = q.deadletter
    assert dead.dead_letter_reason == MAX_DELIVERY_REASON and dead.delivery_count == 10
    assert "10 delivery attempts" in dead.dead_letter_description


def test_duplicate_detection_drops_a_repeated_message_id_within_the_window_only():
    clock = Clock()
    q = LocalQueue("q", clock)
    assert q.send([msg("x")]) == 1 and q.send([msg("x")]) == 0
    clock.now += 599
    assert q.send([msg("x")]) == 0
    clock.now += 2  # 10 minutes after the first send: the id is forgotten
    assert q.send([msg("x")]) == 1
    assert q.stats()["duplicates_dropped"] == 2 and q.stats()["active"] == 2


def test_scheduled_messages_wait_for_their_time():
    clock = Clock()
    bus = LocalServiceBus("changes", "changes-parked", time_scale=0.5, clock=clock)
    e = event()
    bus.send_later(e, delay_seconds=30, attempt=2)
    q = bus.queue("changes")
    assert q.stats()["scheduled"] == 1 and q.receive(1, 0.0, wait_for_first=0.0) == []
    clock.now += 14.9
    assert q.receive(1, 0.0, wait_for_first=0.0) == []
    clock.now += 0.2  # 30 s scaled by 0.5
    (m,) = q.receive(1, 0.0, wait_for_first=0.0)
    assert m.message_id == f"{e.id}.2.{int(1_000_000 + 30)}" and m.application_properties["attempt"] == 2


def test_scheduled_delivery_in_real_time():
    bus = LocalServiceBus("changes", "changes-parked", time_scale=0.01)
    bus.send_later(event(), delay_seconds=30, attempt=2)  # 0.3 s
    started = time.monotonic()
    (m,) = bus.queue("changes").receive(1, 0.0, wait_for_first=5.0)
    assert 0.25 <= time.monotonic() - started < 3


def test_send_matches_the_service_bus_adapter():
    bus = LocalServiceBus("changes", "changes-parked")
    e = event()
    bus.send([e, e])  # the same event twice: duplicate detection keeps one
    (m,) = bus.queue("changes").receive(10, 0.0)
    assert m.message_id == e.id and m.body == e.to_json().encode()
    assert m.application_properties == event_message(e).application_properties
    assert m.application_properties["attempt"] == 1


def test_send_raw_goes_to_the_named_queue():
    bus = LocalServiceBus("changes", "changes-parked")
    bus.send_raw("straddle-reconcile", [("run-1.0", b'{"chunk": 0}'), ("run-1.0", b'{"chunk": 0}')])
    (m,) = bus.queue("straddle-reconcile").receive(10, 0.0)
    assert (m.message_id, m.body) == ("run-1.0", b'{"chunk": 0}')


def test_park_dead_letters_on_the_parking_queue_and_replay_resubmits_a_first_attempt():
    bus = LocalServiceBus("changes", "changes-parked")
    bus.park(b'{"bad": 1}', "gave up after 5 attempts: 503", 5, "m-1")
    parked = bus.queue("changes-parked")
    (dead,) = parked.deadletter
    assert dead.dead_letter_reason == PARK_REASON and dead.dead_letter_description.startswith("gave up after 5")
    assert parked.stats()["active"] == 0
    assert bus.replay("changes-parked") == 1 and parked.deadletter == []
    (m,) = bus.queue("changes").receive(1, 0.0)
    assert m.body == b'{"bad": 1}' and m.application_properties == {"attempt": 1}
    assert m.message_id.startswith("m-1.replay-")
