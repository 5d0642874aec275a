"""The rows the sync reasons about, in the domain's own words, as plain values.

The Dataverse client returns these; the planner reads them. Ids are lower-case GUID strings.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Mapping

from shared.domain.consent import ConsentValue, normalise_email

MemberTable = Literal["contact", "lead"]


@dataclass(frozen=True, slots=True)
class Member:
    """A contact or lead: the Outbound side's holder of consent."""

    table: MemberTable
    id: str
    emails: Mapping[str, str | None] = field(default_factory=dict)  # column -> raw address
    donotbulkemail: bool = False
    donotemail: bool = False
    active: bool = True
    modified_on: str | None = None  # ISO 8601: an upper bound for when a flag became true

    def contact_points(self, columns: tuple[str, ...]) -> frozenset[str]:
        """The normalised addresses in the configured email columns."""
        out = set()
        for c in columns:
            e = normalise_email(self.emails.get(c))
            if e:
                out.add(e)
        return frozenset(out)


@dataclass(frozen=True, slots=True)
class ConsentRow:
    """One ``msdynmkt_contactpointconsent4`` row: consent of one contact point for a purpose or topic."""

    id: str
    contact_point_value: str | None
    contact_point_type: int | None
    consent_type: int | None
    value: int | None
    purpose_id: str | None
    topic_id: str | None
    source: int | None = None
    reason: str | None = None
    modified_on: str | None = None  # ISO 8601
    active: bool = True
    modified_by: str | None = None  # the user who last wrote the row (the sync's own writes are not a person's)

    @property
    def opted_out(self) -> bool:
        return self.value == ConsentValue.OPTED_OUT


@dataclass(frozen=True, slots=True)
class SubscriptionList:
    """An Outbound marketing list (a subscription list, or a brand's opt-out list)."""

    id: str
    name: str
    member_table: MemberTable | None  # from createdfromcode: 2 contact, 4 lead
    is_subscription: bool = True
    active: bool = True


@dataclass(frozen=True, slots=True)
class Purpose:
    id: str
    name: str
    type: int | None = None


@dataclass(frozen=True, slots=True)
class Topic:
    id: str
    name: str
    purpose_id: str | None = None


@dataclass(frozen=True, slots=True)
class WriteResult:
    """The outcome of one write inside a bulk request: one bad row does not sink the rest."""

    ok: bool
    id: str | None = None
    status: int | None = None
    error_code: str | None = None
    error_message: str | None = None
