"""The sandbox mints primary keys as Dataverse does: sequential GUIDs in a few server bands, rising
in SQL Server's uniqueidentifier order; or random ones when asked."""
from __future__ import annotations

import pytest

from sandbox.dataverse.keys import KeyMinter, SERVERS
from sandbox.dataverse.odata import guid_order
from sandbox.dataverse.store import Store
from shared.domain.partitions import sql_order

PREFIXES = {f"{prefix:06x}" for prefix, _ in SERVERS}


def test_sequential_keys_sit_in_a_few_server_bands_and_rise_within_each():
    minter = KeyMinter("sequential", seed=3)
    keys = [minter.mint() for _ in range(3000)]
    bands: dict[str, list[str]] = {}
    for k in keys:
        bands.setdefault(k[-12:], []).append(k)
    assert {node[:6] for node in bands} == PREFIXES and len(bands) == 3  # one hardware address per server
    for minted in bands.values():
        assert sorted(minted, key=sql_order) == minted  # each server's ids rise in SQL Server order
        assert all(k[16:18] == "11" and k[19] in "89ab" for k in minted)  # version 1 (bytes swapped), RFC variant
    assert sorted(keys, key=sql_order) != keys  # the servers interleave: the table is not one band
    assert max(len(b) for b in bands.values()) > 1.3 * min(len(b) for b in bands.values())  # unevenly busy


def test_random_keys_are_uuid4_and_spread_over_the_key_space():
    minter = KeyMinter("random", seed=3)
    keys = [minter.mint() for _ in range(2000)]
    assert all(k[14] == "4" for k in keys)
    assert len({k[-12:-6] for k in keys}) > 1900


def test_rows_created_without_an_id_get_minted_keys_over_the_api_and_from_a_seed():
    store = Store()
    store.load({"contacts": [{"lastname": f"S{i}"} for i in range(50)]})
    created = [store.create("contact", {"lastname": f"A{i}"}, "user") for i in range(50)]
    seeded = [k for k in store.data["contact"].rows if k not in created]
    for keys in (created, seeded):
        assert {k[-12:-6] for k in keys} <= PREFIXES
    assert sorted(store.data["contact"].rows, key=guid_order) == store.data["contact"].order


def test_an_unknown_key_style_is_refused_by_name():
    with pytest.raises(ValueError, match="sequential, random"):
        KeyMinter("ordered")
