"""Explain one person, in the order the CLI prints it: their records in Outbound, their consent rows in
Real-time marketing, what the sync would still do and which rules that leaves inconsistent, the
re-consent timeline, and what the ledger says the sync already wrote.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from shared.domain.model import Purpose, Topic


def _option_label(enum_cls: Any, value: int | None) -> str | None:
    if value is None:
        return None
    try:
        return enum_cls(value).name.replace("_", " ").capitalize()
    except ValueError:
        return str(value)


def _mask_others(text: str | None, email: str) -> str | None:
    """Free text as stored, with any address other than the one asked about masked."""
    from shared.telemetry import EMAIL, MASK

    if not text or "@" not in text:
        return text
    return EMAIL.sub(lambda m: m.group(0) if m.group(0).strip().lower() == email else MASK, text)


def explain(email: str, client: Any, mappings: Any, ledger: Any, gateway: Any = None,
            max_rounds: int = 5) -> dict[str, Any]:
    """The person's state in both systems, whether the rules hold for it, and their ledger.

    "Consistent" is decided by the sync's own planner over the same reads the event path makes
    (so the person's other addresses count too): what it would still change is listed as
    pending, and every mapped list, topic and purpose it touches is inconsistent.
    """
    from shared.domain.consent import normalise_email

    e = normalise_email(email) or ""
    catalogue = _Catalogue.read(client)
    people = _records_of(e, client, catalogue, _mapped_roles(mappings))
    rows, consent = _consent_of(e, client, catalogue)
    verdict = _Verdict()
    if mappings is not None:
        verdict = _judge(e, gateway or _gateway(client), mappings, ledger, rows, catalogue, max_rounds)
    return {
        "email": e,
        "contacts": people["contact"],
        "leads": people["lead"],
        "consent": consent,
        "mappings": None if mappings is None else mappings.mode,
        "consistent": None if mappings is None else (not verdict.pending and verdict.elsewhere == 0 and verdict.complete),
        "rules": verdict.rules,
        "pending": verdict.pending,
        "pending_elsewhere": verdict.elsewhere,  # on the person's other addresses or on people sharing them
        "closure_complete": verdict.complete,
        "timeline": verdict.timeline,  # the person's re-consents against the opt-outs that would overwrite them
        "ledger": _ledger_of(e, ledger, catalogue),
    }


@dataclass(frozen=True)
class _Catalogue:
    """The lists, topics and purposes by id, read once so every step names them the same way."""
    lists: dict[str, Any]
    topics: dict[str, Any]
    purposes: dict[str, Any]

    @classmethod
    def read(cls, client: Any) -> "_Catalogue":
        return cls({l.id: l for l in client.marketing_lists()}, {t.id: t for t in client.topics()},
                   {p.id: p for p in client.purposes()})

    def list_name(self, list_id: str) -> str:
        return self.lists[list_id].name if list_id in self.lists else list_id

    def names(self) -> dict[str, str]:
        return {**{i: f"list {l.name!r}" for i, l in self.lists.items()},
                **{i: f"topic {t.name!r}" for i, t in self.topics.items()},
                **{i: f"purpose {p.name!r}" for i, p in self.purposes.items()}}


@dataclass
class _Verdict:
    """What the sync's planner says about the person (empty without mappings)."""
    rules: list[dict[str, Any]] = field(default_factory=list)
    pending: list[dict[str, Any]] = field(default_factory=list)
    elsewhere: int = 0
    complete: bool = True
    timeline: list[dict[str, Any]] = field(default_factory=list)


def _mapped_roles(mappings: Any) -> dict[str, tuple[str, str]]:
    """list id -> (its role, its brand) for every mapped list and brand opt-out list."""
    mapped: dict[str, tuple[str, str]] = {}
    if mappings is not None:
        for b in mappings.brands:
            for m in b.lists:
                mapped[m.list_id] = (f"mapped to topic {m.topic_name!r}", b.name)
            if b.opt_out_list:
                mapped[b.opt_out_list.list_id] = ("opt-out list", b.name)
    return mapped


def _records_of(e: str, client: Any, catalogue: _Catalogue,
                mapped: dict[str, tuple[str, str]]) -> dict[str, list[dict[str, Any]]]:
    """The Outbound side: every contact and lead holding the address, with its flags and lists."""
    from shared.domain.consent import EMAIL_COLUMNS, normalise_email

    people: dict[str, list[dict[str, Any]]] = {"contact": [], "lead": []}
    for table in ("contact", "lead"):
        found = sorted(client.members_by_emails([e], table, EMAIL_COLUMNS), key=lambda m: m.id)
        memberships = client.lists_of_members([m.id for m in found], table) if found else {}
        for m in found:
            holding = [c for c in EMAIL_COLUMNS if normalise_email(m.emails.get(c)) == e]
            people[table].append({
                "table": table, "id": m.id, "active": m.active, "email_columns": holding,
                "other_addresses": len(m.contact_points(EMAIL_COLUMNS) - {e}),
                "donotbulkemail": m.donotbulkemail, "donotemail": m.donotemail,
                "lists": [{"id": lid, "name": catalogue.list_name(lid), "mapped": lid in mapped,
                           "role": mapped.get(lid, (None, None))[0], "brand": mapped.get(lid, (None, None))[1]}
                          for lid in sorted(memberships.get(m.id, ()), key=catalogue.list_name)],
            })
    return people


def _consent_of(e: str, client: Any, catalogue: _Catalogue) -> tuple[list[Any], list[dict[str, Any]]]:
    """The Real-time marketing side: the address's consent rows, newest first (rows, and as shown)."""
    from shared.domain.consent import ConsentSource, ConsentType, ConsentValue

    rows = sorted(client.consent_rows([e]), key=lambda r: (r.modified_on or ""), reverse=True)
    topics, purposes = catalogue.topics, catalogue.purposes
    consent = [{
        "id": r.id, "type": _option_label(ConsentType, r.consent_type),
        "purpose": purposes[r.purpose_id].name if r.purpose_id in purposes else r.purpose_id,
        "topic": (topics[r.topic_id].name if r.topic_id in topics else r.topic_id) if r.topic_id else None,
        "value": _option_label(ConsentValue, r.value), "source": _option_label(ConsentSource, r.source),
        "reason": _mask_others(r.reason, e), "modified_on": r.modified_on, "active": r.active,
    } for r in rows]
    return rows, consent


def _judge(e: str, gateway: Any, mappings: Any, ledger: Any, rows: list[Any], catalogue: _Catalogue,
           max_rounds: int) -> _Verdict:
    """Plan as the event path would for this address: the re-consent timeline, what is pending, and
    which mapped rules it leaves inconsistent."""
    from shared.domain.planner import Trigger, effective_opt_outs
    from shared.service_layer.process_changes import plan_in_rounds

    state, current, _, _ = plan_in_rounds(gateway, mappings, [Trigger("inspect_email", "explain", email=e)],
                                          max_rounds, history=getattr(ledger, "history", None))
    timeline = [_timeline_entry(r, catalogue.purposes, catalogue.topics, catalogue.list_name)
                for r in current.reconsents if r.email == e]
    mine = {k for k, m in state.members.items() if e in m.contact_points(mappings.email_columns)}
    pending, touched, elsewhere = _pending_actions(e, current.actions, mine, mappings, catalogue)
    members_in: dict[str, int] = {}
    for k in mine:
        for lid in state.lists_of.get(k, ()):
            members_in[lid] = members_in.get(lid, 0) + 1
    eff_purposes, eff_topics = effective_opt_outs(rows)
    rules = _rules(mappings, touched, members_in, eff_purposes, eff_topics)
    return _Verdict(rules, pending, elsewhere, current.complete, timeline)


def _pending_actions(e: str, actions: Any, mine: set, mappings: Any, catalogue: _Catalogue
                     ) -> tuple[list[dict[str, Any]], set[tuple[str, str]], int]:
    """The planner's actions on this person, in words; what they touch ("list"|"topic"|"purpose", id);
    and how many fall on the person's other addresses or on people sharing them."""
    from shared.domain.planner import AddToOptOutList, OptOutConsent, RemoveFromList, SetDoNotBulkEmail

    pending: list[dict[str, Any]] = []
    touched: set[tuple[str, str]] = set()
    elsewhere = 0
    for a in actions:
        if isinstance(a, OptOutConsent):
            if a.email != e:
                elsewhere += 1
                continue
            if a.topic_id:
                touched.add(("topic", a.topic_id))
                what = f"opt out of topic {catalogue.topics.get(a.topic_id, Topic(a.topic_id, a.topic_id)).name!r}"
            else:
                touched.add(("purpose", a.purpose_id))
                what = f"opt out of purpose {catalogue.purposes.get(a.purpose_id, Purpose(a.purpose_id, a.purpose_id)).name!r}"
            what += " (new row)" if a.row_id is None else f" (row {a.row_id})"
        elif a.member not in mine:
            elsewhere += 1
            continue
        elif isinstance(a, SetDoNotBulkEmail):
            touched.update(("purpose", p) for p in mappings.covered_purposes)
            what = f"set donotbulkemail on {a.member[0]} {a.member[1]}"
        elif isinstance(a, RemoveFromList):
            touched.add(("list", a.list_id))
            what = f"remove {a.member[0]} {a.member[1]} from list {catalogue.list_name(a.list_id)!r}"
        elif isinstance(a, AddToOptOutList):
            touched.add(("list", a.list_id))
            what = f"add {a.member[0]} {a.member[1]} to opt-out list {catalogue.list_name(a.list_id)!r}"
        else:  # pragma: no cover - the planner has no other action
            continue
        pending.append({"rule": a.rule, "action": what})
    return pending, touched, elsewhere


def _rules(mappings: Any, touched: set[tuple[str, str]], members_in: dict[str, int], eff_purposes: Any,
           eff_topics: Any) -> list[dict[str, Any]]:
    """Each brand's mapped list-topic pairs, purposes and opt-out list: consistent unless a pending
    action touches it."""
    rules: list[dict[str, Any]] = []
    for b in mappings.brands:
        for m in b.lists:
            bad = ("list", m.list_id) in touched or ("topic", m.topic_id) in touched
            rules.append({"brand": b.name, "kind": "list-topic", "list": m.list_name, "topic": m.topic_name,
                          "topic_opted_out": m.topic_id in eff_topics, "members_in_list": members_in.get(m.list_id, 0),
                          "status": "inconsistent" if bad else "consistent"})
        for p in b.purposes:
            bad = ("purpose", p.id) in touched
            rules.append({"brand": b.name, "kind": "purpose", "purpose": p.name,
                          "purpose_opted_out": p.id in eff_purposes,
                          "status": "inconsistent" if bad else "consistent"})
        if b.opt_out_list:
            bad = ("list", b.opt_out_list.list_id) in touched
            rules.append({"brand": b.name, "kind": "opt-out list", "list": b.opt_out_list.list_name,
                          "members_in_list": members_in.get(b.opt_out_list.list_id, 0),
                          "status": "inconsistent" if bad else "consistent"})
    return rules


def _ledger_of(e: str, ledger: Any, catalogue: _Catalogue) -> list[dict[str, Any]] | None:
    """What the sync wrote for the address, each action with its list, topic or purpose named."""
    if ledger is None:
        return None
    names = catalogue.names()
    return [{
        "recorded_at": h.recorded_at, "rule": h.rule, "origin": h.origin_system, "event_id": h.origin_event_id,
        "target_system": h.target_system, "target_table": h.target_table, "target_id": h.target_id,
        "action": h.action, "action_named": named_action(h.action, names), "before": h.before, "after": h.after,
        "outcome": h.outcome, "detail": h.detail, "carried_from": h.carried_from, "evidence": h.evidence,
    } for h in ledger.history(e)]


_LEDGER_SUBJECT = re.compile(r"\b(list|topic|purpose) ([0-9a-fA-F-]{36})\b")


def named_action(action: str, names: dict[str, str]) -> str:
    """A ledger action with its list, topic or purpose named: "remove from list 'News'" for
    "remove from list <id>" (the id stays when Dataverse no longer has the row)."""
    return _LEDGER_SUBJECT.sub(lambda m: names.get(m.group(2).lower(), m.group(0)), action)


_WHY = {
    "stands": "the person opted in after every opt-out that would overwrite it: their newer choice stands "
              "(the Outbound side keeps its opt-out; clearing it is an operator's decision)",
    "opt-out newer": "an opt-out was given after the person opted in: the newer opt-out wins",
    "order unknown": "no evidence shows the person opted in after the opposing opt-out: the opt-out wins (the safe side)",
}


def _timeline_entry(r: Any, purpose_by_id: dict, topic_by_id: dict, list_name: Callable[[str], str]) -> dict[str, Any]:
    """One re-consent as explain shows it: the scope, when, and each opposing opt-out with its evidence."""
    from shared.domain.consent import ConsentSource

    purpose = purpose_by_id[r.purpose_id].name if r.purpose_id in purpose_by_id else r.purpose_id
    scope = (f"topic {topic_by_id[r.topic_id].name if r.topic_id in topic_by_id else r.topic_id!r} of {purpose!r}"
             if r.topic_id else f"purpose {purpose!r}")
    return {
        "scope": scope, "row_id": r.row_id, "reconsented_at": r.reconsented_at,
        "source": _option_label(ConsentSource, r.source), "rule": r.rule, "verdict": r.verdict, "why": _WHY[r.verdict],
        "against": [{"opt_out": _name_lists(j.against, list_name), "evidence": j.opt_out.evidence, "at": j.opt_out.at,
                     "dated": j.opt_out.exact, "remembered": j.remembered, "stands": j.stands}
                    for j in sorted(r.judgements, key=lambda j: j.against)],
    }


def _name_lists(root: str, list_name: Callable[[str], str]) -> str:
    """'opt-out list <id> contact <id>' with the list's name for the id."""
    words = root.split(" ")
    if words[0] in ("opt-out", "left") and len(words) > 2:
        words[2] = repr(list_name(words[2]))
    return " ".join(words)


def _gateway(client: Any) -> Any:
    from shared.adapters.sync_gateway import DataverseSyncGateway

    return DataverseSyncGateway(client)
