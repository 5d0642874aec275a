"""The consent vocabulary of both marketing worlds: Dataverse option-set codes and addresses.

Codes are the documented values of ``msdynmkt_contactpointconsent4`` (docs/domain.md).
"""
from __future__ import annotations

from enum import IntEnum


class ContactPointType(IntEnum):
    EMAIL = 534120000
    TEXT = 534120001
    CUSTOM = 534120002
    VOICE = 534120003


class ConsentType(IntEnum):
    PURPOSE = 534120000
    TOPIC = 534120001


class ConsentValue(IntEnum):
    NOT_SET = 534120000
    OPTED_IN = 534120001
    OPTED_OUT = 534120002


class ConsentSource(IntEnum):
    INTERNAL = 534120000
    PREFERENCE_PAGE = 534120001
    TEXT_MESSAGE = 534120002
    LOADED = 534120003
    PREFERENCE_CENTER = 534120004
    REALTIME_FORM = 534120005
    SUBSCRIPTION_CENTER = 534120006
    EMAIL_LIST_UNSUBSCRIBE = 534120007


class ConsentLogicalReason(IntEnum):
    """``msdynmkt_logicalreason`` (required on the consent table); the sync propagates an opt-out
    whose reason it does not know, so it writes NO_REASONS."""

    NO_REASONS = 534119999
    OPT_OUT_ONE_CLICK = 534120007

#: Sources a person uses: a row they set to Opted in from one of these is their own choice, which a
#: sync never overwrites with an older opt-out. Internal and Loaded are marketers' and systems' writes.
PERSONAL_SOURCES = frozenset({ConsentSource.PREFERENCE_PAGE, ConsentSource.PREFERENCE_CENTER,
                              ConsentSource.REALTIME_FORM, ConsentSource.SUBSCRIPTION_CENTER})


class PurposeType(IntEnum):
    COMMERCIAL = 534120000
    TRANSACTIONAL = 534120001
    TRACKING = 534120002


#: The Real-time marketing consent table (logical name).
CONSENT_TABLE = "msdynmkt_contactpointconsent4"

DEFAULT_COMMERCIAL_PURPOSE_ID = "10000000-0000-0000-0000-000000000003"

#: Contact/lead columns that hold a contact point; which of them count is set in the mappings.
EMAIL_COLUMNS = ("emailaddress1", "emailaddress2", "emailaddress3")
#: Contact/lead flags that mean "no bulk email" (Load consent maps both to the commercial purpose).
OPT_OUT_FLAGS = ("donotbulkemail", "donotemail")


def normalise_email(value: str | None) -> str | None:
    """The form in which Straddle compares contact points: trimmed and lower-cased.

    Dataverse compares case-insensitively, but whether RTM's contact point matching does is
    unconfirmed, so the sync never relies on it. Empty or blank values are no address at all.
    """
    if value is None:
        return None
    cleaned = value.strip().lower()
    return cleaned or None
