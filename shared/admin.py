"""Administrative use cases shared by the CLI and the local host: mappings (import, export,
discovery), webhook registration and status, explaining one person's state, and the doctor's checks.

Import is all-or-nothing: the file is checked, every name is resolved against Dataverse, and
only a fully resolved document is stored (one Table Storage transaction).
"""
from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Sequence
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


# --- webhook registration: the steps the sync needs ------------------------------------------

def sync_steps(email_columns: tuple[str, ...] | list[str] = ("emailaddress1", "emailaddress2", "emailaddress3")):
    """One step per message and table a rule reacts to, with the columns its event needs."""
    from shared.adapters.dataverse.webhooks import StepSpec
    from shared.domain.consent import OPT_OUT_FLAGS

    member_columns = (*email_columns, *OPT_OUT_FLAGS)
    consent_columns = ("msdynmkt_contactpointvalue", "msdynmkt_contactpointtype", "msdynmkt_contactpointconsenttype",
                       "msdynmkt_value", "msdynmkt_purposeid", "msdynmkt_topicid", "msdynmkt_source", "msdynmkt_reason")
    steps = []
    for table in ("contact", "lead"):
        steps += [StepSpec("Create", table, image_attributes=member_columns),
                  StepSpec("Update", table, filtering_attributes=member_columns, image_attributes=member_columns),
                  StepSpec("Delete", table)]
    from shared.domain.consent import CONSENT_TABLE as consent
    steps += [StepSpec("Create", consent, image_attributes=consent_columns),
              StepSpec("Update", consent, filtering_attributes=("msdynmkt_value", "msdynmkt_contactpointvalue"),
                       image_attributes=consent_columns)]
    # Membership changes reach the sync through the list's own messages: Dataverse refuses N:N
    # Associate/Disassociate on list members, so no (org-wide, unfilterable) Associate step is needed.
    steps += [StepSpec(m, "list") for m in ("AddMember", "AddListMembers", "RemoveMember")]
    return steps


WEBHOOK_NAME = "Straddle"


#: The header Azure Functions reads a function key from (the other place is ?code=).
FUNCTION_KEY_HEADER = "x-functions-key"


def register_webhooks(client: Any, url: str, *, function_key: str | None = None, secret_header: str | None = None,
                      secret: str | None = None, email_columns: tuple[str, ...] | None = None,
                      name: str = WEBHOOK_NAME) -> Any:
    """Registers (idempotently) the service endpoint and every step the sync needs.

    ``dataverse_webhook`` takes a function key, so the key is always sent; with a shared secret
    configured (WEBHOOK_SECRET_HEADER and WEBHOOK_SECRET, as infra/ sets them) both go as HttpHeader
    auth (the key in x-functions-key), else the key alone as Dataverse's WebhookKey (?code=).
    """
    if not function_key:
        raise ValueError("the function key of dataverse_webhook is needed to register the webhook")
    steps = sync_steps(email_columns) if email_columns else sync_steps()
    if secret_header and secret:
        return client.register_webhook(url, name=name, auth="HttpHeader",
                                       auth_value={FUNCTION_KEY_HEADER: function_key, secret_header: secret},
                                       steps=steps)
    return client.register_webhook(url, name=name, auth="WebhookKey", auth_value=function_key, steps=steps)


def webhook_changes(status: dict[str, Any], url: str, auth: str) -> list[dict[str, str]]:
    """What ``register_webhooks`` would change, from ``webhook_status`` of the endpoint by name
    (as register finds it): each a dict with action (create/update/leave), what and detail."""
    out: list[dict[str, str]] = []
    e = status["endpoint"]
    if e is None:
        out.append({"action": "create", "what": f"endpoint {WEBHOOK_NAME}", "detail": f"{url.split('?')[0]} ({auth})"})
    else:
        moved = (e["url"] or "").rstrip("/").lower() != url.split("?")[0].rstrip("/").lower()
        out.append({"action": "update", "what": f"endpoint {e['name']}",
                    "detail": (f"URL {e['url']} -> {url.split('?')[0]}; " if moved else "")
                    + f"authentication rewritten ({auth}; a key cannot be read back to compare)"})
    with_image = {f"{sp.message} {sp.table or '(any table)'}" for sp in sync_steps() if sp.image_attributes}
    for s in status["steps"]:
        if s["state"] == "missing":
            out.append({"action": "create", "what": f"step {s['step']}",
                        "detail": "with its image" if s["step"] in with_image else ""})
        elif s["state"] == "attribute mismatch":
            out.append({"action": "update", "what": f"step {s['step']}", "detail": s["detail"] or ""})
        elif s["state"] == "disabled":
            out.append({"action": "leave", "what": f"step {s['step']}",
                        "detail": "disabled: register does not enable it; enable it in Dataverse if it should run"})
    return out


# --- webhook status ----------------------------------------------------------------------------

def _step_key(message: str | None, table: str | None) -> tuple[str, str | None]:
    from shared.domain.events import LIST_MESSAGE_ALIASES

    message = LIST_MESSAGE_ALIASES.get(message or "", message or "")
    return (message.lower(), (table or None) and table.lower())


def webhook_status(client: Any, url: str | None = None, *, name: str = WEBHOOK_NAME,
                   email_columns: tuple[str, ...] | None = None, secret_header: str | None = None) -> dict[str, Any]:
    """What is registered under ``url`` (or the endpoint name) against what the sync needs.

    Each needed step is ``registered``, ``missing``, ``disabled`` or ``attribute mismatch``
    (filtering or image columns differ from what the events need); ``ok`` only when all are
    registered. The endpoint URL is shown without its query string (it may hold a key).
    """
    from shared.adapters.dataverse.webhooks import _attrs

    needed = sync_steps(email_columns) if email_columns else sync_steps()
    found = client.webhook_registrations(url or name)
    if url:
        found = [r for r in found if (r.url or "").rstrip("/").lower() == url.rstrip("/").lower()] or found
    endpoint = found[0] if found else None
    by_key = {_step_key(s.message, s.table): s for s in (endpoint.steps if endpoint else ())}
    steps = []
    for spec in needed:
        label = f"{spec.message} {spec.table or '(any table)'}"
        got = by_key.pop(_step_key(spec.message, spec.table), None)
        problems = []
        if got is None:
            state = "missing"
        elif not got.enabled:
            state = "disabled"
        else:
            if spec.message == "Update" and tuple(got.filtering_attributes) != _attrs(",".join(spec.filtering_attributes)):
                problems.append("filtering attributes differ")
            if spec.image_attributes:
                image = {k.lower(): v for k, v in got.images.items()}.get(spec.image_alias.lower())
                if image is None:
                    problems.append(f"image {spec.image_alias} missing")
                elif tuple(image) != _attrs(",".join(spec.image_attributes)):
                    problems.append(f"image {spec.image_alias} attributes differ")
            state = "attribute mismatch" if problems else "registered"
        steps.append({"step": label, "message": spec.message, "table": spec.table, "state": state,
                      "detail": "; ".join(problems) or None})
    extra = [f"{s.message} {s.table or '(any table)'}" for s in by_key.values()]
    auth_problem = None if endpoint is None else registration_auth_problem(
        endpoint.auth_type, endpoint.auth_names, (secret_header or "").lower() or None)
    return {
        "ok": endpoint is not None and auth_problem is None and all(s["state"] == "registered" for s in steps),
        "auth_problem": auth_problem,
        "endpoint": None if endpoint is None else {
            "id": endpoint.endpoint_id, "name": endpoint.name, "url": (endpoint.url or "").split("?")[0] or None,
            "auth_type": {4: "WebhookKey", 5: "HttpHeader", 6: "HttpQueryString"}.get(endpoint.auth_type,
                                                                                      endpoint.auth_type)},
        "endpoints_found": len(found),
        "steps": steps,
        "extra_steps": extra,
    }


def registration_auth_problem(auth_type: int | None, names: tuple[str, ...] | None,
                              secret_header: str | None) -> str | None:
    """Why a registration cannot authenticate against the app's settings, or None if it can.

    The function always needs its key; with a shared secret configured the secret header too.
    """
    if auth_type == 4:  # WebhookKey: ?code= only
        return (f"Dataverse sends only the function key, but the app also requires the {secret_header} header"
                if secret_header else None)
    if auth_type not in (5, 6):
        return f"auth type {auth_type} is not one Straddle registers (WebhookKey or HttpHeader)"
    if names is None:
        return "the registration does not record which headers it sends (registered by an older version)"
    if auth_type == 6 and secret_header:
        return f"the secret goes in the query string, but the app reads it from the {secret_header} header"
    key_name = FUNCTION_KEY_HEADER if auth_type == 5 else "code"
    missing = [n for n in (key_name, secret_header) if n and n.lower() not in names]
    if missing:
        what = " and ".join("the function key" if m == key_name else f"the {m} header" for m in missing)
        return f"Dataverse does not send {what}: every notification would get 401 (and 401 is not retried)"
    return None


# --- mappings discovery --------------------------------------------------------------------------

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


# --- explain: one person in both worlds ----------------------------------------------------------

def _option_label(enum_cls: Any, value: int | None) -> str | None:
    if value is None:
        return None
    try:
        return enum_cls(value).name.replace("_", " ").capitalize()
    except ValueError:
        return str(value)


def _mask_others(text: str | None, email: str) -> str | None:
    """Free text as stored, with any address other than the one asked about masked."""
    from shared.telemetry import EMAIL, MASK

    if not text or "@" not in text:
        return text
    return EMAIL.sub(lambda m: m.group(0) if m.group(0).strip().lower() == email else MASK, text)


def explain(email: str, client: Any, mappings: Any, ledger: Any, gateway: Any = None,
            max_rounds: int = 5) -> dict[str, Any]:
    """The person's state in both systems, whether the rules hold for it, and their ledger.

    "Consistent" is decided by the sync's own planner over the same reads the event path makes
    (so the person's other addresses count too): what it would still change is listed as
    pending, and every mapped list, topic and purpose it touches is inconsistent.
    """
    from shared.domain.consent import EMAIL_COLUMNS, ConsentSource, ConsentType, ConsentValue, normalise_email
    from shared.domain.planner import (
        AddToOptOutList,
        OptOutConsent,
        RemoveFromList,
        SetDoNotBulkEmail,
        Trigger,
        effective_opt_outs,
    )

    e = normalise_email(email) or ""
    list_by_id = {l.id: l for l in client.marketing_lists()}
    topic_by_id = {t.id: t for t in client.topics()}
    purpose_by_id = {p.id: p for p in client.purposes()}
    mapped: dict[str, tuple[str, str]] = {}  # list id -> (role, brand)
    if mappings is not None:
        for b in mappings.brands:
            for m in b.lists:
                mapped[m.list_id] = (f"mapped to topic {m.topic_name!r}", b.name)
            if b.opt_out_list:
                mapped[b.opt_out_list.list_id] = ("opt-out list", b.name)

    def list_name(list_id: str) -> str:
        return list_by_id[list_id].name if list_id in list_by_id else list_id

    people: dict[str, list[dict[str, Any]]] = {"contact": [], "lead": []}
    for table in ("contact", "lead"):
        found = sorted(client.members_by_emails([e], table, EMAIL_COLUMNS), key=lambda m: m.id)
        memberships = client.lists_of_members([m.id for m in found], table) if found else {}
        for m in found:
            holding = [c for c in EMAIL_COLUMNS if normalise_email(m.emails.get(c)) == e]
            people[table].append({
                "table": table, "id": m.id, "active": m.active, "email_columns": holding,
                "other_addresses": len(m.contact_points(EMAIL_COLUMNS) - {e}),
                "donotbulkemail": m.donotbulkemail, "donotemail": m.donotemail,
                "lists": [{"id": lid, "name": list_name(lid), "mapped": lid in mapped,
                           "role": mapped.get(lid, (None, None))[0], "brand": mapped.get(lid, (None, None))[1]}
                          for lid in sorted(memberships.get(m.id, ()), key=list_name)],
            })
    rows = sorted(client.consent_rows([e]), key=lambda r: (r.modified_on or ""), reverse=True)
    eff_purposes, eff_topics = effective_opt_outs(rows)
    consent = [{
        "id": r.id, "type": _option_label(ConsentType, r.consent_type),
        "purpose": purpose_by_id[r.purpose_id].name if r.purpose_id in purpose_by_id else r.purpose_id,
        "topic": (topic_by_id[r.topic_id].name if r.topic_id in topic_by_id else r.topic_id) if r.topic_id else None,
        "value": _option_label(ConsentValue, r.value), "source": _option_label(ConsentSource, r.source),
        "reason": _mask_others(r.reason, e), "modified_on": r.modified_on, "active": r.active,
    } for r in rows]

    rules: list[dict[str, Any]] = []
    pending: list[dict[str, Any]] = []
    timeline: list[dict[str, Any]] = []
    elsewhere = 0
    complete = True
    if mappings is not None:
        gateway = gateway or _gateway(client)
        from shared.sync.engine import plan_in_rounds

        state, current, _, _ = plan_in_rounds(gateway, mappings, [Trigger("inspect_email", "explain", email=e)],
                                              max_rounds, history=getattr(ledger, "history", None))
        timeline = [_timeline_entry(r, purpose_by_id, topic_by_id, list_name) for r in current.reconsents if r.email == e]
        complete = current.complete
        mine = {k for k, m in state.members.items() if e in m.contact_points(mappings.email_columns)}
        touched: set[tuple[str, str]] = set()  # ("list"|"topic"|"purpose", id)
        for a in current.actions:
            if isinstance(a, OptOutConsent):
                if a.email != e:
                    elsewhere += 1
                    continue
                if a.topic_id:
                    touched.add(("topic", a.topic_id))
                    what = f"opt out of topic {topic_by_id.get(a.topic_id, Topic(a.topic_id, a.topic_id)).name!r}"
                else:
                    touched.add(("purpose", a.purpose_id))
                    what = f"opt out of purpose {purpose_by_id.get(a.purpose_id, Purpose(a.purpose_id, a.purpose_id)).name!r}"
                what += " (new row)" if a.row_id is None else f" (row {a.row_id})"
            elif a.member not in mine:
                elsewhere += 1
                continue
            elif isinstance(a, SetDoNotBulkEmail):
                touched.update(("purpose", p) for p in mappings.covered_purposes)
                what = f"set donotbulkemail on {a.member[0]} {a.member[1]}"
            elif isinstance(a, RemoveFromList):
                touched.add(("list", a.list_id))
                what = f"remove {a.member[0]} {a.member[1]} from list {list_name(a.list_id)!r}"
            elif isinstance(a, AddToOptOutList):
                touched.add(("list", a.list_id))
                what = f"add {a.member[0]} {a.member[1]} to opt-out list {list_name(a.list_id)!r}"
            else:  # pragma: no cover - the planner has no other action
                continue
            pending.append({"rule": a.rule, "action": what})
        members_in: dict[str, int] = {}
        for k in mine:
            for lid in state.lists_of.get(k, ()):
                members_in[lid] = members_in.get(lid, 0) + 1
        for b in mappings.brands:
            for m in b.lists:
                bad = ("list", m.list_id) in touched or ("topic", m.topic_id) in touched
                rules.append({"brand": b.name, "kind": "list-topic", "list": m.list_name, "topic": m.topic_name,
                              "topic_opted_out": m.topic_id in eff_topics, "members_in_list": members_in.get(m.list_id, 0),
                              "status": "inconsistent" if bad else "consistent"})
            for p in b.purposes:
                bad = ("purpose", p.id) in touched
                rules.append({"brand": b.name, "kind": "purpose", "purpose": p.name,
                              "purpose_opted_out": p.id in eff_purposes,
                              "status": "inconsistent" if bad else "consistent"})
            if b.opt_out_list:
                bad = ("list", b.opt_out_list.list_id) in touched
                rules.append({"brand": b.name, "kind": "opt-out list", "list": b.opt_out_list.list_name,
                              "members_in_list": members_in.get(b.opt_out_list.list_id, 0),
                              "status": "inconsistent" if bad else "consistent"})

    names = {**{i: f"list {l.name!r}" for i, l in list_by_id.items()},
             **{i: f"topic {t.name!r}" for i, t in topic_by_id.items()},
             **{i: f"purpose {p.name!r}" for i, p in purpose_by_id.items()}}
    history = [{
        "recorded_at": h.recorded_at, "rule": h.rule, "origin": h.origin_system, "event_id": h.origin_event_id,
        "target_system": h.target_system, "target_table": h.target_table, "target_id": h.target_id,
        "action": h.action, "action_named": named_action(h.action, names), "before": h.before, "after": h.after,
        "outcome": h.outcome, "detail": h.detail,
    } for h in ledger.history(e)] if ledger is not None else None
    return {
        "email": e,
        "contacts": people["contact"],
        "leads": people["lead"],
        "consent": consent,
        "mappings": None if mappings is None else mappings.mode,
        "consistent": None if mappings is None else (not pending and elsewhere == 0 and complete),
        "rules": rules,
        "pending": pending,
        "pending_elsewhere": elsewhere,  # on the person's other addresses or on people sharing them
        "closure_complete": complete,
        "timeline": timeline,  # the person's re-consents against the opt-outs that would overwrite them
        "ledger": history,
    }


_LEDGER_SUBJECT = re.compile(r"\b(list|topic|purpose) ([0-9a-fA-F-]{36})\b")


def named_action(action: str, names: dict[str, str]) -> str:
    """A ledger action with its list, topic or purpose named: "remove from list 'News'" for
    "remove from list <id>" (the id stays when Dataverse no longer has the row)."""
    return _LEDGER_SUBJECT.sub(lambda m: names.get(m.group(2).lower(), m.group(0)), action)


_WHY = {
    "stands": "the person opted in after every opt-out that would overwrite it: their newer choice stands "
              "(the Outbound side keeps its opt-out; clearing it is an operator's decision)",
    "opt-out newer": "an opt-out was given after the person opted in: the newer opt-out wins",
    "order unknown": "no evidence shows the person opted in after the opposing opt-out: the opt-out wins (the safe side)",
}


def _timeline_entry(r: Any, purpose_by_id: dict, topic_by_id: dict, list_name: Callable[[str], str]) -> dict[str, Any]:
    """One re-consent as explain shows it: the scope, when, and each opposing opt-out with its evidence."""
    from shared.domain.consent import ConsentSource

    purpose = purpose_by_id[r.purpose_id].name if r.purpose_id in purpose_by_id else r.purpose_id
    scope = (f"topic {topic_by_id[r.topic_id].name if r.topic_id in topic_by_id else r.topic_id!r} of {purpose!r}"
             if r.topic_id else f"purpose {purpose!r}")
    return {
        "scope": scope, "row_id": r.row_id, "reconsented_at": r.reconsented_at,
        "source": _option_label(ConsentSource, r.source), "rule": r.rule, "verdict": r.verdict, "why": _WHY[r.verdict],
        "against": [{"opt_out": _name_lists(j.against, list_name), "evidence": j.opt_out.evidence, "at": j.opt_out.at,
                     "dated": j.opt_out.exact, "remembered": j.remembered, "stands": j.stands}
                    for j in sorted(r.judgements, key=lambda j: j.against)],
    }


def _name_lists(root: str, list_name: Callable[[str], str]) -> str:
    """'opt-out list <id> contact <id>' with the list's name for the id."""
    words = root.split(" ")
    if words[0] in ("opt-out", "left") and len(words) > 2:
        words[2] = repr(list_name(words[2]))
    return " ".join(words)


def _gateway(client: Any) -> Any:
    from shared.adapters.sync_gateway import DataverseSyncGateway

    return DataverseSyncGateway(client)


# --- doctor --------------------------------------------------------------------------------------

#: The reads the sync makes, as (check name, entity set, key column).
DOCTOR_READS = (("read contacts", "contacts", "contactid"), ("read leads", "leads", "leadid"),
                ("read lists", "lists", "listid"),
                ("read consent rows", "msdynmkt_contactpointconsent4s", "msdynmkt_contactpointconsent4id"),
                ("read purposes", "msdynmkt_purposes", "msdynmkt_purposeid"),
                ("read topics", "msdynmkt_topics", "msdynmkt_topicid"))
#: Write probes: an update of a row that cannot exist. Dataverse answers 404 when the caller may
#: write the table and 403 when it may not; nothing is changed either way. A 404 proves the
#: table and the route, not the privilege on every row (business units, field security), so the
#: fix texts name the privileges to check.
DOCTOR_WRITES = (
    ("write consent rows", "PATCH", "msdynmkt_contactpointconsent4s({id})", {"msdynmkt_reason": "straddle doctor probe"},
     "grant the app user's security role Write on Contact Point Consent (msdynmkt_contactpointconsent4) and Create"),
    ("write contact flags", "PATCH", "contacts({id})", {"donotbulkemail": True},
     "grant the app user's security role Write on Contact (and Lead)"),
    # List membership is written only through the list's actions (Dataverse refuses $ref Associate on it).
    ("remove list members", "POST", "lists({id})/Microsoft.Dynamics.CRM.RemoveMemberList", {"EntityId": "{id2}"},
     "grant the app user's security role Write and Append To on Marketing List, Append on Contact and Lead"),
)


def _check(name: str, status: str, detail: str = "", fix: str = "") -> dict[str, Any]:
    return {"check": name, "status": status, "detail": detail, "fix": fix}


def _failure(exc: BaseException) -> str:
    """One line naming the failure without a message that could quote data."""
    return describe_failure(exc)[0]


LOCAL_STACK_HINT = "locally: start the stack with make keep"


def describe_failure(exc: BaseException, storage_url: str | None = None) -> tuple[str, str]:
    """(what failed, what to do) in the administrator's words, for the CLI's one-line errors and
    the doctor's checks. Never Dataverse's own message text: it can quote a filter value (an
    address); the request kind, status and error code say enough."""
    from shared.adapters.dataverse.errors import (DataverseAmbiguous, DataverseAuthError, DataverseBadRequest,
                                                  DataverseError, DataverseNotFound, DataverseThrottled,
                                                  DataverseUnavailable, DataverseUnreachable)
    from shared.adapters.settings import SettingsError

    if isinstance(exc, SettingsError):
        return str(exc), "fix the app setting named (environment or local.settings.json; see README 'Configuration')"
    if isinstance(exc, DataverseError):
        what = exc.kind or "a request"
        code = f", code {exc.code}" if exc.code else ""
        if isinstance(exc, DataverseUnreachable):
            return (f"cannot reach Dataverse at {exc.url} ({exc.reason})",
                    f"check DATAVERSE_URL and the network; {LOCAL_STACK_HINT}")
        if isinstance(exc, DataverseAuthError) and exc.status == 403:
            return (f"Dataverse denied {what} (HTTP 403{code})",
                    "the application user's security role lacks a privilege (docs/dataverse-setup.md)")
        if isinstance(exc, DataverseAuthError):
            got = f"rejected the token for {what} (HTTP {exc.status})" if exc.status else "gave no token"
            return (f"Dataverse {got}",
                    "check DATAVERSE_CLIENT_ID, DATAVERSE_TENANT_ID and DATAVERSE_CLIENT_SECRET (or the managed "
                    "identity); a static DATAVERSE_ACCESS_TOKEN may have expired")
        if isinstance(exc, DataverseThrottled):
            return (f"Dataverse kept throttling {what} (HTTP 429) past DATAVERSE_RETRY_BUDGET_SECONDS",
                    "try again later, or raise DATAVERSE_RETRY_BUDGET_SECONDS")
        if isinstance(exc, DataverseUnavailable):
            why = f"HTTP {exc.status}" if exc.status else "no answer in time"
            return (f"Dataverse failed {what} ({why}) until the retry budget ran out",
                    "try again later; check the environment's health (Power Platform admin center), "
                    "DATAVERSE_TIMEOUT_SECONDS and DATAVERSE_RETRY_BUDGET_SECONDS")
        if isinstance(exc, (DataverseNotFound, DataverseAmbiguous)) and exc.status is None:
            return exc.message, "check the name or id given"  # our own message, naming what was asked
        if isinstance(exc, DataverseNotFound):
            return (f"Dataverse has no {what} (HTTP 404{code})",
                    "check DATAVERSE_URL (the environment's URL) and that Customer Insights - Journeys is installed")
        if isinstance(exc, DataverseBadRequest):
            return f"Dataverse rejected {what} (HTTP {exc.status}{code})", "run with --verbose and check the input"
        return f"Dataverse failed {what}" + (f" (HTTP {exc.status}{code})" if exc.status else ""), ""
    module = type(exc).__module__
    if module.startswith("azure.") or isinstance(exc, ConnectionError):
        where = f"Table Storage at {storage_url}" if storage_url else "Azure storage"
        status = getattr(exc, "status_code", None)
        name = type(exc).__name__
        if name in ("ServiceRequestError", "ServiceRequestTimeoutError") or isinstance(exc, ConnectionError):
            return (f"cannot reach {where}",
                    f"check AzureWebJobsStorage (or AzureWebJobsStorage__tableServiceUri); {LOCAL_STACK_HINT}")
        if name == "ClientAuthenticationError" or status in (401, 403):
            return (f"{where} refused access" + (f" (HTTP {status})" if status else ""),
                    "check the account key in AzureWebJobsStorage, or the identity's 'Storage Table Data "
                    "Contributor' role")
        if name == "CredentialUnavailableError":
            return "no Azure identity is available to sign in with", "run az login, or set the connection strings"
        return (f"{where} failed" + (f" (HTTP {status})" if status else f" ({name})"),
                "try again; if it persists run with --verbose")
    return f"unexpected failure ({type(exc).__name__})", "run with --verbose; report it with the command you ran"


def _fix_unless_auth(exc: BaseException, auth_fix: str, also: type | None = None) -> str:
    """The check's own fix when Dataverse refused (a privilege, a user), else the failure's
    (an unreachable URL is not solved by adding an application user)."""
    from shared.adapters.dataverse.errors import DataverseAuthError

    if isinstance(exc, DataverseAuthError) or (also is not None and isinstance(exc, also)):
        return auth_fix
    return describe_failure(exc)[1]


def doctor(settings: Any, dataverse: Any, tables: Any, dead_letters: Any = None, *, webhook_url: str | None = None,
           settings_error: str | None = None, local_host: str | None = None) -> list[dict[str, Any]]:
    """Every check, in order; ``dataverse``, ``tables`` and ``dead_letters`` are callables that build
    the adapters (and may raise SettingsError). A check whose prerequisite failed is skipped.
    ``local_host``: the local Functions host stands in for Service Bus (STRADDLE_LOCAL_HOST)."""
    import uuid

    from shared.adapters.dataverse.errors import DataverseNotFound
    from shared.domain.mappings import Mappings

    checks: list[dict[str, Any]] = []
    if settings_error or settings is None:
        fix = "fix the app settings named (local.settings.json or the Function App's configuration)"
        if settings_error and "unresolved Key Vault reference" in settings_error:
            fix = ("grant the app's identity Key Vault Secrets User on the vault (infra/modules/access.bicep) or fix "
                   "the vault/secret name in the reference, wait for the role to take effect, restart the app "
                   "(az functionapp restart) and run doctor again")
        checks.append(_check("settings", "fail", settings_error or "settings could not be read", fix))
        return checks
    missing = []
    if not settings.dataverse_url:
        missing.append("DATAVERSE_URL")
    if not (settings.storage_connection_string or settings.storage_table_uri):
        missing.append("AzureWebJobsStorage")
    if not settings.ledger_key:
        missing.append("LEDGER_KEY")
    servicebus = bool(settings.servicebus_connection_string or settings.servicebus_namespace or local_host)
    if not servicebus:
        missing.append("ServiceBusConnection__fullyQualifiedNamespace")
    auth = ("static token" if settings.dataverse_access_token else
            "client secret" if settings.dataverse_client_secret else
            "managed identity" if settings.dataverse_client_id else "default Azure credential")
    if settings.dataverse_client_secret and not (settings.dataverse_client_id and settings.dataverse_tenant_id):
        missing.append("DATAVERSE_CLIENT_ID and DATAVERSE_TENANT_ID (with DATAVERSE_CLIENT_SECRET)")
    checks.append(_check("settings", "fail" if missing else "pass",
                         f"missing {', '.join(missing)}" if missing else f"all present; Dataverse auth: {auth}",
                         "set them in local.settings.json (Values) or the Function App's configuration; "
                         "see README 'Configuration'" if missing else ""))

    client = None
    try:
        client = dataverse()
        tokens = getattr(client, "_tokens", None)
        if tokens is not None:
            tokens.token()
        checks.append(_check("dataverse token", "pass", auth))
    except Exception as exc:
        checks.append(_check("dataverse token", "fail", _failure(exc), _fix_unless_auth(
            exc, "check DATAVERSE_CLIENT_ID/DATAVERSE_TENANT_ID/DATAVERSE_CLIENT_SECRET, or the managed "
                 "identity, and that the app registration exists in the tenant")))
        client = None
    if client is not None:
        try:
            user = client.who_am_i()
            checks.append(_check("whoami", "pass", f"application user {user}"))
        except Exception as exc:
            checks.append(_check("whoami", "fail", _failure(exc), _fix_unless_auth(
                exc, "add the app registration as an application user in the environment "
                     "(Power Platform admin center > Users > App users) and give it a security role")))
            client = None
    reads_ok = client is not None
    for name, entity_set, key in DOCTOR_READS:
        if client is None:
            checks.append(_check(name, "skip", "no Dataverse connection"))
            continue
        try:
            client.get_json(entity_set, {"$select": key, "$top": "1"})
            checks.append(_check(name, "pass"))
        except Exception as exc:
            reads_ok = False
            checks.append(_check(name, "fail", _failure(exc), _fix_unless_auth(
                exc, f"grant the app user's security role Read on {entity_set} (organization scope); "
                     "for consent rows, purposes and topics Customer Insights - Journeys must be installed",
                also=DataverseNotFound)))
    for name, method, path, body, fix in DOCTOR_WRITES:
        if client is None:
            checks.append(_check(name, "skip", "no Dataverse connection"))
            continue
        ids = {"id": str(uuid.uuid4()), "id2": str(uuid.uuid4())}
        probe = path.format(**ids)
        body = body and {k: v.format(**ids) if isinstance(v, str) and v.startswith("{") else v for k, v in body.items()}
        try:
            client.request(method, probe, json=body, headers={"If-Match": "*"} if method == "PATCH" else None,
                           kind=f"{method} doctor probe")
            checks.append(_check(name, "pass", "accepted (a probe id answered 2xx)"))
        except DataverseNotFound:
            checks.append(_check(name, "pass", "404 for a row that does not exist: the write path is open"))
        except Exception as exc:
            checks.append(_check(name, "fail", _failure(exc), _fix_unless_auth(exc, fix)))

    store = None
    try:
        store = tables()
        probe_client = store.service.get_table_client(store.prefix + "processed")
        try:
            probe_client.create_table()
        except Exception as exc:  # already there is the normal case
            if type(exc).__name__ != "ResourceExistsError":
                raise
        row = {"PartitionKey": "straddle-doctor", "RowKey": uuid.uuid4().hex, "probe": True}
        probe_client.create_entity(row)
        probe_client.get_entity(row["PartitionKey"], row["RowKey"])
        probe_client.delete_entity(row["PartitionKey"], row["RowKey"])
        checks.append(_check("table storage", "pass", f"created, read and deleted a probe row in {store.prefix}processed"))
    except Exception as exc:
        what, fix = describe_failure(exc, getattr(getattr(store, "service", None), "url", None))
        store = None
        checks.append(_check("table storage", "fail", what, fix))

    if store is None:
        checks.append(_check("mappings", "skip", "no Table Storage"))
    else:
        try:
            doc = store.mappings.load()
            if not doc:
                checks.append(_check("mappings", "fail", "no mappings imported",
                                     "straddle mappings discover --out mappings.json, review it, then "
                                     "straddle mappings import mappings.json"))
            elif not reads_ok:
                checks.append(_check("mappings", "skip", "Dataverse reads failed"))
            else:
                m = Mappings.from_dict(doc)
                lists = {l.id for l in client.marketing_lists()}
                topics = {t.id: t for t in client.topics()}
                purposes = {p.id for p in client.purposes()}
                gone = []
                for b in m.brands:
                    gone += [f"purpose {p.name!r}" for p in b.purposes if p.id not in purposes]
                    if b.opt_out_list and b.opt_out_list.list_id not in lists:
                        gone.append(f"list {b.opt_out_list.list_name!r}")
                    for lt in b.lists:
                        if lt.list_id not in lists:
                            gone.append(f"list {lt.list_name!r}")
                        if lt.topic_id not in topics:
                            gone.append(f"topic {lt.topic_name!r}")
                        elif topics[lt.topic_id].purpose_id != lt.purpose_id:
                            gone.append(f"topic {lt.topic_name!r} moved to another purpose")
                checks.append(_check("mappings", "fail" if gone else "pass",
                                     ("no longer in Dataverse: " + ", ".join(sorted(set(gone)))) if gone
                                     else summary(m),
                                     "fix the mappings file (straddle mappings export) and import it again" if gone else ""))
        except Exception as exc:
            checks.append(_check("mappings", "fail", _failure(exc), "import the mappings again"))

    if client is not None and reads_ok:  # which kind of tenant: said on the "read lists" check
        lists_check = next(c for c in checks if c["check"] == "read lists")
        try:
            lists_check["detail"] = ("Outbound marketing columns present (msdyncrm_issubscription)"
                                     if client.outbound_solution() else
                                     "Outbound marketing columns absent (solution not installed): every list counts "
                                     "as a possible subscription list; no msdyncrm_* column is read")
        except Exception as exc:
            lists_check.update(status="fail", detail=f"list columns not readable: {_failure(exc)}",
                               fix="grant the app user read access to table definitions (EntityDefinitions)")
    if client is None or not reads_ok:
        checks.append(_check("webhooks", "skip", "no Dataverse connection"))
    else:
        try:
            mappings_doc = store.mappings.load() if store is not None else None
            columns = tuple(mappings_doc["email_attributes"]) if mappings_doc else None
            secret_header = settings.webhook_secret_header if settings.webhook_secret else None
            status = webhook_status(client, webhook_url, email_columns=columns, secret_header=secret_header)
            bad = [f"{s['step']}: {s['state']}" for s in status["steps"] if s["state"] != "registered"]
            if status["auth_problem"]:
                bad.insert(0, f"authentication: {status['auth_problem']}")
            if status["endpoint"] is None:
                detail = "no Straddle service endpoint registered"
            else:
                detail = "; ".join(bad) if bad else f"{len(status['steps'])} steps registered at {status['endpoint']['url']}"
            checks.append(_check("webhooks", "pass" if status["ok"] else "fail", detail,
                                 "" if status["ok"] else "straddle webhooks register --url https://<app>.azurewebsites.net/api/dataverse/webhook"))
        except Exception as exc:
            checks.append(_check("webhooks", "fail", _failure(exc),
                                 "grant the app user read access to serviceendpoint and sdkmessageprocessingstep "
                                 "(System Customizer) or check with the Plug-in Registration Tool"))

    if not servicebus or dead_letters is None:
        checks.append(_check("service bus", "skip", "not configured"))
    else:
        try:
            port = dead_letters()
            waiting = len(port.list(1))
            checks.append(_check("service bus", "pass",
                                 f"reached {', '.join(port.queues)}" + ("; dead letters waiting (straddle dlq list)"
                                                                       if waiting else "")))
        except Exception as exc:
            checks.append(_check("service bus", "fail", _failure(exc) + (f": {exc}" if type(exc).__name__ == "DeadLettersUnavailable" else ""),
                                 "check ServiceBusConnection (or the namespace and the identity's 'Azure Service Bus "
                                 "Data Receiver/Sender' roles) and that the queues exist"))
    return checks
