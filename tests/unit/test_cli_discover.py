"""mappings discover: name normalising, scoring, one-to-one pairing, brands by purpose, opt-out lists."""
from __future__ import annotations

import pytest

from shared.service_layer.discovery import discover_mappings, name_score, normalise_name
from shared.domain.mappings import parse_mappings_file, resolve_mappings
from shared.domain.model import Purpose, SubscriptionList, Topic

P1, P2 = Purpose("p1", "Contoso marketing"), Purpose("p2", "Fabrikam marketing")


def lst(i, name, sub=True, table="contact", active=True):
    return SubscriptionList(i, name, table, sub, active)


def top(i, name, purpose="p1"):
    return Topic(i, name, purpose)


@pytest.mark.parametrize("raw,expected", [
    ("Contoso Newsletter Subscription List", "contoso"),
    ("Contoso – Newsletter!", "contoso newsletter"),
    ("Events & Webinars list", "events and webinars"),
    ("Mailing List", "mailing list"),  # only container words: keeps them rather than nothing
    ("  Product_Updates  ", "product updates"),
])
def test_normalise_name(raw, expected):
    assert normalise_name(raw) == expected


def test_same_name_is_the_migration_and_scores_highest():
    assert name_score("Contoso News", " contoso news ") == (1.0, "same name (subscription-list migration)")
    assert name_score("Contoso News list", "Contoso News")[0] == 0.99
    score, why = name_score("Contoso Newsletter", "Contoso News")
    assert 0.79 < score < 0.99 and why.startswith("similar name")
    assert name_score("Webinars", "Product updates")[0] < 0.5


def test_word_order_does_not_matter():
    assert name_score("News, Contoso", "Contoso News")[0] == 1.0


def test_pairs_are_one_to_one_best_first_and_threshold_applies():
    lists = [lst("l1", "Contoso News"), lst("l2", "Contoso News Digest"), lst("l3", "Webinars")]
    topics = [top("t1", "Contoso News"), top("t2", "Product launches")]
    found = discover_mappings(lists, topics, [P1])
    assert [(m["list"], m["topic"]) for m in found["matched"]] == [("Contoso News", "Contoso News")]
    assert found["unmatched_lists"] == ["Contoso News Digest", "Webinars"]
    assert found["unmatched_topics"] == ["Product launches"]
    lower = discover_mappings(lists, topics, [P1], threshold=0.3)
    assert len(lower["matched"]) >= 1 and lower["threshold"] == 0.3


def test_brands_by_purpose_with_opt_out_lists_in_multi_brand():
    lists = [lst("l1", "Contoso Newsletter"), lst("l2", "Fabrikam Deals"), lst("o1", "Contoso Opt-out", sub=False),
             lst("o2", "Fabrikam Unsubscribed", sub=False), lst("x", "Inactive", active=False),
             lst("acc", "Contoso Accounts", table=None)]
    topics = [top("t1", "Contoso News"), top("t2", "Fabrikam Deals", "p2"), top("t3", "Orphan", None)]
    found = discover_mappings(lists, topics, [P1, P2])
    assert found["mode"] == "multi-brand"
    doc = found["mappings"]
    assert doc == {"mode": "multi-brand", "brands": [
        {"name": "Contoso marketing", "purposes": ["Contoso marketing"], "opt_out_list": "Contoso Opt-out",
         "lists": [{"list": "Contoso Newsletter", "topic": "Contoso News"}]},
        {"name": "Fabrikam marketing", "purposes": ["Fabrikam marketing"], "opt_out_list": "Fabrikam Unsubscribed",
         "lists": [{"list": "Fabrikam Deals", "topic": "Fabrikam Deals"}]}]}
    # What discover writes is what import reads.
    resolved = resolve_mappings(parse_mappings_file(doc), lists, topics, [P1, P2])
    assert len(resolved.brands) == 2 and resolved.brands[0].opt_out_list.list_id == "o1"


def test_opt_out_lists_are_never_paired_with_topics():
    found = discover_mappings([lst("o", "News opt-out")], [top("t", "News opt-out")], [P1])
    assert found["matched"] == [] and found["mappings"] is None
    assert found["unused_opt_out_lists"] == ["News opt-out"]


def test_single_brand_merges_purposes_and_has_no_opt_out_list():
    lists = [lst("l1", "Contoso News"), lst("l2", "Fabrikam Deals"), lst("o1", "Contoso Opt-out", sub=False)]
    topics = [top("t1", "Contoso News"), top("t2", "Fabrikam Deals", "p2")]
    doc = discover_mappings(lists, topics, [P1, P2], mode="single-brand")["mappings"]
    assert doc["mode"] == "single-brand" and len(doc["brands"]) == 1
    (brand,) = doc["brands"]
    assert brand["purposes"] == ["Contoso marketing", "Fabrikam marketing"] and brand["opt_out_list"] is None
    assert len(brand["lists"]) == 2
    parse_mappings_file(doc)


def test_one_purpose_defaults_to_single_brand():
    found = discover_mappings([lst("l1", "News")], [top("t1", "News")], [P1])
    assert found["mode"] == "single-brand" and found["mappings"]["brands"][0]["name"] == "Contoso marketing"


def test_duplicate_names_are_written_as_ids():
    lists = [lst("l1", "News"), lst("l2", "News")]
    topics = [top("t1", "News")]
    found = discover_mappings(lists, topics, [P1])
    (pair,) = found["mappings"]["brands"][0]["lists"]
    assert pair == {"list": "l1", "topic": "News"}  # the list name is ambiguous: its id; ties go to the first id
    assert found["unmatched_lists"] == ["News"]


def test_lead_lists_pair_too():
    found = discover_mappings([lst("l1", "Event Leads", table="lead")], [top("t1", "Event Leads")], [P1])
    assert found["matched"][0]["list_id"] == "l1"
