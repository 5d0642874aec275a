"""The reconciliation benchmark's tenant, small (bench/reconcile.py runs it at 100k and 1M): the
healing run stays within the request budget and leaves nothing for the next dry run."""
from __future__ import annotations

import math
import uuid

import pytest

from bench.tenant import build
from sandbox.stack import Stack
from shared.service_layer.reconcile import run_reconciliation

pytestmark = pytest.mark.integration


def test_a_small_synthetic_tenant_heals_within_the_request_budget(azurite_tables):
    seed, mappings, planted = build(contacts=3000, lists=20, opted_out=0.05, drift=0.02, seed=5)
    stack = Stack(azurite_tables, "scale" + uuid.uuid4().hex[:8], seed, mappings, register_webhooks=False)
    try:
        store = stack.sandbox.store
        pages = sum(math.ceil(len(store.data[t].rows) / 5000) for t in ("contact", "lead", "msdynmkt_contactpointconsent4"))
        pages += sum(max(1, math.ceil(len(m) / 5000)) for m in store.members["listcontact_association"].values())
        pages += 22 - len(store.members["listcontact_association"])  # empty lists still take a page
        dry = run_reconciliation(stack.container, dry_run=True)
        heal = run_reconciliation(stack.container)
        after = run_reconciliation(stack.container, dry_run=True)
    finally:
        stack.close()
    assert sum(planted[k] for k in ("D1", "D2", "D3", "D5")) > 0
    assert dry["drift_found"] >= heal["drift_fixed"] > 0 and heal["failures"] == 0
    assert heal["dataverse_requests"] <= 1.2 * (pages + math.ceil(heal["drift_fixed"] / 1000))
    assert after["drift_found"] == 0


@pytest.mark.parametrize("readers", [3, 8])
def test_a_tenant_with_sequential_keys_is_shared_out_evenly_and_read_once(azurite_tables, readers):
    """Dataverse's own ids sit in a few server bands: equal key ranges would leave one reader nearly
    all the work. Readers split the busiest range as they go; every row is still read exactly once,
    and the findings are those of the same tenant with random keys."""
    reports = {}
    for style in ("sequential", "random"):
        seed, mappings, _ = build(contacts=4000, lists=4, opted_out=0.05, drift=0.05, seed=9, key_style=style)
        stack = Stack(azurite_tables, "bands" + uuid.uuid4().hex[:8], seed, mappings, register_webhooks=False,
                      settings={"DATAVERSE_PAGE_SIZE": "100", "RECONCILE_READERS": str(readers)})
        try:
            store = stack.sandbox.store
            rows = sum(len(store.data[t].rows) for t in ("contact", "lead", "msdynmkt_contactpointconsent4"))
            rows += sum(len(m) for m in store.members["listcontact_association"].values())
            reports[style] = report = run_reconciliation(stack.container, dry_run=True)
        finally:
            stack.close()
        assert report["rows_scanned"] == report["scan_rows_read"] == rows  # every row, once
        assert report["scan_busiest_reader_pages"] < 2 * report["scan_mean_reader_pages"]
    assert reports["sequential"]["scan_splits"] >= readers - 1  # one range, split among the readers
    same = ("candidates", "drift_found", *(f"found_D{i}" for i in range(1, 6)))
    assert {k: reports["sequential"][k] for k in same} == {k: reports["random"][k] for k in same}
