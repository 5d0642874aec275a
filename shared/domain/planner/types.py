"""The planner's inputs and outputs: triggers, the state read so far, the actions, the verdicts on
re-consents and the plan. Pure data."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Literal

from shared.domain.ledger import LedgerEntry
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

