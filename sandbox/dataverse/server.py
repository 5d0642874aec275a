"""HTTP transport (stdlib ThreadingHTTPServer), auth, service protection, faults, /_sandbox/*."""
from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from .api import Api, Response, error_response, json_response, kind_of
from .batch import BatchRunner
from .errors import THROTTLED, THROTTLED_TIME, UNAUTHORIZED, UNEXPECTED, DataverseError
from .limits import ExecutionTime, Faults, Stats, Throttle
from .seed import read_seed
from .schema import user_id_for_token
from .store import Store
from .webhooks import Webhooks

log = logging.getLogger("sandbox.dataverse")
API_PREFIX = "/api/data/v9.2"
#: The degree of parallelism the sandbox recommends (``x-ms-dop-hint``) unless told otherwise: an
#: environment with several web servers, at least the nightly scan's most readers (32).
DOP_HINT = 32

#: Azure App Service's application request routing cookie, which Dataverse's responses carry.
AFFINITY_COOKIE = "ARRAffinity"


def cookie_names(headers: dict) -> set[str]:
    """The names of the cookies a request sent."""
    return {c.split("=", 1)[0].strip() for c in headers.get("cookie", "").split(";") if c.strip()}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: clients reuse connections as they do with Dataverse
    server_version = "StraddleDataverseSandbox/1.0"
    # Headers and body in one segment, no Nagle: otherwise delayed ACKs add ~40 ms per request.
    disable_nagle_algorithm = True
    wbufsize = 1 << 16

    def log_message(self, fmt, *args):  # quiet; the server logs request lines itself (no query strings)
        pass

    def _serve(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        sandbox: SandboxServer = self.server.sandbox  # type: ignore[attr-defined]
        with sandbox._inflight:
            sandbox._inflight_count += 1
            sandbox.peak_concurrent = max(sandbox.peak_concurrent, sandbox._inflight_count)
        try:
            resp = sandbox.serve(self.command, self.path, headers, body)
        except Exception:
            log.exception("sandbox request failed")
            resp = error_response(DataverseError(500, UNEXPECTED, "An unexpected error occurred."))
        finally:
            with sandbox._inflight:
                sandbox._inflight_count -= 1
                sandbox._inflight.notify_all()
        self.send_response(resp.status)
        for k, v in resp.headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(resp.body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(resp.body)
        if sandbox.verbose:
            log.info("%s %s %s", self.command, urlsplit(self.path).path, resp.status)

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = do_HEAD = _serve


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256


class SandboxServer:
    """A local Dataverse Web API. ``with SandboxServer(port=0) as srv: requests.get(srv.api_url + ...)``."""

    def __init__(self, port: int = 0, seed=None, latency_ms: float = 0, limit: tuple[int, float] | None = None,
                 webhook_shuffle: bool = False, webhook_duplicate_share: float = 0.0, host: str = "127.0.0.1",
                 verbose: bool = False, webhook_seed=None, without_outbound_solution: bool = False,
                 auditing: bool = True, without_remove_member_action: bool = False,
                 execution_limit: tuple[float, float] | None = None, dop_hint: int | None = DOP_HINT,
                 key_style: str = "sequential"):
        self.host, self.port = host, port
        self.verbose = verbose
        self.store = Store(without_outbound_solution=without_outbound_solution, auditing=auditing,
                           without_remove_member_action=without_remove_member_action, key_style=key_style)
        self.api = Api(self.store)
        self.batch = BatchRunner(self.api, lambda m, p: self.stats.inner(m, kind_of(m, p)))
        self.throttle = Throttle(tuple(limit) if limit else None)
        # Combined execution time: the sandbox's own serving time (injected delays included, the
        # base latency not: it stands for the network and Dataverse's many servers; FIDELITY.md).
        self.execution = ExecutionTime(tuple(execution_limit) if execution_limit else None)
        self.dop_hint = dop_hint
        self.faults = Faults(latency_ms)
        self.web_server = secrets.token_hex(32)  # this sandbox's one web server, named in its affinity cookie
        self.stats = Stats()
        self._inflight = threading.Condition()
        self._inflight_count = 0
        self.peak_concurrent = 0  # requests being served at once, at most (/_sandbox/stats)
        self.webhooks = Webhooks(self.store, shuffle=webhook_shuffle, duplicate_share=webhook_duplicate_share,
                                 seed=webhook_seed)
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        if seed is not None:
            self.store.load(read_seed(seed))

    # --- lifecycle ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def api_url(self) -> str:
        return self.url + API_PREFIX

    def start(self) -> "SandboxServer":
        self._httpd = _HTTPServer((self.host, self.port), _Handler)
        self._httpd.sandbox = self  # type: ignore[attr-defined]
        self.port = self._httpd.server_address[1]
        self.api.api_url = self.api_url
        self.webhooks.start()
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="sandbox-dataverse", daemon=True)
        self._thread.start()
        return self

    def stop(self):
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        self.webhooks.stop()

    def serve_forever(self):
        self.start()
        try:
            while True:
                time.sleep(3600)
        finally:
            self.stop()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # --- in-process conveniences -------------------------------------------------------------

    def set_limit(self, limit: tuple[int, float] | None):
        self.throttle.set(tuple(limit) if limit else None)

    def set_execution_limit(self, limit: tuple[float, float] | None):
        self.execution.set(tuple(limit) if limit else None)

    def set_faults(self, cfg: dict):
        self.faults.configure(cfg)

    def notifications(self) -> list[dict]:
        return list(self.webhooks.log)

    def wait_for_webhooks(self, timeout: float = 10.0) -> bool:
        return self.webhooks.drain(timeout)

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Waits until no request is being served, e.g. one a client gave up on (timeout) that is
        still sleeping in an injected delay and will still be carried out, as Dataverse would."""
        with self._inflight:
            return self._inflight.wait_for(lambda: self._inflight_count == 0, timeout)

    # --- dispatch ----------------------------------------------------------------------------

    def serve(self, method: str, raw_path: str, headers: dict, body: bytes) -> Response:
        parts = urlsplit(raw_path)
        path, query = parts.path, parts.query
        if path.startswith("/_sandbox"):
            try:
                return self._control(method, path, query, body)
            except DataverseError as e:
                return error_response(e)
        if not (path == API_PREFIX or path.startswith(API_PREFIX + "/")):
            return error_response(DataverseError(404, "0x80060888", "Resource not found."))
        sub = path[len(API_PREFIX):].lstrip("/")
        self.stats.request(method, kind_of(method, sub), affinity=AFFINITY_COOKIE in cookie_names(headers))
        auth = headers.get("authorization", "")
        token = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
        if not token:
            self.stats.bump("unauthorized")
            resp = error_response(DataverseError(401, UNAUTHORIZED, "Authorization header with a Bearer token is required.",
                                                 {"WWW-Authenticate": 'Bearer authorization_uri="https://login.microsoftonline.com/common/oauth2/authorize"'}))
            self.stats.status(resp.status)
            return resp
        user_id = user_id_for_token(token)
        self.store.ensure_user(user_id)
        refused = self._over_limit(user_id)
        if refused is not None:
            return refused
        arrived = time.monotonic()
        delay, fault = self.faults.draw()
        fault = fault or self.faults.refusal(raw_path.encode(), body or b"")
        if delay:
            time.sleep(delay)
        resp = self._answer(method, sub, query, headers, body, user_id, fault)
        self.execution.spend(user_id, time.monotonic() - arrived)
        if self.dop_hint:
            resp.headers.setdefault("x-ms-dop-hint", str(self.dop_hint))
        # The web server that answered pins the client to itself (Azure App Service's ARR affinity).
        resp.headers.setdefault("Set-Cookie", f"{AFFINITY_COOKIE}={self.web_server}; Path=/; HttpOnly")
        # The base latency is the answer time: Dataverse's own work happens within it (on its many
        # servers at once), so only what is left of it is waited after serving.
        rest = self.faults.latency_ms / 1000 - (time.monotonic() - arrived)
        if rest > 0:
            time.sleep(rest)
        return resp

    def _over_limit(self, user_id: str) -> Response | None:
        """Dataverse's 429 when the caller is over the number of requests or the combined execution
        time of the window (LIMITS: the messages and codes are the documented ones)."""
        retry = self.throttle.check(user_id)
        if retry is not None:
            err = DataverseError(429, THROTTLED, f"Number of requests exceeded the limit of {self.throttle.limit[0]} "
                                                 f"over time window of {int(self.throttle.limit[1])} seconds.",
                                 {"Retry-After": str(int(retry))})
        else:
            retry = self.execution.check(user_id)
            if retry is None:
                return None
            budget, window = self.execution.limit
            err = DataverseError(429, THROTTLED_TIME, "Combined execution time of incoming requests exceeded limit "
                                                      f"of {round(budget * 1000):,} milliseconds over time window of "
                                                      f"{int(window)} seconds. Decrease number of concurrent requests or "
                                                      "reduce the duration of requests and try again later.",
                                 {"Retry-After": str(int(retry))})
        self.stats.bump("throttled")
        self.stats.status(429)
        return error_response(err)

    def _answer(self, method: str, sub: str, query: str, headers: dict, body: bytes, user_id: str,
                fault: int | None) -> Response:
        if fault is not None:
            self.stats.bump("fault", str(fault))
            hdrs = {"Retry-After": str(self.faults.retry_after)} if fault in (429, 503) else {}
            code = THROTTLED if fault == 429 else UNEXPECTED
            msg = {429: "Number of requests exceeded the limit (injected).", 503: "Service unavailable (injected)."}.get(
                fault, "An unexpected error occurred (injected).")
            resp = error_response(DataverseError(fault, code, msg, hdrs))
            self.stats.status(fault)
            return resp
        if sub == "$batch":
            if method != "POST":
                resp = error_response(DataverseError(405, "0x80060888", "$batch needs POST."))
            else:
                try:
                    resp = self.batch.run(body, headers, user_id)
                except DataverseError as e:
                    resp = error_response(e)
        else:
            resp = self.api.handle(method, sub, query, headers, body, user_id)
        self.stats.status(resp.status)
        return resp

    def _control(self, method: str, path: str, query: str, body: bytes) -> Response:
        name = path[len("/_sandbox"):].strip("/")
        data = json.loads(body) if body.strip() else {}
        if name == "seed" and method == "POST":
            return json_response(200, {"loaded": self.store.load(data)})
        if name == "reset" and method == "POST":
            self.store.reset()
            self.webhooks.log.clear()
            return json_response(200, {"reset": True})
        if name == "faults":
            if method == "POST":
                self.faults.configure(data)
            return json_response(200, self.faults.config)
        if name == "limit":
            if method == "POST":
                n = data.get("requests")
                self.set_limit((int(n), float(data.get("seconds", 300))) if n else None)
            lim = self.throttle.limit
            return json_response(200, {"requests": lim[0], "seconds": lim[1]} if lim else {"requests": None})
        if name == "execution-limit":
            if method == "POST":
                secs = data.get("execution_seconds")
                self.set_execution_limit((float(secs), float(data.get("seconds", 300))) if secs else None)
            lim = self.execution.limit
            return json_response(200, {"execution_seconds": lim[0], "seconds": lim[1]} if lim
                                 else {"execution_seconds": None})
        if name == "stats" and method == "GET":
            return json_response(200, {**self.stats.snapshot(), "peak_concurrent": self.peak_concurrent})
        if name == "stats/reset" and method == "POST":
            self.stats.reset()
            with self._inflight:
                self.peak_concurrent = self._inflight_count
            return json_response(200, {"reset": True})
        if name == "notifications":
            if method == "DELETE":
                self.webhooks.log.clear()
                return json_response(200, {"cleared": True})
            if "wait=" in query:
                self.webhooks.drain(10)
            return json_response(200, {"value": list(self.webhooks.log)})
        if name == "webhooks/wait" and method == "POST":
            return json_response(200, {"drained": self.webhooks.drain(float(data.get("timeout", 10)))})
        if name == "counts" and method == "GET":
            with self.store.lock:
                counts = {n: len(td.rows) for n, td in self.store.data.items()}
                counts["list_members"] = sum(len(s) for rel in self.store.members.values() for s in rel.values())
            return json_response(200, counts)
        raise DataverseError(404, "0x80060888", f"Unknown sandbox endpoint {method} /_sandbox/{name}.")
