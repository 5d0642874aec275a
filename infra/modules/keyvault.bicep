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
@description('Log Analytics workspace that receives the vault\'s audit events (every secret read).')
param workspaceId string

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
    // Soft delete cannot be turned off, and purge protection keeps a deleted vault (and the ledger
    // key in it) recoverable for the whole 90 days: nobody can purge it, not even `azd down --purge`.
    // An `azd up` with the same environment name recovers it first (docs/runbook.md).
    enableSoftDelete: true
    softDeleteRetentionInDays: 90
    enablePurgeProtection: true
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

// Diagnostic settings: no schema for Microsoft.Insights/diagnosticSettings in the type graphs the
// template tests check against; tests/unit/test_infra.py checks its shape by hand (docs/security.md).
resource auditLogs 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'audit-to-log-analytics'
  scope: vault
  properties: {
    workspaceId: workspaceId
    logs: [
      {
        categoryGroup: 'audit'
        enabled: true
      }
    ]
  }
}

output id string = vault.id
output name string = vault.name
output uri string = vault.properties.vaultUri
