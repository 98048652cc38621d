"""A mirror answers CouchDB's query routes: ``_index``, ``_find``, ``_explain``, and ``_changes?filter=_selector``."""

from __future__ import annotations

import json
import urllib.error
from pathlib import Path
from typing import Any

import pytest
from support.mirrors import call, wait_until

import MyNoSQL
from MyNoSQL.testing import poll_until


def _load(url: str, n: int = 60) -> None:
    docs = [{"_id": f"r{i:03}", "sensor": f"s-{i % 6}", "ts": i, "site": ["north", "south"][i % 2],
             "tags": ["even" if i % 2 == 0 else "odd"]} for i in range(n)]
    call("POST", f"{url}/_bulk_docs", {"docs": docs})


def test_find_index_and_explain_over_http(mirrors: Any) -> None:
    m = mirrors("iot")
    url = f"{m.url}/iot"
    _load(url)
    query = {"selector": {"sensor": "s-1", "ts": {"$gt": 20}}, "sort": [{"ts": "desc"}], "limit": 3,
             "fields": ["_id", "ts"]}
    scanned = call("POST", f"{url}/_find", query)
    assert scanned["docs"] == [{"_id": "r055", "ts": 55}, {"_id": "r049", "ts": 49}, {"_id": "r043", "ts": 43}]
    assert "No matching index" in scanned["warning"]
    created = call("POST", f"{url}/_index", {"index": {"fields": ["sensor", "ts"]}, "name": "by-sensor",
                                             "ddoc": "q"})
    assert created == {"result": "created", "id": "_design/q", "name": "by-sensor"}
    assert call("POST", f"{url}/_index", {"index": {"fields": ["sensor", "ts"]}, "name": "by-sensor",
                                          "ddoc": "q"})["result"] == "exists"
    wait_until(lambda: "building" not in call("GET", f"{url}/_index")["indexes"][1], what="the index built")
    listed = call("GET", f"{url}/_index")
    assert listed["total_rows"] == 2 and listed["indexes"][0]["name"] == "_all_docs"
    assert listed["indexes"][1] == {"ddoc": "_design/q", "name": "by-sensor", "type": "json",
                                    "def": {"fields": [{"sensor": "asc"}, {"ts": "asc"}]}}
    explained = call("POST", f"{url}/_explain", query)
    assert explained["index"]["name"] == "by-sensor" and explained["mynosql"]["strategy"] == "index"
    assert explained["mynosql"]["ordered"] is True  # examined: 6 rows once flushed, plus records not flushed yet
    found = call("POST", f"{url}/_find", query)
    assert found["docs"] == scanned["docs"] and "warning" not in found
    assert len(call("POST", f"{url}/_find", {"selector": {"site": "north"}})["docs"]) == 25  # CouchDB's limit
    with pytest.raises(urllib.error.HTTPError) as bad:
        call("POST", f"{url}/_find", {"selector": {"ts": {"$bogus": 1}}})
    assert bad.value.code == 400
    assert call("DELETE", f"{url}/_index/_design/q/json/by-sensor") == {"ok": True}
    with pytest.raises(urllib.error.HTTPError) as gone:
        call("DELETE", f"{url}/_index/q/json/by-sensor")
    assert gone.value.code == 404


def test_changes_filtered_by_a_selector(mirrors: Any) -> None:
    m = mirrors("iot")
    url = f"{m.url}/iot"
    _load(url, 12)
    feed = call("POST", f"{url}/_changes?filter=_selector&include_docs=true",
                {"selector": {"site": "north", "ts": {"$lt": 6}}})
    assert [r["id"] for r in feed["results"]] == ["r000", "r002", "r004"]
    assert feed["results"][0]["doc"]["sensor"] == "s-0" and feed["last_seq"] == 12
    # CouchDB's words for a missing selector and for one that is not an object.
    for body, reason in (({"nothing": 1}, "Selector must be specified in POST payload"),
                         ({"selector": [1]}, "Selector error: expected a JSON object")):
        with pytest.raises(urllib.error.HTTPError) as bad:
            call("POST", f"{url}/_changes?filter=_selector", body)
        assert bad.value.code == 400
        assert json.loads(bad.value.read()) == {"error": "bad_request", "reason": reason}


def test_find_over_http_reads_the_index_not_every_record(tmp_path: Path) -> None:
    """A mirror opened with ``strict_queries`` refuses any ``_find`` that would read every record: so one that
    answers read the planner's index (``_explain`` says which), as ``db.find`` does."""
    opts = MyNoSQL.Options(strict_queries=True)
    with MyNoSQL.MyNoSQL(tmp_path / "mirror", options=opts) as h:
        db = h.opendb("iot")
        for i in range(200):
            db.savedoc({"id": f"r{i:03}", "sensor": f"s-{i % 10}", "ts": i})
        db.setlisten("127.0.0.1", 0)
        h.setdbmode("Mirror")
        server = poll_until(lambda: db.status().get("server"), timeout=20, what="the mirror")
        url = f"http://127.0.0.1:{str(server).rsplit(':', 1)[1].strip('/')}/iot"
        query = {"selector": {"sensor": "s-3", "ts": {"$gte": 100}}, "sort": [{"ts": "desc"}], "limit": 4}
        with pytest.raises(urllib.error.HTTPError) as refused:
            call("POST", f"{url}/_find", query)
        assert refused.value.code == 400 and json.loads(refused.value.read())["error"] == "no_usable_index"
        call("POST", f"{url}/_index", {"index": {"fields": ["sensor", "ts"]}, "name": "by-sensor"})
        wait_until(lambda: "building" not in call("GET", f"{url}/_index")["indexes"][1], what="the index built")
        explained = call("POST", f"{url}/_explain", query)
        assert explained["index"]["name"] == "by-sensor"
        assert explained["mynosql"]["strategy"] == "index" and explained["mynosql"]["in_memory_sort"] is False
        for _ in range(2):  # the second time with the plan and the records the first one left
            found = call("POST", f"{url}/_find", query)
            assert [d["_id"] for d in found["docs"]] == ["r193", "r183", "r173", "r163"] and "warning" not in found
            assert found["docs"][0] == {"_id": "r193", "_rev": db.readdoc("r193")["rev"], "sensor": "s-3", "ts": 193}
        db.flush()  # now from the index alone (nothing pending)
        assert call("POST", f"{url}/_find", {**query, "fields": ["_id"]})["docs"][0] == {"_id": "r193"}
        assert call("POST", f"{url}/_explain", query)["mynosql"]["examined"] == 4  # stops at the limit
        with pytest.raises(urllib.error.HTTPError) as still:
            call("POST", f"{url}/_find", {"selector": {"ts": {"$gt": 5}, "sensor": {"$ne": "s-1"}},
                                          "use_index": "nope"})
        assert still.value.code == 400
