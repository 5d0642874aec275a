"""The CLI when the outside world is down or the settings are a trap: an unreachable Dataverse or
storage endpoint fails within seconds naming the URL and the fix (not after the 120 s retry
budget), no exception class name is the message, a closed pipe is not an error, a static dev token
is refused against a real environment, and doctor says where each setting came from."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shared import bootstrap
from shared.adapters.settings import Settings
from shared.entrypoints.cli import main

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
STRONG_KEY = "a-ledger-key-for-cli-tests-Xq7Rm2Kv9pLt"
CLASS_NAMES = ("DataverseUnavailable", "DataverseUnreachable", "DataverseAuthError", "ServiceRequestError",
               "ConnectionError", "Traceback", "invalid literal")
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def storage_at(port: int) -> str:
    return (f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={AZURITE_KEY};"
            f"TableEndpoint=http://127.0.0.1:{port}/devstoreaccount1;")


@pytest.fixture
def run(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    for name in ("STRADDLE_LOCAL_HOST", "STRADDLE_LOCAL_HOST_KEY", "STRADDLE_FUNCTION_KEY"):
        monkeypatch.delenv(name, raising=False)

    def run(settings: dict | None, *argv: str):
        if settings is not None:
            bootstrap.reset_container(bootstrap.Container(Settings.from_env(settings)))
        capsys.readouterr()
        started = time.monotonic()
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err, time.monotonic() - started

    yield run
    bootstrap.reset_container(None)


def test_an_unreachable_dataverse_fails_within_seconds_naming_the_url(run, azurite_tables, tmp_path):
    port = closed_port()
    # The default 120 s retry budget: a refused connection must not spend it.
    settings = {"DATAVERSE_URL": f"http://127.0.0.1:{port}", "DATAVERSE_ACCESS_TOKEN": "t",
                "AzureWebJobsStorage": azurite_tables, "TABLE_PREFIX": "tfailfast", "LEDGER_KEY": STRONG_KEY}
    mappings = tmp_path / "m.json"
    mappings.write_text(json.dumps({"mode": "single-brand", "brands": [{"name": "B", "purposes": ["P"]}]}))
    for argv in (["mappings", "import", str(mappings), "--dry-run"], ["webhooks", "status"], ["mappings", "discover"]):
        code, out, err, took = run(settings, *argv)
        assert code == 1 and out == "", argv
        assert took < 15, (argv, took)
        line, = err.strip().splitlines()
        assert line == (f"straddle: cannot reach Dataverse at http://127.0.0.1:{port} (connection refused); "
                        "check DATAVERSE_URL and the network; locally: start the stack with make keep"), line
    code, out, _, took = run(settings, "doctor")
    assert code == 1 and took < 15
    assert f"FAIL  whoami: cannot reach Dataverse at http://127.0.0.1:{port} (connection refused)" in out
    assert "application user" not in out and not any(n in out for n in CLASS_NAMES)


def test_unreachable_storage_fails_within_seconds_naming_the_endpoint(run):
    port = closed_port()
    settings = {"AzureWebJobsStorage": storage_at(port), "TABLE_PREFIX": "tfailfast", "LEDGER_KEY": STRONG_KEY}
    code, out, err, took = run(settings, "mappings", "export")
    assert code == 1 and out == "" and took < 15, took
    assert err.startswith(f"straddle: cannot reach Table Storage at http://127.0.0.1:{port}/devstoreaccount1; "
                          "check AzureWebJobsStorage"), err
    assert not any(n in err for n in CLASS_NAMES)
    code, out, _, took = run(settings, "doctor")
    assert took < 15 and f"FAIL  table storage: cannot reach Table Storage at http://127.0.0.1:{port}" in out


def test_a_refused_read_says_which_privilege_is_missing(run, monkeypatch):
    from shared.adapters.dataverse.errors import DataverseAuthError

    def refuse(*_a, **_k):
        raise DataverseAuthError("Principal user is missing prvReadList privilege", status=403,
                                 code="0x80040220", kind="GET lists")

    settings = {"DATAVERSE_URL": "http://127.0.0.1:9", "DATAVERSE_ACCESS_TOKEN": "t"}
    bootstrap.reset_container(bootstrap.Container(Settings.from_env(settings)))
    monkeypatch.setattr(bootstrap.container().dataverse(), "marketing_lists", refuse)
    code, out, err, _ = run(None, "mappings", "discover")
    assert code == 1 and err.strip() == ("straddle: Dataverse denied GET lists (HTTP 403, code 0x80040220); the "
                                         "application user's security role lacks a privilege "
                                         "(docs/dataverse-setup.md)")


def test_a_malformed_number_setting_says_what_was_expected(run, monkeypatch):
    bootstrap.reset_container(None)
    monkeypatch.setenv("MAX_ATTEMPTS", "five")
    code, out, err, _ = run(None, "mappings", "export")
    assert code == 2
    assert err.strip() == "straddle: MAX_ATTEMPTS is malformed: must be a positive whole number, got 'five'"


def test_a_static_dev_token_against_a_real_environment_needs_asking(run):
    real = {"DATAVERSE_URL": "https://contoso.crm.dynamics.com", "DATAVERSE_ACCESS_TOKEN": "local-dev-token"}
    code, out, err, _ = run(real, "webhooks", "status")
    assert code == 2 and out == ""
    assert "DATAVERSE_ACCESS_TOKEN (a static development token, from the environment)" in err
    assert "https://contoso.crm.dynamics.com" in err and "--allow-static-token" in err and "local-dev-token" not in err
    code, out, _, _ = run(real, "doctor")
    assert code == 1 and "FAIL  settings: DATAVERSE_ACCESS_TOKEN (a static development token" in out
    from shared.entrypoints.cli.common import allow_static_token, refuse_dev_token

    allow_static_token(True)  # what --allow-static-token sets
    try:
        refuse_dev_token(Settings.from_env(real))
    finally:
        allow_static_token(False)
    local = {**real, "DATAVERSE_URL": "http://localhost:7070"}
    code, _, err, _ = run(local, "--allow-static-token", "mappings", "export")
    assert "static development token" not in err  # a local sandbox, or asked explicitly: allowed


def test_doctor_lists_where_each_setting_came_from(run, monkeypatch, tmp_path):
    local = {"LEDGER_KEY": STRONG_KEY, "TABLE_PREFIX": "fromfile", "CHANGES_QUEUE": "q"}
    (tmp_path / "local.settings.json").write_text(json.dumps({"Values": {**local, "CHANGES_QUEUE": ""}}))
    for name in local:
        monkeypatch.delenv(name, raising=False)  # restored (unset) after the test
    monkeypatch.setenv("DATAVERSE_URL", "http://127.0.0.1:9")
    bootstrap.reset_container(None)
    code, out, _, _ = run(None, "--json", "doctor")
    sources = json.loads(out)["settings_sources"]
    path = str((tmp_path / "local.settings.json").resolve())
    assert sources["DATAVERSE_URL"] == "environment"
    assert sources["LEDGER_KEY"] == path and sources["TABLE_PREFIX"] == path and "CHANGES_QUEUE" not in sources
    bootstrap.reset_container(None)
    code, out, _, _ = run(None, "doctor")
    assert f"settings from {path}: LEDGER_KEY, TABLE_PREFIX" in out and "settings from environment: " in out


def test_a_reader_that_goes_away_is_not_an_error():
    # `straddle doctor | head -1`: the reader closes its end before the command writes.
    port = closed_port()
    env = {**os.environ, "DATAVERSE_URL": f"http://127.0.0.1:{port}", "DATAVERSE_ACCESS_TOKEN": "t",
           "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "shared", "doctor"], cwd=REPO / "docs", env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    proc.wait(timeout=60)
    assert "BrokenPipe" not in err and "Traceback" not in err and "Exception ignored" not in err, err


def test_wait_notice_says_why_a_command_waits():
    import io
    import logging

    from shared.entrypoints.cli.common import WaitNotice
    from shared.telemetry import emit

    stream = io.StringIO()
    log = logging.getLogger("test.wait.notice")
    log.addHandler(WaitNotice(stream))
    try:
        emit(log, "dataverse.retry", logging.WARNING, kind="GET contacts", reason="429", delay=12.4)
        emit(log, "dataverse.retry", logging.WARNING, kind="GET contacts", reason="503", delay=0.2)  # too short
        emit(log, "dataverse.retry", logging.WARNING, kind="POST $batch", reason="503", delay=3)
    finally:
        log.handlers.clear()
    assert stream.getvalue().splitlines() == [
        "waiting 12 s: Dataverse is throttling (GET contacts); retrying (Ctrl-C stops)",
        "waiting 3 s: Dataverse answered 503 (POST $batch); retrying (Ctrl-C stops)"]


def test_the_local_stack_keeps_its_settings_to_itself(tmp_path):
    # make run / make keep / the local host: the sample's values for the stack, no file left behind
    # for a later CLI run to pick up the dev token and ledger key from.
    from sandbox.host.host import load_settings

    target = tmp_path / "local.settings.json"
    values = load_settings(target, environ={})
    sample = json.loads((REPO / "local.settings.sample.json").read_text())["Values"]
    assert not target.exists()
    assert values["DATAVERSE_ACCESS_TOKEN"] == sample["DATAVERSE_ACCESS_TOKEN"] and values["LEDGER_KEY"]
