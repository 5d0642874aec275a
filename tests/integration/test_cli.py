"""The admin CLI through its entry point, ``shared.entrypoints.cli.main``, against the Dataverse sandbox and
Azurite (sandbox.stack.Stack installs its container as the process-wide one), with a tiny stand-in
for the local host's admin API behind ``dlq``. Every command: success, bad input, --json shape, and
no email address in any output but explain's own."""
from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest

from sandbox.stack import Stack
from shared import bootstrap
from shared.entrypoints.cli import main
from shared.domain.consent import ConsentValue
from shared.domain.ledger import LedgerEntry
from tests.integration.tenant import consent_row, contact, gid, lead, mappings_file, tenant

pytestmark = pytest.mark.integration

OUT, IN = ConsentValue.OPTED_OUT.value, ConsentValue.OPTED_IN.value
CONTOSO, NEWS = gid("Contoso marketing"), gid("Contoso News")
L_NEWS, L_LEADS = gid("Contoso Newsletter"), gid("Contoso Event Leads")
ANN, ANN_HOME, BO = "ann@contoso.test", "ann.home@example.test", "bo@x.test"
EVERY_EMAIL = (ANN, ANN_HOME, BO, "parked.person@example.test")
EMAIL_SHAPE = re.compile(r"[\w.+-]+@[\w-]+(\.[\w-]+)+")
HOOK_URL = "http://127.0.0.1:9/api/dataverse/webhook"
STRONG_KEY = "a-ledger-key-for-cli-tests-Xq7Rm2Kv9pLt"


class FakeLocalHost:
    """The local Functions host's dead-letter admin API (sandbox/host/README.md), in memory."""

    KEY = "master-key-for-tests"

    def __init__(self):
        self.dead: dict[str, list[dict]] = {}
        self.replays: list[tuple[str, int]] = []
        host = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, status, payload):
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.headers.get("x-functions-key") != host.KEY:
                    return self._answer(401, {"error": "key"})
                url = urlparse(self.path)
                parts = url.path.strip("/").split("/")
                if parts[:2] == ["admin", "queues"] and parts[3:] == ["deadletter"]:
                    n = int(parse_qs(url.query).get("max", ["100"])[0])
                    msgs = host.dead.get(parts[2], [])[:n]
                    return self._answer(200, {"queue": parts[2], "count": len(msgs), "messages": msgs})
                if url.path == "/admin/queues":
                    return self._answer(200, [{"name": q} for q in host.dead])
                self._answer(404, {})

            def do_POST(self):
                if self.headers.get("x-functions-key") != host.KEY:
                    return self._answer(401, {"error": "key"})
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                parts = urlparse(self.path).path.strip("/").split("/")
                if parts[:2] == ["admin", "queues"] and parts[3:] == ["deadletter", "replay"]:
                    queue, n = parts[2], int(body.get("max", 10**6))
                    taken, host.dead[queue] = host.dead.get(queue, [])[:n], host.dead.get(queue, [])[n:]
                    host.replays.append((queue, len(taken)))
                    return self._answer(200, {"replayed": len(taken), "to": "straddle-changes"})
                self._answer(404, {})

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def seed() -> dict:
    ann = contact("ann", ANN, "Ann.Home@example.test")
    bo, bo_lead = contact("bo", BO), lead("bo-lead", BO)
    return tenant([ann, bo], [bo_lead],
                  [consent_row(BO, CONTOSO, NEWS, OUT), consent_row(ANN, CONTOSO, None, IN)],
                  {L_NEWS: [ann["contactid"], bo["contactid"]], L_LEADS: [bo_lead["leadid"]]})


@pytest.fixture(scope="module")
def local_host():
    host = FakeLocalHost()
    yield host
    host.close()


@pytest.fixture(scope="module")
def stack(azurite_tables, local_host):
    import uuid

    s = Stack(azurite_tables, "t" + uuid.uuid4().hex[:10], seed(), mappings_file("multi-brand"),
              register_webhooks=False,
              settings={"ServiceBusConnection": f"LocalHost={local_host.url};Key={FakeLocalHost.KEY}"})
    yield s
    s.close()


@pytest.fixture
def cli(stack, capsys, monkeypatch, tmp_path):
    """run(*argv) -> (exit code, stdout, stderr), with the stack's container installed and no
    local.settings.json or STRADDLE_* variables from the developer's machine."""
    monkeypatch.chdir(tmp_path)
    for name in ("STRADDLE_FUNCTION_KEY", "STRADDLE_LOCAL_HOST", "STRADDLE_LOCAL_HOST_KEY"):
        monkeypatch.delenv(name, raising=False)
    stack.activate()
    stack.sandbox.store.reset()
    stack.sandbox.store.load(seed())

    def run(*argv: str, allow: tuple[str, ...] = ()):
        capsys.readouterr()
        code = main(list(argv))
        out, err = capsys.readouterr()
        for email in EVERY_EMAIL:
            if email not in allow:
                assert email not in out.lower() and email not in err.lower(), (argv, email)
        leftover = [m.group(0) for m in EMAIL_SHAPE.finditer(out + err) if m.group(0).lower() not in allow]
        assert not leftover, (argv, leftover)
        assert "Traceback" not in err
        return code, out, err

    yield run
    stack.activate()


def one_line_error(err: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("straddle: "), err


# --- help and usage --------------------------------------------------------------------------------

@pytest.mark.parametrize("argv", [[], ["mappings"], ["mappings", "import"], ["mappings", "export"],
                                  ["mappings", "discover"], ["webhooks"], ["webhooks", "register"],
                                  ["webhooks", "status"], ["webhooks", "remove"], ["explain"], ["dlq"],
                                  ["dlq", "list"], ["dlq", "replay"], ["doctor"], ["reconcile"]])
def test_every_command_has_help(cli, argv):
    code, out, _ = cli(*argv, "--help")
    assert code == 0 and out.startswith("usage: straddle")


@pytest.mark.parametrize("argv", [
    ["frobnicate"], ["mappings"], ["mappings", "discover", "--mode", "both"], ["mappings", "discover", "--threshold", "2"],
    ["webhooks", "register"], ["webhooks", "register", "--url", "ftp://x/y"], ["webhooks", "status", "--url", "nope"],
    ["explain"], ["explain", "not-an-address"], ["explain", "two@at@x.test"], ["dlq", "list", "--max", "0"],
    ["dlq", "replay", "--max", "many"], ["mappings", "import", "/no/such/file.json"], ["reconcile", "--wet"],
])
def test_bad_input_is_one_line_and_exit_2(cli, argv):
    code, out, err = cli(*argv)
    assert code == 2 and out == ""
    one_line_error(err)


# --- mappings discover -----------------------------------------------------------------------------

def test_discover_writes_a_file_that_imports(cli, tmp_path):
    target = tmp_path / "proposed.json"
    code, out, _ = cli("mappings", "discover", "--out", str(target))
    assert code == 0
    assert "'Contoso Newsletter' -> 'Contoso News'" in out and "unmatched lists: 'Unmapped'" in out
    assert "opt-out list 'Contoso Opt-out'" in out and f"wrote {target}" in out
    doc = json.loads(target.read_text())
    assert doc["mode"] == "multi-brand" and [b["name"] for b in doc["brands"]] == ["Contoso marketing",
                                                                                  "Fabrikam marketing"]
    code, out, _ = cli("mappings", "import", str(target), "--dry-run")
    assert code == 0 and out.startswith("checked (dry run): multi-brand: 2 brand(s), 3 list-topic pair(s)")


def test_discover_json_and_stdout(cli):
    code, out, err = cli("--json", "mappings", "discover", "--mode", "single-brand")
    assert code == 0 and err == ""
    data = json.loads(out)
    assert set(data) == {"mode", "threshold", "matched", "opt_out_lists", "unmatched_lists", "unmatched_topics",
                         "unused_opt_out_lists", "mappings", "written"}
    assert data["mode"] == "single-brand" and data["written"] is None and len(data["matched"]) == 3
    assert set(data["matched"][0]) == {"brand", "list", "list_id", "topic", "topic_id", "score", "why"}
    code, out, err = cli("mappings", "discover")  # the file on stdout, the report on stderr
    assert code == 0 and json.loads(out)["mode"] == "multi-brand" and "matched 3 list(s)" in err


def test_discover_threshold_and_nothing_to_match(cli, stack):
    code, out, _ = cli("--json", "mappings", "discover", "--threshold", "1", "--mode", "multi-brand")
    assert code == 0 and [m["list"] for m in json.loads(out)["matched"]] == ["Fabrikam Deals"]  # same name: 1.0
    stack.api("DELETE", f"msdynmkt_topics({gid('Fabrikam Deals')})")
    code, out, err = cli("mappings", "discover", "--threshold", "1")
    assert code == 1 and out == "" and "nothing matched: no mappings file written" in err


def test_mappings_import_and_export(cli, tmp_path):
    source = tmp_path / "m.json"
    source.write_text(json.dumps(mappings_file("single-brand")))
    code, out, _ = cli("--json", "mappings", "import", str(source))
    assert code == 0 and json.loads(out)["imported"] is True
    code, out, _ = cli("mappings", "export")
    assert code == 0 and json.loads(out) == {**mappings_file("single-brand"),
                                             "email_attributes": ["emailaddress1", "emailaddress2", "emailaddress3"]}
    source.write_text(json.dumps({"mode": "multi-brand", "brands": [{"name": "X", "purposes": ["Nope"]}]}))
    code, out, err = cli("mappings", "import", str(source))
    assert code == 2 and "unknown purpose 'Nope'" in err
    one_line_error(err)
    source.write_text(json.dumps(mappings_file("multi-brand")))
    assert cli("mappings", "import", str(source))[0] == 0  # the module's stack expects multi-brand


# --- webhooks ------------------------------------------------------------------------------------

def narrow_and_disable_steps(stack) -> str:
    """Someone narrows the Update contact step's filtering attributes and disables Delete lead;
    returns the Update step's id."""
    steps = stack.rows("sdkmessageprocessingstep")
    update_contact = next(s for s in steps.values() if s["name"].endswith("Update of contact"))
    delete_lead = next(s for s in steps.values() if s["name"].endswith("Delete of lead"))
    stack.api("PATCH", f"sdkmessageprocessingsteps({update_contact['sdkmessageprocessingstepid']})",
              {"filteringattributes": "emailaddress1"})
    stack.api("PATCH", f"sdkmessageprocessingsteps({delete_lead['sdkmessageprocessingstepid']})", {"statecode": 1})
    return update_contact["sdkmessageprocessingstepid"]


def test_webhooks_register_status_remove(cli, stack):
    code, out, _ = cli("webhooks", "status")
    assert code == 1 and "endpoint: not registered" in out and "missing            Create contact" in out
    code, _, err = cli("webhooks", "register", "--url", HOOK_URL)
    assert code == 2 and "function key" in err
    code, out, _ = cli("webhooks", "register", "--url", HOOK_URL, "--function-key", "fkey-123")
    assert code == 0 and "11 step(s) created" in out and "ok: every step" in out and "fkey-123" not in out
    code, out, _ = cli("--json", "webhooks", "status", "--url", HOOK_URL)
    status = json.loads(out)
    assert code == 0 and status["ok"] is True and status["endpoint"]["url"] == HOOK_URL
    assert status["endpoint"]["auth_type"] == "WebhookKey" and len(status["steps"]) == 11
    assert set(status["steps"][0]) == {"step", "message", "table", "state", "detail"}
    narrow_and_disable_steps(stack)
    code, out, _ = cli("webhooks", "status")
    assert code == 1
    assert "attribute mismatch Update contact  (filtering attributes differ)" in out
    assert "disabled           Delete lead" in out
    code, out, _ = cli("webhooks", "register", "--url", HOOK_URL, "--function-key", "fkey-123")
    assert "1 updated" in out  # the filter is put back; a disabled step is left for a person to decide
    code, out, _ = cli("--json", "webhooks", "remove", "--yes")
    assert code == 0 and json.loads(out)["removed_rows"] >= 14
    code, out, _ = cli("webhooks", "remove", "--url", HOOK_URL)
    assert code == 0 and "nothing registered" in out


def test_webhooks_status_names_a_missing_pre_image_and_register_adds_it(cli, stack):
    cli("webhooks", "register", "--url", HOOK_URL, "--function-key", "fkey-123")
    images = stack.rows("sdkmessageprocessingstepimage")
    pre = {i: img for i, img in images.items() if img.get("imagetype") == 0}
    assert len(pre) == 2 and all(img["attributes"] == "emailaddress1,emailaddress2,emailaddress3"
                                 and img["entityalias"] == "PreImage" for img in pre.values())  # Update contact, lead
    for image_id in pre:
        stack.api("DELETE", f"sdkmessageprocessingstepimages({image_id})")  # as registered before R7
    code, out, _ = cli("webhooks", "status")
    assert code == 1 and "attribute mismatch Update lead  (image PreImage missing)" in out
    code, out, _ = cli("--json", "webhooks", "register", "--url", HOOK_URL, "--function-key", "fkey-123")
    assert code == 0 and json.loads(out)["created_images"] == 2
    assert cli("webhooks", "status")[0] == 0


# --- explain -------------------------------------------------------------------------------------

def test_explain_shows_both_worlds_the_verdict_and_the_ledger(cli, stack):
    stack.container.tables().ledger.record([LedgerEntry(
        BO, "R2", "dataverse", "ev-1", "2026-01-01T00:00:00Z", "obm", "contact", gid("bo"),
        f"remove from list {L_LEADS}", "member", "not a member", "applied")])
    code, out, _ = cli("--json", "explain", " BO@x.test ", allow=(BO,))
    assert code == 0
    data = json.loads(out)
    assert set(data) == {"email", "contacts", "leads", "consent", "mappings", "consistent", "rules", "pending",
                         "pending_elsewhere", "closure_complete", "timeline", "ledger", "known"}
    assert data["timeline"] == []  # no re-consent of this address meets an opt-out
    assert data["email"] == BO and data["mappings"] == "multi-brand" and data["consistent"] is False
    (c,) = data["contacts"]
    assert c["id"] == gid("bo") and c["email_columns"] == ["emailaddress1"] and c["donotbulkemail"] is False
    assert c["lists"] == [{"id": L_NEWS, "name": "Contoso Newsletter", "mapped": True,
                           "role": "mapped to topic 'Contoso News'", "brand": "Contoso"}]
    assert data["leads"][0]["lists"][0]["name"] == "Contoso Event Leads"
    (row,) = data["consent"]
    assert (row["type"], row["purpose"], row["topic"], row["value"]) == ("Topic", "Contoso marketing",
                                                                         "Contoso News", "Opted out")
    news = next(r for r in data["rules"] if r["kind"] == "list-topic" and r["list"] == "Contoso Newsletter")
    assert news["status"] == "inconsistent" and news["topic_opted_out"] is True and news["members_in_list"] == 1
    assert data["pending"] == [{"rule": "R2", "action": f"remove contact {gid('bo')} from list 'Contoso Newsletter'"}]
    assert [(h["rule"], h["outcome"], h["target_system"]) for h in data["ledger"]] == [("R2", "applied", "obm")]
    code, out, _ = cli("explain", BO, allow=(BO,))
    assert code == 0 and out.startswith(BO) and "inconsistent [Contoso] list 'Contoso Newsletter'" in out
    assert "pending R2: remove contact" in out and "ledger (newest first):" in out


def test_explain_never_shows_the_persons_other_addresses(cli):
    code, out, _ = cli("explain", ANN, allow=(ANN,))
    assert code == 0 and "1 other address(es)" in out and "consistent" in out
    code, out, _ = cli("--json", "explain", "nobody@nowhere.test", allow=("nobody@nowhere.test",))
    data = json.loads(out)
    assert code == 3 and data["known"] is False  # neither world knows it (test_cli_views)
    assert data["contacts"] == [] and data["consent"] == [] and data["consistent"] is True
    assert data["ledger"] == []


# --- dead letters --------------------------------------------------------------------------------

def dead_letter(n: int, queue: str) -> dict:
    body = {"v": 1, "id": f"ev{n}", "kind": "contact_changed", "table": "contact", "record_id": "r", "message": "Update",
            "origin": {"time": None, "user_id": None, "initiating_user_id": None, "correlation_id": None,
                       "organization_id": None, "depth": 1},
            "change": {"changed": ["emailaddress1"], "donotbulkemail": None, "donotemail": None,
                       "emails": {"emailaddress1": "parked.person@example.test"}}}
    return {"message_id": f"ev{n}", "sequence_number": n, "body": json.dumps(body),
            "application_properties": {"attempt": 5}, "delivery_count": 1,
            "dead_letter_reason": "StraddleGaveUp" if "parked" in queue else "MaxDeliveryCountExceeded",
            "dead_letter_error_description": "gave up after 5 attempts: 400 about parked.person@example.test",
            "enqueued_time_utc": "2026-01-02T03:04:05+00:00"}


def test_dlq_list_and_replay_through_the_local_host(cli, local_host):
    local_host.dead = {"straddle-changes": [dead_letter(1, "straddle-changes")],
                       "straddle-changes-parked": [dead_letter(2, "parked"), dead_letter(3, "parked")]}
    code, out, _ = cli("dlq", "list")
    assert code == 0 and out.count("contact_changed") == 3 and "StraddleGaveUp: gave up after 5 attempts" in out
    code, out, _ = cli("--json", "dlq", "list", "--max", "2")
    data = json.loads(out)
    assert data["queues"] == ["straddle-changes", "straddle-changes-parked"]
    assert [d["message_id"] for d in data["dead_letters"]] == ["ev1", "ev2"]
    assert set(data["dead_letters"][0]) == {"queue", "message_id", "sequence_number", "event_id", "kind", "reason",
                                            "description", "enqueued_time", "attempt"}
    code, out, _ = cli("--json", "dlq", "replay", "--max", "2")
    assert code == 0 and json.loads(out) == {"replayed": 2, "skipped": 0, "messages": [], "to": "straddle-changes"}
    assert local_host.replays == [("straddle-changes", 1), ("straddle-changes-parked", 1)]
    code, out, _ = cli("dlq", "replay")
    assert code == 0 and out.startswith("replayed 1 message(s) to straddle-changes")
    code, out, _ = cli("dlq", "list")
    assert code == 0 and "no dead letters" in out


def test_dlq_unreachable_or_refused_is_one_line_and_exit_1(cli, monkeypatch, local_host):
    monkeypatch.setenv("STRADDLE_LOCAL_HOST", "http://127.0.0.1:9")
    code, out, err = cli("dlq", "list")
    assert code == 1 and out == "" and "unreachable" in err
    one_line_error(err)
    monkeypatch.setenv("STRADDLE_LOCAL_HOST", local_host.url)
    monkeypatch.setenv("STRADDLE_LOCAL_HOST_KEY", "wrong")
    code, _, err = cli("dlq", "replay")
    assert code == 1 and "refused the master key" in err
    one_line_error(err)


# --- doctor --------------------------------------------------------------------------------------

def test_doctor_passes_on_a_healthy_stack_and_says_what_to_fix(cli, local_host):
    local_host.dead = {}
    code, out, _ = cli("doctor")
    assert code == 1  # no webhooks registered yet
    assert "FAIL  webhooks: no Straddle service endpoint registered" in out
    assert "fix: straddle webhooks register --url" in out and "1 check(s) failed" in out
    assert cli("webhooks", "register", "--url", HOOK_URL, "--function-key", "k")[0] == 0
    code, out, _ = cli("--json", "doctor")
    data = json.loads(out)
    assert code == 0 and data["ok"] is True
    assert [c["check"] for c in data["checks"]] == [
        "settings", "dataverse token", "whoami", "read contacts", "read leads", "read lists", "read consent rows",
        "read purposes", "read topics", "write consent rows", "write contact flags", "remove list members",
        "table storage", "mappings", "webhooks", "service bus"]
    assert all(c["status"] == "pass" for c in data["checks"]) and set(data["checks"][0]) == {"check", "status",
                                                                                            "detail", "fix"}
    assert data["checks"][5]["detail"].startswith("Outbound marketing columns present")
    code, out, _ = cli("doctor")
    assert code == 0 and out.count("PASS") == 16 and "all checks passed" in out
    cli("webhooks", "remove", "--yes")


def test_doctor_says_which_way_members_leave_lists(cli, stack):
    def removal_check() -> dict:
        data = json.loads(cli("--json", "doctor")[1])
        return next(c for c in data["checks"] if c["check"] == "remove list members")

    check = removal_check()
    assert check["status"] == "pass" and check["detail"].startswith("RemoveMemberList action offered")
    stack.sandbox.store.without_remove_member_action = True  # an environment created without Dynamics 365 apps
    try:
        check = removal_check()
        assert check["status"] == "pass" and "no RemoveMemberList action" in check["detail"]
        assert "DELETE listmembers(id)" in check["detail"]
    finally:
        stack.sandbox.store.without_remove_member_action = False


def test_doctor_reports_bad_settings_and_an_unreachable_dataverse(cli, monkeypatch, azurite_tables, local_host):
    from shared.adapters.settings import Settings

    bootstrap.reset_container(None)
    monkeypatch.setenv("DATAVERSE_PAGE_SIZE", "lots")
    code, out, _ = cli("--json", "doctor")
    data = json.loads(out)
    assert code == 1 and data["ok"] is False and data["checks"][0]["check"] == "settings"
    assert "DATAVERSE_PAGE_SIZE is malformed" in data["checks"][0]["detail"]
    monkeypatch.delenv("DATAVERSE_PAGE_SIZE")
    bootstrap.reset_container(bootstrap.Container(Settings.from_env({
        "DATAVERSE_URL": "http://127.0.0.1:9", "DATAVERSE_ACCESS_TOKEN": "t", "DATAVERSE_RETRY_BUDGET_SECONDS": "0.2",
        "DATAVERSE_TIMEOUT_SECONDS": "1", "AzureWebJobsStorage": azurite_tables, "TABLE_PREFIX": "tdoctorprobe",
        "LEDGER_KEY": STRONG_KEY})))
    code, out, _ = cli("doctor")
    assert code == 1
    assert "FAIL  settings: missing ServiceBusConnection__fullyQualifiedNamespace" in out
    assert "FAIL  whoami: cannot reach Dataverse at http://127.0.0.1:9 (connection refused)" in out
    assert "fix: check DATAVERSE_URL" in out and "application user" not in out  # not an access problem
    assert "SKIP  read contacts" in out
    assert "PASS  table storage" in out and "FAIL  mappings: no mappings imported" in out
    assert "SKIP  service bus: not configured" in out
    monkeypatch.setenv("STRADDLE_LOCAL_HOST", local_host.url)  # the local host stands in for Service Bus
    monkeypatch.setenv("STRADDLE_LOCAL_HOST_KEY", FakeLocalHost.KEY)
    local_host.dead = {}
    code, out, _ = cli("doctor")
    assert "PASS  settings" in out and "PASS  service bus: reached straddle-changes, straddle-changes-parked" in out


# --- failures of the outside world ---------------------------------------------------------------

def test_dataverse_failure_is_one_line_and_exit_1(cli, azurite_tables):
    from shared.adapters.settings import Settings

    bootstrap.reset_container(bootstrap.Container(Settings.from_env({
        "DATAVERSE_URL": "http://127.0.0.1:9", "DATAVERSE_ACCESS_TOKEN": "t", "DATAVERSE_RETRY_BUDGET_SECONDS": "0.2",
        "DATAVERSE_TIMEOUT_SECONDS": "1", "AzureWebJobsStorage": azurite_tables, "TABLE_PREFIX": "tdoctorprobe",
        "LEDGER_KEY": STRONG_KEY})))
    for argv in (["webhooks", "status"], ["mappings", "discover"], ["explain", BO]):
        code, out, err = cli(*argv)
        assert code == 1 and out == "" and "Dataverse" in err, argv
        one_line_error(err)


def test_missing_settings_are_exit_2(cli):
    from shared.adapters.settings import Settings

    bootstrap.reset_container(bootstrap.Container(Settings.from_env({})))
    for argv in (["webhooks", "status"], ["explain", BO], ["dlq", "list"], ["mappings", "export"]):
        code, out, err = cli(*argv)
        assert code == 2 and out == "" and "missing app setting" in err, argv
        one_line_error(err)


def test_global_flags_also_after_the_command(cli):
    code, out, _ = cli("mappings", "discover", "--json")
    assert code == 0 and json.loads(out)["mode"] == "multi-brand"
    code, out, _ = cli("webhooks", "status", "--json")
    assert code == 1 and json.loads(out)["ok"] is False


def test_reconcile_dry_run_then_heal(cli, stack):
    code, out, _ = cli("reconcile", "--dry-run", "--json")
    report = json.loads(out)
    assert code == 0 and report["dry_run"] is True and report["found_D1"] >= 1 and report["drift_fixed"] == 0
    mismatches = report["mismatches"]  # the summary by class an operator hands to compliance
    d1 = next(c for c in mismatches["by_class"] if c["class"] == "D1")
    assert d1["found"] == d1["open"] == report["found_D1"] and d1["fixed"] == 0 and d1["missed_rule"] == "R2"
    assert mismatches["dry_run"] is True and mismatches["open"] == mismatches["found"] >= 1
    assert [c["class"] for c in mismatches["by_class"]] == ["D1", "D2", "D3", "D4", "D5"]
    assert gid("bo") in stack.members_of(L_NEWS)  # nothing written
    code, out, _ = cli("reconcile")
    assert code == 0 and "healing" in out and "D1 list member opted out" in out
    assert f"mismatches D1-D5: {mismatches['found']} found, {mismatches['found']} fixed, 0 open" in out
    assert gid("bo") not in stack.members_of(L_NEWS)
    code, out, _ = cli("reconcile", "--dry-run", "--json")
    assert json.loads(out)["drift_found"] == 0


def test_doctor_fails_on_an_unresolved_key_vault_reference_and_says_how_to_fix_it(cli, monkeypatch):
    bootstrap.reset_container(None)
    monkeypatch.setenv("LEDGER_KEY", "@Microsoft.KeyVault(VaultName=kv-straddle;SecretName=ledger-key)")
    code, out, _ = cli("--json", "doctor")
    (check,) = json.loads(out)["checks"]
    assert code == 1 and check["check"] == "settings" and check["status"] == "fail"
    assert "LEDGER_KEY is misconfigured" in check["detail"] and "unresolved Key Vault reference" in check["detail"]
    assert "Key Vault Secrets User" in check["fix"] and "restart" in check["fix"]
