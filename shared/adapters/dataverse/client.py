"""The typed Dataverse operations the sync needs, returning the values of ``shared.domain.model``.

Reads stream pages; writes go through ``$batch`` (``writes``); the nightly scan's range reads are in
``ranges``, tables, columns and row conversions in ``rows``, webhook registration in ``webhooks``.
Email addresses in filters are sent as given (the caller normalises; Dataverse compares
case-insensitively).
"""
from __future__ import annotations

import threading
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence, TypeVar

from shared.adapters.dataverse.auth import TokenProvider, token_provider_from_settings
from shared.adapters.dataverse.errors import (DataverseAmbiguous, DataverseAuthError, DataverseBadRequest,
                                              DataverseError, DataverseNotFound)
from shared.adapters.dataverse.odata import chunk_values, guid, in_function, is_guid, literal
from shared.adapters.dataverse.ranges import KeyRanges
from shared.adapters.dataverse.rows import (CONSENT_ID, CONSENT_SELECT, CONSENT_SET, LIST_MEMBER_TABLES,
                                            LIST_RELATIONSHIPS, LIST_SELECT, SUBSCRIPTION_FLAG, _columns,
                                            _entity_set, _listmember_queries, _lower, _purpose, _topic,
                                            consent_from_row, list_from_row, member_from_row, member_select)
from shared.adapters.dataverse.transport import DataverseTransport
from shared.adapters.dataverse.webhooks import WebhookRegistrations
from shared.adapters.dataverse.writes import (ADD_MEMBER_OK, REMOVAL_ACTION, REMOVAL_ROW, REMOVE_MEMBER_OK,
                                              BatchWrites, MemberRemoval, add_member_op, consent_create_op,
                                              consent_update_op, delete_listmember_op, member_update_op,
                                              removal_action_missing)
from shared.domain.consent import EMAIL_COLUMNS, ContactPointType
from shared.domain.model import ConsentRow, Member, Purpose, SubscriptionList, Topic

#: What other modules import from here (the names now live in rows, writes and ranges).
__all__ = [
    "DataverseClient", "AUDITED_FLAGS", "AUDIT_DEPTH",
    "CONSENT_ID", "CONSENT_SELECT", "CONSENT_SET", "LIST_RELATIONSHIPS", "_columns", "_entity_set",
    "consent_from_row", "member_from_row", "member_select",
    "ADD_MEMBER_OK", "REMOVE_MEMBER_OK", "REMOVAL_ACTION", "REMOVAL_ROW", "MemberRemoval", "add_member_op",
    "consent_create_op", "consent_update_op", "delete_listmember_op", "member_update_op", "removal_action_missing",
]

T = TypeVar("T")

#: Member flags whose audit history can date an opt-out, and how many of a member's newest audit
#: rows are looked through for the flag's last change (one page, one request).
AUDITED_FLAGS = ("donotbulkemail", "donotemail")
AUDIT_DEPTH = 50


class DataverseClient(DataverseTransport, BatchWrites, KeyRanges, WebhookRegistrations):
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
    # --- generic ----------------------------------------------------------------------------

    def iter_rows(self, entity_set: str, select: str | Sequence[str], filter: str | None = None,
                  page_size: int | None = None) -> Iterator[dict]:
        """Streams raw rows page by page (for the nightly reconciliation); ``filter`` is OData text."""
        cols = select.split(",") if isinstance(select, str) else list(select)
        return self.query_rows(entity_set, {"$select": ",".join(c.strip() for c in cols) or None, "$filter": filter},
                               page_size)
