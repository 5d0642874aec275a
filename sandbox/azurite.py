"""Azurite (Table Storage) for tests, benchmarks and the local stack: use the one listening on
127.0.0.1:10002, or start ``node_modules/.bin/azurite-table`` in memory on a free port."""
from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from shared.adapters.tables.common import azurite_connection_string

REPO = Path(__file__).resolve().parents[1]
AZURITE_TABLE = REPO / "node_modules" / ".bin" / "azurite-table"
DEFAULT_PORT = 10002


class AzuriteUnavailable(RuntimeError):
    """Azurite is neither running nor startable; the message says how to fix it."""


def accepts(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Azurite:
    connection_string: str
    process: subprocess.Popen | None = None
    workdir: str | None = None

    def stop(self) -> None:
        proc = self.process
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "Azurite":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def ensure_azurite(reuse: bool = True) -> Azurite:
    """The Azurite on :10002 (``reuse``) or a new in-memory one; ``stop()`` stops only what was started."""
    if reuse and accepts(DEFAULT_PORT):
        return Azurite(azurite_connection_string("127.0.0.1", DEFAULT_PORT))
    if not AZURITE_TABLE.exists():
        raise AzuriteUnavailable(f"Azurite is not running on 127.0.0.1:{DEFAULT_PORT} and {AZURITE_TABLE} is missing: "
                                 f"run `npm ci` in {REPO} (or start azurite-table on port {DEFAULT_PORT})")
    workdir = tempfile.mkdtemp(prefix="straddle-azurite-")
    port = free_port()
    log = Path(workdir) / "azurite.log"
    # In memory, so nothing outlives the run; cwd in a temp dir for anything Azurite writes anyway.
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(AZURITE_TABLE), "--inMemoryPersistence", "--disableTelemetry", "--skipApiVersionCheck",
             "--tableHost", "127.0.0.1", "--tablePort", str(port)],
            cwd=workdir, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    azurite = Azurite(azurite_connection_string("127.0.0.1", port), proc, workdir)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        if accepts(port):
            return azurite
        time.sleep(0.1)
    output = log.read_text(errors="replace")[-2000:]
    azurite.stop()
    raise AzuriteUnavailable(f"could not start Azurite ({AZURITE_TABLE}); its output:\n{output}")
