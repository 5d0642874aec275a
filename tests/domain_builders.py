"""Builders for the pure domain tests: Mappings, Members, ConsentRows, States, and ``apply``.

Ids are short readable strings (the planner never checks their form). ``apply`` is a test-only
model of what the sync's writes do to Dataverse, so tests can check that planning again after
applying a plan finds nothing left to do.
"""
from __future__ import annotations

import itertools
from dataclasses import replace
from typing import Iterable, Sequence

from shared.domain.consent import CONSENT_TABLE, EMAIL_COLUMNS, ConsentType, ConsentValue, ContactPointType
from shared.domain.ledger import ADD_TO_OPT_OUT_LIST, SET_FLAG, LedgerEntry
from shared.domain.mappings import Brand, ListTopic, Mappings, OptOutList
from shared.domain.model import ConsentRow, Member, Purpose
from shared.domain.planner import (
    Action,
    AddToOptOutList,
    OptOutConsent,
    RemoveFromList,
    SetDoNotBulkEmail,
    State,
    member_key,
    plan,
)

OUT = int(ConsentValue.OPTED_OUT)
IN = int(ConsentValue.OPTED_IN)
NOT_SET = int(ConsentValue.NOT_SET)
PURPOSE = int(ConsentType.PURPOSE)
TOPIC = int(ConsentType.TOPIC)
EMAIL = int(ContactPointType.EMAIL)
TEXT = int(ContactPointType.TEXT)

# --- the catalog used by most tests --------------------------------------------------------------
# single-brand "Acme": purpose P_ACME; contact list L_NEWS -> T_NEWS, lead list L_LEADS -> T_EVENTS.
P_ACME = "p-acme"
T_NEWS, T_EVENTS = "t-news", "t-events"
L_NEWS, L_LEADS = "l-news", "l-leads"
# multi-brand: A (P_A, P_SHARED; L_A1 contacts -> T_A1, L_A2 leads -> T_A2; opt-out OO_A contacts),
#              B (P_B, P_SHARED; L_B1 contacts -> T_B1; opt-out OO_B leads),
#              C (P_C; L_C1 contacts -> T_C1; opt-out OO_C contacts).
P_A, P_B, P_C, P_SHARED = "p-a", "p-b", "p-c", "p-shared"
T_A1, T_A2, T_B1, T_C1 = "t-a1", "t-a2", "t-b1", "t-c1"
L_A1, L_A2, L_B1, L_C1 = "l-a1", "l-a2", "l-b1", "l-c1"
OO_A, OO_B, OO_C = "oo-a", "oo-b", "oo-c"
#: an OBM list no mapping mentions
L_OTHER = "l-other"


def list_topic(list_id: str, topic_id: str, purpose_id: str, table: str = "contact") -> ListTopic:
    return ListTopic(list_id, f"List {list_id}", table, topic_id, f"Topic {topic_id}", purpose_id)


def brand(name: str, purposes: Sequence[str], lists: Iterable[tuple] = (),
          opt_out: tuple[str, str] | None = None) -> Brand:
    """``lists``: (list_id, topic_id, purpose_id[, table]); ``opt_out``: (list_id, table)."""
    return Brand(
        name,
        tuple(Purpose(p, f"Purpose {p}") for p in purposes),
        OptOutList(opt_out[0], f"Opt-out {opt_out[0]}", opt_out[1]) if opt_out else None,
        tuple(list_topic(*m) for m in lists),
    )


def mappings(mode: str, *brands: Brand, email_columns: Sequence[str] = EMAIL_COLUMNS) -> Mappings:
    return Mappings(mode, tuple(email_columns), tuple(brands))


def single_brand(opt_out: tuple[str, str] | None = None, email_columns: Sequence[str] = EMAIL_COLUMNS) -> Mappings:
    return mappings("single-brand",
                    brand("Acme", [P_ACME], [(L_NEWS, T_NEWS, P_ACME, "contact"), (L_LEADS, T_EVENTS, P_ACME, "lead")],
                          opt_out),
                    email_columns=email_columns)


def multi_brand(email_columns: Sequence[str] = EMAIL_COLUMNS) -> Mappings:
    return mappings(
        "multi-brand",
        brand("A", [P_A, P_SHARED], [(L_A1, T_A1, P_A, "contact"), (L_A2, T_A2, P_A, "lead")], (OO_A, "contact")),
        brand("B", [P_B, P_SHARED], [(L_B1, T_B1, P_B, "contact")], (OO_B, "lead")),
        brand("C", [P_C], [(L_C1, T_C1, P_C, "contact")], (OO_C, "contact")),
        email_columns=email_columns,
    )


# --- rows ------------------------------------------------------------------------------------------

def member(table: str, id: str, *emails: str | None, dnb: bool = False, dne: bool = False,
           active: bool = True, modified: str | None = None) -> Member:
    cols = {col: e for col, e in zip(EMAIL_COLUMNS, emails)}
    return Member(table, id, cols, donotbulkemail=dnb, donotemail=dne, active=active, modified_on=modified)


def contact(id: str, *emails: str | None, **kw) -> Member:
    return member("contact", id, *emails, **kw)


def lead(id: str, *emails: str | None, **kw) -> Member:
    return member("lead", id, *emails, **kw)


_row_ids = itertools.count(1)


def row(email: str, purpose: str, topic: str | None = None, value: int | None = OUT, *, id: str | None = None,
        modified: str | None = "2024-01-01T00:00:00Z", active: bool = True, cptype: int | None = EMAIL,
        ctype: int | None = None, source: int | None = None, modified_by: str | None = None) -> ConsentRow:
    """A consent row; topic rows when ``topic`` is given, purpose rows otherwise."""
    if ctype is None:
        ctype = TOPIC if topic else PURPOSE
    return ConsentRow(id or f"row-{next(_row_ids)}", email, cptype, ctype, value, purpose, topic,
                      source=source, modified_on=modified, active=active, modified_by=modified_by)


def state(members: Iterable[Member | tuple[Member, Iterable[str]]] = (), consent: dict[str, list[ConsentRow]] | None = None,
          loaded: Iterable[str] | None = None, missing: Iterable[tuple[str, str]] = (),
          cause_of: dict | None = None) -> State:
    """A State. ``members``: Member or (Member, list ids). ``loaded`` defaults to every email of the
    members plus every email with consent rows (a fully read state)."""
    s = State()
    for m in members:
        m, lists = (m, ()) if isinstance(m, Member) else m
        s.add_member(m, lists)
    consent = consent or {}
    if loaded is None:
        loaded = set(consent) | {e for m in s.members.values() for e in m.contact_points(EMAIL_COLUMNS)}
    for e in loaded:
        s.add_email(e, consent.get(e, ()))
    s.missing_members.update(missing)
    s.cause_of.update(cause_of or {})
    return s


def copy_state(s: State) -> State:
    return State(members=dict(s.members), lists_of=dict(s.lists_of),
                 consent={e: list(rows) for e, rows in s.consent.items()}, loaded_emails=set(s.loaded_emails),
                 missing_members=set(s.missing_members), cause_of=dict(s.cause_of),
                 ledger={e: list(x) for e, x in s.ledger.items()}, joined_at=dict(s.joined_at), flag_set_at=dict(s.flag_set_at),
                 sync_user=s.sync_user)


_stamp = itertools.count(1)


def apply(s: State, actions: Iterable[Action]) -> State:
    """What Dataverse would look like after the sync's writes (a new State; ``s`` is untouched).

    An update makes the row the most recently modified one, as a PATCH does.
    """
    s = copy_state(s)
    for a in actions:
        if isinstance(a, OptOutConsent):
            stamp = f"2999-01-01T00:00:{next(_stamp):06d}Z"
            rows = s.consent.setdefault(a.email, [])
            row_id = a.row_id or f"new-{next(_row_ids)}"
            if a.row_id is None:
                rows.append(ConsentRow(row_id, a.email, EMAIL, a.consent_type, OUT, a.purpose_id,
                                       a.topic_id, modified_on=stamp, modified_by=s.sync_user))
            else:
                i = next(i for i, r in enumerate(rows) if r.id == a.row_id)
                rows[i] = replace(rows[i], value=OUT, modified_on=stamp, modified_by=s.sync_user)
            if a.email in s.ledger:
                s.ledger[a.email] = [*s.ledger[a.email], LedgerEntry(
                    a.email, a.rule, "test", a.cause, a.since, "rtm", CONSENT_TABLE, row_id, "opt out", None,
                    "Opted out", "applied", recorded_at=stamp)]
        elif isinstance(a, SetDoNotBulkEmail):
            stamp = f"2999-01-01T00:00:{next(_stamp):06d}Z"
            s.members[a.member] = replace(s.members[a.member], donotbulkemail=True, modified_on=stamp)
            s.flag_set_at[(a.member, "donotbulkemail")] = stamp  # where auditing is on, the audit row
            _file(s, a, SET_FLAG, stamp)
        elif isinstance(a, RemoveFromList):
            s.lists_of[a.member] = s.lists_of.get(a.member, frozenset()) - {a.list_id}
        elif isinstance(a, AddToOptOutList):
            stamp = f"2999-01-01T00:00:{next(_stamp):06d}Z"
            s.lists_of[a.member] = s.lists_of.get(a.member, frozenset()) | {a.list_id}
            s.joined_at[(a.member, a.list_id)] = stamp
            _file(s, a, f"{ADD_TO_OPT_OUT_LIST}{a.list_id}", stamp)
        else:  # pragma: no cover - a new action type must be modelled here
            raise TypeError(f"unknown action {a!r}")
    return s


def _file(s: State, a, action: str, stamp: str) -> None:
    """The ledger lines the engine files for a flag set or an opt-out list join (timeline evidence)."""
    for e in a.emails:
        if e in s.ledger:
            s.ledger[e] = [*s.ledger[e], LedgerEntry(e, a.rule, "test", a.cause, a.since, "obm", a.member[0],
                                                     a.member[1], action, None, None, "applied", recorded_at=stamp)]


def key(m: Member) -> tuple[str, str]:
    return member_key(m)


def summary(actions: Iterable[Action]) -> set[tuple]:
    """Actions as comparable tuples without emails/causes: what each one does, and its rule."""
    out = set()
    for a in actions:
        if isinstance(a, OptOutConsent):
            out.add(("consent", a.email, a.purpose_id, a.topic_id, a.row_id, a.rule))
        elif isinstance(a, SetDoNotBulkEmail):
            out.add(("flag", a.member, a.rule))
        elif isinstance(a, RemoveFromList):
            out.add(("remove", a.member, a.list_id, a.rule))
        else:
            out.add(("add", a.member, a.list_id, a.rule))
    return out


def effects(actions: Iterable[Action]) -> set[tuple]:
    """Like ``summary`` but without the rule: the writes only."""
    return {t[:-1] for t in summary(actions)}


def load(world: State, s: State, p) -> None:
    """Reads what the plan's frontier asks for from ``world`` into ``s``, as the engine does: a member
    with its lists (or marked missing), an email with its consent rows and every member that has it."""
    for k, cause in p.frontier_members.items():
        if k in world.members:
            s.add_member(world.members[k], world.lists_of.get(k, ()), cause)
        else:
            s.missing_members.add(k)
    for e, cause in p.frontier_emails.items():
        for k, m in world.members.items():
            if e in m.contact_points(EMAIL_COLUMNS) and k not in s.members:
                s.add_member(m, world.lists_of.get(k, ()), cause)
        s.add_email(e, world.consent.get(e, ()), cause)
    for e in p.frontier_ledger:
        s.ledger[e] = list(world.ledger.get(e, ()))
    for pair in p.frontier_joins:
        s.joined_at[pair] = world.joined_at.get(pair)
    for flag in p.frontier_audits:
        s.flag_set_at[flag] = world.flag_set_at.get(flag)
    s.sync_user = world.sync_user


def in_rounds(world: State, m: Mappings, triggers, max_rounds: int = 20):
    """Plans from an empty state, reading the frontier from ``world`` until the plan is complete.
    Returns (the state read, the complete plan, the number of reading rounds)."""
    s, rounds = State(), 0
    p = plan(s, m, triggers)
    while not p.complete:
        rounds += 1
        assert rounds <= max_rounds, "the frontier does not converge"
        load(world, s, p)
        p = plan(s, m, triggers)
    return s, p, rounds
