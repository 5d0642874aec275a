"""The in-memory Dataverse: rows per table, secondary indexes, list memberships, paging cursors.

One re-entrant lock guards everything; rows are plain dicts holding only non-null columns.
Writes made inside ``transaction()`` are undone on failure and their webhook events are only
released on commit (change sets, CreateMultiple/UpdateMultiple are all-or-nothing).
"""
from __future__ import annotations

import base64
import bisect
import contextlib
import json
import secrets
import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

from . import odata
from .odata import now_iso
from .errors import BAD_CHOICE, DUPLICATE, BAD_COLUMN, BAD_QUERY, DataverseError, bad_column, bad_query, not_found
from .schema import (AUDITED, BY_SET, B, D, F, G, I, M, MEMBER_TABLE_BY_CODE, O, PRIMARY_NAME, RELATIONSHIPS, S,
                     STATE_AFTER_CREATE, TABLES, Table, metadata_rows)
from .keys import KeyMinter
from .seed import load_seed

MAX_PAGE = 5000
_CURSORS = 64
_GUID_LEN = 36


def parse_guid(value: Any, what: str = "id") -> str:
    try:
        return str(uuid.UUID(str(value).strip("{}")))
    except (ValueError, AttributeError):
        raise DataverseError(400, BAD_QUERY, f"'{value}' is not a valid Guid for {what}.") from None


@dataclass
class Event:
    """A committed change that may fire webhook steps."""

    message: str
    table: str
    id: str
    user_id: str
    target: dict | None = None  # Create/Update: the columns written
    post: dict | None = None  # row after the operation
    pre: dict | None = None  # row before the operation
    extra: dict = field(default_factory=dict)  # message-specific inputs (ListId, RelatedEntities, ...)
    time: datetime = field(default_factory=lambda: datetime.now(timezone.utc))


class _TableData:
    __slots__ = ("t", "rows", "order", "index")

    def __init__(self, t: Table):
        self.t = t
        self.rows: dict[str, dict] = {}
        # ids in SQL Server uniqueidentifier order (odata.guid_order): Dataverse's default order,
        # the order of $orderby=<key>, and the streaming paging cursor
        self.order: list[str] = []
        self.index: dict[str, dict[Any, set[str]]] = {c: {} for c in t.indexed}


#: Columns the Outbound marketing solution adds; an org without that solution has none of them.
OUTBOUND_PREFIX = "msdyncrm_"


class Store:
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

    def listmember_rows(self, list_ids: set[str] | None = None, member_ids: set[str] | None = None) -> list[dict]:
        """The listmember intersect rows (read-only), narrowed to some lists or members, in key order."""
        out = []
        with self.lock:
            for rel, (_, member_table) in RELATIONSHIPS.items():
                if member_ids is not None:
                    pairs = [(l, m) for m in member_ids for l in self.member_of[rel].get(m, ())]
                elif list_ids is not None:
                    pairs = [(l, m) for l in list_ids for m in self.members[rel].get(l, ())]
                else:
                    pairs = [(l, m) for l, ms in self.members[rel].items() for m in ms]
                for l, m in pairs:
                    if list_ids is not None and l not in list_ids:
                        continue
                    at = self.joined.get((l, m), self.seeded_on)
                    out.append({"listmemberid": listmember_id(l, m), "_listid_value": l, "_entityid_value": m,
                                "entitytype": member_table, "createdon": at, "modifiedon": at, "versionnumber": 0})
        out.sort(key=lambda r: odata.guid_order(r["listmemberid"]))
        return out

    # --- memberships -------------------------------------------------------------------------

    def relationship_for(self, table: str, nav: str) -> tuple[str, str]:
        """(relationship, other table) for a navigation property of ``table``, else 400."""
        sides = RELATIONSHIPS.get(nav)
        if sides is None or table not in sides:
            raise DataverseError(400, BAD_QUERY, f"Could not find a property named '{nav}' on type 'Microsoft.Dynamics.CRM.{table}'.")
        return nav, sides[1] if table == sides[0] else sides[0]

    def associate(self, table: str, rid: str, nav: str, other_id: str, user_id: str, *,
                  message: str = "Associate", other_table: str | None = None) -> bool:
        rel, other = self.relationship_for(table, nav)
        if other_table is not None and other_table != other:
            raise DataverseError(400, BAD_QUERY, f"'{nav}' relates {table} to {other}, not to {other_table}.")
        with self.lock:
            self.get(table, rid)
            self.get(other, other_id)
            list_id, member_id = (rid, other_id) if table == "list" else (other_id, rid)
            added = self._link(rel, list_id, member_id, now_iso())
            if added and self.hooks_active():
                self._emit(Event(message, table, rid, user_id, extra={
                    "relationship": rel, "related": [(other, other_id)], "list_id": list_id, "member_id": member_id}))
            return added

    def disassociate(self, table: str, rid: str, nav: str, other_id: str, user_id: str, *,
                     message: str = "Disassociate") -> None:
        rel, other = self.relationship_for(table, nav)
        with self.lock:
            self.get(table, rid)
            list_id, member_id = (rid, other_id) if table == "list" else (other_id, rid)
            if not self._unlink(rel, list_id, member_id):
                raise DataverseError(404, "0x80040217", f"The {other} With Id = {other_id} is not associated with {table} With Id = {rid}.")
            if self.hooks_active():
                self._emit(Event(message, table, rid, user_id, extra={
                    "relationship": rel, "related": [(other, other_id)], "list_id": list_id, "member_id": member_id}))

    def list_member_rel(self, list_id: str) -> tuple[str, str]:
        lst = self.get("list", list_id)
        member = MEMBER_TABLE_BY_CODE.get(lst.get("createdfromcode"))
        if member is None:
            raise DataverseError(400, "0x80040203", "The list's Member Type (createdfromcode) must be 2 (contact) or 4 (lead).")
        return f"list{member}_association", member

    def add_member(self, list_id: str, entity_id: str, user_id: str) -> str:
        """AddMember: adding an existing member is a silent success (no duplicate). Returns the
        listmember id (stable per list and member, as the intersect row's key would be)."""
        with self.lock:
            rel, member = self.list_member_rel(list_id)
            self.get(member, entity_id)
            self._link(rel, list_id, entity_id, now_iso())
            if self.hooks_active():
                self._emit(Event("AddMember", "list", list_id, user_id,
                                 extra={"ListId": list_id, "EntityId": entity_id}))
            return listmember_id(list_id, entity_id)

    def add_list_members(self, list_id: str, member_ids: list[str], user_id: str) -> None:
        with self.transaction():
            rel, member = self.list_member_rel(list_id)
            joined = now_iso()
            for m in member_ids:
                self.get(member, m)
                self._link(rel, list_id, m, joined)
            if self.hooks_active():
                self._emit(Event("AddListMembers", "list", list_id, user_id,
                                 extra={"ListId": list_id, "MemberIds": list(member_ids)}))

    def remove_member(self, list_id: str, entity_id: str, user_id: str) -> None:
        with self.lock:
            rel, member = self.list_member_rel(list_id)
            if not self._unlink(rel, list_id, entity_id):
                raise DataverseError(404, "0x80040217", f"{member} With Id = {entity_id} is not a member of list With Id = {list_id}.")
            if self.hooks_active():
                self._emit(Event("RemoveMember", "list", list_id, user_id,
                                 extra={"ListId": list_id, "EntityId": entity_id}))

    def delete_listmember(self, row_id: str) -> None:
        """``DELETE listmembers(<id>)``: the membership whose intersect row this is ends (LISTMEMBER
        documents Delete on the table). The Delete message of listmember is not raised to webhooks:
        the sandbox has no message filter for that table."""
        with self.lock:
            if self._listmember_index is None:
                self._listmember_index = {listmember_id(l, m): (rel, l, m) for rel, by_list in self.members.items()
                                          for l, ms in by_list.items() for m in ms}
            found = self._listmember_index.get(row_id)
            if found is None:
                raise not_found("listmember", row_id)
            self._unlink(*found)

    # --- metadata ----------------------------------------------------------------------------

    def attributes(self, table: str) -> list[str]:
        """The table's column logical names, as the metadata API lists them (lookups by attribute)."""
        t = TABLES[table]
        names = [c for c in t.columns if not c.startswith("_")] + [lk.attr for lk in t.all_lookups]
        if self.without_outbound_solution:
            names = [n for n in names if not n.startswith(OUTBOUND_PREFIX)]
        return names

    # --- queries -----------------------------------------------------------------------------

    def _estimate(self, td: _TableData, terms) -> int:
        """Candidate count without building the set, so an `and` only materialises its narrowest leaf."""
        tag = terms[0]
        if tag == "leaf":
            _, col, values = terms
            if col == td.t.key:
                return len(values)
            idx = td.index[col]
            return sum(len(idx.get(v, ())) for v in values)
        sizes = [self._estimate(td, k) for k in terms[1]]
        return min(sizes) if tag == "and" else sum(sizes)

    def _candidates(self, td: _TableData, terms) -> set[str] | None:
        if terms is None:
            return None
        tag = terms[0]
        if tag == "leaf":
            _, col, values = terms
            if col == td.t.key:
                return {v for v in values if v in td.rows}
            idx = td.index[col]
            out: set[str] = set()
            for v in values:
                s = idx.get(v)
                if s:
                    out |= s
            return out
        if tag == "and":
            # The predicate still checks the other conjuncts.
            return self._candidates(td, min(terms[1], key=lambda k: self._estimate(td, k)))
        out = set()
        for k in terms[1]:
            out |= self._candidates(td, k)
        return out

    def query(self, table: str, *, filter_text: str | None = None, orderby_text: str | None = None,
              top: int | None = None, page_size: int = MAX_PAGE, skiptoken: str | None = None,
              scope: tuple[str, str, str] | None = None, count: bool = False) -> tuple[list[dict], str | None, int | None]:
        """Rows of one page, the next page's skiptoken (or None) and, with ``count``, the total.

        ``scope`` = (relationship, "members"|"lists", id): only rows associated with that id.
        Without $orderby or an index the page is streamed from the sorted id order after the
        last id seen (no quadratic rescans); otherwise the matching ids are materialised once
        and the token is a cursor into that list.
        """
        t = TABLES[table]
        td = self.data[table]
        page_size = max(1, min(page_size, MAX_PAGE))
        with self.lock:
            node = odata.parse_filter(filter_text) if filter_text else None
            pred = odata.compile_filter(t, node) if node is not None else None
            orderby = odata.parse_orderby(t, orderby_text)
            if skiptoken:
                state = _decode_token(skiptoken)
                if "c" in state:
                    ids = self._cursors.get(state["c"])
                    if ids is None:
                        raise bad_query("The paging cookie has expired; start the query again.")
                    self._cursors.move_to_end(state["c"])
                    return self._cursor_page(td, ids, state["c"], state["p"], page_size), \
                        self._cursor_next(ids, state["c"], state["p"], page_size), None
                order = self._scope_order(scope) if scope is not None else None
                return self._stream_page(td, pred, page_size, state["k"], odata.key_range(t, node), order)
            limit = min(top, MAX_PAGE) if top is not None else None
            candidates = None
            narrowed = None
            if node is not None:
                terms = odata.index_terms(t, node, set(td.index) | {t.key})
                narrowed = self._candidates(td, terms)
            # In key order (none asked, or the key ascending) the page streams from the key order (of
            # the table, or of a relationship's related rows), starting and stopping at the key range's
            # bounds, as SQL Server seeks its clustered index (or the intersect table's index).
            by_key = not orderby or orderby == [(t.key, False)]
            if narrowed is None and (by_key or (orderby == [(t.key, True)] and limit is not None)):
                order = self._scope_order(scope) if scope is not None else None
                bounds = odata.key_range(t, node)
                total = (self._count(td, pred, order) if count else None)
                if not by_key:
                    return self._last_rows(td, pred, limit, bounds, order), None, total
                rows, token, _ = self._stream_page(td, pred, limit if limit is not None else page_size, None,
                                                   bounds, order)
                return rows, (None if limit is not None else token), total
            if scope is not None:
                rel, direction, sid = scope
                src = self.members[rel] if direction == "members" else self.member_of[rel]
                candidates = set(src.get(sid, ()))
            if narrowed is not None:
                candidates = narrowed if candidates is None else candidates & narrowed
            ids = [i for i in candidates if i in td.rows] if candidates is not None else list(td.order)
            if pred is not None:
                rows_ = td.rows
                ids = [i for i in ids if pred(rows_[i])]
            ids = (odata.sort_ids(t, td.rows, ids, orderby, lambda col, rid: self._primary_name(t, col, rid))
                   if orderby else sorted(ids, key=odata.guid_order))
            total = len(ids) if count else None
            if limit is not None:
                return [td.rows[i] for i in ids[:limit]], None, total
            if len(ids) <= page_size:
                return [td.rows[i] for i in ids], None, total
            key = secrets.token_hex(8)
            self._cursors[key] = ids
            while len(self._cursors) > _CURSORS:
                self._cursors.popitem(last=False)
            return self._cursor_page(td, ids, key, 0, page_size), self._cursor_next(ids, key, 0, page_size), total

    def _primary_name(self, t: Table, column: str, rid: str):
        """The primary name of the row a lookup column points to (None: no such row or name)."""
        target = t.by_column[column].target
        row = self.data[target].rows.get(rid) if target in self.data else None
        return row.get(PRIMARY_NAME.get(target, "")) if row else None

    def _count(self, td: _TableData, pred, order: list[str] | None = None) -> int:
        if order is not None:
            rows = [td.rows.get(i) for i in order]
            return sum(1 for r in rows if r is not None and (pred is None or pred(r)))
        if pred is None:
            return len(td.rows)
        return sum(1 for r in td.rows.values() if pred(r))

    @staticmethod
    def _span(td: _TableData, bounds, order: list[str] | None = None) -> tuple[int, int]:
        """Positions in the key order between a key range's bounds."""
        lo, lo_inc, hi, hi_inc = bounds if bounds else (None, False, None, False)
        order, key = (td.order if order is None else order), odata.guid_order
        i = 0 if lo is None else (bisect.bisect_left if lo_inc else bisect.bisect_right)(order, lo, key=key)
        j = len(order) if hi is None else (bisect.bisect_right if hi_inc else bisect.bisect_left)(order, hi, key=key)
        return i, j

    def _last_rows(self, td: _TableData, pred, limit: int, bounds, order: list[str] | None = None) -> list[dict]:
        """``$orderby=<key> desc&$top=n``: walks back from the range's end."""
        order = td.order if order is None else order
        i, j = self._span(td, bounds, order)
        out = []
        while j > i and len(out) < limit:
            j -= 1
            r = td.rows.get(order[j])
            if r is not None and (pred is None or pred(r)):
                out.append(r)
        return out

    def _stream_page(self, td: _TableData, pred, size: int, after: str | None, bounds=None,
                     order: list[str] | None = None):
        scoped = order is not None
        order, rows = (td.order if order is None else order), td.rows
        i, n = self._span(td, bounds, order)
        if after:
            i = max(i, bisect.bisect_right(order, odata.guid_order(after), key=odata.guid_order))
        out = []
        if pred is None and not scoped:
            # A slice, not a loop: 1M-row paging stays linear and cheap.
            chunk = order[i:min(i + size + 1, n)]
            out = [rows[k] for k in chunk[:size]]
            more = len(chunk) > size
        else:
            more = False
            while i < n:
                r = rows.get(order[i])
                i += 1
                if r is not None and (pred is None or pred(r)):
                    if len(out) == size:
                        more = True
                        break
                    out.append(r)
        token = _encode_token({"k": out[-1][td.t.key]}) if more and out else None
        return out, token, None

    def _cursor_page(self, td: _TableData, ids: list[str], key: str, pos: int, size: int) -> list[dict]:
        rows = td.rows
        return [rows[i] for i in ids[pos:pos + size] if i in rows]  # rows deleted meanwhile drop out

    def _cursor_next(self, ids: list[str], key: str, pos: int, size: int) -> str | None:
        return _encode_token({"c": key, "p": pos + size}) if pos + size < len(ids) else None

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


def listmember_id(list_id: str, member_id: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_OID, f"listmember:{list_id}:{member_id}"))


def _encode_token(state: dict) -> str:
    raw = json.dumps(state, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_token(token: str) -> dict:
    try:
        pad = "=" * (-len(token) % 4)
        state = json.loads(base64.urlsafe_b64decode(token + pad))
        if not isinstance(state, dict) or not ("k" in state or "c" in state):
            raise ValueError
        return state
    except (ValueError, TypeError):
        raise bad_query("The $skiptoken is not valid; follow @odata.nextLink unchanged.") from None
