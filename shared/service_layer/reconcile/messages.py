"""The RECONCILE_QUEUE's messages: a chunk of candidates for ``reconcile_chunk`` to heal (a big
tenant's run fans its chunks out), or a run whose scan goes on in a fresh invocation."""
from __future__ import annotations

import json

from shared.domain.planner import Trigger

MAX_MESSAGE_BYTES = 192 * 1024  # under Service Bus Standard's 256 KB per message, with room for headers


def fit_in_messages(triggers: list[Trigger]) -> list[list[Trigger]]:
    """Splits a chunk until each part's message fits a Standard-tier Service Bus message."""
    if len(triggers) <= 1 or len(chunk_message("x" * 40, "x" * 20, 0, 1, triggers)) <= MAX_MESSAGE_BYTES:
        return [triggers]
    half = len(triggers) // 2
    return fit_in_messages(triggers[:half]) + fit_in_messages(triggers[half:])


def chunk_message(run_id: str, started_at: str, index: int, total: int, triggers: list[Trigger]) -> bytes:
    return json.dumps({"v": 1, "run_id": run_id, "started_at": started_at, "index": index, "total": total,
                       "triggers": [[t.kind, t.cause, list(t.member) if t.member else None, t.email, t.list_id]
                                    for t in triggers]}, separators=(",", ":")).encode()


def chunk_triggers(msg: dict) -> list[Trigger]:
    """The candidates a chunk message carries (``chunk_message`` read back)."""
    return [Trigger(kind, cause, tuple(member) if member else None, email, list_id)
            for kind, cause, member, email, list_id in msg["triggers"]]


def scan_message(run_id: str) -> bytes:
    """Carries a run whose scan used its invocation's time to a fresh ``reconcile_chunk``."""
    return json.dumps({"v": 1, "kind": "scan", "run_id": run_id}, separators=(",", ":")).encode()
