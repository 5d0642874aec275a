"""A view of what happened, and the CLI's output conventions, through ``shared.entrypoints.cli.main`` against the
Dataverse sandbox and Azurite: ``runs``, ``runs show``, ``activity``, ``reconcile --dry-run
--changes``, ``explain`` of an unknown address, ``--output json|table|tsv``, ``--version``,
examples in ``--help``, ``--verbose``."""
from __future__ import annotations

import csv
import json
import logging

import pytest

from shared.domain.consent import ConsentValue
from shared.domain.ledger import LedgerEntry
from tests.integration.tenant import consent_row, contact, gid, tenant
from tests.integration.test_cli import (ANN, BO, CONTOSO, L_NEWS, NEWS, FakeLocalHost, cli, dead_letter,  # noqa: F401
                                        local_host, one_line_error, seed, stack)

pytestmark = pytest.mark.integration

OUT, IN = ConsentValue.OPTED_OUT.value, ConsentValue.OPTED_IN.value
CY = "cy@contoso.test"
FABRIKAM = gid("Fabrikam marketing")


def drifted() -> dict:
    """bo: opted out of Contoso News, still in the Contoso Newsletter (D1). cy: donotbulkemail,
    with opted-in purpose rows (D3: both rows must become Opted out)."""
    base = seed()
    cy = contact("cy", CY, dnb=True)
    base["contacts"].append(cy)
    base["consents"] += [consent_row(CY, CONTOSO, None, IN), consent_row(CY, FABRIKAM, None, IN)]
    return base


@pytest.fixture
def view(cli, stack):
    stack.sandbox.store.reset()
    stack.sandbox.store.load(drifted())
    return cli


@pytest.fixture
def failing_consent_writes(stack, monkeypatch):
    """A marketer deletes a consent row between the run's read and its write: Dataverse answers
    404 for that row, the rest of the $batch lands."""
    gateway = stack.container.sync_engine().gateway
    real_write = gateway.write

    def write(actions, marker):
        for a in actions:
            if getattr(a, "row_id", None) and getattr(a, "purpose_id", None) == FABRIKAM:
                stack.api("DELETE", f"msdynmkt_contactpointconsent4s({a.row_id})")
        return real_write(actions, marker)

    monkeypatch.setattr(gateway, "write", write)


# --- help, version, output formats -----------------------------------------------------------

@pytest.mark.parametrize("argv", [[], ["mappings", "import"], ["mappings", "discover"], ["webhooks", "register"],
                                  ["explain"], ["dlq", "list"], ["doctor"], ["reconcile"], ["runs"],
                                  ["runs", "show"], ["runs", "list"], ["activity"]])
def test_every_command_help_has_examples_with_the_program_name(cli, argv):
    code, out, _ = cli(*argv, "--help")
    assert code == 0 and out.startswith("usage: straddle") and "examples:\n  straddle " in out


def test_help_and_errors_name_the_program_as_invoked(capsys, monkeypatch, tmp_path):
    from shared.entrypoints.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["runs", "--help"], prog="python -m shared") == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m shared runs") and "  python -m shared runs show latest" in out
    assert main(["runs", "--max", "0"], prog="python -m shared") == 2
    err = capsys.readouterr().err
    assert err.startswith("python -m shared: ") and "see python -m shared runs --help" in err


def test_version(cli):
    code, out, _ = cli("--version")
    assert code == 0 and out.startswith("straddle 0.") and out.count("\n") == 1


def test_output_json_table_tsv_and_the_json_alias(view, local_host):
    local_host.dead = {"straddle-changes-parked": [dead_letter(7, "parked")]}
    code, table, _ = view("dlq", "list")
    code_j, as_json, _ = view("dlq", "list", "--output", "json")
    code_a, alias, _ = view("-o", "json", "dlq", "list")
    code_k, legacy, _ = view("--json", "dlq", "list")
    assert code == code_j == code_a == code_k == 0
    assert json.loads(as_json) == json.loads(alias) == json.loads(legacy)
    assert "StraddleGaveUp" in table and not table.lstrip().startswith("{")
    code, tsv, _ = view("dlq", "list", "--output", "tsv")
    (line,) = tsv.splitlines()  # one dead letter, one line, no keys
    cells = line.split("\t")
    assert cells[:3] == ["straddle-changes-parked", "ev7", "7"] and "StraddleGaveUp" in cells
    code, tsv, _ = view("doctor", "-o", "tsv")
    assert all(len(row.split("\t")) == 4 for row in tsv.splitlines()) and tsv.startswith("settings\tpass")


def test_bad_input_is_one_line_and_exit_2(view, tmp_path):
    for argv in (["activity", "--since", "yesterday"], ["activity", "--since", "-3h"], ["runs", "--max", "0"],
                 ["runs", "show", "a/b"], ["reconcile", "--changes", str(tmp_path / "c.csv")],
                 ["reconcile", "--dry-run", "--changes", str(tmp_path / "c.txt")],
                 ["reconcile", "--dry-run", "--show-addresses"], ["reconcile", "--dry-run", "--changes", str(tmp_path)],
                 ["--output", "yaml", "runs"]):
        code, out, err = view(*argv)
        assert code == 2 and out == "", argv
        one_line_error(err)


# --- explain ----------------------------------------------------------------------------------

def test_explain_an_address_nobody_knows_says_so_with_exit_3(view, stack):
    nobody = "nobody@nowhere.test"
    code, out, _ = view("explain", nobody, allow=(nobody,))
    assert code == 3 and "unknown: neither Outbound marketing" in out and "rules" not in out
    code, out, _ = view("--json", "explain", nobody, allow=(nobody,))
    data = json.loads(out)
    assert code == 3 and data["known"] is False and data["contacts"] == [] and data["consent"] == []
    code, out, _ = view("--json", "explain", CY, allow=(CY,))
    assert code == 0 and json.loads(out)["known"] is True  # no list, but consent rows: known


def test_explain_ledger_lines_name_lists_topics_and_purposes(view, stack):
    stack.container.tables().ledger.record([
        LedgerEntry(BO, "R2", "dataverse", "ev-9", None, "obm", "contact", gid("bo"), f"remove from list {L_NEWS}",
                    "member", "not a member", "applied"),
        LedgerEntry(BO, "R1", "dataverse", "ev-9", None, "rtm", "msdynmkt_contactpointconsent4", None,
                    f"opt out of topic {NEWS}", "no row", "Opted out", "applied"),
        LedgerEntry(BO, "R3", "dataverse", "ev-9", None, "rtm", "msdynmkt_contactpointconsent4", None,
                    f"opt out of purpose {CONTOSO}", "no row", "Opted out", "failed", "404")])
    code, out, _ = view("explain", BO, allow=(BO,))
    assert code == 0
    assert "remove from list 'Contoso Newsletter'" in out and "opt out of topic 'Contoso News'" in out
    assert "opt out of purpose 'Contoso marketing'" in out and L_NEWS not in out.split("ledger")[-1]
    data = json.loads(view("--json", "explain", BO, allow=(BO,))[1])
    named = {h["action_named"] for h in data["ledger"]}
    assert "remove from list 'Contoso Newsletter'" in named
    assert any(h["action"] == f"remove from list {L_NEWS}" for h in data["ledger"])  # ids stay in "action"


# --- reconcile --dry-run --changes --------------------------------------------------------------

def test_dry_run_writes_proposed_changes_pseudonymised(view, stack, tmp_path):
    target = tmp_path / "changes.csv"
    code, out, _ = view("reconcile", "--dry-run", "--changes", str(target))
    assert code == 0 and "(dry run)" in out and f"to {target} (people pseudonymised)" in out
    rows = list(csv.DictReader(target.open()))
    text = target.read_text()
    assert "@" not in text
    d1 = [r for r in rows if r["drift_class"] == "D1"]
    assert [(r["rule"], r["system"], r["table"], r["record_id"], r["change"], r["list"]) for r in d1] == [
        ("R2", "obm", "contact", gid("bo"), "remove from list", "Contoso Newsletter")]
    d3 = sorted((r["purpose"], r["before"], r["after"]) for r in rows if r["drift_class"] == "D3")
    assert d3 == [("Contoso marketing", "Opted in", "Opted out"), ("Fabrikam marketing", "Opted in", "Opted out")]
    ledger = stack.container.tables().ledger
    assert {r["people"] for r in rows if r["drift_class"] == "D3"} == {ledger.partition_for(CY)[:16]}
    assert gid("bo") in stack.members_of(L_NEWS)  # a dry run: nothing written
    code, out, _ = view("--json", "reconcile", "--dry-run", "--changes", str(tmp_path / "c.json"), "--show-addresses",
                        allow=(BO, CY))
    report = json.loads(out)
    assert code == 0 and report["changes_written"] == len(rows) == report["drift_found"]
    cases = json.loads((tmp_path / "c.json").read_text())
    assert {c["people"] for c in cases if c["drift_class"] == "D3"} == {CY}
    assert set(cases[0]) == {"drift_class", "rule", "system", "table", "record_id", "change", "list", "topic",
                             "purpose", "before", "after", "people", "status", "error"}
    code, _, _ = view("reconcile", "--dry-run", "--changes", str(tmp_path / "x.data"), "--changes-format", "json")
    assert code == 0 and json.loads((tmp_path / "x.data").read_text())


# --- runs, runs show, activity -----------------------------------------------------------------

def test_runs_list_and_show_with_unhealed_cases(view, stack, failing_consent_writes):
    code, out, _ = view("reconcile")
    assert code == 1 and "failed_writes" in out and "runs show" in out
    code, out, _ = view("--json", "runs")
    runs = json.loads(out)["runs"]
    newest = runs[0]
    assert set(newest) == {"run_id", "started_at", "status", "duration_s", "found", "fixed", "failures",
                           "oldest_unhealed_opt_out_hours"}
    assert newest["status"] == "failed_writes" and newest["failures"] == 1 and newest["fixed"] == newest["found"] - 1
    code, out, _ = view("runs")
    assert code == 0 and out.splitlines()[0].split()[:3] == ["run", "id", "started"]
    assert newest["run_id"] in out.splitlines()[1]
    code, tsv, _ = view("runs", "--output", "tsv", "--max", "1")
    assert tsv.split("\t")[:3] == [newest["run_id"], newest["started_at"], "failed_writes"]
    code, out, _ = view("runs", "show", newest["run_id"])
    assert code == 0 and f"run {newest['run_id']} (healing): failed_writes" in out
    assert "D3 global opt-out not reflected" in out
    assert "unhealed (1):" in out and "opt out of purpose 'Fabrikam marketing'  (404" in out
    assert "mismatches D1-D5: " in out and ", 1 open" in out
    code, out, _ = view("--json", "runs", "show", "latest")
    report = json.loads(out)
    assert code == 0 and report["run_id"] == newest["run_id"]
    mismatches = report["mismatches"]  # counts by drift class, for compliance: no address, pseudonym or id
    assert mismatches["found"] + mismatches["follow_on"]["found"] == newest["found"]
    assert mismatches["open"] == 1 and {c["class"]: c["open"] for c in mismatches["by_class"]}["D3"] == 1
    assert all(c["suspected"] is not None for c in mismatches["by_class"])
    assert mismatches["run_id"] == newest["run_id"] and mismatches["dry_run"] is False
    (case,) = report["unhealed"]
    assert (case["drift_class"], case["rule"], case["status"], case["purpose"]) == ("D3", "R3", "failed",
                                                                                    "Fabrikam marketing")
    assert case["people"] is None  # a stored report holds no one's address or pseudonym
    code, out, err = view("runs", "show", "20000101T000000-nope00")
    assert code == 3 and out == "" and "no run '20000101T000000-nope00'" in err


def test_activity_counts_by_rule_and_direction_failures_dead_letters(view, stack, local_host, failing_consent_writes):
    local_host.dead = {"straddle-changes-parked": [dead_letter(8, "parked")]}
    assert view("reconcile")[0] == 1  # 2 applied (R2 -> OBM, R3 -> RTM), 1 failed (R3 -> RTM)
    code, out, _ = view("--json", "activity", "--since", "10m")
    data = json.loads(out)
    assert code == 0
    rows = {(r["rule"], r["direction"], r["origin"]): r for r in data["by_rule"]}
    assert rows[("R2", "to_obm", "reconcile")]["applied"] >= 1
    assert rows[("R3", "to_rtm", "reconcile")]["applied"] >= 1 and rows[("R3", "to_rtm", "reconcile")]["failed"] >= 1
    assert data["changes"]["failed"] >= 1 and data["failures"][0]["rule"] == "R3"
    assert "purpose" in data["failures"][0]["action"] and data["failures"][0]["detail"].startswith("404")
    assert data["parked"]["available"] is True and data["parked"]["waiting"] == 1
    assert data["parked"]["by_reason"] == {"StraddleGaveUp": 1}
    assert data["last_run"]["status"] == "failed_writes"
    oldest = data["oldest_unpropagated"]
    assert oldest["since"] == "2026-01-02T03:04:05Z" and "dead-lettered change event ev8" in oldest["what"]
    code, out, _ = view("activity", "--since", "10m")
    assert code == 0 and "R3     -> RTM    reconcile" in out and "dead letters: 1 waiting" in out
    assert "oldest unpropagated:" in out and "failures (" in out
    code, tsv, _ = view("activity", "-o", "tsv", "--since", "10m")
    assert any(line.startswith("R3\tto_rtm\treconcile\t") for line in tsv.splitlines())
    local_host.dead = {}
    code, out, _ = view("--json", "activity", "--since", "2000-01-01")
    assert code == 0 and json.loads(out)["oldest_unpropagated"]["what"].startswith("failed write: R3")


def test_activity_without_queues_still_shows_the_ledger(view, monkeypatch):
    monkeypatch.setenv("STRADDLE_LOCAL_HOST", "http://127.0.0.1:9")
    code, out, _ = view("activity", "--since", "1h")
    assert code == 0 and "dead letters: not checked" in out and "activity " in out


# --- --verbose --------------------------------------------------------------------------------

def test_verbose_shows_dataverse_requests_not_storage_headers(view, capsys):
    root, dataverse = logging.getLogger(), logging.getLogger("straddle.dataverse")
    before = list(root.handlers), root.level, dataverse.level
    try:
        code, _, err = view("--verbose", "runs", "show", "latest")
        assert code in (0, 3)
        code, _, err = view("--verbose", "explain", BO, allow=(BO,))
        assert code == 0
        lines = [l for l in err.splitlines() if "dataverse.request" in l]
        assert lines and all("method=" in l and "path=" in l and "status=" in l and "ms=" in l for l in lines)
        assert any("method=GET path=contacts status=200" in l for l in lines)
        assert "?" not in "".join(lines) and "$filter" not in err
        assert "Request headers" not in err and "x-ms-" not in err.lower() and "Authorization" not in err
    finally:
        for h in root.handlers[:]:
            if h not in before[0]:
                root.removeHandler(h)
        root.setLevel(before[1])
        dataverse.setLevel(before[2])


def test_a_failed_dry_run_leaves_no_review_file(view, stack, azurite_tables, tmp_path):
    from shared import bootstrap
    from shared.adapters.settings import Settings
    from sandbox.stack import LEDGER_KEY, SYNC_TOKEN

    s = stack.container.settings
    bootstrap.reset_container(bootstrap.Container(Settings.from_env({
        "DATAVERSE_URL": stack.sandbox.url, "DATAVERSE_ACCESS_TOKEN": SYNC_TOKEN, "AzureWebJobsStorage": azurite_tables,
        "TABLE_PREFIX": s.table_prefix, "LEDGER_KEY": LEDGER_KEY, "DATAVERSE_RETRY_BUDGET_SECONDS": "0.2"})))
    stack.sandbox.set_faults({"error_share": {"500": 1.0}})
    try:
        code, out, err = view("reconcile", "--dry-run", "--changes", str(tmp_path / "changes.csv"))
    finally:
        stack.sandbox.set_faults({})
    assert code == 1 and out == "" and "Dataverse" in err
    assert list(tmp_path.iterdir()) == []  # neither the file nor a partial one


def test_the_review_file_is_readable_by_its_owner_only(view, stack, tmp_path):
    import os
    import stat

    target = tmp_path / "changes.csv"
    target.write_text("an older review, world-readable\n")
    target.chmod(0o644)
    previous = os.umask(0)  # even a permissive umask
    try:
        code, _, _ = view("reconcile", "--dry-run", "--changes", str(target))
    finally:
        os.umask(previous)
    assert code == 0 and stat.S_IMODE(target.stat().st_mode) == 0o600
    assert "drift_class" in target.read_text()
