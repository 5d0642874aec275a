"""A synthetic straddling tenant for the benchmarks: two brands, mapped lists, opt-outs, drift.

    python -m bench.tenant --contacts 100000 --lists 20 --opted-out 0.05 --drift 0.01 --serve 8081
    python -m bench.tenant --contacts 1000 --out tenant.json
    python -m bench.tenant --contacts 100000 --key-style random --serve 8081

``--serve`` loads it into a Dataverse sandbox in this process (the fast bulk path) and serves it
until stopped; ``--url`` posts it to a running sandbox's /_sandbox/seed; ``--out`` writes the seed.

Shape (deterministic for a given --seed): contacts with 1-2 addresses (30% a second one), 2% of
them sharing an address with another contact, a lead for every tenth contact (half of them sharing
the contact's address); each contact in 0-3 of the mapped lists; brands Contoso and Fabrikam, each
with one purpose, half the lists and an opt-out list. Contacts', leads' and consent rows' keys are
sequential GUIDs in three server bands, as Dataverse mints them (``--key-style random``: uuid4);
the rest of the tenant is the same either way. ``--opted-out`` of the contacts have opt-outs
that the other system already reflects (some with an older opted-in duplicate row); ``--drift`` of
them have one drift of class D1, D2, D3 or D5 each (D4 needs a previous run's snapshot).
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
import uuid

from sandbox.dataverse.keys import KEY_STYLES, KeyMinter
from shared.domain.consent import ConsentType, ConsentValue, ContactPointType

NS = uuid.UUID("7d7fd1c2-6a34-4f0e-8a59-3a8d2f2c4b10")
OUT, IN = ConsentValue.OPTED_OUT.value, ConsentValue.OPTED_IN.value
BRANDS = ("Contoso", "Fabrikam")


def gid(name: str) -> str:
    return str(uuid.uuid5(NS, name))


def catalog(n_lists: int) -> tuple[dict, dict]:
    """(seed rows for purposes/topics/lists, the multi-brand mappings file)."""
    purposes, topics, lists, brands = [], [], [], []
    for b, brand in enumerate(BRANDS):
        purposes.append({"msdynmkt_purposeid": gid(f"p-{brand}"), "msdynmkt_name": f"{brand} marketing",
                         "msdynmkt_type": 534120000})
        mapped = []
        for i in range(b, n_lists, len(BRANDS)):
            topics.append({"msdynmkt_topicid": gid(f"t{i}"), "msdynmkt_name": f"{brand} topic {i}",
                           "_msdynmkt_purposeid_value": gid(f"p-{brand}")})
            lists.append({"listid": gid(f"l{i}"), "listname": f"{brand} list {i}", "createdfromcode": 2,
                          "type": False, "msdyncrm_issubscription": True})
            mapped.append({"list": f"{brand} list {i}", "topic": f"{brand} topic {i}"})
        lists.append({"listid": gid(f"oo-{brand}"), "listname": f"{brand} opt-out", "createdfromcode": 2,
                      "type": False, "msdyncrm_issubscription": False})
        brands.append({"name": brand, "purposes": [f"{brand} marketing"], "opt_out_list": f"{brand} opt-out",
                       "lists": mapped})
    return ({"purposes": purposes, "topics": topics, "lists": lists},
            {"mode": "multi-brand", "brands": brands})


def build(contacts: int, lists: int, opted_out: float, drift: float, seed: int = 1,
          key_style: str = "sequential") -> tuple[dict, dict, dict]:
    """(seed, mappings file, what was planted). Contacts', leads' and consent rows' keys are minted
    as Dataverse mints them (``sequential``: a few server bands) or ``random``."""
    rng = random.Random(seed)
    keys = KeyMinter(key_style, seed)
    data, mappings = catalog(lists)
    brand_lists = {b: [i for i in range(k, lists, len(BRANDS))] for k, b in enumerate(BRANDS)}
    list_of_topic = {i: b for b, idx in brand_lists.items() for i in idx}
    rows, leads, consents = [], [], []
    members: dict[str, list[str]] = {}
    planted = {"D1": 0, "D2": 0, "D3": 0, "D5": 0, "consistent_opt_outs": 0}

    def consent(email: str, purpose: str, topic: str | None, value: int, modified: str) -> None:
        row = {"msdynmkt_contactpointconsent4id": keys.mint(),
               "msdynmkt_contactpointvalue": email, "msdynmkt_contactpointtype": ContactPointType.EMAIL.value,
               "msdynmkt_contactpointconsenttype": (ConsentType.TOPIC if topic else ConsentType.PURPOSE).value,
               "msdynmkt_value": value, "_msdynmkt_purposeid_value": purpose, "modifiedon": modified}
        if topic:
            row["_msdynmkt_topicid_value"] = topic
        consents.append(row)

    for i in range(contacts):
        cid = keys.mint()
        primary = f"u{i - 1}@example.test" if i and rng.random() < 0.02 else f"u{i}@example.test"
        emails = [primary] + ([f"u{i}@home.test"] if rng.random() < 0.3 else [])
        row = {"contactid": cid, "lastname": f"U{i}", "donotbulkemail": False}
        row.update({f"emailaddress{k}": e for k, e in enumerate(emails, 1)})
        joined = rng.sample(range(lists), rng.randint(0, 3))
        roll = rng.random()
        if roll < drift:
            kind = rng.choice(("D1", "D2", "D3", "D5"))
            planted[kind] += 1
            brand = rng.choice(BRANDS)
            in_list = rng.choice(brand_lists[brand])
            if in_list not in joined:
                joined.append(in_list)
            if kind == "D1":
                consent(primary, gid(f"p-{list_of_topic[in_list]}"), gid(f"t{in_list}"), OUT, "2026-10-01T00:00:00Z")
            elif kind == "D2":
                consent(primary, gid(f"p-{brand}"), None, OUT, "2026-10-01T00:00:00Z")
            elif kind == "D3":
                row["donotbulkemail"] = True
            else:
                members.setdefault(gid(f"oo-{brand}"), []).append(cid)
        elif roll < drift + opted_out:
            planted["consistent_opt_outs"] += 1
            brand = rng.choice(BRANDS)
            if rng.random() < 0.5:  # a topic opt-out for a list the contact is not in
                topic_list = rng.choice(brand_lists[brand])
                joined = [x for x in joined if x != topic_list]
                consent(primary, gid(f"p-{brand}"), gid(f"t{topic_list}"), OUT, "2026-09-01T00:00:00Z")
            else:  # a brand opt-out, fully reflected: opt-out list, none of the brand's lists
                joined = [x for x in joined if list_of_topic[x] != brand]
                members.setdefault(gid(f"oo-{brand}"), []).append(cid)
                for e in emails:
                    consent(e, gid(f"p-{brand}"), None, OUT, "2026-09-01T00:00:00Z")
                    if rng.random() < 0.2:  # an older opted-in duplicate: the newest row decides
                        consent(e, gid(f"p-{brand}"), None, IN, "2025-01-01T00:00:00Z")
        for x in joined:
            members.setdefault(gid(f"l{x}"), []).append(cid)
        rows.append(row)
        if i % 10 == 0:
            leads.append({"leadid": keys.mint(), "lastname": f"L{i}",
                          "emailaddress1": primary if rng.random() < 0.5 else f"lead{i}@example.test"})
    data.update(contacts=rows, leads=leads, consents=consents, list_members=members)
    return data, mappings, planted


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--contacts", type=int, default=10_000)
    p.add_argument("--lists", type=int, default=20)
    p.add_argument("--opted-out", type=float, default=0.05)
    p.add_argument("--drift", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--key-style", choices=KEY_STYLES, default="sequential",
                   help="primary keys: sequential GUIDs in 3 server bands, as Dataverse mints them, or random")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--serve", type=int, metavar="PORT", help="serve it from a sandbox in this process")
    where.add_argument("--url", help="POST it to a running sandbox, e.g. http://127.0.0.1:8081")
    where.add_argument("--out", help="write the seed JSON to this file")
    p.add_argument("--mappings-out", help="also write the mappings file here")
    args = p.parse_args()
    started = time.time()
    seed, mappings, planted = build(args.contacts, args.lists, args.opted_out, args.drift, args.seed, args.key_style)
    if args.mappings_out:
        with open(args.mappings_out, "w") as f:
            json.dump(mappings, f, indent=2)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(seed, f)
    elif args.url:
        import requests

        r = requests.post(args.url.rstrip("/") + "/_sandbox/seed", json=seed, timeout=3600)
        r.raise_for_status()
    else:
        from sandbox.dataverse import SandboxServer

        srv = SandboxServer(port=args.serve, seed=seed, key_style=args.key_style).start()
        del seed
        import gc

        gc.freeze()  # the tenant's millions of rows live to the end: keep the collector off them
        print(json.dumps({"ready": srv.url, "planted": planted, "seconds": round(time.time() - started, 1)}),
              flush=True)
        try:
            srv._thread.join()
        except KeyboardInterrupt:
            pass
        finally:
            srv.stop()
        return
    print(json.dumps({"planted": planted, "seconds": round(time.time() - started, 1)}))


if __name__ == "__main__":
    sys.exit(main())
