"""The local Functions host: indexes a v2-model FunctionApp and runs its triggers on one machine.

HTTP triggers are served by a ThreadingHTTPServer, Service Bus queue triggers by a receive loop per
function over ``LocalServiceBus``, timer triggers by a scheduler thread per function. Every
function is called with the real ``azure.functions`` binding types, as the Python worker would.
"""
from __future__ import annotations

import json
import logging
import os
import re
import secrets
import threading
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Mapping
from urllib.parse import parse_qs, urlsplit

import azure.functions as func
from azure.functions.servicebus import ServiceBusMessage
from azure.functions.timer import TimerRequest

from sandbox.host.ncrontab import Schedule
from sandbox.host.queue import LocalServiceBus, Message

log = logging.getLogger("sandbox.host")

REPO = Path(__file__).resolve().parents[2]
STATE_DIR = Path(__file__).resolve().parent / ".state"
_EXPR = re.compile(r"%([^%]+)%")


# --- settings and host.json ----------------------------------------------------------------------

def load_settings(path: Path | None = None, environ: Mapping[str, str] | None = None,
                  sample: Path = REPO / "local.settings.sample.json") -> dict[str, str]:
    """local.settings.json "Values" (the sample's when absent) overlaid by the environment.

    The sample is read, never copied into the checkout: a local.settings.json left behind would
    hand the local stack's static token and ledger key to every later CLI run from this folder."""
    path = path or REPO / "local.settings.json"
    source = path if path.exists() else sample
    values: dict[str, str] = {}
    if source.exists():
        values = {k: str(v) for k, v in json.loads(source.read_text()).get("Values", {}).items() if v is not None}
    env = os.environ if environ is None else environ
    for key in list(values):
        if key in env:
            values[key] = env[key]
    return values


def service_bus_options(host_json: Path = REPO / "host.json") -> dict[str, Any]:
    opts = {"maxMessageBatchSize": 1000, "minMessageBatchSize": 1, "maxBatchWaitTime": "00:00:30",
            "maxDeliveryCount": 10}
    try:
        opts.update(json.loads(host_json.read_text()).get("extensions", {}).get("serviceBus", {}))
    except (OSError, ValueError):
        pass
    return opts


def timespan_seconds(text: str | float) -> float:
    if isinstance(text, (int, float)):
        return float(text)
    days = 0
    if "." in text.split(":")[0]:
        d, text = text.split(".", 1)
        days = int(d)
    h, m, s = text.split(":")
    return days * 86400 + int(h) * 3600 + int(m) * 60 + float(s)


def resolve(value: Any, settings: Mapping[str, str]) -> Any:
    """``%NAME%`` binding expressions from the app settings (an unknown name is an error, as in the host)."""
    if not isinstance(value, str):
        return value

    def one(m: re.Match) -> str:
        if m.group(1) not in settings or settings[m.group(1)] == "":
            raise KeyError(f"binding expression %{m.group(1)}% does not resolve: no such app setting")
        return settings[m.group(1)]

    return _EXPR.sub(one, value)


# --- the indexed app ------------------------------------------------------------------------------

_INDEXED: dict[int, list] = {}
_INDEX_LOCK = threading.Lock()


def indexed_functions(app: func.FunctionApp) -> list:
    """``app.get_functions()`` once per app object (a second call fails on duplicate names)."""
    with _INDEX_LOCK:
        if id(app) not in _INDEXED:
            if getattr(app, "functions_bindings", None):
                # Indexed already by someone else (a test, another host): the builders give the same
                # Function objects without the duplicate-name bookkeeping that refuses a second call.
                functions = [b.build(app.auth_level) for b in app._function_builders]
            else:
                functions = app.get_functions()
            _INDEXED[id(app)] = (app, functions)
        return _INDEXED[id(app)][1]


@dataclass
class Function:
    name: str
    trigger: dict
    callable: Callable[..., Any]
    invocations: int = 0
    failures: int = 0
    last_error: str | None = None
    statuses: dict = field(default_factory=dict)  # HTTP functions: responses by status code
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def kind(self) -> str:
        return self.trigger["type"]

    def record(self, error: BaseException | None) -> None:
        with self.lock:
            self.invocations += 1
            if error is not None:
                self.failures += 1
                self.last_error = f"{type(error).__name__}: {error}"[:500]

    def answered(self, status: int) -> None:
        with self.lock:
            self.statuses[status] = self.statuses.get(status, 0) + 1

    def describe(self) -> dict:
        out = {"name": self.name, "trigger": self.trigger, "invocations": self.invocations,
               "failures": self.failures, "last_error": self.last_error}
        if self.kind == "httpTrigger":
            out["statuses"] = {str(k): v for k, v in sorted(self.statuses.items())}
        return out


def _route_regex(route: str) -> re.Pattern:
    parts = []
    for segment in route.strip("/").split("/"):
        m = re.fullmatch(r"\{(\w+)(?::\w+)?(\?)?\}", segment)
        parts.append(f"(?P<{m.group(1)}>[^/]+){'?' if m.group(2) else ''}" if m else re.escape(segment))
    return re.compile("^" + "/".join(parts) + "/?$", re.IGNORECASE)


# --- the host -------------------------------------------------------------------------------------

class LocalHost:
    """``LocalHost(app, settings).start()``; ``.url``, ``.function_key``, ``.master_key``, ``.bus``.

    ``container`` is the app's bootstrap.Container; when None the host builds the process-wide one
    from the settings (pushed into os.environ when ``export_env``), and installs its queue in it.
    """

    def __init__(self, app: func.FunctionApp, settings: Mapping[str, str], *, port: int = 0,
                 bind: str = "127.0.0.1", function_key: str | None = None, master_key: str | None = None,
                 time_scale: float = 1.0, container: Any = None, export_env: bool = False,
                 host_json: Path = REPO / "host.json", batch_wait: float | None = None, run_timers: bool = True,
                 state_dir: Path | None = None, instances: int = 1):
        self.app = app
        self.settings = dict(settings)
        self.bind, self.port = bind, port
        #: As the Functions host: a request body over FUNCTIONS_REQUEST_BODY_SIZE_LIMIT bytes is refused
        #: (413) before it is read; 100 MB when unset, the documented default.
        self.body_limit = int(self.settings.get("FUNCTIONS_REQUEST_BODY_SIZE_LIMIT") or DEFAULT_BODY_LIMIT)
        self.function_key = function_key or secrets.token_urlsafe(32)
        self.master_key = master_key or secrets.token_urlsafe(32)
        self.sb = service_bus_options(host_json)
        self.batch_wait = timespan_seconds(self.sb["maxBatchWaitTime"]) if batch_wait is None else batch_wait
        self.run_timers = run_timers
        self.instances = max(1, instances)  # receive loops per Service Bus function: scale-out, locally
        self.state_dir = state_dir
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._httpd: ThreadingHTTPServer | None = None
        self._busy = 0
        self._busy_lock = threading.Lock()
        self.functions: dict[str, Function] = {}
        self.routes: list[tuple[re.Pattern, Function]] = []
        for f in indexed_functions(app):
            bindings = json.loads(f.get_function_json())["bindings"]
            trigger = next(b for b in bindings if b["type"].endswith("Trigger"))
            fn = Function(f.get_function_name(), trigger, f.get_user_function())
            self.functions[fn.name] = fn
            if fn.kind == "httpTrigger":
                self.routes.append((_route_regex(trigger.get("route") or fn.name), fn))

        from shared import bootstrap
        from shared.adapters.settings import Settings

        if export_env:
            for k, v in self.settings.items():
                if v != "":
                    os.environ[k] = v
        self._owns_container = container is None
        if container is None:
            bootstrap.reset_container(None)
            container = bootstrap.container() if export_env else bootstrap.Container(Settings.from_env(self.settings))
            bootstrap.reset_container(container)
        self.container = container
        from shared.adapters.settings import SETTINGS

        # %NAME% resolves from the settings; an app setting left out falls back to the app's own default
        # (the real host would refuse to start; the app's defaults are what it would run with anyway).
        defaults = {x.name: str(x.default) for x in SETTINGS if x.default is not None}
        self.binding_values = {**defaults, **{k: v for k, v in self.settings.items() if v != ""}}
        s = container.settings
        self.bus = LocalServiceBus(s.changes_queue, s.parked_queue, time_scale=time_scale)
        container.set_event_queue(self.bus)  # shared/ now sends, retries and parks here

    # --- lifecycle ------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.bind}:{self.port}"

    def start(self) -> "LocalHost":
        self._httpd = _Server((self.bind, self.port), _Handler)
        self._httpd.host = self  # type: ignore[attr-defined]
        self.port = self._httpd.server_address[1]
        self._spawn("host-http", self._httpd.serve_forever, kwargs={"poll_interval": 0.1})
        for fn in self.functions.values():
            if fn.kind == "serviceBusTrigger":
                for i in range(self.instances):
                    self._spawn(f"sb-{fn.name}-{i}", self._service_bus_loop, (fn,))
            elif fn.kind == "timerTrigger" and self.run_timers:
                self._spawn(f"timer-{fn.name}", self._timer_loop, (fn,))
        self._write_state()
        log.info("host.started url=%s functions=%s", self.url, ",".join(self.functions))
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stops taking work, lets running invocations finish (their messages settle), then returns."""
        self._stop.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        for t in self._threads:
            t.join(timeout)
        self._threads.clear()
        if self.state_dir and (self.state_dir / "host.json").exists():
            (self.state_dir / "host.json").unlink()
        log.info("host.stopped")

    def __enter__(self) -> "LocalHost":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _spawn(self, name: str, target: Callable, args: tuple = (), kwargs: dict | None = None) -> None:
        t = threading.Thread(target=target, args=args, kwargs=kwargs or {}, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def _write_state(self) -> None:
        if not self.state_dir:
            return
        self.state_dir.mkdir(parents=True, exist_ok=True)
        state = {"url": self.url, "function_key": self.function_key, "master_key": self.master_key,
                 "pid": os.getpid(), "queues": [q.name for q in self.bus.queues()]}
        path = self.state_dir / "host.json"
        path.write_text(json.dumps(state, indent=2))
        path.chmod(0o600)

    def wait_idle(self, timeout: float = 30.0, settle: float = 0.05) -> bool:
        """True once no message is active, scheduled or locked and no invocation runs (twice in a row)."""
        deadline = time.monotonic() + timeout
        quiet = 0
        while time.monotonic() < deadline:
            with self._busy_lock:
                busy = self._busy
            if busy == 0 and self.bus.idle():
                quiet += 1
                if quiet >= 2:
                    return True
            else:
                quiet = 0
            time.sleep(settle)
        return False

    # --- Service Bus triggers -------------------------------------------------------------------

    def _service_bus_loop(self, fn: Function) -> None:
        # One batch at a time per listener, as the Service Bus extension's batch receive loop.
        queue = self.bus.queue(resolve(fn.trigger["queueName"], self.binding_values))
        many = str(fn.trigger.get("cardinality", "ONE")).upper() == "MANY"
        max_batch = int(self.sb["maxMessageBatchSize"]) if many else 1
        min_batch = int(self.sb.get("minMessageBatchSize", 1)) if many else 1
        while not self._stop.is_set():
            batch = queue.receive(max_batch, self.batch_wait, min_count=min_batch, stop=self._stop,
                                  wait_for_first=0.2)
            if not batch:
                continue
            with self._busy_lock:
                self._busy += 1
            try:
                arg = [self._sb_message(m) for m in batch]
                error = self._invoke(fn, {fn.trigger["name"]: arg if many else arg[0]})
                # autoCompleteMessages: success completes the batch, an exception abandons all of it
                (queue.abandon if error else queue.complete)(batch)
            finally:
                with self._busy_lock:
                    self._busy -= 1

    @staticmethod
    def _sb_message(m: Message) -> ServiceBusMessage:
        enqueued = datetime.fromtimestamp(m.enqueued_time, tz=timezone.utc)
        return ServiceBusMessage(
            body=m.body, message_id=m.message_id, application_properties=dict(m.application_properties),
            user_properties=dict(m.application_properties), delivery_count=m.delivery_count,
            enqueued_time_utc=enqueued, content_type=m.content_type, correlation_id=m.correlation_id,
            subject=m.subject, label=m.subject, sequence_number=m.sequence_number, lock_token=m.lock_token,
            scheduled_enqueue_time_utc=(datetime.fromtimestamp(m.scheduled_time, tz=timezone.utc)
                                        if m.scheduled_time else None))

    def _invoke(self, fn: Function, kwargs: dict, call: Callable[..., Any] | None = None) -> BaseException | None:
        started = time.monotonic()
        error: BaseException | None = None
        try:
            (call or fn.callable)(**kwargs)
        except Exception as exc:  # the host reports a failed invocation; it never dies of one
            error = exc
            log.error("host.function_failed function=%s error=%s\n%s", fn.name, type(exc).__name__,
                      "".join(traceback.format_exception(exc)[-3:]))
        fn.record(error)
        log.debug("host.invoked function=%s ok=%s ms=%d", fn.name, error is None,
                  (time.monotonic() - started) * 1000)
        return error

    # --- timers ---------------------------------------------------------------------------------

    def _timer_loop(self, fn: Function) -> None:
        try:
            schedule = Schedule.parse(resolve(fn.trigger["schedule"], self.binding_values))
        except Exception as exc:
            log.error("host.timer_invalid function=%s error=%s", fn.name, exc)
            return
        last = None
        if fn.trigger.get("runOnStartup"):
            self.run_timer(fn.name)
        while not self._stop.is_set():
            now = datetime.now(timezone.utc)
            nxt = schedule.next_after(now)
            while not self._stop.is_set() and datetime.now(timezone.utc) < nxt:
                self._stop.wait(min(1.0, (nxt - datetime.now(timezone.utc)).total_seconds()))
            if self._stop.is_set():
                return
            self.run_timer(fn.name, last=last, next_=schedule.next_after(nxt))
            last = nxt

    def run_timer(self, name: str, last: datetime | None = None, next_: datetime | None = None,
                  past_due: bool = False) -> BaseException | None:
        fn = self.functions[name]
        now = datetime.now(timezone.utc)
        status = {"Last": (last or now).isoformat(), "Next": (next_ or now).isoformat(), "LastUpdated": now.isoformat()}
        timer = TimerRequest(past_due=past_due, schedule_status=status, schedule={"AdjustForDST": True})
        with self._busy_lock:
            self._busy += 1
        try:
            return self._invoke(fn, {fn.trigger["name"]: timer})
        finally:
            with self._busy_lock:
                self._busy -= 1

    def run_function(self, name: str, payload: str = "") -> None:
        """What POST /admin/functions/<name> does: the non-HTTP function, now, in the background."""
        fn = self.functions[name]
        if fn.kind == "timerTrigger":
            self._spawn(f"manual-{name}", self.run_timer, (name,))
        elif fn.kind == "serviceBusTrigger":
            # The real host hands the input to the trigger as a message body.
            queue = self.bus.queue(resolve(fn.trigger["queueName"], self.binding_values))
            queue.send([Message(body=payload.encode(), message_id=secrets.token_hex(16))])
        else:
            raise ValueError(f"{name} is an HTTP function: call it at its route")

    # --- HTTP -----------------------------------------------------------------------------------

    def key_ok(self, presented: str | None, level: str) -> bool:
        level = level.upper()
        if level == "ANONYMOUS":
            return True
        if not presented:
            return False
        if secrets.compare_digest(presented, self.master_key):
            return True
        return level == "FUNCTION" and secrets.compare_digest(presented, self.function_key)

    def handle(self, method: str, raw_path: str, headers: dict[str, str], body: bytes) -> tuple[int, dict, bytes]:
        parts = urlsplit(raw_path)
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        presented = headers.get("x-functions-key") or query.get("code")
        path = parts.path
        if path.startswith("/admin/"):
            if not self.key_ok(presented, "ADMIN"):
                return _json(401, {"error": "the master key is required (x-functions-key or ?code=)"})
            return self._admin(method, path, query, body)
        prefix = "/api/"
        if not path.startswith(prefix):
            return _json(404, {"error": "not found"})
        for regex, fn in self.routes:
            m = regex.match(path[len(prefix):])
            if not m:
                continue
            methods = [x.upper() for x in fn.trigger.get("methods") or []]
            if methods and method not in methods:
                return _json(405, {"error": f"method {method} not allowed"})
            if not self.key_ok(presented, fn.trigger.get("authLevel", "FUNCTION")):
                return 401, {}, b""
            req = func.HttpRequest(method, f"{self.url}{raw_path}", headers=headers, params=query,
                                   route_params={k: v for k, v in m.groupdict().items() if v is not None}, body=body)
            result: dict[str, Any] = {}
            with self._busy_lock:
                self._busy += 1
            try:
                error = self._invoke_http(fn, req, result)
            finally:
                with self._busy_lock:
                    self._busy -= 1
            if error is not None:
                fn.answered(500)
                return 500, {}, b""
            resp = result.get("response")
            if resp is None:
                fn.answered(204)
                return 204, {}, b""
            if not isinstance(resp, func.HttpResponse):
                resp = func.HttpResponse(str(resp))
            fn.answered(resp.status_code)
            out_headers = dict(resp.headers.items())
            if not any(k.lower() == "content-type" for k in out_headers) and resp.mimetype:
                out_headers["Content-Type"] = f"{resp.mimetype}; charset={resp.charset}"
            return resp.status_code, out_headers, resp.get_body() or b""
        return _json(404, {"error": "no function at this route"})

    def _invoke_http(self, fn: Function, req: func.HttpRequest, result: dict) -> BaseException | None:
        def call(**kwargs: Any) -> None:
            result["response"] = fn.callable(**kwargs)  # the $return binding

        return self._invoke(fn, {fn.trigger["name"]: req}, call)

    def _admin(self, method: str, path: str, query: dict, body: bytes) -> tuple[int, dict, bytes]:
        segs = [s for s in path.split("/") if s][1:]
        try:
            max_count = int(query["max"]) if "max" in query else None
        except ValueError:
            return _json(400, {"error": "max must be a whole number"})
        if segs == ["host", "status"] and method == "GET":
            return _json(200, {"state": "Stopping" if self._stop.is_set() else "Running", "url": self.url,
                               "functions": [f.describe() for f in self.functions.values()]})
        if segs == ["functions"] and method == "GET":
            return _json(200, [f.describe() for f in self.functions.values()])
        if len(segs) == 2 and segs[0] == "functions":
            if segs[1] not in self.functions:
                return _json(404, {"error": f"no function named {segs[1]}"})
            if method == "GET":
                return _json(200, self.functions[segs[1]].describe())
            if method == "POST":
                try:
                    payload = json.loads(body or b"{}").get("input", "") or ""
                    self.run_function(segs[1], str(payload))
                except ValueError as exc:
                    return _json(400, {"error": str(exc)})
                return 202, {}, b""
        if segs == ["queues"] and method == "GET":
            return _json(200, [q.stats() for q in self.bus.queues()])
        if len(segs) >= 3 and segs[0] == "queues":
            q = self.bus.get(segs[1])
            if q is None:
                return _json(404, {"error": f"no queue named {segs[1]}"})
            rest = segs[2:]
            if rest == ["messages"] and method == "GET":
                msgs = q.peek(max_count or 100)
                return _json(200, {"queue": q.name, "count": len(msgs), "messages": [m.to_json() for m in msgs]})
            if rest == ["deadletter"] and method == "GET":
                msgs = list(q.deadletter)[: max_count if max_count is not None else None]
                return _json(200, {"queue": q.name, "count": len(q.deadletter),
                                   "messages": [m.to_json() for m in msgs]})
            if rest == ["deadletter"] and method == "DELETE":
                return _json(200, {"purged": len(q.take_deadletters(None))})
            if rest == ["deadletter", "replay"] and method == "POST":
                try:
                    doc = json.loads(body or b"{}")
                    if isinstance(doc, dict) and doc.get("max") is not None:
                        max_count = int(doc["max"])
                except ValueError:
                    return _json(400, {"error": "body must be JSON like {\"max\": 10}"})
                n = self.bus.replay(q.name, max_count)
                return _json(200, {"replayed": n, "to": self.bus.changes_queue})
        return _json(404, {"error": "no such admin endpoint"})


def _json(status: int, doc: Any) -> tuple[int, dict, bytes]:
    return status, {"Content-Type": "application/json"}, json.dumps(doc).encode()


#: The Functions host's default request body limit (FUNCTIONS_REQUEST_BODY_SIZE_LIMIT unset): 100 MB.
DEFAULT_BODY_LIMIT = 104857600


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 512


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _serve(self) -> None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0 or length > self.server.host.body_limit:  # type: ignore[attr-defined]
            # Refused before a byte of the body is read; the unread body makes the connection unusable.
            self.close_connection = True
            self.send_response(413 if length > 0 else 400)
            self.send_header("Content-Length", "0")
            self.send_header("Connection", "close")
            self.end_headers()
            return
        body = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            status, out_headers, payload = self.server.host.handle(self.command, self.path, headers, body)  # type: ignore[attr-defined]
        except Exception as exc:  # a host bug answers 500, and says so in the log (never a body)
            log.error("host.request_failed error=%s", type(exc).__name__)
            status, out_headers, payload = 500, {}, b""
        self.send_response(status)
        for k, v in out_headers.items():
            if k.lower() not in ("content-length", "connection"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

    def log_message(self, fmt: str, *args: Any) -> None:
        # Request lines carry ?code= keys: log the method and path only.
        log.debug("host.request %s %s", self.command, urlsplit(self.path).path)


def stored_keys(state_dir: Path = STATE_DIR) -> tuple[str, str]:
    """(function key, master key): made once and kept, as the real host keeps its secrets."""
    path = state_dir / "keys.json"
    try:
        doc = json.loads(path.read_text())
        return doc["function_key"], doc["master_key"]
    except (OSError, ValueError, KeyError):
        pass
    keys = {"function_key": secrets.token_urlsafe(32), "master_key": secrets.token_urlsafe(32)}
    state_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(keys, indent=2))
    path.chmod(0o600)
    return keys["function_key"], keys["master_key"]


def configure_logging(level: str = "INFO", path: Path | None = None) -> None:
    """Root logging with the app's email redaction installed before any record is made."""
    from shared.telemetry import install_redaction

    install_redaction()
    handler: logging.Handler = logging.FileHandler(path) if path else logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("azure.core.pipeline.policies.http_logging_policy", "urllib3", "azure"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
