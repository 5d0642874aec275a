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
    n = max(1, min(max_partitions, math.ceil(expected / max(1, rows_per_partition))))
    cuts = [lo + (hi - lo) * i // n for i in range(1, n)]
    bounds = [last_key, *(from_sql_order(c) for c in cuts if lo < c < hi)]
    bounds = list(dict.fromkeys(bounds))
    return [KeyRange(a, b) for a, b in zip(bounds, bounds[1:])] + [KeyRange(bounds[-1], None)]
