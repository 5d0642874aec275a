"""Key-range partitions of a table the nightly scan reads. Pure.

A partition is a range of the table's primary key, ``after < key <= upto`` (None: unbounded), in
the order SQL Server gives ``uniqueidentifier`` values, which is the order Dataverse sorts and
compares its primary keys in. SQL Server compares the 16 bytes of a GUID (as .NET's
``Guid.ToByteArray`` lays them out: the first three groups little-endian) in the order
10..15, 8, 9, 6, 7, 4, 5, 0..3: the last group is the most significant. ``sql_order`` maps a
GUID to an integer with that order, so ranges can be split arithmetically.

How a table is cut (``plan_ranges``): its first page, read in key order, is partition 0 (a small
table ends there, at no extra cost); for a bigger one, the largest key is asked for and the rest,
``(last key of page 1, largest key]``, is cut into equal key ranges sized from the first page's
density, the last one open-ended so rows created meanwhile are still read.
"""
from __future__ import annotations

import bisect
import math
import uuid
from dataclasses import dataclass

#: SQL Server's comparison order of the bytes of ``Guid.ToByteArray()`` (most significant first).
SQL_BYTE_ORDER = (10, 11, 12, 13, 14, 15, 8, 9, 6, 7, 4, 5, 0, 1, 2, 3)
_INVERSE = tuple(SQL_BYTE_ORDER.index(i) for i in range(16))


def sql_order(guid: str) -> int:
    """A GUID as a 128-bit integer that sorts as SQL Server sorts ``uniqueidentifier``."""
    le = uuid.UUID(guid).bytes_le  # == .NET Guid.ToByteArray()
    return int.from_bytes(bytes(le[i] for i in SQL_BYTE_ORDER), "big")


def from_sql_order(value: int) -> str:
    ordered = value.to_bytes(16, "big")
    return str(uuid.UUID(bytes_le=bytes(ordered[_INVERSE[i]] for i in range(16))))


@dataclass(frozen=True)
class ScanSource:
    """One thing the scan reads whole: the consent rows, one relevant list's members, or every
    contact or lead. ``phase`` is the DriftScan phase it feeds."""

    phase: str  # "consent" | "list_members" | "members"
    table: str | None = None  # member table (list_members, members)
    list_id: str | None = None

    @property
    def name(self) -> str:
        """A stable name (checkpoint keys): consent, list-<id>, contact, lead."""
        if self.phase == "consent":
            return "consent"
        return f"list-{self.list_id}" if self.phase == "list_members" else str(self.table)


@dataclass(frozen=True)
class KeyRange:
    """``after < key <= upto`` in SQL Server order; None leaves that side open."""

    after: str | None = None
    upto: str | None = None

    def to_list(self) -> list[str | None]:
        return [self.after, self.upto]


def rows_after(first_key: str, last_key: str, page_rows: int) -> float:
    """Rows beyond a full first page if keys were spread evenly over the whole key space."""
    lo, first = sql_order(last_key), sql_order(first_key)
    return page_rows * ((1 << 128) - 1 - lo) / max(1, lo - first)


#: Rows no Dataverse table holds: a first page whose density extrapolates to more is not random keys.
NOT_RANDOM_ABOVE = 10**10


def plan_ranges(first_key: str, last_key: str, largest_key: str, page_rows: int, rows_per_partition: int,
                max_partitions: int) -> list[KeyRange]:
    """Cuts ``(last_key, largest_key]`` (what follows a full first page) into key ranges.

    The first page held ``page_rows`` rows between ``first_key`` and ``last_key``; assuming the
    rest is as dense, each range gets about ``rows_per_partition`` rows. The last range is open.
    """
    lo, hi, first = sql_order(last_key), sql_order(largest_key), sql_order(first_key)
    if hi <= lo:
        return [KeyRange(last_key, None)]
    span = max(1, lo - first)
    expected = page_rows * (hi - lo) / span
    if expected > NOT_RANDOM_ABOVE:
        # Sequential keys: the first page's density says nothing of the rest, and equal cuts would
        # mostly fall in the empty key space between the bands. One range; readers split it as they go.
        return [KeyRange(last_key, None)]
    n = max(1, min(max_partitions, math.ceil(expected / max(1, rows_per_partition))))
    cuts = [lo + (hi - lo) * i // n for i in range(1, n)]
    bounds = [last_key, *(from_sql_order(c) for c in cuts if lo < c < hi)]
    bounds = list(dict.fromkeys(bounds))
    return [KeyRange(a, b) for a, b in zip(bounds, bounds[1:])] + [KeyRange(bounds[-1], None)]


# --- reading ranges: resuming mid-range, and splitting the busiest range for an idle reader ------

TOP = (1 << 128) - 1  # sql_order of the largest possible key


def _lo(after: str | None) -> int:
    return -1 if after is None else sql_order(after)


def _hi(upto: str | None) -> int:
    return TOP if upto is None else sql_order(upto)


def uncovered(ranges: list[KeyRange], covered: list[KeyRange]) -> list[KeyRange]:
    """The parts of ``ranges`` that no ``covered`` range holds: what a resumed run still reads
    (each finished piece of a range is checkpointed with the key range it covers)."""
    done = sorted((_lo(c.after), _hi(c.upto), c) for c in covered)
    out: list[KeyRange] = []
    for rng in ranges:
        start, end, after = _lo(rng.after), _hi(rng.upto), rng.after
        for lo, hi, c in done:
            if hi <= start or lo >= end:
                continue
            if lo > start:
                out.append(KeyRange(after, c.after))
            if hi > start:
                start, after = hi, c.upto
            if start >= end:
                break
        if start < end:
            out.append(KeyRange(after, rng.upto))
    return out


@dataclass(eq=False)
class Reading:
    """A key range being read, page by page, by one reader: rows after ``cursor`` up to ``upto``
    are still to come. ``upto`` only ever shrinks (an idle reader took the rest)."""

    source: ScanSource
    cursor: str | None
    upto: str | None
    density: float = 0.0  # rows per unit of key order in its last page (0: no page read yet)
    bound: int | None = None  # no row lies beyond this key order (a largest-key probe), when known
    probing: bool = False
    started: bool = False

    def reserve(self, page_rows: int) -> int:
        """The key order the page being fetched may reach: the cursor plus one and a half pages at
        the density seen so far. A split is cut beyond it, so the reader never loses rows it fetched."""
        return _lo(self.cursor) + int(1.5 * page_rows / self.density)

    def end(self) -> int:
        return min(_hi(self.upto), self.bound if self.bound is not None else TOP)

    def left(self, page_rows: int) -> float:
        """Rows estimated beyond the reserve (if the density seen so far holds up to the end)."""
        return max(0.0, (self.end() - self.reserve(page_rows)) * self.density)


class ReadingBoard:
    """The ranges of a phase: waiting to be read, or being read. An idle reader takes a waiting
    range or, when none is left, the unread upper half of the range with most rows left (work
    stealing), cut at a key beyond what its reader may already have fetched. Pure; the caller
    holds a lock around every call."""

    def __init__(self, page_rows: int, min_split_pages: float = 2.0):
        self.page_rows = page_rows
        self.min_left = min_split_pages * page_rows  # a split leaves both halves at least a page
        self.waiting: list[Reading] = []
        self.active: list[Reading] = []
        self.expecting = 0  # sources whose ranges are still being planned

    def add(self, source: ScanSource, ranges: list[KeyRange], largest: str | None = None) -> None:
        """Ranges to read; where no row lies is taken to be their end (or ``largest``, the source's
        largest key, for the open one) until a split shows otherwise."""
        top = sql_order(largest) if largest else None
        self.waiting.extend(Reading(source, r.after, r.upto, bound=sql_order(r.upto) if r.upto else top)
                            for r in ranges)

    def take(self) -> Reading | None:
        if not self.waiting:
            return None
        r = self.waiting.pop(0)
        r.started = True
        self.active.append(r)
        return r

    def victim(self) -> Reading | None:
        """The range being read with the most rows left, if worth splitting; its ``bound`` may be
        unknown (the caller then probes its largest key first)."""
        best = [r for r in self.active if r.density > 0 and not r.probing and r.left(self.page_rows) >= self.min_left]
        return max(best, key=lambda r: r.left(self.page_rows), default=None)

    def idle(self) -> bool:
        """Nothing to take now nor later: no waiting range, none being planned, and no range being
        read that may still be worth splitting (a range whose first page is out may be)."""
        return not self.waiting and not self.expecting and not any(
            r.density == 0 or r.probing or r.left(self.page_rows) >= self.min_left for r in self.active)

    def bounded(self, r: Reading, largest: str | None) -> None:
        r.probing = False
        r.bound = _lo(r.cursor) if largest is None else sql_order(largest)

    def split(self, r: Reading) -> Reading | None:
        """Cuts ``r`` between its reserve and its end; the upper part is a new range being read."""
        if r.bound is None or r.density == 0:
            return None
        lo, hi = r.reserve(self.page_rows), r.end()
        if (hi - lo) * r.density < self.min_left:
            return None
        cut = from_sql_order(lo + (hi - lo) // 2)
        # the new range may start in empty key space: it is not split before its own first page
        piece = Reading(r.source, cut, r.upto, bound=r.bound, started=True)
        # Rows as dense as the reader's up to the end: they go on up to the cut. More rows than any
        # table holds: the range spans empty key space (between server bands), where below the cut
        # its rows end is unknown until probed.
        r.upto, r.bound = cut, (sql_order(cut) if (hi - lo) * r.density <= NOT_RANDOM_ABOVE else None)
        self.active.append(piece)
        return piece

    def advance(self, r: Reading, keys: list[str]) -> tuple[int, bool]:
        """A page of ``r`` arrived with these keys (in key order): how many of them are its own
        (the rest lie beyond a cut made meanwhile), and whether the range is then finished."""
        hi = _hi(r.upto)
        # keys come in key order: find the cut by bisection (a page is 5,000 keys; this runs under a lock)
        own = len(keys) if not keys or sql_order(keys[-1]) <= hi else bisect.bisect_right(keys, hi, key=sql_order)
        if own:
            last = sql_order(keys[own - 1])
            r.density = own / max(1, last - (sql_order(keys[0]) if own > 1 else _lo(r.cursor)))
            r.cursor = keys[own - 1]
            return own, own < len(keys) or last == hi
        return own, own < len(keys)

    def finish(self, r: Reading) -> None:
        if r in self.active:
            self.active.remove(r)
