// The morning-review workbook in Application Insights (queries: infra/workbook.json, docs/monitoring.md).
param location string
param tags object = {}
param appInsightsId string
param serviceBusNamespaceId string
param displayName string = 'Straddle: reconciliation and propagation'

resource workbook 'Microsoft.Insights/workbooks@2023-06-01' = {
  // Workbook resource names must be GUIDs; deterministic so a redeploy updates it in place.
  name: guid(resourceGroup().id, 'straddle-workbook')
  location: location
  tags: tags
  kind: 'shared'
  properties: {
    displayName: displayName
    category: 'workbook'
    sourceId: appInsightsId
    version: '1.0'
    serializedData: replace(loadTextContent('../workbook.json'), '__SERVICEBUS_NAMESPACE_ID__', serviceBusNamespaceId)
  }
}

output id string = workbook.id
