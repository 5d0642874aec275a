"""Ingest cost: parse + validate + reduce + serialise one notification, against json.loads alone.

Target (issue #2): the full transform costs at most 3x ``json.loads`` of the same body.
Run: ``python -m bench.ingest [--repeat 15]``. Prints per-call times and the ratios.
"""
from __future__ import annotations

import argparse
import copy
import json
import timeit
from pathlib import Path

from shared.ingest.notification import parse_notification

SAMPLE = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "notifications" / "sample_update_contact.json"


def opt_out_variant(sample: dict) -> dict:
    """The documented sample, but the Update sets donotbulkemail (as an unsubscribe would)."""
    body = copy.deepcopy(sample)
    body["InputParameters"][0]["value"]["Attributes"].append({"key": "donotbulkemail", "value": True})
    body["PostEntityImages"][0]["value"]["Attributes"] += [
        {"key": "emailaddress1", "value": "james.glynn@example.com"},
        {"key": "donotbulkemail", "value": True},
        {"key": "donotemail", "value": False},
    ]
    return body


def per_call(fns, repeat: int) -> list[float]:
    """Best-of-``repeat`` seconds per call for each function, measured interleaved so that a burst
    of other load on the machine hits both sides of a ratio alike."""
    timers = [timeit.Timer(fn) for fn in fns]
    numbers = [t.autorange()[0] for t in timers]
    best = [float("inf")] * len(fns)
    for _ in range(repeat):
        for i, (t, n) in enumerate(zip(timers, numbers)):
            best[i] = min(best[i], t.timeit(n) / n)
    return best


def transform(body: bytes):
    result = parse_notification(body, {})
    return result.to_json() if hasattr(result, "to_json") else result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    sample = json.loads(SAMPLE.read_bytes())
    cases = {
        "documented sample (firstname change, answered 200 ignored)": SAMPLE.read_bytes(),
        "documented sample + donotbulkemail (enqueued as contact_changed)": json.dumps(opt_out_variant(sample)).encode(),
    }
    print(f"{'case':66} {'bytes':>6} {'json.loads':>11} {'transform':>11} {'ratio':>6}")
    worst = 0.0
    for name, body in cases.items():
        base, full = per_call([lambda: json.loads(body), lambda: transform(body)], args.repeat)
        worst = max(worst, full / base)
        print(f"{name:66} {len(body):6d} {base * 1e6:9.1f}us {full * 1e6:9.1f}us {full / base:5.2f}x")
    print(f"worst ratio {worst:.2f}x (target <= 3.00x): {'PASS' if worst <= 3 else 'FAIL'}")


if __name__ == "__main__":
    main()
