"""A small, tolerant reader of Bicep files for the static deployment tests.

No Bicep compiler can be installed here, so the tests read the templates themselves. This covers
the subset of Bicep the templates under ``infra/`` use: ``targetScope``, decorators, ``param``,
``var``, ``resource`` (conditional ``if (...)`` and ``[for ...]`` loops too), ``module`` and
``output``. Object and array literals become dicts and lists; strings become ``str`` with any
``${...}`` interpolation kept verbatim; every other expression becomes an ``Expr`` holding its
source text (and, through ``Expr.objects()``, the object literals inside it, e.g. both arms of a
ternary). Anything it does not understand raises ``BicepSyntaxError`` naming the line, so a
template the reader cannot follow fails the tests instead of being silently half-read.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator


class BicepSyntaxError(ValueError):
    pass


# --- tokens ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Token:
    kind: str  # ident, string, number, punct, newline, eof
    text: str  # for strings: the value with ${...} kept verbatim
    line: int
    raw: str = ""  # source text (strings: with quotes)


_PUNCT3 = ("...",)
_PUNCT2 = ("==", "!=", "<=", ">=", "&&", "||", "??", "=~", "!~", "::", ".?")
_PUNCT1 = "{}[]():,.=?!<>+-*/%@|&"


def tokenize(src: str) -> list[Token]:
    tokens: list[Token] = []
    i, line, n = 0, 1, len(src)
    while i < n:
        c = src[i]
        if c == "\n":
            tokens.append(Token("newline", "\n", line, "\n"))
            line += 1
            i += 1
        elif c in " \t\r":
            i += 1
        elif src.startswith("//", i):
            while i < n and src[i] != "\n":
                i += 1
        elif src.startswith("/*", i):
            end = src.find("*/", i + 2)
            if end < 0:
                raise BicepSyntaxError(f"line {line}: unterminated comment")
            line += src.count("\n", i, end)
            i = end + 2
        elif src.startswith("'''", i):
            end = src.find("'''", i + 3)
            if end < 0:
                raise BicepSyntaxError(f"line {line}: unterminated multi-line string")
            text = src[i + 3:end]
            tokens.append(Token("string", text.removeprefix("\n"), line, src[i:end + 3]))
            line += text.count("\n")
            i = end + 3
        elif c == "'":
            j, out, start_line = i + 1, [], line
            while True:
                if j >= n or src[j] == "\n":
                    raise BicepSyntaxError(f"line {start_line}: unterminated string")
                ch = src[j]
                if ch == "\\":
                    nxt = src[j + 1] if j + 1 < n else ""
                    out.append({"n": "\n", "r": "\r", "t": "\t", "\\": "\\", "'": "'", "$": "$"}.get(nxt, nxt))
                    j += 2
                elif ch == "$" and src.startswith("${", j):
                    depth, k = 0, j + 1
                    # copy the interpolation verbatim, minding nested braces and strings
                    while k < n:
                        if src[k] == "{":
                            depth += 1
                        elif src[k] == "}":
                            depth -= 1
                            if depth == 0:
                                break
                        elif src[k] == "'":
                            k = src.index("'", k + 1)
                        k += 1
                    out.append(src[j:k + 1])
                    j = k + 1
                elif ch == "'":
                    break
                else:
                    out.append(ch)
                    j += 1
            tokens.append(Token("string", "".join(out), start_line, src[i:j + 1]))
            i = j + 1
        elif c.isdigit():
            m = re.match(r"\d+(\.\d+)?", src[i:])
            tokens.append(Token("number", m.group(0), line, m.group(0)))
            i += len(m.group(0))
        elif c.isalpha() or c == "_":
            m = re.match(r"[A-Za-z_][A-Za-z0-9_]*", src[i:])
            tokens.append(Token("ident", m.group(0), line, m.group(0)))
            i += len(m.group(0))
        else:
            for p in (*_PUNCT3, *_PUNCT2):
                if src.startswith(p, i):
                    tokens.append(Token("punct", p, line, p))
                    i += len(p)
                    break
            else:
                if c not in _PUNCT1:
                    raise BicepSyntaxError(f"line {line}: unexpected character {c!r}")
                tokens.append(Token("punct", c, line, c))
                i += 1
    tokens.append(Token("eof", "", line, ""))
    return tokens


# --- values ------------------------------------------------------------------------------------


@dataclass
class Expr:
    """An expression the reader keeps as source text (a reference, a call, a ternary...)."""
    text: str
    parts: list[Any] = field(default_factory=list)  # literals (dicts, lists, strings) found inside

    def objects(self) -> list[dict]:
        found: list[dict] = []
        for p in self.parts:
            found.extend(iter_objects(p))
        return found

    def strings(self) -> list[str]:
        return [s for p in self.parts for s in iter_strings(p)]

    def __str__(self) -> str:
        return self.text


@dataclass
class ForLoop:
    header: str  # e.g. "name in tables"
    body: Any
    condition: Expr | None = None


def _join(raw: list[str]) -> str:
    """Source text of an expression with canonical spacing: ``a.b(c, d)[0]``, ``x ? y : z``."""
    text = " ".join(raw)
    text = re.sub(r"\s*([.(\[])\s*", r"\1", text)
    text = re.sub(r"\s+([)\],])", r"\1", text)
    return re.sub(r"(\b(?:in|if|for|return)|[?:=,]|&&|\|\|)([(\[])", r"\1 \2", text)


def iter_objects(value: Any) -> Iterator[dict]:
    if isinstance(value, dict):
        yield value
        for v in value.values():
            yield from iter_objects(v)
    elif isinstance(value, list):
        for v in value:
            yield from iter_objects(v)
    elif isinstance(value, Expr):
        for p in value.parts:
            yield from iter_objects(p)
    elif isinstance(value, ForLoop):
        yield from iter_objects(value.body)


def iter_strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from iter_strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from iter_strings(v)
    elif isinstance(value, Expr):
        for p in value.parts:
            yield from iter_strings(p)
    elif isinstance(value, ForLoop):
        yield from iter_strings(value.body)


# --- declarations ------------------------------------------------------------------------------


@dataclass
class Decorated:
    decorators: dict[str, list[Any]]

    @property
    def secure(self) -> bool:
        return "secure" in self.decorators

    @property
    def metadata(self) -> dict:
        args = self.decorators.get("metadata") or [{}]
        return args[0] if isinstance(args[0], dict) else {}

    @property
    def description(self) -> str | None:
        args = self.decorators.get("description")
        return args[0] if args and isinstance(args[0], str) else None


@dataclass
class Param(Decorated):
    name: str
    type: str
    default: Any = None
    has_default: bool = False


@dataclass
class Output(Decorated):
    name: str
    type: str
    value: Any


@dataclass
class Resource(Decorated):
    symbol: str
    type: str
    api_version: str
    body: Any  # dict, or ForLoop
    existing: bool = False
    condition: Expr | None = None
    file: str = ""

    @property
    def properties(self) -> dict:
        body = self.body.body if isinstance(self.body, ForLoop) else self.body
        props = body.get("properties", {}) if isinstance(body, dict) else {}
        return props if isinstance(props, dict) else {}

    def get(self, key: str, default: Any = None) -> Any:
        body = self.body.body if isinstance(self.body, ForLoop) else self.body
        return body.get(key, default) if isinstance(body, dict) else default


@dataclass
class Module(Decorated):
    symbol: str
    path: str
    body: Any
    condition: Expr | None = None

    @property
    def params(self) -> dict:
        body = self.body.body if isinstance(self.body, ForLoop) else self.body
        return body.get("params", {}) if isinstance(body, dict) else {}


@dataclass
class BicepFile:
    path: Path
    target_scope: str = "resourceGroup"
    params: dict[str, Param] = field(default_factory=dict)
    vars: dict[str, Any] = field(default_factory=dict)
    resources: list[Resource] = field(default_factory=list)
    modules: list[Module] = field(default_factory=list)
    outputs: dict[str, Output] = field(default_factory=dict)


# --- parser ------------------------------------------------------------------------------------


class _Parser:
    def __init__(self, tokens: list[Token], path: str):
        self.t = tokens
        self.i = 0
        self.path = path

    # helpers
    def peek(self, k: int = 0) -> Token:
        return self.t[min(self.i + k, len(self.t) - 1)]

    def next(self) -> Token:
        tok = self.t[self.i]
        self.i += 1
        return tok

    def error(self, msg: str) -> BicepSyntaxError:
        tok = self.peek()
        return BicepSyntaxError(f"{self.path}:{tok.line}: {msg} (at {tok.raw or tok.kind!r})")

    def expect(self, kind: str, text: str | None = None) -> Token:
        tok = self.next()
        if tok.kind != kind or (text is not None and tok.text != text):
            self.i -= 1
            raise self.error(f"expected {text or kind}")
        return tok

    def skip_newlines(self) -> None:
        while self.peek().kind == "newline":
            self.i += 1

    def at(self, kind: str, text: str | None = None) -> bool:
        tok = self.peek()
        return tok.kind == kind and (text is None or tok.text == text)

    # values
    def value(self) -> Any:
        """A value ending at a newline, comma or closing bracket at depth 0."""
        start = self.i
        first = self.single()
        if self._at_value_end():
            return first
        # more follows (operators, ternary, member access): keep it as an expression
        self.i = start
        return self.raw_expression()

    def _at_value_end(self) -> bool:
        tok = self.peek()
        return tok.kind in ("newline", "eof") or (tok.kind == "punct" and tok.text in (",", "}", "]", ")"))

    def single(self) -> Any:
        tok = self.peek()
        if tok.kind == "punct" and tok.text == "{":
            return self.object()
        if tok.kind == "punct" and tok.text == "[":
            if self.peek(1).kind == "ident" and self.peek(1).text == "for" or (
                    self.peek(1).kind == "newline" and self._for_after_newlines()):
                return self.for_loop()
            return self.array()
        if tok.kind == "string":
            self.next()
            return tok.text
        if tok.kind == "number":
            self.next()
            return float(tok.text) if "." in tok.text else int(tok.text)
        if tok.kind == "ident" and tok.text in ("true", "false", "null"):
            self.next()
            return {"true": True, "false": False, "null": None}[tok.text]
        return self.raw_expression()

    def _for_after_newlines(self) -> bool:
        k = 1
        while self.peek(k).kind == "newline":
            k += 1
        return self.peek(k).kind == "ident" and self.peek(k).text == "for"

    def raw_expression(self) -> Expr:
        """Tokens up to a newline/comma/closer at depth 0; literals inside are parsed too."""
        depth = 0
        pieces: list[str] = []
        parts: list[Any] = []
        while True:
            tok = self.peek()
            if tok.kind == "eof":
                break
            if depth == 0 and (tok.kind == "newline" or (tok.kind == "punct" and tok.text in (",", "}", "]", ")"))):
                break
            # an object/array literal inside the expression (a ternary arm, a call argument); a '['
            # right after a name, ')' , ']' or string is indexing instead
            if tok.kind == "punct" and (tok.text == "{" or (
                    tok.text == "[" and not (pieces and re.search(r"[\w)\]']$", pieces[-1])))):
                start = self.i
                lit = self.object() if tok.text == "{" else self.array()
                parts.append(lit)
                pieces.append(" ".join(t.raw for t in self.t[start:self.i] if t.kind != "newline"))
                continue
            if tok.kind == "punct" and tok.text in "([{":
                depth += 1
            elif tok.kind == "punct" and tok.text in ")]}":
                depth -= 1
            if tok.kind == "string":
                parts.append(tok.text)
            if tok.kind != "newline":
                pieces.append(tok.raw)
            self.next()
        if not pieces:
            raise self.error("expected an expression")
        return Expr(_join(pieces), parts)

    def object(self) -> dict:
        self.expect("punct", "{")
        out: dict[str, Any] = {}
        while True:
            self.skip_newlines()
            if self.at("punct", "}"):
                self.next()
                return out
            if self.at("punct", ","):
                self.next()
                continue
            if self.at("punct", "@"):
                self.decorators()  # property decorators (e.g. @description on a type member)
                continue
            tok = self.next()
            if tok.kind not in ("ident", "string"):
                self.i -= 1
                raise self.error("expected a property name")
            if tok.kind == "ident" and tok.text == "resource" and self.peek().kind == "ident":
                raise self.error("nested resource declarations are not supported by this reader; use parent:")
            key = tok.text
            self.expect("punct", ":")
            self.skip_newlines()
            if key in out:
                raise self.error(f"duplicate property {key!r}")
            out[key] = self.value()

    def array(self) -> list:
        self.expect("punct", "[")
        out: list[Any] = []
        while True:
            self.skip_newlines()
            if self.at("punct", "]"):
                self.next()
                return out
            if self.at("punct", ","):
                self.next()
                continue
            out.append(self.value())

    def for_loop(self) -> ForLoop:
        self.expect("punct", "[")
        self.skip_newlines()
        self.expect("ident", "for")
        header: list[str] = []
        depth = 0
        while not (depth == 0 and self.at("punct", ":")):
            tok = self.next()
            if tok.kind == "eof":
                raise self.error("unterminated for loop")
            if tok.kind == "punct" and tok.text in "([":
                depth += 1
            elif tok.kind == "punct" and tok.text in ")]":
                depth -= 1
            if tok.kind != "newline":
                header.append(tok.raw)
        self.expect("punct", ":")
        self.skip_newlines()
        condition = None
        if self.at("ident", "if"):
            self.next()
            condition = self.paren_expression()
            self.skip_newlines()
        body = self.value()
        self.skip_newlines()
        self.expect("punct", "]")
        return ForLoop(_join(header), body, condition)

    def paren_expression(self) -> Expr:
        self.expect("punct", "(")
        start = self.i
        depth = 1
        while depth:
            tok = self.next()
            if tok.kind == "eof":
                raise self.error("unbalanced parentheses")
            if tok.kind == "punct" and tok.text == "(":
                depth += 1
            elif tok.kind == "punct" and tok.text == ")":
                depth -= 1
        inner = self.t[start:self.i - 1]
        return Expr(_join([t.raw for t in inner if t.kind != "newline"]),
                    [t.text for t in inner if t.kind == "string"])

    def decorators(self) -> dict[str, list[Any]]:
        decs: dict[str, list[Any]] = {}
        while self.at("punct", "@"):
            self.next()
            name = self.expect("ident").text
            while self.at("punct", "."):  # @sys.description(...)
                self.next()
                name = self.expect("ident").text
            args: list[Any] = []
            if self.at("punct", "("):
                self.next()
                while True:
                    self.skip_newlines()
                    if self.at("punct", ")"):
                        self.next()
                        break
                    if self.at("punct", ","):
                        self.next()
                        continue
                    args.append(self.value())
            decs[name] = args
            self.skip_newlines()
        return decs

    def body_with_condition(self) -> tuple[Any, Expr | None]:
        self.skip_newlines()
        if self.at("ident", "if"):
            self.next()
            cond = self.paren_expression()
            self.skip_newlines()
            return self.object(), cond
        if self.at("punct", "["):
            return self.for_loop(), None
        return self.object(), None

    # statements
    def file(self, path: Path) -> BicepFile:
        doc = BicepFile(path)
        while True:
            self.skip_newlines()
            if self.at("eof"):
                return doc
            decs = self.decorators() if self.at("punct", "@") else {}
            kw = self.expect("ident").text
            if kw == "targetScope":
                self.expect("punct", "=")
                doc.target_scope = self.expect("string").text
            elif kw == "param":
                name = self.expect("ident").text
                ptype = self.type_expression()
                param = Param(decs, name, ptype)
                if self.at("punct", "="):
                    self.next()
                    self.skip_newlines()
                    param.default, param.has_default = self.value(), True
                doc.params[name] = param
            elif kw == "var":
                name = self.expect("ident").text
                self.expect("punct", "=")
                self.skip_newlines()
                doc.vars[name] = self.value()
            elif kw == "resource":
                symbol = self.expect("ident").text
                type_ver = self.expect("string").text
                existing = False
                if self.at("ident", "existing"):
                    self.next()
                    existing = True
                self.expect("punct", "=")
                body, cond = self.body_with_condition()
                rtype, _, version = type_ver.partition("@")
                doc.resources.append(Resource(decs, symbol, rtype, version, body, existing, cond, str(path)))
            elif kw == "module":
                symbol = self.expect("ident").text
                mpath = self.expect("string").text
                self.expect("punct", "=")
                body, cond = self.body_with_condition()
                doc.modules.append(Module(decs, symbol, mpath, body, cond))
            elif kw == "output":
                name = self.expect("ident").text
                otype = self.type_expression()
                self.expect("punct", "=")
                self.skip_newlines()
                doc.outputs[name] = Output(decs, name, otype, self.value())
            elif kw in ("import", "using", "type", "func", "metadata", "extension"):
                self.skip_statement()
            else:
                self.i -= 1
                raise self.error(f"unknown statement {kw!r}")
            if not (self.at("newline") or self.at("eof")):
                raise self.error("expected the end of the line")

    def type_expression(self) -> str:
        parts = []
        while not (self.at("punct", "=") or self.at("newline") or self.at("eof")):
            parts.append(self.next().raw)
        return " ".join(parts)

    def skip_statement(self) -> None:
        depth = 0
        while not self.at("eof"):
            tok = self.peek()
            if depth == 0 and tok.kind == "newline":
                return
            if tok.kind == "punct" and tok.text in "([{":
                depth += 1
            elif tok.kind == "punct" and tok.text in ")]}":
                depth -= 1
            self.next()


def parse(src: str, path: Path | str = "<string>") -> BicepFile:
    p = Path(path)
    return _Parser(tokenize(src), str(p)).file(p)


def load(path: Path | str) -> BicepFile:
    p = Path(path)
    return parse(p.read_text(encoding="utf-8"), p)


def load_tree(root: Path | str) -> dict[Path, BicepFile]:
    """Every .bicep file under ``root``, by path."""
    return {p: load(p) for p in sorted(Path(root).rglob("*.bicep"))}


# --- checking templates against Azure's type graphs ---------------------------------------------

# Bicep keywords inside a resource body that are not properties of the resource type.
_BICEP_KEYWORDS = {"parent", "scope", "dependsOn"}
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def types_dir(start: Path) -> Path | None:
    """The shared ``azure-types`` folder beside the checkout (or beside one of its parents)."""
    for folder in [start, *start.parents]:
        candidate = folder / "shared" / "azure-types"
        if candidate.is_dir():
            return candidate
    return None


class TypeGraph:
    """One ``Type@version`` file of the Bicep type graphs (see the folder's README)."""

    def __init__(self, doc: dict):
        self.resource = doc["resource"]
        self.types = doc["types"]
        self.root = self.types[doc["root"]]

    @classmethod
    def load(cls, folder: Path, rtype: str, version: str) -> "TypeGraph | None":
        path = folder / f"{rtype.replace('/', '.')}@{version}.json"
        if not path.exists():
            return None
        import json

        return cls(json.loads(path.read_text(encoding="utf-8")))

    def at(self, ref: dict) -> dict:
        return self.types[int(ref["$ref"].split("/")[-1])]

    def check_body(self, body: dict, variables: dict[str, Any]) -> list[str]:
        problems: list[str] = []
        self._check(body, self.root["body"], "", variables, problems, skip=_BICEP_KEYWORDS)
        return problems

    def _check(self, value: Any, ref: dict, path: str, variables: dict[str, Any], problems: list[str],
               skip: set[str] = frozenset()) -> None:
        t = self.at(ref)
        kind = t["$type"]
        if isinstance(value, Expr):
            if _IDENT.match(value.text) and value.text in variables:  # a var: check what it holds
                self._check(variables[value.text], ref, path, variables, problems, skip)
            else:  # an expression: check the literals inside it (e.g. both arms of a ternary)
                for part in value.parts:
                    if isinstance(part, (dict, list)):
                        self._check(part, ref, path, variables, problems, skip)
            return
        if isinstance(value, ForLoop):
            if kind == "ArrayType":
                self._check(value.body, t["itemType"], f"{path}[]", variables, problems)
            else:
                self._check(value.body, ref, path, variables, problems, skip)
            return
        if kind == "AnyType":
            return
        if kind == "ObjectType":
            self._object(value, t.get("properties", {}), t.get("additionalProperties"), path, variables, problems, skip)
        elif kind == "DiscriminatedObjectType":
            if not isinstance(value, dict):
                problems.append(f"{path}: expected an object")
                return
            props = dict(t.get("baseProperties", {}))
            chosen = value.get(t["discriminator"])
            elements = t["elements"]
            if isinstance(chosen, str) and "${" not in chosen:
                match = next((k for k in elements if k.lower() == chosen.lower()), None)
                if match is None:
                    problems.append(f"{path}.{t['discriminator']}: {chosen!r} is not one of {sorted(elements)}")
                    return
                props.update(self.at(elements[match]).get("properties", {}))
            else:
                for ref_ in elements.values():
                    props.update(self.at(ref_).get("properties", {}))
            self._object(value, props, None, path, variables, problems, skip)
        elif kind == "StringType":
            if not isinstance(value, str):
                problems.append(f"{path}: expected a string, got {value!r}")
            elif "${" not in value:
                if "minLength" in t and len(value) < t["minLength"]:
                    problems.append(f"{path}: {value!r} is shorter than {t['minLength']}")
                if "maxLength" in t and len(value) > t["maxLength"]:
                    problems.append(f"{path}: {value!r} is longer than {t['maxLength']}")
                if "pattern" in t and not re.search(t["pattern"], value):
                    problems.append(f"{path}: {value!r} does not match {t['pattern']}")
        elif kind == "StringLiteralType":
            if not (isinstance(value, str) and ("${" in value or value.lower() == t["value"].lower())):
                problems.append(f"{path}: {value!r} is not {t['value']!r}")
        elif kind == "UnionType":
            options = [self.at(e) for e in t["elements"]]
            if all(o["$type"] == "StringLiteralType" for o in options):
                allowed = [o["value"] for o in options]
                if not (isinstance(value, str) and ("${" in value or value.lower() in {a.lower() for a in allowed})):
                    problems.append(f"{path}: {value!r} is not one of {allowed}")
                return
            for e in t["elements"]:
                trial: list[str] = []
                self._check(value, e, path, variables, trial, skip)
                if not trial:
                    return
            problems.append(f"{path}: {value!r} fits none of the allowed types")
        elif kind == "IntegerType":
            if isinstance(value, bool) or not isinstance(value, int):
                problems.append(f"{path}: expected an integer, got {value!r}")
            elif value < t.get("minValue", value) or value > t.get("maxValue", value):
                problems.append(f"{path}: {value} is outside {t.get('minValue')}..{t.get('maxValue')}")
        elif kind == "BooleanType":
            if not isinstance(value, bool):
                problems.append(f"{path}: expected true or false, got {value!r}")
        elif kind == "ArrayType":
            if not isinstance(value, list):
                problems.append(f"{path}: expected an array, got {value!r}")
                return
            if len(value) < t.get("minLength", 0) or len(value) > t.get("maxLength", len(value)):
                problems.append(f"{path}: {len(value)} items, outside the allowed length")
            for i, item in enumerate(value):
                self._check(item, t["itemType"], f"{path}[{i}]", variables, problems)
        elif kind == "NullType":
            if value is not None:
                problems.append(f"{path}: expected null")

    def _object(self, value: Any, props: dict, additional: dict | None, path: str, variables: dict[str, Any],
                problems: list[str], skip: set[str]) -> None:
        if not isinstance(value, dict):
            problems.append(f"{path}: expected an object, got {value!r}")
            return
        by_lower = {k.lower(): k for k in props}
        for key, item in value.items():
            if key in skip:
                continue
            where = f"{path}.{key}" if path else key
            name = by_lower.get(key.lower())
            if name is None:
                if additional is not None:
                    self._check(item, additional, where, variables, problems)
                else:
                    problems.append(f"{where}: unknown property (known: {sorted(props)})")
                continue
            if name != key:
                problems.append(f"{where}: spelt {key!r}, the type says {name!r}")
            flags = props[name].get("flags", 0)
            if flags & 2 and not flags & 1:
                problems.append(f"{where}: read-only, a template must not set it")
            self._check(item, props[name]["type"], where, variables, problems)
        for name, prop in props.items():
            if prop.get("flags", 0) & 1 and not prop.get("flags", 0) & 2 and name.lower() not in {k.lower() for k in value}:
                problems.append(f"{path}.{name}: required, missing" if path else f"{name}: required, missing")
