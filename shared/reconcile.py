"""The nightly reconciliation: find and heal every drift between the two worlds.

Pass 1 streams the tenant once (consent rows, each mapped and opt-out list, every contact and
lead) through the pure DriftScan, which keeps only compact sets and names candidates. Pass 2 hands
the candidates, a chunk at a time, to the same engine the event path uses: it reads their rows in
$batch rounds, plans with the one planner and writes the differences in bulk, and every fix goes to
the ledger as event-path fixes do. A dry run plans but writes nothing (no fixes, no ledger, no
snapshots). The report is stored in the ``runs`` table and logged as one structured record.
"""
from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Callable

from shared.domain.drift import DRIFT_CLASSES, Candidates, DriftScan
from shared.domain.mappings import Mappings
from shared.domain.planner import Action, OptOutConsent, RemoveFromList, State
from shared.ports import ListSnapshotsPort, RunReportsPort, TenantSource
from shared.sync.engine import SyncEngine
from shared.telemetry import emit

log = logging.getLogger(__name__)

CHUNK = 5000  # candidates planned together: bounds the state held, keeps $batch reads full
Progress = Callable[[str, int, int | None], None]  # (stage, done, total or None)

#: The rule that fixes a drift class: a planned action's rule names the class it heals.
CLASS_OF_RULE = {"R2": "D1", "R4": "D2", "R3": "D3", "R1": "D4", "R5": "D5"}


@dataclass
class ReconcileConfig:
    chunk: int = CHUNK


def drift_class(action: Action, d4_cause: str) -> str:
    rule = action.rule.split("/")[-1]  # "R6/R2" heals what R2 missed
    if rule == "R1" and action.cause != d4_cause:
        return "follow_on"  # R1 for a member the sync itself just removed: part of healing D1/D2/D5
    return CLASS_OF_RULE.get(rule, "follow_on")


def nightly(container, clock: Callable[[], float] = time.time) -> dict:
    """The timer's job: purge idempotency keys past their retention, then reconcile."""
    cutoff = datetime.fromtimestamp(clock(), tz=timezone.utc) - timedelta(days=container.settings.processed_retention_days)
    purged = container.tables().processed.purge(cutoff)
    report = run_reconciliation(container)
    report["processed_purged"] = purged
    return report


def run_reconciliation(container, *, dry_run: bool = False, progress: Progress | None = None) -> dict:
    """The reconciliation with the app's own adapters (the timer function and the CLI call this)."""
    engine = container.sync_engine()
    tables = container.tables()
    return reconcile(engine, engine.gateway, container.mappings(), tables.snapshots, tables.runs,
                     dry_run=dry_run, progress=progress)


def reconcile(engine: SyncEngine, tenant: TenantSource, mappings: Mappings | None,
              snapshots: ListSnapshotsPort, runs: RunReportsPort | None, *, dry_run: bool = False,
              progress: Progress | None = None, run_id: str | None = None,
              config: ReconcileConfig | None = None, clock: Callable[[], float] = time.time) -> dict:
    config = config or ReconcileConfig()
    run_id = run_id or f"{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
    started = clock()
    started_iso = _iso(started)
    requests_before = tenant.request_count()
    report: dict = {"run_id": run_id, "started_at": started_iso, "dry_run": dry_run, "status": "failed"}
    if mappings is None:
        report.update(status="no_mappings", finished_at=_iso(clock()), duration_ms=0)
        emit(log, "reconcile.report", logging.ERROR, **report)
        return report
    note = progress or (lambda stage, done, total: None)

    # Pass 1: the scan.
    scan = DriftScan(mappings)
    scan.consent_rows(_counted(tenant.stream_consent_rows(), note, "consent rows"))
    new_snapshots: dict[str, set[str]] = {}
    relevant = sorted(mappings.relevant_lists)
    for i, list_id in enumerate(relevant, 1):
        previous = snapshots.load(list_id)
        table = mappings.member_table_of_list[list_id]
        members = tenant.stream_list_members(list_id, table, mappings.email_columns)
        ids = scan.list_members_of(list_id, members, previous[0] if previous else None)
        if list_id in mappings.topics_of_list:
            new_snapshots[list_id] = set(ids)
        note("lists", i, len(relevant))
    for table in ("contact", "lead"):
        scan.members(_counted(tenant.stream_members(table, mappings.email_columns), note, f"{table}s"))
    candidates = scan.finish()

    # Pass 2: the planner over the candidates, a chunk at a time.
    found = {c: 0 for c in (*DRIFT_CLASSES, "follow_on")}
    fixed = dict(found)
    failures = 0
    incomplete = 0
    oldest_unhealed: float | None = None
    d4_cause = f"{run_id}:D4"
    triggers = candidates.triggers(run_id)
    triggers = [t if t.kind != "left_list" else _with_cause(t, d4_cause) for t in triggers]
    for start in range(0, len(triggers), config.chunk):
        chunk = triggers[start:start + config.chunk]
        applied = engine.apply_rules(chunk, mappings, dry_run=dry_run)
        incomplete += applied.incomplete
        for i, action in enumerate(applied.plan.actions):
            cls = drift_class(action, d4_cause)
            found[cls] += 1
            ok = not dry_run and i < len(applied.results) and applied.results[i].ok
            if ok:
                fixed[cls] += 1
                _track_snapshot(new_snapshots, action)
            else:
                failures += not dry_run
                age = _opt_out_age_hours(action, applied.state, clock())
                if age is not None:
                    oldest_unhealed = max(oldest_unhealed or 0.0, age)
        if not dry_run and applied.results:
            engine.file(applied, lambda cause: ("reconcile", started_iso))
        note("healing", min(start + config.chunk, len(triggers)), len(triggers))

    if not dry_run:
        taken = _iso(clock())
        for list_id, ids in new_snapshots.items():
            snapshots.save(list_id, ids, taken)

    finished = clock()
    report.update({
        "status": "succeeded" if failures == 0 else "failed_writes",
        "finished_at": _iso(finished),
        "duration_ms": int((finished - started) * 1000),
        **{f"found_{c}": n for c, n in found.items()},
        **({f"fixed_{c}": n for c, n in fixed.items()}),
        "drift_found": sum(found.values()),
        "drift_fixed": sum(fixed.values()),
        "failures": failures,
        "candidates": len(candidates.members) + len(candidates.departures),
        "suspected": candidates.suspected(),
        "first_snapshot_lists": len(candidates.first_snapshot),
        "incomplete_chunks": incomplete,
        "rows_scanned": sum(scan.rows_seen.values()),
        "dataverse_requests": tenant.request_count() - requests_before,
        "oldest_unhealed_opt_out_hours": round(oldest_unhealed, 1) if oldest_unhealed is not None else None,
    })
    if candidates.first_snapshot:
        report["note"] = (f"first run for {len(candidates.first_snapshot)} list(s): membership snapshot taken, "
                          "departures (D4) are found from the next run on")
    if runs is not None and not dry_run:
        runs.save(report)
    emit(log, "reconcile.report", **{k: v for k, v in report.items() if k != "suspected"},
         **{f"suspected_{k}": v for k, v in candidates.suspected().items()})
    return report


def _counted(rows, note: Progress, stage: str):
    n = 0
    for n, row in enumerate(rows, 1):
        if n % 5000 == 0:
            note(stage, n, None)
        yield row
    note(stage, n, None)


def _with_cause(t, cause: str):
    from dataclasses import replace

    return replace(t, cause=cause)


def _track_snapshot(snapshots: dict[str, set[str]], action: Action) -> None:
    # A member the run itself removed did not "leave" the list: keep it out of the next diff.
    if isinstance(action, RemoveFromList) and action.list_id in snapshots:
        snapshots[action.list_id].discard(action.member[1])


def _opt_out_age_hours(action: Action, state: State, now: float) -> float | None:
    """How long the opt-out behind an unhealed action has been waiting, from its consent rows."""
    emails = (action.email,) if isinstance(action, OptOutConsent) else action.emails
    stamps = [r.modified_on for e in emails for r in state.consent.get(e, ()) if r.opted_out and r.modified_on]
    if not stamps:
        return None
    try:
        oldest = min(datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp() for s in stamps)
    except ValueError:
        return None
    return max(0.0, (now - oldest) / 3600)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


__all__ = ["run_reconciliation", "reconcile", "ReconcileConfig", "drift_class", "Candidates"]
