"""Reconciliation run reports for people: recent runs one line each, one run in full.

The reports are the ones ``shared.service_layer.reconcile`` stores in the ``runs`` table (dry runs are not
stored). ``report_lines`` is the one table of a report: ``reconcile``, ``runs show`` and the demo
all print it.
"""
from __future__ import annotations

from typing import Any, Protocol

from shared.service_layer.compliance import report_lines as deadline_lines
from shared.domain.drift import DRIFT_MEANINGS

#: The report's drift buckets, in the order they are printed, with what each means.
REPORT_LINES = (*((cls, f"{meaning} ({rule} missed)") for cls, (meaning, rule) in DRIFT_MEANINGS.items()),
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


def mismatch_summary(report: dict[str, Any]) -> dict[str, Any]:
    """The mismatches a run found between the two worlds, by drift class: the part of a report to
    hand to compliance. Counts only (no address, pseudonym or record id); computed from the stored
    counts, so every stored run has one.

    ``suspected``: records the scan named for the class; ``found``: changes the planner found
    needed (a record can need several: one per address, list or purpose); ``fixed``: of those,
    written; ``open``: not written (all of them in a dry run). Follow-on opt-outs are the sync's
    own consequences of its fixes, counted apart and not in the totals.
    """
    classes = []
    for cls, (meaning, rule) in DRIFT_MEANINGS.items():
        found, fixed = report.get(f"found_{cls}") or 0, report.get(f"fixed_{cls}") or 0
        classes.append({"class": cls, "meaning": meaning, "missed_rule": rule,
                        "suspected": report.get(f"suspected_{cls}"), "found": found, "fixed": fixed,
                        "open": found - fixed})
    follow_found, follow_fixed = report.get("found_follow_on") or 0, report.get("fixed_follow_on") or 0
    return {
        "run_id": report.get("run_id"), "dry_run": bool(report.get("dry_run")), "status": report.get("status"),
        "started_at": report.get("started_at"), "finished_at": report.get("finished_at"),
        "found": sum(c["found"] for c in classes), "fixed": sum(c["fixed"] for c in classes),
        "open": sum(c["open"] for c in classes), "by_class": classes,
        "follow_on": {"found": follow_found, "fixed": follow_fixed},
        "reconsented_in_rtm": report.get("reconsented_in_rtm"),
        "opt_out_order_unknown": report.get("opt_out_order_unknown"),
    }


def with_mismatches(report: dict[str, Any]) -> dict[str, Any]:
    """The report as ``--output json`` shows it: with its ``mismatches`` summary (a finished run)."""
    if report.get("status") in ("running", "scanning", "no_mappings"):
        return report
    return {**report, "mismatches": mismatch_summary(report)}


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
    m = mismatch_summary(report)
    lines.append(f"  mismatches D1-D5: {m['found']} found, " + (f"{m['found']} would be fixed" if dry else
                                                            f"{m['fixed']} fixed, {m['open']} open"))
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
