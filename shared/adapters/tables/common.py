"""What every Table Storage store shares: table names, connection strings, keys, batching, encoding.

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
import hmac
import json
import time
import os
import re
import threading
import uuid
import zlib
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence, TypeVar

from azure.core.exceptions import HttpResponseError, ResourceExistsError, ServiceRequestError, ServiceResponseError
from azure.core import MatchConditions
from azure.data.tables import EntityProperty, TableClient, TableServiceClient, TableTransactionError, UpdateMode

from shared.adapters.settings import SettingsError
from shared.domain.consent import normalise_email

T = TypeVar("T")

#: The logical tables, in the order ``table_names`` lists them.
TABLES = ("processed", "ledger", "mappings", "runs", "snapshots", "compliance")
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


def write_guarded(client: Any, entity: dict[str, Any], current: Any) -> None:
    """Creates ``entity``, or replaces ``current`` only if nobody changed it since it was read
    (its ETag): a writer that lost the race gets ResourceExistsError or ResourceModifiedError."""
    if current is None:
        client.create_entity(entity)
    else:
        client.update_entity(entity, mode=UpdateMode.REPLACE, etag=current.metadata["etag"],
                             match_condition=MatchConditions.IfNotModified)


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


def _from_inverted(digits: str) -> datetime:
    return _EPOCH + timedelta(microseconds=_INVERT_FROM - int(digits))
