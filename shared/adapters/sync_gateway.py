"""The sync engine's view of Dataverse (the SyncGateway port) over the Web API client.

Request economy is the point: one read round is one ``$batch`` of GETs (members by id, members
by email for contacts and leads, consent rows by email; list memberships ride along through
``$expand``), and all the writes of a batch of events are one ``$batch`` (or a few, at 1,000
operations each). Dataverse documents ``$batch`` for exactly this: fewer round trips, and GET
queries whose URLs would be too long on their own.
"""
from __future__ import annotations

import json
import logging
from typing import Any, Collection, Iterator, Mapping, Sequence

from shared.adapters.dataverse.client import (
    ADD_MEMBER_OK,
    CONSENT_ID,
    CONSENT_SELECT,
    CONSENT_SET,
    LIST_RELATIONSHIPS,
    REMOVE_MEMBER_OK,
    DataverseClient,
    MemberRemoval,
    _columns,
    _entity_set,
    add_member_op,
    consent_create_op,
    consent_from_row,
    consent_update_op,
    member_from_row,
    member_select,
    member_update_op,
)
from shared.adapters.dataverse.errors import DataverseError, DataverseThrottled, DataverseUnavailable
from shared.adapters.dataverse.odata import BatchOp, PartResponse, chunk_values, guid, in_function, query_string
from shared.domain.consent import ConsentLogicalReason, ConsentSource, ConsentValue, ContactPointType, normalise_email
from shared.domain.mappings import Mappings
from shared.domain.model import ConsentRow, Member, WriteResult
from shared.domain.partitions import ScanSource
from shared.domain.planner import Action, AddToOptOutList, OptOutConsent, RemoveFromList, SetDoNotBulkEmail
from shared.ports import SyncRead, TransientError

log = logging.getLogger(__name__)

MEMBER_TABLES = ("contact", "lead")


#: Addresses remembered as members hold them (normalised -> trimmed), at most this many.
HELD_ADDRESSES_MAX = 200_000


class DataverseSyncGateway:
    def __init__(self, client: DataverseClient):
        self.client = client
        # A consent row Straddle creates keeps the address as the member holds it (trimmed, case
        # kept): RTM finds the row whatever its own matching does. Filled by reads, used by writes.
        self._held: dict[str, str] = {}

    def sync_user_id(self) -> str:
        with _transient():
            return self.client.who_am_i()

    def organization_id(self) -> str:
        with _transient():
            return self.client.organization_id()

    # --- reads ----------------------------------------------------------------------------------

    def read(self, member_ids: Mapping[str, Collection[str]], emails: Collection[str], mappings: Mappings) -> SyncRead:
        cols = mappings.email_columns
        ops: list[tuple[str, BatchOp]] = []  # (what, op)
        for table, ids in member_ids.items():
            # An id that is not a GUID names no row: it ends up "missing", it does not fail the batch.
            for chunk in chunk_values(sorted(g for g in map(_guid_or_none, ids) if g)):
                ops.append((table, self._member_query(table, cols, in_function(f"{table}id", chunk))))
        wanted = sorted(emails)
        if wanted:
            for table in MEMBER_TABLES:
                for chunk in chunk_values(wanted, copies=len(cols)):
                    flt = " or ".join(in_function(c, chunk) for c in cols)
                    ops.append((table, self._member_query(table, cols, flt)))
            for chunk in chunk_values(wanted):
                flt = f"{in_function('msdynmkt_contactpointvalue', chunk)} and msdynmkt_contactpointtype eq {ContactPointType.EMAIL.value}"
                ops.append(("consent", BatchOp("GET", f"{CONSENT_SET}?" + query_string(
                    {"$select": CONSENT_SELECT, "$filter": flt}))))
        out = SyncRead()
        if not ops:
            return out
        relevant = mappings.relevant_lists
        seen_members: set[tuple[str, str]] = set()
        seen_rows: set[str] = set()
        with _transient():
            parts = self.client.batch([op for _, op in ops])
            for (what, op), part in zip(ops, parts):
                for row in self._rows(op, part):
                    if what == "consent":
                        c = consent_from_row(row)
                        if c.id not in seen_rows:
                            seen_rows.add(c.id)
                            out.consent_rows.append(c)
                        continue
                    m = member_from_row(what, row, cols)
                    if (m.table, m.id) in seen_members:
                        continue
                    seen_members.add((m.table, m.id))
                    lists = {str(r.get("listid", "")).lower() for r in row.get(LIST_RELATIONSHIPS[what]) or ()}
                    out.members.append((m, frozenset(lists & relevant)))
        for table, ids in member_ids.items():
            for i in ids:
                if (table, _guid_or_none(i) or i) not in seen_members:
                    out.missing_members.add((table, i))
        self._remember_addresses(out)
        return out

    def _remember_addresses(self, read: SyncRead) -> None:
        if len(self._held) > HELD_ADDRESSES_MAX:
            self._held = {}
        held = self._held
        for m, _ in read.members:
            for raw in m.emails.values():
                key = normalise_email(raw)
                if key:
                    held[key] = raw.strip()  # type: ignore[union-attr]
        for c in read.consent_rows:  # a member's form wins over a consent row's
            key = normalise_email(c.contact_point_value)
            if key and key not in held:
                held[key] = c.contact_point_value.strip()  # type: ignore[union-attr]

    def _member_query(self, table: str, cols: Sequence[str], flt: str) -> BatchOp:
        select = member_select(table, cols)
        expand = f"{LIST_RELATIONSHIPS[table]}($select=listid)"
        return BatchOp("GET", f"{_entity_set(table)}?" + query_string({"$select": select, "$filter": flt, "$expand": expand}))

    def _rows(self, op: BatchOp, part: PartResponse | None) -> list[dict[str, Any]]:
        if part is None or part.status != 200:
            status = part.status if part else None
            if status in (429, 503, None) or (status or 0) >= 500:
                raise TransientError(f"Dataverse read failed inside $batch ({status})")
            raise DataverseError(f"Dataverse rejected a sync read ({status})", status=status, kind=op.kind)
        body = json.loads(part.body or b"{}")
        rows = list(body.get("value") or [])
        link = body.get("@odata.nextLink")
        if link:  # more than a page for one chunk: rare, read the rest directly
            rows.extend(self.client.query_rows(link))
        return rows

    def consent_rows_by_ids(self, row_ids: Collection[str]) -> list[ConsentRow]:
        out: list[ConsentRow] = []
        with _transient():
            for chunk in chunk_values(sorted(g for g in map(_guid_or_none, row_ids) if g)):
                params = {"$select": CONSENT_SELECT, "$filter": in_function("msdynmkt_contactpointconsent4id", chunk)}
                out.extend(consent_from_row(r) for r in self.client.query_rows(CONSENT_SET, params))
        return out

    def joined_at(self, pairs: Collection[tuple[tuple[str, str], str]]) -> dict[tuple[tuple[str, str], str], str | None]:
        """(member, list id) -> listmember createdon: when an opt-out list join happened (timeline
        evidence). Asked only where a person's re-consent meets that join, so rarely a request."""
        keyed = {(list_id, _guid_or_none(member[1]) or member[1]): (member, list_id) for member, list_id in pairs}
        with _transient():
            found = self.client.list_joined_at([k for k in keyed if _guid_or_none(k[1])])
        return {pair: found.get(k) for k, pair in keyed.items()}

    def flag_set_at(self, items: Collection[tuple[tuple[str, str], str]]) -> dict[tuple[tuple[str, str], str], str | None]:
        """(member, flag column) -> when the flag became true, from Dataverse's audit history
        (timeline evidence). Asked only where a re-consent meets a flag dated by nothing better
        than the member's modifiedon: one request per such conflict, none on the normal path."""
        out: dict[tuple[tuple[str, str], str], str | None] = {}
        with _transient():
            for member, column in items:
                out[(member, column)] = (self.client.flag_set_at(member[0], member[1], column)
                                         if _guid_or_none(member[1]) else None)
        return out

    # --- the whole tenant, streamed (nightly reconciliation) -------------------------------------

    def _scan_query(self, source: ScanSource, columns: Sequence[str]) -> tuple[str, str, str, str | None]:
        """(path, key column, $select, $filter) of a scan source; every select comes from the client's one place."""
        if source.phase == "consent":
            return CONSENT_SET, CONSENT_ID, CONSENT_SELECT, f"msdynmkt_contactpointtype eq {ContactPointType.EMAIL.value}"
        table = str(source.table)
        select = member_select(table, _columns(columns))
        if source.phase == "list_members":
            return f"lists({guid(str(source.list_id))})/{LIST_RELATIONSHIPS[table]}", f"{table}id", select, None
        return _entity_set(table), f"{table}id", select, None

    def scan_pages(self, source: ScanSource, columns: Sequence[str], after: str | None = None,
                   upto: str | None = None) -> Iterator[tuple[list[ConsentRow] | list[Member], bool]]:
        path, key, select, flt = self._scan_query(source, columns)
        for rows, more in self.client.key_pages(path, key, select, flt, after, upto):
            if source.phase == "consent":
                yield [consent_from_row(r) for r in rows], more
            else:
                yield [member_from_row(str(source.table), r, columns) for r in rows], more

    def largest_key(self, source: ScanSource, columns: Sequence[str], after: str | None = None,
                    upto: str | None = None) -> str | None:
        path, key, _, flt = self._scan_query(source, columns)
        return self.client.largest_key(path, key, flt, after, upto)

    def request_count(self) -> int:
        return self.client.total_requests

    def parallelism_hint(self) -> int | None:
        return self.client.dop_hint

    # --- writes ---------------------------------------------------------------------------------

    def write(self, actions: Sequence[Action], marker: str) -> list[WriteResult]:
        items = [(*self._op(a, marker), a) for a in actions]
        with _transient():
            return self.client.write([(op, _target_id(a), accept) for op, accept, a in items])

    def _op(self, a: Action, marker: str) -> tuple[BatchOp | MemberRemoval, dict[str, Any]]:
        reason = f"{marker} {a.rule}" + (f" (event {a.cause[:8]})" if a.cause else "")
        if isinstance(a, OptOutConsent):
            # Every column the table requires (value, source, logical reason; on create also the
            # channel, address and purpose), as Microsoft's guidance for writing consent rows has it.
            fields: dict[str, Any] = {"value": ConsentValue.OPTED_OUT.value, "source": ConsentSource.INTERNAL.value,
                                      "logical_reason": ConsentLogicalReason.NO_REASONS.value, "reason": reason[:500]}
            if a.row_id is not None:
                return consent_update_op(a.row_id, fields), {}
            fields.update(contact_point_value=self._held.get(a.email, a.email), consent_type=a.consent_type,
                          purpose_id=a.purpose_id, topic_id=a.topic_id)
            return consent_create_op(fields), {}
        if isinstance(a, SetDoNotBulkEmail):
            return member_update_op(*a.member, {"donotbulkemail": True}), {}
        if isinstance(a, RemoveFromList):  # the action or the listmember row, as the environment offers
            return MemberRemoval(a.list_id, *a.member), REMOVE_MEMBER_OK
        if isinstance(a, AddToOptOutList):
            return add_member_op(a.list_id, *a.member), ADD_MEMBER_OK
        raise TypeError(f"unknown action {type(a).__name__}")


def _guid_or_none(value: str) -> str | None:
    try:
        return guid(value)
    except (ValueError, AttributeError):
        return None


def _target_id(a: Action) -> str | None:
    if isinstance(a, OptOutConsent):
        return a.row_id
    return a.member[1]


class _transient:
    """Maps the client's exhausted-retry errors onto the engine's TransientError."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc is not None and isinstance(exc, (DataverseThrottled, DataverseUnavailable)):
            raise TransientError(str(exc)) from exc
        if exc is not None and isinstance(exc, (ConnectionError, TimeoutError)):
            raise TransientError(str(exc)) from exc
        return False
