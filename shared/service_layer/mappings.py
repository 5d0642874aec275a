"""Mappings as the administrator handles them: import (all-or-nothing), export, and what changed.

Import checks the file, resolves every name against Dataverse, and stores only a fully resolved
document (one Table Storage transaction).
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


def mappings_changes(old: Mappings | None, new: Mappings) -> list[str]:
    """What importing ``new`` changes against the stored ``old``, one line each (empty: nothing)."""
    if old is None:
        return ["first import: " + summary(new)]
    out: list[str] = []
    if old.mode != new.mode:
        out.append(f"mode {old.mode} -> {new.mode}")
    if old.email_columns != new.email_columns:
        out.append(f"email columns {', '.join(old.email_columns)} -> {', '.join(new.email_columns)}")
    before, after = {b.name.lower(): b for b in old.brands}, {b.name.lower(): b for b in new.brands}
    for key in before.keys() - after.keys():
        out.append(f"- brand {before[key].name!r} (and its {len(before[key].lists)} pair(s))")
    for key in after.keys() - before.keys():
        out.append(f"+ brand {after[key].name!r} with {len(after[key].lists)} pair(s)")
    for key in (k for k in after if k in before):
        a, b = before[key], after[key]
        where = f"[{b.name}]"
        purposes_a, purposes_b = {p.id: p.name for p in a.purposes}, {p.id: p.name for p in b.purposes}
        out += [f"{where} - purpose {purposes_a[i]!r}" for i in purposes_a.keys() - purposes_b.keys()]
        out += [f"{where} + purpose {purposes_b[i]!r}" for i in purposes_b.keys() - purposes_a.keys()]
        oo_a = a.opt_out_list.list_id if a.opt_out_list else None
        oo_b = b.opt_out_list.list_id if b.opt_out_list else None
        if oo_a != oo_b:
            def name(o: Any) -> str:
                return repr(o.list_name) if o else "none"

            out.append(f"{where} opt-out list {name(a.opt_out_list)} -> {name(b.opt_out_list)}")
        pairs_a = {(m.list_id, m.topic_id): m for m in a.lists}
        pairs_b = {(m.list_id, m.topic_id): m for m in b.lists}
        out += [f"{where} - {pairs_a[k].list_name!r} -> {pairs_a[k].topic_name!r}" for k in pairs_a if k not in pairs_b]
        out += [f"{where} + {pairs_b[k].list_name!r} -> {pairs_b[k].topic_name!r}" for k in pairs_b if k not in pairs_a]
    return out


def export_mappings(store: MappingsDocuments) -> dict | None:
    """The stored mappings in file form (by name), or None when nothing was imported."""
    doc = store.load()
    return Mappings.from_dict(doc).to_file() if doc else None


def summary(m: Mappings) -> str:
    lists = sum(len(b.lists) for b in m.brands)
    opt_out = sum(1 for b in m.brands if b.opt_out_list)
    return (f"{m.mode}: {len(m.brands)} brand(s), {lists} list-topic pair(s), "
            f"{len(m.covered_purposes)} purpose(s), {opt_out} opt-out list(s)")
