"""OData 4.0 $batch as Dataverse speaks it: multipart/mixed, change sets as nested multipart/mixed.

Change sets are atomic (store transaction); requests outside change sets run independently;
processing stops at the first failure (and the batch answers 400) unless
``Prefer: odata.continue-on-error``.
"""
from __future__ import annotations

import re
import uuid
from dataclasses import dataclass

from .api import MAX_BATCH, Api, Response, error_response, prefer
from .errors import BAD_QUERY, DataverseError

_BOUNDARY = re.compile(r'boundary="?([^";,]+)"?', re.I)
_REASONS = {200: "OK", 201: "Created", 204: "No Content", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
            405: "Method Not Allowed", 412: "Precondition Failed", 429: "Too Many Requests",
            500: "Internal Server Error", 503: "Service Unavailable"}


@dataclass
class Part:
    headers: dict  # MIME headers of the part, lower-case keys
    method: str = ""
    url: str = ""
    req_headers: dict | None = None
    body: bytes = b""
    changeset: list["Part"] | None = None
    content_id: str | None = None


def boundary_of(content_type: str) -> str:
    m = _BOUNDARY.search(content_type or "")
    if not m:
        raise DataverseError(400, BAD_QUERY, "A $batch request needs Content-Type: multipart/mixed; boundary=...")
    return m.group(1)


def _split_headers(blob: bytes, strip_leading: bool = True) -> tuple[dict, bytes]:
    if strip_leading:
        blob = blob.lstrip(b"\r\n")
    elif blob.startswith((b"\r\n", b"\n")):  # no headers at all: a blank line, then the body
        return {}, blob[2:] if blob.startswith(b"\r\n") else blob[1:]
    m = re.search(rb"\r?\n\r?\n", blob)
    head, rest = (blob[:m.start()], blob[m.end():]) if m else (blob, b"")
    headers = {}
    for line in re.split(rb"\r?\n", head):
        if b":" in line:
            k, _, v = line.decode("utf-8", "replace").partition(":")
            headers[k.strip().lower()] = v.strip()
    return headers, rest


def _split_multipart(body: bytes, boundary: str) -> list[bytes]:
    delim = b"--" + boundary.encode()
    chunks = body.split(delim)
    parts = []
    for chunk in chunks[1:]:
        if chunk.startswith(b"--"):
            break
        # The CRLF before a delimiter belongs to the delimiter.
        if chunk.endswith(b"\r\n"):
            chunk = chunk[:-2]
        elif chunk.endswith(b"\n"):
            chunk = chunk[:-1]
        parts.append(chunk[2:] if chunk.startswith(b"\r\n") else chunk[1:] if chunk.startswith(b"\n") else chunk)
    return parts


def _http_part(mime: dict, payload: bytes) -> Part:
    m = re.match(rb"\s*([A-Z]+)\s+(\S+)(?:\s+HTTP/\d\.\d)?\s*\r?\n", payload)
    if not m:
        raise DataverseError(400, BAD_QUERY, "A batch part does not start with an HTTP request line.")
    req_headers, body = _split_headers(payload[m.end():], strip_leading=False)
    return Part(mime, m.group(1).decode(), m.group(2).decode(), req_headers, body.rstrip(b"\r\n"),
                content_id=mime.get("content-id") or req_headers.get("content-id"))


def parse_batch(body: bytes, content_type: str) -> list[Part]:
    parts = []
    for raw in _split_multipart(body, boundary_of(content_type)):
        mime, payload = _split_headers(raw)
        ctype = mime.get("content-type", "")
        if ctype.lower().startswith("multipart/mixed"):
            inner = []
            for raw2 in _split_multipart(payload, boundary_of(ctype)):
                mime2, payload2 = _split_headers(raw2)
                inner.append(_http_part(mime2, payload2))
            parts.append(Part(mime, changeset=inner))
        else:
            parts.append(_http_part(mime, payload))
    return parts


def _render(resp: Response, content_id: str | None) -> bytes:
    lines = ["Content-Type: application/http", "Content-Transfer-Encoding: binary"]
    if content_id:
        lines.append(f"Content-ID: {content_id}")
    lines += ["", f"HTTP/1.1 {resp.status} {_REASONS.get(resp.status, '')}".rstrip()]
    for k, v in resp.headers.items():
        lines.append(f"{k}: {v}")
    lines.append("")
    return ("\r\n".join(lines) + "\r\n").encode() + resp.body


class BatchRunner:
    def __init__(self, api: Api, count_inner):
        self.api = api
        self.count_inner = count_inner  # (method, path) -> None, for the statistics

    def _relative(self, url: str, ids: dict[str, str]) -> tuple[str, str]:
        if url.startswith("$"):
            ref, _, rest = url[1:].partition("/")
            if ref in ids:
                url = ids[ref] + ("/" + rest if rest else "")
        marker = "/api/data/v9.2/"
        i = url.find(marker)
        if i >= 0:
            url = url[i + len(marker):]
        path, _, query = url.partition("?")
        return path.lstrip("/"), query

    def _run_one(self, part: Part, user_id: str, ids: dict[str, str]) -> Response:
        path, query = self._relative(part.url, ids)
        self.count_inner(part.method, path)
        if path.split("/")[0].split("?")[0] == "$batch":
            return error_response(DataverseError(400, BAD_QUERY, "Nested $batch is not supported."))
        body = part.body
        if ids and body:
            # Content-ID references in @odata.bind / @odata.id values.
            for cid, loc in ids.items():
                body = body.replace(f'"${cid}"'.encode(), f'"{loc}"'.encode())
        resp = self.api.handle(part.method, path, query, part.req_headers or {}, body, user_id)
        if part.content_id and "OData-EntityId" in resp.headers:
            ids[part.content_id] = resp.headers["OData-EntityId"]
        return resp

    def run(self, body: bytes, headers: dict, user_id: str) -> Response:
        parts = parse_batch(body, headers.get("content-type", ""))
        n = sum(len(p.changeset) if p.changeset is not None else 1 for p in parts)
        if n > MAX_BATCH:
            raise DataverseError(400, "0x8005f103", f"The number of requests in a batch ({n}) exceeds the limit of {MAX_BATCH}.")
        keep_going = "odata.continue-on-error" in prefer(headers)
        outer = f"batchresponse_{uuid.uuid4()}"
        out: list[bytes] = []
        store = self.api.store
        stopped = False
        for part in parts:
            if part.changeset is None:
                resp = self._run_one(part, user_id, {})
                out.append(_render(resp, part.content_id))
                failed = resp.status >= 400
            else:
                ids: dict[str, str] = {}
                results: list[tuple[Response, str | None]] = []
                failure: tuple[Response, str | None] | None = None

                class _Abort(Exception):
                    pass
                try:
                    with store.transaction():
                        for p in part.changeset:
                            resp = self._run_one(p, user_id, ids)
                            if resp.status >= 400:
                                failure = (resp, p.content_id)
                                raise _Abort
                            results.append((resp, p.content_id))
                except _Abort:
                    pass
                if failure is not None:
                    # Like Dataverse: a failed change set answers with the one failing response.
                    out.append(_render(*failure))
                    failed = True
                else:
                    inner = f"changesetresponse_{uuid.uuid4()}"
                    blob = b"".join(f"--{inner}\r\n".encode() + _render(r, cid) + b"\r\n" for r, cid in results)
                    blob += f"--{inner}--\r\n".encode()
                    out.append(f"Content-Type: multipart/mixed; boundary={inner}\r\n\r\n".encode() + blob)
                    failed = False
            if failed and not keep_going:
                stopped = True
                break
        payload = b"".join(f"--{outer}\r\n".encode() + p + b"\r\n" for p in out) + f"--{outer}--\r\n".encode()
        # Without odata.continue-on-error a failure stops the batch and the batch itself fails: 400
        # (BATCH, "Handling errors"), the body still holding the failing request's response.
        return Response(400 if stopped else 200, {"Content-Type": f"multipart/mixed; boundary={outer}",
                                                  "OData-Version": "4.0"}, payload)
