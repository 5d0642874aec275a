"""A small burst in CI (``python -m bench.burst`` is the full one): notifications posted to the local
host while Dataverse throttles and fails; none vanish, the closure holds, no address is logged, and
the compliance command reports the propagation the bench measured."""
from __future__ import annotations

import pytest

from bench.burst import run

pytestmark = pytest.mark.integration


def test_a_throttled_burst_loses_nothing_and_logs_no_address(azurite_tables):
    # Higher fault shares than the bench: with 300 events there are only a few dozen requests.
    r = run(300, throttle=0.15, errors=0.1, duplicates=0.05, azurite_connection=azurite_tables, timeout=60,
            quiet=True)
    assert r["accepted_202"] == r["notifications_posted"]
    assert r["none_vanished"], r
    assert r["closure_ok"], r["closure_diff"]
    assert r["queue_duplicates_dropped"] > 0  # the repeated notifications met duplicate detection
    assert r["log_lines"] > 0 and r["log_lines_with_an_address"] == 0
    # the opt-out deadlines table saw every opt-out, and times them as the bench does (within 1 s)
    c = r["compliance"]
    assert c["open"] == 0 and c["propagated"] > 0
    assert r["compliance_matches"], (r["propagation_ms_p50"], r["propagation_ms_p99"], c)
