"""The function app as the Functions host indexes it, and the queue and timer edges."""
from __future__ import annotations

import json
import logging
from datetime import datetime, timezone

import azure.functions as func
import pytest
from azure.functions.servicebus import ServiceBusMessage
from azure.functions.timer import TimerRequest

import function_app
from shared.adapters.settings import SettingsError
from shared.domain.events import ChangeEvent, Origin, RereadRecord
from tests import notifications as n


# The host indexes the app once; get_functions() may be called only once per FunctionApp.
FUNCTIONS = {f.get_function_name(): f for f in function_app.app.get_functions()}


def bindings():
    return {name: json.loads(f.get_function_json()) for name, f in FUNCTIONS.items()}


def test_exactly_the_five_functions_are_indexed():
    assert sorted(bindings()) == ["compliance_check", "dataverse_webhook", "nightly_reconcile", "process_changes",
                                  "reconcile_chunk"]


def test_webhook_binding():
    b = bindings()["dataverse_webhook"]["bindings"]
    trigger, = [x for x in b if x["type"] == "httpTrigger"]
    out, = [x for x in b if x["type"] == "http"]
    assert trigger["direction"] == "IN" and trigger["methods"] == ["POST"]
    assert trigger["authLevel"] == "FUNCTION" and trigger["route"] == "dataverse/webhook"
    assert out["direction"] == "OUT" and out["name"] == "$return"
    assert len(b) == 2


def test_queue_binding():
    b, = bindings()["process_changes"]["bindings"]
    assert b["type"] == "serviceBusTrigger" and b["direction"] == "IN"
    assert b["connection"] == "ServiceBusConnection" and b["queueName"] == "%CHANGES_QUEUE%"
    assert b["cardinality"] == "MANY" and b["name"] == "messages"


def test_reconcile_chunk_binding():
    b, = bindings()["reconcile_chunk"]["bindings"]
    assert b["type"] == "serviceBusTrigger" and b["queueName"] == "%RECONCILE_QUEUE%"
    assert b["connection"] == "ServiceBusConnection" and b.get("cardinality", "ONE") == "ONE"


def test_timer_binding():
    b, = bindings()["nightly_reconcile"]["bindings"]
    assert b["type"] == "timerTrigger" and b["schedule"] == "%RECONCILE_SCHEDULE%"
    assert b["runOnStartup"] is False and b["name"] == "timer"


def test_compliance_check_runs_hourly():
    b, = bindings()["compliance_check"]["bindings"]
    assert b["type"] == "timerTrigger" and b["schedule"] == "0 30 * * * *" and b["runOnStartup"] is False


def test_script_file_is_function_app():
    assert {v["scriptFile"] for v in bindings().values()} == {"function_app.py"}


def test_the_decorated_webhook_answers(app_container, fake_queue):
    app_container({}, fake_queue)
    req = func.HttpRequest("POST", "/api/dataverse/webhook", body=n.load_bytes("list_remove_member"))
    resp = FUNCTIONS["dataverse_webhook"].get_user_function()(req)
    assert resp.status_code == 202 and len(fake_queue.events) == 1


def sb_message(body: bytes, message_id: str = "m1", delivery_count: int = 1) -> ServiceBusMessage:
    return ServiceBusMessage(body=body, message_id=message_id, application_properties={}, user_properties={},
                             delivery_count=delivery_count, content_type="application/json",
                             enqueued_time_utc=datetime.now(timezone.utc))


EVENT = ChangeEvent("0b0b0b0b-1111-2222-3333-444455556666", "contact", n.CONTACT_ID, "Update",
                    Origin(None, None, None, None, None, None), RereadRecord("msg-size-exceeded"))


class RecordingEngine:
    def __init__(self):
        self.batches = []

    def process(self, incoming):
        from shared.service_layer.process_changes import BatchReport

        self.batches.append(list(incoming))
        return BatchReport()


def test_process_changes_hands_the_batch_to_the_engine(app_container, caplog):
    caplog.set_level(logging.INFO)
    engine = RecordingEngine()
    app_container({}).set_sync_engine(engine)
    retry = sb_message(EVENT.to_json().encode(), EVENT.id + ".3", 1)
    retry.application_properties["attempt"] = 3
    function_app.process_changes([sb_message(EVENT.to_json().encode(), EVENT.id, 2), retry])
    (batch,) = engine.batches
    assert [(m.message_id, m.attempt, m.body) for m in batch] == [
        (EVENT.id, 1, EVENT.to_json().encode()), (EVENT.id + ".3", 3, EVENT.to_json().encode())]
    assert any("process.batch messages=2" in r.getMessage() for r in caplog.records)


def test_process_changes_without_configuration_abandons_the_batch_after_a_pause(app_container, monkeypatch):
    # Raising makes the host abandon the messages: Service Bus redelivers them, nothing is lost;
    # the pause (doubling with the delivery count) keeps that from becoming a tight loop.
    import shared.entrypoints.functions

    pauses = []
    monkeypatch.setattr(shared.entrypoints.functions.time, "sleep", pauses.append)
    app_container({})
    with pytest.raises(SettingsError, match="AzureWebJobsStorage"):
        function_app.process_changes([sb_message(EVENT.to_json().encode(), EVENT.id)])
    with pytest.raises(SettingsError):
        function_app.process_changes([sb_message(EVENT.to_json().encode(), EVENT.id, delivery_count=4)])
    with pytest.raises(SettingsError):
        function_app.process_changes([sb_message(EVENT.to_json().encode(), EVENT.id, delivery_count=9)])
    assert pauses == [1.0, 8.0, shared.entrypoints.functions.ABANDON_PAUSE_MAX_SECONDS]


def test_process_changes_accepts_every_produced_event(fake_queue, app_container):
    engine = RecordingEngine()
    app_container({}).set_sync_engine(engine)
    from shared.ingest.webhook import WebhookConfig, accept_notification

    for name, (_, headers, status, _) in n.FIXTURES.items():
        if status == 202:
            accept_notification(n.load_bytes(name), headers, WebhookConfig(), fake_queue)
    function_app.process_changes([sb_message(b, f"m{i}") for i, b in enumerate(fake_queue.bodies)])
    assert len(fake_queue.bodies) == sum(1 for v in n.FIXTURES.values() if v[2] == 202)
    assert [m.body for m in engine.batches[0]] == list(fake_queue.bodies)


def test_nightly_reconcile_without_configuration_fails_loudly(caplog, app_container):
    # The host records the failed run; the "no successful reconciliation" alert then fires.
    caplog.set_level(logging.INFO)
    app_container({})
    with pytest.raises(SettingsError):
        function_app.nightly_reconcile(TimerRequest(past_due=True))
    lines = [r.getMessage() for r in caplog.records if "reconcile." in r.getMessage()]
    assert lines == ["reconcile.triggered past_due=True", "reconcile.failed error=SettingsError"]


UNRESOLVED = "@Microsoft.KeyVault(VaultName=kv-straddle;SecretName=ledger-key)"


def test_an_unresolved_ledger_key_leaves_the_batch_unsettled(monkeypatch, caplog):
    # The reference text must never key the ledger: the batch is abandoned (redelivered later).
    from shared import bootstrap

    monkeypatch.setenv("LEDGER_KEY", UNRESOLVED)
    bootstrap.reset_container(None)
    engine_built = []
    monkeypatch.setattr(bootstrap.Container, "sync_engine", lambda self: engine_built.append(1))
    try:
        with pytest.raises(SettingsError, match="LEDGER_KEY is misconfigured"):
            function_app.process_changes([sb_message(EVENT.to_json().encode(), EVENT.id)])
    finally:
        bootstrap.reset_container(None)
    assert not engine_built
    assert any("process.misconfigured" in r.getMessage() and "LEDGER_KEY" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("name", ["WEBHOOK_SECRET", "LEDGER_KEY"])
def test_the_webhook_answers_503_with_retry_after_on_an_unresolved_reference(monkeypatch, name):
    from shared import bootstrap
    from tests.unit.test_webhook import RELEVANT, body_of, post

    monkeypatch.setenv("WEBHOOK_SECRET_HEADER", "x-straddle-secret")
    monkeypatch.setenv("WEBHOOK_SECRET", "a-resolved-webhook-secret-Xq7Rm2Kv9pLt")
    monkeypatch.setenv(name, UNRESOLVED.replace("ledger-key", name.lower()))
    bootstrap.reset_container(None)
    try:
        resp = post(RELEVANT, {"x-straddle-secret": "a-resolved-webhook-secret-Xq7Rm2Kv9pLt"})
    finally:
        bootstrap.reset_container(None)
    assert resp.status_code == 503 and resp.headers["Retry-After"].isdigit()
    assert body_of(resp)["error"]["code"] == "misconfigured"
    assert "KeyVault" not in resp.get_body().decode()  # the detail is in the log, not in the answer
