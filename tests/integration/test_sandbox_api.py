"""The Dataverse sandbox over real HTTP: CRUD, queries, paging, associations, batch, limits."""
from __future__ import annotations

import re
import uuid

import pytest
import requests

from sandbox.dataverse import SandboxServer

pytestmark = pytest.mark.integration

PURPOSE = "10000000-0000-0000-0000-000000000003"


@pytest.fixture(scope="module")
def srv():
    with SandboxServer(port=0) as s:
        yield s


@pytest.fixture
def api(srv):
    srv.store.reset()
    srv.set_limit(None)
    srv.set_faults({})
    s = requests.Session()
    s.headers.update({"Authorization": "Bearer test-token", "Accept": "application/json"})
    s.base = srv.api_url
    return s


def _id(resp) -> str:
    return re.search(r"\(([0-9a-f-]{36})\)$", resp.headers["OData-EntityId"]).group(1)


def test_crud_round_trip(api):
    r = api.post(f"{api.base}/contacts", json={"firstname": "Ann", "emailaddress1": "Ann@Example.org"})
    assert r.status_code == 204 and r.headers["OData-EntityId"].startswith(api.base + "/contacts(")
    cid = _id(r)
    assert cid == cid.lower()
    r = api.get(f"{api.base}/contacts({cid})", params={"$select": "emailaddress1,donotbulkemail,createdon"})
    body = r.json()
    assert r.status_code == 200 and body["emailaddress1"] == "Ann@Example.org" and body["donotbulkemail"] is None
    assert body["@odata.context"].endswith("$entity") and re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$", body["createdon"])
    assert api.patch(f"{api.base}/contacts({cid})", json={"donotbulkemail": True},
                     headers={"If-Match": "*"}).status_code == 204
    assert api.get(f"{api.base}/contacts({cid})").json()["donotbulkemail"] is True
    missing = str(uuid.uuid4())
    r = api.patch(f"{api.base}/contacts({missing})", json={"donotbulkemail": True}, headers={"If-Match": "*"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "0x80040217"
    assert api.patch(f"{api.base}/contacts({missing})", json={"emailaddress1": "up@x.org"}).status_code == 204  # upsert
    assert api.get(f"{api.base}/contacts({missing})").status_code == 200
    assert api.delete(f"{api.base}/contacts({cid})").status_code == 204
    r = api.get(f"{api.base}/contacts({cid})")
    assert r.status_code == 404 and r.json()["error"]["code"] == "0x80040217"
    r = api.post(f"{api.base}/contacts", json={"emailaddress1": "r@x.org"}, headers={"Prefer": "return=representation"})
    assert r.status_code == 201 and r.json()["emailaddress1"] == "r@x.org"


def test_errors_have_dataverse_shape(api):
    r = api.get(f"{api.base}/nosuchthings")
    assert r.status_code == 404 and r.json()["error"]["code"].startswith("0x")
    r = api.get(f"{api.base}/contacts", params={"$select": "nosuchcolumn"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "0x80048d19"
    r = api.get(f"{api.base}/contacts", params={"$filter": "emailaddress1 eq"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "0x80060888"
    r = api.get(f"{api.base}/contacts", params={"$skip": "10"})
    assert r.status_code == 400
    r = api.post(f"{api.base}/contacts", json={"nosuchcolumn": 1})
    assert r.status_code == 400 and r.json()["error"]["code"] == "0x80048d19"


def test_consent_lookups_bind_and_filter(api):
    api.post(f"{api.base}/msdynmkt_purposes", json={"msdynmkt_purposeid": PURPOSE, "msdynmkt_name": "Commercial",
                                                    "msdynmkt_type": 534120000})
    r = api.post(f"{api.base}/msdynmkt_topics", json={"msdynmkt_name": "News",
                                                      "msdynmkt_purposeId@odata.bind": f"/msdynmkt_purposes({PURPOSE})"})
    tid = _id(r)
    assert api.get(f"{api.base}/msdynmkt_topics({tid})").json()["_msdynmkt_purposeid_value"] == PURPOSE
    r = api.post(f"{api.base}/msdynmkt_contactpointconsent4s", json={
        "msdynmkt_contactpointvalue": "Bob@X.org", "msdynmkt_contactpointtype": 534120000,
        "msdynmkt_contactpointconsenttype": 534120001, "msdynmkt_value": 534120002, "msdynmkt_source": 534120006,
        "msdynmkt_reason": "straddle:1",
        "msdynmkt_purposeId@odata.bind": f"{api.base}/msdynmkt_purposes({PURPOSE})",
        "msdynmkt_topicId@odata.bind": f"/msdynmkt_topics({tid})"})
    assert r.status_code == 204
    r = api.get(f"{api.base}/msdynmkt_contactpointconsent4s", params={
        "$select": "msdynmkt_contactpointvalue,msdynmkt_value,_msdynmkt_purposeid_value,_msdynmkt_topicid_value,modifiedon",
        "$filter": f"msdynmkt_contactpointvalue eq 'bob@x.ORG' and _msdynmkt_purposeid_value eq {PURPOSE} "
                   f"and _msdynmkt_topicid_value eq {tid} and statecode eq 0"})
    rows = r.json()["value"]
    assert len(rows) == 1 and rows[0]["_msdynmkt_topicid_value"] == tid and rows[0]["msdynmkt_value"] == 534120002
    r = api.post(f"{api.base}/msdynmkt_contactpointconsent4s", json={
        "msdynmkt_purposeId@odata.bind": f"/msdynmkt_purposes({uuid.uuid4()})"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "0x80040217"


def _list(api, name="L", code=2):
    return _id(api.post(f"{api.base}/lists", json={"listname": name, "createdfromcode": code, "type": False,
                                                   "msdyncrm_issubscription": True}))


def test_list_membership_through_the_list_actions(api):
    lid = _list(api)
    cids = [_id(api.post(f"{api.base}/contacts", json={"emailaddress1": f"m{i}@x.org"})) for i in range(3)]
    ids = set()
    for cid in cids:
        r = api.post(f"{api.base}/lists({lid})/Microsoft.Dynamics.CRM.AddMemberList", json={"EntityId": cid})
        assert r.status_code == 200 and r.json()["@odata.context"].endswith("AddMemberListResponse")
        ids.add(r.json()["Id"])  # the listmember row's id, not the contact's
    assert len(ids) == 3 and not ids & set(cids)
    # adding twice is a no-op success, not a duplicate membership
    assert api.post(f"{api.base}/lists({lid})/Microsoft.Dynamics.CRM.AddMemberList",
                    json={"EntityId": cids[0]}).status_code == 200
    r = api.get(f"{api.base}/lists({lid})/listcontact_association",
                params={"$select": "contactid,emailaddress1", "$filter": "emailaddress1 ne 'm1@x.org'"})
    assert sorted(v["emailaddress1"] for v in r.json()["value"]) == ["m0@x.org", "m2@x.org"]
    r = api.get(f"{api.base}/contacts({cids[0]})/listcontact_association", params={"$select": "listid,listname"})
    assert [v["listid"] for v in r.json()["value"]] == [lid]
    assert api.post(f"{api.base}/lists({lid})/Microsoft.Dynamics.CRM.RemoveMemberList",
                    json={"EntityId": cids[1]}).status_code == 204
    assert len(api.get(f"{api.base}/lists({lid})/listcontact_association").json()["value"]) == 2
    r = api.post(f"{api.base}/lists({lid})/Microsoft.Dynamics.CRM.RemoveMemberList", json={"EntityId": cids[1]})
    assert r.status_code == 404 and "error" in r.json()
    r = api.post(f"{api.base}/lists({lid})/Microsoft.Dynamics.CRM.AddMemberList", json={"EntityId": cids[1], "ListId": lid})
    assert r.status_code == 400 and "ListId" in r.json()["error"]["message"]
    # leads through the same actions, on a list of leads
    llid = _list(api, "Leads", 4)
    lead = _id(api.post(f"{api.base}/leads", json={"emailaddress1": "lead@x.org"}))
    assert api.post(f"{api.base}/lists({llid})/Microsoft.Dynamics.CRM.AddMemberList",
                    json={"EntityId": lead}).status_code == 200
    assert [v["leadid"] for v in api.get(f"{api.base}/lists({llid})/listlead_association").json()["value"]] == [lead]


@pytest.mark.parametrize("nav,member", [("listcontact_association", "contacts"), ("listlead_association", "leads"),
                                        ("listaccount_association", "accounts")])
def test_ref_associate_and_disassociate_on_list_members_are_refused(api, nav, member):
    lid = _list(api)
    mid = str(uuid.uuid4())
    r = api.post(f"{api.base}/lists({lid})/{nav}/$ref", json={"@odata.id": f"{api.base}/{member}({mid})"})
    assert r.status_code == 400 and r.json()["error"]["message"] == "Associate is not supported for ListMember"
    r = api.delete(f"{api.base}/lists({lid})/{nav}({mid})/$ref")
    assert r.status_code == 400 and r.json()["error"]["message"] == "Disassociate is not supported for ListMember"
    r = api.delete(f"{api.base}/lists({lid})/{nav}/$ref", params={"$id": f"{api.base}/{member}({mid})"})
    assert r.status_code == 400 and "not supported for ListMember" in r.json()["error"]["message"]


def test_add_list_members_list_is_unbound_with_list_and_members(api):
    lid = _list(api)
    cids = [_id(api.post(f"{api.base}/contacts", json={"emailaddress1": f"b{i}@x.org"})) for i in range(2)]
    body = {"List": {"@odata.type": "Microsoft.Dynamics.CRM.list", "listid": lid},
            "Members": [{"@odata.type": "Microsoft.Dynamics.CRM.contact", "contactid": c} for c in cids]}
    assert api.post(f"{api.base}/AddListMembersList", json=body).status_code == 204
    members = api.get(f"{api.base}/lists({lid})/listcontact_association", params={"$select": "contactid"}).json()["value"]
    assert sorted(m["contactid"] for m in members) == sorted(cids)
    # bound to the list, or with the old MemberIds parameter: not how Dataverse defines it
    assert api.post(f"{api.base}/lists({lid})/Microsoft.Dynamics.CRM.AddListMembersList",
                    json={"Members": body["Members"]}).status_code == 404
    r = api.post(f"{api.base}/AddListMembersList", json={"List": body["List"], "MemberIds": cids})
    assert r.status_code == 400 and "MemberIds" in r.json()["error"]["message"]
    r = api.post(f"{api.base}/AddListMembersList",
                 json={"List": body["List"], "Members": [{"@odata.type": "Microsoft.Dynamics.CRM.lead", "leadid": cids[0]}]})
    assert r.status_code == 400


def test_paging_12000_rows_over_http(api, srv):
    srv.store.load({"contacts": [{"emailaddress1": f"p{i}@x.org", "donotbulkemail": i % 2 == 0}
                                 for i in range(12000)]})
    url, pages, seen = f"{api.base}/contacts?$select=contactid,emailaddress1", 0, set()
    while url:
        r = api.get(url, headers={"Prefer": "odata.maxpagesize=5000"})
        assert r.headers["Preference-Applied"] == "odata.maxpagesize=5000"
        body = r.json()
        seen.update(v["contactid"] for v in body["value"])
        pages += 1
        url = body.get("@odata.nextLink")
        if url:
            assert "$skiptoken=" in url and "$select=contactid" in url.replace("%2C", ",")
    assert pages == 3 and len(seen) == 12000
    # filtered, ordered, small pages
    url, n, last = f"{api.base}/contacts?$filter=donotbulkemail eq true&$orderby=emailaddress1 desc", 0, None
    while url:
        body = api.get(url, headers={"Prefer": "odata.maxpagesize=2500"}).json()
        for v in body["value"]:
            assert last is None or v["emailaddress1"] <= last
            last = v["emailaddress1"]
        n += len(body["value"])
        url = body.get("@odata.nextLink")
    assert n == 6000
    body = api.get(f"{api.base}/contacts", params={"$top": "7", "$count": "true"}).json()
    assert len(body["value"]) == 7 and "@odata.nextLink" not in body and body["@odata.count"] == 12000


def test_in_filter_and_case_insensitive_eq(api, srv):
    srv.store.load({"contacts": [{"emailaddress1": f"User{i}@Example.org"} for i in range(200)]})
    values = ",".join(f"'user{i}@example.ORG'" for i in range(0, 200, 10))
    r = api.get(f"{api.base}/contacts", params={
        "$select": "emailaddress1",
        "$filter": f"Microsoft.Dynamics.CRM.In(PropertyName='emailaddress1',PropertyValues=[{values}])"})
    assert len(r.json()["value"]) == 20
    r = api.get(f"{api.base}/contacts", params={"$filter": "emailaddress1 eq 'USER7@EXAMPLE.ORG'"})
    assert [v["emailaddress1"] for v in r.json()["value"]] == ["User7@Example.org"]


def test_trailing_spaces_compare_equal_as_in_sql_server(api, srv):
    srv.store.load({"contacts": [{"emailaddress1": "Pad@Example.org  "}, {"emailaddress1": " lead@example.org"}]})
    for flt in ("emailaddress1 eq 'pad@example.org'",
                "Microsoft.Dynamics.CRM.In(PropertyName='emailaddress1',PropertyValues=['pad@example.org'])"):
        assert len(api.get(f"{api.base}/contacts", params={"$filter": flt}).json()["value"]) == 1
    # Leading spaces are significant in SQL Server, and so here.
    assert api.get(f"{api.base}/contacts", params={"$filter": "emailaddress1 eq 'lead@example.org'"}).json()["value"] == []


def test_expand_list_memberships_from_either_side(api):
    lid, other = _list(api), _list(api, "Other")
    cid = _id(api.post(f"{api.base}/contacts", json={"emailaddress1": "x@x.org"}))
    lone = _id(api.post(f"{api.base}/contacts", json={"emailaddress1": "y@x.org"}))
    for l in (lid, other):
        api.post(f"{api.base}/lists({l})/Microsoft.Dynamics.CRM.AddMemberList", json={"EntityId": cid})
    r = api.get(f"{api.base}/contacts", params={"$select": "contactid", "$expand": "listcontact_association($select=listid)"})
    by_id = {v["contactid"]: sorted(x["listid"] for x in v["listcontact_association"]) for v in r.json()["value"]}
    assert by_id == {cid: sorted([lid, other]), lone: []}
    r = api.get(f"{api.base}/lists", params={"$select": "listid", "$filter": f"listid eq {lid}",
                                              "$expand": "listcontact_association($select=emailaddress1)"})
    assert [m["emailaddress1"] for m in r.json()["value"][0]["listcontact_association"]] == ["x@x.org"]
    bad = api.get(f"{api.base}/contacts", params={"$expand": "listcontact_association($filter=listid eq null)"})
    assert bad.status_code == 400 and "error" in bad.json()


def test_auth_and_whoami_per_token(srv):
    assert requests.get(f"{srv.api_url}/WhoAmI").status_code == 401
    r = requests.get(f"{srv.api_url}/contacts", headers={"Authorization": "Basic x"})
    assert r.status_code == 401 and r.json()["error"]["code"].startswith("0x")
    a = requests.get(f"{srv.api_url}/WhoAmI", headers={"Authorization": "Bearer a"}).json()
    a2 = requests.get(f"{srv.api_url}/WhoAmI()", headers={"Authorization": "Bearer a"}).json()
    b = requests.get(f"{srv.api_url}/WhoAmI", headers={"Authorization": "Bearer b"}).json()
    assert a["UserId"] == a2["UserId"] != b["UserId"] and {"BusinessUnitId", "OrganizationId"} <= a.keys()
    assert a["UserId"] in srv.store.data["systemuser"].rows
    r = requests.post(f"{srv.api_url}/contacts", json={"emailaddress1": "who@x.org"}, headers={"Authorization": "Bearer a"})
    cid = _id(r)
    row = requests.get(f"{srv.api_url}/contacts({cid})", headers={"Authorization": "Bearer b"}).json()
    assert row["_createdby_value"] == a["UserId"] == row["_modifiedby_value"]


def test_create_and_update_multiple(api):
    targets = [{"@odata.type": "Microsoft.Dynamics.CRM.msdynmkt_contactpointconsent4",
                "msdynmkt_contactpointvalue": f"c{i}@x.org", "msdynmkt_value": 534120001} for i in range(5)]
    r = api.post(f"{api.base}/msdynmkt_contactpointconsent4s/Microsoft.Dynamics.CRM.CreateMultiple", json={"Targets": targets})
    ids = r.json()["Ids"]
    assert r.status_code == 200 and len(ids) == 5
    upd = [{"@odata.type": "Microsoft.Dynamics.CRM.msdynmkt_contactpointconsent4",
            "msdynmkt_contactpointconsent4id": i, "msdynmkt_value": 534120002} for i in ids]
    r = api.post(f"{api.base}/msdynmkt_contactpointconsent4s/Microsoft.Dynamics.CRM.UpdateMultiple", json={"Targets": upd})
    assert r.status_code == 204
    r = api.get(f"{api.base}/msdynmkt_contactpointconsent4s", params={"$filter": "msdynmkt_value eq 534120002"})
    assert len(r.json()["value"]) == 5
    # all or nothing: one unknown id sinks the whole call
    upd[0]["msdynmkt_value"] = 534120000
    upd.append({"msdynmkt_contactpointconsent4id": str(uuid.uuid4()), "msdynmkt_value": 534120000})
    r = api.post(f"{api.base}/msdynmkt_contactpointconsent4s/Microsoft.Dynamics.CRM.UpdateMultiple", json={"Targets": upd})
    assert r.status_code == 404 and r.json()["error"]["code"] == "0x80040217"
    assert api.get(f"{api.base}/msdynmkt_contactpointconsent4s({ids[0]})").json()["msdynmkt_value"] == 534120002
    bad = targets[:2] + [{"nosuchcolumn": 1}]
    r = api.post(f"{api.base}/msdynmkt_contactpointconsent4s/Microsoft.Dynamics.CRM.CreateMultiple", json={"Targets": bad})
    assert r.status_code == 400
    assert len(api.get(f"{api.base}/msdynmkt_contactpointconsent4s").json()["value"]) == 5


def _batch(parts: list[str], boundary="batch_x") -> bytes:
    return ("".join(f"--{boundary}\r\n{p}\r\n" for p in parts) + f"--{boundary}--\r\n").encode()


def _http(method, url, body=None, cid=None):
    head = "Content-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n"
    if cid:
        head += f"Content-ID: {cid}\r\n"
    req = f"{method} {url} HTTP/1.1\r\nContent-Type: application/json\r\n\r\n"
    return head + "\r\n" + req + (body or "")


def _changeset(parts, boundary="changeset_y"):
    inner = "".join(f"--{boundary}\r\n{p}\r\n" for p in parts) + f"--{boundary}--"
    return f"Content-Type: multipart/mixed; boundary={boundary}\r\n\r\n{inner}"


def _responses(r):
    return [int(s) for s in re.findall(r"HTTP/1.1 (\d{3})", r.text)]


def test_batch_change_set_is_atomic_and_stops_on_error(api, srv):
    cid = _id(api.post(f"{api.base}/contacts", json={"emailaddress1": "b@x.org"}))
    prefix = "/api/data/v9.2/"
    body = _batch([
        _http("GET", f"{prefix}contacts({cid})?$select=emailaddress1"),
        _changeset([
            _http("POST", f"{prefix}contacts", '{"emailaddress1": "new1@x.org"}', cid="1"),
            _http("PATCH", f"{api.base}/contacts({cid})", '{"donotbulkemail": true}', cid="2"),
            _http("PATCH", f"contacts({uuid.uuid4()})", '{"donotbulkemail": true}', cid="3").replace(
                "Content-Type: application/json\r\n", "Content-Type: application/json\r\nIf-Match: *\r\n"),
        ]),
        _http("POST", f"{prefix}contacts", '{"emailaddress1": "after@x.org"}'),
    ])
    r = api.post(f"{api.base}/$batch", data=body, headers={"Content-Type": "multipart/mixed; boundary=batch_x"})
    # Without continue-on-error the batch fails (400) and its body holds what ran, up to the failure.
    assert r.status_code == 400 and r.headers["Content-Type"].startswith("multipart/mixed; boundary=batchresponse_")
    assert _responses(r) == [200, 404]  # the change set failed and processing stopped
    assert '"0x80040217"' in r.text
    assert api.get(f"{api.base}/contacts({cid})").json()["donotbulkemail"] is None  # rolled back
    assert api.get(f"{api.base}/contacts", params={"$filter": "emailaddress1 eq 'new1@x.org'"}).json()["value"] == []
    assert api.get(f"{api.base}/contacts", params={"$filter": "emailaddress1 eq 'after@x.org'"}).json()["value"] == []
    r = api.post(f"{api.base}/$batch", data=body, headers={"Content-Type": "multipart/mixed; boundary=batch_x",
                                                           "Prefer": "odata.continue-on-error"})
    assert _responses(r) == [200, 404, 204]
    assert len(api.get(f"{api.base}/contacts", params={"$filter": "emailaddress1 eq 'after@x.org'"}).json()["value"]) == 1
    assert srv.stats.snapshot()["batch_requests"] >= 7


def test_batch_success_with_content_id_and_entity_ids(api):
    lid, cid_ = _list(api), str(uuid.uuid4())
    body = _batch([_changeset([
        _http("POST", "/api/data/v9.2/contacts", f'{{"contactid": "{cid_}", "emailaddress1": "cs@x.org"}}', cid="1"),
        _http("POST", f"/api/data/v9.2/lists({lid})/Microsoft.Dynamics.CRM.AddMemberList",
              f'{{"EntityId": "{cid_}"}}', cid="2"),
    ])])
    r = api.post(f"{api.base}/$batch", data=body, headers={"Content-Type": "multipart/mixed; boundary=batch_x"})
    assert _responses(r) == [204, 200] and "changesetresponse_" in r.text and "OData-EntityId: " in r.text
    members = api.get(f"{api.base}/lists({lid})/listcontact_association").json()["value"]
    assert [m["emailaddress1"] for m in members] == ["cs@x.org"]


def test_batch_over_1000_requests_is_rejected(api):
    body = _batch([_http("GET", "/api/data/v9.2/WhoAmI")] * 1001)
    r = api.post(f"{api.base}/$batch", data=body, headers={"Content-Type": "multipart/mixed; boundary=batch_x"})
    assert r.status_code == 400 and r.json()["error"]["code"].startswith("0x")


def test_service_protection_limit(api, srv):
    srv.set_limit((5, 2))
    codes = [api.get(f"{api.base}/WhoAmI") for _ in range(7)]
    assert [c.status_code for c in codes] == [200] * 5 + [429] * 2
    assert codes[-1].json()["error"]["code"] == "0x80072322" and int(codes[-1].headers["Retry-After"]) >= 1
    other = requests.get(f"{srv.api_url}/WhoAmI", headers={"Authorization": "Bearer someone-else"})
    assert other.status_code == 200  # per caller
    assert requests.get(f"{srv.url}/_sandbox/stats").status_code == 200  # never counted, never throttled
    requests.post(f"{srv.url}/_sandbox/limit", json={"requests": None})
    assert api.get(f"{api.base}/WhoAmI").status_code == 200


def test_fault_injection_and_stats(api, srv):
    requests.post(f"{srv.url}/_sandbox/stats/reset")
    requests.post(f"{srv.url}/_sandbox/faults", json={"error_share": {"500": 0.3, "429": 0.2}, "seed": 7,
                                                      "retry_after_seconds": 2})
    codes = [api.get(f"{api.base}/contacts").status_code for _ in range(100)]
    assert 15 < codes.count(500) < 45 and 8 < codes.count(429) < 35 and codes.count(200) > 30
    requests.post(f"{srv.url}/_sandbox/faults", json={})
    api.patch(f"{api.base}/msdynmkt_contactpointconsent4s({uuid.uuid4()})", json={"msdynmkt_value": 534120002})
    stats = requests.get(f"{srv.url}/_sandbox/stats").json()
    assert stats["total"] == 101 and stats["by_kind"]["GET contacts"] == 100
    assert stats["by_kind"]["PATCH msdynmkt_contactpointconsent4s"] == 1
    assert stats["faults_injected"] == codes.count(500) + codes.count(429)
    requests.post(f"{srv.url}/_sandbox/stats/reset")
    assert requests.get(f"{srv.url}/_sandbox/stats").json()["total"] == 0


def test_seed_endpoint_and_reset(api, srv):
    lid, cid = str(uuid.uuid4()), str(uuid.uuid4())
    r = requests.post(f"{srv.url}/_sandbox/seed", json={
        "contacts": [{"contactid": cid, "emailaddress1": "s@x.org"}],
        "lists": [{"listid": lid, "listname": "S", "createdfromcode": 2}],
        "purposes": [{"msdynmkt_purposeid": PURPOSE, "msdynmkt_name": "Commercial"}],
        "list_members": {lid: [cid]}})
    assert r.status_code == 200 and r.json()["loaded"]["list_members"] == 1
    assert [v["contactid"] for v in api.get(f"{api.base}/lists({lid})/listcontact_association").json()["value"]] == [cid]
    requests.post(f"{srv.url}/_sandbox/reset")
    assert api.get(f"{api.base}/contacts").json()["value"] == []
    assert len(api.get(f"{api.base}/sdkmessages", params={"$filter": "name eq 'Update'"}).json()["value"]) == 1


def test_concurrent_clients(srv):
    import concurrent.futures as cf
    srv.store.reset()

    def work(k):
        s = requests.Session()
        s.headers["Authorization"] = f"Bearer worker-{k}"
        ids = [_id(s.post(f"{srv.api_url}/contacts", json={"emailaddress1": f"w{k}-{i}@x.org"})) for i in range(30)]
        for i in ids[:10]:
            assert s.patch(f"{srv.api_url}/contacts({i})", json={"donotemail": True}, headers={"If-Match": "*"}).status_code == 204
        got = s.get(f"{srv.api_url}/contacts", params={"$filter": f"startswith(emailaddress1,'w{k}-')"}).json()["value"]
        return len(got)

    with cf.ThreadPoolExecutor(8) as pool:
        assert list(pool.map(work, range(8))) == [30] * 8
    assert len(srv.store.data["contact"].rows) == 240


def test_keys_sort_and_compare_in_sql_server_order_and_key_ranges_page(srv, api):
    from shared.domain.partitions import sql_order

    ids = [str(uuid.UUID(int=(i * 0x9E3779B97F4A7C15_F39CC0605CEDC834) % (1 << 128))) for i in range(1, 61)]
    srv.store.load({"contacts": [{"contactid": i, "lastname": "k"} for i in ids],
                    "lists": [{"listid": PURPOSE, "listname": "L", "createdfromcode": 2}],
                    "list_members": {PURPOSE: ids[:30]}})
    in_order = sorted(ids, key=sql_order)
    page = {"Prefer": "odata.maxpagesize=7"}

    def read(path, flt=None):
        got, url = [], f"{api.base}/{path}"
        params = {"$select": "contactid", "$orderby": "contactid", **({"$filter": flt} if flt else {})}
        while url:
            body = api.get(url, params=params, headers=page).json()
            got += [r["contactid"] for r in body["value"]]
            url, params = body.get("@odata.nextLink"), None
        return got

    assert read("contacts") == in_order
    lo, hi = in_order[9], in_order[40]
    assert read("contacts", f"contactid gt {lo} and contactid le {hi}") == in_order[10:41]
    assert read("contacts", f"contactid ge {lo} and contactid lt {hi}") == in_order[9:40]
    members = sorted(ids[:30], key=sql_order)
    assert read(f"lists({PURPOSE})/listcontact_association", f"contactid gt {members[4]}") == members[5:]
    top = api.get(f"{api.base}/contacts", params={"$select": "contactid", "$orderby": "contactid desc", "$top": "1",
                                                  "$filter": f"contactid le {hi}"}).json()["value"]
    assert [r["contactid"] for r in top] == [hi]
    assert api.get(f"{api.base}/contacts", params={"$select": "contactid"}).json()["value"][0]["contactid"] == in_order[0]
