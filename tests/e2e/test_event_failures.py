"""A failure on the event path through the local host: with Dataverse answering 403 to everything,
a change event is retried later with backoff and parked after MAX_ATTEMPTS, never dead-lettered by
the broker after a burst of immediate redeliveries."""
from __future__ import annotations

import time
import uuid

import pytest

from sandbox.demo.stack import DemoStack
from sandbox.demo.tenant import generate
from shared.domain.events import ChangeEvent, ContactChanged, Origin

pytestmark = pytest.mark.integration


def test_a_forced_403_is_retried_with_backoff_and_parked_after_max_attempts(azurite_tables):
    settings = {"MAX_ATTEMPTS": "3", "RETRY_DELAY_SECONDS": "1"}
    stack = DemoStack(settings, seed=generate(contacts=30, seed=5), azurite_connection=azurite_tables).start()
    try:
        contact_id = stack.seed["contacts"][0]["contactid"]
        person = str(uuid.uuid4())
        event = ChangeEvent(str(uuid.uuid4()), "contact", contact_id, "Update",
                            Origin("2027-01-15T08:00:00.000Z", person, person, None, None, 1),
                            ContactChanged(("donotbulkemail",), True, False, {}))
        stack.sandbox.set_faults({"error_share": {"403": 1.0}})
        started = time.monotonic()
        stack.host.bus.send([event])
        s = stack.container.settings
        parked_q, changes_q = stack.host.bus.queue(s.parked_queue), stack.host.bus.queue(s.changes_queue)
        deadline = started + 30
        while not parked_q.deadletter and time.monotonic() < deadline:
            time.sleep(0.05)
        elapsed = time.monotonic() - started
        (parked,) = parked_q.deadletter
        assert parked.application_properties["attempt"] == 3
        assert "gave up after 3 attempts" in parked.dead_letter_description
        assert "403" in parked.dead_letter_description
        # Retried later, not redelivered at once: 1 s then 2 s of backoff between the three attempts.
        assert elapsed >= 2.9, elapsed
        assert not changes_q.deadletter  # the broker never gave up on it
        assert changes_q.stats()["completed"] == 3
        assert stack.host.functions["process_changes"].failures == 0
    finally:
        stack.sandbox.set_faults({})
        stack.close()
