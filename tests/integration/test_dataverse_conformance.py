"""Conformance: the sandbox against the shapes Microsoft documents, not against its own output.

Each test builds the request as Microsoft's reference page for that operation defines it (names,
parameters, types, choice values; see sandbox/dataverse/FIDELITY.md for the pages) and checks the
documented answer, or Dataverse's refusal. The client is then run against the same sandbox in each
tenant shape: with and without the Outbound marketing solution, and without the RemoveMemberList
Web API action (an environment created without Dynamics 365 apps, where members leave by
deleting their listmember row).
"""
from __future__ import annotations

import re
import uuid

import pytest
import requests

from sandbox.dataverse import SandboxServer
from shared.adapters.dataverse.auth import StaticToken
from shared.adapters.dataverse.client import REMOVAL_ACTION, REMOVAL_ROW, DataverseClient
from shared.ingest.notification import parse_notification
from tests import notifications as n

pytestmark = pytest.mark.integration

LIST, CONTACT, LEAD = (str(uuid.uuid5(uuid.NAMESPACE_URL, f"conformance:{k}")) for k in ("list", "contact", "lead"))
SEED = {"lists": [{"listid": LIST, "listname": "News", "createdfromcode": 2, "type": False,
                   "msdyncrm_issubscription": True}],
        "contacts": [{"contactid": CONTACT, "lastname": "Ann", "emailaddress1": "Ann@Example.test"}],
        "leads": [{"leadid": LEAD, "lastname": "Lee", "emailaddress1": "lee@example.test"}]}


def _session(srv: SandboxServer) -> requests.Session:
    s = requests.Session()
    s.headers.update({"Authorization": "Bearer conformance", "Accept": "application/json", "OData-Version": "4.0"})
    s.base = srv.api_url  # type: ignore[attr-defined]
    return s


SHAPES = {"with-outbound": {}, "without-outbound": {"without_outbound_solution": True},
          "without-RemoveMemberList": {"without_remove_member_action": True}}


@pytest.fixture(scope="module", params=list(SHAPES.values()), ids=list(SHAPES))
def srv(request):
    with SandboxServer(port=0, seed=SEED, **request.param) as s:
        yield s


@pytest.fixture
def api(srv):
    srv.store.reset()
    srv.store.load(SEED)
    return _session(srv)


# --- list membership: the Marketing List table's actions ----------------------------------------

def test_add_member_list_bound_to_list_answers_the_listmember_id(api):
    # AddMemberList: bound to list, EntityId (Edm.Guid); returns AddMemberListResponse { Id }.
    r = api.post(f"{api.base}/lists({LIST})/Microsoft.Dynamics.CRM.AddMemberList", json={"EntityId": CONTACT})
    assert r.status_code == 200
    body = r.json()
    assert body["@odata.context"].endswith("#Microsoft.Dynamics.CRM.AddMemberListResponse")
    assert re.fullmatch(r"[0-9a-f-]{36}", body["Id"]) and body["Id"] != CONTACT


def test_remove_member_list_bound_to_list_answers_no_content_where_it_is_an_action(srv, api):
    api.post(f"{api.base}/lists({LIST})/Microsoft.Dynamics.CRM.AddMemberList", json={"EntityId": CONTACT})
    r = api.post(f"{api.base}/lists({LIST})/Microsoft.Dynamics.CRM.RemoveMemberList", json={"EntityId": CONTACT})
    if srv.store.without_remove_member_action:  # not a Web API action there: OData finds no such segment
        assert r.status_code == 404
        assert r.json()["error"]["message"] == "Resource not found for the segment 'Microsoft.Dynamics.CRM.RemoveMemberList'."
        assert _members(api) == [CONTACT]
    else:
        assert r.status_code == 204 and not r.content and _members(api) == []


def _members(api) -> list[str]:
    return [m["contactid"] for m in api.get(f"{api.base}/lists({LIST})/listcontact_association",
                                            params={"$select": "contactid"}).json()["value"]]


def test_deleting_the_listmember_row_ends_the_membership_in_every_shape(api):
    # ListMember documents Delete: DELETE /listmembers(listmemberid); the row is found by list and entity.
    api.post(f"{api.base}/lists({LIST})/Microsoft.Dynamics.CRM.AddMemberList", json={"EntityId": CONTACT})
    rows = api.get(f"{api.base}/listmembers", params={
        "$select": "listmemberid", "$filter": f"_listid_value eq {LIST} and _entityid_value eq {CONTACT}"}).json()["value"]
    assert len(rows) == 1
    r = api.delete(f"{api.base}/listmembers({rows[0]['listmemberid']})")
    assert r.status_code == 204 and _members(api) == []
    again = api.delete(f"{api.base}/listmembers({rows[0]['listmemberid']})")
    assert again.status_code == 404 and again.json()["error"]["code"] == "0x80040217"
    assert api.post(f"{api.base}/listmembers", json={"name": "x"}).status_code == 405  # joins go through the actions


def test_add_list_members_list_is_unbound_with_list_and_members(api):
    # AddListMembersList: not bound; List (list EntityType) and Members (Collection(crmbaseentity)); no return value.
    r = api.post(f"{api.base}/AddListMembersList", json={
        "List": {"@odata.type": "Microsoft.Dynamics.CRM.list", "listid": LIST},
        "Members": [{"@odata.type": "Microsoft.Dynamics.CRM.contact", "contactid": CONTACT}]})
    assert r.status_code == 204
    members = api.get(f"{api.base}/lists({LIST})/listcontact_association", params={"$select": "contactid"})
    assert [m["contactid"] for m in members.json()["value"]] == [CONTACT]


@pytest.mark.parametrize("method", ["POST", "DELETE"])
def test_ref_association_of_a_list_member_is_refused_with_dataverses_message(api, method):
    if method == "POST":
        r = api.post(f"{api.base}/lists({LIST})/listcontact_association/$ref",
                     json={"@odata.id": f"{api.base}/contacts({CONTACT})"})
    else:
        r = api.delete(f"{api.base}/lists({LIST})/listcontact_association({CONTACT})/$ref")
    word = "Associate" if method == "POST" else "Disassociate"
    assert r.status_code == 400 and r.json()["error"]["message"] == f"{word} is not supported for ListMember"


def test_list_actions_raise_their_messages_with_documented_inputs(srv, api):
    """AddMember (ListId, EntityId), RemoveMember (ListId, EntityId), AddListMembers (ListId, MemberIds)."""
    seen: list[dict] = []
    srv.store.listeners.append(lambda ev: seen.append({"message": ev.message, **ev.extra}))
    hooks_active, srv.store.hooks_active = srv.store.hooks_active, lambda: True
    try:
        api.post(f"{api.base}/lists({LIST})/Microsoft.Dynamics.CRM.AddMemberList", json={"EntityId": CONTACT})
        removed = api.post(f"{api.base}/lists({LIST})/Microsoft.Dynamics.CRM.RemoveMemberList", json={"EntityId": CONTACT})
        if removed.status_code == 404:  # no such action here: the row goes instead (its Delete is not emulated)
            (row,) = api.get(f"{api.base}/listmembers", params={"$filter": f"_listid_value eq {LIST}"}).json()["value"]
            api.delete(f"{api.base}/listmembers({row['listmemberid']})")
        api.post(f"{api.base}/AddListMembersList", json={
            "List": {"@odata.type": "Microsoft.Dynamics.CRM.list", "listid": LIST},
            "Members": [{"@odata.type": "Microsoft.Dynamics.CRM.contact", "contactid": CONTACT}]})
    finally:
        srv.store.listeners.pop()
        srv.store.hooks_active = hooks_active
    got = [(e["message"], e.get("ListId"), e.get("EntityId"), tuple(e.get("MemberIds") or ())) for e in seen]
    removal = [] if srv.store.without_remove_member_action else [("RemoveMember", LIST, CONTACT, ())]
    assert got == [("AddMember", LIST, CONTACT, ()), *removal, ("AddListMembers", LIST, None, (CONTACT,))]


# --- tenants with and without the Outbound marketing solution -----------------------------------

def test_the_metadata_api_lists_the_outbound_column_only_where_the_solution_is(srv, api):
    r = api.get(f"{api.base}/EntityDefinitions(LogicalName='list')/Attributes",
                params={"$select": "LogicalName", "$filter": "LogicalName eq 'msdyncrm_issubscription'"})
    assert r.status_code == 200
    names = [a["LogicalName"] for a in r.json()["value"]]
    assert names == ([] if srv.store.without_outbound_solution else ["msdyncrm_issubscription"])


@pytest.mark.parametrize("params", [{"$select": "listid,msdyncrm_issubscription"},
                                    {"$filter": "msdyncrm_issubscription eq true"},
                                    {"$orderby": "msdyncrm_issubscription desc"}])
def test_an_absent_column_is_a_400_naming_it(srv, api, params):
    r = api.get(f"{api.base}/lists", params=params)
    if not srv.store.without_outbound_solution:
        assert r.status_code == 200
        return
    assert r.status_code == 400
    assert r.json()["error"]["message"] == ("Could not find a property named 'msdyncrm_issubscription' on type "
                                            "'Microsoft.Dynamics.CRM.list'.")
    w = api.patch(f"{api.base}/lists({LIST})", json={"msdyncrm_issubscription": False}, headers={"If-Match": "*"})
    assert w.status_code == 400 and "msdyncrm_issubscription" in w.json()["error"]["message"]
    assert "msdyncrm_issubscription" not in api.get(f"{api.base}/lists({LIST})").json()


def test_the_client_reads_lists_in_every_tenant_shape(srv, api):
    client = DataverseClient(srv.api_url, StaticToken("conformance"), retry_budget=5)
    try:
        (lst,) = client.marketing_lists()
        assert lst.id == LIST and lst.member_table == "contact" and lst.is_subscription
        assert client.resolve_list("News").id == LIST
        assert client.outbound_solution() is (not srv.store.without_outbound_solution)
        assert [l.id for l in client.marketing_lists(subscription_only=True)] == [LIST]
        res = client.add_list_members([(LIST, "contact", CONTACT)])
        assert res[0].ok and client.request_counts["batch:POST lists/Microsoft.Dynamics.CRM.AddMemberList"] == 1
    finally:
        client.close()


def test_the_client_removes_members_the_way_the_environment_offers(srv, api):
    """The first removal tells the client which way the environment takes (no extra request where
    RemoveMemberList is an action); without it the listmember rows are found in one $batch of
    queries (one per list) and deleted in one more, and later removals go that way at once."""
    no_action = srv.store.without_remove_member_action
    other = str(uuid.uuid4())
    srv.store.load({"contacts": [{"contactid": other, "lastname": "Bo"}]})
    for member in (CONTACT, other):
        api.post(f"{api.base}/lists({LIST})/Microsoft.Dynamics.CRM.AddMemberList", json={"EntityId": member})
    client = DataverseClient(srv.api_url, StaticToken("conformance"), retry_budget=5)
    try:
        stranger = str(uuid.uuid4())  # not a member: leaving is already done
        res = client.remove_list_members([(LIST, "contact", CONTACT), (LIST, "contact", stranger)])
        assert [r.ok for r in res] == [True, True] and _members(api) == [other]
        counts = client.request_counts
        assert counts["POST $batch"] == (3 if no_action else 1)
        assert counts["batch:DELETE listmembers"] == (1 if no_action else 0)
        client.reset_counts()
        assert client.remove_list_members([(LIST, "contact", other)])[0].ok and _members(api) == []
        assert client.request_counts["POST $batch"] == (2 if no_action else 1)
        assert client.request_counts["batch:POST lists/Microsoft.Dynamics.CRM.RemoveMemberList"] == (0 if no_action else 1)
        client.reset_counts()
        assert client.member_removal(probe=True) == (REMOVAL_ROW if no_action else REMOVAL_ACTION)
        assert client.total_requests == 1 and _members(api) == []  # the probe changes nothing
    finally:
        client.close()


def test_the_sync_gateway_removes_members_the_way_the_environment_offers(srv, api):
    from shared.adapters.sync_gateway import DataverseSyncGateway
    from shared.domain.planner import RemoveFromList, SetDoNotBulkEmail

    api.post(f"{api.base}/lists({LIST})/Microsoft.Dynamics.CRM.AddMemberList", json={"EntityId": CONTACT})
    client = DataverseClient(srv.api_url, StaticToken("conformance"), retry_budget=5)
    try:
        gateway = DataverseSyncGateway(client)
        actions = [RemoveFromList(("contact", CONTACT), LIST, (), "R1", None),
                   SetDoNotBulkEmail(("contact", CONTACT), (), "R3", None)]
        for _ in range(2):  # twice: the second time the member is already gone, which is success
            results = gateway.write(actions, "straddle")
            assert [r.ok for r in results] == [True, True] and [r.id for r in results] == [CONTACT, CONTACT]
            assert _members(api) == [] and api.get(f"{api.base}/contacts({CONTACT})").json()["donotbulkemail"] is True
    finally:
        client.close()


# --- the registration tables: documented columns and choice values ------------------------------

def test_serviceendpoint_takes_the_documented_webhook_columns(api):
    # Contract 8 Webhook, AuthType 5 Http Header, MessageFormat 2 Json, UserClaim 1 None,
    # NamespaceFormat 2 Namespace Address, ConnectionMode 1 Normal, MessageCharset 1 UTF8, SchemaType 2.
    body = {"name": "conformance", "contract": 8, "url": "https://example.test/api/hook", "authtype": 5,
            "authvalue": '<settings><setting name="x-key" value="v" /></settings>', "messageformat": 2,
            "userclaim": 1, "namespaceformat": 2, "connectionmode": 1, "messagecharset": 1, "schematype": 2,
            "description": "d", "path": "", "solutionnamespace": "", "saskeyname": "", "usekeyvaultconfiguration": False}
    assert api.post(f"{api.base}/serviceendpoints", json=body).status_code == 204
    r = api.post(f"{api.base}/serviceendpoints", json={**body, "contract": 11})
    assert r.status_code == 400 and "outside the valid range" in r.json()["error"]["message"]
    r = api.post(f"{api.base}/serviceendpoints", json={**body, "signingkey": "x"})
    assert r.status_code == 400 and "Could not find a property named 'signingkey'" in r.json()["error"]["message"]


@pytest.mark.parametrize("column,good,bad", [("stage", 40, 41), ("mode", 1, 2), ("supporteddeployment", 2, 3),
                                             ("invocationsource", -1, 2)])
def test_sdkmessageprocessingstep_choices_are_the_documented_ones(api, column, good, bad):
    base = {"name": "s", "stage": 40, "mode": 1, "rank": 1, "supporteddeployment": 0, "asyncautodelete": True,
            "canbebypassed": False, "canusereadonlyconnection": False, "enablepluginprofiler": False,
            "category": "c", "eventexpander": "", "runtimeintegrationproperties": ""}
    assert api.post(f"{api.base}/sdkmessageprocessingsteps", json={**base, column: good}).status_code == 204
    r = api.post(f"{api.base}/sdkmessageprocessingsteps", json={**base, column: bad})
    assert r.status_code == 400 and f"'{column}'" in r.json()["error"]["message"]


def test_sdkmessageprocessingstepimage_choices_and_columns(api):
    base = {"name": "i", "entityalias": "PostImage", "attributes": "a", "messagepropertyname": "Target",
            "relatedattributename": "r", "description": "d"}
    for kind in (0, 1, 2):  # PreImage, PostImage, Both
        assert api.post(f"{api.base}/sdkmessageprocessingstepimages", json={**base, "imagetype": kind}).status_code == 204
    assert api.post(f"{api.base}/sdkmessageprocessingstepimages", json={**base, "imagetype": 3}).status_code == 400


# --- the documented webhook sample ---------------------------------------------------------------

def _documented_update_sample(target: dict) -> dict:
    """The shape of Microsoft's sample: an async post-operation Update of a contact, whose Target
    holds the changed columns plus contactid/modifiedon/modifiedby, a ParentContext at stage 30,
    and an image keyed by its alias."""
    ctx = n.member_change("Update", "contact", {**target, "contactid": n.CONTACT_ID}, post={"fullname": "James Glynn"})
    ctx["ParentContext"] = {**{k: v for k, v in ctx.items() if k != "ParentContext"}, "Stage": 30, "ParentContext": None}
    return ctx


def test_the_documented_sample_reduces_as_documented():
    # The sample's own change (a first name) is not watched; the same shape carrying an opt-out is.
    assert not hasattr(parse_notification(n.to_bytes(_documented_update_sample({"firstname": "James"})), {}), "id")
    ev = parse_notification(n.to_bytes(_documented_update_sample({"donotbulkemail": True})), {})
    assert ev.kind == "contact_changed" and ev.change.donotbulkemail is True


def test_the_size_exceeded_sample_is_reread():
    # Over 256 KB Dataverse strips ParentContext, InputParameters and both image collections and
    # adds the header (its value is not documented); "some operations do not include" them at all.
    stripped = n.size_exceeded(_documented_update_sample({"donotbulkemail": True}))
    for headers in ({"x-ms-dynamics-msg-size-exceeded": ""}, {}):
        ev = parse_notification(n.to_bytes(stripped), headers)
        assert ev.kind == "reread_record" and ev.record_id == n.CONTACT_ID


def test_serviceendpoint_secrets_are_not_readable(api):
    r = api.post(f"{api.base}/serviceendpoints", json={"name": "s", "contract": 8, "url": "https://x.test", "authtype": 4,
                                                        "authvalue": "key-value"})
    row_id = re.search(r"\(([0-9a-f-]{36})\)", r.headers["OData-EntityId"]).group(1)
    got = api.get(f"{api.base}/serviceendpoints({row_id})", params={"$select": "name,authvalue"}).json()
    assert got["name"] == "s" and got["authvalue"] is None
    assert "key-value" not in api.get(f"{api.base}/serviceendpoints").text


# --- queries, batches and service protection (the Web API pages; FIDELITY.md) --------------------

def test_top_is_ignored_with_a_page_size_and_the_client_sends_none_with_top(srv, api):
    more = [{"contactid": str(uuid.uuid4()), "lastname": f"P{i}"} for i in range(3)]
    srv.store.load({"contacts": more})
    assert len(api.get(f"{api.base}/contacts", params={"$top": "2"}).json()["value"]) == 2
    paged = api.get(f"{api.base}/contacts", params={"$top": "2"}, headers={"Prefer": "odata.maxpagesize=3"})
    assert len(paged.json()["value"]) == 3 and "@odata.nextLink" in paged.json()  # $top ignored: 4 rows, pages of 3
    client = DataverseClient(srv.api_url, StaticToken("conformance"), retry_budget=5, page_size=3)
    try:
        assert len(list(client.query_rows("contacts", {"$select": "contactid", "$top": "2"}))) == 2
        assert len(list(client.query_rows("contacts", {"$select": "contactid"}))) == 4
        assert client.largest_key("contacts", "contactid") is not None
    finally:
        client.close()


def _batch_body(*parts: tuple[str, str, str | None]) -> bytes:
    out = []
    for method, url, body in parts:
        out.append(f"--batch_c\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n\r\n"
                   f"{method} {url} HTTP/1.1\r\nContent-Type: application/json\r\n\r\n{body or ''}\r\n")
    return ("".join(out) + "--batch_c--\r\n").encode()


def test_a_failing_batch_without_continue_on_error_answers_400(srv, api):
    # The documented example: the first request fails, the batch stops and answers 400 holding that error.
    body = _batch_body(("POST", "/api/data/v9.2/contacts", '{"lastname": "x", "nosuchcolumn": 1}'),
                       ("POST", "/api/data/v9.2/contacts", '{"lastname": "never"}'))
    headers = {"Content-Type": "multipart/mixed; boundary=batch_c"}
    r = api.post(f"{api.base}/$batch", data=body, headers=headers)
    assert r.status_code == 400 and r.headers["Content-Type"].startswith("multipart/mixed")
    assert r.text.count("HTTP/1.1 ") == 1 and "HTTP/1.1 400" in r.text  # stopped at the failure
    assert api.get(f"{api.base}/contacts", params={"$filter": "lastname eq 'never'"}).json()["value"] == []
    r = api.post(f"{api.base}/$batch", data=body, headers={**headers, "Prefer": "odata.continue-on-error"})
    assert r.status_code == 200 and "HTTP/1.1 204" in r.text
    client = DataverseClient(srv.api_url, StaticToken("conformance"), retry_budget=5)
    try:  # the client always asks to continue: every row gets its own answer
        res = client.set_member_flags([("contact", str(uuid.uuid4()), {"donotemail": True}),
                                       ("contact", CONTACT, {"donotemail": True})])
        assert [r.ok for r in res] == [False, True] and res[0].status == 404
    finally:
        client.close()


def test_lookups_order_by_the_related_rows_primary_name(srv, api):
    # Order rows: "results are sorted using the primary name field for the related table".
    low, high = "00000000-0000-0000-0000-0000000000a1", "ffffffff-0000-0000-0000-0000000000a2"
    srv.store.load({"purposes": [{"msdynmkt_purposeid": low, "msdynmkt_name": "Zeta"},
                                 {"msdynmkt_purposeid": high, "msdynmkt_name": "alpha"}],
                    "topics": [{"msdynmkt_topicid": str(uuid.uuid4()), "msdynmkt_name": f"t{i}",
                                "_msdynmkt_purposeid_value": p} for i, p in enumerate((low, high))]})
    rows = api.get(f"{api.base}/msdynmkt_topics", params={"$select": "msdynmkt_name",
                                                          "$orderby": "_msdynmkt_purposeid_value"}).json()["value"]
    assert [r["msdynmkt_name"] for r in rows] == ["t1", "t0"]  # alpha before Zeta, whatever the GUIDs


def test_the_consent_table_has_no_name_column(api):
    # The Contact Point Consent reference lists no msdynmkt_name; its primary name is the contact point.
    r = api.post(f"{api.base}/msdynmkt_contactpointconsent4s", json={"msdynmkt_contactpointvalue": "a@example.test",
                                                                     "msdynmkt_name": "x"})
    assert r.status_code == 400 and "'msdynmkt_name'" in r.json()["error"]["message"]
    assert api.get(f"{api.base}/msdynmkt_contactpointconsent4s", params={"$select": "msdynmkt_name"}).status_code == 400


def test_a_steps_state_is_not_set_on_create(api):
    r = api.post(f"{api.base}/sdkmessageprocessingsteps", json={"name": "s", "stage": 40, "mode": 1, "statecode": 1,
                                                                 "statuscode": 2})
    step = re.search(r"\(([0-9a-f-]{36})\)", r.headers["OData-EntityId"]).group(1)
    assert api.get(f"{api.base}/sdkmessageprocessingsteps({step})").json()["statecode"] == 0  # created enabled
    api.patch(f"{api.base}/sdkmessageprocessingsteps({step})", json={"statecode": 1, "statuscode": 2},
              headers={"If-Match": "*"})
    assert api.get(f"{api.base}/sdkmessageprocessingsteps({step})").json()["statecode"] == 1  # an update sets it


def test_dataverse_sends_its_recommended_parallelism_and_the_client_keeps_it():
    from shared.adapters.sync_gateway import DataverseSyncGateway

    with SandboxServer(port=0, seed=SEED, dop_hint=3) as s:
        assert requests.get(f"{s.api_url}/WhoAmI", headers={"Authorization": "Bearer c"}).headers["x-ms-dop-hint"] == "3"
        client = DataverseClient(s.api_url, StaticToken("conformance"), retry_budget=5)
        try:
            client.who_am_i()
            assert client.dop_hint == 3 and DataverseSyncGateway(client).parallelism_hint() == 3
        finally:
            client.close()


def test_combined_execution_time_over_the_window_is_a_429_the_client_waits_out():
    # 20 minutes per 5 minutes in Dataverse; here 0.1 s per 1 s, with each request taking 60 ms.
    with SandboxServer(port=0, seed=SEED, execution_limit=(0.1, 1.0)) as s:
        s.set_faults({"delay_share": 1.0, "delay_ms": 60})
        api = _session(s)
        codes = [api.get(f"{s.api_url}/WhoAmI") for _ in range(3)]
        assert [c.status_code for c in codes] == [200, 200, 429]
        err = codes[2].json()["error"]
        assert err["code"] == "0x80072321" and int(codes[2].headers["Retry-After"]) >= 1
        assert err["message"].startswith("Combined execution time of incoming requests exceeded limit of 100 milliseconds")
        client = DataverseClient(s.api_url, StaticToken("another caller"), retry_budget=10)
        try:  # another caller is not held back; its own third request waits for the Retry-After
            assert [client.get_json("WhoAmI")["UserId"] for _ in range(3)]
            assert client.request_counts["throttled"] >= 1 and client.request_counts["GET WhoAmI"] >= 4
        finally:
            client.close()
