"""The Web API surface under /api/data/v9.2/: routing of one (already authenticated) request.

``Api.handle`` is transport-free so that $batch parts go through exactly the same code as
top-level requests.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, quote, unquote

from . import odata
from .errors import BAD_QUERY, DataverseError, bad_column, bad_query
from .schema import BUSINESS_UNIT_ID, BY_SET, LISTMEMBER, ORGANIZATION_ID, READ_ONLY, RELATIONSHIPS, TABLES
from .store import MAX_PAGE, OUTBOUND_PREFIX, Store, _decode_token, _encode_token, parse_guid

_SEGMENT = re.compile(r"^([A-Za-z_$][\w.$]*)(?:\(([^)]*)\))?$")
_JSON = "application/json; odata.metadata=minimal"
_UNREADABLE = {"serviceendpoint": ("authvalue", "saskey", "sastoken")}
_OUTBOUND_COLUMN = re.compile(r"\b" + OUTBOUND_PREFIX + r"[a-z0-9_]+")
MAX_BATCH = 1000


@dataclass
class Response:
    status: int
    headers: dict = field(default_factory=dict)
    body: bytes = b""


def json_response(status: int, obj, headers: dict | None = None) -> Response:
    h = {"Content-Type": _JSON, "OData-Version": "4.0"}
    h.update(headers or {})
    return Response(status, h, json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode())


def error_response(err: DataverseError) -> Response:
    return json_response(err.status, err.body(), err.headers)


def no_content(headers: dict | None = None) -> Response:
    h = {"OData-Version": "4.0"}
    h.update(headers or {})
    return Response(204, h, b"")


def prefer(headers: dict) -> dict[str, str]:
    out = {}
    for part in headers.get("prefer", "").split(","):
        k, _, v = part.strip().partition("=")
        if k:
            out[k.strip().lower()] = v.strip().strip('"')
    return out


def _json_body(body: bytes) -> dict:
    if not body.strip():
        return {}
    try:
        obj = json.loads(body)
    except ValueError:
        raise DataverseError(400, BAD_QUERY, "The request body is not valid JSON.") from None
    if not isinstance(obj, dict):
        raise DataverseError(400, BAD_QUERY, "The request body must be a JSON object.")
    return obj


def _segment(text: str):
    m = _SEGMENT.match(text)
    if not m:
        raise DataverseError(404, BAD_QUERY, f"Resource not found for the segment '{text}'.")
    return m.group(1), m.group(2)


def kind_of(method: str, path: str) -> str:
    """A coarse request kind for the statistics: 'contacts', 'lists/listcontact_association', '$batch'."""
    parts = [p for p in path.split("/") if p]
    if not parts:
        return "(root)"
    names = [re.sub(r"\(.*\)$", "", p) for p in parts]
    names = [n.replace("Microsoft.Dynamics.CRM.", "") for n in names if n != "$ref"]
    return "/".join(names)


class Api:
    def __init__(self, store: Store):
        self.store = store
        self.api_url = ""  # set by the server once bound

    # --- rendering ---------------------------------------------------------------------------

    def render(self, t, row: dict, select: list[str] | None) -> dict:
        get = row.get
        out = {"@odata.etag": f'W/"{get("versionnumber", 0)}"'}
        if select is None and self.store.without_outbound_solution:
            select = [c for c in t.columns if not c.startswith(OUTBOUND_PREFIX)]
        out.update({c: get(c) for c in (select or t.columns)})
        for c in _UNREADABLE.get(t.name, ()):  # IsValidForRead false: never answered
            if c in out:
                out[c] = None
        return out

    def context(self, entity_set: str, select: list[str] | None, single: bool = False) -> str:
        cols = f"({','.join(select)})" if select else ""
        return f"{self.api_url}/$metadata#{entity_set}{cols}{'/$entity' if single else ''}"

    def entity_id(self, t, rid: str) -> str:
        return f"{self.api_url}/{t.entity_set}({rid})"

    # --- entry -------------------------------------------------------------------------------

    def handle(self, method: str, path: str, query: str, headers: dict, body: bytes, user_id: str) -> Response:
        try:
            return self._route(method, path, query, headers, body, user_id)
        except DataverseError as e:
            return error_response(e)

    def _route(self, method, path, query, headers, body, user_id) -> Response:
        """One request (on its own or inside a $batch) to its handler, by the path's segments."""
        parts = [p for p in path.split("/") if p]
        params = dict(parse_qsl(query, keep_blank_values=True)) if query else {}
        if not parts:
            return json_response(200, {"@odata.context": f"{self.api_url}/$metadata",
                                       "value": [{"name": t.entity_set, "kind": "EntitySet", "url": t.entity_set}
                                                 for t in TABLES.values()]})
        head = parts[0]
        if head in ("WhoAmI", "WhoAmI()"):
            return self._who_am_i(method, user_id)
        if head in ("AddListMembersList", "Microsoft.Dynamics.CRM.AddListMembersList"):
            if method != "POST" or len(parts) != 1:
                raise DataverseError(405, BAD_QUERY, "AddListMembersList is an unbound action: POST it to the service root.")
            return self._add_list_members(_json_body(body), user_id)
        if head.startswith("EntityDefinitions("):
            return self._entity_definitions(method, parts, params)
        if head == "$batch":
            raise bad_query("$batch is not allowed inside a batch.")
        name, key = _segment(head)
        if name == LISTMEMBER.entity_set:
            return self._listmembers(method, key, parts[1:], params, headers)
        t = self._table(name, method, params, body)
        rid = parse_guid(key, t.key) if key is not None else None
        rest = parts[1:]
        if rid is None:
            return self._on_collection(t, method, rest, params, headers, body, user_id)
        if not rest:
            return self._on_row(t, rid, method, params, headers, body, user_id)
        return self._on_row_segment(t, rid, method, rest, params, headers, body, user_id)

    def _who_am_i(self, method: str, user_id: str) -> Response:
        if method != "GET":
            raise DataverseError(405, BAD_QUERY, "WhoAmI is a function: use GET.")
        return json_response(200, {"@odata.context": f"{self.api_url}/$metadata#Microsoft.Dynamics.CRM.WhoAmIResponse",
                                   "BusinessUnitId": BUSINESS_UNIT_ID, "UserId": user_id,
                                   "OrganizationId": ORGANIZATION_ID})

    def _table(self, name: str, method: str, params: dict, body: bytes):
        """The table an entity set names, once the request may touch it (404 unknown set, 405 a
        write to a read-only table, 400 a column of a solution the org does not have)."""
        t = BY_SET.get(name)
        if t is None:
            raise DataverseError(404, BAD_QUERY, f"Resource not found for the segment '{name}'.")
        if t.name in READ_ONLY and method != "GET":
            raise DataverseError(405, BAD_QUERY, f"The {t.name} table is read-only: {method} is not supported.")
        if self.store.without_outbound_solution:
            self._refuse_outbound_columns(t, params, body)
        return t

    def _on_collection(self, t, method, rest, params, headers, body, user_id) -> Response:
        """``/{set}``: query or create; ``/{set}/Microsoft.Dynamics.CRM.{Create|Update}Multiple``."""
        if not rest:
            if method == "GET":
                return self._collection(t, params, headers)
            if method == "POST":
                return self._create(t, _json_body(body), headers, params, user_id)
            raise DataverseError(405, BAD_QUERY, f"{method} is not supported on a collection.")
        if len(rest) == 1 and method == "POST" and rest[0].startswith("Microsoft.Dynamics.CRM."):
            action = rest[0][len("Microsoft.Dynamics.CRM."):]
            if action == "CreateMultiple":
                return self._create_multiple(t, _json_body(body), user_id)
            if action == "UpdateMultiple":
                return self._update_multiple(t, _json_body(body), user_id)
        raise DataverseError(404, BAD_QUERY, f"Resource not found for the segment '{rest[0]}'.")

    def _on_row(self, t, rid, method, params, headers, body, user_id) -> Response:
        """``/{set}({id})``: read, update or delete one row."""
        if method == "GET":
            select = odata.parse_select(t, params.get("$select"))
            row = self.store.get(t.name, rid)
            out = {"@odata.context": self.context(t.entity_set, select, single=True)}
            out.update(self.render(t, row, select))
            return json_response(200, out)
        if method == "PATCH":
            return self._patch(t, rid, _json_body(body), headers, params, user_id)
        if method == "DELETE":
            self.store.delete(t.name, rid, user_id)
            return no_content()
        raise DataverseError(405, BAD_QUERY, f"{method} is not supported on a single row.")

    def _on_row_segment(self, t, rid, method, rest, params, headers, body, user_id) -> Response:
        """``/{set}({id})/...``: a bound action, a relationship, or one column's value."""
        seg, key2 = _segment(rest[0])
        if seg.startswith("Microsoft.Dynamics.CRM."):
            if method != "POST" or len(rest) != 1:
                raise DataverseError(405, BAD_QUERY, "Bound actions need POST.")
            return self._bound_action(t, rid, seg[len("Microsoft.Dynamics.CRM."):], _json_body(body), user_id)
        if seg == "listaccount_association" and rest[1:] == ["$ref"] and method in ("POST", "DELETE"):
            raise list_member_refused("Associate" if method == "POST" else "Disassociate")
        if seg in RELATIONSHIPS:
            return self._on_relationship(t, rid, method, seg, key2, rest, params, headers)
        if seg in t.columns and not rest[1:] and method == "GET":
            row = self.store.get(t.name, rid)
            return json_response(200, {"@odata.context": f"{self.api_url}/$metadata#{t.entity_set}({rid})/{seg}",
                                       "value": row.get(seg)})
        raise DataverseError(404, BAD_QUERY, f"Resource not found for the segment '{rest[0]}'.")

    def _on_relationship(self, t, rid, method, seg, key2, rest, params, headers) -> Response:
        """``/{set}({id})/{relationship}``: read the related rows; list membership is written only
        through the list's actions, so Associate and Disassociate are refused."""
        rel, other = self.store.relationship_for(t.name, seg)
        ref = rest[1:] == ["$ref"]
        if key2 is not None:
            if method == "DELETE" and ref:
                raise list_member_refused("Disassociate")
            raise DataverseError(405, BAD_QUERY, f"{method} is not supported on '{seg}({key2})'.")
        if ref and method in ("POST", "DELETE"):
            raise list_member_refused("Associate" if method == "POST" else "Disassociate")
        if not rest[1:] and method == "GET":
            self.store.get(t.name, rid)
            direction = "members" if t.name == "list" else "lists"
            return self._collection(TABLES[other], params, headers, scope=(rel, direction, rid))
        raise DataverseError(405, BAD_QUERY, f"{method} is not supported on '{seg}'.")

    def _refuse_outbound_columns(self, t, params: dict, body: bytes) -> None:
        """Without the Outbound marketing solution its msdyncrm_* columns do not exist: naming one in
        $select, $filter, $orderby, $expand or a written body is Dataverse's unknown-property 400."""
        texts = [params.get(p) or "" for p in ("$select", "$filter", "$orderby", "$expand")]
        if body.strip():
            try:
                texts.extend(str(k) for k in json.loads(body))
            except (ValueError, TypeError):
                pass  # not a JSON object: the handler names that problem
        for text in texts:
            m = _OUTBOUND_COLUMN.search(text)
            if m:
                raise bad_column(t.name, m.group(0))

    # --- reads -------------------------------------------------------------------------------

    def _collection(self, t, params: dict, headers: dict, scope=None) -> Response:
        for p in params:
            if p.startswith("$") and p not in ("$select", "$filter", "$orderby", "$top", "$skiptoken", "$count",
                                               "$expand"):
                if p == "$skip":
                    raise bad_query("The query parameter $skip is not supported; follow @odata.nextLink.")
                raise bad_query(f"The query parameter {p} is not supported.")
        select = odata.parse_select(t, params.get("$select"))
        prefs = prefer(headers)
        page = MAX_PAGE
        applied = {}
        if "odata.maxpagesize" in prefs:
            try:
                page = int(prefs["odata.maxpagesize"])
            except ValueError:
                raise bad_query("odata.maxpagesize must be a number.") from None
            page = max(1, min(page, MAX_PAGE))
            applied["Preference-Applied"] = f"odata.maxpagesize={page}"
        top = None
        if "$top" in params and "odata.maxpagesize" not in prefs:  # with both, Dataverse ignores $top
            try:
                top = int(params["$top"])
            except ValueError:
                raise bad_query("$top must be a non-negative integer.") from None
            if top < 0:
                raise bad_query("$top must be a non-negative integer.")
        count = params.get("$count", "").lower() == "true"
        rows, token, total = self.store.query(
            t.name, filter_text=params.get("$filter"), orderby_text=params.get("$orderby"), top=top,
            page_size=page, skiptoken=params.get("$skiptoken"), scope=scope, count=count)
        render = self.render
        expand = self._parse_expand(t, params.get("$expand"))
        out = {"@odata.context": self.context(t.entity_set, select)}
        if total is not None:
            out["@odata.count"] = total
        out["value"] = [render(t, r, select) for r in rows]
        for rendered, row in zip(out["value"], rows) if expand else ():
            for nav, other, other_select in expand:
                rendered[nav] = self._related(t, row, nav, other, other_select)
        if token is not None:
            out["@odata.nextLink"] = self._next_link(t, scope, params, token)
        return json_response(200, out, applied)

    def _listmembers(self, method: str, key, rest: list[str], params: dict, headers: dict) -> Response:
        """``GET listmembers`` (RetrieveMultiple only): the intersect rows of the memberships, with
        createdon the join time; ``DELETE listmembers(<id>)`` ends one. Joining goes through the
        list's actions, so other writes are refused here."""
        if method == "DELETE" and key is not None and not rest:
            self.store.delete_listmember(parse_guid(key, LISTMEMBER.key))
            return no_content()
        if method != "GET":
            raise DataverseError(405, BAD_QUERY, "The sandbox serves listmembers for reading and DELETE "
                                 "listmembers(<id>) only: join through AddMemberList or AddListMembersList.")
        if key is not None or rest:
            raise DataverseError(405, BAD_QUERY, "listmembers supports RetrieveMultiple only (GET /listmembers).")
        for p in params:
            if p.startswith("$") and p not in ("$select", "$filter", "$top", "$skiptoken"):
                raise bad_query(f"The query parameter {p} is not supported on listmembers by the sandbox.")
        t = LISTMEMBER
        select = odata.parse_select(t, params.get("$select"))
        node = odata.parse_filter(params["$filter"]) if params.get("$filter") else None
        pred = odata.compile_filter(t, node) if node is not None else None
        lists, members = _narrowing(node)
        rows = [r for r in self.store.listmember_rows(lists, members) if pred is None or pred(r)]
        if params.get("$skiptoken"):
            after = odata.guid_order(_decode_token(params["$skiptoken"]).get("k", ""))
            rows = [r for r in rows if odata.guid_order(r["listmemberid"]) > after]
        page = MAX_PAGE
        if "odata.maxpagesize" in prefer(headers):
            try:
                page = max(1, min(int(prefer(headers)["odata.maxpagesize"]), MAX_PAGE))
            except ValueError:
                raise bad_query("odata.maxpagesize must be a number.") from None
        if "$top" in params and "odata.maxpagesize" not in prefer(headers):  # with both, $top is ignored
            try:
                page, rows = min(page, int(params["$top"])), rows[:int(params["$top"])]
            except ValueError:
                raise bad_query("$top must be a non-negative integer.") from None
        out = {"@odata.context": self.context(t.entity_set, select),
               "value": [self.render(t, r, select) for r in rows[:page]]}
        if len(rows) > page:
            q = [f"{quote(k, safe='$')}={quote(v, safe='')}" for k, v in params.items() if k != "$skiptoken"]
            q.append("$skiptoken=" + quote(_encode_token({"k": rows[page - 1]["listmemberid"]}), safe=""))
            out["@odata.nextLink"] = f"{self.api_url}/{t.entity_set}?" + "&".join(q)
        return json_response(200, out)

    def _parse_expand(self, t, text: str | None) -> list[tuple[str, object, list[str] | None]]:
        """``nav($select=a,b),nav2`` for the N:N list relationships (what Straddle reads)."""
        if not text:
            return []
        out = []
        for item in _split_top_level(text):
            nav, _, opts = item.partition("(")
            nav = nav.strip()
            rel, other_name = self.store.relationship_for(t.name, nav)
            other = TABLES[other_name]
            other_select = None
            if opts:
                for opt in opts.rstrip(")").split(";"):
                    key, _, value = opt.partition("=")
                    if key.strip() != "$select":
                        raise bad_query(f"$expand option {key.strip()} is not supported by the sandbox.")
                    other_select = odata.parse_select(other, value)
            out.append((rel, other, other_select))
        return out

    def _related(self, t, row: dict, rel: str, other, select: list[str] | None) -> list[dict]:
        list_side, _ = RELATIONSHIPS[rel]
        rid = row[t.key]
        ids = (self.store.members[rel].get(rid, ()) if t.name == list_side
               else self.store.member_of[rel].get(rid, ()))
        rows = [self.store.data[other.name].rows.get(i) for i in sorted(ids)]
        return [self.render(other, r, select) for r in rows if r is not None]

    def _next_link(self, t, scope, params: dict, token: str) -> str:
        if scope is not None:
            rel, direction, sid = scope
            list_side, member_side = RELATIONSHIPS[rel]
            owner = TABLES[list_side if direction == "members" else member_side]
            base = f"{self.api_url}/{owner.entity_set}({sid})/{rel}"
        else:
            base = f"{self.api_url}/{t.entity_set}"
        q = [f"{quote(k, safe='$')}={quote(v, safe='')}" for k, v in params.items() if k != "$skiptoken"]
        q.append(f"$skiptoken={quote(token, safe='')}")
        return base + "?" + "&".join(q)

    # --- writes ------------------------------------------------------------------------------

    def _created(self, t, rid: str, headers: dict, params: dict) -> Response:
        loc = {"OData-EntityId": self.entity_id(t, rid), "Location": self.entity_id(t, rid)}
        if prefer(headers).get("return") == "representation":
            select = odata.parse_select(t, params.get("$select"))
            out = {"@odata.context": self.context(t.entity_set, select, single=True)}
            out.update(self.render(t, self.store.get(t.name, rid), select))
            return json_response(201, out, loc)
        return no_content(loc)

    def _create(self, t, body: dict, headers: dict, params: dict, user_id: str) -> Response:
        rid = self.store.create(t.name, body, user_id)
        return self._created(t, rid, headers, params)

    def _patch(self, t, rid: str, body: dict, headers: dict, params: dict, user_id: str) -> Response:
        if_match = headers.get("if-match")
        if_none = headers.get("if-none-match")
        with self.store.lock:
            exists = rid in self.store.data[t.name].rows
            if if_match is not None and not exists:
                raise DataverseError(404, "0x80040217", f"{t.name} With Id = {rid} Does Not Exist")
            if if_match not in (None, "*") and exists:
                etag = f'W/"{self.store.get(t.name, rid).get("versionnumber")}"'
                if if_match != etag:
                    raise DataverseError(412, "0x80060882", "The version of the existing record doesn't match the RowVersion property provided.")
            if if_none == "*" and exists:
                raise DataverseError(412, "0x80040237", "A record with matching key values already exists.")
            if exists:
                self.store.update(t.name, rid, body, user_id)
            else:
                self.store.create(t.name, body, user_id, row_id=rid)
        if prefer(headers).get("return") == "representation":
            select = odata.parse_select(t, params.get("$select"))
            out = {"@odata.context": self.context(t.entity_set, select, single=True)}
            out.update(self.render(t, self.store.get(t.name, rid), select))
            return json_response(200 if exists else 201, out, {"OData-EntityId": self.entity_id(t, rid)})
        return no_content({"OData-EntityId": self.entity_id(t, rid)})

    def _targets(self, t, body: dict) -> list[dict]:
        targets = body.get("Targets")
        if not isinstance(targets, list) or not targets:
            raise DataverseError(400, "0x80040203", "Targets must be a non-empty array of entities.")
        if len(targets) > MAX_BATCH:
            raise DataverseError(400, "0x80040203", f"The number of Targets ({len(targets)}) exceeds the maximum of {MAX_BATCH}.")
        for tg in targets:
            if not isinstance(tg, dict):
                raise DataverseError(400, "0x80040203", "Each target must be an entity object.")
            otype = tg.get("@odata.type")
            if otype is not None and otype.rsplit(".", 1)[-1] != t.name:
                raise DataverseError(400, "0x80040203", f"All Targets must be of type Microsoft.Dynamics.CRM.{t.name}.")
        return targets

    def _create_multiple(self, t, body: dict, user_id: str) -> Response:
        targets = self._targets(t, body)
        ids = []
        with self.store.transaction():
            for tg in targets:
                ids.append(self.store.create(t.name, tg, user_id))
        return json_response(200, {"@odata.context": f"{self.api_url}/$metadata#Microsoft.Dynamics.CRM.CreateMultipleResponse",
                                   "Ids": ids})

    def _update_multiple(self, t, body: dict, user_id: str) -> Response:
        targets = self._targets(t, body)
        with self.store.transaction():
            for tg in targets:
                rid = tg.get(t.key)
                if not rid:
                    raise DataverseError(400, "0x80040203", f"Each target of UpdateMultiple needs its '{t.key}'.")
                self.store.update(t.name, parse_guid(rid, t.key), {k: v for k, v in tg.items() if k != t.key}, user_id)
        return no_content()

    def _bound_action(self, t, rid: str, action: str, body: dict, user_id: str) -> Response:
        # AddMemberList / RemoveMemberList: bound to list, one parameter EntityId (Edm.Guid).
        if t.name != "list" or action not in ("AddMemberList", "RemoveMemberList"):
            raise DataverseError(404, BAD_QUERY, f"The action 'Microsoft.Dynamics.CRM.{action}' is not bound to {t.name}.")
        if action == "RemoveMemberList" and self.store.without_remove_member_action:
            # Not a Web API action where Dynamics 365 apps were not enabled: OData finds no such segment.
            raise DataverseError(404, BAD_QUERY, f"Resource not found for the segment 'Microsoft.Dynamics.CRM.{action}'.")
        unknown = sorted(set(body) - {"EntityId"})
        if unknown:
            raise DataverseError(400, BAD_QUERY, f"The parameter '{unknown[0]}' in the request payload is not a valid "
                                                 f"parameter for the operation '{action}'.")
        entity = body.get("EntityId")
        if entity is None:
            raise DataverseError(400, "0x80040203", "EntityId is required.")
        entity = parse_guid(entity, "EntityId")
        if action == "AddMemberList":
            listmember_id = self.store.add_member(rid, entity, user_id)
            return json_response(200, {"@odata.context": f"{self.api_url}/$metadata#Microsoft.Dynamics.CRM.AddMemberListResponse",
                                       "Id": listmember_id})
        self.store.remove_member(rid, entity, user_id)
        return no_content()

    def _add_list_members(self, body: dict, user_id: str) -> Response:
        """AddListMembersList: unbound; ``List`` a list entity, ``Members`` a collection of entities."""
        unknown = sorted(set(body) - {"List", "Members"})
        if unknown:
            raise DataverseError(400, BAD_QUERY, f"The parameter '{unknown[0]}' in the request payload is not a valid "
                                                 f"parameter for the operation 'AddListMembersList'.")
        lst, members = body.get("List"), body.get("Members")
        if not isinstance(lst, dict) or not lst.get("listid"):
            raise DataverseError(400, "0x80040203", "List must be a list entity with its listid.")
        if lst.get("@odata.type") not in (None, "Microsoft.Dynamics.CRM.list"):
            raise DataverseError(400, "0x80040203", "List must be of type Microsoft.Dynamics.CRM.list.")
        if not isinstance(members, list) or not members:
            raise DataverseError(400, "0x80040203", "Members must be a non-empty collection of entities.")
        list_id = parse_guid(lst["listid"], "listid")
        _, member_table = self.store.list_member_rel(list_id)
        ids = []
        for m in members:
            if not isinstance(m, dict):
                raise DataverseError(400, "0x80040203", "Each member must be an entity object.")
            otype = m.get("@odata.type")
            if otype is not None and otype.rsplit(".", 1)[-1] != member_table:
                raise DataverseError(400, "0x80040203", f"The list's members are of type {member_table}, not {otype}.")
            key = m.get(f"{member_table}id")
            if not key:
                raise DataverseError(400, "0x80040203", f"Each member needs its '{member_table}id'.")
            ids.append(parse_guid(key, f"{member_table}id"))
        self.store.add_list_members(list_id, ids, user_id)
        return no_content()

    def _entity_definitions(self, method: str, parts: list[str], params: dict) -> Response:
        """``EntityDefinitions(LogicalName='x')/Attributes`` (the metadata API), LogicalName only."""
        m = re.match(r"^EntityDefinitions\(LogicalName='([a-z0-9_]+)'\)$", unquote(parts[0]))
        if method != "GET" or m is None or parts[1:] != ["Attributes"]:
            raise DataverseError(404, BAD_QUERY, "The sandbox serves EntityDefinitions(LogicalName='<table>')/Attributes only.")
        t = TABLES.get(m.group(1))
        if t is None:
            raise DataverseError(404, "0x80040217", f"Could not find an entity with the LogicalName '{m.group(1)}'.")
        for p in params:
            if p not in ("$select", "$filter"):
                raise bad_query(f"The query parameter {p} is not supported by the sandbox's metadata API.")
        selected = {c.strip() for c in params.get("$select", "LogicalName").split(",")}
        if not selected <= {"LogicalName", "ColumnNumber"} or "LogicalName" not in selected:
            raise bad_query("The sandbox's metadata API answers $select=LogicalName[,ColumnNumber] only.")
        names = sorted(self.store.attributes(t.name))
        numbers = self.store.column_numbers(t.name)
        flt = params.get("$filter")
        if flt:
            wanted = re.findall(r"LogicalName eq '([a-z0-9_]+)'", flt)
            if not wanted:
                raise bad_query("The sandbox's metadata API filters on LogicalName eq '...' (or-ed) only.")
            names = [n for n in names if n in wanted]
        ctx = f"{self.api_url}/$metadata#EntityDefinitions('{t.name}')/Attributes({','.join(sorted(selected))})"
        return json_response(200, {"@odata.context": ctx, "value": [
            {"@odata.type": "#Microsoft.Dynamics.CRM.AttributeMetadata", "LogicalName": n,
             **({"ColumnNumber": numbers[n]} if "ColumnNumber" in selected else {})} for n in names]})


def _narrowing(node) -> tuple[set[str] | None, set[str] | None]:
    """(list ids, member ids) a listmembers $filter pins in its top-level and-ed terms, if any."""
    terms = node[1] if node is not None and node[0] == "and" else [node] if node is not None else []
    lists = members = None
    for n in terms:
        if n[0] == "cmp" and n[1] == "eq" and n[3][1] in ("guid", "str"):
            col, values = n[2], {str(n[3][2]).strip("{}").lower()}
        elif n[0] == "in":  # ("in", column, [literals])
            col, values = n[1], {str(v[2]).strip("{}").lower() for v in n[2] if v[0] == "lit"}
        else:
            continue
        if col in ("_listid_value", "listid"):
            lists = values if lists is None else lists & values
        elif col in ("_entityid_value", "entityid"):
            members = values if members is None else members & values
    return lists, members


def list_member_refused(message: str) -> DataverseError:
    """Dataverse refuses N:N Associate/Disassociate on the list member relationships; the list's
    actions (AddMemberList, AddListMembersList, RemoveMemberList) are the way in and out."""
    return DataverseError(400, "0x80040203", f"{message} is not supported for ListMember")


def _split_top_level(text: str) -> list[str]:
    """Splits on commas outside parentheses."""
    parts, depth, current = [], 0, []
    for ch in text:
        if ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
            continue
        depth += ch == "("
        depth -= ch == ")"
        current.append(ch)
    parts.append("".join(current))
    return [p for p in (x.strip() for x in parts) if p]
