"""A demo straddling tenant, generated deterministically: two brands (Contoso, Fabrikam), six
subscription lists mapped to topics, a brand opt-out list each, contacts sharing addresses and
holding several, leads, consent rows, and some drift for the nightly reconciliation to heal.

Addresses use reserved domains (.example, .test). ``generate(contacts=5000, seed=7)`` returns the
seed (sandbox seed format, loaded in bulk) and the scenario cast (``Cast``) whose ids the scenario
acts on.
"""
from __future__ import annotations

import json
import random
import uuid
from dataclasses import dataclass
from pathlib import Path

NS = uuid.UUID("5d1f0a8e-3c2b-4f7a-9e61-7b2d4c8a9f03")
EMAIL_CH, PURPOSE_T, TOPIC_T = 534120000, 534120000, 534120001
OPTED_IN, OPTED_OUT = 534120001, 534120002
MAPPINGS_FILE = Path(__file__).with_name("mappings.json")


def gid(name: str) -> str:
    return str(uuid.uuid5(NS, name))


BRANDS = {"Contoso": "Contoso marketing", "Fabrikam": "Fabrikam marketing"}
# (list name, brand, topic, createdfromcode): lists and topics share names, as Microsoft's migration makes them
LISTS = [("Contoso News", "Contoso", "Contoso News", 2), ("Contoso Events", "Contoso", "Contoso Events", 2),
         ("Contoso Webinar Leads", "Contoso", "Contoso Webinars", 4), ("Fabrikam Deals", "Fabrikam", "Fabrikam Deals", 2),
         ("Fabrikam Tips", "Fabrikam", "Fabrikam Tips", 2), ("Fabrikam Events", "Fabrikam", "Fabrikam Events", 2)]
OPT_OUT_LISTS = {"Contoso": "Contoso Opt-out", "Fabrikam": "Fabrikam Opt-out"}

FIRST = "ava ben cleo dan eli fern gia hugo iris jon kai lena milo nora omar pia quin rosa sami tess uma vic wren xia yuri zoe".split()
LAST = "adler brook castro diaz evans fujita garcia haas ivanova jensen kowal lopez moreau novak okafor patel quist rossi silva tanaka".split()
DOMAINS = ("contoso.example", "fabrikam.example", "mail.test", "inbox.test", "post.example")


def list_id(name: str) -> str:
    return gid(f"list:{name}")


def purpose_id(brand: str) -> str:
    return gid(f"purpose:{brand}")


def topic_id(name: str) -> str:
    return gid(f"topic:{name}")


def consent(email: str, brand: str, topic: str | None, value: int, key: str) -> dict:
    row = {"msdynmkt_contactpointconsent4id": gid(f"consent:{key}"), "msdynmkt_contactpointvalue": email,
           "msdynmkt_contactpointtype": EMAIL_CH, "msdynmkt_contactpointconsenttype": TOPIC_T if topic else PURPOSE_T,
           "msdynmkt_value": value, "_msdynmkt_purposeid_value": purpose_id(brand),
           "modifiedon": "2026-01-05T09:00:00Z"}
    if topic:
        row["_msdynmkt_topicid_value"] = topic_id(topic)
    return row


@dataclass(frozen=True)
class Person:
    key: str
    name: str
    emails: tuple[str, ...]
    table: str = "contact"

    @property
    def id(self) -> str:
        return gid(f"{self.table}:{self.key}")

    def row(self) -> dict:
        row = {f"{self.table}id": self.id, "lastname": self.name}
        if self.table == "contact":
            row["donotbulkemail"] = False
        for i, e in enumerate(self.emails, 1):
            row[f"emailaddress{i}"] = e
        return row


class Cast:
    """The people the scenario acts on (their memberships and rows are part of the seed)."""

    ann = Person("ann", "Ann Scenario", ("ann.scenario@contoso.example", "ann.home@mail.test"))
    ann_twin = Person("ann-twin", "Ann Scenario (duplicate record)", ("ANN.scenario@contoso.example",))
    bo = Person("bo", "Bo Scenario", ("bo.scenario@fabrikam.example", "bo.work@post.example"))
    bo_twin = Person("bo-twin", "Bo Scenario (duplicate record)", ("bo.scenario@fabrikam.example",))
    cy = Person("cy", "Cy Scenario", ("cy.scenario@contoso.example", "cy.old@inbox.test"))
    di = Person("di", "Di Scenario", ("di.scenario@contoso.example", "di.private@mail.test"))
    di_lead = Person("di-lead", "Di Scenario (lead)", ("di.scenario@contoso.example",), "lead")
    ed = Person("ed", "Ed Scenario", ("ed.scenario@fabrikam.example",))
    fay = Person("fay", "Fay Scenario", ("fay.scenario@fabrikam.example", "fay.home@inbox.test"))

    bo_row = consent(bo.emails[0], "Fabrikam", "Fabrikam Deals", OPTED_IN, "bo-deals")
    di_row = consent(di.emails[0], "Contoso", None, OPTED_IN, "di-contoso")
    ed_row = consent(ed.emails[0], "Fabrikam", None, OPTED_IN, "ed-fabrikam")

    people = (ann, ann_twin, bo, bo_twin, cy, di, di_lead, ed, fay)
    members = {"Contoso News": (ann, ann_twin, di, ed, fay), "Contoso Events": (di, cy),
               "Contoso Webinar Leads": (di_lead,), "Fabrikam Deals": (bo, bo_twin, ed, fay, di),
               "Fabrikam Tips": (ed, cy), "Fabrikam Events": (fay,)}
    consents = (bo_row, di_row, ed_row)


def catalog() -> dict:
    return {
        "purposes": [{"msdynmkt_purposeid": purpose_id(b), "msdynmkt_name": p, "msdynmkt_type": 534120000}
                     for b, p in BRANDS.items()],
        "topics": [{"msdynmkt_topicid": topic_id(t), "msdynmkt_name": t, "_msdynmkt_purposeid_value": purpose_id(b)}
                   for _, b, t, _ in LISTS],
        "lists": [{"listid": list_id(n), "listname": n, "createdfromcode": code, "type": False,
                   "msdyncrm_issubscription": True} for n, _, _, code in LISTS]
                 + [{"listid": list_id(n), "listname": n, "createdfromcode": 2, "type": False,
                     "msdyncrm_issubscription": False} for n in OPT_OUT_LISTS.values()],
    }


def mappings() -> dict:
    return json.loads(MAPPINGS_FILE.read_text())


def generate(contacts: int = 5000, seed: int = 7, leads: int | None = None) -> dict:
    """The seed: catalog, ``contacts`` contacts (about 8% sharing an address with another, a third
    with a second address, a tenth with a third), ``leads`` leads (half sharing a contact's
    address), memberships, consent rows, drift, and the scenario cast."""
    rng = random.Random(seed)
    leads = contacts // 8 if leads is None else leads
    data = catalog()
    rows_c, rows_l, consents = [], [], []
    members: dict[str, list[str]] = {list_id(n): [] for n, *_ in LISTS}
    members.update({list_id(n): [] for n in OPT_OUT_LISTS.values()})
    primaries: list[str] = []
    lists_by_brand = {b: [n for n, lb, _, code in LISTS if lb == b and code == 2] for b in BRANDS}
    topic_of = {n: t for n, _, t, _ in LISTS}
    for i in range(contacts):
        f, l = rng.choice(FIRST), rng.choice(LAST)
        if primaries and rng.random() < 0.08:
            first = rng.choice(primaries)  # the same person entered twice (or a shared family address)
        else:
            first = f"{f}.{l}{i}@{rng.choice(DOMAINS)}"
            primaries.append(first)
        emails = [first]
        if rng.random() < 0.33:
            emails.append(f"{f}{i}@{rng.choice(DOMAINS)}")
        if rng.random() < 0.10:
            emails.append(f"{l}.{f}{i}@work.test")
        p = Person(f"c{i}", f"{f.title()} {l.title()}", tuple(emails))
        row = p.row()
        roll = rng.random()
        brands = ["Contoso"] if roll < 0.5 else ["Fabrikam"] if roll < 0.8 else ["Contoso", "Fabrikam"]
        for b in brands:
            for name in lists_by_brand[b]:
                if rng.random() < 0.45:
                    members[list_id(name)].append(p.id)
                    drift = rng.random()
                    if drift < 0.01:  # drift: a topic opt-out OBM never heard of (R2)
                        consents.append(consent(first, b, topic_of[name], OPTED_OUT, f"drift-topic:{i}:{name}"))
                    elif drift < 0.3:
                        consents.append(consent(first, b, topic_of[name], OPTED_IN, f"topic:{i}:{name}"))
            if rng.random() < 0.2:
                consents.append(consent(first, b, None, OPTED_IN, f"purpose:{i}:{b}"))
        if rng.random() < 0.005:  # drift: a global opt-out RTM never heard of (R3)
            row["donotbulkemail"] = True
        rows_c.append(row)
    for j in range(leads):
        email = rng.choice(primaries) if rng.random() < 0.5 else f"lead{j}@{rng.choice(DOMAINS)}"
        p = Person(f"l{j}", f"Lead {j}", (email,), "lead")
        rows_l.append(p.row())
        if rng.random() < 0.4:
            members[list_id("Contoso Webinar Leads")].append(p.id)
    for p in Cast.people:
        (rows_c if p.table == "contact" else rows_l).append(p.row())
    for name, people in Cast.members.items():
        members[list_id(name)].extend(p.id for p in people)
    consents.extend(Cast.consents)
    data.update(contacts=rows_c, leads=rows_l, consents=consents,
                list_members={k: v for k, v in members.items() if v})
    return data
