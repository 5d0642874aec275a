"""Mapping discovery: which subscription list goes with which topic, by name, and which lists are
each brand's opt-out list; a proposal the administrator reviews, never stored by itself.
"""
from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from typing import Any

from shared.domain.model import Purpose, SubscriptionList, Topic


#: Words that name the container, not the subject: "Contoso Newsletter Subscription List" is about
#: "Contoso Newsletter". Longest first, so a phrase goes before its words.
STOP_PHRASES = ("newsletter subscription", "subscription list", "mailing list", "email list", "e mail list",
                "subscriptions", "subscription", "lists", "list", "mailing", "topic")
OPT_OUT_NAME = re.compile(r"opt[\s_-]*out|unsubscrib|suppress|do[\s_-]*not[\s_-]*(e[\s_-]*)?mail|blocklist", re.IGNORECASE)
DEFAULT_THRESHOLD = 0.8


def normalise_name(name: str) -> str:
    """Case, punctuation and container words removed; a name made only of those keeps its words."""
    text = re.sub(r"[\W_]+", " ", (name or "").lower().replace("&", " and ")).strip()
    stripped = text
    for phrase in STOP_PHRASES:
        stripped = re.sub(rf"\b{phrase}\b", " ", stripped)
    stripped = " ".join(stripped.split())
    return stripped or " ".join(text.split())


def name_score(list_name: str, topic_name: str) -> tuple[float, str]:
    """(score 0..1, why): 1.0 for the same name (what Microsoft's subscription-list migration
    creates), 0.99 for the same name after normalising, else the best difflib ratio of the
    normalised names as written and with their words sorted."""
    if list_name.strip().lower() == topic_name.strip().lower():
        return 1.0, "same name (subscription-list migration)"
    a, b = normalise_name(list_name), normalise_name(topic_name)
    if a and a == b:
        return 0.99, "same name after normalising"
    ratio = max(difflib.SequenceMatcher(None, a, b).ratio(),
                difflib.SequenceMatcher(None, " ".join(sorted(a.split())), " ".join(sorted(b.split()))).ratio())
    return round(ratio, 3), f"similar name ({ratio:.2f})"


def discover_mappings(lists: Sequence[SubscriptionList], topics: Sequence[Topic], purposes: Sequence[Purpose],
                      mode: str | None = None, threshold: float = DEFAULT_THRESHOLD) -> dict[str, Any]:
    """Proposes list-to-topic pairs and brands (one per purpose of the matched topics).

    Pure. Pairs are one-to-one, best score first; ties go to the names in alphabetical order so the
    proposal is stable. Lists named like an opt-out list are never paired; in multi-brand mode one
    whose name contains the brand's first word becomes that brand's opt-out list.
    """
    purpose_by_id = {p.id: p for p in purposes}
    usable = [l for l in lists if l.active and l.member_table]
    opt_out_candidates = [l for l in usable if OPT_OUT_NAME.search(l.name)]
    candidates = [l for l in usable if l.is_subscription and l not in opt_out_candidates]
    usable_topics = [t for t in topics if t.purpose_id in purpose_by_id]
    scored = []
    for l in candidates:
        for t in usable_topics:
            score, why = name_score(l.name, t.name)
            if score >= threshold:
                scored.append((-score, l.name.lower(), t.name.lower(), l.id, t.id, score, why))
    scored.sort()
    list_by_id, topic_by_id = {l.id: l for l in candidates}, {t.id: t for t in usable_topics}
    taken_lists: set[str] = set()
    taken_topics: set[str] = set()
    matched = []
    for *_, list_id, topic_id, score, why in scored:
        if list_id in taken_lists or topic_id in taken_topics:
            continue
        taken_lists.add(list_id)
        taken_topics.add(topic_id)
        matched.append((list_by_id[list_id], topic_by_id[topic_id], score, why))
    brand_purposes = sorted({t.purpose_id for _, t, _, _ in matched}, key=lambda p: purpose_by_id[p].name.lower())
    if mode is None:
        mode = "multi-brand" if len(brand_purposes) > 1 else "single-brand"
    ref = _referrer(lists, topics, purposes)
    brands: list[dict[str, Any]] = []
    opt_out_lists: list[dict[str, Any]] = []
    if mode == "single-brand" and brand_purposes:
        groups = [(" + ".join(purpose_by_id[p].name for p in brand_purposes), brand_purposes)]
    else:
        groups = [(purpose_by_id[p].name, [p]) for p in brand_purposes]
    pairs_out = []
    for brand_name, purpose_ids in groups:
        opt_out = None
        if mode == "multi-brand":
            first_word = (normalise_name(brand_name).split() or [""])[0]
            found = [l for l in opt_out_candidates if first_word and first_word in normalise_name(l.name).split()]
            if len(found) == 1:
                opt_out = found[0]
                opt_out_lists.append({"brand": brand_name, "list": opt_out.name, "list_id": opt_out.id})
        brand_pairs = sorted((m for m in matched if m[1].purpose_id in purpose_ids), key=lambda m: m[0].name.lower())
        for l, t, score, why in brand_pairs:
            pairs_out.append({"brand": brand_name, "list": l.name, "list_id": l.id, "topic": t.name, "topic_id": t.id,
                              "score": score, "why": why})
        brands.append({"name": brand_name, "purposes": [ref("purpose", purpose_by_id[p]) for p in purpose_ids],
                       "opt_out_list": ref("list", opt_out) if opt_out else None,
                       "lists": [{"list": ref("list", l), "topic": ref("topic", t)} for l, t, _, _ in brand_pairs]})
    used_opt_out = {o["list_id"] for o in opt_out_lists}
    return {
        "mode": mode,
        "threshold": threshold,
        "matched": pairs_out,
        "opt_out_lists": opt_out_lists,
        "unmatched_lists": sorted((l.name for l in candidates if l.id not in taken_lists), key=str.lower),
        "unmatched_topics": sorted((t.name for t in usable_topics if t.id not in taken_topics), key=str.lower),
        "unused_opt_out_lists": sorted((l.name for l in opt_out_candidates if l.id not in used_opt_out), key=str.lower),
        "mappings": {"mode": mode, "brands": brands} if brands else None,
    }


def _referrer(lists: Sequence[Any], topics: Sequence[Any], purposes: Sequence[Any]):
    """A row's name when the name is unique in its catalog (what a reviewer reads), else its id."""
    counts: dict[tuple[str, str], int] = {}
    for kind, rows in (("list", lists), ("topic", topics), ("purpose", purposes)):
        for r in rows:
            key = (kind, r.name.strip().lower())
            counts[key] = counts.get(key, 0) + 1

    def ref(kind: str, row: Any) -> str:
        return row.name if counts.get((kind, row.name.strip().lower())) == 1 and row.name.strip() else row.id

    return ref
