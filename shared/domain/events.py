"""Change events: the compact, versioned messages that cross the Service Bus queue.

A change event says what changed in Dataverse (ids and changed values), where it came from
(origin time, initiating user) and nothing more: never the whole webhook body. The JSON form is
documented by ``docs/change-event.schema.json``; ``SCHEMA_VERSION`` changes whenever a reader of the
previous version would misread the new form (an added optional field, which earlier readers ignore
and later readers default, is not such a change).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal, Union

SCHEMA_VERSION = 1

#: The list membership messages under their other name: the SDK message (AddMember) or the Web API
#: action (AddMemberList). Microsoft's pages use both; Straddle accepts either and calls it by the first.
LIST_MESSAGE_ALIASES = {"AddMemberList": "AddMember", "RemoveMemberList": "RemoveMember",
                        "AddListMembersList": "AddListMembers"}

MemberTable = Literal["contact", "lead"]


@dataclass(frozen=True, slots=True)
class Origin:
    """Where and when a change happened in Dataverse."""

    time: str | None  # ISO 8601 UTC of the operation, from OperationCreatedOn
    user_id: str | None  # the user the operation ran as
    initiating_user_id: str | None  # the user who started it: the sync's own user marks an echo
    correlation_id: str | None
    organization_id: str | None
    depth: int | None


@dataclass(frozen=True, slots=True)
class ContactChanged:
    """A contact or lead was created, or its opt-out flags or email columns were updated.

    Values are the row's state after the change (Target laid over the post image); ``None``
    means the notification did not carry that column, not that it is empty.
    """

    changed: tuple[str, ...]
    donotbulkemail: bool | None = None
    donotemail: bool | None = None
    emails: dict[str, str | None] = field(default_factory=dict)
    # An Update's changed email columns before the change (from the pre-image): column -> address
    # (None: it was empty). A changed column missing here has an unknown old address.
    previous_emails: dict[str, str | None] = field(default_factory=dict)

    kind = "contact_changed"


@dataclass(frozen=True, slots=True)
class MembershipChanged:
    """Members joined or left one or more lists (AddMember, RemoveMember, Associate, ...)."""

    action: Literal["added", "removed"]
    list_ids: tuple[str, ...]
    member_ids: tuple[str, ...]
    member_table: MemberTable | None  # None: AddMember does not say; the list's type decides

    kind = "membership_changed"


@dataclass(frozen=True, slots=True)
class ConsentChanged:
    """An RTM consent row was created or updated; ``None`` means the notification did not say."""

    contact_point_value: str | None
    contact_point_type: int | None
    consent_type: int | None
    value: int | None
    purpose_id: str | None
    topic_id: str | None
    source: int | None
    reason: str | None

    kind = "consent_changed"


@dataclass(frozen=True, slots=True)
class RecordDeleted:
    """A contact or lead was deleted: its memberships and flags are gone with it."""

    kind = "record_deleted"


@dataclass(frozen=True, slots=True)
class RereadRecord:
    """Dataverse stripped the notification (over 256 KB): the row must be read again."""

    reason: str

    kind = "reread_record"


Change = Union[ContactChanged, MembershipChanged, ConsentChanged, RecordDeleted, RereadRecord]
KINDS = {c.kind: c for c in (ContactChanged, MembershipChanged, ConsentChanged, RecordDeleted, RereadRecord)}


@dataclass(frozen=True, slots=True)
class ChangeEvent:
    id: str  # deterministic: the same notification always yields the same id
    table: str
    record_id: str
    message: str
    origin: Origin
    change: Change

    @property
    def kind(self) -> str:
        return self.change.kind

    def to_dict(self) -> dict[str, Any]:
        return {
            "v": SCHEMA_VERSION,
            "id": self.id,
            "kind": self.change.kind,
            "table": self.table,
            "record_id": self.record_id,
            "message": self.message,
            "origin": _origin_dict(self.origin),
            "change": change_dict(self.change),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"), ensure_ascii=False)


def _origin_dict(o: Origin) -> dict[str, Any]:
    return {
        "time": o.time,
        "user_id": o.user_id,
        "initiating_user_id": o.initiating_user_id,
        "correlation_id": o.correlation_id,
        "organization_id": o.organization_id,
        "depth": o.depth,
    }


def change_dict(c: Change) -> dict[str, Any]:
    if isinstance(c, ContactChanged):
        out = {"changed": list(c.changed), "donotbulkemail": c.donotbulkemail,
               "donotemail": c.donotemail, "emails": dict(c.emails)}
        if c.previous_emails:
            out["previous_emails"] = dict(c.previous_emails)
        return out
    if isinstance(c, MembershipChanged):
        return {"action": c.action, "list_ids": list(c.list_ids), "member_ids": list(c.member_ids),
                "member_table": c.member_table}
    if isinstance(c, ConsentChanged):
        return {"contact_point_value": c.contact_point_value,
                "contact_point_type": c.contact_point_type, "consent_type": c.consent_type,
                "value": c.value, "purpose_id": c.purpose_id, "topic_id": c.topic_id,
                "source": c.source, "reason": c.reason}
    if isinstance(c, RereadRecord):
        return {"reason": c.reason}
    return {}


class EventFormatError(ValueError):
    """A queue message that is not a change event this version understands."""


def event_from_json(raw: bytes | str) -> ChangeEvent:
    """Decodes and checks a queue message; raises EventFormatError naming the first problem."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise EventFormatError(f"message body is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise EventFormatError("message body is not a JSON object")
    if data.get("v") != SCHEMA_VERSION:
        raise EventFormatError(f"unsupported change event version {data.get('v')!r}; this build reads {SCHEMA_VERSION}")
    kind = _field(data, "kind", str)
    if kind not in KINDS:
        raise EventFormatError(f"unknown change event kind {kind!r}")
    origin = _field(data, "origin", dict)
    c = _field(data, "change", dict)
    try:
        change: Change
        if kind == ContactChanged.kind:
            change = ContactChanged(tuple(_field(c, "changed", list)), c["donotbulkemail"], c["donotemail"],
                                    dict(_field(c, "emails", dict)),
                                    dict(_field(c, "previous_emails", dict)) if "previous_emails" in c else {})
        elif kind == MembershipChanged.kind:
            change = MembershipChanged(c["action"], tuple(_field(c, "list_ids", list)),
                                       tuple(_field(c, "member_ids", list)), c["member_table"])
        elif kind == ConsentChanged.kind:
            change = ConsentChanged(**{k: c[k] for k in ConsentChanged.__dataclass_fields__})
        elif kind == RereadRecord.kind:
            change = RereadRecord(c["reason"])
        else:
            change = RecordDeleted()
        event = ChangeEvent(
            id=_field(data, "id", str),
            table=_field(data, "table", str),
            record_id=_field(data, "record_id", str),
            message=_field(data, "message", str),
            origin=Origin(**{k: origin[k] for k in Origin.__dataclass_fields__}),
            change=change,
        )
        _check_types(event)
        return event
    except EventFormatError as exc:
        if str(exc).startswith(kind):
            raise
        raise EventFormatError(f"{kind} event: {exc}") from None
    except (KeyError, TypeError, ValueError) as exc:  # ValueError: e.g. dict() of a string
        raise EventFormatError(f"{kind} event is missing or mistypes {exc}") from None


_TEXT = (str, type(None))
_OPTION = (int, type(None))


def _check_types(e: ChangeEvent) -> None:
    """What the schema says, for the values the sync acts on: a hand-edited or foreign message
    must be parked at once, not fail the batch it arrived in over and over."""
    def need(ok: bool, what: str) -> None:
        if not ok:
            raise EventFormatError(f"{e.kind} event: {what}")

    need(bool(e.record_id), "record_id is empty")
    o = e.origin
    need(all(isinstance(v, _TEXT) for v in (o.time, o.user_id, o.initiating_user_id, o.correlation_id,
                                            o.organization_id)), "origin values must be strings or null")
    need(o.depth is None or (isinstance(o.depth, int) and not isinstance(o.depth, bool)), "origin.depth must be a number")
    c = e.change
    if isinstance(c, ContactChanged):
        need(all(isinstance(x, str) for x in c.changed), "changed must list column names")
        need(all(isinstance(v, (bool, type(None))) for v in (c.donotbulkemail, c.donotemail)), "flags must be booleans")
        need(all(isinstance(k, str) and isinstance(v, _TEXT) for k, v in c.emails.items()), "emails must map columns to text")
        need(all(isinstance(k, str) and isinstance(v, _TEXT) for k, v in c.previous_emails.items()),
             "previous_emails must map columns to text")
    elif isinstance(c, MembershipChanged):
        need(c.action in ("added", "removed"), "action must be added or removed")
        need(bool(c.list_ids) and bool(c.member_ids), "list_ids and member_ids must not be empty")
        need(all(isinstance(i, str) and i for i in (*c.list_ids, *c.member_ids)), "ids must be non-empty strings")
        need(c.member_table in ("contact", "lead", None), "member_table must be contact, lead or null")
    elif isinstance(c, ConsentChanged):
        need(all(isinstance(v, _TEXT) for v in (c.contact_point_value, c.reason)), "texts must be strings or null")
        need(all(isinstance(v, _OPTION) and not isinstance(v, bool)
                 for v in (c.contact_point_type, c.consent_type, c.value, c.source)), "option values must be numbers")
        need(all(isinstance(v, _TEXT) for v in (c.purpose_id, c.topic_id)), "purpose_id and topic_id must be text or null")
    elif isinstance(c, RereadRecord):
        need(isinstance(c.reason, str), "reason must be text")


def _field(data: dict[str, Any], name: str, kind: type) -> Any:
    value = data.get(name)
    if not isinstance(value, kind):
        raise EventFormatError(f"field {name!r} must be {kind.__name__}, got {type(value).__name__}")
    return value
