"""The person's newest choice stands, end to end through the sandbox and the local host.

A person opts out of the brand's purpose in RTM; the event path sets donotbulkemail (R4). Later the
person opts back in from the preference centre. Neither the webhook path (an unrelated edit of the
contact, and the re-consent's own notification) nor the nightly run writes the row back; the
report counts the re-consent, explain shows why it stands, and the OBM flag stays (the sync never
creates an opt-in). A CRM user setting the flag again afterwards is a newer opt-out: it wins.
"""
from __future__ import annotations

import time

import pytest

from sandbox.demo.scenario import Marketer
from sandbox.demo.stack import DemoStack
from shared.domain.consent import ConsentSource, ConsentValue
from tests.integration.tenant import consent_row, contact, gid, mappings_file, tenant

pytestmark = pytest.mark.integration

EMAIL = "pat.person@contoso.example"
PAT = gid("pat")
CONTOSO = gid("Contoso marketing")
ROW = gid("pat-contoso-row")
OUT, IN = ConsentValue.OPTED_OUT.value, ConsentValue.OPTED_IN.value


def next_second() -> None:
    """Dataverse's modifiedon counts whole seconds: a tie is an unknown order (the opt-out wins)."""
    time.sleep(1.05 - (time.time() % 1))


@pytest.fixture
def stack(azurite_tables):
    seed = tenant([contact("pat", EMAIL)], consents=[consent_row(EMAIL, CONTOSO, None, IN, "pat-contoso-row")])
    s = DemoStack({}, seed=seed, azurite_connection=azurite_tables, mappings_doc=mappings_file("single-brand"),
                  function_key="e2e-function-key", master_key="e2e-master-key").start()
    yield s
    s.close()


def row(stack) -> dict:
    return stack.sandbox.store.data["msdynmkt_contactpointconsent4"].rows[ROW]


def flag(stack) -> bool:
    return bool(stack.sandbox.store.data["contact"].rows[PAT].get("donotbulkemail"))


def test_a_re_consent_after_the_propagated_opt_out_stands_on_both_paths(stack):
    from shared.service_layer.explain import explain
    from shared.service_layer.reconcile import run_reconciliation

    person = Marketer(stack.sandbox.api_url)  # any user but the sync's
    # 1. The person opts out of the purpose in RTM: the event path sets the flag (R4).
    person.call("PATCH", f"msdynmkt_contactpointconsent4s({ROW})",
                {"msdynmkt_value": OUT, "msdynmkt_source": ConsentSource.PREFERENCE_CENTER.value})
    assert stack.settle(20) and flag(stack)

    # 2. Later, the person opts back in from the preference centre.
    next_second()
    person.call("PATCH", f"msdynmkt_contactpointconsent4s({ROW})",
                {"msdynmkt_value": IN, "msdynmkt_source": ConsentSource.PREFERENCE_CENTER.value})
    assert stack.settle(20)
    assert row(stack)["msdynmkt_value"] == IN  # the webhook for the re-consent left it alone

    # 3. An unrelated edit of the contact (it moves modifiedon past the re-consent) and a webhook
    #    for the contact: still the person's choice.
    next_second()
    person.call("PATCH", f"contacts({PAT})", {"emailaddress1": EMAIL.upper()})
    assert stack.settle(20)
    assert row(stack)["msdynmkt_value"] == IN and flag(stack)  # the flag is not cleared: never an opt-in

    # 4. The nightly run, through the host's timer endpoint: nothing to heal, the re-consent counted.
    assert stack.run_timer("nightly_reconcile") == 202
    assert stack.settle(30) and stack.host.functions["nightly_reconcile"].failures == 0
    report = stack.container.tables().runs.latest(1)[0]
    assert report["status"] == "succeeded" and report["drift_fixed"] == 0, report
    assert report["reconsented_in_rtm"] == 1 and report["reconsented_in_rtm_oldest"] == row(stack)["modifiedon"]
    assert report["opt_out_order_unknown"] == 0
    assert row(stack)["msdynmkt_value"] == IN and flag(stack)

    # The ledger remembers the verdict; explain shows the timeline and why the newer choice stands.
    seen = explain(EMAIL, stack.container.dataverse(), stack.container.mappings(), stack.container.tables().ledger)
    assert seen["consistent"] and seen["pending"] == []
    t, = seen["timeline"]
    assert t["verdict"] == "stands" and t["reconsented_at"] == row(stack)["modifiedon"]
    assert [(j["evidence"], j["stands"]) for j in t["against"]] == [("ledger", True)]
    assert any(h["action"].startswith("keep re-consent") and h["outcome"] == "refused" for h in seen["ledger"])

    # 5. A CRM user sets the flag again: a newer opt-out than the re-consent, so it wins (R3).
    next_second()
    person.call("PATCH", f"contacts({PAT})", {"donotbulkemail": False})
    person.call("PATCH", f"contacts({PAT})", {"donotbulkemail": True})
    assert stack.settle(20)
    assert row(stack)["msdynmkt_value"] == OUT
    again = run_reconciliation(stack.container, dry_run=True)
    assert again["drift_found"] == 0 and again["reconsented_in_rtm"] == 0, again
