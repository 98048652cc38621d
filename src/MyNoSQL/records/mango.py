"""CouchDB's Mango selector language, compiled to a predicate over a document's stored JSON form.

A selector is normalised the way CouchDB's ``mango_selector`` normalises it: ``{"a": 1}`` is ``{"a": {"$eq": 1}}``,
several keys are an implicit ``$and``, a nested object without operators is a path (``{"a": {"b": 1}}`` is
``{"a.b": {"$eq": 1}}``), a ``$not`` (or ``$and``/``$or``/``$nor``) inside a field condition keeps the field's path.
Dotted paths reach into nested objects (``\\.`` is a literal dot) and into arrays by position (``"tags.0"``).

Semantics are CouchDB's: a condition on a field that the document does not have is false, whatever its operator,
except ``{"$exists": false}`` (so ``$ne`` and ``$nin`` do not match a missing field, and ``$not`` of a condition
does); ``$in``, ``$nin`` and ``$all`` compare an array field's elements; ``$or: []`` and ``$and: []`` match every
document. Comparisons use the collation of :mod:`MyNoSQL.records.collate` (pouchdb-collate's), across types too:
``{"$gt": 5}`` also matches strings, arrays and objects, as in CouchDB.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import orjson

from ..errors import InvalidQuery
from .codec import encode_value
from .collate import encode_key, encode_string
from .revtree import DocState

Doc = dict[str, Any]
Path = tuple[str, ...]
Test = Callable[[Any], bool]


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()
TYPES = ("null", "boolean", "number", "string", "array", "object")
RANGE_OPS = ("$gt", "$gte", "$lt", "$lte")
VALUE_OPS = ("$eq", "$ne", *RANGE_OPS)
_NUM = (int, float)


def parse_field(name: str) -> Path:
    """``"a.b\\.c"`` -> ``("a", "b.c")`` (CouchDB's and pouchdb-find's dotted paths)."""
    if "\\" not in name:
        return tuple(name.split("."))
    parts: list[str] = []
    cur = ""
    i = 0
    while i < len(name):
        ch = name[i]
        if ch == "\\" and i + 1 < len(name) and name[i + 1] in ".$":
            cur += name[i + 1]
            i += 2
            continue
        if ch == ".":
            parts.append(cur)
            cur = ""
        else:
            cur += ch
        i += 1
    parts.append(cur)
    return tuple(parts)


def field_name(path: Path) -> str:
    return ".".join(p.replace(".", "\\.") for p in path)


def get_field(doc: Any, path: Path) -> Any:
    """The value at ``path``, or :data:`MISSING`."""
    v = doc
    for k in path:
        t = type(v)
        if t is dict:
            v = v.get(k, MISSING)
            if v is MISSING:
                return v
        elif t is list and k.isdigit():
            i = int(k)
            if i >= len(v):
                return MISSING
            v = v[i]
        else:
            return MISSING
    return v


def match_doc(state: DocState) -> dict[str, Any] | None:
    """The CouchDB form of a state's winning revision in stored JSON (``_id``, ``_rev``, the body), or None if
    it is deleted: what selectors are matched against."""
    win = state.winner
    if state.tree[win][1]:
        return None
    doc: dict[str, Any] = orjson.loads(state.bodies[win])
    doc["_id"] = state.id
    doc["_rev"] = win
    return doc


# -- the normalised selector ----------------------------------------------------------------------------------


class Node:
    """A node of a normalised selector; ``test(doc)`` is its compiled predicate."""

    test: Test

    def json(self) -> Any:  # pragma: no cover - every node type defines it
        raise NotImplementedError


class And(Node):
    def __init__(self, children: list[Node]) -> None:
        self.children = children
        tests = [c.test for c in children]
        if not tests:
            self.test = lambda doc: True
        elif len(tests) == 1:
            self.test = tests[0]
        elif len(tests) == 2:
            t1, t2 = tests
            self.test = lambda doc: t1(doc) and t2(doc)
        else:
            self.test = lambda doc: all(t(doc) for t in tests)

    def json(self) -> Any:
        return {"$and": [c.json() for c in self.children]}


class Or(Node):
    def __init__(self, children: list[Node]) -> None:
        self.children = children
        tests = [c.test for c in children]
        self.test = (lambda doc: any(t(doc) for t in tests)) if tests else (lambda doc: True)

    def json(self) -> Any:
        return {"$or": [c.json() for c in self.children]}


class Nor(Node):
    def __init__(self, children: list[Node]) -> None:
        self.children = children
        tests = [c.test for c in children]
        self.test = lambda doc: not any(t(doc) for t in tests)

    def json(self) -> Any:
        return {"$nor": [c.json() for c in self.children]}


class Not(Node):
    def __init__(self, child: Node) -> None:
        self.child = child
        t = child.test
        self.test = lambda doc: not t(doc)

    def json(self) -> Any:
        return {"$not": self.child.json()}


class Field(Node):
    """``op`` applied to the value at ``path`` (false when the document has no such field, but for
    ``$exists: false``)."""

    def __init__(self, path: Path, op: str, arg: Any, raw: Any, pred: Test) -> None:
        self.path, self.op, self.arg, self.raw = path, op, arg, raw
        if op == "$exists":
            want = bool(arg)
            if len(path) == 1:
                k = path[0]
                self.test = (lambda doc: type(doc) is dict and k in doc) if want else \
                    (lambda doc: type(doc) is not dict or k not in doc)
            else:
                self.test = (lambda doc: get_field(doc, path) is not MISSING) if want else \
                    (lambda doc: get_field(doc, path) is MISSING)
        elif len(path) == 1:
            k = path[0]

            def test1(doc: Any) -> bool:
                if type(doc) is not dict:
                    return False
                v = doc.get(k, MISSING)
                return v is not MISSING and pred(v)

            self.test = test1
        elif not path:
            self.test = pred
        else:
            def test(doc: Any) -> bool:
                v = get_field(doc, path)
                return v is not MISSING and pred(v)

            self.test = test

    def json(self) -> Any:
        arg = self.raw.json() if isinstance(self.raw, Node) else self.raw
        return {field_name(self.path): {self.op: arg}} if self.path else {self.op: arg}


# -- predicates ---------------------------------------------------------------------------------------------


def _eq_pred(arg: Any) -> Test:
    t = type(arg)
    if t is str:
        return lambda v: type(v) is str and v == arg
    if t is int or t is float:
        return lambda v: (type(v) is int or type(v) is float) and v == arg
    if arg is None:
        return lambda v: v is None
    if t is bool:
        return lambda v: v is arg
    key = encode_key(arg)
    return lambda v: (type(v) is list or type(v) is dict) and encode_key(v) == key


def _cmp_pred(op: str, arg: Any) -> Test:
    key = encode_key(arg)
    cmp = _CMP[op]

    def slow(v: Any) -> bool:
        return cmp(encode_key(v), key)

    t = type(arg)
    if t is int or t is float:
        return lambda v: cmp(v, arg) if type(v) is int or type(v) is float else slow(v)
    if t is str and arg.isascii():
        return lambda v: cmp(v, arg) if type(v) is str and v.isascii() else slow(v)
    return slow


_CMP: dict[str, Callable[[Any, Any], bool]] = {"$gt": operator.gt, "$gte": operator.ge, "$lt": operator.lt,
                                               "$lte": operator.le}


def _in_pred(args: list[Any]) -> Test:
    keys = frozenset(encode_key(a) for a in args)
    strs = frozenset(a for a in args if type(a) is str)  # a string equals only a string: no key needed
    nums = frozenset(a for a in args if type(a) is int or type(a) is float)

    def one(v: Any) -> bool:
        t = type(v)
        if t is str:
            return v in strs
        if t is int or t is float:
            return v in nums
        return encode_key(v) in keys

    def test(v: Any) -> bool:
        if type(v) is list:
            return any(one(x) for x in v)
        return one(v)

    return test


def _all_pred(args: list[Any]) -> Test:
    keys = [encode_key(a) for a in args]
    whole = encode_key(args[0]) if len(args) == 1 and type(args[0]) is list else None

    def test(v: Any) -> bool:
        if type(v) is not list:
            return False
        have = {encode_key(x) for x in v}
        return all(k in have for k in keys) or (whole is not None and encode_key(v) == whole)

    return test


def _type_pred(name: str) -> Test:
    if name == "null":
        return lambda v: v is None
    if name == "boolean":
        return lambda v: type(v) is bool
    if name == "number":
        return lambda v: type(v) is int or type(v) is float
    if name == "string":
        return lambda v: type(v) is str
    if name == "array":
        return lambda v: type(v) is list
    return lambda v: type(v) is dict


def _mod_pred(d: int, r: int) -> Test:
    def test(v: Any) -> bool:
        if type(v) is not int:
            return False
        m = abs(v) % abs(d)  # Erlang's rem (and JavaScript's %): the sign of the dividend
        return (-m if v < 0 else m) == r

    return test


# -- normalisation --------------------------------------------------------------------------------------------


class Compiler:
    """Normalises and checks a selector. ``python``: operator arguments are Python values (a ``datetime``...)
    encoded as stored (see :mod:`MyNoSQL.records.codec`); otherwise they are stored JSON already (HTTP)."""

    def __init__(self, *, python: bool) -> None:
        self.python = python

    def value(self, v: Any) -> Any:
        if not self.python:
            return v
        try:
            return encode_value(v)
        except Exception as exc:
            raise InvalidQuery(f"a selector value cannot be compared: {exc}") from exc

    def selector(self, sel: Any, path: Path = ()) -> Node:
        if not isinstance(sel, dict):
            raise InvalidQuery(f"a selector must be an object, not {type(sel).__name__}")
        parts: list[Node] = []
        for k, v in sel.items():
            if not isinstance(k, str):
                raise InvalidQuery("selector keys must be strings")
            if k in ("$and", "$or", "$nor"):
                if not isinstance(v, list) or not all(isinstance(x, dict) for x in v):
                    raise InvalidQuery(f"{k} takes a list of selectors")
                kids = [self.selector(x, path) for x in v]
                parts.append(And(kids) if k == "$and" else Or(kids) if k == "$or" else Nor(kids))
            elif k == "$not":
                if not isinstance(v, dict):
                    raise InvalidQuery("$not takes a selector")
                parts.append(Not(self.selector(v, path)))
            elif k[:1] == "$":
                parts.append(self.operator(path, k, v))
            else:
                sub = path + parse_field(k)
                if isinstance(v, dict) and v:
                    parts.append(self.selector(v, sub))
                else:
                    parts.append(self.operator(sub, "$eq", v))
        return parts[0] if len(parts) == 1 else And(parts)

    def operator(self, path: Path, op: str, arg: Any) -> Field:
        if op in VALUE_OPS:
            value = self.value(arg)
            if op == "$eq":
                return Field(path, op, value, value, _eq_pred(value))
            if op == "$ne":
                eq = _eq_pred(value)
                return Field(path, op, value, value, lambda v: not eq(v))
            return Field(path, op, value, value, _cmp_pred(op, value))
        if op in ("$in", "$nin", "$all"):
            if not isinstance(arg, list):
                raise InvalidQuery(f"{op} takes a list")
            values = [self.value(a) for a in arg]
            if op == "$all":
                return Field(path, op, values, values, _all_pred(values))
            p = _in_pred(values)
            return Field(path, op, values, values, p if op == "$in" else (lambda v: not p(v)))
        if op == "$exists":
            if not isinstance(arg, bool):
                raise InvalidQuery("$exists takes true or false")
            return Field(path, op, arg, arg, lambda v: True)
        if op == "$type":
            if arg not in TYPES:
                raise InvalidQuery(f"$type takes one of {', '.join(TYPES)}")
            return Field(path, op, arg, arg, _type_pred(arg))
        if op == "$size":
            if type(arg) is not int or arg < 0:
                raise InvalidQuery("$size takes a non-negative integer")
            return Field(path, op, arg, arg, lambda v: type(v) is list and len(v) == arg)
        if op == "$mod":
            if not (isinstance(arg, list) and len(arg) == 2 and all(type(x) is int for x in arg)) or arg[0] == 0:
                raise InvalidQuery("$mod takes [divisor, remainder], integers, the divisor not 0")
            return Field(path, op, arg, arg, _mod_pred(arg[0], arg[1]))
        if op == "$regex":
            if not isinstance(arg, str):
                raise InvalidQuery("$regex takes a string")
            try:
                rx = re.compile(arg)
            except re.error as exc:
                raise InvalidQuery(f"$regex {arg[:80]!r} is not a valid regular expression: {exc}") from exc
            return Field(path, op, rx, arg, lambda v: type(v) is str and rx.search(v) is not None)
        if op in ("$elemMatch", "$allMatch", "$keyMapMatch"):
            if not isinstance(arg, dict):
                raise InvalidQuery(f"{op} takes a selector")
            node = self.selector(arg)
            t = node.test
            pred: Test
            if op == "$elemMatch":
                pred = lambda v: type(v) is list and any(t(x) for x in v)  # noqa: E731
            elif op == "$allMatch":
                pred = lambda v: type(v) is list and len(v) > 0 and all(t(x) for x in v)  # noqa: E731
            else:
                pred = lambda v: type(v) is dict and any(t(k) for k in v)  # noqa: E731
            return Field(path, op, node, node, pred)
        raise InvalidQuery(f"unknown operator {op[:40]!r}")


def compile_selector(selector: Any, *, python: bool = False) -> Node:
    """The normalised, checked form of ``selector`` (:class:`InvalidQuery` if it is not valid)."""
    try:
        return Compiler(python=python).selector(selector)
    except RecursionError as exc:
        raise InvalidQuery("the selector nests too deep") from exc


def conjuncts(node: Node) -> list[Node]:
    """The top-level conditions that must all hold (an ``$and`` flattened)."""
    if isinstance(node, And):
        out: list[Node] = []
        for c in node.children:
            out.extend(conjuncts(c))
        return out
    return [node]


# -- sort and projection --------------------------------------------------------------------------------------


def parse_sort(sort: Any) -> tuple[list[Path], bool]:
    """``[field | {field: "asc"|"desc"}, ...]`` -> (paths, descending). Every field must sort the same way (as
    CouchDB requires)."""
    if sort is None:
        return [], False
    if not isinstance(sort, list):
        raise InvalidQuery("sort takes a list of field names or {field: 'asc'|'desc'} objects")
    paths: list[Path] = []
    dirs: set[str] = set()
    for item in sort:
        if isinstance(item, str):
            paths.append(parse_field(item))
            dirs.add("asc")
        elif isinstance(item, dict) and len(item) == 1:
            (name, d), = item.items()
            if d not in ("asc", "desc") or not isinstance(name, str):
                raise InvalidQuery("a sort direction is 'asc' or 'desc'")
            paths.append(parse_field(name))
            dirs.add(d)
        else:
            raise InvalidQuery("sort takes a list of field names or {field: 'asc'|'desc'} objects")
    if len(dirs) > 1:
        raise InvalidQuery("sorts support a single direction for all their fields (as CouchDB's)")
    return paths, dirs == {"desc"}


def sort_key(doc: Doc, paths: Sequence[Path], id: str) -> bytes:
    """The order of ``doc`` under a sort on ``paths``: the collation of the fields' values (a missing one as
    null), then the id (as CouchDB's and pouchdb-find's ties)."""
    parts = []
    for p in paths:
        v = get_field(doc, p)
        parts.append(encode_key(None if v is MISSING else v))
    parts.append(encode_string(id))
    return b"".join(parts)


def parse_fields(fields: Any) -> list[Path] | None:
    if fields is None:
        return None
    if not isinstance(fields, list) or not all(isinstance(f, str) for f in fields):
        raise InvalidQuery("fields takes a list of field names")
    return [parse_field(f) for f in fields]


def project(doc: Doc, paths: Iterable[Path]) -> Doc:
    """Only the fields at ``paths`` of ``doc`` (nested paths make nested objects), as CouchDB's ``fields``."""
    out: Doc = {}
    for p in paths:
        v = get_field(doc, p)
        if v is MISSING:
            continue
        d = out
        for k in p[:-1]:
            nxt = d.get(k)
            if type(nxt) is not dict:
                nxt = d[k] = {}
            d = nxt
        d[p[-1]] = v
    return out
