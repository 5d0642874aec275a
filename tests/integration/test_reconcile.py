"""The nightly reconciliation against the Dataverse sandbox and Azurite: every drift class found
in a dry run without a write, healed in a real run, and the next dry run at zero."""
from __future__ import annotations

import logging

import pytest
from azure.functions.timer import TimerRequest

from sandbox.stack import Stack
from shared.domain.consent import ConsentValue
from shared.service_layer.reconcile import run_reconciliation
from tests.integration.tenant import consent_row, contact, gid, lead, mappings_file, tenant

pytestmark = pytest.mark.integration

OUT, IN = ConsentValue.OPTED_OUT.value, ConsentValue.OPTED_IN.value
NEWS, DEALS = gid("Contoso News"), gid("Fabrikam Deals")
CONTOSO, FABRIKAM = gid("Contoso marketing"), gid("Fabrikam marketing")
L_NEWS, L_LEADS, L_DEALS = gid("Contoso Newsletter"), gid("Contoso Event Leads"), gid("Fabrikam Deals")
OO_CONTOSO = gid("Contoso Opt-out")


@pytest.fixture
def make_stack(azurite_tables, table_prefix):
    made = []

    def make(seed: dict, mode: str) -> Stack:
        s = Stack(azurite_tables, table_prefix, seed, mappings_file(mode), register_webhooks=False)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


def drifted_single_brand() -> dict:
    d1 = contact("d1", "d1@x.test")  # in the newsletter, opted out of its topic
    d2 = contact("d2", "d2@x.test")  # opted out of the brand purpose, no flag
    d3 = contact("d3", "d3@x.test", "d3@home.test", dnb=True)  # flag, purposes not opted out
    d2_lead = lead("d2-lead", "d2@x.test")
    fine = contact("fine", "fine@x.test")
    return tenant([d1, d2, d3, fine], [d2_lead],
                  [consent_row("d1@x.test", CONTOSO, NEWS, OUT), consent_row("d2@x.test", CONTOSO, None, OUT),
                   consent_row("d3@x.test", CONTOSO, None, IN), consent_row("fine@x.test", CONTOSO, NEWS, IN)],
                  {L_NEWS: [d1["contactid"], fine["contactid"]], L_LEADS: [d2_lead["leadid"]]})


def test_dry_run_finds_every_class_and_writes_nothing(make_stack):
    s = make_stack(drifted_single_brand(), "single-brand")
    rows_before = {k: dict(v) for k, v in s.rows("msdynmkt_contactpointconsent4").items()}
    report = run_reconciliation(s.container, dry_run=True)
    assert report["status"] == "succeeded" and report["dry_run"] is True
    assert (report["found_D1"], report["found_D2"], report["found_D3"]) == (1, 2, 2)  # D2: the contact and the lead
    assert report["fixed_D1"] == report["fixed_D2"] == report["fixed_D3"] == 0
    assert {k: dict(v) for k, v in s.rows("msdynmkt_contactpointconsent4").items()} == rows_before
    assert s.members_of(L_NEWS) == {gid("d1"), gid("fine")}
    assert s.container.tables().runs.latest() == []  # a dry run leaves no trace
    assert s.container.tables().snapshots.load(L_NEWS) is None
    assert s.ledger_rules("d1@x.test") == []


def test_healing_run_fixes_everything_and_the_next_dry_run_finds_nothing(make_stack, caplog):
    caplog.set_level(logging.INFO)
    s = make_stack(drifted_single_brand(), "single-brand")
    report = run_reconciliation(s.container)
    assert report["drift_fixed"] == report["drift_found"] > 0 and report["failures"] == 0
    assert report["first_snapshot_lists"] == 3 and "first run" in report["note"]
    assert s.members_of(L_NEWS) == {gid("fine")}  # D1 healed
    assert s.rows("contact")[gid("d2")]["donotbulkemail"] and s.rows("lead")[gid("d2-lead")]["donotbulkemail"]
    assert s.opted_out("d3@x.test", CONTOSO) and s.opted_out("d3@home.test", CONTOSO)  # D3 healed
    assert s.ledger_rules("d1@x.test") == ["R2"]
    (stored,) = s.container.tables().runs.latest()
    assert stored["run_id"] == report["run_id"] and stored["drift_fixed"] == report["drift_fixed"]
    record = [r for r in caplog.records if r.getMessage().startswith("reconcile.report")][-1]
    assert record.straddle_drift_found == report["drift_found"]  # the fields reach customDimensions
    again = run_reconciliation(s.container, dry_run=True)
    assert again["drift_found"] == 0 and again["status"] == "succeeded"


def test_departures_since_the_last_run_are_d4(make_stack):
    ann = contact("ann", "ann@x.test", "ann@home.test")
    s = make_stack(tenant([ann], list_members={L_NEWS: [ann["contactid"]]}), "single-brand")
    first = run_reconciliation(s.container)
    assert first["drift_found"] == 0 and first["first_snapshot_lists"] == 3
    # She leaves the list while the webhook is down: no event ever arrives.
    s.sandbox.store.disassociate("list", L_NEWS, "listcontact_association", ann["contactid"], "someone")
    report = run_reconciliation(s.container)
    assert report["found_D4"] == report["fixed_D4"] == 2  # one topic opt-out per address
    assert s.opted_out("ann@x.test", CONTOSO, NEWS) and s.opted_out("ann@home.test", CONTOSO, NEWS)
    assert run_reconciliation(s.container, dry_run=True)["drift_found"] == 0


def test_multi_brand_d2_and_d5(make_stack):
    eve = contact("eve", "eve@x.test")  # opted out of Contoso's purpose, still in its list (D2)
    oli = contact("oli", "oli@x.test")  # in Contoso's opt-out list, still in its newsletter (D5)
    s = make_stack(tenant([eve, oli], consents=[consent_row("eve@x.test", CONTOSO, None, OUT)],
                          list_members={L_NEWS: [eve["contactid"], oli["contactid"]], L_DEALS: [eve["contactid"]],
                                        OO_CONTOSO: [oli["contactid"]]}), "multi-brand")
    report = run_reconciliation(s.container)
    assert report["found_D2"] >= 2 and report["found_D5"] >= 2 and report["failures"] == 0
    assert s.members_of(L_NEWS) == set() and s.members_of(OO_CONTOSO) == {gid("eve"), gid("oli")}
    assert s.members_of(L_DEALS) == {gid("eve")}  # the other brand is untouched
    assert s.opted_out("oli@x.test", CONTOSO)
    assert not s.rows("contact")[gid("eve")]["donotbulkemail"]
    assert run_reconciliation(s.container, dry_run=True)["drift_found"] == 0


def test_the_timer_function_purges_old_ids_and_stores_the_report(make_stack):
    import function_app

    s = make_stack(drifted_single_brand(), "single-brand")
    function_app.nightly_reconcile(TimerRequest(past_due=False))
    (report,) = s.container.tables().runs.latest()
    assert report["status"] == "succeeded" and report["drift_fixed"] > 0
    assert s.members_of(L_NEWS) == {gid("fine")}


def test_a_big_run_fans_out_to_chunks_that_resume_and_aggregate(make_stack):
    """Chunks go to the reconcile queue; they are healed in any order, a redelivered one is
    skipped, and the last one writes the same report an inline run would have."""
    import random

    from azure.functions.servicebus import ServiceBusMessage

    import function_app
    from shared.service_layer.reconcile import ReconcileConfig

    people = [contact(f"p{i}", f"p{i}@x.test") for i in range(12)]
    s = make_stack(tenant(people, consents=[consent_row(f"p{i}@x.test", CONTOSO, NEWS, OUT) for i in range(12)],
                          list_members={L_NEWS: [p["contactid"] for p in people]}), "single-brand")
    fanned = run_reconciliation(s.container, config=ReconcileConfig(chunk=5, fanout_above=3),
                                fanout=lambda bodies: s.queue.send_raw("straddle-reconcile", bodies))
    assert fanned["status"] == "running" and fanned["chunks"] == 3 and s.members_of(L_NEWS)
    chunks = s.queue.other["straddle-reconcile"]
    assert [mid for mid, _ in chunks] == [f"{fanned['run_id']}.{i}" for i in range(3)]
    order = chunks + [chunks[0]]  # one redelivered
    random.Random(3).shuffle(order)
    for mid, body in order:
        function_app.reconcile_chunk(ServiceBusMessage(body=body, message_id=mid, application_properties={},
                                                       user_properties={}))
    report = s.container.tables().runs.get(fanned["run_id"])
    assert report["status"] == "succeeded" and report["found_D1"] == report["fixed_D1"] == 12
    assert report["chunks"] == 3 and report["dataverse_requests"] > 0
    assert s.members_of(L_NEWS) == set()
    assert [r["run_id"] for r in s.container.tables().runs.latest()] == [fanned["run_id"]]  # chunks stay out
    assert run_reconciliation(s.container, dry_run=True)["drift_found"] == 0
