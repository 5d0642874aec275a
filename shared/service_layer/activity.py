"""What the sync did over a window (``straddle activity --since 24h``), from its own evidence.

- the ledger: every change the sync made, failed to make or refused, counted by rule, by the world
  it changed (Outbound or Real-time marketing) and by what caused it (an event or a reconciliation);
- the dead-letter queues: change events parked after MAX_ATTEMPTS, or dead-lettered by the broker;
- the run reports: the latest reconciliation and the oldest opt-out it could not heal.

"Oldest unpropagated" is the oldest of: a failed write with no later success for the same record
and change, a dead-lettered change event still waiting, the latest run's oldest unhealed opt-out.
No address is read or shown: the ledger stores a keyed hash of it, dead letters are shown without
their bodies.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta, timezone
from typing import Any

from shared.domain.ledger import LedgerEntry

OUTCOMES = ("applied", "failed", "refused", "unchanged")
DIRECTIONS = {"rtm": "to_rtm", "obm": "to_obm"}  # the world the change was made in
MAX_FAILURES_SHOWN = 20

_SPAN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([mhdw])\s*$", re.IGNORECASE)
_UNIT = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_since(text: str, now: datetime) -> datetime:
    """``24h``, ``90m``, ``7d``, ``2w`` before ``now``, or an ISO 8601 moment (UTC when no zone)."""
    m = _SPAN.match(text or "")
    if m:
        amount = float(m.group(1))
        if amount <= 0:
            raise ValueError(f"--since must be a positive span, got {text!r}")
        return now - timedelta(**{_UNIT[m.group(2).lower()]: amount})
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"--since: not a span like 24h, 90m, 7d or a date like 2026-01-31T08:00: {text!r}") from None
    moment = moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
    if moment > now:
        raise ValueError(f"--since is in the future: {text!r}")
    return moment


def _when(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def summarise(entries: Iterable[tuple[str, LedgerEntry]], now: datetime) -> dict[str, Any]:
    """Counts and failures from (person key, ledger entry) pairs. Pure.

    A change to a contact with two addresses is filed under both people; it is counted once
    (same event, record, change and outcome).
    """
    seen: set[tuple] = set()
    counts: dict[tuple[str, str, str], dict[str, int]] = {}
    people: set[str] = set()
    failures: list[dict[str, Any]] = []
    latest_ok: dict[tuple, datetime] = {}
    failed_at: dict[tuple, tuple[datetime, dict[str, Any]]] = {}
    for person, e in entries:
        people.add(person)
        record = (e.target_system, e.target_table, e.target_id or person, e.action)
        key = (e.origin_event_id, *record, e.outcome)
        if key in seen:
            continue
        seen.add(key)
        origin = "reconcile" if e.origin_system == "reconcile" else "event"
        row = counts.setdefault((e.rule, DIRECTIONS.get(e.target_system, e.target_system), origin),
                                {o: 0 for o in OUTCOMES})
        row[e.outcome] = row.get(e.outcome, 0) + 1
        at = _when(e.recorded_at) or now
        if e.outcome == "applied":
            latest_ok[record] = max(latest_ok.get(record, at), at)
        elif e.outcome == "failed":
            item = {"recorded_at": e.recorded_at, "rule": e.rule, "origin": origin, "target_system": e.target_system,
                    "target_table": e.target_table, "target_id": e.target_id, "action": e.action, "detail": e.detail}
            failures.append(item)
            since = _when(e.origin_time) or at
            if record not in failed_at or since < failed_at[record][0]:
                failed_at[record] = (since, item)
    by_rule = [{"rule": rule, "direction": direction, "origin": origin, **n}
               for (rule, direction, origin), n in sorted(counts.items())]
    totals = {o: sum(r[o] for r in by_rule) for o in OUTCOMES}
    failures.sort(key=lambda f: f["recorded_at"] or "", reverse=True)
    # A failure healed later (by a retry or a run) is no longer unpropagated.
    open_failures = [(since, item) for record, (since, item) in failed_at.items()
                     if not (record in latest_ok and latest_ok[record] >= (_when(item["recorded_at"]) or now))]
    oldest = min(open_failures, key=lambda p: p[0]) if open_failures else None
    return {
        "changes": totals,
        "people": len(people),
        "by_rule": by_rule,
        "failures": failures[:MAX_FAILURES_SHOWN],
        "failures_total": len(failures),
        "failures_open": len(open_failures),
        "_oldest_failure": oldest,
    }


def activity(ledger: Any, since: datetime, now: datetime, dead_letters: Callable[[], Any] | None = None,
             runs: Any = None, max_dead_letters: int = 1000) -> dict[str, Any]:
    """The whole view. ``dead_letters`` builds the dead-letter port (it may raise: the queues are
    then reported unavailable, the rest still shown); ``runs`` is the run reports store."""
    found = summarise(ledger.since(since), now)
    candidates: list[tuple[datetime, str]] = []
    oldest_failure = found.pop("_oldest_failure")
    if oldest_failure:
        at, item = oldest_failure
        candidates.append((at, f"failed write: {item['rule']} {item['action']} ({item['detail'] or 'failed'})"))

    parked: dict[str, Any] = {"available": False, "waiting": None, "in_window": None, "oldest_enqueued": None,
                              "by_reason": {}, "error": None}
    if dead_letters is not None:
        try:
            items = dead_letters().list(max_dead_letters)
        except Exception as exc:  # the rest of the view is still worth showing
            parked["error"] = str(exc) or type(exc).__name__
        else:
            stamps = [(_when(d.enqueued_time), d) for d in items]
            parked.update(available=True, waiting=len(items),
                          in_window=sum(1 for at, _ in stamps if at is not None and at >= since))
            for _, d in stamps:
                reason = d.reason or "unknown"
                parked["by_reason"][reason] = parked["by_reason"].get(reason, 0) + 1
            dated = [(at, d) for at, d in stamps if at is not None]
            if dated:
                at, d = min(dated, key=lambda p: p[0])
                parked["oldest_enqueued"] = _iso(at)
                candidates.append((at, f"dead-lettered change event {d.event_id or d.message_id} ({d.kind or 'unknown kind'}) "
                                       f"in {d.queue}"))
    else:
        parked["error"] = "no queue configured"

    last_run = None
    if runs is not None:
        from shared.service_layer.runs import summary

        latest = runs.latest(1)
        if latest:
            last_run = summary(latest[0])
            hours = latest[0].get("oldest_unhealed_opt_out_hours")
            finished = _when(latest[0].get("finished_at"))
            if hours is not None and finished is not None:
                candidates.append((finished - timedelta(hours=float(hours)),
                                   f"unhealed by reconciliation run {latest[0].get('run_id')}"))
    oldest = min(candidates, key=lambda c: c[0]) if candidates else None
    return {
        "since": _iso(since),
        "until": _iso(now),
        **found,
        "parked": parked,
        "last_run": last_run,
        "oldest_unpropagated": None if oldest is None else {
            "since": _iso(oldest[0]), "hours": round(max(0.0, (now - oldest[0]).total_seconds()) / 3600, 1),
            "what": oldest[1]},
    }


_DIRECTION_TEXT = {"to_rtm": "-> RTM", "to_obm": "-> OBM"}


def activity_lines(view: dict[str, Any], prog: str = "straddle") -> list[str]:
    """The view as a person reads it."""
    c = view["changes"]
    out = [f"activity {view['since']} .. {view['until']}: {c['applied']} change(s) applied, {c['failed']} failed, "
           f"{c['refused']} refused, {view['people']} people"]
    if view["by_rule"]:
        out.append(f"  {'rule':<7}{'direction':<10}{'origin':<11}" + "".join(f"{o:>10}" for o in OUTCOMES))
        for r in view["by_rule"]:
            out.append(f"  {r['rule']:<7}{_DIRECTION_TEXT.get(r['direction'], r['direction']):<10}{r['origin']:<11}"
                       + "".join(f"{r[o]:>10d}" for o in OUTCOMES))
    else:
        out.append("  nothing in the ledger for this window")
    if view["failures_total"]:
        out.append(f"failures ({view['failures_total']}, {view['failures_open']} not healed since; newest first):")
        for f in view["failures"]:
            out.append(f"  {f['recorded_at']} {f['rule']:<6} {f['target_system']} {f['target_table']} "
                       f"{f['target_id'] or '(new row)'}: {f['action']} ({f['detail'] or 'failed'})")
    p = view["parked"]
    if p["available"]:
        reasons = ", ".join(f"{n} {r}" for r, n in sorted(p["by_reason"].items()))
        out.append(f"dead letters: {p['waiting']} waiting ({p['in_window']} in this window)"
                   + (f": {reasons}" if reasons else "") + (f"; {prog} dlq list" if p["waiting"] else ""))
    else:
        out.append(f"dead letters: not checked ({p['error']})")
    r = view["last_run"]
    out.append("last reconciliation: none stored" if r is None else
               f"last reconciliation: {r['run_id']} {r['status']}, found {r['found']}, fixed {r['fixed']}, "
               f"failures {r['failures']}")
    o = view["oldest_unpropagated"]
    out.append("oldest unpropagated: none" if o is None else
               f"oldest unpropagated: {o['hours']} h, since {o['since']}: {o['what']}")
    return out
