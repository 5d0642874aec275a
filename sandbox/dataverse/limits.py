"""Service protection (sliding window per caller), fault injection and request statistics."""
from __future__ import annotations

import math
import random
import threading
import time
from collections import Counter, deque


class Throttle:
    """At most ``n`` requests per caller in any ``seconds``-long window; None disables it."""

    def __init__(self, limit: tuple[int, float] | None = None):
        self._lock = threading.Lock()
        self._hits: dict[str, deque] = {}
        self.limit = limit

    def set(self, limit: tuple[int, float] | None):
        with self._lock:
            self.limit = limit
            self._hits.clear()

    def check(self, caller: str) -> float | None:
        """Records a request; returns the Retry-After seconds when it is over the limit."""
        limit = self.limit
        if limit is None:
            return None
        n, window = limit
        now = time.monotonic()
        with self._lock:
            q = self._hits.setdefault(caller, deque())
            while q and q[0] <= now - window:
                q.popleft()
            if len(q) >= n:
                return max(1, math.ceil(q[0] + window - now))
            q.append(now)
            return None


class ExecutionTime:
    """At most ``seconds`` of combined execution time per caller in any ``window``-long window
    (Dataverse: 1,200 s per 300 s); None disables it. Like Dataverse, a caller may go over within
    one window: the requests that follow are refused until enough of it has aged out."""

    def __init__(self, limit: tuple[float, float] | None = None):
        self._lock = threading.Lock()
        self._spent: dict[str, deque] = {}  # caller -> (finished at, seconds) in finishing order
        self.limit = limit

    def set(self, limit: tuple[float, float] | None):
        with self._lock:
            self.limit = limit
            self._spent.clear()

    def _window(self, caller: str, now: float, window: float) -> deque:
        q = self._spent.setdefault(caller, deque())
        while q and q[0][0] <= now - window:
            q.popleft()
        return q

    def check(self, caller: str) -> float | None:
        """Retry-After seconds when the caller's window already holds the limit, else None."""
        limit = self.limit
        if limit is None:
            return None
        budget, window = limit
        now = time.monotonic()
        with self._lock:
            q = self._window(caller, now, window)
            total = sum(s for _, s in q)
            if total < budget:
                return None
            for finished, seconds in q:  # wait until what is left of the window is under the limit
                total -= seconds
                if total < budget:
                    return max(1, math.ceil(finished + window - now))
            return max(1, math.ceil(window))

    def spend(self, caller: str, seconds: float):
        limit = self.limit
        if limit is None or seconds <= 0:
            return
        now = time.monotonic()
        with self._lock:
            self._window(caller, now, limit[1]).append((now, seconds))


def parse_limit(text: str | None, amount=int) -> tuple[float, float] | None:
    """``6000/300`` (requests per window seconds), or with ``amount=float`` ``1200/300`` (seconds of
    combined execution time per window seconds)."""
    if not text:
        return None
    n, _, secs = text.partition("/")
    return amount(n), float(secs or 300)


class Faults:
    """Random 429/500/503 answers and delays, reproducible with a seed; and refusals of the
    requests that mention a given text (``refuse``: text -> status), for a poison event."""

    def __init__(self, latency_ms: float = 0):
        self._lock = threading.Lock()
        self.configure({"latency_ms": latency_ms})

    def configure(self, cfg: dict):
        with self._lock:
            self.latency_ms = float(cfg.get("latency_ms", 0) or 0)
            self.error_share = {int(k): float(v) for k, v in (cfg.get("error_share") or {}).items()}
            self.retry_after = int(cfg.get("retry_after_seconds", 1))
            self.delay_share = float(cfg.get("delay_share", 0) or 0)
            self.delay_ms = float(cfg.get("delay_ms", 0) or 0)
            self.rng = random.Random(cfg.get("seed"))
            self.refuse = {str(k): int(v) for k, v in (cfg.get("refuse") or {}).items()}
            self.config = {"refuse": {k: v for k, v in self.refuse.items()}, "latency_ms": self.latency_ms, "error_share": {str(k): v for k, v in self.error_share.items()},
                           "retry_after_seconds": self.retry_after, "delay_share": self.delay_share,
                           "delay_ms": self.delay_ms, "seed": cfg.get("seed")}

    def refusal(self, *texts: bytes) -> int | None:
        """The status to refuse a request with when its path or body mentions a ``refuse`` text."""
        with self._lock:
            refuse = dict(self.refuse)
        for needle, status in refuse.items():
            if any(needle.encode() in t for t in texts):
                return status
        return None

    def draw(self) -> tuple[float, int | None]:
        """(extra seconds to wait before serving, status to answer instead or None). The base
        latency is not in it: it is the answer time (``latency_ms`` counted from arrival)."""
        with self._lock:
            delay = 0.0
            if self.delay_share and self.rng.random() < self.delay_share:
                delay += self.delay_ms / 1000
            status = None
            if self.error_share:
                r, acc = self.rng.random(), 0.0
                for code, share in sorted(self.error_share.items()):
                    acc += share
                    if r < acc:
                        status = code
                        break
            return delay, status


class Stats:
    def __init__(self):
        self._lock = threading.Lock()
        self.reset()

    def reset(self):
        with self._lock:
            self.total = 0
            self.by_method: Counter = Counter()
            self.by_kind: Counter = Counter()
            self.by_status: Counter = Counter()
            self.batch_requests = 0
            self.batch_by_kind: Counter = Counter()
            self.throttled = 0
            self.faults: Counter = Counter()
            self.unauthorized = 0
            self.affinity_by_kind: Counter = Counter()  # requests that sent the server-affinity cookie back

    def request(self, method: str, kind: str, affinity: bool = False):
        with self._lock:
            self.total += 1
            self.by_method[method] += 1
            self.by_kind[f"{method} {kind}"] += 1
            if affinity:
                self.affinity_by_kind[f"{method} {kind}"] += 1

    def inner(self, method: str, kind: str):
        with self._lock:
            self.batch_requests += 1
            self.batch_by_kind[f"{method} {kind}"] += 1

    def status(self, status: int):
        with self._lock:
            self.by_status[str(status)] += 1

    def bump(self, what: str, key: str | None = None):
        with self._lock:
            if what == "throttled":
                self.throttled += 1
            elif what == "fault":
                self.faults[key] += 1
            elif what == "unauthorized":
                self.unauthorized += 1

    def snapshot(self) -> dict:
        with self._lock:
            return {"total": self.total, "by_method": dict(self.by_method), "by_kind": dict(self.by_kind),
                    "by_status": dict(self.by_status), "batch_requests": self.batch_requests,
                    "batch_by_kind": dict(self.batch_by_kind), "throttled": self.throttled,
                    "faults_injected": sum(self.faults.values()), "faults_by_status": dict(self.faults),
                    "unauthorized": self.unauthorized, "affinity_by_kind": dict(self.affinity_by_kind)}
