"""Commands that change the tenant preview and confirm: webhooks remove asks (or needs --yes),
webhooks register and dlq replay have --dry-run, mappings import shows the difference from the
stored mappings. Same stack and fixtures as test_cli."""
from __future__ import annotations

import json

import pytest

from tests.integration.test_cli import (HOOK_URL, FakeLocalHost, cli, dead_letter, local_host,  # noqa: F401
                                        narrow_and_disable_steps, stack)
from tests.integration.tenant import mappings_file

pytestmark = pytest.mark.integration


def registered(stack) -> int:
    return len(stack.rows("serviceendpoint"))


def test_webhooks_remove_asks_or_needs_yes(cli, stack, monkeypatch):
    assert cli("webhooks", "register", "--url", HOOK_URL, "--function-key", "k")[0] == 0
    code, out, err = cli("webhooks", "remove")  # standard input is not a terminal here
    assert code == 2 and out == "" and registered(stack) == 1
    assert "webhooks remove deletes the endpoint Straddle (http://127.0.0.1:9/api/dataverse/webhook) and its 11 " \
           "step(s)" in err and "the sync stops" in err and "pass --yes to confirm" in err
    monkeypatch.setattr("sys.stdin.isatty", lambda: True)
    monkeypatch.setattr("builtins.input", lambda prompt: "n")
    code, out, err = cli("webhooks", "remove")
    assert code == 1 and "not removed" in err and registered(stack) == 1
    monkeypatch.setattr("builtins.input", lambda prompt: "y")
    code, out, _ = cli("webhooks", "remove")
    assert code == 0 and "removed" in out and registered(stack) == 0
    assert cli("webhooks", "remove")[1].strip() == "nothing registered"


def test_webhooks_register_dry_run_shows_exactly_what_would_change(cli, stack):
    code, out, _ = cli("webhooks", "register", "--url", HOOK_URL, "--function-key", "k", "--dry-run")
    assert code == 0 and registered(stack) == 0
    lines = out.strip().splitlines()
    assert lines[0] == "dry run: nothing written; register would:"
    assert lines[1] == f"  create  endpoint Straddle  ({HOOK_URL} (WebhookKey))"
    assert "  create  step Create contact  (with its image)" in lines
    assert "  create  step AddMember list" in lines
    assert sum(line.startswith("  create  step") for line in lines) == 11
    assert cli("webhooks", "register", "--url", HOOK_URL, "--function-key", "k")[0] == 0
    update_contact = narrow_and_disable_steps(stack)
    code, out, _ = cli("--json", "webhooks", "register", "--url", HOOK_URL + "2", "--function-key", "k", "--dry-run")
    changes = json.loads(out)["changes"]
    assert changes == [
        {"action": "update", "what": "endpoint Straddle",
         "detail": f"URL {HOOK_URL} -> {HOOK_URL}2; authentication rewritten (WebhookKey; a key cannot be read back "
                   "to compare)"},
        {"action": "update", "what": "step Update contact", "detail": "filtering attributes differ"},
        {"action": "leave", "what": "step Delete lead",
         "detail": "disabled: register does not enable it; enable it in Dataverse if it should run"}]
    assert stack.rows("sdkmessageprocessingstep")[update_contact]["filteringattributes"] == "emailaddress1"  # unwritten
    cli("webhooks", "remove", "--yes")


def test_dlq_replay_dry_run_lists_and_moves_nothing(cli, local_host, monkeypatch):
    monkeypatch.setenv("STRADDLE_LOCAL_HOST", local_host.url)
    monkeypatch.setenv("STRADDLE_LOCAL_HOST_KEY", FakeLocalHost.KEY)
    local_host.dead = {"straddle-changes": [dead_letter(1, "straddle-changes")],
                       "straddle-changes-parked": [dead_letter(2, "parked"), dead_letter(3, "parked")]}
    local_host.replays.clear()
    code, out, _ = cli("dlq", "replay", "--dry-run", "--max", "2")
    assert code == 0 and local_host.replays == []
    assert out.splitlines() == ["dry run: would replay 2 message(s) to straddle-changes",
                                "  straddle-changes  ev1  contact_changed  MaxDeliveryCountExceeded",
                                "  straddle-changes-parked  ev2  contact_changed  StraddleGaveUp"]
    code, out, _ = cli("--json", "dlq", "replay", "--dry-run")
    data = json.loads(out)
    assert [d["message_id"] for d in data["would_replay"]] == ["ev1", "ev2", "ev3"] and data["would_skip"] == 0
    assert len(local_host.dead["straddle-changes-parked"]) == 2


def test_mappings_import_shows_the_difference_from_the_stored_mappings(cli, tmp_path):
    source = tmp_path / "m.json"
    source.write_text(json.dumps(mappings_file("multi-brand")))
    assert cli("mappings", "import", str(source))[0] == 0
    code, out, _ = cli("mappings", "import", str(source), "--dry-run")
    assert code == 0 and "  same as the stored mappings" in out
    changed = mappings_file("multi-brand")
    changed["brands"][0]["lists"] = changed["brands"][0]["lists"][:1]
    changed["brands"][1]["opt_out_list"] = None
    source.write_text(json.dumps(changed))
    code, out, _ = cli("mappings", "import", str(source), "--dry-run")
    assert code == 0
    assert out.splitlines()[1:] == ["  changes against the stored mappings (nothing stored):",
                                    "    [Contoso] - 'Contoso Event Leads' -> 'Contoso Events'",
                                    "    [Fabrikam] opt-out list 'Fabrikam Opt-out' -> none"]
    code, out, _ = cli("mappings", "export")
    assert json.loads(out)["brands"][1]["opt_out_list"] == "Fabrikam Opt-out"  # the dry run stored nothing
    code, out, _ = cli("--json", "mappings", "import", str(source))
    assert json.loads(out)["changes"] == ["[Contoso] - 'Contoso Event Leads' -> 'Contoso Events'",
                                          "[Fabrikam] opt-out list 'Fabrikam Opt-out' -> none"]
    source.write_text(json.dumps(mappings_file("multi-brand")))
    assert cli("mappings", "import", str(source))[0] == 0  # the module's stack expects multi-brand
