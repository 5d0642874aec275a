"""The sandbox's $filter parser/compiler and its paging, without HTTP."""
from __future__ import annotations

import uuid

import pytest

from sandbox.dataverse.errors import DataverseError
from sandbox.dataverse.odata import compile_filter, parse_filter, parse_orderby, sort_ids
from sandbox.dataverse.schema import TABLES
from sandbox.dataverse.store import Store

CONTACT = TABLES["contact"]
CONSENT = TABLES["msdynmkt_contactpointconsent4"]


def match(table, text, row):
    return compile_filter(table, parse_filter(text))(row)


@pytest.mark.parametrize("text,row,expected", [
    ("emailaddress1 eq 'A@X.com'", {"emailaddress1": "a@x.COM"}, True),
    ("emailaddress1 eq 'a@x.com'", {"emailaddress1": "b@x.com"}, False),
    ("emailaddress1 eq 'o''brien@x.com'", {"emailaddress1": "O'Brien@x.com"}, True),
    ("emailaddress1 eq 'jose@x.com'", {"emailaddress1": "José@x.com"}, True),  # accent-insensitive
    ("emailaddress1 eq null", {}, True),
    ("emailaddress1 ne null", {}, False),
    ("emailaddress1 ne 'a@x.com'", {}, False),  # SQL: null matches no comparison
    ("donotbulkemail eq true", {"donotbulkemail": True}, True),
    ("not donotbulkemail eq true", {"donotbulkemail": False}, True),
    ("statecode eq 0 and (donotemail eq true or donotbulkemail eq true)", {"statecode": 0, "donotemail": True}, True),
    ("statecode eq 0 and (donotemail eq true or donotbulkemail eq true)", {"statecode": 1, "donotemail": True}, False),
    ("versionnumber gt 5 and versionnumber le 7", {"versionnumber": 7}, True),
    ("modifiedon ge 2024-01-01T00:00:00Z", {"modifiedon": "2024-02-01T00:00:00Z"}, True),
    ("modifiedon lt 2024-01-01", {"modifiedon": "2024-02-01T00:00:00Z"}, False),
    ("contains(emailaddress1,'EXAMPLE')", {"emailaddress1": "a@example.org"}, True),
    ("startswith(emailaddress1,'a@')", {"emailaddress1": "b@a.org"}, False),
    ("Microsoft.Dynamics.CRM.In(PropertyName='emailaddress1',PropertyValues=['x@y.z','A@B.C'])",
     {"emailaddress1": "a@b.c"}, True),
    ("Microsoft.Dynamics.CRM.In(PropertyName='contactid',PropertyValues=['6D81597F-0F9F-E711-8122-000D3AA2331C'])",
     {"contactid": "6d81597f-0f9f-e711-8122-000d3aa2331c"}, True),
    ("contactid eq 6d81597f-0f9f-e711-8122-000d3aa2331c", {"contactid": "6d81597f-0f9f-e711-8122-000d3aa2331c"}, True),
])
def test_contact_filters(text, row, expected):
    assert match(CONTACT, text, row) is expected


def test_lookup_and_option_filters():
    pid = str(uuid.uuid4())
    row = {"_msdynmkt_purposeid_value": pid, "msdynmkt_value": 534120002, "msdynmkt_contactpointvalue": "A@x.com"}
    assert match(CONSENT, f"_msdynmkt_purposeid_value eq {pid} and msdynmkt_value eq 534120002", row)
    assert match(CONSENT, f"_msdynmkt_purposeid_value eq '{pid.upper()}' and _msdynmkt_topicid_value eq null", row)
    assert match(CONSENT, "Microsoft.Dynamics.CRM.In(PropertyName='msdynmkt_value',PropertyValues=['534120002'])", row)


@pytest.mark.parametrize("bad,code", [
    ("emailaddress1 eq", "0x80060888"),
    ("emailaddress1 eq 'unterminated", "0x80060888"),
    ("nosuchcolumn eq 1", "0x80048d19"),
    ("(emailaddress1 eq 'a'", "0x80060888"),
    ("donotbulkemail eq 'yes'", "0x80060888"),
    ("frobnicate(emailaddress1,'a')", "0x80060888"),
    ("emailaddress1 eq 'a' and", "0x80060888"),
])
def test_bad_filters_raise_dataverse_errors(bad, code):
    with pytest.raises(DataverseError) as e:
        compile_filter(CONTACT, parse_filter(bad))
    assert e.value.code == code and e.value.status == 400


def test_orderby_several_keys_nulls_first():
    rows = {"a": {"lastname": "b", "firstname": "z"}, "b": {"lastname": "B", "firstname": "a"},
            "c": {"firstname": "m"}, "d": {"lastname": "a"}}
    ids = sort_ids(CONTACT, rows, list(rows), parse_orderby(CONTACT, "lastname asc,firstname desc"))
    assert ids == ["c", "d", "a", "b"]


def _seeded(n):
    store = Store()
    store.load({"contacts": [{"contactid": str(uuid.UUID(int=i + 1)), "emailaddress1": f"p{i}@x.org",
                              "donotbulkemail": i % 3 == 0} for i in range(n)]})
    return store


def _all_pages(store, **kw):
    seen, token, pages = [], None, 0
    while True:
        rows, token, _ = store.query("contact", skiptoken=token, **kw)
        seen.extend(r["contactid"] for r in rows)
        pages += 1
        if token is None:
            return seen, pages


def test_paging_streams_every_row_once_in_id_order():
    store = _seeded(2500)
    seen, pages = _all_pages(store, page_size=1000)
    assert pages == 3 and len(seen) == 2500 and seen == sorted(seen)


def test_paging_with_a_scan_filter_and_with_orderby():
    store = _seeded(2500)
    seen, _ = _all_pages(store, page_size=300, filter_text="donotbulkemail eq true")
    assert len(seen) == len(set(seen)) == 834
    seen, _ = _all_pages(store, page_size=700, orderby_text="emailaddress1 desc")
    emails = [store.data["contact"].rows[i]["emailaddress1"] for i in seen]
    assert emails == sorted(emails, reverse=True) and len(seen) == 2500


def test_paging_survives_writes_between_pages():
    store = _seeded(100)
    rows, token, _ = store.query("contact", page_size=10)
    store.delete("contact", rows[-1]["contactid"], "u")
    more, _, _ = store.query("contact", page_size=10, skiptoken=token)
    assert not {r["contactid"] for r in rows} & {r["contactid"] for r in more}


def test_index_serves_in_filters_and_or_of_indexed_columns():
    store = _seeded(1000)
    rows, token, _ = store.query("contact", filter_text=(
        "Microsoft.Dynamics.CRM.In(PropertyName='emailaddress1',PropertyValues=['P1@X.ORG','p2@x.org','nobody@x'])"))
    assert sorted(r["emailaddress1"] for r in rows) == ["p1@x.org", "p2@x.org"] and token is None
    rows, _, _ = store.query("contact", filter_text="emailaddress1 eq 'p5@x.org' or emailaddress2 eq 'p5@x.org'")
    assert [r["emailaddress1"] for r in rows] == ["p5@x.org"]
    rows, _, _ = store.query("contact", filter_text="emailaddress1 eq 'p6@x.org' and donotbulkemail eq true")
    assert [r["emailaddress1"] for r in rows] == ["p6@x.org"]
    rows, _, _ = store.query("contact", filter_text="emailaddress1 eq 'p7@x.org' and donotbulkemail eq true")
    assert rows == []


def test_index_follows_updates():
    store = _seeded(10)
    cid = str(uuid.UUID(int=1))
    store.update("contact", cid, {"emailaddress1": "New@x.org"}, "u")
    assert [r["contactid"] for r in store.query("contact", filter_text="emailaddress1 eq 'new@X.org'")[0]] == [cid]
    assert store.query("contact", filter_text="emailaddress1 eq 'p0@x.org'")[0] == []


def test_transaction_rolls_back_everything():
    store = _seeded(3)
    cid = str(uuid.UUID(int=1))
    with pytest.raises(DataverseError):
        with store.transaction():
            store.update("contact", cid, {"emailaddress1": "changed@x.org"}, "u")
            store.create("contact", {"emailaddress1": "new@x.org"}, "u")
            store.get("contact", str(uuid.uuid4()))  # not found: the whole thing fails
    assert store.data["contact"].rows[cid]["emailaddress1"] == "p0@x.org"
    assert len(store.data["contact"].rows) == 3
    assert store.query("contact", filter_text="emailaddress1 eq 'new@x.org'")[0] == []
