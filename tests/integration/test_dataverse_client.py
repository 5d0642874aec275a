"""The Dataverse client against the sandbox over real HTTP (sandbox/dataverse).

One sandbox serves the module; each test uses its own rows (or its own server where it needs
limits), so the tests do not depend on each other's order.
"""
from __future__ import annotations

import gc
import time
import tracemalloc
import uuid

import pytest
import requests

pytest.importorskip("sandbox.dataverse")
from sandbox.dataverse import SandboxServer  # noqa: E402

from shared.adapters.dataverse import (DataverseAuthError, DataverseClient, DataverseNotFound, StaticToken,  # noqa: E402
                                       StepSpec)
from shared.domain.consent import ConsentType, ConsentValue, ContactPointType, ConsentSource  # noqa: E402

pytestmark = pytest.mark.integration

NS = uuid.UUID("0f0e7c55-2f6b-4b1a-9e3e-5a1cbbd1c0de")
PURPOSE = "10000000-0000-0000-0000-000000000003"


def gid(name: str) -> str:
    return str(uuid.uuid5(NS, name))


CONTACTS = 2500
LEADS = 12_000
NEWS, OFFERS, LEADLIST = gid("list:news"), gid("list:offers"), gid("list:leads")
TOPIC_NEWS, TOPIC_OFFERS = gid("topic:news"), gid("topic:offers")


def email(i: int) -> str:
    # Mixed case, an apostrophe and a plus: the filter must quote and encode them.
    return f"Person.O'Neil+{i}@Example.com" if i % 7 == 0 else f"person{i}@example.com"


def seed() -> dict:
    contacts = [{"contactid": gid(f"c{i}"), "emailaddress1": email(i), "statecode": 1 if i % 50 == 0 else 0,
                 "donotbulkemail": i % 3 == 0} for i in range(CONTACTS)]
    contacts.append({"contactid": gid("c-second"), "emailaddress2": email(1), "emailaddress1": "other@example.com"})
    leads = [{"leadid": gid(f"l{i}"), "emailaddress1": f"lead{i}@example.com", "subject": "x" * 40}
             for i in range(LEADS)]
    consents = []
    for i in range(40):
        consents.append({"msdynmkt_contactpointvalue": email(i).lower(), "msdynmkt_contactpointtype": 534120000,
                         "msdynmkt_contactpointconsenttype": 534120001, "msdynmkt_value": 534120002,
                         "msdynmkt_purposeId@odata.bind": f"/msdynmkt_purposes({PURPOSE})",
                         "msdynmkt_topicId@odata.bind": f"/msdynmkt_topics({TOPIC_NEWS})"})
    consents.append(dict(consents[0], statecode=1))  # an inactive duplicate
    return {
        "purposes": [{"msdynmkt_purposeid": PURPOSE, "msdynmkt_name": "Commercial", "msdynmkt_type": 534120000}],
        "topics": [{"msdynmkt_topicid": TOPIC_NEWS, "msdynmkt_name": "Newsletter",
                    "msdynmkt_purposeId@odata.bind": f"/msdynmkt_purposes({PURPOSE})"},
                   {"msdynmkt_topicid": TOPIC_OFFERS, "msdynmkt_name": "Offers",
                    "msdynmkt_purposeId@odata.bind": f"/msdynmkt_purposes({PURPOSE})"}],
        "contacts": contacts,
        "leads": leads,
        "lists": [{"listid": NEWS, "listname": "News", "msdyncrm_issubscription": True, "type": False,
                   "createdfromcode": 2},
                  {"listid": OFFERS, "listname": "Offers", "msdyncrm_issubscription": True, "type": False,
                   "createdfromcode": 2},
                  {"listid": LEADLIST, "listname": "Lead list", "msdyncrm_issubscription": False, "type": False,
                   "createdfromcode": 4}],
        "list_members": {NEWS: [gid(f"c{i}") for i in range(0, 300)], OFFERS: [gid(f"c{i}") for i in range(0, 10)],
                         LEADLIST: [gid(f"l{i}") for i in range(5)]},
        "msdynmkt_contactpointconsent4s": consents,
    }


@pytest.fixture(scope="module")
def server():
    with SandboxServer(port=0, seed=seed()) as srv:
        yield srv


@pytest.fixture
def client(server):
    sleeps: list[float] = []
    c = DataverseClient(server.api_url, StaticToken("straddle-integration"), sleep=sleeps.append,
                        retry_budget=30, page_size=5000)
    c.sleeps = sleeps  # type: ignore[attr-defined]
    yield c
    requests.post(f"{server.url}/_sandbox/faults", json={"error_share": {}}, timeout=5)
    c.close()


def sandbox_stats(server) -> dict:
    return requests.get(f"{server.url}/_sandbox/stats", timeout=5).json()


# --- paging ------------------------------------------------------------------------------------

def test_paging_12000_rows_streams_one_page_at_a_time(client):
    def stream() -> int:
        n = 0
        for row in client.iter_rows("leads", ["leadid", "emailaddress1", "subject"], page_size=500):
            n += 1
        return n

    def whole() -> list:
        return list(client.iter_rows("leads", ["leadid", "emailaddress1", "subject"], page_size=500))

    gc.collect()
    tracemalloc.start()
    try:
        assert stream() == LEADS
        _, streamed_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        rows = whole()
        _, whole_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len({r["leadid"] for r in rows}) == LEADS
    assert client.request_counts["GET leads"] == 2 * (LEADS // 500)
    # Streaming holds one page (plus the sandbox's own work): far less than every row at once.
    assert streamed_peak < whole_peak / 3, (streamed_peak, whole_peak)


# --- server affinity ---------------------------------------------------------------------------

def test_the_scans_reads_go_without_the_affinity_cookie_and_the_other_requests_keep_it(server):
    """Dataverse's answers pin a client to one web server (ARRAffinity); service protection limits
    count per web server, so the scan's parallel reads leave the cookie out and spread over them."""
    c = DataverseClient(server.api_url, StaticToken("straddle-affinity"), page_size=1000)
    try:
        requests.post(f"{server.url}/_sandbox/stats/reset", timeout=5).raise_for_status()
        c.get_json("WhoAmI")
        assert "ARRAffinity" in c._session.cookies  # the first answer set it
        c.get_json("WhoAmI")
        pages = list(c.key_pages("leads", "leadid", "leadid", after=None, upto=None))
        assert len(pages) == LEADS // 1000
        assert c.largest_key("leads", "leadid", after=gid("l1"), upto=None)
        stats = sandbox_stats(server)
        assert stats["by_kind"]["GET leads"] == len(pages) + 1
        assert stats["affinity_by_kind"] == {"GET WhoAmI": 1}  # the scan's reads: none sent it back
        next(c.iter_rows("leads", "leadid"))
        assert sandbox_stats(server)["affinity_by_kind"]["GET leads"] == 1  # ordinary requests still do
    finally:
        c.close()


# --- throttling --------------------------------------------------------------------------------

def test_service_protection_429_retry_after_is_honoured():
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        time.sleep(seconds)

    with SandboxServer(port=0, seed={"purposes": [{"msdynmkt_purposeid": PURPOSE, "msdynmkt_name": "C"}]},
                       limit=(3, 1.0)) as srv:
        c = DataverseClient(srv.api_url, StaticToken("throttle-me"), sleep=sleep, retry_budget=10)
        start = time.monotonic()
        for _ in range(5):
            assert [p.id for p in c.purposes()] == [PURPOSE]
        elapsed = time.monotonic() - start
        counts = c.request_counts
        assert counts["throttled"] >= 1 and counts["retry"] == counts["throttled"]
        assert all(s >= 1 for s in slept) and elapsed >= sum(slept)
        assert c.total_requests == counts["GET msdynmkt_purposes"] == 5 + counts["throttled"]
        assert sandbox_stats(srv)["throttled"] == counts["throttled"]


def test_injected_faults_are_retried_and_counted(client, server):
    requests.post(f"{server.url}/_sandbox/faults", timeout=5,
                  json={"error_share": {"429": 0.3, "503": 0.1, "500": 0.1}, "retry_after_seconds": 2, "seed": 3})
    before = sandbox_stats(server)["total"]
    client.reset_counts()
    for _ in range(30):
        assert client.resolve_topic("Newsletter").id == TOPIC_NEWS
    counts = client.request_counts
    assert counts["throttled"] > 0 and counts["retry"] == counts["throttled"] + counts["server_error"]
    assert client.sleeps.count(2.0) >= counts["throttled"]
    assert sandbox_stats(server)["total"] - before == client.total_requests


# --- auth --------------------------------------------------------------------------------------

def test_missing_token_is_an_auth_error(server):
    session = requests.Session()
    c = DataverseClient(server.api_url, StaticToken(""), session=session)
    with pytest.raises(DataverseAuthError) as info:
        c.who_am_i()
    assert info.value.status == 401
    # and without any Authorization header at all
    assert requests.get(f"{server.api_url}/WhoAmI", timeout=5).status_code == 401


def test_who_am_i_is_the_tokens_user(client, server):
    user = client.who_am_i()
    assert uuid.UUID(user) and user == user.lower()
    other = DataverseClient(server.api_url, StaticToken("someone-else"))
    assert other.who_am_i() != user


# --- reads -------------------------------------------------------------------------------------

def test_members_by_2000_emails_in_several_requests(client):
    wanted = [email(i).upper() if i % 2 else email(i) for i in range(2000)]
    members = client.members_by_emails(wanted)
    ids = {m.id for m in members}
    assert ids == {gid(f"c{i}") for i in range(2000)} | {gid("c-second")}
    assert client.request_counts["GET contacts"] >= 10
    m50 = next(m for m in members if m.id == gid("c50"))
    assert not m50.active and m50.emails["emailaddress1"] == email(50) and m50.donotbulkemail is False
    m3 = next(m for m in members if m.id == gid("c3"))
    assert m3.active and m3.donotbulkemail
    assert client.members_by_emails(["nobody@example.com"]) == []


def test_members_by_ids_and_unknown_ids(client):
    got = client.members_by_ids([gid("c1"), gid("c2").upper(), gid("missing")])
    assert {m.id for m in got} == {gid("c1"), gid("c2")}
    leads = client.members_by_ids([gid("l1")], table="lead", email_columns=("emailaddress1",))
    assert leads[0].table == "lead" and leads[0].emails == {"emailaddress1": "lead1@example.com"}


def test_list_members_pages(client):
    client.page_size = 100
    members = list(client.list_members(NEWS))
    assert len(members) == 300 and client.request_counts["GET lists/listcontact_association"] == 3
    assert {m.id for m in client.list_members(LEADLIST, "lead")} == {gid(f"l{i}") for i in range(5)}
    with pytest.raises(DataverseNotFound, match=gid("nolist")):
        list(client.list_members(gid("nolist")))


def test_lists_of_members(client):
    got = client.lists_of_members([gid("c1"), gid("c5"), gid("c20"), gid("c400"), gid("c401")])
    assert got == {gid("c1"): {NEWS, OFFERS}, gid("c5"): {NEWS, OFFERS}, gid("c20"): {NEWS},
                   gid("c400"): set(), gid("c401"): set()}
    assert client.lists_of_members([gid("l2")], table="lead") == {gid("l2"): {LEADLIST}}
    # few lists, many members: a handful of requests, not one per member
    many = [gid(f"c{i}") for i in range(250, 450)]
    client.reset_counts()
    got = client.lists_of_members(many)
    assert sum(1 for v in got.values() if v == {NEWS}) == 50
    assert client.total_requests < 20


def test_reference_data_and_resolution(client):
    assert [(p.id, p.name) for p in client.purposes()] == [(PURPOSE, "Commercial")]
    topics = {t.name: t for t in client.topics()}
    assert topics["Offers"].id == TOPIC_OFFERS and topics["Offers"].purpose_id == PURPOSE
    lists = {lst.name: lst for lst in client.marketing_lists()}
    assert lists["Lead list"].member_table == "lead" and not lists["Lead list"].is_subscription
    assert {lst.name for lst in client.marketing_lists(subscription_only=True)} >= {"News", "Offers"}
    assert "Lead list" not in {lst.name for lst in client.marketing_lists(subscription_only=True)}
    assert client.resolve_list("news").id == NEWS  # names compare case-insensitively
    assert client.resolve_list(NEWS.upper()).name == "News"
    assert client.resolve_purpose(PURPOSE).name == "Commercial"
    assert client.resolve_topic("Offers").id == TOPIC_OFFERS
    with pytest.raises(DataverseNotFound, match="O'Brien"):
        client.resolve_list("O'Brien's list")
    with pytest.raises(DataverseNotFound, match="topic"):
        client.resolve_topic(gid("no-topic"))


def test_consent_rows_returns_duplicates_and_inactive(client):
    rows = client.consent_rows([email(0).upper(), email(1), "nobody@example.com"])
    assert len(rows) == 3
    assert sorted(r.active for r in rows) == [False, True, True]
    assert all(r.topic_id == TOPIC_NEWS and r.purpose_id == PURPOSE and r.opted_out for r in rows)
    assert client.consent_rows([email(1)], topic_ids=[TOPIC_OFFERS]) == []
    assert len(client.consent_rows([email(1)], purpose_ids=[PURPOSE], consent_type=ConsentType.TOPIC)) == 1
    assert client.consent_rows([email(1)], channel=ContactPointType.TEXT) == []
    many = client.consent_rows([email(i) for i in range(2000)])
    assert len(many) == 41


def test_iter_rows_generic(client):
    rows = list(client.iter_rows("contacts", "contactid,statecode", filter="statecode eq 1", page_size=10))
    assert len(rows) == CONTACTS // 50


# --- writes ------------------------------------------------------------------------------------

def test_batch_with_one_failing_item(client, server):
    before = sandbox_stats(server)
    res = client.set_member_flags([("contact", gid("c10"), {"donotbulkemail": True}),
                                   ("contact", gid("does-not-exist"), {"donotbulkemail": True}),
                                   ("contact", gid("c11"), {"donotemail": True})])
    assert [r.ok for r in res] == [True, False, True]
    assert res[1].status == 404 and res[1].error_code and res[1].id == gid("does-not-exist")
    after = sandbox_stats(server)
    assert after["total"] - before["total"] == 1 and after["batch_requests"] - before["batch_requests"] == 3
    got = {m.id: m for m in client.members_by_ids([gid("c10"), gid("c11")])}
    assert got[gid("c10")].donotbulkemail and got[gid("c11")].donotemail
    assert client.members_by_ids([gid("does-not-exist")]) == []  # If-Match: * did not create it


def test_batches_split_over_1000(client):
    client.batch_size = 1000
    updates = [("lead", gid(f"l{i}"), {"donotemail": True}) for i in range(1500)]
    res = client.set_member_flags(updates)
    assert all(r.ok for r in res)
    assert client.request_counts["POST $batch"] == 2 and client.batch_operations == 1500


def test_list_membership_writes(client):
    new = [gid(f"c{i}") for i in range(1000, 1005)]
    res = client.add_list_members([(OFFERS, "contact", m) for m in new] + [(OFFERS, "contact", gid("c1"))])
    assert all(r.ok for r in res), res  # c1 is already a member: the goal state holds
    res = client.add_list_members([(OFFERS, "contact", gid("ghost"))])
    assert not res[0].ok
    assert {m.id for m in client.list_members(OFFERS)} >= set(new)
    res = client.remove_list_members([(OFFERS, "contact", new[0]), (OFFERS, "contact", gid("c999")),
                                      (LEADLIST, "lead", gid("l4"))])
    assert all(r.ok for r in res), res  # c999 was never a member
    assert new[0] not in {m.id for m in client.list_members(OFFERS)}
    assert gid("l4") not in {m.id for m in client.list_members(LEADLIST, "lead")}
    assert client.request_counts["batch:POST lists/Microsoft.Dynamics.CRM.RemoveMemberList"] == 3  # contacts and leads alike


def test_create_and_update_consent_rows(client):
    address = "new.person@example.com"
    res = client.create_consent_rows([
        dict(contact_point_value=address, consent_type=ConsentType.PURPOSE, value=ConsentValue.OPTED_OUT,
             purpose_id=PURPOSE, topic_id=None, source=ConsentSource.SUBSCRIPTION_CENTER, reason="straddle:t1"),
        dict(contact_point_value=address, consent_type=ConsentType.TOPIC, value=ConsentValue.OPTED_OUT,
             purpose_id=gid("no-such-purpose"), topic_id=TOPIC_OFFERS, source=ConsentSource.SUBSCRIPTION_CENTER,
             reason="straddle:t1"),
        dict(contact_point_value=address, consent_type=ConsentType.TOPIC, value=ConsentValue.OPTED_OUT,
             purpose_id=PURPOSE, topic_id=TOPIC_OFFERS, source=ConsentSource.SUBSCRIPTION_CENTER,
             reason="straddle:t1")])
    assert [r.ok for r in res] == [True, False, True], res
    rows = {r.id: r for r in client.consent_rows([address])}
    assert set(rows) == {res[0].id, res[2].id}
    purpose_row, topic_row = rows[res[0].id], rows[res[2].id]
    assert purpose_row.topic_id is None and purpose_row.reason == "straddle:t1"
    assert purpose_row.contact_point_type == ContactPointType.EMAIL and purpose_row.consent_type == ConsentType.PURPOSE
    assert topic_row.topic_id == TOPIC_OFFERS and topic_row.source == ConsentSource.SUBSCRIPTION_CENTER
    upd = client.update_consent_rows([(res[2].id, {"value": ConsentValue.OPTED_IN, "reason": "straddle:t2"}),
                                      (gid("no-row"), {"value": ConsentValue.OPTED_OUT})])
    assert [u.ok for u in upd] == [True, False]
    (row,) = client.consent_rows([address], topic_ids=[TOPIC_OFFERS])
    assert row.value == ConsentValue.OPTED_IN and row.reason == "straddle:t2"


# --- webhook registration ----------------------------------------------------------------------

STEPS = [
    StepSpec("Update", "contact", ("donotbulkemail", "donotemail", "emailaddress1"),
             ("emailaddress1", "emailaddress2", "emailaddress3", "donotbulkemail", "donotemail")),
    StepSpec("Create", "msdynmkt_contactpointconsent4", (),
             ("msdynmkt_contactpointvalue", "msdynmkt_value", "msdynmkt_topicid", "msdynmkt_purposeid")),
    StepSpec("Associate", None),
    StepSpec("RemoveMember", "list"),
]


def count(client, entity_set: str, key: str) -> int:
    return sum(1 for _ in client.iter_rows(entity_set, [key]))


def test_webhook_registration_is_idempotent(client):
    url = "https://straddle.azurewebsites.net/api/dataverse_webhook"
    first = client.register_webhook(url, name="straddle-test", auth="HttpHeader",
                                    auth_value={"x-straddle-key": "s3cret&<>"}, steps=STEPS)
    assert first.endpoint_created and first.created_steps == 4 and first.created_images == 2
    second = client.register_webhook(url, name="straddle-test", auth="HttpHeader",
                                     auth_value={"x-straddle-key": "s3cret&<>"}, steps=STEPS)
    assert (second.endpoint_id, second.step_ids) == (first.endpoint_id, first.step_ids)
    assert not second.endpoint_created and second.created_steps == second.created_images == 0
    assert count(client, "serviceendpoints", "serviceendpointid") == 1
    assert count(client, "sdkmessageprocessingsteps", "sdkmessageprocessingstepid") == 4
    assert count(client, "sdkmessageprocessingstepimages", "sdkmessageprocessingstepimageid") == 2

    endpoint = client.get_json(f"serviceendpoints({first.endpoint_id})")
    assert (endpoint["contract"], endpoint["authtype"], endpoint["messageformat"], endpoint["url"]) == (8, 5, 2, url)
    images = {i["entityalias"] + ":" + i["_sdkmessageprocessingstepid_value"]: i for i in
              client.iter_rows("sdkmessageprocessingstepimages",
                               ["entityalias", "imagetype", "messagepropertyname", "_sdkmessageprocessingstepid_value"])}
    update_image = images[f"PostImage:{first.step_ids[0]}"]
    create_image = images[f"PostImage:{first.step_ids[1]}"]
    assert (update_image["imagetype"], update_image["messagepropertyname"]) == (1, "Target")
    assert (create_image["imagetype"], create_image["messagepropertyname"]) == (1, "Id")
    step = client.get_json(f"sdkmessageprocessingsteps({first.step_ids[0]})")
    assert (step["stage"], step["mode"], step["rank"], step["supporteddeployment"]) == (40, 1, 1, 0)
    assert step["asyncautodelete"] is True  # succeeded system jobs do not pile up
    assert client.webhook_registrations("straddle-test")[0].auth_names == ("x-straddle-key",)
    assert step["filteringattributes"] == "donotbulkemail,donotemail,emailaddress1"

    # a changed filter is patched in place, not duplicated
    changed = [StepSpec("Update", "contact", ("donotbulkemail",), STEPS[0].image_attributes)] + STEPS[1:]
    third = client.register_webhook(url, name="straddle-test", auth="WebhookKey", auth_value="fnkey", steps=changed)
    assert third.updated_steps == 1 and third.created_steps == 0 and third.step_ids == first.step_ids

    (status,) = client.webhook_registrations("straddle-test")
    assert status.url == url and status.auth_type == 4 and len(status.steps) == 4 and status.auth_names == ("code",)
    by_message = {s.message: s for s in status.steps}
    assert by_message["Update"].table == "contact" and by_message["Update"].filtering_attributes == ("donotbulkemail",)
    assert by_message["Update"].images["PostImage"] == tuple(sorted(STEPS[0].image_attributes))
    assert by_message["Associate"].table is None and all(s.enabled for s in status.steps)
    assert client.webhook_registrations(url)[0].endpoint_id == first.endpoint_id

    assert client.remove_webhook("straddle-test") == 1 + 4 + 2
    assert client.webhook_registrations("straddle-test") == []
    assert count(client, "sdkmessageprocessingsteps", "sdkmessageprocessingstepid") == 0


def test_old_steps_get_asyncautodelete_and_list_messages_may_carry_their_action_names():
    from shared.adapters.dataverse.webhooks import StepSpec as Spec

    with SandboxServer(port=0) as srv:
        # An org whose sdkmessage for AddMember is named as the Web API action.
        add = next(r for r in srv.store.data["sdkmessage"].rows.values() if r["name"] == "AddMember")
        add["name"] = "AddMemberList"
        c = DataverseClient(srv.api_url, StaticToken("straddle-integration"), retry_budget=5)
        try:
            first = c.register_webhook("https://x.test/h", name="s", auth="WebhookKey", auth_value="k",
                                       steps=[Spec("AddMember", "list"), Spec("Delete", "contact")])
            assert first.created_steps == 2
            step = first.step_ids[1]
            c.request("PATCH", f"sdkmessageprocessingsteps({step})", json={"asyncautodelete": False},
                      headers={"If-Match": "*"})
            again = c.register_webhook("https://x.test/h", name="s", auth="WebhookKey", auth_value="k",
                                       steps=[Spec("AddMember", "list"), Spec("Delete", "contact")])
            assert again.updated_steps == 1 and again.created_steps == 0
            assert c.get_json(f"sdkmessageprocessingsteps({step})")["asyncautodelete"] is True
            assert {s.message for s in c.webhook_registrations("s")[0].steps} == {"AddMemberList", "Delete"}
        finally:
            c.close()


def test_unknown_message_is_named(client):
    with pytest.raises(DataverseNotFound, match="NoSuchMessage"):
        client.register_webhook("https://x.example/api/h", name="straddle-bad", auth="WebhookKey", auth_value="k",
                                steps=[StepSpec("NoSuchMessage", "contact")])
    client.remove_webhook("straddle-bad")


def test_threads_share_one_client(client, server):
    import threading
    client.outbound_solution()  # the one-time metadata probe is not what this test counts
    before = sandbox_stats(server)["total"]
    client.reset_counts()
    errors: list[BaseException] = []

    def work():
        try:
            for _ in range(10):
                assert client.resolve_list("Offers").id == OFFERS
        except BaseException as e:  # surfaced below
            errors.append(e)
    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert client.total_requests == 40 == sandbox_stats(server)["total"] - before


def test_registered_webhook_is_delivered(client, server):
    """End to end: the rows the client registers make the sandbox call the URL with the post-image."""
    import http.server
    import json as jsonlib
    import threading

    received: list[tuple[dict, dict]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append(({k.lower(): v for k, v in self.headers.items()}, jsonlib.loads(body)))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/api/dataverse_webhook"
    try:
        client.register_webhook(url, name="straddle-e2e", auth="HttpHeader", auth_value={"x-key": "k1"},
                                steps=[StepSpec("Update", "contact", ("donotbulkemail",),
                                                ("emailaddress1", "donotbulkemail"))])
        assert all(r.ok for r in client.set_member_flags([("contact", gid("c30"), {"donotbulkemail": True}),
                                                          ("contact", gid("c31"), {"firstname": "x"})]))
        assert server.wait_for_webhooks(10)
        deadline = time.monotonic() + 5
        while not received and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(received) == 1  # the firstname change is filtered out
        headers, body = received[0]
        assert headers.get("x-key") == "k1"
        assert body["MessageName"] == "Update" and body["PrimaryEntityId"] == gid("c30")
        assert body["PostEntityImages"][0]["key"] == "PostImage"
    finally:
        client.remove_webhook("straddle-e2e")
        httpd.shutdown()
