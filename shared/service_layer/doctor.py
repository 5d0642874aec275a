"""The doctor: every check between the app and the services it needs, one function each, in the
order it prints them: settings, Dataverse (token, whoami, reads, write probes), Table Storage,
mappings, webhooks, Service Bus.
"""
from __future__ import annotations

from typing import Any

from shared.domain.mappings import Mappings
from shared.service_layer.failures import describe_failure
from shared.service_layer.mappings import summary
from shared.service_layer.webhooks import webhook_status


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
)
#: Members leave lists through RemoveMemberList where the environment has that action, else by
#: deleting their listmember row (Dataverse refuses $ref Disassociate on list membership).
REMOVAL_CHECK = "remove list members"
REMOVAL_FIX = ("grant the app user's security role Write and Append To on Marketing List, Append on Contact and "
               "Lead (and Delete on Marketing List Member where members leave by row)")


def _check(name: str, status: str, detail: str = "", fix: str = "") -> dict[str, Any]:
    return {"check": name, "status": status, "detail": detail, "fix": fix}


def _failure(exc: BaseException) -> str:
    """One line naming the failure without a message that could quote data."""
    return describe_failure(exc)[0]


def _failed(name: str, exc: BaseException, auth_fix: str, also: type | None = None) -> dict[str, Any]:
    """A failed Dataverse check. Its fix is the check's own when Dataverse refused (a privilege, a
    user), else the failure's (an unreachable URL is not solved by adding an application user)."""
    from shared.adapters.dataverse.errors import DataverseAuthError

    auth = isinstance(exc, DataverseAuthError) or (also is not None and isinstance(exc, also))
    return _check(name, "fail", _failure(exc), auth_fix if auth else describe_failure(exc)[1])


def doctor(settings: Any, dataverse: Any, tables: Any, dead_letters: Any = None, *, webhook_url: str | None = None,
           settings_error: str | None = None, local_host: str | None = None) -> list[dict[str, Any]]:
    """Every check, in order; ``dataverse``, ``tables`` and ``dead_letters`` are callables that build
    the adapters (and may raise SettingsError). A check whose prerequisite failed is skipped.
    ``local_host``: the local Functions host stands in for Service Bus (STRADDLE_LOCAL_HOST)."""
    if settings_error or settings is None:
        return [_settings_unreadable(settings_error)]
    servicebus = bool(settings.servicebus_connection_string or settings.servicebus_namespace or local_host)
    auth = _dataverse_auth(settings)
    checks = [_settings_present(settings, servicebus, auth)]
    client = _dataverse_connection(dataverse, auth, checks)
    reads_ok = False
    if client is None:
        checks += [_check(probe[0], "skip", "no Dataverse connection") for probe in DOCTOR_READS + DOCTOR_WRITES]
        checks.append(_check(REMOVAL_CHECK, "skip", "no Dataverse connection"))
    else:
        reads_ok = _dataverse_reads(client, checks)
        _dataverse_writes(client, checks)
        checks.append(_member_removal(client))
    store = _table_storage(tables, checks)
    checks.append(_mappings_resolve(store, client, reads_ok))
    if client is not None and reads_ok:
        _tenant_kind(client, checks)
    checks.append(_webhooks_registered(client, reads_ok, store, settings, webhook_url))
    checks.append(_service_bus(servicebus, dead_letters))
    return checks


def _settings_unreadable(settings_error: str | None) -> dict[str, Any]:
    fix = "fix the app settings named (local.settings.json or the Function App's configuration)"
    if settings_error and "unresolved Key Vault reference" in settings_error:
        fix = ("grant the app's identity Key Vault Secrets User on the vault (infra/modules/access.bicep) or fix "
               "the vault/secret name in the reference, wait for the role to take effect, restart the app "
               "(az functionapp restart) and run doctor again")
    return _check("settings", "fail", settings_error or "settings could not be read", fix)


def _dataverse_auth(settings: Any) -> str:
    return ("static token" if settings.dataverse_access_token else
            "client secret" if settings.dataverse_client_secret else
            "managed identity" if settings.dataverse_client_id else "default Azure credential")


def _settings_present(settings: Any, servicebus: bool, auth: str) -> dict[str, Any]:
    missing = []
    if not settings.dataverse_url:
        missing.append("DATAVERSE_URL")
    if not (settings.storage_connection_string or settings.storage_table_uri):
        missing.append("AzureWebJobsStorage")
    if not settings.ledger_key:
        missing.append("LEDGER_KEY")
    if not servicebus:
        missing.append("ServiceBusConnection__fullyQualifiedNamespace")
    if settings.dataverse_client_secret and not (settings.dataverse_client_id and settings.dataverse_tenant_id):
        missing.append("DATAVERSE_CLIENT_ID and DATAVERSE_TENANT_ID (with DATAVERSE_CLIENT_SECRET)")
    return _check("settings", "fail" if missing else "pass",
                  f"missing {', '.join(missing)}" if missing else f"all present; Dataverse auth: {auth}",
                  "set them in local.settings.json (Values) or the Function App's configuration; "
                  "see README 'Configuration'" if missing else "")


def _dataverse_connection(dataverse: Any, auth: str, checks: list[dict[str, Any]]) -> Any:
    """The client, once it holds a token and Dataverse knows its application user (None when not):
    the "dataverse token" and "whoami" checks."""
    try:
        client = dataverse()
        tokens = getattr(client, "_tokens", None)
        if tokens is not None:
            tokens.token()
        checks.append(_check("dataverse token", "pass", auth))
    except Exception as exc:
        checks.append(_failed("dataverse token", exc,
                              "check DATAVERSE_CLIENT_ID/DATAVERSE_TENANT_ID/DATAVERSE_CLIENT_SECRET, or the "
                              "managed identity, and that the app registration exists in the tenant"))
        return None
    try:
        checks.append(_check("whoami", "pass", f"application user {client.who_am_i()}"))
    except Exception as exc:
        checks.append(_failed("whoami", exc, "add the app registration as an application user in the environment "
                                             "(Power Platform admin center > Users > App users) and give it a "
                                             "security role"))
        return None
    return client


def _dataverse_reads(client: Any, checks: list[dict[str, Any]]) -> bool:
    """One check per table the sync reads; True when every read worked."""
    from shared.adapters.dataverse.errors import DataverseNotFound

    reads_ok = True
    for name, entity_set, key in DOCTOR_READS:
        try:
            client.get_json(entity_set, {"$select": key, "$top": "1"})
            checks.append(_check(name, "pass"))
        except Exception as exc:
            reads_ok = False
            checks.append(_failed(name, exc, f"grant the app user's security role Read on {entity_set} "
                                             "(organization scope); for consent rows, purposes and topics Customer "
                                             "Insights - Journeys must be installed", also=DataverseNotFound))
    return reads_ok


def _dataverse_writes(client: Any, checks: list[dict[str, Any]]) -> None:
    """One probe per kind of write the sync makes (see DOCTOR_WRITES: nothing is changed)."""
    import uuid

    from shared.adapters.dataverse.errors import DataverseNotFound

    for name, method, path, body, fix in DOCTOR_WRITES:
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
            checks.append(_failed(name, exc, fix))


def _member_removal(client: Any) -> dict[str, Any]:
    """Which way members leave lists in this environment (probed with a random list id, nothing
    changes), and that the way is open to the app user."""
    import uuid

    from shared.adapters.dataverse.client import REMOVAL_ROW, delete_listmember_op
    from shared.adapters.dataverse.errors import DataverseNotFound

    try:
        if client.member_removal(probe=True) != REMOVAL_ROW:
            return _check(REMOVAL_CHECK, "pass", "RemoveMemberList action offered: members leave through it "
                                                 "(404 for a list that does not exist: the write path is open)")
        probe = delete_listmember_op(str(uuid.uuid4()))
        try:
            client.request(probe.method, probe.path, kind="DELETE doctor probe")
        except DataverseNotFound:
            pass  # no such row: the delete path is open
        return _check(REMOVAL_CHECK, "pass", "no RemoveMemberList action (an environment created without Dynamics "
                                             "365 apps): members leave by deleting their listmember row "
                                             "(DELETE listmembers(id)); 404 for a row that does not exist: the "
                                             "delete path is open")
    except Exception as exc:
        return _failed(REMOVAL_CHECK, exc, REMOVAL_FIX)


def _table_storage(tables: Any, checks: list[dict[str, Any]]) -> Any:
    """The store, once a probe row was created, read and deleted (None when that failed)."""
    import uuid

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
        return store
    except Exception as exc:
        what, fix = describe_failure(exc, getattr(getattr(store, "service", None), "url", None))
        checks.append(_check("table storage", "fail", what, fix))
        return None


def _mappings_resolve(store: Any, client: Any, reads_ok: bool) -> dict[str, Any]:
    """The stored mappings exist and every list, topic and purpose they name is still in Dataverse."""
    if store is None:
        return _check("mappings", "skip", "no Table Storage")
    try:
        doc = store.mappings.load()
        if not doc:
            return _check("mappings", "fail", "no mappings imported",
                          "straddle mappings discover --out mappings.json, review it, then "
                          "straddle mappings import mappings.json")
        if not reads_ok:
            return _check("mappings", "skip", "Dataverse reads failed")
        m = Mappings.from_dict(doc)
        gone = _gone_from_dataverse(m, client)
        return _check("mappings", "fail" if gone else "pass",
                      ("no longer in Dataverse: " + ", ".join(sorted(set(gone)))) if gone else summary(m),
                      "fix the mappings file (straddle mappings export) and import it again" if gone else "")
    except Exception as exc:
        return _check("mappings", "fail", _failure(exc), "import the mappings again")


def _gone_from_dataverse(m: Any, client: Any) -> list[str]:
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
    return gone


def _tenant_kind(client: Any, checks: list[dict[str, Any]]) -> None:
    """Which kind of tenant: said on the "read lists" check."""
    lists_check = next(c for c in checks if c["check"] == "read lists")
    try:
        lists_check["detail"] = ("Outbound marketing columns present (msdyncrm_issubscription)"
                                 if client.outbound_solution() else
                                 "Outbound marketing columns absent (solution not installed): every list counts "
                                 "as a possible subscription list; no msdyncrm_* column is read")
    except Exception as exc:
        lists_check.update(status="fail", detail=f"list columns not readable: {_failure(exc)}",
                           fix="grant the app user read access to table definitions (EntityDefinitions)")


def _webhooks_registered(client: Any, reads_ok: bool, store: Any, settings: Any,
                         webhook_url: str | None) -> dict[str, Any]:
    if client is None or not reads_ok:
        return _check("webhooks", "skip", "no Dataverse connection")
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
        return _check("webhooks", "pass" if status["ok"] else "fail", detail,
                      "" if status["ok"] else "straddle webhooks register --url https://<app>.azurewebsites.net/api/dataverse/webhook")
    except Exception as exc:
        return _check("webhooks", "fail", _failure(exc),
                      "grant the app user read access to serviceendpoint and sdkmessageprocessingstep "
                      "(System Customizer) or check with the Plug-in Registration Tool")


def _service_bus(servicebus: bool, dead_letters: Any) -> dict[str, Any]:
    if not servicebus or dead_letters is None:
        return _check("service bus", "skip", "not configured")
    try:
        port = dead_letters()
        waiting = len(port.list(1))
        return _check("service bus", "pass",
                      f"reached {', '.join(port.queues)}" + ("; dead letters waiting (straddle dlq list)"
                                                            if waiting else ""))
    except Exception as exc:
        return _check("service bus", "fail", _failure(exc) + (f": {exc}" if type(exc).__name__ == "DeadLettersUnavailable" else ""),
                      "check ServiceBusConnection (or the namespace and the identity's 'Azure Service Bus "
                      "Data Receiver/Sender' roles) and that the queues exist")
