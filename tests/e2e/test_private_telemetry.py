"""Telemetry is private by construction: a real sync exports its logs and spans to an ingestion
endpoint served here (standing in for Application Insights), and nothing it sends holds an address.

The run happens in a child process (tests/e2e/telemetry_run.py): configuring the Azure Monitor
distro instruments ``requests`` and replaces the global providers, for the whole process.
"""
from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from shared.telemetry import EMAIL
from tests.e2e.telemetry_run import EMAIL as PERSON

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


class Ingestion(ThreadingHTTPServer):
    """Accepts what the exporter posts to ``<IngestionEndpoint>/v2.1/track`` (JSON, maybe gzipped)."""

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.envelopes: list[dict] = []
        self.raw: list[str] = []


class _Handler(BaseHTTPRequestHandler):
    server: Ingestion

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.headers.get("Content-Encoding") == "gzip" or body[:2] == b"\x1f\x8b":
            body = gzip.decompress(body)
        text = body.decode("utf-8")
        self.server.raw.append(text)
        try:
            items = json.loads(text)
        except ValueError:
            items = [json.loads(line) for line in text.splitlines() if line.strip()]
        items = items if isinstance(items, list) else [items]
        if self.path.rstrip("/").endswith("/v2.1/track"):
            self.server.envelopes.extend(items)
        answer = json.dumps({"itemsReceived": len(items), "itemsAccepted": len(items), "errors": []}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def ingestion():
    server = Ingestion()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def run_sync(azurite_tables: str, ingestion: Ingestion, tmp_path: Path, **extra: str) -> subprocess.CompletedProcess:
    endpoint = f"http://127.0.0.1:{ingestion.server_address[1]}/"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("APPLICATIONINSIGHTS_", "PYTHON_APPLICATIONINSIGHTS"))}
    env.update({
        "APPLICATIONINSIGHTS_CONNECTION_STRING":
            f"InstrumentationKey={uuid.uuid4()};IngestionEndpoint={endpoint};LiveEndpoint={endpoint}",
        "APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL": "true",  # statsbeat goes to Microsoft's own endpoint
        "OTEL_TRACES_SAMPLER": "always_on",  # every span, not the default few per second
        "TMPDIR": str(tmp_path),  # the exporter's offline retry files
        **extra,
    })
    return subprocess.run([sys.executable, "-m", "tests.e2e.telemetry_run", azurite_tables, "t" + uuid.uuid4().hex[:10]],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_no_address_reaches_application_insights(azurite_tables, ingestion, tmp_path):
    done = run_sync(azurite_tables, ingestion, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    kinds = {e.get("data", {}).get("baseType") for e in ingestion.envelopes}
    # the export really ran: log records and the Dataverse dependencies arrived
    assert {"MessageData", "RemoteDependencyData"} <= kinds, kinds
    dependencies = [e["data"]["baseData"] for e in ingestion.envelopes
                    if e["data"].get("baseType") == "RemoteDependencyData"]
    dataverse = [d for d in dependencies if "/api/data/v9.2/" in (d.get("data") or "")]
    assert any(d["name"] == "GET /api/data/v9.2/contacts" for d in dataverse), sorted({(d["name"], d.get("resultCode")) for d in dataverse})
    assert any(d.get("resultCode") == "400" or d.get("success") is False for d in dataverse)  # the failed lookup
    for d in dataverse:
        assert "?" not in d["data"] and "$filter" not in d["data"], d["data"]
    sent = "\n".join(ingestion.raw)
    assert PERSON not in sent.lower()
    leaked = {m for m in EMAIL.findall(sent) if not m.endswith(("applicationinsights.azure.com", "microsoft.com"))}
    assert not leaked, sorted(leaked)[:5]
