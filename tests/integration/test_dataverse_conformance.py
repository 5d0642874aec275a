"""Conformance: the sandbox against the shapes Microsoft documents, not against its own output.

Each test builds the request as Microsoft's reference page for that operation defines it (names,
parameters, types, choice values; see sandbox/dataverse/FIDELITY.md for the pages) and checks the
documented answer, or Dataverse's refusal. The client is then run against the same sandbox in both
tenant shapes (with and without the Outbound marketing solution).
"""
from __future__ import annotations

import re
import uuid

import pytest
import requests

from sandbox.dataverse import SandboxServer
from shared.adapters.dataverse.auth import StaticToken
from shared.adapters.dataverse.client import DataverseClient
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


@pytest.fixture(scope="module", params=[False, True], ids=["with-outbound", "without-outbound"])
def srv(request):
    with SandboxServer(port=0, seed=SEED, without_outbound_solution=request.param) as s:
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


def test_remove_member_list_bound_to_list_answers_no_content(api):
    api.post(f"{api.base}/lists({LIST})/Microsoft.Dynamics.CRM.AddMemberList", json={"EntityId": CONTACT})
    r = api.post(f"{api.base}/lists({LIST})/Microsoft.Dynamics.CRM.RemoveMemberList", json={"EntityId": CONTACT})
    assert r.status_code == 204 and not r.content


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
        api.post(f"{api.base}/lists({LIST})/Microsoft.Dynamics.CRM.RemoveMemberList", json={"EntityId": CONTACT})
        api.post(f"{api.base}/AddListMembersList", json={
            "List": {"@odata.type": "Microsoft.Dynamics.CRM.list", "listid": LIST},
            "Members": [{"@odata.type": "Microsoft.Dynamics.CRM.contact", "contactid": CONTACT}]})
    finally:
        srv.store.listeners.pop()
        srv.store.hooks_active = hooks_active
    got = [(e["message"], e.get("ListId"), e.get("EntityId"), tuple(e.get("MemberIds") or ())) for e in seen]
    assert got == [("AddMember", LIST, CONTACT, ()), ("RemoveMember", LIST, CONTACT, ()),
                   ("AddListMembers", LIST, None, (CONTACT,))]


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


def test_the_client_reads_lists_in_both_tenant_shapes(srv):
    client = DataverseClient(srv.api_url, StaticToken("conformance"), retry_budget=5)
    try:
        (lst,) = client.marketing_lists()
        assert lst.id == LIST and lst.member_table == "contact" and lst.is_subscription
        assert client.resolve_list("News").id == LIST
        assert client.outbound_solution() is (not srv.store.without_outbound_solution)
        assert [l.id for l in client.marketing_lists(subscription_only=True)] == [LIST]
        res = client.add_list_members([(LIST, "contact", CONTACT)])
        assert res[0].ok and client.request_counts["batch:POST lists/Microsoft.Dynamics.CRM.AddMemberList"] == 1
        assert client.remove_list_members([(LIST, "contact", CONTACT)])[0].ok
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
