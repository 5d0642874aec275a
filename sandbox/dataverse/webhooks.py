"""Webhook steps as Dataverse runs them: match registered steps, build RemoteExecutionContext
bodies (the shape in docs/domain.md) at write time, and POST them from a background thread afterwards.

A delivery failure never affects the write. One retry only on 502/503/504. Deliveries can be
shuffled within a short window and a share of them duplicated, to mimic async delivery.
"""
from __future__ import annotations

import json
import logging
import queue
import random
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import xml.etree.ElementTree as ET
from collections import deque
from datetime import datetime, timezone

from .schema import BUSINESS_UNIT_ID, D, O, ORGANIZATION_ID, ORGANIZATION_NAME, TABLES
from .store import Event, Store

log = logging.getLogger("sandbox.dataverse.webhooks")

XRM = "http://schemas.microsoft.com/xrm/2011/Contracts"
MAX_BODY = 256 * 1024
ORG_HOST = f"{ORGANIZATION_NAME}.crm.dynamics.com"
_SHUFFLE_WINDOW = 0.05


def _date(iso_or_dt) -> str:
    if isinstance(iso_or_dt, datetime):
        dt = iso_or_dt
    else:
        dt = datetime.fromisoformat(iso_or_dt.replace("Z", "+00:00"))
    return f"/Date({int(dt.timestamp() * 1000)})/"


def entity_reference(table: str, rid: str, name: str | None = None, typed: bool = True) -> dict:
    ref = {"__type": f"EntityReference:{XRM}"} if typed else {}
    ref.update({"Id": rid, "KeyAttributes": [], "LogicalName": table, "Name": name, "RowVersion": None})
    return ref


def _value(t, col: str, v):
    """(logical attribute name, serialized value) of one stored column."""
    lk = t.by_column.get(col)
    if lk is not None:
        return lk.attr, (entity_reference(lk.target, v) if v is not None else None)
    kind = t.columns.get(col)
    if v is None:
        return col, None
    if kind == O:
        return col, {"__type": f"OptionSetValue:{XRM}", "Value": v}
    if kind == D:
        return col, _date(v)
    return col, v


def entity(table: str, rid: str, attrs: dict, typed: bool = True, only: set[str] | None = None) -> dict:
    t = TABLES[table]
    pairs = []
    for col, v in attrs.items():
        if col == "versionnumber":
            continue
        name, value = _value(t, col, v)
        if only is not None and name not in only and col != t.key:
            continue
        pairs.append({"key": name, "value": value})
    ent = {"__type": f"Entity:{XRM}"} if typed else {}
    ent.update({"Attributes": pairs, "EntityState": None, "FormattedValues": [], "Id": rid, "KeyAttributes": [],
                "LogicalName": table, "RelatedEntities": [], "RowVersion": None})
    return ent


def _attr_names(t, attrs: dict) -> set[str]:
    return {t.by_column[c].attr if c in t.by_column else c for c in attrs}


def _settings(xml: str | None) -> dict[str, str]:
    """``<settings><setting name="x-key" value="secret" /></settings>`` -> {"x-key": "secret"}."""
    if not xml:
        return {}
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return {}
    return {s.get("name"): s.get("value", "") for s in root.iter("setting") if s.get("name")}


def input_parameters(ev: Event) -> list[dict]:
    if ev.message in ("Create", "Update"):
        target = entity(ev.table, ev.id, ev.target or {})
        if ev.message == "Update":  # as in the documented sample
            target["Attributes"].append({"key": "modifiedonbehalfby", "value": None})
        return [{"key": "Target", "value": target}]
    if ev.message == "Delete":
        return [{"key": "Target", "value": entity_reference(ev.table, ev.id)}]
    if ev.message in ("Associate", "Disassociate"):
        return [{"key": "Target", "value": entity_reference(ev.table, ev.id)},
                {"key": "Relationship", "value": {"__type": f"Relationship:{XRM}", "PrimaryEntityRole": None,
                                                  "SchemaName": ev.extra["relationship"]}},
                {"key": "RelatedEntities", "value": [entity_reference(tb, i) for tb, i in ev.extra["related"]]}]
    if ev.message in ("AddMember", "RemoveMember"):
        return [{"key": "ListId", "value": ev.extra["ListId"]}, {"key": "EntityId", "value": ev.extra["EntityId"]}]
    if ev.message == "AddListMembers":
        return [{"key": "ListId", "value": ev.extra["ListId"]}, {"key": "MemberIds", "value": ev.extra["MemberIds"]}]
    return []


class Webhooks:
    def __init__(self, store: Store, *, shuffle: bool = False, duplicate_share: float = 0.0, seed=None,
                 timeout: float = 60.0):
        self.store = store
        self.shuffle = shuffle
        self.duplicate_share = duplicate_share
        self.rng = random.Random(seed)
        self.timeout = timeout
        self.log: deque = deque(maxlen=10000)
        self._q: queue.Queue = queue.Queue()
        self._pending = 0
        self._cv = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        store.listeners.append(self.on_event)

    def start(self):
        self._thread = threading.Thread(target=self._worker, name="sandbox-webhooks", daemon=True)
        self._thread.start()

    def stop(self):
        self._stop.set()
        self._q.put(None)
        if self._thread:
            self._thread.join(timeout=5)

    def drain(self, timeout: float = 10.0) -> bool:
        """Waits until every queued delivery has been attempted; True if it got there in time."""
        end = time.monotonic() + timeout
        with self._cv:
            while self._pending:
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._cv.wait(left)
        return True

    # --- matching and building (called under the store lock, at write time) -----------------

    def matching_steps(self, ev: Event):
        d = self.store.data
        messages, filters = d["sdkmessage"].rows, d["sdkmessagefilter"].rows
        endpoints, images = d["serviceendpoint"].rows, d["sdkmessageprocessingstepimage"].rows
        t = TABLES[ev.table]
        for step in list(d["sdkmessageprocessingstep"].rows.values()):
            if step.get("statecode", 0) != 0:
                continue
            msg = messages.get(step.get("_sdkmessageid_value"))
            if msg is None or msg.get("name") != ev.message:
                continue
            fid = step.get("_sdkmessagefilterid_value")
            if fid and ev.message not in ("Associate", "Disassociate"):
                f = filters.get(fid)
                if f is not None and f.get("primaryobjecttypecode") not in (ev.table, "none"):
                    continue
            if ev.message == "Update" and step.get("filteringattributes"):
                wanted = {a.strip().lower() for a in step["filteringattributes"].split(",") if a.strip()}
                if not wanted & _attr_names(t, ev.target or {}):
                    continue
            ep = endpoints.get(step.get("_eventhandler_value"))
            if ep is None or ep.get("contract", 8) != 8:
                continue
            imgs = [i for i in images.values() if i.get("_sdkmessageprocessingstepid_value") == step["sdkmessageprocessingstepid"]]
            yield step, ep, imgs

    def _images(self, ev: Event, imgs: list[dict], post: bool) -> list[dict]:
        out = []
        snap = ev.post if post else ev.pre
        if snap is None:
            return out
        for img in imgs:
            kind = img.get("imagetype", 1)
            if kind not in ((1, 2) if post else (0, 2)):
                continue
            attrs = img.get("attributes")
            only = {a.strip().lower() for a in attrs.split(",") if a.strip()} if attrs else None
            out.append({"key": img.get("entityalias") or img.get("name") or "image",
                        "value": entity(ev.table, ev.id, snap, typed=False, only=only)})
        return out

    def context(self, ev: Event, step: dict, imgs: list[dict]) -> dict:
        ids = ev.extra.setdefault("_ids", {"correlation": str(uuid.uuid4()), "operation": str(uuid.uuid4()),
                                            "request": str(uuid.uuid4())})
        inputs = input_parameters(ev)
        outputs = [{"key": "id", "value": ev.id}] if ev.message == "Create" else []
        owning = entity_reference("sdkmessageprocessingstep", step["sdkmessageprocessingstepid"], step.get("name"),
                                  typed=False)
        base = {
            "BusinessUnitId": BUSINESS_UNIT_ID, "CorrelationId": ids["correlation"], "Depth": 1,
            "InitiatingUserId": ev.user_id, "InputParameters": inputs, "IsExecutingOffline": False,
            "IsInTransaction": False, "IsOfflinePlayback": False, "IsolationMode": 1, "MessageName": ev.message,
            "Mode": 1, "OperationCreatedOn": _date(ev.time), "OperationId": ids["operation"],
            "OrganizationId": ORGANIZATION_ID, "OrganizationName": ORGANIZATION_NAME, "OutputParameters": outputs,
            "OwningExtension": owning, "ParentContext": None, "PostEntityImages": [], "PreEntityImages": [],
            "PrimaryEntityId": ev.id, "PrimaryEntityName": ev.table, "RequestId": ids["request"],
            "SecondaryEntityName": "none", "SharedVariables": [], "Stage": 30, "UserId": ev.user_id,
        }
        ctx = dict(base)
        ctx.update(ParentContext=base, PostEntityImages=self._images(ev, imgs, True),
                   PreEntityImages=self._images(ev, imgs, False), Stage=40)
        return ctx

    def on_event(self, ev: Event):
        for step, ep, imgs in self.matching_steps(ev):
            ctx = self.context(ev, step, imgs)
            headers = {"Content-Type": "application/json", "x-ms-dynamics-organization": ORG_HOST,
                       "x-ms-dynamics-entity-name": ev.table, "x-ms-dynamics-request-name": ev.message,
                       "x-ms-correlation-request-id": ctx["CorrelationId"]}
            body = self._encode(ctx)
            if len(body) > MAX_BODY:
                ctx.update(InputParameters=[], PostEntityImages=[], PreEntityImages=[], ParentContext=None)
                body = self._encode(ctx)
                headers["x-ms-dynamics-msg-size-exceeded"] = "true"
            url = ep.get("url") or ""
            auth, value = ep.get("authtype"), ep.get("authvalue")
            query = {}
            if auth == 4 and value:
                query["code"] = value
            elif auth == 5:
                headers.update(_settings(value))
            elif auth == 6:
                query.update(_settings(value))
            if query:
                url += ("&" if "?" in url else "?") + urllib.parse.urlencode(query)
            meta = {"message": ev.message, "entity": ev.table, "entity_id": ev.id,
                    "step_id": step["sdkmessageprocessingstepid"], "url": url.split("?", 1)[0]}
            with self._cv:
                self._pending += 1
            self._q.put((url, headers, body, meta))

    @staticmethod
    def _encode(ctx: dict) -> bytes:
        # Dataverse's serializer escapes every '/' (as in "\/Date(...)\/").
        return json.dumps(ctx, ensure_ascii=False).replace("/", "\\/").encode("utf-8")

    # --- delivery ----------------------------------------------------------------------------

    def _worker(self):
        while not self._stop.is_set():
            item = self._q.get()
            if item is None:
                break
            batch = [item]
            if self.shuffle:
                end = time.monotonic() + _SHUFFLE_WINDOW
                while len(batch) < 200:
                    left = end - time.monotonic()
                    if left <= 0:
                        break
                    try:
                        nxt = self._q.get(timeout=left)
                    except queue.Empty:
                        break
                    if nxt is None:
                        self._stop.set()
                        break
                    batch.append(nxt)
                self.rng.shuffle(batch)
            for url, headers, body, meta in batch:
                try:
                    self._deliver(url, headers, body, meta, duplicate=False)
                    if self.duplicate_share and self.rng.random() < self.duplicate_share:
                        self._deliver(url, headers, body, meta, duplicate=True)
                except Exception:  # a delivery failure never breaks the sandbox
                    log.exception("webhook delivery crashed")
                finally:
                    with self._cv:
                        self._pending -= 1
                        self._cv.notify_all()

    def _deliver(self, url, headers, body, meta, duplicate: bool):
        attempts, status, error = 0, None, None
        while attempts < 2:
            attempts += 1
            try:
                req = urllib.request.Request(url, data=body, headers=headers, method="POST")
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    status = resp.status
                    resp.read()
            except urllib.error.HTTPError as e:
                status, error = e.code, None
            except Exception as e:  # connection refused, timeout...
                status, error = None, type(e).__name__
            if status in (502, 503, 504) and attempts < 2:
                continue
            break
        self.log.append({**meta, "status": status, "attempts": attempts, "error": error, "duplicate": duplicate,
                         "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds")})
