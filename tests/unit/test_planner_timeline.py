"""The timeline rule: the person's newest choice stands, table-driven over rules, modes and evidence.

Each case is a state (members, consent rows, ledger, listmember createdon) and triggers, with the
writes expected and the verdict on the person's re-consent. Opt-outs with an unknown order win.
"""
from __future__ import annotations

import pytest

from shared.domain.consent import ConsentSource
from shared.domain.ledger import ADD_TO_OPT_OUT_LIST, AGAINST, KEEP_RECONSENT, SET_FLAG, LedgerEntry
from shared.domain.planner import OptOutConsent, State, Trigger, plan, root_key
from tests.domain_builders import (
    IN,
    L_A1,
    L_NEWS,
    OO_A,
    OO_C,
    P_A,
    P_ACME,
    P_B,
    P_C,
    P_SHARED,
    T_A1,
    T_NEWS,
    apply,
    contact,
    effects,
    in_rounds,
    multi_brand,
    row,
    single_brand,
    state,
)
from tests.unit.test_planner import assert_never_opt_in

A, B = "a@x.com", "b@x.com"
SB, MB = single_brand(), multi_brand()
C1, C2 = ("contact", "c1"), ("contact", "c2")
OPT_OUT, RECONSENT, LATER = "2024-01-01T00:00:00Z", "2024-02-01T00:00:00Z", "2024-03-01T00:00:00Z"
CENTRE = int(ConsentSource.PREFERENCE_CENTER)
SYNC = "sync-user"
EV = "ev-1"


def reconsent(email, purpose, topic=None, *, at=RECONSENT, source=CENTRE, id="re-1", by=None):
    return row(email, purpose, topic, IN, id=id, modified=at, source=source, modified_by=by)


def sync_set_flag(email, member_id, at):
    return LedgerEntry(email, "R4", "dataverse", "ev-0", None, "obm", "contact", member_id, SET_FLAG, "false", "true",
                       "applied", recorded_at=at)


def sync_joined(email, member_id, list_id, at):
    return LedgerEntry(email, "R4", "dataverse", "ev-0", None, "obm", "contact", member_id,
                       f"{ADD_TO_OPT_OUT_LIST}{list_id}", "not a member", "member", "applied", recorded_at=at)


def remembered(email, row_id, at, against):
    return LedgerEntry(email, "R3", "reconcile", "run", at, "rtm", "msdynmkt_contactpointconsent4", row_id,
                       f"{KEEP_RECONSENT}to purpose x", "Opted in", "Opted in", "refused",
                       detail=f"{AGAINST}{against}; newer", recorded_at=LATER)


def world(members, consent, *, ledger=None, joined=None, audited=None, sync_user=SYNC) -> State:
    """A fully read state: every email's ledger, every membership's createdon and every set flag's
    audit history (None: unknown) too."""
    s = state(members, consent)
    s.ledger = {e: list((ledger or {}).get(e, ())) for e in s.loaded_emails}
    s.joined_at = {(k, l): (joined or {}).get((k, l)) for k, lists in s.lists_of.items() for l in lists}
    s.flag_set_at = {(k, f): (audited or {}).get((k, f)) for k, m in s.members.items()
                     for f in ("donotbulkemail", "donotemail") if getattr(m, f)}
    s.sync_user = sync_user
    return s


def inspect(member=C1, at=None, opted_out=None, list_id=None):
    return Trigger("inspect_member", EV, member=member, at=at, opted_out=opted_out, list_id=list_id)


def left(member, list_id, at=None):
    return Trigger("left_list", EV, member=member, list_id=list_id, at=at)


FLAG = root_key(("flag", C1))
# (id, mappings, world, triggers, expected writes, expected verdict, evidence of the deciding judgement)
CASES = [
    # --- R3 (a flag), single-brand, each kind of evidence ---------------------------------------
    ("R3 SB contact modifiedon older: stands", SB,
     world([contact("c1", A, dnb=True, modified=OPT_OUT)], {A: [reconsent(A, P_ACME)]}), [inspect()],
     set(), "stands", "contact modifiedon"),
    ("R3 SB contact edited after the re-consent, nothing else known: opt-out wins", SB,
     world([contact("c1", A, dnb=True, modified=LATER)], {A: [reconsent(A, P_ACME)]}), [inspect()],
     {("consent", A, P_ACME, None, "re-1")}, "order unknown", "contact modifiedon"),
    ("R3 SB ledger dates the flag the sync set: stands despite a later edit", SB,
     world([contact("c1", A, dnb=True, modified=LATER)], {A: [reconsent(A, P_ACME)]},
           ledger={A: [sync_set_flag(A, "c1", OPT_OUT)]}), [inspect()],
     set(), "stands", "ledger"),
    ("R3 SB change event dates the flag before the re-consent (event path)", SB,
     world([contact("c1", A, dnb=True, modified=LATER)], {A: [reconsent(A, P_ACME)]}),
     [inspect(at=OPT_OUT, opted_out="flag")], set(), "stands", "change event"),
    ("R3 SB change event: a CRM user set the flag after the re-consent: opt-out newer", SB,
     world([contact("c1", A, dnb=True, modified=LATER)], {A: [reconsent(A, P_ACME)]}),
     [inspect(at=LATER, opted_out="flag")], {("consent", A, P_ACME, None, "re-1")}, "opt-out newer", "change event"),
    ("R3 SB change event dated after the contact's modifiedon is no evidence: modifiedon decides", SB,
     world([contact("c1", A, dnb=True, modified=OPT_OUT)], {A: [reconsent(A, P_ACME)]}),
     [inspect(at=LATER, opted_out="flag")], set(), "stands",
     "contact modifiedon; change event time ignored: after the contact modifiedon"),
    ("R3 SB audit history outweighs the change event's own time", SB,
     world([contact("c1", A, dnb=True, modified=LATER)], {A: [reconsent(A, P_ACME)]},
           audited={(C1, "donotbulkemail"): OPT_OUT}), [inspect(at=LATER, opted_out="flag")],
     set(), "stands", "audit history; change event time ignored: Dataverse dates the change"),
    ("R3 SB remembered verdict survives an unrelated edit", SB,
     world([contact("c1", A, dnb=True, modified=LATER)], {A: [reconsent(A, P_ACME)]},
           ledger={A: [remembered(A, "re-1", RECONSENT, FLAG)]}), [inspect()],
     set(), "stands", "contact modifiedon"),
    ("R3 SB remembered verdict of an older row version does not count", SB,
     world([contact("c1", A, dnb=True, modified=LATER)], {A: [reconsent(A, P_ACME)]},
           ledger={A: [remembered(A, "re-1", "2023-12-01T00:00:00Z", FLAG)]}), [inspect()],
     {("consent", A, P_ACME, None, "re-1")}, "order unknown", "contact modifiedon"),
    ("R3 SB remembered verdict, then a dated newer opt-out: opt-out newer", SB,
     world([contact("c1", A, dnb=True, modified=LATER)], {A: [reconsent(A, P_ACME)]},
           ledger={A: [remembered(A, "re-1", RECONSENT, FLAG)]}), [inspect(at=LATER, opted_out="flag")],
     {("consent", A, P_ACME, None, "re-1")}, "opt-out newer", "change event"),
    ("R3 SB donotemail, modifiedon older: stands", SB,
     world([contact("c1", A, dne=True, modified=OPT_OUT)], {A: [reconsent(A, P_ACME)]}), [inspect()],
     set(), "stands", "contact modifiedon"),
    ("R3 SB audit history dates the flag before the re-consent: stands despite a later edit", SB,
     world([contact("c1", A, dnb=True, modified=LATER)], {A: [reconsent(A, P_ACME)]},
           audited={(C1, "donotbulkemail"): OPT_OUT}), [inspect()],
     set(), "stands", "audit history"),
    ("R3 SB audit history: the flag was set after the re-consent: opt-out newer", SB,
     world([contact("c1", A, dnb=True, modified=LATER)], {A: [reconsent(A, P_ACME)]},
           audited={(C1, "donotbulkemail"): LATER}), [inspect()],
     {("consent", A, P_ACME, None, "re-1")}, "opt-out newer", "audit history"),
    ("R3 SB audit history without a record (auditing off): as before, opt-out wins", SB,
     world([contact("c1", A, dnb=True, modified=LATER)], {A: [reconsent(A, P_ACME)]},
           audited={(C1, "donotbulkemail"): None}), [inspect()],
     {("consent", A, P_ACME, None, "re-1")}, "order unknown", "contact modifiedon"),
    ("R3 SB donotemail dated by audit history before the re-consent: stands", SB,
     world([contact("c1", A, dne=True, modified=LATER)], {A: [reconsent(A, P_ACME)]},
           audited={(C1, "donotemail"): OPT_OUT}), [inspect()],
     set(), "stands", "audit history"),
    ("R3 SB no time at all: opt-out wins", SB,
     world([contact("c1", A, dnb=True)], {A: [reconsent(A, P_ACME)]}), [inspect()],
     {("consent", A, P_ACME, None, "re-1")}, "order unknown", "none"),
    # --- R3 multi-brand: the re-consent covers its own purpose only --------------------------------
    ("R3 MB re-consent to one brand's purpose: that one stands, the others are opted out", MB,
     world([contact("c1", A, dnb=True, modified=OPT_OUT)], {A: [reconsent(A, P_A)]}), [inspect()],
     {("consent", A, p, None, None) for p in (P_B, P_C, P_SHARED)} | {("add", C1, OO_A), ("add", C1, OO_C)},
     "stands", "contact modifiedon"),
    # --- R5 (an opt-out list), multi-brand, each kind of evidence -----------------------------------
    ("R5 MB listmember createdon older: stands", MB,
     world([(contact("c1", A, modified=LATER), [OO_A])],
           {A: [reconsent(A, P_A), row(A, P_SHARED, modified=OPT_OUT)]}, joined={(C1, OO_A): OPT_OUT}),
     [inspect()], set(), "stands", "listmember createdon"),
    ("R5 MB ledger dates the sync's own join: stands", MB,
     world([(contact("c1", A), [OO_A])], {A: [reconsent(A, P_A), row(A, P_SHARED, modified=OPT_OUT)]},
           ledger={A: [sync_joined(A, "c1", OO_A, OPT_OUT)]}),
     [inspect()], set(), "stands", "ledger"),
    ("R5 MB join event after the re-consent: opt-out newer", MB,
     world([(contact("c1", A), [OO_A])], {A: [reconsent(A, P_A), row(A, P_SHARED, modified=OPT_OUT)]}),
     [inspect(at=LATER, opted_out="join", list_id=OO_A)], {("consent", A, P_A, None, "re-1")}, "opt-out newer",
     "change event"),
    ("R5 MB join of unknown time: opt-out wins", MB,
     world([(contact("c1", A), [OO_A])], {A: [reconsent(A, P_A), row(A, P_SHARED, modified=OPT_OUT)]}),
     [inspect()], {("consent", A, P_A, None, "re-1")}, "order unknown", "none"),
    # --- R1 (a departure), both modes -------------------------------------------------------------------
    ("R1 SB departure event before the topic re-consent: stands", SB,
     world([contact("c1", A)], {A: [reconsent(A, P_ACME, T_NEWS)]}), [left(C1, L_NEWS, at=OPT_OUT)],
     set(), "stands", "change event"),
    ("R1 SB departure after the re-consent: opt-out newer", SB,
     world([contact("c1", A)], {A: [reconsent(A, P_ACME, T_NEWS)]}), [left(C1, L_NEWS, at=LATER)],
     {("consent", A, P_ACME, T_NEWS, "re-1")}, "opt-out newer", "change event"),
    ("R1 MB departure found at night (no time): opt-out wins", MB,
     world([contact("c1", A)], {A: [reconsent(A, P_A, T_A1)]}), [left(C1, L_A1)],
     {("consent", A, P_A, T_A1, "re-1")}, "order unknown", "none"),
    # --- R2/R1 echo and R4 chains: the root's own time counts --------------------------------------------
    ("R2 SB topic opt-out of one address, re-consent of the other: the list is left, the re-consent stands", SB,
     world([(contact("c1", A, B), [L_NEWS])],
           {A: [row(A, P_ACME, T_NEWS, modified=OPT_OUT)], B: [reconsent(B, P_ACME, T_NEWS)]}), [inspect()],
     {("remove", C1, L_NEWS)}, "stands", "consent row modifiedon"),
    ("R4 SB purpose opt-out of one address reaches the other's newer re-consent through the flag: stands", SB,
     world([contact("c1", A, B)], {A: [row(A, P_ACME, modified=OPT_OUT)], B: [reconsent(B, P_ACME)]}), [inspect()],
     {("flag", C1)}, "stands", "consent row modifiedon"),
    ("R4 SB the other address's opt-out is newer than the re-consent: opt-out wins", SB,
     world([contact("c1", A, B)], {A: [row(A, P_ACME, modified=LATER)], B: [reconsent(B, P_ACME)]}), [inspect()],
     {("flag", C1), ("consent", B, P_ACME, None, "re-1")}, "order unknown", "consent row modifiedon"),
    # --- several opt-outs behind one: the re-consent must be newer than each -----------------------------
    ("two flags, one dated before, one unknown: opt-out wins", SB,
     world([contact("c1", A, dnb=True, modified=OPT_OUT), contact("c2", A, dnb=True)], {A: [reconsent(A, P_ACME)]}),
     [inspect(), inspect(C2)], {("consent", A, P_ACME, None, "re-1")}, "order unknown", None),
    ("two flags, both dated before: stands", SB,
     world([contact("c1", A, dnb=True, modified=OPT_OUT), contact("c2", A, dnb=True, modified=OPT_OUT)],
           {A: [reconsent(A, P_ACME)]}), [inspect(), inspect(C2)], set(), "stands", None),
    # --- R6: a contact imported with the flag after the re-consent (an import is not the person) ---------
    ("R6 SB import after the re-consent, event path: opt-out newer", SB,
     world([contact("c2", A, dnb=True, modified=LATER)], {A: [reconsent(A, P_ACME)]}),
     [Trigger("inspect_member", EV, member=C2, reacts_to_addition=True, at=LATER, opted_out="flag")],
     {("consent", A, P_ACME, None, "re-1")}, "opt-out newer", "change event"),
    ("R6 SB import after the re-consent, nightly: order unknown, opt-out wins", SB,
     world([contact("c2", A, dnb=True, modified=LATER)], {A: [reconsent(A, P_ACME)]}), [inspect(C2)],
     {("consent", A, P_ACME, None, "re-1")}, "order unknown", "contact modifiedon"),
]


@pytest.mark.parametrize("name,m,s,triggers,writes,verdict,evidence", CASES, ids=[c[0] for c in CASES])
def test_timeline(name, m, s, triggers, writes, verdict, evidence):
    p = plan(s, m, triggers)
    assert p.complete, (p.frontier_emails, p.frontier_members, p.frontier_ledger, p.frontier_joins,
                        p.frontier_audits)
    assert_never_opt_in(p.actions, m, s)
    assert effects(p.actions) == writes
    judged = [r for r in p.reconsents if r.row_id == "re-1"]
    assert [r.verdict for r in judged] == [verdict]
    r = judged[0]
    deciding = [j for j in r.judgements if j.stands == (verdict == "stands")]
    if evidence is not None:
        assert evidence in {j.opt_out.evidence for j in deciding}
    overwritten = [a for a in p.actions if isinstance(a, OptOutConsent) and a.row_id == "re-1"]
    if verdict == "stands":
        assert not overwritten
    else:  # the opt-out wins, and the ledger will say why
        assert overwritten and all(a.note and a.note.startswith(verdict) for a in overwritten)
    # Planning again after the writes finds nothing left (the verdict is stable).
    assert plan(apply(s, p.actions), m, triggers).actions == []


@pytest.mark.parametrize("source", [ConsentSource.INTERNAL, ConsentSource.LOADED, None])
def test_an_opt_in_by_a_marketer_or_system_never_overrides_an_opt_out(source):
    s = world([contact("c1", A, dnb=True, modified=OPT_OUT)],
              {A: [reconsent(A, P_ACME, source=None if source is None else int(source))]})
    p = plan(s, SB, [inspect()])
    assert effects(p.actions) == {("consent", A, P_ACME, None, "re-1")}
    assert p.reconsents == []  # not a person's choice: nothing to judge


def test_a_row_the_sync_user_wrote_is_not_a_persons_choice():
    s = world([contact("c1", A, dnb=True, modified=OPT_OUT)], {A: [reconsent(A, P_ACME, by=SYNC)]})
    assert effects(plan(s, SB, [inspect()]).actions) == {("consent", A, P_ACME, None, "re-1")}


def test_an_older_opt_out_duplicate_does_not_hide_the_newest_choice():
    """RTM honours the newest duplicate: the re-consent is what counts, the older opt-out row is left."""
    s = world([contact("c1", A, dnb=True, modified=OPT_OUT)],
              {A: [row(A, P_ACME, id="old", modified=OPT_OUT), reconsent(A, P_ACME)]})
    p = plan(s, SB, [inspect()])
    assert p.actions == [] and [r.verdict for r in p.reconsents] == ["stands"]


def test_a_standing_re_consent_is_to_be_remembered_once():
    s = world([contact("c1", A, dnb=True, modified=OPT_OUT)], {A: [reconsent(A, P_ACME)]})
    r, = plan(s, SB, [inspect()]).reconsents
    assert [j.against for j in r.to_remember] == [FLAG]
    s.ledger = {A: [remembered(A, "re-1", RECONSENT, FLAG)]}
    r, = plan(s, SB, [inspect()]).reconsents
    assert r.verdict == "stands" and r.to_remember == ()


def test_evidence_is_asked_for_only_where_a_re_consent_meets_an_opt_out():
    plain = state([contact("c1", A, dnb=True, modified=OPT_OUT)], {A: []})
    p = plan(plain, SB, [inspect()])
    assert p.complete and not p.frontier_ledger and not p.frontier_joins
    wanting = state([(contact("c1", A, B), [OO_A])], {A: [reconsent(A, P_A)], B: []})
    p = plan(wanting, MB, [inspect()])
    assert p.frontier_ledger == {A, B} and p.frontier_joins == {(C1, OO_A)}
    assert any(isinstance(a, OptOutConsent) and a.row_id == "re-1" for a in p.actions)  # until known: the safe side


def test_in_rounds_reads_the_evidence_then_decides():
    w = world([contact("c1", A, dnb=True, modified=LATER)], {A: [reconsent(A, P_ACME)]},
              ledger={A: [sync_set_flag(A, "c1", OPT_OUT)]})
    _, p, rounds = in_rounds(w, SB, [inspect()])
    assert p.actions == [] and [r.verdict for r in p.reconsents] == ["stands"]  # modifiedon alone: unknown


def test_audit_history_is_asked_for_only_where_modifiedon_is_all_that_dates_a_flag():
    # No re-consent: no audit read.
    assert not plan(state([contact("c1", A, dnb=True, modified=OPT_OUT)], {A: []}), SB, [inspect()]).frontier_audits
    # A re-consent meets the flag: the ledger first, then (nothing dated it) the audit history, once.
    w = world([contact("c1", A, dnb=True, modified=LATER)], {A: [reconsent(A, P_ACME)]},
              audited={(C1, "donotbulkemail"): OPT_OUT})
    s = state([contact("c1", A, dnb=True, modified=LATER)], {A: [reconsent(A, P_ACME)]})
    s.sync_user = SYNC
    first = plan(s, SB, [inspect()])
    assert first.frontier_ledger == {A} and not first.frontier_audits
    s.ledger[A] = []
    second = plan(s, SB, [inspect()])
    assert second.frontier_audits == {(C1, "donotbulkemail")}
    s.flag_set_at[(C1, "donotbulkemail")] = w.flag_set_at[(C1, "donotbulkemail")]
    third = plan(s, SB, [inspect()])
    assert third.complete and third.actions == [] and [r.verdict for r in third.reconsents] == ["stands"]
    # The ledger or a change event dates the flag: no audit read.
    s2 = state([contact("c1", A, dnb=True, modified=LATER)], {A: [reconsent(A, P_ACME)]})
    s2.ledger[A] = [sync_set_flag(A, "c1", OPT_OUT)]
    assert not plan(s2, SB, [inspect()]).frontier_audits
    s2.ledger[A] = []
    assert not plan(s2, SB, [inspect(at=OPT_OUT, opted_out="flag")]).frontier_audits
    # Rounds read it like the other evidence.
    _, p, rounds = in_rounds(w, SB, [inspect()])
    assert p.actions == [] and [r.verdict for r in p.reconsents] == ["stands"]
    assert p.reconsents[0].judgements[0].opt_out.evidence == "audit history"


def test_same_state_same_verdict_on_both_paths():
    """The event path (a contact edit) and the night (a candidate member) judge the same state alike."""
    w = world([contact("c1", A, dnb=True, modified=OPT_OUT)], {A: [reconsent(A, P_ACME)]})
    by_event = plan(w, SB, [Trigger("inspect_member", "ev-9", member=C1, at=LATER)])  # an unrelated edit
    at_night = plan(w, SB, [Trigger("inspect_member", "run-1", member=C1)])
    by_email = plan(w, SB, [Trigger("inspect_email", "explain", email=A)])
    assert by_event.actions == at_night.actions == by_email.actions == []
    assert [r.verdict for r in by_event.reconsents + at_night.reconsents + by_email.reconsents] == ["stands"] * 3


def test_a_change_event_dated_in_the_future_is_no_evidence():
    """A join of an opt-out list (nothing but the event dates it) claimed for after the rows were read."""
    s = world([(contact("c1", A, modified=OPT_OUT), [OO_A])], {A: [reconsent(A, P_A)]})
    s.now = RECONSENT  # the rows were read before the event says the join happened
    p = plan(s, MB, [inspect(at=LATER, opted_out="join", list_id=OO_A)])
    (r,) = [r for r in p.reconsents if r.row_id == "re-1"]
    assert r.verdict == "order unknown"  # undated: opt-out wins, but not as "newer" on the event's word
    assert any("change event time ignored: in the future" in j.opt_out.evidence for j in r.judgements)
