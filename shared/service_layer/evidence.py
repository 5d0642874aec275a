"""What the sync files for each change it makes or finds: ledger entries (what was written, or a
re-consent kept, and why) and the opt-out deadlines' writes (when each opt-out was given, and
opt-outs the other side already reflected). Pure: built from the planner's actions, the write
results and the events; the engine stores them."""
from __future__ import annotations

from typing import Sequence

from shared.domain.compliance import ALREADY_TRUE, CHANGE_EVENT, DATAVERSE_DATES, UNDATED, Given, Write
from shared.domain.consent import (CONSENT_TABLE, OPT_OUT_FLAGS, ConsentSource, ConsentType, ConsentValue,
                                   normalise_email)
from shared.domain.events import ChangeEvent, ConsentChanged, ContactChanged, MembershipChanged
from shared.domain.ledger import ADD_TO_OPT_OUT_LIST, AGAINST, KEEP_RECONSENT, SET_FLAG, LedgerEntry
from shared.domain.mappings import Mappings
from shared.domain.model import WriteResult
from shared.domain.planner import (Action, AddToOptOutList, OptOutConsent, Reconsent, RemoveFromList, SetDoNotBulkEmail,
                                   State, effective_opt_outs)


def reconcile_given(action: Action) -> Given:
    """An opt-out the nightly run found: dated by what the planner's timeline read (modifiedon,
    listmember createdon, audit history, the ledger), else undated."""
    since = getattr(action, "since", None)
    return Given(since, DATAVERSE_DATES if since else UNDATED, "reconcile")


def is_one_click(event: ChangeEvent) -> bool:
    """A consent row opted out through an email's one-click unsubscribe (List-Unsubscribe)."""
    c = event.change
    return (isinstance(c, ConsentChanged) and c.source == ConsentSource.EMAIL_LIST_UNSUBSCRIBE
            and c.value == ConsentValue.OPTED_OUT)


def already_reflected(events: Sequence[ChangeEvent], actions: Sequence[Action], state: State,
                      mappings: Mappings) -> list[Write]:
    """Opt-out events that needed no write: the other side already reflected the opt-out when the
    sync read it (the rows as they are now, so an opt-out since withdrawn is not counted)."""
    acted = {a.cause for a in actions}
    columns = mappings.email_columns
    out: list[Write] = []

    def emails_of(key: tuple[str, str]) -> frozenset[str]:
        m = state.members.get(key)
        return m.contact_points(columns) if m is not None else frozenset()

    for event in events:
        if event.id in acted or not event.origin.time:
            continue
        c, given = event.change, Given(event.origin.time, CHANGE_EVENT, "event", is_one_click(event))
        found: list[tuple[str, str, str]] = []  # (email, side, rule)
        if isinstance(c, ConsentChanged) and c.value == ConsentValue.OPTED_OUT:
            email = normalise_email(c.contact_point_value)
            if email and email in state.loaded_emails:
                purposes, topics = effective_opt_outs(state.consent.get(email, ()))
                if c.topic_id and c.topic_id in topics and c.topic_id in mappings.purpose_of_topic:
                    found.append((email, "obm", "R2"))
                elif not c.topic_id and c.purpose_id in purposes and c.purpose_id in mappings.brands_of_purpose:
                    found.append((email, "obm", "R4"))
        elif isinstance(c, ContactChanged) and mappings.covered_purposes:
            m = state.members.get((event.table, event.record_id))
            if m is not None and (m.donotbulkemail or m.donotemail) and (
                    event.message == "Create" or any(f in c.changed for f in OPT_OUT_FLAGS)):
                found += [(e, "rtm", "R3") for e in emails_of((event.table, event.record_id))]
        elif isinstance(c, MembershipChanged):
            for list_id in c.list_ids:
                table = mappings.member_table_of_list.get(list_id)
                for member_id in c.member_ids if table else ():
                    key = (table, member_id)
                    if key not in state.members:
                        continue
                    member_now = list_id in state.lists_of.get(key, ())
                    if c.action == "removed" and list_id in mappings.topics_of_list and not member_now:
                        found += [(e, "rtm", "R1") for e in emails_of(key)]
                    elif c.action != "removed" and list_id in mappings.brand_of_opt_out_list and member_now:
                        found += [(e, "rtm", "R5") for e in emails_of(key)]
        out += [Write(e, event.id, side, rule, True, ALREADY_TRUE, given) for e, side, rule in found]
    return out


def deadline_writes(action: Action, result: WriteResult, given: Given) -> list[Write]:
    """The action as writes for the opt-out deadlines: one per person it reaches."""
    system = "rtm" if isinstance(action, OptOutConsent) else "obm"
    emails = (action.email,) if isinstance(action, OptOutConsent) else action.emails
    detail = None if result.ok else f"{result.status or ''} {result.error_code or ''}".strip() or "failed"
    cause = action.cause or "unknown"
    return [Write(e, cause, system, action.rule, result.ok, detail, given) for e in emails]


def describe(action: Action) -> tuple[str, str, str, str | None, str, str]:
    """(target system, table, action text, target id, before, after) for the ledger."""
    if isinstance(action, OptOutConsent):
        what = (f"opt out of topic {action.topic_id}" if action.consent_type == ConsentType.TOPIC
                else f"opt out of purpose {action.purpose_id}")
        before = "no row" if action.row_id is None else _value_name(action.before)
        return "rtm", CONSENT_TABLE, what, action.row_id, before, "Opted out"
    if isinstance(action, SetDoNotBulkEmail):
        return "obm", action.member[0], SET_FLAG, action.member[1], "false", "true"
    if isinstance(action, RemoveFromList):
        return "obm", action.member[0], f"remove from list {action.list_id}", action.member[1], "member", "not a member"
    if isinstance(action, AddToOptOutList):
        return "obm", action.member[0], f"{ADD_TO_OPT_OUT_LIST}{action.list_id}", action.member[1], "not a member", "member"
    raise TypeError(action)


def _value_name(value: int | None) -> str:
    try:
        return ConsentValue(value).name.replace("_", " ").capitalize() if value is not None else "unknown"
    except ValueError:
        return str(value)


def ledger_entries(action: Action, result: WriteResult, origin_system: str, origin_time: str | None) -> list[LedgerEntry]:
    system, table, what, target_id, before, after = describe(action)
    emails = (action.email,) if isinstance(action, OptOutConsent) else action.emails
    outcome = "applied" if result.ok else "failed"
    detail = (action.note if isinstance(action, OptOutConsent) else None) if result.ok else \
        f"{result.status} {result.error_code or ''}".strip()
    if getattr(action, "since", None) and not isinstance(action, RemoveFromList):  # a removal is no timeline root
        origin_time = action.since  # when the opt-out it follows happened: the timeline rule's evidence
    carried_from = action.carried_from if isinstance(action, OptOutConsent) else None
    if carried_from and not result.ok:
        detail = f"{detail}; {action.note}"  # a failed carry-over still says where it came from
    return [LedgerEntry(email=e, rule=action.rule, origin_system=origin_system, origin_event_id=action.cause,
                        origin_time=origin_time, target_system=system, target_table=table,
                        target_id=target_id or result.id, action=what, before=before, after=after,
                        outcome=outcome, detail=detail, carried_from=carried_from,
                        evidence=getattr(action, "evidence", None)) for e in emails]


def reconsent_entries(r: Reconsent, origin_system: str) -> list[LedgerEntry]:
    """A standing re-consent, remembered per opposing opt-out (root) and row version.

    ``origin_time`` is the row's modifiedon: a later change to the row (by anyone) is a new
    choice to judge afresh.
    """
    scope = f"to topic {r.topic_id}" if r.topic_id else f"to purpose {r.purpose_id}"
    return [LedgerEntry(email=r.email, rule=r.rule, origin_system=origin_system, origin_event_id=r.cause,
                        origin_time=r.reconsented_at, target_system="rtm", target_table=CONSENT_TABLE,
                        target_id=r.row_id, action=f"{KEEP_RECONSENT}{scope}", before="Opted in", after="Opted in",
                        outcome="refused",
                        detail=f"{AGAINST}{j.against}; the person's re-consent is newer than that opt-out "
                               f"({j.opt_out.evidence} {j.opt_out.at or 'unknown'})", evidence=j.opt_out.evidence)
            for j in r.to_remember]
