"""The Table Storage facade: every store over one shared service client, built on first use."""
from __future__ import annotations

import threading
from typing import Any, Callable

from azure.data.tables import TableServiceClient

from shared.adapters.settings import SettingsError
from shared.adapters.tables.compliance import ComplianceStore
from shared.adapters.tables.common import DEFAULT_PREFIX, table_names, expand_connection_string, _Tables
from shared.adapters.tables.ledger import Ledger
from shared.adapters.tables.mappings import MappingsStore
from shared.adapters.tables.processed import ProcessedEvents
from shared.adapters.tables.runs import RunReports
from shared.adapters.tables.snapshots import ListSnapshots

# --- the facade -------------------------------------------------------------------------------


class TableStore:
    """Every table adapter over one shared service client; adapters are built on first use, so a
    missing LEDGER_KEY only fails the code that needs the ledger."""

    def __init__(self, service: TableServiceClient, prefix: str = DEFAULT_PREFIX, ledger_key: bytes | None = None,
                 previous_ledger_key: bytes | None = None):
        self._tables = _Tables(service, prefix)
        self._ledger_key = ledger_key
        self._previous_ledger_key = previous_ledger_key
        self._lock = threading.Lock()
        self._built: dict[str, Any] = {}

    @classmethod
    def from_connection_string(cls, connection_string: str, prefix: str = DEFAULT_PREFIX,
                               ledger_key: bytes | None = None, previous_ledger_key: bytes | None = None,
                               **client_options: Any) -> "TableStore":
        try:
            service = TableServiceClient.from_connection_string(expand_connection_string(connection_string),
                                                                **client_options)
        except ValueError as exc:
            raise SettingsError(f"AzureWebJobsStorage is malformed: {str(exc).split(':')[0]}") from None
        return cls(service, prefix, ledger_key, previous_ledger_key)

    @classmethod
    def from_endpoint(cls, endpoint: str, credential: Any, prefix: str = DEFAULT_PREFIX,
                      ledger_key: bytes | None = None, previous_ledger_key: bytes | None = None,
                      **client_options: Any) -> "TableStore":
        return cls(TableServiceClient(endpoint=endpoint, credential=credential, **client_options), prefix, ledger_key,
                   previous_ledger_key)

    @property
    def service(self) -> TableServiceClient:
        return self._tables.service

    @property
    def prefix(self) -> str:
        return self._tables.prefix

    def _get(self, name: str, build: Callable[[], Any]) -> Any:
        with self._lock:
            if name not in self._built:
                self._built[name] = build()
            return self._built[name]

    @property
    def processed(self) -> ProcessedEvents:
        return self._get("processed", lambda: ProcessedEvents(self._tables))

    @property
    def ledger(self) -> Ledger:
        return self._get("ledger", lambda: Ledger(self._tables, self._ledger_key,
                                                  previous_key=self._previous_ledger_key))

    @property
    def mappings(self) -> MappingsStore:
        return self._get("mappings", lambda: MappingsStore(self._tables))

    @property
    def runs(self) -> RunReports:
        return self._get("runs", lambda: RunReports(self._tables))

    @property
    def compliance(self) -> ComplianceStore:
        return self._get("compliance", lambda: ComplianceStore(self._tables, self._ledger_key))

    @property
    def snapshots(self) -> ListSnapshots:
        return self._get("snapshots", lambda: ListSnapshots(self._tables))

    def table_names(self) -> list[str]:
        return table_names(self.prefix)

    def close(self) -> None:
        self._tables.service.close()
