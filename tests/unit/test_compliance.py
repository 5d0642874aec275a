"""Opt-out deadlines at unit level: the figures, business days, the engine's records (with fakes),
the export's spreadsheet safety, closing what a healing run found consistent, the check record."""
from __future__ import annotations

import logging
import os
import stat
from datetime import datetime, timedelta, timezone

import pytest

from shared.domain.compliance import (
    ALREADY_TRUE, CHANGE_EVENT, DATAVERSE_DATES, UNDATED, Given, OptOutRecord, SideState, Write, add_business_days,
    percentile, records_for, summarise)
from shared.domain.consent import ConsentSource, ConsentType, ConsentValue, ContactPointType
from shared.domain.events import ConsentChanged, ContactChanged
from shared.domain.planner import OptOutConsent, RemoveFromList
from shared.service_layer import compliance as svc
from shared.service_layer.process_changes import EngineConfig, SyncEngine, reconcile_given
from tests.domain_builders import L_NEWS, P_ACME, T_NEWS, contact, single_brand
from tests.unit.test_engine import FakeDataverse, FakeLedger, FakeProcessed, FakeRetries, event, msg

UTC = timezone.utc
NOW = datetime(2026, 3, 6, 12, 0, tzinfo=UTC)  # a Friday


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def rec(person: str, given: datetime | None, sides: dict[str, SideState], one_click: bool = False,
        cause: str = "e") -> OptOutRecord:
    return OptOutRecord(person, cause, iso(given) if given else None, CHANGE_EVENT if given else UNDATED, "event",
                        iso(given or NOW), sides, one_click)


def done(at: datetime, rule: str = "R2") -> SideState:
    return SideState(iso(at), False, rule)


# --- business days and percentiles --------------------------------------------------------------

@pytest.mark.parametrize("start, days, expected", [
    (datetime(2026, 3, 2, 9, tzinfo=UTC), 10, datetime(2026, 3, 16, 9, tzinfo=UTC)),  # Monday -> Monday two weeks on
    (datetime(2026, 3, 6, 17, tzinfo=UTC), 1, datetime(2026, 3, 9, 17, tzinfo=UTC)),  # Friday -> Monday
    (datetime(2026, 3, 7, 10, tzinfo=UTC), 10, datetime(2026, 3, 20, 10, tzinfo=UTC)),  # Saturday: counts from Monday
    (datetime(2026, 12, 24, 8, tzinfo=UTC), 2, datetime(2026, 12, 28, 8, tzinfo=UTC)),  # no holiday calendar
])
def test_business_days_are_monday_to_friday(start, days, expected):
    assert add_business_days(start, days) == expected


def test_percentiles_are_the_nearest_rank_the_benchmarks_use():
    values = [float(i) for i in range(1, 101)]
    assert percentile(values, 0.5) == 51 and percentile(values, 0.99) == 100 and percentile([], 0.5) is None


# --- the figures ---------------------------------------------------------------------------------

def test_summary_counts_times_and_breaches_by_rule_and_direction():
    records = [
        rec("a" * 64, NOW - timedelta(hours=2), {"obm": done(NOW - timedelta(hours=2) + timedelta(seconds=30))},
            one_click=True),
        rec("b" * 64, NOW - timedelta(hours=3), {"rtm": done(NOW - timedelta(hours=1), "R1")}),
        # propagated, but 50 hours after it was given: past 48 h, within 10 business days
        rec("c" * 64, NOW - timedelta(hours=60), {"rtm": done(NOW - timedelta(hours=10), "R3")}),
        # open for 30 h: past the 24 h alert bar, no deadline breached yet
        rec("d" * 64, NOW - timedelta(hours=30), {"rtm": SideState(None, True, "R1", "503"),
                                                  "obm": done(NOW - timedelta(hours=29), "R5")}),
        # open for 15 days: past both deadlines
        rec("e" * 64, NOW - timedelta(days=15), {"obm": SideState(None, True, "R2", "403")}),
        rec("f" * 64, None, {"rtm": done(NOW, "R1")}),  # undated: counted, not timed
    ]
    v = summarise(records, NOW, deadline_hours=24)
    assert (v["received"], v["propagated"], v["open"], v["undated"], v["one_click"]) == (6, 4, 2, 1, 1)
    assert v["time_to_effect"]["timed"] == 3
    assert v["time_to_effect"]["p50_s"] == 7200 and v["time_to_effect"]["max_s"] == 50 * 3600
    assert v["breached_48h"] == 2 and v["breached_10_business_days"] == 1
    assert v["open_past_deadline"] == 2 and v["oldest_open_hours"] == 360.0
    assert [o["person"] for o in v["open_items"]] == ["e" * 16, "d" * 16]  # oldest first, pseudonyms shortened
    assert v["open_items"][1]["sides"] == "rtm" and v["open_items"][1]["detail"] == "503"
    rows = {(r["rule"], r["direction"]): r for r in v["by_rule"]}
    assert rows[("R2", "to_obm")]["received"] == 2 and rows[("R2", "to_obm")]["open"] == 1
    assert rows[("R2", "to_obm")]["one_click"] == 1 and rows[("R2", "to_obm")]["p50_s"] == 30
    assert rows[("R5", "to_obm")]["propagated"] == 1
    assert summarise(records, NOW, deadline_hours=31)["open_past_deadline"] == 1
    (events,) = v["by_origin"]
    assert events["origin"] == "event" and events["received"] == 6 and events["open"] == 2
    lines = svc.compliance_lines({"since": "s", "until": "u", **v})
    assert "  from change events: 6 received, 2 open; p50 2.0 h, p95 50.0 h, max 50.0 h" in lines


def test_a_record_from_writes_is_one_per_person_and_cause_and_any_failure_keeps_the_side_open():
    g = Given("2026-03-06T11:00:00Z", CHANGE_EVENT, "event", one_click=True)
    writes = [Write("ann@x.test", "e1", "obm", "R2", True, None, g),
              Write("ann@x.test", "e1", "obm", "R2", False, "429", g),
              Write("ann@x.test", "e1", "rtm", "R1", True, None, g),
              Write("bo@x.test", "e1", "rtm", "R1", True, None, g)]
    out = {r.person: r for r in records_for(writes, "2026-03-06T11:00:02Z")}
    assert set(out) == {"ann@x.test", "bo@x.test"}
    ann = out["ann@x.test"]
    assert ann.sides["obm"].open and ann.sides["obm"].detail == "429" and ann.is_open and ann.effective_at is None
    assert not ann.sides["rtm"].open and ann.rule == "R1+R2" and ann.one_click and ann.given_in == "both"
    assert out["bo@x.test"].effective_at == "2026-03-06T11:00:02Z" and out["bo@x.test"].given_in == "obm"


def test_a_reconciliation_dates_an_opt_out_by_what_the_planner_read_or_calls_it_undated():
    dated = RemoveFromList(("contact", "c1"), L_NEWS, ("a@x.test",), "R2", "run:1", since="2026-03-01T00:00:00Z")
    assert reconcile_given(dated) == Given("2026-03-01T00:00:00Z", DATAVERSE_DATES, "reconcile")
    assert reconcile_given(RemoveFromList(("contact", "c1"), L_NEWS, (), "R2", "run:1")).evidence == UNDATED


# --- the engine records every opt-out it writes --------------------------------------------------

class FakeOptOuts:
    def __init__(self, fail: bool = False):
        self.records: list[OptOutRecord] = []
        self.fail = fail

    def record(self, records):
        if self.fail:
            raise OSError("storage down")
        self.records.extend(records)


def engine_with(opt_outs: FakeOptOuts, clock=lambda: 1_800_000_000.0):
    dv = FakeDataverse()
    return dv, SyncEngine(dv, single_brand, FakeProcessed(), FakeLedger(), FakeRetries(),
                          EngineConfig(max_attempts=3, retry_delay_seconds=10), clock=clock, opt_outs=opt_outs)


def one_click_out(email: str):
    return event(ConsentChanged(email, ContactPointType.EMAIL, ConsentType.TOPIC, ConsentValue.OPTED_OUT, P_ACME,
                                T_NEWS, ConsentSource.EMAIL_LIST_UNSUBSCRIBE, None))


def test_the_engine_records_the_event_time_as_given_and_its_write_as_effective():
    store = FakeOptOuts()
    dv, engine = engine_with(store)
    dv.add(contact("c1", "ann@x.test"), L_NEWS)
    dv.row("ann@x.test", P_ACME, T_NEWS, ConsentValue.OPTED_OUT)
    e = one_click_out("ann@x.test")
    engine.process([msg(e)])
    (r,) = store.records
    assert r.person == "ann@x.test"  # the store hashes it (tests/integration/test_compliance.py)
    assert (r.cause, r.given_at, r.evidence, r.origin, r.one_click) == (e.id, e.origin.time, CHANGE_EVENT, "event", True)
    assert r.sides == {"obm": SideState("2027-01-15T08:00:00.000Z", False, "R2")}


def test_a_failed_write_is_recorded_open_and_its_retry_closes_it():
    store = FakeOptOuts()
    now = [1_800_000_000.0]  # the clock of each delivery, however often the engine reads it
    dv, engine = engine_with(store, clock=lambda: now[0])
    dv.add(contact("c1", "bo@x.test"), L_NEWS)
    dv.row("bo@x.test", P_ACME, T_NEWS, ConsentValue.OPTED_OUT)
    dv.fail_writes = {RemoveFromList}
    e = one_click_out("bo@x.test")
    assert engine.process([msg(e)]).outcomes[0].disposition == "retry"
    dv.fail_writes, now[0] = set(), 1_800_000_060.0
    assert engine.process([msg(e, attempt=2)]).outcomes[0].disposition == "processed"
    first, second = store.records
    assert first.is_open and first.sides["obm"].detail == "400 0x80040203"
    assert (second.person, second.cause, second.given_at) == (first.person, first.cause, first.given_at)  # same row
    assert not second.is_open and second.effective_at == "2027-01-15T08:01:00.000Z"


def test_a_storage_failure_of_the_records_does_not_fail_the_batch(caplog):
    dv, engine = engine_with(FakeOptOuts(fail=True))
    dv.add(contact("c1", "cy@x.test"), L_NEWS)
    dv.row("cy@x.test", P_ACME, T_NEWS, ConsentValue.OPTED_OUT)
    with caplog.at_level(logging.ERROR):
        report = engine.process([msg(one_click_out("cy@x.test"))])
    assert report.outcomes[0].disposition == "processed" and dv.lists[("contact", "c1")] == set()
    assert any(getattr(r, "event", None) == "compliance.record_failed" for r in caplog.records)


# --- the service: export, closing, the check -----------------------------------------------------

@pytest.mark.parametrize("cell, shown", [
    ("=HYPERLINK(\"http://x\")", "'=HYPERLINK(\"http://x\")"), ("+1", "'+1"), ("-2", "'-2"), ("@SUM(A1)", "'@SUM(A1)"),
    ("\tx", "'\tx"), ("\rx", "'\rx"), ("R2", "R2"), (None, ""), (True, "true"), (1.5, "1.5"),
    ("2026-03-06T11:00:00Z", "2026-03-06T11:00:00Z"),
])
def test_export_cells_are_spreadsheet_safe(cell, shown):
    assert svc.spreadsheet_safe(cell) == shown


def test_the_export_file_is_the_owners_only_and_neutralises_formulas(tmp_path):
    os.umask(0o022)
    target = tmp_path / "out.csv"
    hostile = rec("=cmd|' /C calc'!A0" + "0" * 50, NOW - timedelta(hours=1), {"rtm": done(NOW, "R1")},
                  cause="-event")
    n = svc.write_export(str(target), svc.export_rows([hostile], NOW))
    assert n == 1 and stat.S_IMODE(os.stat(target).st_mode) == 0o600
    text = target.read_text()
    assert "\n'=cmd" in text and ",'-event" in text
    assert not (tmp_path / "out.csv.partial").exists()


class Store:
    def __init__(self, records):
        self.records = list(records)
        self.written: list[OptOutRecord] = []

    def window(self, since, until):
        return [r for r in self.records if since <= datetime.fromisoformat((r.given_at or r.seen_at)[:-1] + "+00:00")
                <= until]

    def record(self, records, hashed=False):
        assert hashed
        self.written.extend(records)


def test_a_healing_run_that_succeeded_closes_what_was_open_before_it_started():
    before = rec("a" * 64, NOW - timedelta(hours=20), {"obm": SideState(None, True, "R2", "503"),
                                                       "rtm": done(NOW - timedelta(hours=20), "R1")})
    during = replace_seen(rec("b" * 64, NOW - timedelta(minutes=10), {"obm": SideState(None, True, "R2", "503")}),
                          NOW - timedelta(minutes=10))
    store = Store([before, during])
    report = {"run_id": "r1", "status": "succeeded", "dry_run": False, "incomplete_chunks": 0,
              "started_at": iso(NOW - timedelta(minutes=30)), "finished_at": iso(NOW - timedelta(minutes=5))}
    assert svc.close_consistent(store, report, NOW) == 1
    (closed,) = store.written
    assert closed.person == "a" * 64 and not closed.is_open and closed.effective_at == iso(NOW - timedelta(minutes=5))
    assert closed.sides["obm"].detail == "consistent at reconciliation r1" and closed.sides["rtm"] == before.sides["rtm"]
    for bad in ({"status": "failed_writes"}, {"dry_run": True}, {"incomplete_chunks": 1}):
        store.written.clear()
        assert svc.close_consistent(store, {**report, **bad}, NOW) == 0 and not store.written


def replace_seen(r: OptOutRecord, seen: datetime) -> OptOutRecord:
    from dataclasses import replace

    return replace(r, seen_at=iso(seen))


def test_the_check_logs_one_record_with_the_figures_and_one_per_open_opt_out_past_the_deadline(caplog):
    store = Store([rec("d" * 64, NOW - timedelta(hours=30), {"rtm": SideState(None, True, "R1", "503")}),
                   rec("a" * 64, NOW - timedelta(hours=2), {"obm": done(NOW - timedelta(hours=1))})])
    with caplog.at_level(logging.INFO):
        svc.check(store, NOW, 24)
    (summary,) = [r for r in caplog.records if getattr(r, "event", None) == "compliance.check"]
    assert summary.levelno == logging.WARNING
    assert summary.straddle_opt_outs_open_past_deadline == 1 and summary.straddle_opt_out_deadline_hours == 24
    assert summary.straddle_opt_outs_oldest_open_hours == 30.0
    (item,) = [r for r in caplog.records if getattr(r, "event", None) == "compliance.open"]
    assert item.straddle_person == "d" * 16 and item.straddle_age_hours == 30.0


def test_the_run_report_hook_reports_a_storage_failure_instead_of_raising():
    class Broken:
        def window(self, since, until):
            raise OSError("unreachable")

    out = svc.after_run(Broken(), 24, clock=lambda: NOW)({"status": "succeeded", "started_at": iso(NOW)})
    assert out == {"opt_outs_error": "unexpected OSError"}


def test_already_true_is_a_side_reflected_without_a_write_and_a_real_write_wins():
    g = Given("2026-03-06T11:00:00Z", CHANGE_EVENT, "event")
    (r,) = records_for([Write("a@x.test", "e1", "rtm", "R1", True, None, g),
                        Write("a@x.test", "e1", "rtm", "R1", True, ALREADY_TRUE, g)], "2026-03-06T11:00:01Z")
    assert r.sides["rtm"].detail is None


def test_already_true_is_counted():
    r = rec("a" * 64, NOW, {"rtm": SideState(iso(NOW), False, "R1", ALREADY_TRUE)})
    assert summarise([r], NOW)["already_true"] == 1 and r.given_in == "obm"


def test_an_opt_out_the_other_side_already_reflected_is_recorded_with_no_write():
    store = FakeOptOuts()
    dv, engine = engine_with(store)
    dv.add(contact("c1", "di@x.test"))  # in no mapped list: the RTM topic opt-out needs no OBM write
    dv.row("di@x.test", P_ACME, T_NEWS, ConsentValue.OPTED_OUT)
    e = one_click_out("di@x.test")
    engine.process([msg(e)])
    assert "write" not in dv.calls
    (r,) = store.records
    assert r.sides == {"obm": SideState("2027-01-15T08:00:00.000Z", False, "R2", ALREADY_TRUE)}
    assert r.one_click and r.given_at == e.origin.time and r.given_in == "rtm"


def test_an_opt_out_withdrawn_before_it_was_processed_is_not_recorded():
    store = FakeOptOuts()
    dv, engine = engine_with(store)
    dv.add(contact("c1", "ed@x.test"))
    dv.row("ed@x.test", P_ACME, T_NEWS, ConsentValue.OPTED_IN)  # opted in again by now
    engine.process([msg(one_click_out("ed@x.test"))])
    assert store.records == []


def test_a_flag_set_where_every_purpose_is_already_opted_out_is_recorded_as_already_true_r3():
    store = FakeOptOuts()
    dv, engine = engine_with(store)
    dv.add(contact("c1", "fay@x.test", "fay@home.test", dnb=True))
    for e in ("fay@x.test", "fay@home.test"):
        dv.row(e, P_ACME, None, ConsentValue.OPTED_OUT)
    ev = event(ContactChanged(("donotbulkemail",), True, None, {}), table="contact", record_id="c1")
    engine.process([msg(ev)])
    assert "write" not in dv.calls
    assert {(r.person, r.rule, r.sides["rtm"].detail) for r in store.records} == {
        ("fay@x.test", "R3", ALREADY_TRUE), ("fay@home.test", "R3", ALREADY_TRUE)}
