"""A mirror serves many databases as a CouchDB server does: created and deleted by server admins, opened when
first used and closed when idle, each with its own _security, _revs_limit and design documents; its changes
feed in every form CouchDB clients use."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from support.mirrors import MirrorProcess, free_port, wait_until

PASSWORD = "correct horse battery"


def request(method: str, url: str, body: Any = None, *, user: str | None = None,
            headers: dict[str, str] | None = None, text: bool = False) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    hdrs = {"Content-Type": "application/json", "Accept": "application/json", **(headers or {})}
    if user is not None:
        hdrs["Authorization"] = "Basic " + base64.b64encode(f"{user}:{PASSWORD}".encode()).decode()
    req = urllib.request.Request(url, data=data, method=method, headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=15) as r:
            raw = r.read()
            return r.status, raw.decode() if text else json.loads(raw or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


@pytest.fixture
def server(tmp_path: Path) -> Any:
    creds = tmp_path / "users.txt"
    creds.write_text(f"root:{PASSWORD}:admin\nalice:{PASSWORD}\ncarol:{PASSWORD}\nbob:{PASSWORD}:reader\n")
    m = MirrorProcess(tmp_path / "srv", None, free_port(), [], ["--credentials", str(creds), "--idle", "1"]).start()
    yield m
    m.stop()


def test_databases_are_created_listed_and_deleted_by_server_admins(server: Any) -> None:
    url = server.url
    assert request("PUT", f"{url}/one", user="alice") == (401, {"error": "unauthorized",
                                                                  "reason": "You are not a server admin."})
    assert request("PUT", f"{url}/one", user="root")[0] == 201
    assert request("PUT", f"{url}/one", user="root")[1]["error"] == "file_exists"
    assert request("PUT", f"{url}/Upper", user="root")[1]["error"] == "illegal_database_name"
    assert request("PUT", f"{url}/_x", user="root")[0] == 400
    assert request("PUT", f"{url}/two", user="root")[0] == 201
    assert request("GET", f"{url}/_all_dbs", user="root") == (200, ["one", "two"])
    assert request("GET", f"{url}/_all_dbs?descending=true&limit=1", user="root") == (200, ["two"])
    status, info = request("GET", f"{url}/one", user="alice")
    assert status == 200 and info["db_name"] == "one" and info["doc_count"] == 0 and "sizes" in info
    assert request("DELETE", f"{url}/one", user="alice")[0] == 401
    assert request("DELETE", f"{url}/one", user="root") == (200, {"ok": True})
    assert request("GET", f"{url}/one", user="root")[1] == {"error": "not_found", "reason": "Database does not exist."}
    assert request("DELETE", f"{url}/one", user="root")[0] == 404
    assert request("GET", f"{url}/_all_dbs", user="root") == (200, ["two"])


def test_security_members_keep_others_out_and_admins_own_design_documents(server: Any) -> None:
    url = server.url
    assert request("PUT", f"{url}/private", user="root")[0] == 201
    assert request("PUT", f"{url}/private/r1", {"v": 1}, user="carol")[0] == 201  # no members yet: any user
    sec = {"admins": {"names": ["alice"], "roles": []}, "members": {"names": ["bob"], "roles": []}}
    assert request("PUT", f"{url}/private/_security", sec, user="carol")[0] == 401  # not an admin of it
    assert request("PUT", f"{url}/private/_security", sec, user="root") == (200, {"ok": True})
    assert request("GET", f"{url}/private/_security", user="root")[1] == sec
    assert request("GET", f"{url}/private/r1", user="carol") == (403, {
        "error": "forbidden", "reason": "You are not allowed to access this db."})
    assert request("GET", f"{url}/private/r1", user="bob")[1]["v"] == 1  # a member (a reader: reads only)
    assert request("PUT", f"{url}/private/r2", {"v": 2}, user="bob")[0] == 403
    design = {"views": {"v": {"map": "function (d) { emit(d.v); }"}}}
    assert request("PUT", f"{url}/private/_design/app", design, user="alice")[0] == 201  # the database's admin
    assert request("PUT", f"{url}/private/_design/app2", design, user="bob")[0] == 403  # a reader writes nothing
    assert request("PUT", f"{url}/private/_revs_limit", 7, user="alice") == (200, {"ok": True})
    assert request("GET", f"{url}/private/_revs_limit", user="bob") == (200, 7)
    status, body = request("GET", f"{url}/private/_design/app/_view/v", user="alice")
    assert status == 501 and body["error"] == "not_implemented"
    assert request("POST", f"{url}/private/_compact", {}, user="alice") == (202, {"ok": True})


def test_an_idle_database_is_closed_and_opened_again_on_use(server: Any) -> None:
    url = server.url
    assert request("PUT", f"{url}/lazy", user="root")[0] == 201
    assert request("PUT", f"{url}/lazy/a", {"v": 1}, user="alice")[0] == 201

    def open_now() -> list[str]:
        data = request("GET", f"{url}/_dashboard/data", user="root")[1]
        return [d["name"] for d in data["databases"]]

    assert "lazy" in open_now()
    wait_until(lambda: "lazy" not in open_now(), timeout=30, what="the idle database closing")
    assert request("GET", f"{url}/lazy/a", user="alice")[1]["v"] == 1  # opened again
    assert "lazy" in open_now()


def test_changes_feed_parameters_and_streams(server: Any) -> None:
    url = server.url
    db = f"{url}/feed"
    assert request("PUT", db, user="root")[0] == 201
    for i in range(5):
        assert request("PUT", f"{db}/d{i}", {"i": i}, user="alice")[0] == 201
    _, body = request("GET", f'{db}/_changes?filter=_doc_ids&doc_ids=["d1","d3"]&include_docs=true',
                      user="alice")
    assert [r["id"] for r in body["results"]] == ["d1", "d3"] and body["results"][1]["doc"]["i"] == 3
    _, body = request("POST", f"{db}/_changes?filter=_doc_ids", {"doc_ids": ["d4"]}, user="alice")
    assert [r["id"] for r in body["results"]] == ["d4"]
    _, body = request("GET", f"{db}/_changes?descending=true&limit=2", user="alice")
    assert [r["id"] for r in body["results"]] == ["d4", "d3"]
    _, text = request("GET", f"{db}/_changes?feed=continuous&since=3&timeout=200", user="alice",
                           text=True)
    lines = [json.loads(x) for x in text.splitlines() if x]
    assert [x.get("id") for x in lines[:-1]] == ["d3", "d4"] and lines[-1]["last_seq"] == 5
    _, text = request("GET", f"{db}/_changes?feed=eventsource&since=4&timeout=200", user="alice",
                           text=True)
    assert text.startswith('data: {"seq":5,"id":"d4"') and "\nid: 5\n\n" in text
    assert request("GET", f"{db}/_changes?filter=app/f", user="alice")[0] == 501  # a JavaScript filter


def test_what_pouchdbs_own_suite_expects_of_couchdb(server: Any) -> None:
    """The CouchDB behaviours PouchDB's integration tests rely on (scripts/pouchdb-suite found them)."""
    url = server.url
    assert request("PUT", f"{url}/a+b", user="root")[0] == 201  # "+" in a name
    assert request("PUT", f"{url}/some%2Ftest", user="root")[0] == 201  # "/" in a name, sent as %2F
    assert request("PUT", f"{url}/some%2Ftest/doc", {"v": 1}, user="alice")[0] == 201
    assert request("GET", f"{url}/some%2Ftest", user="alice")[1]["db_name"] == "some/test"
    assert "some/test" in request("GET", f"{url}/_all_dbs", user="root")[1]
    db = f"{url}/a+b"
    # _revisions names the revision where it and _rev disagree (as CouchDB: a hash repeated along a path)
    status, body = request("POST", f"{db}/_bulk_docs", {"new_edits": False, "docs": [
        {"_id": "r", "_rev": "2-aaaa", "_revisions": {"start": 1, "ids": ["aaaa"]}, "v": 1}]}, user="alice")
    assert status == 201 and request("GET", f"{db}/r", user="alice")[1]["_rev"] == "1-aaaa"
    # a deletion that keeps a body, even of a new document
    status, body = request("PUT", f"{db}/tomb", {"_deleted": True, "integer": 4}, user="alice")
    assert status == 201
    assert request("GET", f"{db}/tomb?rev={body['rev']}", user="alice")[1] == {
        "_id": "tomb", "_rev": body["rev"], "_deleted": True, "integer": 4}
    # _bulk_get with latest=true and a revision that is no leaf: the leaves that descend from it
    first = request("PUT", f"{db}/l", {"v": 1}, user="alice")[1]["rev"]
    second = request("PUT", f"{db}/l", {"v": 2, "_rev": first}, user="alice")[1]["rev"]
    status, body = request("POST", f"{db}/_bulk_get?latest=true&revs=true", {"docs": [{"id": "l", "rev": first}]},
                           user="alice")
    assert [d["ok"]["_rev"] for d in body["results"][0]["docs"]] == [second]
    # an unknown special member fails the request as doc_validation; CouchDB's replicator fields are kept
    assert request("POST", f"{db}/_bulk_docs", {"docs": [{"_id": "z", "_zing": 1}]}, user="alice") == (
        400, {"error": "doc_validation", "reason": "Bad special document member: _zing"})
    fields = {"_replication_id": "abc", "_replication_state": "triggered", "_replication_state_time": 1,
              "_replication_stats": {"docs_read": 1}}
    assert request("PUT", f"{db}/rep", {**fields, "source": "x"}, user="alice")[0] == 201
    kept = request("GET", f"{db}/rep", user="alice")[1]
    assert {k: kept[k] for k in fields} == fields and kept["source"] == "x"
    # a _local document inside _bulk_docs is written as one
    status, body = request("POST", f"{db}/_bulk_docs", {"docs": [{"_id": "_local/ck", "seq": 3}]}, user="alice")
    assert status == 201 and body[0]["ok"] is True and body[0]["id"] == "_local/ck"
    assert request("GET", f"{db}/_local/ck", user="alice")[1]["seq"] == 3
    # the server's uuid is its own, and stays across restarts
    uuid = request("GET", f"{url}/")[1]["uuid"]
    server.stop()
    again = MirrorProcess(server.path, None, free_port(), [], server.extra).start()
    try:
        assert request("GET", f"{again.url}/")[1]["uuid"] == uuid and len(uuid) == 32
    finally:
        again.stop()


def test_a_mirror_of_many_databases_opens_none_until_one_is_used(tmp_path: Path) -> None:
    """Starting reads nothing per database (10,000 of them start as fast as none: bench/many_databases.py): no
    database is opened (none takes its lock file) until a request uses it, and then only that one."""
    import shutil

    import MyNoSQL

    root = tmp_path / "srv"
    with MyNoSQL.MyNoSQL(tmp_path / "template") as h:
        h.opendb("db")
        h.savedoc({"id": "profile", "n": 1})
    for i in range(200):
        shutil.copytree(tmp_path / "template" / "db", root / f"user{i:03d}")
        (root / f"user{i:03d}" / "LOCK").unlink(missing_ok=True)
    m = MirrorProcess(root, None, free_port(), []).start()
    try:
        def open_now() -> list[str]:
            return [d["name"] for d in request("GET", f"{m.url}/_dashboard/data")[1]["databases"]]

        assert open_now() == [] and not list(root.glob("*/LOCK"))
        status, names = request("GET", f"{m.url}/_all_dbs")
        assert status == 200 and len(names) == 200 and names[42] == "user042"
        assert open_now() == [] and not list(root.glob("*/LOCK"))  # listing opens nothing either
        assert request("GET", f"{m.url}/user042/profile")[1]["n"] == 1
        assert open_now() == ["user042"] and [p.parent.name for p in root.glob("*/LOCK")] == ["user042"]
    finally:
        m.stop()
