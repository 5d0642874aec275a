"""The report's re-consent class: standing re-consents (count, oldest) and unknown-order overwrites."""
from __future__ import annotations

from shared.domain.drift import ReconsentTally
from shared.domain.planner import Judgement, OptOutTime, Reconsent
from shared.service_layer.reconcile.chunks import ChunkResult
from shared.service_layer.reconcile.report import finish


def reconsent(email: str, at: str, verdict: str = "stands", purpose: str = "p") -> Reconsent:
    j = Judgement("flag contact c1", OptOutTime("2026-01-01T00:00:00Z", "ledger", True), verdict == "stands", False)
    return Reconsent(email, 534120000, purpose, None, f"row-{email}-{purpose}", at, 534120004, verdict, (j,), "R3", None)


def test_counts_each_person_and_scope_once_and_keeps_the_oldest():
    t = ReconsentTally()
    t.count([reconsent("a@x.test", "2026-03-01T10:00:00Z"), reconsent("a@x.test", "2026-03-01T10:00:00Z"),
             reconsent("b@x.test", "2026-02-01T10:00:00Z"), reconsent("b@x.test", "2026-04-01T00:00:00Z", purpose="q"),
             reconsent("c@x.test", "2026-01-15T00:00:00Z", "order unknown"),
             reconsent("d@x.test", "2026-01-10T00:00:00Z", "opt-out newer")])
    assert (t.standing, t.oldest, t.order_unknown) == (3, "2026-02-01T10:00:00Z", 1)


def test_chunks_add_up_through_their_stored_form():
    a, b = ChunkResult(), ChunkResult()
    a.reconsent.count([reconsent("a@x.test", "2026-03-01T10:00:00Z")])
    b.reconsent.count([reconsent("b@x.test", "2026-02-01T10:00:00Z"), reconsent("c@x.test", "2026-01-01T00:00:00Z",
                                                                              "order unknown")])
    total = ChunkResult()
    total.add(ChunkResult.from_dict(a.to_dict()))
    total.add(ChunkResult.from_dict(b.to_dict()))
    report = finish({"run_id": "r"}, total, 0, 0.0, lambda: 1.0)
    assert report["reconsented_in_rtm"] == 2 and report["reconsented_in_rtm_oldest"] == "2026-02-01T10:00:00Z"
    assert report["opt_out_order_unknown"] == 1


def test_an_empty_run_reports_zero():
    report = finish({"run_id": "r"}, ChunkResult.from_dict(ChunkResult().to_dict()), 0, 0.0, lambda: 1.0)
    assert (report["reconsented_in_rtm"], report["reconsented_in_rtm_oldest"], report["opt_out_order_unknown"]) == \
        (0, None, 0)


def test_explain_prints_the_timeline_and_why(capsys):
    from shared.entrypoints.cli.explain import _print_timeline

    _print_timeline([{"scope": "purpose 'Contoso marketing'", "row_id": "r1", "reconsented_at": "2026-03-20T14:30:00Z",
                      "source": "Preference center", "rule": "R3", "verdict": "stands", "why": "their newer choice stands",
                      "against": [{"opt_out": "flag contact c1", "evidence": "ledger", "at": "2026-03-01T09:00:00Z",
                                   "dated": True, "remembered": True, "stands": True}]}])
    out = capsys.readouterr().out
    assert "opted in 2026-03-20T14:30:00Z from Preference center: stands" in out
    assert "vs flag contact c1: at 2026-03-01T09:00:00Z (ledger); remembered; older" in out
    assert "their newer choice stands" in out
