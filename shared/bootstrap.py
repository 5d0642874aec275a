"""Wiring: the one place adapters are built from settings.

Objects here live as long as the worker process, so connections and tokens are reused across
invocations. Tests build their own containers with ``Container(settings)``.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any

from shared.adapters.settings import Settings
from shared.ingest.webhook import WebhookConfig
from shared.ports import EventQueue
from shared.telemetry import emit, install_redaction

log = logging.getLogger("straddle")


MAPPINGS_TTL_SECONDS = 60
#: After WhoAmI failed, how long before the webhook's next notification asks again.
ORGANIZATION_RETRY_SECONDS = 60


class Container:
    def __init__(self, settings: Settings):
        self.settings = settings
        self._lock = threading.Lock()
        self._queue: EventQueue | None = None
        self._dataverse: Any = None
        self._tables: Any = None
        self._engine: Any = None
        self._mappings: tuple[float, Any] | None = None
        self._organization_id: str | None = None
        self._organization_next_try = 0.0  # monotonic time; while learning, infinity
        #: Set by the CLI: storage gives up on an unreachable endpoint within seconds.
        self.interactive = False

    @property
    def webhook_config(self) -> WebhookConfig:
        return WebhookConfig(self.settings.webhook_secret_header, self.settings.webhook_secret,
                             self.settings.webhook_secret_previous)

    def known_organization_id(self) -> str | None:
        """The organization the app serves (WhoAmI's OrganizationId), or None while not known.

        Never waits on Dataverse: the webhook must answer fast and must not lose a notification
        when Dataverse is briefly unreachable. The first call starts learning it in the
        background (again a minute after a failure); until then the event carries the
        notification's own OrganizationId and the worker drops it if it is foreign."""
        if self._organization_id is not None or not self.settings.dataverse_url:
            return self._organization_id
        with self._lock:
            if time.monotonic() < self._organization_next_try:
                return None
            self._organization_next_try = float("inf")
        threading.Thread(target=self._learn_organization, name="straddle-whoami", daemon=True).start()
        return None

    def learn_organization(self) -> str:
        """Asks Dataverse (WhoAmI, once per process) which organization the app serves."""
        self._organization_id = self.dataverse().organization_id()
        return self._organization_id

    def _learn_organization(self) -> None:
        try:
            self.learn_organization()
        except Exception as exc:  # unreachable, throttled, misconfigured: ask again later
            emit(log, "webhook.organization_unknown", logging.WARNING, error=type(exc).__name__,
                 retry_in_s=ORGANIZATION_RETRY_SECONDS)
            with self._lock:
                self._organization_next_try = time.monotonic() + ORGANIZATION_RETRY_SECONDS

    def event_queue(self) -> EventQueue:
        """The change queue; raises SettingsError when Service Bus is not configured."""
        with self._lock:
            if self._queue is None:
                self._queue = build_servicebus_queue(self.settings)
            return self._queue

    def dataverse(self) -> Any:
        """The Dataverse client (one pooled session per process); raises SettingsError without DATAVERSE_URL."""
        with self._lock:
            if self._dataverse is None:
                self._dataverse = build_dataverse_client(self.settings)
            return self._dataverse

    def tables(self) -> Any:
        """The Table Storage facade (shared.adapters.tables.store.TableStore); raises SettingsError when
        storage is not configured (and its ``.ledger`` when LEDGER_KEY is missing)."""
        with self._lock:
            if self._tables is None:
                self._tables = build_table_store(self.settings, fail_fast=self.interactive)
            return self._tables

    def mappings(self) -> Any:
        """The imported mappings (None before the first import), re-read at most once a minute
        so an import reaches running workers without a restart."""
        from shared.domain.mappings import Mappings

        now = time.monotonic()
        cached = self._mappings
        if cached is None or now - cached[0] > MAPPINGS_TTL_SECONDS:
            doc = self.tables().mappings.load()
            cached = (now, Mappings.from_dict(doc) if doc else None)
            self._mappings = cached
        return cached[1]

    def sync_engine(self) -> Any:
        """The sync engine over Dataverse, Table Storage and the queue."""
        from shared.adapters.sync_gateway import DataverseSyncGateway
        from shared.service_layer.process_changes import EngineConfig, SyncEngine

        if self._engine is not None:
            return self._engine
        tables, dataverse = self.tables(), self.dataverse()
        tables.ledger.check_key()  # fails now, naming LEDGER_KEY, rather than after the first write
        with self._lock:
            if self._engine is None:
                self._engine = SyncEngine(
                    DataverseSyncGateway(dataverse), self.mappings, tables.processed, tables.ledger,
                    _RetriesVia(self.event_queue),
                    EngineConfig(self.settings.max_attempts, self.settings.retry_delay_seconds),
                    opt_outs=tables.compliance, snapshots=tables.snapshots)
            return self._engine

    def set_dataverse(self, client: Any) -> None:
        """Lets a host or a test supply its own Dataverse client (the engine is rebuilt around it)."""
        with self._lock:
            self._dataverse = client
            self._engine = None

    def set_sync_engine(self, engine: Any) -> None:
        """Lets a host or a test supply its own engine."""
        with self._lock:
            self._engine = engine

    def set_event_queue(self, queue: EventQueue) -> None:
        """Lets a host (the local one in sandbox/host) supply its own queue."""
        with self._lock:
            self._queue = queue
            self._engine = None  # the engine retries through the queue: rebuild it around the new one


class _RetriesVia:
    """The engine's retry queue, resolved when first used: the reconciliation (and a CLI run)
    never retries through Service Bus, so it must not need Service Bus settings."""

    def __init__(self, queue: Any):
        self._queue = queue

    def send_later(self, event: Any, delay_seconds: int, attempt: int) -> None:
        self._queue().send_later(event, delay_seconds, attempt)

    def park(self, body: bytes, reason: str, attempt: int, message_id: str | None = None) -> None:
        self._queue().park(body, reason, attempt, message_id)


def azure_credential(client_id: str | None) -> Any:
    from azure.identity import DefaultAzureCredential, ManagedIdentityCredential

    return ManagedIdentityCredential(client_id=client_id) if client_id else DefaultAzureCredential()


def build_servicebus_queue(settings: Settings) -> EventQueue:
    from shared.adapters.servicebus import ServiceBusEventQueue

    settings.require_servicebus()
    if settings.servicebus_connection_string:
        return ServiceBusEventQueue.from_connection_string(settings.servicebus_connection_string, settings.changes_queue,
                                                           settings.parked_queue)
    return ServiceBusEventQueue.from_namespace(
        settings.servicebus_namespace, azure_credential(settings.servicebus_client_id), settings.changes_queue,
        settings.parked_queue)


def build_dataverse_client(settings: Settings) -> Any:
    from shared.adapters.dataverse import DataverseClient

    return DataverseClient.from_settings(settings)


def build_table_store(settings: Settings, fail_fast: bool = False) -> Any:
    from shared.adapters.tables.common import FAIL_FAST
    from shared.adapters.tables.store import TableStore

    settings.require_tables()
    options = FAIL_FAST if fail_fast else {}
    if settings.storage_connection_string:
        return TableStore.from_connection_string(
            settings.storage_connection_string, prefix=settings.table_prefix, ledger_key=settings.ledger_key,
            previous_ledger_key=settings.ledger_key_previous, **options)
    return TableStore.from_endpoint(settings.storage_table_uri, azure_credential(settings.storage_client_id),
                                    prefix=settings.table_prefix, ledger_key=settings.ledger_key,
                                    previous_ledger_key=settings.ledger_key_previous, **options)


_telemetry_configured = False


def export_telemetry(settings: Settings) -> bool:
    """Sends logs (with their structured fields) and traces to Application Insights through the
    Azure Monitor OpenTelemetry distro. Returns whether this call configured it: not locally (no
    connection string), not when the Functions Python worker already did
    (PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY: a second configuration would export everything
    twice), and only once per process. Either way, Dataverse spans carry no query string
    (shared.telemetry.http_dependency)."""
    global _telemetry_configured
    if _telemetry_configured or not settings.appinsights_connection_string or settings.worker_exports_telemetry:
        return False
    from azure.monitor.opentelemetry import configure_azure_monitor

    configure_azure_monitor(connection_string=settings.appinsights_connection_string)
    _telemetry_configured = True
    return True


_container: Container | None = None
_container_lock = threading.Lock()


def container() -> Container:
    """The process-wide container, built on first use from the app settings."""
    global _container
    with _container_lock:
        if _container is None:
            install_redaction()
            settings = Settings.from_env()
            export_telemetry(settings)
            _container = Container(settings)
        return _container


def reset_container(replacement: Container | None = None) -> None:
    """For hosts and tests: drop (or replace) the process-wide container."""
    global _container
    with _container_lock:
        _container = replacement
