"""The nightly scan in key-range partitions, interrupted and resumed: a run that dies mid-scan or
mid-healing, started again with its run id, reads no finished partition again, heals no chunk
again, and writes the same report as a run that was never interrupted."""
from __future__ import annotations

import threading
import uuid

import pytest

from bench.tenant import build
from sandbox.stack import Stack
from shared.domain.partitions import sql_order
from shared.service_layer.reconcile import ReconcileConfig, reconcile, unfinished_run

pytestmark = pytest.mark.integration

# (how many pieces the scan was made of depends on which reader split which range when)
SAME = ("candidates", "rows_scanned", "drift_found", "drift_fixed", "failures", "status")


class Killed(RuntimeError):
    """The worker went away (recycled, timed out, crashed)."""


class Recording:
    """The tenant as the scan sees it, recording the key of every row it reads; with
    ``die_after`` pages (or writes) read, every later call fails, as a dead process's would."""

    def __init__(self, gateway, die_after_pages: int | None = None, die_after_writes: int | None = None):
        self.gateway = gateway
        self.pages = 0
        self.writes = 0
        self.die_after_pages, self.die_after_writes = die_after_pages, die_after_writes
        self.rows: list[tuple[str, str]] = []  # (source, key) of every row read
        self.lock = threading.Lock()

    def _page(self) -> None:
        with self.lock:
            self.pages += 1
            if self.die_after_pages is not None and self.pages > self.die_after_pages:
                raise Killed("worker recycled")

    def scan_pages(self, source, columns, after=None, upto=None):
        pages = self.gateway.scan_pages(source, columns, after, upto)
        for values, more in pages:
            self._page()
            with self.lock:
                self.rows += [(source.name, v.id) for v in values]
            yield values, more

    def largest_key(self, source, columns, after=None, upto=None):
        self._page()
        return self.gateway.largest_key(source, columns, after, upto)

    def __getattr__(self, name):
        return getattr(self.gateway, name)

    def write(self, actions, marker):
        with self.lock:
            self.writes += 1
            if self.die_after_writes is not None and self.writes > self.die_after_writes:
                raise Killed("worker recycled")
        return self.gateway.write(actions, marker)


def _covered(checkpointed: dict, source: str, key: str) -> bool:
    """Whether a checkpointed piece of ``source`` holds ``key`` (partition 0: up to where its plan starts)."""
    order = sql_order(key)
    for name, (meta, _) in checkpointed.items():
        if name.rpartition(".")[0] != source:
            continue
        after, upto = meta.get("range") or [None, meta["ranges"][0][0] if meta["ranges"] else None]
        if (after is None or sql_order(after) < order) and (upto is None or order <= sql_order(upto)):
            return True
    return False


def _tenant():
    return build(contacts=1500, lists=6, opted_out=0.05, drift=0.05, seed=11)


@pytest.fixture
def stacks(azurite_tables):
    made = []

    def make() -> Stack:
        seed, mappings, _ = _tenant()
        # small pages, so every table takes several and is cut into ranges
        s = Stack(azurite_tables, "resume" + uuid.uuid4().hex[:8], seed, mappings, register_webhooks=False,
                  settings={"DATAVERSE_PAGE_SIZE": "100", "RECONCILE_READERS": "2"})
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


def _run(stack: Stack, tenant, run_id: str, config: ReconcileConfig) -> dict:
    engine = stack.container.sync_engine()
    engine.gateway = tenant  # the planner's reads and writes go through it too
    tables = stack.container.tables()
    return reconcile(engine, tenant, stack.container.mappings(), tables.snapshots, tables.runs, run_id=run_id,
                     config=config)


@pytest.mark.parametrize("where", ["scan", "healing"])
def test_a_run_killed_midway_resumes_without_reading_or_healing_anything_twice(stacks, where):
    config = ReconcileConfig(chunk=40, readers=4)
    whole = stacks()
    reference = _run(whole, Recording(whole.container.sync_engine().gateway), "whole-run", config)
    chunks = -(-reference["candidates"] // config.chunk)
    assert reference["scan_partitions"] > 12 and chunks >= 2  # tables were cut into ranges; several chunks

    s = stacks()
    gateway = s.container.sync_engine().gateway
    first = Recording(gateway, die_after_pages=35) if where == "scan" else Recording(gateway, die_after_writes=1)
    with pytest.raises(Killed):
        _run(s, first, "killed-run", config)
    runs = s.container.tables().runs
    assert runs.get("killed-run")["status"] == "scanning"
    assert unfinished_run(runs) == "killed-run"  # what the next timer run picks up
    checkpointed = runs.partitions("killed-run")
    # How many pieces a scan checkpoints depends on when its readers split ranges, so the killed run's
    # count is not compared with the reference's: what the resumed run still reads tells where it died.
    assert checkpointed

    second = Recording(gateway)
    report = _run(s, second, "killed-run", config)
    assert {k: report[k] for k in SAME} == {k: reference[k] for k in SAME}
    assert {k: v for k, v in report.items() if k.startswith(("found_", "fixed_", "suspected_"))} == \
        {k: v for k, v in reference.items() if k.startswith(("found_", "fixed_", "suspected_"))}
    assert report["resumed_partitions"] == len(checkpointed)
    # no row of a checkpointed piece read again, and none read twice by the resumed run
    assert not [row for row in second.rows if _covered(checkpointed, *row)]
    assert len(set(second.rows)) == len(second.rows)
    assert report["scan_rows_read"] + report["scan_rows_beyond_cut"] == len(second.rows), report
    if where == "scan":
        assert second.pages > 0  # killed mid-scan: the rest of the scan is read on resume
    else:
        assert second.pages == 0  # the whole scan came from checkpoints
        assert second.writes <= chunks - 1  # the chunk healed before the kill is not healed again
    stored = runs.get("killed-run")
    assert stored["status"] == "succeeded" and stored["drift_fixed"] == reference["drift_fixed"]
    assert runs.partitions("killed-run") == {}  # checkpoints go once the report is written
    assert unfinished_run(runs) is None


def test_a_scan_out_of_time_goes_on_in_fresh_invocations_through_the_reconcile_queue(stacks, monkeypatch):
    """The timer's scan stops starting partitions once its share of the invocation is used, and a
    "scan" message on the reconcile queue carries the run on (reconcile_chunk), as many hops as it
    takes; the last hop writes the one report, the same as an uninterrupted run's."""
    from azure.functions.servicebus import ServiceBusMessage

    import function_app
    import shared.service_layer.reconcile.config as reconcile_config
    from shared.service_layer.reconcile import run_reconciliation
    from shared.service_layer.reconcile.messages import scan_message

    config = ReconcileConfig(readers=2)
    whole = stacks()
    reference = _run(whole, Recording(whole.container.sync_engine().gateway), "whole-run", config)

    s = stacks()
    s.activate()
    monkeypatch.setattr(reconcile_config, "SCAN_SECONDS_PER_INVOCATION", 0.0)  # every hop: as little as it can
    first = run_reconciliation(
        s.container, config=ReconcileConfig(readers=2, scan_seconds=0.0),
        fanout=lambda bodies: s.queue.send_raw("straddle-reconcile", bodies))
    assert first["status"] == "scanning"
    hops = 0
    while s.queue.other.get("straddle-reconcile"):
        (mid, body), *rest = s.queue.other["straddle-reconcile"]
        s.queue.other["straddle-reconcile"] = rest
        assert mid.startswith(f"{first['run_id']}.scan.")
        function_app.reconcile_chunk(ServiceBusMessage(body=body, message_id=mid, application_properties={},
                                                       user_properties={}))
        hops += 1
        assert hops < 200
    report = s.container.tables().runs.get(first["run_id"])
    assert hops >= 2 and report["status"] == "succeeded"
    assert {k: report[k] for k in SAME} == {k: reference[k] for k in SAME}
    # the message of a run that has finished does nothing
    function_app.reconcile_chunk(ServiceBusMessage(body=scan_message(first["run_id"]),
                                                   message_id="again", application_properties={}, user_properties={}))
    assert [r["run_id"] for r in s.container.tables().runs.latest()] == [first["run_id"]]
