"""What a reconciliation run is told: its sizes and time budget, and the callbacks it reports through."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from shared.domain.planner import Action

Progress = Callable[[str, int, "int | None"], None]  # (stage, done, total or None)
CaseSink = Callable[[str, Action], None]  # (drift class, planned action): the dry run's review file

#: The scan's share of one function invocation (functionTimeout is 10 minutes; the partitions being
#: read when it runs out still finish): the rest goes on in a fresh invocation.
SCAN_SECONDS_PER_INVOCATION = 240.0


@dataclass
class ReconcileConfig:
    chunk: int = 5000  # candidates planned together: bounds the state held, keeps $batch reads full
    fanout_above: int | None = None  # candidates above which chunks go to the queue (None: never)
    readers: int = 16  # concurrent scan reads (Dataverse allows 52 per user; each holds one page)
    partition_rows: int | None = None  # rows a key range aims at (None: 4/5 of a page, so most fit one page)
    max_partitions: int = 64  # per source
    scan_seconds: float | None = None  # after this, the scan hands what is left to a fresh invocation


def nightly_config(settings) -> ReconcileConfig:
    """The timer's (and the queue's) run: sizes from settings, the scan within an invocation's share."""
    return ReconcileConfig(settings.reconcile_chunk_size, settings.reconcile_fanout_above,
                           readers=settings.reconcile_readers, scan_seconds=SCAN_SECONDS_PER_INVOCATION)
