"""The in-memory Dataverse: rows per table, secondary indexes, writes, audits and seeding; list
memberships are in ``memberships``, queries and paging cursors in ``queries``.

One re-entrant lock guards everything; rows are plain dicts holding only non-null columns.
Writes made inside ``transaction()`` are undone on failure and their webhook events are only
released on commit (change sets, CreateMultiple/UpdateMultiple are all-or-nothing).
"""
from __future__ import annotations

import bisect
import contextlib
import threading
import uuid
from collections import OrderedDict
from typing import Any, Callable

from . import odata
from .odata import now_iso
from .errors import BAD_CHOICE, DUPLICATE, BAD_COLUMN, BAD_QUERY, DataverseError, bad_column, not_found
from .schema import (AUDITED, BY_SET, B, D, F, G, I, M, O, RELATIONSHIPS, S, STATE_AFTER_CREATE, TABLES, Table,
                     metadata_rows)
from .keys import KeyMinter
from .memberships import Memberships
from .queries import Queries, _decode_token, _encode_token
from .rows import MAX_PAGE, OUTBOUND_PREFIX, Event, _TableData, listmember_id, parse_guid
from .seed import load_seed

#: What the API, the webhooks and the tests import from here (defined in rows and queries).
__all__ = ["Store", "Event", "MAX_PAGE", "OUTBOUND_PREFIX", "listmember_id", "parse_guid", "_encode_token",
           "_decode_token"]


class Store(Memberships, Queries):
    def __init__(self, without_outbound_solution: bool = False, auditing: bool = True,
                 without_remove_member_action: bool = False, key_style: str = "sequential"):
        self.without_outbound_solution = without_outbound_solution
        self.keys = KeyMinter(key_style)  # new rows' primary keys, as Dataverse mints them
        # An environment created without Dynamics 365 apps has no RemoveMemberList Web API action.
        self.without_remove_member_action = without_remove_member_action
        # listmember id -> (relationship, list id, member id): built on the first DELETE listmembers(id)
        # and kept up to date from then on (None until then, so seeding millions costs nothing more).
        self._listmember_index: dict[str, tuple[str, str, str]] | None = None
        self.lock = threading.RLock()
        self.data = {name: _TableData(t) for name, t in TABLES.items()}
        # rel -> list id -> member ids, and rel -> member id -> list ids
        self.members: dict[str, dict[str, set[str]]] = {r: {} for r in RELATIONSHIPS}
        self.member_of: dict[str, dict[str, set[str]]] = {r: {} for r in RELATIONSHIPS}
        # (list id, member id) -> when the member joined (the listmember row's createdon); a seeded
        # membership has none and reads as the seed's load time (one string, not one per row).
        self.joined: dict[tuple[str, str], str] = {}
        self.seeded_on = now_iso()
        # Auditing of the member flags (donotbulkemail, donotemail): on unless the org turned it off.
        self.auditing = auditing
        self._version = 1000
        self._cursors: OrderedDict[str, list[str]] = OrderedDict()
        self._scope_orders: dict[tuple[str, str, str], list[str]] = {}
        self._undo: list[Callable[[], None]] | None = None
        self._pending: list[Event] | None = None
        self.listeners: list[Callable[[Event], None]] = []
        self.hooks_active: Callable[[], bool] = lambda: bool(self.data["sdkmessageprocessingstep"].rows)
        self._load_metadata()

    # --- primitives (undo-logged) ------------------------------------------------------------

    def _next_version(self) -> int:
        self._version += 1
        return self._version

    def _index_add(self, td: _TableData, row: dict):
        for col, idx in td.index.items():
            v = row.get(col)
            if v is not None:
                idx.setdefault(odata.fold(v) if td.t.columns[col] == S else v, set()).add(row[td.t.key])

    def _index_remove(self, td: _TableData, row: dict):
        for col, idx in td.index.items():
            v = row.get(col)
            if v is not None:
                k = odata.fold(v) if td.t.columns[col] == S else v
                s = idx.get(k)
                if s is not None:
                    s.discard(row[td.t.key])
                    if not s:
                        del idx[k]

    def _insert(self, td: _TableData, row: dict):
        rid = row[td.t.key]
        td.rows[rid] = row
        bisect.insort(td.order, rid, key=odata.guid_order)
        self._index_add(td, row)
        if self._undo is not None:
            self._undo.append(lambda: self._remove(td, rid))

    def _remove(self, td: _TableData, rid: str) -> dict:
        row = td.rows.pop(rid)
        i = bisect.bisect_left(td.order, odata.guid_order(rid), key=odata.guid_order)
        if i < len(td.order) and td.order[i] == rid:
            del td.order[i]
        self._index_remove(td, row)
        if self._undo is not None:
            self._undo.append(lambda: self._insert(td, row))
        return row

    def _replace(self, td: _TableData, rid: str, new: dict):
        old = td.rows[rid]
        self._index_remove(td, old)
        td.rows[rid] = new
        self._index_add(td, new)
        if self._undo is not None:
            self._undo.append(lambda: self._replace(td, rid, old))

    def _link(self, rel: str, list_id: str, member_id: str, joined: str | None = None) -> bool:
        s = self.members[rel].setdefault(list_id, set())
        if member_id in s:
            return False
        self._forget_order(rel, list_id, member_id)
        s.add(member_id)
        self.member_of[rel].setdefault(member_id, set()).add(list_id)
        if self._listmember_index is not None:
            self._listmember_index[listmember_id(list_id, member_id)] = (rel, list_id, member_id)
        if joined is not None:
            self.joined[(list_id, member_id)] = joined
        if self._undo is not None:
            self._undo.append(lambda: self._unlink(rel, list_id, member_id))
        return True

    def _unlink(self, rel: str, list_id: str, member_id: str) -> bool:
        s = self.members[rel].get(list_id)
        if not s or member_id not in s:
            return False
        self._forget_order(rel, list_id, member_id)
        s.discard(member_id)
        self.member_of[rel][member_id].discard(list_id)
        if self._listmember_index is not None:
            self._listmember_index.pop(listmember_id(list_id, member_id), None)
        joined = self.joined.pop((list_id, member_id), None)
        if self._undo is not None:
            self._undo.append(lambda: self._link(rel, list_id, member_id, joined))
        return True

    def _forget_order(self, rel: str, list_id: str, member_id: str) -> None:
        self._scope_orders.pop((rel, "members", list_id), None)
        self._scope_orders.pop((rel, "lists", member_id), None)

    def _scope_order(self, scope: tuple[str, str, str]) -> list[str]:
        """A relationship's related ids in key order, kept until the relationship changes (as an
        index on the intersect table would be)."""
        order = self._scope_orders.get(scope)
        if order is None:
            rel, direction, sid = scope
            src = self.members[rel] if direction == "members" else self.member_of[rel]
            order = self._scope_orders[scope] = sorted(src.get(sid, ()), key=odata.guid_order)
        return order

    def _emit(self, event: Event):
        if self._pending is not None:
            self._pending.append(event)
        else:
            for fn in self.listeners:
                fn(event)

    @contextlib.contextmanager
    def transaction(self):
        """All-or-nothing: on an exception every write is undone and no event is released."""
        with self.lock:
            if self._undo is not None:  # nested: the outer one decides
                yield
                return
            self._undo, self._pending = [], []
            try:
                yield
            except BaseException:
                undo, self._undo = self._undo, None
                for fn in reversed(undo):
                    fn()
                self._pending = None
                raise
            pending, self._undo, self._pending = self._pending, None, None
            for ev in pending:
                self._emit(ev)

    # --- metadata / users --------------------------------------------------------------------

    def table(self, name: str) -> Table:
        return TABLES[name]

    def _load_metadata(self):
        for name, rows in metadata_rows().items():
            td = self.data[name]
            for r in rows:
                if r[td.t.key] not in td.rows:
                    self._insert(td, {**r, "statecode": 0, "createdon": now_iso(), "modifiedon": now_iso(),
                                      "versionnumber": self._next_version()})

    def ensure_user(self, user_id: str, name: str | None = None) -> None:
        td = self.data["systemuser"]
        if user_id in td.rows:
            return
        with self.lock:
            if user_id not in td.rows:
                ts = now_iso()
                self._insert(td, {"systemuserid": user_id, "fullname": name or f"Sandbox user {user_id[:8]}",
                                  "isdisabled": False, "statecode": 0, "createdon": ts, "modifiedon": ts,
                                  "versionnumber": self._next_version()})

    def reset(self):
        """Drops all data but the metadata rows (sdkmessage, sdkmessagefilter, systemuser)."""
        with self.lock:
            for name, t in TABLES.items():
                if not t.metadata:
                    self.data[name] = _TableData(t)
            self.members = {r: {} for r in RELATIONSHIPS}
            self.member_of = {r: {} for r in RELATIONSHIPS}
            self.joined = {}
            self._listmember_index = None
            self._cursors.clear()
            self._scope_orders.clear()

    # --- value handling ----------------------------------------------------------------------

    def _check_value(self, t: Table, col: str, value: Any) -> Any:
        if value is None:
            return None
        kind = t.columns[col]
        ok = {S: isinstance(value, str), B: isinstance(value, bool),
              I: isinstance(value, int) and not isinstance(value, bool),
              O: isinstance(value, int) and not isinstance(value, bool),
              F: isinstance(value, (int, float)) and not isinstance(value, bool),
              G: isinstance(value, str), D: isinstance(value, str), M: isinstance(value, dict)}[kind]
        if not ok:
            raise DataverseError(400, BAD_COLUMN, f"Cannot convert the literal for property '{col}' to the expected type.")
        allowed = t.choices.get(col)
        if allowed is not None and value not in allowed:
            raise DataverseError(400, BAD_CHOICE, f"A validation error occurred. The value {value} of '{col}' on record "
                                                  f"of type '{t.name}' is outside the valid range. Accepted Values: "
                                                  f"{','.join(map(str, sorted(allowed)))}")
        if kind == G:
            return parse_guid(value, col)
        if kind == D:
            return odata.normalise_datetime(value)
        return value

    def _resolve_bind(self, t: Table, key: str, value: Any, base_url: str | None) -> tuple[str, str | None]:
        nav = key[: -len("@odata.bind")]
        lk = t.by_nav.get(nav.lower())
        if lk is None:
            raise DataverseError(400, BAD_COLUMN, f"An undeclared property '{nav}' which only has property annotations in the payload but no property value was found in the payload.")
        if value is None:
            return lk.column, None
        ref_table, ref_id = self.parse_reference(str(value))
        if ref_table != lk.target:
            raise DataverseError(400, BAD_COLUMN, f"'{nav}' must reference a {lk.target}, not a {ref_table}.")
        if ref_id not in self.data[ref_table].rows:
            raise not_found(ref_table, ref_id)
        return lk.column, ref_id

    def parse_reference(self, ref: str) -> tuple[str, str]:
        """``/contacts(<id>)`` or ``https://.../api/data/v9.2/contacts(<id>)`` -> (table, id)."""
        tail = ref.rstrip("/").rsplit("/", 1)[-1]
        if "(" not in tail or not tail.endswith(")"):
            raise DataverseError(400, BAD_QUERY, f"'{ref}' is not a valid entity reference.")
        entity_set, key = tail[:-1].split("(", 1)
        t = BY_SET.get(entity_set)
        if t is None:
            raise DataverseError(404, BAD_QUERY, f"Resource not found for the segment '{entity_set}'.")
        return t.name, parse_guid(key, entity_set)

    def _attrs(self, t: Table, body: dict, *, allow_system: bool) -> dict:
        """Request JSON -> stored columns (lookups as _x_value). Ignores other OData annotations."""
        out = {}
        for key, value in body.items():
            if key.endswith("@odata.bind"):
                col, ref = self._resolve_bind(t, key, value, None)
                out[col] = ref
            elif "@" in key:
                continue
            elif key in t.columns:
                if key.startswith("_") and not allow_system:
                    raise DataverseError(400, BAD_COLUMN, f"'{key}' is read-only; write it with '{t.by_column[key].nav}@odata.bind'.")
                if not allow_system and key in ("createdon", "modifiedon", "versionnumber"):
                    continue  # Dataverse ignores writes to system columns
                out[key] = self._check_value(t, key, value)
            elif allow_system and key in t.by_attr:
                col = t.by_attr[key].column
                out[col] = self._check_value(t, col, value)
            else:
                raise bad_column(t.name, key)
        return out

    # --- writes ------------------------------------------------------------------------------

    def create(self, table: str, body: dict, user_id: str, row_id: str | None = None) -> str:
        t = TABLES[table]
        with self.lock:
            attrs = self._attrs(t, body, allow_system=False)
            rid = row_id or attrs.get(t.key) or self.keys.mint()
            td = self.data[table]
            if rid in td.rows:
                raise DataverseError(412 if row_id else 400, DUPLICATE, "A record with matching key values already exists.")
            ts = now_iso()
            row = {k: v for k, v in attrs.items() if v is not None}
            row[t.key] = rid
            if table in STATE_AFTER_CREATE:  # state on create is ignored: the row starts enabled
                row.pop("statecode", None)
                row.pop("statuscode", None)
            row.setdefault("statecode", 0)
            row.update(createdon=ts, modifiedon=ts, _createdby_value=user_id, _modifiedby_value=user_id,
                       versionnumber=self._next_version())
            row.setdefault("_ownerid_value", user_id)
            self._insert(td, row)
            self._audit(table, rid, 1, {}, row, user_id)
            if self.hooks_active():
                target = {**attrs, **{k: row[k] for k in row}}
                self._emit(Event("Create", table, rid, user_id, target=target, post=dict(row)))
            return rid

    def update(self, table: str, rid: str, body: dict, user_id: str) -> None:
        t = TABLES[table]
        with self.lock:
            td = self.data[table]
            old = td.rows.get(rid)
            if old is None:
                raise not_found(table, rid)
            attrs = self._attrs(t, body, allow_system=False)
            attrs.pop(t.key, None)
            new = dict(old)
            for k, v in attrs.items():
                if v is None:
                    new.pop(k, None)
                else:
                    new[k] = v
            new.update(modifiedon=now_iso(), _modifiedby_value=user_id, versionnumber=self._next_version())
            self._replace(td, rid, new)
            self._audit(table, rid, 2, old, new, user_id)
            if self.hooks_active():
                # Like Dataverse, Target holds the submitted columns (+ id, modifiedon, modifiedby).
                target = {**attrs, t.key: rid, "modifiedon": new["modifiedon"], "_modifiedby_value": user_id}
                self._emit(Event("Update", table, rid, user_id, target=target, post=dict(new), pre=old))

    def upsert(self, table: str, rid: str, body: dict, user_id: str) -> bool:
        """PATCH without If-Match: update if present else create with that id. True if created."""
        with self.lock:
            if rid in self.data[table].rows:
                self.update(table, rid, body, user_id)
                return False
            self.create(table, body, user_id, row_id=rid)
            return True

    def delete(self, table: str, rid: str, user_id: str) -> None:
        with self.lock:
            td = self.data[table]
            if rid not in td.rows:
                raise not_found(table, rid)
            row = self._remove(td, rid)
            for rel, (list_side, member_side) in RELATIONSHIPS.items():
                if table == list_side:
                    for m in list(self.members[rel].get(rid, ())):
                        self._unlink(rel, rid, m)
                elif table == member_side:
                    for lid in list(self.member_of[rel].get(rid, ())):
                        self._unlink(rel, lid, rid)
            if self.hooks_active():
                self._emit(Event("Delete", table, rid, user_id, pre=row))

    def get(self, table: str, rid: str) -> dict:
        row = self.data[table].rows.get(rid)
        if row is None:
            raise not_found(table, rid)
        return row

    def _audit(self, table: str, rid: str, operation: int, old: dict, new: dict, user_id: str) -> None:
        """An audit row when a member's flag changes (operation/action 1 Create, 2 Update), its
        attributemask the changed columns' ColumnNumbers, as Dataverse records audited changes."""
        if not self.auditing or table not in ("contact", "lead"):
            return
        changed = [c for c in AUDITED if bool(old.get(c)) != bool(new.get(c))]
        if not changed:
            return
        numbers = self.column_numbers(table)
        ts = now_iso()
        self._insert(self.data["audit"], {
            "auditid": str(uuid.uuid4()), "_objectid_value": rid, "objecttypecode": table, "operation": operation,
            "action": operation, "attributemask": ",".join(str(numbers[c]) for c in changed),
            "_userid_value": user_id, "createdon": ts, "versionnumber": self._next_version()})

    def column_numbers(self, table: str) -> dict[str, int]:
        """AttributeMetadata.ColumnNumber per column (the sandbox numbers them in schema order)."""
        return {name: i for i, name in enumerate(self.attributes(table), start=1)}

    # --- metadata ----------------------------------------------------------------------------

    def attributes(self, table: str) -> list[str]:
        """The table's column logical names, as the metadata API lists them (lookups by attribute)."""
        t = TABLES[table]
        names = [c for c in t.columns if not c.startswith("_")] + [lk.attr for lk in t.all_lookups]
        if self.without_outbound_solution:
            names = [n for n in names if not n.startswith(OUTBOUND_PREFIX)]
        return names

    # --- bulk loading ------------------------------------------------------------------------

    def load(self, seed: dict) -> dict[str, int]:
        """Loads a seed (see README.md) without HTTP and without firing webhooks; returns counts."""
        import gc

        enabled = gc.isenabled()
        gc.disable()  # millions of new dicts would otherwise trigger many useless full collections
        try:
            self.seeded_on = now_iso()
            counts = load_seed(self, seed)
            if self.without_outbound_solution:  # the solution's columns do not exist: drop them
                for td in self.data.values():
                    for rid, row in list(td.rows.items()):
                        if any(k.startswith(OUTBOUND_PREFIX) for k in row):
                            td.rows[rid] = {k: v for k, v in row.items() if not k.startswith(OUTBOUND_PREFIX)}
            return counts
        finally:
            if enabled:
                gc.enable()
