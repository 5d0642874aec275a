"""The rules R1–R7 over facts, to a fixpoint, and the actions: the facts that do not hold yet.

``plan`` reads as its steps: facts from the triggers, the state's own opt-outs, R7's carry-over,
the rules applied to each other's results until nothing new follows, then the actions. Pure.
"""
from __future__ import annotations

from collections import deque
from dataclasses import replace
from typing import Iterable

from shared.domain.consent import ConsentSource, ConsentType, ConsentValue, ContactPointType, normalise_email
from shared.domain.mappings import Mappings
from shared.domain.model import ConsentRow
from shared.domain.planner.timeline import Timeline, newest_rows
from shared.domain.planner.types import (NOT_IN_SNAPSHOT, Action, AddToOptOutList, MemberKey, OptOutConsent, Plan,
                                         RemoveFromList, SetDoNotBulkEmail, State, Trigger)


def plan(state: State, mappings: Mappings, triggers: Iterable[Trigger]) -> Plan:
    triggers = list(triggers)
    run = _Derivation(state, mappings, triggers)
    run.from_triggers()
    run.from_state()
    carried = _carry_over(triggers, state, run.derive, run.need_email)  # R7
    run.to_fixpoint()
    timeline = run.timeline
    reconsents, notes = timeline.reconsents(run.facts)
    addition_causes = {t.cause for t in triggers if t.reacts_to_addition}
    actions = _with_carried_from(_actions(run.facts, state, mappings, run.emails_of, addition_causes, notes,
                                          timeline.since), carried)
    return Plan(actions, run.frontier_emails, run.frontier_members, reconsents, timeline.wanted_ledger,
                timeline.wanted_joins, timeline.wanted_audits, run.frontier_departures)


class _Derivation:
    """The facts derived so far, the queue of those whose consequences are still to draw, and the
    frontier: what must be read before the plan is complete."""

    def __init__(self, state: State, mappings: Mappings, triggers: list[Trigger]):
        self.state, self.mappings, self.triggers = state, mappings, triggers
        # fact -> (rule, cause, from_state, roots): roots are the opt-outs the fact follows from
        self.facts: dict[tuple, tuple[str, str | None, bool, frozenset]] = {}
        self.queue: deque[tuple] = deque()
        self.frontier_emails: dict[str, str | None] = {}
        self.frontier_members: dict[MemberKey, str | None] = {}
        self.frontier_departures: set[tuple[MemberKey, str]] = set()
        self.members_with: dict[str, list[MemberKey]] = {}
        self.emails_of: dict[MemberKey, tuple[str, ...]] = {}
        for k, m in state.members.items():
            emails = tuple(sorted(m.contact_points(mappings.email_columns)))
            self.emails_of[k] = emails
            for e in emails:
                self.members_with.setdefault(e, []).append(k)
        self.timeline = Timeline(state, triggers, self.emails_of)

    def derive(self, fact: tuple, rule: str, cause: str | None, rooted_in_state: bool, roots: frozenset) -> None:
        # rooted_in_state: the chain that led here started from something already read as true.
        if fact[0] in ("topic", "purpose"):
            roots = self.timeline.live_roots(fact, roots, rule, cause)
            if not roots:
                return  # the person's newer choice stands against every opt-out behind this one
        seen = self.facts.get(fact)
        if seen is None:
            self.facts[fact] = (rule, cause, rooted_in_state, roots)
            self.queue.append(fact)
        elif not roots <= seen[3]:
            # Another opt-out leads here too: carry it on, a re-consent must be newer than each.
            self.facts[fact] = (*seen[:3], seen[3] | roots)
            self.queue.append(fact)

    def need_email(self, e: str, cause: str | None) -> bool:
        if e in self.state.loaded_emails:
            return True
        self.frontier_emails.setdefault(e, cause)
        return False

    def need_member(self, k: MemberKey, cause: str | None) -> bool:
        if k in self.state.members:
            return True
        if k not in self.state.missing_members:
            self.frontier_members.setdefault(k, cause)
        return False

    def departed(self, t: Trigger) -> bool:
        """R1 applies: the member is not in the list now and (for a claim) evidence does not deny it left."""
        assert t.member is not None and t.list_id is not None
        if t.list_id in self.state.lists_of.get(t.member, ()):
            return False  # still a member: the event was stale or forged; an inspection only
        if not t.claimed:
            return True  # found by the nightly scan against its snapshot
        departure = self.state.departures.get((t.member, t.list_id))
        if departure is None:
            self.frontier_departures.add((t.member, t.list_id))
            return False
        return departure.kind != NOT_IN_SNAPSHOT

    def from_triggers(self) -> None:
        """What the events ask about, and R1 for a member that left a list."""
        for t in self.triggers:
            if t.kind == "inspect_email" and t.email:
                self.need_email(t.email, t.cause)
            elif t.member and self.need_member(t.member, t.cause):
                for e in self.emails_of[t.member]:
                    self.need_email(e, t.cause)
                if t.kind == "left_list" and t.list_id and self.departed(t):
                    for mapping in self.mappings.topics_of_list.get(t.list_id, ()):  # R1
                        for e in self.emails_of[t.member]:
                            self.derive(("topic", e, mapping.topic_id), "R1", t.cause, False,
                                        frozenset({("left", t.member, t.list_id)}))

    def from_state(self) -> None:
        """The state's own opt-outs: Opted-out rows, flags, opt-out list memberships."""
        state, mappings = self.state, self.mappings
        for e in state.loaded_emails:
            cause = state.cause_of.get(e)
            for (kind, target), r in newest_rows(state.consent.get(e, ())).items():
                if r.value == ConsentValue.OPTED_OUT:
                    self.derive((kind, e, target), "state", cause, True, frozenset({("row", r.id)}))
        for k, m in state.members.items():
            cause = state.cause_of.get(k)
            if m.donotbulkemail:
                self.derive(("flag", k), "state", cause, True, frozenset({("flag", k)}))
            elif m.donotemail:
                self.global_opt_out(k, "R3", cause, True, frozenset({("flag", k)}))
            for list_id in state.lists_of.get(k, ()):
                if list_id in mappings.brand_of_opt_out_list:
                    self.derive(("in", k, list_id), "state", cause, True, frozenset({("in", k, list_id)}))

    def to_fixpoint(self) -> None:
        """The rules, applied to each fact in turn until nothing new follows."""
        step = {"topic": self.topic_rules, "purpose": self.purpose_rules, "flag": self.flag_rules,
                "not_in": self.not_in_rules, "in": self.in_rules}
        while self.queue:
            fact = self.queue.popleft()
            rule, cause, root, roots = self.facts[fact]
            step[fact[0]](fact, cause, root, roots)

    def topic_rules(self, fact: tuple, cause: str | None, root: bool, roots: frozenset) -> None:
        _, e, topic = fact
        if not self.need_email(e, cause):
            return
        for k in self.members_with.get(e, ()):  # R2
            for list_id in self.mappings.lists_of_topic.get(topic, ()):
                self.derive(("not_in", k, list_id), "R2", cause, root, roots)

    def purpose_rules(self, fact: tuple, cause: str | None, root: bool, roots: frozenset) -> None:
        _, e, purpose = fact
        if not self.need_email(e, cause):
            return
        for brand in self.mappings.brands_of_purpose.get(purpose, ()):  # R4
            for k in self.members_with.get(e, ()):
                if self.mappings.mode == "single-brand":
                    # Everyone with the email, a donotemail member too: R3's opt-out comes back
                    # here as R4 and sets its donotbulkemail; redundant, but the rule as written.
                    self.derive(("flag", k), "R4", cause, root, roots)
                else:
                    for list_id in brand.list_ids:
                        self.derive(("not_in", k, list_id), "R4", cause, root, roots)
                    if brand.opt_out_list and brand.opt_out_list.member_table == k[0]:
                        self.derive(("in", k, brand.opt_out_list.list_id), "R4", cause, root, roots)

    def flag_rules(self, fact: tuple, cause: str | None, root: bool, roots: frozenset) -> None:
        self.global_opt_out(fact[1], "R3", cause, root, roots)

    def not_in_rules(self, fact: tuple, cause: str | None, root: bool, roots: frozenset) -> None:
        _, k, list_id = fact
        if list_id in self.state.lists_of.get(k, ()):
            # The sync's own removal is an OBM unsubscribe too (R1): settle its echo now.
            for mapping in self.mappings.topics_of_list.get(list_id, ()):
                for e in self.emails_of.get(k, ()):
                    self.derive(("topic", e, mapping.topic_id), "R1", cause, root, roots)

    def in_rules(self, fact: tuple, cause: str | None, root: bool, roots: frozenset) -> None:
        _, k, list_id = fact
        brand = self.mappings.brand_of_opt_out_list[list_id]
        for other in brand.list_ids:  # R5
            self.derive(("not_in", k, other), "R5", cause, root, roots)
        for e in self.emails_of.get(k, ()):
            for p in brand.purpose_ids:
                self.derive(("purpose", e, p), "R5", cause, root, roots)

    def global_opt_out(self, k: MemberKey, rule: str, cause: str | None, root: bool, roots: frozenset) -> None:
        """R3: a tenant-wide opt-out reaches every email of the member, for every covered purpose."""
        for e in self.emails_of.get(k, ()):
            for p in self.mappings.covered_purposes:
                self.derive(("purpose", e, p), rule, cause, root, roots)


R7 = "R7"


def _carry_over(triggers: list[Trigger], state: State, derive, need_email) -> dict[tuple, ConsentRow]:
    """R7: an address that replaced another on a contact or lead gets every opt-out (topic or
    purpose) the old address has, as RTM sees it (its newest row per scope Opted out).

    The root is the old address's row: the timeline rule dates the carried opt-out by that row's
    evidence, so a personal opt-in of the new address newer than it stands (the person's newest
    choice), and one older, or of unknown order, is overwritten. Returns carried fact -> old row.
    """
    carried: dict[tuple, ConsentRow] = {}
    for t in triggers:
        if t.kind != "address_changed" or not t.email or not t.previous_email or t.email == t.previous_email:
            continue
        old_read, new_read = need_email(t.previous_email, t.cause), need_email(t.email, t.cause)  # both in one round
        if not (old_read and new_read):
            continue
        for (kind, target), r in newest_rows(state.consent.get(t.previous_email, ())).items():
            if r.value == ConsentValue.OPTED_OUT:
                fact = (kind, t.email, target)
                carried.setdefault(fact, r)
                derive(fact, R7, t.cause, True, frozenset({("row", r.id)}))
    return carried


def _with_carried_from(actions: list[Action], carried: dict[tuple, ConsentRow]) -> list[Action]:
    """Names the old address (for the ledger, which keeps only its pseudonym) on R7's actions."""
    if not carried:
        return actions
    out: list[Action] = []
    for a in actions:
        row = carried.get(("topic" if a.topic_id else "purpose", a.email, a.topic_id or a.purpose_id)) \
            if isinstance(a, OptOutConsent) and a.rule == R7 else None
        if row is not None:
            why = (f"carried over from the address this record had before (Opted out there, "
                   f"source {_source_name(row.source)}, modifiedon {row.modified_on or 'unknown'})")
            a = replace(a, carried_from=normalise_email(row.contact_point_value),
                        note=f"{why}; {a.note}" if a.note else why)
        out.append(a)
    return out


def _source_name(source: int | None) -> str:
    try:
        return ConsentSource(source).name.replace("_", " ").capitalize() if source is not None else "unknown"
    except ValueError:
        return str(source)


def _purpose_of_topic_row(state: State, topic_id: str) -> str | None:
    for rows in state.consent.values():
        for r in rows:
            if r.topic_id == topic_id and r.purpose_id:
                return r.purpose_id
    return None


def _label(rule: str, cause: str | None, from_state_root: bool, addition_causes: set[str]) -> str:
    # A fix made because something was added while already opted out is R6, by way of the rule.
    if cause in addition_causes and rule in ("R2", "R4") and from_state_root:
        return f"R6/{rule}"
    return rule


def _actions(facts, state: State, mappings: Mappings, emails_of, addition_causes, notes, since) -> list[Action]:
    actions: list[Action] = []
    for fact, (rule, cause, root, roots) in facts.items():
        if rule == "state":
            continue  # already true: it was read that way
        kind = fact[0]
        label = _label(rule, cause, root, addition_causes)
        if kind in ("topic", "purpose"):
            _, e, target = fact
            if e not in state.loaded_emails:
                continue
            if kind == "topic":
                ctype, topic_id = ConsentType.TOPIC, target
                # An unmapped topic comes only from R7 (a carried opt-out): its row names the purpose.
                purpose_id = mappings.purpose_of_topic.get(target) or _purpose_of_topic_row(state, target)
                if purpose_id is None:
                    continue  # no purpose known for the topic: nothing can be written
            else:
                ctype, purpose_id, topic_id = ConsentType.PURPOSE, target, None
            # A Purpose-type row is purpose-level even if it carries a topic (RTM should not write
            # one; if it did, effective_opt_outs counts it, so it is updated too).
            rows = [r for r in state.consent.get(e, ())
                    if r.contact_point_type in (None, ContactPointType.EMAIL) and r.consent_type == ctype
                    and r.purpose_id == purpose_id and (r.topic_id == topic_id if topic_id else True)]
            at, evidence = since(roots)
            if not rows:
                actions.append(OptOutConsent(e, int(ctype), purpose_id, topic_id, None, None, label, cause,
                                             since=at, evidence=evidence))
            for r in rows:  # every duplicate, active or not: RTM reads the newest, and it may change
                if r.value != ConsentValue.OPTED_OUT:
                    actions.append(OptOutConsent(e, int(ctype), purpose_id, topic_id, r.id, r.value, label, cause,
                                                 notes.get(fact), at, evidence))
        elif kind == "flag":
            k = fact[1]
            m = state.members.get(k)
            if m is not None and not m.donotbulkemail:
                actions.append(SetDoNotBulkEmail(k, emails_of[k], label, cause, *since(roots)))
        elif kind == "not_in":
            _, k, list_id = fact
            if list_id in state.lists_of.get(k, ()):
                actions.append(RemoveFromList(k, list_id, emails_of.get(k, ()), label, cause, since(roots)[0]))
        elif kind == "in":
            _, k, list_id = fact
            if k in state.members and list_id not in state.lists_of.get(k, ()):
                actions.append(AddToOptOutList(k, list_id, emails_of.get(k, ()), label, cause, *since(roots)))
    return actions
