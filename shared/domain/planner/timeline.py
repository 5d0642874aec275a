"""The timeline rule: a person's own re-consent judged against each opt-out (root) that would
overwrite it, by the best evidence in the state of when that opt-out happened. Pure."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Iterable

from shared.domain.consent import (CONSENT_TABLE, PERSONAL_SOURCES, ConsentType, ConsentValue, ContactPointType,
                                   normalise_email)
from shared.domain.ledger import ADD_TO_OPT_OUT_LIST, AGAINST, KEEP_RECONSENT, SET_FLAG
from shared.domain.model import ConsentRow
from shared.domain.planner.types import IN_SNAPSHOT, Judgement, MemberKey, OptOutTime, Reconsent, State, Trigger


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


class Timeline:
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

