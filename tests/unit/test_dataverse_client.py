"""The Dataverse client over a fake requests transport: retries, counting, tokens, paging, $batch, operations.

No network: a ``requests`` adapter mounted on the client's session answers from a handler, and a
fake clock makes ``sleep`` instant while still advancing time for the retry budget.
"""
from __future__ import annotations

import json
import logging
import random
import threading
from types import SimpleNamespace
from typing import Any, Callable
from urllib.parse import unquote

import pytest
import requests
from requests.adapters import BaseAdapter
from requests.structures import CaseInsensitiveDict

from shared.adapters.dataverse import (CredentialToken, DataverseAmbiguous, DataverseAuthError, DataverseClient,
                                       DataverseError,
                                       DataverseNotFound, DataverseThrottled, DataverseUnavailable, StaticToken)
from shared.adapters.dataverse.auth import credential_for, token_provider_from_settings
from shared.adapters.settings import Settings
from shared.bootstrap import Container, build_dataverse_client

ROOT = "https://org.crm.dynamics.com/api/data/v9.2"
C1 = "11111111-1111-1111-1111-111111111111"
C2 = "22222222-2222-2222-2222-222222222222"
L1 = "aaaaaaaa-aaaa-aaaa-aaaa-aaaaaaaaaaaa"
P1 = "10000000-0000-0000-0000-000000000003"

Reply = tuple[int, dict, Any]  # status, headers, body (dict -> JSON, str/bytes as is)


class FakeAdapter(BaseAdapter):
    def __init__(self, handler: Callable[[requests.PreparedRequest], Reply | Exception]):
        super().__init__()
        self.handler = handler
        self.requests: list[requests.PreparedRequest] = []

    def send(self, request, **kwargs):
        self.requests.append(request)
        reply = self.handler(request)
        if isinstance(reply, Exception):
            raise reply
        status, headers, body = reply
        resp = requests.Response()
        resp.status_code = status
        resp.headers = CaseInsensitiveDict(headers)
        if isinstance(body, (dict, list)):
            body = json.dumps(body)
            resp.headers.setdefault("Content-Type", "application/json")
        resp._content = body.encode() if isinstance(body, str) else (body or b"")
        resp.request, resp.url = request, request.url
        resp.elapsed = __import__("datetime").timedelta(0)
        return resp

    def close(self):
        pass


class Clock:
    def __init__(self):
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def make(handler, *, tokens=None, budget=60.0, **kw) -> tuple[DataverseClient, FakeAdapter, Clock]:
    adapter, clock = FakeAdapter(handler), Clock()
    session = requests.Session()
    session.mount("https://", adapter)
    client = DataverseClient("https://org.crm.dynamics.com", tokens or StaticToken("tkn"), session=session,
                             sleep=clock.sleep, clock=clock, rng=random.Random(7), retry_budget=budget, **kw)
    return client, adapter, clock


def err(code: str, message: str) -> dict:
    return {"error": {"code": code, "message": message}}


def scripted(*replies: Reply | Exception):
    queue = list(replies)
    return lambda req: queue.pop(0) if len(queue) > 1 else queue[0]


def batch_reply(*parts: tuple[int, dict, str]) -> Reply:
    chunks = []
    for status, headers, body in parts:
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        chunks.append("--batchresponse_z\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n\r\n"
                      f"HTTP/1.1 {status} X\r\n{head}\r\n{body}\r\n")
    return 200, {"Content-Type": "multipart/mixed; boundary=batchresponse_z"}, "".join(chunks) + "--batchresponse_z--\r\n"


def sent_ops(request) -> list[str]:
    """Request lines of the parts of a sent $batch."""
    body = request.body.decode()
    return [ln for ln in body.split("\r\n") if ln.endswith(" HTTP/1.1")]


# --- headers, paging ---------------------------------------------------------------------------

def test_headers_and_token():
    client, adapter, _ = make(scripted((200, {}, {"UserId": C1.upper()})))
    assert client.who_am_i() == C1
    assert client.who_am_i() == C1  # cached
    (req,) = adapter.requests
    assert req.url == f"{ROOT}/WhoAmI"
    h = req.headers
    assert (h["OData-Version"], h["OData-MaxVersion"], h["Accept"]) == ("4.0", "4.0", "application/json")
    assert h["Content-Type"] == "application/json; charset=utf-8" and h["Authorization"] == "Bearer tkn"
    assert client.request_counts["GET WhoAmI"] == 1 and client.total_requests == 1


def test_paging_follows_next_link_unchanged_and_streams():
    next_link = (f"{ROOT}/contacts?$select=contactid&$skiptoken=%3Ccookie%20pagenumber=%222%22%20"
                 "pagingcookie=%22%253ccookie%2520page%253d%25221%2522%253e%22%20/%3E")
    pages = {
        0: (200, {}, {"value": [{"contactid": C1}], "@odata.nextLink": next_link}),
        1: (200, {}, {"value": [{"contactid": C2}]}),
    }
    client, adapter, _ = make(lambda req: pages[len(adapter.requests) - 1], page_size=1)
    rows = client.iter_rows("contacts", ["contactid"])
    assert next(rows) == {"contactid": C1}
    assert len(adapter.requests) == 1  # a generator: the second page is not fetched yet
    assert list(rows) == [{"contactid": C2}]
    first, second = adapter.requests
    assert first.headers["Prefer"] == "odata.maxpagesize=1"
    assert second.url == next_link and second.headers["Prefer"] == "odata.maxpagesize=1"
    assert client.request_counts["GET contacts"] == 2


@pytest.mark.parametrize("link", ["https://attacker.example/api/data/v9.2/contacts?$skiptoken=x",
                                  "http://org.crm.dynamics.com/api/data/v9.2/contacts?$skiptoken=x",
                                  "https://org.crm.dynamics.com.attacker.example/api/data/v9.2/contacts",
                                  "https://org.crm.dynamics.com@attacker.example/api/data/v9.2/contacts"])
def test_a_next_link_to_another_host_is_not_followed_and_the_token_stays_home(link):
    pages = {0: (200, {}, {"value": [{"contactid": C1}], "@odata.nextLink": link})}
    client, adapter, _ = make(lambda req: pages[len(adapter.requests) - 1])
    rows = client.iter_rows("contacts", ["contactid"])
    assert next(rows) == {"contactid": C1}
    with pytest.raises(DataverseError, match="another host than DATAVERSE_URL"):
        next(rows)
    assert len(adapter.requests) == 1  # nothing, and no bearer token, went to the link


def test_who_am_i_also_learns_the_organization_in_the_same_request():
    org = "4ef5b371-e89e-e711-8122-000d3aa2331c"
    client, adapter, _ = make(scripted((200, {}, {"UserId": C1, "OrganizationId": org.upper(), "BusinessUnitId": C2})))
    assert client.organization_id() == org and client.who_am_i() == C1
    assert len(adapter.requests) == 1


# --- retries -----------------------------------------------------------------------------------

def test_429_honours_retry_after_and_is_counted():
    client, adapter, clock = make(scripted((429, {"Retry-After": "7"}, err("0x80072322", "Number of requests exceeded")),
                                           (200, {}, {"UserId": C1})))
    assert client.who_am_i() == C1
    assert clock.sleeps == [7.0]
    counts = client.request_counts
    assert (counts["GET WhoAmI"], counts["retry"], counts["throttled"]) == (2, 1, 1)
    assert client.total_requests == 2


def test_503_honours_retry_after():
    client, _, clock = make(scripted((503, {"Retry-After": "3"}, ""), (200, {}, {"UserId": C1})))
    client.who_am_i()
    assert clock.sleeps == [3.0] and client.request_counts["retry"] == 1


def test_429_beyond_budget_raises_throttled_without_waiting():
    client, _, clock = make(scripted((429, {"Retry-After": "300"}, err("0x80072322", "slow down"))), budget=60)
    with pytest.raises(DataverseThrottled) as info:
        client.who_am_i()
    assert clock.sleeps == [] and info.value.retry_after == 300 and info.value.code == "0x80072322"


def test_5xx_backoff_is_jittered_and_bounded_by_budget():
    client, adapter, clock = make(scripted((500, {}, err("0x80040216", "boom"))), budget=20)
    with pytest.raises(DataverseUnavailable) as info:
        client.who_am_i()
    assert info.value.status == 500 and info.value.code == "0x80040216"
    assert sum(clock.sleeps) <= 20
    assert all(0 <= s <= min(30, 0.5 * 2 ** i) for i, s in enumerate(clock.sleeps))
    assert client.request_counts["retry"] == len(clock.sleeps) == len(adapter.requests) - 1 >= 3


def test_timeouts_and_connection_errors_are_retried_then_typed():
    client, _, clock = make(scripted(requests.ReadTimeout("slow"), requests.ConnectionError("reset"),
                                     (200, {}, {"UserId": C1})))
    assert client.who_am_i() == C1
    assert len(clock.sleeps) == 2 and client.request_counts["network_error"] == 2
    client2, _, _ = make(scripted(requests.ConnectTimeout("x")), budget=5)
    with pytest.raises(DataverseUnavailable):
        client2.who_am_i()


def test_non_retryable_errors_are_typed_at_once():
    client, adapter, _ = make(scripted((404, {}, err("0x80040217", "list With Id = x Does Not Exist"))))
    with pytest.raises(DataverseNotFound) as info:
        client.get_json(f"lists({L1})")
    assert (info.value.status, info.value.code) == (404, "0x80040217") and len(adapter.requests) == 1


def test_retry_logs_name_the_kind_not_the_address(caplog):
    client, _, _ = make(scripted((429, {"Retry-After": "1"}, ""), (200, {}, {"value": []})))
    with caplog.at_level(logging.DEBUG, logger="straddle.dataverse"):
        client.members_by_emails(["secret.person@example.com"])
    assert caplog.records and all("@" not in r.getMessage() for r in caplog.records)
    assert any("kind=GET contacts" in r.getMessage() for r in caplog.records)


# --- auth --------------------------------------------------------------------------------------

def test_missing_or_bad_token_raises_auth_error():
    client, adapter, _ = make(scripted((401, {}, "")))
    with pytest.raises(DataverseAuthError) as info:
        client.who_am_i()
    assert info.value.status == 401 and len(adapter.requests) == 1  # a static token cannot improve


class FakeCredential:
    def __init__(self, clock, lifetime=3600):
        self.clock, self.lifetime, self.calls = clock, lifetime, 0
        self.lock = threading.Lock()

    def get_token(self, scope):
        with self.lock:
            self.calls += 1
            n = self.calls
        return SimpleNamespace(token=f"t{n}", expires_on=self.clock() + self.lifetime)


def test_token_cached_until_five_minutes_before_expiry_and_thread_safe():
    clock = Clock()
    cred = FakeCredential(clock)
    tokens = CredentialToken(cred, "https://org.crm.dynamics.com/.default", clock=clock)
    threads = [threading.Thread(target=tokens.token) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert cred.calls == 1
    clock.now += 3299
    assert tokens.token() == "t1"
    clock.now += 2
    assert tokens.token() == "t2" and cred.calls == 2


def test_401_with_refreshable_token_refetches_once():
    clock = Clock()
    cred = FakeCredential(clock)
    client, adapter, _ = make(scripted((401, {}, ""), (200, {}, {"UserId": C1})),
                              tokens=CredentialToken(cred, "s", clock=clock))
    assert client.who_am_i() == C1
    assert [r.headers["Authorization"] for r in adapter.requests] == ["Bearer t1", "Bearer t2"]
    client2, adapter2, _ = make(scripted((401, {}, "")), tokens=CredentialToken(FakeCredential(clock), "s", clock=clock))
    with pytest.raises(DataverseAuthError):
        client2.who_am_i()
    assert len(adapter2.requests) == 2


def test_credential_failure_is_an_auth_error():
    class Broken:
        def get_token(self, scope):
            raise RuntimeError("no identity endpoint")
    with pytest.raises(DataverseAuthError):
        CredentialToken(Broken(), "s").token()


def test_credential_choice_from_settings():
    from azure.identity import ClientSecretCredential, DefaultAzureCredential, ManagedIdentityCredential
    assert isinstance(credential_for("cid", "tid", "secret"), ClientSecretCredential)
    assert isinstance(credential_for("cid", None, None), ManagedIdentityCredential)
    assert isinstance(credential_for(None, None, None), DefaultAzureCredential)
    with pytest.raises(DataverseAuthError):
        credential_for("cid", None, "secret")
    s = Settings.from_env({"DATAVERSE_URL": "https://org.crm.dynamics.com/", "DATAVERSE_ACCESS_TOKEN": "dev"})
    assert isinstance(token_provider_from_settings(s), StaticToken)
    s2 = Settings.from_env({"DATAVERSE_URL": "https://org.crm.dynamics.com", "DATAVERSE_CLIENT_ID": "cid"})
    provider = token_provider_from_settings(s2)
    assert isinstance(provider, CredentialToken) and "https://org.crm.dynamics.com/.default" in repr(provider)


def test_build_from_settings_and_container():
    s = Settings.from_env({"DATAVERSE_URL": "https://org.crm.dynamics.com", "DATAVERSE_ACCESS_TOKEN": "dev",
                           "DATAVERSE_PAGE_SIZE": "250", "DATAVERSE_RETRY_BUDGET_SECONDS": "9"})
    client = build_dataverse_client(s)
    assert (client.api_url, client.page_size, client.retry_budget) == (ROOT, 250, 9.0)
    container = Container(s)
    assert container.dataverse() is container.dataverse()
    from shared.adapters.settings import SettingsError
    with pytest.raises(SettingsError):
        build_dataverse_client(Settings.from_env({}))


# --- $batch ------------------------------------------------------------------------------------

def test_batch_with_one_failing_item():
    reply = batch_reply((204, {}, ""), (404, {"Content-Type": "application/json"},
                                        json.dumps(err("0x80040217", "contact Does Not Exist"))), (204, {}, ""))
    client, adapter, _ = make(scripted(reply))
    results = client.set_member_flags([("contact", C1, {"donotbulkemail": True}),
                                       ("contact", C2, {"donotbulkemail": True}),
                                       ("lead", C1.replace("1", "3"), {"donotbulkemail": True})])
    assert [r.ok for r in results] == [True, False, True]
    assert results[1].error_code == "0x80040217" and results[1].status == 404 and results[1].id == C2
    (req,) = adapter.requests
    assert req.url == f"{ROOT}/$batch" and req.headers["Prefer"] == "odata.continue-on-error"
    assert req.headers["Content-Type"].startswith("multipart/mixed; boundary=")
    assert sent_ops(req)[0] == f"PATCH {ROOT}/contacts({C1}) HTTP/1.1"
    assert "If-Match: *" in req.body.decode()
    counts = client.request_counts
    assert (counts["POST $batch"], counts["batch:PATCH contacts"], counts["batch:PATCH leads"]) == (1, 2, 1)
    assert client.total_requests == 1 and client.batch_operations == 3


def test_batches_are_split_and_missing_parts_fail():
    def handler(req):
        n = len(sent_ops(req))
        return batch_reply(*[(204, {}, "")] * (n if n == 2 else n - 1))  # the last batch loses a part
    client, adapter, _ = make(handler, batch_size=2)
    results = client.set_member_flags([("contact", C1, {"donotemail": True})] * 5)
    assert len(adapter.requests) == 3
    assert [r.ok for r in results] == [True, True, True, True, False]
    assert "no response" in results[-1].error_message


def test_throttled_batch_is_retried_whole():
    client, adapter, clock = make(scripted((429, {"Retry-After": "2"}, ""), batch_reply((204, {}, ""), (204, {}, ""))))
    results = client.set_member_flags([("contact", C1, {"donotbulkemail": True}), ("contact", C2, {"donotbulkemail": True})])
    assert all(r.ok for r in results) and clock.sleeps == [2.0]
    assert len(sent_ops(adapter.requests[1])) == 2
    assert client.request_counts["POST $batch"] == 2 and client.request_counts["throttled"] == 1


def test_throttled_part_is_resent_alone():
    client, adapter, clock = make(scripted(batch_reply((204, {}, ""), (429, {"Retry-After": "4"}, "")),
                                           batch_reply((204, {}, ""))))
    results = client.set_member_flags([("contact", C1, {"donotbulkemail": True}), ("contact", C2, {"donotbulkemail": True})])
    assert all(r.ok for r in results) and clock.sleeps == [4.0]
    assert sent_ops(adapter.requests[1]) == [f"PATCH {ROOT}/contacts({C2}) HTTP/1.1"]


def test_list_membership_writes_treat_goal_state_as_ok():
    dup = json.dumps(err("0x80040237", "Cannot insert duplicate key."))
    client, adapter, _ = make(scripted(batch_reply((204, {}, ""), (400, {}, dup))))
    res = client.add_list_members([(L1, "contact", C1), (L1, "lead", C2)])
    assert [r.ok for r in res] == [True, True] and res[0].id == C1
    ops = sent_ops(adapter.requests[0])
    # Dataverse's documented route: the list's bound actions (never $ref Associate), inside $batch.
    assert ops == [f"POST {ROOT}/lists({L1})/Microsoft.Dynamics.CRM.AddMemberList HTTP/1.1"] * 2
    assert f'{{"EntityId":"{C1.lower()}"}}' in adapter.requests[0].body.decode()
    assert f'{{"EntityId":"{C2.lower()}"}}' in adapter.requests[0].body.decode()

    client, adapter, _ = make(scripted(batch_reply((404, {}, json.dumps(err("0x80040217", "not a member"))),
                                                   (500, {}, json.dumps(err("0x80040216", "boom"))))))
    res = client.remove_list_members([(L1, "contact", C1), (L1, "contact", C2)])
    assert [r.ok for r in res] == [True, False] and res[1].error_code == "0x80040216"
    assert sent_ops(adapter.requests[0])[0] == f"POST {ROOT}/lists({L1})/Microsoft.Dynamics.CRM.RemoveMemberList HTTP/1.1"
    assert client.request_counts["batch:POST lists/Microsoft.Dynamics.CRM.RemoveMemberList"] == 2
    assert "$ref" not in adapter.requests[0].body.decode()


def test_create_and_update_consent_rows():
    new_id = "BBBBBBBB-0000-0000-0000-000000000001"
    client, adapter, _ = make(scripted(batch_reply(
        (204, {"OData-EntityId": f"{ROOT}/msdynmkt_contactpointconsent4s({new_id})"}, ""),
        (400, {}, json.dumps(err("0x80040203", "Invalid purpose"))))))
    res = client.create_consent_rows([
        dict(contact_point_value="a@x.com", consent_type=534120001, value=534120002, purpose_id=P1,
             topic_id=L1, source=534120006, reason="straddle:1"),
        dict(contact_point_value="b@x.com", consent_type=534120000, value=534120002, purpose_id=P1,
             topic_id=None, source=534120006, reason="straddle:1")])
    assert res[0].ok and res[0].id == new_id.lower() and not res[1].ok
    parts = [p for p in adapter.requests[0].body.decode().split("\r\n") if p.startswith("{")]
    first, second = json.loads(parts[0]), json.loads(parts[1])
    assert first == {"msdynmkt_contactpointtype": 534120000, "msdynmkt_contactpointvalue": "a@x.com",
                     "msdynmkt_contactpointconsenttype": 534120001, "msdynmkt_value": 534120002,
                     "msdynmkt_purposeId@odata.bind": f"/msdynmkt_purposes({P1})",
                     "msdynmkt_topicId@odata.bind": f"/msdynmkt_topics({L1})",
                     "msdynmkt_source": 534120006, "msdynmkt_reason": "straddle:1"}
    assert "msdynmkt_topicId@odata.bind" not in second

    client, adapter, _ = make(scripted(batch_reply((204, {}, ""))))
    res = client.update_consent_rows([(new_id, {"value": 534120002, "reason": "straddle:2"})])
    assert res[0].ok and res[0].id == new_id.lower()
    assert sent_ops(adapter.requests[0]) == [f"PATCH {ROOT}/msdynmkt_contactpointconsent4s({new_id.lower()}) HTTP/1.1"]
    with pytest.raises(ValueError):
        client.update_consent_rows([(new_id, {"bogus": 1})])


# --- reads -------------------------------------------------------------------------------------

def test_members_by_emails_chunks_escapes_and_dedupes():
    emails = [f"o'neil{i}@example.com" for i in range(450)]
    seen_filters = []

    def handler(req):
        flt = unquote(req.url.split("$filter=", 1)[1])
        seen_filters.append(flt)
        assert len(req.url.split("?", 1)[1]) < 8200
        return 200, {}, {"value": [{"contactid": C1.upper(), "emailaddress1": "O'Neil0@example.com", "statecode": 1,
                                    "donotbulkemail": True}]}
    client, adapter, _ = make(handler)
    members = client.members_by_emails(emails)
    assert len(adapter.requests) >= 3
    assert members == [members[0]] and members[0].id == C1 and not members[0].active and members[0].donotbulkemail
    assert "'o''neil0@example.com'" in seen_filters[0]
    for col in ("emailaddress1", "emailaddress2", "emailaddress3"):
        assert f"Microsoft.Dynamics.CRM.In(PropertyName='{col}',PropertyValues=[" in seen_filters[0]
    assert " or " in seen_filters[0]
    assert "+" not in adapter.requests[0].url


def test_consent_rows_filter_and_mapping():
    row = {"msdynmkt_contactpointconsent4id": C1.upper(), "msdynmkt_contactpointvalue": "a@x.com",
           "msdynmkt_contactpointtype": 534120000, "msdynmkt_contactpointconsenttype": 534120000,
           "msdynmkt_value": 534120002, "_msdynmkt_purposeid_value": P1.upper(), "modifiedon": "2024-01-01T00:00:00Z",
           "statecode": 1}
    client, adapter, _ = make(scripted((200, {}, {"value": [row, row]})))
    (c,) = client.consent_rows(["a@x.com"], purpose_ids=[P1], consent_type=534120000)
    assert c.id == C1 and c.purpose_id == P1 and c.topic_id is None and c.opted_out and not c.active
    flt = unquote(adapter.requests[0].url.split("$filter=", 1)[1])
    assert "msdynmkt_contactpointtype eq 534120000" in flt and f"_msdynmkt_purposeid_value eq {P1}" in flt
    assert "msdynmkt_contactpointconsenttype eq 534120000" in flt
    assert client.consent_rows(["a@x.com"], topic_ids=[]) == []


def test_lists_of_members_falls_back_per_member():
    def handler(req):
        if "/listmembers" in req.url:
            return 400, {}, err("0x0", "Resource not found for the segment 'listmembers'.")
        if f"contacts({C1})" in req.url:
            return 200, {}, {"value": [{"listid": L1.upper()}]}
        return 200, {}, {"value": []}
    client, adapter, _ = make(handler)
    assert client.lists_of_members([C1, C2]) == {C1: {L1}, C2: set()}
    assert client.lists_of_members([C1]) == {C1: {L1}}  # no second probe
    assert sum("/listmembers" in r.url for r in adapter.requests) == 1


def test_lists_of_members_single_query():
    client, adapter, _ = make(scripted((200, {}, {"value": [{"_listid_value": L1, "_entityid_value": C1}]})))
    assert client.lists_of_members([C1, C2]) == {C1: {L1}, C2: set()}
    assert len(adapter.requests) == 1


def test_resolve_by_name_and_id():
    lst = {"listid": L1, "listname": "News", "createdfromcode": 4, "msdyncrm_issubscription": True, "statecode": 0}
    client, adapter, _ = make(scripted((200, {}, {"value": [lst]})))
    got = client.resolve_list("News")
    assert (got.id, got.member_table, got.is_subscription) == (L1, "lead", True)
    client, _, _ = make(scripted((200, {}, {"value": []})))
    with pytest.raises(DataverseNotFound, match="Bob's list"):
        client.resolve_list("Bob's list")
    client, _, _ = make(scripted((200, {}, {"value": [lst, lst]})))
    with pytest.raises(DataverseAmbiguous):
        client.resolve_list("News")
    client, _, _ = make(scripted((404, {}, err("0x80040217", "Does Not Exist"))))
    with pytest.raises(DataverseNotFound, match=f"topic {P1}"):
        client.resolve_topic(P1)


def test_reset_counts():
    client, _, _ = make(scripted((200, {}, {"UserId": C1})))
    client.who_am_i()
    client.reset_counts()
    assert client.total_requests == 0 and not client.request_counts


def test_lists_of_members_per_list_when_lists_are_few():
    members = [f"{i:08d}-0000-0000-0000-000000000000" for i in range(6)]

    def handler(req):
        if "/listmembers" in req.url:
            return 404, {}, err("0x80060888", "Resource not found for the segment 'listmembers'.")
        if "/lists?" in req.url:
            assert "createdfromcode eq 2" in unquote(req.url)
            return 200, {}, {"value": [{"listid": L1}]}
        assert f"/lists({L1})/listcontact_association?" in req.url and "In(PropertyName='contactid'" in req.url
        return 200, {}, {"value": [{"contactid": members[0]}, {"contactid": members[3].upper()}]}
    client, adapter, _ = make(handler)
    got = client.lists_of_members(members)
    assert got == {m: ({L1} if m in (members[0], members[3]) else set()) for m in members}
    assert len(adapter.requests) == 3  # probe, lists, one filtered query: not one per member


def test_concurrent_calls_share_the_session_and_count_exactly():
    client, adapter, _ = make(lambda req: (200, {}, {"value": []}))
    threads = [threading.Thread(target=lambda: [client.purposes() for _ in range(25)]) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert client.total_requests == 200 == len(adapter.requests)


def test_retry_after_forms():
    from shared.adapters.dataverse.transport import retry_after_seconds
    assert retry_after_seconds("12") == 12.0 and retry_after_seconds(None) is None
    assert retry_after_seconds("junk") is None
    assert 29 <= retry_after_seconds("Thu, 01 Jan 2026 00:00:30 GMT", now=lambda: 1767225600.0) <= 30


def test_a_connection_that_cannot_be_made_is_told_apart_from_a_dropped_one():
    import requests
    from urllib3.exceptions import MaxRetryError, NameResolutionError, NewConnectionError, ProtocolError

    from shared.adapters.dataverse.transport import connect_failure

    def wrapped(reason):
        return requests.ConnectionError(MaxRetryError(None, "/api/data/v9.2/WhoAmI", reason))

    assert connect_failure(wrapped(NewConnectionError(None, "refused"))) == "connection refused"
    assert connect_failure(wrapped(NameResolutionError("org.example", None, OSError("nope")))) == "host name not found"
    assert connect_failure(requests.ConnectTimeout("connect")) == "no answer to connect"
    assert connect_failure(requests.ConnectionError(ProtocolError("Connection aborted."))) is None
    assert connect_failure(requests.ReadTimeout("read")) is None


def test_list_joined_at_reads_listmember_createdon():
    rows = {"value": [{"_entityid_value": C1.upper(), "createdon": "2026-03-01T09:00:00Z"}]}
    client, adapter, _ = make(scripted((200, {}, rows)))
    assert client.list_joined_at([(L1, C1), (L1, C2)]) == {(L1, C1): "2026-03-01T09:00:00Z", (L1, C2): None}
    url = unquote(adapter.requests[0].url)
    assert "/listmembers?" in url and f"_listid_value eq {L1}" in url and "createdon" in url
    assert len(adapter.requests) == 1


def test_list_joined_at_is_unknown_where_the_intersect_table_is_not_exposed():
    def handler(req):
        return 404, {}, err("0x80060888", "Resource not found for the segment 'listmembers'.")
    client, adapter, _ = make(handler)
    assert client.list_joined_at([(L1, C1)]) == {(L1, C1): None}
    assert client.list_joined_at([(L1, C2)]) == {(L1, C2): None}  # not probed again
    assert len(adapter.requests) == 1


def _audit_handler(audits, *, refuse=None):
    """Metadata names the flags' ColumnNumbers (donotbulkemail 8, donotemail 9); audits answer ``audits``."""
    def handler(req):
        url = unquote(req.url)
        if "EntityDefinitions(LogicalName='contact')/Attributes" in url:
            return 200, {}, {"value": [{"LogicalName": "donotbulkemail", "ColumnNumber": 8},
                                       {"LogicalName": "donotemail", "ColumnNumber": 9}]}
        if "/audits?" in url:
            return refuse or (200, {}, {"value": audits})
        return 404, {}, err("0x80060888", f"unexpected {url}")
    return handler


def test_flag_set_at_is_the_newest_audit_row_that_changed_the_flag():
    audits = [{"createdon": "2026-03-05T10:00:00Z", "attributemask": "12,40"},  # an edit of other columns
              {"createdon": "2026-03-01T09:00:00Z", "attributemask": "7,8"},    # donotbulkemail changed
              {"createdon": "2026-02-01T09:00:00Z", "attributemask": "8"}]
    client, adapter, _ = make(_audit_handler(audits))
    assert client.flag_set_at("contact", C1, "donotbulkemail") == "2026-03-01T09:00:00Z"
    assert client.flag_set_at("contact", C2, "donotemail") is None  # no row changed column 9
    urls = [unquote(r.url) for r in adapter.requests]
    assert sum("EntityDefinitions" in u for u in urls) == 1  # ColumnNumbers read once per table
    audit_urls = [u for u in urls if "/audits?" in u]
    assert len(audit_urls) == 2  # one request per conflict
    assert f"_objectid_value eq {C1}" in audit_urls[0] and "objecttypecode eq 'contact'" in audit_urls[0]
    assert "$orderby=createdon desc" in audit_urls[0] and "attributemask" in audit_urls[0]


def test_flag_set_at_only_for_the_member_flags():
    client, adapter, _ = make(_audit_handler([]))
    assert client.flag_set_at("contact", C1, "emailaddress1") is None
    assert adapter.requests == []


@pytest.mark.parametrize("status,code", [(403, "0x80040220"), (400, "0x80040203"), (404, "0x80060888")])
def test_flag_set_at_refused_falls_back_and_is_not_asked_again(status, code):
    refuse = (status, {}, err(code, "Principal user is missing prvReadAuditSummary privilege."))
    client, adapter, _ = make(_audit_handler([], refuse=refuse))
    assert client.flag_set_at("contact", C1, "donotbulkemail") is None
    assert client.flag_set_at("contact", C2, "donotbulkemail") is None
    assert sum("/audits?" in unquote(r.url) for r in adapter.requests) == 1


def test_flag_set_at_through_the_gateway_skips_ids_that_are_not_guids():
    from shared.adapters.sync_gateway import DataverseSyncGateway
    client, adapter, _ = make(_audit_handler([{"createdon": "2026-03-01T09:00:00Z", "attributemask": "8"}]))
    got = DataverseSyncGateway(client).flag_set_at({(("contact", C1), "donotbulkemail"),
                                                   (("contact", "not-a-guid"), "donotbulkemail")})
    assert got == {(("contact", C1), "donotbulkemail"): "2026-03-01T09:00:00Z",
                   (("contact", "not-a-guid"), "donotbulkemail"): None}


# --- key ranges (the nightly scan's partitions) -------------------------------------------------

def test_key_pages_ask_for_a_key_range_in_key_order_and_say_whether_more_follow():
    pages = [(200, {"x-ms-dop-hint": "12"}, {"value": [{"contactid": C1}], "@odata.nextLink": f"{ROOT}/contacts?$skiptoken=x"}),
             (200, {}, {"value": [{"contactid": C2}]})]
    client, adapter, _ = make(scripted(*pages))
    got = list(client.key_pages("contacts", "contactid", "contactid,emailaddress1", "statecode eq 0", after=C1, upto=C2))
    assert [(len(p), more) for p, more in got] == [(1, True), (1, False)]
    first = unquote(adapter.requests[0].url)
    assert f"$filter=(statecode eq 0) and contactid gt {C1} and contactid le {C2}" in first
    assert "$orderby=contactid" in first and adapter.requests[0].headers["Prefer"] == "odata.maxpagesize=5000"
    assert client.dop_hint == 12  # Dataverse's recommended degree of parallelism is kept


def test_the_largest_key_is_one_row_in_descending_key_order():
    client, adapter, _ = make(scripted((200, {}, {"value": [{"contactid": C2.upper()}]}), (200, {}, {"value": []})))
    assert client.largest_key("contacts", "contactid") == C2
    url = unquote(adapter.requests[0].url)
    assert "$orderby=contactid desc" in url and "$top=1" in url and "$filter" not in url
    assert client.largest_key("contacts", "contactid") is None


# --- member removal and $top ----------------------------------------------------------------------

def test_only_odatas_routing_error_for_remove_member_list_means_the_action_is_missing():
    from shared.adapters.dataverse.client import removal_action_missing

    missing = "Resource not found for the segment 'Microsoft.Dynamics.CRM.RemoveMemberList'."
    assert removal_action_missing(404, missing) and removal_action_missing(400, missing)
    assert not removal_action_missing(404, "list With Id = 1 Does Not Exist")  # the action is there
    assert not removal_action_missing(404, "Resource not found for the segment 'contactss'.")
    assert not removal_action_missing(500, missing) and not removal_action_missing(404, None)


def test_a_query_with_top_sends_no_page_size_which_would_make_dataverse_ignore_top():
    client, adapter, _ = make(lambda req: (200, {}, {"value": [{"contactid": C1}]}), page_size=2)
    assert list(client.query_rows("contacts", {"$select": "contactid", "$top": "1"})) == [{"contactid": C1}]
    assert list(client.query_rows("contacts", {"$select": "contactid"})) == [{"contactid": C1}]
    with_top, without = adapter.requests
    assert "Prefer" not in with_top.headers and "$top=1" in with_top.url
    assert without.headers["Prefer"] == "odata.maxpagesize=2"
