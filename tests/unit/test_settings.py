"""Typed settings: defaults, malformed values named, require() naming what is missing, secrets kept out."""
from __future__ import annotations

import pytest

from shared.adapters.settings import SETTINGS, Settings, SettingsError

SECRET = "Sup3rSecretValue-do-not-print-Xq7Rm2Kv"


def test_defaults():
    s = Settings.from_env({})
    assert s.changes_queue == "straddle-changes"
    assert s.reconcile_schedule == "0 0 2 * * *"
    assert s.dataverse_page_size == 5000
    assert s.dataverse_timeout_seconds == 30.0 and s.dataverse_retry_budget_seconds == 120.0
    assert s.table_prefix == "straddle" and s.processed_retention_days == 7
    assert s.max_attempts == 5 and s.retry_delay_seconds == 30
    assert s.webhook_secret_header is None and s.webhook_secret is None
    assert s.servicebus_connection_string is None and s.dataverse_url is None and s.ledger_key is None


def test_blank_values_mean_default():
    assert Settings.from_env({"CHANGES_QUEUE": "  ", "DATAVERSE_PAGE_SIZE": ""}).dataverse_page_size == 5000


def test_parsed_values():
    s = Settings.from_env({
        "DATAVERSE_URL": " https://contoso.crm4.dynamics.com/ ", "DATAVERSE_PAGE_SIZE": "250",
        "DATAVERSE_TIMEOUT_SECONDS": "2.5", "WEBHOOK_SECRET_HEADER": "X-Straddle-Key", "WEBHOOK_SECRET": SECRET,
        "LEDGER_KEY": "0123456789abcdef-ghijklmnopqrstuv", "CHANGES_QUEUE": "q1",
    })
    assert s.dataverse_url == "https://contoso.crm4.dynamics.com"
    assert s.dataverse_page_size == 250 and s.dataverse_timeout_seconds == 2.5
    assert s.webhook_secret_header == "x-straddle-key" and s.webhook_secret == SECRET
    assert s.ledger_key == b"0123456789abcdef-ghijklmnopqrstuv" and s.changes_queue == "q1"


def test_reads_the_process_environment_by_default(monkeypatch):
    monkeypatch.setenv("CHANGES_QUEUE", "from-env")
    assert Settings.from_env().changes_queue == "from-env"


@pytest.mark.parametrize("env,name", [
    ({"DATAVERSE_URL": "contoso.crm.dynamics.com"}, "DATAVERSE_URL"),
    ({"DATAVERSE_URL": "ftp://contoso"}, "DATAVERSE_URL"),
    ({"DATAVERSE_URL": "https://"}, "DATAVERSE_URL"),
    ({"AzureWebJobsStorage__tableServiceUri": "not a url"}, "AzureWebJobsStorage__tableServiceUri"),
    ({"DATAVERSE_PAGE_SIZE": "0"}, "DATAVERSE_PAGE_SIZE"),
    ({"DATAVERSE_PAGE_SIZE": "-5"}, "DATAVERSE_PAGE_SIZE"),
    ({"DATAVERSE_PAGE_SIZE": "6000"}, "DATAVERSE_PAGE_SIZE"),
    ({"DATAVERSE_PAGE_SIZE": "ten"}, "DATAVERSE_PAGE_SIZE"),
    ({"DATAVERSE_TIMEOUT_SECONDS": "0"}, "DATAVERSE_TIMEOUT_SECONDS"),
    ({"DATAVERSE_RETRY_BUDGET_SECONDS": "soon"}, "DATAVERSE_RETRY_BUDGET_SECONDS"),
    ({"MAX_ATTEMPTS": "1.5"}, "MAX_ATTEMPTS"),
    ({"RECONCILE_READERS": "0"}, "RECONCILE_READERS"),
    ({"RECONCILE_READERS": "33"}, "RECONCILE_READERS"),
    ({"PROCESSED_RETENTION_DAYS": "0"}, "PROCESSED_RETENTION_DAYS"),
    ({"RETRY_DELAY_SECONDS": "x"}, "RETRY_DELAY_SECONDS"),
    ({"LEDGER_KEY": "short"}, "LEDGER_KEY"),
    ({"WEBHOOK_SECRET_HEADER": "bad header"}, "WEBHOOK_SECRET_HEADER"),
    ({"WEBHOOK_SECRET": SECRET}, "WEBHOOK_SECRET_HEADER"),
    ({"WEBHOOK_SECRET_HEADER": "x-key"}, "WEBHOOK_SECRET"),
])
def test_each_malformed_value_is_named(env, name):
    with pytest.raises(SettingsError) as exc:
        Settings.from_env(env)
    assert name in str(exc.value)


def test_page_size_limit_is_inclusive():
    assert Settings.from_env({"DATAVERSE_PAGE_SIZE": "5000"}).dataverse_page_size == 5000


def test_scan_readers_default_and_limit():
    assert Settings.from_env({}).reconcile_readers == 16
    assert Settings.from_env({"RECONCILE_READERS": "32"}).reconcile_readers == 32


def test_every_problem_is_reported_at_once():
    with pytest.raises(SettingsError) as exc:
        Settings.from_env({"DATAVERSE_URL": "nope", "DATAVERSE_PAGE_SIZE": "0", "MAX_ATTEMPTS": "x"})
    message = str(exc.value)
    assert all(name in message for name in ("DATAVERSE_URL", "DATAVERSE_PAGE_SIZE", "MAX_ATTEMPTS"))


@pytest.mark.parametrize("env", [
    {"WEBHOOK_SECRET": SECRET},
    {"LEDGER_KEY": "Sup3rSecret"},
    {"WEBHOOK_SECRET": SECRET, "WEBHOOK_SECRET_HEADER": "bad header"},
    {"DATAVERSE_CLIENT_SECRET": SECRET, "ServiceBusConnection": SECRET, "DATAVERSE_URL": "x"},
])
def test_secrets_are_never_echoed(env):
    with pytest.raises(SettingsError) as exc:
        Settings.from_env(env)
    assert "Sup3rSecret" not in str(exc.value)


def test_secret_settings_are_marked_secret():
    secret = {s.name for s in SETTINGS if s.secret}
    assert {"WEBHOOK_SECRET", "ServiceBusConnection", "DATAVERSE_CLIENT_SECRET", "DATAVERSE_ACCESS_TOKEN",
            "LEDGER_KEY", "AzureWebJobsStorage"} <= secret


def test_require_names_every_missing_setting_and_the_purpose():
    s = Settings.from_env({"DATAVERSE_CLIENT_ID": "abc"})
    with pytest.raises(SettingsError) as exc:
        s.require("dataverse_url", "dataverse_client_id", "dataverse_tenant_id", purpose="calling Dataverse")
    message = str(exc.value)
    assert "DATAVERSE_URL" in message and "DATAVERSE_TENANT_ID" in message and "calling Dataverse" in message
    assert "DATAVERSE_CLIENT_ID" not in message
    s.require("dataverse_client_id", "changes_queue", purpose="x")  # present: no error


def test_require_servicebus_and_tables():
    with pytest.raises(SettingsError, match="ServiceBusConnection"):
        Settings.from_env({}).require_servicebus()
    Settings.from_env({"ServiceBusConnection__fullyQualifiedNamespace": "sb.servicebus.windows.net"}).require_servicebus()
    Settings.from_env({"ServiceBusConnection": "Endpoint=sb://x/;SharedAccessKeyName=a;SharedAccessKey=b"}).require_servicebus()
    with pytest.raises(SettingsError, match="AzureWebJobsStorage"):
        Settings.from_env({}).require_tables()
    Settings.from_env({"AzureWebJobsStorage": "UseDevelopmentStorage=true"}).require_tables()


def test_settings_table_and_dataclass_agree():
    names = [s.name for s in SETTINGS]
    assert len(names) == len(set(names))
    assert all(s.doc for s in SETTINGS), "every setting is documented"


REFERENCE = "@Microsoft.KeyVault(VaultName=kv-straddle;SecretName=ledger-key)"


@pytest.mark.parametrize("name", sorted(s.name for s in SETTINGS if s.secret))
def test_an_unresolved_key_vault_reference_is_refused_for_every_secret(name):
    # App Service passes the reference text itself when it cannot resolve it
    env = {name: REFERENCE}
    if name == "WEBHOOK_SECRET":
        env["WEBHOOK_SECRET_HEADER"] = "x-straddle-secret"
    with pytest.raises(SettingsError) as exc:
        Settings.from_env(env)
    message = str(exc.value)
    assert f"{name} is misconfigured" in message and "unresolved Key Vault reference" in message
    assert "Key Vault Secrets User" in message and "misspelt" in message  # the likely causes


def test_a_reference_in_a_setting_that_is_not_secret_is_left_alone():
    assert Settings.from_env({"TABLE_PREFIX": "@Microsoft.KeyVault(x)"}).table_prefix == "@Microsoft.KeyVault(x)"


def test_resolved_secrets_and_the_previous_ledger_key():
    # the previous key may predate the strength rule: rotating away from a weak key must be possible
    s = Settings.from_env({"LEDGER_KEY": "0123456789abcdef-new-Xq7Rm2Kv9pLt", "LEDGER_KEY_PREVIOUS": "0123456789abcdef-old"})
    assert s.ledger_key == b"0123456789abcdef-new-Xq7Rm2Kv9pLt" and s.ledger_key_previous == b"0123456789abcdef-old"
    with pytest.raises(SettingsError, match="LEDGER_KEY_PREVIOUS"):
        Settings.from_env({"LEDGER_KEY_PREVIOUS": "short"})


@pytest.mark.parametrize("raw,expected", [("true", True), ("True", True), ("1", True), ("false", False), ("0", False)])
def test_worker_telemetry_flag(raw, expected):
    assert Settings.from_env({"PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY": raw}).worker_exports_telemetry is expected
    assert Settings.from_env({}).worker_exports_telemetry is False
    with pytest.raises(SettingsError, match="PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY"):
        Settings.from_env({"PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY": "yes please"})


STRONG = "Zq7xR2mW9pLk4vTn8sHc3bYd6fGj1aQe"  # 32 characters, as openssl rand -base64 24 gives


@pytest.mark.parametrize("name", ["WEBHOOK_SECRET", "LEDGER_KEY"])
@pytest.mark.parametrize("weak,problem", [
    ("Sup3rSecret-0123456789abc", "at least 32 characters"),  # the 16-25 characters that used to pass
    ("Sup3rSecretSup3rSecretSup3rSecret", "different characters"),  # long enough, but a word repeated
    ("a" * 64, "different characters"),
])
def test_weak_secrets_are_refused_naming_the_setting_and_the_problem_only(name, weak, problem):
    env = {name: weak, "WEBHOOK_SECRET_HEADER": "x-straddle-secret"}
    with pytest.raises(SettingsError) as exc:
        Settings.from_env(env)
    message = str(exc.value)
    assert f"{name} is malformed: too weak" in message and problem in message
    assert weak not in message and "Sup3rSecret" not in message


def test_a_strong_secret_passes():
    s = Settings.from_env({"WEBHOOK_SECRET": STRONG, "WEBHOOK_SECRET_HEADER": "x-k", "LEDGER_KEY": STRONG})
    assert s.webhook_secret == STRONG and s.ledger_key == STRONG.encode()


def test_the_previous_webhook_secret_only_beside_the_current_one():
    s = Settings.from_env({"WEBHOOK_SECRET": STRONG, "WEBHOOK_SECRET_HEADER": "x-k",
                           "WEBHOOK_SECRET_PREVIOUS": "an-older-secret-0123"})
    assert s.webhook_secret_previous == "an-older-secret-0123"
    with pytest.raises(SettingsError, match="WEBHOOK_SECRET_PREVIOUS is accepted only beside WEBHOOK_SECRET"):
        Settings.from_env({"WEBHOOK_SECRET_PREVIOUS": "an-older-secret-0123"})
    with pytest.raises(SettingsError, match="WEBHOOK_SECRET_PREVIOUS is malformed"):
        Settings.from_env({"WEBHOOK_SECRET": STRONG, "WEBHOOK_SECRET_HEADER": "x-k", "WEBHOOK_SECRET_PREVIOUS": "short"})


@pytest.mark.parametrize("url", ["http://contoso.crm.dynamics.com", "http://10.0.0.5:8080", "http://localhost.evil.test"])
def test_dataverse_url_must_be_https_except_on_loopback(url):
    with pytest.raises(SettingsError, match="DATAVERSE_URL is malformed: must be an https:// URL"):
        Settings.from_env({"DATAVERSE_URL": url})


@pytest.mark.parametrize("url", ["https://contoso.crm.dynamics.com", "http://127.0.0.1:7070", "http://localhost:7070",
                                 "http://[::1]:7070"])
def test_dataverse_url_https_or_loopback_passes(url):
    assert Settings.from_env({"DATAVERSE_URL": url}).dataverse_url == url
