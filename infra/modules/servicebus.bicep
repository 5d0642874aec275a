// The changes queue (webhook -> process_changes, plus the app's scheduled retries) and the parking
// queue, whose dead-letter sub-queue holds events the app gave up on. SAS (local) auth is off.
param name string
param location string
param tags object = {}
param changesQueueName string
param parkedQueueName string
param maxDeliveryCount int = 10
param duplicateDetectionWindow string = 'PT10M'

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

output id string = namespace.id
output name string = namespace.name
// e.g. sb-xyz.servicebus.windows.net (ServiceBusConnection__fullyQualifiedNamespace)
output fullyQualifiedNamespace string = split(split(namespace.properties.serviceBusEndpoint, '//')[1], ':')[0]
output changesQueueId string = changesQueue.id
output parkedQueueId string = parkedQueue.id
