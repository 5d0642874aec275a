"""Dataverse's tables and columns as the sync names them, and rows turned into the values of
``shared.domain.model`` (and consent writes into columns). Ids come back lower-case."""
from __future__ import annotations

import re
from typing import Any, Iterable, Iterator, Mapping, Sequence

from shared.adapters.dataverse.odata import chunk_values, guid, in_function
from shared.domain.model import ConsentRow, Member, Purpose, SubscriptionList, Topic

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


def _lower(value: Any) -> str | None:
    return str(value).lower() if value else None


def _int(value: Any) -> int | None:
    return int(value) if value is not None else None


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
