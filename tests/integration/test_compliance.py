"""Opt-out deadlines end to end: a person's opt-out in the Dataverse sandbox, its webhook through the
real function code and process_changes, the record in Azurite's deadlines table, and what
``straddle compliance`` and ``compliance export`` make of it. One-click unsubscribes (source
"Email - list-unsubscribe") are RTM opt-outs like any other (R2, R4), counted apart."""
from __future__ import annotations

import csv
import json
import os
import stat
from datetime import datetime, timedelta, timezone

import pytest

from shared.domain.compliance import CHANGE_EVENT, OptOutRecord, SideState
from shared.domain.consent import ConsentLogicalReason, ConsentSource, ConsentValue
from shared.entrypoints.cli import main
from sandbox.stack import Stack
from tests.integration.tenant import consent_row, contact, gid, tenant
from tests.integration.test_sync_rules import make_stack  # noqa: F401  (the fixture)

pytestmark = pytest.mark.integration

OUT, IN = ConsentValue.OPTED_OUT.value, ConsentValue.OPTED_IN.value
NEWS, CONTOSO = gid("Contoso News"), gid("Contoso marketing")
L_NEWS = gid("Contoso Newsletter")
ONE_CLICK = {"msdynmkt_value": OUT, "msdynmkt_source": ConsentSource.EMAIL_LIST_UNSUBSCRIBE.value,
             "msdynmkt_logicalreason": ConsentLogicalReason.OPT_OUT_ONE_CLICK.value}


def records(s: Stack, hours: float = 1) -> list[OptOutRecord]:
    now = datetime.now(timezone.utc)
    return list(s.container.tables().compliance.window(now - timedelta(hours=hours), now + timedelta(minutes=1)))


def person(s: Stack, email: str) -> str:
    return s.container.tables().ledger.partition_for(email)


def test_a_one_click_topic_unsubscribe_is_r2_and_its_deadline_is_recorded_as_one_click(make_stack):
    ann = contact("ann", "ann@contoso.test")
    row = consent_row("ann@contoso.test", CONTOSO, NEWS, IN)
    s = make_stack(tenant([ann], consents=[row], list_members={L_NEWS: [ann["contactid"]]}))
    s.api("PATCH", f"msdynmkt_contactpointconsent4s({row['msdynmkt_contactpointconsent4id']})", ONE_CLICK)
    s.drain()
    assert s.members_of(L_NEWS) == set()  # R2: left the topic's list, like any RTM topic opt-out
    assert s.ledger_rules("ann@contoso.test") == ["R2"]
    (r,) = records(s)
    assert r.one_click and r.person == person(s, "ann@contoso.test") and r.origin == "event"
    assert r.evidence == CHANGE_EVENT and r.given_in == "rtm" and r.rule == "R2"
    assert not r.is_open and set(r.sides) == {"obm"}
    given, effective = datetime.fromisoformat(r.given_at.replace("Z", "+00:00")), \
        datetime.fromisoformat(r.effective_at.replace("Z", "+00:00"))
    assert timedelta(0) <= effective - given < timedelta(minutes=2)


def test_a_one_click_purpose_unsubscribe_is_r4(make_stack):
    di = contact("di", "di@x.test")
    row = consent_row("di@x.test", CONTOSO, None, IN)
    s = make_stack(tenant([di], consents=[row]))
    s.api("PATCH", f"msdynmkt_contactpointconsent4s({row['msdynmkt_contactpointconsent4id']})", ONE_CLICK)
    s.drain()
    assert s.rows("contact")[di["contactid"]]["donotbulkemail"]  # R4 (single brand): the flag
    (r,) = records(s)
    assert r.one_click and r.rule == "R4" and not r.is_open


def test_an_ordinary_opt_out_is_not_counted_as_one_click(make_stack):
    ann = contact("ann", "ann@contoso.test")
    row = consent_row("ann@contoso.test", CONTOSO, NEWS, IN)
    s = make_stack(tenant([ann], consents=[row], list_members={L_NEWS: [ann["contactid"]]}))
    s.api("PATCH", f"msdynmkt_contactpointconsent4s({row['msdynmkt_contactpointconsent4id']})", {"msdynmkt_value": OUT})
    s.drain()
    (r,) = records(s)
    assert not r.one_click and r.rule == "R2"


def test_a_retry_of_the_same_event_closes_the_side_it_left_open_and_keeps_the_other(table_store):
    store = table_store.compliance
    given = "2026-03-02T10:00:00.000Z"
    first = OptOutRecord("eve@x.test", "event-1", given, CHANGE_EVENT, "event", "2026-03-02T10:00:05.000Z",
                         {"rtm": SideState("2026-03-02T10:00:05.000Z", False, "R5"),
                          "obm": SideState(None, True, "R5", "503")}, one_click=True)
    retry = OptOutRecord("eve@x.test", "event-1", given, CHANGE_EVENT, "event", "2026-03-02T10:01:00.000Z",
                         {"obm": SideState("2026-03-02T10:01:00.000Z", False, "R5")})
    store.record([first])
    (r,) = store.window(datetime(2026, 3, 2, tzinfo=timezone.utc), datetime(2026, 3, 3, tzinfo=timezone.utc))
    assert r.is_open and r.sides["obm"].detail == "503" and r.one_click
    store.record([retry])
    (r,) = store.window(datetime(2026, 3, 2, tzinfo=timezone.utc), datetime(2026, 3, 3, tzinfo=timezone.utc))
    assert not r.is_open and r.effective_at == "2026-03-02T10:01:00.000Z"
    assert r.sides["rtm"].at == "2026-03-02T10:00:05.000Z" and r.one_click  # the merge kept what the retry did not say
    assert r.person == table_store.ledger.partition_for("eve@x.test") and "eve" not in r.person
    # outside the window: not found
    assert not list(store.window(datetime(2026, 3, 4, tzinfo=timezone.utc), datetime(2026, 3, 5, tzinfo=timezone.utc)))


def test_compliance_and_its_export_on_the_cli(make_stack, capsys, monkeypatch, tmp_path):
    ann = contact("ann", "ann@contoso.test")
    row = consent_row("ann@contoso.test", CONTOSO, NEWS, IN)
    s = make_stack(tenant([ann], consents=[row], list_members={L_NEWS: [ann["contactid"]]}))
    s.api("PATCH", f"msdynmkt_contactpointconsent4s({row['msdynmkt_contactpointconsent4id']})", ONE_CLICK)
    s.drain()
    # an opt-out still open for 30 hours (a write that keeps failing), to be reported with its age
    old = (datetime.now(timezone.utc) - timedelta(hours=30)).isoformat().replace("+00:00", "Z")
    s.container.tables().compliance.record([OptOutRecord(
        "bo@x.test", "event-stuck", old, CHANGE_EVENT, "event", old, {"rtm": SideState(None, True, "R1", "403 denied")})])
    monkeypatch.chdir(tmp_path)
    s.activate()

    assert main(["compliance", "--since", "2d", "--output", "json"]) == 0
    view = json.loads(capsys.readouterr().out)
    assert view["received"] == 2 and view["propagated"] == 1 and view["open"] == 1 and view["one_click"] == 1
    assert view["open_past_deadline"] == 1 and 29.9 < view["oldest_open_hours"] < 30.2
    assert view["breached_48h"] == 0 and view["breached_10_business_days"] == 0
    assert view["time_to_effect"]["timed"] == 1 and view["time_to_effect"]["p50_s"] < 120
    assert {(r["rule"], r["direction"]) for r in view["by_rule"]} == {("R2", "to_obm"), ("R1", "to_rtm")}

    assert main(["compliance", "--since", "2d"]) == 0
    text = capsys.readouterr().out
    assert "2 received, 1 propagated, 1 open, 1 by one-click unsubscribe" in text
    assert "open for more than 24 h (1" in text and "403 denied" in text
    assert "@" not in text

    assert main(["compliance", "--since", "2d", "--deadline-hours", "31"]) == 0
    assert "open for more than 31 h: none" in capsys.readouterr().out

    target = tmp_path / "opt-outs.csv"
    assert main(["compliance", "export", "--since", "2d", "--to", str(target)]) == 0
    assert "wrote 2 opt-out(s)" in capsys.readouterr().out
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600
    rows = list(csv.DictReader(target.open()))
    assert [r["status"] for r in rows] == ["open", "propagated"]  # oldest given first
    assert rows[1]["source"] == "rtm one-click" and rows[1]["rule"] == "R2" and rows[1]["sides"] == "obm"
    assert rows[1]["pseudonym"] == person(s, "ann@contoso.test")[:16]
    assert rows[0]["rtm_effective_at"] == "open" and rows[0]["breached_48h"] == "false"
    assert "@" not in target.read_text()

    assert main(["compliance", "export", "--since", "2d", "--to", str(tmp_path)]) == 2  # a folder
    assert "is a folder" in capsys.readouterr().err
    assert main(["compliance", "--since", "soon"]) == 2


def test_a_healing_run_records_what_it_healed_closes_what_was_open_and_reports_the_figures(make_stack):
    """The nightly run's opt-outs are dated by the rows it read (here the consent row's modifiedon,
    months ago: past both deadlines); an opt-out left open by the event path before the run is
    closed by a run that succeeded; the stored report carries the figures."""
    from shared.service_layer.reconcile import run_reconciliation
    from shared.service_layer.runs import report_lines

    d1 = contact("d1", "d1@x.test")  # in the newsletter, opted out of its topic: D1
    s = make_stack(tenant([d1], consents=[consent_row("d1@x.test", CONTOSO, NEWS, OUT)],
                          list_members={L_NEWS: [d1["contactid"]]}))
    earlier = (datetime.now(timezone.utc) - timedelta(hours=3)).isoformat().replace("+00:00", "Z")
    s.container.tables().compliance.record([OptOutRecord(
        "eve@x.test", "event-open", earlier, CHANGE_EVENT, "event", earlier, {"rtm": SideState(None, True, "R1", "503")})])
    report = run_reconciliation(s.container)
    assert report["status"] == "succeeded" and report["fixed_D1"] == 1
    assert report["opt_outs_closed_by_run"] == 1 and report["opt_outs_open"] == 0
    assert report["opt_outs_window_days"] == 30
    assert s.container.tables().runs.get(report["run_id"])["opt_outs_closed_by_run"] == 1  # stored with the report
    assert any("opt-outs, last 30 days" in line for line in report_lines(report))
    by_origin = {r.origin: r for r in records(s, hours=4)}  # the healed one is filed under the night it was healed
    closed, r = by_origin["event"], by_origin["reconcile"]
    assert not closed.is_open and closed.sides["rtm"].detail == f"consistent at reconciliation {report['run_id']}"
    assert r.given_at == "2026-01-01T00:00:00Z" and r.evidence == "row dates"
    assert r.rule == "R2" and not r.is_open and r.person == person(s, "d1@x.test")
    # given long before it was healed: both deadlines missed, and the run's figures say so
    assert report["opt_outs_received"] == 2 and report["opt_outs_breached_48h"] == 1
    assert report["opt_outs_breached_10_business_days"] == 1


@pytest.mark.parametrize("argv", [["compliance", "--help"], ["compliance", "export", "--help"]])
def test_the_compliance_commands_have_help_with_examples(argv, capsys):
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: ") and "examples:" in out and "--since" in out


@pytest.mark.parametrize("argv", [["compliance", "export"], ["compliance", "--deadline-hours", "0"],
                                  ["compliance", "--deadline-hours", "soon"]])
def test_bad_compliance_input_is_one_line_and_exit_2(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0]


def test_a_big_batch_is_packed_in_as_few_rows_as_fit_and_reads_back_whole(table_store):
    store = table_store.compliance
    given = "2026-03-02T10:00:00.000Z"
    people = [f"p{i}@x.test" for i in range(20_000)]  # HMACs do not compress: more than one row's worth
    store.record([OptOutRecord(p, f"e{i}", given, CHANGE_EVENT, "event", given,
                               {"obm": SideState(given, False, "R2")}) for i, p in enumerate(people)])
    rows = list(table_store.service.get_table_client(table_store.prefix + "compliance").list_entities())
    assert 1 < len(rows) <= 4 and sum(r["records"] for r in rows) == 20_000
    found = list(store.window(datetime(2026, 3, 2, tzinfo=timezone.utc), datetime(2026, 3, 3, tzinfo=timezone.utc)))
    assert len(found) == 20_000 and {r.person for r in found} == {table_store.ledger.partition_for(p) for p in people}
