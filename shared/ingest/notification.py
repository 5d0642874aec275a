"""Dataverse webhook notification (a serialized RemoteExecutionContext) -> ChangeEvent.

Pure: no I/O. The shapes are those of docs/domain.md (change notifications): collections are arrays of
``{"key": ..., "value": ...}``, typed values carry ``__type``, dates look like
``/Date(1506384247000)/``. Every problem raises NotificationError naming the path and the
problem, so the caller can answer 400 without guessing.
"""
from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass
from typing import Any, Mapping

from shared.domain.consent import CONSENT_TABLE, EMAIL_COLUMNS, OPT_OUT_FLAGS, ConsentValue, ContactPointType
from shared.domain.triggers import is_personal_opt_in_event
from shared.domain.events import (
    LIST_MESSAGE_ALIASES,
    Change,
    ChangeEvent,
    ConsentChanged,
    ContactChanged,
    MembershipChanged,
    Origin,
    RecordDeleted,
    RereadRecord,
)

MEMBER_TABLES = ("contact", "lead")
MEMBERSHIP_RELATIONSHIPS = {"listcontact_association": "contact", "listlead_association": "lead"}
ADD_MESSAGES = ("AddMember", "AddListMembers")
SIZE_EXCEEDED_HEADER = "x-ms-dynamics-msg-size-exceeded"
CONTACT_COLUMNS = EMAIL_COLUMNS + OPT_OUT_FLAGS

#: Longest table, message, relationship or identifier name accepted: Dataverse's own are far shorter
#: (logical names 50 characters, schema names 100), so a longer one is not Dataverse's.
NAME_MAX = 128
#: Longest address accepted (a mailbox is at most 64 + 1 + 255 characters; Dataverse's own email
#: columns hold 100): a longer one is refused, not carried or logged.
ADDRESS_MAX = 320
#: Email-address columns of the notification (they reach the event and the sync).
_ADDRESS_COLUMNS = frozenset(EMAIL_COLUMNS) | {"msdynmkt_contactpointvalue"}

_GUID = re.compile(r"^\{?[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\}?$")
_DATE = re.compile(r"^/Date\((-?\d+)([+-]\d{4})?\)/$")


class ForeignOrganization(ValueError):
    """The notification names another organization than the one the app is configured for (a
    copied environment that kept the registration): it must never be processed here."""

    def __init__(self, organization_id: str | None):
        super().__init__("the notification is from another Dataverse organization")
        self.organization_id = organization_id


class NotificationError(ValueError):
    """The notification is malformed: ``path`` says where, ``problem`` says what."""

    def __init__(self, path: str, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


@dataclass(frozen=True, slots=True)
class Irrelevant:
    """A well-formed notification that no rule watches; nothing is enqueued."""

    reason: str


def parse_notification(body: bytes | str, headers: Mapping[str, str] | None = None,
                       organization_id: str | None = None) -> ChangeEvent | Irrelevant:
    """Parses, validates and reduces one notification. ``headers`` keys must be lower-case.
    ``organization_id``, when known, is the only organization accepted (ForeignOrganization)."""
    try:
        ctx = json.loads(body)
    except UnicodeDecodeError:
        raise NotificationError("body", "is not UTF-8 text") from None
    except ValueError as exc:
        raise NotificationError("body", f"malformed JSON ({exc})") from None
    if not isinstance(ctx, dict):
        raise NotificationError("body", f"expected a JSON object, got {_type_name(ctx)}")
    raw = body if isinstance(body, bytes) else body.encode("utf-8", "surrogatepass")
    if _SURROGATE_ESCAPE.search(raw):  # rare: only then walk every string (the fast path skips it)
        _reject_lone_surrogates(ctx, "")
    named = _short_guid(ctx.get("OrganizationId"))
    # One naming no organization (or not a GUID) is malformed: reduce_context answers that (400).
    if organization_id is not None and named is not None and not same_organization(named, organization_id):
        raise ForeignOrganization(named)
    # Microsoft documents only that the header is sent when the context was stripped, not its value.
    return reduce_context(ctx, SIZE_EXCEEDED_HEADER in (headers or {}))


def same_organization(named: Any, organization_id: str) -> bool:
    """Whether a notification's OrganizationId is ``organization_id``; one naming none is not."""
    return isinstance(named, str) and named.strip("{}").lower() == organization_id.strip("{}").lower()


def _short_guid(value: Any) -> str | None:
    """The GUID a notification names, if it is one: fit to log (anything else is not shown)."""
    return value.strip("{}").lower() if isinstance(value, str) and _GUID.match(value) else None


def reduce_context(ctx: dict[str, Any], size_exceeded: bool = False) -> ChangeEvent | Irrelevant:
    message = _required_str(ctx, "MessageName")
    message = LIST_MESSAGE_ALIASES.get(message, message)
    table = _required_str(ctx, "PrimaryEntityName").lower()
    record_id = _guid(ctx.get("PrimaryEntityId"), "PrimaryEntityId", required=True)
    origin = Origin(
        time=_date(ctx.get("OperationCreatedOn"), "OperationCreatedOn"),
        user_id=_guid(ctx.get("UserId"), "UserId"),
        initiating_user_id=_guid(ctx.get("InitiatingUserId"), "InitiatingUserId"),
        correlation_id=_optional_str(ctx, "CorrelationId"),
        # Required: Dataverse always sends it, and the worker drops an event of another organization.
        organization_id=_guid(ctx.get("OrganizationId"), "OrganizationId", required=True),
        depth=_optional_int(ctx, "Depth"),
    )
    # Identity parts that are not in the reduced event but tell two operations apart.
    identity = (_optional_str(ctx, "OperationId"), _optional_str(ctx, "RequestId"), _optional_int(ctx, "Stage"))

    change: Change | Irrelevant
    if size_exceeded:
        change = _reread(table, message)
    elif not ctx.get("InputParameters") and message != "Delete":
        # Stripped without the header, or a shape we do not know: a 400 would never be retried and
        # the event would be lost, so a watched record is read again instead.
        change = _reread(table, message, "no-input-parameters")
    else:
        inputs = _collection(ctx.get("InputParameters"), "InputParameters")
        if message in ("Associate", "Disassociate"):
            change = _association(message, inputs)
        elif table == "list" and message in ADD_MESSAGES + ("RemoveMember",):
            change = _list_member_message(message, inputs)
        elif table in MEMBER_TABLES and message in ("Create", "Update"):
            change = _contact(message, inputs, _images(ctx, "PostEntityImages"), ctx)
        elif table in MEMBER_TABLES and message == "Delete":
            change = RecordDeleted()
        elif table == CONSENT_TABLE and message in ("Create", "Update"):
            change = _consent(inputs, _images(ctx, "PostEntityImages"))
        else:
            change = Irrelevant(f"no rule watches {message} on {table}")
    if isinstance(change, Irrelevant):
        return change
    return ChangeEvent(
        id=_event_id(origin, identity, table, record_id, message, change),
        table=table,
        record_id=record_id,
        message=message,
        origin=origin,
        change=change,
    )


def _event_id(origin: Origin, identity: tuple, table: str, record_id: str, message: str, change: Change) -> str:
    """A UUID-shaped digest of everything that makes this notification this one.

    Dataverse's one retry (and any duplicate delivery) carries the same body, so it gets the same
    id, and Service Bus duplicate detection on MessageId collapses it.
    """
    # repr of the frozen change dataclass: deterministic for these plain values, and cheaper than JSON.
    basis = f"{origin.organization_id}|{origin.correlation_id}|{origin.time}|{origin.depth}|" \
            f"{origin.initiating_user_id}|{identity}|{table}|{record_id}|{message}|{change!r}"
    h = hashlib.blake2b(basis.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


# --- the kinds -------------------------------------------------------------------------------

#: (table, message) pairs a rule watches; Associate/Disassociate are watched on any table.
WATCHED = frozenset([(t, m) for t in MEMBER_TABLES for m in ("Create", "Update", "Delete")]
                    + [(CONSENT_TABLE, m) for m in ("Create", "Update")]
                    + [("list", m) for m in ADD_MESSAGES + ("RemoveMember",)])


def _reread(table: str, message: str, reason: str = "msg-size-exceeded") -> RereadRecord | Irrelevant:
    watched = (table, message) in WATCHED or message in ("Associate", "Disassociate")
    if not watched:
        return Irrelevant(f"no rule watches {message} on {table}")
    return RereadRecord(reason=reason)


def _contact(message: str, inputs: dict[str, Any], post: dict[str, Any], ctx: dict[str, Any]) -> ContactChanged | Irrelevant:
    target = _entity(inputs.get("Target"), "InputParameters.Target", required=True)
    state = {**post, **target}  # Target holds the newest values of what changed
    changed = tuple([c for c in CONTACT_COLUMNS if c in target])
    dnb = _bool(state.get("donotbulkemail"), "donotbulkemail")
    dne = _bool(state.get("donotemail"), "donotemail")
    emails = {c: _optional_text(state[c], c) for c in EMAIL_COLUMNS if c in state}
    # The addresses before an Update, for the changed email columns (R7 carries the old one's
    # opt-outs over). Without a pre-image (not registered, or stripped) they are unknown: no key.
    # With one, a column it lacks was empty: an image leaves out columns that hold no value.
    previous: dict[str, str | None] = {}
    changed_emails = [c for c in EMAIL_COLUMNS if c in target] if message == "Update" else []
    if changed_emails and ctx.get("PreEntityImages"):  # read only when an address changed
        pre = _images(ctx, "PreEntityImages")
        previous = {c: _optional_text(pre.get(c), f"PreEntityImages.{c}") for c in changed_emails}
    if message == "Update":
        if not changed:
            return Irrelevant("Update changed no email column and no opt-out flag")
        email_changed = "emailaddress1" in target or "emailaddress2" in target or "emailaddress3" in target
        flag_set = (dnb and "donotbulkemail" in target) or (dne and "donotemail" in target)
        if not email_changed and not flag_set:
            return Irrelevant("Update only cleared opt-out flags; the sync never propagates an opt-in")
    elif not any(emails.values()):
        return Irrelevant("Create of a record without an email address")
    return ContactChanged(changed, dnb, dne, emails, previous)


def _consent(inputs: dict[str, Any], post: dict[str, Any]) -> ConsentChanged | Irrelevant:
    target = _entity(inputs.get("Target"), "InputParameters.Target", required=True)
    state = {**post, **target}
    change = ConsentChanged(
        contact_point_value=_optional_text(state.get("msdynmkt_contactpointvalue"), "msdynmkt_contactpointvalue"),
        contact_point_type=_option(state.get("msdynmkt_contactpointtype"), "msdynmkt_contactpointtype"),
        consent_type=_option(state.get("msdynmkt_contactpointconsenttype"), "msdynmkt_contactpointconsenttype"),
        value=_option(state.get("msdynmkt_value"), "msdynmkt_value"),
        purpose_id=_reference(state.get("msdynmkt_purposeid"), "msdynmkt_purposeid"),
        topic_id=_reference(state.get("msdynmkt_topicid"), "msdynmkt_topicid"),
        source=_option(state.get("msdynmkt_source"), "msdynmkt_source"),
        reason=_optional_text(state.get("msdynmkt_reason"), "msdynmkt_reason"),
    )
    # Only opt-outs propagate; an unknown value or channel is kept and settled by re-reading the row.
    # A person's own opt-in is kept too: it is judged against the opt-outs it meets (timeline rule),
    # never propagated.
    if change.value is not None and change.value != ConsentValue.OPTED_OUT and not is_personal_opt_in_event(change):
        return Irrelevant("consent row is not Opted out; the sync never propagates an opt-in")
    if change.contact_point_type is not None and change.contact_point_type != ContactPointType.EMAIL:
        return Irrelevant("consent row is not for the email channel")
    return change


def _association(message: str, inputs: dict[str, Any]) -> MembershipChanged | Irrelevant:
    relationship = inputs.get("Relationship")
    if not isinstance(relationship, dict):
        raise NotificationError("InputParameters.Relationship", f"expected a Relationship object, got {_type_name(relationship)}")
    schema_name = relationship.get("SchemaName")
    if not isinstance(schema_name, str):
        raise NotificationError("InputParameters.Relationship.SchemaName", f"expected a string, got {_type_name(schema_name)}")
    _name(schema_name, "InputParameters.Relationship.SchemaName")
    member_table = MEMBERSHIP_RELATIONSHIPS.get(schema_name.lower())
    if member_table is None:
        return Irrelevant(f"relationship {schema_name} is not a list membership")
    target_table, target_id = _entity_reference(inputs.get("Target"), "InputParameters.Target")
    related = inputs.get("RelatedEntities")
    refs = _reference_collection(related, "InputParameters.RelatedEntities")
    related_ids = tuple(i for _, i in refs)
    # Either side may be the Target: a list gaining contacts, or a contact joining lists.
    if target_table == "list":
        list_ids, member_ids = (target_id,), related_ids
    else:
        list_ids, member_ids = related_ids, (target_id,)
    if not list_ids or not member_ids:
        raise NotificationError("InputParameters.RelatedEntities", "names no related record")
    action = "added" if message == "Associate" else "removed"
    return MembershipChanged(action=action, list_ids=list_ids, member_ids=member_ids, member_table=member_table)


def _list_member_message(message: str, inputs: dict[str, Any]) -> MembershipChanged:
    list_id = _guid(_unwrap_id(inputs.get("ListId")), "InputParameters.ListId", required=True)
    if message == "AddListMembers":
        raw = inputs.get("MemberIds")
        if not isinstance(raw, list) or not raw:
            raise NotificationError("InputParameters.MemberIds", f"expected a non-empty array of ids, got {_type_name(raw)}")
        member_ids = tuple(_guid(_unwrap_id(v), f"InputParameters.MemberIds[{i}]", required=True) for i, v in enumerate(raw))
    else:
        member_ids = (_guid(_unwrap_id(inputs.get("EntityId")), "InputParameters.EntityId", required=True),)
    action = "removed" if message == "RemoveMember" else "added"
    return MembershipChanged(action=action, list_ids=(list_id,), member_ids=member_ids, member_table=None)


# --- shapes ----------------------------------------------------------------------------------

def _collection(value: Any, path: str) -> dict[str, Any]:
    """A ``[{"key": k, "value": v}, ...]`` array as a dict."""
    if value is None:
        return {}
    if type(value) is list:
        try:  # fast path for well-formed input; the checked loop below names the first problem
            out = {}
            for pair in value:
                key = pair["key"]
                if type(key) is not str:
                    break
                out[key] = pair["value"]
            else:
                return out
        except (TypeError, KeyError):
            pass
    if not isinstance(value, list):
        raise NotificationError(path, f"expected an array of key/value pairs, got {_type_name(value)}")
    out = {}
    for i, pair in enumerate(value):
        if not isinstance(pair, dict):
            raise NotificationError(f"{path}[{i}]", f"expected a key/value object, got {_type_name(pair)}")
        key = pair.get("key")
        if not isinstance(key, str):
            raise NotificationError(f"{path}[{i}].key", f"expected a string, got {_type_name(key)}")
        out[key] = pair.get("value")
    return out


def _entity(value: Any, path: str, required: bool = False) -> dict[str, Any]:
    if value is None and not required:
        return {}
    if not isinstance(value, dict):
        raise NotificationError(path, f"expected an Entity object, got {_type_name(value)}")
    return _collection(value.get("Attributes"), f"{path}.Attributes")


def _images(ctx: dict[str, Any], kind: str) -> dict[str, Any]:
    """All images of a kind merged: the step registers one, but its alias is the registrant's choice."""
    images = _collection(ctx.get(kind), kind)
    merged: dict[str, Any] = {}
    for alias, image in images.items():
        merged.update(_entity(image, f"{kind}.{alias}"))
    return merged


def _entity_reference(value: Any, path: str) -> tuple[str, str]:
    if not isinstance(value, dict):
        raise NotificationError(path, f"expected an EntityReference object, got {_type_name(value)}")
    name = value.get("LogicalName")
    if not isinstance(name, str):
        raise NotificationError(f"{path}.LogicalName", f"expected a string, got {_type_name(name)}")
    return _name(name, f"{path}.LogicalName").lower(), _guid(value.get("Id"), f"{path}.Id", required=True)


def _reference_collection(value: Any, path: str) -> list[tuple[str, str]]:
    # Serialized either as a bare array of references or as an object wrapping one.
    if isinstance(value, dict):
        for key in ("Entities", "value", "Items"):
            if isinstance(value.get(key), list):
                value = value[key]
                break
    if not isinstance(value, list):
        raise NotificationError(path, f"expected an EntityReferenceCollection, got {_type_name(value)}")
    return [_entity_reference(v, f"{path}[{i}]") for i, v in enumerate(value)]


def _unwrap_id(value: Any) -> Any:
    return value.get("Id") if isinstance(value, dict) else value


def _required_str(ctx: dict[str, Any], name: str) -> str:
    value = ctx.get(name)
    if value is None:
        raise NotificationError(name, "is missing")
    if not isinstance(value, str) or not value:
        raise NotificationError(name, f"expected a non-empty string, got {_type_name(value)}")
    return _name(value, name)


def _optional_str(ctx: dict[str, Any], name: str) -> str | None:
    value = ctx.get(name)
    if value is not None and not isinstance(value, str):
        raise NotificationError(name, f"expected a string, got {_type_name(value)}")
    return value if value is None else _name(value, name)


def _name(value: str, path: str) -> str:
    if len(value) > NAME_MAX:
        raise NotificationError(path, f"is {len(value)} characters long; names are at most {NAME_MAX}")
    return value


def _optional_int(ctx: dict[str, Any], name: str) -> int | None:
    value = ctx.get(name)
    if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
        raise NotificationError(name, f"expected an integer, got {_type_name(value)}")
    return value


def _guid(value: Any, path: str, required: bool = False) -> str | None:
    if value is None:
        if required:
            raise NotificationError(path, "is missing")
        return None
    if not isinstance(value, str) or not _GUID.match(value):
        raise NotificationError(path, f"expected a GUID string, got {_describe(value)}")
    return value.strip("{}").lower()


def _date(value: Any, path: str) -> str | None:
    """``/Date(ms)/`` or ``/Date(ms+hhmm)/``; the milliseconds are UTC, the offset is only display."""
    if value is None:
        return None
    m = _DATE.match(value) if isinstance(value, str) else None
    if m is None:
        raise NotificationError(path, f"expected a date like /Date(1506384247000)/, got {_describe(value)}")
    try:
        millis = int(m.group(1))
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(millis // 1000))
    except (OverflowError, OSError, ValueError):
        raise NotificationError(path, "date is out of range") from None
    return f"{stamp}.{millis % 1000:03d}Z"


def _bool(value: Any, path: str) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    raise NotificationError(path, f"expected true or false, got {_describe(value)}")


def _optional_text(value: Any, path: str) -> str | None:
    if value is None:
        return value
    if not isinstance(value, str):
        raise NotificationError(path, f"expected a string, got {_type_name(value)}")
    if path in _ADDRESS_COLUMNS and len(value) > ADDRESS_MAX:
        raise NotificationError(path, f"is {len(value)} characters long; an email address is at most {ADDRESS_MAX}")
    return value


def _option(value: Any, path: str) -> int | None:
    if isinstance(value, dict):
        value = value.get("Value")
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise NotificationError(path, f"expected an OptionSetValue, got {_type_name(value)}")


def _reference(value: Any, path: str) -> str | None:
    return _guid(_unwrap_id(value), path)


#: A JSON escape of a UTF-16 surrogate (\\ud800-\\udfff): the only way a lone surrogate gets in.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _reject_lone_surrogates(value: Any, path: str) -> None:
    """A lone surrogate is not Unicode text: it could not be put on the queue, so it is the
    notification's fault (400), not a reason to answer 503 to every retry. Paths name a
    key/value pair by its key, as the other errors do."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise NotificationError(path or "body", "contains an unpaired surrogate (not valid Unicode text)") from None
    elif isinstance(value, dict):
        key = value.get("key")
        if isinstance(key, str) and "value" in value and set(value) <= {"key", "value", "__type"}:
            _reject_lone_surrogates(key, path)
            _reject_lone_surrogates(value["value"], key)
            return
        for k, v in value.items():
            _reject_lone_surrogates(k, path)
            _reject_lone_surrogates(v, f"{path}.{k}" if path else k)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _reject_lone_surrogates(v, f"{path}[{i}]")


def _type_name(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", int: "number",
            float: "number", type(None): "null"}.get(type(value), type(value).__name__)


def _describe(value: Any) -> str:
    # Names the type only: a value could be an email address, which must not reach a response or log.
    return _type_name(value) if not isinstance(value, str) else f"a string of {len(value)} characters"
