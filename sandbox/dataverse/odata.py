"""OData query options as Dataverse accepts them: $filter parsing/compilation, $orderby, $select.

A filter is parsed into a small AST of tuples, then compiled into a predicate over row dicts.
``index_terms`` exposes the top-level indexable conjuncts so the store can avoid a scan.
String comparison is case- and accent-insensitive, like Dataverse's default collation.
"""
from __future__ import annotations

import re
import unicodedata
from datetime import datetime, timezone
from typing import Any, Callable

from .errors import bad_column, bad_query
from .schema import B, D, F, G, I, O, S, Table

_TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<str>'(?:[^']|'')*')
  | (?P<guid>[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}(?![\w-]))
  | (?P<dt>\d{4}-\d{2}-\d{2}(?:T\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:\d{2})?)?(?![\w-]))
  | (?P<num>-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?[mMdDfFlL]?(?![\w-]))
  | (?P<ident>[A-Za-z_@][\w.@]*)
  | (?P<punct>[(),=\[\]/])
""", re.X)

_CMP = {"eq", "ne", "gt", "ge", "lt", "le"}
_KEYWORDS = _CMP | {"and", "or", "not", "null", "true", "false"}
_STRING_FUNCS = {"contains", "startswith", "endswith"}
_IN = {"microsoft.dynamics.crm.in": False, "microsoft.dynamics.crm.notin": True}


def fold(s: str) -> str:
    """Comparison form of SQL Server's default collation: case- and accent-insensitive, and
    trailing spaces ignored ('a@x.com ' = 'a@x.com'); the ASCII fast path keeps 1M-row scans cheap."""
    s = s.rstrip(" ")
    if s.isascii():
        return s.lower()
    return "".join(c for c in unicodedata.normalize("NFKD", s) if not unicodedata.combining(c)).casefold()


def now_iso() -> str:
    """Now, in the form Dataverse returns its date/time columns (UTC, whole seconds)."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def normalise_datetime(value: str) -> str:
    v = value.strip()
    if len(v) == 10:
        v += "T00:00:00Z"
    try:
        dt = datetime.fromisoformat(v.replace("Z", "+00:00"))
    except ValueError:
        raise bad_query(f"'{value}' is not a valid date/time") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def tokenize(text: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            raise bad_query(f"Syntax error at position {pos} in '$filter'.")
        pos = m.end()
        kind = m.lastgroup
        if kind != "ws":
            out.append((kind, m.group()))
    return out


class _Parser:
    def __init__(self, text: str):
        self.toks = tokenize(text)
        self.i = 0

    def peek(self, k: int = 0):
        j = self.i + k
        return self.toks[j] if j < len(self.toks) else (None, None)

    def take(self):
        t = self.peek()
        if t[0] is None:
            raise bad_query("Unexpected end of '$filter'.")
        self.i += 1
        return t

    def expect(self, value: str):
        kind, v = self.take()
        if v.lower() != value:
            raise bad_query(f"Syntax error in '$filter': expected '{value}', found '{v}'.")

    def is_word(self, word: str, k: int = 0) -> bool:
        kind, v = self.peek(k)
        return kind == "ident" and v.lower() == word

    def parse(self):
        node = self.or_()
        if self.peek()[0] is not None:
            raise bad_query(f"Syntax error in '$filter' near '{self.peek()[1]}'.")
        return node

    def or_(self):
        parts = [self.and_()]
        while self.is_word("or"):
            self.take()
            parts.append(self.and_())
        return parts[0] if len(parts) == 1 else ("or", parts)

    def and_(self):
        parts = [self.unary()]
        while self.is_word("and"):
            self.take()
            parts.append(self.unary())
        return parts[0] if len(parts) == 1 else ("and", parts)

    def unary(self):
        if self.is_word("not"):
            self.take()
            return ("not", self.unary())
        return self.primary()

    def primary(self):
        kind, v = self.peek()
        if v == "(":
            self.take()
            node = self.or_()
            self.expect(")")
            return node
        if kind == "ident" and v.lower() not in _KEYWORDS and self.peek(1)[1] == "(":
            return self.function()
        left = self.operand()
        kind, op = self.take()
        if kind != "ident" or op.lower() not in _CMP:
            raise bad_query(f"Syntax error in '$filter': expected a comparison operator, found '{op}'.")
        right = self.operand()
        op = op.lower()
        if left[0] != "col" and right[0] == "col":  # literal op column -> column op' literal
            left, right = right, left
            op = {"gt": "lt", "lt": "gt", "ge": "le", "le": "ge"}.get(op, op)
        if left[0] != "col" or right[0] == "col":
            raise bad_query("Comparisons must be between a property and a literal.")
        return ("cmp", op, left[1], right)

    def operand(self):
        kind, v = self.take()
        if kind == "str":
            return ("lit", "str", v[1:-1].replace("''", "'"))
        if kind == "guid":
            return ("lit", "guid", v.lower())
        if kind == "dt":
            return ("lit", "dt", v)
        if kind == "num":
            t = v.rstrip("mMdDfFlL")
            return ("lit", "num", float(t) if any(c in t for c in ".eE") else int(t))
        if kind == "ident":
            lv = v.lower()
            if lv == "null":
                return ("lit", "null", None)
            if lv in ("true", "false"):
                return ("lit", "bool", lv == "true")
            if lv in _KEYWORDS:
                raise bad_query(f"Syntax error in '$filter' near '{v}'.")
            return ("col", v)
        raise bad_query(f"Syntax error in '$filter' near '{v}'.")

    def function(self):
        _, name = self.take()
        lname = name.lower()
        self.expect("(")
        if lname in _IN:
            args = {}
            while True:
                _, key = self.take()
                self.expect("=")
                if self.peek()[1] == "[":
                    self.take()
                    vals = []
                    while self.peek()[1] != "]":
                        vals.append(self.operand())
                        if self.peek()[1] == ",":
                            self.take()
                    self.take()
                    args[key.lower()] = vals
                else:
                    args[key.lower()] = self.operand()
                if self.peek()[1] == ",":
                    self.take()
                    continue
                self.expect(")")
                break
            prop, values = args.get("propertyname"), args.get("propertyvalues")
            if not prop or prop[0] != "lit" or prop[1] != "str" or not isinstance(values, list):
                raise bad_query(f"{name} needs PropertyName='x' and PropertyValues=[...].")
            node = ("in", prop[2], values)
            return ("not", node) if _IN[lname] else node
        if lname in _STRING_FUNCS:
            col = self.operand()
            self.expect(",")
            lit = self.operand()
            self.expect(")")
            if col[0] != "col" or lit[0] != "lit" or lit[1] != "str":
                raise bad_query(f"{name} needs a property and a string literal.")
            return (lname, col[1], lit[2])
        raise bad_query(f"The function '{name}' is not supported.")


def parse_filter(text: str):
    return _Parser(text).parse()


# --- compilation -------------------------------------------------------------------------------

def _column(table: Table, name: str) -> str:
    if name in table.columns:
        return name
    # Dataverse property names are case-sensitive, but lookup attrs used bare are a common mistake:
    raise bad_column(table.name, name)


def coerce(table: Table, col: str, lit) -> Any:
    """A literal as the stored form of ``col``'s kind (folded for strings)."""
    _, kind, v = lit
    ctype = table.columns[col]
    if kind == "null":
        return None
    if ctype == S:
        if kind != "str":
            raise bad_query(f"A binary operator with incompatible types was detected for '{col}'.")
        return fold(v)
    if ctype == G:
        if kind not in ("guid", "str"):
            raise bad_query(f"'{col}' is a Guid; expected a GUID literal.")
        return v.strip("{}").lower()
    if ctype == B:
        if kind == "bool":
            return v
        if kind == "num" and v in (0, 1):
            return bool(v)
        raise bad_query(f"'{col}' is a Boolean; expected true or false.")
    if ctype in (I, O, F):
        if kind == "str":
            try:
                return int(v)
            except ValueError:
                raise bad_query(f"'{v}' is not a valid number for '{col}'.") from None
        if kind != "num":
            raise bad_query(f"'{col}' is a number; expected a numeric literal.")
        return v
    if ctype == D:
        if kind not in ("dt", "str"):
            raise bad_query(f"'{col}' is a DateTime; expected a date/time literal.")
        return normalise_datetime(v)
    return v


def _getter(table: Table, col: str) -> Callable[[dict], Any]:
    if table.columns[col] == S:
        def get(r, c=col):
            v = r.get(c)
            return None if v is None else fold(v)
        return get
    return lambda r, c=col: r.get(c)


def guid_order(value: str) -> str:
    """A lower-case GUID rearranged so that string order is SQL Server's ``uniqueidentifier`` order,
    which Dataverse sorts and compares primary keys in: the last group is most significant, then
    the fourth, then the third, second and first with their bytes swapped (SqlGuid compares the
    bytes of Guid.ToByteArray() in the order 10-15, 8-9, 6-7, 4-5, 0-3)."""
    v = value
    return (v[24:36] + v[19:23] + v[16:18] + v[14:16] + v[11:13] + v[9:11]
            + v[6:8] + v[4:6] + v[2:4] + v[0:2])


_OPS = {"eq": lambda a, b: a == b, "ne": lambda a, b: a != b, "gt": lambda a, b: a > b,
        "ge": lambda a, b: a >= b, "lt": lambda a, b: a < b, "le": lambda a, b: a <= b}


def compile_filter(table: Table, node) -> Callable[[dict], bool]:
    tag = node[0]
    if tag == "and":
        preds = [compile_filter(table, n) for n in node[1]]
        return lambda r: all(p(r) for p in preds)
    if tag == "or":
        preds = [compile_filter(table, n) for n in node[1]]
        return lambda r: any(p(r) for p in preds)
    if tag == "not":
        p = compile_filter(table, node[1])
        return lambda r: not p(r)
    if tag == "cmp":
        _, op, name, lit = node
        col = _column(table, name)
        value = coerce(table, col, lit)
        get = _getter(table, col)
        if value is None:
            if op == "eq":
                return lambda r, c=col: r.get(c) is None
            if op == "ne":
                return lambda r, c=col: r.get(c) is not None
            raise bad_query("null can only be compared with eq or ne.")
        if op == "eq" and table.columns[col] != S:
            return lambda r, c=col, v=value: r.get(c) == v
        fn = _OPS[op]
        if table.columns[col] == G and op not in ("eq", "ne"):
            value = guid_order(value)

            def get(r, c=col):
                x = r.get(c)
                return None if x is None else guid_order(x)

        def pred(r):
            x = get(r)
            # SQL semantics: a null column matches no comparison with a value.
            if x is None:
                return False
            try:
                return fn(x, value)
            except TypeError:
                return False
        return pred
    if tag == "in":
        _, name, lits = node
        # The query functions name a column by its logical name; a lookup's is its attribute.
        lk = table.by_attr.get(name) if name not in table.columns else None
        col = lk.column if lk is not None else _column(table, name)
        values = frozenset(coerce(table, col, lit) for lit in lits)
        get = _getter(table, col)
        return lambda r: get(r) in values
    if tag in _STRING_FUNCS:
        _, name, text = node
        col = _column(table, name)
        if table.columns[col] != S:
            raise bad_query(f"{tag} needs a string property; '{col}' is not one.")
        needle = fold(text)
        get = _getter(table, col)
        method = {"contains": str.__contains__, "startswith": str.startswith, "endswith": str.endswith}[tag]
        return lambda r: (x := get(r)) is not None and method(x, needle)
    raise bad_query("Unsupported $filter expression.")


def key_range(table: Table, node) -> tuple[str | None, bool, str | None, bool]:
    """Bounds on the primary key among the top-level ``and`` terms, as (low, inclusive, high,
    inclusive) in ``guid_order`` form, so the store can start and stop in its key order."""
    terms = node[1] if node is not None and node[0] == "and" else [node] if node is not None else []
    lo, lo_inc, hi, hi_inc = None, False, None, False
    for n in terms:
        if n[0] != "cmp" or n[2] != table.key or n[1] not in ("gt", "ge", "lt", "le") or n[3][1] not in ("guid", "str"):
            continue
        v = guid_order(coerce(table, table.key, n[3]))
        if n[1] in ("gt", "ge") and (lo is None or v > lo or (v == lo and n[1] == "gt")):
            lo, lo_inc = v, n[1] == "ge"
        if n[1] in ("lt", "le") and (hi is None or v < hi or (v == hi and n[1] == "lt")):
            hi, hi_inc = v, n[1] == "le"
    return lo, lo_inc, hi, hi_inc


def index_terms(table: Table, node, indexed: set[str]):
    """Candidate lookups the store can serve from an index, or None if the node needs a scan.

    Returns ("terms", [(col, values), ...], combinator) trees: for ``and`` any indexable child
    narrows the candidates; for ``or`` all children must be indexable.
    """
    tag = node[0]
    if tag == "cmp" and node[1] == "eq" and node[3][1] != "null":
        col = _column(table, node[2])
        if col in indexed:
            return ("leaf", col, [coerce(table, col, node[3])])
        return None
    if tag == "in":
        lk = table.by_attr.get(node[1]) if node[1] not in table.columns else None
        col = lk.column if lk is not None else _column(table, node[1])
        if col in indexed:
            return ("leaf", col, [coerce(table, col, lit) for lit in node[2]])
        return None
    if tag == "and":
        kids = [k for k in (index_terms(table, n, indexed) for n in node[1]) if k is not None]
        return ("and", kids) if kids else None
    if tag == "or":
        kids = [index_terms(table, n, indexed) for n in node[1]]
        return None if any(k is None for k in kids) else ("or", kids)
    return None


# --- $select / $orderby ------------------------------------------------------------------------

def parse_select(table: Table, text: str | None) -> list[str] | None:
    if not text:
        return None
    cols = []
    for part in text.split(","):
        name = part.strip()
        if not name:
            continue
        if name not in table.columns:
            lk = table.by_attr.get(name)
            if lk is not None:  # Dataverse rejects bare lookup names in $select
                raise bad_query(f"Could not find a property named '{name}' on type 'Microsoft.Dynamics.CRM.{table.name}'. Use '{lk.column}'.")
            raise bad_column(table.name, name)
        cols.append(name)
    if table.key not in cols:
        cols.append(table.key)
    return cols


def parse_orderby(table: Table, text: str | None) -> list[tuple[str, bool]]:
    if not text:
        return []
    out = []
    for part in text.split(","):
        bits = part.split()
        if not bits or len(bits) > 2 or (len(bits) == 2 and bits[1].lower() not in ("asc", "desc")):
            raise bad_query(f"Syntax error in '$orderby' near '{part.strip()}'.")
        col = _column(table, bits[0])
        out.append((col, len(bits) == 2 and bits[1].lower() == "desc"))
    return out


def sort_ids(table: Table, rows: dict[str, dict], ids: list[str], orderby: list[tuple[str, bool]],
             related_name: Callable[[str, str], Any] | None = None) -> list[str]:
    """Stable multi-key sort; nulls sort lowest as in SQL Server; ties broken by the key.
    GUID columns (the key too) sort in SQL Server's uniqueidentifier order; a lookup sorts by the
    related row's primary name (``related_name(column, id)``), as Dataverse orders lookups."""
    if len(orderby) == 1 and orderby[0][0] == table.key:  # by the key alone: one sort
        return sorted(ids, key=guid_order, reverse=orderby[0][1])
    ids = sorted(ids, key=guid_order)
    for col, desc in reversed(orderby):
        conv = fold if table.columns[col] == S else guid_order if table.columns[col] == G else None
        if related_name is not None and col in table.by_column:
            conv = (lambda v, c=col: fold(related_name(c, v) or ""))

        def key(i, c=col, f=conv):
            v = rows[i].get(c)
            if v is None:
                return (0, "")
            return (1, f(v) if f else v)
        ids.sort(key=key, reverse=desc)
    return ids
