"""From a ChangeEvent to planner triggers, for every kind of change, and echo detection."""
from __future__ import annotations

from dataclasses import dataclass

import pytest

from shared.domain.consent import ConsentSource, ConsentValue, ContactPointType
from shared.domain.events import (
    ChangeEvent,
    ConsentChanged,
    ContactChanged,
    MembershipChanged,
    Origin,
    RecordDeleted,
    RereadRecord,
)
from shared.domain.planner import Trigger
from shared.domain.triggers import CONSENT_TABLE, NeedsConsentRow, NoEffect, is_echo, triggers_for
from tests.domain_builders import (
    EMAIL,
    IN,
    L_A1,
    L_A2,
    L_B1,
    L_LEADS,
    L_NEWS,
    L_OTHER,
    NOT_SET,
    OO_A,
    OO_B,
    OUT,
    P_A,
    PURPOSE,
    T_A1,
    TEXT,
    TOPIC,
    multi_brand,
    single_brand,
)

SB, MB = single_brand(), multi_brand()
SYNC_USER, PERSON = "5a1c0000-0000-0000-0000-000000000001", "9e000000-0000-0000-0000-000000000002"
EV = "ev-1"
AT = "2024-05-01T10:00:00Z"  # the events' origin time


def origin(user=PERSON, initiating=PERSON) -> Origin:
    return Origin(AT, user, initiating, "corr", "org", 1)


def event(change, table="contact", record_id="c1", message="Update", o: Origin | None = None) -> ChangeEvent:
    return ChangeEvent(EV, table, record_id, message, o or origin(), change)


def consent(value=OUT, email=" A@X.com ", cptype=EMAIL, ctype=TOPIC, source=None) -> ConsentChanged:
    return ConsentChanged(email, cptype, ctype, value, P_A, T_A1, source, None)


# --- contact and lead changes ---------------------------------------------------------------------

@pytest.mark.parametrize("table", ["contact", "lead"])
def test_create_inspects_member_as_addition_with_email_hints(table):
    c = ContactChanged(("emailaddress1", "emailaddress2", "donotbulkemail"), donotbulkemail=False,
                       emails={"emailaddress1": " A@X.com", "emailaddress2": "a@x.com ", "emailaddress3": None})
    got = triggers_for(event(c, table=table, message="Create"), SB)
    assert got == [Trigger("inspect_member", EV, member=(table, "c1"), reacts_to_addition=True, at=AT),
                   Trigger("inspect_email", EV, email="a@x.com")]  # normalised, one hint per address


@pytest.mark.parametrize("changed,added", [
    (("donotbulkemail",), False),
    (("donotemail",), False),
    (("donotbulkemail", "donotemail"), False),
    (("emailaddress1",), True),
    (("emailaddress3", "donotbulkemail"), True),
    ((), False),
])
def test_update_is_an_addition_only_when_an_email_changed(changed, added):
    got = triggers_for(event(ContactChanged(changed, emails={})), SB)
    assert got == [Trigger("inspect_member", EV, member=("contact", "c1"), reacts_to_addition=added, at=AT)]


@pytest.mark.parametrize("message,changed,dnb,dne,dated", [
    ("Update", ("donotbulkemail",), True, None, True),
    ("Update", ("donotemail",), None, True, True),
    ("Update", ("donotbulkemail",), False, None, False),  # cleared: no opt-out to date
    ("Update", ("emailaddress1",), True, None, False),  # the flag was already set: the event does not date it
    ("Create", (), True, False, True),
])
def test_an_event_that_sets_a_flag_dates_it(message, changed, dnb, dne, dated):
    got = triggers_for(event(ContactChanged(changed, donotbulkemail=dnb, donotemail=dne), message=message), SB)
    assert got[0].at == AT and got[0].opted_out == ("flag" if dated else None)


def test_email_hints_only_for_configured_columns_and_non_blank():
    m = single_brand(email_columns=("emailaddress1",))
    c = ContactChanged(("emailaddress1", "emailaddress2"), emails={"emailaddress1": "  ", "emailaddress2": "b@x.com"})
    got = triggers_for(event(c), m)
    assert got == [Trigger("inspect_member", EV, member=("contact", "c1"), reacts_to_addition=True, at=AT)]


def test_contact_change_on_another_table_has_no_effect():
    got = triggers_for(event(ContactChanged(("name",)), table="account"), SB)
    assert isinstance(got, NoEffect) and "account" in got.reason


# --- membership changes ----------------------------------------------------------------------------

@pytest.mark.parametrize("m,list_id,member_table,expected_table", [
    (SB, L_NEWS, "contact", "contact"),
    (SB, L_NEWS, None, "contact"),  # AddMember/RemoveMember do not say: the list's type decides
    (SB, L_LEADS, "lead", "lead"),
    (SB, L_LEADS, None, "lead"),
    (MB, L_A2, None, "lead"),
    (MB, L_B1, "contact", "contact"),
])
def test_removed_from_a_mapped_list_is_left_list(m, list_id, member_table, expected_table):
    got = triggers_for(event(MembershipChanged("removed", (list_id,), ("m1",), member_table), table="list",
                             record_id=list_id, message="RemoveMember"), m)
    # A claim: R1 waits until the member is read out of the list and the snapshot does not deny it.
    assert got == [Trigger("left_list", EV, member=(expected_table, "m1"), list_id=list_id, at=AT, claimed=True)]


@pytest.mark.parametrize("m,list_id", [(SB, L_NEWS), (SB, L_LEADS), (MB, L_A1), (MB, OO_A), (MB, OO_B)])
def test_added_to_a_mapped_or_opt_out_list_inspects_the_member_as_addition(m, list_id):
    table = m.member_table_of_list[list_id]
    got = triggers_for(event(MembershipChanged("added", (list_id,), ("m1", "m2"), None), table="list"), m)
    # Joining an opt-out list is an opt-out the event dates (timeline evidence); a mapped list is not.
    dated = dict(list_id=list_id, at=AT, opted_out="join") if list_id in m.brand_of_opt_out_list else {}
    assert got == [Trigger("inspect_member", EV, member=(table, "m1"), reacts_to_addition=True, **dated),
                   Trigger("inspect_member", EV, member=(table, "m2"), reacts_to_addition=True, **dated)]


def test_several_lists_and_members_skip_the_unmapped_ones():
    c = MembershipChanged("removed", (L_OTHER, L_A1, L_B1), ("m1", "m2"), "contact")
    got = triggers_for(event(c, table="contact"), MB)
    assert got == [Trigger("left_list", EV, member=("contact", mid), list_id=lid, at=AT, claimed=True)
                   for lid in (L_A1, L_B1) for mid in ("m1", "m2")]


@pytest.mark.parametrize("change", [
    MembershipChanged("removed", (L_OTHER,), ("m1",), "contact"),  # unmapped list
    MembershipChanged("added", (L_OTHER,), ("m1",), None),
    MembershipChanged("removed", (L_A1,), ("m1",), "lead"),  # a lead cannot be in a contact list
    MembershipChanged("added", (L_A2,), ("m1",), "contact"),
    MembershipChanged("removed", (L_A1,), (), "contact"),
], ids=["removed-unmapped", "added-unmapped", "removed-wrong-table", "added-wrong-table",
        "no-members"])
def test_membership_changes_with_no_effect(change):
    got = triggers_for(event(change, table="list"), MB)
    assert isinstance(got, NoEffect) and got.reason


# --- consent changes -------------------------------------------------------------------------------

@pytest.mark.parametrize("value,cptype,ctype", [
    (OUT, EMAIL, TOPIC), (OUT, EMAIL, PURPOSE), (None, EMAIL, TOPIC), (OUT, None, TOPIC), (None, None, None),
])
def test_consent_opted_out_or_unknown_inspects_the_email(value, cptype, ctype):
    got = triggers_for(event(consent(value, cptype=cptype, ctype=ctype), table=CONSENT_TABLE, record_id="r1"), MB)
    assert got == [Trigger("inspect_email", EV, email="a@x.com")]


@pytest.mark.parametrize("value,cptype", [(IN, EMAIL), (NOT_SET, EMAIL), (IN, None), (OUT, TEXT),
                                          (OUT, int(ContactPointType.VOICE)), (None, TEXT)])
def test_consent_opted_in_or_not_email_has_no_effect(value, cptype):
    got = triggers_for(event(consent(value, cptype=cptype), table=CONSENT_TABLE), MB)
    assert isinstance(got, NoEffect)


@pytest.mark.parametrize("source", [ConsentSource.PREFERENCE_PAGE, ConsentSource.PREFERENCE_CENTER,
                                    ConsentSource.REALTIME_FORM, ConsentSource.SUBSCRIPTION_CENTER])
def test_a_personal_opt_in_inspects_the_email(source):
    """The person opted back in: judged at once (timeline rule), while the evidence is fresh."""
    got = triggers_for(event(consent(IN, source=int(source)), table=CONSENT_TABLE, record_id="r1"), MB)
    assert got == [Trigger("inspect_email", EV, email="a@x.com")]
    got = triggers_for(event(consent(IN, email=None, source=int(source)), table=CONSENT_TABLE, record_id="r1"), MB)
    assert got == NeedsConsentRow("r1", EV)


@pytest.mark.parametrize("source", [None, ConsentSource.INTERNAL, ConsentSource.LOADED, ConsentSource.TEXT_MESSAGE])
def test_an_opt_in_by_a_marketer_or_system_has_no_effect(source):
    got = triggers_for(event(consent(IN, source=None if source is None else int(source)), table=CONSENT_TABLE), MB)
    assert isinstance(got, NoEffect)


@pytest.mark.parametrize("email", [None, "", "   "])
def test_consent_without_email_needs_the_row(email):
    got = triggers_for(event(consent(OUT, email=email), table=CONSENT_TABLE, record_id="r9"), MB)
    assert got == NeedsConsentRow("r9", EV)


def test_consent_value_codes_are_the_documented_ones():
    assert (OUT, IN, NOT_SET) == (int(ConsentValue.OPTED_OUT), int(ConsentValue.OPTED_IN), int(ConsentValue.NOT_SET))


# --- re-reads, deletions, anything else ---------------------------------------------------------------

@pytest.mark.parametrize("table", ["contact", "lead"])
def test_reread_of_a_member_inspects_it_as_addition(table):
    got = triggers_for(event(RereadRecord("msg-size-exceeded"), table=table, record_id="x1"), SB)
    assert got == [Trigger("inspect_member", EV, member=(table, "x1"), reacts_to_addition=True)]


def test_reread_of_a_consent_row_needs_the_row():
    assert triggers_for(event(RereadRecord("too big"), table=CONSENT_TABLE, record_id="r2"), SB) == \
        NeedsConsentRow("r2", EV)


@pytest.mark.parametrize("table", ["list", "account"])
def test_reread_of_anything_else_is_left_to_reconciliation(table):
    got = triggers_for(event(RereadRecord("too big"), table=table, message="Associate"), SB)
    assert isinstance(got, NoEffect) and "reconciliation" in got.reason and table in got.reason


@pytest.mark.parametrize("table", ["contact", "lead"])
def test_record_deleted_has_no_effect(table):
    got = triggers_for(event(RecordDeleted(), table=table, message="Delete"), SB)
    assert isinstance(got, NoEffect)


def test_an_unknown_change_kind_has_no_effect():
    @dataclass(frozen=True)
    class Strange:
        kind = "strange"

    got = triggers_for(event(Strange()), SB)  # type: ignore[arg-type]
    assert isinstance(got, NoEffect) and "strange" in got.reason


# --- echoes ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("o,sync_user,echo", [
    (origin(user=SYNC_USER, initiating=SYNC_USER), SYNC_USER, True),
    (origin(user=PERSON, initiating=SYNC_USER), SYNC_USER, True),
    (origin(user=SYNC_USER, initiating=PERSON), SYNC_USER, True),
    (origin(), SYNC_USER, False),
    (origin(user=None, initiating=None), SYNC_USER, False),
    (origin(user=SYNC_USER, initiating=SYNC_USER), None, False),  # unknown sync user: nothing is an echo
    (origin(user=None, initiating=None), None, False),
    (origin(user=None, initiating=None), "", False),
])
def test_is_echo(o, sync_user, echo):
    assert is_echo(event(ContactChanged(("donotbulkemail",)), o=o), sync_user) is echo


def test_leaving_an_opt_out_list_inspects_the_member():
    # Still opted out of the brand's purposes in RTM? Then R4 puts it back: opt-out wins.
    got = triggers_for(event(MembershipChanged("removed", (OO_A,), ("m1",), "contact"), table="list"), MB)
    assert got == [Trigger("inspect_member", got[0].cause, member=("contact", "m1"))]
