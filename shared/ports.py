"""Ports: the small interfaces the use cases need from the outside world.

Adapters in ``shared.adapters`` implement them against Azure and Dataverse; unit tests use fakes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Collection, Iterable, Iterator, Mapping, Protocol, Sequence

from shared.domain.compliance import OptOutRecord
from shared.domain.events import ChangeEvent
from shared.domain.ledger import LedgerEntry
from shared.domain.mappings import Mappings
from shared.domain.model import ConsentRow, Member, WriteResult
from shared.domain.partitions import ScanSource
from shared.domain.planner import Action, MemberKey


class QueueUnavailable(RuntimeError):
    """The queue could not take the message; the sender should try again later."""


class EventQueue(Protocol):
    """Where validated change events go (Azure Service Bus, or the local host's queue)."""

    def send(self, events: Sequence[ChangeEvent]) -> None:
        """Enqueues the events with MessageId = event id; raises QueueUnavailable on failure."""
        ...


# --- the sync engine's ports ---------------------------------------------------------------------


@dataclass
class SyncRead:
    """One round of reads: members (with their memberships of the mapped and opt-out lists)
    found by id or by email, and every email-channel consent row of the emails asked for."""

    members: list[tuple[Member, frozenset[str]]] = field(default_factory=list)
    consent_rows: list[ConsentRow] = field(default_factory=list)
    missing_members: set[MemberKey] = field(default_factory=set)


class SyncGateway(Protocol):
    """What the sync engine needs from Dataverse, in as few requests as the adapter can manage."""

    def sync_user_id(self) -> str:
        """The sync's own application user (WhoAmI), cached by the adapter."""
        ...

    def organization_id(self) -> str:
        """The organization the sync serves (WhoAmI), cached by the adapter."""
        ...

    def read(self, member_ids: Mapping[str, Collection[str]], emails: Collection[str], mappings: Mappings) -> SyncRead:
        ...

    def consent_rows_by_ids(self, row_ids: Collection[str]) -> list[ConsentRow]:
        ...

    def write(self, actions: Sequence[Action], marker: str) -> list[WriteResult]:
        """Applies the actions (one result each, in order); ``marker`` goes in msdynmkt_reason."""
        ...


class TenantSource(Protocol):
    """The whole tenant as streams of domain values, page by page (the nightly reconciliation)."""

    def scan_pages(self, source: ScanSource, columns: Sequence[str], after: str | None = None,
                   upto: str | None = None) -> Iterator[tuple[list[ConsentRow] | list[Member], bool]]:
        """The source's rows with ``after < key <= upto`` in key order: (page, whether more follow)."""
        ...

    def largest_key(self, source: ScanSource, columns: Sequence[str], after: str | None = None,
                    upto: str | None = None) -> str | None:
        """The largest key (SQL Server order) of the source's rows with ``after < key <= upto``."""
        ...

    def parallelism_hint(self) -> int | None:
        """The concurrency Dataverse recommends for this environment (``x-ms-dop-hint``), if known."""
        ...

    def request_count(self) -> int:
        """HTTP requests made so far (the run report's Dataverse requests)."""
        ...


class ListSnapshotsPort(Protocol):
    def load(self, list_id: str) -> tuple[frozenset[str], str] | None: ...

    def holds(self, list_id: str, member_ids: Iterable[str]) -> tuple[frozenset[str], str] | None:
        """(those of ``member_ids`` in the list's snapshot, lowercase; taken_at), None: no snapshot."""
        ...

    def save(self, list_id: str, member_keys: Iterable[str], taken_at: str) -> None: ...


class RunReportsPort(Protocol):
    """Run reports, and what a run has finished so far (so an interrupted run resumes)."""

    def save(self, report: dict) -> None: ...

    def get(self, run_id: str) -> dict | None: ...

    def save_final(self, report: dict) -> bool: ...

    def save_chunk(self, run_id: str, index: int, result: dict) -> None: ...

    def get_chunk(self, run_id: str, index: int) -> dict | None: ...

    def save_partition(self, run_id: str, name: str, meta: dict, payload: bytes) -> None: ...

    def partitions(self, run_id: str) -> dict[str, tuple[dict, bytes]]: ...

    def clear_partitions(self, run_id: str) -> None: ...


class TransientError(RuntimeError):
    """An outside system failed in a way that may pass: the event is retried later."""


class ProcessedEventsPort(Protocol):
    def seen(self, event_ids: Iterable[str]) -> set[str]: ...

    def mark(self, event_ids: Iterable[str], outcome: str = "processed") -> None: ...


class LedgerPort(Protocol):
    def record(self, entries: Sequence[LedgerEntry]) -> None: ...


class OptOutRecordsPort(Protocol):
    """Opt-out deadlines (shared.domain.compliance): what each opt-out was and when each side reflected it."""

    def record(self, records: Sequence[OptOutRecord]) -> None: ...


class MappingsSource(Protocol):
    def current(self) -> Mappings | None: ...


class RetryQueue(Protocol):
    """Where failing events go: back on the queue later, or parked with a reason."""

    def send_later(self, event: ChangeEvent, delay_seconds: int, attempt: int) -> None: ...

    def park(self, body: bytes, reason: str, attempt: int, message_id: str | None = None) -> None: ...
