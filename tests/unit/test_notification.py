"""Notification (RemoteExecutionContext JSON) -> ChangeEvent: every kind, from the documented shapes."""
from __future__ import annotations

import copy
import json

import pytest

from shared.domain.events import (ChangeEvent, ConsentChanged, ContactChanged, MembershipChanged, RecordDeleted,
                                  RereadRecord)
from shared.ingest.notification import Irrelevant, NotificationError, parse_notification
from tests import notifications as n


def parse(ctx, headers=None):
    return parse_notification(n.to_bytes(ctx), headers)


def event(ctx, headers=None) -> ChangeEvent:
    result = parse(ctx, headers)
    assert isinstance(result, ChangeEvent), result
    return result


# --- the fixture files -----------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(n.FIXTURES))
def test_every_fixture_file_parses_to_its_expected_kind(name):
    _, headers, status, kind = n.FIXTURES[name]
    result = parse_notification(n.load_bytes(name), headers)
    if status == 200:
        assert isinstance(result, Irrelevant) and result.reason
    else:
        assert isinstance(result, ChangeEvent) and result.kind == kind


@pytest.mark.parametrize("name", sorted(n.FIXTURES))
def test_fixture_files_match_their_builders_and_the_sample_shape(name):
    on_disk = n.load(name)
    assert on_disk == json.loads(n.to_bytes(n.FIXTURES[name][0]()))
    assert set(on_disk) <= set(n.sample()) and {"MessageName", "PrimaryEntityName", "PrimaryEntityId"} <= set(on_disk)
    assert b"\\/" in n.load_bytes(name), "fixtures are serialized like Dataverse, with escaped slashes"


def test_the_documented_sample_is_an_irrelevant_firstname_update():
    result = parse_notification(n.load_bytes("sample_update_contact"), {})
    assert isinstance(result, Irrelevant)
    assert "no email column and no opt-out flag" in result.reason


# --- contact and lead ------------------------------------------------------------------------

def test_contact_create_carries_flags_emails_and_origin():
    e = event(n.member_change("Create", "contact", {"emailaddress1": n.EMAIL, "donotbulkemail": True, "donotemail": False}))
    assert e.table == "contact" and e.record_id == n.CONTACT_ID and e.message == "Create"
    assert e.change == ContactChanged(changed=("emailaddress1", "donotbulkemail", "donotemail"), donotbulkemail=True,
                                      donotemail=False, emails={"emailaddress1": n.EMAIL})
    assert e.origin.time == "2017-09-26T07:04:08.000Z"  # /Date(1506409448000-0700)/: the ms are UTC
    assert e.origin.initiating_user_id == n.USER_ID and e.origin.user_id == n.USER_ID
    assert e.origin.correlation_id == n.CORRELATION_ID and e.origin.organization_id == n.ORG_ID
    assert e.origin.depth == 1


def test_date_without_offset_and_negative_dates():
    assert event(n.member_change("Create", "contact", {"emailaddress1": n.EMAIL},
                                 OperationCreatedOn=n.date(1506384247123, None))).origin.time == "2017-09-26T00:04:07.123Z"
    assert event(n.member_change("Create", "contact", {"emailaddress1": n.EMAIL},
                                 OperationCreatedOn=n.date(-1, "+0100"))).origin.time == "1969-12-31T23:59:59.999Z"


def test_lead_create_is_a_contact_change_on_lead():
    e = event(n.member_change("Create", "lead", {"emailaddress1": n.EMAIL_2, "donotemail": True}))
    assert e.table == "lead" and e.record_id == n.LEAD_ID
    assert e.change.donotemail is True and e.change.donotbulkemail is None and e.change.emails == {"emailaddress1": n.EMAIL_2}


def test_create_without_any_email_is_ignored():
    assert isinstance(parse(n.member_change("Create", "contact", {"donotbulkemail": True, "emailaddress1": None})), Irrelevant)


def test_update_target_overrides_post_image():
    ctx = n.member_change("Update", "contact", {"donotbulkemail": True, "emailaddress1": n.EMAIL_3},
                         post={"emailaddress1": n.EMAIL, "emailaddress2": n.EMAIL_2, "donotbulkemail": False,
                               "donotemail": True})
    c = event(ctx).change
    assert c.changed == ("emailaddress1", "donotbulkemail")
    assert c.donotbulkemail is True and c.donotemail is True
    assert c.emails == {"emailaddress1": n.EMAIL_3, "emailaddress2": n.EMAIL_2}


def test_update_reads_any_post_image_alias():
    ctx = n.member_change("Update", "contact", {"donotbulkemail": True}, post={"emailaddress1": n.EMAIL},
                          image_alias="AsynchronousStepPrimaryName")
    assert event(ctx).change.emails == {"emailaddress1": n.EMAIL}


def test_update_with_only_firstname_is_ignored_even_if_the_image_says_opted_out():
    r = parse(n.member_change("Update", "contact", {"firstname": "Janet"}, post={"donotbulkemail": True, "emailaddress1": n.EMAIL}))
    assert isinstance(r, Irrelevant) and "no email column" in r.reason


@pytest.mark.parametrize("target", [{"donotbulkemail": False}, {"donotemail": False},
                                    {"donotbulkemail": False, "donotemail": False}])
def test_update_that_only_clears_flags_is_ignored(target):
    r = parse(n.member_change("Update", "contact", target, post={"emailaddress1": n.EMAIL, "donotemail": True}))
    assert isinstance(r, Irrelevant) and "opt-in" in r.reason


def test_update_setting_one_flag_and_clearing_the_other_is_relevant():
    c = event(n.member_change("Update", "lead", {"donotbulkemail": False, "donotemail": True})).change
    assert (c.donotbulkemail, c.donotemail) == (False, True)


@pytest.mark.parametrize("column", ["emailaddress1", "emailaddress2", "emailaddress3"])
def test_an_email_change_is_relevant_even_when_flags_are_false(column):
    c = event(n.member_change("Update", "contact", {column: n.EMAIL_2},
                              post={"donotbulkemail": False, "donotemail": False})).change
    assert c.changed == (column,) and c.emails[column] == n.EMAIL_2 and c.donotbulkemail is False


def test_an_email_cleared_is_relevant_and_reported_as_none():
    c = event(n.member_change("Update", "contact", {"emailaddress2": None}, post={"emailaddress1": n.EMAIL})).change
    assert c.changed == ("emailaddress2",) and c.emails == {"emailaddress1": n.EMAIL, "emailaddress2": None}


@pytest.mark.parametrize("table", ["contact", "lead"])
def test_delete_is_a_record_deleted(table):
    e = event(n.delete(table))
    assert e.change == RecordDeleted() and e.table == table and e.message == "Delete"


# --- list membership -------------------------------------------------------------------------

def test_add_member():
    e = event(n.add_member())
    assert e.table == "list" and e.record_id == n.LIST_ID
    assert e.change == MembershipChanged("added", (n.LIST_ID,), (n.CONTACT_ID,), None)


def test_add_list_members():
    assert event(n.add_list_members()).change == MembershipChanged("added", (n.LIST_ID,), (n.CONTACT_ID, n.CONTACT_ID_2), None)


def test_remove_member():
    assert event(n.remove_member()).change == MembershipChanged("removed", (n.LIST_ID,), (n.CONTACT_ID,), None)


def test_guids_are_normalised_lower_case_without_braces():
    e = event(n.add_member(list_id="{" + n.LIST_ID.upper() + "}", entity_id=n.CONTACT_ID.upper()))
    assert e.change.list_ids == (n.LIST_ID,) and e.change.member_ids == (n.CONTACT_ID,)


@pytest.mark.parametrize("message,action", [("Associate", "added"), ("Disassociate", "removed")])
def test_association_with_the_list_as_target(message, action):
    e = event(n.association(message, related=[("contact", n.CONTACT_ID), ("contact", n.CONTACT_ID_2)]))
    assert e.change == MembershipChanged(action, (n.LIST_ID,), (n.CONTACT_ID, n.CONTACT_ID_2), "contact")


@pytest.mark.parametrize("message,action", [("Associate", "added"), ("Disassociate", "removed")])
def test_association_with_the_contact_as_target(message, action):
    e = event(n.association(message, target=("contact", n.CONTACT_ID), related=[("list", n.LIST_ID), ("list", n.LIST_ID_2)]))
    assert e.change == MembershipChanged(action, (n.LIST_ID, n.LIST_ID_2), (n.CONTACT_ID,), "contact")


def test_lead_association_either_way_round():
    assert event(n.association("Associate", "listlead_association", related=[("lead", n.LEAD_ID)])).change == \
        MembershipChanged("added", (n.LIST_ID,), (n.LEAD_ID,), "lead")
    assert event(n.association("Disassociate", "listlead_association", target=("lead", n.LEAD_ID))).change == \
        MembershipChanged("removed", (n.LIST_ID,), (n.LEAD_ID,), "lead")


def test_association_with_primary_entity_none_is_still_a_membership():
    ctx = n.association("Disassociate", primary=("none", n.EMPTY_GUID), role="Referencing")
    assert event(ctx).change == MembershipChanged("removed", (n.LIST_ID,), (n.CONTACT_ID,), "contact")


def test_related_entities_wrapped_in_an_object_are_read():
    ctx = n.association("Associate")
    inputs = {p["key"]: p["value"] for p in ctx["InputParameters"]}
    inputs["RelatedEntities"] = {"__type": f"EntityReferenceCollection:{n.CONTRACTS}", "Entities": inputs["RelatedEntities"]}
    ctx["InputParameters"] = n.kv(inputs)
    assert event(ctx).change.member_ids == (n.CONTACT_ID,)


def test_association_on_an_unrelated_relationship_is_ignored():
    r = parse(n.association("Associate", "contact_customer_accounts", target=("account", n.LIST_ID)))
    assert isinstance(r, Irrelevant) and "contact_customer_accounts" in r.reason


def test_association_without_related_records_is_rejected():
    with pytest.raises(NotificationError) as exc:
        parse(n.association("Associate", related=[]))
    assert exc.value.path == "InputParameters.RelatedEntities"


# --- consent rows ----------------------------------------------------------------------------

def test_consent_create_carries_every_column():
    e = event(n.consent("Create", n.consent_row()))
    assert e.table == "msdynmkt_contactpointconsent4" and e.record_id == n.CONSENT_ID
    assert e.change == ConsentChanged(contact_point_value=n.EMAIL, contact_point_type=n.EMAIL_CHANNEL,
                                      consent_type=n.TOPIC_CONSENT, value=n.OPTED_OUT, purpose_id=n.PURPOSE_ID,
                                      topic_id=n.TOPIC_ID, source=n.SOURCE_SUBSCRIPTION_CENTER,
                                      reason="Unsubscribed in the subscription center")


def test_purpose_level_consent_has_no_topic():
    c = event(n.consent("Create", n.consent_row(consent_type=n.PURPOSE_CONSENT, topic=None))).change
    assert c.consent_type == n.PURPOSE_CONSENT and c.topic_id is None and c.purpose_id == n.PURPOSE_ID


@pytest.mark.parametrize("value,source", [(n.NOT_SET, n.SOURCE_SUBSCRIPTION_CENTER), (n.OPTED_IN, 534120000),
                                          (n.OPTED_IN, 534120003)])  # Internal, Loaded: not the person's
def test_consent_that_is_not_opted_out_is_ignored(value, source):
    row = {**n.consent_row(value=value), "msdynmkt_source": n.option(source)}
    r = parse(n.consent("Create", row))
    assert isinstance(r, Irrelevant) and "not Opted out" in r.reason


def test_a_persons_own_opt_in_is_kept_for_the_timeline_rule():
    c = event(n.consent("Update", {"msdynmkt_value": n.option(n.OPTED_IN)}, post=n.consent_row(value=n.OPTED_IN))).change
    assert c.value == n.OPTED_IN and c.source == n.SOURCE_SUBSCRIPTION_CENTER


def test_text_channel_consent_is_ignored():
    r = parse(n.consent("Create", n.consent_row(channel=n.TEXT_CHANNEL, email="+15550100")))
    assert isinstance(r, Irrelevant) and "email channel" in r.reason


def test_consent_update_with_only_the_value_yields_unknown_fields():
    c = event(n.consent("Update", {"msdynmkt_value": n.option(n.OPTED_OUT)})).change
    assert c == ConsentChanged(None, None, None, n.OPTED_OUT, None, None, None, None)


def test_consent_update_target_overrides_post_image():
    c = event(n.consent("Update", {"msdynmkt_value": n.option(n.OPTED_OUT)}, post=n.consent_row(value=n.OPTED_IN))).change
    assert c.value == n.OPTED_OUT and c.contact_point_value == n.EMAIL and c.topic_id == n.TOPIC_ID


def test_consent_update_to_opted_in_over_an_opted_out_image_is_ignored():
    internal = {**n.consent_row(), "msdynmkt_source": n.option(534120000)}  # a flow's opt-in, not the person's
    assert isinstance(parse(n.consent("Update", {"msdynmkt_value": n.option(n.OPTED_IN)}, post=internal)), Irrelevant)


def test_option_set_values_may_be_bare_integers():
    row = n.consent_row()
    row["msdynmkt_value"] = n.OPTED_OUT
    assert event(n.consent("Create", row)).change.value == n.OPTED_OUT


# --- size exceeded and irrelevant ------------------------------------------------------------

@pytest.mark.parametrize("ctx", [
    n.member_change("Update", "contact", {"donotbulkemail": True}),
    n.member_change("Create", "lead", {"emailaddress1": n.EMAIL}),
    n.consent("Update", n.consent_row()),
    n.add_member(),
    n.association("Disassociate"),
], ids=["contact-update", "lead-create", "consent-update", "add-member", "disassociate"])
def test_size_exceeded_yields_reread_record(ctx):
    e = event(n.size_exceeded(ctx), {"x-ms-dynamics-msg-size-exceeded": "true"})
    assert e.change == RereadRecord(reason="msg-size-exceeded")
    assert e.record_id == ctx["PrimaryEntityId"] and e.table == ctx["PrimaryEntityName"]


@pytest.mark.parametrize("value", ["true", " True ", "false", "", "1"])
def test_size_exceeded_header_means_reread_whatever_its_value(value):
    # Microsoft documents that the header is sent, not what it holds.
    e = event(n.size_exceeded(n.add_member()), {"x-ms-dynamics-msg-size-exceeded": value})
    assert e.kind == "reread_record"


def test_size_exceeded_on_an_unwatched_table_is_ignored():
    ctx = n.size_exceeded(n.context("Update", "account", n.LIST_ID))
    assert isinstance(parse(ctx, {"x-ms-dynamics-msg-size-exceeded": "true"}), Irrelevant)


@pytest.mark.parametrize("ctx", [
    n.member_change("Update", "contact", {"donotbulkemail": True}),
    n.consent("Create", n.consent_row()),
    n.add_member(),
], ids=["contact-update", "consent-create", "add-member"])
def test_a_watched_message_without_input_parameters_is_reread_not_rejected(ctx):
    # A 400 is never retried by Dataverse: the event would be lost. Reading the record again is not.
    e = event(n.size_exceeded(ctx), {})
    assert e.change == RereadRecord(reason="no-input-parameters")
    ctx = dict(ctx)
    del ctx["InputParameters"]
    assert event(ctx, {}).kind == "reread_record"


def test_an_unwatched_message_without_input_parameters_stays_irrelevant():
    assert isinstance(parse(n.size_exceeded(n.context("Update", "account", n.LIST_ID)), {}), Irrelevant)


def test_input_parameters_without_their_target_is_still_malformed():
    ctx = n.member_change("Update", "contact", {"donotbulkemail": True})
    ctx["InputParameters"] = [{"key": "Other", "value": 1}]
    with pytest.raises(NotificationError) as exc:
        parse(ctx, {})
    assert exc.value.path == "InputParameters.Target"


@pytest.mark.parametrize("ctx", [
    n.context("Update", "account", n.LIST_ID, {"Target": n.entity("account", n.LIST_ID, {"name": "x"})}),
    n.context("Create", "incident", n.LIST_ID, {"Target": n.entity("incident", n.LIST_ID, {"title": "x"})}),
    n.context("Retrieve", "contact", n.CONTACT_ID, {"Target": n.ref("contact", n.CONTACT_ID)}),
    n.context("Update", "list", n.LIST_ID, {"Target": n.entity("list", n.LIST_ID, {"listname": "News"})}),
    n.context("Delete", "msdynmkt_contactpointconsent4", n.CONSENT_ID, {"Target": n.ref("msdynmkt_contactpointconsent4", n.CONSENT_ID)}),
], ids=["account", "incident", "retrieve", "list-update", "consent-delete"])
def test_irrelevant_tables_and_messages_are_ignored(ctx):
    r = parse(ctx)
    assert isinstance(r, Irrelevant) and ctx["MessageName"] in r.reason


def test_table_names_are_compared_case_insensitively():
    ctx = n.member_change("Create", "contact", {"emailaddress1": n.EMAIL})
    ctx["PrimaryEntityName"] = "Contact"
    assert event(ctx).table == "contact"


# --- malformed -------------------------------------------------------------------------------

def _without(ctx, key):
    ctx = copy.deepcopy(ctx)
    del ctx[key]
    return ctx


def _with(ctx, **values):
    return {**copy.deepcopy(ctx), **values}


def _target_removed(ctx):
    ctx = copy.deepcopy(ctx)
    # Other inputs stay (an Update carries ConcurrencyBehavior too): no InputParameters at all is a re-read.
    ctx["InputParameters"] = [p for p in ctx["InputParameters"] if p["key"] != "Target"] + [
        {"key": "ConcurrencyBehavior", "value": 0}]
    return ctx


GOOD = n.member_change("Update", "contact", {"donotbulkemail": True}, post={"emailaddress1": n.EMAIL})


@pytest.mark.parametrize("ctx,path,problem", [
    (_without(GOOD, "MessageName"), "MessageName", "is missing"),
    (_without(GOOD, "PrimaryEntityName"), "PrimaryEntityName", "is missing"),
    (_without(GOOD, "PrimaryEntityId"), "PrimaryEntityId", "is missing"),
    (_target_removed(GOOD), "InputParameters.Target", "expected an Entity object, got null"),
    (_target_removed(n.consent("Create", n.consent_row())), "InputParameters.Target", "Entity object"),
    (_target_removed(n.association("Associate")), "InputParameters.Target", "EntityReference object"),
    (_with(GOOD, MessageName=""), "MessageName", "non-empty string"),
    (_with(GOOD, PrimaryEntityName=7), "PrimaryEntityName", "got number"),
    (_with(GOOD, Depth="1"), "Depth", "expected an integer, got string"),
    (_with(GOOD, Depth=True), "Depth", "expected an integer, got boolean"),
    (_with(GOOD, Depth=1.5), "Depth", "expected an integer"),
    (_with(GOOD, InputParameters={"Target": {}}), "InputParameters", "expected an array of key/value pairs, got object"),
    (_with(GOOD, InputParameters=[["Target", {}]]), "InputParameters[0]", "key/value object, got array"),
    (_with(GOOD, InputParameters=[{"key": 5, "value": {}}]), "InputParameters[0].key", "expected a string"),
    (_with(GOOD, PostEntityImages={"a": 1}), "PostEntityImages", "array of key/value pairs"),
    (_with(GOOD, PostEntityImages=n.kv({"img": "x"})), "PostEntityImages.img", "Entity object"),
    (_with(GOOD, PrimaryEntityId="not-a-guid"), "PrimaryEntityId", "expected a GUID string"),
    (_with(GOOD, PrimaryEntityId=12345), "PrimaryEntityId", "expected a GUID string, got number"),
    (_with(GOOD, UserId="6d81597f-0f9f-e711-8122"), "UserId", "GUID"),
    (_with(GOOD, InitiatingUserId=[]), "InitiatingUserId", "GUID"),
    (_with(GOOD, OperationCreatedOn="2017-09-26T07:04:08Z"), "OperationCreatedOn", "expected a date like"),
    (_with(GOOD, OperationCreatedOn="/Date(abc)/"), "OperationCreatedOn", "expected a date like"),
    (_with(GOOD, OperationCreatedOn=1506409448000), "OperationCreatedOn", "expected a date like"),
    (_with(GOOD, OperationCreatedOn="/Date(99999999999999999999)/"), "OperationCreatedOn", "out of range"),
    (_with(GOOD, OperationCreatedOn="/Date(" + "9" * 5000 + ")/"), "OperationCreatedOn", "out of range"),
    (_with(GOOD, CorrelationId=5), "CorrelationId", "expected a string"),
    (_with(GOOD, OperationId={}), "OperationId", "expected a string"),
    (_with(GOOD, Stage="40"), "Stage", "expected an integer"),
    (n.member_change("Update", "contact", {"donotbulkemail": "yes"}), "donotbulkemail", "expected true or false"),
    (n.member_change("Update", "contact", {"emailaddress1": 42}), "emailaddress1", "expected a string"),
    (n.consent("Create", {**n.consent_row(), "msdynmkt_value": "Opted out"}), "msdynmkt_value", "OptionSetValue"),
    (n.consent("Create", {**n.consent_row(), "msdynmkt_purposeid": n.ref("msdynmkt_purpose", "nope")}), "msdynmkt_purposeid", "GUID"),
    (n.add_member(entity_id="nope"), "InputParameters.EntityId", "GUID"),
    (_target_removed(n.add_member()) if False else n.context("AddMember", "list", n.LIST_ID, {"EntityId": n.CONTACT_ID}),
     "InputParameters.ListId", "is missing"),
    (n.context("AddListMembers", "list", n.LIST_ID, {"ListId": n.LIST_ID, "MemberIds": []}), "InputParameters.MemberIds", "non-empty"),
    (n.add_list_members(member_ids=(n.CONTACT_ID, "x")), "InputParameters.MemberIds[1]", "GUID"),
    (n.context("Associate", "list", n.LIST_ID, {"Target": n.ref("list", n.LIST_ID)}), "InputParameters.Relationship", "Relationship object"),
    (n.context("Associate", "list", n.LIST_ID, {"Target": n.ref("list", n.LIST_ID), "Relationship": {"SchemaName": None}}),
     "InputParameters.Relationship.SchemaName", "expected a string"),
    (n.context("Associate", "list", n.LIST_ID, {"Target": n.ref("list", n.LIST_ID),
                                                "Relationship": n.relationship("listcontact_association")}),
     "InputParameters.RelatedEntities", "EntityReferenceCollection"),
    (n.association("Associate", related=[("contact", "bad")]), "InputParameters.RelatedEntities[0].Id", "GUID"),
    (n.association("Associate", target=("list", "{bad}"), primary=("list", n.LIST_ID)), "InputParameters.Target.Id", "GUID"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_malformed_notifications_name_path_and_problem(ctx, path, problem):
    with pytest.raises(NotificationError) as exc:
        parse(ctx)
    assert exc.value.path == path
    assert problem in exc.value.problem
    assert str(exc.value).startswith(f"{path}: ")


@pytest.mark.parametrize("body,problem", [
    (b"", "malformed JSON"),
    (b"{", "malformed JSON"),
    (b"{\xff}", "UTF-8"),
    (b'{"MessageName": "\xc3\x28"}', "UTF-8"),
    (b"[]", "expected a JSON object, got array"),
    (b"null", "expected a JSON object, got null"),
    (b'"Update"', "expected a JSON object, got string"),
    (b"42", "expected a JSON object, got number"),
])
def test_bodies_that_are_not_a_json_object(body, problem):
    with pytest.raises(NotificationError) as exc:
        parse_notification(body, {})
    assert exc.value.path == "body" and problem in exc.value.problem


@pytest.mark.parametrize("field", ["MessageName", "CorrelationId"])
def test_lone_surrogates_in_event_text_are_rejected(field):
    ctx = n.member_change("Create", "contact", {"emailaddress1": n.EMAIL})
    body = n.to_bytes(ctx).replace(json.dumps(ctx[field]).encode(), b'"\\ud800x"')
    with pytest.raises(NotificationError) as exc:
        parse_notification(body, {})
    assert exc.value.path == field


def test_lone_surrogate_in_an_email_is_rejected():
    body = n.to_bytes(n.member_change("Create", "contact", {"emailaddress1": "PLACEHOLDER"})).replace(b"PLACEHOLDER", b"a\\udc00@b.example")
    with pytest.raises(NotificationError) as exc:
        parse_notification(body, {})
    assert exc.value.path == "emailaddress1"


@pytest.mark.parametrize("ctx", [
    _with(GOOD, PrimaryEntityId=n.EMAIL),
    _with(GOOD, UserId=n.EMAIL),
    _with(GOOD, OperationCreatedOn=n.EMAIL),
    n.member_change("Update", "contact", {"donotbulkemail": n.EMAIL}),
    n.add_member(entity_id=n.EMAIL),
    n.consent("Create", {**n.consent_row(), "msdynmkt_topicid": n.EMAIL}),
])
def test_problems_never_quote_a_value_that_could_be_an_address(ctx):
    with pytest.raises(NotificationError) as exc:
        parse(ctx)
    assert "@" not in str(exc.value)


@pytest.mark.parametrize("alias,name", [("AddMemberList", "AddMember"), ("RemoveMemberList", "RemoveMember"),
                                        ("AddListMembersList", "AddListMembers")])
def test_list_messages_are_read_under_their_web_api_action_names_too(alias, name):
    ctx = n.add_list_members() if name == "AddListMembers" else n.add_member()
    ctx = {**ctx, "MessageName": alias}
    if name == "RemoveMember":
        ctx["MessageName"] = alias
    e = event(ctx)
    assert e.message == name and e.kind == "membership_changed"
    assert e.change.action == ("removed" if name == "RemoveMember" else "added")
