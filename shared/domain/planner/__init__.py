"""The planner: from the state the sync has read, the opt-outs that rules R1–R7 demand.

One planner serves the event path and the reconciliation. It works on *facts* that must hold:

    ("topic", email, topic_id)      the email is Opted out of the topic
    ("purpose", email, purpose_id)  the email is Opted out of the purpose (no topic)
    ("flag", member)                the member has donotbulkemail = true
    ("not_in", member, list_id)     the member is not in the list
    ("in", member, list_id)         the member is in the brand's opt-out list

Facts come from triggers (an event said a member left a list: R1, once the member is read out of
the list and, for an event's claim, the list snapshot does not deny it was in; an address replaced
another on a record, whose opt-outs it takes over: R7), from the state itself
(existing opt-outs, flags, opt-out list memberships) and from each other through the rules, until
nothing new follows: the whole closure in one pass, so the notifications the sync's own writes
cause find nothing left to do. Actions are the facts that do not hold yet. Facts only ever say
"opted out", "flag set", "not in a subscription list" or "in an opt-out list": the planner cannot
express an opt-in. Facts about an email or member whose rows have not been read yet go to the
*frontier*; the caller reads them and plans again.

The timeline rule: every fact remembers its *roots*, the opt-outs it follows from (a member's
flag, an opt-out list membership, a list departure, an RTM opt-out row). An opt-out about to be
propagated onto a consent row that the person set to Opted in themselves (a personal source, not
the sync's own user) is judged root by root: a root the re-consent is known to be newer than
(``OptOutTime``, from the best evidence in the state) stops there; any other root propagates, so
where the order is unknown the opt-out wins. A re-consent found to stand is reported
(``Plan.reconsents``), never copied to the Outbound side.

Pure: no I/O, no clock.

The package: ``types`` (inputs and outputs), ``timeline`` (the timeline rule and the reading of
consent rows), ``rules`` (the fixpoint and the actions). Import from here.
"""
from shared.domain.consent import normalise_email
from shared.domain.planner.rules import R7, plan
from shared.domain.planner.timeline import (SKEW, Root, effective_opt_outs, instant, is_personal_opt_in, newest_rows,
                                            root_key)
from shared.domain.planner.types import (IN_SNAPSHOT, NO_SNAPSHOT, NOT_IN_SNAPSHOT, Action, AddToOptOutList, Departure,
                                         Judgement, MemberKey, OptOutConsent, OptOutTime, Plan, Reconsent,
                                         RemoveFromList, SetDoNotBulkEmail, State, Trigger, TriggerKind, member_key)

__all__ = [
    "Action", "AddToOptOutList", "Departure", "IN_SNAPSHOT", "Judgement", "NO_SNAPSHOT", "NOT_IN_SNAPSHOT",
    "MemberKey", "OptOutConsent", "OptOutTime", "Plan", "R7", "Reconsent", "RemoveFromList", "Root", "SKEW",
    "SetDoNotBulkEmail", "State", "Trigger", "TriggerKind", "effective_opt_outs", "instant", "is_personal_opt_in",
    "member_key", "newest_rows", "normalise_email", "plan", "root_key",
]
