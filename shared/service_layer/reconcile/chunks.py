"""Pass 2, the healing chunks: the scan's candidates, a chunk at a time, go through the same engine
the event path uses. It reads their rows in $batch rounds, plans with the one planner and writes
the differences in bulk, and every fix goes to the ledger as event-path fixes do. A dry run plans
but writes nothing. Each chunk's result (drift found and fixed by class, failures) is recorded under
the run, so a resumed run, or a redelivered chunk message, does not heal a chunk twice.
"""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable

from shared.domain.drift import DRIFT_CLASSES, DRIFT_MEANINGS, ReconsentTally
from shared.domain.mappings import Mappings
from shared.domain.planner import Action, OptOutConsent, RemoveFromList, State, Trigger
from shared.ports import RunReportsPort, TenantSource
from shared.service_layer.process_changes import SyncEngine
from shared.service_layer.reconcile.config import CaseSink, Progress
from shared.service_layer.reconcile.scan import d4_cause

MAX_UNHEALED = 100  # failed changes a run report keeps, per record (runs show RUN)
BUCKETS = (*DRIFT_CLASSES, "follow_on")
DRY_RUN_PLANNERS = 4  # chunks a dry run plans at once (each a few $batch reads)
#: The rule that fixes a drift class: a planned action's rule names the class it heals.
CLASS_OF_RULE = {rule: cls for cls, (_, rule) in DRIFT_MEANINGS.items()}


def drift_class(action: Action, d4_cause: str) -> str:
    rule = action.rule.split("/")[-1]  # "R6/R2" heals what R2 missed
    if rule == "R1" and action.cause != d4_cause:
        return "follow_on"  # R1 for a member the sync itself just removed: part of healing D1/D2/D5
    return CLASS_OF_RULE.get(rule, "follow_on")


def serialised(cases: CaseSink | None) -> CaseSink | None:
    """The sink for chunks planned side by side: one case at a time, so the review file's rows
    never interleave."""
    if cases is None:
        return None
    lock = threading.Lock()

    def sink(drift_class: str, action: Action) -> None:
        with lock:
            cases(drift_class, action)
    return sink


@dataclass
class ChunkResult:
    found: dict[str, int] = field(default_factory=lambda: {c: 0 for c in BUCKETS})
    fixed: dict[str, int] = field(default_factory=lambda: {c: 0 for c in BUCKETS})
    failures: int = 0
    incomplete: int = 0
    oldest_unhealed_hours: float | None = None
    removed: list[tuple[str, str]] = field(default_factory=list)  # (list id, member id) the run removed
    unhealed: list[dict[str, Any]] = field(default_factory=list)  # failed changes (shared.service_layer.review), no addresses
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
        removed: dict[str, list[str]] = {}
        for list_id, member_id in self.removed:
            removed.setdefault(list_id, []).append(member_id)
        return {"found": self.found, "fixed": self.fixed, "failures": self.failures, "incomplete": self.incomplete,
                "oldest_unhealed_hours": self.oldest_unhealed_hours, "removed": removed, "unhealed": self.unhealed,
                **self.reconsent.to_dict()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ChunkResult":
        removed = [(list_id, m) for list_id, ms in (d.get("removed") or {}).items() for m in ms]
        return cls(dict(d["found"]), dict(d["fixed"]), d["failures"], d["incomplete"], d["oldest_unhealed_hours"],
                   removed, unhealed=list(d.get("unhealed") or ()), reconsent=ReconsentTally.from_dict(d))


def heal_chunk(engine: SyncEngine, mappings: Mappings, triggers: list[Trigger], run_id: str, started_iso: str,
               dry_run: bool, clock: Callable[[], float] = time.time, cases: CaseSink | None = None) -> ChunkResult:
    from shared.service_layer.review import describe_case, names_of

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


def plan_chunks(engine: SyncEngine, mappings: Mappings, chunks: list[list[Trigger]], run_id: str,
                started_iso: str, planners: int, note: Progress, clock: Callable[[], float] = time.time,
                cases: CaseSink | None = None) -> ChunkResult:
    """A dry run's pass 2: planning only reads, so chunks are planned side by side (healing ones write)."""
    total = ChunkResult()
    sink = serialised(cases)
    with ThreadPoolExecutor(max_workers=min(DRY_RUN_PLANNERS, planners)) as pool:
        for i, result in enumerate(pool.map(lambda c: heal_chunk(engine, mappings, c, run_id, started_iso,
                                                                 True, clock, sink), chunks)):
            total.add(result)
            note("healing", i + 1, len(chunks))
    return total


def heal_chunks(engine: SyncEngine, tenant: TenantSource, mappings: Mappings, chunks: list[list[Trigger]],
                run_id: str, started_iso: str, note: Progress, clock: Callable[[], float] = time.time,
                cases: CaseSink | None = None, keep: RunReportsPort | None = None,
                resumed: bool = False) -> tuple[ChunkResult, int]:
    """A run's pass 2, one chunk after the other, each recorded under the run in ``keep``; returns
    the total and the Dataverse requests the chunks an earlier attempt healed had made."""
    total, earlier = ChunkResult(), 0
    for i, chunk in enumerate(chunks):
        # A chunk healed before an interruption is not healed again: its recorded result counts.
        recorded = keep.get_chunk(run_id, i) if resumed and keep is not None else None
        if recorded is not None:
            result = ChunkResult.from_dict(recorded)
            earlier += int(recorded.get("requests") or 0)
        else:
            before = tenant.request_count()
            result = heal_chunk(engine, mappings, chunk, run_id, started_iso, False, clock, cases)
            if keep is not None:
                keep.save_chunk(run_id, i, {**result.to_dict(), "requests": tenant.request_count() - before})
        total.add(result)
        note("healing", i + 1, len(chunks))
    return total, earlier


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
