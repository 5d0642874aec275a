"""OData text: literals, chunked ``In`` filters, query strings and ``$batch`` bodies.

Pure functions, no I/O, so they are tested on their own.
"""
from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Mapping, Sequence
from urllib.parse import quote

# Characters left readable in a query string. Everything else (including '+', '&', '#', '%',
# '@' and non-ASCII) is percent-encoded, so a literal '+' in an address is never read as a space.
_QUERY_SAFE = "'(),=$/:"

#: Query strings stay below this many characters (Dataverse allows more; proxies may not).
MAX_QUERY_CHARS = 8000
#: Share of that budget for the values of ``In`` lists; the rest is for $select and other clauses.
MAX_IN_CHARS = 6000
#: At most this many values in one ``In`` function, whatever their length.
MAX_IN_VALUES = 200

GUID = re.compile(r"^\{?([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})\}?$")
_KEY_IN_URL = re.compile(r"\(([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})\)")


def is_guid(text: str | None) -> bool:
    return bool(text and GUID.match(text.strip()))


def guid(text: str) -> str:
    """A GUID in the client's canonical form: lower-case, no braces. Raises ValueError otherwise."""
    m = GUID.match(text.strip())
    if not m:
        raise ValueError("not a GUID")
    return m.group(1).lower()


def id_from_entity_url(url: str | None) -> str | None:
    """The key of ``.../contacts(<guid>)`` (an ``OData-EntityId`` header), lower-cased."""
    if not url:
        return None
    found = _KEY_IN_URL.findall(url)
    return found[-1].lower() if found else None


def literal(value: Any) -> str:
    """An OData literal: strings quoted with '' doubling, bools lower-case, None as null."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return "'" + str(value).replace("'", "''") + "'"


def encode(text: str) -> str:
    return quote(text, safe=_QUERY_SAFE)


def query_string(params: Mapping[str, str | None]) -> str:
    """``$select=a,b&$filter=...`` with values percent-encoded; None values dropped."""
    return "&".join(f"{k}={encode(v)}" for k, v in params.items() if v is not None)


def in_function(prop: str, values: Sequence[Any]) -> str:
    return (f"Microsoft.Dynamics.CRM.In(PropertyName={literal(prop)},"
            f"PropertyValues=[{','.join(literal(str(v)) for v in values)}])")


def chunk_values(values: Iterable[Any], *, max_values: int = MAX_IN_VALUES,
                 max_chars: int = MAX_IN_CHARS, copies: int = 1) -> Iterator[list[str]]:
    """Splits values (de-duplicated, order kept) so each chunk's encoded ``In`` list fits.

    ``copies`` is how many times the list appears in one URL (an ``or`` of one ``In`` per email
    column repeats it), so the length budget is shared between the copies.
    """
    budget = max(64, max_chars // max(1, copies))
    chunk: list[str] = []
    used = 0
    seen: set[str] = set()
    for v in values:
        if v is None:
            continue
        s = str(v)
        if s in seen:
            continue
        seen.add(s)
        cost = len(encode(literal(s))) + 1  # the comma
        if chunk and (len(chunk) >= max_values or used + cost > budget):
            yield chunk
            chunk, used = [], 0
        chunk.append(s)
        used += cost
    if chunk:
        yield chunk


# --- $batch -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class BatchOp:
    """One request inside a ``$batch``; ``path`` is relative to the service root."""

    method: str
    path: str
    body: Mapping[str, Any] | None = None
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return f"batch:{self.method} {path_kind(self.path)}"


@dataclass(frozen=True)
class PartResponse:
    status: int
    headers: Mapping[str, str]  # lower-case names
    body: bytes


def path_kind(path: str) -> str:
    """``lists(<id>)/listcontact_association/$ref`` -> ``lists/listcontact_association/$ref``.

    Keys and query strings are dropped, so a kind never holds an id or an address.
    """
    path = path.split("?", 1)[0]
    if "/api/data/" in path:
        path = path.split("/api/data/", 1)[1].split("/", 1)[-1]
    return re.sub(r"\([^)]*\)", "", path.strip("/"))


def build_batch(ops: Sequence[BatchOp], service_root: str, boundary: str | None = None) -> tuple[str, bytes]:
    """(content type, body) of a ``$batch`` with each request outside any change set.

    Outside change sets each request stands alone, so with ``odata.continue-on-error`` one bad
    row does not roll back or stop the others.
    """
    boundary = boundary or f"batch_{uuid.uuid4()}"
    root = service_root.rstrip("/") + "/"
    out: list[str] = []
    for op in ops:
        out.append(f"--{boundary}\r\n")
        out.append("Content-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n\r\n")
        out.append(f"{op.method} {root}{op.path.lstrip('/')} HTTP/1.1\r\n")
        headers = dict(op.headers)
        if op.body is not None:
            headers.setdefault("Content-Type", "application/json; charset=utf-8")
        for k, v in headers.items():
            out.append(f"{k}: {v}\r\n")
        out.append("\r\n")
        if op.body is not None:
            out.append(json.dumps(op.body, separators=(",", ":")))
        out.append("\r\n")
    out.append(f"--{boundary}--\r\n")
    return f"multipart/mixed; boundary={boundary}", "".join(out).encode("utf-8")


_BOUNDARY = re.compile(r'boundary="?([^";]+)"?', re.I)


def boundary_of(content_type: str | None) -> str | None:
    m = _BOUNDARY.search(content_type or "")
    return m.group(1) if m else None


def _split_head(block: bytes) -> tuple[bytes, bytes]:
    for sep in (b"\r\n\r\n", b"\n\n"):
        i = block.find(sep)
        if i >= 0:
            return block[:i], block[i + len(sep):]
    return block, b""


def _headers(head: bytes) -> tuple[list[str], dict[str, str]]:
    lines = [ln for ln in head.decode("utf-8", "replace").replace("\r\n", "\n").split("\n")]
    headers: dict[str, str] = {}
    for ln in lines:
        if ":" in ln:
            k, v = ln.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    return lines, headers


def parse_batch(body: bytes, content_type: str | None) -> list[PartResponse]:
    """The responses of a ``$batch``, in request order; nested change sets are flattened."""
    boundary = boundary_of(content_type)
    if not boundary:
        raise ValueError("batch response without a multipart boundary")
    delim = b"--" + boundary.encode()
    out: list[PartResponse] = []
    for raw in body.split(delim)[1:]:
        if raw.startswith(b"--"):
            break  # the closing delimiter
        part = raw.lstrip(b"\r\n")
        mime_head, rest = _split_head(part)
        _, mime = _headers(mime_head)
        ctype = mime.get("content-type", "")
        if ctype.lower().startswith("multipart/"):
            out.extend(parse_batch(rest, ctype))
            continue
        http_head, payload = _split_head(rest)
        lines, headers = _headers(http_head)
        status_line = next((ln for ln in lines if ln.startswith("HTTP/")), "")
        try:
            status = int(status_line.split()[1])
        except (IndexError, ValueError):
            raise ValueError("batch part without an HTTP status line") from None
        # Trailing CRLF before the next delimiter belongs to the framing, not the body.
        out.append(PartResponse(status, headers, payload.rstrip(b"\r\n")))
    return out
