"""HTTP to the Dataverse Web API: one pooled session, tokens, retries within a budget, counting.

Retry policy (every retry is counted under ``"retry"``):
- 429 and 503 wait ``Retry-After`` seconds when given (429s are also counted as ``"throttled"``);
- other 5xx, timeouts and dropped connections back off exponentially with full jitter;
- a connection that cannot be made at all (refused, DNS, connect timeout) is retried only within
  ``CONNECT_BUDGET_SECONDS`` and then raises ``DataverseUnreachable``: an endpoint that is down or
  mistyped is not a throttle, and an administrator at a terminal should hear so within seconds;
- all within ``retry_budget`` seconds of wall time per call; a wait that would overrun it raises
  ``DataverseThrottled`` (429) or ``DataverseUnavailable`` (5xx / network) at once, so a caller
  (the queue) can reschedule instead of blocking a worker.
urllib3's Retry is not used: it cannot share one time budget across reasons or count per kind.
Writes are retried too: a repeated PATCH is harmless, and a duplicated consent row after a lost
response is a state the sync already handles (it updates every duplicate).

Logs name the request kind (``GET contacts``), never the URL: filters hold email addresses.
"""
from __future__ import annotations

import json as jsonlib
import logging
import random
import threading
import time
from collections import Counter
from email.utils import parsedate_to_datetime
from typing import Any, Callable, Iterator, Mapping, Sequence
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter

from shared.adapters.dataverse.auth import TokenProvider
from shared.adapters.dataverse.errors import DataverseError, DataverseUnavailable, DataverseUnreachable, error_for
from shared.adapters.dataverse.odata import BatchOp, PartResponse, build_batch, parse_batch, path_kind, query_string
from shared.telemetry import emit, http_dependency

log = logging.getLogger("straddle.dataverse")

API_PATH = "/api/data/v9.2"
MAX_PAGE_SIZE = 5000
MAX_BATCH = 1000
#: How long a connection that cannot be made is retried (a blip), instead of the whole retry budget.
CONNECT_BUDGET_SECONDS = 3.0
#: Counter keys that are not HTTP requests.
#: The cookies that pin a client to one of the environment's web servers (Azure App Service's
#: application request routing). Service protection limits are counted per web server, and
#: Microsoft's guidance for parallel requests is to send them without these, so that each goes to
#: any eligible server; the nightly scan's reads do.
AFFINITY_COOKIES = frozenset({"ARRAffinity", "ARRAffinitySameSite"})
META_KINDS = ("retry", "throttled", "server_error", "network_error", "auth_refresh")

BASE_HEADERS = {
    "OData-Version": "4.0",
    "OData-MaxVersion": "4.0",
    "Accept": "application/json",
    "Content-Type": "application/json; charset=utf-8",
}


def service_root(url: str) -> str:
    """``https://org.crm.dynamics.com`` or its ``/api/data/v9.2`` -> the latter, no trailing slash."""
    url = url.rstrip("/")
    return url if "/api/data/" in url else url + API_PATH


def retry_after_seconds(value: str | None, now: Callable[[], float] = time.time) -> float | None:
    """``Retry-After`` as seconds: a number, or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - now())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def connect_failure(exc: BaseException) -> str | None:
    """Why no connection could be made ("connection refused", "host name not found", "no answer
    to connect"), or None when the failure came after connecting (a dropped or slow response)."""
    from urllib3.exceptions import NameResolutionError, NewConnectionError

    if isinstance(exc, requests.ConnectTimeout):
        return "no answer to connect"
    seen: set[int] = set()
    stack: list[Any] = [exc]
    while stack:  # requests wraps urllib3's MaxRetryError, which holds the reason
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, NameResolutionError):
            return "host name not found"
        if isinstance(e, NewConnectionError):
            return "connection refused"
        stack.extend([getattr(e, "reason", None), e.__cause__, e.__context__, *[a for a in getattr(e, "args", ())
                                                                             if isinstance(a, BaseException)]])
    return None


class RequestCounter:
    """A thread-safe Counter of request kinds."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    def add(self, kind: str, n: int = 1) -> None:
        with self._lock:
            self._counts[kind] += n

    def snapshot(self) -> Counter[str]:
        with self._lock:
            return Counter(self._counts)

    def reset(self) -> None:
        with self._lock:
            self._counts.clear()


class DataverseTransport:
    def __init__(self, url: str, tokens: TokenProvider, *, timeout: float = 30.0, retry_budget: float = 120.0,
                 page_size: int = MAX_PAGE_SIZE, batch_size: int = MAX_BATCH, batch_timeout: float | None = None,
                 pool_maxsize: int = 16, session: requests.Session | None = None,
                 sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None, backoff_base: float = 0.5, backoff_cap: float = 30.0):
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise ValueError(f"page_size must be 1..{MAX_PAGE_SIZE}")
        if not 1 <= batch_size <= MAX_BATCH:
            raise ValueError(f"batch_size must be 1..{MAX_BATCH}")
        self.api_url = service_root(url)
        self._tokens = tokens
        self.timeout = timeout
        # A $batch of hundreds of writes runs far longer than one read.
        self.batch_timeout = batch_timeout if batch_timeout is not None else max(timeout, 120.0)
        self.retry_budget = retry_budget
        self.page_size = page_size
        self.batch_size = batch_size
        self._sleep, self._clock = sleep, clock
        self._rng = rng or random.Random()
        self._backoff_base, self._backoff_cap = backoff_base, backoff_cap
        self._counts = RequestCounter()
        #: The degree of parallelism Dataverse last recommended (``x-ms-dop-hint``), if it did.
        self.dop_hint: int | None = None
        if session is None:
            session = requests.Session()
            # Retries are ours (max_retries=0); the pool lets a few sync threads share connections.
            adapter = HTTPAdapter(pool_connections=4, pool_maxsize=pool_maxsize, max_retries=0)
            session.mount("https://", adapter)
            session.mount("http://", adapter)
        session.headers.update(BASE_HEADERS)
        self._session = session

    # --- counting ---------------------------------------------------------------------------

    @property
    def request_counts(self) -> Counter[str]:
        """A snapshot: HTTP requests by kind, ``batch:*`` operations, and the meta counters."""
        return self._counts.snapshot()

    @property
    def total_requests(self) -> int:
        """HTTP requests sent, retries included; one $batch is one request."""
        return sum(n for k, n in self._counts.snapshot().items() if not k.startswith("batch:") and k not in META_KINDS)

    @property
    def batch_operations(self) -> int:
        """Operations sent inside $batch requests (resends included)."""
        return sum(n for k, n in self._counts.snapshot().items() if k.startswith("batch:"))

    def reset_counts(self) -> None:
        self._counts.reset()

    def close(self) -> None:
        self._session.close()

    # --- one request, with retries ----------------------------------------------------------

    def url_for(self, path: str, params: Mapping[str, str | None] | None = None) -> str:
        if path.startswith(("http://", "https://")):
            # An absolute URL comes from a response (@odata.nextLink): the bearer token goes with it,
            # so it is followed only to the configured environment, never to a host a body names.
            parts = urlsplit(path)
            if f"{parts.scheme}://{parts.netloc}".lower() != self.base_url.lower():
                raise DataverseError("refusing to follow a link to another host than DATAVERSE_URL "
                                     f"({parts.scheme}://{parts.hostname or ''})", kind=f"GET {path_kind(path)}")
            url = path
        else:
            url = f"{self.api_url}/{path.lstrip('/')}"
        qs = query_string(params) if params else ""
        return f"{url}{'&' if '?' in url else '?'}{qs}" if qs else url

    @property
    def base_url(self) -> str:
        """The environment's URL as configured (scheme and host, no path or query)."""
        parts = urlsplit(self.api_url)
        return f"{parts.scheme}://{parts.netloc}"

    def _backoff(self, attempt: int) -> float:
        return self._rng.uniform(0, min(self._backoff_cap, self._backoff_base * (2 ** attempt)))

    def request(self, method: str, path: str, *, params: Mapping[str, str | None] | None = None,
                json: Any = None, data: bytes | None = None, headers: Mapping[str, str] | None = None,
                kind: str | None = None, timeout: float | None = None, ok_statuses: Sequence[int] = (),
                affinity: bool = True) -> requests.Response:
        """Sends one request, retrying per the policy; returns a 2xx (or an ``ok_statuses``) response.
        ``affinity=False`` sends it without the server-affinity cookie (parallel reads)."""
        url = self.url_for(path, params)
        kind = kind or f"{method} {path_kind(path)}"
        if json is not None:
            data = jsonlib.dumps(json, separators=(",", ":")).encode("utf-8")
        timeout = timeout or self.timeout
        deadline = self._clock() + self.retry_budget
        connect_deadline: float | None = None
        attempt, refreshed = 0, False
        while True:
            self._counts.add(kind)
            try:
                resp = self._send(method, url, data, headers, (min(10.0, timeout), timeout), kind, affinity)
            except (requests.Timeout, requests.ConnectionError) as exc:
                self._counts.add("network_error")
                emit(log, "dataverse.request", logging.DEBUG, method=method, path=path_kind(url),
                     status=type(exc).__name__, kind=kind)
                delay = self._backoff(attempt)
                unreachable = connect_failure(exc)
                if unreachable:
                    if connect_deadline is None:
                        connect_deadline = self._clock() + CONNECT_BUDGET_SECONDS
                    if self._clock() + delay > min(deadline, connect_deadline):
                        raise DataverseUnreachable(self.base_url, unreachable, kind=kind) from None
                elif self._clock() + delay > deadline:
                    raise DataverseUnavailable(f"Dataverse unreachable: {type(exc).__name__}", kind=kind) from None
                self._wait(kind, delay, type(exc).__name__)
                attempt += 1
                continue
            status = resp.status_code
            # method, path without keys or query (never an address), status, time: what --verbose shows
            emit(log, "dataverse.request", logging.DEBUG, method=method, path=path_kind(url), status=status,
                 ms=round(resp.elapsed.total_seconds() * 1000), kind=kind)
            if status < 400 or status in ok_statuses:
                hint = resp.headers.get("x-ms-dop-hint")
                if hint and hint.isdigit() and int(hint) > 0:
                    self.dop_hint = int(hint)
                return resp
            if status == 401 and not refreshed and getattr(self._tokens, "refreshable", False):
                # A token revoked or expired early: one fresh fetch, then give up.
                self._tokens.invalidate()
                self._counts.add("auth_refresh")
                self._counts.add("retry")
                refreshed = True
                continue
            if status == 429 or status >= 500:
                self._counts.add("throttled" if status == 429 else "server_error")
                hinted = retry_after_seconds(resp.headers.get("Retry-After")) if status in (429, 503) else None
                delay = hinted if hinted is not None else self._backoff(attempt)
                if self._clock() + delay > deadline:
                    raise error_for(status, resp.content, kind, retry_after=hinted)
                self._wait(kind, delay, str(status))
                attempt += 1
                continue
            raise error_for(status, resp.content, kind)

    def _send(self, method: str, url: str, data: bytes | None, headers: Mapping[str, str] | None,
              timeout: tuple[float, float], kind: str, affinity: bool = True) -> requests.Response:
        h = {"Authorization": f"Bearer {self._tokens.token()}"}
        h.update(headers or {})
        prepared = self._session.prepare_request(requests.Request(method, url, headers=h, data=data))
        # Send the URL exactly as built (or as Dataverse gave it in @odata.nextLink): no re-quoting.
        prepared.url = url
        if not affinity and "Cookie" in prepared.headers:
            kept = [c for c in prepared.headers["Cookie"].split("; ") if c.split("=", 1)[0] not in AFFINITY_COOKIES]
            if kept:
                prepared.headers["Cookie"] = "; ".join(kept)
            else:
                del prepared.headers["Cookie"]
        env = self._session.merge_environment_settings(url, {}, None, None, None)
        # The URL's query holds addresses: only a query-free dependency may reach Application Insights.
        with http_dependency(method, url, kind) as span:
            resp = self._session.send(prepared, timeout=timeout, **env)
            span.set_attribute("http.response.status_code", resp.status_code)
            return resp

    def _wait(self, kind: str, delay: float, reason: str) -> None:
        self._counts.add("retry")
        emit(log, "dataverse.retry", logging.WARNING, kind=kind, reason=reason, delay=round(delay, 3))
        self._sleep(delay)

    # --- reads ------------------------------------------------------------------------------

    def get_json(self, path: str, params: Mapping[str, str | None] | None = None, **kw: Any) -> dict:
        return self.request("GET", path, params=params, **kw).json()

    def iter_pages(self, path: str, params: Mapping[str, str | None] | None = None,
                   page_size: int | None = None) -> Iterator[list[dict]]:
        """Pages of rows, following ``@odata.nextLink`` unchanged; one page is held at a time."""
        for page, _ in self.iter_pages_more(path, params, page_size):
            yield page

    def iter_pages_more(self, path: str, params: Mapping[str, str | None] | None = None,
                        page_size: int | None = None, affinity: bool = True) -> Iterator[tuple[list[dict], bool]]:
        """(page, whether another page follows): a caller may stop after any page."""
        size = min(page_size or self.page_size, MAX_PAGE_SIZE)
        # Dataverse ignores $top when odata.maxpagesize comes with it: a query that sets $top
        # gets no page size (and at most $top rows, one page).
        headers = {} if params and params.get("$top") is not None else {"Prefer": f"odata.maxpagesize={size}"}
        kind = f"GET {path_kind(path)}"
        next_url: str | None = self.url_for(path, params)
        while next_url:
            body = self.request("GET", next_url, headers=headers, kind=kind, affinity=affinity).json()
            next_url = body.get("@odata.nextLink")
            page = body.get("value") or []
            del body
            yield page, bool(next_url)

    def query_rows(self, path: str, params: Mapping[str, str | None] | None = None,
                   page_size: int | None = None) -> Iterator[dict]:
        for page in self.iter_pages(path, params, page_size):
            yield from page

    # --- $batch -----------------------------------------------------------------------------

    def batch(self, ops: Sequence[BatchOp]) -> list[PartResponse | None]:
        """Runs ops in $batch requests of ``batch_size``; one response per op (None: none came back)."""
        results: list[PartResponse | None] = [None] * len(ops)
        for start in range(0, len(ops), self.batch_size):
            self._run_batch(ops, list(range(start, min(start + self.batch_size, len(ops)))), results)
        return results

    def _run_batch(self, ops: Sequence[BatchOp], pending: list[int], results: list[PartResponse | None]) -> None:
        deadline = self._clock() + self.retry_budget
        attempt = 0
        while pending:
            content_type, body = build_batch([ops[i] for i in pending], self.api_url)
            for i in pending:
                self._counts.add(ops[i].kind)
            resp = self.request("POST", "$batch", data=body, kind="POST $batch", timeout=self.batch_timeout,
                                headers={"Content-Type": content_type, "Prefer": "odata.continue-on-error"})
            try:
                parts = parse_batch(resp.content, resp.headers.get("Content-Type"))
            except ValueError as exc:
                raise DataverseError(f"unreadable $batch response: {exc}", status=resp.status_code,
                                     kind="POST $batch") from None
            again: list[int] = []
            hint: float | None = None
            for i, part in zip(pending, parts):
                results[i] = part
                # A single throttled/busy part is resent; other failures are the row's own.
                if part.status in (429, 503):
                    again.append(i)
                    self._counts.add("throttled" if part.status == 429 else "server_error")
                    h = retry_after_seconds(part.headers.get("retry-after"))
                    hint = max(hint or 0.0, h) if h is not None else hint
            if not again:
                return
            delay = hint if hint is not None else self._backoff(attempt)
            if self._clock() + delay > deadline:
                return  # those parts keep their 429/503 result
            self._wait("POST $batch", delay, "part throttled")
            attempt += 1
            pending = again
