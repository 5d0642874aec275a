"""Mappings: which Outbound lists stand for which Real-time topics, per brand.

Two forms: the *file* an administrator writes (names or ids, see docs/mappings.md), and the
*resolved* mappings the sync uses (ids only, validated against Dataverse, with the indexes the
planner needs). Parsing and resolving are pure: the catalog of lists, topics and purposes is
passed in, so an unknown name is an error naming it and nothing is half-imported.
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Literal

from shared.domain.consent import EMAIL_COLUMNS
from shared.domain.model import MemberTable, Purpose, SubscriptionList, Topic

Mode = Literal["single-brand", "multi-brand"]
MODES = ("single-brand", "multi-brand")
_GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


class MappingsError(ValueError):
    """The mappings file is invalid; the message names every problem found."""

    def __init__(self, problems: list[str]):
        super().__init__("; ".join(problems))
        self.problems = problems


# --- the file form -----------------------------------------------------------------------------

@dataclass(frozen=True)
class ListSpec:
    list: str  # name or id
    topic: str  # name or id
    shared: bool = False  # the list or the topic is in another pair too, on purpose


@dataclass(frozen=True)
class BrandSpec:
    name: str
    purposes: tuple[str, ...]
    opt_out_list: str | None
    lists: tuple[ListSpec, ...]


@dataclass(frozen=True)
class MappingsSpec:
    mode: Mode
    email_attributes: tuple[str, ...]
    brands: tuple[BrandSpec, ...]


def parse_mappings_file(doc: Any) -> MappingsSpec:
    """Checks the shape of a mappings file; raises MappingsError listing every problem."""
    problems: list[str] = []
    if not isinstance(doc, dict):
        raise MappingsError(["the mappings file must be a JSON object"])
    unknown = set(doc) - {"mode", "email_attributes", "brands"}
    if unknown:
        problems.append(f"unknown field(s) {', '.join(sorted(unknown))}")
    mode = doc.get("mode")
    if mode not in MODES:
        problems.append(f"mode must be 'single-brand' or 'multi-brand', got {mode!r}")
    email_attributes = doc.get("email_attributes", list(EMAIL_COLUMNS))
    if (not isinstance(email_attributes, list) or not email_attributes
            or any(a not in EMAIL_COLUMNS for a in email_attributes)):
        problems.append(f"email_attributes must be a non-empty list drawn from {', '.join(EMAIL_COLUMNS)}")
        email_attributes = list(EMAIL_COLUMNS)
    brands_raw = doc.get("brands")
    brands: list[BrandSpec] = []
    if not isinstance(brands_raw, list) or not brands_raw:
        problems.append("brands must be a non-empty list")
        brands_raw = []
    for i, b in enumerate(brands_raw):
        where = f"brands[{i}]"
        if not isinstance(b, dict):
            problems.append(f"{where} must be an object")
            continue
        name = b.get("name")
        if not isinstance(name, str) or not name.strip():
            problems.append(f"{where}.name must be a non-empty string")
            name = f"#{i}"
        where = f"brand {name!r}"
        extra = set(b) - {"name", "purposes", "opt_out_list", "lists"}
        if extra:
            problems.append(f"{where}: unknown field(s) {', '.join(sorted(extra))}")
        purposes = b.get("purposes")
        if not isinstance(purposes, list) or not purposes or not all(isinstance(p, str) and p.strip() for p in purposes):
            problems.append(f"{where}: purposes must be a non-empty list of purpose names or ids")
            purposes = []
        opt_out = b.get("opt_out_list")
        if opt_out is not None and (not isinstance(opt_out, str) or not opt_out.strip()):
            problems.append(f"{where}: opt_out_list must be a list name, id or null")
            opt_out = None
        lists_raw = b.get("lists", [])
        lists: list[ListSpec] = []
        if not isinstance(lists_raw, list):
            problems.append(f"{where}: lists must be a list of {{\"list\": ..., \"topic\": ...}}")
            lists_raw = []
        for j, m in enumerate(lists_raw):
            if (not isinstance(m, dict) or not {"list", "topic"} <= set(m) <= {"list", "topic", "shared"}
                    or not all(isinstance(m[k], str) and m[k].strip() for k in ("list", "topic"))
                    or not isinstance(m.get("shared", False), bool)):
                problems.append(f"{where}: lists[{j}] must be {{\"list\": name or id, \"topic\": name or id}}"
                                " (and optionally \"shared\": true)")
                continue
            lists.append(ListSpec(m["list"].strip(), m["topic"].strip(), m.get("shared", False)))
        brands.append(BrandSpec(name.strip(), tuple(p.strip() for p in purposes), opt_out.strip() if opt_out else None,
                                tuple(lists)))
    names = [b.name.lower() for b in brands]
    if len(set(names)) != len(names):
        problems.append("brand names must be unique")
    if mode == "single-brand" and len(brands) > 1:
        problems.append("single-brand mode takes exactly one brand; use multi-brand for several")
    if problems:
        raise MappingsError(problems)
    return MappingsSpec(mode, tuple(email_attributes), tuple(brands))


# --- the resolved form -------------------------------------------------------------------------

@dataclass(frozen=True)
class ListTopic:
    list_id: str
    list_name: str
    member_table: MemberTable
    topic_id: str
    topic_name: str
    purpose_id: str  # the topic's purpose: a topic consent row must name it


@dataclass(frozen=True)
class OptOutList:
    list_id: str
    list_name: str
    member_table: MemberTable


@dataclass(frozen=True)
class Brand:
    name: str
    purposes: tuple[Purpose, ...]
    opt_out_list: OptOutList | None
    lists: tuple[ListTopic, ...]

    @property
    def purpose_ids(self) -> frozenset[str]:
        return frozenset(p.id for p in self.purposes)

    @property
    def list_ids(self) -> frozenset[str]:
        return frozenset(m.list_id for m in self.lists)


@dataclass(frozen=True)
class Mappings:
    mode: Mode
    email_columns: tuple[str, ...]
    brands: tuple[Brand, ...]
    # Indexes for the planner, derived once.
    topics_of_list: dict[str, tuple[ListTopic, ...]] = field(init=False, repr=False, compare=False)
    lists_of_topic: dict[str, frozenset[str]] = field(init=False, repr=False, compare=False)
    purpose_of_topic: dict[str, str] = field(init=False, repr=False, compare=False)
    brands_of_purpose: dict[str, tuple[Brand, ...]] = field(init=False, repr=False, compare=False)
    brand_of_opt_out_list: dict[str, Brand] = field(init=False, repr=False, compare=False)
    member_table_of_list: dict[str, MemberTable] = field(init=False, repr=False, compare=False)
    covered_purposes: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        topics_of_list: dict[str, list[ListTopic]] = {}
        lists_of_topic: dict[str, set[str]] = {}
        brands_of_purpose: dict[str, list[Brand]] = {}
        member_table: dict[str, MemberTable] = {}
        for b in self.brands:
            for m in b.lists:
                topics_of_list.setdefault(m.list_id, []).append(m)
                lists_of_topic.setdefault(m.topic_id, set()).add(m.list_id)
                member_table[m.list_id] = m.member_table
            for p in b.purposes:
                brands_of_purpose.setdefault(p.id, []).append(b)
            if b.opt_out_list:
                member_table[b.opt_out_list.list_id] = b.opt_out_list.member_table
        put = object.__setattr__
        put(self, "topics_of_list", {k: tuple(v) for k, v in topics_of_list.items()})
        put(self, "lists_of_topic", {k: frozenset(v) for k, v in lists_of_topic.items()})
        put(self, "purpose_of_topic", {m.topic_id: m.purpose_id for b in self.brands for m in b.lists})
        put(self, "brands_of_purpose", {k: tuple(v) for k, v in brands_of_purpose.items()})
        put(self, "brand_of_opt_out_list", {b.opt_out_list.list_id: b for b in self.brands if b.opt_out_list})
        put(self, "member_table_of_list", member_table)
        put(self, "covered_purposes", frozenset(p.id for b in self.brands for p in b.purposes))

    @property
    def relevant_lists(self) -> frozenset[str]:
        """Every list whose membership a rule reads or writes."""
        return frozenset(self.member_table_of_list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": 1,
            "mode": self.mode,
            "email_attributes": list(self.email_columns),
            "brands": [{
                "name": b.name,
                "purposes": [{"id": p.id, "name": p.name} for p in b.purposes],
                "opt_out_list": None if not b.opt_out_list else {
                    "id": b.opt_out_list.list_id, "name": b.opt_out_list.list_name,
                    "member_table": b.opt_out_list.member_table},
                "lists": [{"list_id": m.list_id, "list": m.list_name, "member_table": m.member_table,
                           "topic_id": m.topic_id, "topic": m.topic_name, "purpose_id": m.purpose_id}
                          for m in b.lists],
            } for b in self.brands],
        }

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> "Mappings":
        return cls(
            mode=doc["mode"],
            email_columns=tuple(doc["email_attributes"]),
            brands=tuple(Brand(
                name=b["name"],
                purposes=tuple(Purpose(p["id"], p["name"]) for p in b["purposes"]),
                opt_out_list=None if not b["opt_out_list"] else OptOutList(
                    b["opt_out_list"]["id"], b["opt_out_list"]["name"], b["opt_out_list"]["member_table"]),
                lists=tuple(ListTopic(m["list_id"], m["list"], m["member_table"], m["topic_id"], m["topic"],
                                      m["purpose_id"]) for m in b["lists"]),
            ) for b in doc["brands"]),
        )

    def to_file(self) -> dict[str, Any]:
        """The file form (by name), as ``mappings export`` writes it; it imports back unchanged."""
        return {
            "mode": self.mode,
            "email_attributes": list(self.email_columns),
            "brands": [{"name": b.name, "purposes": [p.name for p in b.purposes],
                        "opt_out_list": b.opt_out_list.list_name if b.opt_out_list else None,
                        "lists": [{"list": m.list_name, "topic": m.topic_name,
                                   **({"shared": True} if self._is_shared(m) else {})} for m in b.lists]}
                       for b in self.brands],
        }

    def _is_shared(self, m: ListTopic) -> bool:
        """The pair's list is on another topic, or its topic on another list (imported as intended)."""
        return len(self.topics_of_list.get(m.list_id, ())) > 1 or len(self.lists_of_topic.get(m.topic_id, ())) > 1


def resolve_mappings(spec: MappingsSpec, lists: Iterable[SubscriptionList], topics: Iterable[Topic],
                     purposes: Iterable[Purpose]) -> Mappings:
    """Names and ids to catalog rows; raises MappingsError naming every unknown or ambiguous one."""
    problems: list[str] = []
    find_list = _finder("list", lists, problems)
    find_topic = _finder("topic", topics, problems)
    find_purpose = _finder("purpose", purposes, problems)
    brands: list[Brand] = []
    for b in spec.brands:
        where = f"brand {b.name!r}"
        brand_purposes = [p for p in (find_purpose(ref, where) for ref in b.purposes) if p]
        opt_out: OptOutList | None = None
        if b.opt_out_list:
            row = find_list(b.opt_out_list, where)
            if row is not None:
                if row.member_table is None:
                    problems.append(f"{where}: opt-out list {row.name!r} holds neither contacts nor leads")
                else:
                    opt_out = OptOutList(row.id, row.name, row.member_table)
        mapped: list[ListTopic] = []
        for m in b.lists:
            row, topic = find_list(m.list, where), find_topic(m.topic, where)
            if row is None or topic is None:
                continue
            if row.member_table is None:
                problems.append(f"{where}: list {row.name!r} holds neither contacts nor leads")
                continue
            if not topic.purpose_id:
                problems.append(f"{where}: topic {topic.name!r} has no purpose")
                continue
            if opt_out and row.id == opt_out.list_id:
                problems.append(f"{where}: list {row.name!r} is both a mapped list and the opt-out list")
                continue
            mapped.append(ListTopic(row.id, row.name, row.member_table, topic.id, topic.name, topic.purpose_id))
        brands.append(Brand(b.name, tuple(brand_purposes), opt_out, tuple(mapped)))
    if not problems:
        problems.extend(_pairing_problems(spec, brands))
    if problems:
        raise MappingsError(problems)
    return Mappings(spec.mode, spec.email_attributes, tuple(brands))


def _pairing_problems(spec: MappingsSpec, brands: list[Brand]) -> list[str]:
    """The mistakes a careful person still makes: the same pair twice, a list on two topics or a
    topic on two lists without saying so (``"shared": true`` on each such pair), and, with several
    brands, a topic of a purpose that belongs to another brand (its opt-outs would reach the
    wrong brand's lists)."""
    problems: list[str] = []
    pairs = [(b, m, ls.shared) for b, bs in zip(brands, spec.brands) for m, ls in zip(b.lists, bs.lists)]
    seen: set[tuple[str, str]] = set()
    for b, m, _ in pairs:
        if (m.list_id, m.topic_id) in seen:
            problems.append(f"brand {b.name!r}: list {m.list_name!r} and topic {m.topic_name!r} are paired twice; "
                            "remove the repeat")
        seen.add((m.list_id, m.topic_id))
    for key, other, what, others in (("list_id", "topic_name", "list", "topics"),
                                     ("topic_id", "list_name", "topic", "lists")):
        groups: dict[str, list[tuple[Brand, ListTopic, bool]]] = {}
        for pair in pairs:
            groups.setdefault(getattr(pair[1], key), []).append(pair)
        for group in groups.values():
            names = sorted({getattr(m, other) for _, m, _ in group})
            if len(names) > 1 and not all(shared for _, _, shared in group):
                m = group[0][1]
                name = m.list_name if what == "list" else m.topic_name
                problems.append(f"{what} {name!r} is paired with {len(names)} {others} "
                                f"({', '.join(repr(n) for n in names)}); if that is intended, add "
                                f"\"shared\": true to each of these pairs, else keep one")
    if spec.mode == "multi-brand":
        owner = {p.id: b for b in brands for p in b.purposes}
        for b, m, _ in pairs:
            theirs = owner.get(m.purpose_id)
            if m.purpose_id not in b.purpose_ids and theirs is not None:
                purpose = next(p.name for p in theirs.purposes if p.id == m.purpose_id)
                problems.append(f"brand {b.name!r}: topic {m.topic_name!r} is of purpose {purpose!r}, which belongs "
                                f"to brand {theirs.name!r}; map it there, or pick a topic of this brand's purposes")
    return problems


def _finder(kind: str, rows: Iterable[Any], problems: list[str]):
    rows = list(rows)
    by_id = {r.id.lower(): r for r in rows}
    by_name: dict[str, list[Any]] = {}
    for r in rows:
        by_name.setdefault(r.name.strip().lower(), []).append(r)

    def find(ref: str, where: str) -> Any:
        if _GUID.match(ref) and ref.lower() in by_id:
            return by_id[ref.lower()]
        found = by_name.get(ref.strip().lower(), [])
        if len(found) == 1:
            return found[0]
        if not found:
            close = difflib.get_close_matches(ref.strip().lower(), list(by_name), n=1, cutoff=0.8)
            hint = f" (did you mean {by_name[close[0]][0].name.strip()!r}?)" if close else ""
            problems.append(f"{where}: unknown {kind} {ref!r}{hint}")
        else:
            problems.append(f"{where}: {kind} name {ref!r} is ambiguous ({len(found)} rows); use its id")
        return None

    return find
