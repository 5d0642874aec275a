// Alert rules. What each means and what to do: docs/runbook.md ("Alerts").
param location string
param tags object = {}
param appInsightsId string
param serviceBusNamespaceId string
param changesQueueName string
param parkedQueueName string
param reconcileQueueName string
@description('Alert when one reconciliation finds more drift than this (D1-D5 together).')
param driftAlertThreshold int
@description('Hours an opt-out may stay open (OPT_OUT_DEADLINE_HOURS, the same value the app reports against).')
param optOutDeadlineHours int
@description('Who is e-mailed; empty means no action group (the alerts still fire in the portal).')
param alertEmail string = ''

var hasEmail = !empty(alertEmail)

resource actionGroup 'Microsoft.Insights/actionGroups@2023-01-01' = if (hasEmail) {
  name: 'ag-straddle'
  location: 'global'
  tags: tags
  properties: {
    groupShortName: 'straddle'
    enabled: true
    emailReceivers: [
      {
        name: 'operator'
        emailAddress: alertEmail
        useCommonAlertSchema: true
      }
    ]
  }
}

var actionGroups = hasEmail ? [actionGroup.id] : []

// Anything in a dead-letter sub-queue is an opt-out (or a batch) that did not propagate, or a
// reconciliation chunk whose candidates stayed unhealed.
resource deadLetterAlerts 'Microsoft.Insights/metricAlerts@2018-03-01' = [for queueName in [changesQueueName, parkedQueueName, reconcileQueueName]: {
  name: 'straddle-deadletter-${queueName}'
  location: 'global'
  tags: tags
  properties: {
    description: 'Dead-letter queue of ${queueName} is not empty: events or reconciliation chunks that were not applied. See docs/runbook.md#dead-letters.'
    severity: 1
    enabled: true
    scopes: [
      serviceBusNamespaceId
    ]
    evaluationFrequency: 'PT5M'
    windowSize: 'PT15M'
    criteria: {
      'odata.type': 'Microsoft.Azure.Monitor.SingleResourceMultipleMetricCriteria'
      allOf: [
        {
          criterionType: 'StaticThresholdCriterion'
          name: 'deadlettered'
          metricNamespace: 'Microsoft.ServiceBus/namespaces'
          metricName: 'DeadletteredMessages'
          dimensions: [
            {
              name: 'EntityName'
              operator: 'Include'
              values: [
                queueName
              ]
            }
          ]
          operator: 'GreaterThan'
          threshold: 0
          timeAggregation: 'Maximum'
        }
      ]
    }
    autoMitigate: true
    actions: [for id in actionGroups: {
      actionGroupId: id
    }]
  }
}]

// A successful run is a reconcile.report with status "succeeded" that is not a dry run: a report of
// no_mappings or failed_writes is a run that did not do its job and must not keep the alert quiet.
// The window is two days so the query can look back 26 hours (a nightly run plus slack).
var noReconcileQuery = '''
traces
| where timestamp > ago(26h)
| where message startswith "reconcile.report"
| where tostring(customDimensions.straddle_status) == "succeeded"
| where tolower(tostring(customDimensions.straddle_dry_run)) != "true"
| summarize runs = count()
| where runs == 0
'''

var driftQuery = '''
traces
| where message startswith "reconcile.report"
| extend cd = customDimensions
| where tolower(tostring(cd.straddle_dry_run)) != "true"
| extend drift = coalesce(toint(cd.straddle_found_D1), 0) + coalesce(toint(cd.straddle_found_D2), 0)
    + coalesce(toint(cd.straddle_found_D3), 0) + coalesce(toint(cd.straddle_found_D4), 0)
    + coalesce(toint(cd.straddle_found_D5), 0)
| where drift > __THRESHOLD__
| project timestamp, run_id = tostring(cd.straddle_run_id), drift
'''

// 24 h: the alert bar of /work/shared DOMAIN §6 (Gmail/Yahoo give 48 h). Either the nightly run
// saw an opt-out still unhealed after 24 h, or the event path applied one more than 24 h late.
var unpropagatedQuery = '''
union
  (traces
   | where message startswith "reconcile.report"
   | extend hours = todouble(customDimensions.straddle_oldest_unhealed_opt_out_hours)
   | where hours > 24
   | project timestamp, source = "reconcile", hours),
  (traces
   | where message startswith "sync.applied"
   | extend hours = todouble(customDimensions.straddle_propagation_ms) / 3600000
   | where hours > 24
   | project timestamp, source = "event path", hours)
'''

// The hourly compliance_check logs the oldest opt-out still open (the opt-out deadlines table):
// past the deadline the app is configured with, an operator has the rest of the 48 hours to act.
var deadlineQuery = '''
traces
| where message startswith "compliance.check"
| extend cd = customDimensions
| extend hours = todouble(cd.straddle_opt_outs_oldest_open_hours)
| where hours > __DEADLINE_HOURS__
| project timestamp, hours, open_past_deadline = toint(cd.straddle_opt_outs_open_past_deadline)
'''

resource noReconcileAlert 'Microsoft.Insights/scheduledQueryRules@2022-06-15' = {
  name: 'straddle-no-reconciliation-26h'
  location: location
  tags: tags
  kind: 'LogAlert'
  properties: {
    displayName: 'Straddle: no successful reconciliation in 26 hours'
    description: 'No reconcile.report with status succeeded (not a dry run) for 26 hours: no run, or runs that failed writes or found no mappings. See docs/runbook.md#no-reconciliation.'
    severity: 1
    enabled: true
    scopes: [
      appInsightsId
    ]
    evaluationFrequency: 'PT1H'
    windowSize: 'P2D'
    criteria: {
      allOf: [
        {
          query: noReconcileQuery
          timeAggregation: 'Count'
          operator: 'GreaterThan'
          threshold: 0
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    autoMitigate: true
    actions: {
      actionGroups: actionGroups
    }
  }
}

resource driftAlert 'Microsoft.Insights/scheduledQueryRules@2022-06-15' = {
  name: 'straddle-drift-above-threshold'
  location: location
  tags: tags
  kind: 'LogAlert'
  properties: {
    displayName: 'Straddle: reconciliation found drift above ${driftAlertThreshold}'
    description: 'The nightly reconciliation found more drift than driftAlertThreshold: the event path is missing changes. See docs/runbook.md#drift.'
    severity: 2
    enabled: true
    scopes: [
      appInsightsId
    ]
    evaluationFrequency: 'PT1H'
    windowSize: 'P1D'
    criteria: {
      allOf: [
        {
          query: replace(driftQuery, '__THRESHOLD__', string(driftAlertThreshold))
          timeAggregation: 'Count'
          operator: 'GreaterThan'
          threshold: 0
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    autoMitigate: true
    actions: {
      actionGroups: actionGroups
    }
  }
}

resource unpropagatedAlert 'Microsoft.Insights/scheduledQueryRules@2022-06-15' = {
  name: 'straddle-opt-out-unpropagated-24h'
  location: location
  tags: tags
  kind: 'LogAlert'
  properties: {
    displayName: 'Straddle: an opt-out went unpropagated for more than 24 hours'
    description: 'An opt-out reached the other system more than 24 hours late, or is still missing there. See docs/runbook.md#unpropagated.'
    severity: 1
    enabled: true
    scopes: [
      appInsightsId
    ]
    evaluationFrequency: 'PT1H'
    windowSize: 'P1D'
    criteria: {
      allOf: [
        {
          query: unpropagatedQuery
          timeAggregation: 'Count'
          operator: 'GreaterThan'
          threshold: 0
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    autoMitigate: true
    actions: {
      actionGroups: actionGroups
    }
  }
}

resource deadlineAlert 'Microsoft.Insights/scheduledQueryRules@2022-06-15' = {
  name: 'straddle-opt-out-open-past-deadline'
  location: location
  tags: tags
  kind: 'LogAlert'
  properties: {
    displayName: 'Straddle: an opt-out is open for more than ${optOutDeadlineHours} hours'
    description: 'The hourly compliance check found an opt-out not yet reflected on every side after OPT_OUT_DEADLINE_HOURS (Gmail and Yahoo require 48 hours). See docs/runbook.md#deadline.'
    severity: 1
    enabled: true
    scopes: [
      appInsightsId
    ]
    evaluationFrequency: 'PT1H'
    windowSize: 'PT2H'
    criteria: {
      allOf: [
        {
          query: replace(deadlineQuery, '__DEADLINE_HOURS__', string(optOutDeadlineHours))
          timeAggregation: 'Count'
          operator: 'GreaterThan'
          threshold: 0
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    autoMitigate: true
    actions: {
      actionGroups: actionGroups
    }
  }
}
