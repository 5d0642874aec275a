"""Pass 1, the scan: streams the tenant once (consent rows, each mapped and opt-out list, every
contact and lead) through the pure DriftScan, which keeps only compact sets and names candidates.

The sources are read in key-range partitions planned at run time, on concurrent readers, and every
page read is checkpointed (``checkpoints``), so an interrupted run reads only what is left.
"""
from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from typing import Callable, Iterable, Sequence

from shared.domain.drift import DriftScan, PartScan
from shared.domain.mappings import Mappings
from shared.domain.partitions import KeyRange, Reading, ReadingBoard, ScanSource, plan_ranges, rows_after, uncovered
from shared.domain.planner import Trigger
from shared.ports import ListSnapshotsPort, TenantSource
from shared.service_layer.reconcile.checkpoints import decode_part, encode_part
from shared.service_layer.reconcile.config import Progress, ReconcileConfig


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


def d4_cause(run_id: str) -> str:
    """The cause the run's departure (D4) triggers carry: it tells their R1 fixes from follow-ons."""
    return f"{run_id}:D4"
