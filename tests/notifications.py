"""Builders of Dataverse webhook notification bodies (serialized ``RemoteExecutionContext``).

Shapes follow docs/domain.md and the documented Microsoft sample
(``tests/fixtures/notifications/sample_update_contact.json``): the same top-level keys,
collections as ``[{"key": ..., "value": ...}]`` arrays, typed values with ``__type`` hints, and
dates as ``/Date(ms)/`` (serialized with ``\\/`` escapes, as Dataverse does).

``python -m tests.notifications`` rewrites the JSON fixtures from ``FIXTURES`` below.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Callable, Iterable

FIXTURE_DIR = Path(__file__).parent / "fixtures" / "notifications"
CONTRACTS = "http://schemas.microsoft.com/xrm/2011/Contracts"

# Fixed ids, so fixtures and expectations are stable.
ORG_ID = "4ef5b371-e89e-e711-8122-000d3aa2331c"
BU_ID = "e2b9dd85-e89e-e711-8122-000d3aa2331c"
USER_ID = "75c2dd85-e89e-e711-8122-000d3aa2331c"
STEP_ID = "75417616-4ea2-e711-8122-000d3aa2331c"
CORRELATION_ID = "b374239d-4233-41a9-8b17-a86cb4f737b5"
OPERATION_ID = "4af10637-4ea2-e711-8122-000d3aa2331c"
CONTACT_ID = "6d81597f-0f9f-e711-8122-000d3aa2331c"
CONTACT_ID_2 = "7e92608a-1a0f-4e11-9c22-0a1b2c3d4e5f"
LEAD_ID = "a1b2c3d4-0f9f-e711-8122-000d3aa2331c"
LEAD_ID_2 = "b2c3d4e5-0f9f-e711-8122-000d3aa2331c"
LIST_ID = "c0ffee00-1234-4abc-8def-000d3aa2331c"
LIST_ID_2 = "c0ffee01-1234-4abc-8def-000d3aa2331c"
CONSENT_ID = "d15ea5e0-5b1e-4c2d-9e8f-000d3aa2331c"
PURPOSE_ID = "10000000-0000-0000-0000-000000000003"
TOPIC_ID = "70b1c000-aaaa-4bbb-8ccc-000d3aa2331c"
EMPTY_GUID = "00000000-0000-0000-0000-000000000000"

EMAIL = "jane.doe@contoso.example"
EMAIL_2 = "j.doe+news@fabrikam.example"
EMAIL_3 = "JANE@Contoso.Example"
ADDRESSES = (EMAIL, EMAIL_2, EMAIL_3)

# msdynmkt_contactpointconsent4 option-set codes (docs/domain.md)
EMAIL_CHANNEL, TEXT_CHANNEL = 534120000, 534120001
PURPOSE_CONSENT, TOPIC_CONSENT = 534120000, 534120001
NOT_SET, OPTED_IN, OPTED_OUT = 534120000, 534120001, 534120002
SOURCE_SUBSCRIPTION_CENTER = 534120006
REASON_ONE_CLICK = 534120007


# --- typed values ----------------------------------------------------------------------------

def date(ms: int = 1506409448000, offset: str | None = "-0700") -> str:
    return f"/Date({ms}{offset or ''})/"


def kv(pairs: dict[str, Any] | Iterable[tuple[str, Any]]) -> list[dict[str, Any]]:
    items = pairs.items() if isinstance(pairs, dict) else pairs
    return [{"key": k, "value": v} for k, v in items]


def ref(logical_name: str, id_: str, name: str | None = None) -> dict[str, Any]:
    return {"__type": f"EntityReference:{CONTRACTS}", "Id": id_, "KeyAttributes": [],
            "LogicalName": logical_name, "Name": name, "RowVersion": None}


def option(value: int) -> dict[str, Any]:
    return {"__type": f"OptionSetValue:{CONTRACTS}", "Value": value}


def ref_collection(refs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # DataContractJsonSerializer writes an EntityReferenceCollection as a plain array of references.
    return refs


def relationship(schema_name: str, role: str | None = None) -> dict[str, Any]:
    return {"__type": f"Relationship:{CONTRACTS}", "PrimaryEntityRole": role, "SchemaName": schema_name}


def entity(logical_name: str, id_: str, attributes: dict[str, Any], typed: bool = True) -> dict[str, Any]:
    e: dict[str, Any] = {"Attributes": kv(attributes), "EntityState": None, "FormattedValues": [], "Id": id_,
                         "KeyAttributes": [], "LogicalName": logical_name, "RelatedEntities": [], "RowVersion": None}
    return {"__type": f"Entity:{CONTRACTS}", **e} if typed else e


# --- the context -----------------------------------------------------------------------------

def context(message: str, table: str, record_id: str, inputs: dict[str, Any] | None = None,
            post_image: dict[str, Any] | None = None, image_alias: str = "postimage", **overrides: Any) -> dict[str, Any]:
    """A RemoteExecutionContext with the documented sample's top-level keys."""
    ctx: dict[str, Any] = {
        "BusinessUnitId": BU_ID,
        "CorrelationId": CORRELATION_ID,
        "Depth": 1,
        "InitiatingUserId": USER_ID,
        "InputParameters": kv(inputs or {}),
        "IsExecutingOffline": False,
        "IsInTransaction": False,
        "IsOfflinePlayback": False,
        "IsolationMode": 1,
        "MessageName": message,
        "Mode": 1,
        "OperationCreatedOn": date(),
        "OperationId": OPERATION_ID,
        "OrganizationId": ORG_ID,
        "OrganizationName": "OrgName",
        "OutputParameters": [],
        "OwningExtension": {"Id": STEP_ID, "KeyAttributes": [], "LogicalName": "sdkmessageprocessingstep",
                            "Name": None, "RowVersion": None},
        "ParentContext": None,
        "PostEntityImages": kv({image_alias: entity(table, record_id, post_image, typed=False)}) if post_image is not None else [],
        "PreEntityImages": [],
        "PrimaryEntityId": record_id,
        "PrimaryEntityName": table,
        "RequestId": None,
        "SecondaryEntityName": "none",
        "SharedVariables": [],
        "Stage": 40,
        "UserId": USER_ID,
    }
    ctx.update(overrides)
    return ctx


def to_bytes(ctx: dict[str, Any], indent: int | None = None) -> bytes:
    """Serialized as Dataverse does it: ``/`` escaped as ``\\/`` (valid JSON, same value)."""
    return json.dumps(ctx, indent=indent).replace("/", "\\/").encode("utf-8")


def load(name: str) -> dict[str, Any]:
    return json.loads((FIXTURE_DIR / f"{name}.json").read_bytes())


def load_bytes(name: str) -> bytes:
    return (FIXTURE_DIR / f"{name}.json").read_bytes()


def sample() -> dict[str, Any]:
    return load("sample_update_contact")


# --- notification kinds ----------------------------------------------------------------------

def member_change(message: str, table: str = "contact", target: dict[str, Any] | None = None,
                  post: dict[str, Any] | None = None, record_id: str | None = None, **overrides: Any) -> dict[str, Any]:
    """Create/Update of a contact or lead: Target carries (only) the changed columns."""
    record_id = record_id or (CONTACT_ID if table == "contact" else LEAD_ID)
    key = f"{table}id"
    attrs = {**(target or {}), key: record_id}
    if message == "Update":
        attrs.setdefault("modifiedon", date(1506384247000, None))
        attrs.setdefault("modifiedby", ref("systemuser", USER_ID))
    return context(message, table, record_id, {"Target": entity(table, record_id, attrs)},
                   post_image={**post, key: record_id} if post is not None else None, **overrides)


def delete(table: str = "contact", record_id: str | None = None) -> dict[str, Any]:
    record_id = record_id or (CONTACT_ID if table == "contact" else LEAD_ID)
    return context("Delete", table, record_id, {"Target": ref(table, record_id)})


def add_member(list_id: str = LIST_ID, entity_id: str = CONTACT_ID) -> dict[str, Any]:
    return context("AddMember", "list", list_id, {"ListId": list_id, "EntityId": entity_id})


def remove_member(list_id: str = LIST_ID, entity_id: str = CONTACT_ID) -> dict[str, Any]:
    return context("RemoveMember", "list", list_id, {"ListId": list_id, "EntityId": entity_id})


def add_list_members(list_id: str = LIST_ID, member_ids: tuple[str, ...] = (CONTACT_ID, CONTACT_ID_2)) -> dict[str, Any]:
    return context("AddListMembers", "list", list_id, {"ListId": list_id, "MemberIds": list(member_ids)})


def association(message: str, schema_name: str = "listcontact_association", target: tuple[str, str] = ("list", LIST_ID),
                related: list[tuple[str, str]] | None = None, primary: tuple[str, str] | None = None,
                role: str | None = None) -> dict[str, Any]:
    """Associate/Disassociate: Target and RelatedEntities are the two sides, either way round."""
    if related is None:
        related = [("contact", CONTACT_ID)] if target[0] == "list" else [("list", LIST_ID)]
    table, record_id = primary or target
    return context(message, table, record_id, {
        "Target": ref(*target),
        "Relationship": relationship(schema_name, role),
        "RelatedEntities": ref_collection([ref(t, i) for t, i in related]),
    })


def consent(message: str = "Create", target: dict[str, Any] | None = None, post: dict[str, Any] | None = None,
            record_id: str = CONSENT_ID) -> dict[str, Any]:
    attrs = {**(target or {}), "msdynmkt_contactpointconsent4id": record_id}
    return context(message, "msdynmkt_contactpointconsent4", record_id,
                   {"Target": entity("msdynmkt_contactpointconsent4", record_id, attrs)},
                   post_image={**post, "msdynmkt_contactpointconsent4id": record_id} if post is not None else None)


def consent_row(value: int = OPTED_OUT, channel: int = EMAIL_CHANNEL, consent_type: int = TOPIC_CONSENT,
                email: str = EMAIL, topic: str | None = TOPIC_ID) -> dict[str, Any]:
    """The columns of a full consent row, as a Create's Target carries them."""
    row: dict[str, Any] = {
        "msdynmkt_contactpointvalue": email,
        "msdynmkt_contactpointtype": option(channel),
        "msdynmkt_contactpointconsenttype": option(consent_type),
        "msdynmkt_value": option(value),
        "msdynmkt_purposeid": ref("msdynmkt_purpose", PURPOSE_ID, "Commercial"),
        "msdynmkt_source": option(SOURCE_SUBSCRIPTION_CENTER),
        "msdynmkt_logicalreason": option(REASON_ONE_CLICK),
        "msdynmkt_reason": "Unsubscribed in the subscription center",
        "modifiedon": date(1506384247000, None),
    }
    if topic is not None:
        row["msdynmkt_topicid"] = ref("msdynmkt_topic", TOPIC_ID, "Newsletter")
    return row


def size_exceeded(ctx: dict[str, Any]) -> dict[str, Any]:
    """What Dataverse sends with ``x-ms-dynamics-msg-size-exceeded: true``: the big parts stripped."""
    out = copy.deepcopy(ctx)
    for key in ("InputParameters", "PreEntityImages", "PostEntityImages"):
        out[key] = []
    out["ParentContext"] = None
    return out


SIZE_EXCEEDED_HEADERS = {"x-ms-dynamics-msg-size-exceeded": "true"}


# --- the fixture set: name -> (builder, headers, expected status, expected kind or None) -------

FLAGS_TRUE = {"donotbulkemail": True, "donotemail": False}
FULL_ROW = {"firstname": "Jane", "emailaddress1": EMAIL, "emailaddress2": EMAIL_2, "donotbulkemail": False,
            "donotemail": False}

FIXTURES: dict[str, tuple[Callable[[], dict[str, Any]], dict[str, str], int, str | None]] = {
    "contact_create_opted_out": (lambda: member_change("Create", "contact", {
        "firstname": "Jane", "emailaddress1": EMAIL, "donotbulkemail": True, "donotemail": False}), {}, 202, "contact_changed"),
    "contact_create_no_email": (lambda: member_change("Create", "contact", {
        "firstname": "Jane", "donotbulkemail": True}), {}, 200, None),
    "lead_create_opted_out": (lambda: member_change("Create", "lead", {
        "subject": "Webinar", "emailaddress1": EMAIL_2, "donotbulkemail": False, "donotemail": True}), {}, 202, "contact_changed"),
    "contact_update_donotbulkemail": (lambda: member_change("Update", "contact", {"donotbulkemail": True}, post=FULL_ROW),
                                      {}, 202, "contact_changed"),
    "contact_update_donotemail": (lambda: member_change("Update", "contact", {"donotemail": True}, post=FULL_ROW),
                                  {}, 202, "contact_changed"),
    "contact_update_email_changed": (lambda: member_change("Update", "contact", {"emailaddress1": EMAIL_3}, post=FULL_ROW),
                                     {}, 202, "contact_changed"),
    "contact_update_flag_cleared": (lambda: member_change("Update", "contact", {"donotbulkemail": False},
                                                          post={**FULL_ROW, "donotbulkemail": True}), {}, 200, None),
    "contact_update_firstname_only": (lambda: member_change("Update", "contact", {"firstname": "Janet"},
                                                            post={**FULL_ROW, "donotbulkemail": True}), {}, 200, None),
    "lead_update_donotbulkemail": (lambda: member_change("Update", "lead", {"donotbulkemail": True},
                                                         post={"emailaddress1": EMAIL_2, "donotemail": False}), {}, 202, "contact_changed"),
    "contact_delete": (lambda: delete("contact"), {}, 202, "record_deleted"),
    "lead_delete": (lambda: delete("lead"), {}, 202, "record_deleted"),
    "list_add_member": (lambda: add_member(), {}, 202, "membership_changed"),
    "list_add_list_members": (lambda: add_list_members(), {}, 202, "membership_changed"),
    "list_remove_member": (lambda: remove_member(), {}, 202, "membership_changed"),
    "associate_listcontact_list_target": (lambda: association("Associate"), {}, 202, "membership_changed"),
    "disassociate_listcontact_list_target": (lambda: association("Disassociate"), {}, 202, "membership_changed"),
    "disassociate_listcontact_contact_target": (lambda: association(
        "Disassociate", target=("contact", CONTACT_ID), related=[("list", LIST_ID), ("list", LIST_ID_2)]),
        {}, 202, "membership_changed"),
    "associate_listlead_list_target": (lambda: association(
        "Associate", "listlead_association", related=[("lead", LEAD_ID), ("lead", LEAD_ID_2)]), {}, 202, "membership_changed"),
    "disassociate_listlead_lead_target": (lambda: association(
        "Disassociate", "listlead_association", target=("lead", LEAD_ID)), {}, 202, "membership_changed"),
    "associate_unrelated_relationship": (lambda: association(
        "Associate", "contact_customer_accounts", target=("account", LIST_ID), related=[("contact", CONTACT_ID)]),
        {}, 200, None),
    "consent_create_topic_opted_out": (lambda: consent("Create", consent_row()), {}, 202, "consent_changed"),
    "consent_create_purpose_opted_out": (lambda: consent("Create", consent_row(consent_type=PURPOSE_CONSENT, topic=None)),
                                         {}, 202, "consent_changed"),
    # A person's own opt-in (subscription center) is kept: the sync judges it against opposing opt-outs.
    "consent_create_opted_in": (lambda: consent("Create", consent_row(value=OPTED_IN)), {}, 202, "consent_changed"),
    "consent_create_text_channel": (lambda: consent("Create", consent_row(channel=TEXT_CHANNEL, email="+15550100")),
                                    {}, 200, None),
    "consent_update_value_only": (lambda: consent("Update", {"msdynmkt_value": option(OPTED_OUT)}), {}, 202, "consent_changed"),
    "consent_update_with_post_image": (lambda: consent("Update", {"msdynmkt_value": option(OPTED_OUT)},
                                                       post=consent_row(value=OPTED_IN)), {}, 202, "consent_changed"),
    "size_exceeded_contact_update": (lambda: size_exceeded(member_change("Update", "contact", {"donotbulkemail": True},
                                                                         post=FULL_ROW)), SIZE_EXCEEDED_HEADERS, 202, "reread_record"),
    "size_exceeded_consent_update": (lambda: size_exceeded(consent("Update", consent_row())), SIZE_EXCEEDED_HEADERS,
                                     202, "reread_record"),
    "account_update": (lambda: context("Update", "account", LIST_ID, {"Target": entity("account", LIST_ID, {"name": "Contoso"})}),
                       {}, 200, None),
    "contact_retrieve": (lambda: context("Retrieve", "contact", CONTACT_ID, {"Target": ref("contact", CONTACT_ID)}), {}, 200, None),
}


def write_fixtures() -> None:
    for name, (build, _, _, _) in FIXTURES.items():
        (FIXTURE_DIR / f"{name}.json").write_bytes(to_bytes(build(), indent=4) + b"\n")


if __name__ == "__main__":
    write_fixtures()
