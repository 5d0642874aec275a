"""NCRONTAB, the six-field schedule of Azure Functions timer triggers: ``sec min hour day month dow``.

Fields take ``*``, numbers, ranges ``a-b``, lists ``a,b``, steps ``*/n`` and ``a-b/n``; day of week
is 0-6 from Sunday (7 is Sunday too), months and days may be named (Jan, Mon). Time is UTC, as the
host's default (no WEBSITE_TIME_ZONE). TimeSpan schedules (``00:05:00``) run every interval.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

_MONTHS = {m: i for i, m in enumerate("jan feb mar apr may jun jul aug sep oct nov dec".split(), 1)}
_DAYS = {d: i for i, d in enumerate("sun mon tue wed thu fri sat".split())}
_RANGES = ((0, 59, {}), (0, 59, {}), (0, 23, {}), (1, 31, {}), (1, 12, _MONTHS), (0, 7, _DAYS))


class ScheduleError(ValueError):
    pass


def _field(text: str, lo: int, hi: int, names: dict[str, int]) -> frozenset[int]:
    out: set[int] = set()
    for part in text.lower().split(","):
        step = 1
        if "/" in part:
            part, step_text = part.split("/", 1)
            step = int(step_text)
            if step <= 0:
                raise ScheduleError(f"bad step in {text!r}")
        if part == "*":
            a, b = lo, hi
        elif "-" in part:
            a_text, b_text = part.split("-", 1)
            a, b = int(names.get(a_text, a_text)), int(names.get(b_text, b_text))
        else:
            a = int(names.get(part, part))
            b = hi if step > 1 else a
        if not (lo <= a <= hi and lo <= b <= hi and a <= b):
            raise ScheduleError(f"{text!r} is out of range {lo}-{hi}")
        out.update(range(a, b + 1, step))
    return frozenset(out)


@dataclass(frozen=True)
class Schedule:
    seconds: frozenset[int]
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    interval: timedelta | None = None

    @classmethod
    def parse(cls, expression: str) -> "Schedule":
        text = expression.strip()
        if ":" in text and " " not in text:  # TimeSpan form, e.g. 00:05:00
            h, m, s = (int(x) for x in text.split(":"))
            return cls(*([frozenset()] * 6), interval=timedelta(hours=h, minutes=m, seconds=s))
        parts = text.split()
        if len(parts) != 6:
            raise ScheduleError(f"NCRONTAB needs six fields (sec min hour day month day-of-week): {expression!r}")
        try:
            fields = [_field(p, lo, hi, names) for p, (lo, hi, names) in zip(parts, _RANGES)]
        except ValueError as exc:
            raise ScheduleError(f"bad NCRONTAB {expression!r}: {exc}") from None
        fields[5] = frozenset(d % 7 for d in fields[5])
        return cls(*fields)

    def next_after(self, t: datetime) -> datetime:
        """The first occurrence strictly after ``t`` (naive or aware; same kind returned)."""
        if self.interval is not None:
            return t + self.interval
        c = t.replace(microsecond=0) + timedelta(seconds=1)
        for _ in range(1_000_000):
            if c.month not in self.months:
                c = (c.replace(day=1, hour=0, minute=0, second=0) + timedelta(days=32)).replace(day=1)
            elif c.day not in self.days or (c.weekday() + 1) % 7 not in self.weekdays:
                c = c.replace(hour=0, minute=0, second=0) + timedelta(days=1)
            elif c.hour not in self.hours:
                c = c.replace(minute=0, second=0) + timedelta(hours=1)
            elif c.minute not in self.minutes:
                c = c.replace(second=0) + timedelta(minutes=1)
            elif c.second not in self.seconds:
                c += timedelta(seconds=1)
            else:
                return c
        raise ScheduleError("the schedule never fires")
