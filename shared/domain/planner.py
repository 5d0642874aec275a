"""The planner: from the state the sync has read, the opt-outs that rules R1–R7 demand.

One planner serves the event path and the reconciliation. It works on *facts* that must hold:

    ("topic", email, topic_id)      the email is Opted out of the topic
    ("purpose", email, purpose_id)  the email is Opted out of the purpose (no topic)
    ("flag", member)                the member has donotbulkemail = true
    ("not_in", member, list_id)     the member is not in the list
    ("in", member, list_id)         the member is in the brand's opt-out list

Facts come from triggers (an event said a member left a list: R1, once the member is read out of
the list and, for an event's claim, the list snapshot does not deny it was in; an address replaced
another on a record, whose opt-outs it takes over: R7), from the state itself
(existing opt-outs, flags, opt-out list memberships) and from each other through the rules, until
nothing new follows: the whole closure in one pass, so the notifications the sync's own writes
cause find nothing left to do. Actions are the facts that do not hold yet. Facts only ever say
"opted out", "flag set", "not in a subscription list" or "in an opt-out list": the planner cannot
express an opt-in. Facts about an email or member whose rows have not been read yet go to the
*frontier*; the caller reads them and plans again.

The timeline rule: every fact remembers its *roots*, the opt-outs it follows from (a member's
flag, an opt-out list membership, a list departure, an RTM opt-out row). An opt-out about to be
propagated onto a consent row that the person set to Opted in themselves (a personal source, not
the sync's own user) is judged root by root: a root the re-consent is known to be newer than
(``OptOutTime``, from the best evidence in the state) stops there; any other root propagates, so
where the order is unknown the opt-out wins. A re-consent found to stand is reported
(``Plan.reconsents``), never copied to the Outbound side.

Pure: no I/O, no clock.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from typing import Iterable, Literal

from shared.domain.consent import (CONSENT_TABLE, PERSONAL_SOURCES, ConsentSource, ConsentType, ConsentValue,
                                   ContactPointType, normalise_email)
from shared.domain.ledger import ADD_TO_OPT_OUT_LIST, AGAINST, KEEP_RECONSENT, SET_FLAG, LedgerEntry
from shared.domain.mappings import Mappings
from shared.domain.model import ConsentRow, Member

MemberKey = tuple[str, str]  # (table, id)


def member_key(m: Member) -> MemberKey:
    return (m.table, m.id)


# --- inputs ------------------------------------------------------------------------------------

TriggerKind = Literal["inspect_member", "inspect_email", "left_list", "address_changed"]


@dataclass(frozen=True, slots=True)
class Trigger:
    """What an event asks the planner to look at; ``cause`` is the event id (or run id)."""

    kind: TriggerKind
    cause: str
    member: MemberKey | None = None
    email: str | None = None
    list_id: str | None = None
    reacts_to_addition: bool = False  # a create, email change or list join: state-made fixes are R6
    at: str | None = None  # ISO 8601: when the event happened (evidence for the timeline rule)
    opted_out: Literal["flag", "join"] | None = None  # the event set the member's flag / joined list_id
    previous_email: str | None = None  # address_changed: the address ``email`` replaced (R7)
    claimed: bool = False  # a departure only a notification says happened: R1 waits for evidence


#: What a list snapshot says of a departure an event claims (``State.departures``).
IN_SNAPSHOT = "list snapshot"  # a member at the last scan, not now: it left (R1)
NO_SNAPSHOT = "no list snapshot yet"  # nothing says either way: opt-out wins, but not over a re-consent
NOT_IN_SNAPSHOT = "not in the last list snapshot"  # nothing shows it was ever a member: inspection only


@dataclass(frozen=True, slots=True)
class Departure:
    """The evidence for a departure an event claims: ``kind`` one of the three above, ``taken_at``
    the snapshot's time (the departure happened after it)."""

    kind: str
    taken_at: str | None = None

    @property
    def describe(self) -> str:
        return f"{self.kind} {self.taken_at}" if self.taken_at else self.kind


@dataclass
class State:
    """The rows read so far. ``loaded_emails``: every member and consent row of these is here."""

    members: dict[MemberKey, Member] = field(default_factory=dict)
    lists_of: dict[MemberKey, frozenset[str]] = field(default_factory=dict)  # relevant lists only
    consent: dict[str, list[ConsentRow]] = field(default_factory=dict)  # normalised email -> rows
    loaded_emails: set[str] = field(default_factory=set)
    missing_members: set[MemberKey] = field(default_factory=set)  # looked for, not found (deleted)
    cause_of: dict[object, str] = field(default_factory=dict)  # email or member key -> event that led here
    # Evidence for the timeline rule, read only where a re-consent meets an opt-out:
    ledger: dict[str, list[LedgerEntry]] = field(default_factory=dict)  # email -> the sync's own entries
    joined_at: dict[tuple[MemberKey, str], str | None] = field(default_factory=dict)  # listmember createdon (None: read, unknown)
    flag_set_at: dict[tuple[MemberKey, str], str | None] = field(default_factory=dict)  # (member, flag) -> audit history (None: read, unknown)
    sync_user: str | None = None  # the sync's application user: rows it wrote are not a person's
    departures: dict[tuple[MemberKey, str], Departure] = field(default_factory=dict)  # claimed departures' evidence
    now: str | None = None  # ISO 8601, when the rows were read: an event dated later is not evidence

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
    note: str | None = None  # why a person's opt-in is overwritten (timeline rule), for the ledger
    since: str | None = None  # when the opt-out it follows from happened (kept in the ledger: timeline evidence)
    carried_from: str | None = None  # R7: the address this opt-out was carried over from (the ledger hashes it)
    evidence: str | None = None  # what dates ``since`` or confirms the opt-out (the ledger keeps it)


@dataclass(frozen=True, slots=True)
class SetDoNotBulkEmail:
    member: MemberKey
    emails: tuple[str, ...]
    rule: str
    cause: str | None
    since: str | None = None  # when the opt-out it follows from happened (the ledger keeps it: timeline evidence)
    evidence: str | None = None  # as for OptOutConsent


@dataclass(frozen=True, slots=True)
class RemoveFromList:
    member: MemberKey
    list_id: str
    emails: tuple[str, ...]
    rule: str
    cause: str | None
    since: str | None = None  # when the opt-out it follows from happened (dates the opt-out's deadline)


@dataclass(frozen=True, slots=True)
class AddToOptOutList:
    member: MemberKey
    list_id: str
    emails: tuple[str, ...]
    rule: str
    cause: str | None
    since: str | None = None  # as for SetDoNotBulkEmail
    evidence: str | None = None


Action = OptOutConsent | SetDoNotBulkEmail | RemoveFromList | AddToOptOutList


@dataclass(frozen=True, slots=True)
class OptOutTime:
    """When an opposing opt-out happened, as far as the evidence tells.

    ``at`` is a moment the opt-out happened at or before; ``exact`` says the evidence dates the
    opt-out itself (the ledger, a change event, listmember createdon, audit history) rather than bounding it
    (a row's modifiedon, moved by any later edit). ``at`` None: nothing tells.
    """

    at: str | None
    evidence: str  # "ledger", "change event", "listmember createdon", "audit history", "contact modifiedon", ..., "none"
    exact: bool = False


@dataclass(frozen=True, slots=True)
class Judgement:
    """A re-consent against one opposing opt-out (a root)."""

    against: str  # the root, e.g. "flag contact <id>", "opt-out list <id> contact <id>"
    opt_out: OptOutTime
    stands: bool
    remembered: bool  # a verdict the ledger already holds for this row version and root


@dataclass(frozen=True, slots=True)
class Reconsent:
    """A consent row the person set to Opted in themselves, met by an opt-out the rules propagate."""

    email: str
    consent_type: int
    purpose_id: str
    topic_id: str | None
    row_id: str
    reconsented_at: str  # the row's modifiedon
    source: int | None
    verdict: Literal["stands", "opt-out newer", "order unknown"]
    judgements: tuple[Judgement, ...]
    rule: str  # the rule that would have opted the row out
    cause: str | None

    @property
    def to_remember(self) -> tuple[Judgement, ...]:
        """Verdicts to file in the ledger: a standing re-consent the ledger does not hold yet."""
        if self.verdict != "stands":
            return ()
        return tuple(j for j in self.judgements if not j.remembered)


@dataclass
class Plan:
    actions: list[Action]
    frontier_emails: dict[str, str | None]  # emails to read before the plan is complete -> cause
    frontier_members: dict[MemberKey, str | None]
    reconsents: list[Reconsent] = field(default_factory=list)
    frontier_ledger: set[str] = field(default_factory=set)  # emails whose ledger the timeline needs
    frontier_joins: set[tuple[MemberKey, str]] = field(default_factory=set)  # listmember createdon wanted
    frontier_audits: set[tuple[MemberKey, str]] = field(default_factory=set)  # (member, flag): audit history wanted
    frontier_departures: set[tuple[MemberKey, str]] = field(default_factory=set)  # claimed departures to look up

    @property
    def complete(self) -> bool:
        return not (self.frontier_emails or self.frontier_members or self.frontier_ledger or self.frontier_joins
                    or self.frontier_audits or self.frontier_departures)


# --- the planner -------------------------------------------------------------------------------

def newest_rows(rows: Iterable[ConsentRow]) -> dict[tuple, ConsentRow]:
    """("topic", topic id) or ("purpose", purpose id) -> the row RTM honours for that scope.

    Duplicate rows for one key can exist; RTM honours the most recently modified one.
    """
    newest: dict[tuple, ConsentRow] = {}
    for r in rows:
        if r.contact_point_type not in (None, ContactPointType.EMAIL):
            continue
        if r.consent_type == ConsentType.TOPIC and r.topic_id:
            key = ("topic", r.topic_id)
        elif r.consent_type == ConsentType.PURPOSE and r.purpose_id:
            key = ("purpose", r.purpose_id)
        else:
            continue
        seen = newest.get(key)
        if seen is None or (r.modified_on or "") >= (seen.modified_on or ""):
            newest[key] = r
    return newest


def effective_opt_outs(rows: Iterable[ConsentRow]) -> tuple[set[str], set[str]]:
    """(purpose ids, topic ids) this email is Opted out of, as RTM sees it."""
    purposes, topics = set(), set()
    for (kind, target), r in newest_rows(rows).items():
        if r.value == ConsentValue.OPTED_OUT:
            (topics if kind == "topic" else purposes).add(target)
    return purposes, topics


def is_personal_opt_in(row: ConsentRow, sync_user: str | None) -> bool:
    """The person's own Opted in: a source a person uses, not written by the sync's own user."""
    return (row.value == ConsentValue.OPTED_IN and row.source in PERSONAL_SOURCES and bool(row.modified_on)
            and not (sync_user and row.modified_by == sync_user))


def instant(value: str | None) -> datetime | None:
    """An ISO 8601 moment as an aware datetime (naive means UTC); None when absent or unreadable."""
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


#: How far an event's time may run ahead of the bound Dataverse or our clock sets (whole-second
#: modifiedon, clocks a little apart) and still count as evidence.
SKEW = timedelta(seconds=2)

Root = tuple  # ("flag", member) | ("in", member, list) | ("left", member, list) | ("row", row id)


def root_key(root: Root) -> str:
    """A root as the ledger and explain name it."""
    kind = root[0]
    if kind == "flag":
        return f"flag {root[1][0]} {root[1][1]}"
    if kind == "in":
        return f"opt-out list {root[2]} {root[1][0]} {root[1][1]}"
    if kind == "left":
        return f"left list {root[2]} {root[1][0]} {root[1][1]}"
    return f"consent row {root[1]}"


class _Timeline:
    """Judges re-consents against the roots of the opt-outs that would overwrite them."""

    def __init__(self, state: State, triggers: list[Trigger], emails_of: dict[MemberKey, tuple[str, ...]]):
        self.state = state
        self.emails_of = emails_of
        self.personal: dict[tuple, ConsentRow] = {}  # ("topic"|"purpose", email, id) -> row
        for e in state.loaded_emails:
            for (kind, target), r in newest_rows(state.consent.get(e, ())).items():
                if is_personal_opt_in(r, state.sync_user):
                    self.personal[(kind, e, target)] = r
        self.events: dict[Root, list[str]] = {}  # root -> times change events put on it
        self.ignored: dict[Root, str] = {}  # root -> why an event's own time was not taken as evidence
        self.unconfirmed: set[Root] = set()  # departures nothing confirms: never over a person's re-consent
        now = instant(state.now)
        for t in triggers:
            if not t.member:
                continue
            if t.kind == "left_list" and t.list_id:
                root = ("left", t.member, t.list_id)
                departure = state.departures.get((t.member, t.list_id)) if t.claimed else None
                if departure is not None and departure.kind != IN_SNAPSHOT:
                    self.unconfirmed.add(root)
                    continue
                after = instant(departure.taken_at) if departure is not None else None
                if t.at and after is not None and (instant(t.at) is None or instant(t.at) <= after):
                    self.ignored[root] = "change event time ignored: not after the list snapshot"
                    continue
            elif t.opted_out == "flag":
                root = ("flag", t.member)
            elif t.opted_out == "join" and t.list_id:
                root = ("in", t.member, t.list_id)
            else:
                continue
            if not t.at:
                continue
            if now is not None and (instant(t.at) is None or instant(t.at) > now + SKEW):
                self.ignored[root] = "change event time ignored: in the future"
                continue
            self.events.setdefault(root, []).append(t.at)
        self.sync_made: dict[Root, list[str]] = {}  # root -> when the ledger says the sync made it
        self.remembered: set[tuple[str, str, str]] = set()  # (row id, row modifiedon, root key)
        for entries in state.ledger.values():
            for x in entries:
                if not x.target_id or not (x.origin_time or x.recorded_at):
                    continue
                if x.outcome == "applied" and x.target_table in ("contact", "lead"):
                    # The sync's own opt-out dates from the opt-out it followed (origin_time), not
                    # from when it was written: a re-consent between the two is still the newer choice.
                    member, at = (x.target_table, x.target_id), x.origin_time or x.recorded_at
                    if x.action == SET_FLAG:
                        self.sync_made.setdefault(("flag", member), []).append(at)
                    elif x.action.startswith(ADD_TO_OPT_OUT_LIST):
                        list_id = x.action[len(ADD_TO_OPT_OUT_LIST):]
                        self.sync_made.setdefault(("in", member, list_id), []).append(at)
                elif x.outcome == "applied" and x.target_table == CONSENT_TABLE and x.after == "Opted out":
                    self.sync_made.setdefault(("row", x.target_id), []).append(x.origin_time or x.recorded_at)
                elif (x.outcome == "refused" and x.action.startswith(KEEP_RECONSENT) and x.origin_time
                      and (x.detail or "").startswith(AGAINST)):
                    self.remembered.add((x.target_id, x.origin_time, x.detail[len(AGAINST):].split(";")[0]))
        self.judged: dict[tuple, dict[Root, Judgement]] = {}  # fact -> root -> judgement
        self.first: dict[tuple, tuple[str, str | None]] = {}  # fact -> (rule, cause) of the first judgement
        self.wanted_ledger: set[str] = set()
        self.wanted_joins: set[tuple[MemberKey, str]] = set()
        self.wanted_audits: set[tuple[MemberKey, str]] = set()
        self._times: dict[Root, OptOutTime] = {}
        self._rows: dict[str, ConsentRow] | None = None

    def live_roots(self, fact: tuple, roots: frozenset, rule: str, cause: str | None) -> frozenset:
        """The roots the person's re-consent does not outweigh (all of them when there is none)."""
        row = self.personal.get(fact)
        if row is None:
            return roots
        reconsented = instant(row.modified_on)
        seen = self.judged.setdefault(fact, {})
        self.first.setdefault(fact, (rule, cause))
        live = []
        for root in roots:
            j = seen.get(root)
            if j is None:
                j = seen[root] = self._judge(row, reconsented, fact[1], root)
            if not j.stands:
                live.append(root)
        return frozenset(live)

    def _judge(self, row: ConsentRow, reconsented: datetime | None, email: str, root: Root) -> Judgement:
        self._want_evidence(email, root)
        t = self.opt_out_time(root)
        at = instant(t.at)
        key = root_key(root)
        remembered = (row.id, row.modified_on, key) in self.remembered
        if reconsented is None:
            stands = False
        elif root in self.unconfirmed:
            stands = True  # only a notification says the member left: not enough to overrule the person
        elif remembered:
            stands = not (t.exact and at is not None and at >= reconsented)  # only a dated newer opt-out flips it
        else:
            stands = at is not None and at < reconsented
        return Judgement(key, t, stands, remembered)

    def _want_evidence(self, email: str, root: Root) -> None:
        emails = {email}
        if root[0] in ("flag", "in", "left"):
            emails.update(self.emails_of.get(root[1], ()))
        elif (row := self._row(root[1])) is not None and normalise_email(row.contact_point_value):
            emails.add(normalise_email(row.contact_point_value))  # R7: the row is the previous address's
        ledger_missing = any(e not in self.state.ledger for e in emails)
        self.wanted_ledger.update(e for e in emails if e not in self.state.ledger)
        if root[0] == "in" and (root[1], root[2]) not in self.state.joined_at:
            self.wanted_joins.add((root[1], root[2]))
        flag = self._flag(root)
        if flag and not ledger_missing and flag not in self.state.flag_set_at and not self._dated(root):
            # Only the member's modifiedon bounds this flag: Dataverse's audit history may date it.
            self.wanted_audits.add(flag)

    def _flag(self, root: Root) -> tuple[MemberKey, str] | None:
        """(member, the flag column that holds the opt-out) of a flag root, when the member is read."""
        m = self.state.members.get(root[1]) if root[0] == "flag" else None
        if m is None:
            return None
        column = "donotbulkemail" if m.donotbulkemail else "donotemail" if m.donotemail else None
        return (root[1], column) if column else None

    def _event_times(self, root: Root) -> list[str]:
        """The change events' own times for ``root``, where Dataverse does not contradict them: an
        event dated after the member's modifiedon (a flag) or with listmember createdon or audit
        history at hand (Dataverse's own record of the change) is a hint, not evidence."""
        times = self.events.get(root, [])
        if not times:
            return []
        if (root[0] == "in" and self.state.joined_at.get((root[1], root[2]))) or (
                root[0] == "flag" and self._flag(root) and self.state.flag_set_at.get(self._flag(root))):
            self.ignored[root] = "change event time ignored: Dataverse dates the change"
            return []
        m = self.state.members.get(root[1]) if root[0] == "flag" else None
        bound = instant(m.modified_on) if m is not None else None
        if bound is not None:
            bound += SKEW  # Dataverse keeps modifiedon in whole seconds; the event's time has milliseconds
            kept = [at for at in times if instant(at) is not None and instant(at) <= bound]
            if len(kept) < len(times):
                self.ignored[root] = f"change event time ignored: after the {m.table} modifiedon"
            return kept
        return times

    def _dated(self, root: Root) -> list[tuple[str, str]]:
        """(time, evidence) of everything that dates the opt-out itself."""
        dated = [(at, "change event") for at in self._event_times(root)]
        row = self._row(root[1]) if root[0] == "row" else None
        if row is None or (self.state.sync_user and row.modified_by == self.state.sync_user):
            dated += [(at, "ledger") for at in self.sync_made.get(root, ())]  # a row only while the sync's write is its last
        if root[0] == "in" and self.state.joined_at.get((root[1], root[2])):
            dated.append((self.state.joined_at[(root[1], root[2])], "listmember createdon"))
        flag = self._flag(root)
        if flag and self.state.flag_set_at.get(flag):
            dated.append((self.state.flag_set_at[flag], "audit history"))
        return [(at, ev) for at, ev in dated if instant(at) is not None]

    def opt_out_time(self, root: Root) -> OptOutTime:
        if root in self._times:
            return self._times[root]
        row = self._row(root[1]) if root[0] == "row" else None
        dated = [(instant(at), at, ev) for at, ev in self._dated(root)]
        if dated:
            _, at, evidence = max(dated)  # the latest dated time the opt-out was (re)made
            t = OptOutTime(at, evidence, True)
        elif root[0] == "flag" and root[1] in self.state.members:
            m = self.state.members[root[1]]
            t = OptOutTime(m.modified_on, f"{m.table} modifiedon") if m.modified_on else OptOutTime(None, "none")
        elif row is not None and row.modified_on:
            t = OptOutTime(row.modified_on, "consent row modifiedon")
        else:
            t = OptOutTime(None, "none")
        notes = [self.ignored[root]] if root in self.ignored else []
        if root[0] == "left":
            departure = self.state.departures.get((root[1], root[2]))
            notes += [f"departure: {departure.describe}"] if departure is not None else []
        if notes:
            t = OptOutTime(t.at, "; ".join([t.evidence, *notes]), t.exact)
        self._times[root] = t
        return t

    def _row(self, row_id: str) -> ConsentRow | None:
        if self._rows is None:
            self._rows = {r.id: r for rows in self.state.consent.values() for r in rows}
        return self._rows.get(row_id)

    def since(self, roots: frozenset) -> tuple[str | None, str | None]:
        """(when the latest of these opt-outs happened, the evidence that says so); the time is None
        when any of them cannot be dated, the evidence then names what was found."""
        times = sorted((self.opt_out_time(r) for r in roots), key=lambda t: t.evidence)
        if not times:
            return None, None
        moments = [(instant(t.at), t.at, t.evidence) for t in times]
        if any(m is None for m, _, _ in moments):
            return None, "; ".join(t.evidence for t in times)
        _, at, evidence = max(moments)
        return at, evidence

    def reconsents(self, facts: dict) -> tuple[list[Reconsent], dict[tuple, str]]:
        """The verdict per judged scope, and a note per scope where the opt-out wins over a re-consent."""
        out: list[Reconsent] = []
        notes: dict[tuple, str] = {}
        for fact, judged in self.judged.items():
            row = self.personal[fact]
            kind, e, target = fact
            rule, cause = self.first[fact]
            if fact in facts:
                live = [j for j in judged.values() if not j.stands]
                newer = [j for j in live if j.opt_out.exact and j.opt_out.at and instant(j.opt_out.at)
                         and instant(row.modified_on) and instant(j.opt_out.at) >= instant(row.modified_on)]
                verdict = "opt-out newer" if newer else "order unknown"
                j = (newer or live or list(judged.values()))[0]
                notes[fact] = (f"{verdict}: opt-out wins over the re-consent of {row.modified_on} "
                               f"({j.against}; {j.opt_out.evidence} {j.opt_out.at or ''})").strip()
            else:
                verdict = "stands"
            out.append(Reconsent(e, int(ConsentType.TOPIC if kind == "topic" else ConsentType.PURPOSE),
                                 row.purpose_id or "", target if kind == "topic" else None, row.id,
                                 row.modified_on or "", row.source, verdict, tuple(judged.values()), rule, cause))
        return out, notes


def plan(state: State, mappings: Mappings, triggers: Iterable[Trigger]) -> Plan:
    triggers = list(triggers)
    columns = mappings.email_columns
    single_brand = mappings.mode == "single-brand"
    # fact -> (rule, cause, from_state, roots): roots are the opt-outs the fact follows from
    facts: dict[tuple, tuple[str, str | None, bool, frozenset]] = {}
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
    timeline = _Timeline(state, triggers, emails_of)

    def derive(fact: tuple, rule: str, cause: str | None, rooted_in_state: bool, roots: frozenset) -> None:
        # rooted_in_state: the chain that led here started from something already read as true.
        if fact[0] in ("topic", "purpose"):
            roots = timeline.live_roots(fact, roots, rule, cause)
            if not roots:
                return  # the person's newer choice stands against every opt-out behind this one
        seen = facts.get(fact)
        if seen is None:
            facts[fact] = (rule, cause, rooted_in_state, roots)
            queue.append(fact)
        elif not roots <= seen[3]:
            # Another opt-out leads here too: carry it on, a re-consent must be newer than each.
            facts[fact] = (*seen[:3], seen[3] | roots)
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

    frontier_departures: set[tuple[MemberKey, str]] = set()

    def departed(t: Trigger) -> bool:
        """R1 applies: the member is not in the list now and (for a claim) evidence does not deny it left."""
        assert t.member is not None and t.list_id is not None
        if t.list_id in state.lists_of.get(t.member, ()):
            return False  # still a member: the event was stale or forged; an inspection only
        if not t.claimed:
            return True  # found by the nightly scan against its snapshot
        departure = state.departures.get((t.member, t.list_id))
        if departure is None:
            frontier_departures.add((t.member, t.list_id))
            return False
        return departure.kind != NOT_IN_SNAPSHOT

    # Triggers: what the events ask about.
    for t in triggers:
        if t.kind == "inspect_email" and t.email:
            need_email(t.email, t.cause)
        elif t.member and need_member(t.member, t.cause):
            for e in emails_of[t.member]:
                need_email(e, t.cause)
            if t.kind == "left_list" and t.list_id and departed(t):
                for mapping in mappings.topics_of_list.get(t.list_id, ()):  # R1
                    for e in emails_of[t.member]:
                        derive(("topic", e, mapping.topic_id), "R1", t.cause, False,
                               frozenset({("left", t.member, t.list_id)}))

    # The state's own opt-outs.
    for e in state.loaded_emails:
        cause = state.cause_of.get(e)
        for (kind, target), r in newest_rows(state.consent.get(e, ())).items():
            if r.value == ConsentValue.OPTED_OUT:
                derive((kind, e, target), "state", cause, True, frozenset({("row", r.id)}))
    for k, m in state.members.items():
        cause = state.cause_of.get(k)
        if m.donotbulkemail:
            derive(("flag", k), "state", cause, True, frozenset({("flag", k)}))
        elif m.donotemail:
            _global_opt_out(k, "R3", cause, True, frozenset({("flag", k)}), emails_of, mappings, derive)
        for list_id in state.lists_of.get(k, ()):
            if list_id in mappings.brand_of_opt_out_list:
                derive(("in", k, list_id), "state", cause, True, frozenset({("in", k, list_id)}))

    carried = _carry_over(triggers, state, derive, need_email)  # R7

    # The rules, to a fixpoint.
    while queue:
        fact = queue.popleft()
        rule, cause, root, roots = facts[fact]
        kind = fact[0]
        if kind == "topic":
            _, e, topic = fact
            if not need_email(e, cause):
                continue
            for k in members_with.get(e, ()):  # R2
                for list_id in mappings.lists_of_topic.get(topic, ()):
                    derive(("not_in", k, list_id), "R2", cause, root, roots)
        elif kind == "purpose":
            _, e, purpose = fact
            if not need_email(e, cause):
                continue
            for brand in mappings.brands_of_purpose.get(purpose, ()):  # R4
                for k in members_with.get(e, ()):
                    if single_brand:
                        # Everyone with the email, a donotemail member too: R3's opt-out comes back
                        # here as R4 and sets its donotbulkemail; redundant, but the rule as written.
                        derive(("flag", k), "R4", cause, root, roots)
                    else:
                        for list_id in brand.list_ids:
                            derive(("not_in", k, list_id), "R4", cause, root, roots)
                        if brand.opt_out_list and brand.opt_out_list.member_table == k[0]:
                            derive(("in", k, brand.opt_out_list.list_id), "R4", cause, root, roots)
        elif kind == "flag":
            _global_opt_out(fact[1], "R3", cause, root, roots, emails_of, mappings, derive)
        elif kind == "not_in":
            _, k, list_id = fact
            if list_id in state.lists_of.get(k, ()):
                # The sync's own removal is an OBM unsubscribe too (R1): settle its echo now.
                for mapping in mappings.topics_of_list.get(list_id, ()):
                    for e in emails_of.get(k, ()):
                        derive(("topic", e, mapping.topic_id), "R1", cause, root, roots)
        elif kind == "in":
            _, k, list_id = fact
            brand = mappings.brand_of_opt_out_list[list_id]
            for other in brand.list_ids:  # R5
                derive(("not_in", k, other), "R5", cause, root, roots)
            for e in emails_of.get(k, ()):
                for p in brand.purpose_ids:
                    derive(("purpose", e, p), "R5", cause, root, roots)

    reconsents, notes = timeline.reconsents(facts)
    actions = _with_carried_from(_actions(facts, state, mappings, emails_of, addition_causes, notes, timeline.since),
                                 carried)
    return Plan(actions, frontier_emails, frontier_members, reconsents, timeline.wanted_ledger,
                timeline.wanted_joins, timeline.wanted_audits, frontier_departures)


def _global_opt_out(k: MemberKey, rule: str, cause: str | None, root: bool, roots: frozenset, emails_of,
                    mappings: Mappings, derive) -> None:
    """R3: a tenant-wide opt-out reaches every email of the member, for every covered purpose."""
    for e in emails_of.get(k, ()):
        for p in mappings.covered_purposes:
            derive(("purpose", e, p), rule, cause, root, roots)


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


__all__ = [
    "Action", "AddToOptOutList", "Departure", "IN_SNAPSHOT", "Judgement", "NO_SNAPSHOT", "NOT_IN_SNAPSHOT", "MemberKey", "OptOutConsent", "OptOutTime", "Plan", "Reconsent",
    "RemoveFromList", "SetDoNotBulkEmail", "State", "Trigger", "effective_opt_outs", "instant",
    "is_personal_opt_in", "member_key", "newest_rows", "normalise_email", "plan", "root_key",
]
