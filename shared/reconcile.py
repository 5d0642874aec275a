"""The nightly reconciliation: find and heal every drift between the two worlds.

Pass 1 streams the tenant once (consent rows, each mapped and opt-out list, every contact and
lead) through the pure DriftScan, which keeps only compact sets and names candidates. Pass 2 hands
the candidates, a chunk at a time, to the same engine the event path uses: it reads their rows in
$batch rounds, plans with the one planner and writes the differences in bulk, and every fix goes to
the ledger as event-path fixes do. A dry run plans but writes nothing (no fixes, no ledger, no
snapshots, no stored report). The report is stored in the ``runs`` table and logged as one
structured record (``reconcile.report``).

Big tenants: when the candidates exceed RECONCILE_FANOUT_ABOVE, the timer sends the chunks to the
RECONCILE_QUEUE and ``reconcile_chunk`` heals them on as many instances as the host scales to. A
chunk records its result under the run; a redelivered chunk finds its result and does nothing, so
a run resumes where it stopped; the chunk that completes the set writes the aggregated report.
"""
from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

from shared.domain.drift import DRIFT_CLASSES, DriftScan, ReconsentTally
from shared.domain.mappings import Mappings
from shared.domain.planner import Action, OptOutConsent, RemoveFromList, State, Trigger
from shared.ports import ListSnapshotsPort, RunReportsPort, TenantSource
from shared.sync.engine import SyncEngine
from shared.telemetry import emit

log = logging.getLogger(__name__)

Progress = Callable[[str, int, "int | None"], None]  # (stage, done, total or None)
CaseSink = Callable[[str, Action], None]  # (drift class, planned action): the dry run's review file
MAX_UNHEALED = 100  # failed changes a run report keeps, per record (runs show RUN)
BUCKETS = (*DRIFT_CLASSES, "follow_on")
#: The rule that fixes a drift class: a planned action's rule names the class it heals.
CLASS_OF_RULE = {"R2": "D1", "R4": "D2", "R3": "D3", "R1": "D4", "R5": "D5"}


@dataclass
class ReconcileConfig:
    chunk: int = 5000  # candidates planned together: bounds the state held, keeps $batch reads full
    fanout_above: int | None = None  # candidates above which chunks go to the queue (None: never)


def drift_class(action: Action, d4_cause: str) -> str:
    rule = action.rule.split("/")[-1]  # "R6/R2" heals what R2 missed
    if rule == "R1" and action.cause != d4_cause:
        return "follow_on"  # R1 for a member the sync itself just removed: part of healing D1/D2/D5
    return CLASS_OF_RULE.get(rule, "follow_on")


# --- pass 1 ------------------------------------------------------------------------------------

@dataclass
class Scan:
    triggers: list[Trigger]
    snapshots: dict[str, set[str]]  # mapped list -> member ids now
    suspected: dict[str, int]
    first_snapshot_lists: int
    rows_scanned: int
    candidates: int


def scan_tenant(tenant: TenantSource, mappings: Mappings, snapshots: ListSnapshotsPort, run_id: str,
                note: Progress) -> Scan:
    scan = DriftScan(mappings)
    scan.consent_rows(_counted(tenant.stream_consent_rows(), note, "consent rows"))
    now: dict[str, set[str]] = {}
    relevant = sorted(mappings.relevant_lists)
    for i, list_id in enumerate(relevant, 1):
        previous = snapshots.load(list_id)
        table = mappings.member_table_of_list[list_id]
        members = tenant.stream_list_members(list_id, table, mappings.email_columns)
        ids = scan.list_members_of(list_id, members, previous[0] if previous else None)
        if list_id in mappings.topics_of_list:
            now[list_id] = set(ids)
        note("lists", i, len(relevant))
    for table in ("contact", "lead"):
        scan.members(_counted(tenant.stream_members(table, mappings.email_columns), note, f"{table}s"))
    found = scan.finish()
    d4 = d4_cause(run_id)
    triggers = [t if t.kind != "left_list" else replace(t, cause=d4) for t in found.triggers(run_id)]
    return Scan(triggers, now, found.suspected(), len(found.first_snapshot), sum(scan.rows_seen.values()),
                len(found.members) + len(found.departures))


def d4_cause(run_id: str) -> str:
    return f"{run_id}:D4"


# --- pass 2 ------------------------------------------------------------------------------------

@dataclass
class ChunkResult:
    found: dict[str, int] = field(default_factory=lambda: {c: 0 for c in BUCKETS})
    fixed: dict[str, int] = field(default_factory=lambda: {c: 0 for c in BUCKETS})
    failures: int = 0
    incomplete: int = 0
    oldest_unhealed_hours: float | None = None
    removed: list[tuple[str, str]] = field(default_factory=list)  # (list id, member id) the run removed
    unhealed: list[dict[str, Any]] = field(default_factory=list)  # failed changes (shared.review), no addresses
    reconsent: ReconsentTally = field(default_factory=ReconsentTally)

    def add(self, other: "ChunkResult") -> None:
        for c in BUCKETS:
            self.found[c] += other.found[c]
            self.fixed[c] += other.fixed[c]
        self.failures += other.failures
        self.incomplete += other.incomplete
        if other.oldest_unhealed_hours is not None:
            self.oldest_unhealed_hours = max(self.oldest_unhealed_hours or 0.0, other.oldest_unhealed_hours)
        self.removed += other.removed
        self.unhealed += other.unhealed[:MAX_UNHEALED - len(self.unhealed)]
        self.reconsent.add(other.reconsent)

    def to_dict(self) -> dict[str, Any]:
        return {"found": self.found, "fixed": self.fixed, "failures": self.failures, "incomplete": self.incomplete,
                "oldest_unhealed_hours": self.oldest_unhealed_hours, "unhealed": self.unhealed,
                **self.reconsent.to_dict()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ChunkResult":
        return cls(dict(d["found"]), dict(d["fixed"]), d["failures"], d["incomplete"], d["oldest_unhealed_hours"],
                   unhealed=list(d.get("unhealed") or ()),
                   reconsent=ReconsentTally.from_dict(d))


def heal_chunk(engine: SyncEngine, mappings: Mappings, triggers: list[Trigger], run_id: str, started_iso: str,
               dry_run: bool, clock: Callable[[], float] = time.time, cases: CaseSink | None = None) -> ChunkResult:
    from shared.review import describe_case, names_of

    applied = engine.apply_rules(triggers, mappings, dry_run=dry_run)
    result = ChunkResult(incomplete=int(applied.incomplete))
    names = names_of(mappings) if applied.plan.actions else {}
    result.reconsent.count(applied.plan.reconsents)
    for i, action in enumerate(applied.plan.actions):
        cls = drift_class(action, d4_cause(run_id))
        result.found[cls] += 1
        if cases is not None:
            cases(cls, action)
        if not dry_run and applied.results[i].ok:
            result.fixed[cls] += 1
            if isinstance(action, RemoveFromList):
                result.removed.append((action.list_id, action.member[1]))
            continue
        result.failures += not dry_run
        if not dry_run and len(result.unhealed) < MAX_UNHEALED:
            result.unhealed.append(describe_case(cls, action, names, result=applied.results[i]))
        age = _opt_out_age_hours(action, applied.state, clock())
        if age is not None:
            result.oldest_unhealed_hours = max(result.oldest_unhealed_hours or 0.0, age)
    if not dry_run and (applied.results or applied.plan.reconsents):
        engine.file(applied, lambda cause: ("reconcile", started_iso))
    return result


# --- the run -----------------------------------------------------------------------------------

def nightly(container, clock: Callable[[], float] = time.time) -> dict:
    """The timer's job: purge idempotency keys past their retention, then reconcile (fanning out
    to reconcile_chunk when the tenant is big)."""
    settings = container.settings
    cutoff = datetime.fromtimestamp(clock(), tz=timezone.utc) - timedelta(days=settings.processed_retention_days)
    purged = container.tables().processed.purge(cutoff)
    config = ReconcileConfig(settings.reconcile_chunk_size, settings.reconcile_fanout_above)
    report = run_reconciliation(container, config=config, fanout=lambda bodies: container.event_queue().send_raw(
        settings.reconcile_queue, bodies))
    report["processed_purged"] = purged
    return report


def run_reconciliation(container, *, dry_run: bool = False, progress: Progress | None = None,
                       config: ReconcileConfig | None = None, fanout=None, cases: CaseSink | None = None) -> dict:
    """The reconciliation with the app's own adapters (the timer function and the CLI call this).
    ``cases`` sees every planned change (the dry run's review file)."""
    engine = container.sync_engine()
    tables = container.tables()
    return reconcile(engine, engine.gateway, container.mappings(), tables.snapshots, tables.runs,
                     dry_run=dry_run, progress=progress, config=config, fanout=fanout, cases=cases)


def reconcile(engine: SyncEngine, tenant: TenantSource, mappings: Mappings | None,
              snapshots: ListSnapshotsPort, runs: RunReportsPort | None, *, dry_run: bool = False,
              progress: Progress | None = None, run_id: str | None = None,
              config: ReconcileConfig | None = None, fanout: Callable[[list[tuple[str, bytes]]], None] | None = None,
              clock: Callable[[], float] = time.time, cases: CaseSink | None = None) -> dict:
    """Scans and heals (inline, or by fanning the chunks out); returns the report."""
    config = config or ReconcileConfig()
    run_id = run_id or f"{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
    started = clock()
    header: dict[str, Any] = {"run_id": run_id, "started_at": _iso(started), "dry_run": dry_run}
    requests_before = tenant.request_count()
    if mappings is None:
        report = {**header, "status": "no_mappings", "finished_at": _iso(clock()), "duration_ms": 0}
        emit(log, "reconcile.report", logging.ERROR, **report)
        return report
    note = progress or (lambda stage, done, total: None)
    scanned = scan_tenant(tenant, mappings, snapshots, run_id, note)
    header.update(candidates=scanned.candidates, rows_scanned=scanned.rows_scanned,
                  first_snapshot_lists=scanned.first_snapshot_lists,
                  **{f"suspected_{k}": v for k, v in scanned.suspected.items()})
    chunks = [scanned.triggers[i:i + config.chunk] for i in range(0, len(scanned.triggers), config.chunk)]

    if (fanout is not None and not dry_run and config.fanout_above is not None
            and scanned.candidates > config.fanout_above):
        _save_snapshots(snapshots, scanned.snapshots, [], clock)
        header.update(status="running", scan_requests=tenant.request_count() - requests_before)
        parts = [p for c in chunks for p in fit_in_messages(c)]
        header["chunks"] = len(parts)
        if runs is not None:
            runs.save(header)
        fanout([(f"{run_id}.{i}", chunk_message(run_id, header["started_at"], i, len(parts), p))
                for i, p in enumerate(parts)])
        emit(log, "reconcile.fanned_out", run_id=run_id, chunks=len(parts), candidates=scanned.candidates)
        return header

    total = ChunkResult()
    for done, chunk in enumerate(chunks, 1):
        total.add(heal_chunk(engine, mappings, chunk, run_id, header["started_at"], dry_run, clock, cases))
        note("healing", done, len(chunks))
    if not dry_run:
        _save_snapshots(snapshots, scanned.snapshots, total.removed, clock)
    report = finish(header, total, tenant.request_count() - requests_before, started, clock)
    if runs is not None and not dry_run:
        runs.save(report)
    emit(log, "reconcile.report", **report)
    return report


def finish(header: dict, total: ChunkResult, requests: int, started: float, clock: Callable[[], float]) -> dict:
    finished = clock()
    report = {
        **header,
        "status": "succeeded" if total.failures == 0 else "failed_writes",
        "finished_at": _iso(finished),
        "duration_ms": int((finished - started) * 1000),
        **{f"found_{c}": n for c, n in total.found.items()},
        **{f"fixed_{c}": n for c, n in total.fixed.items()},
        "drift_found": sum(total.found.values()),
        "drift_fixed": sum(total.fixed.values()),
        "failures": total.failures,
        "incomplete_chunks": total.incomplete,
        "dataverse_requests": requests,
        "oldest_unhealed_opt_out_hours": (round(total.oldest_unhealed_hours, 1)
                                          if total.oldest_unhealed_hours is not None else None),
        "unhealed": total.unhealed,  # the first MAX_UNHEALED failed changes, per record, no addresses
        **total.reconsent.report(),
    }
    if header.get("first_snapshot_lists"):
        report["note"] = (f"first run for {header['first_snapshot_lists']} list(s): membership snapshot taken, "
                          "departures (D4) are found from the next run on")
    return report


# --- fanned-out chunks -------------------------------------------------------------------------

MAX_MESSAGE_BYTES = 192 * 1024  # under Service Bus Standard's 256 KB per message, with room for headers


def fit_in_messages(triggers: list[Trigger]) -> list[list[Trigger]]:
    """Splits a chunk until each part's message fits a Standard-tier Service Bus message."""
    if len(triggers) <= 1 or len(chunk_message("x" * 40, "x" * 20, 0, 1, triggers)) <= MAX_MESSAGE_BYTES:
        return [triggers]
    half = len(triggers) // 2
    return fit_in_messages(triggers[:half]) + fit_in_messages(triggers[half:])


def chunk_message(run_id: str, started_at: str, index: int, total: int, triggers: list[Trigger]) -> bytes:
    return json.dumps({"v": 1, "run_id": run_id, "started_at": started_at, "index": index, "total": total,
                       "triggers": [[t.kind, t.cause, list(t.member) if t.member else None, t.email, t.list_id]
                                    for t in triggers]}, separators=(",", ":")).encode()


def run_chunk(container, body: bytes, clock: Callable[[], float] = time.time) -> dict | None:
    """``reconcile_chunk``: heals one chunk, records it, and finishes the run when it is the last.

    Returns the final report when this chunk completed the run.
    """
    msg = json.loads(body)
    run_id, index, total = msg["run_id"], int(msg["index"]), int(msg["total"])
    chunks = container.tables().runs
    if chunks.get_chunk(run_id, index) is not None:
        return None  # a redelivery: this chunk is done (resumable runs)
    triggers = [Trigger(kind, cause, tuple(member) if member else None, email, list_id)
                for kind, cause, member, email, list_id in msg["triggers"]]
    engine = container.sync_engine()
    mappings = container.mappings()
    before = engine.gateway.request_count()
    result = heal_chunk(engine, mappings, triggers, run_id, msg["started_at"], dry_run=False, clock=clock)
    chunks.save_chunk(run_id, index, {**result.to_dict(), "requests": engine.gateway.request_count() - before})
    done = chunks.chunk_results(run_id)
    if len(done) < total:
        return None
    header = chunks.get(run_id) or {"run_id": run_id, "started_at": msg["started_at"], "dry_run": False}
    if header.get("status") not in (None, "running"):
        return None  # another instance finished it
    aggregate = ChunkResult()
    requests = int(header.get("scan_requests") or 0)
    for r in done:
        aggregate.add(ChunkResult.from_dict(r))
        requests += int(r.get("requests") or 0)
    started = datetime.fromisoformat(header["started_at"].replace("Z", "+00:00")).timestamp()
    report = finish({k: v for k, v in header.items() if k not in ("status", "scan_requests")}, aggregate,
                    requests, started, clock)
    if not chunks.save_final(report):
        return None  # another instance's last chunk finished the run at the same moment
    emit(log, "reconcile.report", **report)
    return report


# --- helpers -----------------------------------------------------------------------------------

def _save_snapshots(snapshots: ListSnapshotsPort, now: dict[str, set[str]], removed: list[tuple[str, str]],
                    clock: Callable[[], float]) -> None:
    # A member the run itself removed did not "leave" the list: keep it out of the next diff.
    for list_id, member_id in removed:
        if list_id in now:
            now[list_id].discard(member_id)
    taken = _iso(clock())
    for list_id, ids in now.items():
        snapshots.save(list_id, ids, taken)


def _counted(rows, note: Progress, stage: str):
    n = 0
    for n, row in enumerate(rows, 1):
        if n % 5000 == 0:
            note(stage, n, None)
        yield row
    note(stage, n, None)


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
