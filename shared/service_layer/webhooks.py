"""Webhook registration: the steps the sync needs on Dataverse, what registering would change, and
the registration's status (missing, extra or unauthenticated steps).
"""
from __future__ import annotations

from typing import Any


def sync_steps(email_columns: tuple[str, ...] | list[str] = ("emailaddress1", "emailaddress2", "emailaddress3")):
    """One step per message and table a rule reacts to, with the columns its event needs."""
    from shared.adapters.dataverse.webhooks import StepSpec
    from shared.domain.consent import OPT_OUT_FLAGS

    member_columns = (*email_columns, *OPT_OUT_FLAGS)
    consent_columns = ("msdynmkt_contactpointvalue", "msdynmkt_contactpointtype", "msdynmkt_contactpointconsenttype",
                       "msdynmkt_value", "msdynmkt_purposeid", "msdynmkt_topicid", "msdynmkt_source", "msdynmkt_reason")
    steps = []
    for table in ("contact", "lead"):
        # The pre-image holds the addresses before an Update: a changed address keeps the old one's
        # opt-outs (R7), and only the pre-image says what the old one was.
        steps += [StepSpec("Create", table, image_attributes=member_columns),
                  StepSpec("Update", table, filtering_attributes=member_columns, image_attributes=member_columns,
                           pre_image_attributes=tuple(email_columns)),
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
    with_image = {f"{sp.message} {sp.table or '(any table)'}" for sp in sync_steps() if sp.images()}
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
            registered = {k.lower(): v for k, v in got.images.items()}
            for alias, _, columns in spec.images():
                image = registered.get(alias.lower())
                if image is None:
                    problems.append(f"image {alias} missing")
                elif tuple(image) != _attrs(",".join(columns)):
                    problems.append(f"image {alias} attributes differ")
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
