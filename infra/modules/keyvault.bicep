// Secrets the app reads through Key Vault references (never as plain app settings).
// RBAC authorization only; the app's identity gets Key Vault Secrets User (access.bicep).
param name string
param location string
param tags object = {}
@secure()
param ledgerKey string
@secure()
param webhookSecret string
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

resource webhookSecretSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  parent: vault
  name: 'webhook-secret'
  properties: {
    value: webhookSecret
    contentType: 'WEBHOOK_SECRET'
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
