"""Key-range partitions: GUIDs in SQL Server's uniqueidentifier order, and how a table is cut."""
from __future__ import annotations

import bisect
import random
import uuid
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from sandbox.dataverse.odata import guid_order
from shared.domain.partitions import (KeyRange, Reading, ReadingBoard, ScanSource, from_sql_order, plan_ranges,
                                      rows_after, sql_order, uncovered)


def test_the_last_group_weighs_most_then_the_fourth_then_the_third_with_its_bytes_swapped():
    ordered = [
        "ffffffff-ffff-ffff-ffff-000000000000",
        "ffffffff-ffff-0100-ffff-000000000000",  # third group: its second byte weighs more
        "ffffffff-ffff-0001-ffff-000000000000",
        "ffffffff-ffff-ffff-0000-000000000001",
        "00000000-0000-0000-0001-000000000001",
        "00000000-0000-0000-0000-010000000001",
    ]
    keys = [sql_order(g) for g in ordered]
    assert keys[0] > keys[1] < keys[2]  # 0100 < 0001 in SQL order (bytes compared as 00,01 vs 01,00)
    assert keys[2] < keys[3] < keys[4] < keys[5]
    assert sql_order("00000000-0000-0000-0000-000000000001") > sql_order("ffffffff-ffff-ffff-ffff-000000000000")
    assert sql_order("01000000-0000-0000-0000-000000000000") < sql_order("00000001-0000-0000-0000-000000000000")


def test_the_mapping_round_trips_and_agrees_with_the_sandbox():
    rng = random.Random(7)
    guids = [str(uuid.UUID(int=rng.getrandbits(128))) for _ in range(500)]
    assert all(from_sql_order(sql_order(g)) == g for g in guids)
    assert sorted(guids, key=sql_order) == sorted(guids, key=guid_order)  # two implementations, one order


def test_a_table_is_cut_into_contiguous_ranges_the_last_one_open():
    rng = random.Random(3)
    keys = sorted((str(uuid.UUID(int=rng.getrandbits(128))) for _ in range(20_000)), key=sql_order)
    ranges = plan_ranges(keys[0], keys[99], keys[-1], 100, 1000, 64)
    assert ranges[0].after == keys[99] and ranges[-1].upto is None
    assert all(a.upto == b.after for a, b in zip(ranges, ranges[1:]))
    assert 15 <= len(ranges) <= 25  # ~19,900 rows left at 1,000 a range
    ints = [sql_order(k) for k in keys]
    bounds = [(sql_order(r.after), sql_order(r.upto) if r.upto else 1 << 128) for r in ranges]
    sizes = [sum(1 for k in ints if lo < k <= hi) for lo, hi in bounds]
    assert sum(sizes) == 19_900 and max(sizes) < 2 * 1000  # every row once, evenly spread
    assert len(plan_ranges(keys[0], keys[99], keys[-1], 100, 1000, 4)) == 4  # capped
    assert plan_ranges(keys[0], keys[99], keys[99], 100, 1000, 64) == [KeyRange(keys[99], None)]


def test_rows_after_a_first_page_of_random_keys_is_estimated_from_its_density():
    rng = random.Random(5)
    keys = sorted((str(uuid.UUID(int=rng.getrandbits(128))) for _ in range(10_000)), key=sql_order)
    assert 6_000 < rows_after(keys[0], keys[999], 1000) < 14_000


# --- reading ranges: work stealing and resuming mid-range -------------------------------------

CONTACTS = ScanSource("members", "contact")


def banded_keys(rng: random.Random, n: int, bands: int) -> list[str]:
    """Sequential ids as Dataverse's servers mint them: each band a server's hardware address (the
    most significant group), rising by a clock tick per id, the servers unevenly busy."""
    nodes = [(0x000D3A << 24 | rng.getrandbits(24)) for _ in range(bands)]
    ticks = [0x1EEA838B4CC8000] * bands
    weights = [bands - i for i in range(bands)]
    out = []
    for _ in range(n):
        b = rng.choices(range(bands), weights)[0]
        ticks[b] += 1000
        t = ticks[b]
        order = nodes[b] << 80 | 0x8123 << 64 | ((t >> 48) & 0xFFF | 0x1000) << 48 | ((t >> 32) & 0xFFFF) << 32 | t & 0xFFFFFFFF
        out.append(from_sql_order(order))
    return out


def random_keys(rng: random.Random, n: int, bands: int = 0) -> list[str]:
    return [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(n)]


def simulate(keys: list[str], ranges: list[KeyRange], readers: int, page: int, rng: random.Random,
             stop_after: int | None = None) -> tuple[list[str], Counter, list[KeyRange], int]:
    """Readers working ranges off a ReadingBoard as the scan does, their requests answered in a random
    order: (keys each reader kept, pages per reader, the key ranges the pieces covered, pages
    fetched in all). A request answers from the rows in its range when it is answered, as Dataverse's
    paging does; after a cut, a reader asks again up to the cut."""
    ordered = sorted(keys, key=sql_order)
    orders = [sql_order(k) for k in ordered]
    board = ReadingBoard(page)
    board.add(CONTACTS, ranges)
    kept: list[str] = []
    per_reader: Counter = Counter()
    pieces: list[KeyRange] = []
    asked: dict[int, tuple[Reading, str | None, str | None]] = {}  # reader -> (reading, after, upto asked)
    fetched = 0

    def rows(after, upto):
        lo = bisect.bisect_right(orders, -1 if after is None else sql_order(after))
        hi = bisect.bisect_right(orders, (1 << 128) if upto is None else sql_order(upto))
        return ordered[lo:min(hi, lo + page)], hi - lo > page

    def start(i: int) -> None:
        r = board.take()
        if r is None:
            victim = board.victim()
            if victim is not None and victim.bound is None:
                inside = rows(victim.cursor, victim.upto)[0]
                lo = bisect.bisect_right(orders, sql_order(victim.cursor))
                hi = bisect.bisect_right(orders, (1 << 128) if victim.upto is None else sql_order(victim.upto))
                board.bounded(victim, ordered[hi - 1] if hi > lo and inside else None)
            r = board.split(victim) if victim is not None else None
        if r is not None:
            asked[i] = (r, r.cursor, r.upto)

    for i in range(readers):
        start(i)
    while asked:
        i = rng.choice(sorted(asked))
        r, after, upto = asked.pop(i)
        values, more = rows(after, upto)
        fetched += 1
        before = r.cursor
        own, ended = board.advance(r, values)
        ended = ended or not more
        kept += values[:own]
        per_reader[i] += 1
        pieces.append(KeyRange(before, r.upto if ended else r.cursor))
        if stop_after is not None and fetched >= stop_after:
            continue  # out of time: this reader stops after its page
        if ended:
            board.finish(r)
            start(i)
        else:
            asked[i] = (r, r.cursor, r.upto)  # the next link, or a fresh query when the range was cut
        for j in range(readers):
            if j not in asked and (stop_after is None or fetched < stop_after):
                start(j)
    return kept, per_reader, pieces, fetched


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10**6), bands=st.integers(1, 4), readers=st.integers(1, 12),
       style=st.sampled_from(["banded", "random"]))
def test_readers_sharing_ranges_read_every_row_once_whatever_the_keys(seed, bands, readers, style):
    rng = random.Random(seed)
    keys = (banded_keys if style == "banded" else random_keys)(rng, 3000, bands)
    head = sorted(keys, key=sql_order)[99]
    ranges = plan_ranges(sorted(keys, key=sql_order)[0], head, max(keys, key=sql_order), 100, 80, readers)
    kept, per_reader, pieces, _ = simulate(keys, ranges, readers, 100, rng)
    rest = sorted(keys, key=sql_order)[100:]
    assert sorted(kept, key=sql_order) == rest  # none skipped, none twice
    assert uncovered(ranges, pieces) == []  # the pieces tile the ranges


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 10**6), style=st.sampled_from(["banded", "random"]))
def test_the_busiest_reader_reads_less_than_twice_the_mean(seed, style):
    rng = random.Random(seed)
    keys = (banded_keys if style == "banded" else random_keys)(rng, 40_000, 3)  # 25 pages a reader: a page is no longer a tenth of a share
    ordered = sorted(keys, key=sql_order)
    readers = 16
    ranges = plan_ranges(ordered[0], ordered[99], ordered[-1], 100, 80, readers)
    kept, per_reader, _, fetched = simulate(keys, ranges, readers, 100, rng)
    assert len(kept) == len(keys) - 100
    mean = sum(per_reader.values()) / readers
    assert max(per_reader.values()) < 2 * mean
    assert fetched <= 1.3 * (len(keys) / 100)  # splits cost a probe and a partial page, not much more


def test_sequential_bands_are_not_cut_by_arithmetic_but_by_the_readers_as_they_go():
    rng = random.Random(4)
    ordered = sorted(banded_keys(rng, 40_000, 3), key=sql_order)
    # Equal key ranges would put the three bands in three of them and leave the rest empty.
    assert plan_ranges(ordered[0], ordered[99], ordered[-1], 100, 80, 16) == [KeyRange(ordered[99], None)]
    randoms = sorted(random_keys(rng, 40_000), key=sql_order)
    assert len(plan_ranges(randoms[0], randoms[99], randoms[-1], 100, 80, 16)) == 16


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10**6), stop_after=st.integers(1, 60), style=st.sampled_from(["banded", "random"]))
def test_a_scan_stopped_midway_resumes_each_range_where_it_stopped(seed, stop_after, style):
    rng = random.Random(seed)
    keys = (banded_keys if style == "banded" else random_keys)(rng, 3000, 3)
    ordered = sorted(keys, key=sql_order)
    ranges = plan_ranges(ordered[0], ordered[99], ordered[-1], 100, 80, 8)
    first, _, pieces, fetched = simulate(keys, ranges, 8, 100, rng, stop_after=stop_after)
    rest = uncovered(ranges, pieces)
    second, _, more, _ = simulate(keys, rest, 8, 100, rng)
    assert not set(first) & set(second)  # nothing checkpointed is read again
    assert sorted(first + second, key=sql_order) == ordered[100:]
    assert uncovered(ranges, pieces + more) == []


def test_uncovered_is_what_the_pieces_leave_of_each_range():
    k = [from_sql_order(i * 1000) for i in range(10)]
    ranges = [KeyRange(k[0], k[4]), KeyRange(k[4], None)]
    pieces = [KeyRange(k[0], k[1]), KeyRange(k[2], k[3]), KeyRange(k[4], k[6]), KeyRange(k[8], None)]
    assert uncovered(ranges, pieces) == [KeyRange(k[1], k[2]), KeyRange(k[3], k[4]), KeyRange(k[6], k[8])]
    assert uncovered(ranges, []) == ranges
    assert uncovered(ranges, [KeyRange(k[0], None)]) == []


def test_a_split_is_cut_beyond_what_the_busy_reader_may_have_fetched():
    board = ReadingBoard(100)
    k = [from_sql_order(i * 10) for i in range(2000)]
    board.add(CONTACTS, [KeyRange(k[0], None)])
    r = board.take()
    own, ended = board.advance(r, k[1:101])  # a page: density 1 row per 10
    assert (own, ended) == (100, False)
    assert board.victim() is r and r.bound is None  # its end is unknown: probe first
    board.bounded(r, k[1999])
    piece = board.split(r)
    assert piece is not None and r.upto == piece.cursor
    assert sql_order(piece.cursor) > sql_order(k[100 + 150])  # past the page in flight and half another
    own, ended = board.advance(r, k[101:201])
    assert own == 100 and not ended
    board.bounded(piece, None)  # nothing beyond: nothing left to split
    assert board.split(piece) is None
