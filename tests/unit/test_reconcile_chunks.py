"""Fanned-out reconciliation chunks: each message fits a Standard-tier Service Bus message."""
from __future__ import annotations

import json
import uuid

from shared.domain.planner import Trigger
from shared.service_layer.reconcile.messages import MAX_MESSAGE_BYTES, chunk_message, fit_in_messages


def triggers(n: int) -> list[Trigger]:
    return [Trigger("inspect_member", "20270101T020000-abcdef", member=("contact", str(uuid.uuid4())))
            for _ in range(n)]


def test_a_big_chunk_is_split_until_every_message_fits():
    parts = fit_in_messages(triggers(5000))  # ~540 KB as one message
    assert len(parts) > 1 and sum(len(p) for p in parts) == 5000
    for p in parts:
        assert len(chunk_message("20270101T020000-abcdef", "2027-01-01T02:00:00Z", 0, len(parts), p)) <= MAX_MESSAGE_BYTES


def test_a_small_chunk_stays_whole_and_round_trips():
    ts = triggers(10) + [Trigger("left_list", "r:D4", member=("lead", str(uuid.uuid4())), list_id=str(uuid.uuid4()))]
    (part,) = fit_in_messages(ts)
    body = json.loads(chunk_message("r", "2027-01-01T02:00:00Z", 0, 1, part))
    back = [Trigger(k, c, tuple(m) if m else None, e, l) for k, c, m, e, l in body["triggers"]]
    assert back == ts
