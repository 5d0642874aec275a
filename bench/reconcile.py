"""Nightly reconciliation at scale: a dry run and a healing run on a synthetic tenant, with requests,
wall time and peak RSS, next to a naive per-record reconciliation (one lookup per contact, as a
scheduled cloud flow does) on the same tenant.

    python -m bench.reconcile --contacts 100000 --naive
    python -m bench.reconcile --contacts 1000000

The Dataverse sandbox runs in a child process (bench.tenant --serve), so the peak RSS printed is the
reconciler's own. Targets (issue #5) at 1,000,000 contacts, 20 lists, 5% opted out, 1% drift:
peak RSS < 1 GB; requests <= 1.2 x (pages at 5,000 rows + one per 1,000 writes); >= 50x fewer
requests than the naive run at 100k; the 1M run costs at most 12x the 100k run.
"""
from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time
import uuid

import requests

from bench.tenant import catalog
from sandbox.azurite import ensure_azurite, free_port
from shared import bootstrap
from shared.adapters.settings import Settings
from shared.admin import import_mappings
from shared.reconcile import run_reconciliation

PAGE, WRITES_PER_REQUEST = 5000, 1000


def start_tenant(args) -> tuple[subprocess.Popen, str, dict]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "bench.tenant", "--serve", str(port), "--contacts", str(args.contacts),
                             "--lists", str(args.lists), "--opted-out", str(args.opted_out), "--drift", str(args.drift)],
                            stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if not line:
        raise SystemExit("the tenant sandbox did not start")
    info = json.loads(line)
    return proc, info["ready"], info


def pages_needed(url: str, lists: int) -> int:
    """Pages of 5,000 rows the tenant takes to read once: contacts, leads, consent rows, and each
    mapped and opt-out list's members (counted with plain requests, outside the client's tally)."""
    counts = requests.get(f"{url}/_sandbox/counts", timeout=60).json()
    pages = sum(math.ceil(counts[t] / PAGE) for t in ("contact", "lead", "msdynmkt_contactpointconsent4"))
    headers = {"Authorization": "Bearer bench-counter"}
    for row in catalog(lists)[0]["lists"]:
        r = requests.get(f"{url}/api/data/v9.2/lists({row['listid']})/listcontact_association",
                         params={"$count": "true", "$top": "0", "$select": "contactid"}, headers=headers, timeout=120)
        pages += max(1, math.ceil(r.json()["@odata.count"] / PAGE))
    return pages


def naive(container, limit: int | None) -> tuple[int, float, int]:
    """One consent lookup per contact, while paging through contacts (what a per-record flow does)."""
    client = container.dataverse()
    before = client.total_requests
    started = time.perf_counter()
    n = 0
    for row in client.iter_rows("contacts", "contactid,emailaddress1,emailaddress2,emailaddress3,donotbulkemail"):
        emails = [row[c].strip().lower() for c in ("emailaddress1", "emailaddress2", "emailaddress3") if row.get(c)]
        if emails:
            client.consent_rows(emails)
        n += 1
        if limit and n >= limit:
            break
    return client.total_requests - before, time.perf_counter() - started, n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--contacts", type=int, default=100_000)
    p.add_argument("--lists", type=int, default=20)
    p.add_argument("--opted-out", type=float, default=0.05)
    p.add_argument("--drift", type=float, default=0.01)
    p.add_argument("--naive", action="store_true", help="also run the naive per-record reconciliation")
    args = p.parse_args()

    proc, url, info = start_tenant(args)
    azurite = ensure_azurite(reuse=False)  # its own: another run stopping a shared Azurite would break this one
    try:
        env = {"DATAVERSE_URL": url, "DATAVERSE_ACCESS_TOKEN": "straddle-sync-app-user",
               "AzureWebJobsStorage": azurite.connection_string, "TABLE_PREFIX": "bench" + uuid.uuid4().hex[:8],
               "LEDGER_KEY": "bench-ledger-key-0123456789abcdef", "DATAVERSE_RETRY_BUDGET_SECONDS": "300"}
        container = bootstrap.Container(Settings.from_env(env))
        bootstrap.reset_container(container)
        import_mappings(catalog(args.lists)[1], container.dataverse(), container.tables().mappings)
        pages = pages_needed(url, args.lists)
        results: dict = {"contacts": args.contacts, "lists": args.lists, "opted_out": args.opted_out,
                         "drift": args.drift, "planted": info["planted"], "pages_needed": pages}
        if args.naive:
            req, secs, n = naive(container, None)
            results["naive"] = {"requests": req, "seconds": round(secs, 1), "contacts": n}
        for name, dry in (("dry_run", True), ("healing_run", False), ("after_dry_run", True)):
            started = time.perf_counter()
            report = run_reconciliation(container, dry_run=dry)
            results[name] = {"seconds": round(time.perf_counter() - started, 1),
                             "requests": report["dataverse_requests"], "found": report["drift_found"],
                             "fixed": report["drift_fixed"], "failures": report["failures"],
                             **{k: report[k] for k in report if k.startswith("found_D")}}
        results["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        azurite.stop()

    heal = results["healing_run"]
    budget = 1.2 * (pages + math.ceil(heal["fixed"] / WRITES_PER_REQUEST))
    results["request_budget"] = round(budget, 1)
    print(json.dumps(results, indent=2))
    print(f"pages at {PAGE}/page: {pages}; healing run requests {heal['requests']} (budget {budget:.0f}): "
          f"{'PASS' if heal['requests'] <= budget else 'FAIL'}")
    print(f"peak RSS {results['peak_rss_mb']} MB (target < 1024)")
    print(f"after healing, a dry run finds {results['after_dry_run']['found']} drift (target 0)")
    if "naive" in results:
        ratio = results["naive"]["requests"] / max(1, heal["requests"])
        print(f"naive per-record run: {results['naive']['requests']} requests in {results['naive']['seconds']} s; "
              f"{ratio:.0f}x more than the healing run (target >= 50x)")


if __name__ == "__main__":
    main()
