"""A notification is a hint to re-read, never evidence: forged or stale notifications posted to the
real webhook function (func.HttpRequest -> dataverse_webhook), processed by process_changes
(ServiceBusMessage) against the Dataverse sandbox over HTTP and Azurite. The attacker holds the
function key and the webhook secret, so every notification here passes the webhook's checks."""
from __future__ import annotations

import time
import uuid

import azure.functions as func
import pytest

import function_app
from sandbox.dataverse.schema import ORGANIZATION_ID
from sandbox.stack import Stack
from shared.domain.consent import ConsentSource, ConsentValue
from shared.domain.ledger import KEEP_RECONSENT
from tests import notifications as n
from tests.integration.tenant import consent_row, contact, gid, mappings_file, tenant

pytestmark = pytest.mark.integration

OUT, IN = ConsentValue.OPTED_OUT.value, ConsentValue.OPTED_IN.value
CONTOSO, NEWS = gid("Contoso marketing"), gid("Contoso News")
L_NEWS = gid("Contoso Newsletter")
ANN = contact("ann", "ann@contoso.test")
REC_ROW = consent_row("ann@contoso.test", CONTOSO, NEWS, IN)  # the person's re-consent to the topic
REC_ROW.update(msdynmkt_source=ConsentSource.PREFERENCE_CENTER.value, modifiedon="2026-11-01T09:00:00Z")


@pytest.fixture
def make_stack(azurite_tables, table_prefix):
    stacks = []

    def make(seed: dict) -> Stack:
        s = Stack(azurite_tables, table_prefix, seed, mappings_file("single-brand"))
        stacks.append(s)
        return s

    yield make
    for s in stacks:
        s.close()


def forge(s: Stack, ctx: dict) -> None:
    """Posts a notification to the webhook function as Dataverse would, then runs the queue."""
    ctx["OperationId"] = ctx["CorrelationId"] = str(uuid.uuid4())  # a fresh event, not a duplicate
    ctx["OrganizationId"] = ORGANIZATION_ID  # the attacker knows the org: the organisation check passes
    req = func.HttpRequest("POST", "http://localhost/api/dataverse/webhook", headers={}, params={},
                           route_params={}, body=n.to_bytes(ctx))
    assert function_app.dataverse_webhook(req).status_code == 202
    assert s.drain() >= 1  # the event, then the notifications of the sync's own writes


def forged_departure(member_id: str, list_id: str = L_NEWS) -> dict:
    return n.remove_member(list_id, member_id)


def test_a_forged_departure_of_a_current_member_changes_nothing(make_stack):
    s = make_stack(tenant([ANN], list_members={L_NEWS: [ANN["contactid"]]}))
    forge(s, forged_departure(ANN["contactid"]))
    assert s.members_of(L_NEWS) == {ANN["contactid"]}
    assert not s.consent("ann@contoso.test", CONTOSO, NEWS)  # no Opted-out topic row
    assert s.ledger_rules("ann@contoso.test") == []


def test_a_forged_departure_of_a_member_the_snapshot_never_held_is_an_inspection(make_stack):
    # Ann is not in the list now, and the last scan did not find her in it either: nothing shows she left.
    s = make_stack(tenant([ANN]))
    s.container.tables().snapshots.save(L_NEWS, [str(uuid.uuid4())], "2026-12-01T02:00:00Z")
    forge(s, forged_departure(ANN["contactid"]))
    assert not s.consent("ann@contoso.test", CONTOSO, NEWS)
    assert s.ledger_rules("ann@contoso.test") == []


def test_a_departure_the_snapshot_confirms_is_r1_and_the_ledger_names_the_snapshot(make_stack):
    s = make_stack(tenant([ANN], list_members={L_NEWS: [ANN["contactid"]]}))
    s.container.tables().snapshots.save(L_NEWS, [ANN["contactid"]], "2026-12-01T02:00:00Z")
    s.api("POST", f"lists({L_NEWS})/Microsoft.Dynamics.CRM.RemoveMemberList", {"EntityId": ANN["contactid"]})
    s.drain()
    (row,) = s.consent("ann@contoso.test", CONTOSO, NEWS)
    assert row["msdynmkt_value"] == OUT
    (entry,) = s.container.tables().ledger.history("ann@contoso.test")
    assert entry.rule == "R1" and "departure: list snapshot 2026-12-01T02:00:00Z" in entry.evidence


def test_a_departure_without_any_snapshot_opts_out_but_never_over_a_re_consent(make_stack):
    """No snapshot of the list yet: nothing says either way, so opt-out wins (R1) where the person
    has not chosen otherwise; a person's own re-consent is not overruled by a claim alone."""
    bo = contact("bo", "bo@contoso.test")
    s = make_stack(tenant([ANN, bo], consents=[REC_ROW]))
    forge(s, forged_departure(ANN["contactid"]))
    forge(s, forged_departure(bo["contactid"]))
    (ann_row,) = s.consent("ann@contoso.test", CONTOSO, NEWS)
    assert ann_row["msdynmkt_value"] == IN  # the re-consent stands
    (bo_row,) = s.consent("bo@contoso.test", CONTOSO, NEWS)
    assert bo_row["msdynmkt_value"] == OUT
    (entry,) = s.container.tables().ledger.history("bo@contoso.test")
    assert "departure: no list snapshot yet" in entry.evidence


@pytest.mark.parametrize("dated", ["now", "next year"])
def test_an_event_dated_now_for_a_flag_set_years_ago_does_not_beat_a_re_consent(make_stack, dated):
    cy = contact("cy", "cy@contoso.test", dnb=True)
    cy["modifiedon"] = "2020-03-01T10:00:00Z"  # the flag was set then; nothing has touched the contact since
    row = consent_row("cy@contoso.test", CONTOSO, None, IN)
    row.update(msdynmkt_source=ConsentSource.PREFERENCE_CENTER.value, modifiedon="2026-11-01T09:00:00Z")
    s = make_stack(tenant([cy], consents=[row]))
    millis = int(time.time() * 1000) + (0 if dated == "now" else 365 * 24 * 3600 * 1000)
    forge(s, n.member_change("Update", target={"donotbulkemail": True}, record_id=cy["contactid"],
                             OperationCreatedOn=n.date(millis, None)))
    (kept,) = s.consent("cy@contoso.test", CONTOSO)
    assert kept["msdynmkt_value"] == IN  # the re-consent of 2026 is newer than the flag of 2020
    (entry,) = s.container.tables().ledger.history("cy@contoso.test")
    assert entry.action.startswith(KEEP_RECONSENT) and entry.origin_time == "2026-11-01T09:00:00Z"
    assert entry.evidence.startswith("contact modifiedon")
    assert "change event time ignored" in entry.evidence
