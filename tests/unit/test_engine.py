"""The sync engine with fakes for Dataverse, the tables and the queue (unit level).

The same engine runs against the Dataverse sandbox and Azurite in tests/integration.
"""
from __future__ import annotations

import uuid
from dataclasses import replace

import pytest

from shared.domain.consent import ConsentSource, ConsentType, ConsentValue, ContactPointType, normalise_email
from shared.domain.events import ChangeEvent, ConsentChanged, ContactChanged, MembershipChanged, Origin
from shared.domain.model import ConsentRow, Member, WriteResult
from shared.domain.planner import AddToOptOutList, OptOutConsent, RemoveFromList, SetDoNotBulkEmail
from shared.adapters.dataverse.errors import DataverseBadRequest
from shared.ports import SyncRead, TransientError
from shared.service_layer.process_changes import MAX_ROUNDS, EngineConfig, Incoming, SyncEngine
from tests.domain_builders import L_NEWS, P_ACME, T_NEWS, contact, single_brand

SYNC_USER = "00000000-0000-0000-0000-00000000beef"
ORGANIZATION = "4ef5b371-e89e-e711-8122-000d3aa2331c"
PERSON = "11111111-0000-0000-0000-000000000001"


class FakeDataverse:
    """A tiny Dataverse: members with list memberships and consent rows, and a request log."""

    def __init__(self):
        self.members: dict[tuple[str, str], Member] = {}
        self.lists: dict[tuple[str, str], set[str]] = {}
        self.rows: dict[str, ConsentRow] = {}
        self.calls: list[str] = []
        self.fail_writes: set[type] = set()
        self.raise_on_read: Exception | None = None
        self.refuse_email: tuple[str, Exception] | None = None  # a read naming this address fails

    def add(self, m: Member, *lists: str) -> None:
        self.members[(m.table, m.id)] = m
        self.lists[(m.table, m.id)] = set(lists)

    def row(self, email: str, purpose: str, topic: str | None, value: int) -> ConsentRow:
        r = ConsentRow(str(uuid.uuid4()), email, ContactPointType.EMAIL,
                       ConsentType.TOPIC if topic else ConsentType.PURPOSE, value, purpose, topic,
                       modified_on="2026-01-01T00:00:00Z")
        self.rows[r.id] = r
        return r

    # SyncGateway
    def sync_user_id(self) -> str:
        self.calls.append("whoami")
        return SYNC_USER

    def organization_id(self) -> str:
        return ORGANIZATION

    def read(self, member_ids, emails, mappings) -> SyncRead:
        self.calls.append("read")
        if self.raise_on_read:
            raise self.raise_on_read
        if self.refuse_email and self.refuse_email[0] in emails:
            raise self.refuse_email[1]
        out = SyncRead()
        wanted = {(t, i) for t, ids in member_ids.items() for i in ids}
        for k, m in self.members.items():
            if k in wanted or m.contact_points(mappings.email_columns) & set(emails):
                out.members.append((m, frozenset(self.lists[k] & mappings.relevant_lists)))
        out.missing_members = wanted - set(self.members)
        out.consent_rows = [r for r in self.rows.values() if normalise_email(r.contact_point_value) in emails]
        return out

    def consent_rows_by_ids(self, ids):
        self.calls.append("rows_by_id")
        return [self.rows[i] for i in ids if i in self.rows]

    def write(self, actions, marker):
        self.calls.append("write")
        results = []
        for a in actions:
            if type(a) in self.fail_writes:
                results.append(WriteResult(False, None, 400, "0x80040203", "refused"))
                continue
            if isinstance(a, OptOutConsent):
                if a.row_id:
                    self.rows[a.row_id] = replace(self.rows[a.row_id], value=ConsentValue.OPTED_OUT, reason=marker)
                else:
                    r = ConsentRow(str(uuid.uuid4()), a.email, ContactPointType.EMAIL, a.consent_type,
                                   ConsentValue.OPTED_OUT, a.purpose_id, a.topic_id, reason=marker,
                                   modified_on="2026-02-01T00:00:00Z")
                    self.rows[r.id] = r
            elif isinstance(a, SetDoNotBulkEmail):
                self.members[a.member] = replace(self.members[a.member], donotbulkemail=True)
            elif isinstance(a, RemoveFromList):
                self.lists[a.member].discard(a.list_id)
            elif isinstance(a, AddToOptOutList):
                self.lists[a.member].add(a.list_id)
            results.append(WriteResult(True, None, 204))
        return results

    def opted_out(self, email: str, topic: str | None = None, purpose: str | None = None) -> bool:
        return any(r.value == ConsentValue.OPTED_OUT and normalise_email(r.contact_point_value) == email
                   and (r.topic_id == topic if topic else (r.purpose_id == purpose and not r.topic_id))
                   for r in self.rows.values())


class FakeProcessed:
    def __init__(self):
        self.ids: set[str] = set()

    def seen(self, ids):
        return set(ids) & self.ids

    def mark(self, ids, outcome="processed"):
        self.ids |= set(ids)


class FakeLedger:
    def __init__(self):
        self.entries = []

    def record(self, entries):
        self.entries.extend(entries)


class FakeRetries:
    def __init__(self):
        self.later, self.parked = [], []

    def send_later(self, event, delay, attempt):
        self.later.append((event.id, delay, attempt))

    def park(self, body, reason, attempt, message_id=None):
        self.parked.append((body, reason, attempt))


@pytest.fixture
def world():
    dv = FakeDataverse()
    engine = SyncEngine(dv, single_brand, FakeProcessed(), FakeLedger(), FakeRetries(),
                        EngineConfig(max_attempts=3, retry_delay_seconds=10), clock=lambda: 1_800_000_000.0)
    return dv, engine


def event(change, table="msdynmkt_contactpointconsent4", record_id=None, user=PERSON, message="Update") -> ChangeEvent:
    return ChangeEvent(str(uuid.uuid4()), table, record_id or str(uuid.uuid4()), message,
                       Origin("2027-01-15T08:00:00.000Z", user, user, None, None, 1), change)


def consent_out(email: str, topic: str | None = T_NEWS, purpose: str = P_ACME) -> ChangeEvent:
    return event(ConsentChanged(email, ContactPointType.EMAIL, ConsentType.TOPIC if topic else ConsentType.PURPOSE,
                                ConsentValue.OPTED_OUT, purpose, topic, None, None))


def msg(e: ChangeEvent, attempt: int = 1) -> Incoming:
    return Incoming(e.to_json().encode(), e.id, attempt)


def test_topic_opt_out_removes_every_member_and_spreads_to_their_other_emails(world):
    dv, engine = world
    dv.add(contact("c1", "ann@x.test", "ann.home@x.test"), L_NEWS)
    dv.add(contact("c2", "ANN@x.test "), L_NEWS)
    dv.row("ann@x.test", P_ACME, T_NEWS, ConsentValue.OPTED_OUT)
    report = engine.process([msg(consent_out("ann@x.test"))])
    assert [o.disposition for o in report.outcomes] == ["processed"]
    assert dv.lists[("contact", "c1")] == set() and dv.lists[("contact", "c2")] == set()  # R2
    assert dv.opted_out("ann.home@x.test", topic=T_NEWS)  # R1 for the sync's own removal
    assert dv.calls.count("write") == 1 and report.rounds == 2
    ledger = engine.ledger.entries
    assert {(e.rule, e.outcome) for e in ledger} == {("R2", "applied"), ("R1", "applied")}
    assert all(e.origin_event_id == report.outcomes[0].event_id for e in ledger)


def test_second_delivery_and_echoes_cost_no_dataverse_request(world):
    dv, engine = world
    dv.add(contact("c1", "bo@x.test"), L_NEWS)
    dv.row("bo@x.test", P_ACME, T_NEWS, ConsentValue.OPTED_OUT)
    e = consent_out("bo@x.test")
    engine.process([msg(e)])
    dv.calls.clear()
    echo = event(MembershipChanged("removed", (L_NEWS,), ("c1",), "contact"), table="list", user=SYNC_USER,
                 message="Disassociate")
    report = engine.process([msg(e), msg(echo)])
    assert sorted(o.disposition for o in report.outcomes) == ["duplicate", "echo"]
    assert dv.calls == ["whoami"]  # cached by the real adapter; never a read or a write


def test_lone_event_with_nothing_to_do_writes_nothing(world):
    dv, engine = world
    dv.add(contact("c1", "cy@x.test"), L_NEWS)
    report = engine.process([msg(consent_out("cy@x.test"))])  # the row is opted in again by now
    assert report.outcomes[0].disposition == "processed" and "write" not in dv.calls
    assert engine.ledger.entries == []


def test_unmapped_list_is_settled_without_reading(world):
    dv, engine = world
    e = event(MembershipChanged("removed", ("some-other-list",), ("c1",), "contact"), table="list")
    report = engine.process([msg(e)])
    assert report.outcomes[0].disposition == "no_effect" and "read" not in dv.calls
    assert e.id in engine.processed.ids


def test_failed_write_retries_only_its_event_then_parks(world):
    dv, engine = world
    dv.add(contact("c1", "di@x.test"), L_NEWS)
    dv.add(contact("c2", "ed@x.test"))  # has left L_NEWS: no snapshot denies it, so R1 applies
    dv.row("di@x.test", P_ACME, T_NEWS, ConsentValue.OPTED_OUT)
    bad = event(MembershipChanged("removed", (L_NEWS,), ("c2",), "contact"), table="list", message="RemoveMember")
    good = consent_out("di@x.test")
    dv.fail_writes = {OptOutConsent}  # the R1 opt-out of ed@ fails; di@'s removal succeeds
    report = engine.process([msg(bad), msg(good, attempt=1)])
    by_id = {o.event_id: o.disposition for o in report.outcomes}
    assert by_id[bad.id] == "retry" and engine.retries.later == [(bad.id, 10, 2)]
    assert good.id in engine.processed.ids and bad.id not in engine.processed.ids
    assert any(e.outcome == "failed" for e in engine.ledger.entries)
    report = engine.process([msg(bad, attempt=3)])
    assert report.outcomes[0].disposition == "parked"
    (body, reason, attempt), = engine.retries.parked
    assert attempt == 3 and "gave up after 3 attempts" in reason and body == bad.to_json().encode()


def test_dataverse_outage_retries_the_whole_batch(world):
    dv, engine = world
    dv.raise_on_read = TransientError("503 past the retry budget")
    events = [consent_out(f"p{i}@x.test") for i in range(3)]
    report = engine.process([msg(e) for e in events])
    assert [o.disposition for o in report.outcomes] == ["retry"] * 3
    assert [a for _, _, a in engine.retries.later] == [2, 2, 2] and not engine.processed.ids


@pytest.mark.parametrize("failure,isolated", [
    (DataverseBadRequest("a filter Dataverse refuses", status=400, kind="$batch read"), True),
    (TypeError("a bug one odd event meets"), True),
    (TransientError("503 past the retry budget"), False),
])
def test_a_failure_one_event_can_cause_is_split_out_of_its_batch(world, failure, isolated):
    dv, engine = world
    events = [consent_out(f"p{i}@x.test") for i in range(10)]
    dv.refuse_email = ("p6@x.test", failure)
    report = engine.process([msg(e) for e in events])
    by_id = {o.event_id: o.disposition for o in report.outcomes}
    if isolated:  # halves, then single events: nine applied now, the tenth alone waits for a retry
        assert by_id == {e.id: "retry" if e is events[6] else "processed" for e in events}
        assert engine.retries.later == [(events[6].id, 10, 2)]
        # 10, then 5 + 5, the failing five as 2 + 3, the failing two as 1 + 1: seven reads, not ten
        assert dv.calls.count("read") == 7
    else:  # an outage: every part would fail alike, so the batch waits as one
        assert set(by_id.values()) == {"retry"} and dv.calls.count("read") == 1


def test_a_refused_read_is_retried_with_backoff_then_parked_not_raised(world):
    # A 403 is not transient, but raising would abandon the batch and burn the delivery count.
    from shared.adapters.dataverse.errors import DataverseAuthError

    dv, engine = world
    dv.raise_on_read = DataverseAuthError("Principal user (Id=x@y.test) is missing prvReadContact",
                                          status=403, code="0x80040220", kind="$batch read")
    e = consent_out("hal@x.test")
    delays = []
    for attempt in (1, 2):
        report = engine.process([msg(e, attempt)])
        assert report.outcomes[0].disposition == "retry"
        delays.append(engine.retries.later[-1][1])
    assert delays == [10, 20] and not engine.processed.ids
    report = engine.process([msg(e, 3)])
    assert report.outcomes[0].disposition == "parked"
    (_, reason, attempt), = engine.retries.parked
    assert attempt == 3 and reason == "gave up after 3 attempts: $batch read failed (403 0x80040220)"


class BrokenStorage(FakeProcessed):
    def seen(self, ids):
        raise ConnectionError("storage unreachable")


def test_a_storage_failure_retries_every_event_of_the_batch():
    dv = FakeDataverse()
    engine = SyncEngine(dv, single_brand, BrokenStorage(), FakeLedger(), FakeRetries(),
                        EngineConfig(max_attempts=3, retry_delay_seconds=10))
    events = [consent_out(f"q{i}@x.test") for i in range(2)]
    report = engine.process([msg(events[0]), msg(events[1], 2)])
    assert [o.disposition for o in report.outcomes] == ["retry", "retry"]
    assert engine.retries.later == [(events[0].id, 10, 2), (events[1].id, 20, 3)]
    assert report.outcomes[0].detail == "unexpected ConnectionError"


def test_undecodable_message_is_parked_at_once(world):
    _, engine = world
    report = engine.process([Incoming(b'{"v": 7}', "m-1")])
    assert report.outcomes[0].disposition == "parked"
    assert "unsupported change event version" in engine.retries.parked[0][1]


def test_no_mappings_means_retry_not_loss():
    dv = FakeDataverse()
    engine = SyncEngine(dv, lambda: None, FakeProcessed(), FakeLedger(), FakeRetries())
    report = engine.process([msg(consent_out("fay@x.test"))])
    assert report.outcomes[0].disposition == "retry" and "mappings" in report.outcomes[0].detail


def test_consent_event_without_email_reads_the_row(world):
    dv, engine = world
    dv.add(contact("c1", "gus@x.test"), L_NEWS)
    r = dv.row("gus@x.test", P_ACME, T_NEWS, ConsentValue.OPTED_OUT)
    e = event(ConsentChanged(None, None, None, ConsentValue.OPTED_OUT, None, None, None, None), record_id=r.id)
    engine.process([msg(e)])
    assert "rows_by_id" in dv.calls and dv.lists[("contact", "c1")] == set()


def test_contact_created_while_opted_out_is_r6(world):
    dv, engine = world
    dv.add(contact("c9", "hal@x.test", dnb=False), L_NEWS)
    dv.row("hal@x.test", P_ACME, None, ConsentValue.OPTED_OUT)  # purpose opt-out, single-brand
    e = event(ContactChanged(("emailaddress1",), False, False, {"emailaddress1": "hal@x.test"}), table="contact",
              record_id="c9", message="Create")
    engine.process([msg(e)])
    assert dv.members[("contact", "c9")].donotbulkemail
    assert {x.rule for x in engine.ledger.entries} >= {"R6/R4"}


def test_rounds_are_bounded(world, monkeypatch):
    dv, engine = world
    # A chain of contacts each sharing an email with the next: every round finds one more.
    for i in range(MAX_ROUNDS + 3):
        dv.add(contact(f"c{i}", f"m{i}@x.test", f"m{i + 1}@x.test"), L_NEWS)
    dv.row("m0@x.test", P_ACME, T_NEWS, ConsentValue.OPTED_OUT)
    report = engine.process([msg(consent_out("m0@x.test"))])
    assert report.incomplete and report.rounds == MAX_ROUNDS
    assert report.outcomes[0].disposition == "processed" and "incomplete" in report.outcomes[0].detail
    assert dv.lists[("contact", "c0")] == set()  # what was found is still written


# --- the timeline rule on the event path ---------------------------------------------------------

class HistoryLedger(FakeLedger):
    """The fake ledger with the history read the timeline rule uses."""

    def history(self, email):
        return [e for e in reversed(self.entries) if e.email == email]


def reconsent_event(email: str) -> ChangeEvent:
    return event(ConsentChanged(email, ContactPointType.EMAIL, ConsentType.PURPOSE, ConsentValue.OPTED_IN, P_ACME,
                                None, int(ConsentSource.PREFERENCE_CENTER), None))


def test_a_propagated_flag_is_dated_by_the_opt_out_it_followed_and_a_later_re_consent_stands():
    dv = FakeDataverse()
    engine = SyncEngine(dv, single_brand, FakeProcessed(), HistoryLedger(), FakeRetries(), clock=lambda: 1_800_000_000.0)
    dv.add(contact("c1", "fay@x.test"))
    row = dv.row("fay@x.test", P_ACME, None, ConsentValue.OPTED_OUT)  # modified 2026-01-01
    engine.process([msg(consent_out("fay@x.test", topic=None))])
    flag_line, = [e for e in engine.ledger.entries if e.action == "set donotbulkemail"]
    assert flag_line.origin_time == "2026-01-01T00:00:00Z"  # the opt-out's time, not the write's (R4)
    # The person opts back in from the preference centre; a contact edit moves modifiedon past it.
    dv.rows[row.id] = replace(row, value=ConsentValue.OPTED_IN, source=int(ConsentSource.PREFERENCE_CENTER),
                              modified_on="2026-03-01T00:00:00Z", modified_by=PERSON)
    dv.members[("contact", "c1")] = replace(dv.members[("contact", "c1")], modified_on="2026-04-01T00:00:00Z")
    report = engine.process([msg(reconsent_event("fay@x.test"))])
    assert report.outcomes[0].disposition == "processed" and dv.rows[row.id].value == ConsentValue.OPTED_IN
    kept = [e for e in engine.ledger.entries if e.action.startswith("keep re-consent")]
    assert [(k.outcome, k.origin_time, k.target_id) for k in kept] == [("refused", "2026-03-01T00:00:00Z", row.id)]
    assert kept[0].detail.startswith("against flag contact c1;") and "ledger 2026-01-01T00:00:00Z" in kept[0].detail
    # An unrelated edit's event later: still stands, and it is not remembered twice.
    edit = event(ContactChanged(("emailaddress1",), emails={"emailaddress1": "FAY@x.test"}), table="contact",
                 record_id="c1")
    engine.process([msg(edit)])
    assert dv.rows[row.id].value == ConsentValue.OPTED_IN
    assert len([e for e in engine.ledger.entries if e.action.startswith("keep re-consent")]) == 1


def test_a_flag_set_by_a_crm_user_after_the_re_consent_wins_and_the_ledger_says_why():
    dv = FakeDataverse()
    engine = SyncEngine(dv, single_brand, FakeProcessed(), HistoryLedger(), FakeRetries(), clock=lambda: 1_800_000_000.0)
    dv.add(replace(contact("c1", "gus@x.test"), donotbulkemail=True, modified_on="2027-01-15T08:00:00Z"))
    row = dv.row("gus@x.test", P_ACME, None, ConsentValue.OPTED_IN)
    dv.rows[row.id] = replace(row, source=int(ConsentSource.SUBSCRIPTION_CENTER), modified_by=PERSON)  # 2026-01-01
    flag = event(ContactChanged(("donotbulkemail",), donotbulkemail=True), table="contact", record_id="c1")
    engine.process([msg(flag)])  # the event's time, 2027-01-15, is after the re-consent
    assert dv.rows[row.id].value == ConsentValue.OPTED_OUT
    line, = [e for e in engine.ledger.entries if e.target_id == row.id]
    assert line.outcome == "applied" and line.detail.startswith("opt-out newer: opt-out wins over the re-consent")


def test_an_event_of_another_organization_is_dropped_unapplied_and_logged(world, caplog):
    # The webhook accepts it only while it does not know the organization yet (WhoAmI unanswered).
    dv, engine = world
    dv.add(contact("c1", "bo@x.test"), L_NEWS)
    e = consent_out("bo@x.test")
    stray = replace(e, id=str(uuid.uuid4()), origin=replace(e.origin, organization_id="0badc0de-0000-4000-8000-000000000001"))
    report = engine.process([msg(stray)])
    assert [o.disposition for o in report.outcomes] == ["foreign"]
    assert "write" not in dv.calls and "read" not in dv.calls
    assert any("sync.foreign_event" in r.getMessage() and "@" not in r.getMessage() for r in caplog.records)
    assert engine.process([msg(stray)]).outcomes[0].disposition == "duplicate"  # settled: never retried
    same = replace(e, origin=replace(e.origin, organization_id="{" + ORGANIZATION.upper() + "}"))
    assert engine.process([msg(same)]).outcomes[0].disposition == "processed"
