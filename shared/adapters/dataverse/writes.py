"""Writes in ``$batch``: each write as a batch part (the client's typed writes and the sync
gateway share them), each answer read into a ``WriteResult``, and member removals sent the way the
environment offers them. Requests go outside change sets with ``odata.continue-on-error``, so every
item gets its own result; CreateMultiple and UpdateMultiple are not used: they are all-or-nothing."""
from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from shared.adapters.dataverse.errors import DataverseBadRequest, DataverseNotFound, error_for, parse_error_body
from shared.adapters.dataverse.odata import BatchOp, PartResponse, guid, id_from_entity_url, query_string
from shared.adapters.dataverse.rows import CONSENT_SET, _entity_set, _listmember_queries, consent_columns
from shared.domain.consent import ContactPointType
from shared.domain.model import WriteResult

#: Dataverse's "Cannot insert duplicate key": adding a member who is already there.
DUPLICATE_KEY = "0x80040237"


def to_write_result(part: PartResponse | None, id: str | None = None, *, ok_statuses: Sequence[int] = (),
                    ok_codes: Sequence[str] = ()) -> WriteResult:
    if part is None:
        return WriteResult(False, id, None, None, "no response for this request in the $batch")
    code, message = parse_error_body(part.body)
    if 200 <= part.status < 300 or part.status in ok_statuses or (code and code.lower() in ok_codes):
        created = id_from_entity_url(part.headers.get("odata-entityid"))
        return WriteResult(True, created or id, part.status)
    return WriteResult(False, id, part.status, code, message or f"HTTP {part.status}")


#: List membership is written only through the list's own actions: Dataverse refuses the N:N
#: ``$ref`` Associate on the list member relationships ("Associate is not supported for ListMember").
ADD_MEMBER_ACTION = "Microsoft.Dynamics.CRM.AddMemberList"
REMOVE_MEMBER_ACTION = "Microsoft.Dynamics.CRM.RemoveMemberList"


def add_member_op(list_id: str, table: str, member_id: str) -> BatchOp:
    """AddMemberList bound to the list, ``EntityId`` the contact or lead (answers the listmember id)."""
    _entity_set(table)
    return BatchOp("POST", f"lists({guid(list_id)})/{ADD_MEMBER_ACTION}", {"EntityId": guid(member_id)})


def remove_member_op(list_id: str, table: str, member_id: str) -> BatchOp:
    """RemoveMemberList bound to the list, ``EntityId`` the contact or lead."""
    _entity_set(table)
    return BatchOp("POST", f"lists({guid(list_id)})/{REMOVE_MEMBER_ACTION}", {"EntityId": guid(member_id)})


def delete_listmember_op(listmember_id: str) -> BatchOp:
    """Deleting the membership's ``listmember`` row: how a member leaves where RemoveMemberList is
    not a Web API action (environments created without Dynamics 365 apps)."""
    return BatchOp("DELETE", f"listmembers({guid(listmember_id)})")


@dataclass(frozen=True)
class MemberRemoval:
    """A member leaving a list, written the way the environment offers (``member_removal``): the
    RemoveMemberList action, or deleting the listmember row found for it when the batch is built."""

    list_id: str
    table: str
    member_id: str


#: How a member leaves a list: the list's RemoveMemberList action, or deleting the listmember row.
REMOVAL_ACTION, REMOVAL_ROW = "RemoveMemberList action", "DELETE listmembers(id)"


def removal_action_missing(status: int | None, message: str | None) -> bool:
    """Whether an answer says RemoveMemberList is not a Web API action here. OData's routing error
    ("Resource not found for the segment '...RemoveMemberList'") is the only sign: its code is not
    documented and varies, so this one check reads the message (FIDELITY.md)."""
    return (status in (400, 404) and bool(message) and "RemoveMemberList" in str(message)
            and "resource not found for the segment" in str(message).lower())


def member_update_op(table: str, member_id: str, fields: Mapping[str, Any]) -> BatchOp:
    """PATCH with If-Match: * : update-only, never creates a row."""
    return BatchOp("PATCH", f"{_entity_set(table)}({guid(member_id)})", dict(fields), {"If-Match": "*"})


def consent_create_op(fields: Mapping[str, Any]) -> BatchOp:
    fields = {"contact_point_type": ContactPointType.EMAIL.value, **fields}
    if not fields.get("topic_id"):
        fields.pop("topic_id", None)  # no bind at all on create
    return BatchOp("POST", CONSENT_SET, consent_columns(fields))


def consent_update_op(row_id: str, fields: Mapping[str, Any]) -> BatchOp:
    return BatchOp("PATCH", f"{CONSENT_SET}({guid(row_id)})", consent_columns(fields), {"If-Match": "*"})


#: How each write's answer is read: already a member / already gone means the goal holds.
ADD_MEMBER_OK = {"ok_codes": (DUPLICATE_KEY,)}
REMOVE_MEMBER_OK = {"ok_statuses": (404,)}


class BatchWrites:
    """Mixed into the client; uses the transport's ``batch``/``request``/``query_rows`` and the
    client's ``_removal`` and ``_probe_lock``."""

    def add_list_members(self, items: Sequence[tuple[str, str, str]]) -> list[WriteResult]:
        """(list id, member table, member id) -> joined; already a member counts as ok."""
        parts = self.batch([add_member_op(l, t, m) for l, t, m in items])
        return [to_write_result(p, guid(m), **ADD_MEMBER_OK) for p, (_, _, m) in zip(parts, items)]

    def remove_list_members(self, items: Sequence[tuple[str, str, str]]) -> list[WriteResult]:
        """(list id, member table, member id) -> left; not a member (any more) counts as ok."""
        return self.write([(MemberRemoval(l, t, m), guid(m), REMOVE_MEMBER_OK) for l, t, m in items])

    def member_removal(self, probe: bool = False) -> str:
        """How members leave lists in this environment (REMOVAL_ACTION or REMOVAL_ROW), probed once
        (or again with ``probe``): RemoveMemberList is a Web API action only where Dynamics 365 apps
        were enabled when the environment was created; elsewhere the listmember row is deleted.
        The probe removes a random id from a random list, so nothing changes; a refusal (403)
        raises. ``doctor`` asks this; writes learn it from their own first removal instead, at
        no extra request."""
        with self._probe_lock:
            if self._removal is None or probe:
                op = remove_member_op(str(uuid.uuid4()), "contact", str(uuid.uuid4()))
                try:
                    self.request("POST", op.path, json=op.body, kind="POST member removal probe")
                    self._removal = REMOVAL_ACTION
                except (DataverseNotFound, DataverseBadRequest) as exc:  # else: no such list, the action exists
                    self._removal = REMOVAL_ROW if removal_action_missing(exc.status, exc.message) else REMOVAL_ACTION
        return self._removal

    def write(self, items: Sequence[tuple[BatchOp | MemberRemoval, str | None, Mapping[str, Any]]]
              ) -> list[WriteResult]:
        """(operation, target id, how its answer is read) -> one WriteResult each, in ``$batch``.
        A MemberRemoval goes as RemoveMemberList until the environment says it has no such action
        (then, once per client, those removals are resent as listmember row deletions)."""
        shape = self._removal
        ops: list[BatchOp | None] = []
        removals = [(i, op) for i, (op, _, _) in enumerate(items) if isinstance(op, MemberRemoval)]
        rows = self._listmember_ids([(r.list_id, r.member_id) for _, r in removals]) if shape == REMOVAL_ROW else {}
        for op, _, _ in items:
            if not isinstance(op, MemberRemoval):
                ops.append(op)
            elif shape == REMOVAL_ROW:
                row_id = rows.get((guid(op.list_id), guid(op.member_id)))
                ops.append(delete_listmember_op(row_id) if row_id else None)  # None: not a member
            else:
                ops.append(remove_member_op(op.list_id, op.table, op.member_id))
        sent = self.batch([op for op in ops if op is not None])
        answers = iter(sent)
        parts = [next(answers) if op is not None else None for op in ops]
        results = [to_write_result(p, target, **accept) if op is not None else WriteResult(True, target, None)
                   for op, p, (_, target, accept) in zip(ops, parts, items)]
        answered = [i for i, _ in removals if parts[i] is not None] if shape is None else []
        if answered:  # the first removals tell which way this environment takes
            missing = [i for i in answered if removal_action_missing(parts[i].status, parse_error_body(parts[i].body)[1])]
            with self._probe_lock:
                self._removal = REMOVAL_ROW if missing else REMOVAL_ACTION
            if missing:
                for i, result in zip(missing, self.write([items[i] for i in missing])):
                    results[i] = result
        return results

    def _listmember_ids(self, pairs: Sequence[tuple[str, str]]) -> dict[tuple[str, str], str]:
        """(list id, member id) -> its listmember row's id, for the pairs that are memberships: one
        query per list (and 200 members) on the listmember table, all in one ``$batch``."""
        wanted = list(dict.fromkeys((guid(l), guid(m)) for l, m in pairs))
        queries = list(_listmember_queries(wanted, "listmemberid,_entityid_value"))
        out: dict[tuple[str, str], str] = {}
        parts = self.batch([BatchOp("GET", "listmembers?" + query_string(params)) for _, params in queries])
        for (list_id, _), part in zip(queries, parts):
            if part is None or part.status != 200:
                raise error_for(part.status if part else 503, part.body if part else None, "GET listmembers")
            body = json.loads(part.body or b"{}")
            rows = list(body.get("value") or [])
            if body.get("@odata.nextLink"):
                rows.extend(self.query_rows(body["@odata.nextLink"]))
            for row in rows:
                if row.get("listmemberid") and row.get("_entityid_value"):
                    out[(list_id, str(row["_entityid_value"]).lower())] = str(row["listmemberid"]).lower()
        return out

    def set_member_flags(self, updates: Sequence[tuple[str, str, Mapping[str, Any]]]) -> list[WriteResult]:
        """(table, id, {"donotbulkemail": True}) -> PATCH with If-Match: * (never creates a row)."""
        parts = self.batch([member_update_op(t, i, f) for t, i, f in updates])
        return [to_write_result(p, guid(i)) for p, (_, i, _) in zip(parts, updates)]

    def create_consent_rows(self, rows: Sequence[Mapping[str, Any]]) -> list[WriteResult]:
        """Each dict: contact_point_value, consent_type, value, purpose_id, topic_id|None, source, reason."""
        return [to_write_result(p) for p in self.batch([consent_create_op(r) for r in rows])]

    def update_consent_rows(self, updates: Sequence[tuple[str, Mapping[str, Any]]]) -> list[WriteResult]:
        """(row id, fields in the same keys as create) -> PATCH with If-Match: *."""
        parts = self.batch([consent_update_op(i, f) for i, f in updates])
        return [to_write_result(p, guid(i)) for p, (i, _) in zip(parts, updates)]
