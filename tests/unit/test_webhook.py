"""HTTP status decisions of the webhook, through ``accept_notification`` and the real Functions edge."""
from __future__ import annotations

import copy
import json
import logging

import azure.functions as func
import pytest

from shared.domain.events import event_from_json
from shared.ingest.webhook import MAX_BODY_BYTES, WebhookConfig, accept_notification
from tests import notifications as n

SECRET_HEADER, SECRET = "x-straddle-key", "s3cret-value-0123456789-Xq7Rm2Kv9pLt"
OPEN = WebhookConfig()
LOCKED = WebhookConfig(SECRET_HEADER, SECRET)
RELEVANT = n.member_change("Update", "contact", {"donotbulkemail": True}, post={"emailaddress1": n.EMAIL})


def accept(body, queue, headers=None, config=OPEN):
    if isinstance(body, dict):
        body = n.to_bytes(body)
    return accept_notification(body, headers or {}, config, queue)


def post(body, headers=None):
    """Through the real edge: shared.entrypoints.functions.dataverse_webhook with a real azure.functions.HttpRequest."""
    from shared.entrypoints import functions as entry

    if isinstance(body, dict):
        body = n.to_bytes(body)
    req = func.HttpRequest("POST", "https://straddle.azurewebsites.net/api/dataverse/webhook", body=body,
                           headers={"Content-Type": "application/json", **(headers or {})}, params={"code": "k"})
    return entry.dataverse_webhook(req)


def body_of(resp: func.HttpResponse) -> dict:
    return json.loads(resp.get_body())


# --- accept_notification ---------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(k for k, v in n.FIXTURES.items() if v[2] == 202))
def test_relevant_fixture_is_enqueued_once_and_answered_202(name, fake_queue):
    _, headers, _, kind = n.FIXTURES[name]
    resp = accept(n.load_bytes(name), fake_queue, headers)
    assert resp.status == 202
    assert resp.body == {"status": "accepted", "event_id": fake_queue.events[0].id, "kind": kind}
    assert len(fake_queue.events) == 1
    assert event_from_json(fake_queue.bodies[0]) == fake_queue.events[0]
    sent = json.loads(fake_queue.bodies[0])
    assert sent["v"] == 1 and sent["kind"] == kind and sent["id"] == resp.body["event_id"]


@pytest.mark.parametrize("name", sorted(["sample_update_contact", *(k for k, v in n.FIXTURES.items() if v[2] == 200)]))
def test_irrelevant_fixture_is_answered_200_with_a_reason_and_not_enqueued(name, fake_queue):
    headers = n.FIXTURES[name][1] if name in n.FIXTURES else {}
    resp = accept(n.load_bytes(name), fake_queue, headers)
    assert resp.status == 200 and resp.body["status"] == "ignored" and resp.body["reason"]
    assert fake_queue.events == []


def test_the_expected_json_reaches_the_queue(fake_queue):
    accept(n.load_bytes("list_remove_member"), fake_queue)
    sent = json.loads(fake_queue.bodies[0])
    assert sent == {
        "v": 1, "id": sent["id"], "kind": "membership_changed", "table": "list", "record_id": n.LIST_ID,
        "message": "RemoveMember",
        "origin": {"time": "2017-09-26T07:04:08.000Z", "user_id": n.USER_ID, "initiating_user_id": n.USER_ID,
                   "correlation_id": n.CORRELATION_ID, "organization_id": n.ORG_ID, "depth": 1},
        "change": {"action": "removed", "list_ids": [n.LIST_ID], "member_ids": [n.CONTACT_ID], "member_table": None},
    }


def _mutate(ctx, **values):
    ctx = copy.deepcopy(ctx)
    for k, v in values.items():
        if v is KeyError:
            del ctx[k]
        else:
            ctx[k] = v
    return ctx


@pytest.mark.parametrize("body,path", [
    (b"{not json", "body"),
    (b"\xc3\x28", "body"),
    (_mutate(RELEVANT, MessageName=KeyError), "MessageName"),
    (_mutate(RELEVANT, PrimaryEntityName=KeyError), "PrimaryEntityName"),
    (_mutate(RELEVANT, PrimaryEntityId=KeyError), "PrimaryEntityId"),
    (_mutate(RELEVANT, InputParameters=[{"key": "ConcurrencyBehavior", "value": 0}]), "InputParameters.Target"),
    (_mutate(RELEVANT, Depth="1"), "Depth"),
    (_mutate(RELEVANT, InputParameters={"Target": None}), "InputParameters"),
    (_mutate(RELEVANT, PrimaryEntityId="6d81597f-0f9f-e711-8122-000d3aa2331"), "PrimaryEntityId"),
    (_mutate(RELEVANT, OperationCreatedOn="/Date(tomorrow)/"), "OperationCreatedOn"),
])
def test_malformed_is_400_naming_path_and_problem_and_nothing_is_enqueued(body, path, fake_queue):
    resp = accept(body, fake_queue)
    assert resp.status == 400
    assert resp.body["error"]["code"] == "invalid_notification"
    assert resp.body["error"]["message"].startswith(f"{path}: ")
    assert len(resp.body["error"]["message"]) > len(path) + 2
    assert fake_queue.events == []


def test_irrelevant_notifications_are_still_validated(fake_queue):
    resp = accept(_mutate(n.load("account_update"), Depth="deep"), fake_queue)
    assert resp.status == 400 and "Depth" in resp.body["error"]["message"]


def test_body_limit_is_one_mebibyte(fake_queue):
    big = n.to_bytes(RELEVANT)
    padded = big[:-1] + b"," + b'"Pad":"' + b"x" * (MAX_BODY_BYTES - len(big) - 9) + b'"}'
    assert len(padded) == MAX_BODY_BYTES
    assert accept(padded, fake_queue).status == 202
    fake_queue.clear()
    resp = accept(padded + b" ", fake_queue)
    assert resp.status == 413 and resp.body["error"]["code"] == "too_large"
    assert str(MAX_BODY_BYTES) in resp.body["error"]["message"]
    assert fake_queue.events == []


@pytest.mark.parametrize("headers", [{}, {SECRET_HEADER: ""}, {SECRET_HEADER: "wrong"}, {SECRET_HEADER: SECRET + "x"},
                                     {"x-other": SECRET}])
def test_secret_header_missing_or_wrong_is_401(headers, fake_queue):
    resp = accept(RELEVANT, fake_queue, headers, LOCKED)
    assert resp.status == 401 and resp.body["error"]["code"] == "unauthorized"
    assert SECRET_HEADER in resp.body["error"]["message"] and SECRET not in json.dumps(resp.body)
    assert fake_queue.events == []


def test_secret_is_checked_before_size_and_shape(fake_queue):
    assert accept(b"x" * (MAX_BODY_BYTES + 1), fake_queue, {}, LOCKED).status == 401
    assert accept(b"{", fake_queue, {}, LOCKED).status == 401


def test_right_secret_is_accepted(fake_queue):
    assert accept(RELEVANT, fake_queue, {SECRET_HEADER: SECRET}, LOCKED).status == 202
    assert len(fake_queue.events) == 1


def test_queue_unavailable_is_503_with_retry_after(fake_queue):
    fake_queue.fail = "Service Bus did not take the message (ServiceBusConnectionError)"
    resp = accept(RELEVANT, fake_queue)
    assert resp.status == 503 and resp.headers.get("Retry-After", "").isdigit()
    assert resp.body["error"]["code"] == "queue_unavailable"


def test_queue_not_configured_is_503_but_irrelevant_is_still_200():
    resp = accept(RELEVANT, None)
    assert resp.status == 503 and resp.headers["Retry-After"].isdigit()
    assert accept(n.sample(), None).status == 200
    assert accept(b"{", None).status == 400


# --- determinism -----------------------------------------------------------------------------

def test_the_same_body_twice_gets_the_same_event_id(fake_queue):
    first = accept(RELEVANT, fake_queue)
    second = accept(RELEVANT, fake_queue)
    third = accept(n.to_bytes(RELEVANT, indent=2), fake_queue)  # whitespace and escaping do not matter
    assert first.body["event_id"] == second.body["event_id"] == third.body["event_id"]
    assert fake_queue.events[0] == fake_queue.events[1] == fake_queue.events[2]


def test_different_operations_get_different_ids(fake_queue):
    variants = [
        RELEVANT,
        _mutate(RELEVANT, OperationId="5bf10637-4ea2-e711-8122-000d3aa2331c"),
        _mutate(RELEVANT, CorrelationId="c374239d-4233-41a9-8b17-a86cb4f737b5"),
        _mutate(RELEVANT, OperationCreatedOn=n.date(1506409449000)),
        n.member_change("Update", "contact", {"donotbulkemail": True}, post={"emailaddress1": n.EMAIL}, record_id=n.CONTACT_ID_2),
        n.member_change("Update", "contact", {"donotemail": True}, post={"emailaddress1": n.EMAIL}),
        n.add_member(), n.remove_member(),
        n.association("Associate"), n.association("Disassociate"),
    ]
    ids = [accept(v, fake_queue).body["event_id"] for v in variants]
    assert len(set(ids)) == len(ids)


def test_every_fixture_has_a_distinct_event_id(fake_queue):
    for name, (_, headers, status, _) in n.FIXTURES.items():
        if status == 202:
            accept(n.load_bytes(name), fake_queue, headers)
    ids = [e.id for e in fake_queue.events]
    assert len(ids) == len(set(ids)) == sum(1 for v in n.FIXTURES.values() if v[2] == 202)


# --- no addresses in responses or logs -------------------------------------------------------

ECHO_BAITS = [
    _mutate(RELEVANT, PrimaryEntityId=n.EMAIL),
    _mutate(RELEVANT, MessageName=n.EMAIL),
    _mutate(RELEVANT, PrimaryEntityName=n.EMAIL),
    n.association("Associate", n.EMAIL),
    _mutate(RELEVANT, PostEntityImages=n.kv({n.EMAIL: "not an entity"})),
    n.member_change("Update", "contact", {"emailaddress1": {"address": n.EMAIL}}),
    n.consent("Create", {**n.consent_row(), "msdynmkt_purposeid": n.EMAIL}),
]


@pytest.mark.parametrize("ctx", ECHO_BAITS)
def test_responses_never_echo_an_address(ctx, fake_queue):
    resp = accept(ctx, fake_queue)
    assert resp.status in (200, 400)
    assert "@" not in json.dumps(resp.body)


@pytest.fixture
def plain_log_records():
    """No redaction safety net: what the code itself logs must already be address-free."""
    previous = logging.getLogRecordFactory()
    logging.setLogRecordFactory(logging.LogRecord)
    yield
    logging.setLogRecordFactory(previous)


def test_logs_never_carry_an_address(fake_queue, caplog, plain_log_records):
    caplog.set_level(logging.DEBUG)
    bodies = [n.load_bytes(name) for name in n.FIXTURES] + [n.to_bytes(c) for c in ECHO_BAITS]
    for body in bodies:
        accept(body, fake_queue)
    accept(n.to_bytes(RELEVANT), fake_queue, {}, LOCKED)
    assert caplog.records, "the webhook logs its decisions"
    text = "\n".join(r.getMessage() for r in caplog.records) + repr([r.__dict__ for r in caplog.records])
    for address in n.ADDRESSES:
        assert address not in text and address.lower() not in text.lower()
    assert "@" not in text


# --- the real edge (azure.functions.HttpRequest -> HttpResponse) ------------------------------

def test_edge_202_with_event_id(app_container, fake_queue):
    app_container({}, fake_queue)
    resp = post(n.load_bytes("contact_update_donotbulkemail"))
    assert resp.status_code == 202 and resp.mimetype == "application/json"
    assert body_of(resp)["event_id"] == fake_queue.events[0].id and len(fake_queue.events) == 1


def test_edge_the_documented_sample_is_200_ignored(app_container, fake_queue):
    app_container({}, fake_queue)
    resp = post(n.load_bytes("sample_update_contact"))
    assert resp.status_code == 200 and body_of(resp)["status"] == "ignored" and fake_queue.events == []


def test_edge_400_413(app_container, fake_queue):
    app_container({}, fake_queue)
    resp = post(_mutate(RELEVANT, Depth="1"))
    assert resp.status_code == 400 and body_of(resp)["error"]["message"].startswith("Depth: ")
    assert post(b"").status_code == 400
    assert post(b"{" + b" " * MAX_BODY_BYTES + b"}").status_code == 413
    assert fake_queue.events == []


def test_edge_reads_the_size_exceeded_header_case_insensitively(app_container, fake_queue):
    app_container({}, fake_queue)
    resp = post(n.load_bytes("size_exceeded_contact_update"), {"X-MS-Dynamics-Msg-Size-Exceeded": "true"})
    assert resp.status_code == 202 and fake_queue.events[0].kind == "reread_record"


def test_edge_secret_from_settings(app_container, fake_queue):
    app_container({"WEBHOOK_SECRET_HEADER": "X-Straddle-Key", "WEBHOOK_SECRET": SECRET}, fake_queue)
    assert post(RELEVANT).status_code == 401
    assert post(RELEVANT, {"X-Straddle-Key": "nope"}).status_code == 401
    assert fake_queue.events == []
    assert post(RELEVANT, {"X-Straddle-Key": SECRET}).status_code == 202
    assert len(fake_queue.events) == 1


def test_edge_503_when_the_queue_raises(app_container, fake_queue):
    app_container({}, fake_queue)
    fake_queue.fail = "down"
    resp = post(RELEVANT)
    assert resp.status_code == 503 and resp.headers["Retry-After"].isdigit()


def test_edge_503_when_service_bus_is_not_configured(app_container):
    app_container({})  # no ServiceBusConnection: the container cannot build a queue
    resp = post(RELEVANT)
    assert resp.status_code == 503 and resp.headers["Retry-After"].isdigit()
    assert body_of(resp)["error"]["code"] == "queue_unavailable"
    assert post(n.load_bytes("sample_update_contact")).status_code == 200


def test_edge_503_when_settings_are_malformed(monkeypatch):
    from shared import bootstrap

    monkeypatch.setenv("DATAVERSE_PAGE_SIZE", "0")
    bootstrap.reset_container(None)
    try:
        resp = post(RELEVANT)
    finally:
        bootstrap.reset_container(None)
    assert resp.status_code == 503 and body_of(resp)["error"]["code"] == "misconfigured"
    assert resp.headers["Retry-After"].isdigit()


def test_edge_a_bug_downstream_is_503_not_500(app_container):
    class Exploding:
        def send(self, events):
            raise RuntimeError("boom")

    app_container({}, Exploding())
    resp = post(RELEVANT)
    assert resp.status_code == 503 and "boom" not in resp.get_body().decode()


def test_edge_logs_carry_no_address(app_container, fake_queue, caplog):
    caplog.set_level(logging.DEBUG)
    app_container({}, fake_queue)
    for name in n.FIXTURES:
        post(n.load_bytes(name), n.FIXTURES[name][1])
    for ctx in ECHO_BAITS:
        post(ctx)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "webhook." in text and "@" not in text
