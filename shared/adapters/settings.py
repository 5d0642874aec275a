"""The one typed view of the app settings. Nothing else in the app reads environment variables.

Every setting the code reads is declared in ``SETTINGS`` below (the deployment tests compare
this list with the Bicep templates and ``local.settings.sample.json``). Malformed values fail at
load time; missing ones fail when a use case that needs them asks (``Settings.require``), so the
webhook keeps working while, say, the ledger key is not yet configured.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, fields
from typing import Any, Callable, Mapping
from urllib.parse import urlparse


class SettingsError(ValueError):
    """One or more app settings are missing or malformed; the message names each one."""


@dataclass(frozen=True)
class Setting:
    name: str  # the app setting (environment variable) name
    attr: str  # the Settings attribute
    parse: Callable[[str], Any]
    default: Any = None
    secret: bool = False
    doc: str = ""


def _text(raw: str) -> str:
    return raw


def _number(raw: str, kind: type, wanted: str) -> Any:
    """int() or float() with an error that says what was expected, not Python's own wording."""
    try:
        return kind(raw.strip())
    except ValueError:
        raise ValueError(f"must be {wanted}, got {raw.strip()!r}") from None


def _positive_int(raw: str) -> int:
    value = _number(raw, int, "a positive whole number")
    if value <= 0:
        raise ValueError("must be a positive whole number")
    return value


def _non_negative_int(raw: str) -> int:
    value = _number(raw, int, "a whole number, 0 or more")
    if value < 0:
        raise ValueError("must be a whole number, 0 or more")
    return value


def _positive_float(raw: str) -> float:
    value = _number(raw, float, "a positive number (seconds)")
    if value <= 0:
        raise ValueError("must be a positive number")
    return value


def _https_url(raw: str) -> str:
    parsed = urlparse(raw.strip())
    if parsed.scheme not in ("https", "http") or not parsed.netloc:
        raise ValueError("must be an absolute URL such as https://contoso.crm.dynamics.com")
    return raw.strip().rstrip("/")


LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")


def _dataverse_url(raw: str) -> str:
    """https only: the bearer token travels with every request. Plain http is allowed to a
    loopback host, where the local Dataverse sandbox listens."""
    url = _https_url(raw)
    parsed = urlparse(url)
    if parsed.scheme != "https" and (parsed.hostname or "") not in LOOPBACK_HOSTS:
        raise ValueError("must be an https:// URL (plain http is allowed only to localhost or 127.0.0.1)")
    return url


def _readers(raw: str) -> int:
    value = _positive_int(raw)
    if value > 32:  # well inside Dataverse's 52 concurrent requests per user
        raise ValueError("must be a whole number from 1 to 32")
    return value


def _header_name(raw: str) -> str:
    if not raw.strip() or any(c in raw for c in " :\r\n"):
        raise ValueError("must be an HTTP header name")
    return raw.strip().lower()


#: A strong secret: at least this many characters ...
STRONG_SECRET_CHARS = 32
#: ... of which at least this many distinct (a generated key has far more; a word repeated has fewer).
STRONG_SECRET_DISTINCT = 12


def _previous_secret(raw: str) -> str:
    """A secret being rotated away from: it may predate the strength rule (16 characters were
    enough then), and it is only accepted or read until the rotation ends."""
    if len(raw) < 16:
        raise ValueError("must be at least 16 characters")
    return raw


def _secret_bytes(raw: str) -> bytes:
    return _previous_secret(raw).encode()


def _strong_secret(raw: str) -> str:
    """At least 32 random-looking characters, e.g. ``openssl rand -base64 32``. The message
    names the problem, never the value."""
    if len(raw) < STRONG_SECRET_CHARS:
        raise ValueError(f"too weak: must be at least {STRONG_SECRET_CHARS} characters (generate one with "
                         "openssl rand -base64 32)")
    if len(set(raw)) < STRONG_SECRET_DISTINCT:
        raise ValueError(f"too weak: must look random, with at least {STRONG_SECRET_DISTINCT} different characters "
                         "(generate one with openssl rand -base64 32)")
    return raw


def _strong_secret_bytes(raw: str) -> bytes:
    return _strong_secret(raw).encode()


def _flag(raw: str) -> bool:
    if raw.strip().lower() not in ("true", "false", "1", "0"):
        raise ValueError("must be true or false")
    return raw.strip().lower() in ("true", "1")


# App Service hands the app the reference text itself when it cannot resolve a Key Vault reference
# (https://learn.microsoft.com/azure/app-service/app-service-key-vault-references#troubleshoot-key-vault-references).
_KEY_VAULT_REFERENCE = re.compile(r"^\s*@Microsoft\.KeyVault\(", re.IGNORECASE)


def unresolved_reference(name: str, raw: str) -> str | None:
    """The problem with a secret setting that still holds a Key Vault reference, or None."""
    if not _KEY_VAULT_REFERENCE.match(raw):
        return None
    return (f"{name} is misconfigured: it holds the unresolved Key Vault reference {raw.strip()[:200]} instead of the "
            "secret. Likely causes: the app's identity lacks Key Vault Secrets User on the vault or the role "
            "assignment is not effective yet (minutes after deployment), the vault or secret name is misspelt, "
            "the secret is missing or disabled, or keyVaultReferenceIdentity names another identity. Check the "
            "reference's status in the portal (Function App > Environment variables), fix it, then restart the app")


SETTINGS: tuple[Setting, ...] = (
    Setting("CHANGES_QUEUE", "changes_queue", _text, "straddle-changes",
            doc="Service Bus queue that carries change events (also bound as %CHANGES_QUEUE%)."),
    Setting("PARKED_QUEUE", "parked_queue", _text,
            doc="Queue whose dead-letter sub-queue holds events that kept failing (default <CHANGES_QUEUE>-parked)."),
    Setting("ServiceBusConnection", "servicebus_connection_string", _text, secret=True,
            doc="Service Bus connection string (local/dev). Prefer the identity-based form below."),
    Setting("ServiceBusConnection__fullyQualifiedNamespace", "servicebus_namespace", _text,
            doc="Service Bus namespace host, e.g. straddle.servicebus.windows.net (identity-based)."),
    Setting("ServiceBusConnection__clientId", "servicebus_client_id", _text,
            doc="Client id of the user-assigned managed identity used for Service Bus."),
    Setting("RECONCILE_SCHEDULE", "reconcile_schedule", _text, "0 0 2 * * *",
            doc="NCRONTAB schedule of nightly_reconcile (bound as %RECONCILE_SCHEDULE%)."),
    Setting("RECONCILE_QUEUE", "reconcile_queue", _text, "straddle-reconcile",
            doc="Service Bus queue of reconciliation chunks for big tenants (bound as %RECONCILE_QUEUE%)."),
    Setting("RECONCILE_CHUNK_SIZE", "reconcile_chunk_size", _positive_int, 5000,
            doc="Drift candidates healed together (one chunk)."),
    Setting("RECONCILE_FANOUT_ABOVE", "reconcile_fanout_above", _non_negative_int, 20000,
            doc="Above this many candidates the timer sends chunks to RECONCILE_QUEUE instead of healing inline."),
    Setting("RECONCILE_READERS", "reconcile_readers", _readers, 16,
            doc="Concurrent Dataverse reads of the nightly scan (1-32; Dataverse allows 52 per user)."),
    Setting("WEBHOOK_SECRET_HEADER", "webhook_secret_header", _header_name,
            doc="Optional header Dataverse sends (HttpHeader auth); with WEBHOOK_SECRET enables a check."),
    Setting("WEBHOOK_SECRET", "webhook_secret", _strong_secret, secret=True,
            doc="Expected value of WEBHOOK_SECRET_HEADER, compared in constant time (32+ random characters)."),
    Setting("WEBHOOK_SECRET_PREVIOUS", "webhook_secret_previous", _previous_secret, secret=True,
            doc="During a rotation only: the secret before it, still accepted until Dataverse sends the new one."),
    Setting("DATAVERSE_URL", "dataverse_url", _dataverse_url,
            doc="Environment URL, e.g. https://contoso.crm.dynamics.com (https only; http only to localhost)."),
    Setting("DATAVERSE_CLIENT_ID", "dataverse_client_id", _text,
            doc="App registration client id (with a secret) or user-assigned managed identity client id."),
    Setting("DATAVERSE_TENANT_ID", "dataverse_tenant_id", _text,
            doc="Entra tenant id; needed with DATAVERSE_CLIENT_SECRET."),
    Setting("DATAVERSE_CLIENT_SECRET", "dataverse_client_secret", _text, secret=True,
            doc="App registration secret (a Key Vault reference in Azure)."),
    Setting("DATAVERSE_ACCESS_TOKEN", "dataverse_access_token", _text, secret=True,
            doc="Dev/test only: a static bearer token instead of Entra ID."),
    Setting("DATAVERSE_TIMEOUT_SECONDS", "dataverse_timeout_seconds", _positive_float, 30.0,
            doc="Timeout of one Dataverse request."),
    Setting("DATAVERSE_RETRY_BUDGET_SECONDS", "dataverse_retry_budget_seconds", _positive_float, 120.0,
            doc="Total time one Dataverse call may spend retrying 429/5xx/timeouts."),
    Setting("DATAVERSE_PAGE_SIZE", "dataverse_page_size", _positive_int, 5000,
            doc="Rows per page when reading (odata.maxpagesize, at most 5000)."),
    Setting("AzureWebJobsStorage", "storage_connection_string", _text, secret=True,
            doc="Storage connection string (local: UseDevelopmentStorage=true for Azurite)."),
    Setting("AzureWebJobsStorage__tableServiceUri", "storage_table_uri", _https_url,
            doc="Table endpoint for identity-based access, e.g. https://acct.table.core.windows.net."),
    Setting("AzureWebJobsStorage__clientId", "storage_client_id", _text,
            doc="Client id of the user-assigned managed identity used for storage."),
    Setting("TABLE_PREFIX", "table_prefix", _text, "straddle",
            doc="Prefix of every Table Storage table Straddle creates."),
    Setting("LEDGER_KEY", "ledger_key", _strong_secret_bytes, secret=True,
            doc="HMAC key that turns an email into the ledger partition key (32+ random characters; a Key Vault reference)."),
    Setting("LEDGER_KEY_PREVIOUS", "ledger_key_previous", _secret_bytes, secret=True,
            doc="The ledger key before the last rotation, only read: keeps older history readable by explain."),
    Setting("APPLICATIONINSIGHTS_CONNECTION_STRING", "appinsights_connection_string", _text,
            doc="Application Insights to export logs and traces to (OpenTelemetry); unset locally."),
    Setting("PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY", "worker_exports_telemetry", _flag, False,
            doc="true in Azure: the Functions Python worker configures the exporter, so the app does not."),
    Setting("PROCESSED_RETENTION_DAYS", "processed_retention_days", _positive_int, 7,
            doc="How long processed event ids are kept for idempotency."),
    Setting("OPT_OUT_DEADLINE_HOURS", "opt_out_deadline_hours", _positive_float, 24.0,
            doc="Hours an opt-out may stay open before it is reported (and alerted on); 24 leaves a day "
                "before Gmail's and Yahoo's 48-hour deadline."),
    Setting("MAX_ATTEMPTS", "max_attempts", _positive_int, 5,
            doc="Attempts per change event before it is parked on the dead-letter queue."),
    Setting("RETRY_DELAY_SECONDS", "retry_delay_seconds", _positive_int, 30,
            doc="First delay before a failed event is retried; doubles per attempt."),
)


@dataclass(frozen=True)
class Settings:
    changes_queue: str
    parked_queue: str | None
    servicebus_connection_string: str | None
    servicebus_namespace: str | None
    servicebus_client_id: str | None
    reconcile_schedule: str
    reconcile_queue: str
    reconcile_chunk_size: int
    reconcile_fanout_above: int
    reconcile_readers: int
    webhook_secret_header: str | None
    webhook_secret: str | None
    webhook_secret_previous: str | None
    dataverse_url: str | None
    dataverse_client_id: str | None
    dataverse_tenant_id: str | None
    dataverse_client_secret: str | None
    dataverse_access_token: str | None
    dataverse_timeout_seconds: float
    dataverse_retry_budget_seconds: float
    dataverse_page_size: int
    storage_connection_string: str | None
    storage_table_uri: str | None
    storage_client_id: str | None
    table_prefix: str
    ledger_key: bytes | None
    ledger_key_previous: bytes | None
    appinsights_connection_string: str | None
    worker_exports_telemetry: bool
    processed_retention_days: int
    opt_out_deadline_hours: float
    max_attempts: int
    retry_delay_seconds: int

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        problems: list[str] = []
        for s in SETTINGS:
            raw = env.get(s.name)
            if raw is None or raw.strip() == "":
                values[s.attr] = s.default
                continue
            unresolved = unresolved_reference(s.name, raw) if s.secret else None
            if unresolved:
                values[s.attr] = None
                problems.append(unresolved)
                continue
            try:
                values[s.attr] = s.parse(raw)
            except ValueError as exc:
                # Parsers of secrets word their messages without the value; nothing else is shown.
                problems.append(f"{s.name} is malformed: {exc}")
        if values.get("dataverse_page_size") and values["dataverse_page_size"] > 5000:
            problems.append("DATAVERSE_PAGE_SIZE is malformed: Dataverse pages hold at most 5000 rows")
        if bool(values.get("webhook_secret_header")) != bool(values.get("webhook_secret")):
            problems.append("WEBHOOK_SECRET_HEADER and WEBHOOK_SECRET must be set together")
        if values.get("webhook_secret_previous") and not values.get("webhook_secret"):
            problems.append("WEBHOOK_SECRET_PREVIOUS is accepted only beside WEBHOOK_SECRET (during a rotation)")
        if problems:
            raise SettingsError("; ".join(problems))
        values["parked_queue"] = values["parked_queue"] or f"{values['changes_queue']}-parked"
        return cls(**values)

    def require(self, *attrs: str, purpose: str) -> None:
        """Raises SettingsError naming every missing setting that ``purpose`` needs."""
        by_attr = {s.attr: s.name for s in SETTINGS}
        missing = [by_attr[a] for a in attrs if getattr(self, a) in (None, "")]
        if missing:
            raise SettingsError(f"missing app setting{'s' if len(missing) > 1 else ''} {', '.join(missing)} (needed for {purpose})")

    def require_servicebus(self) -> None:
        if not (self.servicebus_connection_string or self.servicebus_namespace):
            raise SettingsError(
                "missing app setting ServiceBusConnection or ServiceBusConnection__fullyQualifiedNamespace "
                "(needed to send change events)")

    def require_tables(self) -> None:
        if not (self.storage_connection_string or self.storage_table_uri):
            raise SettingsError(
                "missing app setting AzureWebJobsStorage or AzureWebJobsStorage__tableServiceUri "
                "(needed for Table Storage)")


assert {f.name for f in fields(Settings)} == {s.attr for s in SETTINGS}, "SETTINGS and Settings disagree"
