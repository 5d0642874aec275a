"""The Table Storage adapters against real Azurite (see conftest.py for how it is found or started)."""
from __future__ import annotations

import json
import random
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from azure.core.exceptions import ResourceModifiedError

from shared.adapters.tables import common
from shared.adapters.tables.processed import ProcessedEvents
from shared.adapters.tables.snapshots import ListSnapshots, SnapshotCorrupt
from shared.adapters.tables.store import TableStore
from shared.adapters.settings import Settings
from shared.bootstrap import Container
from tests.integration.conftest import LEDGER_KEY
from shared.domain.ledger import LedgerEntry

pytestmark = pytest.mark.integration


def _raw(store: TableStore, name: str) -> list[dict]:
    return [dict(e) for e in store.service.get_table_client(store.prefix + name).list_entities()]


def _ids(n: int, seed: int = 1) -> list[str]:
    rnd = random.Random(seed)
    return [str(uuid.UUID(int=rnd.getrandbits(128), version=4)) for _ in range(n)]


# --- wiring -----------------------------------------------------------------------------------


def test_container_builds_a_working_store_from_settings(azurite_tables, table_prefix):
    settings = Settings.from_env({"AzureWebJobsStorage": azurite_tables, "TABLE_PREFIX": table_prefix,
                                  "LEDGER_KEY": "a-ledger-key-of-some-length-Xq7Rm2Kv"})
    container = Container(settings)
    store = container.tables()
    assert container.tables() is store
    assert store.table_names() == common.table_names(table_prefix)
    store.processed.mark(["abc"])
    assert store.processed.seen(["abc", "def"]) == {"abc"}
    created = {tb.name for tb in store.service.list_tables()}
    assert common.table_names(table_prefix)[0] in created
    for name in common.table_names(table_prefix):
        store.service.delete_table(name)


def test_tables_are_created_lazily_once(table_store):
    existing = lambda: {tb.name for tb in table_store.service.list_tables()} & set(table_store.table_names())
    assert existing() == set()
    table_store.runs.latest()
    assert existing() == {table_store.prefix + "runs"}
    table_store.runs.latest()  # a second use does not try again (and would not mind if it did)
    common._Tables(table_store.service, table_store.prefix).client("runs")


# --- processed event ids ----------------------------------------------------------------------


def test_seen_and_mark_across_partitions(table_store):
    processed = table_store.processed
    ids = _ids(300)
    marked, unmarked = ids[:170], ids[170:]
    assert processed.seen(ids) == set()
    processed.mark(marked)
    processed.mark(marked[:5] + marked[:5], outcome="duplicate")  # marking again is harmless
    assert processed.seen(ids) == set(marked)
    assert processed.seen(unmarked) == set()
    assert processed.seen([]) == set()
    rows = _raw(table_store, "processed")
    assert len(rows) == 170
    assert {r["PartitionKey"] for r in rows} == set("0123456789abcdef")
    assert all(r["PartitionKey"] == r["RowKey"][0] for r in rows)


def test_seen_handles_quotes_in_ids(table_store):
    processed = table_store.processed
    processed.mark(["it's", "o''k"])
    assert processed.seen(["it's", "o''k", "its"]) == {"it's", "o''k"}


def test_purge_deletes_only_old_rows(table_store):
    now = datetime.now(timezone.utc)
    clock = {"now": now - timedelta(days=10)}
    processed = ProcessedEvents(table_store._tables, now=lambda: clock["now"])
    old, fresh = _ids(150, seed=2), _ids(40, seed=3)
    processed.mark(old)
    clock["now"] = now
    processed.mark(fresh)
    assert processed.purge(now - timedelta(days=7)) == 150
    assert processed.seen(old + fresh) == set(fresh)
    assert processed.purge(now - timedelta(days=7)) == 0


# --- ledger -----------------------------------------------------------------------------------


def _entry(email: str, n: int, **kw) -> LedgerEntry:
    values = dict(email=email, rule="R1", origin_system="dataverse", origin_event_id=f"ev-{n}",
                  origin_time="2025-03-01T10:00:00Z", target_system="rtm", target_table="msdynmkt_contactpointconsent4",
                  target_id=str(uuid.UUID(int=n)), action=f"opt out of purpose {n}", before="opted in",
                  after="opted out", outcome="applied")
    values.update(kw)
    return LedgerEntry(**values)


def test_ledger_history_is_newest_first_and_per_person(table_store):
    ledger = table_store.ledger
    ann, bob = "Ann.Example@Contoso.com", "bob@contoso.com"
    ledger.record([_entry(ann, i) for i in range(5)] + [_entry(bob, 100)])
    ledger.record([_entry(" ann.example@contoso.com ", 5, detail="second call", target_id=None, before=None)])
    history = ledger.history(ann)
    assert [e.origin_event_id for e in history] == [f"ev-{i}" for i in (5, 4, 3, 2, 1, 0)]
    assert all(e.email == ann for e in history)
    stamps = [e.recorded_at for e in history]
    assert all(stamps) and stamps == sorted(stamps, reverse=True)
    assert history[0].detail == "second call" and history[0].target_id is None and history[0].before is None
    assert history[1] == _entry(ann, 4, recorded_at=history[1].recorded_at)
    assert [e.origin_event_id for e in ledger.history(ann, limit=2)] == ["ev-5", "ev-4"]
    assert ledger.history(ann, limit=0) == []
    assert [e.origin_event_id for e in ledger.history("BOB@contoso.com")] == ["ev-100"]
    assert ledger.history("nobody@contoso.com") == []
    assert ledger.partition_for(ann) == ledger.partition_for("ann.example@contoso.com")


def test_ledger_batches_beyond_one_transaction(table_store):
    ledger = table_store.ledger
    ledger.record([_entry("many@contoso.com", i) for i in range(250)])
    history = ledger.history("many@contoso.com")
    assert [e.origin_event_id for e in history] == [f"ev-{i}" for i in reversed(range(250))]


def test_ledger_never_stores_the_address(table_store):
    ledger = table_store.ledger
    email = "Secret.Person@Example.org"
    ledger.record([
        _entry(email, 1),
        # a careless caller: the address (and another) in free text is masked, not stored
        _entry(email, 2, action=f"set emailaddress1 to {email}", before="old.addr@example.org",
               after=email.lower(), detail=f"changed for {email.upper()}"),
    ])
    keys = [r for r in _raw(table_store, "ledger") if r["PartitionKey"] == "ledger-keys"]
    rows = [r for r in _raw(table_store, "ledger") if r["PartitionKey"] != "ledger-keys"]
    assert len(rows) == 2
    # beside them only the key's fingerprint, never the key
    assert [k["RowKey"] for k in keys] == [common.key_fingerprint(LEDGER_KEY)] and LEDGER_KEY.decode() not in str(keys)
    for row in rows:
        text = json.dumps({k: str(v) for k, v in row.items()}).lower()
        assert "secret.person" not in text and "example.org" not in text and "@" not in text
    assert {r["PartitionKey"] for r in rows} == {ledger.partition_for(email)}
    assert ledger.history(email)[0].after == "<email>"


# --- mappings ---------------------------------------------------------------------------------


def _mappings(size: int) -> dict:
    return {"version": 1, "purposes": {"commercial": str(uuid.UUID(int=1))},
            "lists": [{"id": str(uuid.UUID(int=i)), "name": f"List {i} – ünïcode 📬", "topic": f"topic-{i}"}
                      for i in range(size)]}


def test_mappings_round_trip_small_and_large(table_store):
    mappings = table_store.mappings
    assert mappings.load() is None
    small = _mappings(3)
    mappings.save(small)
    assert mappings.load() == small
    large = _mappings(4000)  # several hundred KB of JSON: many properties and several rows
    assert len(json.dumps(large)) > 5 * 64 * 1024
    mappings.save(large)
    assert mappings.load() == large
    versions = mappings.versions()
    assert len(versions) == 2 and versions[0]["saved_at"] > versions[1]["saved_at"]
    assert mappings.load_version(versions[1]["version"]) == small
    for row in _raw(table_store, "mappings"):
        for value in row.values():
            assert not isinstance(value, str) or len(value) <= common.PROPERTY_CHARS


def test_mappings_save_is_all_or_nothing(table_store):
    mappings = table_store.mappings
    mappings.save(_mappings(2))
    before = _raw(table_store, "mappings")
    with pytest.raises(ValueError, match="too large"):
        mappings.save({"blob": "x" * (5 * 1024 * 1024)})
    assert _raw(table_store, "mappings") == before
    assert mappings.load() == _mappings(2)


# --- run reports ------------------------------------------------------------------------------


def _report(run_id: str, started: datetime, **kw) -> dict:
    report = {"run_id": run_id, "started_at": started.isoformat().replace("+00:00", "Z"),
              "finished_at": (started + timedelta(minutes=5)).isoformat(), "status": "succeeded",
              "counts": {"contacts": 1200, "drift": 3}, "errors": [], "dry_run": False, "note": None}
    report.update(kw)
    return report


def test_run_reports_round_trip_and_latest_ordering(table_store):
    runs = table_store.runs
    assert runs.latest() == [] and runs.get("nope") is None
    now = datetime.now(timezone.utc).replace(microsecond=0)
    reports = [
        _report("r-old", datetime(2023, 5, 1, 2, 0, tzinfo=timezone.utc)),
        _report("r-2", now - timedelta(days=2)),
        _report("r-1a", now - timedelta(days=1, hours=2)),
        _report("r-1b", now - timedelta(days=1), errors=[{"id": "x", "detail": "boom"}] * 3),
        _report("r-month", now - timedelta(days=20)),
        # a local-time start is filed under its UTC date
        {**_report("r-tz", now - timedelta(days=3)), "started_at": (now - timedelta(days=3)).astimezone(
            timezone(timedelta(hours=-5))).isoformat()},
    ]
    for r in random.Random(4).sample(reports, len(reports)):
        runs.save(r)
    assert [r["run_id"] for r in runs.latest(3)] == ["r-1b", "r-1a", "r-2"]
    assert [r["run_id"] for r in runs.latest()] == ["r-1b", "r-1a", "r-2", "r-tz", "r-month", "r-old"]
    assert runs.get("r-1b") == reports[3]
    assert runs.get("r-old") == reports[0]
    partitions = {e["RowKey"]: e["PartitionKey"] for e in _raw(table_store, "runs")}
    assert partitions["r-old"] == "2023-05-01"
    assert partitions["r-tz"] == (now - timedelta(days=3)).date().isoformat()
    runs.save({**reports[0], "status": "failed"})  # saving again replaces
    assert runs.get("r-old")["status"] == "failed"


# --- list snapshots ---------------------------------------------------------------------------


def test_snapshot_of_100k_members_replaced_by_a_smaller_one(table_store):
    snapshots = table_store.snapshots
    list_id = str(uuid.uuid4())
    assert snapshots.load(list_id) is None
    big = _ids(100_000, seed=5)
    snapshots.save(list_id, big, "2025-03-01T02:00:00Z")
    members, taken_at = snapshots.load(list_id)
    assert members == frozenset(big) and taken_at == "2025-03-01T02:00:00Z"
    rows = _raw(table_store, "snapshots")
    assert len(rows) == 1 + 4  # pointer + ceil(1.6 MB / (8 x 64 KB))

    small = big[:10] + _ids(5, seed=6)
    snapshots.save(list_id, small, "2025-03-02T02:00:00Z")
    assert snapshots.load(list_id) == (frozenset(small), "2025-03-02T02:00:00Z")
    rows = _raw(table_store, "snapshots")
    generation = next(r["generation"] for r in rows if r["RowKey"] == "current")
    assert sorted(r["RowKey"] for r in rows) == ["current", f"g{generation}-00000"]  # no stale chunks


def test_snapshots_are_per_list_and_handle_empty_and_other_keys(table_store):
    snapshots = table_store.snapshots
    snapshots.save("list-a", [], "t0")
    snapshots.save("list-b", ["contact:1", "lead:2"], "t1")
    assert snapshots.load("list-a") == (frozenset(), "t0")
    assert snapshots.load("list-b") == (frozenset({"contact:1", "lead:2"}), "t1")
    snapshots.delete("list-b")
    assert snapshots.load("list-b") is None
    assert {r["PartitionKey"] for r in _raw(table_store, "snapshots")} == {"list-a"}


def test_a_losing_concurrent_snapshot_save_leaves_no_rows(table_store, monkeypatch):
    snapshots = table_store.snapshots
    snapshots.save("list-c", _ids(3, seed=7), "t0")
    client = table_store.service.get_table_client(table_store.prefix + "snapshots")
    real_get = common.TableClient.get_entity

    def stale_get(self, pk, rk, **kw):  # another save moves the pointer right after we read it
        pointer = real_get(self, pk, rk, **kw)
        monkeypatch.setattr(common.TableClient, "get_entity", real_get)
        snapshots_other.save("list-c", _ids(2, seed=8), "t-other")
        return pointer

    snapshots_other = ListSnapshots(table_store._tables)
    monkeypatch.setattr(common.TableClient, "get_entity", stale_get)
    with pytest.raises(ResourceModifiedError):
        snapshots.save("list-c", _ids(4, seed=9), "t-loser")
    assert snapshots.load("list-c") == (frozenset(_ids(2, seed=8)), "t-other")
    assert len(list(client.list_entities())) == 2  # pointer + the winner's one chunk


def test_a_corrupt_snapshot_is_reported(table_store):
    snapshots = table_store.snapshots
    snapshots.save("list-d", _ids(10), "t0")
    client = table_store.service.get_table_client(table_store.prefix + "snapshots")
    row = next(e for e in client.list_entities() if e["RowKey"] != "current")
    client.delete_entity(row["PartitionKey"], row["RowKey"])
    with pytest.raises(SnapshotCorrupt):
        snapshots.load("list-d")


@pytest.mark.integration
def test_a_fanned_out_runs_final_report_is_written_once(table_store):
    runs = table_store.runs
    header = {"run_id": "20270101T020000-aaaaaa", "started_at": "2027-01-01T02:00:00Z", "status": "running"}
    runs.save(header)
    final = {**header, "status": "succeeded", "drift_fixed": 3}
    assert runs.save_final(final) is True
    assert runs.save_final({**final, "drift_fixed": 99}) is False  # the other last chunk loses
    assert runs.get(header["run_id"])["drift_fixed"] == 3


def test_a_rotated_ledger_key_keeps_the_older_history_readable(azurite_tables, table_prefix, table_store):

    ann = "ann.rotated@contoso.com"
    table_store.ledger.record([_entry(ann, 1), _entry(ann, 2)])  # under the old key
    rotated = TableStore.from_connection_string(azurite_tables, prefix=table_prefix,
                                                ledger_key=b"the-new-ledger-key-0123456789",
                                                previous_ledger_key=LEDGER_KEY)
    rotated.ledger.record([_entry(ann, 3)])
    assert rotated.ledger.partition_for(ann) != table_store.ledger.partition_for(ann)  # new writes, new partition
    # newest first across both keys; the old key only reads
    assert [e.origin_event_id for e in rotated.ledger.history(ann)] == ["ev-3", "ev-2", "ev-1"]
    assert [e.origin_event_id for e in rotated.ledger.history(ann, limit=2)] == ["ev-3", "ev-2"]
    # without the previous key the older entries cannot be found by address
    alone = TableStore.from_connection_string(azurite_tables, prefix=table_prefix,
                                              ledger_key=b"the-new-ledger-key-0123456789")
    assert [e.origin_event_id for e in alone.ledger.history(ann)] == ["ev-3"]
    rotated.close()
    alone.close()


def test_a_ledger_key_changed_behind_the_operators_back_is_refused(azurite_tables, table_prefix, table_store):
    from shared.adapters.settings import SettingsError

    ann = "ann.keyed@contoso.com"
    table_store.ledger.record([_entry(ann, 1)])  # the first key is recorded

    def store(key: bytes, previous: bytes | None = None) -> TableStore:
        return TableStore.from_connection_string(azurite_tables, prefix=table_prefix, ledger_key=key,
                                                 previous_ledger_key=previous)

    other = store(b"another-machine-generated-key-0123")
    with pytest.raises(SettingsError, match="LEDGER_KEY is not a key this ledger was written with.*LEDGER_KEY_PREVIOUS"):
        other.ledger.record([_entry(ann, 2)])
    assert [e.origin_event_id for e in table_store.ledger.history(ann)] == ["ev-1"]  # nothing was written
    # a deliberate rotation names the key in use so far: accepted, and from then on the new key alone is too
    store(b"the-rotated-ledger-key-0123456789", LEDGER_KEY).ledger.record([_entry(ann, 3)])
    store(b"the-rotated-ledger-key-0123456789").ledger.record([_entry(ann, 4)])
    assert [e.origin_event_id for e in store(b"the-rotated-ledger-key-0123456789", LEDGER_KEY).ledger.history(ann)] == [
        "ev-4", "ev-3", "ev-1"]
    # the old key stays known too (a rollback of the rotation is not refused)
    table_store.ledger.record([_entry(ann, 5)])
    for s in (other,):
        s.close()
