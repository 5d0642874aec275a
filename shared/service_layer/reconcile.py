"""The nightly reconciliation: find and heal every drift between the two worlds.

Pass 1 streams the tenant once (consent rows, each mapped and opt-out list, every contact and
lead) through the pure DriftScan, which keeps only compact sets and names candidates. Pass 2 hands
the candidates, a chunk at a time, to the same engine the event path uses: it reads their rows in
$batch rounds, plans with the one planner and writes the differences in bulk, and every fix goes to
the ledger as event-path fixes do. A dry run plans but writes nothing (no fixes, no ledger, no
snapshots, no stored report). The report is stored in the ``runs`` table and logged as one
structured record (``reconcile.report``).

Big tenants: when the candidates exceed RECONCILE_FANOUT_ABOVE, the timer sends the chunks to the
RECONCILE_QUEUE and ``reconcile_chunk`` heals them on as many instances as the host scales to. A
chunk records its result under the run; a redelivered chunk finds its result and does nothing, so
a run resumes where it stopped; the chunk that completes the set writes the aggregated report.
"""
from __future__ import annotations

import json
import logging
import sys
import threading
import time
import uuid
import zlib
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterable, Sequence

from shared.domain.drift import DRIFT_CLASSES, DRIFT_MEANINGS, DriftScan, PartScan, ReconsentTally
from shared.domain.mappings import Mappings
from shared.domain.partitions import KeyRange, Reading, ReadingBoard, ScanSource, plan_ranges, rows_after, uncovered
from shared.domain.planner import Action, OptOutConsent, RemoveFromList, State, Trigger
from shared.ports import ListSnapshotsPort, RunReportsPort, TenantSource
from shared.service_layer.process_changes import SyncEngine
from shared.telemetry import emit

log = logging.getLogger("shared.reconcile")  # the emitted records keep the logger name they always had

Progress = Callable[[str, int, "int | None"], None]  # (stage, done, total or None)
CaseSink = Callable[[str, Action], None]  # (drift class, planned action): the dry run's review file
MAX_UNHEALED = 100  # failed changes a run report keeps, per record (runs show RUN)
BUCKETS = (*DRIFT_CLASSES, "follow_on")
DRY_RUN_PLANNERS = 4  # chunks a dry run plans at once (each a few $batch reads)


def serialised(cases: CaseSink | None) -> CaseSink | None:
    """The sink for chunks planned side by side: one case at a time, so the review file's rows
    never interleave."""
    if cases is None:
        return None
    lock = threading.Lock()

    def sink(drift_class: str, action: Action) -> None:
        with lock:
            cases(drift_class, action)
    return sink

#: The scan's share of one function invocation (functionTimeout is 10 minutes; the partitions being
#: read when it runs out still finish): the rest goes on in a fresh invocation.
SCAN_SECONDS_PER_INVOCATION = 240.0
#: The rule that fixes a drift class: a planned action's rule names the class it heals.
CLASS_OF_RULE = {rule: cls for cls, (_, rule) in DRIFT_MEANINGS.items()}


@dataclass
class ReconcileConfig:
    chunk: int = 5000  # candidates planned together: bounds the state held, keeps $batch reads full
    fanout_above: int | None = None  # candidates above which chunks go to the queue (None: never)
    readers: int = 16  # concurrent scan reads (Dataverse allows 52 per user; each holds one page)
    partition_rows: int | None = None  # rows a key range aims at (None: 4/5 of a page, so most fit one page)
    max_partitions: int = 64  # per source
    scan_seconds: float | None = None  # after this, the scan hands what is left to a fresh invocation


def drift_class(action: Action, d4_cause: str) -> str:
    rule = action.rule.split("/")[-1]  # "R6/R2" heals what R2 missed
    if rule == "R1" and action.cause != d4_cause:
        return "follow_on"  # R1 for a member the sync itself just removed: part of healing D1/D2/D5
    return CLASS_OF_RULE.get(rule, "follow_on")


# --- pass 1 ------------------------------------------------------------------------------------

@dataclass
class Scan:
    triggers: list[Trigger]
    snapshots: dict[str, set[int]]  # mapped list -> member ids now (as integers)
    suspected: dict[str, int]
    first_snapshot_lists: int
    rows_scanned: int
    candidates: int
    partitions: int = 0  # partitions the scan was made of
    partitions_read: int = 0  # of those, read by this invocation (the rest came from checkpoints)
    rows_read: int = 0  # rows this invocation read (the rest came from checkpoints)
    splits: int = 0  # ranges an idle reader split off a busy one
    rows_beyond: int = 0  # rows fetched past a cut made meanwhile (dropped: the other part reads them)
    busiest_reader_pages: int = 0  # range pages the busiest reader read
    mean_reader_pages: float = 0.0  # range pages a reader read on average


class ScanReader:
    """Reads the scan's sources in key-range partitions on ``readers`` threads, phase by phase.

    A source's first page (in key order) is its partition 0. When more follow, the rest is cut
    into key ranges (``plan_ranges``): sized from the first page's density and the source's
    largest key (asked for at once for contacts and leads, the big tables; for a list or the
    consent rows only when the first page suggests much more than two pages remain). The ranges
    go on a board (``ReadingBoard``) that the phase's readers take them from; a reader with none
    left takes the unread upper half of the range with most rows left (work stealing), so keys
    in a few dense bands (Dataverse's own sequential ids) are shared out as evenly as random ones.
    Every page read is checkpointed as a finished *piece* (its compact result and the key range
    it covers; partition 0 with the plan), so a resumed run merges what is done and reads only the
    rest, from where each range stopped.
    """

    def __init__(self, tenant: TenantSource, scan: DriftScan, columns: Sequence[str], config: "ReconcileConfig",
                 checkpoints: Callable[[str, dict, bytes], None] | None, done: dict[str, tuple[dict, bytes]],
                 note: Progress):
        self.tenant, self.scan, self.columns, self.config = tenant, scan, columns, config
        self.checkpoint, self.done, self.note = checkpoints, done, note
        self.lock = threading.Condition()
        self.finished = 0  # pieces merged: read now, or finished by an earlier attempt
        self.read = 0  # of those, read by this invocation
        self.rows_read = 0
        self.rows_beyond = 0  # rows a page brought from beyond a cut made meanwhile (read by the other part)
        self.deadline = time.monotonic() + config.scan_seconds if config.scan_seconds is not None else None
        self.paused = False
        self.failed = False
        self.board = ReadingBoard(1)
        self.splits = 0
        self.pages_by_reader: Counter[int] = Counter()  # range pages each reader read (the balance figure)
        self.early: dict[ScanSource, tuple[Future, Future | None]] = {}  # read ahead of their phase
        # Every request holds one of ``readers`` slots, whichever pool sends it: reading ahead uses the
        # slots a phase leaves idle and never adds to the concurrency Dataverse sees.
        self.slots = threading.BoundedSemaphore(config.readers)
        self.ahead = config.readers // 4
        self.fetcher = ThreadPoolExecutor(max_workers=max(1, self.ahead), thread_name_prefix="scan-ahead")

    def _out_of_time(self) -> bool:
        """Past the invocation's scan budget (having read something, so every invocation advances)."""
        if self.deadline is None or self.read == 0 or time.monotonic() < self.deadline:
            return False
        self.paused = True
        return True

    def phase(self, sources: list[ScanSource]) -> None:
        hint = getattr(self.tenant, "parallelism_hint", lambda: None)()
        readers = min(self.config.readers, hint) if hint else self.config.readers  # Dataverse's advice caps it
        # Ranges per source: the readers shared out, except contacts and leads (leads are rarely many).
        per_source = readers if sources and sources[0].phase == "members" else -(-readers // max(1, len(sources)))
        self.board = ReadingBoard(self.board.page_rows)
        # Heads and probes wait for nobody; the readers may wait for heads: room for all of them.
        with ThreadPoolExecutor(max_workers=readers + 2 * len(sources), thread_name_prefix="scan") as pool:
            jobs: dict[Future, tuple[str, ScanSource | None]] = {}
            heads: dict[ScanSource, tuple[PartScan, Head]] = {}
            largest: dict[ScanSource, str | None] = {}
            probed: set[ScanSource] = set()
            for source in sources:
                name = f"{source.name}.0"
                if name in self.done:
                    meta, payload = self.done[name]
                    self._merge(source, decode_part(meta, payload))
                    self._resume(source, meta)
                    continue
                self.board.expecting += 1
                early = self.early.pop(source, None)
                jobs[pool.submit(self._head, source, early[0] if early else None)] = ("head", source)
                if source.phase == "members":  # the big tables: ask for the largest key meanwhile
                    probe = early[1] if early and early[1] else pool.submit(self._largest, source)
                    jobs[probe] = ("probe", source)
                    probed.add(source)
            for i in range(readers):
                jobs[pool.submit(self._reader, i)] = ("reader", None)
            try:
                self._run(pool, jobs, heads, largest, probed, per_source)
            except BaseException:
                with self.lock:
                    self.failed = True  # a failed read ends the scan: start nothing more, keep what is checkpointed
                    self.lock.notify_all()
                for f in jobs:
                    f.cancel()
                raise
        if self.paused:
            raise ScanPaused(f"{self.read} partitions read, the rest is left to the next invocation")

    def _run(self, pool: ThreadPoolExecutor, jobs: dict, heads: dict, largest: dict, probed: set,
             per_source: int) -> None:
        while jobs:
            finished, _ = wait(list(jobs), return_when=FIRST_COMPLETED)
            for f in finished:
                what, source = jobs.pop(f)
                result = f.result()  # a failed read fails the scan (the run resumes later)
                if what == "reader":
                    continue
                if what == "probe":
                    largest[source] = result
                elif result is None:
                    self._planned(source, [])  # out of time: not read
                    continue
                else:
                    heads[source] = result
                if source not in heads:
                    continue
                part, head = heads[source]
                if head.more and source not in largest:
                    if source.phase == "members" or head.remaining() > 2 * head.rows:
                        if source not in probed:
                            jobs[pool.submit(self._largest, source)] = ("probe", source)
                            probed.add(source)
                        continue
                    largest[source] = None  # little left: one more range, no probe
                ranges = self._plan(head, largest.get(source), per_source)
                self._finish(source, f"{source.name}.0", part,
                             {"ranges": [r.to_list() for r in ranges], "requests": 1 + (source in probed)})
                del heads[source]
                self._planned(source, ranges, head.rows if head.more else 0, largest.get(source))

    def _planned(self, source: ScanSource, ranges: list[KeyRange], page_rows: int = 0,
                 largest: str | None = None) -> None:
        with self.lock:
            self.board.expecting -= 1
            self.board.page_rows = max(self.board.page_rows, page_rows)  # a full first page: the page size
            self.board.add(source, ranges, largest)
            self.lock.notify_all()

    def _resume(self, source: ScanSource, meta: dict) -> None:
        """A source whose plan is checkpointed: merge its finished pieces, read what they leave."""
        plan = [KeyRange(*r) for r in meta["ranges"]]
        covered = []
        for name, (piece_meta, payload) in self.done.items():
            head, _, tail = name.rpartition(".")
            if head != source.name or tail == "0":
                continue
            # a piece holds its key range; a whole range of an earlier version is named by its place in the plan
            rng = piece_meta.get("range") or (plan[int(tail) - 1].to_list() if tail.isdigit() else None)
            if rng is None:
                continue
            self._merge(source, decode_part(piece_meta, payload))
            covered.append(KeyRange(*rng))
        with self.lock:
            self.board.page_rows = max(self.board.page_rows, int(meta.get("rows", 0)))
            self.board.add(source, uncovered(plan, covered))

    def _reader(self, index: int) -> None:
        """One reader: takes a waiting range, or splits the busiest one, until the phase is read."""
        while True:
            reading = self._next_reading()
            if reading is None:
                return
            self._read(index, reading)

    def _next_reading(self) -> Reading | None:
        while True:
            with self.lock:
                while True:
                    if self.failed or self.paused or self._out_of_time():
                        return None
                    reading = self.board.take()
                    if reading is not None:
                        return reading
                    victim = self.board.victim()
                    if victim is not None:
                        if victim.bound is not None:
                            piece = self.board.split(victim)
                            if piece is not None:
                                self.splits += 1
                                return piece
                            continue
                        victim.probing = True
                        break
                    if self.board.idle():
                        self.lock.notify_all()
                        return None
                    self.lock.wait(timeout=1.0)
            try:  # where its rows really end: a cut in the empty key space after a band would be wasted
                found = self._largest(victim.source, victim.cursor, victim.upto)
            except BaseException:
                with self.lock:
                    victim.probing = False
                raise
            with self.lock:
                self.board.bounded(victim, found)

    def _read(self, index: int, reading: Reading) -> None:
        """Reads a range page by page; each page is a finished piece, checkpointed with the key range it
        covers, so a range stopped by the time budget (or a crash) goes on from its last key."""
        source = reading.source
        asked = reading.upto
        pages = self._pages(source, reading.cursor, asked)
        try:
            while True:
                values, more = next(pages, ([], False))
                with self.lock:
                    after = reading.cursor
                    own, ended = self.board.advance(reading, [v.id for v in values])
                    ended = ended or not more
                    upto = reading.upto if ended else reading.cursor
                    cut, asked = asked != reading.upto, reading.upto
                    self.pages_by_reader[index] += 1
                    self.rows_read += own
                    self.rows_beyond += len(values) - own
                    self.lock.notify_all()
                self._finish(source, f"{source.name}.{after}", self._part(source, values[:own]),
                             {"range": [after, upto], "requests": 1})
                if ended or self._out_of_time():
                    return
                if cut:  # the rest was taken: ask again up to the cut (the next link would run past it)
                    pages.close()
                    pages = self._pages(source, reading.cursor, asked)
        finally:
            pages.close()
            with self.lock:
                self.board.finish(reading)
                self.lock.notify_all()

    def _plan(self, head: "Head", largest: str | None, per_source: int) -> list[KeyRange]:
        if not head.more:
            return []
        if largest is None:
            return [KeyRange(head.last, None)]
        cap = min(self.config.max_partitions, per_source)
        size = self.config.partition_rows or head.rows * 4 // 5  # a full first page is one page of the client's size
        return plan_ranges(head.first, head.last, largest, head.rows, size, cap)

    def _part(self, source: ScanSource, values: Iterable) -> PartScan:
        if source.phase == "consent":
            return self.scan.consent_part(values)
        if source.phase == "list_members":
            return self.scan.list_part(str(source.list_id), values)
        return self.scan.member_part(values)

    def prefetch(self, sources: list[ScanSource]) -> None:
        """Reads the first page of the next phase's sources (and the big tables' largest key) while
        the current phase runs: it needs nothing the current phase settles until it is processed,
        and a round trip fewer per phase is what the scan's wall time is made of."""
        for source in sources if self.ahead else ():
            if f"{source.name}.0" not in self.done:
                probe = self.fetcher.submit(self._largest, source) if source.phase == "members" else None
                self.early[source] = (self.fetcher.submit(self._first_page, source), probe)

    def _pages(self, source: ScanSource, after: str | None = None, upto: str | None = None):
        """The source's pages in a key range, each request holding a slot."""
        pages = self.tenant.scan_pages(source, self.columns, after, upto)
        try:
            while True:
                with self.slots:
                    page = next(pages, None)
                if page is None:
                    return
                yield page
        finally:
            pages.close()

    def _largest(self, source: ScanSource, after: str | None = None, upto: str | None = None) -> str | None:
        with self.slots:
            return self.tenant.largest_key(source, self.columns, after, upto)

    def _first_page(self, source: ScanSource) -> tuple[list, bool]:
        pages = self._pages(source)
        values, more = next(pages, ([], False))
        pages.close()
        return values, more

    def close(self) -> None:
        for first, probe in self.early.values():
            first.cancel()
            if probe is not None:
                probe.cancel()
        self.fetcher.shutdown(wait=True)

    def _head(self, source: ScanSource, early: Future | None = None) -> tuple[PartScan, "Head"] | None:
        if early is None and self._out_of_time():
            return None
        values, more = early.result() if early is not None else self._first_page(source)
        more = more and bool(values)
        head = Head(values[0].id if values else "", values[-1].id if values else "", len(values), more)
        with self.lock:
            self.rows_read += len(values)
        return self._part(source, values), head

    def _finish(self, source: ScanSource, name: str, part: PartScan, meta: dict) -> None:
        if self.checkpoint is not None:
            meta_, payload = encode_part(part)
            self.checkpoint(name, {**meta, **meta_}, payload)
        self._merge(source, part, read=True)

    def _merge(self, source: ScanSource, part: PartScan, read: bool = False) -> None:
        with self.lock:
            self.scan.add(source.phase, part, source.list_id)
            self.finished += 1
            self.read += read
            self.note("partitions", self.finished, None)

    def balance(self) -> tuple[int, float]:
        """(pages the busiest reader read, pages a reader read on average) over the range pages."""
        counts = [n for n in self.pages_by_reader.values() if n]
        return (max(counts), sum(counts) / len(counts)) if counts else (0, 0.0)


class ScanPaused(Exception):
    """The scan used its invocation's time; what it finished is checkpointed."""


@dataclass
class Head:
    """A source's first page: its first and last key, rows, and whether more follow."""

    first: str
    last: str
    rows: int
    more: bool

    def remaining(self) -> float:
        """Rows after the first page if keys are spread evenly (random GUIDs); sequential ones
        look like far more, which only costs asking for the largest key."""
        return rows_after(self.first, self.last, self.rows)


def scan_tenant(tenant: TenantSource, mappings: Mappings, snapshots: ListSnapshotsPort, run_id: str,
                note: Progress, config: "ReconcileConfig | None" = None,
                checkpoints: Callable[[str, dict, bytes], None] | None = None,
                done: dict[str, tuple[dict, bytes]] | None = None) -> Scan:
    """Pass 1. ``checkpoints(name, meta, payload)`` records each finished partition; ``done`` holds
    those of an interrupted attempt of the same run (merged, not read again)."""
    config = config or ReconcileConfig()
    scan = DriftScan(mappings)
    reader = ScanReader(tenant, scan, mappings.email_columns, config, checkpoints, done or {}, note)
    try:
        return _scan_phases(reader, scan, mappings, snapshots, run_id, note)
    finally:
        reader.close()


def _scan_phases(reader: ScanReader, scan: DriftScan, mappings: Mappings, snapshots: ListSnapshotsPort,
                 run_id: str, note: Progress) -> Scan:
    relevant = sorted(mappings.relevant_lists)
    lists = [ScanSource("list_members", mappings.member_table_of_list[l], l) for l in relevant]
    members = [ScanSource("members", "contact"), ScanSource("members", "lead")]
    reader.prefetch(lists)
    reader.phase([ScanSource("consent")])
    scan.settle()
    reader.prefetch(members)
    reader.phase(lists)
    now: dict[str, set[int]] = {}
    for i, list_id in enumerate(relevant, 1):
        previous = snapshots.load(list_id)
        ids = scan.finish_list(list_id, previous[0] if previous else None)
        if list_id in mappings.topics_of_list:
            now[list_id] = set(ids)
        note("lists", i, len(relevant))
    scan.lists_done()
    reader.phase(members)
    found = scan.finish()
    d4 = d4_cause(run_id)
    triggers = [t if t.kind != "left_list" else replace(t, cause=d4) for t in found.triggers(run_id)]
    return Scan(triggers, now, found.suspected(), len(found.first_snapshot), sum(scan.rows_seen.values()),
                len(found.members) + len(found.departures), reader.finished, reader.read, reader.rows_read,
                reader.splits, reader.rows_beyond, *reader.balance())


def encode_part(part: PartScan) -> tuple[dict, bytes]:
    """A partition's result as (meta, payload): member ids packed 16 bytes each, then the consent
    digests and candidates as compressed JSON."""
    purposes = sorted({p for _, p, _ in part.consent})
    topics = sorted({t for _, _, t in part.consent if t})
    pi, ti = {p: i for i, p in enumerate(purposes)}, {t: i for i, t in enumerate(topics)}
    rest = {"p": purposes, "t": topics,
            "c": [[ek, pi[p], ti[t] if t else -1, stamp, out] for (ek, p, t), (stamp, out) in part.consent.items()],
            "f": part.found}
    ids = b"".join(i.to_bytes(16, "big") for i in part.ids)
    return {"rows": part.rows, "ids": len(part.ids)}, ids + zlib.compress(json.dumps(rest, separators=(",", ":")).encode())


def decode_part(meta: dict, payload: bytes) -> PartScan:
    n = int(meta["ids"]) * 16
    rest = json.loads(zlib.decompress(payload[n:]))
    purposes, topics = rest["p"], rest["t"]
    consent = {(ek, sys.intern(purposes[p]), sys.intern(topics[t]) if t >= 0 else None): (stamp, out)
               for ek, p, t, stamp, out in rest["c"]}
    ids = [int.from_bytes(payload[i:i + 16], "big") for i in range(0, n, 16)]
    return PartScan(int(meta["rows"]), consent, ids, [tuple(f) for f in rest["f"]])


def d4_cause(run_id: str) -> str:
    return f"{run_id}:D4"


# --- pass 2 ------------------------------------------------------------------------------------

@dataclass
class ChunkResult:
    found: dict[str, int] = field(default_factory=lambda: {c: 0 for c in BUCKETS})
    fixed: dict[str, int] = field(default_factory=lambda: {c: 0 for c in BUCKETS})
    failures: int = 0
    incomplete: int = 0
    oldest_unhealed_hours: float | None = None
    removed: list[tuple[str, str]] = field(default_factory=list)  # (list id, member id) the run removed
    unhealed: list[dict[str, Any]] = field(default_factory=list)  # failed changes (shared.service_layer.review), no addresses
    reconsent: ReconsentTally = field(default_factory=ReconsentTally)

    def add(self, other: "ChunkResult") -> None:
        for c in BUCKETS:
            self.found[c] += other.found[c]
            self.fixed[c] += other.fixed[c]
        self.failures += other.failures
        self.incomplete += other.incomplete
        if other.oldest_unhealed_hours is not None:
            self.oldest_unhealed_hours = max(self.oldest_unhealed_hours or 0.0, other.oldest_unhealed_hours)
        self.removed += other.removed
        self.unhealed += other.unhealed[:MAX_UNHEALED - len(self.unhealed)]
        self.reconsent.add(other.reconsent)

    def to_dict(self) -> dict[str, Any]:
        removed: dict[str, list[str]] = {}
        for list_id, member_id in self.removed:
            removed.setdefault(list_id, []).append(member_id)
        return {"found": self.found, "fixed": self.fixed, "failures": self.failures, "incomplete": self.incomplete,
                "oldest_unhealed_hours": self.oldest_unhealed_hours, "removed": removed, "unhealed": self.unhealed,
                **self.reconsent.to_dict()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ChunkResult":
        removed = [(list_id, m) for list_id, ms in (d.get("removed") or {}).items() for m in ms]
        return cls(dict(d["found"]), dict(d["fixed"]), d["failures"], d["incomplete"], d["oldest_unhealed_hours"],
                   removed, unhealed=list(d.get("unhealed") or ()), reconsent=ReconsentTally.from_dict(d))


def heal_chunk(engine: SyncEngine, mappings: Mappings, triggers: list[Trigger], run_id: str, started_iso: str,
               dry_run: bool, clock: Callable[[], float] = time.time, cases: CaseSink | None = None) -> ChunkResult:
    from shared.service_layer.review import describe_case, names_of

    applied = engine.apply_rules(triggers, mappings, dry_run=dry_run)
    result = ChunkResult(incomplete=int(applied.incomplete))
    names = names_of(mappings) if applied.plan.actions else {}
    result.reconsent.count(applied.plan.reconsents)
    for i, action in enumerate(applied.plan.actions):
        cls = drift_class(action, d4_cause(run_id))
        result.found[cls] += 1
        if cases is not None:
            cases(cls, action)
        if not dry_run and applied.results[i].ok:
            result.fixed[cls] += 1
            if isinstance(action, RemoveFromList):
                result.removed.append((action.list_id, action.member[1]))
            continue
        result.failures += not dry_run
        if not dry_run and len(result.unhealed) < MAX_UNHEALED:
            result.unhealed.append(describe_case(cls, action, names, result=applied.results[i]))
        age = _opt_out_age_hours(action, applied.state, clock())
        if age is not None:
            result.oldest_unhealed_hours = max(result.oldest_unhealed_hours or 0.0, age)
    if not dry_run and (applied.results or applied.plan.reconsents):
        engine.file(applied, lambda cause: ("reconcile", started_iso))
    return result


# --- the run -----------------------------------------------------------------------------------

def nightly(container, clock: Callable[[], float] = time.time) -> dict:
    """The timer's job: purge idempotency keys past their retention, then reconcile (fanning out
    to reconcile_chunk when the tenant is big). A run interrupted while scanning or healing inline
    (worker recycled, timeout, crash) within the last day is resumed rather than started afresh."""
    settings = container.settings
    cutoff = datetime.fromtimestamp(clock(), tz=timezone.utc) - timedelta(days=settings.processed_retention_days)
    purged = container.tables().processed.purge(cutoff)
    config = nightly_config(settings)
    unfinished = unfinished_run(container.tables().runs, clock)
    report = run_reconciliation(container, config=config, run_id=unfinished, fanout=lambda bodies: (
        container.event_queue().send_raw(settings.reconcile_queue, bodies)))
    report["processed_purged"] = purged
    return report


def unfinished_run(runs, clock: Callable[[], float] = time.time, within_hours: float = 23) -> str | None:
    """The newest run still "scanning" (it stopped before its report), if it started recently."""
    for r in runs.latest(limit=5):
        started = datetime.fromisoformat(str(r["started_at"]).replace("Z", "+00:00")).timestamp()
        if r.get("status") == "scanning" and clock() - started < within_hours * 3600:
            return str(r["run_id"])
    return None


def run_reconciliation(container, *, dry_run: bool = False, progress: Progress | None = None,
                       config: ReconcileConfig | None = None, fanout=None, cases: CaseSink | None = None,
                       run_id: str | None = None) -> dict:
    """The reconciliation with the app's own adapters (the timer function and the CLI call this).
    ``cases`` sees every planned change (the dry run's review file)."""
    engine = container.sync_engine()
    tables = container.tables()
    config = config or ReconcileConfig(readers=container.settings.reconcile_readers)
    return reconcile(engine, engine.gateway, container.mappings(), tables.snapshots, tables.runs,
                     dry_run=dry_run, progress=progress, config=config, fanout=fanout, cases=cases, run_id=run_id,
                     on_report=None if dry_run else _deadlines(container))


def _deadlines(container) -> Callable[[dict], dict]:
    """The run report's opt-out deadline figures (shared.service_layer.compliance)."""
    from shared.service_layer.compliance import after_run

    return after_run(container.tables().compliance, container.settings.opt_out_deadline_hours)


def reconcile(engine: SyncEngine, tenant: TenantSource, mappings: Mappings | None,
              snapshots: ListSnapshotsPort, runs: RunReportsPort | None, *, dry_run: bool = False,
              progress: Progress | None = None, run_id: str | None = None,
              config: ReconcileConfig | None = None, fanout: Callable[[list[tuple[str, bytes]]], None] | None = None,
              clock: Callable[[], float] = time.time, cases: CaseSink | None = None,
              on_report: Callable[[dict], dict] | None = None) -> dict:
    """Scans and heals (inline, or by fanning the chunks out); returns the report. ``cases`` sees every
    planned change (the dry run's review file); ``on_report`` adds fields to a finished healing
    run's report before it is stored (the opt-out deadline figures).

    A real run records its progress under its id (status "scanning", each finished scan
    partition, each healed chunk); called again with the id of a run that stopped early, it
    merges what is recorded, reads and heals only the rest, and writes the report once. A dry
    run writes nothing, so it is not resumable.
    """
    config = config or ReconcileConfig()
    keep = runs if not dry_run else None  # where progress is recorded
    previous = keep.get(run_id) if keep is not None and run_id else None
    if previous is not None and previous.get("status") != "scanning":
        previous = None  # finished, or fanned out (its chunks resume themselves): start afresh
        run_id = None
    run_id = run_id or f"{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
    started = clock()
    header: dict[str, Any] = {"run_id": run_id, "started_at": _iso(started), "dry_run": dry_run}
    if previous is not None:
        header["started_at"] = previous["started_at"]
        started = datetime.fromisoformat(header["started_at"].replace("Z", "+00:00")).timestamp()
    requests_before = tenant.request_count()
    if mappings is None:
        report = {**header, "status": "no_mappings", "finished_at": _iso(clock()), "duration_ms": 0}
        emit(log, "reconcile.report", logging.ERROR, **report)
        return report
    note = progress or (lambda stage, done, total: None)
    done: dict[str, tuple[dict, bytes]] = {}
    if keep is not None:
        if previous is None:
            keep.save({**header, "status": "scanning"})
        else:
            done = keep.partitions(run_id)
            emit(log, "reconcile.resumed", run_id=run_id, partitions_done=len(done))
    save_part = (lambda name, meta, payload: keep.save_partition(run_id, name, meta, payload)) if keep else None
    if keep is None or fanout is None:
        config = replace(config, scan_seconds=None)  # only a run that can hand over may stop early
    try:
        scanned = scan_tenant(tenant, mappings, snapshots, run_id, note, config, save_part, done)
    except ScanPaused as paused:
        # One invocation's worth of scan is done: a message carries the run to a fresh invocation.
        assert fanout is not None
        fanout([(f"{run_id}.scan.{int(clock())}", scan_message(run_id))])
        emit(log, "reconcile.scan_continued", run_id=run_id, detail=str(paused))
        return {**header, "status": "scanning"}
    earlier = sum(int(meta.get("requests", 0)) for meta, _ in done.values())  # an interrupted attempt's reads
    header.update(candidates=scanned.candidates, rows_scanned=scanned.rows_scanned,
                  first_snapshot_lists=scanned.first_snapshot_lists, scan_partitions=scanned.partitions,
                  scan_rows_read=scanned.rows_read, scan_splits=scanned.splits,
                  scan_rows_beyond_cut=scanned.rows_beyond,
                  scan_busiest_reader_pages=scanned.busiest_reader_pages,
                  scan_mean_reader_pages=round(scanned.mean_reader_pages, 1),
                  **{f"suspected_{k}": v for k, v in scanned.suspected.items()})
    if previous is not None:
        header["resumed_partitions"] = scanned.partitions - scanned.partitions_read
    chunks = [scanned.triggers[i:i + config.chunk] for i in range(0, len(scanned.triggers), config.chunk)]

    if (fanout is not None and not dry_run and config.fanout_above is not None
            and scanned.candidates > config.fanout_above):
        _save_snapshots(snapshots, scanned.snapshots, [], clock)
        header.update(status="running", scan_requests=tenant.request_count() - requests_before + earlier)
        parts = [p for c in chunks for p in fit_in_messages(c)]
        header["chunks"] = len(parts)
        if runs is not None:
            runs.save(header)
        fanout([(f"{run_id}.{i}", chunk_message(run_id, header["started_at"], i, len(parts), p))
                for i, p in enumerate(parts)])
        emit(log, "reconcile.fanned_out", run_id=run_id, chunks=len(parts), candidates=scanned.candidates)
        if runs is not None:
            runs.clear_partitions(run_id)
        return header

    total = ChunkResult()
    if dry_run:  # planning only reads, so chunks may be planned side by side (healing chunks write)
        sink = serialised(cases)
        with ThreadPoolExecutor(max_workers=min(DRY_RUN_PLANNERS, config.readers)) as pool:
            for i, result in enumerate(pool.map(lambda c: heal_chunk(engine, mappings, c, run_id, header["started_at"],
                                                                     True, clock, sink), chunks)):
                total.add(result)
                note("healing", i + 1, len(chunks))
        chunks = []
    for i, chunk in enumerate(chunks):
        # A chunk healed before an interruption is not healed again: its recorded result counts.
        recorded = keep.get_chunk(run_id, i) if previous is not None and keep is not None else None
        if recorded is not None:
            result = ChunkResult.from_dict(recorded)
            earlier += int(recorded.get("requests") or 0)
        else:
            before = tenant.request_count()
            result = heal_chunk(engine, mappings, chunk, run_id, header["started_at"], dry_run, clock, cases)
            if keep is not None:
                keep.save_chunk(run_id, i, {**result.to_dict(), "requests": tenant.request_count() - before})
        total.add(result)
        note("healing", i + 1, len(chunks))
    if not dry_run:
        _save_snapshots(snapshots, scanned.snapshots, total.removed, clock)
    report = finish(header, total, tenant.request_count() - requests_before + earlier, started, clock)
    if on_report is not None and not dry_run:
        report.update(on_report(report))
    if keep is not None:
        if not keep.save_final(report):
            return report  # another attempt of this run wrote it first
        keep.clear_partitions(run_id)
    emit(log, "reconcile.report", **report)
    return report


def finish(header: dict, total: ChunkResult, requests: int, started: float, clock: Callable[[], float]) -> dict:
    finished = clock()
    report = {
        **header,
        "status": "succeeded" if total.failures == 0 else "failed_writes",
        "finished_at": _iso(finished),
        "duration_ms": int((finished - started) * 1000),
        **{f"found_{c}": n for c, n in total.found.items()},
        **{f"fixed_{c}": n for c, n in total.fixed.items()},
        "drift_found": sum(total.found.values()),
        "drift_fixed": sum(total.fixed.values()),
        "failures": total.failures,
        "incomplete_chunks": total.incomplete,
        "dataverse_requests": requests,
        "oldest_unhealed_opt_out_hours": (round(total.oldest_unhealed_hours, 1)
                                          if total.oldest_unhealed_hours is not None else None),
        "unhealed": total.unhealed,  # the first MAX_UNHEALED failed changes, per record, no addresses
        **total.reconsent.report(),
    }
    if header.get("first_snapshot_lists"):
        report["note"] = (f"first run for {header['first_snapshot_lists']} list(s): membership snapshot taken, "
                          "departures (D4) are found from the next run on")
    return report


# --- fanned-out chunks -------------------------------------------------------------------------

MAX_MESSAGE_BYTES = 192 * 1024  # under Service Bus Standard's 256 KB per message, with room for headers


def fit_in_messages(triggers: list[Trigger]) -> list[list[Trigger]]:
    """Splits a chunk until each part's message fits a Standard-tier Service Bus message."""
    if len(triggers) <= 1 or len(chunk_message("x" * 40, "x" * 20, 0, 1, triggers)) <= MAX_MESSAGE_BYTES:
        return [triggers]
    half = len(triggers) // 2
    return fit_in_messages(triggers[:half]) + fit_in_messages(triggers[half:])


def chunk_message(run_id: str, started_at: str, index: int, total: int, triggers: list[Trigger]) -> bytes:
    return json.dumps({"v": 1, "run_id": run_id, "started_at": started_at, "index": index, "total": total,
                       "triggers": [[t.kind, t.cause, list(t.member) if t.member else None, t.email, t.list_id]
                                    for t in triggers]}, separators=(",", ":")).encode()


def scan_message(run_id: str) -> bytes:
    """Carries a run whose scan used its invocation's time to a fresh ``reconcile_chunk``."""
    return json.dumps({"v": 1, "kind": "scan", "run_id": run_id}, separators=(",", ":")).encode()


def nightly_config(settings) -> ReconcileConfig:
    return ReconcileConfig(settings.reconcile_chunk_size, settings.reconcile_fanout_above,
                           readers=settings.reconcile_readers, scan_seconds=SCAN_SECONDS_PER_INVOCATION)


def run_chunk(container, body: bytes, clock: Callable[[], float] = time.time) -> dict | None:
    """``reconcile_chunk``: heals one chunk, records it, and finishes the run when it is the last;
    or, for a "scan" message, goes on with a run's scan where the previous invocation stopped.

    Returns the final report when this chunk completed the run.
    """
    msg = json.loads(body)
    if msg.get("kind") == "scan":
        current = container.tables().runs.get(str(msg["run_id"]))
        if current is None or current.get("status") != "scanning":
            return None  # a redelivery after the run went on: nothing to do
        settings = container.settings
        report = run_reconciliation(container, config=nightly_config(settings), run_id=str(msg["run_id"]),
                                    fanout=lambda bodies: container.event_queue().send_raw(
                                        settings.reconcile_queue, bodies))
        return report if report.get("status") not in ("scanning", "running") else None
    run_id, index, total = msg["run_id"], int(msg["index"]), int(msg["total"])
    chunks = container.tables().runs
    if chunks.get_chunk(run_id, index) is not None:
        return None  # a redelivery: this chunk is done (resumable runs)
    triggers = [Trigger(kind, cause, tuple(member) if member else None, email, list_id)
                for kind, cause, member, email, list_id in msg["triggers"]]
    engine = container.sync_engine()
    mappings = container.mappings()
    before = engine.gateway.request_count()
    result = heal_chunk(engine, mappings, triggers, run_id, msg["started_at"], dry_run=False, clock=clock)
    chunks.save_chunk(run_id, index, {**result.to_dict(), "requests": engine.gateway.request_count() - before})
    done = chunks.chunk_results(run_id)
    if len(done) < total:
        return None
    header = chunks.get(run_id) or {"run_id": run_id, "started_at": msg["started_at"], "dry_run": False}
    if header.get("status") not in (None, "running"):
        return None  # another instance finished it
    aggregate = ChunkResult()
    requests = int(header.get("scan_requests") or 0)
    for r in done:
        aggregate.add(ChunkResult.from_dict(r))
        requests += int(r.get("requests") or 0)
    started = datetime.fromisoformat(header["started_at"].replace("Z", "+00:00")).timestamp()
    report = finish({k: v for k, v in header.items() if k not in ("status", "scan_requests")}, aggregate,
                    requests, started, clock)
    report.update(_deadlines(container)(report))
    if not chunks.save_final(report):
        return None  # another instance's last chunk finished the run at the same moment
    emit(log, "reconcile.report", **report)
    return report


# --- helpers -----------------------------------------------------------------------------------

def _save_snapshots(snapshots: ListSnapshotsPort, now: dict[str, set[int]], removed: list[tuple[str, str]],
                    clock: Callable[[], float]) -> None:
    # A member the run itself removed did not "leave" the list: keep it out of the next diff.
    for list_id, member_id in removed:
        if list_id in now:
            now[list_id].discard(uuid.UUID(member_id).int)
    taken = _iso(clock())
    for list_id, ids in now.items():
        snapshots.save(list_id, (str(uuid.UUID(int=i)) for i in ids), taken)


def _opt_out_age_hours(action: Action, state: State, now: float) -> float | None:
    """How long the opt-out behind an unhealed action has been waiting, from its consent rows."""
    emails = (action.email,) if isinstance(action, OptOutConsent) else action.emails
    stamps = [r.modified_on for e in emails for r in state.consent.get(e, ()) if r.opted_out and r.modified_on]
    if not stamps:
        return None
    try:
        oldest = min(datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp() for s in stamps)
    except ValueError:
        return None
    return max(0.0, (now - oldest) / 3600)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
