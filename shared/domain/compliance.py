"""Opt-out deadlines: when each opt-out was given, when each side reflected it, and whether that
was in time. Pure.

An *opt-out record* is one opt-out as one person (a pseudonym, never the address) gave it, by one
cause (a change event, or a reconciliation run), with the *sides* it had to reach: ``rtm`` (the
consent rows of Real-time marketing) and ``obm`` (flags and list membership of Outbound
marketing). Each side is reflected at a moment (the sync's write, or found already true), or is
still open (a write failed and waits for a retry or the nightly run).

The deadlines an auditor asks about: Gmail's and Yahoo's bulk-sender rules (an unsubscribe
processed within 2 days, 48 hours) and CAN-SPAM (10 business days). Business days are Monday to
Friday, with no holiday calendar: a deadline falling after a public holiday is one day early,
which errs on the strict side.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from typing import Iterable, Literal

from shared.domain.planner import instant

Side = Literal["rtm", "obm"]
SIDES: tuple[Side, ...] = ("rtm", "obm")
DIRECTION_OF_SIDE = {"rtm": "to_rtm", "obm": "to_obm"}
GIVEN_IN = {"rtm": "obm", "obm": "rtm"}  # the sync writes to the side the opt-out was not given in
INBOX_PROVIDER_HOURS = 48  # Gmail and Yahoo bulk-sender requirements: within 2 days
CAN_SPAM_BUSINESS_DAYS = 10
DEFAULT_DEADLINE_HOURS = 24  # OPT_OUT_DEADLINE_HOURS: alert with a day left to act
ALREADY_TRUE = "already true"  # a side's detail when Straddle found it reflected without writing
#: Evidence names for when an opt-out was given, best first.
CHANGE_EVENT = "change event"
DATAVERSE_DATES = "row dates"  # modifiedon, listmember createdon, audit history, the ledger (the planner's timeline)
UNDATED = "undated"  # found by a reconciliation with nothing that dates it: counted, not timed


@dataclass(frozen=True, slots=True)
class SideState:
    """One side of an opt-out: reflected ``at`` (open when ``open``), by ``rule``."""

    at: str | None
    open: bool
    rule: str
    detail: str | None = None  # the failure of an open side, or ALREADY_TRUE


@dataclass(frozen=True, slots=True)
class OptOutRecord:
    person: str  # the ledger's key of the person (HMAC of the normalised address)
    cause: str  # the change event id, or the reconciliation's cause
    given_at: str | None  # ISO 8601; None when nothing dates it (evidence UNDATED)
    evidence: str  # CHANGE_EVENT, DATAVERSE_DATES or UNDATED
    origin: Literal["event", "reconcile"]
    seen_at: str  # when Straddle first handled it
    sides: dict[str, SideState] = field(default_factory=dict)
    one_click: bool = False  # given through an email's one-click (List-Unsubscribe) link

    @property
    def rule(self) -> str:
        rules = sorted({s.rule for s in self.sides.values() if s.rule})
        return "+".join(rules) if rules else "-"

    @property
    def is_open(self) -> bool:
        return any(s.open for s in self.sides.values())

    @property
    def effective_at(self) -> str | None:
        """When the last side reflected it; None while any side is open."""
        if self.is_open or not self.sides:
            return None
        moments = [(instant(s.at), s.at) for s in self.sides.values() if instant(s.at)]
        return max(moments)[1] if moments else None

    @property
    def given_in(self) -> str:
        """The system the opt-out was given in: the other one than the sides the sync wrote."""
        sides = set(self.sides)
        if sides == {"rtm"}:
            return "obm"
        if sides == {"obm"}:
            return "rtm"
        return "both" if sides else "-"


def merge(old: OptOutRecord, new: OptOutRecord) -> OptOutRecord:
    """One record from two writes about the same opt-out (a retry, or two batches): the first
    sighting's dates, each side as last written."""
    return replace(old, sides={**old.sides, **new.sides}, one_click=old.one_click or new.one_click)


def add_business_days(moment: datetime, days: int) -> datetime:
    """``moment`` plus ``days`` Monday-to-Friday days, at the same time of day (no holidays)."""
    out = moment
    left = days
    while left > 0:
        out += timedelta(days=1)
        if out.weekday() < 5:
            left -= 1
    return out


def percentile(values: list[float], q: float) -> float | None:
    """Nearest rank of sorted ``values`` (the index ``int(n * q)``, capped), as the benchmarks count."""
    if not values:
        return None
    return values[min(len(values) - 1, int(len(values) * q))]


def _hours(a: datetime, b: datetime) -> float:
    return (b - a).total_seconds() / 3600


def _stats(seconds: list[float]) -> dict[str, float | None]:
    s = sorted(seconds)
    return {"p50_s": _round(percentile(s, 0.5)), "p95_s": _round(percentile(s, 0.95)),
            "p99_s": _round(percentile(s, 0.99)), "max_s": _round(s[-1] if s else None)}


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


def summarise(records: Iterable[OptOutRecord], now: datetime, deadline_hours: float = DEFAULT_DEADLINE_HOURS,
              max_open_shown: int = 50) -> dict:
    """The compliance figures over ``records``: received, propagated, time to effect (overall and
    by rule and direction), open ones past ``deadline_hours`` with their age, and breaches of the
    48-hour and 10-business-day deadlines (an open opt-out past a deadline is a breach too)."""
    received = propagated = undated = one_click = 0
    already = 0
    times: list[float] = []
    origins: dict[str, dict] = {}
    by: dict[tuple[str, str], list[float]] = {}
    counts: dict[tuple[str, str], dict[str, int]] = {}
    open_items: list[dict] = []
    open_total = 0
    oldest_open: float | None = None
    breached_48h = breached_10bd = 0
    for r in records:
        received += 1
        one_click += r.one_click
        o = origins.setdefault(r.origin, {"received": 0, "propagated": 0, "open": 0, "_times": []})
        o["received"] += 1
        given = instant(r.given_at)
        if given is None:
            undated += 1
        for side, s in r.sides.items():
            key = (s.rule or "-", DIRECTION_OF_SIDE.get(side, side))
            c = counts.setdefault(key, {"received": 0, "propagated": 0, "open": 0, "one_click": 0})
            c["received"] += 1
            c["one_click"] += r.one_click
            if s.open:
                c["open"] += 1
                continue
            c["propagated"] += 1
            at = instant(s.at)
            if given is not None and at is not None:
                by.setdefault(key, []).append(max(0.0, (at - given).total_seconds()))
        if r.sides and all(s.detail == ALREADY_TRUE for s in r.sides.values()):
            already += 1
        effective = instant(r.effective_at)
        if r.is_open:
            open_total += 1
            o["open"] += 1
            end = now
            if given is not None:
                oldest_open = max(oldest_open or 0.0, _hours(given, now))
            if given is not None and _hours(given, now) > deadline_hours:
                open_items.append({"person": r.person[:16], "given_at": r.given_at, "age_hours": round(_hours(given, now), 1),
                                   "rule": r.rule, "sides": ",".join(k for k, s in sorted(r.sides.items()) if s.open),
                                   "origin": r.origin, "cause": r.cause,
                                   "detail": "; ".join(s.detail for s in r.sides.values() if s.open and s.detail)})
        else:
            propagated += 1
            o["propagated"] += 1
            end = effective or now
            if given is not None and effective is not None:
                times.append(max(0.0, (effective - given).total_seconds()))
                o["_times"].append(times[-1])
        if given is not None:
            breached_48h += _hours(given, end) > INBOX_PROVIDER_HOURS
            breached_10bd += end > add_business_days(given, CAN_SPAM_BUSINESS_DAYS)
    open_items.sort(key=lambda o: -o["age_hours"])
    by_rule = [{"rule": rule, "direction": direction, **counts[(rule, direction)], **_stats(by.get((rule, direction), []))}
               for rule, direction in sorted(counts)]
    return {
        "received": received, "propagated": propagated, "open": open_total, "already_true": already,
        "undated": undated, "one_click": one_click,
        "time_to_effect": {**_stats(times), "timed": len(times)},
        "by_rule": by_rule,
        # an event's opt-out is timed from its change; drift the nightly run heals, from the rows' dates
        "by_origin": [{"origin": k, **{n: v for n, v in o.items() if n != "_times"}, **_stats(o["_times"])}
                      for k, o in sorted(origins.items())],
        "deadline_hours": deadline_hours,
        "open_past_deadline": len(open_items),
        "oldest_open_hours": round(oldest_open, 1) if oldest_open is not None else None,
        "open_items": open_items[:max_open_shown],
        "breached_48h": breached_48h,
        "breached_10_business_days": breached_10bd,
    }


@dataclass(frozen=True, slots=True)
class Given:
    """What dates an opt-out and where it came from, as the code that saw it knows."""

    at: str | None
    evidence: str
    origin: Literal["event", "reconcile"]
    one_click: bool = False


@dataclass(frozen=True, slots=True)
class Write:
    """One write (or failed write) the sync made for an opt-out, for one person."""

    email: str
    cause: str
    side: str  # "rtm" | "obm": the system written
    rule: str
    ok: bool
    detail: str | None
    given: Given


def records_for(writes: Iterable[Write], now_iso: str) -> list[OptOutRecord]:
    """One record per person and cause: each side reflected now, or open with its failure."""
    out: dict[tuple[str, str], OptOutRecord] = {}
    for w in writes:
        rec = out.get((w.email, w.cause))
        if rec is None:
            rec = out[(w.email, w.cause)] = OptOutRecord(
                w.email, w.cause, w.given.at, w.given.evidence if w.given.at else UNDATED, w.given.origin, now_iso,
                {}, w.given.one_click)
        seen = rec.sides.get(w.side)
        rule = seen.rule if seen else w.rule
        if not w.ok or (seen is not None and seen.open):
            side = SideState(None, True, rule, (seen.detail if seen and seen.open else None) or w.detail or "failed")
        elif seen is not None and not seen.open and seen.detail != ALREADY_TRUE:
            side = seen  # a write already reflected it: that is the side's moment
        else:
            side = SideState(now_iso, False, rule, ALREADY_TRUE if w.detail == ALREADY_TRUE else None)
        rec.sides[w.side] = side
        if w.given.one_click and not rec.one_click:
            out[(w.email, w.cause)] = replace(rec, one_click=True)
    return list(out.values())
