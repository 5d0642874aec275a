"""The audit ledger's entry: one change the sync made, failed to make, or refused.

Entries are filed under a person (a keyed hash of the normalised email, never the address), so
one person's history is one partition; the hashing itself lives in the ledger adapter.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Outcome = Literal["applied", "failed", "refused", "unchanged"]


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    email: str  # normalised contact point; hashed before it is stored, never stored or logged
    rule: str  # R1..R6 (R6 says which rule it applied, e.g. "R6/R2")
    origin_system: str  # "dataverse" (an event) or "reconcile"
    origin_event_id: str | None
    origin_time: str | None  # ISO 8601: when the change the sync reacted to happened
    target_system: Literal["obm", "rtm"]
    target_table: str  # contact, lead, list, msdynmkt_contactpointconsent4
    target_id: str | None  # row id (None for a row that failed to be created)
    action: str  # e.g. "set donotbulkemail", "remove from list <id>", "opt out of topic <id>"
    before: str | None
    after: str | None
    outcome: Outcome
    detail: str | None = None  # why (refusals, errors); never personal data
    recorded_at: str | None = None  # ISO 8601, set by the ledger when it stores the entry
    # R7: the address an opt-out was carried over from. Given as the normalised address, stored and
    # read back as that address's person key (the pseudonym its own history is filed under).
    carried_from: str | None = None
    evidence: str | None = None  # what dated origin_time or confirmed the opt-out (e.g. "contact modifiedon")


# Action texts the planner reads back as evidence of when the sync made an opt-out happen.
SET_FLAG = "set donotbulkemail"
ADD_TO_OPT_OUT_LIST = "add to opt-out list "  # + list id
#: A re-consent the sync found newer than an opposing opt-out and left standing (remembered, so
#: that a later unrelated edit of the contact, which moves its modifiedon, cannot flip the verdict).
KEEP_RECONSENT = "keep re-consent "  # + "to purpose <id>" / "to topic <id>"
AGAINST = "against "  # detail prefix: the opt-out the re-consent stood against (root key), then why
