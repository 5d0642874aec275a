"""Ports: the small interfaces the use cases need from the outside world.

Adapters in ``shared.adapters`` implement them against Azure and Dataverse; unit tests use fakes.
"""
from __future__ import annotations

from typing import Protocol, Sequence

from shared.domain.events import ChangeEvent


class QueueUnavailable(RuntimeError):
    """The queue could not take the message; the sender should try again later."""


class EventQueue(Protocol):
    """Where validated change events go (Azure Service Bus, or the local host's queue)."""

    def send(self, events: Sequence[ChangeEvent]) -> None:
        """Enqueues the events with MessageId = event id; raises QueueUnavailable on failure."""
        ...
