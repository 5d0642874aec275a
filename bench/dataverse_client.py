"""Dataverse client cost against the sandbox: requests per operation and wall time.

What the sync pays per unit of work, in Dataverse requests (the scarce resource: 6,000 per user
per 5 minutes) and in seconds with a per-request latency like a real environment's.
Run: ``python -m bench.dataverse_client [--rows 20000] [--latency-ms 20]``. Prints one JSON document.
"""
from __future__ import annotations

import argparse
import json
import time
import uuid

from sandbox.dataverse import SandboxServer
from shared.adapters.dataverse import DataverseClient, StaticToken

NS = uuid.UUID("9a3b0c53-8d0e-4a57-8f0b-3b8e0b7f1c11")


def gid(name: str) -> str:
    return str(uuid.uuid5(NS, name))


def measure(client: DataverseClient, fn) -> dict:
    client.reset_counts()
    start = time.perf_counter()
    result = fn()
    return {"seconds": round(time.perf_counter() - start, 3), "http_requests": client.total_requests,
            "batch_operations": client.batch_operations, "retries": client.request_counts["retry"],
            "result": result}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--lookups", type=int, default=2_000)
    ap.add_argument("--writes", type=int, default=2_000)
    ap.add_argument("--latency-ms", type=float, default=20)
    args = ap.parse_args()
    seed = {"contacts": [{"contactid": gid(f"c{i}"), "emailaddress1": f"person{i}@example.com"}
                         for i in range(args.rows)]}
    with SandboxServer(port=0, seed=seed, latency_ms=args.latency_ms) as srv:
        client = DataverseClient(srv.api_url, StaticToken("bench"), retry_budget=60)
        emails = [f"person{i}@example.com" for i in range(0, args.rows, max(1, args.rows // args.lookups))]
        report = {
            "rows": args.rows, "latency_ms": args.latency_ms,
            "page_all_contacts": measure(client, lambda: sum(1 for _ in client.iter_rows("contacts", ["contactid"]))),
            "members_by_emails": measure(client, lambda: len(client.members_by_emails(emails))),
            "set_member_flags": measure(client, lambda: sum(r.ok for r in client.set_member_flags(
                [("contact", gid(f"c{i}"), {"donotbulkemail": True}) for i in range(min(args.writes, args.rows))]))),
        }
        client.close()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
