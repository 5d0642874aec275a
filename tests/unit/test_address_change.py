"""R7: an address that changes keeps the person's opt-outs, from the webhook's pre-image to the plan.

The new address gets every opt-out the old one has as RTM sees it (topics and purposes, mapped or
not), never an opt-in; the action names the old address so the ledger can file its pseudonym; a
personal opt-in of the new address newer than the old address's opt-out stands (timeline rule).
"""
from __future__ import annotations

import pytest

from shared.domain.consent import ConsentSource
from shared.domain.events import ChangeEvent, ContactChanged, Origin, event_from_json
from shared.domain.planner import OptOutConsent, Trigger, plan
from shared.domain.triggers import triggers_for, untraced_address_change
from shared.ingest.notification import parse_notification
from tests import notifications as n
from tests.domain_builders import (IN, L_A1, OUT, P_A, P_ACME, P_B, T_A1, T_NEWS, contact, in_rounds, lead,
                                   multi_brand, row, single_brand, state, summary)
from tests.unit.test_planner import settled

OLD, NEW, OTHER = "old@x.com", "new@x.com", "other@x.com"
SB, MB = single_brand(), multi_brand()
EV = "ev-7"
OPT_OUT, RECONSENT, LATER = "2024-01-01T00:00:00Z", "2024-02-01T00:00:00Z", "2024-03-01T00:00:00Z"
CENTRE = int(ConsentSource.PREFERENCE_CENTER)


def changed(previous=OLD, new=NEW):
    return Trigger("address_changed", EV, email=new, previous_email=previous)


# --- the planner ------------------------------------------------------------------------------

def test_every_opt_out_of_the_old_address_is_carried_to_the_new_one():
    s = state([contact("c1", NEW)], consent={
        OLD: [row(OLD, P_A, T_A1, OUT, id="o-topic", source=CENTRE), row(OLD, P_B, None, OUT, id="o-purpose"),
              row(OLD, P_A, "t-unmapped", OUT, id="o-unmapped"), row(OLD, P_A, None, IN, id="o-in")],
        NEW: [row(NEW, P_A, T_A1, IN, id="n-topic", source=int(ConsentSource.INTERNAL))]})
    p = settled(s, MB, [changed()])
    carried = {a for a in summary(p.actions) if a[-1] == "R7"}
    assert carried == {("consent", NEW, P_A, T_A1, "n-topic", "R7"),  # a marketer's opt-in is overwritten
                       ("consent", NEW, P_B, None, None, "R7"),
                       ("consent", NEW, P_A, "t-unmapped", None, "R7")}  # the purpose comes from the old row
    for a in p.actions:
        if isinstance(a, OptOutConsent) and a.rule == "R7":
            assert a.carried_from == OLD and a.since == OPT_OUT  # the old row's time: the ledger's evidence
            assert a.note.startswith("carried over from the address this record had before")
            assert "@" not in a.note  # no address in the ledger's text
    topic = next(a for a in p.actions if isinstance(a, OptOutConsent) and a.topic_id == T_A1)
    assert "source Preference center" in topic.note
    assert not any(isinstance(a, OptOutConsent) and a.purpose_id == P_A and a.topic_id is None for a in p.actions)


def test_the_new_address_follows_through_the_rules_to_the_outbound_side():
    # Multi-brand: the carried purpose opt-out takes the contact out of the brand's lists (R4, as R6).
    s = state([(contact("c1", NEW), [L_A1])], consent={OLD: [row(OLD, P_A, None, OUT, id="o")]})
    p = settled(s, MB, [changed(), Trigger("inspect_member", EV, member=("contact", "c1"), reacts_to_addition=True)])
    assert ("consent", NEW, P_A, None, None, "R7") in summary(p.actions)
    assert ("remove", ("contact", "c1"), L_A1, "R6/R4") in summary(p.actions)


def test_leads_keep_their_opt_outs_too():
    s = state([lead("l1", NEW)], consent={OLD: [row(OLD, P_ACME, T_NEWS, OUT, id="o")]})
    p = settled(s, SB, [changed()])
    assert ("consent", NEW, P_ACME, T_NEWS, None, "R7") in summary(p.actions)


@pytest.mark.parametrize("old_rows", [[], [row(OLD, P_A, T_A1, IN)], [row(OLD, P_A, T_A1, OUT, modified=OPT_OUT),
                                                                     row(OLD, P_A, T_A1, IN, modified=LATER)]],
                         ids=["no rows", "opted in", "newest duplicate opted in"])
def test_nothing_is_carried_that_rtm_does_not_honour_as_an_opt_out(old_rows):
    s = state([contact("c1", NEW)], consent={OLD: old_rows})
    assert plan(s, MB, [changed()]).actions == []


def test_an_opt_out_the_new_address_already_has_is_left_alone():
    s = state([contact("c1", NEW)], consent={OLD: [row(OLD, P_B, None, OUT)], NEW: [row(NEW, P_B, None, OUT)]})
    assert plan(s, MB, [changed()]).actions == []


def test_both_addresses_are_read_in_one_round():
    world = state([contact("c1", NEW)], consent={OLD: [row(OLD, P_B, None, OUT)]})
    _, p, rounds = in_rounds(world, MB, [changed()])
    assert rounds == 1 and ("consent", NEW, P_B, None, None, "R7") in summary(p.actions)


# The person's newest choice stands: a personal opt-in of the new address against the carried opt-out,
# dated by the old address's row (its modifiedon bounds when the person opted out there).
@pytest.mark.parametrize("opted_out_at, reconsented_at, verdict, overwritten", [
    (OPT_OUT, RECONSENT, "stands", False),
    (LATER, RECONSENT, "order unknown", True),  # the old row changed after the opt-in: order unknown
    (RECONSENT, RECONSENT, "order unknown", True),  # a tie: opt-out wins
])
def test_a_newer_personal_opt_in_of_the_new_address_stands(opted_out_at, reconsented_at, verdict, overwritten):
    s = state([contact("c1", NEW)], consent={
        OLD: [row(OLD, P_B, None, OUT, id="o", modified=opted_out_at)],
        NEW: [row(NEW, P_B, None, IN, id="n", modified=reconsented_at, source=CENTRE)]})
    s.ledger = {OLD: [], NEW: []}
    s.sync_user = "sync-user"
    p = plan(s, MB, [changed()])
    (r,) = p.reconsents
    assert r.verdict == verdict and r.rule == "R7" and r.judgements[0].against == "consent row o"
    writes = [a for a in p.actions if isinstance(a, OptOutConsent) and a.row_id == "n"]
    assert bool(writes) == overwritten
    if overwritten:
        assert writes[0].carried_from == OLD and verdict in writes[0].note


def test_the_timeline_asks_for_the_old_address_ledger_when_the_sync_wrote_its_row():
    s = state([contact("c1", NEW)], consent={
        OLD: [row(OLD, P_B, None, OUT, id="o", modified=LATER, modified_by="sync-user")],
        NEW: [row(NEW, P_B, None, IN, id="n", modified=RECONSENT, source=CENTRE)]})
    s.sync_user = "sync-user"
    assert plan(s, MB, [changed()]).frontier_ledger == {OLD, NEW}


# --- from the event to the trigger ------------------------------------------------------------

def event(change: ContactChanged, message="Update", table="contact") -> ChangeEvent:
    return ChangeEvent(EV, table, "c1", message, Origin("2024-01-01T00:00:00.000Z", None, None, None, None, None), change)


def test_an_update_with_the_old_address_names_both():
    e = event(ContactChanged(("emailaddress1",), None, None, {"emailaddress1": " New@X.com"},
                             {"emailaddress1": "OLD@x.com "}))
    found = triggers_for(e, SB)
    assert [t for t in found if t.kind == "address_changed"] == [changed()]
    assert not untraced_address_change(e, SB)


def test_a_moved_or_cleared_address_carries_nothing():
    swap = ContactChanged(("emailaddress1", "emailaddress2"), None, None, {"emailaddress1": NEW, "emailaddress2": OLD},
                          {"emailaddress1": OLD, "emailaddress2": NEW})
    cleared = ContactChanged(("emailaddress1",), None, None, {"emailaddress1": None}, {"emailaddress1": OLD})
    added = ContactChanged(("emailaddress2",), None, None, {"emailaddress2": NEW}, {"emailaddress2": None})
    for c in (swap, cleared, added):
        assert not [t for t in triggers_for(event(c), SB) if t.kind == "address_changed"]


def test_an_address_change_without_a_pre_image_is_untraced():
    e = event(ContactChanged(("emailaddress1",), None, None, {"emailaddress1": NEW}))
    assert not [t for t in triggers_for(e, SB) if t.kind == "address_changed"]
    assert untraced_address_change(e, SB)
    assert not untraced_address_change(event(ContactChanged(("emailaddress1",), None, None, {"emailaddress1": NEW}),
                                             message="Create"), SB)


def test_the_notification_pre_image_gives_the_old_address_and_survives_the_queue():
    ctx = n.member_change("Update", "lead", {"emailaddress1": NEW}, post={"emailaddress1": NEW, "donotbulkemail": False})
    ctx["PreEntityImages"] = n.kv({"PreImage": n.entity("lead", n.LEAD_ID, {"emailaddress1": OLD, "leadid": n.LEAD_ID},
                                                          typed=False)})
    e = parse_notification(n.to_bytes(ctx), {})
    assert e.change.previous_emails == {"emailaddress1": OLD}
    assert event_from_json(e.to_json()) == e
    # An empty column is left out of an image: the old address was none.
    ctx["PreEntityImages"] = n.kv({"PreImage": n.entity("lead", n.LEAD_ID, {"leadid": n.LEAD_ID}, typed=False)})
    assert parse_notification(n.to_bytes(ctx), {}).change.previous_emails == {"emailaddress1": None}
    ctx["PreEntityImages"] = []
    assert parse_notification(n.to_bytes(ctx), {}).change.previous_emails == {}


def test_a_queue_message_from_an_earlier_build_reads_without_previous_emails():
    e = event(ContactChanged(("emailaddress1",), None, None, {"emailaddress1": NEW}))
    assert "previous_emails" not in e.to_dict()["change"]
    assert event_from_json(e.to_json()).change.previous_emails == {}
