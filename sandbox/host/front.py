"""The HTTP front: HTTP triggers at their routes behind function keys, the admin endpoints behind
the master key, and the server that refuses an oversized body before reading it."""
from __future__ import annotations

import json
import logging
import secrets
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import azure.functions as func

from sandbox.host.functions import Function

log = logging.getLogger("sandbox.host")


class HttpFront:
    """Mixed into ``LocalHost``; uses its routes, keys, functions and bus."""

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
