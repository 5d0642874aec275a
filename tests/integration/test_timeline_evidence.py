"""The timeline rule's Dataverse evidence read through real HTTP from the sandbox: listmember
createdon dates an opt-out list join (R5), audit history dates a flag (R3), and each decides the
verdict on the person's re-consent both ways. Dataverse keeps times in whole seconds, so the
steps are a little over a second apart."""
from __future__ import annotations

import time

import pytest
import requests

from sandbox.dataverse import SandboxServer
from shared.adapters.dataverse import DataverseClient, StaticToken
from shared.adapters.sync_gateway import DataverseSyncGateway
from shared.service_layer.mappings import import_mappings
from shared.domain.consent import ConsentSource, ConsentValue
from shared.domain.planner import OptOutConsent, Trigger
from shared.service_layer.process_changes import plan_in_rounds
from tests.integration.tenant import consent_row, contact, gid, mappings_file, tenant

pytestmark = pytest.mark.integration

CONTOSO, OO_CONTOSO = gid("Contoso marketing"), gid("Contoso Opt-out")
EMAIL = "pat@contoso.test"
PAT = contact("pat", EMAIL)
ROW = consent_row(EMAIL, CONTOSO, None, ConsentValue.OPTED_OUT.value)
PERSON, CRM_USER = "Bearer the-preference-centre", "Bearer a-crm-user"
TICK = 1.1  # past the next whole second


@pytest.fixture(params=[True, False], ids=["auditing on", "auditing off"])
def auditing(request):
    return request.param


def _world(mode: str, auditing: bool = True):
    srv = SandboxServer(port=0, seed=tenant([PAT], consents=[ROW]), auditing=auditing).start()
    client = DataverseClient(srv.api_url, StaticToken("straddle-sync"))
    return srv, client, DataverseSyncGateway(client), import_mappings(mappings_file(mode), client, None)


def _as(srv, who: str, method: str, path: str, body: dict) -> None:
    r = requests.request(method, f"{srv.api_url}/{path}", json=body, timeout=10,
                         headers={"Authorization": who, "If-Match": "*"} if method == "PATCH" else {"Authorization": who})
    assert r.status_code in (200, 204), r.text


def _reconsent(srv) -> None:
    """The person opts back in from the preference centre."""
    _as(srv, PERSON, "PATCH", f"msdynmkt_contactpointconsent4s({ROW['msdynmkt_contactpointconsent4id']})",
        {"msdynmkt_value": ConsentValue.OPTED_IN.value, "msdynmkt_source": ConsentSource.PREFERENCE_CENTER.value})


def _judge(gateway, mappings):
    _, p, _, incomplete = plan_in_rounds(gateway, mappings, [Trigger("inspect_member", "run-1", member=("contact", PAT["contactid"]))],
                                         history=lambda email: [])
    assert not incomplete
    (r,) = [r for r in p.reconsents if r.row_id == ROW["msdynmkt_contactpointconsent4id"]]
    overwritten = [a for a in p.actions if isinstance(a, OptOutConsent) and a.row_id == r.row_id]
    return r, overwritten


@pytest.mark.parametrize("joined_first", [True, False], ids=["join older: stands", "join newer: opt-out wins"])
def test_listmember_createdon_dates_an_opt_out_list_join(joined_first):
    srv, client, gateway, mappings = _world("multi-brand")
    try:
        join = lambda: _as(srv, CRM_USER, "POST", f"lists({OO_CONTOSO})/Microsoft.Dynamics.CRM.AddMemberList",
                           {"EntityId": PAT["contactid"]})
        first, second = (join, lambda: _reconsent(srv)) if joined_first else (lambda: _reconsent(srv), join)
        first()
        time.sleep(TICK)
        second()
        before = dict(client.request_counts)
        r, overwritten = _judge(gateway, mappings)
        (j,) = r.judgements
        assert j.opt_out.evidence == "listmember createdon" and j.opt_out.exact
        assert client.request_counts["GET listmembers"] - before.get("GET listmembers", 0) == 1
        if joined_first:
            assert r.verdict == "stands" and not overwritten
        else:
            assert r.verdict == "opt-out newer" and overwritten
    finally:
        srv.stop()


@pytest.mark.parametrize("flag_first", [True, False], ids=["flag older: stands", "flag newer: opt-out wins"])
def test_audit_history_dates_a_flag_a_crm_user_set(flag_first, auditing):
    srv, client, gateway, mappings = _world("single-brand", auditing)
    try:
        flag = lambda: _as(srv, CRM_USER, "PATCH", f"contacts({PAT['contactid']})", {"donotbulkemail": True})
        first, second = (flag, lambda: _reconsent(srv)) if flag_first else (lambda: _reconsent(srv), flag)
        first()
        time.sleep(TICK)
        second()
        time.sleep(TICK)
        # An unrelated edit moves the contact's modifiedon past the re-consent: alone, it dates nothing.
        _as(srv, CRM_USER, "PATCH", f"contacts({PAT['contactid']})", {"jobtitle": "Buyer"})
        before = dict(client.request_counts)
        r, overwritten = _judge(gateway, mappings)
        (j,) = r.judgements
        audits = client.request_counts["GET audits"] - before.get("GET audits", 0)
        assert audits == 1  # asked once, on this conflict only
        if not auditing:  # no record: today's behaviour, the order is unknown and the opt-out wins
            assert (j.opt_out.evidence, r.verdict) == ("contact modifiedon", "order unknown") and overwritten
        elif flag_first:
            assert (j.opt_out.evidence, r.verdict) == ("audit history", "stands") and not overwritten
        else:
            assert (j.opt_out.evidence, r.verdict) == ("audit history", "opt-out newer") and overwritten
    finally:
        srv.stop()


def test_the_sandbox_serves_listmembers_for_reading_and_deleting_and_audits_read_only():
    srv, client, _, _ = _world("multi-brand")
    try:
        for method, path in (("POST", "listmembers"), ("PATCH", f"listmembers({gid('x')})"), ("POST", "audits"),
                             ("DELETE", f"audits({gid('x')})")):
            r = requests.request(method, f"{srv.api_url}/{path}", json={}, headers={"Authorization": CRM_USER},
                                 timeout=10)
            assert r.status_code == 405 and "error" in r.json(), (method, path, r.text)
        r = requests.get(f"{srv.api_url}/listmembers({gid('x')})", headers={"Authorization": CRM_USER}, timeout=10)
        assert r.status_code == 405  # RetrieveMultiple only
        # Delete is documented on the table (how members leave where RemoveMemberList is no action).
        r = requests.delete(f"{srv.api_url}/listmembers({gid('x')})", headers={"Authorization": CRM_USER}, timeout=10)
        assert r.status_code == 404 and r.json()["error"]["code"] == "0x80040217"
    finally:
        srv.stop()
