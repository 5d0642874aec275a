"""From a change event to what the planner must look at. Pure.

An event's values may be stale by the time it is processed (delivery is out of order), so it
only says *where* to look; the planner decides from the rows as they are now. Even R1's "this
member left that list", a fact about the past that current rows cannot show, is only a claim: the
planner applies R1 when the member is not in the list now and the list snapshot does not deny it
was before (``claimed``); an event's own time is weighed against Dataverse's (the timeline rule).
"""
from __future__ import annotations

from dataclasses import dataclass

from shared.domain.consent import (CONSENT_TABLE, OPT_OUT_FLAGS, PERSONAL_SOURCES, ConsentValue, ContactPointType,
                                   normalise_email)
from shared.domain.events import (
    ChangeEvent,
    ConsentChanged,
    ContactChanged,
    MembershipChanged,
    RecordDeleted,
    RereadRecord,
)
from shared.domain.mappings import Mappings
from shared.domain.planner import Trigger



@dataclass(frozen=True, slots=True)
class NeedsConsentRow:
    """The event names a consent row but not its email: read the row, then inspect its email."""

    row_id: str
    cause: str


@dataclass(frozen=True, slots=True)
class NoEffect:
    """Nothing for the sync to do; ``reason`` goes to the log."""

    reason: str


def is_echo(event: ChangeEvent, sync_user_id: str | None) -> bool:
    """The sync's own write coming back: its effects were planned when it was written."""
    return bool(sync_user_id) and sync_user_id in (event.origin.initiating_user_id, event.origin.user_id)


def is_foreign(event: ChangeEvent, organization_id: str | None) -> bool:
    """An event of another Dataverse organization than the one the sync serves (a copied
    environment that kept the webhook registration). An event naming none predates the check."""
    named = event.origin.organization_id
    return bool(named and organization_id) and named.strip("{}").lower() != organization_id.strip("{}").lower()


def is_personal_opt_in_event(c: ConsentChanged) -> bool:
    return (c.value == ConsentValue.OPTED_IN and c.source in PERSONAL_SOURCES
            and c.contact_point_type in (None, ContactPointType.EMAIL))


def _address_changes(c: ContactChanged, mappings: Mappings, cause: str) -> list[Trigger]:
    """R7: each address an Update replaced, paired with each address it brought (the same person)."""
    if not c.previous_emails:
        return []
    columns = [col for col in c.changed if col in mappings.email_columns and col in c.previous_emails]
    old = {normalise_email(c.previous_emails[col]) for col in columns} - {None}
    new = {normalise_email(c.emails.get(col)) for col in columns} - {None} - old
    return [Trigger("address_changed", cause, email=n, previous_email=o) for o in sorted(old) for n in sorted(new)]


def untraced_address_change(event: ChangeEvent, mappings: Mappings) -> bool:
    """An Update changed an address without saying the one before (no pre-image): R7 cannot act."""
    c = event.change
    return (isinstance(c, ContactChanged) and event.message == "Update"
            and any(col in mappings.email_columns and col not in c.previous_emails and normalise_email(c.emails.get(col))
                    for col in c.changed))


def triggers_for(event: ChangeEvent, mappings: Mappings) -> list[Trigger] | NeedsConsentRow | NoEffect:
    c = event.change
    cause = event.id
    if isinstance(c, ContactChanged):
        if event.table not in ("contact", "lead"):
            return NoEffect(f"{event.table} is not a contact or lead")
        key = (event.table, event.record_id)
        hints = [Trigger("inspect_email", cause, email=e)
                 for e in {normalise_email(v) for k, v in c.emails.items() if k in mappings.email_columns} if e]
        added = event.message == "Create" or any(col.startswith("emailaddress") for col in c.changed)
        # The event dates a flag it sets: evidence for the timeline rule, better than modifiedon.
        flag_set = (event.message == "Create" or any(f in c.changed for f in OPT_OUT_FLAGS)) and bool(
            c.donotbulkemail or c.donotemail)
        out = [Trigger("inspect_member", cause, member=key, reacts_to_addition=added, at=event.origin.time,
                       opted_out="flag" if flag_set else None), *hints]
        if c.previous_emails:
            out += _address_changes(c, mappings, cause)
        return out
    if isinstance(c, MembershipChanged):
        out: list[Trigger] = []
        for list_id in c.list_ids:
            table = mappings.member_table_of_list.get(list_id)
            if table is None or (c.member_table and c.member_table != table):
                continue  # not a list any rule reads
            for member_id in c.member_ids:
                key = (table, member_id)
                if c.action == "removed":
                    if list_id in mappings.topics_of_list:
                        out.append(Trigger("left_list", cause, member=key, list_id=list_id, at=event.origin.time,
                                           claimed=True))
                    else:
                        # Leaving a brand's opt-out list while still opted out of its purposes in
                        # RTM is undone (R4): opt-out wins until it is lifted where it was given.
                        out.append(Trigger("inspect_member", cause, member=key))
                elif list_id in mappings.brand_of_opt_out_list:
                    out.append(Trigger("inspect_member", cause, member=key, list_id=list_id, reacts_to_addition=True,
                                       at=event.origin.time, opted_out="join"))
                else:
                    out.append(Trigger("inspect_member", cause, member=key, reacts_to_addition=True))
        return out or NoEffect("no mapped or opt-out list in the membership change")
    if isinstance(c, ConsentChanged):
        if is_personal_opt_in_event(c):
            # The person opted back in: the planner judges it now, while the evidence of when the
            # opposing opt-outs happened is fresh, and the ledger remembers a re-consent that stands.
            email = normalise_email(c.contact_point_value)
            return [Trigger("inspect_email", cause, email=email)] if email else NeedsConsentRow(event.record_id, cause)
        if c.value is not None and c.value != ConsentValue.OPTED_OUT:
            return NoEffect("consent row is not Opted out")
        if c.contact_point_type is not None and c.contact_point_type != ContactPointType.EMAIL:
            return NoEffect("consent row is not for email")
        email = normalise_email(c.contact_point_value)
        if email is None:
            return NeedsConsentRow(event.record_id, cause)
        return [Trigger("inspect_email", cause, email=email)]
    if isinstance(c, RereadRecord):
        if event.table in ("contact", "lead"):
            return [Trigger("inspect_member", cause, member=(event.table, event.record_id), reacts_to_addition=True)]
        if event.table == CONSENT_TABLE:
            return NeedsConsentRow(event.record_id, cause)
        return NoEffect(f"a stripped {event.message} on {event.table} is left to the nightly reconciliation")
    if isinstance(c, RecordDeleted):
        return NoEffect("a deleted record holds no consent")
    return NoEffect(f"unhandled change kind {event.kind}")
