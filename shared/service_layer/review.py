"""One planned or failed change of a reconciliation, per record, for a person to review.

``reconcile --dry-run --changes FILE`` writes every change a healing run would make (one row per
record: drift class, rule, target system, table and id, the list/topic/purpose by name, value
before and after); ``runs show RUN`` lists the changes a run could not make. Addresses appear
only when asked for explicitly; otherwise each is replaced by a pseudonym, the first 16 hex digits
of the person's ledger key (HMAC of the normalised address under LEDGER_KEY), so rows of one
person group together and nobody can read the address back.
"""
from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

from shared.domain.mappings import Mappings
from shared.domain.model import WriteResult
from shared.domain.planner import Action, OptOutConsent
from shared.service_layer.evidence import describe

#: The columns of a review file, in order (CSV header, JSON keys).
COLUMNS = ("drift_class", "rule", "system", "table", "record_id", "change", "list", "topic", "purpose",
           "before", "after", "people", "status", "error")
FORMATS = ("csv", "json")
#: A cell starting with one of these is run as a formula by a spreadsheet (CSV injection): list,
#: topic and purpose names and error texts come from Dataverse, where anyone may have typed them.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def neutralised(value: Any) -> Any:
    """A CSV cell a spreadsheet shows as text: a leading ``'`` before a formula's first character."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value
PSEUDONYM_DIGITS = 16


def names_of(mappings: Mappings) -> dict[str, str]:
    """Id -> name of every list, topic and purpose the mappings name (all a planned action can touch)."""
    names: dict[str, str] = {}
    for b in mappings.brands:
        for p in b.purposes:
            names[p.id] = p.name
        for m in b.lists:
            names[m.list_id], names[m.topic_id] = m.list_name, m.topic_name
        if b.opt_out_list:
            names[b.opt_out_list.list_id] = b.opt_out_list.list_name
    return names


def pseudonymiser(partition_for: Callable[[str], str]) -> Callable[[str], str]:
    """The ledger's person key (``Ledger.partition_for``), shortened for a reviewer's eye."""
    return lambda email: partition_for(email)[:PSEUDONYM_DIGITS]


def describe_case(drift_class: str, action: Action, names: dict[str, str],
                  person: Callable[[str], str] | None = None, result: WriteResult | None = None) -> dict[str, Any]:
    """One change as plain values. ``person`` maps an address to what is shown (None: no people
    column at all, as in a stored run report)."""
    system, table, change, record_id, before, after = describe(action)
    list_id = getattr(action, "list_id", None)
    topic_id = getattr(action, "topic_id", None)
    purpose_id = getattr(action, "purpose_id", None)
    if list_id:
        change = change.replace(list_id, "").strip()  # "remove from list": the list has its own column
    elif isinstance(action, OptOutConsent):
        change = "opt out of topic" if topic_id else "opt out of purpose"
    emails = (action.email,) if isinstance(action, OptOutConsent) else action.emails
    return {
        "drift_class": drift_class, "rule": action.rule, "system": system, "table": table,
        "record_id": record_id or (result.id if result else None) or "(new row)", "change": change,
        "list": names.get(list_id, list_id) if list_id else None,
        "topic": names.get(topic_id, topic_id) if topic_id else None,
        "purpose": names.get(purpose_id, purpose_id) if purpose_id else None,
        "before": before, "after": after,
        "people": None if person is None else ";".join(sorted({person(e) for e in emails})),
        "status": None if result is None else ("ok" if result.ok else "failed"),
        "error": None if result is None or result.ok else f"{result.status or ''} {result.error_code or ''}".strip(),
    }


def format_for(path: str, requested: str | None) -> str:
    """The file format: as requested, else from the extension (.csv or .json)."""
    if requested:
        return requested
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix in FORMATS:
        return suffix
    raise ValueError(f"cannot tell the format of {path}: name it .csv or .json, or give --changes-format")


class CaseWriter:
    """Streams cases to a CSV or JSON file (a tenant's worth of changes is never held in memory)."""

    def __init__(self, stream: IO[str], fmt: str):
        if fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r} (csv or json)")
        self.fmt, self._out, self.count = fmt, stream, 0
        if fmt == "csv":
            # Every cell quoted: a carriage return inside a name stays inside its cell.
            self._csv = csv.DictWriter(stream, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n",
                                       quoting=csv.QUOTE_ALL)
            self._csv.writeheader()
        else:
            stream.write("[")

    def write(self, case: dict[str, Any]) -> None:
        if self.fmt == "csv":
            self._csv.writerow({k: ("" if case.get(k) is None else neutralised(case[k])) for k in COLUMNS})
        else:
            self._out.write(("," if self.count else "") + "\n  " + json.dumps({k: case.get(k) for k in COLUMNS},
                                                                               ensure_ascii=False))
        self.count += 1

    def close(self) -> None:
        if self.fmt == "json":
            self._out.write("\n]\n" if self.count else "]\n")


def write_cases(stream: IO[str], cases: Iterable[dict[str, Any]], fmt: str) -> int:
    writer = CaseWriter(stream, fmt)
    for c in cases:
        writer.write(c)
    writer.close()
    return writer.count
