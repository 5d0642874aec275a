"""The sync engine: a batch of change events in, the state R1–R7 demand written, evidence kept.

For a batch: drop events already processed and the sync's own echoes (no Dataverse request),
turn the rest into triggers, then read in rounds (each round reads what the planner's frontier
asks for, for the whole batch at once) until the plan is complete, write only the differences in
bulk, file every change in the ledger, and mark the events processed. Every event ends processed,
scheduled for a retry, or parked with its reason: nothing is dropped on the floor.

Crash-safety: the processed mark is written last. An event retried after a crash mid-way is
planned again from the rows as they now are, so the writes that already happened are no-ops.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable, Collection, Sequence

from shared.domain.compliance import CHANGE_EVENT, Given, Write, records_for
from shared.domain.consent import PERSONAL_SOURCES, ConsentValue, normalise_email
from shared.domain.events import ChangeEvent, EventFormatError, event_from_json
from shared.domain.ledger import LedgerEntry
from shared.domain.mappings import Mappings
from shared.domain.model import WriteResult
from shared.domain.planner import (
    IN_SNAPSHOT,
    NO_SNAPSHOT,
    NOT_IN_SNAPSHOT,
    Action,
    Departure,
    MemberKey,
    Plan,
    State,
    Trigger,
    plan,
)
from shared.domain.triggers import NeedsConsentRow, NoEffect, is_echo, is_foreign, triggers_for, untraced_address_change
from shared.ports import (LedgerPort, ListSnapshotsPort, OptOutRecordsPort, ProcessedEventsPort, RetryQueue, SyncGateway,
                          TransientError)
from shared.service_layer.evidence import (already_reflected, deadline_writes, is_one_click, ledger_entries,
                                           reconcile_given, reconsent_entries)
from shared.telemetry import emit, redact

log = logging.getLogger("shared.sync.engine")  # the emitted records keep the logger name they always had

MAX_ROUNDS = 8  # reads per batch before the rest is left to the nightly reconciliation
MARKER = "Straddle sync"  # msdynmkt_reason prefix: how a person reading RTM recognises our rows


@dataclass(frozen=True)
class Incoming:
    """One queue message as the trigger delivered it."""

    body: bytes
    message_id: str | None = None
    attempt: int = 1  # our own count, carried in the application property "attempt"


@dataclass
class EventOutcome:
    event_id: str | None
    message_id: str | None
    disposition: str  # processed | duplicate | echo | foreign | no_effect | retry | parked
    detail: str = ""


@dataclass
class BatchReport:
    outcomes: list[EventOutcome] = field(default_factory=list)
    actions_applied: int = 0
    actions_failed: int = 0
    rounds: int = 0
    incomplete: bool = False

    def count(self, disposition: str) -> int:
        return sum(1 for o in self.outcomes if o.disposition == disposition)


@dataclass
class Applied:
    """One application of the rules: the state read, the plan, and a result per written action."""

    state: State
    plan: Plan
    results: list[WriteResult]
    rounds: int
    incomplete: bool


@dataclass
class EngineConfig:
    max_attempts: int = 5
    retry_delay_seconds: int = 30


class SyncEngine:
    def __init__(self, gateway: SyncGateway, mappings: Callable[[], Mappings | None], processed: ProcessedEventsPort,
                 ledger: LedgerPort, retries: RetryQueue, config: EngineConfig | None = None,
                 clock: Callable[[], float] = time.time, opt_outs: OptOutRecordsPort | None = None,
                 snapshots: ListSnapshotsPort | None = None):
        self.gateway = gateway
        self._mappings = mappings
        self.processed = processed
        self.ledger = ledger
        self.retries = retries
        self.config = config or EngineConfig()
        self._clock = clock
        self.opt_outs = opt_outs
        self.snapshots = snapshots  # confirm departures events claim (R1); None: no snapshot anywhere

    # --- the batch ------------------------------------------------------------------------------

    def process(self, messages: Sequence[Incoming]) -> BatchReport:
        report = BatchReport()
        events: list[tuple[Incoming, ChangeEvent]] = []
        for msg in messages:
            try:
                events.append((msg, event_from_json(msg.body)))
            except EventFormatError as exc:
                # Retrying cannot fix a malformed message: park it at once, with the reason.
                self.retries.park(msg.body, f"undecodable change event: {exc}", msg.attempt, msg.message_id)
                report.outcomes.append(EventOutcome(None, msg.message_id, "parked", str(exc)))
        if not events:
            return report
        self._settle(events, report)
        return report

    def _settle(self, events: list[tuple[Incoming, ChangeEvent]], report: BatchReport) -> None:
        """Processes ``events``; when that fails, isolates the event that made it fail.

        A failure one event can cause (Dataverse refusing a read, a bug an odd event meets) is
        split out: the batch is processed again as halves, then single events, at once, so the
        innocent events go through now and only the event that keeps failing is retried and
        finally parked. A failure of the service itself (TransientError, storage) is not split:
        every part would fail alike and each would spend the retry budget again.
        """
        try:
            self._process_events(events, report)
        except Exception as exc:
            # Whatever failed, every event not yet settled is retried later with backoff and parked
            # only after max_attempts. Raising instead would abandon the batch, and the broker
            # redelivers at once: a lasting failure (a 403) would burn the delivery count in a burst.
            reason = failure_reason(exc)
            settled = {o.event_id for o in report.outcomes}
            unsettled = [(msg, event) for msg, event in events if event.id not in settled]
            if len(unsettled) > 1 and one_event_may_cause(exc):
                half = len(unsettled) // 2
                emit(log, "sync.batch_split", logging.WARNING, reason=reason, unsettled=len(unsettled))
                self._settle(unsettled[:half], report)
                self._settle(unsettled[half:], report)
                return
            emit(log, "sync.batch_failed", logging.ERROR, reason=reason, unsettled=len(unsettled))
            for msg, event in unsettled:
                if event.id not in settled:
                    settled.add(event.id)
                    report.outcomes.append(self._retry(msg, event, reason))

    def _process_events(self, events: list[tuple[Incoming, ChangeEvent]], report: BatchReport) -> None:
        mappings = self._mappings()
        if mappings is None:
            raise TransientError("no mappings imported yet (run: python -m shared mappings import FILE)")
        unique: dict[str, tuple[Incoming, ChangeEvent]] = {}
        for msg, event in events:
            if event.id in unique:
                report.outcomes.append(EventOutcome(event.id, msg.message_id, "duplicate", "twice in one batch"))
            else:
                unique[event.id] = (msg, event)
        already = self.processed.seen(unique)
        sync_user = self.gateway.sync_user_id()
        organization = self.gateway.organization_id()
        todo: dict[str, tuple[Incoming, ChangeEvent]] = {}
        settled: list[str] = []
        triggers: list[Trigger] = []
        consent_rows_to_read: list[NeedsConsentRow] = []
        for event_id, (msg, event) in unique.items():
            if event_id in already:
                report.outcomes.append(EventOutcome(event_id, msg.message_id, "duplicate", "already processed"))
                continue
            if is_foreign(event, organization):
                # Accepted while the webhook did not know the organization yet: never applied here.
                emit(log, "sync.foreign_event", logging.WARNING, event_id=event_id,
                     organization_id=event.origin.organization_id, expected=organization)
                report.outcomes.append(EventOutcome(event_id, msg.message_id, "foreign",
                                                    "from another Dataverse organization"))
                settled.append(event_id)
                continue
            if is_echo(event, sync_user):
                report.outcomes.append(EventOutcome(event_id, msg.message_id, "echo", "the sync's own write"))
                settled.append(event_id)
                continue
            found = triggers_for(event, mappings)
            if isinstance(found, NoEffect):
                report.outcomes.append(EventOutcome(event_id, msg.message_id, "no_effect", found.reason))
                settled.append(event_id)
                continue
            todo[event_id] = (msg, event)
            if untraced_address_change(event, mappings):
                # No pre-image (registered before R7, or by hand): the old address is unknown, so its
                # opt-outs cannot follow; `webhooks status` names the missing image.
                emit(log, "sync.address_change_untraced", logging.WARNING, event_id=event_id, table=event.table)
            if isinstance(found, NeedsConsentRow):
                consent_rows_to_read.append(found)
            else:
                triggers.extend(found)

        if todo:
            triggers.extend(self._consent_row_triggers(consent_rows_to_read))
            applied = self.apply_rules(triggers, mappings)
            report.rounds, report.incomplete = applied.rounds, applied.incomplete
            events_by_id = {e.id: e for _, e in todo.values()}

            def origin(cause: str | None) -> tuple[str, str | None]:
                event = events_by_id.get(cause or "")
                return "dataverse", event.origin.time if event else None

            def given(action: Action) -> Given:
                event = events_by_id.get(action.cause or "")
                if event is None or not event.origin.time:
                    return reconcile_given(action)
                return Given(event.origin.time, CHANGE_EVENT, "event", is_one_click(event))

            reflected = already_reflected([e for _, e in todo.values()], applied.plan.actions, applied.state,
                                         mappings)
            failed_causes = self.file(applied, origin, given, reflected)
            report.actions_applied += sum(1 for r in applied.results if r.ok)
            report.actions_failed += sum(1 for r in applied.results if not r.ok)
            for event_id, (msg, event) in todo.items():
                if event_id in failed_causes:
                    report.outcomes.append(self._retry(msg, event, failed_causes[event_id]))
                else:
                    settled.append(event_id)
                    report.outcomes.append(EventOutcome(event_id, msg.message_id, "processed",
                                                        "incomplete closure" if report.incomplete else ""))
        if settled:
            self.processed.mark(settled)

    def _consent_row_triggers(self, needs: list[NeedsConsentRow]) -> list[Trigger]:
        if not needs:
            return []
        rows = {r.id: r for r in self.gateway.consent_rows_by_ids([n.row_id for n in needs])}
        out = []
        for n in needs:
            row = rows.get(n.row_id)
            # A row Opted out now propagates; a person's own opt-in is judged against the opt-outs
            # it meets (timeline rule); a deleted or otherwise opted-in row has nothing to say.
            personal = row is not None and row.value == ConsentValue.OPTED_IN and row.source in PERSONAL_SOURCES
            if row and (row.opted_out or personal) and row.contact_point_value:
                out.append(Trigger("inspect_email", n.cause, email=normalise_email(row.contact_point_value)))
        return out

    def apply_rules(self, triggers: list[Trigger], mappings: Mappings, *, dry_run: bool = False) -> "Applied":
        """Reads what the triggers need in rounds, plans, and (unless ``dry_run``) writes the actions.

        Shared by the event path and the nightly reconciliation.
        """
        state, final, rounds, incomplete = self._plan_in_rounds(triggers, mappings)
        results = self.gateway.write(final.actions, MARKER) if final.actions and not dry_run else []
        return Applied(state, final, results, rounds, incomplete)

    def _plan_in_rounds(self, triggers: list[Trigger], mappings: Mappings) -> tuple[State, Plan, int, bool]:
        return plan_in_rounds(self.gateway, mappings, triggers, history=getattr(self.ledger, "history", None),
                              departures=self.departures, now=self._clock())

    def departures(self, pairs: Collection[tuple[MemberKey, str]]) -> dict[tuple[MemberKey, str], Departure]:
        """What the list snapshots say of departures events claim (R1 waits for it). Table Storage
        only, and only for a member that is not in the list now: no Dataverse request."""
        out: dict[tuple[MemberKey, str], Departure] = {}
        by_list: dict[str, list[MemberKey]] = {}
        for member, list_id in pairs:
            by_list.setdefault(list_id, []).append(member)
        for list_id, members in by_list.items():
            found = self.snapshots.holds(list_id, [m[1] for m in members]) if self.snapshots else None
            for m in members:
                if found is None:
                    out[(m, list_id)] = Departure(NO_SNAPSHOT)
                else:
                    held, taken_at = found
                    out[(m, list_id)] = Departure(IN_SNAPSHOT if m[1].lower() in held else NOT_IN_SNAPSHOT, taken_at)
        return out

    # --- evidence -------------------------------------------------------------------------------

    def file(self, applied: "Applied", origin: Callable[[str | None], tuple[str, str | None]],
             given: Callable[[Action], Given] | None = None, reflected: Sequence[Write] = ()) -> dict[str, str]:
        """Ledger entries for every written action, and the opt-out deadlines' record of each
        (``given`` dates the opt-out behind an action; ``reflected``: opt-outs that needed no
        write); returns cause -> failure for causes to retry."""
        failed: dict[str, str] = {}
        entries: list[LedgerEntry] = []
        writes: list[Write] = list(reflected)
        given = given or reconcile_given
        now = self._clock()
        for action, result in zip(applied.plan.actions, applied.results):
            system, origin_time = origin(action.cause)
            if result.ok:
                emit(log, "sync.applied", rule=action.rule, action=type(action).__name__, origin=system,
                     event_id=action.cause, propagation_ms=_delay_ms(origin_time, now))
            else:
                detail = f"{result.status} {result.error_code or ''}".strip()
                emit(log, "sync.write_failed", logging.WARNING, rule=action.rule, action=type(action).__name__,
                     event_id=action.cause, status=result.status, code=result.error_code)
                if action.cause:
                    failed.setdefault(action.cause, detail)
            entries.extend(ledger_entries(action, result, system, origin_time))
            writes.extend(deadline_writes(action, result, given(action)))
        for r in applied.plan.reconsents:
            if r.verdict == "stands" and r.to_remember:
                system, _ = origin(r.cause)
                emit(log, "sync.reconsent_kept", rule=r.rule, origin=system, event_id=r.cause)
                entries.extend(reconsent_entries(r, system))
        self.ledger.record(entries)
        if self.opt_outs is not None and writes:
            self._record_opt_outs(writes, now)  # one packed row per batch (shared.adapters.tables.compliance)
        return failed

    def _record_opt_outs(self, writes: list[Write], now: float) -> None:
        records = records_for(writes, _iso(now))
        try:
            self.opt_outs.record(records)
        except Exception as exc:
            # The opt-outs are written and in the ledger; failing the batch now would retry events
            # whose writes are done (a retry finds nothing to write, so it could not record them either).
            emit(log, "compliance.record_failed", logging.ERROR, records=len(records), error=failure_reason(exc))

    def _retry(self, msg: Incoming, event: ChangeEvent, reason: str) -> EventOutcome:
        if msg.attempt >= self.config.max_attempts:
            self.retries.park(msg.body, f"gave up after {msg.attempt} attempts: {reason}", msg.attempt, msg.message_id)
            emit(log, "sync.parked", logging.ERROR, event_id=event.id, attempts=msg.attempt)
            return EventOutcome(event.id, msg.message_id, "parked", reason)
        delay = self.config.retry_delay_seconds * 2 ** (msg.attempt - 1)
        self.retries.send_later(event, delay, msg.attempt + 1)
        emit(log, "sync.retry_scheduled", logging.WARNING, event_id=event.id, attempt=msg.attempt + 1, delay_s=delay)
        return EventOutcome(event.id, msg.message_id, "retry", reason)


def failure_reason(exc: BaseException) -> str:
    """One line for the retry log and the parking reason: what failed, without a message that
    could quote data (Dataverse's messages can echo a filter value, an address)."""
    if isinstance(exc, TransientError):
        return redact(str(exc))
    status = getattr(exc, "status", None) or getattr(exc, "status_code", None)  # Dataverse / Azure SDK
    code, kind = getattr(exc, "code", None), getattr(exc, "kind", None)
    if status or kind:
        bits = " ".join(str(b) for b in (status, code) if b)
        return f"{kind or 'a request'} failed" + (f" ({bits})" if bits else "")
    return f"unexpected {type(exc).__name__}"  # a bug or an SDK error without a status: its type is the clue


def one_event_may_cause(exc: BaseException) -> bool:
    """Could this failure come from one event of the batch rather than from the service?

    Dataverse refusing a request (a 4xx other than a throttle) or an error in our own code can
    be one event's doing; an outage (TransientError, a connection or storage failure) is not.
    """
    if isinstance(exc, (TransientError, OSError)) or type(exc).__module__.startswith("azure."):
        return False
    status = getattr(exc, "status", None)
    return status is None or (isinstance(status, int) and 400 <= status < 500 and status not in (408, 429))


def plan_in_rounds(gateway: SyncGateway, mappings: Mappings, triggers: list[Trigger],
                   max_rounds: int = MAX_ROUNDS,
                   history: Callable[[str], list[LedgerEntry]] | None = None,
                   departures: Callable[[Collection[tuple[MemberKey, str]]], dict] | None = None,
                   now: float | None = None) -> tuple[State, Plan, int, bool]:
    """Reads what the planner's frontier asks for (for all triggers at once) and plans again,
    until the plan is complete or ``max_rounds`` reads were made: (state, plan, rounds, incomplete).

    ``history`` reads a person's ledger: the timeline rule asks for it only where a re-consent
    meets an opt-out, so most rounds read nothing from it. ``departures`` looks up what the list
    snapshots say of a departure an event claims (without it: no snapshot). ``now`` (epoch
    seconds, default the clock) is when the rows are read: an event dated later is no evidence.
    """
    state = State(now=datetime.fromtimestamp(time.time() if now is None else now, timezone.utc).isoformat())
    rounds = 0
    current = plan(state, mappings, triggers)
    while not current.complete:
        if rounds >= max_rounds:
            # What was found is still written; the nightly reconciliation finishes the rest.
            emit(log, "sync.closure_incomplete", logging.WARNING, rounds=rounds,
                 emails=len(current.frontier_emails), members=len(current.frontier_members))
            return state, current, rounds, True
        rounds += 1
        # Timeline evidence first: the ledger (Table Storage), listmember createdon, audit history.
        for e in current.frontier_ledger:
            state.ledger[e] = list(history(e)) if history is not None else []
        if current.frontier_joins:
            joined = getattr(gateway, "joined_at", None)
            state.joined_at.update(joined(current.frontier_joins) if joined is not None
                                   else dict.fromkeys(current.frontier_joins))
        if current.frontier_departures:  # the list snapshots, only for a member not in the list now
            state.departures.update(departures(current.frontier_departures) if departures is not None
                                    else {p: Departure(NO_SNAPSHOT) for p in current.frontier_departures})
        if current.frontier_audits:  # Dataverse's audit history, only for flags nothing better dates
            audited = getattr(gateway, "flag_set_at", None)
            state.flag_set_at.update(audited(current.frontier_audits) if audited is not None
                                     else dict.fromkeys(current.frontier_audits))
        if not current.frontier_emails and not current.frontier_members:
            current = plan(state, mappings, triggers)
            continue
        wanted_members: dict[str, set[str]] = {}
        for (table, member_id) in current.frontier_members:
            wanted_members.setdefault(table, set()).add(member_id)
        emails = set(current.frontier_emails)
        read = gateway.read(wanted_members, emails, mappings)
        for m, lists in read.members:
            key = (m.table, m.id)
            state.add_member(m, lists, current.frontier_members.get(key))
        for key in current.frontier_members:
            if key not in state.members:
                state.missing_members.add(key)
        by_email: dict[str, list] = {e: [] for e in emails}
        for row in read.consent_rows:
            e = normalise_email(row.contact_point_value)
            if e in by_email:
                by_email[e].append(row)
        for e, rows in by_email.items():
            state.add_email(e, rows, current.frontier_emails.get(e))
        if state.sync_user is None and any(r.value == ConsentValue.OPTED_IN and r.source in PERSONAL_SOURCES
                                           for r in read.consent_rows):
            state.sync_user = gateway.sync_user_id()  # cached by the adapter: a row it wrote is not a person's
        current = plan(state, mappings, triggers)
    return state, current, rounds, False


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _delay_ms(origin_time: str | None, now: float) -> int | None:
    if not origin_time:
        return None
    try:
        origin = datetime.fromisoformat(origin_time.replace("Z", "+00:00"))
    except ValueError:
        return None
    return int((now - origin.timestamp()) * 1000)
