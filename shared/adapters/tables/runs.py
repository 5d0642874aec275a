"""Run reports of the nightly reconciliation, with its chunk results and the scan's partition checkpoints
(they live in the same table: one run's state, resumable after a crash)."""
from __future__ import annotations

import hashlib
import json
from datetime import date, datetime, timedelta, timezone
from typing import Any, Callable, Mapping

from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import EdmType, EntityProperty, UpdateMode

from shared.adapters.tables.common import (
    CHUNK_PARTITION_PREFIX, SCAN_PARTITION_PREFIX, PROPERTY_CHARS, PROPERTIES_PER_ROW, _PROPERTY_NAME, _INT32, _INT64,
    check_key, chunked, batches, split_text, split_bytes, _entity_size, _plain, _Tables, _submit_retrying, _delete_rows, write_guarded)

# --- run reports ------------------------------------------------------------------------------

_ENCODING = "StraddleEncoding"  # which report keys were JSON-encoded, split, or None
_RESERVED = {"PartitionKey", "RowKey", "Timestamp", "ETag", _ENCODING}


def _report_started(report: Mapping[str, Any]) -> datetime:
    started = datetime.fromisoformat(str(report["started_at"]).replace("Z", "+00:00"))
    return started if started.tzinfo else started.replace(tzinfo=timezone.utc)


def encode_report(report: Mapping[str, Any]) -> dict[str, Any]:
    """Report dict -> entity properties: scalars natively, nested values as JSON, long strings
    split across ``<key>__<n>`` properties; ``StraddleEncoding`` records how to undo each."""
    entity: dict[str, Any] = {}
    encoding: dict[str, Any] = {}
    for key, value in report.items():
        if not isinstance(key, str) or not _PROPERTY_NAME.match(key) or key in _RESERVED or "__" in key:
            raise ValueError(f"run report key {key!r} is not usable as a Table Storage property name")
        if value is None:
            encoding[key] = "null"
            continue
        if isinstance(value, bool) or isinstance(value, float) or (isinstance(value, int) and value in _INT32):
            entity[key] = value
            continue
        if isinstance(value, int) and value in _INT64:
            entity[key] = EntityProperty(value, EdmType.INT64)
            continue
        kind = "str"
        if not isinstance(value, str):
            value, kind = json.dumps(value, ensure_ascii=True, separators=(",", ":")), "json"
        if len(value) > PROPERTY_CHARS // 2:  # non-ASCII strings take up to 2 UTF-16 units a char
            parts = split_text(value, PROPERTY_CHARS // 2)
            entity.update({f"{key}__{i}": p for i, p in enumerate(parts)})
            encoding[key] = [kind, len(parts)]
        else:
            entity[key] = value
            if kind == "json":
                encoding[key] = "json"
    entity[_ENCODING] = json.dumps(encoding, separators=(",", ":"))
    return entity


def decode_report(entity: Mapping[str, Any]) -> dict[str, Any]:
    encoding = json.loads(entity.get(_ENCODING) or "{}")
    out: dict[str, Any] = {}
    for key, value in entity.items():
        if key in _RESERVED or "__" in key:
            continue
        how = encoding.get(key)
        out[key] = json.loads(value) if how == "json" else _plain(value)
    for key, how in encoding.items():
        if how == "null":
            out[key] = None
        elif isinstance(how, list):
            kind, n = how
            text = "".join(entity[f"{key}__{i}"] for i in range(n))
            out[key] = json.loads(text) if kind == "json" else text
    return out


class RunReports:
    """Run reports. PartitionKey = the run's UTC start date (YYYY-MM-DD), RowKey = run id."""

    def __init__(self, tables: _Tables, today: Callable[[], date] | None = None):
        self._tables = tables
        self._today = today or (lambda: datetime.now(timezone.utc).date())

    def save(self, report: dict) -> None:
        if "run_id" not in report or "started_at" not in report:
            raise ValueError("a run report needs run_id and started_at")
        started = _report_started(report)
        entity = encode_report(report)
        entity["PartitionKey"] = started.astimezone(timezone.utc).date().isoformat()
        entity["RowKey"] = check_key(str(report["run_id"]), "run_id")
        self._tables.client("runs").upsert_entity(entity, mode=UpdateMode.REPLACE)

    def latest(self, limit: int = 10) -> list[dict]:
        """The newest ``limit`` reports by started_at. Looks back a week, then a month, a year,
        and finally everywhere, so the usual call reads a few partitions only."""
        if limit <= 0:
            return []
        client = self._tables.client("runs")
        today = self._today()
        reports: list[dict] = []
        for days in (7, 31, 366, None):
            if days is None:
                found = client.query_entities("PartitionKey lt @chunks", parameters={"chunks": CHUNK_PARTITION_PREFIX})
            else:
                since = (today - timedelta(days=days)).isoformat()
                found = client.query_entities("PartitionKey ge @since and PartitionKey lt @chunks",
                                              parameters={"since": since, "chunks": CHUNK_PARTITION_PREFIX})
            reports = [decode_report(e) for e in found]
            if len(reports) >= limit:
                break
        reports.sort(key=lambda r: (_report_started(r), str(r.get("run_id"))), reverse=True)
        return reports[:limit]

    def save_final(self, report: dict) -> bool:
        """Replaces a run's "running" (fanned out) or "scanning" row with its final report, once: two
        last chunks finishing together, or a resumed run and the one it resumes, both try, and the
        etag lets only the first one win."""
        client = self._tables.client("runs")
        pk = _report_started(report).astimezone(timezone.utc).date().isoformat()
        rk = check_key(str(report["run_id"]), "run_id")
        try:
            current = client.get_entity(pk, rk)
        except ResourceNotFoundError:
            current = None
        if current is not None and decode_report(current).get("status") not in ("running", "scanning"):
            return False
        entity = encode_report(report)
        entity["PartitionKey"], entity["RowKey"] = pk, rk
        try:
            write_guarded(client, entity, current)
        except (ResourceExistsError, ResourceModifiedError):
            return False
        return True

    # Chunk results of a fanned-out run live in their own partition, outside the date partitions.
    @staticmethod
    def _chunk_partition(run_id: str) -> str:
        return f"{CHUNK_PARTITION_PREFIX}{check_key(run_id, 'run_id')}"

    # A chunk's result may carry thousands of removed members: split like a report's long values.
    def save_chunk(self, run_id: str, index: int, result: dict) -> None:
        entity = encode_report({"result": result})
        entity.update(PartitionKey=self._chunk_partition(run_id), RowKey=f"{index:06d}")
        self._tables.client("runs").upsert_entity(entity, mode=UpdateMode.REPLACE)

    @staticmethod
    def _chunk_result(entity: Mapping[str, Any]) -> dict:
        return decode_report(entity)["result"]

    def get_chunk(self, run_id: str, index: int) -> dict | None:
        try:
            e = self._tables.client("runs").get_entity(self._chunk_partition(run_id), f"{index:06d}")
        except ResourceNotFoundError:
            return None
        return self._chunk_result(e)

    def chunk_results(self, run_id: str) -> list[dict]:
        found = self._tables.client("runs").query_entities("PartitionKey eq @pk",
                                                            parameters={"pk": self._chunk_partition(run_id)})
        return [self._chunk_result(e) for e in found]

    # Finished scan partitions of a run: a payload split into 64 KB binary properties over rows
    # ``<name>~<nnnn>``, then the ``<name>`` row (meta, piece count) written last, as the commit mark.
    @staticmethod
    def _scan_partition(run_id: str) -> str:
        return f"{SCAN_PARTITION_PREFIX}{check_key(run_id, 'run_id')}"

    def save_partition(self, run_id: str, name: str, meta: dict, payload: bytes) -> None:
        pk, name = self._scan_partition(run_id), check_key(name, "partition name")
        client = self._tables.client("runs")
        rows = []
        for n, pieces in enumerate(chunked(split_bytes(payload), PROPERTIES_PER_ROW)):
            row: dict[str, Any] = {"PartitionKey": pk, "RowKey": f"{name}~{n:04d}"}
            row.update({f"d{i}": p for i, p in enumerate(pieces)})
            rows.append(row)
        for batch in batches(rows, size=_entity_size):
            _submit_retrying(client, [("upsert", r, {"mode": UpdateMode.REPLACE}) for r in batch])
        client.upsert_entity({"PartitionKey": pk, "RowKey": name, "meta": json.dumps(meta), "rows": len(rows),
                              "sha256": hashlib.sha256(payload).hexdigest()}, mode=UpdateMode.REPLACE)

    def partitions(self, run_id: str) -> dict[str, tuple[dict, bytes]]:
        """name -> (meta, payload) of every partition the run finished (complete ones only)."""
        found = self._tables.client("runs").query_entities("PartitionKey eq @pk",
                                                            parameters={"pk": self._scan_partition(run_id)})
        marks: dict[str, Mapping[str, Any]] = {}
        pieces: dict[str, list[tuple[str, bytes]]] = {}
        for e in found:
            name, _, n = e["RowKey"].partition("~")
            if n:
                data = b"".join(_plain(e[f"d{i}"]) for i in range(PROPERTIES_PER_ROW) if f"d{i}" in e)
                pieces.setdefault(name, []).append((n, data))
            else:
                marks[name] = e
        out: dict[str, tuple[dict, bytes]] = {}
        for name, mark in marks.items():
            parts = sorted(pieces.get(name, ()))[:mark["rows"]]
            payload = b"".join(p for _, p in parts)
            if len(parts) == mark["rows"] and hashlib.sha256(payload).hexdigest() == mark["sha256"]:
                out[name] = (json.loads(mark["meta"]), payload)
        return out

    def clear_partitions(self, run_id: str) -> None:
        """Drops a finished run's scan checkpoints (list member ids are the bulk of them)."""
        pk = self._scan_partition(run_id)
        rows = self._tables.client("runs").query_entities("PartitionKey eq @pk", parameters={"pk": pk},
                                                          select=["RowKey"])
        _delete_rows(self._tables.client("runs"), [(pk, e["RowKey"]) for e in rows])

    def get(self, run_id: str) -> dict | None:
        """One report by id (any date; the runs table is small)."""
        client = self._tables.client("runs")
        found = client.query_entities("RowKey eq @rk and PartitionKey lt @chunks",
                                      parameters={"rk": check_key(run_id, "run_id"), "chunks": CHUNK_PARTITION_PREFIX})
        for e in found:
            return decode_report(e)
        return None
