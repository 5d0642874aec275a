"""ChangeEvent JSON: round trip, strict decoding, and the documented schema (docs/change-event.schema.json)."""
from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from shared.domain.events import (SCHEMA_VERSION, ChangeEvent, ConsentChanged, ContactChanged, EventFormatError,
                                  MembershipChanged, Origin, RecordDeleted, RereadRecord, event_from_json)
from shared.ingest.notification import parse_notification
from tests import notifications as n

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "docs" / "change-event.schema.json"

ORIGIN = Origin("2017-09-26T07:04:08.000Z", n.USER_ID, n.USER_ID, n.CORRELATION_ID, n.ORG_ID, 1)
CHANGES = {
    "contact_changed": ContactChanged(("emailaddress1", "donotbulkemail"), True, None,
                                      {"emailaddress1": "Zoë.Ünïcode@exämple.com", "emailaddress2": None}),
    "membership_changed": MembershipChanged("removed", (n.LIST_ID, n.LIST_ID_2), (n.CONTACT_ID,), "contact"),
    "membership_changed_no_table": MembershipChanged("added", (n.LIST_ID,), (n.CONTACT_ID, n.CONTACT_ID_2), None),
    "consent_changed": ConsentChanged(n.EMAIL, n.EMAIL_CHANNEL, n.TOPIC_CONSENT, n.OPTED_OUT, n.PURPOSE_ID, n.TOPIC_ID,
                                      n.SOURCE_SUBSCRIPTION_CENTER, "reason"),
    "consent_changed_unknowns": ConsentChanged(None, None, None, n.OPTED_OUT, None, None, None, None),
    "record_deleted": RecordDeleted(),
    "reread_record": RereadRecord("msg-size-exceeded"),
}


def make(change, origin=ORIGIN) -> ChangeEvent:
    return ChangeEvent("0b0b0b0b-1111-2222-3333-444455556666", "contact", n.CONTACT_ID, "Update", origin, change)


def produced_events() -> list[ChangeEvent]:
    events = []
    for name, (_, headers, status, _) in sorted(n.FIXTURES.items()):
        if status == 202:
            events.append(parse_notification(n.load_bytes(name), headers))
    return events


@pytest.fixture(scope="module")
def schema():
    if not SCHEMA_PATH.exists():
        pytest.fail(f"{SCHEMA_PATH} is missing: the change event JSON must be documented by a JSON schema")
    schema = json.loads(SCHEMA_PATH.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@pytest.mark.parametrize("name", sorted(CHANGES))
def test_round_trip_every_kind(name):
    event = make(CHANGES[name])
    assert event.kind == CHANGES[name].kind
    assert event_from_json(event.to_json()) == event
    assert event_from_json(event.to_json().encode("utf-8")) == event


def test_round_trip_with_an_empty_origin():
    event = make(RecordDeleted(), Origin(None, None, None, None, None, None))
    assert event_from_json(event.to_json()) == event


def test_json_form():
    data = json.loads(make(CHANGES["membership_changed"]).to_json())
    assert data["v"] == SCHEMA_VERSION == 1
    assert data["kind"] == "membership_changed"
    assert data["change"] == {"action": "removed", "list_ids": [n.LIST_ID, n.LIST_ID_2], "member_ids": [n.CONTACT_ID],
                              "member_table": "contact"}
    assert set(data) == {"v", "id", "kind", "table", "record_id", "message", "origin", "change"}


def test_non_ascii_is_kept_as_utf8():
    raw = make(CHANGES["contact_changed"]).to_json().encode("utf-8")
    assert "Zoë".encode() in raw


@pytest.mark.parametrize("event", produced_events(), ids=lambda e: f"{e.message}-{e.table}-{e.kind}")
def test_produced_events_round_trip(event):
    assert event_from_json(event.to_json()) == event


@pytest.mark.parametrize("event", produced_events() + [make(c) for c in CHANGES.values()],
                         ids=lambda e: f"{e.message}-{e.table}-{e.kind}")
def test_events_match_the_schema(event, schema):
    schema.validate(json.loads(event.to_json()))


def test_the_schema_rejects_what_it_should(schema):
    good = json.loads(make(CHANGES["membership_changed"]).to_json())
    for bad in ({**good, "v": 2}, {**good, "kind": "other"}, {**good, "change": {**good["change"], "list_ids": []}},
                {**good, "extra": 1}):
        assert not schema.is_valid(bad)


def _good() -> dict:
    return json.loads(make(CHANGES["consent_changed"]).to_json())


def _set(data, path, value):
    node = data
    for p in path[:-1]:
        node = node[p]
    if value is KeyError:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return data


@pytest.mark.parametrize("raw,needle", [
    (b"not json", "not JSON"),
    (b"\xff\xfe\xfd", "not JSON"),
    (b"[]", "not a JSON object"),
    (b'"x"', "not a JSON object"),
    (json.dumps(_set(_good(), ["v"], 2)), "version 2"),
    (json.dumps(_set(_good(), ["v"], "1")), "version '1'"),
    (json.dumps(_set(_good(), ["v"], KeyError)), "version None"),
    (json.dumps(_set(_good(), ["kind"], "consent_granted")), "unknown change event kind"),
    (json.dumps(_set(_good(), ["kind"], 3)), "'kind'"),
    (json.dumps(_set(_good(), ["origin"], KeyError)), "'origin'"),
    (json.dumps(_set(_good(), ["change"], [])), "'change'"),
    (json.dumps(_set(_good(), ["id"], 5)), "'id'"),
    (json.dumps(_set(_good(), ["table"], KeyError)), "'table'"),
    (json.dumps(_set(_good(), ["record_id"], None)), "'record_id'"),
    (json.dumps(_set(_good(), ["message"], [])), "'message'"),
    (json.dumps(_set(_good(), ["origin", "depth"], KeyError)), "depth"),
    (json.dumps(_set(_good(), ["change", "value"], KeyError)), "value"),
    (json.dumps(_set(json.loads(make(CHANGES["contact_changed"]).to_json()), ["change", "emails"], "ab")), "contact_changed"),
    (json.dumps(_set(json.loads(make(CHANGES["contact_changed"]).to_json()), ["change", "changed"], 5)), "contact_changed"),
    (json.dumps(_set(json.loads(make(CHANGES["membership_changed"]).to_json()), ["change", "list_ids"], None)), "membership"),
    (json.dumps(_set(json.loads(make(CHANGES["reread_record"]).to_json()), ["change", "reason"], KeyError)), "reread"),
], ids=lambda v: v if isinstance(v, str) and len(v) < 40 else None)
def test_rejects_wrong_versions_kinds_and_shapes(raw, needle):
    with pytest.raises(EventFormatError) as exc:
        event_from_json(raw)
    assert needle in str(exc.value)


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                           lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                           max_leaves=20)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(list(CHANGES.values())), st.lists(st.text(max_size=12), min_size=1, max_size=3), json_values)
def test_decoding_a_damaged_event_raises_only_event_format_error(change, path_keys, junk):
    data = json.loads(make(change).to_json())
    node, parent, key = data, None, None
    for k in path_keys:  # walk as deep as the drawn keys allow, then damage that spot
        if isinstance(node, dict) and node:
            key = sorted(node)[hash(k) % len(node)]
            parent, node = node, node[key]
    if parent is None:
        data = junk
    else:
        parent[key] = junk
    try:
        event = event_from_json(json.dumps(data))
    except EventFormatError:
        return
    assert isinstance(event, ChangeEvent)


@pytest.mark.parametrize("change", [
    {"action": "removed", "list_ids": "abc", "member_ids": ["m"], "member_table": None},
    {"action": "removed", "list_ids": [1], "member_ids": ["m"], "member_table": None},
    {"action": "moved", "list_ids": ["l"], "member_ids": ["m"], "member_table": None},
    {"action": "added", "list_ids": ["l"], "member_ids": ["m"], "member_table": "account"},
])
def test_a_mistyped_membership_event_is_a_format_error(change):
    # Parked at once by the engine, instead of failing its whole batch on every redelivery.
    body = {"v": 1, "id": "e", "kind": "membership_changed", "table": "list", "record_id": "r",
            "message": "RemoveMember", "origin": {k: None for k in ("time", "user_id", "initiating_user_id",
                                                                    "correlation_id", "organization_id", "depth")},
            "change": change}
    with pytest.raises(EventFormatError):
        event_from_json(json.dumps(body))


def test_a_mistyped_consent_event_is_a_format_error():
    body = {"v": 1, "id": "e", "kind": "consent_changed", "table": "msdynmkt_contactpointconsent4", "record_id": "r",
            "message": "Update", "origin": {k: None for k in ("time", "user_id", "initiating_user_id",
                                                              "correlation_id", "organization_id", "depth")},
            "change": {"contact_point_value": "a@b.c", "contact_point_type": "email", "consent_type": None,
                       "value": 534120002, "purpose_id": None, "topic_id": None, "source": None, "reason": None}}
    with pytest.raises(EventFormatError, match="option values"):
        event_from_json(json.dumps(body))
