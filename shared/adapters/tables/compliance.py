"""The opt-out deadlines table: append-only, a batch's opt-out records packed in one row.

A record is one opt-out of one person (the ledger's key: HMAC of the normalised address under
LEDGER_KEY, never the address) by one cause. The sync files a batch's records together: one row
per UTC day (usually one), the records as compressed JSON in binary properties, so the event path
pays one Table Storage write per batch, whatever its size. Nothing is overwritten: a retry that
closes a side, or a healing run that found it consistent, appends the record again with that
side, and reading merges a person's record for a cause in the order it was written (the row key is
the time of writing).

PartitionKey is the day: for a change event the day it was given (so its retry lands in the same
partition), for a reconciliation the day it was healed (an opt-out given months ago and healed
tonight is tonight's news). A window of days is a range of partitions.
"""
from __future__ import annotations

import json
import os
import zlib
from datetime import datetime, timedelta, timezone
from typing import Any, Iterator, Sequence

from shared.adapters.tables.common import (PROPERTIES_PER_ROW, PROPERTY_BYTES, batches, ledger_partition,
                                           _Clock, _entity_size, _plain, _submit_all, _Tables, micros, split_bytes)
from shared.domain.compliance import OptOutRecord, SideState, merge
from shared.domain.planner import instant

FORMAT = "json-zlib-1"
_MAX_DETAIL = 500
_ROW_BYTES = PROPERTY_BYTES * PROPERTIES_PER_ROW


def filed_at(record: OptOutRecord) -> datetime | None:
    """The moment a record is filed and found under: an event's given time, else when handled."""
    given = instant(record.given_at) if record.origin == "event" else None
    return given or instant(record.seen_at)


def day_of(record: OptOutRecord) -> str:
    moment = filed_at(record) or datetime.now(timezone.utc)
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d")


def encode(records: Sequence[OptOutRecord]) -> bytes:
    rows = [[r.person, r.cause, r.given_at, r.evidence, r.origin, r.seen_at, int(r.one_click),
             {side: [s.at, int(s.open), s.rule, (s.detail or "")[:_MAX_DETAIL] or None] for side, s in r.sides.items()}]
            for r in records]
    return zlib.compress(json.dumps(rows, separators=(",", ":")).encode("utf-8"), 6)


def decode(payload: bytes) -> list[OptOutRecord]:
    return [OptOutRecord(person, cause, given, evidence, origin, seen,
                         {side: SideState(at, bool(is_open), rule, detail) for side, (at, is_open, rule, detail)
                          in sides.items()}, bool(one_click))
            for person, cause, given, evidence, origin, seen, one_click, sides
            in json.loads(zlib.decompress(payload).decode("utf-8"))]


class ComplianceStore:
    """Opt-out records; ``person`` is an address on the way in and the ledger key on the way out."""

    def __init__(self, tables: _Tables, key: bytes | None):
        from shared.adapters.settings import SettingsError

        if not key:
            raise SettingsError("missing app setting LEDGER_KEY (needed for the opt-out deadlines)")
        self._tables = tables
        self._key = key
        self._clock = _Clock()

    def _rows(self, day: str, records: list[OptOutRecord]) -> Iterator[dict[str, Any]]:
        payload = encode(records)
        if len(payload) > _ROW_BYTES and len(records) > 1:  # rare: halves until each fits one row
            half = len(records) // 2
            yield from self._rows(day, records[:half])
            yield from self._rows(day, records[half:])
            return
        # The time of writing orders the rows; the suffix keeps two instances' rows apart.
        row: dict[str, Any] = {"PartitionKey": day, "RowKey": f"{micros(self._clock.next()):017d}-{os.urandom(4).hex()}",
                               "format": FORMAT, "records": len(records)}
        for i, part in enumerate(split_bytes(payload)):
            row[f"d{i}"] = part
        yield row

    def record(self, records: Sequence[OptOutRecord], hashed: bool = False) -> None:
        """Appends the records, one row per day. ``hashed``: the records' ``person`` is already
        the ledger key (records read back from this store)."""
        if not records:
            return
        by_day: dict[str, list[OptOutRecord]] = {}
        for r in records:
            person = r.person if hashed else ledger_partition(self._key, r.person)
            by_day.setdefault(day_of(r), []).append(OptOutRecord(person, r.cause, r.given_at, r.evidence, r.origin,
                                                                 r.seen_at, r.sides, r.one_click))
        rows = [row for day, recs in by_day.items() for row in self._rows(day, recs)]
        _submit_all(self._tables.client("compliance"),
                    [[("create", row) for row in batch] for batch in batches(rows, max_count=1, size=_entity_size)])

    def window(self, since: datetime, until: datetime) -> Iterator[OptOutRecord]:
        """Each opt-out filed from ``since`` to ``until`` (an event's by when it was given, a
        reconciliation's by when it healed it), merged over everything written about it."""
        first = (since.astimezone(timezone.utc) - timedelta(days=1)).strftime("%Y-%m-%d")
        last = (until.astimezone(timezone.utc) + timedelta(days=1)).strftime("%Y-%m-%d")
        found = self._tables.client("compliance").query_entities(
            "PartitionKey ge @first and PartitionKey le @last", parameters={"first": first, "last": last},
            results_per_page=1000)
        merged: dict[tuple[str, str], OptOutRecord] = {}
        for e in sorted(found, key=lambda row: row["RowKey"]):  # in the order written
            for r in from_entity(e):
                key = (r.person, r.cause)
                merged[key] = merge(merged[key], r) if key in merged else r
        for r in merged.values():
            moment = filed_at(r)
            if moment is not None and since <= moment <= until:
                yield r


def from_entity(e: Any) -> list[OptOutRecord]:
    if _plain(e.get("format")) != FORMAT:
        return []  # a row of a format this code does not read
    payload = b"".join(_plain(e[f"d{i}"]) for i in range(PROPERTIES_PER_ROW) if e.get(f"d{i}") is not None)
    return decode(payload)
