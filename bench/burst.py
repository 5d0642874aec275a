"""Burst: N webhook notifications posted to the local Functions host while Dataverse throttles.

1. Record: a tenant of contacts in two mapped lists is loaded into the Dataverse sandbox; a marketer
   makes N changes through the Web API ($batch), a third each of: a topic opt-out in RTM (R2), a
   list unsubscribe in OBM (R1), a global opt-out flag (R3). The sandbox's real webhooks go to a
   recorder, so the notifications are exactly what Dataverse would send.
2. Burst: the recorded notifications (shuffled, a share posted twice as Dataverse retries do) are
   POSTed concurrently to the host's /api/dataverse/webhook while the sandbox answers a share of
   requests with 429 (Retry-After) and injected 5xx. The sync's own writes cause echo webhooks,
   delivered by the sandbox to the host as well.
3. Check: every accepted event is accounted for (processed, duplicate, echo, no effect, parked
   with a reason, dead-lettered with a reason, or dropped by duplicate detection: none vanished);
   the sandbox equals the expected closure; no email address in anything the run logged.
4. Compliance: each notification is replayed as if its change happened when it is first POSTed
   (its OperationCreatedOn restamped, the same for its duplicate), so the propagation the bench
   measures (POST to the event's last write) is what the opt-out deadlines table records (given
   to effective). The figures ``straddle compliance`` prints over the burst's window must equal
   the bench's own p50 and p99 within a second.

``python -m bench.burst [--events 10000] [--throttle 0.05] [--errors 0.03]``
"""
from __future__ import annotations

import argparse
import json
import logging
import random
import re
import statistics
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import requests

from sandbox.demo.stack import DemoStack
from shared.telemetry import EMAIL

NS = uuid.UUID("0b8e1c55-4a0c-4e8e-8d7a-5f2b9a6c1d22")
EMAIL_CH, PURPOSE_T, TOPIC_T, OPTED_IN, OPTED_OUT = 534120000, 534120000, 534120001, 534120001, 534120002
MARKETER = "burst-marketer"


def gid(name: str) -> str:
    return str(uuid.uuid5(NS, name))


PURPOSE, T1, T2, L1, L2 = gid("purpose"), gid("t1"), gid("t2"), gid("l1"), gid("l2")
MAPPINGS = {"mode": "single-brand", "brands": [{
    "name": "Contoso", "purposes": ["Contoso marketing"], "opt_out_list": None,
    "lists": [{"list": "News", "topic": "News"}, {"list": "Offers", "topic": "Offers"}]}]}


@dataclass
class Tenant:
    n: int
    second_email_share: float = 0.3
    seed: int = 11
    emails: dict[int, tuple[str, ...]] = field(default_factory=dict)
    kind: dict[int, str] = field(default_factory=dict)  # contact -> topic | list | flag | control

    def build(self) -> dict:
        rng = random.Random(self.seed)
        contacts, consents = [], []
        for i in range(self.n):
            emails = (f"p{i}@burst.test",) + ((f"p{i}.alt@home.test",) if rng.random() < self.second_email_share else ())
            self.emails[i] = emails
            # most contacts change once; a control share must stay untouched
            self.kind[i] = "control" if rng.random() < 0.04 else ("topic", "list", "flag")[i % 3]
            row = {"contactid": gid(f"c{i}"), "lastname": f"P{i}", "donotbulkemail": False}
            for k, e in enumerate(emails, 1):
                row[f"emailaddress{k}"] = e
            contacts.append(row)
            consents.append({"msdynmkt_contactpointconsent4id": gid(f"r{i}"), "msdynmkt_contactpointvalue": emails[0],
                             "msdynmkt_contactpointtype": EMAIL_CH, "msdynmkt_contactpointconsenttype": TOPIC_T,
                             "msdynmkt_value": OPTED_IN, "_msdynmkt_purposeid_value": PURPOSE,
                             "_msdynmkt_topicid_value": T1, "modifiedon": "2026-01-01T00:00:00Z"})
        ids = [c["contactid"] for c in contacts]
        return {
            "purposes": [{"msdynmkt_purposeid": PURPOSE, "msdynmkt_name": "Contoso marketing", "msdynmkt_type": 534120000}],
            "topics": [{"msdynmkt_topicid": T1, "msdynmkt_name": "News", "_msdynmkt_purposeid_value": PURPOSE},
                       {"msdynmkt_topicid": T2, "msdynmkt_name": "Offers", "_msdynmkt_purposeid_value": PURPOSE}],
            "lists": [{"listid": lid, "listname": name, "createdfromcode": 2, "type": False, "msdyncrm_issubscription": True}
                      for lid, name in ((L1, "News"), (L2, "Offers"))],
            "contacts": contacts, "consents": consents, "list_members": {L1: ids, L2: list(ids)},
        }

    def of(self, kind: str) -> list[int]:
        return [i for i, k in self.kind.items() if k == kind]

    def expected(self) -> tuple[set, dict[str, set], set]:
        """(opted-out (email, purpose, topic) keys, list -> members, contacts flagged): the closure."""
        out: set = set()
        members = {L1: set(), L2: set()}
        flagged = set()
        for i, kind in self.kind.items():
            cid, emails = gid(f"c{i}"), self.emails[i]
            in_l1, in_l2 = True, True
            if kind == "topic":  # R2: leaves News; R1: every address of the contact opted out of News
                in_l1 = False
                out.update((e, PURPOSE, T1) for e in emails)
            elif kind == "list":  # left Offers; R1: every address opted out of Offers
                in_l2 = False
                out.update((e, PURPOSE, T2) for e in emails)
            elif kind == "flag":  # R3: every address opted out of the purpose (single-brand keeps lists)
                flagged.add(cid)
                out.update((e, PURPOSE, None) for e in emails)
            if in_l1:
                members[L1].add(cid)
            if in_l2:
                members[L2].add(cid)
        return out, members, flagged


class _Recorder(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        headers = {k: v for k, v in self.headers.items() if k.lower().startswith(("x-ms-", "content-type"))}
        with self.server.lock:  # type: ignore[attr-defined]
            self.server.bodies.append((headers, body))  # type: ignore[attr-defined]
        self.send_response(202)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


class _Capture(logging.Handler):
    """Keeps the structured records the accounting needs, and scans every line for addresses."""

    def __init__(self, path: Path):
        super().__init__(logging.DEBUG)
        self.file = path.open("w")
        self.lock2 = threading.Lock()
        self.batches: list[dict] = []
        self.applied: list[tuple[float, str]] = []
        self.parked: list[str] = []
        self.lines = 0
        self.addresses = 0
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        line = self.format(record)
        with self.lock2:
            self.lines += 1
            if "@" in line and EMAIL.search(line):
                self.addresses += 1
            self.file.write(line + "\n")
            event = getattr(record, "event", None)
            if event == "process.batch":
                self.batches.append({k[9:]: v for k, v in record.__dict__.items() if k.startswith("straddle_")})
            elif event == "sync.applied":
                self.applied.append((record.created, record.__dict__.get("straddle_event_id")))
            elif event == "sync.parked":
                self.parked.append(record.__dict__.get("straddle_event_id"))


def record_notifications(stack: DemoStack, tenant: Tenant) -> list[tuple[dict, bytes]]:
    """The marketer's N changes through the Web API; the sandbox's webhooks go to a recorder."""
    from shared.adapters.dataverse.auth import StaticToken
    from shared.adapters.dataverse.client import DataverseClient

    rec = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    rec.bodies, rec.lock = [], threading.Lock()  # type: ignore[attr-defined]
    threading.Thread(target=rec.serve_forever, daemon=True).start()
    from shared.service_layer.webhooks import register_webhooks

    client = stack.container.dataverse()
    register_webhooks(client, f"http://127.0.0.1:{rec.server_address[1]}/api/dataverse/webhook", function_key="rec")
    marketer = DataverseClient(stack.sandbox.url, StaticToken(MARKETER), batch_size=1000)
    marketer.update_consent_rows([(gid(f"r{i}"), {"msdynmkt_value": OPTED_OUT}) for i in tenant.of("topic")])
    marketer.remove_list_members([(L2, "contact", gid(f"c{i}")) for i in tenant.of("list")])
    marketer.set_member_flags([("contact", gid(f"c{i}"), {"donotbulkemail": True}) for i in tenant.of("flag")])
    stack.sandbox.wait_for_webhooks(timeout=300)
    rec.shutdown()
    # Back to the host for what follows (the sync's own writes notify it, as in production).
    register_webhooks(client, f"{stack.host.url}/api/dataverse/webhook", function_key=stack.host.function_key)
    return list(rec.bodies)  # type: ignore[attr-defined]


def run(events: int = 10_000, throttle: float = 0.05, errors: float = 0.03, duplicates: float = 0.03,
        concurrency: int = 16, azurite_connection: str | None = None, log_path: Path | None = None,
        timeout: float = 600.0, quiet: bool = False, instances: int = 1) -> dict:
    from shared.telemetry import install_redaction

    install_redaction()
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))
    tenant = Tenant(int(events / 0.96) + 1)
    seed = tenant.build()
    log_path = log_path or Path(tempfile.mkdtemp(prefix="straddle-burst-")) / "burst.log"
    with _captured_logs(log_path) as capture:
        settings = {"MAX_ATTEMPTS": "5", "RETRY_DELAY_SECONDS": "2", "DATAVERSE_RETRY_BUDGET_SECONDS": "10",
                    "DATAVERSE_ACCESS_TOKEN": "burst-sync"}
        stack = DemoStack(settings, seed=seed, azurite_connection=azurite_connection, time_scale=0.25,
                          mappings_doc=MAPPINGS, host_options={"instances": instances})
        try:
            stack.start()
            t = time.monotonic()
            notes = record_notifications(stack, tenant)
            say(f"recorded {len(notes)} notifications from {len(tenant.kind)} contacts in {time.monotonic() - t:.1f} s")
            burst = post_burst(stack, notes, throttle, errors, duplicates, concurrency)
            say(f"posted {len(burst.posts)} notifications in {burst.posted_seconds:.1f} s: {dict(burst.statuses)}")
            settled = stack.settle(timeout)
            elapsed = time.monotonic() - burst.started
            stack.sandbox.set_faults({})
            stats = stack.sandbox.stats.snapshot()
            accounting = account(stack, capture, burst.statuses, settled)
            closure = check_closure(stack, tenant)
            delays = _delays(capture.applied, burst.posted_at)
            unique = len(burst.posted_at)
            compliance = compliance_figures(stack, burst.window_start)
            return {
                "notifications_posted": len(burst.posts), "http_statuses": dict(burst.statuses),
                "accepted_202": burst.statuses[202], **accounting, **closure,
                "instances": instances, "seconds": round(elapsed, 2), "events_per_second": round(unique / elapsed, 1),
                "dataverse_requests": stats["total"], "requests_per_event": round(stats["total"] / max(unique, 1), 3),
                "throttled_429": stats.get("throttled", 0), "faults_injected": stats["faults_injected"],
                "propagation_ms_p50": delays[0], "propagation_ms_p99": delays[1],
                "compliance": compliance, "compliance_matches": _matches(delays, compliance),
                "log_lines": capture.lines, "log_lines_with_an_address": capture.addresses, "log_file": str(log_path),
            }
        finally:
            stack.close()


@contextmanager
def _captured_logs(log_path: Path) -> Iterator[_Capture]:
    """Every log line of the run through the capture, with the loggers' levels restored afterwards."""
    capture = _Capture(log_path)
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(capture)
    root.setLevel(logging.INFO)
    # urllib3's request lines (URLs hold $filter values) are the classic leak: scan them too. The Azure
    # SDK's header dumps only cost time (Table Storage carries no address).
    levels = {name: logging.getLogger(name).level for name in ("urllib3", "azure", "sandbox.host")}
    logging.getLogger("urllib3").setLevel(logging.DEBUG)
    logging.getLogger("azure").setLevel(logging.WARNING)
    try:
        yield capture
    finally:
        root.removeHandler(capture)
        root.setLevel(old_level)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        capture.file.close()


@dataclass
class Burst:
    """What the POSTs left: the notifications sent, the host's answers, when each accepted event was posted."""

    posts: list[tuple[dict, bytes]]
    statuses: Counter
    posted_at: dict[str, float]
    window_start: datetime
    started: float
    posted_seconds: float


def post_burst(stack: DemoStack, notes: list[tuple[dict, bytes]], throttle: float, errors: float,
               duplicates: float, concurrency: int) -> Burst:
    """The recorded notifications (shuffled, a share twice) POSTed concurrently while Dataverse throttles."""
    rng = random.Random(5)
    posts = notes + [n for n in notes if rng.random() < duplicates]
    rng.shuffle(posts)
    stack.sandbox.stats.reset()
    stack.sandbox.set_faults({"error_share": {"429": throttle, "500": errors / 2, "503": errors / 2},
                              "retry_after_seconds": 1, "seed": 42})
    url = f"{stack.host.url}/api/dataverse/webhook"
    statuses: Counter = Counter()
    posted_at: dict[str, float] = {}
    local = threading.local()
    stamped: dict[int, tuple[bytes, float]] = {}
    stamp_lock = threading.Lock()
    window_start = datetime.now(timezone.utc)

    def post(note: tuple[dict, bytes]) -> None:
        s = getattr(local, "s", None) or requests.Session()
        local.s = s
        headers, body = note
        with stamp_lock:
            if id(note) not in stamped:  # a duplicate repeats the first POST's body and time
                now = time.time()
                stamped[id(note)] = (restamp(body, now), now)
            body, sent = stamped[id(note)]
        r = s.post(url, data=body, headers=headers, params={"code": stack.host.function_key}, timeout=60)
        statuses[r.status_code] += 1
        if r.status_code == 202:
            posted_at.setdefault(r.json()["event_id"], sent)

    started = time.monotonic()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(post, posts))
    return Burst(posts, statuses, posted_at, window_start, started, time.monotonic() - started)


def account(stack: DemoStack, capture: _Capture, statuses: Counter, settled: bool) -> dict:
    """None vanished: every accepted event reached an outcome, a drop by duplicate detection or a
    dead letter with a reason."""
    total: Counter = Counter()
    for b in capture.batches:
        for k in ("messages", "processed", "duplicates", "echoes", "no_effect", "retried", "parked"):
            total[k] += int(b.get(k) or 0)
    q = {x["name"]: x for x in (qq.stats() for qq in stack.host.bus.queues())}
    changes, parked_q = q[stack.host.bus.changes_queue], q[stack.host.bus.parked_queue]
    # the host's own count of 202s: ours plus the echo webhooks the sandbox delivered
    accepted = stack.host.functions["dataverse_webhook"].statuses.get(202, 0)
    terminal = total["processed"] + total["duplicates"] + total["echoes"] + total["no_effect"] + total["parked"]
    dead = stack.host.bus.queue(stack.host.bus.changes_queue).deadletter + \
        stack.host.bus.queue(stack.host.bus.parked_queue).deadletter
    reasons = Counter((m.dead_letter_reason, (m.dead_letter_description or "")[:60]) for m in dead)
    accounted = terminal + changes["duplicates_dropped"] + changes["deadletter"]
    return {
        "echo_webhooks_202": accepted - statuses[202], "accepted_total": accepted, "outcomes": dict(total),
        "queue_duplicates_dropped": changes["duplicates_dropped"], "dead_lettered": changes["deadletter"]
        + parked_q["deadletter"], "dead_letter_reasons": {f"{a}: {b}": n for (a, b), n in reasons.items()},
        "accounted": accounted, "none_vanished": settled and accounted == accepted and
        all(m.dead_letter_reason for m in dead),
    }


def check_closure(stack: DemoStack, tenant: Tenant) -> dict:
    """The sandbox against the expected closure: opt-out consent rows, list members, flags."""
    want_out, want_members, want_flagged = tenant.expected()
    store = stack.sandbox.store
    got_out = {((r.get("msdynmkt_contactpointvalue") or "").strip().lower(), r.get("_msdynmkt_purposeid_value"),
                r.get("_msdynmkt_topicid_value")) for r in store.data["msdynmkt_contactpointconsent4"].rows.values()
               if r.get("msdynmkt_value") == OPTED_OUT}
    got_members = {lid: set(store.members["listcontact_association"].get(lid, set())) for lid in (L1, L2)}
    got_flagged = {cid for cid, r in store.data["contact"].rows.items() if r.get("donotbulkemail")}
    # parked events legitimately leave their effect to the nightly run; none are expected here
    return {
        "closure_ok": got_out == want_out and got_members == want_members and got_flagged == want_flagged,
        "closure_diff": {
            "opted_out_missing": len(want_out - got_out), "opted_out_extra": len(got_out - want_out),
            "members_wrong": sum(len(want_members[k] ^ got_members[k]) for k in want_members),
            "flags_wrong": len(want_flagged ^ got_flagged)},
    }


_STAMP = re.compile(rb'"OperationCreatedOn"\s*:\s*"\\?/Date\(\d+\)\\?/"')


def restamp(body: bytes, at: float) -> bytes:
    """The notification as if its change happened at ``at`` (OperationCreatedOn, /Date(ms)/)."""
    out, n = _STAMP.subn(b'"OperationCreatedOn":"\\/Date(%d)\\/"' % int(at * 1000), body, count=1)
    assert n == 1, "a recorded notification without OperationCreatedOn"
    return out


def compliance_figures(stack: DemoStack, since: datetime) -> dict:
    """What ``straddle compliance --since <the burst's start>`` reports, through the same code."""
    from shared.service_layer.compliance import compliance_view

    view = compliance_view(stack.container.tables().compliance, since, datetime.now(timezone.utc))
    t = view["time_to_effect"]
    return {"received": view["received"], "propagated": view["propagated"], "open": view["open"],
            "p50_ms": None if t["p50_s"] is None else int(t["p50_s"] * 1000),
            "p99_ms": None if t["p99_s"] is None else int(t["p99_s"] * 1000)}


def _matches(delays: tuple[int | None, int | None], compliance: dict, tolerance_ms: int = 1000) -> bool:
    """The bench's p50 and p99 and the compliance command's agree within ``tolerance_ms``."""
    pairs = [(delays[0], compliance["p50_ms"]), (delays[1], compliance["p99_ms"])]
    return all(a is not None and b is not None and abs(a - b) <= tolerance_ms for a, b in pairs)


def _delays(applied: list[tuple[float, str]], posted_at: dict[str, float]) -> tuple[int | None, int | None]:
    """Per event: from its notification's POST to the last write it caused (the effect complete)."""
    last: dict[str, float] = {}
    for when, event_id in applied:
        if event_id in posted_at:
            last[event_id] = max(last.get(event_id, 0.0), when)
    d = sorted((last[e] - posted_at[e]) * 1000 for e in last)
    if not d:
        return None, None
    return int(statistics.median(d)), int(d[min(len(d) - 1, int(len(d) * 0.99))])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=10_000)
    p.add_argument("--throttle", type=float, default=0.05, help="share of Dataverse requests answered 429")
    p.add_argument("--errors", type=float, default=0.03, help="share answered 500/503")
    p.add_argument("--duplicates", type=float, default=0.03, help="share of notifications posted twice")
    p.add_argument("--concurrency", type=int, default=16, help="parallel webhook POSTs")
    p.add_argument("--instances", type=int, default=1, help="host batch loops (scale-out analogue)")
    args = p.parse_args()
    r = run(args.events, args.throttle, args.errors, args.duplicates, args.concurrency, instances=args.instances)
    print(json.dumps(r, indent=2))
    ok = r["none_vanished"] and r["closure_ok"] and r["log_lines_with_an_address"] == 0 and r["compliance_matches"]
    c = r["compliance"]
    print(f"burst: {r['events_per_second']} events/s, {r['requests_per_event']} Dataverse requests/event, "
          f"propagation p50 {r['propagation_ms_p50']} ms p99 {r['propagation_ms_p99']} ms; "
          f"compliance command: p50 {c['p50_ms']} ms p99 {c['p99_ms']} ms over {c['propagated']} opt-out(s) "
          f"({c['open']} open): {'same within 1 s' if r['compliance_matches'] else 'DIFFERENT'}; "
          f"none vanished: {r['none_vanished']}; closure: {r['closure_ok']}; addresses in logs: "
          f"{r['log_lines_with_an_address']} -> {'PASS' if ok else 'FAIL'}")


if __name__ == "__main__":
    main()
