"""The planner: from the state the sync has read, the opt-outs that rules R1–R6 demand.

One planner serves the event path and the reconciliation. It works on *facts* that must hold:

    ("topic", email, topic_id)      the email is Opted out of the topic
    ("purpose", email, purpose_id)  the email is Opted out of the purpose (no topic)
    ("flag", member)                the member has donotbulkemail = true
    ("not_in", member, list_id)     the member is not in the list
    ("in", member, list_id)         the member is in the brand's opt-out list

Facts come from triggers (an event said a member left a list: R1), from the state itself
(existing opt-outs, flags, opt-out list memberships) and from each other through the rules, until
nothing new follows: the whole closure in one pass, so the notifications the sync's own writes
cause find nothing left to do. Actions are the facts that do not hold yet. Facts only ever say
"opted out", "flag set", "not in a subscription list" or "in an opt-out list": the planner cannot
express an opt-in. Facts about an email or member whose rows have not been read yet go to the
*frontier*; the caller reads them and plans again.

Pure: no I/O, no clock.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Iterable, Literal

from shared.domain.consent import ConsentType, ConsentValue, ContactPointType, normalise_email
from shared.domain.mappings import Mappings
from shared.domain.model import ConsentRow, Member

MemberKey = tuple[str, str]  # (table, id)


def member_key(m: Member) -> MemberKey:
    return (m.table, m.id)


# --- inputs ------------------------------------------------------------------------------------

TriggerKind = Literal["inspect_member", "inspect_email", "left_list"]


@dataclass(frozen=True, slots=True)
class Trigger:
    """What an event asks the planner to look at; ``cause`` is the event id (or run id)."""

    kind: TriggerKind
    cause: str
    member: MemberKey | None = None
    email: str | None = None
    list_id: str | None = None
    reacts_to_addition: bool = False  # a create, email change or list join: state-made fixes are R6


@dataclass
class State:
    """The rows read so far. ``loaded_emails``: every member and consent row of these is here."""

    members: dict[MemberKey, Member] = field(default_factory=dict)
    lists_of: dict[MemberKey, frozenset[str]] = field(default_factory=dict)  # relevant lists only
    consent: dict[str, list[ConsentRow]] = field(default_factory=dict)  # normalised email -> rows
    loaded_emails: set[str] = field(default_factory=set)
    missing_members: set[MemberKey] = field(default_factory=set)  # looked for, not found (deleted)
    cause_of: dict[object, str] = field(default_factory=dict)  # email or member key -> event that led here

    def add_member(self, m: Member, lists: Iterable[str], cause: str | None = None) -> None:
        k = member_key(m)
        self.members[k] = m
        self.lists_of[k] = frozenset(lists)
        if cause is not None:
            self.cause_of.setdefault(k, cause)

    def add_email(self, email: str, rows: Iterable[ConsentRow], cause: str | None = None) -> None:
        """Marks ``email`` loaded: its consent rows are ``rows`` and its members are all added."""
        self.loaded_emails.add(email)
        self.consent.setdefault(email, []).extend(rows)
        if cause is not None:
            self.cause_of.setdefault(email, cause)


# --- outputs -----------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class OptOutConsent:
    """Create an Opted-out row (``row_id`` None) or set an existing row to Opted out."""

    email: str
    consent_type: int  # ConsentType
    purpose_id: str
    topic_id: str | None
    row_id: str | None
    before: int | None  # the row's value before, None for a new row
    rule: str
    cause: str | None


@dataclass(frozen=True, slots=True)
class SetDoNotBulkEmail:
    member: MemberKey
    emails: tuple[str, ...]
    rule: str
    cause: str | None


@dataclass(frozen=True, slots=True)
class RemoveFromList:
    member: MemberKey
    list_id: str
    emails: tuple[str, ...]
    rule: str
    cause: str | None


@dataclass(frozen=True, slots=True)
class AddToOptOutList:
    member: MemberKey
    list_id: str
    emails: tuple[str, ...]
    rule: str
    cause: str | None


Action = OptOutConsent | SetDoNotBulkEmail | RemoveFromList | AddToOptOutList


@dataclass
class Plan:
    actions: list[Action]
    frontier_emails: dict[str, str | None]  # emails to read before the plan is complete -> cause
    frontier_members: dict[MemberKey, str | None]

    @property
    def complete(self) -> bool:
        return not self.frontier_emails and not self.frontier_members


# --- the planner -------------------------------------------------------------------------------

def effective_opt_outs(rows: Iterable[ConsentRow]) -> tuple[set[str], set[str]]:
    """(purpose ids, topic ids) this email is Opted out of, as RTM sees it.

    Duplicate rows for one key can exist; RTM honours the most recently modified one.
    """
    newest: dict[tuple[int | None, str | None, str | None], ConsentRow] = {}
    for r in rows:
        if r.contact_point_type not in (None, ContactPointType.EMAIL):
            continue
        key = (r.consent_type, r.purpose_id, r.topic_id if r.consent_type == ConsentType.TOPIC else None)
        seen = newest.get(key)
        if seen is None or (r.modified_on or "") >= (seen.modified_on or ""):
            newest[key] = r
    purposes, topics = set(), set()
    for (ctype, purpose, topic), r in newest.items():
        if r.value != ConsentValue.OPTED_OUT:
            continue
        if ctype == ConsentType.TOPIC and topic:
            topics.add(topic)
        elif ctype == ConsentType.PURPOSE and purpose:
            purposes.add(purpose)
    return purposes, topics


def plan(state: State, mappings: Mappings, triggers: Iterable[Trigger]) -> Plan:
    triggers = list(triggers)
    columns = mappings.email_columns
    single_brand = mappings.mode == "single-brand"
    facts: dict[tuple, tuple[str, str | None, bool]] = {}  # fact -> (rule, cause, from_state)
    queue: deque[tuple] = deque()
    frontier_emails: dict[str, str | None] = {}
    frontier_members: dict[MemberKey, str | None] = {}
    addition_causes = {t.cause for t in triggers if t.reacts_to_addition}

    members_with: dict[str, list[MemberKey]] = {}
    emails_of: dict[MemberKey, tuple[str, ...]] = {}
    for k, m in state.members.items():
        emails = tuple(sorted(m.contact_points(columns)))
        emails_of[k] = emails
        for e in emails:
            members_with.setdefault(e, []).append(k)

    def derive(fact: tuple, rule: str, cause: str | None, rooted_in_state: bool = False) -> None:
        # rooted_in_state: the chain that led here started from something already read as true.
        if fact not in facts:
            facts[fact] = (rule, cause, rooted_in_state)
            queue.append(fact)

    def need_email(e: str, cause: str | None) -> bool:
        if e in state.loaded_emails:
            return True
        frontier_emails.setdefault(e, cause)
        return False

    def need_member(k: MemberKey, cause: str | None) -> bool:
        if k in state.members:
            return True
        if k not in state.missing_members:
            frontier_members.setdefault(k, cause)
        return False

    # Triggers: what the events ask about.
    for t in triggers:
        if t.kind == "inspect_email" and t.email:
            need_email(t.email, t.cause)
        elif t.member and need_member(t.member, t.cause):
            for e in emails_of[t.member]:
                need_email(e, t.cause)
            if t.kind == "left_list" and t.list_id:
                for mapping in mappings.topics_of_list.get(t.list_id, ()):  # R1
                    for e in emails_of[t.member]:
                        derive(("topic", e, mapping.topic_id), "R1", t.cause)

    # The state's own opt-outs.
    for e in state.loaded_emails:
        purposes, topics = effective_opt_outs(state.consent.get(e, ()))
        cause = state.cause_of.get(e)
        for p in purposes:
            derive(("purpose", e, p), "state", cause, True)
        for tp in topics:
            derive(("topic", e, tp), "state", cause, True)
    for k, m in state.members.items():
        cause = state.cause_of.get(k)
        if m.donotbulkemail:
            derive(("flag", k), "state", cause, True)
        elif m.donotemail:
            _global_opt_out(k, "R3", cause, True, emails_of, mappings, derive)
        for list_id in state.lists_of.get(k, ()):
            if list_id in mappings.brand_of_opt_out_list:
                derive(("in", k, list_id), "state", cause, True)

    # The rules, to a fixpoint.
    while queue:
        fact = queue.popleft()
        rule, cause, root = facts[fact]
        kind = fact[0]
        if kind == "topic":
            _, e, topic = fact
            if not need_email(e, cause):
                continue
            for k in members_with.get(e, ()):  # R2
                for list_id in mappings.lists_of_topic.get(topic, ()):
                    derive(("not_in", k, list_id), "R2", cause, root)
        elif kind == "purpose":
            _, e, purpose = fact
            if not need_email(e, cause):
                continue
            for brand in mappings.brands_of_purpose.get(purpose, ()):  # R4
                for k in members_with.get(e, ()):
                    if single_brand:
                        # Everyone with the email, a donotemail member too: R3's opt-out comes back
                        # here as R4 and sets its donotbulkemail; redundant, but the rule as written.
                        derive(("flag", k), "R4", cause, root)
                    else:
                        for list_id in brand.list_ids:
                            derive(("not_in", k, list_id), "R4", cause, root)
                        if brand.opt_out_list and brand.opt_out_list.member_table == k[0]:
                            derive(("in", k, brand.opt_out_list.list_id), "R4", cause, root)
        elif kind == "flag":
            _global_opt_out(fact[1], "R3", cause, root, emails_of, mappings, derive)
        elif kind == "not_in":
            _, k, list_id = fact
            if list_id in state.lists_of.get(k, ()):
                # The sync's own removal is an OBM unsubscribe too (R1): settle its echo now.
                for mapping in mappings.topics_of_list.get(list_id, ()):
                    for e in emails_of.get(k, ()):
                        derive(("topic", e, mapping.topic_id), "R1", cause, root)
        elif kind == "in":
            _, k, list_id = fact
            brand = mappings.brand_of_opt_out_list[list_id]
            for other in brand.list_ids:  # R5
                derive(("not_in", k, other), "R5", cause, root)
            for e in emails_of.get(k, ()):
                for p in brand.purpose_ids:
                    derive(("purpose", e, p), "R5", cause, root)

    actions = _actions(facts, state, mappings, emails_of, addition_causes)
    return Plan(actions, frontier_emails, frontier_members)


def _global_opt_out(k: MemberKey, rule: str, cause: str | None, root: bool, emails_of, mappings: Mappings,
                    derive) -> None:
    """R3: a tenant-wide opt-out reaches every email of the member, for every covered purpose."""
    for e in emails_of.get(k, ()):
        for p in mappings.covered_purposes:
            derive(("purpose", e, p), rule, cause, root)


def _label(rule: str, cause: str | None, from_state_root: bool, addition_causes: set[str]) -> str:
    # A fix made because something was added while already opted out is R6, by way of the rule.
    if cause in addition_causes and rule in ("R2", "R4") and from_state_root:
        return f"R6/{rule}"
    return rule


def _actions(facts, state: State, mappings: Mappings, emails_of, addition_causes) -> list[Action]:
    actions: list[Action] = []
    for fact, (rule, cause, root) in facts.items():
        if rule == "state":
            continue  # already true: it was read that way
        kind = fact[0]
        label = _label(rule, cause, root, addition_causes)
        if kind in ("topic", "purpose"):
            _, e, target = fact
            if e not in state.loaded_emails:
                continue
            if kind == "topic":
                ctype, purpose_id, topic_id = ConsentType.TOPIC, mappings.purpose_of_topic.get(target), target
                if purpose_id is None:
                    continue  # an unmapped topic never reaches here through the rules; be safe
            else:
                ctype, purpose_id, topic_id = ConsentType.PURPOSE, target, None
            # A Purpose-type row is purpose-level even if it carries a topic (RTM should not write
            # one; if it did, effective_opt_outs counts it, so it is updated too).
            rows = [r for r in state.consent.get(e, ())
                    if r.contact_point_type in (None, ContactPointType.EMAIL) and r.consent_type == ctype
                    and r.purpose_id == purpose_id and (r.topic_id == topic_id if topic_id else True)]
            if not rows:
                actions.append(OptOutConsent(e, int(ctype), purpose_id, topic_id, None, None, label, cause))
            for r in rows:  # every duplicate, active or not: RTM reads the newest, and it may change
                if r.value != ConsentValue.OPTED_OUT:
                    actions.append(OptOutConsent(e, int(ctype), purpose_id, topic_id, r.id, r.value, label, cause))
        elif kind == "flag":
            k = fact[1]
            m = state.members.get(k)
            if m is not None and not m.donotbulkemail:
                actions.append(SetDoNotBulkEmail(k, emails_of[k], label, cause))
        elif kind == "not_in":
            _, k, list_id = fact
            if list_id in state.lists_of.get(k, ()):
                actions.append(RemoveFromList(k, list_id, emails_of.get(k, ()), label, cause))
        elif kind == "in":
            _, k, list_id = fact
            if k in state.members and list_id not in state.lists_of.get(k, ()):
                actions.append(AddToOptOutList(k, list_id, emails_of.get(k, ()), label, cause))
    return actions


__all__ = [
    "Action", "AddToOptOutList", "MemberKey", "OptOutConsent", "Plan", "RemoveFromList", "SetDoNotBulkEmail",
    "State", "Trigger", "effective_opt_outs", "member_key", "plan", "normalise_email",
]
