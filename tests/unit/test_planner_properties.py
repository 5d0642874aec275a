"""Property tests of the planner: random small states and triggers, in both modes.

Whatever the state: the plan is opt-out only, applying it leaves nothing to do, and planning in
rounds from an empty state (reading what the frontier asks for) converges to a subset of it.
"""
from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.domain.planner import OptOutConsent, SetDoNotBulkEmail, State, Trigger, plan
from tests.domain_builders import (
    EMAIL,
    IN,
    L_OTHER,
    NOT_SET,
    OUT,
    TEXT,
    apply,
    effects,
    in_rounds,
    member,
    multi_brand,
    row,
    single_brand,
)
from tests.unit.test_planner import assert_never_opt_in

MAPPINGS = [single_brand(), single_brand(opt_out=("oo-acme", "contact")), multi_brand()]
EMAILS = ["a@x.com", "b@x.com", "c@x.com", "d@x.com"]
SPELLINGS = {"a@x.com": ["a@x.com", " A@X.com "], "b@x.com": ["b@x.com", "B@x.COM"], "c@x.com": ["c@x.com"],
             "d@x.com": ["d@x.com"]}
STAMPS = [None, "2024-01-01T00:00:00Z", "2024-06-01T00:00:00Z", "2025-01-01T00:00:00Z"]


@st.composite
def worlds(draw):
    m = draw(st.sampled_from(MAPPINGS))
    pairs = [(p, None) for p in sorted(m.covered_purposes)] + [("p-uncovered", None)]
    pairs += [(lt.purpose_id, lt.topic_id) for b in m.brands for lt in b.lists]
    s = State()
    n = draw(st.integers(0, 4))
    for i in range(n):
        table = draw(st.sampled_from(["contact", "lead"]))
        emails = draw(st.lists(st.sampled_from(EMAILS), max_size=3, unique=True))
        spelled = [draw(st.sampled_from(SPELLINGS[e])) for e in emails]
        mem = member(table, f"m{i}", *spelled, dnb=draw(st.booleans()), dne=draw(st.booleans()),
                     active=draw(st.booleans()))
        lists = [lid for lid, t in m.member_table_of_list.items() if t == table] + [L_OTHER]
        s.add_member(mem, draw(st.lists(st.sampled_from(sorted(lists)), max_size=3, unique=True)))
    for e in EMAILS:
        rows = []
        for _ in range(draw(st.integers(0, 3))):
            purpose, topic = draw(st.sampled_from(pairs))
            rows.append(row(e, purpose, topic, draw(st.sampled_from([OUT, IN, NOT_SET, None])),
                            modified=draw(st.sampled_from(STAMPS)), active=draw(st.booleans()),
                            cptype=draw(st.sampled_from([EMAIL, EMAIL, TEXT, None]))))
        s.add_email(e, rows)
    keys = sorted(s.members) + [("contact", "gone"), ("lead", "gone")]
    s.missing_members.update({("contact", "gone"), ("lead", "gone")})
    trigger = st.one_of(
        st.builds(lambda k, lid, c: Trigger("left_list", c, member=k, list_id=lid),
                  st.sampled_from(keys), st.sampled_from(sorted(m.relevant_lists) + [L_OTHER]), st.sampled_from("xy")),
        st.builds(lambda k, add, c: Trigger("inspect_member", c, member=k, reacts_to_addition=add),
                  st.sampled_from(keys), st.booleans(), st.sampled_from("xy")),
        st.builds(lambda e, c: Trigger("inspect_email", c, email=e), st.sampled_from(EMAILS), st.sampled_from("xy")),
    )
    triggers = draw(st.lists(trigger, max_size=3))
    return m, s, triggers


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(worlds())
def test_plan_is_opt_out_only_and_idempotent(world):
    m, s, triggers = world
    p = plan(s, m, triggers)
    assert p.complete
    assert_never_opt_in(p.actions, m, s)
    assert len(effects(p.actions)) == len(p.actions)  # no write planned twice
    if m.mode == "multi-brand":
        assert not any(isinstance(a, SetDoNotBulkEmail) for a in p.actions)
    for a in p.actions:
        if isinstance(a, OptOutConsent):
            assert a.email in s.loaded_emails and a.purpose_id
    after = apply(s, p.actions)
    assert plan(after, m, triggers).actions == []
    assert plan(after, m, []).actions == []  # the nightly reconciliation agrees


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(worlds())
def test_rounds_converge_to_part_of_the_full_plan(world):
    m, full, triggers = world
    read, p, _ = in_rounds(full, m, triggers)
    assert effects(p.actions) <= effects(plan(full, m, triggers).actions)
    assert_never_opt_in(p.actions, m, read)
    # the engine's second pass: the world after the writes, read again in rounds, needs nothing more
    _, again, _ = in_rounds(apply(full, p.actions), m, triggers)
    assert again.actions == []
