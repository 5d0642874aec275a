// The function app on the Flex Consumption plan (Linux, Python 3.11) with the user-assigned
// identity. Every app setting the code reads is set here or deliberately left out
// (tests/unit/test_infra.py keeps this in step with shared/adapters/settings.py).
param name string
param planName string
param location string
param tags object = {}
param identityId string
param identityClientId string
param storageAccountName string
param deploymentContainerName string
param appInsightsName string
param keyVaultName string
param hasDataverseClientSecret bool = false
param hasLedgerKeyPrevious bool = false
param hasWebhookSecretPrevious bool = false
param serviceBusNamespaceName string
param changesQueueName string
param parkedQueueName string
param reconcileQueueName string
param dataverseUrl string
@description('App registration client id; empty means the managed identity signs in to Dataverse.')
param dataverseClientId string = ''
param webhookSecretHeader string
param reconcileSchedule string
param reconcileChunkSize int
param reconcileReaders int
param reconcileFanoutAbove int
param processedRetentionDays int
param optOutDeadlineHours int
param tablePrefix string
param maxAttempts int
param retryDelaySeconds int
param dataverseTimeoutSeconds string
param dataverseRetryBudgetSeconds string
param dataversePageSize int
param maximumInstanceCount int = 40
param instanceMemoryMB int = 2048

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource namespace 'Microsoft.ServiceBus/namespaces@2022-10-01-preview' existing = {
  name: serviceBusNamespaceName
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: appInsightsName
}

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    name: 'FC1'
    tier: 'FlexConsumption'
  }
  properties: {
    reserved: true
  }
}

// Versionless references: a new secret version is picked up without redeploying (docs/runbook.md).
var ledgerKeyReference = '@Microsoft.KeyVault(VaultName=${keyVaultName};SecretName=ledger-key)'
var webhookSecretReference = '@Microsoft.KeyVault(VaultName=${keyVaultName};SecretName=webhook-secret)'
var webhookSecretPreviousReference = '@Microsoft.KeyVault(VaultName=${keyVaultName};SecretName=webhook-secret-previous)'
var ledgerKeyPreviousReference = '@Microsoft.KeyVault(VaultName=${keyVaultName};SecretName=ledger-key-previous)'
var dataverseClientSecretReference = '@Microsoft.KeyVault(VaultName=${keyVaultName};SecretName=dataverse-client-secret)'

var appSettings = {
  // --- host storage, identity-based (no AzureWebJobsStorage connection string) ---
  AzureWebJobsStorage__credential: 'managedidentity'
  AzureWebJobsStorage__clientId: identityClientId
  AzureWebJobsStorage__blobServiceUri: storage.properties.primaryEndpoints.blob
  AzureWebJobsStorage__queueServiceUri: storage.properties.primaryEndpoints.queue
  // Also where Straddle's own tables live (shared/adapters/tables/).
  AzureWebJobsStorage__tableServiceUri: storage.properties.primaryEndpoints.table
  // --- Service Bus, identity-based (trigger binding and the app's own client) ---
  ServiceBusConnection__fullyQualifiedNamespace: split(split(namespace.properties.serviceBusEndpoint, '//')[1], ':')[0]
  ServiceBusConnection__credential: 'managedidentity'
  ServiceBusConnection__clientId: identityClientId
  CHANGES_QUEUE: changesQueueName
  PARKED_QUEUE: parkedQueueName
  // --- Application Insights over OpenTelemetry (host.json telemetryMode), Entra ID auth ---
  APPLICATIONINSIGHTS_CONNECTION_STRING: appInsights.properties.ConnectionString
  APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'ClientId=${identityClientId};Authorization=AAD'
  // Lets the Python worker export its own logs (with their extra fields) instead of the host
  // forwarding bare messages: this is what puts straddle_* fields in customDimensions.
  PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY: 'true'
  // --- Dataverse ---
  DATAVERSE_URL: dataverseUrl
  DATAVERSE_CLIENT_ID: empty(dataverseClientId) ? identityClientId : dataverseClientId
  DATAVERSE_TENANT_ID: tenant().tenantId
  DATAVERSE_CLIENT_SECRET: hasDataverseClientSecret ? dataverseClientSecretReference : ''
  DATAVERSE_TIMEOUT_SECONDS: dataverseTimeoutSeconds
  DATAVERSE_RETRY_BUDGET_SECONDS: dataverseRetryBudgetSeconds
  DATAVERSE_PAGE_SIZE: string(dataversePageSize)
  // --- webhook ---
  // The host refuses a bigger body before the app sees it: Dataverse never sends more than 256 KB
  // (shared.ingest.webhook.MAX_BODY_BYTES; the app checks Content-Length too).
  FUNCTIONS_REQUEST_BODY_SIZE_LIMIT: '262144'
  WEBHOOK_SECRET_HEADER: webhookSecretHeader
  WEBHOOK_SECRET: webhookSecretReference
  WEBHOOK_SECRET_PREVIOUS: hasWebhookSecretPrevious ? webhookSecretPreviousReference : ''
  // --- sync ---
  RECONCILE_SCHEDULE: reconcileSchedule
  // Big tenants: above RECONCILE_FANOUT_ABOVE candidates the timer sends chunks to RECONCILE_QUEUE
  // (bound by reconcile_chunk as %RECONCILE_QUEUE%).
  RECONCILE_QUEUE: reconcileQueueName
  RECONCILE_CHUNK_SIZE: string(reconcileChunkSize)
  RECONCILE_READERS: string(reconcileReaders)
  RECONCILE_FANOUT_ABOVE: string(reconcileFanoutAbove)
  TABLE_PREFIX: tablePrefix
  LEDGER_KEY: ledgerKeyReference
  LEDGER_KEY_PREVIOUS: hasLedgerKeyPrevious ? ledgerKeyPreviousReference : ''
  PROCESSED_RETENTION_DAYS: string(processedRetentionDays)
  OPT_OUT_DEADLINE_HOURS: string(optOutDeadlineHours)
  MAX_ATTEMPTS: string(maxAttempts)
  RETRY_DELAY_SECONDS: string(retryDelaySeconds)
}

resource site 'Microsoft.Web/sites@2024-04-01' = {
  name: name
  location: location
  tags: union(tags, { 'azd-service-name': 'straddle' })
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    // Key Vault references resolve with the user-assigned identity (the default is a system one).
    keyVaultReferenceIdentity: identityId
    siteConfig: {
      minTlsVersion: '1.2'
      ftpsState: 'Disabled'
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${storage.properties.primaryEndpoints.blob}${deploymentContainerName}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identityId
          }
        }
      }
      scaleAndConcurrency: {
        maximumInstanceCount: maximumInstanceCount
        instanceMemoryMB: instanceMemoryMB
      }
      runtime: {
        name: 'python'
        version: '3.11'
      }
    }
  }
}

// No basic (user name and password) publishing: azd deploys to the blob container with Entra ID.
// No schema for this type in the type graphs the template tests check against; tests/unit/test_infra.py
// checks its shape by hand (docs/security.md).
resource scmBasicAuth 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: site
  name: 'scm'
  properties: {
    allow: false
  }
}

resource ftpBasicAuth 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: site
  name: 'ftp'
  properties: {
    allow: false
  }
}

resource settings 'Microsoft.Web/sites/config@2024-04-01' = {
  parent: site
  name: 'appsettings'
  properties: appSettings
}

output id string = site.id
output name string = site.name
output defaultHostName string = site.properties.defaultHostName
