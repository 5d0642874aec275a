"""Reconciliation run reports for people: recent runs one line each, one run in full.

The reports are the ones ``shared.service_layer.reconcile`` stores in the ``runs`` table (dry runs are not
stored). ``report_lines`` is the one table of a report: ``reconcile``, ``runs show`` and the demo
all print it.
"""
from __future__ import annotations

from typing import Any, Protocol

from shared.service_layer.compliance import report_lines as deadline_lines

#: The report's drift buckets, in the order they are printed, with what each means.
REPORT_LINES = (("D1", "list member opted out of the list's topic (R2 missed)"),
                ("D2", "opted out of a brand purpose, Outbound not in line (R4 missed)"),
                ("D3", "global opt-out not reflected in Real-time marketing (R3 missed)"),
                ("D4", "left a mapped list, topic not opted out (R1 missed)"),
                ("D5", "in a brand opt-out list, not in line (R5 missed)"),
                ("follow_on", "follow-on opt-outs of the sync's own removals"))

#: The columns of ``straddle runs`` (table and tsv order).
SUMMARY_COLUMNS = ("run_id", "started_at", "status", "duration_s", "found", "fixed", "failures",
                   "oldest_unhealed_opt_out_hours")


class RunReports(Protocol):
    def latest(self, limit: int = 10) -> list[dict]: ...

    def get(self, run_id: str) -> dict | None: ...


def summary(report: dict[str, Any]) -> dict[str, Any]:
    """One run in one row."""
    return {
        "run_id": report.get("run_id"),
        "started_at": report.get("started_at"),
        "status": report.get("status"),
        "duration_s": round((report.get("duration_ms") or 0) / 1000, 1),
        "found": report.get("drift_found"),
        "fixed": report.get("drift_fixed"),
        "failures": report.get("failures"),
        "oldest_unhealed_opt_out_hours": report.get("oldest_unhealed_opt_out_hours"),
    }


def recent(store: RunReports, limit: int) -> list[dict[str, Any]]:
    return [summary(r) for r in store.latest(limit)]


def find(store: RunReports, run_id: str) -> dict[str, Any] | None:
    """One report by id; ``latest`` is the newest run."""
    if run_id == "latest":
        found = store.latest(1)
        return found[0] if found else None
    return store.get(run_id)


def report_lines(report: dict[str, Any], prog: str = "straddle") -> list[str]:
    """The report as a table: a header line, then found (and fixed) per drift class."""
    dry = bool(report.get("dry_run"))
    lines = [f"run {report.get('run_id')} ({'dry run' if dry else 'healing'}): {report.get('status')}, "
             f"{(report.get('duration_ms') or 0) / 1000:.1f} s, {report.get('dataverse_requests', 0)} Dataverse requests"]
    if report.get("status") == "running":
        lines.append(f"  still running: {report.get('chunks', '?')} chunk(s) fanned out, "
                     f"{report.get('candidates', 0)} candidate(s)")
        return lines
    verb = "would fix" if dry else "fixed"
    lines.append(f"  {'drift':<72} {'found':>6}" + ("" if dry else f"  {verb:>6}"))
    for key, text in REPORT_LINES:
        label = f"{key} {text}" if key != "follow_on" else f"   {text}"
        found = report.get(f"found_{key}") or 0
        fixed = report.get(f"fixed_{key}") or 0
        lines.append(f"  {label:72} {found:6d}" + ("" if dry else f"  {fixed:6d}"))
    if report.get("failures"):
        lines.append(f"  failures: {report['failures']} ({prog} runs show {report.get('run_id')})")
    if report.get("oldest_unhealed_opt_out_hours") is not None:
        lines.append(f"  oldest unhealed opt-out: {report['oldest_unhealed_opt_out_hours']} h")
    lines += deadline_lines(report)
    if report.get("note"):
        lines.append(f"  note: {report['note']}")
    return lines


def unhealed_lines(report: dict[str, Any]) -> list[str]:
    """The changes the run could not make, one line each (no addresses are stored)."""
    cases = report.get("unhealed") or []
    if not cases:
        return ["unhealed: none" if not report.get("failures") else
                f"unhealed: {report['failures']} (this run's report did not keep them per record)"]
    out = [f"unhealed ({len(cases)}" + (f" of {report['failures']}" if (report.get("failures") or 0) > len(cases)
                                        else "") + "):"]
    for c in cases:
        change = c.get("change") or ""
        kind = next((k for k in ("list", "topic", "purpose") if change.endswith(k)), None)  # "remove from list"
        named = f" {c[kind]!r}" if kind and c.get(kind) else ""
        out.append(f"  {c.get('drift_class')} {c.get('rule'):<6} {c.get('system')} {c.get('table')} {c.get('record_id')}: "
                   f"{change}{named}  ({c.get('error') or 'failed'})")
    return out
