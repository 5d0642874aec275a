"""Administrative use cases shared by the CLI and the local host: mappings import and export.

Import is all-or-nothing: the file is checked, every name is resolved against Dataverse, and
only a fully resolved document is stored (one Table Storage transaction).
"""
from __future__ import annotations

from typing import Any, Protocol

from shared.domain.mappings import Mappings, parse_mappings_file, resolve_mappings
from shared.domain.model import Purpose, SubscriptionList, Topic


class Catalog(Protocol):
    """The Dataverse reference data a mappings file names."""

    def marketing_lists(self, subscription_only: bool = False) -> list[SubscriptionList]: ...

    def topics(self) -> list[Topic]: ...

    def purposes(self) -> list[Purpose]: ...


class MappingsDocuments(Protocol):
    def save(self, document: dict) -> None: ...

    def load(self) -> dict | None: ...


def import_mappings(doc: Any, catalog: Catalog, store: MappingsDocuments | None) -> Mappings:
    """Validates and resolves ``doc``; stores it unless ``store`` is None (a dry run)."""
    spec = parse_mappings_file(doc)
    mappings = resolve_mappings(spec, catalog.marketing_lists(), catalog.topics(), catalog.purposes())
    if store is not None:
        store.save(mappings.to_dict())
    return mappings


def export_mappings(store: MappingsDocuments) -> dict | None:
    """The stored mappings in file form (by name), or None when nothing was imported."""
    doc = store.load()
    return Mappings.from_dict(doc).to_file() if doc else None


def summary(m: Mappings) -> str:
    lists = sum(len(b.lists) for b in m.brands)
    opt_out = sum(1 for b in m.brands if b.opt_out_list)
    return (f"{m.mode}: {len(m.brands)} brand(s), {lists} list-topic pair(s), "
            f"{len(m.covered_purposes)} purpose(s), {opt_out} opt-out list(s)")
