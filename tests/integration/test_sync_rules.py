"""Each rule end to end: a person's change in the Dataverse sandbox, its webhook through the real
function code, the queue, process_changes, and the sandbox state and ledger afterwards."""
from __future__ import annotations

import pytest

from shared.domain.consent import ConsentLogicalReason, ConsentSource, ConsentValue
from sandbox.stack import Stack
from shared.service_layer.explain import explain
from tests.integration.tenant import consent_row, contact, gid, lead, mappings_file, tenant

pytestmark = pytest.mark.integration

OUT, IN = ConsentValue.OPTED_OUT.value, ConsentValue.OPTED_IN.value
NEWS, EVENTS, DEALS = gid("Contoso News"), gid("Contoso Events"), gid("Fabrikam Deals")
CONTOSO, FABRIKAM = gid("Contoso marketing"), gid("Fabrikam marketing")
L_NEWS, L_LEADS, L_DEALS = gid("Contoso Newsletter"), gid("Contoso Event Leads"), gid("Fabrikam Deals")
OO_CONTOSO, OO_FABRIKAM, L_UNMAPPED = gid("Contoso Opt-out"), gid("Fabrikam Opt-out"), gid("Unmapped")


@pytest.fixture
def make_stack(azurite_tables, table_prefix):
    stacks = []

    def make(seed: dict, mode: str = "single-brand") -> Stack:
        s = Stack(azurite_tables, table_prefix, seed, mappings_file(mode))
        stacks.append(s)
        return s

    yield make
    for s in stacks:
        s.close()


def test_r1_leaving_a_list_opts_every_email_out_of_its_topic(make_stack):
    ann = contact("ann", "ann@contoso.test", "Ann.Home@example.test")
    s = make_stack(tenant([ann], list_members={L_NEWS: [ann["contactid"]], L_UNMAPPED: [ann["contactid"]]}))
    s.api("POST", f"lists({L_NEWS})/Microsoft.Dynamics.CRM.RemoveMemberList", {"EntityId": ann['contactid']})
    s.api("POST", f"lists({L_UNMAPPED})/Microsoft.Dynamics.CRM.RemoveMemberList", {"EntityId": ann['contactid']})
    s.drain()
    for email, held in (("ann@contoso.test", "ann@contoso.test"), ("ann.home@example.test", "Ann.Home@example.test")):
        (row,) = s.consent(email, CONTOSO, NEWS)
        assert row["msdynmkt_value"] == OUT and row["msdynmkt_source"] == ConsentSource.INTERNAL
        # the address as the contact holds it, and every column the table requires
        assert row["msdynmkt_contactpointvalue"] == held
        assert row["msdynmkt_logicalreason"] == ConsentLogicalReason.NO_REASONS
        assert row["msdynmkt_contactpointtype"] == 534120000 and row["_msdynmkt_purposeid_value"] == CONTOSO
        assert row["msdynmkt_reason"].startswith("Straddle sync R1")
        assert s.ledger_rules(email) == ["R1"]
    assert not s.consent("ann@contoso.test", CONTOSO, EVENTS)  # only the list that was left


def test_r2_topic_opt_out_removes_every_contact_and_lead_with_the_email(make_stack):
    bo1, bo2, bo_lead = contact("bo1", "bo@x.test"), contact("bo2", "BO@x.test "), lead("bo-lead", "bo@x.test")
    row = consent_row("bo@x.test", CONTOSO, NEWS, IN)
    s = make_stack(tenant([bo1, bo2], [bo_lead], [row], {L_NEWS: [bo1["contactid"], bo2["contactid"]],
                                                         L_LEADS: [bo_lead["leadid"]]}))
    s.api("PATCH", f"msdynmkt_contactpointconsent4s({row['msdynmkt_contactpointconsent4id']})", {"msdynmkt_value": OUT})
    s.drain()
    assert s.members_of(L_NEWS) == set()
    assert s.members_of(L_LEADS) == {bo_lead["leadid"]}  # the lead list is mapped to another topic
    assert s.ledger_rules("bo@x.test") == ["R2", "R2"]


def test_r3_global_opt_out_reaches_every_email_and_purpose(make_stack):
    cy = contact("cy", "cy@x.test", "cy@work.test")
    s = make_stack(tenant([cy], consents=[consent_row("cy@x.test", CONTOSO, None, IN)]))
    s.api("PATCH", f"contacts({cy['contactid']})", {"donotbulkemail": True})
    s.drain()
    for email in ("cy@x.test", "cy@work.test"):
        assert s.opted_out(email, CONTOSO)
    assert len(s.consent("cy@x.test", CONTOSO)) == 1  # the existing row was updated, not duplicated


def test_r4_single_brand_purpose_opt_out_sets_the_flag_on_everyone_with_the_email(make_stack):
    di, di2 = contact("di", "di@x.test", "di@home.test"), contact("di2", "di@x.test")
    row = consent_row("di@x.test", CONTOSO, None, IN)
    s = make_stack(tenant([di, di2], consents=[row], list_members={L_NEWS: [di["contactid"]]}))
    s.api("PATCH", f"msdynmkt_contactpointconsent4s({row['msdynmkt_contactpointconsent4id']})", {"msdynmkt_value": OUT})
    s.drain()
    assert s.rows("contact")[di["contactid"]]["donotbulkemail"] and s.rows("contact")[di2["contactid"]]["donotbulkemail"]
    assert s.opted_out("di@home.test", CONTOSO)  # R3 follows from the flag the sync set
    assert s.members_of(L_NEWS) == {di["contactid"]}  # single-brand keeps memberships (the flag blocks)


def test_r4_multi_brand_purpose_opt_out_stays_within_the_brand(make_stack):
    ed = contact("ed", "ed@x.test")
    row = consent_row("ed@x.test", CONTOSO, None, IN)
    s = make_stack(tenant([ed], consents=[row], list_members={L_NEWS: [ed["contactid"]], L_DEALS: [ed["contactid"]]}),
                   mode="multi-brand")
    s.api("PATCH", f"msdynmkt_contactpointconsent4s({row['msdynmkt_contactpointconsent4id']})", {"msdynmkt_value": OUT})
    s.drain()
    assert s.members_of(L_NEWS) == set() and s.members_of(OO_CONTOSO) == {ed["contactid"]}
    assert s.members_of(L_DEALS) == {ed["contactid"]}  # Fabrikam is untouched
    assert not s.rows("contact")[ed["contactid"]]["donotbulkemail"]  # never the tenant-wide flag


def test_r5_joining_a_brand_opt_out_list(make_stack):
    fay = contact("fay", "fay@x.test", "fay@home.test")
    s = make_stack(tenant([fay], list_members={L_NEWS: [fay["contactid"]], L_DEALS: [fay["contactid"]]}),
                   mode="multi-brand")
    s.api("POST", f"lists({OO_CONTOSO})/Microsoft.Dynamics.CRM.AddMemberList", {"EntityId": fay["contactid"]})
    s.drain()
    assert s.members_of(L_NEWS) == set() and s.members_of(L_DEALS) == {fay["contactid"]}
    assert s.opted_out("fay@x.test", CONTOSO) and s.opted_out("fay@home.test", CONTOSO)
    assert not s.consent("fay@x.test", FABRIKAM)


def test_r6_re_adding_an_opted_out_contact_is_undone_and_the_ledger_says_why(make_stack):
    gus = contact("gus", "gus@x.test")
    s = make_stack(tenant([gus], consents=[consent_row("gus@x.test", CONTOSO, NEWS, OUT)]))
    s.api("POST", f"lists({L_NEWS})/Microsoft.Dynamics.CRM.AddMemberList", {"EntityId": gus["contactid"]})
    s.drain()
    assert s.members_of(L_NEWS) == set()
    assert s.ledger_rules("gus@x.test") == ["R6/R2"]


def test_r6_new_contact_with_an_opted_out_email_gets_the_flag(make_stack):
    s = make_stack(tenant([], consents=[consent_row("hal@x.test", CONTOSO, None, OUT)]))
    created = s.api("POST", "contacts", {"lastname": "Hal", "emailaddress1": "Hal@X.test"})
    contact_id = created.headers["OData-EntityId"].rsplit("(", 1)[1].rstrip(")")
    s.drain()
    assert s.rows("contact")[contact_id]["donotbulkemail"] is True
    assert s.ledger_rules("hal@x.test") == ["R6/R4"]


def test_the_sync_settles_its_own_echoes_without_dataverse_requests(make_stack):
    ivy = contact("ivy", "ivy@x.test")
    row = consent_row("ivy@x.test", CONTOSO, NEWS, IN)
    s = make_stack(tenant([ivy], consents=[row], list_members={L_NEWS: [ivy["contactid"]]}))
    s.api("PATCH", f"msdynmkt_contactpointconsent4s({row['msdynmkt_contactpointconsent4id']})", {"msdynmkt_value": OUT})
    s.sandbox.wait_for_webhooks(timeout=10)
    first = s.queue.take()
    import function_app

    function_app.process_changes(first)  # the person's opt-out: reads and writes
    s.sandbox.wait_for_webhooks(timeout=10)
    echoes = s.queue.take()
    assert echoes, "the sync's own removal fires a Disassociate webhook"
    before = s.sandbox.stats.snapshot()["total"]
    function_app.process_changes(echoes)
    assert s.sandbox.stats.snapshot()["total"] == before
    assert s.members_of(L_NEWS) == set()


def test_a_repeated_delivery_changes_nothing(make_stack):
    jo = contact("jo", "jo@x.test")
    s = make_stack(tenant([jo], list_members={L_NEWS: [jo["contactid"]]}))
    s.api("POST", f"lists({L_NEWS})/Microsoft.Dynamics.CRM.RemoveMemberList", {"EntityId": jo['contactid']})
    s.sandbox.wait_for_webhooks(timeout=10)
    batch = s.queue.take()
    import function_app

    function_app.process_changes(batch)
    s.drain()
    rows_before = dict(s.rows("msdynmkt_contactpointconsent4"))
    stats_before = s.sandbox.stats.snapshot()["total"]
    function_app.process_changes(batch)  # Service Bus redelivers the same messages
    assert dict(s.rows("msdynmkt_contactpointconsent4")) == rows_before
    assert s.sandbox.stats.snapshot()["total"] == stats_before
    assert s.ledger_rules("jo@x.test") == ["R1"]


# --- leads: Customer Insights – Journeys reads the flags on contacts only ------------------------

@pytest.mark.parametrize("mode, flag", [("single-brand", "donotbulkemail"), ("multi-brand", "donotbulkemail"),
                                        ("multi-brand", "donotemail")])
def test_r3_a_lead_flag_opts_its_email_out_of_every_brand_purpose(make_stack, mode, flag):
    lou = lead("lou", "Lou@x.test")
    s = make_stack(tenant([], [lou], [consent_row("lou@x.test", CONTOSO, None, IN)]), mode)
    s.api("PATCH", f"leads({lou['leadid']})", {flag: True})
    s.drain()
    purposes = (CONTOSO,) if mode == "single-brand" else (CONTOSO, FABRIKAM)
    for purpose in purposes:
        assert s.opted_out("lou@x.test", purpose), purpose
    assert len(s.consent("lou@x.test", CONTOSO)) == 1  # the existing row was updated, not duplicated
    entries = s.container.tables().ledger.history("lou@x.test")
    assert {(e.rule, e.target_table, e.after) for e in entries} == {("R3", "msdynmkt_contactpointconsent4", "Opted out")}
    assert len(entries) == len(purposes)


# --- R7: an address that changes keeps the person's opt-outs --------------------------------------

@pytest.mark.parametrize("table", ["contact", "lead"])
def test_r7_a_changed_address_keeps_the_old_one_s_opt_outs(make_stack, table):
    person = (contact if table == "contact" else lead)("max", "max@old.test")
    key = f"{table}id"
    old_topic = consent_row("max@old.test", CONTOSO, EVENTS, OUT)
    old_topic["msdynmkt_source"] = ConsentSource.PREFERENCE_CENTER
    seed = tenant([person] if table == "contact" else [], [person] if table == "lead" else [],
                  [old_topic, consent_row("max@old.test", CONTOSO, NEWS, IN),
                   consent_row("max@new.test", CONTOSO, EVENTS, IN)])
    s = make_stack(seed)
    s.api("PATCH", f"{table}s({person[key]})", {"emailaddress1": "Max@New.test"})
    s.drain()
    assert s.opted_out("max@new.test", CONTOSO, EVENTS)  # the new address's own row, set to Opted out
    assert len(s.consent("max@new.test", CONTOSO, EVENTS)) == 1
    assert not s.consent("max@new.test", CONTOSO, NEWS)  # an opt-in is never carried
    ledger = s.container.tables().ledger
    (entry,) = ledger.history("max@new.test")
    assert entry.rule == "R7" and entry.after == "Opted out"
    assert entry.carried_from == ledger.partition_for("max@old.test")  # the old address's pseudonym
    assert "source Preference center" in entry.detail and "@" not in entry.detail
    assert entry.origin_time == old_topic["modifiedon"]  # the old row's time: when the person opted out
    assert not ledger.history("max@old.test")  # nothing was written to the old address
    seen = explain("max@new.test", s.container.dataverse(), s.mappings, ledger)
    assert seen["consistent"] and seen["ledger"][0]["carried_from"] == entry.carried_from


def test_r7_without_a_pre_image_the_event_is_still_processed(make_stack):
    ned = contact("ned", "ned@old.test")
    s = make_stack(tenant([ned], consents=[consent_row("ned@old.test", CONTOSO, EVENTS, OUT),
                                           consent_row("ned@new.test", CONTOSO, None, OUT)]))
    images = s.rows("sdkmessageprocessingstepimage")
    for image_id in [i for i, img in images.items() if img.get("imagetype") == 0]:
        s.api("DELETE", f"sdkmessageprocessingstepimages({image_id})")  # registered before R7
    s.api("PATCH", f"contacts({ned['contactid']})", {"emailaddress1": "ned@new.test"})
    s.drain()
    assert not s.consent("ned@new.test", CONTOSO, EVENTS)  # the old address is unknown: nothing carried
    assert s.rows("contact")[ned["contactid"]]["donotbulkemail"]  # R6 still applies to the new address
    assert not s.queue.parked
