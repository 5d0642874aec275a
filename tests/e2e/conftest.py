"""End-to-end fixtures: Azurite for the session (found on :10002 or started), never skipped."""
from __future__ import annotations

import os
from typing import Iterator

import pytest

from sandbox.azurite import DEFAULT_PORT, AzuriteUnavailable, accepts, ensure_azurite


@pytest.fixture(scope="session")
def azurite_connection() -> Iterator[str]:
    if os.environ.get("STRADDLE_AZURITE") == "running" and not accepts(DEFAULT_PORT):
        pytest.fail(f"STRADDLE_AZURITE=running but nothing accepts connections on 127.0.0.1:{DEFAULT_PORT}",
                    pytrace=False)
    try:
        azurite = ensure_azurite()
    except AzuriteUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield azurite.connection_string
    finally:
        azurite.stop()
