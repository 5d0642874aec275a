"""Did every opt-out meet its deadline? (``straddle compliance``, its export, the hourly check.)

The records are the opt-out deadlines table (``shared.adapters.tables.compliance``): every opt-out
the event path or the nightly reconciliation handled, when it was given (the best dated evidence)
and when each side reflected it. This module turns them into the figures an auditor asks for
(``shared.domain.compliance.summarise``), a spreadsheet-safe CSV export, the ``compliance.check``
record the alert rule queries, and the closing of open opt-outs a healing run found consistent.
No address is read or shown: people are pseudonyms (the first 16 hex digits of the ledger key,
as in the dry run's review file).
"""
from __future__ import annotations

import csv
import logging
import os
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator, Protocol

from shared.domain.compliance import (
    CAN_SPAM_BUSINESS_DAYS, DEFAULT_DEADLINE_HOURS, INBOX_PROVIDER_HOURS, OptOutRecord, SideState, add_business_days,
    summarise)
from shared.domain.planner import instant
from shared.service_layer.review import neutralised
from shared.telemetry import emit

log = logging.getLogger("shared.compliance")

WINDOW_DAYS = 30  # what the nightly report and the hourly check look back over
PSEUDONYM_DIGITS = 16  # as the review file's pseudonyms: the same person reads the same in both
EXPORT_COLUMNS = ("pseudonym", "given_at", "evidence", "source", "one_click", "origin", "rule", "sides",
                  "rtm_effective_at", "obm_effective_at", "effective_at", "status", "hours_to_effect",
                  "breached_48h", "breached_10_business_days", "cause")


class OptOutRecords(Protocol):
    def window(self, since: datetime, until: datetime) -> Iterable[OptOutRecord]: ...

    def record(self, records: list[OptOutRecord], hashed: bool = False) -> None: ...


def spreadsheet_safe(cell: Any) -> str:
    """A value as the review file writes it: text, with a formula's first character neutralised
    (``review.neutralised``). None is an empty cell."""
    text = "" if cell is None else ("true" if cell is True else "false" if cell is False else str(cell))
    return neutralised(text)


def _iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def compliance_view(store: OptOutRecords, since: datetime, now: datetime,
                    deadline_hours: float = DEFAULT_DEADLINE_HOURS) -> dict[str, Any]:
    """The figures over opt-outs given from ``since`` to ``now``."""
    return {"since": _iso(since), "until": _iso(now), **summarise(store.window(since, now), now, deadline_hours)}


def source_of(r: OptOutRecord) -> str:
    """Where the opt-out was given: rtm (consent rows), obm (flags, lists), or one-click."""
    return f"{r.given_in} one-click" if r.one_click else r.given_in


def export_rows(records: Iterable[OptOutRecord], now: datetime) -> Iterator[dict[str, Any]]:
    """One row per opt-out, for an auditor's spreadsheet."""
    for r in sorted(records, key=lambda x: (x.given_at or x.seen_at, x.person)):
        given, effective = instant(r.given_at), instant(r.effective_at)
        end = effective or now
        yield {
            "pseudonym": r.person[:PSEUDONYM_DIGITS], "given_at": r.given_at, "evidence": r.evidence,
            "source": source_of(r), "one_click": r.one_click, "origin": r.origin, "rule": r.rule,
            "sides": ",".join(sorted(r.sides)),
            "rtm_effective_at": _side_at(r.sides.get("rtm")), "obm_effective_at": _side_at(r.sides.get("obm")),
            "effective_at": r.effective_at, "status": "open" if r.is_open else "propagated",
            "hours_to_effect": round((effective - given).total_seconds() / 3600, 3) if given and effective else None,
            "breached_48h": None if given is None else (end - given).total_seconds() > INBOX_PROVIDER_HOURS * 3600,
            "breached_10_business_days": None if given is None else end > add_business_days(given, CAN_SPAM_BUSINESS_DAYS),
            "cause": r.cause,
        }


def _side_at(side: SideState | None) -> str | None:
    if side is None:
        return None
    return "open" if side.open else side.at


def write_export(path: str, rows: Iterable[dict[str, Any]]) -> int:
    """Writes the CSV readable by its owner only (0600), whole or not at all: beside the target,
    moved into place when complete. Returns the rows written."""
    target = Path(path)
    partial = target.with_name(target.name + ".partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an earlier partial file kept its mode: set it whatever the umask
    count = 0
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as f:
            out = csv.writer(f, lineterminator="\n")
            out.writerow(EXPORT_COLUMNS)
            for row in rows:
                out.writerow([spreadsheet_safe(row.get(c)) for c in EXPORT_COLUMNS])
                count += 1
        os.replace(partial, target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return count


def close_consistent(store: OptOutRecords, report: dict[str, Any], now: datetime) -> int:
    """After a healing run that succeeded, the sides still open from before it started are
    consistent now (the run found nothing left to heal for them, or healed it): closed at the
    run's end, a conservative moment. Returns how many opt-outs were closed."""
    started, finished = instant(report.get("started_at")), instant(report.get("finished_at")) or now
    if (report.get("dry_run") or report.get("status") != "succeeded" or report.get("incomplete_chunks")
            or started is None):
        return 0
    closed = []
    for r in store.window(now - timedelta(days=WINDOW_DAYS + 5), now):
        handled = instant(r.seen_at)
        if not r.is_open or handled is None or handled >= started:
            continue
        sides = {k: (SideState(_iso(finished), False, s.rule, f"consistent at reconciliation {report.get('run_id')}")
                     if s.open else s) for k, s in r.sides.items()}
        closed.append(replace(r, sides=sides))
    store.record(closed, hashed=True)
    return len(closed)


def check(store: OptOutRecords, now: datetime, deadline_hours: float) -> dict[str, Any]:
    """The last WINDOW_DAYS as one ``compliance.check`` record (the alert rule and the workbook
    query it); returns the view."""
    view = compliance_view(store, now - timedelta(days=WINDOW_DAYS), now, deadline_hours)
    emit(log, "compliance.check", logging.WARNING if view["open_past_deadline"] else logging.INFO,
         **report_fields(view))
    for item in view["open_items"]:
        emit(log, "compliance.open", logging.WARNING, person=item["person"], given_at=item["given_at"],
             age_hours=item["age_hours"], rule=item["rule"], sides=item["sides"], cause=item["cause"])
    return view


def report_fields(view: dict[str, Any]) -> dict[str, Any]:
    """The figures as flat fields (a run report's, a log record's)."""
    t = view["time_to_effect"]
    return {"opt_outs_received": view["received"], "opt_outs_propagated": view["propagated"],
            "opt_outs_open": view["open"], "opt_outs_open_past_deadline": view["open_past_deadline"],
            "opt_out_deadline_hours": view["deadline_hours"], "opt_outs_oldest_open_hours": view["oldest_open_hours"],
            "opt_outs_one_click": view["one_click"], "opt_outs_undated": view["undated"],
            "opt_out_effect_p50_s": t["p50_s"], "opt_out_effect_p95_s": t["p95_s"], "opt_out_effect_p99_s": t["p99_s"],
            "opt_out_effect_max_s": t["max_s"], "opt_outs_breached_48h": view["breached_48h"],
            "opt_outs_breached_10_business_days": view["breached_10_business_days"],
            "opt_outs_window_days": WINDOW_DAYS}


def after_run(store: OptOutRecords, deadline_hours: float, clock=None):
    """The run report's compliance figures (a hook for ``reconcile``): closes what the run found
    consistent, then the last WINDOW_DAYS' figures. A storage failure is reported, not raised:
    the run itself is done."""
    def hook(report: dict[str, Any]) -> dict[str, Any]:
        now = clock() if clock else datetime.now(timezone.utc)
        try:
            closed = close_consistent(store, report, now)
            return {**report_fields(check(store, now, deadline_hours)), "opt_outs_closed_by_run": closed}
        except Exception as exc:
            from shared.service_layer.process_changes import failure_reason

            reason = failure_reason(exc)
            emit(log, "compliance.check_failed", logging.ERROR, error=reason)
            return {"opt_outs_error": reason}
    return hook


def _seconds(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f} s" if x < 120 else f"{x / 3600:.1f} h"


_DIRECTION_TEXT = {"to_rtm": "-> RTM", "to_obm": "-> OBM"}


def compliance_lines(view: dict[str, Any], prog: str = "straddle") -> list[str]:
    """The view as a person reads it."""
    t = view["time_to_effect"]
    out = [f"opt-outs {view['since']} .. {view['until']}: {view['received']} received, "
           f"{view['propagated']} propagated, {view['open']} open"
           + (f", {view['already_true']} already true" if view["already_true"] else "")
           + (f", {view['one_click']} by one-click unsubscribe" if view["one_click"] else "")
           + (f", {view['undated']} undated (found by a reconciliation, nothing dates them)" if view["undated"] else ""),
           f"time to effect: p50 {_seconds(t['p50_s'])}, p95 {_seconds(t['p95_s'])}, p99 {_seconds(t['p99_s'])}, "
           f"max {_seconds(t['max_s'])} ({t['timed']} timed)"]
    for o in view.get("by_origin", ()):
        what = "from change events" if o["origin"] == "event" else "healed by a reconciliation"
        out.append(f"  {what}: {o['received']} received, {o['open']} open; p50 {_seconds(o['p50_s'])}, "
                   f"p95 {_seconds(o['p95_s'])}, max {_seconds(o['max_s'])}")
    if view["by_rule"]:
        out.append(f"  {'rule':<8}{'direction':<10}{'received':>9}{'done':>7}{'open':>6}{'1-click':>8}"
                   f"{'p50':>10}{'p95':>10}{'max':>10}")
        for r in view["by_rule"]:
            out.append(f"  {r['rule']:<8}{_DIRECTION_TEXT.get(r['direction'], r['direction']):<10}{r['received']:>9}"
                       f"{r['propagated']:>7}{r['open']:>6}{r['one_click']:>8}{_seconds(r['p50_s']):>10}"
                       f"{_seconds(r['p95_s']):>10}{_seconds(r['max_s']):>10}")
    out.append(f"deadlines: {view['breached_48h']} past 48 h (Gmail, Yahoo), {view['breached_10_business_days']} past "
               f"10 business days (CAN-SPAM)")
    if view["open_items"]:
        out.append(f"open for more than {view['deadline_hours']:g} h ({view['open_past_deadline']}, oldest first):")
        for o in view["open_items"]:
            out.append(f"  {o['person']} given {o['given_at']} ({o['age_hours']} h) {o['rule']} to {o['sides']}: "
                       f"{o['detail'] or 'waiting'}")
    else:
        out.append(f"open for more than {view['deadline_hours']:g} h: none")
    return out


def report_lines(report: dict[str, Any]) -> list[str]:
    """A run report's compliance figures, for ``runs show`` and ``reconcile`` (nothing when absent)."""
    if report.get("opt_outs_error"):
        return [f"  opt-out deadlines: not computed ({report['opt_outs_error']})"]
    if report.get("opt_outs_received") is None:
        return []
    return [f"  opt-outs, last {report.get('opt_outs_window_days')} days: {report['opt_outs_received']} received, "
            f"{report.get('opt_outs_open')} open ({report.get('opt_outs_open_past_deadline')} past "
            f"{report.get('opt_out_deadline_hours'):g} h), time to effect p50 {_seconds(report.get('opt_out_effect_p50_s'))} "
            f"p95 {_seconds(report.get('opt_out_effect_p95_s'))}; past 48 h: {report.get('opt_outs_breached_48h')}, "
            f"past 10 business days: {report.get('opt_outs_breached_10_business_days')}"]
