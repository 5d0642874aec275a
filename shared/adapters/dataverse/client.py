"""The typed Dataverse operations the sync needs, returning the values of ``shared.domain.model``.

Reads stream pages; bulk writes go through ``$batch`` (requests outside change sets, with
``odata.continue-on-error``) so every item gets its own ``WriteResult``. CreateMultiple and
UpdateMultiple are not used: they are all-or-nothing. Ids come back lower-case. Email addresses
in filters are sent as given (the caller normalises; Dataverse compares case-insensitively).
"""
from __future__ import annotations

import json
import re
import threading
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence, TypeVar

from shared.adapters.dataverse.auth import TokenProvider, token_provider_from_settings
from shared.adapters.dataverse.errors import (DataverseAmbiguous, DataverseAuthError, DataverseBadRequest,
                                              DataverseError, DataverseNotFound, error_for, parse_error_body)
from shared.adapters.dataverse.odata import (BatchOp, PartResponse, chunk_values, guid, id_from_entity_url,
                                             in_function, is_guid, literal, query_string)
from shared.adapters.dataverse.transport import DataverseTransport
from shared.adapters.dataverse.webhooks import WebhookRegistrations
from shared.domain.consent import EMAIL_COLUMNS, ContactPointType
from shared.domain.model import ConsentRow, Member, Purpose, SubscriptionList, Topic, WriteResult

T = TypeVar("T")

ENTITY_SETS = {"contact": "contacts", "lead": "leads"}
LIST_RELATIONSHIPS = {"contact": "listcontact_association", "lead": "listlead_association"}
LIST_MEMBER_TABLES = {2: "contact", 4: "lead"}  # list.createdfromcode
CONSENT_SET = "msdynmkt_contactpointconsent4s"
CONSENT_ID = "msdynmkt_contactpointconsent4id"
CONSENT_SELECT = ",".join((
    CONSENT_ID, "msdynmkt_contactpointvalue", "msdynmkt_contactpointtype", "msdynmkt_contactpointconsenttype",
    "msdynmkt_value", "_msdynmkt_purposeid_value", "_msdynmkt_topicid_value", "msdynmkt_source",
    "msdynmkt_reason", "modifiedon", "_modifiedby_value", "statecode"))
LIST_SELECT = "listid,listname,createdfromcode,statecode"
#: Added by the Outbound marketing solution; gone from orgs where that solution is uninstalled.
SUBSCRIPTION_FLAG = "msdyncrm_issubscription"
#: Dataverse's "Cannot insert duplicate key": adding a member who is already there.
DUPLICATE_KEY = "0x80040237"
_COLUMN = re.compile(r"^[a-z_][a-z0-9_]*$")

#: Domain keys of a consent write -> columns (option-set values pass through as ints).
CONSENT_FIELDS = {
    "contact_point_value": "msdynmkt_contactpointvalue",
    "contact_point_type": "msdynmkt_contactpointtype",
    "consent_type": "msdynmkt_contactpointconsenttype",
    "value": "msdynmkt_value",
    "source": "msdynmkt_source",
    "reason": "msdynmkt_reason",
    "logical_reason": "msdynmkt_logicalreason",
}


def _entity_set(table: str) -> str:
    try:
        return ENTITY_SETS[table]
    except KeyError:
        raise ValueError(f"member table must be 'contact' or 'lead', not {table!r}") from None


def _columns(columns: Iterable[str]) -> tuple[str, ...]:
    cols = tuple(columns)
    if not cols or not all(_COLUMN.match(c) for c in cols):
        raise ValueError("email columns must be logical column names")
    return cols


def key_range_filter(key: str, after: str | None, upto: str | None, filter: str | None = None) -> str | None:
    """``filter and key gt after and key le upto``, leaving out what is None."""
    bounded = bool(after or upto)
    terms = [f"({filter})" if filter and bounded else filter,
             f"{key} gt {guid(after)}" if after else None, f"{key} le {guid(upto)}" if upto else None]
    return " and ".join(t for t in terms if t) or None


def _lower(value: Any) -> str | None:
    return str(value).lower() if value else None


def _int(value: Any) -> int | None:
    return int(value) if value is not None else None


def to_write_result(part: PartResponse | None, id: str | None = None, *, ok_statuses: Sequence[int] = (),
                    ok_codes: Sequence[str] = ()) -> WriteResult:
    if part is None:
        return WriteResult(False, id, None, None, "no response for this request in the $batch")
    code, message = parse_error_body(part.body)
    if 200 <= part.status < 300 or part.status in ok_statuses or (code and code.lower() in ok_codes):
        created = id_from_entity_url(part.headers.get("odata-entityid"))
        return WriteResult(True, created or id, part.status)
    return WriteResult(False, id, part.status, code, message or f"HTTP {part.status}")


def member_select(table: str, email_columns: Sequence[str]) -> str:
    """The one $select of a contact or lead row, wherever the sync reads members. modifiedon rides
    along: the timeline rule's upper bound for when a flag became true."""
    return ",".join((f"{table}id", *email_columns, "donotbulkemail", "donotemail", "statecode", "modifiedon"))


def member_from_row(table: str, row: Mapping[str, Any], email_columns: Sequence[str]) -> Member:
    return Member(
        table=table,  # type: ignore[arg-type]
        id=str(row[f"{table}id"]).lower(),
        emails={c: row.get(c) for c in email_columns},
        donotbulkemail=bool(row.get("donotbulkemail")),
        donotemail=bool(row.get("donotemail")),
        active=row.get("statecode", 0) in (0, None),
        modified_on=row.get("modifiedon"),
    )


def consent_from_row(row: Mapping[str, Any]) -> ConsentRow:
    return ConsentRow(
        id=str(row[CONSENT_ID]).lower(),
        contact_point_value=row.get("msdynmkt_contactpointvalue"),
        contact_point_type=_int(row.get("msdynmkt_contactpointtype")),
        consent_type=_int(row.get("msdynmkt_contactpointconsenttype")),
        value=_int(row.get("msdynmkt_value")),
        purpose_id=_lower(row.get("_msdynmkt_purposeid_value")),
        topic_id=_lower(row.get("_msdynmkt_topicid_value")),
        source=_int(row.get("msdynmkt_source")),
        reason=row.get("msdynmkt_reason"),
        modified_on=row.get("modifiedon"),
        active=row.get("statecode", 0) in (0, None),
        modified_by=_lower(row.get("_modifiedby_value")),
    )


def list_from_row(row: Mapping[str, Any]) -> SubscriptionList:
    return SubscriptionList(
        id=str(row["listid"]).lower(),
        name=row.get("listname") or "",
        member_table=LIST_MEMBER_TABLES.get(_int(row.get("createdfromcode")) or 0),  # type: ignore[arg-type]
        # Without the Outbound solution's flag every list may serve as a subscription list.
        is_subscription=bool(row.get(SUBSCRIPTION_FLAG)) if SUBSCRIPTION_FLAG in row else True,
        active=row.get("statecode", 0) in (0, None),
    )


def consent_columns(fields: Mapping[str, Any]) -> dict[str, Any]:
    """A consent write in domain keys -> the row's columns and lookup binds."""
    body: dict[str, Any] = {}
    for key, value in fields.items():
        if key in CONSENT_FIELDS:
            body[CONSENT_FIELDS[key]] = value
        elif key == "purpose_id":
            body["msdynmkt_purposeId@odata.bind"] = f"/msdynmkt_purposes({guid(value)})"
        elif key == "topic_id":
            if value:
                body["msdynmkt_topicId@odata.bind"] = f"/msdynmkt_topics({guid(value)})"
            else:
                body["msdynmkt_topicId@odata.bind"] = None
        elif key.startswith("msdynmkt_"):  # already a column
            body[key] = value
        else:
            raise ValueError(f"unknown consent field {key!r}")
    return body


# --- write operations as $batch parts (the typed methods below and the sync gateway share them) ---

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


#: Member flags whose audit history can date an opt-out, and how many of a member's newest audit
#: rows are looked through for the flag's last change (one page, one request).
AUDITED_FLAGS = ("donotbulkemail", "donotemail")
AUDIT_DEPTH = 50

#: How each write's answer is read: already a member / already gone means the goal holds.
ADD_MEMBER_OK = {"ok_codes": (DUPLICATE_KEY,)}
REMOVE_MEMBER_OK = {"ok_statuses": (404,)}


class DataverseClient(DataverseTransport, WebhookRegistrations):
    """Dataverse Web API client for Straddle. Thread-safe; build one per process."""

    def __init__(self, url: str, tokens: TokenProvider, **transport: Any):
        super().__init__(url, tokens, **transport)
        self._user_id: str | None = None
        self._organization_id: str | None = None
        self._listmember_query: bool | None = None  # None: not yet probed
        self._audit_history: bool | None = None  # None: not yet asked; False: the service refuses it
        self._column_numbers: dict[str, dict[str, int]] = {}  # table -> audited flag -> ColumnNumber
        self._outbound_solution: bool | None = None  # None: not yet probed
        self._removal: str | None = None  # REMOVAL_ACTION or REMOVAL_ROW; None: not yet known
        self._probe_lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Any, **overrides: Any) -> "DataverseClient":
        settings.require("dataverse_url", purpose="Dataverse")
        kw: dict[str, Any] = dict(timeout=settings.dataverse_timeout_seconds,
                                  retry_budget=settings.dataverse_retry_budget_seconds,
                                  page_size=min(settings.dataverse_page_size, 5000),
                                  # a connection for each of the nightly scan's concurrent readers
                                  pool_maxsize=max(16, getattr(settings, "reconcile_readers", 16)))
        kw.update(overrides)
        tokens = kw.pop("tokens", None) or token_provider_from_settings(settings)
        return cls(settings.dataverse_url, tokens, **kw)

    # --- identity ---------------------------------------------------------------------------

    def who_am_i(self) -> str:
        """The calling user's systemuserid (the sync's application user), cached."""
        if self._user_id is None:
            self._learn_identity()
        return self._user_id  # type: ignore[return-value]

    def organization_id(self) -> str:
        """The environment's organization id (WhoAmI's OrganizationId), cached: what every genuine
        notification of this environment carries in its OrganizationId."""
        if self._organization_id is None:
            self._learn_identity()
            if self._organization_id is None:
                raise DataverseError("WhoAmI answered without an OrganizationId", kind="GET WhoAmI")
        return self._organization_id

    def _learn_identity(self) -> None:
        body = self.get_json("WhoAmI")
        self._organization_id = str(body.get("OrganizationId") or "").lower() or None
        self._user_id = str(body["UserId"]).lower()

    # --- members (contacts / leads) ---------------------------------------------------------

    def members_by_emails(self, emails: Iterable[str], table: str = "contact",
                          email_columns: Sequence[str] = EMAIL_COLUMNS) -> list[Member]:
        """Active and inactive members holding any of the addresses in any of the columns."""
        entity_set, cols = _entity_set(table), _columns(email_columns)
        found: dict[str, Member] = {}
        for chunk in chunk_values(emails, copies=len(cols)):
            flt = " or ".join(in_function(c, chunk) for c in cols)
            for row in self.query_rows(entity_set, {"$select": member_select(table, cols), "$filter": flt}):
                m = member_from_row(table, row, cols)
                found.setdefault(m.id, m)
        return list(found.values())

    def members_by_ids(self, ids: Iterable[str], table: str = "contact",
                       email_columns: Sequence[str] = EMAIL_COLUMNS) -> list[Member]:
        entity_set, cols = _entity_set(table), _columns(email_columns)
        found: dict[str, Member] = {}
        for chunk in chunk_values(guid(i) for i in ids):
            params = {"$select": member_select(table, cols), "$filter": in_function(f"{table}id", chunk)}
            for row in self.query_rows(entity_set, params):
                m = member_from_row(table, row, cols)
                found.setdefault(m.id, m)
        return list(found.values())

    def list_members(self, list_id: str, table: str = "contact",
                     email_columns: Sequence[str] = EMAIL_COLUMNS) -> Iterator[Member]:
        """Every member of a list, page by page."""
        _entity_set(table)
        cols = _columns(email_columns)
        path = f"lists({guid(list_id)})/{LIST_RELATIONSHIPS[table]}"
        try:
            for row in self.query_rows(path, {"$select": member_select(table, cols)}):
                yield member_from_row(table, row, cols)
        except DataverseNotFound as exc:
            raise DataverseNotFound(f"list {guid(list_id)} not found", status=exc.status, code=exc.code,
                                    kind=exc.kind) from None

    def lists_of_members(self, member_ids: Iterable[str], table: str = "contact") -> dict[str, set[str]]:
        """member id -> ids of the lists it belongs to (every id asked for is a key).

        Fewest requests first: one query per chunk of ids on the ``listmember`` intersect table.
        Where the service does not expose that table, either one filtered query per list of the
        member's kind (when lists are fewer than members) or one navigation query per member.
        """
        entity_set = _entity_set(table)
        ids = list(dict.fromkeys(guid(i) for i in member_ids))
        out: dict[str, set[str]] = {i: set() for i in ids}
        if not ids:
            return out
        if self._listmember_query is not False:
            try:
                for chunk in chunk_values(ids):
                    params = {"$select": "_listid_value,_entityid_value", "$filter": in_function("entityid", chunk)}
                    for row in self.query_rows("listmembers", params):
                        member = _lower(row.get("_entityid_value") or row.get("entityid"))
                        list_id = _lower(row.get("_listid_value") or row.get("listid"))
                        if member in out and list_id:
                            out[member].add(list_id)
                self._listmember_query = True
                return out
            except (DataverseBadRequest, DataverseNotFound):
                if self._listmember_query:  # it worked before: this failure is real
                    raise
                self._listmember_query = False
                out = {i: set() for i in ids}
        relationship = LIST_RELATIONSHIPS[table]
        chunks = list(chunk_values(ids))
        if len(ids) > 2:
            code = next(c for c, t in LIST_MEMBER_TABLES.items() if t == table)
            list_ids = [str(r["listid"]).lower() for r in
                        self.query_rows("lists", {"$select": "listid", "$filter": f"createdfromcode eq {code}"})]
            if len(list_ids) * len(chunks) < len(ids):
                for list_id in list_ids:
                    for chunk in chunks:
                        params = {"$select": f"{table}id", "$filter": in_function(f"{table}id", chunk)}
                        for row in self.query_rows(f"lists({list_id})/{relationship}", params):
                            out[str(row[f"{table}id"]).lower()].add(list_id)
                return out
        for member in ids:
            try:
                for row in self.query_rows(f"{entity_set}({member})/{relationship}", {"$select": "listid"}):
                    out[member].add(str(row["listid"]).lower())
            except DataverseNotFound:
                pass  # a deleted member belongs to no list
        return out

    def list_joined_at(self, pairs: Iterable[tuple[str, str]]) -> dict[tuple[str, str], str | None]:
        """(list id, member id) -> when the member joined the list (``listmember.createdon``), None
        when unknown: not a member, or the service refuses the intersect table (then it is not
        asked again in this process; the sandbox serves it, as Dataverse documents)."""
        wanted = list(dict.fromkeys((guid(l), guid(m)) for l, m in pairs))
        out: dict[tuple[str, str], str | None] = dict.fromkeys(wanted)
        if not wanted or self._listmember_query is False:
            return out
        try:
            for list_id, params in _listmember_queries(wanted, "createdon,_entityid_value"):
                for row in self.query_rows("listmembers", params):
                    key = (list_id, _lower(row.get("_entityid_value")))
                    if key in out:
                        out[key] = row.get("createdon")
            self._listmember_query = True
        except (DataverseBadRequest, DataverseNotFound):
            if self._listmember_query:  # it worked before: this failure is real
                raise
            self._listmember_query = False
        return out

    def flag_set_at(self, table: str, member_id: str, column: str) -> str | None:
        """When the member's flag ``column`` (true now) last changed, from Dataverse's audit history:
        the ``createdon`` of the newest audit row of the member (Create or Update) whose
        ``attributemask`` holds the column's ColumnNumber. The change functions
        (RetrieveAttributeChangeHistory) do not say when through the Web API, so the audit table
        is read: one request (after one metadata read per table and process). None when auditing
        is off, no such row is among the newest ``AUDIT_DEPTH``, or the service refuses the audit
        table (then it is not asked again in this process)."""
        if column not in AUDITED_FLAGS or self._audit_history is False:
            return None
        _entity_set(table)
        try:
            number = self._flag_column_numbers(table).get(column)
            if number is None:
                return None
            params = {"$select": "createdon,attributemask",
                      "$filter": f"_objectid_value eq {guid(member_id)} and objecttypecode eq '{table}' "
                                 "and (operation eq 1 or operation eq 2)",
                      "$orderby": "createdon desc", "$top": str(AUDIT_DEPTH)}
            rows = self.get_json("audits", params).get("value") or []
            self._audit_history = True
        except (DataverseAuthError, DataverseBadRequest, DataverseNotFound):
            self._audit_history = False  # no prvReadAuditSummary, or no audit table: fall back to modifiedon
            return None
        for row in rows:  # newest first: the last change of a flag that is true now set it
            mask = {p.strip() for p in str(row.get("attributemask") or "").split(",")}
            if str(number) in mask and row.get("createdon"):
                return str(row["createdon"])
        return None

    def _flag_column_numbers(self, table: str) -> dict[str, int]:
        if table not in self._column_numbers:
            flt = " or ".join(f"LogicalName eq '{c}'" for c in AUDITED_FLAGS)
            rows = self.get_json(f"EntityDefinitions(LogicalName='{table}')/Attributes",
                                 {"$select": "LogicalName,ColumnNumber", "$filter": flt}).get("value") or []
            self._column_numbers[table] = {str(r["LogicalName"]): int(r["ColumnNumber"]) for r in rows
                                           if r.get("LogicalName") and isinstance(r.get("ColumnNumber"), int)}
        return self._column_numbers[table]

    def add_list_members(self, items: Sequence[tuple[str, str, str]]) -> list[WriteResult]:
        """(list id, member table, member id) -> joined; already a member counts as ok."""
        parts = self.batch([add_member_op(l, t, m) for l, t, m in items])
        return [to_write_result(p, guid(m), **ADD_MEMBER_OK) for p, (_, _, m) in zip(parts, items)]

    def remove_list_members(self, items: Sequence[tuple[str, str, str]]) -> list[WriteResult]:
        """(list id, member table, member id) -> left; not a member (any more) counts as ok."""
        return self.write([(MemberRemoval(l, t, m), guid(m), REMOVE_MEMBER_OK) for l, t, m in items])

    # --- writes in $batch, member removals the environment's way ------------------------------

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

    # --- consent ----------------------------------------------------------------------------

    def consent_rows(self, emails: Iterable[str], *, purpose_ids: Iterable[str] | None = None,
                     topic_ids: Iterable[str] | None = None, consent_type: int | None = None,
                     channel: int = ContactPointType.EMAIL) -> list[ConsentRow]:
        """Every consent row (duplicates and inactive ones too) for these contact points."""
        extra = [f"msdynmkt_contactpointtype eq {int(channel)}"]
        if consent_type is not None:
            extra.append(f"msdynmkt_contactpointconsenttype eq {int(consent_type)}")
        for column, ids in (("_msdynmkt_purposeid_value", purpose_ids), ("_msdynmkt_topicid_value", topic_ids)):
            if ids is not None:
                wanted = sorted({guid(i) for i in ids})
                if not wanted:
                    return []
                extra.append("(" + " or ".join(f"{column} eq {i}" for i in wanted) + ")")
        rows: list[ConsentRow] = []
        seen: set[str] = set()
        for chunk in chunk_values(emails):
            flt = " and ".join([in_function("msdynmkt_contactpointvalue", chunk), *extra])
            for row in self.query_rows(CONSENT_SET, {"$select": CONSENT_SELECT, "$filter": flt}):
                c = consent_from_row(row)
                if c.id not in seen:
                    seen.add(c.id)
                    rows.append(c)
        return rows

    def create_consent_rows(self, rows: Sequence[Mapping[str, Any]]) -> list[WriteResult]:
        """Each dict: contact_point_value, consent_type, value, purpose_id, topic_id|None, source, reason."""
        return [to_write_result(p) for p in self.batch([consent_create_op(r) for r in rows])]

    def update_consent_rows(self, updates: Sequence[tuple[str, Mapping[str, Any]]]) -> list[WriteResult]:
        """(row id, fields in the same keys as create) -> PATCH with If-Match: *."""
        parts = self.batch([consent_update_op(i, f) for i, f in updates])
        return [to_write_result(p, guid(i)) for p, (i, _) in zip(parts, updates)]

    # --- reference data ---------------------------------------------------------------------

    def purposes(self) -> list[Purpose]:
        params = {"$select": "msdynmkt_purposeid,msdynmkt_name,msdynmkt_type"}
        return [_purpose(r) for r in self.query_rows("msdynmkt_purposes", params)]

    def topics(self) -> list[Topic]:
        params = {"$select": "msdynmkt_topicid,msdynmkt_name,_msdynmkt_purposeid_value"}
        return [_topic(r) for r in self.query_rows("msdynmkt_topics", params)]

    def outbound_solution(self) -> bool:
        """Whether the list table has the Outbound marketing solution's columns (probed once
        through the metadata API): on an org without that solution they do not exist, and naming
        one in a query is a 400."""
        with self._probe_lock:  # threads share the client: probe once
            if self._outbound_solution is None:
                self._outbound_solution = self._probe_outbound_solution()
        return self._outbound_solution

    def _probe_outbound_solution(self) -> bool:
        rows = self.get_json("EntityDefinitions(LogicalName='list')/Attributes",
                             {"$select": "LogicalName", "$filter": f"LogicalName eq {literal(SUBSCRIPTION_FLAG)}"})
        return bool(rows.get("value"))

    def _list_select(self) -> str:
        return f"{LIST_SELECT},{SUBSCRIPTION_FLAG}" if self.outbound_solution() else LIST_SELECT

    def marketing_lists(self, subscription_only: bool = False) -> list[SubscriptionList]:
        """Lists; ``subscription_only`` keeps those flagged as subscription lists (without the
        Outbound solution there is no such flag, and every list is returned)."""
        select = self._list_select()
        flt = f"{SUBSCRIPTION_FLAG} eq true" if subscription_only and SUBSCRIPTION_FLAG in select else None
        return [list_from_row(r) for r in self.query_rows("lists", {"$select": select, "$filter": flt})]

    def resolve_list(self, name_or_id: str) -> SubscriptionList:
        return self._resolve("list", "lists", "listname", self._list_select(), name_or_id, list_from_row)

    def resolve_purpose(self, name_or_id: str) -> Purpose:
        return self._resolve("purpose", "msdynmkt_purposes", "msdynmkt_name",
                             "msdynmkt_purposeid,msdynmkt_name,msdynmkt_type", name_or_id, _purpose)

    def resolve_topic(self, name_or_id: str) -> Topic:
        return self._resolve("topic", "msdynmkt_topics", "msdynmkt_name",
                             "msdynmkt_topicid,msdynmkt_name,_msdynmkt_purposeid_value", name_or_id, _topic)

    def _resolve(self, what: str, entity_set: str, name_column: str, select: str, name_or_id: str,
                 convert: Callable[[Mapping[str, Any]], T]) -> T:
        if is_guid(name_or_id):
            try:
                return convert(self.get_json(f"{entity_set}({guid(name_or_id)})", {"$select": select}))
            except DataverseNotFound as exc:
                raise DataverseNotFound(f"{what} {guid(name_or_id)} not found", status=404, code=exc.code,
                                        kind=exc.kind) from None
        params = {"$select": select, "$filter": f"{name_column} eq {literal(name_or_id.strip())}"}
        rows = self.get_json(entity_set, params).get("value") or []
        if not rows:
            raise DataverseNotFound(f"{what} {name_or_id!r} not found", status=404)
        if len(rows) > 1:
            raise DataverseAmbiguous(f"{what} name {name_or_id!r} matches {len(rows)} rows; use its id")
        return convert(rows[0])

    # --- key ranges (the nightly scan's partitions) -----------------------------------------

    def key_pages(self, path: str, key: str, select: str, filter: str | None = None, after: str | None = None,
                  upto: str | None = None) -> Iterator[tuple[list[dict], bool]]:
        """Rows with ``after < key <= upto`` in key order, page by page, with whether more follow.
        Dataverse compares and sorts GUID keys in SQL Server's uniqueidentifier order."""
        params = {"$select": select, "$filter": key_range_filter(key, after, upto, filter), "$orderby": key}
        return self.iter_pages_more(path, params, affinity=False)

    def largest_key(self, path: str, key: str, filter: str | None = None, after: str | None = None,
                    upto: str | None = None) -> str | None:
        """The largest key (SQL Server order) of the rows ``filter`` selects with ``after < key <= upto``;
        None when there are none."""
        params = {"$select": key, "$filter": key_range_filter(key, after, upto, filter), "$orderby": f"{key} desc",
                  "$top": "1"}
        rows = self.get_json(path, params, affinity=False).get("value") or []
        return _lower(rows[0].get(key)) if rows else None

    # --- generic ----------------------------------------------------------------------------

    def iter_rows(self, entity_set: str, select: str | Sequence[str], filter: str | None = None,
                  page_size: int | None = None) -> Iterator[dict]:
        """Streams raw rows page by page (for the nightly reconciliation); ``filter`` is OData text."""
        cols = select.split(",") if isinstance(select, str) else list(select)
        return self.query_rows(entity_set, {"$select": ",".join(c.strip() for c in cols) or None, "$filter": filter},
                               page_size)


def _listmember_queries(pairs: Sequence[tuple[str, str]], select: str) -> Iterator[tuple[str, dict[str, str]]]:
    """(list id, query params) on the listmember table for (list id, member id) pairs: one query
    per list and chunk of members (``_listid_value eq`` and ``In`` on entityid)."""
    by_list: dict[str, list[str]] = {}
    for list_id, member in pairs:
        by_list.setdefault(list_id, []).append(member)
    for list_id, members in by_list.items():
        for chunk in chunk_values(members):
            yield list_id, {"$select": select,
                            "$filter": f"_listid_value eq {list_id} and {in_function('entityid', chunk)}"}


def _purpose(r: Mapping[str, Any]) -> Purpose:
    return Purpose(str(r["msdynmkt_purposeid"]).lower(), r.get("msdynmkt_name") or "", _int(r.get("msdynmkt_type")))


def _topic(r: Mapping[str, Any]) -> Topic:
    return Topic(str(r["msdynmkt_topicid"]).lower(), r.get("msdynmkt_name") or "",
                 _lower(r.get("_msdynmkt_purposeid_value")))
