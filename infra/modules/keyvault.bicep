// Secrets the app reads through Key Vault references (never as plain app settings).
// RBAC authorization only; the app's identity gets Key Vault Secrets User (access.bicep).
param name string
param location string
param tags object = {}
@secure()
param ledgerKey string
@secure()
param ledgerKeyPrevious string = ''
@secure()
param webhookSecret string
@secure()
param webhookSecretPrevious string = ''
@secure()
param dataverseClientSecret string = ''

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  name: name
  location: location
  tags: tags
  properties: {
    tenantId: subscription().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    enableRbacAuthorization: true
    // Soft delete cannot be turned off: after `azd down`, purge (`azd down --purge`) before an
    // `azd up` with the same environment name, whose vault name is the same (docs/runbook.md).
    enableSoftDelete: true
    softDeleteRetentionInDays: 7
    enabledForTemplateDeployment: false
    publicNetworkAccess: 'Enabled'
  }
}

resource ledgerKeySecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  parent: vault
  name: 'ledger-key'
  properties: {
    value: ledgerKey
    contentType: 'LEDGER_KEY: HMAC key of ledger partitions; see docs/runbook.md before changing'
  }
}

// Only after a deliberate rotation (docs/runbook.md#ledger_key): the app reads history under it.
resource ledgerKeyPreviousSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = if (!empty(ledgerKeyPrevious)) {
  parent: vault
  name: 'ledger-key-previous'
  properties: {
    value: ledgerKeyPrevious
    contentType: 'LEDGER_KEY_PREVIOUS: the ledger key before the last rotation, read only'
  }
}

resource webhookSecretSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  parent: vault
  name: 'webhook-secret'
  properties: {
    value: webhookSecret
    contentType: 'WEBHOOK_SECRET'
  }
}

// Only during a webhook secret rotation (docs/runbook.md): the app accepts both until Dataverse sends the new one.
resource webhookSecretPreviousSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = if (!empty(webhookSecretPrevious)) {
  parent: vault
  name: 'webhook-secret-previous'
  properties: {
    value: webhookSecretPrevious
    contentType: 'WEBHOOK_SECRET_PREVIOUS: the webhook secret before the rotation in progress'
  }
}

resource dataverseClientSecretSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = if (!empty(dataverseClientSecret)) {
  parent: vault
  name: 'dataverse-client-secret'
  properties: {
    value: dataverseClientSecret
    contentType: 'DATAVERSE_CLIENT_SECRET'
  }
}

output id string = vault.id
output name string = vault.name
output uri string = vault.properties.vaultUri
