"""Pure helpers of the Table Storage adapters: keys, hashing, chunking, packing, report encoding."""
from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from shared.adapters.tables import common, runs
from shared.adapters.tables.ledger import Ledger
from shared.adapters.tables.store import TableStore
from shared.adapters.settings import SettingsError

KEY = b"unit-test-ledger-key-0123456789"


def test_table_names_cover_every_table_with_the_prefix():
    assert common.table_names("straddle") == [
        "straddleprocessed", "straddleledger", "straddlemappings", "straddleruns", "straddlesnapshots",
        "straddlecompliance"]
    assert common.table_names() == common.table_names(common.DEFAULT_PREFIX)


@pytest.mark.parametrize("prefix", ["straddle-dev", "1abc", "ab_c", "x" * 60])
def test_a_prefix_that_makes_invalid_table_names_is_a_settings_error(prefix):
    with pytest.raises(SettingsError, match="TABLE_PREFIX"):
        common.table_names(prefix)


def test_store_reports_its_table_names_and_needs_a_ledger_key_only_for_the_ledger():
    store = TableStore.from_connection_string("UseDevelopmentStorage=true", prefix="abc")
    assert store.table_names() == common.table_names("abc")
    with pytest.raises(SettingsError, match="LEDGER_KEY"):
        store.ledger
    with pytest.raises(SettingsError, match="LEDGER_KEY"):
        Ledger(store._tables, None)


def test_development_storage_expands_to_azurite():
    expanded = common.expand_connection_string("UseDevelopmentStorage=true")
    assert "AccountName=devstoreaccount1" in expanded
    assert "TableEndpoint=http://127.0.0.1:10002/devstoreaccount1;" in expanded
    assert common.expand_connection_string(" usedevelopmentstorage = TRUE ; ") == expanded
    other = "DefaultEndpointsProtocol=https;AccountName=a;AccountKey=b;EndpointSuffix=core.windows.net"
    assert common.expand_connection_string(other) == other
    store = TableStore.from_connection_string("UseDevelopmentStorage=true")
    assert store.service.url.rstrip("/") == "http://127.0.0.1:10002/devstoreaccount1"


def test_identity_based_wiring_uses_the_table_endpoint(monkeypatch):
    from shared.adapters.settings import Settings
    from shared.bootstrap import build_table_store

    class Credential:
        def get_token(self, *scopes, **kwargs):
            raise AssertionError("no request is made while wiring")

    seen = []
    monkeypatch.setattr("shared.bootstrap.azure_credential", lambda client_id: seen.append(client_id) or Credential())
    store = build_table_store(Settings.from_env({
        "AzureWebJobsStorage__tableServiceUri": "https://acct.table.core.windows.net",
        "AzureWebJobsStorage__clientId": "mi-client", "TABLE_PREFIX": "abc"}))
    assert seen == ["mi-client"]
    assert store.service.url.startswith("https://acct.table.core.windows.net")
    assert store.table_names()[0] == "abcprocessed"


def test_missing_storage_settings_is_a_settings_error():
    from shared.adapters.settings import Settings
    from shared.bootstrap import Container

    with pytest.raises(SettingsError, match="AzureWebJobsStorage"):
        Container(Settings.from_env({})).tables()


def test_processed_partition_is_the_first_hex_digit():
    assert common.processed_partition("A1b2c3d4-0000-0000-0000-000000000000") == "a"
    assert common.processed_partition("0abc") == "0"
    spread = {common.processed_partition(f"reconcile-{i}") for i in range(500)}
    assert spread == set("0123456789abcdef")  # non-hex ids still spread over the 16 partitions


@pytest.mark.parametrize("bad", ["", "a/b", "a\\b", "a#b", "a?b", "a\nb", "x" * 1025])
def test_check_key_refuses_what_table_storage_refuses(bad):
    with pytest.raises(ValueError):
        common.check_key(bad, "key")


def test_inverted_keys_sort_newest_first_and_are_fixed_width():
    base = datetime(2025, 3, 1, 12, 0, tzinfo=timezone.utc)
    moments = [base + timedelta(microseconds=i) for i in (0, 1, 999_999, 10**9)] + [datetime(1999, 1, 1, tzinfo=timezone.utc)]
    keys = [common.inverted_micros(m) for m in moments]
    assert len({len(k) for k in keys}) == 1
    assert sorted(keys) == [keys[3], keys[2], keys[1], keys[0], keys[4]]
    assert common._from_inverted(keys[2]) == moments[2]
    # naive means UTC, and float rounding never shifts a microsecond
    assert common.inverted_micros(base.replace(tzinfo=None)) == keys[0]


def test_ledger_row_keys_are_unique_and_ordered_by_time():
    base = datetime(2025, 3, 1, tzinfo=timezone.utc)
    same = {common.ledger_row_key(base) for _ in range(200)}
    assert len(same) == 200
    assert common.ledger_row_key(base + timedelta(microseconds=1)) < min(same)


def test_clock_is_strictly_increasing_even_when_time_stands_still():
    frozen = datetime(2025, 1, 1, tzinfo=timezone.utc)
    clock = common._Clock(lambda: frozen)
    ticks = [clock.next() for _ in range(5)]
    assert ticks == sorted(set(ticks)) and ticks[0] == frozen


def test_ledger_partition_is_hmac_of_the_normalised_address():
    expected = hmac.new(KEY, b"ann@example.com", hashlib.sha256).hexdigest()
    assert common.ledger_partition(KEY, "  Ann@Example.COM ") == expected
    assert common.ledger_partition(KEY, "ann@example.com") == expected
    assert common.ledger_partition(b"another-key-0123456789", "ann@example.com") != expected
    assert len(expected) == 64 and "@" not in expected
    with pytest.raises(ValueError):
        common.ledger_partition(KEY, "   ")


def test_chunking_helpers():
    assert [list(c) for c in common.chunked(list(range(7)), 3)] == [[0, 1, 2], [3, 4, 5], [6]]
    assert list(common.batches(range(250))) == [list(range(100)), list(range(100, 200)), list(range(200, 250))]
    by_size = list(common.batches([5, 5, 5, 20, 1], max_count=10, max_bytes=10, size=lambda n: n))
    assert by_size == [[5, 5], [5], [20], [1]]  # an oversized item travels alone
    assert common.split_text("") == [""] and "".join(common.split_text("x" * 70_001)) == "x" * 70_001
    assert [len(p) for p in common.split_text("x" * 70_001)] == [32_000, 32_000, 6_001]
    data = bytes(range(256)) * 1000
    assert b"".join(common.split_bytes(data)) == data and max(map(len, common.split_bytes(data))) == common.PROPERTY_BYTES


def test_members_pack_as_sixteen_bytes_per_uuid():
    ids = [str(uuid.uuid4()) for _ in range(1000)]
    fmt, payload = common.pack_members(ids + ids[:10])
    assert fmt == "uuid16" and len(payload) == 16_000
    assert common.unpack_members(fmt, payload) == frozenset(ids)
    assert payload == b"".join(uuid.UUID(i).bytes for i in sorted(ids))


@pytest.mark.parametrize("keys", [["contact:1", "lead:2"], [str(uuid.uuid4()).upper()], ["{" + str(uuid.uuid4()) + "}"], []])
def test_other_member_keys_round_trip_exactly(keys):
    fmt, payload = common.pack_members(keys)
    assert common.unpack_members(fmt, payload) == frozenset(keys)
    if keys:
        assert fmt == "json-zlib"


def test_report_encoding_round_trips():
    report = {
        "run_id": "r1", "started_at": "2025-03-01T02:00:00Z", "ok": True, "count": 3, "big": 2**40, "huge": 2**70,
        "ratio": 0.5, "nothing": None, "counts": {"drift": 2, "fixed": [1, 2]}, "note": "é" * 20_000,
        "errors": [{"id": i, "detail": "x" * 50} for i in range(2000)],
    }
    entity = runs.encode_report(report)
    assert all(len(v) <= common.PROPERTY_CHARS // 2 for v in entity.values() if isinstance(v, str) and v is not entity[runs._ENCODING])
    assert isinstance(entity["counts"], str) and json.loads(entity["counts"]) == report["counts"]
    assert runs.decode_report(entity) == report


@pytest.mark.parametrize("key", ["PartitionKey", "has space", "a__b", "9lives", 5])
def test_report_keys_must_be_property_names(key):
    with pytest.raises(ValueError):
        runs.encode_report({key: 1})


class _FlakyClient:
    """Fails the first transaction in flight; on the retry answers "already exists" if asked to."""

    def __init__(self, landed: bool):
        self.calls = 0
        self.landed = landed

    def submit_transaction(self, operations):
        from azure.core.exceptions import ResourceExistsError, ServiceResponseError

        self.calls += 1
        if self.calls == 1:
            raise ServiceResponseError("connection reset")
        if self.landed:
            raise ResourceExistsError("EntityAlreadyExists")
        return []


def test_a_transaction_lost_in_flight_is_retried(monkeypatch):
    monkeypatch.setattr(common.time, "sleep", lambda s: None)
    ops = [("create", {"PartitionKey": "p", "RowKey": "a"}), ("create", {"PartitionKey": "p", "RowKey": "b"})]
    for landed in (False, True):  # the first attempt failed before, or after, it landed
        client = _FlakyClient(landed)
        common._submit_retrying(client, ops)
        assert client.calls == 2
