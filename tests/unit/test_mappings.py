"""Mappings: parsing the file, resolving names and ids against the catalog, indexes, round trips."""
from __future__ import annotations

import json

import pytest

from shared.domain.consent import EMAIL_COLUMNS
from shared.domain.mappings import Mappings, MappingsError, parse_mappings_file, resolve_mappings
from shared.domain.model import Purpose, SubscriptionList, Topic
from tests.domain_builders import (
    L_A1,
    L_A2,
    L_B1,
    L_C1,
    OO_A,
    OO_B,
    OO_C,
    P_A,
    P_B,
    P_C,
    P_SHARED,
    T_A1,
    T_A2,
    T_B1,
    T_C1,
    multi_brand,
)


def gid(n: int) -> str:
    return f"00000000-0000-0000-0000-{n:012d}"


# The catalog: lists, topics, purposes as the Dataverse client returns them.
LISTS = [
    SubscriptionList(gid(1), "Acme News", "contact"),
    SubscriptionList(gid(2), "Acme Events", "lead"),
    SubscriptionList(gid(3), "Acme Opt-out", "contact"),
    SubscriptionList(gid(4), "Beta News", "contact"),
    SubscriptionList(gid(5), "Twin", "contact"),
    SubscriptionList(gid(6), "twin ", "contact"),  # same name up to case and spaces: ambiguous
    SubscriptionList(gid(7), "Accounts list", None),  # neither contacts nor leads
]
TOPICS = [
    Topic(gid(11), "Newsletter", gid(21)),
    Topic(gid(12), "Events", gid(21)),
    Topic(gid(13), "Beta Newsletter", gid(22)),
    Topic(gid(14), "Orphan", None),
    Topic(gid(15), "Dup", gid(21)),
    Topic(gid(16), "DUP", gid(21)),
]
PURPOSES = [Purpose(gid(21), "Acme Commercial"), Purpose(gid(22), "Beta Commercial"), Purpose(gid(23), "Shared")]


def resolve(doc):
    return resolve_mappings(parse_mappings_file(doc), LISTS, TOPICS, PURPOSES)


def problems_of(doc, resolve_too=False) -> list[str]:
    with pytest.raises(MappingsError) as exc:
        resolve(doc) if resolve_too else parse_mappings_file(doc)
    assert str(exc.value) == "; ".join(exc.value.problems)
    return exc.value.problems


SINGLE = {"mode": "single-brand", "brands": [
    {"name": "Acme", "purposes": ["Acme Commercial"], "opt_out_list": None,
     "lists": [{"list": "Acme News", "topic": "Newsletter"}, {"list": "Acme Events", "topic": "Events"}]}]}
MULTI = {"mode": "multi-brand", "email_attributes": ["emailaddress1", "emailaddress2"], "brands": [
    {"name": "Acme", "purposes": ["acme commercial", "Shared"], "opt_out_list": "Acme Opt-out",
     "lists": [{"list": "ACME NEWS", "topic": "newsletter"}, {"list": gid(2), "topic": gid(12)}]},
    {"name": "Beta", "purposes": [gid(22), "Shared"],
     "lists": [{"list": " Beta News ", "topic": "Beta Newsletter"}]}]}


# --- parsing -----------------------------------------------------------------------------------------

def test_parse_single_brand_defaults():
    spec = parse_mappings_file(SINGLE)
    assert spec.mode == "single-brand" and spec.email_attributes == EMAIL_COLUMNS
    (b,) = spec.brands
    assert (b.name, b.purposes, b.opt_out_list) == ("Acme", ("Acme Commercial",), None)
    assert [(m.list, m.topic) for m in b.lists] == [("Acme News", "Newsletter"), ("Acme Events", "Events")]


def test_parse_trims_and_keeps_order():
    spec = parse_mappings_file(MULTI)
    assert spec.email_attributes == ("emailaddress1", "emailaddress2")
    assert [b.name for b in spec.brands] == ["Acme", "Beta"]
    assert spec.brands[1].lists[0].list == "Beta News" and spec.brands[1].opt_out_list is None


@pytest.mark.parametrize("doc,expected", [
    ([], ["the mappings file must be a JSON object"]),
    ("x", ["the mappings file must be a JSON object"]),
    ({"brands": SINGLE["brands"]}, ["mode must be 'single-brand' or 'multi-brand', got None"]),
    ({**SINGLE, "mode": "both"}, ["mode must be 'single-brand' or 'multi-brand', got 'both'"]),
    ({"mode": "multi-brand"}, ["brands must be a non-empty list"]),
    ({"mode": "multi-brand", "brands": []}, ["brands must be a non-empty list"]),
    ({"mode": "multi-brand", "brands": {"name": "x"}}, ["brands must be a non-empty list"]),
    ({**SINGLE, "extra": 1, "another": 2}, ["unknown field(s) another, extra"]),
    ({**SINGLE, "email_attributes": []}, ["email_attributes must be a non-empty list drawn from "
                                          "emailaddress1, emailaddress2, emailaddress3"]),
    ({**SINGLE, "email_attributes": ["mobilephone"]}, ["email_attributes must be a non-empty list drawn from "
                                                       "emailaddress1, emailaddress2, emailaddress3"]),
    ({"mode": "multi-brand", "brands": ["Acme"]}, ["brands[0] must be an object"]),
    ({"mode": "multi-brand", "brands": [{"name": " ", "purposes": ["p"]}]}, ["brands[0].name must be a non-empty string"]),
    ({"mode": "multi-brand", "brands": [{"name": "A", "purposes": ["p"], "colour": "red"}]},
     ["brand 'A': unknown field(s) colour"]),
    ({"mode": "multi-brand", "brands": [{"name": "A"}]},
     ["brand 'A': purposes must be a non-empty list of purpose names or ids"]),
    ({"mode": "multi-brand", "brands": [{"name": "A", "purposes": ["p", ""]}]},
     ["brand 'A': purposes must be a non-empty list of purpose names or ids"]),
    ({"mode": "multi-brand", "brands": [{"name": "A", "purposes": ["p"], "opt_out_list": 5}]},
     ["brand 'A': opt_out_list must be a list name, id or null"]),
    ({"mode": "multi-brand", "brands": [{"name": "A", "purposes": ["p"], "lists": {"list": "x", "topic": "y"}}]},
     ['brand \'A\': lists must be a list of {"list": ..., "topic": ...}']),
    ({"mode": "multi-brand", "brands": [{"name": "A", "purposes": ["p"], "lists": [
        {"list": "x", "topic": "y"}, {"list": "x"}, {"list": "x", "topic": "y", "z": 1}, {"list": " ", "topic": "y"},
        "x"]}]},
     [f'brand \'A\': lists[{j}] must be {{"list": name or id, "topic": name or id}} (and optionally "shared": true)'
      for j in (1, 2, 3, 4)]),
    ({"mode": "multi-brand", "brands": [{"name": "Acme", "purposes": ["p"]}, {"name": "ACME", "purposes": ["q"]}]},
     ["brand names must be unique"]),
    ({"mode": "single-brand", "brands": [{"name": "A", "purposes": ["p"]}, {"name": "B", "purposes": ["q"]}]},
     ["single-brand mode takes exactly one brand; use multi-brand for several"]),
])
def test_parse_errors_name_the_problem(doc, expected):
    assert problems_of(doc) == expected


def test_parse_lists_every_problem_at_once():
    doc = {"mode": "x", "surprise": 1, "brands": [
        {"name": "A", "purposes": [], "lists": [{"list": "l"}], "logo": "a.png"},
        {"name": "a", "purposes": ["p"], "opt_out_list": ""}]}
    got = problems_of(doc)
    assert got == [
        "unknown field(s) surprise",
        "mode must be 'single-brand' or 'multi-brand', got 'x'",
        "brand 'A': unknown field(s) logo",
        "brand 'A': purposes must be a non-empty list of purpose names or ids",
        'brand \'A\': lists[0] must be {"list": name or id, "topic": name or id} (and optionally "shared": true)',
        "brand 'a': opt_out_list must be a list name, id or null",
        "brand names must be unique",
    ]


# --- resolution ----------------------------------------------------------------------------------------

def test_resolve_by_name_case_insensitively_and_by_id():
    m = resolve(MULTI)
    acme, beta = m.brands
    assert m.mode == "multi-brand" and m.email_columns == ("emailaddress1", "emailaddress2")
    assert [p.id for p in acme.purposes] == [gid(21), gid(23)] and [p.id for p in beta.purposes] == [gid(22), gid(23)]
    assert acme.opt_out_list.list_id == gid(3) and acme.opt_out_list.member_table == "contact"
    assert [(lt.list_id, lt.list_name, lt.member_table, lt.topic_id, lt.topic_name, lt.purpose_id) for lt in acme.lists] \
        == [(gid(1), "Acme News", "contact", gid(11), "Newsletter", gid(21)),
            (gid(2), "Acme Events", "lead", gid(12), "Events", gid(21))]
    assert beta.opt_out_list is None and beta.lists[0].list_id == gid(4)


def test_resolve_an_upper_case_id():
    doc = {**SINGLE, "brands": [{"name": "Acme", "purposes": [gid(21).upper()],
                                 "lists": [{"list": gid(1).upper(), "topic": gid(11)}]}]}
    m = resolve(doc)
    assert m.brands[0].purposes[0].id == gid(21) and m.brands[0].lists[0].list_id == gid(1)


def test_an_id_that_is_not_in_the_catalog_is_unknown():
    doc = {**SINGLE, "brands": [{"name": "Acme", "purposes": [gid(99)]}]}
    assert problems_of(doc, resolve_too=True) == [f"brand 'Acme': unknown purpose '{gid(99)}'"]


def test_resolution_lists_every_unknown_and_ambiguous_name_at_once():
    doc = {"mode": "multi-brand", "brands": [
        {"name": "Acme", "purposes": ["Nope", "Acme Commercial"], "opt_out_list": "Missing list",
         "lists": [{"list": "Twin", "topic": "Newsletter"}, {"list": "Acme News", "topic": "Dup"},
                   {"list": "Ghost", "topic": "Phantom"}]},
        {"name": "Beta", "purposes": ["Beta Commercial"], "opt_out_list": "Accounts list",
         "lists": [{"list": "Accounts list", "topic": "Beta Newsletter"}, {"list": "Beta News", "topic": "Orphan"}]},
    ]}
    assert problems_of(doc, resolve_too=True) == [
        "brand 'Acme': unknown purpose 'Nope'",
        "brand 'Acme': unknown list 'Missing list'",
        "brand 'Acme': list name 'Twin' is ambiguous (2 rows); use its id",
        "brand 'Acme': topic name 'Dup' is ambiguous (2 rows); use its id",
        "brand 'Acme': unknown list 'Ghost'",
        "brand 'Acme': unknown topic 'Phantom'",
        "brand 'Beta': opt-out list 'Accounts list' holds neither contacts nor leads",
        "brand 'Beta': list 'Accounts list' holds neither contacts nor leads",
        "brand 'Beta': topic 'Orphan' has no purpose",
    ]


def test_ambiguous_name_resolves_by_id():
    doc = {**SINGLE, "brands": [{"name": "Acme", "purposes": ["Acme Commercial"],
                                 "lists": [{"list": gid(6), "topic": gid(16)}]}]}
    lt = resolve(doc).brands[0].lists[0]
    assert (lt.list_id, lt.topic_id) == (gid(6), gid(16))


def test_a_list_cannot_be_both_mapped_and_the_opt_out_list():
    doc = {"mode": "multi-brand", "brands": [{"name": "Acme", "purposes": ["Acme Commercial"],
                                              "opt_out_list": "Acme News",
                                              "lists": [{"list": "Acme News", "topic": "Newsletter"}]}]}
    assert problems_of(doc, resolve_too=True) == [
        "brand 'Acme': list 'Acme News' is both a mapped list and the opt-out list"]


# --- indexes -------------------------------------------------------------------------------------------

def test_indexes():
    m = multi_brand()
    a, b, c = m.brands
    assert {k: [lt.topic_id for lt in v] for k, v in m.topics_of_list.items()} == \
        {L_A1: [T_A1], L_A2: [T_A2], L_B1: [T_B1], L_C1: [T_C1]}
    assert m.lists_of_topic == {T_A1: {L_A1}, T_A2: {L_A2}, T_B1: {L_B1}, T_C1: {L_C1}}
    assert m.purpose_of_topic == {T_A1: P_A, T_A2: P_A, T_B1: P_B, T_C1: P_C}
    assert {k: [x.name for x in v] for k, v in m.brands_of_purpose.items()} == \
        {P_A: ["A"], P_SHARED: ["A", "B"], P_B: ["B"], P_C: ["C"]}
    assert m.covered_purposes == {P_A, P_B, P_C, P_SHARED}
    assert m.member_table_of_list == {L_A1: "contact", L_A2: "lead", L_B1: "contact", L_C1: "contact",
                                      OO_A: "contact", OO_B: "lead", OO_C: "contact"}
    assert m.relevant_lists == {L_A1, L_A2, L_B1, L_C1, OO_A, OO_B, OO_C}
    assert {k: v.name for k, v in m.brand_of_opt_out_list.items()} == {OO_A: "A", OO_B: "B", OO_C: "C"}
    assert a.list_ids == {L_A1, L_A2} and a.purpose_ids == {P_A, P_SHARED}


def test_one_list_for_two_topics_and_one_topic_for_two_lists_only_when_said_so():
    doc = {"mode": "multi-brand", "brands": [
        {"name": "Acme", "purposes": ["Acme Commercial"], "lists": [
            {"list": "Acme News", "topic": "Newsletter"}, {"list": "Acme News", "topic": "Events"}]},
        {"name": "Beta", "purposes": ["Acme Commercial"], "lists": [{"list": "Beta News", "topic": "Newsletter"}]}]}
    assert problems_of(doc, resolve_too=True) == [
        "list 'Acme News' is paired with 2 topics ('Events', 'Newsletter'); if that is intended, add "
        "\"shared\": true to each of these pairs, else keep one",
        "topic 'Newsletter' is paired with 2 lists ('Acme News', 'Beta News'); if that is intended, add "
        "\"shared\": true to each of these pairs, else keep one"]
    for b in doc["brands"]:
        for pair in b["lists"]:
            pair["shared"] = True
    m = resolve(doc)
    assert [lt.topic_id for lt in m.topics_of_list[gid(1)]] == [gid(11), gid(12)]
    assert m.lists_of_topic[gid(11)] == {gid(1), gid(4)}
    assert [b.name for b in m.brands_of_purpose[gid(21)]] == ["Acme", "Beta"]
    assert m.to_file()["brands"][1]["lists"] == [{"list": "Beta News", "topic": "Newsletter", "shared": True}]
    assert resolve(m.to_file()) == m  # export and import again keeps the intent


def test_the_same_pair_twice_is_an_error():
    doc = {**SINGLE, "brands": [{"name": "Acme", "purposes": ["Acme Commercial"], "lists": [
        {"list": "Acme News", "topic": "Newsletter"}, {"list": "acme news", "topic": gid(11), "shared": True}]}]}
    assert problems_of(doc, resolve_too=True) == [
        "brand 'Acme': list 'Acme News' and topic 'Newsletter' are paired twice; remove the repeat"]


def test_a_topic_of_another_brands_purpose_is_an_error():
    doc = {"mode": "multi-brand", "brands": [
        {"name": "Acme", "purposes": ["Acme Commercial"], "lists": [{"list": "Acme News", "topic": "Newsletter"}]},
        {"name": "Beta", "purposes": ["Beta Commercial"], "lists": [{"list": "Beta News", "topic": "Events"}]}]}
    assert problems_of(doc, resolve_too=True) == [
        "brand 'Beta': topic 'Events' is of purpose 'Acme Commercial', which belongs to brand 'Acme'; map it there, "
        "or pick a topic of this brand's purposes"]


def test_a_name_close_to_an_existing_one_is_suggested():
    doc = {**SINGLE, "brands": [{"name": "Acme", "purposes": ["Acme Comercial"], "lists": [
        {"list": "Acme Newz", "topic": "Newsleter"}, {"list": "Completely different", "topic": "Events"}]}]}
    assert problems_of(doc, resolve_too=True) == [
        "brand 'Acme': unknown purpose 'Acme Comercial' (did you mean 'Acme Commercial'?)",
        "brand 'Acme': unknown list 'Acme Newz' (did you mean 'Acme News'?)",
        "brand 'Acme': unknown topic 'Newsleter' (did you mean 'Newsletter'?)",
        "brand 'Acme': unknown list 'Completely different'"]


# --- round trips -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("doc", [SINGLE, MULTI], ids=["single", "multi"])
def test_to_dict_from_dict_round_trip(doc):
    m = resolve(doc)
    d = json.loads(json.dumps(m.to_dict()))
    assert d["version"] == 1
    back = Mappings.from_dict(d)
    assert back == m and back.to_dict() == m.to_dict()
    assert back.topics_of_list == m.topics_of_list and back.covered_purposes == m.covered_purposes


@pytest.mark.parametrize("doc", [SINGLE, MULTI], ids=["single", "multi"])
def test_to_file_parse_resolve_round_trip(doc):
    m = resolve(doc)
    f = json.loads(json.dumps(m.to_file()))
    assert resolve(f) == m
    assert resolve(f).to_file() == f


def test_to_file_uses_names():
    f = resolve(MULTI).to_file()
    assert f["brands"][0] == {"name": "Acme", "purposes": ["Acme Commercial", "Shared"], "opt_out_list": "Acme Opt-out",
                              "lists": [{"list": "Acme News", "topic": "Newsletter"},
                                        {"list": "Acme Events", "topic": "Events"}]}
    assert f["brands"][1]["opt_out_list"] is None
