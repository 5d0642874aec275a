"""Azure Table Storage adapters: processed event ids, the ledger, mappings, run reports, list snapshots.

One ``TableServiceClient`` serves every table (so connections and tokens are pooled); each table is
``<prefix><name>`` and is created lazily, once per process, by the first call that needs it.
Transient storage errors surface as the SDK's exceptions (``azure.core.exceptions``); callers
decide whether to retry. Misconfiguration raises ``SettingsError``.

Table Storage limits shape the layouts below: a string or binary property holds at most 64 KiB,
an entity at most 1 MiB, a transaction at most 100 operations and 4 MiB within one partition, and
a ``$filter`` at most 15 discrete comparisons.
"""
from __future__ import annotations

import hashlib
import heapq
import hmac
import json
import time
import os
import re
import threading
import uuid
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import fields as dataclass_fields
from datetime import date, datetime, timedelta, timezone
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence, TypeVar

from azure.core import MatchConditions
from azure.core.exceptions import (HttpResponseError, ResourceExistsError, ResourceModifiedError,
                                   ResourceNotFoundError, ServiceRequestError, ServiceResponseError)
from azure.data.tables import EdmType, EntityProperty, TableClient, TableServiceClient, TableTransactionError, UpdateMode

from shared.adapters.settings import SettingsError
from shared.domain.consent import normalise_email
from shared.domain.ledger import LedgerEntry
from shared.telemetry import redact

T = TypeVar("T")

#: The logical tables, in the order ``table_names`` lists them.
TABLES = ("processed", "ledger", "mappings", "runs", "snapshots")
DEFAULT_PREFIX = "straddle"

#: Azurite's well-known development account (the same for every Azurite installation).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
AZURITE_TABLE_PORT = 10002
#: azure-core retry options for a person at a terminal (the CLI): one quick retry of a connection
#: that cannot be made and a 10 s connect timeout, instead of the SDK's ten retries over minutes.
FAIL_FAST = {"retry_connect": 1, "retry_backoff_factor": 0.2, "connection_timeout": 10}

MAX_BATCH = 100  # operations per transaction
MAX_BATCH_BYTES = 3 * 1024 * 1024  # stay clear of the 4 MiB transaction payload limit
MAX_FILTER_KEYS = 14  # 15 comparisons per $filter, one of them the PartitionKey
CHUNK_PARTITION_PREFIX = "chunks-"  # sorts after every "YYYY-MM-DD" date partition
SCAN_PARTITION_PREFIX = "scan-"  # sorts after "chunks-" (and every date)
MAX_PARALLEL = 16  # concurrent Table Storage requests from one call (the SDK pool holds 10+)
PROPERTY_BYTES = 64_000  # binary property payload (limit 64 KiB)
PROPERTY_CHARS = 32_000  # string property of ASCII text (limit 64 KiB of UTF-16)
PROPERTIES_PER_ROW = 8  # 8 x 64 KB stays well inside the 1 MiB entity limit, base64 included

_BAD_KEY_CHARS = re.compile(r"[/\\#?\x00-\x1f\x7f-\x9f]")
_TABLE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9]{2,62}$")
_PROPERTY_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,199}$")
_INT32 = range(-(2**31), 2**31)
_INT64 = range(-(2**63), 2**63)


# --- configuration -------------------------------------------------------------------------


def table_names(prefix: str = DEFAULT_PREFIX) -> list[str]:
    """Every table the code uses under ``prefix``; raises SettingsError if a name would be invalid."""
    names = [prefix + t for t in TABLES]
    bad = [n for n in names if not _TABLE_NAME.match(n)]
    if bad:
        raise SettingsError(
            f"TABLE_PREFIX is malformed: table names must be 3-63 letters or digits starting with a letter "
            f"(would give {bad[0]!r})")
    return names


def azurite_connection_string(host: str = "127.0.0.1", port: int = AZURITE_TABLE_PORT) -> str:
    return (f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
            f"TableEndpoint=http://{host}:{port}/{AZURITE_ACCOUNT};")


def expand_connection_string(connection_string: str) -> str:
    """Turns ``UseDevelopmentStorage=true`` into Azurite's explicit table connection string.

    The SDK's own handling of the shorthand has varied between versions; the explicit form works
    with all of them. ``DevelopmentStorageProxyUri`` (rare) is honoured as the endpoint host.
    """
    parts = dict(p.split("=", 1) for p in connection_string.strip().split(";") if "=" in p)
    parts = {k.strip().lower(): v.strip() for k, v in parts.items()}
    if parts.get("usedevelopmentstorage", "").lower() != "true":
        return connection_string
    proxy = parts.get("developmentstorageproxyuri")
    if proxy:
        from urllib.parse import urlparse

        parsed = urlparse(proxy)
        return azurite_connection_string(parsed.hostname or "127.0.0.1", AZURITE_TABLE_PORT)
    return azurite_connection_string()


# --- pure helpers (unit tested) --------------------------------------------------------------


def check_key(value: str, what: str) -> str:
    """PartitionKey/RowKey values may not hold / \\ # ? or control characters and are at most 1 KiB."""
    if not isinstance(value, str) or not value or _BAD_KEY_CHARS.search(value) or len(value.encode()) > 1024:
        raise ValueError(f"{what} is not usable as a Table Storage key: {value!r}")
    return value


def chunked(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def batches(items: Iterable[T], max_count: int = MAX_BATCH, max_bytes: int = MAX_BATCH_BYTES,
            size: Callable[[T], int] = lambda _: 0) -> Iterator[list[T]]:
    """Groups items into transactions of at most ``max_count`` items and about ``max_bytes``."""
    batch: list[T] = []
    total = 0
    for item in items:
        n = size(item)
        if batch and (len(batch) >= max_count or total + n > max_bytes):
            yield batch
            batch, total = [], 0
        batch.append(item)
        total += n
    if batch:
        yield batch


def split_text(text: str, size: int = PROPERTY_CHARS) -> list[str]:
    return [text[i:i + size] for i in range(0, len(text), size)] or [""]


def split_bytes(data: bytes, size: int = PROPERTY_BYTES) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)] or [b""]


def processed_partition(event_id: str) -> str:
    """One of 16 partitions: the event id's first hex digit (ids are UUID-shaped digests)."""
    first = event_id[:1].lower()
    if first and first in "0123456789abcdef":
        return first
    return hashlib.sha256(event_id.encode()).hexdigest()[0]  # an id that is not hex still spreads evenly


_INVERT_FROM = 10**17 - 1  # microseconds since 1970 stay below this until the year 5138
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def micros(moment: datetime) -> int:
    """Exact microseconds since 1970 (naive means UTC); float timestamps can be off by one."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return (moment - _EPOCH) // timedelta(microseconds=1)


def inverted_micros(moment: datetime) -> str:
    """A fixed-width key that sorts newest first (Table Storage only sorts ascending)."""
    return f"{_INVERT_FROM - micros(moment):017d}"


def ledger_partition(key: bytes, email: str) -> str:
    """HMAC-SHA256 (hex) of the normalised address under the ledger key."""
    normalised = normalise_email(email)
    if normalised is None:
        raise ValueError("a ledger entry needs an email address")
    return hmac.new(key, normalised.encode("utf-8"), hashlib.sha256).hexdigest()


_KEYS_PARTITION = "ledger-keys"  # never an HMAC (64 hex digits): no person's partition


def key_fingerprint(key: bytes) -> str:
    """Names a ledger key without revealing it (an HMAC under the key of a fixed label)."""
    return hmac.new(key, b"straddle ledger key fingerprint", hashlib.sha256).hexdigest()[:32]


def ledger_row_key(moment: datetime, suffix: str | None = None) -> str:
    return f"{inverted_micros(moment)}-{suffix or os.urandom(4).hex()}"


def pack_members(member_keys: Iterable[str]) -> tuple[str, bytes]:
    """(format, payload): sorted UUIDs as 16 raw bytes each when every key is a canonical UUID;
    otherwise the sorted keys as compressed JSON. Either way ``unpack_members`` gives the keys back."""
    keys = sorted(set(member_keys))
    try:
        ids = [uuid.UUID(k) for k in keys]
        if all(str(u) == k for u, k in zip(ids, keys)):
            return "uuid16", b"".join(u.bytes for u in ids)
    except (ValueError, AttributeError, TypeError):
        pass
    if not all(isinstance(k, str) for k in keys):
        raise TypeError("member keys must be strings")
    return "json-zlib", zlib.compress(json.dumps(keys, separators=(",", ":")).encode("utf-8"), 6)


def unpack_members(fmt: str, payload: bytes) -> frozenset[str]:
    if fmt == "uuid16":
        if len(payload) % 16:
            raise ValueError("snapshot payload is not a whole number of UUIDs")
        return frozenset(str(uuid.UUID(bytes=payload[i:i + 16])) for i in range(0, len(payload), 16))
    if fmt == "json-zlib":
        return frozenset(json.loads(zlib.decompress(payload).decode("utf-8")))
    raise ValueError(f"unknown snapshot format {fmt!r}")


class _Clock:
    """Strictly increasing UTC times within this process, so entries written in one call keep
    their order (and distinct row keys) even when they share a clock tick."""

    def __init__(self, now: Callable[[], datetime] | None = None):
        self._now = now or (lambda: datetime.now(timezone.utc))
        self._last = 0
        self._lock = threading.Lock()

    def next(self) -> datetime:
        with self._lock:
            now = max(micros(self._now()), self._last + 1)
            self._last = now
        return _EPOCH + timedelta(microseconds=now)


def _iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _entity_size(entity: Mapping[str, Any]) -> int:
    """Rough wire size of an entity in a transaction (binary travels as base64)."""
    total = 200
    for k, v in entity.items():
        total += len(k) + 20
        if isinstance(v, (bytes, bytearray)):
            total += len(v) * 4 // 3 + 4
        elif isinstance(v, str):
            total += len(v.encode("utf-8")) * 2  # JSON escaping can double it; be pessimistic
        else:
            total += 32
    return total


def _plain(value: Any) -> Any:
    return value.value if isinstance(value, EntityProperty) else value


# --- shared plumbing --------------------------------------------------------------------------


class _Tables:
    """The shared service client plus the set of tables this process has already ensured."""

    def __init__(self, service: TableServiceClient, prefix: str):
        table_names(prefix)  # validates the prefix
        self.service = service
        self.prefix = prefix
        self._clients: dict[str, TableClient] = {}
        self._lock = threading.Lock()

    def client(self, name: str) -> TableClient:
        with self._lock:
            client = self._clients.get(name)
            if client is None:
                client = self.service.get_table_client(self.prefix + name)
                try:
                    client.create_table()
                except ResourceExistsError:
                    pass
                self._clients[name] = client
            return client


def _submit(client: TableClient, operations: list[tuple]) -> None:
    if len(operations) == 1:  # a lone operation needs no transaction envelope
        op, entity, *rest = operations[0]
        kwargs = rest[0] if rest else {}
        if op == "delete":
            client.delete_entity(entity["PartitionKey"], entity["RowKey"], **kwargs)
        elif op == "create":
            client.create_entity(entity, **kwargs)
        elif op == "upsert":
            client.upsert_entity(entity, **kwargs)
        else:
            client.submit_transaction(operations)
        return
    client.submit_transaction(operations)


def _submit_all(client: TableClient, transactions: list[list[tuple]]) -> None:
    """Submits independent transactions (different partitions, or chunks of one) concurrently:
    a batch of events touches hundreds of ledger partitions, and each is its own round trip."""
    if len(transactions) <= 1:
        for ops in transactions:
            _submit_retrying(client, ops)
        return
    with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL, len(transactions))) as pool:
        for _ in pool.map(lambda ops: _submit_retrying(client, ops), transactions):
            pass  # re-raises the first failure


def _submit_retrying(client: TableClient, operations: list[tuple], attempts: int = 3) -> None:
    """The SDK does not retry a transaction (a POST) that failed in flight; these writes are
    safe to repeat (upserts, or creates whose "already exists" on a repeat means done), and a
    lost ledger write after the Dataverse writes succeeded would leave a gap in the audit trail."""
    for attempt in range(1, attempts + 1):
        try:
            _submit(client, operations)
            return
        except (ResourceExistsError, TableTransactionError) as exc:
            if attempt > 1 and "AlreadyExists" in str(getattr(exc, "error_code", "") or exc):
                return  # the earlier attempt landed
            raise
        except (ServiceRequestError, ServiceResponseError, HttpResponseError) as exc:
            status = getattr(exc, "status_code", None)
            if attempt == attempts or (status is not None and status < 500 and status != 429):
                raise
            time.sleep(0.2 * 4 ** (attempt - 1))


def _delete_rows(client: TableClient, keys: Iterable[tuple[str, str]]) -> int:
    """Deletes rows in per-partition transactions; rows someone else deleted meanwhile are fine."""
    by_partition: dict[str, list[str]] = {}
    for pk, rk in keys:
        by_partition.setdefault(pk, []).append(rk)
    deleted = 0
    for pk, rks in by_partition.items():
        for chunk in chunked(rks, MAX_BATCH):
            try:
                client.submit_transaction([("delete", {"PartitionKey": pk, "RowKey": rk}) for rk in chunk])
            except TableTransactionError as exc:
                if getattr(exc, "error_code", None) != "ResourceNotFound":
                    raise
                for rk in chunk:  # a concurrent delete beat us to one row: go one by one
                    client.delete_entity(pk, rk)  # the SDK ignores rows that are already gone
            deleted += len(chunk)
    return deleted


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


def _from_inverted(digits: str) -> datetime:
    return _EPOCH + timedelta(microseconds=_INVERT_FROM - int(digits))


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
            if current is None:
                client.create_entity(entity)
            else:
                client.update_entity(entity, mode=UpdateMode.REPLACE, etag=current.metadata["etag"],
                                     match_condition=MatchConditions.IfNotModified)
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


# --- list snapshots ---------------------------------------------------------------------------


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
            if previous is None:
                client.create_entity(pointer)
            else:
                client.update_entity(pointer, mode=UpdateMode.REPLACE, etag=previous.metadata["etag"],
                                     match_condition=MatchConditions.IfNotModified)
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

    def delete(self, list_id: str) -> None:
        """Forgets the list's snapshot (e.g. the list was deleted)."""
        pk = check_key(list_id, "list id")
        client = self._client
        # the pointer first, so a concurrent reader never finds it pointing at deleted rows
        client.delete_entity(pk, "current")
        rows = client.query_entities("PartitionKey eq @pk", parameters={"pk": pk}, select=["RowKey"])
        _delete_rows(client, [(pk, e["RowKey"]) for e in rows])


# --- the facade -------------------------------------------------------------------------------


class TableStore:
    """Every table adapter over one shared service client; adapters are built on first use, so a
    missing LEDGER_KEY only fails the code that needs the ledger."""

    def __init__(self, service: TableServiceClient, prefix: str = DEFAULT_PREFIX, ledger_key: bytes | None = None,
                 previous_ledger_key: bytes | None = None):
        self._tables = _Tables(service, prefix)
        self._ledger_key = ledger_key
        self._previous_ledger_key = previous_ledger_key
        self._lock = threading.Lock()
        self._built: dict[str, Any] = {}

    @classmethod
    def from_connection_string(cls, connection_string: str, prefix: str = DEFAULT_PREFIX,
                               ledger_key: bytes | None = None, previous_ledger_key: bytes | None = None,
                               **client_options: Any) -> "TableStore":
        try:
            service = TableServiceClient.from_connection_string(expand_connection_string(connection_string),
                                                                **client_options)
        except ValueError as exc:
            raise SettingsError(f"AzureWebJobsStorage is malformed: {str(exc).split(':')[0]}") from None
        return cls(service, prefix, ledger_key, previous_ledger_key)

    @classmethod
    def from_endpoint(cls, endpoint: str, credential: Any, prefix: str = DEFAULT_PREFIX,
                      ledger_key: bytes | None = None, previous_ledger_key: bytes | None = None,
                      **client_options: Any) -> "TableStore":
        return cls(TableServiceClient(endpoint=endpoint, credential=credential, **client_options), prefix, ledger_key,
                   previous_ledger_key)

    @property
    def service(self) -> TableServiceClient:
        return self._tables.service

    @property
    def prefix(self) -> str:
        return self._tables.prefix

    def _get(self, name: str, build: Callable[[], Any]) -> Any:
        with self._lock:
            if name not in self._built:
                self._built[name] = build()
            return self._built[name]

    @property
    def processed(self) -> ProcessedEvents:
        return self._get("processed", lambda: ProcessedEvents(self._tables))

    @property
    def ledger(self) -> Ledger:
        return self._get("ledger", lambda: Ledger(self._tables, self._ledger_key,
                                                  previous_key=self._previous_ledger_key))

    @property
    def mappings(self) -> MappingsStore:
        return self._get("mappings", lambda: MappingsStore(self._tables))

    @property
    def runs(self) -> RunReports:
        return self._get("runs", lambda: RunReports(self._tables))

    @property
    def snapshots(self) -> ListSnapshots:
        return self._get("snapshots", lambda: ListSnapshots(self._tables))

    def table_names(self) -> list[str]:
        return table_names(self.prefix)

    def close(self) -> None:
        self._tables.service.close()
