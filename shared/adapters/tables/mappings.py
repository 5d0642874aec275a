"""The stored mappings document, versioned: each save keeps the previous versions for export and diff."""
from __future__ import annotations

import hashlib
import json
import time
import os
from datetime import datetime
from typing import Any, Callable, Mapping

from azure.core.exceptions import ResourceNotFoundError
from azure.data.tables import TableClient, UpdateMode

from shared.adapters.tables.common import (
    MAX_BATCH, MAX_BATCH_BYTES, PROPERTIES_PER_ROW, check_key, chunked, split_text, inverted_micros, _Clock, _iso,
    _entity_size, _Tables, _from_inverted)

# --- mappings ---------------------------------------------------------------------------------

_MAPPINGS_PK = "mappings"


class MappingsStore:
    """The validated, resolved mappings: one JSON document, with every saved version kept.

    Layout (one partition): version rows ``v<inverted time>-<random>-<nnn>`` hold the JSON in
    32,000-character properties ``p0..p7``; the ``current`` row points at the newest version.
    A save writes the version rows and moves the pointer in one transaction, so readers see the
    old document or the new one, never a mix.
    """

    def __init__(self, tables: _Tables, now: Callable[[], datetime] | None = None):
        self._tables = tables
        self._clock = _Clock(now)

    def save(self, document: dict) -> None:
        text = json.dumps(document, ensure_ascii=True, sort_keys=True, separators=(",", ":"))
        moment = self._clock.next()
        version = f"v{inverted_micros(moment)}-{os.urandom(3).hex()}"
        parts = split_text(text)
        rows: list[dict[str, Any]] = []
        for n, row_parts in enumerate(chunked(parts, PROPERTIES_PER_ROW)):
            row: dict[str, Any] = {"PartitionKey": _MAPPINGS_PK, "RowKey": f"{version}-{n:03d}", "version": version}
            row.update({f"p{i}": p for i, p in enumerate(row_parts)})
            rows.append(row)
        pointer = {"PartitionKey": _MAPPINGS_PK, "RowKey": "current", "version": version, "rows": len(rows),
                   "chars": len(text), "sha256": hashlib.sha256(text.encode()).hexdigest(), "saved_at": _iso(moment)}
        operations: list[tuple] = [("create", r) for r in rows] + [("upsert", pointer, {"mode": UpdateMode.REPLACE})]
        if len(operations) > MAX_BATCH or sum(_entity_size(r) for r in rows) > MAX_BATCH_BYTES:
            raise ValueError(f"mappings document too large to save atomically ({len(text)} characters)")
        self._tables.client("mappings").submit_transaction(operations)

    def load(self) -> dict | None:
        """The current document, or None if none was ever saved."""
        client = self._tables.client("mappings")
        try:
            pointer = client.get_entity(_MAPPINGS_PK, "current")
        except ResourceNotFoundError:
            return None
        return self._read_version(client, pointer["version"], pointer)

    def versions(self, limit: int = 10) -> list[dict[str, Any]]:
        """Saved versions, newest first: ``{"version", "saved_at"}`` (a look-up for tools)."""
        client = self._tables.client("mappings")
        seen: dict[str, str] = {}
        rows = client.query_entities("PartitionKey eq @pk and RowKey ge 'v' and RowKey lt 'w'",
                                     parameters={"pk": _MAPPINGS_PK}, select=["RowKey", "version"])
        for e in rows:
            v = e["version"]
            if v not in seen:
                seen[v] = v
                if len(seen) >= limit:
                    break
        return [{"version": v, "saved_at": _iso(_from_inverted(v[1:18]))} for v in seen]

    def load_version(self, version: str) -> dict | None:
        return self._read_version(self._tables.client("mappings"), check_key(version, "version"), None)

    @staticmethod
    def _read_version(client: TableClient, version: str, pointer: Mapping[str, Any] | None) -> dict | None:
        rows = list(client.query_entities(
            "PartitionKey eq @pk and RowKey gt @lo and RowKey lt @hi",
            parameters={"pk": _MAPPINGS_PK, "lo": version + "-", "hi": version + "-~"}))
        if not rows:
            if pointer is None:
                return None
            raise RuntimeError(f"mappings version {version} is missing its rows")
        text = "".join(e[f"p{i}"] for e in rows for i in range(PROPERTIES_PER_ROW) if f"p{i}" in e)
        if pointer is not None and (len(rows) != pointer["rows"]
                                    or hashlib.sha256(text.encode()).hexdigest() != pointer["sha256"]):
            raise RuntimeError(f"mappings version {version} does not match its checksum")
        return json.loads(text)
