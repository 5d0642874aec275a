// The changes queue (webhook -> process_changes, plus the app's scheduled retries), the parking
// queue, whose dead-letter sub-queue holds events the app gave up on, and the reconciliation queue
// (nightly_reconcile -> reconcile_chunk, big tenants only). SAS (local) auth is off.
param name string
param location string
param tags object = {}
param changesQueueName string
param parkedQueueName string
param reconcileQueueName string
param maxDeliveryCount int = 10
param duplicateDetectionWindow string = 'PT10M'
@minValue(1)
@description('Deliveries of one reconciliation chunk before it is dead-lettered (docs/runbook.md#dead-letters).')
param reconcileMaxDeliveryCount int = 5
@description('Log Analytics workspace that receives the namespace\'s logs.')
param workspaceId string

resource namespace 'Microsoft.ServiceBus/namespaces@2022-10-01-preview' = {
  name: name
  location: location
  tags: tags
  sku: {
    // Standard: duplicate detection and scheduled messages (the retry path) need it.
    name: 'Standard'
    tier: 'Standard'
  }
  properties: {
    disableLocalAuth: true
    minimumTlsVersion: '1.2'
    publicNetworkAccess: 'Enabled'
  }
}

resource changesQueue 'Microsoft.ServiceBus/namespaces/queues@2022-10-01-preview' = {
  parent: namespace
  name: changesQueueName
  properties: {
    // The MessageId is the event id: a webhook Dataverse retries (one retry on 502/503/504) or a
    // duplicate notification is dropped by the broker within this window.
    requiresDuplicateDetection: true
    duplicateDetectionHistoryTimeWindow: duplicateDetectionWindow
    // Longest lock Service Bus allows; the host renews it (maxAutoLockRenewalDuration) while a
    // batch of up to 500 events makes its Dataverse rounds.
    lockDuration: 'PT5M'
    maxDeliveryCount: maxDeliveryCount
    // An event nobody processed in two weeks must surface in the dead-letter queue, not vanish.
    defaultMessageTimeToLive: 'P14D'
    deadLetteringOnMessageExpiration: true
    enableBatchedOperations: true
    requiresSession: false
    maxSizeInMegabytes: 1024
  }
}

resource parkedQueue 'Microsoft.ServiceBus/namespaces/queues@2022-10-01-preview' = {
  parent: namespace
  name: parkedQueueName
  properties: {
    requiresDuplicateDetection: true
    duplicateDetectionHistoryTimeWindow: duplicateDetectionWindow
    lockDuration: 'PT5M'
    maxDeliveryCount: maxDeliveryCount
    // The app dead-letters what it parks at once; anything a failed sweep leaves behind expires
    // into the dead-letter queue within a day instead of waiting for the next park.
    defaultMessageTimeToLive: 'P1D'
    deadLetteringOnMessageExpiration: true
    enableBatchedOperations: true
    requiresSession: false
    maxSizeInMegabytes: 1024
  }
}

// Chunks of a fanned-out nightly reconciliation (shared/service_layer/reconcile.py): MessageId <run_id>.<index>.
// A chunk that keeps failing is dead-lettered after reconcileMaxDeliveryCount deliveries; its
// candidates stay unhealed until the next night's run finds them again.
resource reconcileQueue 'Microsoft.ServiceBus/namespaces/queues@2022-10-01-preview' = {
  parent: namespace
  name: reconcileQueueName
  properties: {
    // Sending the same <run_id>.<index> twice (an SDK retry of a send the broker did take) is
    // dropped; a chunk already recorded in the runs table is skipped by the app anyway.
    requiresDuplicateDetection: true
    duplicateDetectionHistoryTimeWindow: duplicateDetectionWindow
    // The longest lock Service Bus allows; the host renews it while a chunk heals (a chunk is
    // sized to finish well within the 10-minute functionTimeout).
    lockDuration: 'PT5M'
    maxDeliveryCount: reconcileMaxDeliveryCount
    // A chunk not healed within a day is stale (the next run scans again): into the dead-letter
    // queue, where the alert sees it, rather than silently dropped.
    defaultMessageTimeToLive: 'P1D'
    deadLetteringOnMessageExpiration: true
    enableBatchedOperations: true
    requiresSession: false
    maxSizeInMegabytes: 1024
  }
}

// Diagnostic settings: no schema for Microsoft.Insights/diagnosticSettings in the type graphs the
// template tests check against; tests/unit/test_infra.py checks its shape by hand (docs/security.md).
resource namespaceLogs 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'logs-to-log-analytics'
  scope: namespace
  properties: {
    workspaceId: workspaceId
    logs: [
      {
        categoryGroup: 'allLogs'
        enabled: true
      }
    ]
  }
}

output id string = namespace.id
output name string = namespace.name
// e.g. sb-xyz.servicebus.windows.net (ServiceBusConnection__fullyQualifiedNamespace)
output fullyQualifiedNamespace string = split(split(namespace.properties.serviceBusEndpoint, '//')[1], ':')[0]
output changesQueueId string = changesQueue.id
output parkedQueueId string = parkedQueue.id
output reconcileQueueId string = reconcileQueue.id
