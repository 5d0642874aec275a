"""The nightly timer on the local host, fanned out: the timer (run through the admin endpoint with
the master key) sends chunks to RECONCILE_QUEUE, reconcile_chunk heals them from the host's queue."""
from __future__ import annotations


import pytest

from sandbox.demo.stack import DemoStack
from sandbox.demo.tenant import generate

pytestmark = pytest.mark.integration


def test_the_timer_fans_out_and_the_chunks_heal_the_drift(azurite_tables):
    settings = {"RECONCILE_FANOUT_ABOVE": "1", "RECONCILE_CHUNK_SIZE": "3"}
    stack = DemoStack(settings, seed=generate(contacts=300, seed=9), azurite_connection=azurite_tables,
                      master_key="fanout-master-key").start()
    try:
        from shared.service_layer.reconcile import run_reconciliation

        before = run_reconciliation(stack.container, dry_run=True)
        assert before["drift_found"] > 0
        assert stack.run_timer("nightly_reconcile") == 202
        assert stack.settle(30)
        chunks = stack.host.bus.queue(stack.container.settings.reconcile_queue).stats()
        assert chunks["completed"] >= 1 and chunks["deadletter"] == 0  # fanned out, every chunk settled
        assert stack.host.functions["reconcile_chunk"].failures == 0
        assert stack.host.functions["nightly_reconcile"].failures == 0
        after = run_reconciliation(stack.container, dry_run=True)
        assert after["drift_found"] == 0, after
    finally:
        stack.close()
