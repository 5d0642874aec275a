"""Integration fixtures: Azurite (Table Storage) for the table adapters.

``azurite_tables`` uses the Azurite that CI (or a developer) already runs on 127.0.0.1:10002, or
starts ``node_modules/.bin/azurite-table`` itself for the session. Integration tests never skip:
if Azurite can be neither found nor started the fixture fails and says how to fix it.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from shared.adapters.tables import TableStore, azurite_connection_string, table_names

REPO = Path(__file__).resolve().parents[2]
AZURITE_TABLE = REPO / "node_modules" / ".bin" / "azurite-table"
DEFAULT_PORT = 10002
LEDGER_KEY = b"integration-test-ledger-key-0123456789"


def _accepts(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_azurite(workdir: str) -> tuple[subprocess.Popen, int, Path]:
    if not AZURITE_TABLE.exists():
        pytest.fail(f"Azurite is not running on 127.0.0.1:{DEFAULT_PORT} and {AZURITE_TABLE} is missing: "
                    f"run `npm ci` in {REPO} (or start azurite-table on port {DEFAULT_PORT})", pytrace=False)
    port = _free_port()
    log = Path(workdir) / "azurite.log"
    # In memory, so nothing outlives the session; cwd in a temp dir for anything Azurite writes anyway.
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(AZURITE_TABLE), "--inMemoryPersistence", "--disableTelemetry", "--skipApiVersionCheck",
             "--tableHost", "127.0.0.1", "--tablePort", str(port)],
            cwd=workdir, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        if _accepts(port):
            return proc, port, log
        time.sleep(0.1)
    _stop(proc)
    pytest.fail(f"could not start Azurite ({AZURITE_TABLE}); its output:\n{log.read_text(errors='replace')[-2000:]}",
                pytrace=False)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="session")
def azurite_tables() -> Iterator[str]:
    """A Table Storage connection string for Azurite (found on :10002 or started for the session)."""
    if _accepts(DEFAULT_PORT):
        yield azurite_connection_string("127.0.0.1", DEFAULT_PORT)
        return
    if os.environ.get("STRADDLE_AZURITE") == "running":
        pytest.fail(f"STRADDLE_AZURITE=running but nothing accepts connections on 127.0.0.1:{DEFAULT_PORT}",
                    pytrace=False)
    workdir = tempfile.mkdtemp(prefix="straddle-azurite-")
    proc, port, _ = _start_azurite(workdir)
    try:
        yield azurite_connection_string("127.0.0.1", port)
    finally:
        _stop(proc)
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def table_prefix() -> str:
    """A fresh prefix per test, so no test sees another's tables or rows."""
    return "t" + uuid.uuid4().hex[:10]


@pytest.fixture
def table_store(azurite_tables: str, table_prefix: str) -> Iterator[TableStore]:
    """A TableStore on Azurite under this test's prefix (with a ledger key); its tables are dropped afterwards."""
    store = TableStore.from_connection_string(azurite_tables, prefix=table_prefix, ledger_key=LEDGER_KEY)
    yield store
    for name in table_names(table_prefix):
        try:
            store.service.delete_table(name)
        except Exception:  # cleanup only; an unreachable Azurite has already failed the test
            pass
    store.close()
