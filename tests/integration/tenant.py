"""Test data for the integration tests: a two-brand tenant, its mappings files, people."""
from __future__ import annotations

import uuid
from typing import Sequence

from shared.domain.consent import ConsentType, ContactPointType

NS = uuid.UUID("2f0d7c43-7d7e-4d1e-9f57-2a3f3c1b9e10")


def gid(name: str) -> str:
    return str(uuid.uuid5(NS, name))


def consent_row(email: str, purpose: str, topic: str | None, value: int, name: str | None = None) -> dict:
    row = {"msdynmkt_contactpointconsent4id": gid(name or f"row:{email}:{purpose}:{topic}"),
           "msdynmkt_contactpointvalue": email, "msdynmkt_contactpointtype": ContactPointType.EMAIL.value,
           "msdynmkt_contactpointconsenttype": (ConsentType.TOPIC if topic else ConsentType.PURPOSE).value,
           "msdynmkt_value": value, "_msdynmkt_purposeid_value": purpose, "modifiedon": "2026-01-01T00:00:00Z"}
    if topic:
        row["_msdynmkt_topicid_value"] = topic
    return row


def tenant(contacts: Sequence[dict], leads: Sequence[dict] = (), consents: Sequence[dict] = (),
           list_members: dict[str, list[str]] | None = None) -> dict:
    """The two-brand catalog every integration test shares, with the given people in it."""
    return {
        "purposes": [{"msdynmkt_purposeid": gid(p), "msdynmkt_name": p, "msdynmkt_type": 534120000}
                     for p in ("Contoso marketing", "Fabrikam marketing")],
        "topics": [{"msdynmkt_topicid": gid(t), "msdynmkt_name": t, "_msdynmkt_purposeid_value": gid(p)}
                   for t, p in (("Contoso News", "Contoso marketing"), ("Contoso Events", "Contoso marketing"),
                                ("Fabrikam Deals", "Fabrikam marketing"))],
        "lists": [{"listid": gid(name), "listname": name, "createdfromcode": code, "type": False,
                   "msdyncrm_issubscription": sub}
                  for name, code, sub in (("Contoso Newsletter", 2, True), ("Contoso Event Leads", 4, True),
                                          ("Fabrikam Deals", 2, True), ("Contoso Opt-out", 2, False),
                                          ("Fabrikam Opt-out", 2, False), ("Unmapped", 2, True))],
        "contacts": list(contacts),
        "leads": list(leads),
        "consents": list(consents),
        "list_members": list_members or {},
    }


def mappings_file(mode: str) -> dict:
    if mode == "single-brand":
        return {"mode": mode, "brands": [{
            "name": "Contoso", "purposes": ["Contoso marketing"], "opt_out_list": None,
            "lists": [{"list": "Contoso Newsletter", "topic": "Contoso News"},
                      {"list": "Contoso Event Leads", "topic": "Contoso Events"},
                      {"list": "Fabrikam Deals", "topic": "Fabrikam Deals"}]}]}
    return {"mode": mode, "brands": [
        {"name": "Contoso", "purposes": ["Contoso marketing"], "opt_out_list": "Contoso Opt-out",
         "lists": [{"list": "Contoso Newsletter", "topic": "Contoso News"},
                   {"list": "Contoso Event Leads", "topic": "Contoso Events"}]},
        {"name": "Fabrikam", "purposes": ["Fabrikam marketing"], "opt_out_list": "Fabrikam Opt-out",
         "lists": [{"list": "Fabrikam Deals", "topic": "Fabrikam Deals"}]}]}


def contact(name: str, *emails: str, dnb: bool = False) -> dict:
    row = {"contactid": gid(name), "lastname": name, "donotbulkemail": dnb}
    for i, e in enumerate(emails, 1):
        row[f"emailaddress{i}"] = e
    return row


def lead(name: str, email: str) -> dict:
    return {"leadid": gid(name), "lastname": name, "emailaddress1": email}
