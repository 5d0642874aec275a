"""The run: the stages a reconciliation goes through (start or resume, scan, fan out or heal, report),
for the timer, the CLI and the RECONCILE_QUEUE's messages."""
from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

from shared.domain.mappings import Mappings
from shared.domain.planner import Trigger
from shared.ports import ListSnapshotsPort, RunReportsPort, TenantSource
from shared.service_layer.process_changes import SyncEngine
from shared.service_layer.reconcile.chunks import ChunkResult, heal_chunk, heal_chunks, plan_chunks
from shared.service_layer.reconcile.config import CaseSink, Progress, ReconcileConfig, nightly_config
from shared.service_layer.reconcile.messages import chunk_message, chunk_triggers, fit_in_messages, scan_message
from shared.service_layer.reconcile.report import (deadlines, finish, finish_fanned_out, iso, no_mappings,
                                                   save_snapshots, store, timestamp)
from shared.service_layer.reconcile.scan import Scan, ScanPaused, scan_tenant
from shared.telemetry import emit

log = logging.getLogger("shared.reconcile")  # the emitted records keep the logger name they always had


def nightly(container, clock: Callable[[], float] = time.time) -> dict:
    """The timer's job: purge idempotency keys past their retention, then reconcile (fanning out
    to reconcile_chunk when the tenant is big). A run interrupted while scanning or healing inline
    (worker recycled, timeout, crash) within the last day is resumed rather than started afresh."""
    settings = container.settings
    cutoff = datetime.fromtimestamp(clock(), tz=timezone.utc) - timedelta(days=settings.processed_retention_days)
    purged = container.tables().processed.purge(cutoff)
    config = nightly_config(settings)
    unfinished = unfinished_run(container.tables().runs, clock)
    report = run_reconciliation(container, config=config, run_id=unfinished, fanout=lambda bodies: (
        container.event_queue().send_raw(settings.reconcile_queue, bodies)))
    report["processed_purged"] = purged
    return report


def unfinished_run(runs, clock: Callable[[], float] = time.time, within_hours: float = 23) -> str | None:
    """The newest run still "scanning" (it stopped before its report), if it started recently."""
    for r in runs.latest(limit=5):
        if r.get("status") == "scanning" and clock() - timestamp(r["started_at"]) < within_hours * 3600:
            return str(r["run_id"])
    return None


def run_reconciliation(container, *, dry_run: bool = False, progress: Progress | None = None,
                       config: ReconcileConfig | None = None, fanout=None, cases: CaseSink | None = None,
                       run_id: str | None = None) -> dict:
    """The reconciliation with the app's own adapters (the timer function and the CLI call this).
    ``cases`` sees every planned change (the dry run's review file)."""
    engine = container.sync_engine()
    tables = container.tables()
    config = config or ReconcileConfig(readers=container.settings.reconcile_readers)
    return reconcile(engine, engine.gateway, container.mappings(), tables.snapshots, tables.runs,
                     dry_run=dry_run, progress=progress, config=config, fanout=fanout, cases=cases, run_id=run_id,
                     on_report=None if dry_run else deadlines(container))


def reconcile(engine: SyncEngine, tenant: TenantSource, mappings: Mappings | None,
              snapshots: ListSnapshotsPort, runs: RunReportsPort | None, *, dry_run: bool = False,
              progress: Progress | None = None, run_id: str | None = None,
              config: ReconcileConfig | None = None, fanout: Callable[[list[tuple[str, bytes]]], None] | None = None,
              clock: Callable[[], float] = time.time, cases: CaseSink | None = None,
              on_report: Callable[[dict], dict] | None = None) -> dict:
    """Scans and heals (inline, or by fanning the chunks out); returns the report. ``cases`` sees every
    planned change (the dry run's review file); ``on_report`` adds fields to a finished healing
    run's report before it is stored (the opt-out deadline figures).

    A real run records its progress under its id (status "scanning", each finished scan
    partition, each healed chunk); called again with the id of a run that stopped early, it
    merges what is recorded, reads and heals only the rest, and writes the report once. A dry
    run writes nothing, so it is not resumable.
    """
    config = config or ReconcileConfig()
    run = _start(runs if not dry_run else None, run_id, dry_run, tenant, clock)
    if mappings is None:
        return no_mappings(run.header, clock)
    note = progress or (lambda stage, done, total: None)
    if run.keep is None or fanout is None:
        config = replace(config, scan_seconds=None)  # only a run that can hand over may stop early
    scanned = _scan(run, tenant, mappings, snapshots, note, config, fanout, clock)
    if scanned is None:
        return {**run.header, "status": "scanning"}
    chunks = [scanned.triggers[i:i + config.chunk] for i in range(0, len(scanned.triggers), config.chunk)]
    if (fanout is not None and not dry_run and config.fanout_above is not None
            and scanned.candidates > config.fanout_above):
        return _fan_out(run, tenant, snapshots, scanned, chunks, fanout, clock)
    total = _heal(run, engine, tenant, mappings, chunks, dry_run, config, note, clock, cases)
    return _report(run, tenant, snapshots, scanned, total, dry_run, clock, on_report)


@dataclass
class Run:
    """One run's bookkeeping: its report's header, and where (if anywhere) its progress is recorded."""

    run_id: str
    header: dict[str, Any]
    started: float
    keep: RunReportsPort | None  # None for a dry run: it records nothing, so it is not resumable
    resumed: bool  # an earlier attempt of this run stopped while scanning or healing
    requests_before: int  # the tenant's request count when this attempt began
    earlier: int = 0  # Dataverse requests the earlier attempt made (its checkpoints and healed chunks)

    def requests(self, tenant: TenantSource) -> int:
        return tenant.request_count() - self.requests_before + self.earlier


def _start(keep: RunReportsPort | None, run_id: str | None, dry_run: bool, tenant: TenantSource,
           clock: Callable[[], float]) -> Run:
    """A new run, or the one ``run_id`` names if it stopped while scanning (its start time stands)."""
    previous = keep.get(run_id) if keep is not None and run_id else None
    if previous is not None and previous.get("status") != "scanning":
        previous = None  # finished, or fanned out (its chunks resume themselves): start afresh
        run_id = None
    run_id = run_id or f"{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
    started = clock()
    header: dict[str, Any] = {"run_id": run_id, "started_at": iso(started), "dry_run": dry_run}
    if previous is not None:
        header["started_at"] = previous["started_at"]
        started = timestamp(header["started_at"])
    return Run(run_id, header, started, keep, previous is not None, tenant.request_count())


def _checkpoints(run: Run) -> dict[str, tuple[dict, bytes]]:
    """Records that the run is scanning, or, resuming, the partitions its earlier attempt finished."""
    if run.keep is None:
        return {}
    if not run.resumed:
        run.keep.save({**run.header, "status": "scanning"})
        return {}
    done = run.keep.partitions(run.run_id)
    emit(log, "reconcile.resumed", run_id=run.run_id, partitions_done=len(done))
    return done


def _scan(run: Run, tenant: TenantSource, mappings: Mappings, snapshots: ListSnapshotsPort, note: Progress,
          config: ReconcileConfig, fanout: Callable[[list[tuple[str, bytes]]], None] | None,
          clock: Callable[[], float]) -> Scan | None:
    """Pass 1, with its figures in the header; None when it used its invocation's time."""
    done = _checkpoints(run)
    keep = run.keep
    save_part = (lambda name, meta, payload: keep.save_partition(run.run_id, name, meta, payload)) if keep else None
    try:
        scanned = scan_tenant(tenant, mappings, snapshots, run.run_id, note, config, save_part, done)
    except ScanPaused as paused:
        # One invocation's worth of scan is done: a message carries the run to a fresh invocation.
        assert fanout is not None
        fanout([(f"{run.run_id}.scan.{int(clock())}", scan_message(run.run_id))])
        emit(log, "reconcile.scan_continued", run_id=run.run_id, detail=str(paused))
        return None
    run.earlier = sum(int(meta.get("requests", 0)) for meta, _ in done.values())  # an interrupted attempt's reads
    run.header.update(candidates=scanned.candidates, rows_scanned=scanned.rows_scanned,
                      first_snapshot_lists=scanned.first_snapshot_lists, scan_partitions=scanned.partitions,
                      scan_rows_read=scanned.rows_read, scan_splits=scanned.splits,
                      scan_rows_beyond_cut=scanned.rows_beyond,
                      scan_busiest_reader_pages=scanned.busiest_reader_pages,
                      scan_mean_reader_pages=round(scanned.mean_reader_pages, 1),
                      **{f"suspected_{k}": v for k, v in scanned.suspected.items()})
    if run.resumed:
        run.header["resumed_partitions"] = scanned.partitions - scanned.partitions_read
    return scanned


def _fan_out(run: Run, tenant: TenantSource, snapshots: ListSnapshotsPort, scanned: Scan,
             chunks: list[list[Trigger]], fanout: Callable[[list[tuple[str, bytes]]], None],
             clock: Callable[[], float]) -> dict:
    """A big tenant's pass 2: the chunks go to the queue; the last one healed writes the report."""
    header = run.header
    save_snapshots(snapshots, scanned.snapshots, [], clock)
    header.update(status="running", scan_requests=run.requests(tenant))
    parts = [p for c in chunks for p in fit_in_messages(c)]
    header["chunks"] = len(parts)
    if run.keep is not None:
        run.keep.save(header)
    fanout([(f"{run.run_id}.{i}", chunk_message(run.run_id, header["started_at"], i, len(parts), p))
            for i, p in enumerate(parts)])
    emit(log, "reconcile.fanned_out", run_id=run.run_id, chunks=len(parts), candidates=scanned.candidates)
    if run.keep is not None:
        run.keep.clear_partitions(run.run_id)
    return header


def _heal(run: Run, engine: SyncEngine, tenant: TenantSource, mappings: Mappings, chunks: list[list[Trigger]],
          dry_run: bool, config: ReconcileConfig, note: Progress, clock: Callable[[], float],
          cases: CaseSink | None) -> ChunkResult:
    """Pass 2 inline: a dry run plans its chunks side by side, a real run heals them in turn."""
    started_iso = run.header["started_at"]
    if dry_run:
        return plan_chunks(engine, mappings, chunks, run.run_id, started_iso, config.readers, note, clock, cases)
    total, earlier = heal_chunks(engine, tenant, mappings, chunks, run.run_id, started_iso, note, clock, cases,
                                 run.keep, run.resumed)
    run.earlier += earlier
    return total


def _report(run: Run, tenant: TenantSource, snapshots: ListSnapshotsPort, scanned: Scan, total: ChunkResult,
            dry_run: bool, clock: Callable[[], float], on_report: Callable[[dict], dict] | None) -> dict:
    """An inline run's end: the list snapshots for the next run, then the report, stored once."""
    if not dry_run:
        save_snapshots(snapshots, scanned.snapshots, total.removed, clock)
    report = finish(run.header, total, run.requests(tenant), run.started, clock)
    if on_report is not None and not dry_run:
        report.update(on_report(report))
    store(run.keep, report)
    return report


def run_chunk(container, body: bytes, clock: Callable[[], float] = time.time) -> dict | None:
    """``reconcile_chunk``: heals one chunk, records it, and finishes the run when it is the last;
    or, for a "scan" message, goes on with a run's scan where the previous invocation stopped.

    Returns the final report when this chunk completed the run.
    """
    msg = json.loads(body)
    if msg.get("kind") == "scan":
        return _go_on_scanning(container, str(msg["run_id"]))
    run_id, index, total = msg["run_id"], int(msg["index"]), int(msg["total"])
    chunks = container.tables().runs
    if chunks.get_chunk(run_id, index) is not None:
        return None  # a redelivery: this chunk is done (resumable runs)
    triggers = chunk_triggers(msg)
    engine = container.sync_engine()
    mappings = container.mappings()
    before = engine.gateway.request_count()
    result = heal_chunk(engine, mappings, triggers, run_id, msg["started_at"], dry_run=False, clock=clock)
    chunks.save_chunk(run_id, index, {**result.to_dict(), "requests": engine.gateway.request_count() - before})
    return finish_fanned_out(container, run_id, total, msg["started_at"], clock)


def _go_on_scanning(container, run_id: str) -> dict | None:
    """A "scan" message: the run's scan goes on; its report when this invocation finished the run."""
    current = container.tables().runs.get(run_id)
    if current is None or current.get("status") != "scanning":
        return None  # a redelivery after the run went on: nothing to do
    settings = container.settings
    report = run_reconciliation(container, config=nightly_config(settings), run_id=run_id,
                                fanout=lambda bodies: container.event_queue().send_raw(
                                    settings.reconcile_queue, bodies))
    return report if report.get("status") not in ("scanning", "running") else None
