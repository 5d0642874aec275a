"""The local Functions host: indexes a v2-model FunctionApp and runs its triggers on one machine.

HTTP triggers are served by a ThreadingHTTPServer (``front``), Service Bus queue triggers by a receive
loop per function over ``LocalServiceBus``, timer triggers by a scheduler thread per function
(``triggers``); settings, keys and logging are in ``config``, the indexed app in ``functions``. Every
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
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Mapping

import azure.functions as func

from sandbox.host.config import (REPO, STATE_DIR, configure_logging, load_settings, resolve, service_bus_options,
                                 stored_keys, timespan_seconds)
from sandbox.host.front import DEFAULT_BODY_LIMIT, HttpFront, _Handler, _Server
from sandbox.host.functions import Function, _route_regex, indexed_functions
from sandbox.host.queue import LocalServiceBus
from sandbox.host.triggers import Triggers

#: What the package, ``__main__``, the demo and the tests import from here.
__all__ = ["LocalHost", "REPO", "STATE_DIR", "configure_logging", "load_settings", "resolve", "stored_keys"]

log = logging.getLogger("sandbox.host")


# --- the host -------------------------------------------------------------------------------------

class LocalHost(HttpFront, Triggers):
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
