"""Mango queries: the selector language, the collation, query indexes, the planner (against a full scan), explain
and strict_queries."""

from __future__ import annotations

import datetime
import functools
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import MyNoSQL
from MyNoSQL.records.collate import collate, encode_key
from MyNoSQL.records.mango import compile_selector
from MyNoSQL.testing import poll_until

# -- the collation --------------------------------------------------------------------------------------------


def _rank(v: Any) -> int:
    if v is None:
        return 1
    if isinstance(v, bool):
        return 2
    if isinstance(v, (int, float)):
        return 3
    if isinstance(v, str):
        return 4
    return 5 if isinstance(v, list) else 6


def _js(s: str) -> list[int]:
    b = s.encode("utf-16-be", "surrogatepass")
    return [int.from_bytes(b[i : i + 2], "big") for i in range(0, len(b), 2)]


def reference_collate(a: Any, b: Any) -> int:
    """pouchdb-collate's collate, transcribed (strings by UTF-16 code units, as JavaScript's ``<``)."""
    ra, rb = _rank(a), _rank(b)
    if ra != rb:
        return -1 if ra < rb else 1
    if ra == 1:
        return 0
    if ra in (2, 3):
        return (a > b) - (a < b)
    if ra == 4:
        ja, jb = _js(a), _js(b)
        return (ja > jb) - (ja < jb)
    if ra == 5:
        for x, y in zip(a, b, strict=False):
            c = reference_collate(x, y)
            if c:
                return c
        return (len(a) > len(b)) - (len(a) < len(b))
    for (ka, va), (kb, vb) in zip(a.items(), b.items(), strict=False):
        c = reference_collate(ka, kb) or reference_collate(va, vb)
        if c:
            return c
    return (len(a) > len(b)) - (len(a) < len(b))


json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**53), 2**53),
                         st.floats(allow_nan=False, allow_infinity=False),
                         st.text(alphabet=st.sampled_from("a\x00b\u00e9\ue000\U0001f600Z"), max_size=4))
json_values = st.recursive(json_scalars, lambda kids: st.lists(kids, max_size=3)
                           | st.dictionaries(st.sampled_from(["a", "b", "c\x00"]), kids, max_size=3), max_leaves=8)


@given(json_values, json_values)
def test_the_byte_keys_sort_as_pouchdb_collate(a: Any, b: Any) -> None:
    assert collate(a, b) == reference_collate(a, b)


def test_the_collation_order_of_types() -> None:
    values = [None, False, True, -1e300, -5, 0, 1, 2.5, "", "A", "a", "ab", "\U0001f600", "\ue000", [], [1], [1, 2],
              [2], {}, {"a": 1}, {"a": 1, "b": 0}, {"b": 0}]
    keys = [encode_key(v) for v in values]
    assert keys == sorted(keys)
    assert encode_key(1) == encode_key(1.0) and encode_key(-0.0) == encode_key(0)


# -- the selector language ------------------------------------------------------------------------------------


DOC = {"_id": "x", "n": 5, "s": "hello", "z": None, "tags": ["a", "b"], "nested": {"k": {"deep": 3}},
       "items": [{"name": "x", "q": 1}, {"name": "y", "q": 7}], "map": {"red": 1, "blue": 2}, "neg": -7}


@pytest.mark.parametrize(("selector", "expected"), [
    ({"n": 5}, True), ({"n": {"$eq": 5.0}}, True), ({"n": {"$ne": 5}}, False), ({"n": {"$gt": 4}}, True),
    ({"n": {"$gte": 5, "$lt": 6}}, True), ({"n": {"$lte": 4}}, False), ({"n": {"$gt": "a"}}, False),
    ({"s": {"$gt": 5}}, True),  # strings sort after numbers, as in CouchDB
    ({"missing": {"$ne": 1}}, False), ({"missing": {"$nin": [1]}}, False), ({"missing": {"$exists": False}}, True),
    ({"$not": {"missing": 1}}, True), ({"missing": {"$not": {"$eq": 1}}}, True), ({"z": {"$exists": True}}, True),
    ({"z": None}, True), ({"z": {"$type": "null"}}, True), ({"n": {"$type": "number"}}, True),
    ({"tags": {"$in": ["b", "c"]}}, True), ({"tags": {"$nin": ["b"]}}, False), ({"n": {"$in": [1, 5]}}, True),
    ({"tags": {"$all": ["b", "a"]}}, True), ({"tags": {"$all": ["a", "c"]}}, False), ({"tags": {"$size": 2}}, True),
    ({"n": {"$mod": [2, 1]}}, True), ({"neg": {"$mod": [2, -1]}}, True), ({"s": {"$regex": "^h.l"}}, True),
    ({"s": {"$regex": "^x"}}, False), ({"nested.k.deep": 3}, True), ({"nested": {"k": {"deep": {"$gt": 2}}}}, True),
    ({"items.1.name": "y"}, True), ({"items": {"$elemMatch": {"name": "y", "q": {"$gt": 5}}}}, True),
    ({"items": {"$elemMatch": {"name": "x", "q": {"$gt": 5}}}}, False), ({"tags": {"$elemMatch": {"$eq": "b"}}}, True),
    ({"items": {"$allMatch": {"q": {"$gt": 0}}}}, True), ({"items": {"$allMatch": {"q": {"$gt": 1}}}}, False),
    ({"map": {"$keyMapMatch": {"$eq": "blue"}}}, True), ({"map": {"$keyMapMatch": {"$eq": "green"}}}, False),
    ({"$or": [{"n": 1}, {"s": "hello"}]}, True), ({"$nor": [{"n": 1}, {"s": "hello"}]}, False),
    ({"$and": [{"n": 5}, {"s": {"$exists": True}}]}, True), ({"$or": []}, True), ({"tags": ["a", "b"]}, True),
    ({"tags": {"$eq": ["b", "a"]}}, False), ({"nested": {"$eq": {"k": {"deep": 3}}}}, True),
])
def test_operators(selector: dict[str, Any], expected: bool) -> None:
    assert compile_selector(selector).test(DOC) is expected


@pytest.mark.parametrize("selector", [
    [], {"n": {"$bogus": 1}}, {"n": {"$in": 5}}, {"n": {"$size": -1}}, {"n": {"$mod": [0, 1]}},
    {"n": {"$regex": "("}}, {"$or": {"n": 1}}, {"n": {"$type": "date"}}, {"n": {"$exists": 1}},
    functools.reduce(lambda inner, _: {"$not": inner}, range(5000), {"n": 1}),
])
def test_invalid_selectors_are_refused(selector: Any) -> None:
    with pytest.raises(MyNoSQL.InvalidQuery):
        compile_selector(selector)


# -- find, indexes and the planner ----------------------------------------------------------------------------


@pytest.fixture
def db(tmp_path: Path) -> Any:
    h = MyNoSQL.MyNoSQL(tmp_path)
    h.opendb("q")
    yield h
    h.closedb()


def _readings(db: Any, n: int = 300) -> None:
    for i in range(n):
        db.savedoc({"id": f"r{i:04}", "sensor": f"s-{i % 10}", "ts": i, "value": (i * 7) % 13,
                    "site": ["north", "south", "east"][i % 3]})


def test_find_with_an_index_answers_as_a_scan(db: Any) -> None:
    _readings(db)
    query = {"sensor": "s-7", "ts": {"$gte": 100}}
    scanned = db.find(query, sort=[{"ts": "desc"}], limit=5)
    assert db.explain(query)["mynosql"]["strategy"] == "scan"
    db.db.flush()
    db.createindex(["sensor", "ts"], name="by-sensor")
    explained = db.explain(query, sort=[{"ts": "desc"}], limit=5)
    assert explained["index"]["name"] == "by-sensor"
    assert explained["mynosql"] == {"strategy": "index", "examined": 5, "ordered": True, "in_memory_sort": False,
                                    "ranges": 1}  # 20 records in the range: the read stops at the limit
    assert db.find(query, sort=[{"ts": "desc"}], limit=5) == scanned
    assert [r["ts"] for r in scanned] == [297, 287, 277, 267, 257]
    assert db.find(query, fields=["id", "ts"], sort=["ts"], limit=2, skip=1) == [{"id": "r0117", "ts": 117},
                                                                                    {"id": "r0127", "ts": 127}]


def test_an_index_is_kept_current_on_save_delete_and_flush(db: Any) -> None:
    _readings(db, 50)
    db.createindex(["site"], name="site")
    assert len(db.find({"site": "east"})) == 16
    rec = db.readdoc("r0002")
    db.savedoc({**rec, "site": "west"})  # pending: read from memory
    db.deletedoc("r0005", db.readdoc("r0005")["rev"])
    assert {r["id"] for r in db.find({"site": "west"})} == {"r0002"}
    assert len(db.find({"site": "east"})) == 14
    db.db.flush()  # now from the index
    assert {r["id"] for r in db.find({"site": "west"})} == {"r0002"}
    assert len(db.find({"site": "east"})) == 14
    assert db.explain({"site": "east"})["mynosql"]["strategy"] == "index"


def test_indexes_persist_and_drop(tmp_path: Path) -> None:
    with MyNoSQL.MyNoSQL(tmp_path) as h:
        h.opendb("p")
        _readings(h, 40)
        h.createindex([{"ts": "desc"}], name="by-ts")
        h.indexadd("sensor")
    with MyNoSQL.MyNoSQL(tmp_path) as h:
        db = h.opendb("p")
        assert db.indexes() == ["sensor", "by-ts"]
        info = db.indexes()[1]
        assert (info.kind, info.fields, info.building) == ("json", ["ts"], None)
        assert db.explain({"ts": {"$gt": 30}})["index"]["name"] == "by-ts"
        assert db.explain({"sensor": "s-1"})["index"]["name"] == "sensor"  # indexadd is the one-field case
        assert len(db.find({"ts": {"$gt": 30}})) == 9
        assert db.dropindex("by-ts") is True and db.dropindex("by-ts") is False
        assert db.indexes() == ["sensor"]
        assert db.explain({"ts": {"$gt": 30}})["mynosql"]["strategy"] == "scan"
        assert db.indexdrop("sensor") and db.indexes() == []


def test_an_index_of_an_existing_database_is_built_in_the_background(db: Any) -> None:
    _readings(db, 3000)
    db.db.flush()
    seen: list[tuple[int, int | None]] = []
    done = threading.Event()

    def progress(n: int, total: int | None) -> None:
        seen.append((n, total))
        if n == 3000:
            done.set()

    answer = db.createindex(["value"], name="v", wait=False, progress=progress)
    assert answer == {"result": "created", "id": "_design/v", "name": "v"}
    assert len(db.find({"value": 3})) == 231  # right while it builds (read another way)
    assert done.wait(30)
    poll_until(lambda: db.indexes()[0].building is None, timeout=10)
    assert seen[-1] == (3000, 3000)
    assert db.explain({"value": 3})["mynosql"]["strategy"] == "index"
    assert len(db.find({"value": 3})) == 231
    assert db.createindex(["value"], name="v") == {"result": "exists", "id": "_design/v", "name": "v"}
    with pytest.raises(MyNoSQL.InvalidQuery):
        db.createindex(["ts"], name="v")


def test_or_and_in_use_indexes(db: Any) -> None:
    _readings(db, 200)
    db.db.flush()
    db.createindex(["sensor"], name="sensor")
    db.createindex(["site"], name="site")
    q_or = {"$or": [{"sensor": "s-1"}, {"site": "east"}]}
    assert db.explain(q_or)["mynosql"]["strategy"] == "union"
    assert len(db.find(q_or)) == len([i for i in range(200) if i % 10 == 1 or i % 3 == 2])
    q_in = {"sensor": {"$in": ["s-1", "s-2", "s-3"]}}
    assert db.explain(q_in)["mynosql"] == {"strategy": "index", "examined": 60, "ordered": True,
                                           "in_memory_sort": False, "ranges": 4}
    assert [r["id"] for r in db.find(q_in, sort=["sensor"], limit=3)] == ["r0001", "r0011", "r0021"]
    assert db.explain({"id": {"$in": ["r0001", "nope"]}})["mynosql"]["strategy"] == "id"
    assert [r["id"] for r in db.find({"id": {"$in": ["r0001", "nope"]}})] == ["r0001"]


def test_an_and_of_two_ors_tests_the_other_or(db: Any) -> None:
    _readings(db, 200)
    db.db.flush()
    db.createindex(["sensor"], name="sensor")
    db.createindex(["site"], name="site")
    q = {"$and": [{"$or": [{"sensor": "s-1"}, {"sensor": "s-2"}]}, {"$or": [{"site": "east"}, {"value": 3}]}]}
    want = sorted(r["id"] for r in db if r["sensor"] in ("s-1", "s-2") and (r["site"] == "east" or r["value"] == 3))
    for _ in range(3):  # the second and third time from the record memo
        assert db.explain(q)["mynosql"]["strategy"] == "union"
        assert sorted(r["id"] for r in db.find(q)) == want


def test_found_records_are_the_callers_own(tmp_path: Path) -> None:
    day = datetime.datetime(2026, 1, 1, 12, 0)
    opts = MyNoSQL.Options(background_sync=False, cache_docs=50)  # fewer than the records: the memo evicts
    with MyNoSQL.MyNoSQL(tmp_path, options=opts) as h:
        h.opendb("own")
        for i in range(120):
            h.savedoc({"id": f"r{i:03}", "sensor": f"s-{i % 3}", "vals": [i, i + 1], "at": day,
                       "tags": {"k": i}, "big": "x" * (2000 if i % 7 == 0 else 1)})
        h.db.flush()
        h.createindex(["sensor"])
        h.createindex(["at"])
        queries: list[dict[str, Any]] = [{"sensor": "s-1"}, {"sensor": {"$in": ["s-0", "s-2"]}},
                                         {"$or": [{"sensor": "s-0"}, {"at": {"$gt": day}}]}]
        for q in queries:
            first = h.find(q)
            assert first == [h.readdoc(r["id"]) for r in first] and first
            for _ in range(3):  # again and again: copies of the memo, never the memo itself
                got = h.find(q)
                assert got == first
                for r in got:
                    r["vals"].append("mutated")
                    r["tags"]["k"] = "mutated"
                    r["sensor"] = "mutated"
                    del r["at"]
        r = h.readdoc("r001")
        h.savedoc({**r, "vals": ["new"]})
        h.db.flush()  # the record moves to another block: the query reads its new place
        assert [x["vals"] for x in h.find({"sensor": "s-1"}) if x["id"] == "r001"] == [["new"]]
        assert h.find({"sensor": "s-1"})[0]["at"] == day


def test_strict_queries_refuse_a_scan(tmp_path: Path) -> None:
    with MyNoSQL.MyNoSQL(tmp_path, options=MyNoSQL.Options(strict_queries=True, background_sync=False)) as h:
        h.opendb("s")
        _readings(h, 20)
        with pytest.raises(MyNoSQL.NoUsableIndex):
            h.find({"sensor": "s-1"})
        h.createindex(["sensor"])
        assert len(h.find({"sensor": "s-1"})) == 2


def test_tagged_values_compare_by_their_stored_form(db: Any) -> None:
    day = datetime.datetime(2026, 1, 1, 12, 0)
    for h in range(5):
        db.savedoc({"id": f"t{h}", "at": day + datetime.timedelta(hours=h), "raw": bytes([h])})
    db.createindex(["at"])
    found = db.find({"at": {"$gte": day + datetime.timedelta(hours=3)}}, sort=[{"at": "desc"}])
    assert [r["id"] for r in found] == ["t4", "t3"]
    assert found[0]["at"] == day + datetime.timedelta(hours=4) and found[0]["raw"] == b"\x04"


def test_bad_queries_say_why(db: Any) -> None:
    with pytest.raises(MyNoSQL.InvalidQuery, match="single direction"):
        db.find({"a": 1}, sort=[{"a": "asc"}, {"b": "desc"}])
    with pytest.raises(MyNoSQL.IndexNotFound):
        db.find({"a": 1}, use_index="nope")
    with pytest.raises(MyNoSQL.InvalidQuery):
        db.find({"a": 1}, limit=-1)


# -- the planner against a full scan (hypothesis) -------------------------------------------------------------

FIELDS = ["a", "b", "c"]
values = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.sampled_from([0.5, 2.5]),
                   st.sampled_from(["", "x", "y", "z"]), st.lists(st.integers(-2, 2), max_size=2))
docs = st.lists(st.dictionaries(st.sampled_from(FIELDS), values, max_size=3), min_size=1, max_size=40)


def _cond(v: Any) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.just(v),
        st.builds(lambda op, x: {op: x}, st.sampled_from(["$eq", "$gt", "$gte", "$lt", "$lte", "$ne"]), values),
        st.builds(lambda xs: {"$in": xs}, st.lists(values, max_size=3)),
        st.builds(lambda lo, hi: {"$gt": lo, "$lte": hi}, values, values),
        st.just({"$exists": True}), st.just({"$exists": False}), st.just({"$type": "number"}),
    )


field_conds = st.builds(lambda f, c: {f: c}, st.sampled_from(FIELDS), values.flatmap(_cond))
selectors = st.recursive(
    field_conds,
    lambda kids: st.one_of(
        st.builds(lambda xs: {"$or": xs}, st.lists(kids, min_size=1, max_size=3)),
        st.builds(lambda xs: {"$and": xs}, st.lists(kids, min_size=1, max_size=3)),
        st.builds(lambda x: {"$not": x}, kids),
        st.builds(lambda a, b: {**a, **b}, kids, kids),
    ),
    max_leaves=5,
)
sorts = st.one_of(st.none(), st.lists(st.sampled_from(FIELDS), min_size=1, max_size=2, unique=True).flatmap(
    lambda fs: st.sampled_from([fs, [{f: "desc"} for f in fs]])))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Any:
    h = MyNoSQL.MyNoSQL(tmp_path_factory.mktemp("prop"), options=MyNoSQL.Options(background_sync=False))
    h.opendb("prop")
    for fields in (["a"], ["b"], ["a", "b"], ["c", "a"]):
        h.createindex(fields)
    yield h
    h.closedb()


def planner_answers_as_a_full_scan(world: Any, data: list[dict[str, Any]], selector: dict[str, Any],
                                   sort: Any, limit: int | None, flush: str) -> None:
    db = world.db
    for r in list(db):
        db.deletedoc(r["id"], r["rev"])
    half = len(data) // 2
    for i, d in enumerate(data):
        db.savedoc({"id": f"d{i:03}", **d})
        if flush == "half" and i == half:
            db.flush()  # some records in the index, the others pending
    if flush == "all":
        db.flush()  # every record in the indexes: nothing pending (find's direct way)
    node = compile_selector(selector)
    expected = {f"d{i:03}" for i, d in enumerate(data) if node.test({"_id": f"d{i:03}", **d})}
    got = db.find(selector)
    assert {r["id"] for r in got} == expected
    again = db.find(selector)  # a second time: from the record memo where it can
    assert sorted(again, key=lambda r: r["id"]) == sorted(got, key=lambda r: r["id"])
    assert all(r == db.readdoc(r["id"]) for r in again)
    if sort is not None:
        q = db.queries
        ordered_by_index = [r["id"] for r in db.find(selector, sort=sort, limit=limit)]
        saved, q.ready = q.ready, set()  # no index: the scan's in-memory sort
        q._version += 1  # plans made with the indexes are not reused
        try:
            by_scan = [r["id"] for r in db.find(selector, sort=sort, limit=limit)]
        finally:
            q.ready = saved
            q._version += 1
        assert ordered_by_index == by_scan


def planner_property(examples: int) -> Any:
    """The property above as a test of `examples` random cases (hypothesis, shrinking on failure)."""
    return settings(max_examples=examples, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])(
        given(data=docs, selector=selectors, sort=sorts, limit=st.one_of(st.none(), st.integers(0, 5)),
              flush=st.sampled_from(["none", "half", "all"]))(planner_answers_as_a_full_scan))


test_the_planner_answers_as_a_full_scan = planner_property(50)  # the default suite: 50 cases
# -m soak: 400 cases (about 70 s quiet; past the default 300 s timeout on a loaded machine)
test_the_planner_answers_as_a_full_scan_soak = pytest.mark.timeout(1800)(pytest.mark.soak(planner_property(400)))


# -- live queries ---------------------------------------------------------------------------------------------


def test_a_live_query_reports_what_enters_changes_and_leaves(db: Any) -> None:
    _readings(db, 20)
    events: list[Any] = []
    live = db.observe({"sensor": "s-3", "value": {"$gt": 2}}, events.append)
    first = events.pop()
    assert first.initial and [r["id"] for r in first.added] == ["r0003"]  # r0013's value is 0
    r = db.savedoc({"id": "new", "sensor": "s-3", "value": 9})
    assert events.pop() == MyNoSQL.live.QueryChange([{**r, "sensor": "s-3", "value": 9}], [], [])
    db.savedoc({"id": "other", "sensor": "s-4", "value": 9})  # not in the result: no call
    assert events == []
    r2 = db.savedoc({**db.readdoc("new"), "value": 10})
    assert [c["rev"] for c in events.pop().changed] == [r2["rev"]]
    db.deletedoc("new", r2["rev"])
    assert [c["id"] for c in events.pop().removed] == ["new"]
    db.savedoc({**db.readdoc("r0003"), "value": 0})  # no longer matches
    assert [c["id"] for c in events.pop().removed] == ["r0003"]
    assert live.results == []
    live.stop()
    db.savedoc({"id": "late", "sensor": "s-3", "value": 9})
    assert events == []


def test_a_live_top_n_follows_its_order(db: Any) -> None:
    _readings(db, 30)
    db.createindex(["sensor", "ts"])
    events: list[Any] = []
    live = db.observe({"sensor": "s-1", "ts": {"$gte": 0}}, events.append, sort=[{"ts": "desc"}], limit=2)
    assert [r["ts"] for r in events.pop().added] == [21, 11]
    db.savedoc({"id": "old", "sensor": "s-1", "ts": 5})  # sorts after the last of the two: no change
    assert events == []
    db.savedoc({"id": "newest", "sensor": "s-1", "ts": 99})
    change = events.pop()
    assert [r["id"] for r in change.added] == ["newest"] and [r["ts"] for r in change.removed] == [11]
    assert [r["ts"] for r in live.results] == [99, 21]
    db.deletedoc("newest", db.readdoc("newest")["rev"])  # leaves: the next one comes back
    change = events.pop()
    assert [r["ts"] for r in change.added] == [11] and [r["id"] for r in change.removed] == ["newest"]
    live.stop()


def test_a_live_query_can_be_iterated(db: Any) -> None:
    live = db.observe({"kind": "alarm"})
    assert live.get(timeout=1).initial

    def write() -> None:
        db.savedoc({"id": "a1", "kind": "alarm"})
        live.stop()

    threading.Thread(target=write).start()
    got = [c for c in live]
    assert [[r["id"] for r in c.added] for c in got] == [["a1"]]


def test_replicated_revisions_reach_live_queries_and_indexes(db: Any) -> None:
    db.createindex(["site"])
    events: list[Any] = []
    db.observe({"site": "north"}, events.append)
    events.clear()
    rev = "1-" + "ab" * 16
    assert db.db.put_replicated("from-afar", [rev], False, b'{"site":"north","n":1}')
    assert [(r["id"], r["rev"], r["n"]) for r in events.pop().added] == [("from-afar", rev, 1)]
    db.db.flush()
    assert db.explain({"site": "north"})["mynosql"]["examined"] == 1
    assert [r["id"] for r in db.find({"site": "north"})] == ["from-afar"]


def test_a_partial_index_is_used_when_named(db: Any) -> None:
    _readings(db, 60)
    db.createindex(["ts"], name="north-ts", partial_filter_selector={"site": "north"})
    query = {"site": "north", "ts": {"$lt": 10}}
    assert db.explain(query)["mynosql"]["strategy"] == "scan"  # as CouchDB: only use_index picks it
    assert db.explain(query, use_index="north-ts")["index"]["name"] == "north-ts"
    assert [r["id"] for r in db.find(query, use_index="north-ts", sort=["ts"])] == ["r0000", "r0003", "r0006",
                                                                                    "r0009"]
    assert db.indexes()[0].partial_filter_selector == {"site": "north"}
    with pytest.raises(MyNoSQL.InvalidQuery):
        db.createindex(["ts"], partial_filter_selector={"site": {"$bogus": 1}})


@pytest.mark.parametrize("desc", [False, True])
def test_a_live_top_n_always_equals_the_query(db: Any, desc: bool) -> None:
    import random

    rng = random.Random(5)
    db.createindex(["k"])
    sort = [{"k": "desc" if desc else "asc"}]
    selector = {"k": {"$gte": 0}, "on": True}
    live = db.observe(selector, lambda change: None, sort=sort, limit=5)
    for step in range(400):
        id = f"x{rng.randrange(30)}"
        if rng.random() < 0.2 and id in db:
            db.deletedoc(id, db.readdoc(id)["rev"])
        else:
            current = db.readdoc(id) if id in db else {"id": id}
            db.savedoc({**current, "k": rng.randrange(-5, 40), "on": rng.random() < 0.8})
        if step % 97 == 0:
            db.db.flush()
        assert [r["id"] for r in live.results] == [r["id"] for r in db.find(selector, sort=sort, limit=5)], step
    live.stop()


def test_a_live_query_plans_once_and_again_when_the_indexes_change(db: Any) -> None:
    _readings(db, 40)
    q = db.db.queries
    calls: list[Any] = []
    plan = q.plan
    q.plan = lambda *a, **k: calls.append(a) or plan(*a, **k)  # type: ignore[method-assign]
    try:
        live = db.observe({"ts": {"$gte": 30}}, lambda change: None, sort=[{"ts": "desc"}], limit=3)
        for i in range(5):  # each enters the top 3 and pushes the last out; then one leaves it: queried again
            db.savedoc({"id": f"new{i}", "sensor": "s-1", "ts": 100 + i})
        db.deletedoc("new4", db.readdoc("new4")["rev"])
        assert len(calls) == 1 and live._plan[1].kind == "scan"
        db.db.flush()
        db.createindex(["ts"])
        db.deletedoc("new3", db.readdoc("new3")["rev"])  # the query runs again: with the new index
        assert len(calls) == 2 and live._plan[1].kind == "index"
        assert [r["id"] for r in live.results] == ["new2", "new1", "new0"]
        assert live.results == db.find({"ts": {"$gte": 30}}, sort=[{"ts": "desc"}], limit=3)
        live.stop()
    finally:
        del q.plan


@pytest.mark.parametrize("desc", [False, True])
def test_index_rows_come_in_key_order_however_many(db: Any, desc: bool) -> None:
    """find on an index with nothing pending reads only the rows' places, in one text (``qlocs_range``): in key
    then id order, limited or not."""
    for i in range(600):
        db.savedoc({"id": f"k{(i * 7919) % 600:03}", "k": i % 37})
    db.db.flush()
    db.createindex(["k"])
    sort = [{"k": "desc" if desc else "asc"}]
    want = sorted(((r["k"], r["id"]) for r in db), reverse=desc)
    for limit in (None, 1, 50, 599, 600, 1000):
        for _ in range(2):  # read, then from the memo
            got = db.find({"k": {"$gte": 0}}, sort=sort, limit=limit)
            assert [(r["k"], r["id"]) for r in got] == want[:limit]
    assert db.find({"k": {"$gte": 0}}, sort=sort, limit=3, skip=598) == db.find({"k": {"$gte": 0}}, sort=sort)[598:]
