"""The demo scenario: a marketer's changes through the Dataverse Web API (their own bearer token, so
the sync sees a person, not its own echo), and what Straddle must make true in the other system.

Each step is timed from the marketer's write until every expected effect is visible in Dataverse
(polled through the Web API as the marketer).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import requests

from sandbox.demo.tenant import OPTED_OUT, Cast, Person, list_id, purpose_id, topic_id

MARKETER_TOKEN = "demo-marketer"


class Marketer:
    """A person using Dynamics (any bearer token other than the sync's is another user)."""

    def __init__(self, api_url: str, token: str = MARKETER_TOKEN):
        self.api_url = api_url.rstrip("/")
        self.http = requests.Session()
        self.http.headers.update({"Authorization": f"Bearer {token}", "Accept": "application/json",
                                  "OData-Version": "4.0"})

    def call(self, method: str, path: str, body: dict | None = None, **params: str) -> requests.Response:
        r = self.http.request(method, f"{self.api_url}/{path}", json=body, params=params or None, timeout=30,
                              headers={"If-Match": "*"} if method == "PATCH" else None)
        if r.status_code >= 300:
            raise RuntimeError(f"Dataverse answered {r.status_code} to {method} {path.split('?')[0]}")
        return r

    # --- reads used by the checks --------------------------------------------------------------

    def lists_of(self, p: Person) -> set[str]:
        rel = "listlead_association" if p.table == "lead" else "listcontact_association"
        rows = self.call("GET", f"{p.table}s({p.id})/{rel}", **{"$select": "listid"}).json()["value"]
        return {r["listid"].lower() for r in rows}

    def opted_out(self, email: str, brand: str, topic: str | None = None) -> bool:
        f = (f"msdynmkt_contactpointvalue eq '{email}' and _msdynmkt_purposeid_value eq {purpose_id(brand)} and "
             + (f"_msdynmkt_topicid_value eq {topic_id(topic)}" if topic else "_msdynmkt_topicid_value eq null"))
        rows = self.call("GET", "msdynmkt_contactpointconsent4s", **{"$select": "msdynmkt_value", "$filter": f}).json()["value"]
        return bool(rows) and all(r["msdynmkt_value"] == OPTED_OUT for r in rows)

    def flag(self, p: Person, column: str = "donotbulkemail") -> bool:
        return bool(self.call("GET", f"{p.table}s({p.id})", **{"$select": column}).json().get(column))


@dataclass
class Effect:
    system: str  # where it must show: OBM or RTM
    text: str
    check: Callable[[Marketer], bool]
    seen_ms: float | None = None


@dataclass
class Step:
    title: str
    system: str  # where the marketer acted
    rule: str
    act: Callable[[Marketer], None]
    effects: list[Effect] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return all(e.seen_ms is not None for e in self.effects)


def _in(list_name: str, p: Person) -> Callable[[Marketer], bool]:
    return lambda m: list_id(list_name) in m.lists_of(p)


def _left(list_name: str, p: Person) -> Callable[[Marketer], bool]:
    return lambda m: list_id(list_name) not in m.lists_of(p)


def _all_out(p: Person, brand: str, topic: str | None = None) -> Callable[[Marketer], bool]:
    return lambda m: all(m.opted_out(e.lower(), brand, topic) for e in p.emails)


def steps() -> list[Step]:
    c = Cast
    # Marketers change list membership the documented way: the list's AddMemberList/RemoveMemberList actions.
    act = lambda m, name, action, p: m.call(  # noqa: E731
        "POST", f"lists({list_id(name)})/Microsoft.Dynamics.CRM.{action}", {"EntityId": p.id})
    return [
        Step("Ann unsubscribes from the Contoso News list", "OBM", "R1, R2",
             lambda m: act(m, "Contoso News", "RemoveMemberList", c.ann),
             [Effect("RTM", "both of Ann's addresses: Opted out of topic Contoso News", _all_out(c.ann, "Contoso", "Contoso News")),
              Effect("OBM", "Ann's duplicate record left Contoso News", _left("Contoso News", c.ann_twin))]),
        Step("Bo opts out of topic Fabrikam Deals", "RTM", "R2, R1",
             lambda m: m.call("PATCH", f"msdynmkt_contactpointconsent4s({c.bo_row['msdynmkt_contactpointconsent4id']})",
                              {"msdynmkt_value": OPTED_OUT}),
             [Effect("OBM", "Bo and his duplicate record left Fabrikam Deals",
                     lambda m: _left("Fabrikam Deals", c.bo)(m) and _left("Fabrikam Deals", c.bo_twin)(m)),
              Effect("RTM", "Bo's work address: Opted out of topic Fabrikam Deals", _all_out(c.bo, "Fabrikam", "Fabrikam Deals"))]),
        Step("Cy gets the global opt-out (donotbulkemail)", "OBM", "R3",
             lambda m: m.call("PATCH", f"contacts({c.cy.id})", {"donotbulkemail": True}),
             [Effect("RTM", "both of Cy's addresses: Opted out of purpose Contoso marketing", _all_out(c.cy, "Contoso")),
              Effect("RTM", "both of Cy's addresses: Opted out of purpose Fabrikam marketing", _all_out(c.cy, "Fabrikam"))]),
        Step("Di opts out of purpose Contoso marketing", "RTM", "R4 (multi-brand)",
             lambda m: m.call("PATCH", f"msdynmkt_contactpointconsent4s({c.di_row['msdynmkt_contactpointconsent4id']})",
                              {"msdynmkt_value": OPTED_OUT}),
             [Effect("OBM", "Di left Contoso News and Contoso Events",
                     lambda m: _left("Contoso News", c.di)(m) and _left("Contoso Events", c.di)(m)),
              Effect("OBM", "Di's lead left Contoso Webinar Leads", _left("Contoso Webinar Leads", c.di_lead)),
              Effect("OBM", "Di joined the Contoso Opt-out list", _in("Contoso Opt-out", c.di)),
              Effect("OBM", "Di stays in Fabrikam Deals (other brand)", _in("Fabrikam Deals", c.di))]),
        Step("Ed opts out of purpose Fabrikam marketing", "RTM", "R4 (multi-brand)",
             lambda m: m.call("PATCH", f"msdynmkt_contactpointconsent4s({c.ed_row['msdynmkt_contactpointconsent4id']})",
                              {"msdynmkt_value": OPTED_OUT}),
             [Effect("OBM", "Ed left Fabrikam Deals and Fabrikam Tips",
                     lambda m: _left("Fabrikam Deals", c.ed)(m) and _left("Fabrikam Tips", c.ed)(m)),
              Effect("OBM", "Ed joined the Fabrikam Opt-out list", _in("Fabrikam Opt-out", c.ed)),
              Effect("OBM", "Ed stays in Contoso News (other brand)", _in("Contoso News", c.ed))]),
        Step("Fay is added to the Fabrikam Opt-out list", "OBM", "R5",
             lambda m: act(m, "Fabrikam Opt-out", "AddMemberList", c.fay),
             [Effect("OBM", "Fay left Fabrikam Deals and Fabrikam Events",
                     lambda m: _left("Fabrikam Deals", c.fay)(m) and _left("Fabrikam Events", c.fay)(m)),
              Effect("RTM", "both of Fay's addresses: Opted out of purpose Fabrikam marketing", _all_out(c.fay, "Fabrikam")),
              Effect("OBM", "Fay stays in Contoso News (other brand)", _in("Contoso News", c.fay))]),
        Step("A marketer adds Ann back to Contoso News", "OBM", "R6",
             lambda m: act(m, "Contoso News", "AddMemberList", c.ann),
             [Effect("OBM", "Ann removed from Contoso News again (her address is opted out)", _left("Contoso News", c.ann))]),
    ]


def play(step: Step, marketer: Marketer, timeout: float = 30.0, poll: float = 0.02) -> Step:
    """Acts, then polls until every effect shows (or ``timeout``); each effect's delay is kept."""
    started = time.monotonic()
    step.act(marketer)
    while time.monotonic() - started < timeout:
        for e in step.effects:
            if e.seen_ms is None and e.check(marketer):
                e.seen_ms = (time.monotonic() - started) * 1000
        if step.done:
            break
        time.sleep(poll)
    return step


def table(played: list[Step]) -> str:
    """A readable table: what the marketer did where, what propagated where, and how long it took."""
    rows = [("#", "the marketer did", "rule", "Straddle made true", "after")]
    for i, s in enumerate(played, 1):
        for j, e in enumerate(s.effects):
            after = f"{e.seen_ms / 1000:.2f} s" if e.seen_ms is not None else "NOT SEEN"
            rows.append((str(i) if j == 0 else "", f"[{s.system}] {s.title}" if j == 0 else "",
                         s.rule if j == 0 else "", f"[{e.system}] {e.text}", after))
    widths = [max(len(r[k]) for r in rows) for k in range(5)]
    line = "  ".join("-" * w for w in widths)
    out = [line] + ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows[:1]] + [line]
    for r in rows[1:]:
        if r[0] and len(out) > 3:
            out.append("")
        out.append("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    out.append(line)
    return "\n".join(out)
