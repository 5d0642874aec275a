"""The fixpoint planner: rules R1–R6 in both modes, table-driven, with idempotence after applying."""
from __future__ import annotations

import pytest

from shared.domain.model import ConsentRow
from shared.domain.planner import (
    IN_SNAPSHOT,
    NO_SNAPSHOT,
    NOT_IN_SNAPSHOT,
    AddToOptOutList,
    Departure,
    OptOutConsent,
    RemoveFromList,
    SetDoNotBulkEmail,
    State,
    Trigger,
    effective_opt_outs,
    plan,
)
from tests.domain_builders import (
    EMAIL,
    IN,
    L_A1,
    L_A2,
    L_B1,
    L_C1,
    L_LEADS,
    L_NEWS,
    L_OTHER,
    NOT_SET,
    OO_A,
    OO_B,
    OO_C,
    OUT,
    P_A,
    P_ACME,
    P_B,
    P_C,
    P_SHARED,
    PURPOSE,
    T_A1,
    T_A2,
    T_B1,
    T_C1,
    T_EVENTS,
    T_NEWS,
    TEXT,
    TOPIC,
    apply,
    in_rounds,
    brand,
    contact,
    effects,
    lead,
    mappings,
    multi_brand,
    row,
    single_brand,
    state,
    summary,
)

A, B, C = "a@x.com", "b@x.com", "c@x.com"
SB, MB = single_brand(), multi_brand()
C1, C2, L1 = ("contact", "c1"), ("contact", "c2"), ("lead", "l1")
EV = "ev-1"


def left(member, list_id, cause=EV):
    return Trigger("left_list", cause, member=member, list_id=list_id)


def inspect(member, cause=EV, added=False):
    return Trigger("inspect_member", cause, member=member, reacts_to_addition=added)


def inspect_email(email, cause=EV):
    return Trigger("inspect_email", cause, email=email)


def assert_never_opt_in(actions, m, s: State):
    """No action can opt in: consents only go to Opted out, flags only get set, lists only lose
    subscription membership or gain opt-out membership."""
    opt_out_lists = set(m.brand_of_opt_out_list)
    for a in actions:
        if isinstance(a, OptOutConsent):
            assert a.before != OUT
            assert set(a.__slots__) == {"email", "consent_type", "purpose_id", "topic_id", "row_id", "before", "rule",
                                        "cause", "note", "since", "carried_from",
                                        "evidence"}  # no value field: the only value written is Opted out
        elif isinstance(a, SetDoNotBulkEmail):
            assert not s.members[a.member].donotbulkemail
        elif isinstance(a, RemoveFromList):
            assert a.list_id in s.lists_of[a.member]
        elif isinstance(a, AddToOptOutList):
            assert a.list_id in opt_out_lists
        else:
            raise AssertionError(f"unexpected action {a!r}")


def settled(s, m, triggers):
    """Plans, checks the plan is complete and opt-out only, applies it and checks nothing is left."""
    p = plan(s, m, triggers)
    assert p.complete, (p.frontier_emails, p.frontier_members)
    assert_never_opt_in(p.actions, m, s)
    again = plan(apply(s, p.actions), m, triggers)
    assert again.actions == [], again.actions
    return p


# --- the rules, table-driven ------------------------------------------------------------------------
# (id, mappings, state, triggers, expected summary: (what, ..., rule))

CASES = [
    # R1: a member left a mapped list: each of its emails is opted out of the list's topic.
    ("R1 single-brand, two emails", SB,
     state([contact("c1", A, B)]), [left(C1, L_NEWS)],
     {("consent", A, P_ACME, T_NEWS, None, "R1"), ("consent", B, P_ACME, T_NEWS, None, "R1")}),
    ("R1 single-brand lead list", SB,
     state([lead("l1", A)]), [left(L1, L_LEADS)],
     {("consent", A, P_ACME, T_EVENTS, None, "R1")}),
    ("R1 multi-brand", MB,
     state([contact("c1", A, B)]), [left(C1, L_B1)],
     {("consent", A, P_B, T_B1, None, "R1"), ("consent", B, P_B, T_B1, None, "R1")}),
    ("R1 unmapped list does nothing", MB,
     state([contact("c1", A)]), [left(C1, L_OTHER)], set()),
    ("R1 updates an opted-in row, leaves an opted-out one", SB,
     state([contact("c1", A, B)], consent={A: [row(A, P_ACME, T_NEWS, IN, id="ra")],
                                             B: [row(B, P_ACME, T_NEWS, OUT, id="rb")]}),
     [left(C1, L_NEWS)],
     {("consent", A, P_ACME, T_NEWS, "ra", "R1")}),
    ("R1 spreads by R2 to others with the email, their other emails by the echo", SB,
     state([contact("c1", A), (contact("c2", A, C), [L_NEWS]), (lead("l1", A), [L_LEADS])]), [left(C1, L_NEWS)],
     {("consent", A, P_ACME, T_NEWS, None, "R1"), ("remove", C2, L_NEWS, "R2"),
      ("consent", C, P_ACME, T_NEWS, None, "R1")}),
    # R2: a topic opt-out removes every member with the email from the lists mapped to the topic.
    ("R2 single-brand: contacts and the echo to other emails", SB,
     state([(contact("c1", A, B), [L_NEWS]), (contact("c2", A), [L_NEWS])], consent={A: [row(A, P_ACME, T_NEWS)]}),
     [inspect_email(A)],
     {("remove", C1, L_NEWS, "R2"), ("remove", C2, L_NEWS, "R2"), ("consent", B, P_ACME, T_NEWS, None, "R1")}),
    ("R2 single-brand: leads in lead lists, contacts untouched", SB,
     state([(lead("l1", A), [L_LEADS]), (contact("c1", A), [L_NEWS])], consent={A: [row(A, P_ACME, T_EVENTS)]}),
     [inspect_email(A)],
     {("remove", L1, L_LEADS, "R2")}),
    ("R2 multi-brand: only the topic's lists", MB,
     state([(contact("c1", A), [L_A1, L_B1])], consent={A: [row(A, P_B, T_B1)]}), [inspect_email(A)],
     {("remove", C1, L_B1, "R2")}),
    ("R2 inactive consent row still counts", MB,
     state([(contact("c1", A), [L_A1])], consent={A: [row(A, P_A, T_A1, active=False)]}), [inspect_email(A)],
     {("remove", C1, L_A1, "R2")}),
    ("R2 reaches an inactive member too", SB,
     state([(contact("c1", A, active=False), [L_NEWS])], consent={A: [row(A, P_ACME, T_NEWS)]}), [inspect_email(A)],
     {("remove", C1, L_NEWS, "R2")}),
    ("R2 ignores an opted-out row of another channel", SB,
     state([(contact("c1", A), [L_NEWS])], consent={A: [row(A, P_ACME, T_NEWS, cptype=TEXT)]}), [inspect_email(A)],
     set()),
    # R3: donotbulkemail (or donotemail) -> every email, every covered purpose (all brands).
    ("R3 single-brand donotbulkemail, then R4 to another member of the email", SB,
     state([contact("c1", A, B, dnb=True), contact("c2", B, C)]), [inspect(C1)],
     {("consent", A, P_ACME, None, None, "R3"), ("consent", B, P_ACME, None, None, "R3"),
      ("flag", C2, "R4"), ("consent", C, P_ACME, None, None, "R3")}),
    ("R3 single-brand donotemail: purposes, then R4 sets donotbulkemail too", SB,
     state([contact("c1", A, B, dne=True)]), [inspect(C1)],
     {("consent", A, P_ACME, None, None, "R3"), ("consent", B, P_ACME, None, None, "R3"), ("flag", C1, "R4")}),
    ("R3 multi-brand donotbulkemail: all brands' purposes, R4 per brand, no flag", MB,
     state([(contact("c1", A, dnb=True), [L_A1, L_B1, L_C1])]), [inspect(C1)],
     {("consent", A, P_A, None, None, "R3"), ("consent", A, P_B, None, None, "R3"),
      ("consent", A, P_C, None, None, "R3"), ("consent", A, P_SHARED, None, None, "R3"),
      ("remove", C1, L_A1, "R4"), ("remove", C1, L_B1, "R4"), ("remove", C1, L_C1, "R4"),
      ("add", C1, OO_A, "R4"), ("add", C1, OO_C, "R4"),
      ("consent", A, P_A, T_A1, None, "R1"), ("consent", A, P_B, T_B1, None, "R1"),
      ("consent", A, P_C, T_C1, None, "R1")}),
    ("R3 multi-brand donotemail on a lead", MB,
     state([(lead("l1", A, dne=True), [L_A2])]), [inspect(L1)],
     {("consent", A, P_A, None, None, "R3"), ("consent", A, P_B, None, None, "R3"),
      ("consent", A, P_C, None, None, "R3"), ("consent", A, P_SHARED, None, None, "R3"),
      ("remove", L1, L_A2, "R4"), ("add", L1, OO_B, "R4"), ("consent", A, P_A, T_A2, None, "R1")}),
    ("R3 already applied: nothing to do", SB,
     state([contact("c1", A, dnb=True)], consent={A: [row(A, P_ACME)]}), [inspect(C1)], set()),
    # R4: a purpose opt-out.
    ("R4 single-brand: every contact and lead with the email gets the flag, R3 spreads it", SB,
     state([(contact("c1", A, B), [L_NEWS]), lead("l1", A)], consent={A: [row(A, P_ACME)]}), [inspect_email(A)],
     {("flag", C1, "R4"), ("flag", L1, "R4"), ("consent", B, P_ACME, None, None, "R3")}),
    ("R4 single-brand: an uncovered purpose does nothing", SB,
     state([contact("c1", A)], consent={A: [row(A, "p-elsewhere")]}), [inspect_email(A)], set()),
    ("R4 multi-brand: leave the brand's lists, join its opt-out list, no flag", MB,
     state([(contact("c1", A, B), [L_C1, L_A1])], consent={A: [row(A, P_C)]}), [inspect_email(A)],
     {("remove", C1, L_C1, "R4"), ("add", C1, OO_C, "R4"), ("consent", B, P_C, None, None, "R5"),
      ("consent", A, P_C, T_C1, None, "R1"), ("consent", B, P_C, T_C1, None, "R1")}),
    ("R4 multi-brand: a lead does not join a contact opt-out list", MB,
     state([(lead("l1", A), [L_A2])], consent={A: [row(A, P_A)]}), [inspect_email(A)],
     {("remove", L1, L_A2, "R4"), ("consent", A, P_A, T_A2, None, "R1")}),
    ("R4 multi-brand: a shared purpose reaches every brand that owns it", MB,
     state([(contact("c1", A), [L_A1, L_B1, L_C1]), (lead("l1", A), [L_A2])], consent={A: [row(A, P_SHARED)]}),
     [inspect_email(A)],
     {("remove", C1, L_A1, "R4"), ("remove", C1, L_B1, "R4"), ("remove", L1, L_A2, "R4"),
      ("add", C1, OO_A, "R4"), ("add", L1, OO_B, "R4"),
      # R5 from the opt-out lists joined: the brands' own purposes
      ("consent", A, P_A, None, None, "R5"), ("consent", A, P_B, None, None, "R5"),
      # the echo of the removals
      ("consent", A, P_A, T_A1, None, "R1"), ("consent", A, P_B, T_B1, None, "R1"),
      ("consent", A, P_A, T_A2, None, "R1")}),
    # R5: a member in a brand's opt-out list.
    ("R5 multi-brand: leave the brand's lists, emails opted out of its purposes", MB,
     state([(contact("c1", A, B), [OO_C, L_C1, L_A1])]), [inspect(C1)],
     {("remove", C1, L_C1, "R5"), ("consent", A, P_C, None, None, "R5"), ("consent", B, P_C, None, None, "R5"),
      ("consent", A, P_C, T_C1, None, "R1"), ("consent", B, P_C, T_C1, None, "R1")}),
    ("R5 multi-brand lead opt-out list; the shared purpose carries to brand A", MB,
     state([(lead("l1", A), [OO_B, L_A2])]), [inspect(L1)],
     {("consent", A, P_B, None, None, "R5"), ("consent", A, P_SHARED, None, None, "R5"),
      ("remove", L1, L_A2, "R4"), ("consent", A, P_A, T_A2, None, "R1")}),
    ("R5 single-brand with an opt-out list configured: flag by R4", single_brand(opt_out=("oo-acme", "contact")),
     state([(contact("c1", A), ["oo-acme", L_NEWS])]), [inspect(C1)],
     {("remove", C1, L_NEWS, "R5"), ("consent", A, P_ACME, None, None, "R5"), ("flag", C1, "R4"),
      ("consent", A, P_ACME, T_NEWS, None, "R1")}),
    # R6: an addition while already opted out.
    ("R6/R2 single-brand: added to a list while opted out of its topic", SB,
     state([(contact("c1", A), [L_NEWS])], consent={A: [row(A, P_ACME, T_NEWS)]}, cause_of={A: EV}),
     [inspect(C1, added=True)],
     {("remove", C1, L_NEWS, "R6/R2")}),
    ("R6/R2 lead added to a lead list while opted out of its topic", MB,
     state([(lead("l1", A), [L_A2])], consent={A: [row(A, P_A, T_A2)]}, cause_of={A: EV}),
     [inspect(L1, added=True)],
     {("remove", L1, L_A2, "R6/R2")}),
    ("R6/R4 single-brand: added while opted out of the purpose sets the flag", SB,
     state([(contact("c1", A), [L_NEWS])], consent={A: [row(A, P_ACME)]}, cause_of={A: EV}),
     [inspect(C1, added=True)],
     {("flag", C1, "R6/R4")}),
    ("R6/R4 multi-brand: added while opted out of the purpose removes it again", MB,
     state([(contact("c1", A), [L_C1])], consent={A: [row(A, P_C)]}, cause_of={A: EV}),
     [inspect(C1, added=True)],
     {("remove", C1, L_C1, "R6/R4"), ("add", C1, OO_C, "R6/R4"), ("consent", A, P_C, T_C1, None, "R1")}),
    ("R6 single-brand: email changed to an opted-out address", SB,
     state([contact("c1", A, B)], consent={B: [row(B, P_ACME)]}, cause_of={A: EV, B: EV}),
     [inspect(C1, added=True)],
     {("flag", C1, "R6/R4"), ("consent", A, P_ACME, None, None, "R3")}),
    ("R6 multi-brand: email changed to an address opted out of a topic", MB,
     state([(contact("c1", B), [L_A1, L_B1])], consent={B: [row(B, P_A, T_A1)]}, cause_of={B: EV}),
     [inspect(C1, added=True)],
     {("remove", C1, L_A1, "R6/R2")}),
    ("not R6 without an addition: plain R2", SB,
     state([(contact("c1", A), [L_NEWS])], consent={A: [row(A, P_ACME, T_NEWS)]}, cause_of={A: EV}),
     [inspect(C1, added=False)],
     {("remove", C1, L_NEWS, "R2")}),
    ("not R6 when the chain starts from the trigger (R1 then R2)", SB,
     state([contact("c1", A), (contact("c2", A), [L_NEWS])], cause_of={A: EV}),
     [left(C1, L_NEWS), inspect(C1, added=True)],
     {("consent", A, P_ACME, T_NEWS, None, "R1"), ("remove", C2, L_NEWS, "R2")}),
    ("created with donotbulkemail: R3, not relabelled", SB,
     state([contact("c1", A, dnb=True)], cause_of={A: EV}), [inspect(C1, added=True)],
     {("consent", A, P_ACME, None, None, "R3")}),
]


@pytest.mark.parametrize("name,m,s,triggers,expected", CASES, ids=[c[0] for c in CASES])
def test_rules(name, m, s, triggers, expected):
    p = settled(s, m, triggers)
    assert summary(p.actions) == expected
    assert len(p.actions) == len(expected)  # no duplicate actions


@pytest.mark.parametrize("name,m,s,triggers,expected", CASES, ids=[c[0] for c in CASES])
def test_rules_never_set_the_flag_in_multi_brand(name, m, s, triggers, expected):
    p = plan(s, m, triggers)
    if m.mode == "multi-brand":
        assert not any(isinstance(a, SetDoNotBulkEmail) for a in p.actions)


def test_actions_carry_the_cause_and_the_member_emails():
    s = state([(contact("c1", " A@X.com ", "b@x.com"), [L_NEWS])], consent={A: [row(A, P_ACME, T_NEWS)]},
              cause_of={A: "ev-9"})
    (consent, remove) = sorted(plan(s, SB, [inspect_email(A, "ev-9")]).actions, key=lambda a: type(a).__name__)
    assert isinstance(remove, RemoveFromList) and isinstance(consent, OptOutConsent)
    assert remove.emails == (A, B) and remove.cause == "ev-9"
    assert (consent.email, consent.cause, consent.consent_type, consent.before) == (B, "ev-9", TOPIC, None)


def test_emails_are_normalised_and_only_configured_columns_count():
    m = single_brand(email_columns=("emailaddress1", "emailaddress2"))
    s = state([contact("c1", "  A@X.COM", None, C)], loaded=[A, C])
    p = plan(s, m, [left(C1, L_NEWS)])
    assert effects(p.actions) == {("consent", A, P_ACME, T_NEWS, None)}  # emailaddress3 (C) is not configured


def test_a_blank_email_is_no_address():
    s = state([contact("c1", "   ", "")], loaded=[])
    p = plan(s, SB, [left(C1, L_NEWS)])
    assert p.complete and p.actions == []


def test_state_facts_produce_no_actions():
    """Everything already true in the state: flags, opt-outs, opt-out list memberships."""
    s = state([(contact("c1", A, dnb=True), [OO_A])],
              consent={A: [row(A, p) for p in (P_A, P_B, P_C, P_SHARED)] + [row(A, P_A, T_A1)]})
    s2 = state([(contact("c1", A, dnb=True), [OO_A, OO_C])], consent=s.consent)
    assert plan(s2, MB, [inspect(C1)]).actions == []


# --- consent rows: duplicates, inactive rows, rows of other kinds --------------------------------------

def test_duplicates_newest_decides_opted_in_wins_when_newest():
    rows = [row(A, P_ACME, T_NEWS, OUT, modified="2024-01-01T00:00:00Z"),
            row(A, P_ACME, T_NEWS, IN, modified="2024-02-01T00:00:00Z")]
    s = state([(contact("c1", A), [L_NEWS])], consent={A: rows})
    assert plan(s, SB, [inspect_email(A)]).actions == []


def test_duplicates_newest_decides_opted_out_wins_when_newest():
    rows = [row(A, P_ACME, T_NEWS, IN, modified="2024-03-01T00:00:00Z", id="old-in"),
            row(A, P_ACME, T_NEWS, OUT, modified="2024-04-01T00:00:00Z")]
    s = state([(contact("c1", A), [L_NEWS])], consent={A: rows})
    # already effective: the older opted-in duplicate is not RTM's view, so it is left alone
    assert summary(plan(s, SB, [inspect_email(A)]).actions) == {("remove", C1, L_NEWS, "R2")}


def test_every_non_opted_out_duplicate_gets_its_own_update():
    rows = [row(A, P_ACME, T_NEWS, OUT, id="r-out", modified="2024-01-01T00:00:00Z"),
            row(A, P_ACME, T_NEWS, NOT_SET, id="r-inactive", modified="2024-02-01T00:00:00Z", active=False),
            row(A, P_ACME, T_NEWS, IN, id="r-in", modified="2024-03-01T00:00:00Z"),
            row(A, P_ACME, T_NEWS, None, id="r-none", modified=None)]
    s = state([contact("c1", A)], consent={A: rows})
    p = settled(s, SB, [left(C1, L_NEWS)])
    got = {(a.row_id, a.before) for a in p.actions}
    assert got == {("r-inactive", NOT_SET), ("r-in", IN), ("r-none", None)}
    assert all(a.rule == "R1" and a.topic_id == T_NEWS and a.purpose_id == P_ACME for a in p.actions)


def test_purpose_rows_are_those_without_topic():
    # only a topic row under the purpose: the purpose needs a row of its own
    s = state([contact("c1", A, dnb=True)], consent={A: [row(A, P_ACME, T_NEWS, IN, id="topic-row")]})
    p = settled(s, SB, [])
    assert [(a.row_id, a.consent_type, a.topic_id) for a in p.actions] == [(None, PURPOSE, None)]


def test_rows_of_another_channel_are_neither_read_nor_written():
    s = state([contact("c1", A)], consent={A: [row(A, P_ACME, T_NEWS, IN, cptype=TEXT, id="sms")]})
    p = settled(s, SB, [left(C1, L_NEWS)])
    assert [(a.row_id, a.topic_id) for a in p.actions] == [(None, T_NEWS)]


def test_rows_without_channel_are_taken_as_email():
    s = state([contact("c1", A)], consent={A: [row(A, P_ACME, T_NEWS, IN, cptype=None, id="nochan")]})
    assert [a.row_id for a in settled(s, SB, [left(C1, L_NEWS)]).actions] == ["nochan"]


def test_topic_rows_under_another_purpose_are_not_updated():
    s = state([contact("c1", A)], consent={A: [row(A, P_C, T_NEWS, IN, id="wrong-purpose")]})
    p = plan(s, SB, [left(C1, L_NEWS)])
    assert [(a.row_id, a.purpose_id) for a in p.actions] == [(None, P_ACME)]


@pytest.mark.parametrize("rows,purposes,topics", [
    ([], set(), set()),
    ([row(A, P_A)], {P_A}, set()),
    ([row(A, P_A, T_A1)], set(), {T_A1}),
    ([row(A, P_A, value=IN)], set(), set()),
    ([row(A, P_A, value=NOT_SET), row(A, P_B, value=None)], set(), set()),
    ([row(A, P_A, cptype=TEXT)], set(), set()),
    ([row(A, P_A, cptype=None)], {P_A}, set()),
    ([row(A, P_A, active=False)], {P_A}, set()),
    ([row(A, P_A, modified="2024-01-02"), row(A, P_A, value=IN, modified="2024-01-01")], {P_A}, set()),
    ([row(A, P_A, modified="2024-01-01"), row(A, P_A, value=IN, modified="2024-01-02")], set(), set()),
    ([row(A, P_A, modified=None), row(A, P_A, value=IN, modified="2024-01-01")], set(), set()),
    # the purpose row and a topic row of the same purpose are separate keys
    ([row(A, P_A), row(A, P_A, T_A1, IN)], {P_A}, set()),
    ([row(A, P_A, value=IN), row(A, P_A, T_A1)], set(), {T_A1}),
    # a topic row without a topic names nothing
    ([row(A, P_A, None, ctype=TOPIC)], set(), set()),
    ([ConsentRow("x", A, EMAIL, None, OUT, P_A, None)], set(), set()),
], ids=lambda v: None)
def test_effective_opt_outs(rows, purposes, topics):
    assert effective_opt_outs(rows) == (purposes, topics)


# --- several emails, several members ------------------------------------------------------------------

@pytest.mark.parametrize("m", [SB, MB], ids=["single", "multi"])
def test_one_email_many_members_contacts_and_leads(m):
    topic, purpose, clist, llist = (T_NEWS, P_ACME, L_NEWS, L_LEADS) if m is SB else (T_A1, P_A, L_A1, L_A2)
    s = state([(contact("c1", A, B), [clist]), (contact("c2", C, A), [clist]), (lead("l1", A), [llist])],
              consent={A: [row(A, purpose, topic)]})
    p = settled(s, m, [inspect_email(A)])
    assert {(a.member, a.list_id) for a in p.actions if isinstance(a, RemoveFromList)} == {(C1, clist), (C2, clist)}
    assert {a.email for a in p.actions if isinstance(a, OptOutConsent)} == {B, C}  # the echo: R1 on the others


def test_r1_echo_of_the_sync_own_removal_is_settled():
    """After the planner removes c1 from L, the Disassociate echo (left_list) finds nothing to do."""
    s = state([(contact("c1", A, B), [L_NEWS])], consent={A: [row(A, P_ACME, T_NEWS)]})
    p = plan(s, SB, [inspect_email(A)])
    after = apply(s, p.actions)
    assert plan(after, SB, [left(C1, L_NEWS, "echo")]).actions == []


def test_donotemail_member_shares_the_email_with_another_contact_single_brand():
    """The purpose opt-out R3 writes reaches the other contact of the email by R4 (an email is a person)."""
    s = state([contact("c1", A, dne=True), contact("c2", A)])
    p = settled(s, SB, [inspect(C1)])
    assert summary(p.actions) == {("consent", A, P_ACME, None, None, "R3"), ("flag", C1, "R4"), ("flag", C2, "R4")}


@pytest.mark.parametrize("m", [SB, MB], ids=["single", "multi"])
def test_donotemail_is_a_global_opt_out_and_only_single_brand_sets_the_flag(m):
    s = state([(contact("c1", A, B, dne=True), [L_NEWS, L_A1]), (lead("l1", B, dne=True), [])])
    p = settled(s, m, [inspect(C1), inspect(L1)])
    flags = {a.member for a in p.actions if isinstance(a, SetDoNotBulkEmail)}
    assert flags == ({C1, L1} if m is SB else set())  # single-brand: by R4, from R3's own opt-out
    assert {(a.email, a.purpose_id) for a in p.actions if isinstance(a, OptOutConsent) and a.topic_id is None} == \
        {(e, pu) for e in (A, B) for pu in m.covered_purposes}


def test_inactive_members_are_reached_like_active_ones():
    s = state([contact("c1", A, active=False), lead("l1", A, active=False)], consent={A: [row(A, P_ACME)]})
    assert summary(settled(s, SB, [inspect_email(A)]).actions) == {("flag", C1, "R4"), ("flag", L1, "R4")}


def test_brand_without_opt_out_list_only_removes():
    m = mappings("multi-brand", brand("Solo", ["p-solo"], [("l-solo", "t-solo", "p-solo")]))
    s = state([(contact("c1", A), ["l-solo"])], consent={A: [row(A, "p-solo")]})
    p = settled(s, m, [inspect_email(A)])
    assert summary(p.actions) == {("remove", C1, "l-solo", "R4"), ("consent", A, "p-solo", "t-solo", None, "R1")}


def test_already_in_the_opt_out_list_is_not_added_again():
    s = state([(contact("c1", A), [OO_C])], consent={A: [row(A, P_C)]})
    assert plan(s, MB, [inspect_email(A)]).actions == []


# --- the frontier and the rounds protocol ------------------------------------------------------------

def test_empty_state_asks_for_the_trigger_member_and_email():
    p = plan(State(), SB, [inspect(C1, "ev-m"), inspect_email(A, "ev-e"), left(C2, L_NEWS, "ev-l")])
    assert p.actions == [] and not p.complete
    assert p.frontier_members == {C1: "ev-m", C2: "ev-l"}
    assert p.frontier_emails == {A: "ev-e"}


def test_loaded_member_asks_for_its_emails():
    s = state([contact("c1", A, B)], loaded=[])
    p = plan(s, SB, [inspect(C1)])
    assert p.frontier_emails == {A: EV, B: EV} and p.frontier_members == {} and p.actions == []


def test_missing_member_is_not_asked_for_again():
    s = state(missing=[C1])
    p = plan(s, SB, [inspect(C1), left(C1, L_NEWS)])
    assert p.complete and p.actions == []


def test_facts_about_unloaded_emails_go_to_the_frontier_not_to_actions():
    # c1 is loaded through A; its other email B is not: R2 on A removes c1, whose echo needs B
    s = state([(contact("c1", A, B), [L_NEWS])], consent={A: [row(A, P_ACME, T_NEWS)]}, loaded=[A],
              cause_of={A: "ev-a"})
    p = plan(s, SB, [inspect_email(A, "ev-a")])
    assert p.frontier_emails == {B: "ev-a"}
    assert summary(p.actions) == {("remove", C1, L_NEWS, "R2")}
    assert not any(isinstance(a, OptOutConsent) and a.email == B for a in p.actions)


def test_rounds_reach_a_complete_plan_with_the_same_actions():
    world = state([(contact("c1", A, B), [L_NEWS]), (contact("c2", B, C), [L_NEWS]), (lead("l1", C), [L_LEADS])],
                  consent={B: [row(B, P_ACME, T_NEWS)], C: [row(C, P_ACME)]})
    s, p, rounds = in_rounds(world, SB, [inspect(C1, added=True)])
    assert rounds == 3  # c1; then A and B; then C (through c2)
    # B's topic opt-out removes c1 and c2 (R6/R2: found because c1 was added), the echo reaches A and C;
    # C's purpose opt-out flags c2 and l1 (R4), c2's flag opts B out of the purpose (R3), which flags c1.
    assert summary(p.actions) == {
        ("remove", C1, L_NEWS, "R6/R2"), ("remove", C2, L_NEWS, "R6/R2"),
        ("consent", A, P_ACME, T_NEWS, None, "R1"), ("consent", C, P_ACME, T_NEWS, None, "R1"),
        ("flag", C2, "R6/R4"), ("flag", L1, "R6/R4"), ("flag", C1, "R6/R4"),
        ("consent", B, P_ACME, None, None, "R3"), ("consent", A, P_ACME, None, None, "R3"),
    }
    assert s.missing_members == set() and s.loaded_emails == {A, B, C}
    assert plan(apply(s, p.actions), SB, [inspect(C1, added=True)]).actions == []


def test_rounds_with_a_deleted_member():
    world = state([contact("c2", A)])
    s, p, rounds = in_rounds(world, SB, [left(C1, L_NEWS), inspect_email(A)])
    assert rounds == 1 and C1 in s.missing_members and p.actions == []


def test_donotemail_member_with_an_rtm_purpose_opt_out_gets_the_flag_like_everyone_single_brand():
    s = state([contact("c1", A, B, dne=True), lead("l1", A)], consent={A: [row(A, P_ACME)]})
    p = settled(s, SB, [inspect_email(A)])
    assert summary(p.actions) == {("flag", C1, "R4"), ("flag", L1, "R4"), ("consent", B, P_ACME, None, None, "R3")}


def test_a_purpose_row_that_carries_a_topic_is_read_and_written_as_purpose_level():
    # RTM should never write one, but if it did the newest row decides, so it must be updated too.
    rows = [row("a@x.com", P_ACME, None, OUT, id="old", modified="2024-01-01T00:00:00Z"),
            ConsentRow("odd", "a@x.com", EMAIL, PURPOSE, IN, P_ACME, T_NEWS, modified_on="2024-02-01T00:00:00Z")]
    assert effective_opt_outs(rows) == (set(), set())
    s = state([contact("c1", "a@x.com", dnb=True)], {"a@x.com": rows})
    actions = plan(s, single_brand(), []).actions
    assert [(a.row_id, a.before) for a in actions if isinstance(a, OptOutConsent)] == [("odd", IN)]


# --- a departure an event claims: a hint to re-read, never evidence --------------------------

def claimed(member, list_id, cause=EV):
    return Trigger("left_list", cause, member=member, list_id=list_id, claimed=True)


def test_a_claimed_departure_of_a_member_still_in_the_list_is_an_inspection():
    s = state([(contact("c1", A), [L_NEWS])])
    p = plan(s, SB, [claimed(C1, L_NEWS)])
    assert p.complete and p.actions == [] and not p.frontier_departures  # no snapshot read either


@pytest.mark.parametrize("kind,r1", [(IN_SNAPSHOT, True), (NO_SNAPSHOT, True), (NOT_IN_SNAPSHOT, False)])
def test_a_claimed_departure_waits_for_the_snapshot_and_follows_it(kind, r1):
    s = state([contact("c1", A)])
    p = plan(s, SB, [claimed(C1, L_NEWS)])
    assert p.frontier_departures == {(C1, L_NEWS)} and p.actions == []
    s.departures[(C1, L_NEWS)] = Departure(kind, "2026-12-01T02:00:00Z" if kind != NO_SNAPSHOT else None)
    p = plan(s, SB, [claimed(C1, L_NEWS)])
    assert p.complete
    assert summary(p.actions) == ({("consent", A, P_ACME, T_NEWS, None, "R1")} if r1 else set())
    if r1:
        assert "departure: " + kind in p.actions[0].evidence
