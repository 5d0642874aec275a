"""Property-based: arbitrary and mutated bodies at the HTTP function never yield a 5xx or an exception."""
from __future__ import annotations

import copy
import json

import functools
from pathlib import Path

import azure.functions as func
import jsonschema
from hypothesis import HealthCheck, given, settings, strategies as st

from shared import bootstrap
from shared.entrypoints import functions as entry
from shared.adapters.settings import Settings
from shared.domain.events import event_from_json
from tests import notifications as n
from tests.conftest import FakeQueue

ALLOWED = {200, 202, 400, 401, 413}
HEALTH = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large]

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
json_values = st.recursive(json_scalars, lambda children: st.lists(children, max_size=5)
                           | st.dictionaries(st.text(max_size=10), children, max_size=5), max_leaves=25)

# Valid bodies of every kind (and their headers) to mutate.
VALID = [(n.load(name), headers) for name, (_, headers, _, _) in sorted(n.FIXTURES.items())] + [(n.sample(), {})]


SCHEMA_PATH = Path(__file__).resolve().parents[2] / "docs" / "change-event.schema.json"


@functools.cache
def schema_validator() -> jsonschema.Draft202012Validator:
    assert SCHEMA_PATH.exists(), f"{SCHEMA_PATH} is missing: every produced event must be checked against it"
    return jsonschema.Draft202012Validator(json.loads(SCHEMA_PATH.read_text()))


def call(body: bytes, headers: dict[str, str] | None = None):
    queue = FakeQueue()
    container = bootstrap.Container(Settings.from_env({}))
    container.set_event_queue(queue)
    bootstrap.reset_container(container)
    try:
        req = func.HttpRequest("POST", "http://localhost/api/dataverse/webhook", body=body, headers=headers or {})
        resp = entry.dataverse_webhook(req)
    finally:
        bootstrap.reset_container(None)
    check(resp, queue)
    return resp, queue


def check(resp: func.HttpResponse, queue: FakeQueue) -> None:
    assert resp.status_code in ALLOWED, (resp.status_code, resp.get_body())
    payload = json.loads(resp.get_body())
    if resp.status_code == 202:
        assert len(queue.events) == 1
        assert event_from_json(queue.bodies[0]) == queue.events[0]
        assert payload["event_id"] == queue.events[0].id
        schema_validator().validate(json.loads(queue.bodies[0]))
    else:
        assert queue.events == [], "nothing is enqueued unless the answer is 202"
    if resp.status_code == 400:
        assert payload["error"]["code"] == "invalid_notification" and ": " in payload["error"]["message"]


@settings(max_examples=300, deadline=None, suppress_health_check=HEALTH)
@given(json_values)
def test_arbitrary_json(value):
    call(json.dumps(value).encode())


@settings(max_examples=150, deadline=None, suppress_health_check=HEALTH)
@given(st.binary(max_size=300))
def test_arbitrary_bytes(raw):
    call(raw)


@settings(max_examples=100, deadline=None, suppress_health_check=HEALTH)
@given(st.sampled_from(VALID), st.binary(min_size=1, max_size=4))
def test_invalid_utf8_inside_a_valid_body(valid, junk):
    ctx, headers = valid
    body = n.to_bytes(ctx)
    at = body.index(b'"MessageName"')
    call(body[:at] + b'"X": "' + b"\xff" + junk + b'", ' + body[at:], headers)


def _paths(value, prefix=()):
    """Every (path, value) inside a JSON value."""
    yield prefix, value
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, prefix + (i,))


def _replace(root, path, new):
    root = copy.deepcopy(root)
    parent = root
    for p in path[:-1]:
        parent = parent[p]
    if new is _DROP:
        del parent[path[-1]]
    else:
        parent[path[-1]] = new
    return root


_DROP = object()


@st.composite
def mutated(draw):
    ctx, headers = draw(st.sampled_from(VALID))
    paths = [p for p, _ in _paths(ctx) if p]
    path = draw(st.sampled_from(paths))
    old = dict(_paths(ctx))[path]
    new = draw(st.one_of(
        st.just(_DROP),
        json_scalars,
        json_values,
        st.sampled_from([str(old), [old], {"Value": old}, "", "not-a-guid", n.EMAIL, "/Date(1)/", "/Date(-99999999999999999)/",
                         "{" + n.CONTACT_ID + "}", n.EMPTY_GUID, n.option(n.OPTED_OUT), n.ref("list", n.LIST_ID)]),
    ))
    return _replace(ctx, path, new), draw(st.sampled_from([headers, {}, n.SIZE_EXCEEDED_HEADERS]))


@settings(max_examples=400, deadline=None, suppress_health_check=HEALTH)
@given(mutated())
def test_mutated_valid_payloads(case):
    ctx, headers = case
    resp, _ = call(json.dumps(ctx).encode(), headers)
    assert n.EMAIL not in resp.get_body().decode()


@settings(max_examples=150, deadline=None, suppress_health_check=HEALTH)
@given(st.sampled_from(VALID), st.data())
def test_truncated_valid_payloads(valid, data):
    ctx, headers = valid
    body = n.to_bytes(ctx)
    cut = data.draw(st.integers(min_value=0, max_value=len(body) - 1))
    resp, _ = call(body[:cut], headers)
    assert resp.status_code == 400


@settings(max_examples=100, deadline=None, suppress_health_check=HEALTH)
@given(st.sampled_from(VALID), st.text(min_size=1, max_size=3, alphabet=st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)))
def test_lone_surrogates_anywhere(valid, surrogate):
    ctx, headers = valid
    escaped = json.dumps(surrogate)[1:-1].encode()  # \udXXX escapes: valid JSON, invalid Unicode
    body = n.to_bytes(ctx).replace(b"Jane", escaped).replace(b"Update", b"Upd" + escaped, 1)
    call(body, headers)
