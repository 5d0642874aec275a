"""List membership in the store: the N:N relationships between lists and their contacts or
leads, the list's member actions, and the listmember intersect rows (read, and deleted by id)."""
from __future__ import annotations

from . import odata
from .errors import BAD_QUERY, DataverseError, not_found
from .odata import now_iso
from .rows import Event, listmember_id
from .schema import MEMBER_TABLE_BY_CODE, RELATIONSHIPS


class Memberships:
    """Mixed into ``Store``; uses its lock, rows, membership maps and undo-logged ``_link``/``_unlink``."""

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
