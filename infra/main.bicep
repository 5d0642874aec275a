// Straddle on Azure: one `azd up` creates the resource group and everything in it.
// Modules under modules/ each own one concern; this file wires names and identities together.
targetScope = 'subscription'

@minLength(1)
@maxLength(64)
@description('azd environment name; also names the resource group and seeds the resource names.')
param environmentName string

@minLength(1)
@description('Azure region (must offer the Flex Consumption plan).')
@metadata({ azd: { type: 'location' } })
param location string

@description('Object id of the person (or pipeline) running azd: gets data access for the admin CLI (`python -m shared`). Empty: none.')
param principalId string = ''

@allowed(['User', 'ServicePrincipal', 'Group'])
@description('Kind of principal principalId is.')
param principalType string = 'User'

@minLength(1)
@description('Dataverse environment URL, e.g. https://contoso.crm.dynamics.com (DATAVERSE_URL).')
param dataverseUrl string

@description('Client id of an Entra app registration used with dataverseClientSecret. Empty: the function app\'s managed identity signs in to Dataverse.')
param dataverseClientId string = ''

@secure()
@description('Secret of the app registration in dataverseClientId. Empty: the managed identity is used.')
param dataverseClientSecret string = ''

@secure()
@description('HMAC key for ledger partitions (LEDGER_KEY). Generated once by azd and kept in the azd environment: changing it starts new ledger partitions (docs/runbook.md).')
@metadata({ azd: { type: 'generate', config: { length: 48, noSpecial: true } } })
param ledgerKey string

@secure()
@description('Value Dataverse sends in webhookSecretHeader (WEBHOOK_SECRET). Generated once by azd.')
@metadata({ azd: { type: 'generate', config: { length: 40, noSpecial: true } } })
param webhookSecret string

@description('Header the Dataverse webhook registration sends the webhook secret in (WEBHOOK_SECRET_HEADER).')
param webhookSecretHeader string = 'x-straddle-secret'

@description('NCRONTAB schedule of nightly_reconcile, in UTC (RECONCILE_SCHEDULE).')
param reconcileSchedule string = '0 0 2 * * *'

@description('Service Bus queue of reconciliation chunks (RECONCILE_QUEUE): nightly_reconcile sends a big tenant\'s work there, reconcile_chunk heals it.')
param reconcileQueueName string = 'straddle-reconcile'

@minValue(1)
@description('Drift candidates healed together, one chunk (RECONCILE_CHUNK_SIZE).')
param reconcileChunkSize int = 5000

@minValue(1)
@maxValue(32)
@description('Concurrent Dataverse reads of the nightly scan (RECONCILE_READERS); Dataverse allows 52 per application user.')
param reconcileReaders int = 16

@minValue(0)
@description('Above this many drift candidates the nightly run fans out to reconcile_chunk instead of healing inline (RECONCILE_FANOUT_ABOVE).')
param reconcileFanoutAbove int = 20000

@minValue(1)
@description('Days processed event ids are kept for idempotency (PROCESSED_RETENTION_DAYS).')
param processedRetentionDays int = 7

@description('Prefix of every Table Storage table (TABLE_PREFIX).')
param tablePrefix string = 'straddle'

@description('Service Bus queue carrying change events (CHANGES_QUEUE); the parking queue is <name>-parked.')
param changesQueueName string = 'straddle-changes'

@minValue(1)
@description('Attempts per change event before it is parked (MAX_ATTEMPTS).')
param maxAttempts int = 5

@minValue(1)
@description('First retry delay in seconds, doubled per attempt (RETRY_DELAY_SECONDS).')
param retryDelaySeconds int = 30

@description('Timeout of one Dataverse request in seconds (DATAVERSE_TIMEOUT_SECONDS).')
param dataverseTimeoutSeconds string = '30'

@description('Seconds one Dataverse call may spend retrying 429/5xx (DATAVERSE_RETRY_BUDGET_SECONDS).')
param dataverseRetryBudgetSeconds string = '120'

@minValue(1)
@maxValue(5000)
@description('Rows per Dataverse page (DATAVERSE_PAGE_SIZE).')
param dataversePageSize int = 5000

@minValue(1)
@description('Broker deliveries of one message before Service Bus dead-letters it. The app retries failures itself (MAX_ATTEMPTS, scheduled re-sends), so this only catches batches that crash the worker again and again.')
param maxDeliveryCount int = 10

@description('Duplicate detection window of the queues: must cover Dataverse\'s single retry of a 502/503/504 webhook call (seconds later) with margin.')
param duplicateDetectionWindow string = 'PT10M'

@minValue(0)
@description('Alert when one nightly reconciliation finds more drift than this (all classes D1-D5 together).')
param driftAlertThreshold int = 50

@description('E-mail address that receives the alerts. Empty: alerts fire without notifying anyone (add an action group later).')
param alertEmail string = ''

@description('Most instances the Flex Consumption plan may scale to. Dataverse service protection is per application user, so more instances mostly means more 429s (docs/runbook.md).')
param maximumInstanceCount int = 40

@allowed([512, 2048, 4096])
@description('Memory of one Flex Consumption instance in MB.')
param instanceMemoryMB int = 2048

var resourceToken = toLower(uniqueString(subscription().id, environmentName, location))
var tags = { 'azd-env-name': environmentName }
var parkedQueueName = '${changesQueueName}-parked'
// Must stay equal to shared.adapters.tables.TABLES (the tests compare).
var tableSuffixes = ['processed', 'ledger', 'mappings', 'runs', 'snapshots']
var tableNames = [for suffix in tableSuffixes: '${tablePrefix}${suffix}']
var deploymentContainerName = 'app-package-${take(resourceToken, 7)}'

resource rg 'Microsoft.Resources/resourceGroups@2021-04-01' = {
  name: 'rg-${environmentName}'
  location: location
  tags: tags
}

module identity 'modules/identity.bicep' = {
  name: 'identity'
  scope: rg
  params: {
    name: 'id-straddle-${resourceToken}'
    location: location
    tags: tags
  }
}

module monitoring 'modules/monitoring.bicep' = {
  name: 'monitoring'
  scope: rg
  params: {
    workspaceName: 'log-${resourceToken}'
    appInsightsName: 'appi-${resourceToken}'
    location: location
    tags: tags
  }
}

module storage 'modules/storage.bicep' = {
  name: 'storage'
  scope: rg
  params: {
    name: 'st${resourceToken}'
    location: location
    tags: tags
    tableNames: tableNames
    deploymentContainerName: deploymentContainerName
  }
}

module servicebus 'modules/servicebus.bicep' = {
  name: 'servicebus'
  scope: rg
  params: {
    name: 'sb-${resourceToken}'
    location: location
    tags: tags
    changesQueueName: changesQueueName
    parkedQueueName: parkedQueueName
    reconcileQueueName: reconcileQueueName
    maxDeliveryCount: maxDeliveryCount
    duplicateDetectionWindow: duplicateDetectionWindow
  }
}

module keyvault 'modules/keyvault.bicep' = {
  name: 'keyvault'
  scope: rg
  params: {
    name: 'kv-${resourceToken}'
    location: location
    tags: tags
    ledgerKey: ledgerKey
    webhookSecret: webhookSecret
    dataverseClientSecret: dataverseClientSecret
  }
}

module access 'modules/access.bicep' = {
  name: 'access'
  scope: rg
  params: {
    appPrincipalId: identity.outputs.principalId
    operatorPrincipalId: principalId
    operatorPrincipalType: principalType
    storageAccountName: storage.outputs.name
    serviceBusNamespaceName: servicebus.outputs.name
    changesQueueName: changesQueueName
    parkedQueueName: parkedQueueName
    reconcileQueueName: reconcileQueueName
    keyVaultName: keyvault.outputs.name
    appInsightsName: monitoring.outputs.appInsightsName
  }
}

module functionApp 'modules/functionapp.bicep' = {
  name: 'functionapp'
  scope: rg
  params: {
    name: 'func-${resourceToken}'
    planName: 'plan-${resourceToken}'
    location: location
    tags: tags
    identityId: identity.outputs.id
    identityClientId: identity.outputs.clientId
    storageAccountName: storage.outputs.name
    deploymentContainerName: deploymentContainerName
    appInsightsName: monitoring.outputs.appInsightsName
    keyVaultName: keyvault.outputs.name
    hasDataverseClientSecret: !empty(dataverseClientSecret)
    serviceBusNamespaceName: servicebus.outputs.name
    changesQueueName: changesQueueName
    parkedQueueName: parkedQueueName
    reconcileQueueName: reconcileQueueName
    dataverseUrl: dataverseUrl
    dataverseClientId: dataverseClientId
    webhookSecretHeader: webhookSecretHeader
    reconcileSchedule: reconcileSchedule
    reconcileChunkSize: reconcileChunkSize
    reconcileReaders: reconcileReaders
    reconcileFanoutAbove: reconcileFanoutAbove
    processedRetentionDays: processedRetentionDays
    tablePrefix: tablePrefix
    maxAttempts: maxAttempts
    retryDelaySeconds: retryDelaySeconds
    dataverseTimeoutSeconds: dataverseTimeoutSeconds
    dataverseRetryBudgetSeconds: dataverseRetryBudgetSeconds
    dataversePageSize: dataversePageSize
    maximumInstanceCount: maximumInstanceCount
    instanceMemoryMB: instanceMemoryMB
  }
  // The roles must exist before the host first starts, or its first storage/Key Vault calls fail.
  dependsOn: [
    access
  ]
}

module workbook 'modules/workbook.bicep' = {
  name: 'workbook'
  scope: rg
  params: {
    location: location
    tags: tags
    appInsightsId: monitoring.outputs.appInsightsId
    serviceBusNamespaceId: servicebus.outputs.id
  }
}

module alerts 'modules/alerts.bicep' = {
  name: 'alerts'
  scope: rg
  params: {
    location: location
    tags: tags
    appInsightsId: monitoring.outputs.appInsightsId
    serviceBusNamespaceId: servicebus.outputs.id
    changesQueueName: changesQueueName
    parkedQueueName: parkedQueueName
    reconcileQueueName: reconcileQueueName
    driftAlertThreshold: driftAlertThreshold
    alertEmail: alertEmail
  }
}

// Outputs land in the azd environment (.azure/<env>/.env): the non-secret settings the admin CLI
// needs to reach the same queues and tables (`azd env get-values`). No secret is ever an output.
output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = tenant().tenantId
output AZURE_RESOURCE_GROUP string = rg.name
output AZURE_FUNCTION_APP_NAME string = functionApp.outputs.name
output AZURE_KEY_VAULT_NAME string = keyvault.outputs.name
output APPLICATIONINSIGHTS_NAME string = monitoring.outputs.appInsightsName
output CHANGES_QUEUE string = changesQueueName
output PARKED_QUEUE string = parkedQueueName
output RECONCILE_QUEUE string = reconcileQueueName
output TABLE_PREFIX string = tablePrefix
output DATAVERSE_URL string = dataverseUrl
output ServiceBusConnection__fullyQualifiedNamespace string = servicebus.outputs.fullyQualifiedNamespace
output AzureWebJobsStorage__tableServiceUri string = storage.outputs.tableEndpoint
