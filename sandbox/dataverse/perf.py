"""Performance check: ``python -m sandbox.dataverse.perf [--contacts 1000000]``.

Seeds contacts (+ consent rows and lists) through ``store.load`` and pages through all contacts
over HTTP with 5000-row pages; prints timings and peak RSS.
"""
from __future__ import annotations

import argparse
import resource
import time
import uuid

import requests

from .server import SandboxServer

PURPOSE = "10000000-0000-0000-0000-000000000003"


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--contacts", type=int, default=1_000_000)
    ap.add_argument("--consents", type=int, default=100_000)
    ap.add_argument("--lookups", type=int, default=2000)
    args = ap.parse_args(argv)
    n = args.contacts
    t0 = time.perf_counter()
    contacts = [{"contactid": str(uuid.uuid4()), "emailaddress1": f"person{i}@example.org", "firstname": f"P{i}",
                 "donotbulkemail": i % 50 == 0, "statecode": 0} for i in range(n)]
    lists = [{"listid": str(uuid.uuid4()), "listname": f"List {j}", "createdfromcode": 2, "type": False,
              "msdyncrm_issubscription": True} for j in range(20)]
    members = {lst["listid"]: [contacts[i]["contactid"] for i in range(j, n, 40)] for j, lst in enumerate(lists)}
    consents = [{"msdynmkt_contactpointvalue": f"person{i}@example.org", "msdynmkt_contactpointtype": 534120000,
                 "msdynmkt_contactpointconsenttype": 534120000, "msdynmkt_value": 534120002,
                 "_msdynmkt_purposeid_value": PURPOSE} for i in range(0, n, max(1, n // args.consents))]
    seed = {"purposes": [{"msdynmkt_purposeid": PURPOSE, "msdynmkt_name": "Commercial"}], "contacts": contacts,
            "lists": lists, "consents": consents, "list_members": members}
    t1 = time.perf_counter()
    with SandboxServer(port=0) as srv:
        counts = srv.store.load(seed)
        t2 = time.perf_counter()
        del seed, contacts, consents, members
        print(f"built seed in {t1 - t0:.1f}s; store.load {counts} in {t2 - t1:.1f}s")
        s = requests.Session()
        s.headers.update({"Authorization": "Bearer perf", "Prefer": "odata.maxpagesize=5000"})
        url, rows, pages = f"{srv.api_url}/contacts?$select=contactid,emailaddress1,donotbulkemail", 0, 0
        t3 = time.perf_counter()
        while url:
            body = s.get(url).json()
            rows += len(body["value"])
            pages += 1
            url = body.get("@odata.nextLink")
        t4 = time.perf_counter()
        print(f"paged {rows} contacts in {pages} pages in {t4 - t3:.1f}s ({rows / (t4 - t3):,.0f} rows/s)")
        t5 = time.perf_counter()
        for k in range(args.lookups):
            vals = ",".join(f"'person{(k * 50 + j) % n}@example.org'" for j in range(50))
            r = s.get(f"{srv.api_url}/msdynmkt_contactpointconsent4s", params={
                "$select": "msdynmkt_contactpointvalue,msdynmkt_value,_msdynmkt_purposeid_value",
                "$filter": f"Microsoft.Dynamics.CRM.In(PropertyName='msdynmkt_contactpointvalue',PropertyValues=[{vals}])"
                           f" and _msdynmkt_purposeid_value eq {PURPOSE}"})
            assert r.status_code == 200
        t6 = time.perf_counter()
        print(f"{args.lookups} In-filter lookups (50 values) in {t6 - t5:.1f}s ({args.lookups / (t6 - t5):,.0f}/s)")
        lid = lists[0]["listid"]
        url, m = f"{srv.api_url}/lists({lid})/listcontact_association?$select=contactid,emailaddress1", 0
        t7 = time.perf_counter()
        while url:
            body = s.get(url).json()
            m += len(body["value"])
            url = body.get("@odata.nextLink")
        print(f"paged {m} members of one list in {time.perf_counter() - t7:.1f}s")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MB")


if __name__ == "__main__":
    main()
