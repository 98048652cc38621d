"""The same Mango queries through pouchdb-find (node, in memory) and MyNoSQL's find give the same records; and
pouchdb-find over HTTP queries a mirror (``_index``, ``_find``).

The generated queries stay where CouchDB and pouchdb-find agree (docs/queries.md lists where they differ:
``$ne``/``$nin`` on a missing field, ``null`` under ``$in``/``$nin``, pouchdb-find's ``$and`` merging, a
field-level ``$not``), so any difference is ours to fix.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
from pathlib import Path
from typing import Any

from pouch import INTEROP_DIR
from support.mirrors import mirrors, wait_until  # noqa: F401 - mirrors is a fixture

import MyNoSQL

FIND_JS = INTEROP_DIR / "find.js"


def run_find(request: dict[str, Any], timeout: float = 120) -> dict[str, Any]:
    node = shutil.which("node")
    assert node is not None
    proc = subprocess.run([node, str(FIND_JS)], cwd=INTEROP_DIR, input=json.dumps(request), capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    out: dict[str, Any] = json.loads(proc.stdout)
    return out


def make_docs(rng: random.Random, n: int) -> list[dict[str, Any]]:
    scalars = [0, 1, 2, 3, -1, 2.5, "", "a", "b", "ab", "B", "\u00e9", True, False]
    docs = []
    for i in range(n):
        d: dict[str, Any] = {"_id": f"d{i:03}", "a": rng.choice(scalars), "b": rng.randint(-5, 5),
                             "t": rng.sample(["x", "y", "z", 1, 2], rng.randint(0, 3)), "p": {"q": rng.randint(0, 3)}}
        if rng.random() < 0.6:
            d["c"] = rng.choice([*scalars, None, [1, 2], {"k": 1}])
        docs.append(d)
    return docs


def make_selector(rng: random.Random, depth: int = 0, *, negated: bool = False) -> dict[str, Any]:
    value = rng.choice([0, 1, 2, 3, -1, 2.5, "", "a", "ab", "B", True, False])
    kind = rng.randrange(14 if depth < 2 else 11)
    while negated and kind in (2, 8):  # pouchdb-find wraps $ne and $regex under $not twice: they never match
        kind = rng.randrange(14 if depth < 2 else 11)
    if kind == 0:  # a bare value only at the top: pouchdb-find reads a nested bare false, 0 or "" as no condition
        return {"a": value} if depth == 0 else {"a": {"$eq": value}}
    if kind == 1:
        return {rng.choice(["a", "b", "c"]): {rng.choice(["$gt", "$gte", "$lt", "$lte"]): value}}
    if kind == 2:
        return {rng.choice(["a", "b"]): {"$ne": value}}
    if kind == 3:
        return {rng.choice(["a", "b", "t"]): {rng.choice(["$in", "$nin"]): rng.sample([0, 1, 2, "a", "x", True], 3)}}
    if kind == 4:
        return {"c": {"$exists": rng.random() < 0.5}}
    if kind == 5:
        return {rng.choice(["a", "c"]): {"$type": rng.choice(["null", "boolean", "number", "string", "array",
                                                              "object"])}}
    if kind == 6:
        return {"t": rng.choice([{"$size": rng.randint(0, 3)}, {"$all": rng.sample(["x", "y", 1], 2)},
                                 {"$elemMatch": {"$eq": rng.choice(["x", 1])}}])}
    if kind == 7:
        return {"b": {"$mod": [rng.choice([2, 3]), rng.choice([0, 1, -1])]}}
    if kind == 8:
        return {"a": {"$regex": rng.choice(["^a", "b$", "^$", "[aB]"])}}
    if kind == 9:
        return {"p.q": {rng.choice(["$eq", "$gt", "$lte"]): rng.randint(0, 3)}}
    if kind == 10:
        return {"b": {"$gte": rng.randint(-5, 0), "$lt": rng.randint(0, 5)}}
    if kind == 11:
        return {"$or": [make_selector(rng, depth + 1, negated=negated) for _ in range(rng.randint(1, 3))]}
    if kind == 12:
        return {"$nor": [make_selector(rng, depth + 1, negated=True) for _ in range(rng.randint(1, 2))]}
    sub = make_selector(rng, depth + 1, negated=True)
    return {"$not": sub} if "$not" not in sub else sub


def test_find_answers_as_pouchdb_find(pouch_node_modules: None, tmp_path: Path) -> None:
    rng = random.Random(16)
    docs = make_docs(rng, 120)
    queries: list[dict[str, Any]] = []
    for _ in range(250):
        sel = make_selector(rng)
        if rng.random() < 0.5:  # two conditions on different fields: an implicit $and
            other = make_selector(rng)
            if not set(other) & set(sel):
                sel = {**sel, **other}
        queries.append({"selector": sel})
    for field in ("a", "b"):  # sorted, with an index (pouchdb-find sorts only with one) and a limit
        for direction in ("asc", "desc"):
            for _ in range(10):
                sel = make_selector(rng)
                if field in sel:
                    continue
                sel[field] = {"$exists": True}  # in pouchdb-find's index, as the sort needs (no $and: it merges)
                queries.append({"index": [field], "selector": sel, "sort": [{field: direction}],
                                "limit": rng.choice([None, 5])})
    pouch = run_find({"url": None, "docs": docs, "queries": queries})
    with MyNoSQL.MyNoSQL(tmp_path, options=MyNoSQL.Options(background_sync=False)) as h:
        h.opendb("find")
        for d in docs:
            h.savedoc({"id": d["_id"], **{k: v for k, v in d.items() if k != "_id"}})
        h.createindex(["a"])
        h.createindex(["b"])
        mismatches = []
        for q, theirs in zip(queries, pouch["results"], strict=True):
            assert "error" not in theirs, (q, theirs)
            sel = json.loads(json.dumps(q["selector"]).replace('"_id"', '"id"'))
            ours = h.find(sel, sort=q.get("sort"), limit=q.get("limit"))
            want = [d["_id"] for d in theirs["docs"]]
            got = [d["id"] for d in ours]
            if (got if q.get("sort") else sorted(got)) != (want if q.get("sort") else sorted(want)):
                mismatches.append((q, sorted(set(got) ^ set(want))[:5]))
        assert not mismatches, f"{len(mismatches)} of {len(queries)} differ, first: {mismatches[:3]}"


def test_pouchdb_find_queries_a_mirror_over_http(pouch_node_modules: None, mirrors: Any,  # noqa: F811
                                                 tmp_path: Path) -> None:
    m = mirrors("iot")
    url = f"{m.url}/iot"
    rng = random.Random(7)
    docs = make_docs(rng, 80)
    with MyNoSQL.MyNoSQL(tmp_path / "client", options=MyNoSQL.Options(background_sync=False)) as h:
        h.opendb("iot")
        for d in docs:
            h.savedoc({"id": d["_id"], **{k: v for k, v in d.items() if k != "_id"}})
        h.push(url)
    queries = [
        {"index": ["b"], "selector": {"b": {"$gte": 0}}, "sort": [{"b": "desc"}], "limit": 10},
        {"selector": {"$or": [{"a": "a"}, {"p.q": 3}]}, "fields": ["_id", "a"]},
        {"selector": {"t": {"$elemMatch": {"$eq": "x"}}, "b": {"$lt": 0}}},
    ]
    over_http = run_find({"url": url, "queries": queries})
    in_memory = run_find({"url": None, "docs": docs, "queries": queries})
    for q, theirs, ours in zip(queries, in_memory["results"], over_http["results"], strict=True):
        assert "error" not in ours, (q, ours)
        strip = [{k: v for k, v in d.items() if k != "_rev"} for d in ours["docs"]]
        expected = [{k: v for k, v in d.items() if k != "_rev"} for d in theirs["docs"]]
        if not q.get("sort"):
            strip.sort(key=lambda d: str(d["_id"]))
            expected.sort(key=lambda d: str(d["_id"]))
        assert strip == expected, q
    wait_until(lambda: any(i["name"] != "_all_docs" and "building" not in i
                           for i in json.loads(_get(f"{url}/_index"))["indexes"]), what="the index pouchdb made")


def _get(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as r:
        return str(r.read().decode())
