"""Processed event ids: which Service Bus messages the sync has already applied (duplicates are skipped)."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Callable, Iterable, Sequence

from azure.data.tables import TableClient, UpdateMode

from shared.adapters.tables.common import (
    MAX_BATCH, MAX_FILTER_KEYS, MAX_PARALLEL, check_key, chunked, processed_partition, _quote, _Tables, _submit_all,
    _delete_rows)

# --- processed event ids ----------------------------------------------------------------------


class ProcessedEvents:
    """Idempotency keys: which change events were already handled.

    PartitionKey = first hex digit of the event id (16 partitions), RowKey = event id.
    """

    def __init__(self, tables: _Tables, now: Callable[[], datetime] | None = None):
        self._tables = tables
        self._now = now or (lambda: datetime.now(timezone.utc))

    @property
    def _client(self) -> TableClient:
        return self._tables.client("processed")

    @staticmethod
    def _by_partition(event_ids: Iterable[str]) -> dict[str, list[str]]:
        groups: dict[str, list[str]] = {}
        for event_id in dict.fromkeys(event_ids):  # dedupe, keep order
            check_key(event_id, "event id")
            groups.setdefault(processed_partition(event_id), []).append(event_id)
        return groups

    def seen(self, event_ids: Iterable[str]) -> set[str]:
        """The subset of ``event_ids`` already marked: one query per partition touched (per 14 ids,
        the $filter limit), run concurrently."""
        groups = self._by_partition(event_ids)
        if not groups:
            return set()
        client = self._client
        queries = [(pk, chunk) for pk, ids in groups.items() for chunk in chunked(ids, MAX_FILTER_KEYS)]

        def run(query: tuple[str, Sequence[str]]) -> list[str]:
            pk, ids = query
            rows = " or ".join(f"RowKey eq {_quote(i)}" for i in ids)
            found = client.query_entities(f"PartitionKey eq {_quote(pk)} and ({rows})", select=["RowKey"])
            return [e["RowKey"] for e in found]

        if len(queries) == 1:
            return set(run(queries[0]))
        with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL, len(queries))) as pool:
            return {rk for rks in pool.map(run, queries) for rk in rks}

    def mark(self, event_ids: Iterable[str], outcome: str = "processed") -> None:
        """Records the ids as handled (upsert: the row's content carries no meaning beyond its age)."""
        groups = self._by_partition(event_ids)
        if not groups:
            return
        now = self._now()
        _submit_all(self._client, [
            [("upsert", {"PartitionKey": pk, "RowKey": i, "outcome": outcome, "processed_at": now},
              {"mode": UpdateMode.REPLACE}) for i in chunk]
            for pk, ids in groups.items() for chunk in chunked(ids, MAX_BATCH)])

    def purge(self, older_than: datetime) -> int:
        """Deletes ids marked before ``older_than``; returns how many rows it deleted."""
        if older_than.tzinfo is None:
            older_than = older_than.replace(tzinfo=timezone.utc)
        client = self._client
        old = client.query_entities("processed_at lt @cutoff", parameters={"cutoff": older_than},
                                    select=["PartitionKey", "RowKey"])
        return _delete_rows(client, [(e["PartitionKey"], e["RowKey"]) for e in old])
