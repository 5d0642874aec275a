"""Queries on the store: $filter through the indexes, $orderby, $top, $count, and paging by
$skiptoken (a streaming cursor over key order, or a cursor into a materialised id list)."""
from __future__ import annotations

import base64
import bisect
import json
import secrets

from . import odata
from .errors import bad_query
from .rows import MAX_PAGE, _TableData
from .schema import PRIMARY_NAME, TABLES, Table

_CURSORS = 64


class Queries:
    """Mixed into ``Store``; uses its lock, tables and cursor cache."""

    def _estimate(self, td: _TableData, terms) -> int:
        """Candidate count without building the set, so an `and` only materialises its narrowest leaf."""
        tag = terms[0]
        if tag == "leaf":
            _, col, values = terms
            if col == td.t.key:
                return len(values)
            idx = td.index[col]
            return sum(len(idx.get(v, ())) for v in values)
        sizes = [self._estimate(td, k) for k in terms[1]]
        return min(sizes) if tag == "and" else sum(sizes)

    def _candidates(self, td: _TableData, terms) -> set[str] | None:
        if terms is None:
            return None
        tag = terms[0]
        if tag == "leaf":
            _, col, values = terms
            if col == td.t.key:
                return {v for v in values if v in td.rows}
            idx = td.index[col]
            out: set[str] = set()
            for v in values:
                s = idx.get(v)
                if s:
                    out |= s
            return out
        if tag == "and":
            # The predicate still checks the other conjuncts.
            return self._candidates(td, min(terms[1], key=lambda k: self._estimate(td, k)))
        out = set()
        for k in terms[1]:
            out |= self._candidates(td, k)
        return out

    def query(self, table: str, *, filter_text: str | None = None, orderby_text: str | None = None,
              top: int | None = None, page_size: int = MAX_PAGE, skiptoken: str | None = None,
              scope: tuple[str, str, str] | None = None, count: bool = False) -> tuple[list[dict], str | None, int | None]:
        """Rows of one page, the next page's skiptoken (or None) and, with ``count``, the total.

        ``scope`` = (relationship, "members"|"lists", id): only rows associated with that id.
        Without $orderby or an index the page is streamed from the sorted id order after the
        last id seen (no quadratic rescans); otherwise the matching ids are materialised once
        and the token is a cursor into that list.
        """
        t = TABLES[table]
        td = self.data[table]
        page_size = max(1, min(page_size, MAX_PAGE))
        with self.lock:
            node = odata.parse_filter(filter_text) if filter_text else None
            pred = odata.compile_filter(t, node) if node is not None else None
            orderby = odata.parse_orderby(t, orderby_text)
            if skiptoken:
                state = _decode_token(skiptoken)
                if "c" in state:
                    ids = self._cursors.get(state["c"])
                    if ids is None:
                        raise bad_query("The paging cookie has expired; start the query again.")
                    self._cursors.move_to_end(state["c"])
                    return self._cursor_page(td, ids, state["c"], state["p"], page_size), \
                        self._cursor_next(ids, state["c"], state["p"], page_size), None
                order = self._scope_order(scope) if scope is not None else None
                return self._stream_page(td, pred, page_size, state["k"], odata.key_range(t, node), order)
            limit = min(top, MAX_PAGE) if top is not None else None
            candidates = None
            narrowed = None
            if node is not None:
                terms = odata.index_terms(t, node, set(td.index) | {t.key})
                narrowed = self._candidates(td, terms)
            # In key order (none asked, or the key ascending) the page streams from the key order (of
            # the table, or of a relationship's related rows), starting and stopping at the key range's
            # bounds, as SQL Server seeks its clustered index (or the intersect table's index).
            by_key = not orderby or orderby == [(t.key, False)]
            if narrowed is None and (by_key or (orderby == [(t.key, True)] and limit is not None)):
                order = self._scope_order(scope) if scope is not None else None
                bounds = odata.key_range(t, node)
                total = (self._count(td, pred, order) if count else None)
                if not by_key:
                    return self._last_rows(td, pred, limit, bounds, order), None, total
                rows, token, _ = self._stream_page(td, pred, limit if limit is not None else page_size, None,
                                                   bounds, order)
                return rows, (None if limit is not None else token), total
            if scope is not None:
                rel, direction, sid = scope
                src = self.members[rel] if direction == "members" else self.member_of[rel]
                candidates = set(src.get(sid, ()))
            if narrowed is not None:
                candidates = narrowed if candidates is None else candidates & narrowed
            ids = [i for i in candidates if i in td.rows] if candidates is not None else list(td.order)
            if pred is not None:
                rows_ = td.rows
                ids = [i for i in ids if pred(rows_[i])]
            ids = (odata.sort_ids(t, td.rows, ids, orderby, lambda col, rid: self._primary_name(t, col, rid))
                   if orderby else sorted(ids, key=odata.guid_order))
            total = len(ids) if count else None
            if limit is not None:
                return [td.rows[i] for i in ids[:limit]], None, total
            if len(ids) <= page_size:
                return [td.rows[i] for i in ids], None, total
            key = secrets.token_hex(8)
            self._cursors[key] = ids
            while len(self._cursors) > _CURSORS:
                self._cursors.popitem(last=False)
            return self._cursor_page(td, ids, key, 0, page_size), self._cursor_next(ids, key, 0, page_size), total

    def _primary_name(self, t: Table, column: str, rid: str):
        """The primary name of the row a lookup column points to (None: no such row or name)."""
        target = t.by_column[column].target
        row = self.data[target].rows.get(rid) if target in self.data else None
        return row.get(PRIMARY_NAME.get(target, "")) if row else None

    def _count(self, td: _TableData, pred, order: list[str] | None = None) -> int:
        if order is not None:
            rows = [td.rows.get(i) for i in order]
            return sum(1 for r in rows if r is not None and (pred is None or pred(r)))
        if pred is None:
            return len(td.rows)
        return sum(1 for r in td.rows.values() if pred(r))

    @staticmethod
    def _span(td: _TableData, bounds, order: list[str] | None = None) -> tuple[int, int]:
        """Positions in the key order between a key range's bounds."""
        lo, lo_inc, hi, hi_inc = bounds if bounds else (None, False, None, False)
        order, key = (td.order if order is None else order), odata.guid_order
        i = 0 if lo is None else (bisect.bisect_left if lo_inc else bisect.bisect_right)(order, lo, key=key)
        j = len(order) if hi is None else (bisect.bisect_right if hi_inc else bisect.bisect_left)(order, hi, key=key)
        return i, j

    def _last_rows(self, td: _TableData, pred, limit: int, bounds, order: list[str] | None = None) -> list[dict]:
        """``$orderby=<key> desc&$top=n``: walks back from the range's end."""
        order = td.order if order is None else order
        i, j = self._span(td, bounds, order)
        out = []
        while j > i and len(out) < limit:
            j -= 1
            r = td.rows.get(order[j])
            if r is not None and (pred is None or pred(r)):
                out.append(r)
        return out

    def _stream_page(self, td: _TableData, pred, size: int, after: str | None, bounds=None,
                     order: list[str] | None = None):
        scoped = order is not None
        order, rows = (td.order if order is None else order), td.rows
        i, n = self._span(td, bounds, order)
        if after:
            i = max(i, bisect.bisect_right(order, odata.guid_order(after), key=odata.guid_order))
        out = []
        if pred is None and not scoped:
            # A slice, not a loop: 1M-row paging stays linear and cheap.
            chunk = order[i:min(i + size + 1, n)]
            out = [rows[k] for k in chunk[:size]]
            more = len(chunk) > size
        else:
            more = False
            while i < n:
                r = rows.get(order[i])
                i += 1
                if r is not None and (pred is None or pred(r)):
                    if len(out) == size:
                        more = True
                        break
                    out.append(r)
        token = _encode_token({"k": out[-1][td.t.key]}) if more and out else None
        return out, token, None

    def _cursor_page(self, td: _TableData, ids: list[str], key: str, pos: int, size: int) -> list[dict]:
        rows = td.rows
        return [rows[i] for i in ids[pos:pos + size] if i in rows]  # rows deleted meanwhile drop out

    def _cursor_next(self, ids: list[str], key: str, pos: int, size: int) -> str | None:
        return _encode_token({"c": key, "p": pos + size}) if pos + size < len(ids) else None


def _encode_token(state: dict) -> str:
    raw = json.dumps(state, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_token(token: str) -> dict:
    try:
        pad = "=" * (-len(token) % 4)
        state = json.loads(base64.urlsafe_b64decode(token + pad))
        if not isinstance(state, dict) or not ("k" in state or "c" in state):
            raise ValueError
        return state
    except (ValueError, TypeError):
        raise bad_query("The $skiptoken is not valid; follow @odata.nextLink unchanged.") from None
