"""The review file of a dry run: no cell a spreadsheet would run as a formula."""
from __future__ import annotations

import csv
import io
import json

import pytest

from shared.service_layer.review import COLUMNS, CaseWriter


def case(**values) -> dict:
    return {**{k: None for k in COLUMNS}, "drift_class": "D1", "rule": "R2", **values}


@pytest.mark.parametrize("hostile", ['=HYPERLINK("http://evil.test","x")', "+cmd|' /C calc'!A0", "-2+3", "@SUM(A1:A9)",
                                     "\t=1+1", "\r=1+1"])
def test_a_cell_a_spreadsheet_would_run_is_written_as_text(hostile):
    out = io.StringIO()
    writer = CaseWriter(out, "csv")
    writer.write(case(list=hostile, topic=hostile, purpose=hostile, error=hostile))
    writer.close()
    row, = csv.DictReader(io.StringIO(out.getvalue(), newline=""))
    for column in ("list", "topic", "purpose", "error"):
        assert row[column] == "'" + hostile
    assert row["rule"] == "R2"  # ordinary cells unchanged


def test_ordinary_names_are_unchanged_and_json_keeps_values_as_they_are():
    out = io.StringIO()
    writer = CaseWriter(out, "csv")
    writer.write(case(list="Contoso Newsletter", before="Opted in", after="Opted out"))
    row, = csv.DictReader(io.StringIO(out.getvalue()))
    assert (row["list"], row["before"], row["after"]) == ("Contoso Newsletter", "Opted in", "Opted out")
    out = io.StringIO()
    writer = CaseWriter(out, "json")
    writer.write(case(list="=1+1"))
    writer.close()
    assert json.loads(out.getvalue())[0]["list"] == "=1+1"
