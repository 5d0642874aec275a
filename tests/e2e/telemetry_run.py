"""One sync with telemetry exported, in a process of its own (configuring OpenTelemetry is global
and once per process, so it must not happen inside the test run). Used by test_private_telemetry.

    python -m tests.e2e.telemetry_run AZURITE_CONNECTION TABLE_PREFIX

APPLICATIONINSIGHTS_CONNECTION_STRING (in the environment) points at the test's ingestion endpoint.
The run: a topic opt-out made in the Dataverse sandbox goes through the webhook and
process_changes (R2: the sync reads every contact and lead with the address), then ``explain``
looks the person up with GET ``$filter`` queries, and a lookup fails on a refused request.
"""
from __future__ import annotations

import logging
import sys

from shared import bootstrap
from shared.adapters.settings import Settings

EMAIL = "private.person@contoso.test"


def main(azurite: str, prefix: str) -> int:
    if not bootstrap.export_telemetry(Settings.from_env()):
        print("telemetry was not configured", file=sys.stderr)
        return 2
    from opentelemetry import _logs, trace

    logging.getLogger("straddle").setLevel(logging.INFO)  # the app's info records are exported, as in Azure

    from sandbox.stack import Stack
    from shared.service_layer.explain import explain
    from shared.adapters.dataverse.errors import DataverseError
    from shared.domain.consent import ConsentValue
    from tests.integration.tenant import consent_row, contact, gid, lead, mappings_file, tenant

    person, other, its_lead = contact("pp1", EMAIL), contact("pp2", EMAIL.upper()), lead("pp-lead", EMAIL)
    row = consent_row(EMAIL, gid("Contoso marketing"), gid("Contoso News"), ConsentValue.OPTED_IN.value)
    news, leads = gid("Contoso Newsletter"), gid("Contoso Event Leads")
    stack = Stack(azurite, prefix, tenant([person, other], [its_lead], [row],
                                          {news: [person["contactid"], other["contactid"]],
                                           leads: [its_lead["leadid"]]}), mappings_file("single-brand"))
    try:
        stack.api("PATCH", f"msdynmkt_contactpointconsent4s({row['msdynmkt_contactpointconsent4id']})",
                  {"msdynmkt_value": ConsentValue.OPTED_OUT.value})
        processed = stack.drain()
        client = stack.container.dataverse()
        report = explain(EMAIL, client, stack.container.mappings(), stack.container.tables().ledger)
        try:  # a failing call: its span must not quote the URL either
            client.request("GET", "contacts", params={"$filter": f"emailaddress1 eq '{EMAIL}'",
                                                                "$select": "no_such_column"})
        except DataverseError:
            pass
        if processed == 0 or stack.members_of(news) or not report.get("ledger"):
            print(f"the sync did not run as expected: processed={processed} report={sorted(report)}", file=sys.stderr)
            return 3
    finally:
        stack.close()
    trace.get_tracer_provider().force_flush()
    _logs.get_logger_provider().force_flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
