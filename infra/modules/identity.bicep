// The one identity the function app uses for storage, Service Bus, Key Vault, Application Insights
// and (unless an app registration is configured) Dataverse. User-assigned so that the role
// assignments exist before the app does.
param name string
param location string
param tags object = {}

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: name
  location: location
  tags: tags
}

output id string = identity.id
output name string = identity.name
output clientId string = identity.properties.clientId
output principalId string = identity.properties.principalId
