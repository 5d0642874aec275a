"""Bulk loading of a seed document (the format is in README.md), bypassing HTTP and webhooks."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import DataverseError
from . import odata
from .odata import fold, normalise_datetime, now_iso
from .schema import BY_SET, MEMBER_TABLE_BY_CODE, TABLES

ALIASES = {"purposes": "msdynmkt_purpose", "topics": "msdynmkt_topic", "consents": "msdynmkt_contactpointconsent4",
           "compliance_profiles": "msdynmkt_compliancesettings4", "users": "systemuser"}
# Parents first so lookups can be checked against loaded rows.
_ORDER = ["systemuser", "msdynmkt_compliancesettings4", "msdynmkt_purpose", "msdynmkt_topic", "contact", "lead",
          "list", "msdynmkt_contactpointconsent4", "serviceendpoint", "sdkmessageprocessingstep",
          "sdkmessageprocessingstepimage"]


def read_seed(source: Any) -> dict:
    if source is None:
        return {}
    if isinstance(source, dict):
        return source
    return json.loads(Path(source).read_text(encoding="utf-8"))


def _table_for(key: str) -> str | None:
    if key in TABLES:
        return key
    if key in BY_SET:
        return BY_SET[key].name
    return ALIASES.get(key)


def load_seed(store, seed: dict) -> dict[str, int]:
    if not isinstance(seed, dict):
        raise DataverseError(400, "0x80040203", "The seed must be a JSON object.")
    by_table = _rows_by_table(seed)
    counts: dict[str, int] = {}
    with store.lock:
        ts = now_iso()
        for name in sorted(by_table, key=lambda n: _ORDER.index(n) if n in _ORDER else 99):
            counts[name] = _load_table(store, name, by_table[name], ts)
        counts["list_members"] = _load_memberships(store, seed.get("list_members") or seed.get("memberships") or {})
        store._cursors.clear()
    return counts


def _rows_by_table(seed: dict) -> dict[str, list]:
    """The seed's rows by table name (aliases resolved), memberships aside."""
    by_table: dict[str, list] = {}
    for key, rows in seed.items():
        if key in ("list_members", "memberships"):
            continue
        name = _table_for(key)
        if name is None:
            raise DataverseError(400, "0x80040203", f"Unknown seed key '{key}'.")
        if not isinstance(rows, list):
            raise DataverseError(400, "0x80040203", f"Seed key '{key}' must hold an array of rows.")
        by_table.setdefault(name, []).extend(rows)
    return by_table


def _load_table(store, name: str, raws: list, ts: str) -> int:
    """Writes one table's seed rows straight into the store (with their indexes); how many."""
    t = TABLES[name]
    td = store.data[name]
    cols = t.columns
    allowed = set(cols) | set(t.by_attr) | {lk.nav + "@odata.bind" for lk in t.all_lookups}
    rows_ = td.rows
    n = 0
    # Per-column conversion decided once, not per row (1M-row seeds).
    conv = {c: k for c, k in cols.items() if k in ("G", "D")}
    conv.update({lk.nav + "@odata.bind": "bind" for lk in t.all_lookups})
    conv.update({lk.attr: "attr" for lk in t.all_lookups})
    indexes = [(c, idx, cols[c] == "S") for c, idx in td.index.items()]
    for raw in raws:
        row = _seed_row(store, t, raw, allowed, conv)
        rid = row.get(t.key) or store.keys.mint()
        row[t.key] = rid
        row.setdefault("statecode", 0)
        row.setdefault("createdon", ts)
        row.setdefault("modifiedon", row["createdon"])
        store._version += 1
        row["versionnumber"] = store._version
        old = rows_.get(rid)
        if old is not None:
            store._index_remove(td, old)
        rows_[rid] = row
        for c, idx, is_str in indexes:
            v = row.get(c)
            if v is not None:
                key = fold(v) if is_str else v
                b = idx.get(key)
                if b is None:
                    idx[key] = {rid}
                else:
                    b.add(rid)
        n += 1
    td.order = sorted(rows_, key=odata.guid_order)  # one sort instead of n inserts
    return n


def _seed_row(store, t, raw: Any, allowed: set, conv: dict) -> dict:
    """One seed row as stored: ids lower-case, dates normalised, lookups (bind or bare) resolved."""
    if not isinstance(raw, dict):
        raise DataverseError(400, "0x80040203", f"Seed rows of '{t.name}' must be objects.")
    extra = raw.keys() - allowed
    if extra:
        raise DataverseError(400, "0x80048d19", f"Unknown column(s) {sorted(extra)} for table '{t.name}'.")
    row = {}
    for k, v in raw.items():
        if v is None:
            continue
        how = conv.get(k)
        if how is None:
            row[k] = v
        elif how == "G":
            row[k] = v.lower()
        elif how == "D":
            row[k] = v if (len(v) == 20 and v[-1] == "Z") else normalise_datetime(v)
        elif how == "bind":
            row[t.by_nav[k[:-11].lower()].column] = store.parse_reference(v)[1]
        else:  # bare lookup attribute name
            row[t.by_attr[k].column] = str(v).lower()
    return row


def _load_memberships(store, members: dict | list) -> int:
    """Links the seed's list memberships ({list: [members]} or [{list, member}]); how many were new."""
    pairs = []
    if isinstance(members, dict):
        for lid, mids in members.items():
            pairs.extend((lid, m) for m in mids)
    else:
        pairs.extend((p["list"], p["member"]) for p in members)
    linked = 0
    for lid, mid in pairs:
        lid, mid = str(lid).lower(), str(mid).lower()
        lst = store.data["list"].rows.get(lid)
        if lst is None:
            raise DataverseError(400, "0x80040217", f"Seed membership names unknown list {lid}.")
        member = MEMBER_TABLE_BY_CODE.get(lst.get("createdfromcode"), "contact")
        if mid not in store.data[member].rows:
            raise DataverseError(400, "0x80040217", f"Seed membership names unknown {member} {mid}.")
        linked += store._link(f"list{member}_association", lid, mid)
    return linked
