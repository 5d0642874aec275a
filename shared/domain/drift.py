"""The nightly reconciliation's first pass: which members and emails may be out of line. Pure.

The tenant is read once (consent rows, then each mapped and opt-out list, then every contact and
lead; each phase in key-range partitions that may be read concurrently) and only compact sets are kept: 64-bit digests of normalised emails and 128-bit member
ids, never rows. What the scan finds are *candidates*: the planner then reads their rows and
decides (one planner for events and reconciliation), so the scan may over-select but must never
miss. Drift classes (docs/domain.md):

- D1 a member of a mapped list whose email is opted out of the list's topic (R2 missed)
- D2 a member whose email is opted out of a brand purpose, still without donotbulkemail
     (single-brand), or still in the brand's lists / not in its opt-out list (multi-brand) (R4)
- D3 a member with donotbulkemail/donotemail whose emails are not opted out of every covered
     purpose (R3 missed)
- D4 a member who left a mapped list since the previous run (R1 missed; needs a snapshot)
- D5 a member of a brand's opt-out list still in the brand's lists or not opted out of its
     purposes (R5 missed)

Not drift but reported beside it (``ReconsentTally``): a person who re-consented in RTM while
OBM still says opted out. Their newer choice stands (timeline rule); Straddle never clears the
OBM side, an operator decides.
"""
from __future__ import annotations

import hashlib
import sys
import uuid
from dataclasses import dataclass, field
from typing import Iterable

from shared.domain.consent import ConsentType, ConsentValue, ContactPointType, normalise_email
from shared.domain.mappings import Mappings
from shared.domain.model import ConsentRow, Member
from shared.domain.planner import MemberKey, Reconsent, Trigger, instant

DRIFT_CLASSES = ("D1", "D2", "D3", "D4", "D5")
#: Each drift class for a person reading a report: what is out of line, and the rule that missed it.
DRIFT_MEANINGS = {
    "D1": ("list member opted out of the list's topic", "R2"),
    "D2": ("opted out of a brand purpose, Outbound not in line", "R4"),
    "D3": ("global opt-out not reflected in Real-time marketing", "R3"),
    "D4": ("left a mapped list, topic not opted out", "R1"),
    "D5": ("in a brand opt-out list, not in line", "R5"),
}


def email_key(email: str) -> int:
    """A 64-bit digest of a normalised email: 8 bytes in a set instead of the address.

    A collision only adds a candidate the planner then finds in line; it can never hide drift.
    """
    return int.from_bytes(hashlib.blake2b(email.encode(), digest_size=8).digest(), "big")


def _mid(member_id: str) -> int:
    """A member id (a GUID) as its 128-bit integer, the same value ``uuid.UUID(member_id).int`` gives."""
    digits = member_id.replace("-", "")
    if len(digits) != 32:
        return uuid.UUID(member_id).int  # braces or other forms: let uuid read (or refuse) them
    return int(digits, 16)


@dataclass
class Candidates:
    """What the planner must look at, with the drift class that made each one a candidate."""

    members: dict[MemberKey, set[str]] = field(default_factory=dict)  # member -> classes
    departures: list[tuple[MemberKey, str]] = field(default_factory=list)  # (member, list) left (D4)
    first_snapshot: list[str] = field(default_factory=list)  # lists seen for the first time

    def add(self, key: MemberKey, cls: str) -> None:
        self.members.setdefault(key, set()).add(cls)

    def suspected(self) -> dict[str, int]:
        counts = {c: 0 for c in DRIFT_CLASSES}
        for classes in self.members.values():
            for c in classes:
                counts[c] += 1
        counts["D4"] += len(self.departures)
        return counts

    def triggers(self, cause: str) -> list[Trigger]:
        """In a stable order (partitions finish in any order; a resumed run must cut the same chunks)."""
        out = [Trigger("inspect_member", cause, member=k) for k in sorted(self.members)]
        out += [Trigger("left_list", cause, member=k, list_id=list_id) for k, list_id in sorted(self.departures)]
        return out


@dataclass
class ReconsentTally:
    """Re-consents the planner judged: standing ones (count, oldest) and ones overwritten because the
    order of the opposing opt-out could not be known (the safe side, said out loud)."""

    standing: int = 0
    oldest: str | None = None  # the earliest re-consent still standing against an OBM opt-out
    order_unknown: int = 0
    _seen: set = field(default_factory=set, repr=False)

    def count(self, reconsents: Iterable[Reconsent]) -> None:
        for r in reconsents:
            key = (r.email, r.consent_type, r.purpose_id, r.topic_id)
            if key in self._seen:
                continue
            self._seen.add(key)
            if r.verdict == "stands":
                self.standing += 1
                self._older(r.reconsented_at)
            elif r.verdict == "order unknown":
                self.order_unknown += 1

    def add(self, other: "ReconsentTally") -> None:
        self.standing += other.standing
        self.order_unknown += other.order_unknown
        self._older(other.oldest)

    def _older(self, moment: str | None) -> None:
        new = instant(moment)
        if new is not None and (self.oldest is None or new < (instant(self.oldest) or new)):
            self.oldest = moment

    def to_dict(self) -> dict:
        return {"reconsented": self.standing, "reconsented_oldest": self.oldest,
                "reconsent_order_unknown": self.order_unknown}

    @classmethod
    def from_dict(cls, d: dict) -> "ReconsentTally":
        return cls(int(d.get("reconsented") or 0), d.get("reconsented_oldest"), int(d.get("reconsent_order_unknown") or 0))

    def report(self) -> dict:
        """The run report's fields: re-consented in RTM while OBM still says opted out."""
        return {"reconsented_in_rtm": self.standing, "reconsented_in_rtm_oldest": self.oldest,
                "opt_out_order_unknown": self.order_unknown}


@dataclass
class PartScan:
    """What one partition of the scan contributed: small enough to checkpoint and merge later.

    ``consent``: (email digest, purpose, topic) -> (modifiedon, opted out) of its newest row;
    ``ids``: member ids of a list partition (as integers); ``found``: (table, member id, class).
    """

    rows: int = 0
    consent: dict[tuple[int, str, str | None], tuple[str, int]] = field(default_factory=dict)
    ids: list[int] = field(default_factory=list)
    found: list[tuple[str, str, str]] = field(default_factory=list)


def _newer(newest: dict, key: tuple, seen: tuple[str, int]) -> None:
    old = newest.get(key)
    if old is None or seen[0] >= old[0]:  # RTM honours the most recently modified duplicate
        newest[key] = seen


class DriftScan:
    """The scan in three phases, each made of partitions read in any order and merged with ``add``:
    consent rows (``consent_part``), then, after ``settle``, each relevant list (``list_part``,
    then ``finish_list`` once all of a list's partitions are in), then, after ``lists_done``,
    every contact and lead (``member_part``). A part only reads what earlier phases settled, so the parts of one phase
    can be computed concurrently; ``add`` must not run concurrently with itself."""

    def __init__(self, mappings: Mappings):
        self.m = mappings
        self.columns = mappings.email_columns
        self._newest: dict[tuple, tuple[str, int]] | None = {}
        self.topic_out: dict[str, set[int]] = {}
        self.purpose_out: dict[str, set[int]] = {}
        self.list_members: dict[str, set[int]] = {}  # relevant list -> member ids (as ints)
        self.candidates = Candidates()
        self.rows_seen = {"consent": 0, "list_members": 0, "members": 0}
        self._any_out: set[int] = set()
        self._brands: list[tuple] = []
        self._d5: set[int] = set()
        self._lists_done = False

    def add(self, phase: str, part: PartScan, list_id: str | None = None) -> None:
        """Merges a partition's result (``phase``: consent, list_members or members)."""
        self.rows_seen[phase] += part.rows
        if part.consent:
            assert self._newest is not None, "consent rows come first"
            for key, seen in part.consent.items():
                _newer(self._newest, key, seen)
        if list_id is not None:
            self.list_members.setdefault(list_id, set()).update(part.ids)
        for table, member_id, cls in part.found:
            self.candidates.add((table, member_id), cls)  # type: ignore[arg-type]

    # --- 1. consent rows --------------------------------------------------------------------

    def consent_part(self, rows: Iterable[ConsentRow]) -> PartScan:
        part = PartScan()
        newest = part.consent
        for r in rows:
            part.rows += 1
            if r.contact_point_type not in (None, ContactPointType.EMAIL):
                continue
            e = normalise_email(r.contact_point_value)
            if e is None or r.purpose_id is None:
                continue
            topic = sys.intern(r.topic_id) if r.consent_type == ConsentType.TOPIC and r.topic_id else None
            _newer(newest, (email_key(e), sys.intern(r.purpose_id), topic),
                   (r.modified_on or "", int(r.value == ConsentValue.OPTED_OUT)))
        return part

    def settle(self) -> None:
        """Ends the consent phase: the newest row per key decides who is opted out."""
        if self._newest is None:
            return
        for (ek, purpose, topic), (_, out) in self._newest.items():
            if out:
                if topic:
                    self.topic_out.setdefault(topic, set()).add(ek)
                else:
                    self.purpose_out.setdefault(purpose, set()).add(ek)
        self._newest = None

    # --- 2. lists ---------------------------------------------------------------------------

    def list_part(self, list_id: str, members: Iterable[Member]) -> PartScan:
        """Scans (part of) one relevant list: its member ids and its D1/D5 candidates."""
        assert self._newest is None, "settle() the consent rows first"
        topics = [t.topic_id for t in self.m.topics_of_list.get(list_id, ())]
        brand = self.m.brand_of_opt_out_list.get(list_id)
        part = PartScan()
        for member in members:
            part.rows += 1
            part.ids.append(_mid(member.id))
            eks = [email_key(e) for e in member.contact_points(self.columns)]
            if any(ek in self.topic_out.get(t, ()) for t in topics for ek in eks):
                part.found.append((member.table, member.id, "D1"))
            if brand is not None:
                # D5: the brand's purposes must all be opted out for each of its emails (lists are checked later)
                if any(ek not in self.purpose_out.get(p, ()) for p in brand.purpose_ids for ek in eks):
                    part.found.append((member.table, member.id, "D5"))
        return part

    def finish_list(self, list_id: str, previous: frozenset[str] | None) -> set[int]:
        """After all of a list's parts are in: departures since ``previous`` (D4); returns its
        member ids now (the next snapshot)."""
        current = self.list_members.setdefault(list_id, set())
        if list_id in self.m.topics_of_list:
            if previous is None:
                self.candidates.first_snapshot.append(list_id)
            else:
                table = self.m.member_table_of_list[list_id]
                for member_id in sorted(previous):
                    if _mid(member_id) not in current:
                        self.candidates.departures.append(((table, member_id), list_id))
        return current

    # --- 3. every contact and lead ----------------------------------------------------------

    def lists_done(self) -> None:
        """Ends the list phase: what every member check needs, computed once (not per member)."""
        lm = self.list_members
        self._any_out = set().union(*self.purpose_out.values())
        self._brands = [(b, tuple(b.purpose_ids), set().union(*(lm.get(x, ()) for x in b.list_ids)))
                        for b in self.m.brands]
        self._d5 = set()  # in a brand's opt-out list and still in one of its lists
        for list_id, brand in self.m.brand_of_opt_out_list.items():
            self._d5 |= lm.get(list_id, set()) & set().union(*(lm.get(x, ()) for x in brand.list_ids))
        self._lists_done = True

    def member_part(self, members: Iterable[Member]) -> PartScan:
        assert self._newest is None, "settle() the consent rows first"
        assert self._lists_done, "lists_done() after the lists"
        single = self.m.mode == "single-brand"
        covered = tuple(self.m.covered_purposes)
        purpose_out, any_out, brands, d5 = self.purpose_out, self._any_out, self._brands, self._d5
        part = PartScan()
        found = part.found
        for member in members:
            part.rows += 1
            eks = [email_key(e) for e in member.contact_points(self.columns)]
            if not eks:
                continue
            mid = _mid(member.id)
            if (member.donotbulkemail or member.donotemail) and any(
                    ek not in purpose_out.get(p, ()) for p in covered for ek in eks):
                found.append((member.table, member.id, "D3"))
            if any(ek in any_out for ek in eks):  # most members have no opt-out at all
                for brand, purposes, in_brand_lists in brands:
                    if not any(ek in purpose_out.get(p, ()) for p in purposes for ek in eks):
                        continue
                    if single:
                        if not member.donotbulkemail:
                            found.append((member.table, member.id, "D2"))
                        continue
                    oo = brand.opt_out_list
                    missing_oo = oo is not None and oo.member_table == member.table and \
                        mid not in self.list_members.get(oo.list_id, ())
                    if mid in in_brand_lists or missing_oo:
                        found.append((member.table, member.id, "D2"))
            if mid in d5:  # D5: still in the brand's lists
                found.append((member.table, member.id, "D5"))
        return part

    def finish(self) -> Candidates:
        self.settle()
        return self.candidates
