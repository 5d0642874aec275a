"""The ledger: every write the sync made, per person, keyed by an HMAC of the address (never the address)."""
from __future__ import annotations

import heapq
import threading
from dataclasses import fields as dataclass_fields
from datetime import datetime, timezone
from typing import Any, Callable, Iterator, Sequence

from azure.core.exceptions import ResourceExistsError

from shared.adapters.settings import SettingsError
from shared.adapters.tables.common import (
    batches, inverted_micros, ledger_partition, _KEYS_PARTITION, key_fingerprint, ledger_row_key, _Clock, _iso,
    _entity_size, _plain, _Tables, _submit_all)
from shared.domain.ledger import LedgerEntry
from shared.telemetry import redact

# --- the ledger -------------------------------------------------------------------------------

_LEDGER_FIELDS = tuple(f.name for f in dataclass_fields(LedgerEntry) if f.name != "email")
_FREE_TEXT = ("action", "before", "after", "detail")  # where an address could slip in by mistake
_MAX_TEXT = 16_000  # characters per free-text property (64 KiB limit, worst-case UTF-8)


class Ledger:
    """The audit trail: one partition per person (HMAC of the normalised address), newest first.

    The address itself is never stored; as a safety net, anything email-shaped in the free-text
    fields is masked before writing.
    """

    def __init__(self, tables: _Tables, key: bytes | None, now: Callable[[], datetime] | None = None,
                 previous_key: bytes | None = None):
        if not key:
            raise SettingsError("missing app setting LEDGER_KEY (needed for the ledger)")
        self._tables = tables
        self._key = key
        # After a deliberate rotation the old key is only read, so history written before stays findable.
        self._previous_key = previous_key if previous_key and previous_key != key else None
        self._clock = _Clock(now)
        self._key_checked = False
        self._key_lock = threading.Lock()

    def check_key(self) -> None:
        """Refuses a LEDGER_KEY that changed behind the operator's back (another machine, a new
        deployment): the ledger keeps the fingerprints of the keys it was written with, and a new
        key is accepted only with the one before it in LEDGER_KEY_PREVIOUS. Once per process."""
        if self._key_checked:
            return
        with self._key_lock:
            if self._key_checked:
                return
            client = self._tables.client("ledger")
            known = {e["RowKey"] for e in client.query_entities("PartitionKey eq @pk", parameters={"pk": _KEYS_PARTITION},
                                                                select=["RowKey"])}
            mine = key_fingerprint(self._key)
            if mine not in known:
                previous = key_fingerprint(self._previous_key) if self._previous_key else None
                if known and previous not in known:
                    raise SettingsError(
                        "LEDGER_KEY is not a key this ledger was written with: a new key would silently start new "
                        "ledger partitions and hide the history. Restore the key, or rotate deliberately by setting "
                        "the key in use so far as LEDGER_KEY_PREVIOUS (docs/runbook.md, LEDGER_KEY)")
                try:
                    client.create_entity({"PartitionKey": _KEYS_PARTITION, "RowKey": mine,
                                          "since": _iso(datetime.now(timezone.utc))})
                except ResourceExistsError:
                    pass  # another instance recorded it at the same moment
            self._key_checked = True

    def partition_for(self, email: str) -> str:
        return ledger_partition(self._key, email)

    def _entity(self, entry: LedgerEntry, moment: datetime) -> dict[str, Any]:
        entity: dict[str, Any] = {"PartitionKey": self.partition_for(entry.email),
                                  "RowKey": ledger_row_key(moment)}
        for name in _LEDGER_FIELDS:
            value = _iso(moment) if name == "recorded_at" else getattr(entry, name)
            if value is None:
                continue  # Table Storage has no nulls; absent reads back as None
            if name == "carried_from":
                value = self.partition_for(value)  # the old address's pseudonym, never the address
            if name in _FREE_TEXT:
                value = redact(str(value))[:_MAX_TEXT]
            entity[name] = value
        return entity

    def record(self, entries: Sequence[LedgerEntry]) -> None:
        """Stores the entries (recorded_at = now), one transaction per partition and 100 entries.

        Entries in one call keep their order: the later one reads as newer.
        """
        if not entries:
            return
        self.check_key()
        groups: dict[str, list[dict[str, Any]]] = {}
        for entry in entries:
            entity = self._entity(entry, self._clock.next())
            groups.setdefault(entity["PartitionKey"], []).append(entity)
        _submit_all(self._tables.client("ledger"),
                    [[("create", e) for e in batch] for rows in groups.values() for batch in batches(rows, size=_entity_size)])

    def history(self, email: str, limit: int | None = None) -> list[LedgerEntry]:
        """The person's entries, newest first; ``email`` is filled in with the address given."""
        if limit is not None and limit <= 0:
            return []
        client = self._tables.client("ledger")
        keys = [self._key] + ([self._previous_key] if self._previous_key else [])
        # Each partition is newest first by RowKey; merging them keeps that order across a rotation.
        partitions = [client.query_entities("PartitionKey eq @pk", parameters={"pk": ledger_partition(k, email)},
                                            results_per_page=min(limit or 1000, 1000)) for k in keys]
        out: list[LedgerEntry] = []
        for e in heapq.merge(*partitions, key=lambda row: row["RowKey"]):
            out.append(LedgerEntry(email=email, **{n: _plain(e.get(n)) for n in _LEDGER_FIELDS}))
            if limit is not None and len(out) >= limit:
                break
        return out

    def since(self, moment: datetime) -> Iterator[tuple[str, LedgerEntry]]:
        """(person key, entry) for every entry recorded at or after ``moment``, across people.

        Row keys sort newest first within a person, so one ``RowKey`` bound selects the window;
        Table Storage still reads every partition (a table scan), which is fine for an operator's
        look at a day or a week. The address is not stored: entries come back with ``email=""``.
        """
        bound = f"{inverted_micros(moment)}-~"  # every suffix of the boundary microsecond included
        # The key fingerprints' partition is not a person's: its row keys are hex, not times.
        found = self._tables.client("ledger").query_entities("RowKey le @rk and PartitionKey ne @keys",
                                                             parameters={"rk": bound, "keys": _KEYS_PARTITION},
                                                             results_per_page=1000)
        for e in found:
            yield e["PartitionKey"], LedgerEntry(email="", **{n: _plain(e.get(n)) for n in _LEDGER_FIELDS})
