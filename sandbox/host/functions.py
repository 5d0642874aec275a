"""The indexed app: a v2-model FunctionApp's functions, each with its trigger and counters."""
from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

import azure.functions as func

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
