"""Webhooks from the Dataverse sandbox: registered through the Web API, delivered over HTTP to a
local receiver, shaped like Microsoft's documented sample and parsed by our own parser."""
from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from sandbox.dataverse import SandboxServer
from shared.ingest.notification import parse_notification

pytestmark = pytest.mark.integration

SAMPLE = json.loads((Path(__file__).parents[1] / "fixtures" / "notifications" / "sample_update_contact.json").read_text())
PURPOSE = "10000000-0000-0000-0000-000000000003"


class Receiver:
    def __init__(self):
        self.calls: list[dict] = []
        self.fail_next: list[int] = []
        outer = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.calls.append({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()},
                                    "body": body})
                status = outer.fail_next.pop(0) if outer.fail_next else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def receiver():
    r = Receiver()
    yield r
    r.httpd.shutdown()


@pytest.fixture
def env(receiver):
    with SandboxServer(port=0) as srv:
        receiver.calls.clear()
        s = requests.Session()
        s.headers["Authorization"] = "Bearer sync-app"
        s.base = srv.api_url
        yield srv, s, receiver


def _id(resp):
    assert resp.status_code in (200, 204), resp.text
    return re.search(r"\(([0-9a-f-]{36})\)$", resp.headers["OData-EntityId"]).group(1)


def register(api, url, message, table, *, authtype=4, authvalue="fn-key", filtering=None, image_attrs=None):
    ep = _id(api.post(f"{api.base}/serviceendpoints", json={
        "name": f"straddle {message} {table}", "contract": 8, "url": url, "authtype": authtype,
        "authvalue": authvalue, "messageformat": 2}))
    msg = api.get(f"{api.base}/sdkmessages", params={"$filter": f"name eq '{message}'",
                                                     "$select": "sdkmessageid"}).json()["value"][0]["sdkmessageid"]
    step = {"name": f"straddle {message}", "stage": 40, "mode": 1, "rank": 1, "supporteddeployment": 0,
            "asyncautodelete": False,
            "sdkmessageid@odata.bind": f"/sdkmessages({msg})",
            "eventhandler_serviceendpoint@odata.bind": f"/serviceendpoints({ep})"}
    if table:
        flt = api.get(f"{api.base}/sdkmessagefilters", params={
            "$filter": f"primaryobjecttypecode eq '{table}' and _sdkmessageid_value eq {msg}"}).json()["value"]
        step["sdkmessagefilterid@odata.bind"] = f"/sdkmessagefilters({flt[0]['sdkmessagefilterid']})"
    if filtering:
        step["filteringattributes"] = filtering
    sid = _id(api.post(f"{api.base}/sdkmessageprocessingsteps", json=step))
    if image_attrs is not None:
        _id(api.post(f"{api.base}/sdkmessageprocessingstepimages", json={
            "name": "post", "entityalias": "post", "imagetype": 1, "attributes": image_attrs,
            "messagepropertyname": "Id" if message == "Delete" else "Target",
            "sdkmessageprocessingstepid@odata.bind": f"/sdkmessageprocessingsteps({sid})"}))
    return sid


def _kv(pairs):
    return {p["key"]: p["value"] for p in pairs}


def test_update_notification_matches_the_documented_sample(env):
    srv, api, rx = env
    cid = _id(api.post(f"{api.base}/contacts", json={"firstname": "James", "emailaddress1": "j@x.org"}))
    register(api, rx.url + "/api/dataverse", "Update", "contact", filtering="donotbulkemail,emailaddress1",
             image_attrs="emailaddress1,emailaddress2,donotbulkemail,donotemail")
    assert api.patch(f"{api.base}/contacts({cid})", json={"donotbulkemail": True}).status_code == 204
    assert api.patch(f"{api.base}/contacts({cid})", json={"firstname": "Jim"}).status_code == 204  # filtered out
    assert srv.wait_for_webhooks(5)
    assert len(rx.calls) == 1
    call = rx.calls[0]
    assert call["path"] == "/api/dataverse?code=fn-key"
    h = call["headers"]
    assert h["x-ms-dynamics-request-name"] == "Update" and h["x-ms-dynamics-entity-name"] == "contact"
    assert h["x-ms-dynamics-organization"] and re.match(r"^[0-9a-f-]{36}$", h["x-ms-correlation-request-id"])
    assert b"\\/Date(" in call["body"]  # slashes escaped like Dataverse's serializer
    body = json.loads(call["body"])
    assert set(body) == set(SAMPLE)
    for key, value in SAMPLE.items():
        if value is not None and key != "RequestId":
            assert type(body[key]) is type(value), key
    assert set(body["ParentContext"]) == set(SAMPLE["ParentContext"])
    assert body["MessageName"] == "Update" and body["Stage"] == 40 and body["Mode"] == 1
    assert body["PrimaryEntityName"] == "contact" and body["PrimaryEntityId"] == cid
    whoami = api.get(f"{api.base}/WhoAmI").json()["UserId"]
    assert body["UserId"] == body["InitiatingUserId"] == whoami
    assert re.match(r"^/Date\(\d+\)/$", body["OperationCreatedOn"])
    target = _kv(body["InputParameters"])["Target"]
    sample_target = _kv(SAMPLE["InputParameters"])["Target"]
    assert set(target) == set(sample_target) and target["__type"] == sample_target["__type"]
    attrs = _kv(target["Attributes"])
    assert set(attrs) == {"donotbulkemail", "contactid", "modifiedon", "modifiedby", "modifiedonbehalfby"}
    assert attrs["donotbulkemail"] is True and attrs["contactid"] == cid
    assert set(attrs["modifiedby"]) == set(_kv(sample_target["Attributes"])["modifiedby"])
    post = _kv(body["PostEntityImages"])["post"]
    assert set(post) == set(_kv(SAMPLE["PostEntityImages"])["AsynchronousStepPrimaryName"])
    assert _kv(post["Attributes"]) == {"emailaddress1": "j@x.org", "donotbulkemail": True, "contactid": cid}
    event = parse_notification(call["body"], h)
    assert event.change.kind == "contact_changed" and event.change.donotbulkemail is True
    assert event.origin.initiating_user_id == whoami
    log = requests.get(f"{srv.url}/_sandbox/notifications").json()["value"]
    assert [(n["message"], n["entity"], n["status"]) for n in log] == [("Update", "contact", 200)]
    assert "code=" not in log[0]["url"]


def test_consent_create_and_update_carry_option_sets_and_lookups(env):
    srv, api, rx = env
    api.post(f"{api.base}/msdynmkt_purposes", json={"msdynmkt_purposeid": PURPOSE, "msdynmkt_name": "Commercial"})
    register(api, rx.url + "/c", "Create", "msdynmkt_contactpointconsent4", authtype=5,
             authvalue='<settings><setting name="x-key" value="secret" /></settings>', image_attrs="")
    register(api, rx.url + "/u", "Update", "msdynmkt_contactpointconsent4", authtype=6,
             authvalue='<settings><setting name="k" value="v w" /></settings>', filtering="msdynmkt_value",
             image_attrs="msdynmkt_contactpointvalue,msdynmkt_contactpointtype,msdynmkt_purposeid,msdynmkt_topicid")
    rid = _id(api.post(f"{api.base}/msdynmkt_contactpointconsent4s", json={
        "msdynmkt_contactpointvalue": "a@x.org", "msdynmkt_contactpointtype": 534120000,
        "msdynmkt_contactpointconsenttype": 534120000, "msdynmkt_value": 534120001,
        "msdynmkt_purposeId@odata.bind": f"/msdynmkt_purposes({PURPOSE})"}))
    api.patch(f"{api.base}/msdynmkt_contactpointconsent4s({rid})", json={"msdynmkt_value": 534120002},
              headers={"If-Match": "*"})
    srv.wait_for_webhooks(5)
    create, update = rx.calls
    assert create["path"] == "/c" and create["headers"]["x-key"] == "secret"
    assert update["path"] == "/u?k=v+w"
    c = json.loads(create["body"])
    attrs = _kv(_kv(c["InputParameters"])["Target"]["Attributes"])
    assert attrs["msdynmkt_value"] == {"__type": "OptionSetValue:http://schemas.microsoft.com/xrm/2011/Contracts",
                                       "Value": 534120001}
    assert attrs["msdynmkt_purposeid"]["Id"] == PURPOSE and attrs["msdynmkt_purposeid"]["LogicalName"] == "msdynmkt_purpose"
    assert _kv(c["OutputParameters"]) == {"id": rid}
    assert parse_notification(create["body"], create["headers"]).__class__.__name__ == "Irrelevant"  # opted in
    ev = parse_notification(update["body"], update["headers"])
    assert ev.change.kind == "consent_changed" and ev.change.value == 534120002
    assert ev.change.contact_point_value == "a@x.org" and ev.change.purpose_id == PURPOSE


def test_membership_messages(env):
    srv, api, rx = env
    lid = _id(api.post(f"{api.base}/lists", json={"listname": "News", "createdfromcode": 2, "type": False,
                                                  "msdyncrm_issubscription": True}))
    cid = _id(api.post(f"{api.base}/contacts", json={"emailaddress1": "m@x.org"}))
    for m in ("Associate", "Disassociate"):
        register(api, rx.url + "/m", m, None)
    for m in ("AddMember", "RemoveMember", "AddListMembers"):
        register(api, rx.url + "/m", m, "list")
    # Refused $ref writes change nothing and raise nothing; the list actions raise their messages.
    assert api.post(f"{api.base}/lists({lid})/listcontact_association/$ref",
                    json={"@odata.id": f"/contacts({cid})"}).status_code == 400
    assert api.delete(f"{api.base}/lists({lid})/listcontact_association({cid})/$ref").status_code == 400
    api.post(f"{api.base}/lists({lid})/Microsoft.Dynamics.CRM.AddMemberList", json={"EntityId": cid})
    api.post(f"{api.base}/lists({lid})/Microsoft.Dynamics.CRM.RemoveMemberList", json={"EntityId": cid})
    assert api.post(f"{api.base}/AddListMembersList", json={
        "List": {"@odata.type": "Microsoft.Dynamics.CRM.list", "listid": lid},
        "Members": [{"@odata.type": "Microsoft.Dynamics.CRM.contact", "contactid": cid}]}).status_code == 204
    srv.wait_for_webhooks(5)
    bodies = [json.loads(c["body"]) for c in rx.calls]
    assert [b["MessageName"] for b in bodies] == ["AddMember", "RemoveMember", "AddListMembers"]
    assert _kv(bodies[0]["InputParameters"]) == {"ListId": lid, "EntityId": cid}
    assert _kv(bodies[1]["InputParameters"]) == {"ListId": lid, "EntityId": cid}
    assert _kv(bodies[2]["InputParameters"]) == {"ListId": lid, "MemberIds": [cid]}
    events = [parse_notification(c["body"], c["headers"]).change for c in rx.calls]
    assert [(e.kind, e.action) for e in events] == [("membership_changed", a) for a in ("added", "removed", "added")]
    assert all(e.list_ids == (lid,) and e.member_ids == (cid,) for e in events)


def test_delete_and_retry_and_failures_never_break_writes(env):
    srv, api, rx = env
    register(api, rx.url + "/d", "Delete", "contact")
    register(api, "http://127.0.0.1:9/unreachable", "Create", "contact")
    cid = _id(api.post(f"{api.base}/contacts", json={"emailaddress1": "d@x.org"}))  # endpoint down: write still fine
    rx.fail_next[:] = [503]
    assert api.delete(f"{api.base}/contacts({cid})").status_code == 204
    srv.wait_for_webhooks(10)
    deletes = [c for c in rx.calls if c["path"].startswith("/d?")]
    assert len(deletes) == 2 and deletes[0]["body"] == deletes[1]["body"]  # one retry on 503, same body
    assert parse_notification(deletes[1]["body"], deletes[1]["headers"]).change.kind == "record_deleted"
    log = {n["message"]: n for n in srv.notifications()}
    assert log["Delete"]["attempts"] == 2 and log["Create"]["status"] is None


def test_large_body_is_stripped_with_size_header(env):
    srv, api, rx = env
    register(api, rx.url + "/big", "Create", "contact")
    api.post(f"{api.base}/contacts", json={"emailaddress1": "big@x.org", "description": "x" * 300_000})
    srv.wait_for_webhooks(5)
    call = rx.calls[0]
    assert call["headers"]["x-ms-dynamics-msg-size-exceeded"] == "true" and len(call["body"]) < 256 * 1024
    body = json.loads(call["body"])
    assert body["InputParameters"] == [] and body["ParentContext"] is None
    assert parse_notification(call["body"], call["headers"]).change.kind == "reread_record"


def test_shuffle_and_duplicates(receiver):
    with SandboxServer(port=0, webhook_shuffle=True, webhook_duplicate_share=1.0, webhook_seed=3) as srv:
        receiver.calls.clear()
        api = requests.Session()
        api.headers["Authorization"] = "Bearer x"
        api.base = srv.api_url
        register(api, receiver.url + "/s", "Create", "contact")
        for i in range(20):
            api.post(f"{api.base}/contacts", json={"emailaddress1": f"s{i}@x.org"})
        srv.wait_for_webhooks(10)
        assert len(receiver.calls) == 40  # every delivery duplicated
        ids = [json.loads(c["body"])["PrimaryEntityId"] for c in receiver.calls]
        assert len(set(ids)) == 20
