"""The nightly reconciliation: find and heal every drift between the two worlds.

A package by stage, in the order a run goes through them (``run``):

- ``scan``: pass 1 streams the tenant once (consent rows, each mapped and opt-out list, every
  contact and lead) through the pure DriftScan, which keeps only compact sets and names candidates;
  read in key-range partitions planned at run time, on concurrent readers, every page checkpointed
  (``checkpoints``) so an interrupted run reads only the rest.
- ``chunks``: pass 2 hands the candidates, a chunk at a time, to the same engine the event path
  uses: it reads their rows in $batch rounds, plans with the one planner and writes the differences
  in bulk, and every fix goes to the ledger as event-path fixes do. A dry run plans but writes
  nothing (no fixes, no ledger, no snapshots, no stored report).
- ``report``: the report is stored in the ``runs`` table and logged as one structured record
  (``reconcile.report``), with the list snapshots the next run diffs against.
- ``messages``: big tenants: when the candidates exceed RECONCILE_FANOUT_ABOVE, the timer sends the
  chunks to the RECONCILE_QUEUE and ``reconcile_chunk`` heals them on as many instances as the host
  scales to. A chunk records its result under the run; a redelivered chunk finds its result and
  does nothing, so a run resumes where it stopped; the chunk that completes the set writes the
  aggregated report.
"""
from shared.service_layer.reconcile.config import SCAN_SECONDS_PER_INVOCATION, ReconcileConfig
from shared.service_layer.reconcile.run import nightly, reconcile, run_chunk, run_reconciliation, unfinished_run

__all__ = ["SCAN_SECONDS_PER_INVOCATION", "ReconcileConfig", "nightly", "reconcile", "run_chunk",
           "run_reconciliation", "unfinished_run"]
