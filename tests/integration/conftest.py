"""Integration fixtures: per-test table prefixes and stores on Azurite (``azurite_tables`` is in
tests/conftest.py, shared with the end-to-end tests)."""
from __future__ import annotations

import uuid
from typing import Iterator

import pytest

from shared.adapters.tables.common import table_names
from shared.adapters.tables.store import TableStore

LEDGER_KEY = b"integration-test-ledger-key-0123456789"


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
