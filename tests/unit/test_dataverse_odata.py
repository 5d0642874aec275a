"""Pure OData helpers of the Dataverse client: literals, In chunking, $batch bodies and responses."""
from __future__ import annotations

import json
from urllib.parse import unquote

import pytest
from hypothesis import given, settings, strategies as st

from shared.adapters.dataverse.errors import (DataverseAuthError, DataverseBadRequest, DataverseNotFound,
                                              DataverseThrottled, DataverseUnavailable, error_for)
from shared.adapters.dataverse.odata import (BatchOp, build_batch, chunk_values, encode, guid, id_from_entity_url,
                                             in_function, literal, parse_batch, path_kind, query_string)

ROOT = "https://org.crm.dynamics.com/api/data/v9.2"


def test_literal_doubles_single_quotes():
    assert literal("o'brien@x.com") == "'o''brien@x.com'"
    assert literal(True) == "true" and literal(None) == "null" and literal(5) == "5"


def test_in_function_shape():
    assert in_function("emailaddress1", ["a@x.com", "b'c@x.com"]) == (
        "Microsoft.Dynamics.CRM.In(PropertyName='emailaddress1',PropertyValues=['a@x.com','b''c@x.com'])")


def test_encoding_keeps_plus_and_ampersand_literal():
    q = query_string({"$filter": "emailaddress1 eq 'a+b&c#d@x.com'", "$select": None})
    assert "+" not in q and "&" not in q and "#" not in q and " " not in q
    assert unquote(q) == "$filter=emailaddress1 eq 'a+b&c#d@x.com'"


def test_chunks_respect_count_and_length_and_dedupe():
    emails = [f"user{i:05d}@example.com" for i in range(2000)] + ["user00001@example.com"]
    chunks = list(chunk_values(emails, max_values=200, max_chars=8000))
    assert sum(len(c) for c in chunks) == 2000
    assert all(len(c) <= 200 for c in chunks)
    long = ["x" * 300 + f"{i}@example.com" for i in range(100)]
    for c in chunk_values(long, max_chars=8000, copies=3):
        assert len(encode(",".join(literal(v) for v in c))) <= 8000 // 3 + 1
    assert len(list(chunk_values(long, max_chars=8000, copies=3))) > 1


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=60), max_size=300))
def test_chunks_lose_nothing_and_stay_under_budget(values):
    chunks = list(chunk_values(values, max_values=50, max_chars=2000))
    flat = [v for c in chunks for v in c]
    assert flat == list(dict.fromkeys(values))
    for c in chunks:
        # A single value longer than the budget still goes out alone rather than being dropped.
        assert len(c) == 1 or len(encode(",".join(literal(v) for v in c))) <= 2000


def test_guid_and_entity_id():
    assert guid("{ABCDEF01-2345-6789-ABCD-EF0123456789}") == "abcdef01-2345-6789-abcd-ef0123456789"
    with pytest.raises(ValueError):
        guid("nope")
    assert id_from_entity_url(f"{ROOT}/contacts(ABCDEF01-2345-6789-ABCD-EF0123456789)") == \
        "abcdef01-2345-6789-abcd-ef0123456789"
    assert id_from_entity_url(None) is None


def test_path_kind_drops_keys_and_queries():
    assert path_kind("lists(1)/listcontact_association(2)/$ref") == "lists/listcontact_association/$ref"
    assert path_kind(f"{ROOT}/contacts?$filter=emailaddress1 eq 'a@x.com'") == "contacts"
    assert path_kind("contacts(emailaddress1='a@x.com')") == "contacts"


def test_build_batch_outside_change_sets():
    ops = [BatchOp("PATCH", "contacts(11111111-1111-1111-1111-111111111111)", {"donotbulkemail": True},
                   {"If-Match": "*"}),
           BatchOp("DELETE", "lists(1)/listcontact_association(2)/$ref")]
    ctype, body = build_batch(ops, ROOT, boundary="batch_x")
    assert ctype == "multipart/mixed; boundary=batch_x"
    text = body.decode()
    assert "changeset" not in text
    assert text.count("--batch_x\r\n") == 2 and text.endswith("--batch_x--\r\n")
    assert f"PATCH {ROOT}/contacts(11111111-1111-1111-1111-111111111111) HTTP/1.1\r\n" in text
    assert "If-Match: *\r\n" in text and '{"donotbulkemail":true}' in text
    assert f"DELETE {ROOT}/lists(1)/listcontact_association(2)/$ref HTTP/1.1\r\n" in text
    assert ops[0].kind == "batch:PATCH contacts"


BATCH_RESPONSE = (
    "--batchresponse_1\r\n"
    "Content-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n\r\n"
    "HTTP/1.1 204 No Content\r\nOData-Version: 4.0\r\n"
    f"OData-EntityId: {ROOT}/msdynmkt_contactpointconsent4s(AAAAAAAA-0000-0000-0000-000000000001)\r\n\r\n\r\n"
    "--batchresponse_1\r\n"
    "Content-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n\r\n"
    "HTTP/1.1 400 Bad Request\r\nContent-Type: application/json; odata.metadata=minimal\r\n\r\n"
    '{"error":{"code":"0x80048d19","message":"Error identified in Payload"}}\r\n'
    "--batchresponse_1\r\n"
    "Content-Type: multipart/mixed; boundary=changesetresponse_2\r\n\r\n"
    "--changesetresponse_2\r\n"
    "Content-Type: application/http\r\nContent-Transfer-Encoding: binary\r\nContent-ID: 1\r\n\r\n"
    "HTTP/1.1 204 No Content\r\n\r\n\r\n"
    "--changesetresponse_2--\r\n"
    "--batchresponse_1--\r\n").encode()


def test_parse_batch_with_one_failing_part_and_nested_change_set():
    parts = parse_batch(BATCH_RESPONSE, 'multipart/mixed; boundary="batchresponse_1"')
    assert [p.status for p in parts] == [204, 400, 204]
    assert parts[0].headers["odata-entityid"].endswith("(AAAAAAAA-0000-0000-0000-000000000001)")
    assert json.loads(parts[1].body)["error"]["code"] == "0x80048d19"


def test_parse_batch_accepts_bare_newlines():
    body = BATCH_RESPONSE.replace(b"\r\n", b"\n")
    assert [p.status for p in parse_batch(body, "multipart/mixed; boundary=batchresponse_1")] == [204, 400, 204]


def test_parse_batch_without_boundary_fails():
    with pytest.raises(ValueError):
        parse_batch(b"", "application/json")


@pytest.mark.parametrize("status,cls", [(401, DataverseAuthError), (403, DataverseAuthError), (404, DataverseNotFound),
                                        (400, DataverseBadRequest), (412, DataverseBadRequest),
                                        (429, DataverseThrottled), (503, DataverseUnavailable)])
def test_error_types_from_dataverse_error_json(status, cls):
    err = error_for(status, b'{"error":{"code":"0x80040217","message":"contact With Id = x Does Not Exist"}}',
                    "GET contacts")
    assert type(err) is cls
    assert (err.status, err.code, err.message) == (status, "0x80040217", "contact With Id = x Does Not Exist")
    assert "GET contacts" in str(err)


def test_error_without_json_body():
    err = error_for(502, b"<html>bad gateway</html>")
    assert err.code is None and "502" in err.message
