"""The nightly reconciliation's first pass: which members and emails may be out of line. Pure.

The tenant is streamed once (consent rows, then each mapped and opt-out list, then every contact
and lead) and only compact sets are kept: 64-bit digests of normalised emails and 128-bit member
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


def email_key(email: str) -> int:
    """A 64-bit digest of a normalised email: 8 bytes in a set instead of the address.

    A collision only adds a candidate the planner then finds in line; it can never hide drift.
    """
    return int.from_bytes(hashlib.blake2b(email.encode(), digest_size=8).digest(), "big")


def _mid(member_id: str) -> int:
    return uuid.UUID(member_id).int


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
        out = [Trigger("inspect_member", cause, member=k) for k in self.members]
        out += [Trigger("left_list", cause, member=k, list_id=list_id) for k, list_id in self.departures]
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


class DriftScan:
    """Feed it in order: ``consent_rows``, then ``list_members`` per relevant list, then ``members``."""

    def __init__(self, mappings: Mappings):
        self.m = mappings
        self.columns = mappings.email_columns
        self._newest: dict[tuple, tuple[str, int]] | None = {}
        self.topic_out: dict[str, set[int]] = {}
        self.purpose_out: dict[str, set[int]] = {}
        self.list_members: dict[str, set[int]] = {}  # relevant list -> member ids (as ints)
        self.candidates = Candidates()
        self.rows_seen = {"consent": 0, "list_members": 0, "members": 0}

    # --- 1. consent rows --------------------------------------------------------------------

    def consent_rows(self, rows: Iterable[ConsentRow]) -> None:
        newest = self._newest
        assert newest is not None, "consent rows come first"
        for r in rows:
            self.rows_seen["consent"] += 1
            if r.contact_point_type not in (None, ContactPointType.EMAIL):
                continue
            e = normalise_email(r.contact_point_value)
            if e is None or r.purpose_id is None:
                continue
            topic = sys.intern(r.topic_id) if r.consent_type == ConsentType.TOPIC and r.topic_id else None
            key = (email_key(e), sys.intern(r.purpose_id), topic)
            seen = newest.get(key)
            stamp = r.modified_on or ""
            if seen is None or stamp >= seen[0]:  # RTM honours the most recently modified duplicate
                newest[key] = (stamp, int(r.value == ConsentValue.OPTED_OUT))

    def _settle_consent(self) -> None:
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

    def list_members_of(self, list_id: str, members: Iterable[Member], previous: frozenset[str] | None) -> list[str]:
        """Scans one relevant list; returns its member ids now (the next snapshot)."""
        self._settle_consent()
        topics = [t.topic_id for t in self.m.topics_of_list.get(list_id, ())]
        brand = self.m.brand_of_opt_out_list.get(list_id)
        current: set[int] = set()
        ids: list[str] = []
        for member in members:
            self.rows_seen["list_members"] += 1
            key = (member.table, member.id)
            current.add(_mid(member.id))
            ids.append(member.id)
            eks = [email_key(e) for e in member.contact_points(self.columns)]
            if any(ek in self.topic_out.get(t, ()) for t in topics for ek in eks):
                self.candidates.add(key, "D1")
            if brand is not None:
                # D5: the brand's purposes must all be opted out for each of its emails (lists are checked later)
                if any(ek not in self.purpose_out.get(p, ()) for p in brand.purpose_ids for ek in eks):
                    self.candidates.add(key, "D5")
        self.list_members[list_id] = current
        if list_id in self.m.topics_of_list:
            if previous is None:
                self.candidates.first_snapshot.append(list_id)
            else:
                table = self.m.member_table_of_list[list_id]
                for member_id in previous:
                    if _mid(member_id) not in current:
                        self.candidates.departures.append(((table, member_id), list_id))
        return ids

    # --- 3. every contact and lead ----------------------------------------------------------

    def members(self, members: Iterable[Member]) -> None:
        self._settle_consent()
        single = self.m.mode == "single-brand"
        covered = self.m.covered_purposes
        for member in members:
            self.rows_seen["members"] += 1
            key = (member.table, member.id)
            eks = [email_key(e) for e in member.contact_points(self.columns)]
            if not eks:
                continue
            mid = _mid(member.id)
            if (member.donotbulkemail or member.donotemail) and any(
                    ek not in self.purpose_out.get(p, ()) for p in covered for ek in eks):
                self.candidates.add(key, "D3")
            for brand in self.m.brands:
                if not any(ek in self.purpose_out.get(p, ()) for p in brand.purpose_ids for ek in eks):
                    continue
                if single:
                    if not member.donotbulkemail:
                        self.candidates.add(key, "D2")
                    continue
                in_lists = any(mid in self.list_members.get(lst, ()) for lst in brand.list_ids)
                oo = brand.opt_out_list
                missing_oo = oo is not None and oo.member_table == member.table and \
                    mid not in self.list_members.get(oo.list_id, ())
                if in_lists or missing_oo:
                    self.candidates.add(key, "D2")
            for list_id, brand in self.m.brand_of_opt_out_list.items():  # D5: still in the brand's lists
                if mid in self.list_members.get(list_id, ()) and any(
                        mid in self.list_members.get(lst, ()) for lst in brand.list_ids):
                    self.candidates.add(key, "D5")

    def finish(self) -> Candidates:
        self._settle_consent()
        return self.candidates
