"""Integration fixtures: Azurite (Table Storage) for the table adapters.

``azurite_tables`` uses the Azurite that CI (or a developer) already runs on 127.0.0.1:10002, or
starts ``node_modules/.bin/azurite-table`` itself for the session. Integration tests never skip:
if Azurite can be neither found nor started the fixture fails and says how to fix it.
"""
from __future__ import annotations

import os
import uuid
from typing import Iterator

import pytest

from sandbox.azurite import DEFAULT_PORT, AzuriteUnavailable, accepts, ensure_azurite
from shared.adapters.tables import TableStore, table_names

LEDGER_KEY = b"integration-test-ledger-key-0123456789"


@pytest.fixture(scope="session")
def azurite_tables() -> Iterator[str]:
    """A Table Storage connection string for Azurite (found on :10002 or started for the session)."""
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
