"""List snapshots: the members of each mapped subscription list at the last scan (removals are the difference)."""
from __future__ import annotations

import hashlib
import os
from datetime import datetime
from typing import Any, Callable, Iterable

from azure.core.exceptions import ResourceNotFoundError
from azure.data.tables import TableClient

from shared.adapters.tables.common import (
    PROPERTIES_PER_ROW, check_key, chunked, batches, split_bytes, micros, pack_members, unpack_members, _Clock,
    _entity_size, _plain, _Tables, _submit, _delete_rows, write_guarded)

# --- list snapshots ---------------------------------------------------------------------------


#: Lists whose snapshot members the event path keeps in memory (a departure confirmed per list).
SNAPSHOTS_KEPT = 16


class SnapshotCorrupt(RuntimeError):
    """A stored snapshot is unreadable (rows missing or checksum wrong); take a fresh one."""


class ListSnapshots:
    """Marketing list members as of the last reconciliation, for "who left since last night".

    Partition = list id. Members are packed (``pack_members``: 16 bytes per UUID) and split into
    64,000-byte binary properties, 8 per row (``g<generation>-<nnnnn>``). A ``current`` pointer row
    names the live generation; saving writes a whole new generation, switches the pointer (with an
    ETag check, so two concurrent saves cannot both win), then deletes the older generations.
    """

    def __init__(self, tables: _Tables, now: Callable[[], datetime] | None = None):
        self._tables = tables
        self._clock = _Clock(now)
        self._held: dict[str, tuple[str, frozenset[str], str]] = {}  # list id -> (generation, members, taken_at)

    @property
    def _client(self) -> TableClient:
        return self._tables.client("snapshots")

    def save(self, list_id: str, member_keys: Iterable[str], taken_at: str) -> None:
        pk = check_key(list_id, "list id")
        client = self._client
        fmt, payload = pack_members(member_keys)
        try:
            previous = client.get_entity(pk, "current")
        except ResourceNotFoundError:
            previous = None
        # Generations sort oldest first, so cleanup can spare any generation started after ours.
        generation = f"{micros(self._clock.next()):017d}{os.urandom(3).hex()}"
        pieces = split_bytes(payload)
        rows = []
        for n, row_pieces in enumerate(chunked(pieces, PROPERTIES_PER_ROW)):
            row: dict[str, Any] = {"PartitionKey": pk, "RowKey": f"g{generation}-{n:05d}"}
            row.update({f"d{i}": p for i, p in enumerate(row_pieces)})
            rows.append(row)
        for batch in batches(rows, size=_entity_size):
            _submit(client, [("create", r) for r in batch])
        pointer = {"PartitionKey": pk, "RowKey": "current", "generation": generation, "format": fmt,
                   "rows": len(rows), "bytes": len(payload), "sha256": hashlib.sha256(payload).hexdigest(),
                   "taken_at": taken_at}
        try:
            write_guarded(client, pointer, previous)
        except Exception:
            _delete_rows(client, [(pk, r["RowKey"]) for r in rows])  # ours never went live
            raise
        stale = client.query_entities("PartitionKey eq @pk and RowKey ge 'g' and RowKey lt @ours",
                                      parameters={"pk": pk, "ours": f"g{generation}"}, select=["RowKey"])
        _delete_rows(client, [(pk, e["RowKey"]) for e in stale])

    def load(self, list_id: str) -> tuple[frozenset[str], str] | None:
        """(member keys, taken_at) of the list's snapshot, or None if there is none."""
        pk = check_key(list_id, "list id")
        client = self._client
        try:
            pointer = client.get_entity(pk, "current")
        except ResourceNotFoundError:
            return None
        generation = pointer["generation"]
        rows = list(client.query_entities(
            "PartitionKey eq @pk and RowKey gt @lo and RowKey lt @hi",
            parameters={"pk": pk, "lo": f"g{generation}-", "hi": f"g{generation}-~"}))
        payload = b"".join(_plain(e[f"d{i}"]) for e in rows for i in range(PROPERTIES_PER_ROW) if f"d{i}" in e)
        if len(rows) != pointer["rows"] or hashlib.sha256(payload).hexdigest() != pointer["sha256"]:
            raise SnapshotCorrupt(f"snapshot of list {list_id} (generation {generation}) is incomplete")
        return unpack_members(pointer["format"], payload), pointer["taken_at"]

    def holds(self, list_id: str, member_ids: Iterable[str]) -> tuple[frozenset[str], str] | None:
        """(those of ``member_ids`` that the list's snapshot holds, lowercase; taken_at), or None
        when the list has no usable snapshot. The event path asks this for each departure it must
        confirm: the members of a generation are kept, so a snapshot is read once per night, and
        each question costs one pointer read."""
        pk = check_key(list_id, "list id")
        try:
            pointer = self._client.get_entity(pk, "current")
        except ResourceNotFoundError:
            return None
        cached = self._held.get(list_id)
        if cached is None or cached[0] != pointer["generation"]:
            try:
                loaded = self.load(list_id)
            except SnapshotCorrupt:
                return None  # as good as none: the next scan takes a fresh one
            if loaded is None:
                return None
            if len(self._held) >= SNAPSHOTS_KEPT:
                self._held.pop(next(iter(self._held)))
            cached = self._held[list_id] = (pointer["generation"], loaded[0], loaded[1])
        wanted = {m.lower() for m in member_ids}
        return frozenset(wanted & cached[1]), cached[2]

    def delete(self, list_id: str) -> None:
        """Forgets the list's snapshot (e.g. the list was deleted)."""
        pk = check_key(list_id, "list id")
        client = self._client
        # the pointer first, so a concurrent reader never finds it pointing at deleted rows
        client.delete_entity(pk, "current")
        rows = client.query_entities("PartitionKey eq @pk", parameters={"pk": pk}, select=["RowKey"])
        _delete_rows(client, [(pk, e["RowKey"]) for e in rows])
