"""The opt-out deadlines table: one row per opt-out, per person, per cause.

PartitionKey is a UTC day: for a change event the day it was given (so each retry of the event
lands on the same row and closes the side it left open), for a reconciliation the day it was
healed (an opt-out given months ago and healed tonight is tonight's news). A window of days is a
range of partitions. RowKey is the person's ledger key (HMAC of the normalised address under
LEDGER_KEY, never the address) and a digest of the cause. Writes are upserts that merge: each
write sets only the sides it is about.
"""
from __future__ import annotations

import hashlib
from datetime import datetime, timedelta, timezone
from typing import Any, Iterator, Sequence

from azure.data.tables import UpdateMode

from shared.adapters.tables.common import batches, ledger_partition, _entity_size, _plain, _submit_all, _Tables
from shared.domain.compliance import SIDES, OptOutRecord, SideState
from shared.domain.planner import instant

_MAX_DETAIL = 500


def filed_at(record: OptOutRecord) -> datetime | None:
    """The moment a record is filed and found under: an event's given time, else when handled."""
    given = instant(record.given_at) if record.origin == "event" else None
    return given or instant(record.seen_at)


def day_of(record: OptOutRecord) -> str:
    moment = filed_at(record) or datetime.now(timezone.utc)
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d")


def _cause_digest(cause: str) -> str:
    return hashlib.sha256(cause.encode("utf-8")).hexdigest()[:16]


class ComplianceStore:
    """Opt-out records; ``person`` is an address on the way in and the ledger key on the way out."""

    def __init__(self, tables: _Tables, key: bytes | None):
        from shared.adapters.settings import SettingsError

        if not key:
            raise SettingsError("missing app setting LEDGER_KEY (needed for the opt-out deadlines)")
        self._tables = tables
        self._key = key

    def _entity(self, r: OptOutRecord, person_key: str) -> dict[str, Any]:
        entity: dict[str, Any] = {"PartitionKey": day_of(r), "RowKey": f"{person_key}-{_cause_digest(r.cause)}",
                                  "cause": r.cause, "evidence": r.evidence, "origin": r.origin,
                                  "handled_at": r.seen_at}
        if r.given_at:
            entity["given_at"] = r.given_at
        if r.one_click:
            entity["one_click"] = True  # never written False: a merge must not clear it
        for side, s in r.sides.items():
            entity[f"{side}_open"] = s.open
            entity[f"{side}_rule"] = s.rule
            entity[f"{side}_at"] = s.at or ""
            entity[f"{side}_detail"] = (s.detail or "")[:_MAX_DETAIL]
        return entity

    def record(self, records: Sequence[OptOutRecord], hashed: bool = False) -> None:
        """Upserts (merging) the records, one transaction per day and 100 rows. ``hashed``: the
        records' ``person`` is already the ledger key (records read back from this store)."""
        if not records:
            return
        rows: dict[tuple[str, str], dict[str, Any]] = {}
        for r in records:
            e = self._entity(r, r.person if hashed else ledger_partition(self._key, r.person))
            k = (e["PartitionKey"], e["RowKey"])
            rows[k] = {**rows[k], **e} if k in rows else e  # a transaction may not hold one row twice
        by_day: dict[str, list[dict[str, Any]]] = {}
        for e in rows.values():
            by_day.setdefault(e["PartitionKey"], []).append(e)
        _submit_all(self._tables.client("compliance"),
                    [[("upsert", e, {"mode": UpdateMode.MERGE}) for e in batch]
                     for day in by_day.values() for batch in batches(day, size=_entity_size)])

    def window(self, since: datetime, until: datetime) -> Iterator[OptOutRecord]:
        """Records filed from ``since`` to ``until`` (an event's opt-out by when it was given, a
        reconciliation's by when it healed it); the day partitions bound the query, the exact
        moments filter it."""
        first = (since.astimezone(timezone.utc) - timedelta(days=1)).strftime("%Y-%m-%d")
        last = (until.astimezone(timezone.utc) + timedelta(days=1)).strftime("%Y-%m-%d")
        found = self._tables.client("compliance").query_entities(
            "PartitionKey ge @first and PartitionKey le @last", parameters={"first": first, "last": last},
            results_per_page=1000)
        for e in found:
            r = from_entity(e)
            moment = filed_at(r)
            if moment is not None and since <= moment <= until:
                yield r


def from_entity(e: Any) -> OptOutRecord:
    get = lambda name: _plain(e.get(name))  # noqa: E731
    sides = {}
    for side in SIDES:
        if get(f"{side}_open") is None:
            continue
        sides[side] = SideState(get(f"{side}_at") or None, bool(get(f"{side}_open")), get(f"{side}_rule") or "",
                                get(f"{side}_detail") or None)
    person = str(e["RowKey"]).rsplit("-", 1)[0]
    return OptOutRecord(person, get("cause") or "", get("given_at"), get("evidence") or "", get("origin") or "event",
                        get("handled_at") or "", sides, bool(get("one_click")))
