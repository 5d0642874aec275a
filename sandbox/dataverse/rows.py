"""The in-memory store's building blocks: a table's rows and indexes, a committed change (what
webhook steps fire on), ids as Dataverse parses and mints them."""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from .errors import BAD_QUERY, DataverseError
from .schema import Table

MAX_PAGE = 5000


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


def listmember_id(list_id: str, member_id: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_OID, f"listmember:{list_id}:{member_id}"))
