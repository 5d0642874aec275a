"""One poison event does not park its batch: 100 people set their flag in the Dataverse sandbox, the
webhooks go through the real function code, and process_changes takes the 100 events as one batch
(ServiceBusMessage). The sandbox refuses every request that mentions one of the contacts."""
from __future__ import annotations

import json

import function_app
import pytest

from sandbox.stack import Stack
from shared.domain.consent import ConsentValue
from tests.integration.tenant import consent_row, contact, gid, mappings_file, tenant

pytestmark = pytest.mark.integration

CONTOSO = gid("Contoso marketing")


def test_a_batch_of_100_with_one_refused_read_settles_99_at_once_and_parks_only_that_one(azurite_tables, table_prefix):
    people = [contact(f"p{i}", f"p{i}@contoso.test") for i in range(100)]
    rows = [consent_row(f"p{i}@contoso.test", CONTOSO, None, ConsentValue.OPTED_IN.value) for i in range(100)]
    s = Stack(azurite_tables, table_prefix, tenant(people, consents=rows), mappings_file("single-brand"),
              settings={"MAX_ATTEMPTS": "3", "RETRY_DELAY_SECONDS": "30"})
    try:
        poison = people[37]["contactid"]
        for p in people:
            s.api("PATCH", f"contacts({p['contactid']})", {"donotbulkemail": True})
        s.sandbox.wait_for_webhooks(timeout=10)
        batch = s.queue.take()
        assert len(batch) == 100
        s.sandbox.set_faults({"refuse": {poison: 403}})

        function_app.process_changes(batch)  # one delivery: no retry delay has passed yet

        opted_out = {p["contactid"] for i, p in enumerate(people) if s.opted_out(f"p{i}@contoso.test", CONTOSO)}
        assert opted_out == {p["contactid"] for p in people} - {poison}
        (retried,) = s.queue.later
        assert retried[1:] == (30, 2)  # only the poison event waits for a retry
        assert not s.queue.parked
        s.drain()  # its retries (the stack does not wait out the delay): refused each time, then parked
        (body, reason), = s.queue.parked
        assert json.loads(body)["record_id"] == poison
        assert reason.startswith("gave up after 3 attempts") and "403" in reason
        assert not s.opted_out("p37@contoso.test", CONTOSO)
    finally:
        s.sandbox.set_faults({})
        s.close()
