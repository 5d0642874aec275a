"""The demo scenario end to end over HTTP: the Dataverse sandbox's webhooks reach the local host,
which queues, batches and runs the real functions; the final state is read back from the sandbox."""
from __future__ import annotations

import pytest

from sandbox.demo.scenario import Marketer, play, steps, table
from sandbox.demo.stack import DemoStack
from sandbox.demo.tenant import OPTED_OUT, Cast, generate, list_id, purpose_id, topic_id

pytestmark = pytest.mark.integration


#: The webhook settings exactly as infra/ deploys them: a shared secret header on top of the function key.
INFRA_SETTINGS = {"WEBHOOK_SECRET_HEADER": "x-straddle-secret", "WEBHOOK_SECRET": "e2e-webhook-secret-0123456789-Xq7Rm2Kv"}


@pytest.fixture(scope="module")
def stack(azurite_tables):
    s = DemoStack(INFRA_SETTINGS, seed=generate(contacts=400, seed=3), azurite_connection=azurite_tables,
                  function_key="e2e-function-key", master_key="e2e-master-key").start()
    yield s
    s.close()


def members(stack, name: str) -> set[str]:
    rel = "listlead_association" if name == "Contoso Webinar Leads" else "listcontact_association"
    return set(stack.sandbox.store.members[rel].get(list_id(name), set()))


def opted_out(stack, email: str, brand: str, topic: str | None = None) -> bool:
    rows = [r for r in stack.sandbox.store.data["msdynmkt_contactpointconsent4"].rows.values()
            if (r.get("msdynmkt_contactpointvalue") or "").strip().lower() == email.lower()
            and r.get("_msdynmkt_purposeid_value") == purpose_id(brand)
            and r.get("_msdynmkt_topicid_value") == (topic_id(topic) if topic else None)]
    return bool(rows) and all(r["msdynmkt_value"] == OPTED_OUT for r in rows)


def test_the_webhook_needs_the_function_key_and_the_secret(stack):
    import requests

    url = f"{stack.host.url}/api/dataverse/webhook"
    secret = {"x-straddle-secret": INFRA_SETTINGS["WEBHOOK_SECRET"]}
    assert requests.post(url, data=b"{}", headers=secret).status_code == 401  # the host: no function key
    assert requests.post(url, data=b"{}", params={"code": "e2e-function-key"}).status_code == 401  # the app: no secret
    assert requests.post(url, data=b"{}", headers={"x-functions-key": "e2e-function-key", **secret}).status_code == 400


def test_every_step_propagates_and_the_reconciliation_heals_the_drift(stack):
    marketer = Marketer(stack.sandbox.api_url)
    played = [play(s, marketer, timeout=20) for s in steps()]
    assert all(s.done for s in played), table(played)
    assert stack.settle(20)
    c = Cast
    # what the rules demand, read from the sandbox itself
    assert all(opted_out(stack, e, "Contoso", "Contoso News") for e in c.ann.emails)
    assert c.ann.id not in members(stack, "Contoso News") and c.ann_twin.id not in members(stack, "Contoso News")
    assert not {c.bo.id, c.bo_twin.id} & members(stack, "Fabrikam Deals")
    assert all(opted_out(stack, e, b) for e in c.cy.emails for b in ("Contoso", "Fabrikam"))
    assert c.di.id in members(stack, "Contoso Opt-out") and c.di.id in members(stack, "Fabrikam Deals")
    assert c.di_lead.id not in members(stack, "Contoso Webinar Leads")
    assert c.ed.id in members(stack, "Fabrikam Opt-out") and c.ed.id in members(stack, "Contoso News")
    assert all(opted_out(stack, e, "Fabrikam") for e in c.fay.emails) and c.fay.id in members(stack, "Contoso News")
    assert not stack.sandbox.store.data["contact"].rows[c.di.id].get("donotbulkemail")  # multi-brand: never the flag
    # the sync wrote as itself (its echoes were recognised) and nothing was dead-lettered
    bus = stack.host.bus
    assert bus.queue(bus.changes_queue).deadletter == [] and bus.queue(bus.parked_queue).deadletter == []
    assert stack.host.functions["process_changes"].failures == 0

    from shared.service_layer.reconcile import run_reconciliation

    report = run_reconciliation(stack.container)
    assert report["status"] == "succeeded" and report["drift_found"] > 0
    assert report["drift_fixed"] == report["drift_found"]
    assert stack.settle(20)
    again = run_reconciliation(stack.container, dry_run=True)
    assert again["drift_found"] == 0, again  # healed, and the event path agreed with the nightly run


def test_the_timer_runs_through_the_admin_endpoint(stack):
    import requests

    before = stack.host.functions["nightly_reconcile"].invocations
    r = requests.post(f"{stack.host.url}/admin/functions/nightly_reconcile", json={"input": ""},
                      headers={"x-functions-key": "e2e-master-key"})
    assert r.status_code == 202
    import time

    deadline = time.monotonic() + 30
    while stack.host.functions["nightly_reconcile"].invocations == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stack.host.functions["nightly_reconcile"].invocations == before + 1
    assert stack.host.functions["nightly_reconcile"].failures == 0


def test_registration_sends_both_and_status_flags_one_that_cannot_authenticate(stack):
    from shared.service_layer.webhooks import webhook_status

    client = stack.container.dataverse()
    (endpoint,) = stack.sandbox.store.data["serviceendpoint"].rows.values()
    assert endpoint["authtype"] == 5  # HttpHeader: the function key and the secret, both
    assert "x-functions-key" in endpoint["authvalue"] and "x-straddle-secret" in endpoint["authvalue"]
    ok = webhook_status(client, secret_header="x-straddle-secret")
    assert ok["ok"] and ok["auth_problem"] is None
    # Dataverse delivered every notification of the scenario with a 2xx, none was refused.
    statuses = {d["status"] for d in stack.sandbox.webhooks.log}
    assert statuses and statuses <= {200, 202}, statuses
    # A registration as the old code made it (the secret only) is shown as failing, with its reason.
    old = {**endpoint}
    stack.sandbox.store.update("serviceendpoint", endpoint["serviceendpointid"], {
        "authvalue": '<settings><setting name="x-straddle-secret" value="x" /></settings>',
        "description": "Registered by Straddle"}, "someone")
    bad = webhook_status(client, secret_header="x-straddle-secret")
    assert not bad["ok"] and "older version" in bad["auth_problem"]
    stack.sandbox.store.update("serviceendpoint", endpoint["serviceendpointid"], {
        "description": "Registered by Straddle; authentication sent as: x-straddle-secret"}, "someone")
    bad = webhook_status(client, secret_header="x-straddle-secret")
    assert "does not send the function key" in bad["auth_problem"] and "401" in bad["auth_problem"]
    stack.sandbox.store.update("serviceendpoint", endpoint["serviceendpointid"],
                               {"authvalue": old["authvalue"], "description": old["description"]}, "someone")
    assert webhook_status(client, secret_header="x-straddle-secret")["ok"]
