"""Mango queries over one database: query indexes (definitions, background builds), the planner, ``find`` and
``explain``. :class:`~MyNoSQL.database.Database` owns a :class:`QueryEngine` and persists the definitions.

Records are matched in their CouchDB form in stored JSON: ``{"_id": id, "_rev": rev, **body}`` (see
:mod:`MyNoSQL.records.mango`); the Python API names the id and revision ``id`` and ``rev`` and maps them.

The planner, for the top-level conditions of a selector (an implicit or explicit ``$and``):

* ``_id`` with ``$eq`` or ``$in``: the records are read by id;
* a ready, non-partial index (or the one ``use_index`` names) whose every field the selector requires: equality
  on a prefix of its fields, then ``$eq``/``$in``/a range on the next one, becomes key ranges (``$in`` one point
  per value, plus the range of array values, which ``$in`` looks into); the most selective index wins (more
  equality fields, then a range, then one that yields the sort order, then fewer fields);
* a top-level ``$or`` whose every branch has such a plan: the union of the branches' plans;
* otherwise every record is read (``Options(strict_queries=True)``: :class:`NoUsableIndex` instead).

Every record an index yields is tested against the whole selector, so a plan only ever narrows what is read;
but when its key ranges say all the selector says (``Plan.exact``: equality on the fixed fields, one range or one
``$in`` on the next; for a union, each branch with the rest of the selector), the test is skipped, and a record
returned before is copied from the record memo (by its place on disk) rather than read and parsed again.
Records not packed yet (in the memtables) are not in the indexes: they are read from memory and merged in.
"""

from __future__ import annotations

import contextlib
import hashlib
import heapq
import itertools
import logging
import struct
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from .errors import IndexNotFound, InvalidQuery, NoUsableIndex
from .records.codec import copy_plan, decode_value, loads_body
from .records.collate import ARRAY, HIGH, OBJECT, encode_key
from .records.mango import (
    MISSING,
    Field,
    Node,
    Or,
    Path,
    compile_selector,
    conjuncts,
    field_name,
    match_doc,
    parse_field,
    parse_fields,
    parse_sort,
    project,
    sort_key,
)
from .records.revtree import DocState
from .storage.qindex import IndexDef
from .storage.store import Store

log = logging.getLogger("MyNoSQL")
_U32 = struct.Struct("<I")
_NOT_READ: Any = object()

Progress = Callable[[int, int | None], None]
_ID: Path = ("_id",)
ALL_DOCS = {"ddoc": None, "name": "_all_docs", "type": "special", "def": {"fields": [{"_id": "asc"}]}}


def python_names(sel: Any) -> Any:
    """A selector of the Python API with its top-level ``id``/``rev`` named as CouchDB names them."""
    if not isinstance(sel, dict):
        return sel
    out = {}
    for k, v in sel.items():
        if k in ("$and", "$or", "$nor") and isinstance(v, list):
            v = [python_names(x) for x in v]
        elif k == "$not":
            v = python_names(v)
        out[_py_field(k) if isinstance(k, str) else k] = v
    return out


def _py_field(name: str) -> str:
    return "_id" if name == "id" else "_rev" if name == "rev" else name


def py_spec(items: Any) -> Any:
    """Sort or field lists of the Python API: ``id``/``rev`` as ``_id``/``_rev``."""
    if not isinstance(items, list):
        return items
    return [_py_field(x) if isinstance(x, str) else
            {_py_field(k): v for k, v in x.items()} if isinstance(x, dict) else x for x in items]


# -- index definitions ----------------------------------------------------------------------------------------


def parse_index_fields(fields: Any, *, python: bool) -> tuple[tuple[str, ...], tuple[bool, ...]]:
    if not isinstance(fields, list) or not fields:
        raise InvalidQuery("an index needs a non-empty list of fields (names or {name: 'asc'|'desc'})")
    names: list[str] = []
    desc: list[bool] = []
    for f in fields:
        if isinstance(f, str):
            name, d = f, "asc"
        elif isinstance(f, dict) and len(f) == 1:
            (name, d), = f.items()
        else:
            raise InvalidQuery("index fields are names or {name: 'asc'|'desc'}")
        if not isinstance(name, str) or not name or d not in ("asc", "desc"):
            raise InvalidQuery(f"bad index field {str(f)[:80]!r}")
        names.append(_py_field(name) if python else name)
        desc.append(d == "desc")
    if len(set(desc)) > 1:
        raise InvalidQuery("an index's fields all sort the same way (as CouchDB's)")
    if len(set(names)) != len(names):
        raise InvalidQuery("an index names each field once")
    return tuple(names), tuple(desc)


def make_def(spec: Mapping[str, Any]) -> IndexDef:
    """An :class:`IndexDef` from its persisted form."""
    names = tuple(str(f) for f, _d in spec["fields"])
    partial = spec.get("partial_filter_selector")
    return IndexDef(ino=int(spec["ino"]), name=str(spec["name"]), ddoc=str(spec["ddoc"]),
                    paths=tuple(parse_field(n) for n in names), desc=tuple(d == "desc" for _f, d in spec["fields"]),
                    fields=names, partial=None if partial is None else compile_selector(partial),
                    partial_json=partial)


def def_json(d: IndexDef) -> dict[str, Any]:
    """CouchDB's description of an index (``GET /{db}/_index``)."""
    out: dict[str, Any] = {"ddoc": d.ddoc, "name": d.name, "type": "json",
                           "def": {"fields": [{f: "desc" if ds else "asc"} for f, ds in zip(d.fields, d.desc,
                                                                                           strict=True)]}}
    if d.partial_json is not None:
        out["def"]["partial_filter_selector"] = d.partial_json
    return out


def index_spec(fields: tuple[str, ...], desc: tuple[bool, ...], name: str | None, ddoc: str | None,
               partial: Any, ino: int) -> dict[str, Any]:
    definition = [[f, "desc" if d else "asc"] for f, d in zip(fields, desc, strict=True)]
    if name is None:
        digest = hashlib.sha1(orjson.dumps([definition, partial]), usedforsecurity=False).hexdigest()[:16]
        name = f"idx-{digest}"
    if not isinstance(name, str) or not name or len(name) > 200:
        raise InvalidQuery("an index name is a non-empty string of at most 200 characters")
    if ddoc is None:
        ddoc = f"_design/{name}"
    elif not ddoc.startswith("_design/"):
        ddoc = f"_design/{ddoc}"
    return {"ino": ino, "name": name, "ddoc": ddoc, "fields": definition, "partial_filter_selector": partial}


# -- plans ----------------------------------------------------------------------------------------------------


@dataclass
class _FieldInfo:
    required: bool = False
    eq: list[Any] = field(default_factory=list)
    ins: list[list[Any]] = field(default_factory=list)
    lo: tuple[bytes, bool] | None = None  # key, inclusive
    hi: tuple[bytes, bool] | None = None


def _constraints(conj: Iterable[Node]) -> dict[Path, _FieldInfo]:
    out: dict[Path, _FieldInfo] = {}
    for c in conj:
        if not isinstance(c, Field) or not c.path:
            continue
        info = out.setdefault(c.path, _FieldInfo())
        if c.op == "$exists" and c.arg is False:
            continue
        info.required = True  # a condition on a missing field is false (but $exists: false)
        if c.op == "$eq":
            info.eq.append(c.arg)
        elif c.op == "$in":
            info.ins.append(c.arg)
        elif c.op in ("$gt", "$gte"):
            k = (encode_key(c.arg), c.op == "$gte")
            if info.lo is None or k[0] > info.lo[0] or (k[0] == info.lo[0] and not k[1]):
                info.lo = k
        elif c.op in ("$lt", "$lte"):
            k = (encode_key(c.arg), c.op == "$lte")
            if info.hi is None or k[0] < info.hi[0] or (k[0] == info.hi[0] and not k[1]):
                info.hi = k
    return out


@dataclass
class Plan:
    kind: str  # "id", "index", "union", "scan"
    index: IndexDef | None = None
    ranges: list[tuple[bytes, bytes]] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    ordered: bool = False  # yields in the order of the sort (or of the index when there is none)
    parts: list[Plan] = field(default_factory=list)
    score: tuple[int, ...] = ()
    warning: str | None = None
    n_eq: int = 0  # index fields fixed by equality
    range_op: str | None = None  # "range" or "in": how the next field is narrowed
    exact: bool = False  # the index rows are exactly the matches: no record needs testing
    loose: int = -1  # the range (the array values of an $in) whose records are tested even when exact

    def describe(self) -> Any:
        if self.kind == "index":
            assert self.index is not None
            return def_json(self.index)
        if self.kind == "union":
            return [p.describe() for p in self.parts]
        return dict(ALL_DOCS)


def _index_plan(d: IndexDef, cons: dict[Path, _FieldInfo], sort: list[Path]) -> Plan | None:
    for p in d.paths:
        info = cons.get(p)
        if info is None or not info.required:
            return None
    prefix = b""
    n_eq = 0
    ranges: list[tuple[bytes, bytes]] = []
    ranged = 0
    range_op = None
    loose = -1
    for p in d.paths:
        info = cons[p]
        if info.eq:
            prefix += encode_key(info.eq[0])
            n_eq += 1
            continue
        if info.ins:
            values = min(info.ins, key=len)  # several $in on one field: the shortest narrows enough
            points = sorted({k for k in map(encode_key, values) if k[:1] != ARRAY})  # arrays: in the range below
            ranges = [(prefix + k, prefix + k + HIGH) for k in points]
            arrays = (prefix + ARRAY, prefix + OBJECT)
            ranges.append(arrays)  # $in looks into array values
            ranges.sort()
            loose = ranges.index(arrays)
            ranged = 1
            range_op = "in"
        elif info.lo is not None or info.hi is not None:
            lo = prefix if info.lo is None else prefix + info.lo[0] + (b"" if info.lo[1] else HIGH)
            hi = prefix + HIGH if info.hi is None else prefix + info.hi[0] + (HIGH if info.hi[1] else b"")
            ranges = [(lo, hi)] if lo < hi else []
            ranged = 1
            range_op = "range"
        break
    else:
        ranges = [(prefix, prefix + HIGH)]
    if not ranges and not ranged:
        ranges = [(prefix, prefix + HIGH)]
    # The index yields the sort order when the sort's fields, past those fixed by equality, are the rest of the
    # index's fields (the ties then fall to the id, as in the sort). Several ranges are in key order.
    fixed = set(d.paths[:n_eq])
    rest = [p for p in sort if p not in fixed]
    ordered = not sort or rest == list(d.paths[n_eq:])
    score = (n_eq, ranged, 1 if (sort and ordered) else 0, -len(d.paths))
    return Plan("index", index=d, ranges=ranges, ordered=ordered, score=score, n_eq=n_eq, range_op=range_op,
                loose=loose)


def _exact(plan: Plan, conj: list[Node], cons: dict[Path, _FieldInfo]) -> bool:
    """Whether an index plan's key ranges say all the selector says (equality on the fixed fields, one range on
    the next): then the records it reads need no test (keys compare exactly as the values collate)."""
    d = plan.index
    if d is None or d.partial is not None:
        return False
    fixed = d.paths[: plan.n_eq]
    ranged = d.paths[plan.n_eq] if plan.range_op is not None else None
    for c in conj:
        if not isinstance(c, Field):
            return False
        if c.op == "$eq" and c.path in fixed:
            if encode_key(c.arg) != encode_key(cons[c.path].eq[0]):
                return False
        elif plan.range_op == "range" and c.op in ("$gt", "$gte", "$lt", "$lte") and c.path == ranged:
            continue
        elif not (plan.range_op == "in" and c.op == "$in" and c.path == ranged and len(cons[c.path].ins) == 1):
            return False
    return True


def _id_plan(cons: dict[Path, _FieldInfo]) -> Plan | None:
    info = cons.get(_ID)
    if info is None:
        return None
    if info.eq:
        ids = [info.eq[0]]
    elif info.ins:
        ids = min(info.ins, key=len)
    else:
        return None
    return Plan("id", ids=list(dict.fromkeys(i for i in ids if isinstance(i, str))), score=(99,))


class Hit:
    """A matching record: its id, winning revision and body (``body[start:]``: the body is read in place from
    its block); ``owned``: the matched form was parsed for this query alone (a result may take it over)."""

    __slots__ = ("body", "id", "owned", "start", "winner")

    def __init__(self, id: str, winner: str, body: bytes, owned: bool, start: int = 0) -> None:
        self.id, self.winner, self.body, self.owned, self.start = id, winner, body, owned, start

    @property
    def tagged(self) -> bool:
        return self.body.find(b'"$', self.start) >= 0

    def json(self) -> bytes:
        return self.body[self.start :] if self.start else self.body

    @classmethod
    def of(cls, s: DocState, owned: bool) -> Hit:
        win = s.winner
        return cls(s.id, win, s.bodies[win], owned)


# A match already in its final form (a Python record of the caller's own): :meth:`QueryEngine.output` returns it.
_FINAL = Hit("", "", b"", True)
_DOC_MAX = 1024  # records of at most this many bytes of JSON keep their dict form in the query's record memo


class QueryEngine:
    """Query indexes and queries of one store (the database persists the definitions)."""

    def __init__(self, store: Store, options: Any, dbname: str) -> None:
        self.store = store
        self.options = options
        self.dbname = dbname
        self.defs: dict[str, IndexDef] = {}
        self.ready: set[int] = set()
        self.progress: dict[int, tuple[int, int | None]] = {}
        self._builders: dict[int, tuple[threading.Thread, threading.Event]] = {}
        self._lock = threading.Lock()
        # The parsed form of records not packed yet: every query reads them all (they are in no index), so they
        # are parsed once, not once per query (a live query with a limit re-runs its query on each write).
        self._parsed: weakref.WeakKeyDictionary[DocState, dict[str, Any] | None] = weakref.WeakKeyDictionary()
        self._compiled: dict[str, tuple[Node, list[Path], bool, list[Path] | None, Plan]] = {}
        self._version = 0  # changes when an index is added, built or dropped: plans made before are not reused
        # The records index plans return, as Python records, by where they are on disk (``loc``: a block is never
        # rewritten and its number never reused, so an entry never goes stale): a record a query returns again is
        # copied from here rather than read from its block and parsed. (record, copy plan), or None once seen
        # (a record is kept only from its second time, as readdoc does); at most ``cache_docs`` entries.
        self._docs: OrderedDict[int, tuple[dict[str, Any], tuple[str, ...]] | None] = OrderedDict()
        self._docs_max = max(0, int(getattr(options, "cache_docs", 10_000)))

    # -- definitions --------------------------------------------------------------------------------------

    def load(self, specs: Iterable[Mapping[str, Any]]) -> None:
        """The definitions of the configuration: maintained from now on; those not built yet are built."""
        defs = [make_def(s) for s in specs]
        self.defs = {d.name: d for d in defs}
        self.store.maintain_query_indexes(tuple(defs))
        for d in defs:
            if self.store.index.meta(f"qready:{d.ino}"):
                self.ready.add(d.ino)
                self._version += 1
            else:
                self._build(d)

    def add(self, d: IndexDef, *, wait: bool, progress: Progress | None = None) -> None:
        with self._lock:
            self.defs[d.name] = d
            self.store.maintain_query_indexes(tuple(self.defs.values()))
            self._version += 1
        self._build(d, progress)
        if wait:
            self.wait(d.name)

    def _build(self, d: IndexDef, progress: Progress | None = None) -> None:
        stop = threading.Event()

        def step(done: int, total: int | None) -> None:
            self.progress[d.ino] = (done, total)
            if progress is not None:
                progress(done, total)

        def run() -> None:
            try:
                if self.store.build_query_index(d, step, stop.is_set):
                    self.ready.add(d.ino)
                    self._version += 1
                    log.info("%s: query index %r is built", self.dbname, d.name)
            except Exception:
                log.exception("%s: building query index %r failed (queries do without it)", self.dbname, d.name)

        t = threading.Thread(target=run, name=f"MyNoSQL-index-{self.dbname}-{d.ino}", daemon=True)
        self._builders[d.ino] = (t, stop)
        t.start()

    def wait(self, name: str, timeout: float | None = None) -> bool:
        """Wait until the index ``name`` is built; False if ``timeout`` passed first."""
        d = self.defs.get(name)
        if d is None:
            raise IndexNotFound(f"no query index named {name!r}")
        entry = self._builders.get(d.ino)
        if entry is not None:
            entry[0].join(timeout)
        return d.ino in self.ready

    def remove(self, name: str) -> IndexDef:
        with self._lock:
            d = self.defs.pop(name)
            self.store.maintain_query_indexes(tuple(self.defs.values()))
        entry = self._builders.pop(d.ino, None)
        if entry is not None:
            entry[1].set()
            entry[0].join()
        self.ready.discard(d.ino)
        self._version += 1
        self.store.index.drop_qkeys(d.ino)
        return d

    def close(self) -> None:
        for _t, stop in self._builders.values():
            stop.set()
        for t, _stop in self._builders.values():
            t.join()
        self._builders.clear()

    def describe(self) -> list[dict[str, Any]]:
        """CouchDB's ``_index`` list: ``_all_docs`` first, then each index (with ``"building"`` progress while
        it is built)."""
        out: list[dict[str, Any]] = [dict(ALL_DOCS)]
        for d in self.defs.values():
            item = def_json(d)
            if d.ino not in self.ready:
                done, total = self.progress.get(d.ino, (0, None))
                item["building"] = {"done": done, "total": total}
            out.append(item)
        return out

    # -- planning -----------------------------------------------------------------------------------------

    def plan(self, node: Node, sort: list[Path], use_index: Any = None) -> Plan:
        conj = conjuncts(node)
        cons = _constraints(conj)
        named = self._named(use_index)
        pid = _id_plan(cons)
        if pid is not None and named is None:
            return pid
        candidates = [d for d in self.defs.values() if d.ino in self.ready
                      and ((d.partial is None and named is None) or d is named)]
        best: Plan | None = None
        for d in candidates:
            p = _index_plan(d, cons, sort)
            if p is not None and (best is None or p.score > best.score):
                best = p
        warning = None
        if named is not None and best is None:
            warning = f"the index {named.name!r} (use_index) cannot answer this query" if named.ino in self.ready \
                else f"the index {named.name!r} (use_index) is still being built"
        if best is not None and (best.score[0] > 0 or best.score[1] > 0):
            best.exact = _exact(best, conj, cons)
            return best
        others = [c for c in conj if not isinstance(c, Or)]
        for c in conj:
            if isinstance(c, Or) and c.children:
                parts = []
                for branch in c.children:
                    bcons = _constraints(others + conjuncts(branch))
                    bp = _id_plan(bcons)
                    if bp is None:
                        bps = [p for d in candidates if (p := _index_plan(d, bcons, [])) is not None
                               and (p.score[0] > 0 or p.score[1] > 0)]
                        bp = max(bps, key=lambda p: p.score) if bps else None
                    if bp is None:
                        break
                    if bp.kind == "index":  # a branch's rows that need no test match the whole selector too
                        bp.exact = _exact(bp, [x for x in conj if x is not c] + conjuncts(branch), bcons)
                    parts.append(bp)
                else:
                    return Plan("union", parts=parts, warning=warning)
        if best is not None and (best.score[2] or named is not None):
            return best  # the whole index, for its order (or as use_index asks)
        return Plan("scan", warning=warning)

    def plan_held(self, node: Node, sort: list[Path], held: tuple[int, Plan] | None) -> tuple[int, Plan]:
        """``(version, plan)`` of a query run again and again (a live query's): ``held`` itself while no index was
        added, built or dropped since it was made, else a new plan."""
        version = self._version
        if held is not None and held[0] == version:
            return held
        return version, self.plan(node, sort)

    def _named(self, use_index: Any) -> IndexDef | None:
        if use_index is None:
            return None
        if isinstance(use_index, list) and len(use_index) in (1, 2) and all(isinstance(x, str) for x in use_index):
            ddoc = use_index[0] if use_index[0].startswith("_design/") else f"_design/{use_index[0]}"
            name = use_index[1] if len(use_index) == 2 else None
        elif isinstance(use_index, str):
            if use_index in self.defs:
                return self.defs[use_index]
            ddoc, name = (use_index if use_index.startswith("_design/") else f"_design/{use_index}"), None
        else:
            raise InvalidQuery("use_index is an index name, a design document id, or [ddoc, name]")
        for d in self.defs.values():
            if d.ddoc == ddoc and (name is None or d.name == name):
                return d
        raise IndexNotFound(f"no query index {use_index!r}")

    # -- running ------------------------------------------------------------------------------------------

    def _disk_pages(self, d: IndexDef, lo: bytes, hi: bytes, desc: bool,
                    page: int | None) -> Iterator[list[tuple[str, int, Any]]]:
        """(id, loc, key) of the index rows in ``[lo, hi)``, in lists: all at once (without their keys), or (a
        query that may stop early) a page at a time, ``page`` rows first (what the query needs when every row is
        a match: a limit reads little)."""
        index = self.store.index
        if page is None:
            yield index.qkeys_range(d.ino, lo, hi, desc=desc)
            return
        after: tuple[bytes, str] | None = None
        while True:
            rows = index.qkeys_range(d.ino, lo, hi, desc=desc, after=after, limit=page)
            yield rows
            if len(rows) < page:
                return
            after = (rows[-1][2], rows[-1][0])
            page = min(page * 4, 4096)

    def _run_index(self, plan: Plan, test: Callable[[Any], bool], desc: bool, pending: dict[str, DocState],
                   seen: set[str], final: bool = False, page: int | None = 64,
                   dedupe: bool = True) -> Iterator[list[tuple[dict[str, Any], Hit]]]:
        """The matches of an index plan, in lists (a page of index rows each). ``final``: the caller wants
        Python records of its own (no fields, no sort of its own): a range that needs no test yields them as
        such (``_FINAL``), copied from the record memo when it has them. ``page``: see :meth:`_disk_pages`.
        ``dedupe``: skip the ids in ``seen`` and add those yielded (a union's parts; one index has one row per
        record)."""
        d = plan.index
        assert d is not None
        memo: dict[int, list[bytes] | None] = {}
        get = self._docs.get
        read = self._read_row
        order = range(len(plan.ranges) - 1, -1, -1) if desc else range(len(plan.ranges))
        for i in order:
            lo, hi = plan.ranges[i]
            exact = plan.exact and i != plan.loose
            fast = final and exact
            for rows in self._disk_pages(d, lo, hi, desc, page):
                batch: list[tuple[dict[str, Any], Hit]] = []
                add = batch.append
                for id, loc, _key in rows:
                    if id in pending:
                        continue
                    if dedupe:
                        if id in seen:
                            continue
                        seen.add(id)
                    known = _NOT_READ
                    if fast:
                        known = get(loc, _NOT_READ)
                        if known is not None and known is not _NOT_READ:  # returned before: copy its dict form
                            rec, cplan = known
                            out = rec.copy()
                            for k in cplan:
                                out[k] = out[k].copy()
                            add((out, _FINAL))
                            continue
                    got = read(id, loc, exact, fast, known is None, test, memo)
                    if got is not None:
                        add(got)
                if batch:
                    yield batch

    def _read_row(self, id: str, loc: int, exact: bool, fast: bool, again: bool, test: Callable[[Any], bool],
                  memo: dict[int, list[bytes] | None]) -> tuple[dict[str, Any], Hit] | None:
        """The match an index row points to (``exact``: no need to test it; ``fast``: as a final Python record,
        remembered ``again``), or None. ``memo``: the blocks this query has read."""
        bno = loc >> 8
        records = memo.get(bno, _NOT_READ)
        if records is _NOT_READ:
            records = memo[bno] = self.store.read_block(bno)
        slot = loc & 0xFF
        loads = orjson.loads
        if records is not None and slot < len(records):
            data = records[slot]
            (mlen,) = _U32.unpack_from(data, 0)
            meta = loads(data[4 : 4 + mlen])
            nodes = meta[2]
            if meta[0] == id and len(nodes) == 1:  # one revision, the usual case: no DocState to build
                if nodes[0][2]:
                    return None  # deleted
                rev = nodes[0][0]
                if fast:
                    return self._remember(loc, again, id, rev, data[4 + mlen :]), _FINAL
                doc = loads(data[4 + mlen :])
                doc["_id"] = id
                doc["_rev"] = rev
                return (doc, Hit(id, rev, data, True, 4 + mlen)) if exact or test(doc) else None
        found = self.store.winner_at(loc, id, {})  # more revisions, or the block moved: the slow way
        if found is None:
            return None
        rev, body = found
        doc = loads(body)
        doc["_id"] = id
        doc["_rev"] = rev
        return (doc, Hit(id, rev, body, True)) if test(doc) else None

    def _direct(self, plan: Plan, desc: bool, limit: Any, skip: Any) -> list[dict[str, Any]] | None:
        """The answer of an exact index plan with no record pending, in the index's order, straight (what
        :meth:`select` does, without its layers: most queries of an application are of this kind); None when it
        does not apply (records pending, odd arguments, a row that did not give its record) and :meth:`select`
        must answer."""
        if type(skip) is not int or skip < 0 or (limit is not None and (type(limit) is not int or limit < 0)):
            return None
        store = self.store
        if store.has_pending():
            return None
        d = plan.index
        assert d is not None
        stop = None if limit is None else skip + limit
        qlocs = store.index.qlocs_range
        read_block, remember, unpack, loads = store.read_block, self._remember, _U32.unpack_from, orjson.loads
        get = self._docs.get
        memo: dict[int, list[bytes] | None] = {}
        out: list[dict[str, Any]] = []
        add = out.append
        for i in (range(len(plan.ranges) - 1, -1, -1) if desc else range(len(plan.ranges))):
            if stop is not None and len(out) >= stop:
                break
            lo, hi = plan.ranges[i]
            if i == plan.loose:  # the array values an $in looks into, whose records are tested: none, usually
                if qlocs(d.ino, lo, hi, limit=1):
                    return None
                continue
            # Only where the records are (a record's place names it: a memo hit needs no id)
            text = qlocs(d.ino, lo, hi, desc=desc, limit=None if stop is None else stop - len(out))
            if not text:
                continue
            for loc in loads("[" + text + "]"):
                known = get(loc, _NOT_READ)
                if known is not None and known is not _NOT_READ:  # returned before: copy its dict form
                    rec, cplan = known
                    doc = rec.copy()
                    for k in cplan:
                        doc[k] = doc[k].copy()
                    add(doc)
                    continue
                # Not in the memo: read from its block (what _read_row does, inline: a query of first reads
                # makes this step once per record).
                bno = loc >> 8
                records = memo.get(bno, _NOT_READ)
                if records is _NOT_READ:
                    records = memo[bno] = read_block(bno)
                slot = loc & 0xFF
                if records is None or slot >= len(records):
                    return None  # the block moved meanwhile: select's way
                data = records[slot]
                (mlen,) = unpack(data, 0)
                meta = loads(data[4 : 4 + mlen])
                nodes = meta[2]
                if len(nodes) != 1 or nodes[0][2]:
                    return None  # more revisions, or deleted meanwhile: select's way
                add(remember(loc, known is None, meta[0], nodes[0][0], data[4 + mlen :]))
        return out[skip:] if skip else out

    def _remember(self, loc: int, again: bool, id: str, rev: str, body: bytes) -> dict[str, Any]:
        """The Python record (``id``, ``rev``, decoded body) at ``loc``, for the caller; kept in the record memo
        in its dict form when it is returned ``again`` (and small and shallow enough to copy cheaply)."""
        values = orjson.loads(body)
        out: dict[str, Any] = {"id": id, "rev": rev, **(decode_value(values) if b'"$' in body else values)}
        docs = self._docs
        if self._docs_max <= 0:
            return out
        cplan = copy_plan(out) if again and len(body) <= _DOC_MAX else None
        if loc not in docs and len(docs) >= self._docs_max:
            # The oldest goes (O(1); a dict's next(iter()) skips every hole). Not contextlib.suppress: a context
            # manager per record read cost more than the rest of this method.
            try:  # noqa: SIM105
                docs.popitem(last=False)
            except KeyError:  # emptied by another thread meanwhile
                pass
        if cplan is None:
            docs[loc] = None
            return out
        docs[loc] = (out, cplan)
        copy = out.copy()
        for k in cplan:
            copy[k] = copy[k].copy()
        return copy

    def _matches(self, plan: Plan, test: Callable[[Any], bool], desc: bool, sort: list[Path], final: bool = False,
                 stop: int | None = None) -> Iterator[list[tuple[dict[str, Any], Hit]]]:
        """Every match of the plan, in lists: in sort order when ``plan.ordered`` (pending records merged in).
        ``final``: see :meth:`_run_index`; ``stop``: how many matches the caller may stop at (None: it takes
        them all)."""
        store = self.store
        if plan.kind == "scan":
            batch = []
            for s in store.iter_states(0):
                doc = match_doc(s)
                if doc is not None and test(doc):
                    batch.append((doc, Hit.of(s, True)))
                    if len(batch) >= 64:
                        yield batch
                        batch = []
            if batch:
                yield batch
            return
        if plan.kind == "id":
            batch = []
            for id in plan.ids:
                got = store.get_state(id)
                doc = None if got is None else match_doc(got)
                if doc is not None and got is not None and test(doc):
                    batch.append((doc, Hit.of(got, True)))
            yield batch
            return
        pending = store.pending()  # before the index is read: a record flushed meanwhile is in one or the other
        seen: set[str] = set()
        page = None if stop is None else min(max(stop + len(pending), 16), 4096)
        if plan.kind == "union":
            for part in plan.parts:
                if part.kind == "id":
                    batch = []
                    for doc, h in itertools.chain.from_iterable(self._matches(part, test, desc, sort)):
                        if h.id not in seen:
                            seen.add(h.id)
                            batch.append((doc, h))
                    yield batch
                else:
                    yield from self._run_index(part, test, desc, pending, seen, final, page)
        else:
            if sort and plan.ordered and pending:
                disk = itertools.chain.from_iterable(self._run_index(plan, test, desc, pending, seen, False, page,
                                                                     False))
                mem = []
                for s in pending.values():
                    doc = self._pending_doc(s)
                    if doc is not None and test(doc):
                        mem.append((doc, Hit.of(s, False)))
                mem.sort(key=lambda x: sort_key(x[0], sort, x[1].id), reverse=desc)
                merged = heapq.merge(disk, mem, key=lambda x: sort_key(x[0], sort, x[1].id), reverse=desc)
                while chunk := list(itertools.islice(merged, page or 4096)):
                    yield chunk
                return
            yield from self._run_index(plan, test, desc, pending, seen, final, page, False)
        batch = []
        for s in pending.values():
            if s.id in seen:
                continue
            doc = self._pending_doc(s)
            if doc is not None and test(doc):
                batch.append((doc, Hit.of(s, False)))
        yield batch

    def _pending_doc(self, s: DocState) -> dict[str, Any] | None:
        try:
            return self._parsed[s]
        except KeyError:
            doc = self._parsed[s] = match_doc(s)
            return doc

    def query(self, selector: Any, *, fields: Any = None, sort: Any = None, limit: Any = None, skip: Any = 0,
              use_index: Any = None, python: bool = True) -> tuple[list[dict[str, Any]], Plan]:
        """The matching records (Python records, or CouchDB documents in stored JSON when not ``python``) and the
        plan that found them."""
        # The same query again (a dashboard's, a live query's) reuses its compiled selector and plan; the key is
        # the repr of the arguments (exact for the values a selector holds; a miss costs only the compiling).
        key = repr((selector, fields, sort, use_index, python, self._version))
        cached = self._compiled.get(key)
        if cached is None:
            if python:
                selector, sort, fields = python_names(selector), py_spec(sort), py_spec(fields)
            node = compile_selector(selector, python=python)
            paths, desc = parse_sort(sort)
            cached = (node, paths, desc, parse_fields(fields), self.plan(node, paths, use_index))
            if len(self._compiled) >= 256:
                with contextlib.suppress(StopIteration, KeyError, RuntimeError):  # another thread evicted it
                    self._compiled.pop(next(iter(self._compiled)))
            self._compiled[key] = cached
        node, paths, desc, fpaths, plan = cached
        if python and fpaths is None and plan.kind == "index" and plan.exact and (not paths or plan.ordered):
            done = self._direct(plan, desc, limit, skip)
            if done is not None:
                return done, plan
        picked, plan = self.select(node, paths, desc, limit=limit, skip=skip, plan=plan,
                                   final=python and fpaths is None)
        output = self.output
        return [doc if s is _FINAL else output(doc, s, fpaths, python) for doc, s in picked], plan

    def select(self, node: Node, paths: list[Path], desc: bool, *, limit: Any = None, skip: Any = 0,
               use_index: Any = None, plan: Plan | None = None,
               final: bool = False) -> tuple[list[tuple[dict[str, Any], Hit]], Plan]:
        """The matches of a compiled selector, sorted, skipped and limited: (stored JSON form, state) pairs.
        ``final``: the caller will hand out every match as a Python record with all its fields
        (:meth:`output`): matches may come in that form already."""
        if limit is not None and (type(limit) is not int or limit < 0):
            raise InvalidQuery("limit is a non-negative integer")
        if type(skip) is not int or skip < 0:
            raise InvalidQuery("skip is a non-negative integer")
        if plan is None:
            plan = self.plan(node, paths, use_index)
        if plan.kind == "scan" and self.options.strict_queries:
            raise NoUsableIndex(f"no index can answer {orjson.dumps(node.json()).decode()[:200]} (strict_queries): "
                                "create one with createindex over the fields it requires")
        stop = None if limit is None else skip + limit
        sorted_here = bool(paths) and not plan.ordered
        matches = itertools.chain.from_iterable(self._matches(plan, node.test, desc, paths, final and not sorted_here,
                                                              None if sorted_here else stop))
        if sorted_here:
            keyed = ((sort_key(doc, paths, s.id), doc, s) for doc, s in matches)
            if stop is not None:
                chosen = (heapq.nlargest if desc else heapq.nsmallest)(stop, keyed, key=lambda x: x[0])
            else:
                chosen = sorted(keyed, key=lambda x: x[0], reverse=desc)
            return [(doc, s) for _k, doc, s in chosen[skip:]], plan
        return list(itertools.islice(matches, skip, stop)), plan

    @staticmethod
    def output(doc: dict[str, Any], s: Hit, fpaths: list[Path] | None, python: bool) -> dict[str, Any]:
        """A match (``doc``: read-only unless ``s.owned``) as it is handed out: a Python record of the caller's
        own (``id``, ``rev``, decoded values), or a CouchDB document; only ``fpaths`` if given."""
        if s is _FINAL:
            return doc
        if python and fpaths is None:
            out: dict[str, Any] = {"id": s.id, "rev": s.winner}
            if s.owned:  # parsed for this query alone: it becomes the result
                del doc["_id"], doc["_rev"]
                out.update(decode_value(doc) if s.tagged else doc)
            else:
                out.update(loads_body(s.json()))
            return out
        if fpaths is not None:
            doc = project(doc, fpaths)
        if not python:
            if any(k[:1] == "_" and k not in ("_id", "_rev") for k in doc):
                doc = {("$" + k if k[:1] == "_" and k not in ("_id", "_rev") else k): v for k, v in doc.items()}
            return doc
        doc = orjson.loads(orjson.dumps(doc))  # a copy of the caller's own
        id_ = doc.pop("_id", MISSING)
        rev = doc.pop("_rev", MISSING)
        out = {}
        if id_ is not MISSING:
            out["id"] = id_
        if rev is not MISSING:
            out["rev"] = rev
        out.update(decode_value(doc))
        return out

    def explain(self, selector: Any, *, fields: Any = None, sort: Any = None, limit: Any = None, skip: Any = 0,
                use_index: Any = None, python: bool = True) -> dict[str, Any]:
        if python:
            selector, sort, fields = python_names(selector), py_spec(sort), py_spec(fields)
        node = compile_selector(selector, python=python)
        paths, _desc = parse_sort(sort)
        plan = self.plan(node, paths, use_index)
        if plan.kind == "scan" and self.options.strict_queries:
            raise NoUsableIndex("no index can answer this query (strict_queries)")
        pending = len(self.store.pending())
        examined = self._estimate(plan)
        if plan.kind == "index" and plan.ordered and plan.exact and type(limit) is int:
            examined = min(examined, (skip if type(skip) is int else 0) + limit)  # it stops at the limit
        examined += pending if plan.kind in ("index", "union") else 0
        out: dict[str, Any] = {
            "dbname": self.dbname,
            "index": plan.describe() if plan.kind != "union" else {"ddoc": None, "name": "$or", "type": "union",
                                                                    "def": {"indexes": plan.describe()}},
            "selector": node.json(),
            "opts": {"use_index": [] if use_index is None else use_index, "sort": sort or {}, "fields": fields
                     or "all_fields", "limit": 25 if limit is None and not python else limit, "skip": skip},
            "limit": limit, "skip": skip, "fields": fields or "all_fields",
            "mynosql": {"strategy": plan.kind, "examined": examined, "ordered": plan.ordered or not paths,
                        "in_memory_sort": bool(paths) and not plan.ordered,
                        "ranges": len(plan.ranges) if plan.kind == "index" else None},
        }
        if plan.warning:
            out["warning"] = plan.warning
        return out

    def _estimate(self, plan: Plan) -> int:
        if plan.kind == "scan":
            return self.store.live_count
        if plan.kind == "id":
            return len(plan.ids)
        if plan.kind == "union":
            return sum(self._estimate(p) for p in plan.parts)
        assert plan.index is not None
        return sum(self.store.index.qkeys_count(plan.index.ino, lo, hi) for lo, hi in plan.ranges)


class IndexInfo(str):
    """One index of :meth:`Database.indexes`: the string is its name (so ``"site" in db.indexes()`` works as it
    always did for ``indexadd``); ``kind`` is ``"field"`` (``indexadd``: also readable with ``indexread``) or
    ``"json"`` (``createindex``), ``fields`` its fields, ``ddoc`` and ``partial_filter_selector`` as CouchDB has
    them, ``building`` ``(done, total)`` while it is built in the background (None once it is ready)."""

    kind: str
    fields: list[str]
    ddoc: str | None
    partial_filter_selector: Any
    building: tuple[int, int | None] | None

    @classmethod
    def make(cls, name: str, kind: str, fields: list[str], ddoc: str | None = None, partial: Any = None,
             building: tuple[int, int | None] | None = None) -> IndexInfo:
        info = cls(name)
        info.kind, info.fields, info.ddoc, info.partial_filter_selector, info.building = \
            kind, fields, ddoc, partial, building
        return info


__all__ = ["IndexInfo", "QueryEngine", "field_name", "index_spec", "make_def", "parse_index_fields", "python_names"]
