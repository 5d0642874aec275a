"""Key-range partitions: GUIDs in SQL Server's uniqueidentifier order, and how a table is cut."""
from __future__ import annotations

import random
import uuid

from sandbox.dataverse.odata import guid_order
from shared.domain.partitions import KeyRange, from_sql_order, plan_ranges, rows_after, sql_order


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
