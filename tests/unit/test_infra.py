"""Static checks of the deployment templates (no Bicep compiler or Azure CLI is reachable here).

The Bicep files are read with tests/bicep.py and compared with what the code reads: the app
settings (shared.adapters.settings.SETTINGS), the tables (shared.adapters.tables.common.table_names),
the queues, the roles, the outputs and azure.yaml.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from shared.adapters.settings import SETTINGS
from shared.adapters.tables.common import DEFAULT_PREFIX, TABLES, table_names
from tests import bicep
from tests.bicep import Expr, ForLoop

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
MAIN = INFRA / "main.bicep"

# Built-in Azure role definition ids (identical in every tenant).
ROLE_IDS = {
    "Azure Service Bus Data Sender": "69a216fc-b8fb-44d8-bc22-1f3c2cd27a39",
    "Azure Service Bus Data Receiver": "4f6d3b9b-027b-4f4c-9142-0e5a2a2247e0",
    "Azure Service Bus Data Owner": "090c5cfd-751d-490a-894a-3ce6f1109419",
    "Storage Blob Data Owner": "b7e6dc6d-f1e8-4753-8033-0f276bb0955b",
    "Storage Table Data Contributor": "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3",
    "Monitoring Metrics Publisher": "3913510d-42f4-4e42-8a64-420c390055eb",
    "Key Vault Secrets User": "4633458b-17de-408a-b874-0445c86b69e6",
}
# Never to be granted by these templates: control-plane owners/contributors and data owners.
# (Service Bus Data Owner is allowed on the two trigger queues only: see TRIGGER_QUEUES.)
FORBIDDEN_ROLE_IDS = {
    "Owner": "8e3af657-a8ff-443c-a75c-2fe8c4bcb635",
    "Contributor": "b24988ac-6180-42a0-ab88-20f7382dd24c",
    "User Access Administrator": "18d7d88d-d35e-4fb5-a5c3-7773c20a72d9",
    "Key Vault Administrator": "00482a5a-887f-4fb3-b363-3b7fe8e74483",
    "Storage Account Contributor": "17d1049b-9a84-46fb-8f53-869881c3d3ab",
}

# App settings the code reads that Azure deliberately does not set, and why.
INTENTIONALLY_UNSET = {
    "ServiceBusConnection": "connection string (local/dev); Azure uses ServiceBusConnection__* with the managed identity",
    "AzureWebJobsStorage": "connection string (local/dev); Azure uses AzureWebJobsStorage__* with the managed identity",
    "DATAVERSE_ACCESS_TOKEN": "dev/test only static token",
}
# Settings the templates set that the code does not read: read by the Functions host, the Python
# worker or the Azure Monitor exporter. Anything else the templates set must be in SETTINGS.
PLATFORM_SETTINGS = {
    "AzureWebJobsStorage__credential",
    "AzureWebJobsStorage__blobServiceUri",
    "AzureWebJobsStorage__queueServiceUri",
    "ServiceBusConnection__credential",
    "APPLICATIONINSIGHTS_CONNECTION_STRING",
    "APPLICATIONINSIGHTS_AUTHENTICATION_STRING",
    "FUNCTIONS_REQUEST_BODY_SIZE_LIMIT",
}
# Flex Consumption rejects these (the runtime is set in functionAppConfig).
FLEX_REJECTED = {"FUNCTIONS_WORKER_RUNTIME", "FUNCTIONS_EXTENSION_VERSION", "WEBSITE_RUN_FROM_PACKAGE",
                 "WEBSITE_CONTENTAZUREFILECONNECTIONSTRING", "WEBSITE_CONTENTSHARE"}

KV_REFERENCE = re.compile(
    r"^@Microsoft\.KeyVault\((SecretUri=https://[^)\s]+/secrets/[A-Za-z0-9-]+/?[^)\s]*"
    r"|VaultName=[^;)\s]+;SecretName=[A-Za-z0-9-]+(;SecretVersion=[0-9a-f]+)?)\)$")
GUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@pytest.fixture(scope="module")
def tree() -> dict[str, bicep.BicepFile]:
    return {p.relative_to(INFRA).as_posix(): f for p, f in bicep.load_tree(INFRA).items()}


@pytest.fixture(scope="module")
def main(tree) -> bicep.BicepFile:
    return tree["main.bicep"]


def resources(tree, rtype: str) -> list[bicep.Resource]:
    return [r for f in tree.values() for r in f.resources if r.type.lower() == rtype.lower() and not r.existing]


def one(tree, rtype: str) -> bicep.Resource:
    found = resources(tree, rtype)
    assert len(found) == 1, f"expected one {rtype}, found {len(found)}"
    return found[0]


def app_settings(tree) -> dict:
    config = [r for r in resources(tree, "Microsoft.Web/sites/config") if r.get("name") == "appsettings"]
    assert len(config) == 1, "one Microsoft.Web/sites/config 'appsettings' resource"
    props = config[0].get("properties")
    if isinstance(props, Expr):  # properties: someVar
        props = tree["modules/functionapp.bicep"].vars[props.text.strip()]
    assert isinstance(props, dict), "app settings must be an object literal the tests can read"
    return props


def value_text(value) -> str:
    return value if isinstance(value, str) else getattr(value, "text", str(value))


# --- the reader itself ----------------------------------------------------------------------------


def test_reader_rejects_what_it_cannot_follow():
    with pytest.raises(bicep.BicepSyntaxError):
        bicep.parse("resource r 'A/b@2020-01-01' = {\n  name: 'x'\n  name: 'y'\n}\n")
    with pytest.raises(bicep.BicepSyntaxError):
        bicep.parse("param x string = 'unterminated\n")
    doc = bicep.parse("var o = c ? { A: 'a' } : { B: 'b' }\n@secure()\nparam s string\n")
    assert [o for o in doc.vars["o"].objects()] == [{"A": "a"}, {"B": "b"}]
    assert doc.params["s"].secure and not doc.params["s"].has_default


def test_every_template_parses(tree):
    expected = {"main.bicep", "modules/identity.bicep", "modules/monitoring.bicep", "modules/storage.bicep",
                "modules/servicebus.bicep", "modules/keyvault.bicep", "modules/access.bicep",
                "modules/functionapp.bicep", "modules/workbook.bicep", "modules/alerts.bicep"}
    assert expected <= set(tree)


def test_modules_exist_and_get_only_declared_params(tree, main):
    for module in main.modules:
        target = (INFRA / module.path).resolve()
        assert target.exists(), module.path
        declared = tree[target.relative_to(INFRA).as_posix()].params
        passed = set(module.params)
        assert passed <= set(declared), f"{module.path}: unknown params {passed - set(declared)}"
        required = {n for n, p in declared.items() if not p.has_default}
        assert required <= passed, f"{module.path}: missing params {required - passed}"


# --- main.bicep and main.parameters.json ----------------------------------------------------------


def test_main_is_subscription_scoped_and_creates_the_resource_group(main):
    assert main.target_scope == "subscription"
    assert [r.type for r in main.resources] == ["Microsoft.Resources/resourceGroups"]
    assert all("scope" in m.body and m.body["scope"].text == "rg" for m in main.modules)


def test_parameters_file_matches_main(main):
    doc = json.loads((INFRA / "main.parameters.json").read_text())
    params = doc["parameters"]
    assert set(params) <= set(main.params), f"unknown parameters {set(params) - set(main.params)}"
    for name, p in main.params.items():
        if not p.has_default:
            assert name in params, f"required parameter {name} is missing from main.parameters.json"
    assert params["environmentName"]["value"] == "${AZURE_ENV_NAME}"
    assert params["location"]["value"] == "${AZURE_LOCATION}"
    assert params["principalId"]["value"] == "${AZURE_PRINCIPAL_ID}"
    # azd sets AZURE_PRINCIPAL_TYPE from its sign-in (ServicePrincipal in a pipeline); User by default
    assert params["principalType"]["value"] == "${AZURE_PRINCIPAL_TYPE=User}"
    assert main.params["principalType"].decorators["allowed"] == [["User", "ServicePrincipal", "Group"]]


def test_secrets_are_secure_parameters_never_defaulted_to_a_value(main):
    for name in ("ledgerKey", "webhookSecret", "dataverseClientSecret"):
        p = main.params[name]
        assert p.secure, f"{name} must be @secure()"
        assert not p.has_default or p.default == "", f"{name} must not carry a value in the template"
    # explicit, never generated by azd: a generated value lives in one machine's azd environment, so
    # provisioning from another machine or CI would silently re-key the ledger
    params = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
    for name, env in (("ledgerKey", "LEDGER_KEY"), ("webhookSecret", "WEBHOOK_SECRET")):
        p = main.params[name]
        assert "azd" not in p.metadata and not p.has_default, f"{name} must be an explicit required parameter"
        assert p.decorators["minLength"] == [32]  # at least 32 characters, as Settings checks
        assert params[name]["value"] == "${%s}" % env
    assert params["ledgerKeyPrevious"]["value"] == "${LEDGER_KEY_PREVIOUS}"
    assert params["webhookSecretPrevious"]["value"] == "${WEBHOOK_SECRET_PREVIOUS}"
    assert main.params["webhookSecretPrevious"].secure and main.params["webhookSecretPrevious"].default == ""
    assert main.params["ledgerKeyPrevious"].secure and main.params["ledgerKeyPrevious"].default == ""
    # and CI gets them as pipeline secrets (azd pipeline config)
    pipeline = (ROOT / "azure.yaml").read_text().split("\npipeline:", 1)[1]
    for env in ("LEDGER_KEY", "LEDGER_KEY_PREVIOUS", "WEBHOOK_SECRET", "WEBHOOK_SECRET_PREVIOUS", "DATAVERSE_CLIENT_SECRET"):
        assert f"    - {env}\n" in pipeline.split("secrets:", 1)[1], env
    assert "    - AZURE_PRINCIPAL_TYPE\n" in pipeline.split("secrets:", 1)[0]


def test_no_secret_in_outputs(tree):
    suspicious = re.compile(r"secret|ledgerkey|password|connectionstring|listkeys|\bsas\b|token", re.I)
    for path, f in tree.items():
        secure_params = {n for n, p in f.params.items() if p.secure}
        for out in f.outputs.values():
            text = value_text(out.value)
            assert not out.secure
            assert not (set(re.findall(r"\w+", text)) & secure_params), f"{path}: output {out.name} uses a secret"
            assert not suspicious.search(text), f"{path}: output {out.name} = {text} looks like a secret"


# --- app settings ---------------------------------------------------------------------------------


def test_every_setting_the_code_reads_is_set_or_intentionally_unset(tree):
    settings = app_settings(tree)
    read = {s.name for s in SETTINGS}
    assert set(INTENTIONALLY_UNSET) <= read, "the intentionally-unset list names settings the code no longer reads"
    missing = read - set(settings) - set(INTENTIONALLY_UNSET)
    assert not missing, f"settings the code reads but the templates do not set: {sorted(missing)}"
    assert not (set(INTENTIONALLY_UNSET) & set(settings)), "a connection-string/dev setting is set in Azure"


# Settings whose value comes from a main.bicep parameter of the same default as the code's.
SETTING_PARAMS = {
    "RECONCILE_SCHEDULE": "reconcileSchedule",
    "RECONCILE_QUEUE": "reconcileQueueName",
    "RECONCILE_CHUNK_SIZE": "reconcileChunkSize",
    "RECONCILE_FANOUT_ABOVE": "reconcileFanoutAbove",
    "CHANGES_QUEUE": "changesQueueName",
    "TABLE_PREFIX": "tablePrefix",
}


@pytest.mark.parametrize("setting", sorted(SETTING_PARAMS))
def test_setting_is_wired_to_its_parameter_with_the_code_default(tree, main, setting):
    param = SETTING_PARAMS[setting]
    settings = app_settings(tree)
    assert setting in settings, f"{setting} is not set"
    assert setting not in INTENTIONALLY_UNSET
    # the module's param, passed through from main's param of the same name
    assert re.fullmatch(rf"(string\()?{param}\)?", value_text(settings[setting])), value_text(settings[setting])
    module = next(m for m in main.modules if m.path == "modules/functionapp.bicep")
    assert value_text(module.params[param]) == param
    default = next(s.default for s in SETTINGS if s.name == setting)
    assert main.params[param].default == default, f"{param} default differs from {setting}'s"


def test_reconcile_numbers_are_validated_like_the_code(main):
    # RECONCILE_CHUNK_SIZE is a positive int, RECONCILE_FANOUT_ABOVE a non-negative one
    assert main.params["reconcileChunkSize"].type == "int" and main.params["reconcileChunkSize"].decorators["minValue"] == [1]
    assert main.params["reconcileFanoutAbove"].type == "int" and main.params["reconcileFanoutAbove"].decorators["minValue"] == [0]


def test_nothing_set_is_misnamed(tree):
    settings = app_settings(tree)
    read = {s.name for s in SETTINGS}
    unknown = set(settings) - read - PLATFORM_SETTINGS
    assert not unknown, f"set by the templates but read by nobody (misnamed?): {sorted(unknown)}"
    assert not (set(settings) & FLEX_REJECTED)


def test_identity_based_connections_use_the_user_assigned_identity(tree):
    s = app_settings(tree)
    assert s["AzureWebJobsStorage__credential"] == "managedidentity"
    assert s["ServiceBusConnection__credential"] == "managedidentity"
    for name in ("AzureWebJobsStorage__clientId", "ServiceBusConnection__clientId"):
        assert value_text(s[name]) == "identityClientId"
    assert "primaryEndpoints.table" in value_text(s["AzureWebJobsStorage__tableServiceUri"])
    assert "primaryEndpoints.blob" in value_text(s["AzureWebJobsStorage__blobServiceUri"])
    assert "serviceBusEndpoint" in value_text(s["ServiceBusConnection__fullyQualifiedNamespace"])
    assert "Authorization=AAD" in s["APPLICATIONINSIGHTS_AUTHENTICATION_STRING"]
    assert s["PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY"] == "true"


def test_no_keys_or_connection_strings_anywhere(tree):
    for path, f in tree.items():
        text = (INFRA / path).read_text()
        assert "listKeys" not in text and "listConnectionStrings" not in text, path
        assert "AccountKey=" not in text and "SharedAccessKey" not in text, path


def test_secrets_are_key_vault_references(tree):
    s = app_settings(tree)
    secret_names = {x.name for x in SETTINGS if x.secret} - set(INTENTIONALLY_UNSET)
    fa = tree["modules/functionapp.bicep"]
    for name in secret_names:
        value = s[name]
        # a reference held in a var, or chosen by a ternary between a reference and ''
        candidates = [value] if isinstance(value, str) else [fa.vars.get(tok, tok) for tok in re.findall(r"\w+", value.text)]
        refs = [c for c in candidates if isinstance(c, str) and c.startswith("@Microsoft.KeyVault")]
        assert refs, f"{name} is not a Key Vault reference"
        for ref in refs:
            concrete = re.sub(r"\$\{[^}]+\}", "kv-example", ref)
            assert KV_REFERENCE.match(concrete), f"{name}: malformed reference {ref}"
    assert KV_REFERENCE.match("@Microsoft.KeyVault(SecretUri=https://kv.vault.azure.net/secrets/ledger-key/)")
    assert not KV_REFERENCE.match("@Microsoft.KeyVault(VaultName=kv;Secret=ledger-key)")


def test_key_vault_secret_names_match_the_references(tree):
    vault_secrets = {r.get("name") for r in resources(tree, "Microsoft.KeyVault/vaults/secrets")}
    fa = tree["modules/functionapp.bicep"]
    referenced = {m for v in fa.vars.values() if isinstance(v, str) for m in re.findall(r"SecretName=([\w-]+)", v)}
    assert referenced and referenced <= vault_secrets
    vault = one(tree, "Microsoft.KeyVault/vaults")
    assert vault.properties["enableRbacAuthorization"] is True


# --- function app -----------------------------------------------------------------------------------


def test_flex_consumption_python_311_with_user_assigned_identity(tree):
    plan = one(tree, "Microsoft.Web/serverfarms")
    assert plan.get("sku") == {"name": "FC1", "tier": "FlexConsumption"}
    site = one(tree, "Microsoft.Web/sites")
    assert site.get("kind") == "functionapp,linux"
    assert site.get("identity")["type"] == "UserAssigned"
    cfg = site.properties["functionAppConfig"]
    assert cfg["runtime"] == {"name": "python", "version": "3.11"}
    storage = cfg["deployment"]["storage"]
    assert storage["type"] == "blobContainer"
    assert storage["authentication"]["type"] == "UserAssignedIdentity"
    assert {"maximumInstanceCount", "instanceMemoryMB"} <= set(cfg["scaleAndConcurrency"])
    assert value_text(site.properties["keyVaultReferenceIdentity"]) == "identityId"
    assert site.properties["httpsOnly"] is True


def test_azure_yaml_service_matches_the_tag(tree):
    text = (ROOT / "azure.yaml").read_text()
    services = re.search(r"^services:\n((?:[ #].*\n|\n)+)", text, re.M).group(1)
    names = re.findall(r"^  ([A-Za-z0-9_-]+):", services, re.M)
    assert len(names) == 1
    body = services.split(f"  {names[0]}:", 1)[1]
    assert re.search(r"^    host: function$", body, re.M) and re.search(r"^    language: python$", body, re.M)
    assert re.search(r"^  provider: bicep$", text, re.M) and re.search(r"^  path: infra$", text, re.M)
    site = one(tree, "Microsoft.Web/sites")
    tags = site.get("tags")
    tag_objects = tags.objects() if isinstance(tags, Expr) else [tags]
    tagged = [o["azd-service-name"] for o in tag_objects if "azd-service-name" in o]
    assert tagged == [names[0]]


# --- storage ------------------------------------------------------------------------------------------


def test_every_table_the_code_uses_is_created(tree, main):
    suffixes = main.vars["tableSuffixes"]
    assert tuple(suffixes) == TABLES
    assert main.params["tablePrefix"].default == DEFAULT_PREFIX
    loop = main.vars["tableNames"]
    assert isinstance(loop, ForLoop) and loop.header == "suffix in tableSuffixes"
    assert loop.body == "${tablePrefix}${suffix}"
    created = [loop.body.replace("${tablePrefix}", DEFAULT_PREFIX).replace("${suffix}", s) for s in suffixes]
    assert created == table_names(DEFAULT_PREFIX)
    # ...and the storage module creates one table per name it is given
    storage_module = next(m for m in main.modules if m.path == "modules/storage.bicep")
    assert storage_module.params["tableNames"].text == "tableNames"
    tables = one(tree, "Microsoft.Storage/storageAccounts/tableServices/tables")
    assert isinstance(tables.body, ForLoop) and tables.body.header == "tableName in tableNames"
    assert tables.body.body["name"].text == "tableName"


def test_storage_account_has_shared_key_access_off(tree):
    account = one(tree, "Microsoft.Storage/storageAccounts")
    assert account.properties["allowSharedKeyAccess"] is False
    assert account.properties["allowBlobPublicAccess"] is False
    assert one(tree, "Microsoft.Storage/storageAccounts/blobServices/containers").properties["publicAccess"] == "None"


# --- Service Bus --------------------------------------------------------------------------------------


def test_service_bus_is_standard_without_local_auth(tree):
    ns = one(tree, "Microsoft.ServiceBus/namespaces")
    assert ns.get("sku")["name"] == "Standard"
    assert ns.properties["disableLocalAuth"] is True


@pytest.mark.parametrize("symbol", ["changesQueue", "parkedQueue", "reconcileQueue"])
def test_queue_properties(tree, symbol):
    queue = next(r for r in resources(tree, "Microsoft.ServiceBus/namespaces/queues") if r.symbol == symbol)
    p = queue.properties
    assert p["requiresDuplicateDetection"] is True
    sb = tree["modules/servicebus.bicep"]
    window = sb.params["duplicateDetectionWindow"].default
    assert value_text(p["duplicateDetectionHistoryTimeWindow"]) == "duplicateDetectionWindow"
    assert re.fullmatch(r"PT(\d+)M", window) and 5 <= int(window[2:-1]) <= 60  # covers Dataverse's retry
    assert p["lockDuration"] == "PT5M"  # the maximum: a batch of 500 events makes several Dataverse rounds
    assert p["deadLetteringOnMessageExpiration"] is True
    delivery = "reconcileMaxDeliveryCount" if symbol == "reconcileQueue" else "maxDeliveryCount"
    assert value_text(p["maxDeliveryCount"]) == delivery and sb.params[delivery].default >= 5
    assert p["requiresSession"] is False  # the trigger binding is not session-enabled


def test_reconcile_queue(tree, main):
    queue = next(r for r in resources(tree, "Microsoft.ServiceBus/namespaces/queues") if r.symbol == "reconcileQueue")
    assert value_text(queue.get("name")) == "reconcileQueueName"
    assert value_text(queue.get("parent")) == "namespace"
    sb = tree["modules/servicebus.bicep"]
    # the runbook says a chunk is dead-lettered after 5 failed deliveries
    assert sb.params["reconcileMaxDeliveryCount"].default == 5
    assert re.fullmatch(r"P\d+D|PT\d+H", queue.properties["defaultMessageTimeToLive"])
    module = next(m for m in main.modules if m.path == "modules/servicebus.bicep")
    assert value_text(module.params["reconcileQueueName"]) == "reconcileQueueName"
    assert "reconcileQueueId" in sb.outputs
    # the function's binding reads the queue from the setting the templates set
    app = (ROOT / "function_app.py").read_text()
    assert re.search(r'service_bus_queue_trigger\([^)]*queue_name="%RECONCILE_QUEUE%"[^)]*connection="ServiceBusConnection"', app)
    assert value_text(main.outputs["RECONCILE_QUEUE"].value) == "reconcileQueueName"


def test_queue_names_follow_the_code_defaults(main):
    defaults = {s.name: s.default for s in SETTINGS}
    assert main.params["changesQueueName"].default == defaults["CHANGES_QUEUE"]
    assert main.vars["parkedQueueName"] == "${changesQueueName}-parked"
    assert main.params["reconcileQueueName"].default == defaults["RECONCILE_QUEUE"]
    names = {defaults["CHANGES_QUEUE"], f"{defaults['CHANGES_QUEUE']}-parked", defaults["RECONCILE_QUEUE"]}
    assert len(names) == 3, "the queues must be distinct"


# --- roles ----------------------------------------------------------------------------------------------


def role_assignments(tree):
    access = tree["modules/access.bicep"]
    roles = access.vars["roles"]
    out = []
    for r in resources(tree, "Microsoft.Authorization/roleAssignments"):
        text = value_text(r.properties["roleDefinitionId"])
        ref = re.search(r"roles\.(\w+)", text)
        role_id = roles[ref.group(1)] if ref else (GUID.search(text) or [None])[0]
        out.append((r, role_id, value_text(r.get("scope")), value_text(r.properties["principalId"])))
    return out


def test_role_definition_ids_are_the_documented_built_ins(tree):
    roles = tree["modules/access.bicep"].vars["roles"]
    by_id = {v: k for k, v in ROLE_IDS.items()}
    for key, role_id in roles.items():
        assert role_id in by_id, f"roles.{key} = {role_id} is not one of the expected built-in roles"
    names = {"serviceBusDataSender": "Azure Service Bus Data Sender",
             "serviceBusDataReceiver": "Azure Service Bus Data Receiver",
             "serviceBusDataOwner": "Azure Service Bus Data Owner",
             "storageBlobDataOwner": "Storage Blob Data Owner",
             "storageTableDataContributor": "Storage Table Data Contributor",
             "monitoringMetricsPublisher": "Monitoring Metrics Publisher",
             "keyVaultSecretsUser": "Key Vault Secrets User"}
    assert {k: ROLE_IDS[v] for k, v in names.items()} == roles


def test_no_owner_or_contributor_role_is_granted(tree):
    assignments = role_assignments(tree)
    assert assignments
    for r, role_id, _, _ in assignments:
        assert role_id is not None, f"{r.symbol}: role id not understood"
        assert role_id not in FORBIDDEN_ROLE_IDS.values(), f"{r.symbol} grants a forbidden role"
    for path in tree:
        text = (INFRA / path).read_text().lower()
        for name, guid in FORBIDDEN_ROLE_IDS.items():
            assert guid not in text, f"{path} mentions {name}"


def test_app_identity_gets_exactly_the_roles_it_needs_at_the_right_scope(tree):
    got = {(role_id, scope) for _, role_id, scope, principal in role_assignments(tree) if principal == "appPrincipalId"}
    want = {
        (ROLE_IDS["Azure Service Bus Data Receiver"], "changesQueue"),
        (ROLE_IDS["Azure Service Bus Data Sender"], "changesQueue"),
        (ROLE_IDS["Azure Service Bus Data Sender"], "parkedQueue"),
        (ROLE_IDS["Azure Service Bus Data Receiver"], "parkedQueue"),
        (ROLE_IDS["Azure Service Bus Data Sender"], "reconcileQueue"),  # nightly_reconcile fans out
        (ROLE_IDS["Azure Service Bus Data Receiver"], "reconcileQueue"),  # reconcile_chunk
        (ROLE_IDS["Azure Service Bus Data Owner"], "changesQueue"),  # the scale controller reads the backlog
        (ROLE_IDS["Azure Service Bus Data Owner"], "reconcileQueue"),
        (ROLE_IDS["Storage Blob Data Owner"], "storage"),
        (ROLE_IDS["Storage Table Data Contributor"], "storage"),
        (ROLE_IDS["Monitoring Metrics Publisher"], "appInsights"),
        (ROLE_IDS["Key Vault Secrets User"], "vault"),
    }
    assert got == want
    # the queue scopes really are the queues, not the namespace
    access = tree["modules/access.bicep"]
    by_symbol = {r.symbol: r for r in access.resources}
    assert by_symbol["changesQueue"].type == "Microsoft.ServiceBus/namespaces/queues"
    assert by_symbol["parkedQueue"].type == "Microsoft.ServiceBus/namespaces/queues"
    assert by_symbol["reconcileQueue"].type == "Microsoft.ServiceBus/namespaces/queues"
    assert value_text(by_symbol["reconcileQueue"].get("name")) == "reconcileQueueName"
    assert value_text(by_symbol["reconcileQueue"].get("parent")) == "namespace"


TRIGGER_QUEUES = {"changesQueue": "%CHANGES_QUEUE%", "reconcileQueue": "%RECONCILE_QUEUE%"}


def test_service_bus_data_owner_only_on_the_trigger_queues_for_the_app(tree):
    owner = ROLE_IDS["Azure Service Bus Data Owner"]
    grants = [(scope, principal) for _, role_id, scope, principal in role_assignments(tree) if role_id == owner]
    assert sorted(grants) == sorted((q, "appPrincipalId") for q in TRIGGER_QUEUES)
    access = {r.symbol: r for r in tree["modules/access.bicep"].resources}
    for symbol in TRIGGER_QUEUES:  # a queue, never the namespace
        assert access[symbol].type == "Microsoft.ServiceBus/namespaces/queues" and access[symbol].existing
    # ...and those are exactly the queues a function is triggered by
    app = (ROOT / "function_app.py").read_text()
    triggered = set(re.findall(r'service_bus_queue_trigger\([^)]*queue_name="(%\w+%)"', app))
    assert triggered == set(TRIGGER_QUEUES.values())
    doc = (ROOT / "docs" / "architecture.md").read_text()
    assert "Azure Service Bus Data Owner" in doc and "learn.microsoft.com" in doc


def test_operator_can_read_every_dead_letter_queue(tree):
    got = {(role_id, scope) for r, role_id, scope, principal in role_assignments(tree)
           if principal == "operatorPrincipalId"}
    for queue in ("changesQueue", "parkedQueue", "reconcileQueue"):
        assert (ROLE_IDS["Azure Service Bus Data Receiver"], queue) in got, queue
    # the operator never sends reconciliation chunks
    assert (ROLE_IDS["Azure Service Bus Data Sender"], "reconcileQueue") not in got
    for r, _, _, principal in role_assignments(tree):
        if principal == "operatorPrincipalId":
            assert r.condition is not None and r.condition.text == "hasOperator", r.symbol


def test_role_assignment_names_are_deterministic(tree):
    for r, *_ in role_assignments(tree):
        assert value_text(r.get("name")).startswith("guid("), r.symbol


# --- monitoring -------------------------------------------------------------------------------------


def test_application_insights_and_log_analytics_have_local_auth_off(tree):
    ai = one(tree, "Microsoft.Insights/components")
    assert ai.properties["DisableLocalAuth"] is True
    assert value_text(ai.properties["WorkspaceResourceId"]) == "workspace.id"
    assert one(tree, "Microsoft.OperationalInsights/workspaces").properties["features"]["disableLocalAuth"] is True


def test_host_json_is_in_open_telemetry_mode():
    host = json.loads((ROOT / "host.json").read_text())
    assert host.get("telemetryMode") == "OpenTelemetry"


def test_workbook_covers_the_morning_review():
    wb = json.loads((INFRA / "workbook.json").read_text())
    queries = " ".join(i["content"].get("query", "") for i in wb["items"] if i["type"] == 3)
    for needle in ("reconcile.report", "straddle_found_", "straddle_fixed_", "straddle_propagation_ms",
                   "percentile", "process.batch", "straddle_processed"):
        assert needle in queries, needle
    metrics = [m for i in wb["items"] if i["type"] == 10 for m in i["content"]["metrics"]]
    assert any(m["metric"].endswith("DeadletteredMessages") and m["splitBy"] == "EntityName" for m in metrics)
    wbres = one(wb_tree(), "Microsoft.Insights/workbooks")
    assert "loadTextContent('../workbook.json')" in value_text(wbres.properties["serializedData"])


def wb_tree():
    return {"workbook": bicep.load(INFRA / "modules" / "workbook.bicep")}


def reconcile_code() -> str:
    """The nightly run's code: every module of the reconcile package."""
    return "".join(p.read_text() for p in sorted((ROOT / "shared" / "service_layer" / "reconcile").glob("*.py")))


def test_emitted_fields_exist_in_the_code():
    """The queries name fields the code logs (process_changes.py, functions.py): a rename must fail here."""
    code = ((ROOT / "shared" / "service_layer" / "process_changes.py").read_text()
            + (ROOT / "shared" / "entrypoints" / "functions.py").read_text())
    assert re.search(r'emit\(log, "sync\.applied".*propagation_ms=', code, re.S)
    assert re.search(r'emit\(log, "process\.batch".*processed=', code, re.S)
    assert '"sync.parked"' in code
    reconcile = reconcile_code()
    assert re.search(r'emit\(log, "reconcile\.fanned_out", run_id=.*chunks=.*candidates=', reconcile)
    assert reconcile.count('emit(log, "reconcile.report"') >= 2  # inline, and by the last chunk


class EmptyRecords:
    def window(self, since, until):
        return []


def emitted_fields() -> set[str]:
    """Field names the code logs: a real report's keys, plus every keyword in an emit(...) call."""
    from datetime import datetime, timezone

    from shared.service_layer.compliance import compliance_view, report_fields
    from shared.service_layer.reconcile.chunks import ChunkResult
    from shared.service_layer.reconcile.report import finish

    header = {"run_id": "r", "started_at": "2025-01-01T02:00:00Z", "dry_run": False, "candidates": 0,
              "rows_scanned": 0, "first_snapshot_lists": 0, "chunks": 1}
    fields = set(finish(header, ChunkResult(), 0, 0.0, lambda: 1.0))
    fields |= set(report_fields(compliance_view(EmptyRecords(), datetime(2025, 1, 1, tzinfo=timezone.utc),
                                                datetime(2025, 1, 2, tzinfo=timezone.utc))))  # compliance.check
    for path in (ROOT / "shared").rglob("*.py"):
        for call in re.findall(r"emit\((.*?)\)\n", path.read_text(), re.S):
            fields |= set(re.findall(r"\b(\w+)=", call))
    return fields


def test_every_field_the_queries_read_is_emitted():
    """customDimensions.straddle_<field> in the workbook, the alerts and the docs must name a field
    the code logs (a query over a misspelt field is silently empty: the alert never fires)."""
    known = emitted_fields()
    assert {"found_D1", "fixed_D5", "oldest_unhealed_opt_out_hours", "propagation_ms"} <= known
    texts = {"workbook.json": (INFRA / "workbook.json").read_text(),
             "alerts.bicep": (INFRA / "modules" / "alerts.bicep").read_text(),
             "runbook.md": (ROOT / "docs" / "runbook.md").read_text(),
             "monitoring.md": (ROOT / "docs" / "monitoring.md").read_text()}
    for name, text in texts.items():
        for field in set(re.findall(r"straddle_(\w*)", text)):
            if not field:  # the docs' "straddle_<field>"
                continue
            ok = any(k.startswith(field) for k in known) if field.endswith("_") else field in known
            assert ok, f"{name}: straddle_{field} is not a field the code emits"


def emitted_records() -> set[str]:
    """Record names the code logs: the first argument after the logger of every emit(...) call."""
    names = set()
    for path in (ROOT / "shared").rglob("*.py"):
        names |= set(re.findall(r'emit\(\s*\w+,\s*"([a-z_]+\.[a-z_]+)"', path.read_text()))
    return names


def reported_statuses() -> set[str]:
    """Every status a reconcile.report can carry (the reconcile package writes them as literals, one a ternary)."""
    code = reconcile_code()
    found = {v for pair in re.findall(r'"status":\s*"(\w+)"(?: if [^\n]*? else "(\w+)")?', code) for v in pair if v}
    return found | set(re.findall(r'status="(\w+)"', code))


def query_texts() -> dict[str, str]:
    return {"workbook.json": (INFRA / "workbook.json").read_text(),
            "alerts.bicep": (INFRA / "modules" / "alerts.bicep").read_text(),
            "runbook.md": (ROOT / "docs" / "runbook.md").read_text(),
            "monitoring.md": (ROOT / "docs" / "monitoring.md").read_text()}


def test_every_record_and_status_the_queries_name_is_logged():
    """A query over a record name or a status value the code never logs is silently empty: a
    "no successful run" alert would then fire for ever, or a "failed run" one never."""
    records, statuses = emitted_records(), reported_statuses()
    assert {"reconcile.report", "sync.applied", "process.batch"} <= records
    assert {"succeeded", "failed_writes", "no_mappings", "running"} <= statuses
    for name, text in query_texts().items():
        for record in set(re.findall(r'message startswith \\?"([\w.]+)\\?"', text)):
            ok = any(r.startswith(record) for r in records) if record.endswith(".") else record in records
            assert ok, f"{name}: no code logs a {record!r} record"
        for status in set(re.findall(r'straddle_status\)?\s*(?:==|!=|=~)\s*\\?"(\w+)', text)):
            assert status in statuses, f"{name}: {status!r} is not a status the code reports"


def test_the_no_reconciliation_alert_needs_a_succeeded_run(tree):
    query = tree["modules/alerts.bicep"].vars["noReconcileQuery"]
    # only a run that did its job keeps the alert quiet: not no_mappings, not failed_writes, not a dry run
    assert re.search(r'where tostring\(customDimensions\.straddle_status\) == "succeeded"', query)
    assert 'straddle_dry_run)) != "true"' in query and "runs == 0" in query
    assert "succeeded" in reported_statuses()


def test_alerts(tree):
    metric = one(tree, "Microsoft.Insights/metricAlerts")
    assert isinstance(metric.body, ForLoop)
    # one alert per queue
    assert metric.body.header == "queueName in [changesQueueName, parkedQueueName, reconcileQueueName]"
    main = tree["main.bicep"]
    alerts_module = next(m for m in main.modules if m.path == "modules/alerts.bicep")
    for name in ("changesQueueName", "parkedQueueName", "reconcileQueueName"):
        assert value_text(alerts_module.params[name]) == name
    crit = metric.properties["criteria"]["allOf"][0]
    assert crit["metricName"] == "DeadletteredMessages" and crit["threshold"] == 0 and crit["operator"] == "GreaterThan"
    assert crit["dimensions"][0]["name"] == "EntityName" and crit["dimensions"][0]["values"][0].text == "queueName"

    alerts = tree["modules/alerts.bicep"]
    rules = {r.symbol: r for r in resources(tree, "Microsoft.Insights/scheduledQueryRules")}
    assert set(rules) == {"noReconcileAlert", "driftAlert", "unpropagatedAlert", "deadlineAlert"}
    no_run = alerts.vars["noReconcileQuery"]
    assert "ago(26h)" in no_run and "reconcile.report" in no_run and "runs == 0" in no_run
    assert rules["noReconcileAlert"].properties["windowSize"] == "P2D"  # the query looks back 26 h
    drift_rule = rules["driftAlert"].properties["criteria"]["allOf"][0]["query"]
    assert "driftAlertThreshold" in drift_rule.text and "__THRESHOLD__" in alerts.vars["driftQuery"]
    assert all(f"straddle_found_D{i}" in alerts.vars["driftQuery"] for i in range(1, 6))
    unprop = alerts.vars["unpropagatedQuery"]
    assert "straddle_oldest_unhealed_opt_out_hours" in unprop and "hours > 24" in unprop
    assert "driftAlertThreshold" in tree["main.bicep"].params


def test_the_deadline_alert_fires_on_the_hourly_checks_oldest_open_opt_out_past_opt_out_deadline_hours(tree, main):
    from shared.domain.compliance import DEFAULT_DEADLINE_HOURS
    from shared.service_layer.compliance import report_fields

    alerts = tree["modules/alerts.bicep"]
    rule = next(r for r in resources(tree, "Microsoft.Insights/scheduledQueryRules") if r.symbol == "deadlineAlert")
    crit = rule.properties["criteria"]["allOf"][0]
    assert "optOutDeadlineHours" in crit["query"].text and "__DEADLINE_HOURS__" in crit["query"].text
    query = alerts.vars["deadlineQuery"]
    assert 'message startswith "compliance.check"' in query and "hours > __DEADLINE_HOURS__" in query
    # the field the query reads is one the check logs
    assert "straddle_opt_outs_oldest_open_hours" in query and "opt_outs_oldest_open_hours" in report_fields(VIEW)
    assert rule.properties["evaluationFrequency"] == "PT1H"  # the check runs hourly (function_app.compliance_check)
    # one parameter feeds the alert and the app setting, with the code's default
    assert main.params["optOutDeadlineHours"].default == DEFAULT_DEADLINE_HOURS
    assert main.params["optOutDeadlineHours"].decorators["maxValue"] == [47]  # below the 48 h deadline itself
    for path in ("modules/alerts.bicep", "modules/functionapp.bicep"):
        module = next(m for m in main.modules if m.path == path)
        assert value_text(module.params["optOutDeadlineHours"]) == "optOutDeadlineHours"
    assert value_text(app_settings(tree)["OPT_OUT_DEADLINE_HOURS"]) == "string(optOutDeadlineHours)"


VIEW = {"received": 0, "propagated": 0, "open": 0, "open_past_deadline": 0, "deadline_hours": 24,
        "oldest_open_hours": None, "one_click": 0, "undated": 0, "breached_48h": 0, "breached_10_business_days": 0,
        "time_to_effect": {"p50_s": None, "p95_s": None, "p99_s": None, "max_s": None}}


def test_the_workbook_shows_the_compliance_figures_the_check_logs():
    from shared.service_layer.compliance import report_fields

    wb = json.loads((INFRA / "workbook.json").read_text())
    (tile,) = [i["content"] for i in wb["items"] if i["type"] == 3 and "compliance.check" in i["content"]["query"]]
    fields = set(re.findall(r"straddle_(\w+)", tile["query"]))
    assert fields <= set(report_fields(VIEW)), fields - set(report_fields(VIEW))
    for needed in ("opt_outs_received", "opt_outs_open_past_deadline", "opt_out_effect_p95_s", "opt_outs_breached_48h",
                   "opt_outs_breached_10_business_days", "opt_outs_one_click"):
        assert needed in fields


def test_docs_exist_and_cover_the_runbook():
    runbook = (ROOT / "docs" / "runbook.md").read_text()
    for needle in ("/admin/functions/nightly_reconcile", "python -m shared reconcile", "dlq list", "dlq replay",
                   "LEDGER_KEY", "WEBHOOK_SECRET", "application user", "reconcile.report",
                   "reconcile_chunk", "RECONCILE_FANOUT_ABOVE", "reconcile.fanned_out", "functionTimeout"):
        assert needle in runbook, needle
    monitoring = (ROOT / "docs" / "monitoring.md").read_text()
    for needle in ("reconcile.fanned_out", "run_id, chunks, candidates", "straddle-deadletter-<reconcile queue>"):
        assert needle in monitoring, needle
    setup = (ROOT / "docs" / "dataverse-setup.md").read_text()
    for table in ("contact", "lead", "list", "listmember", "msdynmkt_purpose", "msdynmkt_topic",
                  "msdynmkt_contactpointconsent4", "serviceendpoint", "sdkmessageprocessingstep",
                  "sdkmessageprocessingstepimage"):
        assert f"`{table}`" in setup, table


# --- Azure's resource schemas ---------------------------------------------------------------------

TYPES = bicep.types_dir(ROOT)


@pytest.fixture(scope="module")
def type_folder() -> Path:
    if TYPES is None:
        pytest.fail("shared/azure-types (Azure's resource type graphs) must sit beside the checkout")
    return TYPES


def _diagnostic_setting(r) -> list[str]:
    """Microsoft.Insights/diagnosticSettings as the ARM reference documents it: an extension
    resource (scope), a destination, and log categories or category groups."""
    problems = [f"unknown top-level {k}" for k in r.body if k not in ("name", "scope", "properties")]
    props = r.body.get("properties", {})
    problems += [f"unknown property {k}" for k in props
                 if k not in ("workspaceId", "storageAccountId", "eventHubAuthorizationRuleId", "eventHubName",
                              "logs", "metrics", "logAnalyticsDestinationType", "marketplacePartnerId",
                              "serviceBusRuleId")]
    for log in props.get("logs", []):
        problems += [f"unknown log property {k}" for k in log if k not in ("category", "categoryGroup", "enabled",
                                                                            "retentionPolicy")]
        if ("category" in log) == ("categoryGroup" in log):
            problems.append("a log names a category or a categoryGroup (one of them)")
    if "scope" not in r.body or "workspaceId" not in props:
        problems.append("needs a scope and a workspaceId")
    return problems


def _basic_publishing_policy(r) -> list[str]:
    """Microsoft.Web/sites/basicPublishingCredentialsPolicies: named scm or ftp, one boolean."""
    problems = [f"unknown top-level {k}" for k in r.body if k not in ("name", "parent", "properties")]
    if r.body.get("name") not in ("scm", "ftp"):
        problems.append("name must be scm or ftp")
    if set(r.body.get("properties", {})) != {"allow"}:
        problems.append("properties hold exactly allow")
    return problems


#: Types the shared type graphs do not have (so no compiler-grade check): checked by hand against
#: the ARM template reference instead, so that a misspelt property still fails.
WITHOUT_SCHEMA = {
    "Microsoft.Insights/diagnosticSettings@2021-05-01-preview": _diagnostic_setting,
    "Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01": _basic_publishing_policy,
}


def test_every_resource_matches_azures_type_graph(tree, type_folder):
    """What the Bicep compiler would check: a known type and API version, known property names
    (spelt as the type spells them), no read-only property set, required ones present, enums and
    patterns respected."""
    problems, checked = [], 0
    for path, f in tree.items():
        for r in f.resources:
            graph = bicep.TypeGraph.load(type_folder, r.type, r.api_version)
            if graph is None and f"{r.type}@{r.api_version}" in WITHOUT_SCHEMA:
                problems += [f"{path}: {r.symbol}: {p}" for p in WITHOUT_SCHEMA[f"{r.type}@{r.api_version}"](r)]
                continue
            if graph is None:
                problems.append(f"{path}: {r.symbol}: {r.type}@{r.api_version} is not a known type and API version")
                continue
            if r.existing:
                continue
            body = r.body.body if isinstance(r.body, ForLoop) else r.body
            problems += [f"{path}: {r.symbol}: {p}" for p in graph.check_body(body, f.vars)]
            checked += 1
    assert checked >= 20
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("body,problem", [
    ({"name": "x", "location": "l", "properties": {"Application_Type": "web", "NoSuchThing": 1}}, "unknown property"),
    ({"name": "x", "location": "l", "properties": {"Application_Type": "web", "AppId": "set"}}, "read-only"),
    ({"name": "x", "location": "l", "properties": {"application_Type": "web"}}, "spelt"),
    ({"name": "x", "location": "l", "properties": {}}, "Application_Type: required"),
    ({"name": "x", "location": "l", "properties": {"Application_Type": "web", "RetentionInDays": "90"}}, "expected an integer"),
])
def test_the_schema_check_catches_what_the_compiler_would(type_folder, body, problem):
    graph = bicep.TypeGraph.load(type_folder, "Microsoft.Insights/components", "2020-02-02")
    problems = graph.check_body({"kind": "web", **body}, {})
    assert any(problem in p for p in problems), problems


def test_an_enum_is_checked(type_folder):
    graph = bicep.TypeGraph.load(type_folder, "Microsoft.KeyVault/vaults", "2023-07-01")
    vault = {"name": "kv-straddle", "location": "l",
             "properties": {"tenantId": "00000000-0000-0000-0000-000000000001", "sku": {"family": "A", "name": "gold"}}}
    assert any("is not one of" in p for p in graph.check_body(vault, {}))
    vault["properties"]["sku"]["name"] = "Standard"  # ARM compares enum values case-insensitively
    assert graph.check_body(vault, {}) == []


def test_a_pattern_is_checked(type_folder):
    graph = bicep.TypeGraph.load(type_folder, "Microsoft.KeyVault/vaults/secrets", "2023-07-01")
    assert any("does not match" in p for p in graph.check_body({"name": "not valid!", "properties": {}}, {}))
    assert graph.check_body({"name": "ledger-key", "properties": {"value": "x"}}, {}) == []


def test_location_is_limited_to_flex_consumption_regions(main):
    allowed = main.params["location"].decorators["allowed"][0]
    assert {"eastus", "westeurope", "northeurope", "australiaeast"} <= set(allowed)
    assert not {"eastus2euap", "westindia", "brazilsoutheast"} & set(allowed)  # canary, or no Flex Consumption
    assert main.params["location"].metadata["azd"]["type"] == "location"


def test_maximum_instance_count_is_bounded_as_the_platform_does(main):
    p = main.params["maximumInstanceCount"]
    assert p.decorators["minValue"] == [1] and p.decorators["maxValue"] == [1000]
    assert 1 <= p.default <= 1000
    assert main.params["instanceMemoryMB"].decorators["allowed"] == [[512, 2048, 4096]]


def test_the_vault_cannot_be_purged_and_azd_down_then_up_is_documented(tree):
    vault = one(tree, "Microsoft.KeyVault/vaults")
    assert vault.properties["enableSoftDelete"] is True
    assert vault.properties["enablePurgeProtection"] is True  # the ledger key survives a deleted vault
    assert vault.properties["softDeleteRetentionInDays"] == 90
    runbook = (ROOT / "docs" / "runbook.md").read_text()
    assert "az keyvault recover" in runbook and "purge protection" in runbook


def test_basic_publishing_credentials_are_off(tree):
    policies = {r.get("name"): r for r in resources(tree, "Microsoft.Web/sites/basicPublishingCredentialsPolicies")}
    assert set(policies) == {"scm", "ftp"}
    for r in policies.values():
        assert r.properties == {"allow": False} and value_text(r.body["parent"]) == "site"


def test_audit_and_service_logs_go_to_log_analytics(tree):
    settings = resources(tree, "Microsoft.Insights/diagnosticSettings")
    by_scope = {(r.file.rsplit("/", 1)[-1], value_text(r.body["scope"])): r for r in settings}
    assert set(by_scope) == {("keyvault.bicep", "vault"), ("storage.bicep", "tableService"),
                             ("storage.bicep", "blobService"), ("servicebus.bicep", "namespace")}
    for (module, _), r in by_scope.items():
        assert value_text(r.properties["workspaceId"]) == "workspaceId"
        assert tree[f"modules/{module}"].params["workspaceId"]
    groups = {key: [log["categoryGroup"] for log in r.properties["logs"] if log["enabled"] is True]
              for key, r in by_scope.items()}
    assert groups[("keyvault.bicep", "vault")] == ["audit"]  # AuditEvent: every secret read
    assert all(g == ["allLogs"] for k, g in groups.items() if k[0] != "keyvault.bicep")
    main_text = (INFRA / "main.bicep").read_text()
    assert main_text.count("workspaceId: monitoring.outputs.workspaceId") == 3


def test_the_host_refuses_bodies_over_dataverses_limit(tree):
    from shared.ingest.webhook import MAX_BODY_BYTES

    assert app_settings(tree)["FUNCTIONS_REQUEST_BODY_SIZE_LIMIT"] == str(MAX_BODY_BYTES)


def test_what_stays_public_is_documented():
    security = (ROOT / "docs" / "security.md").read_text()
    for words in ("webhook", "publicNetworkAccess", "Key Vault", "Service Bus", "Storage", "basic publishing",
                  "purge protection", "FUNCTIONS_REQUEST_BODY_SIZE_LIMIT"):
        assert words in security, words


def test_workbook_shows_the_re_consents_the_operator_may_clear():
    wb = json.loads((INFRA / "workbook.json").read_text())
    tiles = [i["content"] for i in wb["items"] if i["type"] == 3 and "straddle_reconsented_in_rtm" in i["content"]["query"]]
    assert tiles and "straddle_reconsented_in_rtm_oldest" in tiles[0]["query"] and "OBM" in tiles[0]["title"]


def test_requests_is_a_version_that_does_not_leak_netrc_credentials():
    # 2.32.0-2.32.3 send .netrc credentials to the host a URL names (CVE-2024-47081).
    line, = [ln for ln in (ROOT / "requirements.txt").read_text().splitlines() if ln.startswith("requests")]
    minimum = re.search(r">=([\d.]+)", line).group(1)
    assert tuple(int(p) for p in minimum.split(".")) >= (2, 32, 4), line
