"""The run report: the figures a run adds up to, the list snapshots the next run diffs against, and
the one stored (``runs`` table) and logged (``reconcile.report``) record."""
from __future__ import annotations

import logging
import uuid
from datetime import datetime, timezone
from typing import Callable

from shared.ports import ListSnapshotsPort, RunReportsPort
from shared.service_layer.reconcile.chunks import ChunkResult
from shared.telemetry import emit

log = logging.getLogger("shared.reconcile")  # the emitted records keep the logger name they always had


def finish(header: dict, total: ChunkResult, requests: int, started: float, clock: Callable[[], float]) -> dict:
    finished = clock()
    report = {
        **header,
        "status": "succeeded" if total.failures == 0 else "failed_writes",
        "finished_at": iso(finished),
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


def no_mappings(header: dict, clock: Callable[[], float]) -> dict:
    """The report of a run with nothing to compare: no mappings are configured."""
    report = {**header, "status": "no_mappings", "finished_at": iso(clock()), "duration_ms": 0}
    emit(log, "reconcile.report", logging.ERROR, **report)
    return report


def store(keep: RunReportsPort | None, report: dict) -> None:
    """Stores (when the run records its progress) and logs an inline run's report, once."""
    if keep is not None:
        if not keep.save_final(report):
            return  # another attempt of this run wrote it first
        keep.clear_partitions(report["run_id"])
    emit(log, "reconcile.report", **report)


def deadlines(container) -> Callable[[dict], dict]:
    """The run report's opt-out deadline figures (shared.service_layer.compliance)."""
    from shared.service_layer.compliance import after_run

    return after_run(container.tables().compliance, container.settings.opt_out_deadline_hours)


def save_snapshots(snapshots: ListSnapshotsPort, now: dict[str, set[int]], removed: list[tuple[str, str]],
                   clock: Callable[[], float]) -> None:
    # A member the run itself removed did not "leave" the list: keep it out of the next diff.
    for list_id, member_id in removed:
        if list_id in now:
            now[list_id].discard(uuid.UUID(member_id).int)
    taken = iso(clock())
    for list_id, ids in now.items():
        snapshots.save(list_id, (str(uuid.UUID(int=i)) for i in ids), taken)


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def timestamp(text: str) -> float:
    """``iso`` read back (and any ISO 8601 moment with an offset or a Z)."""
    return datetime.fromisoformat(str(text).replace("Z", "+00:00")).timestamp()


def finish_fanned_out(container, run_id: str, total: int, started_at: str,
                      clock: Callable[[], float]) -> dict | None:
    """A fanned-out run's report, written by the chunk that completes the set (and only by it)."""
    runs = container.tables().runs
    done = runs.chunk_results(run_id)
    if len(done) < total:
        return None
    header = runs.get(run_id) or {"run_id": run_id, "started_at": started_at, "dry_run": False}
    if header.get("status") not in (None, "running"):
        return None  # another instance finished it
    aggregate = ChunkResult()
    requests = int(header.get("scan_requests") or 0)
    for r in done:
        aggregate.add(ChunkResult.from_dict(r))
        requests += int(r.get("requests") or 0)
    report = finish({k: v for k, v in header.items() if k not in ("status", "scan_requests")}, aggregate,
                    requests, timestamp(header["started_at"]), clock)
    report.update(deadlines(container)(report))
    if not runs.save_final(report):
        return None  # another instance's last chunk finished the run at the same moment
    emit(log, "reconcile.report", **report)
    return report
