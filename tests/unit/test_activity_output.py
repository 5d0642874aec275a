"""The pure parts of the operator's view: --since spans, ledger summaries, TSV output."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest

from shared.service_layer.activity import parse_since, summarise
from shared.domain.ledger import LedgerEntry
from shared.entrypoints.cli.output import tsv

NOW = datetime(2026, 2, 1, 12, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize("text,expected", [("24h", datetime(2026, 1, 31, 12, 0, tzinfo=timezone.utc)),
                                           ("90m", datetime(2026, 2, 1, 10, 30, tzinfo=timezone.utc)),
                                           ("7d", datetime(2026, 1, 25, 12, 0, tzinfo=timezone.utc)),
                                           ("2W", datetime(2026, 1, 18, 12, 0, tzinfo=timezone.utc)),
                                           ("2026-01-31T08:00", datetime(2026, 1, 31, 8, 0, tzinfo=timezone.utc)),
                                           ("2026-01-31T08:00+01:00", datetime(2026, 1, 31, 7, 0, tzinfo=timezone.utc))])
def test_since(text, expected):
    assert parse_since(text, NOW) == expected


@pytest.mark.parametrize("text", ["", "yesterday", "0h", "-1h", "2027-01-01", "24 hours"])
def test_since_refuses_what_it_cannot_read(text):
    with pytest.raises(ValueError, match="--since"):
        parse_since(text, NOW)


def entry(rule, system, outcome, target="c1", event="e1", at="2026-02-01T10:00:00Z", action="set donotbulkemail",
          origin="dataverse", detail=None):
    return LedgerEntry("", rule, origin, event, "2026-02-01T09:00:00Z", system, "contact", target, action, "false",
                       "true", outcome, detail, at)


def test_a_change_filed_under_two_people_counts_once_and_healed_failures_are_not_open():
    view = summarise([
        ("p1", entry("R4", "obm", "applied")), ("p2", entry("R4", "obm", "applied")),  # one contact, two addresses
        ("p3", entry("R3", "rtm", "failed", target="row", detail="404", at="2026-02-01T10:00:00Z")),
        ("p3", entry("R3", "rtm", "applied", target="row", event="retry", at="2026-02-01T11:00:00Z")),  # healed
        ("p4", entry("R1", "rtm", "failed", target="row2", origin="reconcile", detail="500")),
    ], NOW)
    assert view["changes"] == {"applied": 2, "failed": 2, "refused": 0, "unchanged": 0} and view["people"] == 4
    assert [(r["rule"], r["direction"], r["origin"]) for r in view["by_rule"]] == [
        ("R1", "to_rtm", "reconcile"), ("R3", "to_rtm", "event"), ("R4", "to_obm", "event")]
    assert view["failures_total"] == 2 and view["failures_open"] == 1
    since, item = view["_oldest_failure"]
    assert item["rule"] == "R1" and since == datetime(2026, 2, 1, 9, 0, tzinfo=timezone.utc)


def test_tsv_rows_scalars_and_escaping():
    data = {"queues": ["a", "b"], "items": [{"x": 1, "ok": True, "none": None, "nested": {"a": 1}, "t": "a\tb\nc"}]}
    assert tsv(data, "items") == "1\ttrue\t\ta b c\n"
    assert tsv({"n": 2, "s": "x", "l": [1]}) == "2\tx\n"
    assert tsv([{"a": 1}, {"a": 2}]) == "1\n2\n"
    assert tsv({"items": []}, "items") == ""
