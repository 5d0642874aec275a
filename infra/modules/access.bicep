// Role assignments, least privilege: data-plane roles only, each at the narrowest scope the code
// allows. No Owner/Contributor, no keys. Service Bus Data Owner only on the two trigger queues, for
// the scale controller (docs/architecture.md#scaling-rights), never on the namespace.
param appPrincipalId string
@description('The person running azd (AZURE_PRINCIPAL_ID): data access for the admin CLI. Empty: none.')
param operatorPrincipalId string = ''
param operatorPrincipalType string = 'User'
param storageAccountName string
param serviceBusNamespaceName string
param changesQueueName string
param parkedQueueName string
param reconcileQueueName string
param keyVaultName string
param appInsightsName string

// Built-in role definition ids (the same in every tenant; tests/unit/test_infra.py pins them).
var roles = {
  serviceBusDataSender: '69a216fc-b8fb-44d8-bc22-1f3c2cd27a39'
  serviceBusDataReceiver: '4f6d3b9b-027b-4f4c-9142-0e5a2a2247e0'
  serviceBusDataOwner: '090c5cfd-751d-490a-894a-3ce6f1109419'
  storageBlobDataOwner: 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
  storageTableDataContributor: '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3'
  monitoringMetricsPublisher: '3913510d-42f4-4e42-8a64-420c390055eb'
  keyVaultSecretsUser: '4633458b-17de-408a-b874-0445c86b69e6'
}
var hasOperator = !empty(operatorPrincipalId)

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource namespace 'Microsoft.ServiceBus/namespaces@2022-10-01-preview' existing = {
  name: serviceBusNamespaceName
}

resource changesQueue 'Microsoft.ServiceBus/namespaces/queues@2022-10-01-preview' existing = {
  parent: namespace
  name: changesQueueName
}

resource parkedQueue 'Microsoft.ServiceBus/namespaces/queues@2022-10-01-preview' existing = {
  parent: namespace
  name: parkedQueueName
}

resource reconcileQueue 'Microsoft.ServiceBus/namespaces/queues@2022-10-01-preview' existing = {
  parent: namespace
  name: reconcileQueueName
}

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' existing = {
  name: keyVaultName
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: appInsightsName
}

// --- the function app's identity ---------------------------------------------------------------

// process_changes receives (trigger) and sends scheduled retries to the changes queue.
resource appChangesReceiver 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(changesQueue.id, appPrincipalId, roles.serviceBusDataReceiver)
  scope: changesQueue
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.serviceBusDataReceiver)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// dataverse_webhook enqueues; the engine re-sends failed events later.
resource appChangesSender 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(changesQueue.id, appPrincipalId, roles.serviceBusDataSender)
  scope: changesQueue
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.serviceBusDataSender)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// Parking sends the event to the parking queue, then receives it there to dead-letter it.
resource appParkedSender 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(parkedQueue.id, appPrincipalId, roles.serviceBusDataSender)
  scope: parkedQueue
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.serviceBusDataSender)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource appParkedReceiver 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(parkedQueue.id, appPrincipalId, roles.serviceBusDataReceiver)
  scope: parkedQueue
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.serviceBusDataReceiver)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// nightly_reconcile sends the chunks of a big tenant's run; reconcile_chunk receives them (trigger).
resource appReconcileSender 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(reconcileQueue.id, appPrincipalId, roles.serviceBusDataSender)
  scope: reconcileQueue
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.serviceBusDataSender)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource appReconcileReceiver 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(reconcileQueue.id, appPrincipalId, roles.serviceBusDataReceiver)
  scope: reconcileQueue
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.serviceBusDataReceiver)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// Scaling with the backlog: the Functions scale controller reads each trigger queue's message count
// as the app's identity, which needs Manage rights on the entity; Microsoft's Service Bus binding
// docs list Data Owner for triggers. Scoped to exactly the two trigger queues (process_changes,
// reconcile_chunk): never the parking queue, never the namespace.
resource appChangesOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(changesQueue.id, appPrincipalId, roles.serviceBusDataOwner)
  scope: changesQueue
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.serviceBusDataOwner)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource appReconcileOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(reconcileQueue.id, appPrincipalId, roles.serviceBusDataOwner)
  scope: reconcileQueue
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.serviceBusDataOwner)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// Host storage (timer-trigger locks, keys, host id) and the Flex Consumption deployment package.
resource appBlobOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, appPrincipalId, roles.storageBlobDataOwner)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataOwner)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// Account scope rather than per table: the code creates its tables if missing, which needs it.
resource appTableContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, appPrincipalId, roles.storageTableDataContributor)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageTableDataContributor)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// Application Insights has local auth off: telemetry is sent with Entra ID.
resource appMetricsPublisher 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(appInsights.id, appPrincipalId, roles.monitoringMetricsPublisher)
  scope: appInsights
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.monitoringMetricsPublisher)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// Key Vault references (LEDGER_KEY, WEBHOOK_SECRET, DATAVERSE_CLIENT_SECRET): read only.
resource appSecretsUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(vault.id, appPrincipalId, roles.keyVaultSecretsUser)
  scope: vault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.keyVaultSecretsUser)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// --- the operator running azd (admin CLI: mappings import, dlq list|replay, reconcile) ----------

resource operatorTableContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (hasOperator) {
  name: guid(storage.id, operatorPrincipalId, roles.storageTableDataContributor)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageTableDataContributor)
    principalId: operatorPrincipalId
    principalType: operatorPrincipalType
  }
}

resource operatorChangesSender 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (hasOperator) {
  name: guid(changesQueue.id, operatorPrincipalId, roles.serviceBusDataSender)
  scope: changesQueue
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.serviceBusDataSender)
    principalId: operatorPrincipalId
    principalType: operatorPrincipalType
  }
}

resource operatorChangesReceiver 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (hasOperator) {
  name: guid(changesQueue.id, operatorPrincipalId, roles.serviceBusDataReceiver)
  scope: changesQueue
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.serviceBusDataReceiver)
    principalId: operatorPrincipalId
    principalType: operatorPrincipalType
  }
}

resource operatorParkedReceiver 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (hasOperator) {
  name: guid(parkedQueue.id, operatorPrincipalId, roles.serviceBusDataReceiver)
  scope: parkedQueue
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.serviceBusDataReceiver)
    principalId: operatorPrincipalId
    principalType: operatorPrincipalType
  }
}

// Peeking at dead-lettered reconciliation chunks (docs/runbook.md#dead-letters). Receive only: the
// operator never sends chunks.
resource operatorReconcileReceiver 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (hasOperator) {
  name: guid(reconcileQueue.id, operatorPrincipalId, roles.serviceBusDataReceiver)
  scope: reconcileQueue
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.serviceBusDataReceiver)
    principalId: operatorPrincipalId
    principalType: operatorPrincipalType
  }
}
