"""Shared test fixtures. Keep this generic: fixtures specific to one area live with its tests."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import pytest

from sandbox.azurite import DEFAULT_PORT, AzuriteUnavailable, accepts, ensure_azurite
from shared.domain.events import ChangeEvent
from shared.ports import QueueUnavailable

FIXTURES = Path(__file__).parent / "fixtures"


class FakeQueue:
    """An EventQueue that keeps what it is sent; ``fail`` makes the next sends raise QueueUnavailable.

    Like the Service Bus adapter, it encodes each body as UTF-8 JSON, so an event that could not
    become a real queue message fails here too.
    """

    def __init__(self) -> None:
        self.events: list[ChangeEvent] = []
        self.bodies: list[bytes] = []
        self.fail: str | None = None

    def send(self, events: Sequence[ChangeEvent]) -> None:
        if self.fail:
            raise QueueUnavailable(self.fail)
        bodies = [e.to_json().encode("utf-8") for e in events]
        self.events.extend(events)
        self.bodies.extend(bodies)

    def clear(self) -> None:
        self.events.clear()
        self.bodies.clear()


@pytest.fixture
def fake_queue() -> FakeQueue:
    return FakeQueue()


@pytest.fixture
def fixtures_dir() -> Path:
    return FIXTURES


@pytest.fixture
def load_json() -> Callable[[str], object]:
    """``load_json("notifications/list_add_member.json")``: a fixture file, parsed."""
    return lambda relative: json.loads((FIXTURES / relative).read_bytes())


@pytest.fixture
def app_container():
    """Installs a process-wide container built from the given settings (and optionally a queue);
    the real one is dropped again afterwards, so no test sees another's wiring."""
    from shared import bootstrap
    from shared.adapters.settings import Settings

    def install(env: Mapping[str, str] | None = None, queue=None):
        container = bootstrap.Container(Settings.from_env(dict(env or {})))
        if queue is not None:
            container.set_event_queue(queue)
        bootstrap.reset_container(container)
        return container

    yield install
    bootstrap.reset_container(None)


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
