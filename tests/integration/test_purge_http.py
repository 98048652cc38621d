"""CouchDB's purge on a mirror: ``POST /{db}/_purge`` (server admins only, as CouchDB 3), ``_purged_infos``,
``_purged_infos_limit``, ``purge_seq`` in ``GET /{db}``; a purged document is gone from every route, its
attachment bytes are collected by ``_compact``, and replication neither carries the purge nor, from the node that
purged, the document."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from support.mirrors import MirrorProcess, free_port, wait_until

import MyNoSQL

PASSWORD = "correct horse battery"
NOT_SERVER_ADMIN = (401, {"error": "unauthorized", "reason": "You are not a server admin."})


def request(method: str, url: str, body: Any = None, *, user: str | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, Any]:
    data = None if body is None else body if isinstance(body, bytes) else json.dumps(body).encode()
    hdrs = {"Content-Type": "application/json", "Accept": "application/json", **(headers or {})}
    if user is not None:
        hdrs["Authorization"] = "Basic " + base64.b64encode(f"{user}:{PASSWORD}".encode()).decode()
    req = urllib.request.Request(url, data=data, method=method, headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=15) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


@pytest.fixture
def server(tmp_path: Path) -> Any:
    creds = tmp_path / "users.txt"
    creds.write_text(f"root:{PASSWORD}:admin\nalice:{PASSWORD}\nbob:{PASSWORD}\n")
    m = MirrorProcess(tmp_path / "srv", None, free_port(), [], ["--credentials", str(creds)]).start()
    yield m
    m.stop()


def test_purge_removes_documents_and_leaves_as_couchdb(server: Any) -> None:
    url = f"{server.url}/db"
    assert request("PUT", url, user="root")[0] == 201
    _, a = request("PUT", f"{url}/a", {"v": 1}, user="root")
    _, b = request("PUT", f"{url}/b", {"v": 1}, user="root")
    # "c": two conflicting leaves, as a replicator writes them
    docs = [{"_id": "c", "_rev": "2-" + h * 32, "v": h, "_revisions": {"start": 2, "ids": [h * 32, "1" * 32]}}
            for h in "ab"]
    assert request("POST", f"{url}/_bulk_docs", {"docs": docs, "new_edits": False}, user="root")[0] == 201
    _, info = request("GET", url, user="root")
    assert info["purge_seq"] == 0
    before = info["update_seq"]
    status, out = request("POST", f"{url}/_purge", {"a": [a["rev"], "9-" + "f" * 32], "c": ["2-" + "b" * 32],
                                                    "nobody": ["1-" + "0" * 32], "b": ["1-" + "0" * 32]},
                          user="root")
    assert status == 201
    assert out == {"purge_seq": None, "purged": {"a": [a["rev"]], "c": ["2-" + "b" * 32], "nobody": [], "b": []}}
    assert request("GET", f"{url}/a", user="root") == (404, {"error": "not_found", "reason": "missing"})
    assert request("GET", f"{url}/c", user="root")[1]["_rev"] == "2-" + "a" * 32
    assert "_conflicts" not in request("GET", f"{url}/c?conflicts=true", user="root")[1]
    _, all_docs = request("GET", f"{url}/_all_docs", user="root")
    assert [r["id"] for r in all_docs["rows"]] == ["b", "c"]
    _, changes = request("GET", f"{url}/_changes?since={before}", user="root")
    assert [r["id"] for r in changes["results"]] == ["c"]  # the purge of a leaf is a change; a whole purge is none
    _, changes = request("GET", f"{url}/_changes", user="root")
    assert sorted(r["id"] for r in changes["results"]) == ["b", "c"]
    _, info = request("GET", url, user="root")
    assert info["purge_seq"] == 2 and info["doc_count"] == 2 and info["doc_del_count"] == 0
    assert info["update_seq"] > before
    assert request("GET", f"{url}/_purged_infos", user="root") == (200, {"purged_infos": [
        {"id": "a", "revs": [a["rev"]]}, {"id": "c", "revs": ["2-" + "b" * 32]}]})
    # _revs_diff: a purged revision is missing again (a replicator may bring it back)
    assert request("POST", f"{url}/_revs_diff", {"a": [a["rev"]]}, user="root")[1] == {"a": {"missing": [a["rev"]]}}
    # the document can be created again, as new
    status, again = request("PUT", f"{url}/a", {"v": 2}, user="root")
    assert status == 201 and again["rev"].startswith("1-")
    assert b["ok"]


def test_purge_is_for_server_admins_only(server: Any) -> None:
    url = f"{server.url}/db"
    assert request("PUT", url, user="root")[0] == 201
    sec = {"admins": {"names": ["alice"], "roles": []}, "members": {"names": ["bob"], "roles": []}}
    assert request("PUT", f"{url}/_security", sec, user="root")[0] == 200
    _, a = request("PUT", f"{url}/a", {"v": 1}, user="alice")
    body = {"a": [a["rev"]]}
    for user in ("alice", "bob"):  # the database's admin too: CouchDB's require_admin
        assert request("POST", f"{url}/_purge", body, user=user) == NOT_SERVER_ADMIN
        assert request("GET", f"{url}/_purged_infos_limit", user=user) == NOT_SERVER_ADMIN
        assert request("PUT", f"{url}/_purged_infos_limit", 5, user=user) == NOT_SERVER_ADMIN
    assert request("POST", f"{url}/_purge", body)[0] == 401  # no credentials at all
    assert request("GET", f"{url}/a", user="bob")[1]["_rev"] == a["rev"]  # nothing was purged
    assert request("POST", f"{url}/_purge", body, user="root")[1]["purged"] == body
    assert request("GET", f"{url}/_purged_infos", user="bob")[0] == 200  # a member may read it, as CouchDB
    assert request("GET", f"{server.url}/none/_purge", user="root")[0] in (404, 405)
    assert request("POST", f"{server.url}/none/_purge", body, user="root")[0] == 404


def test_purge_requests_are_checked(server: Any) -> None:
    url = f"{server.url}/db"
    assert request("PUT", url, user="root")[0] == 201
    _, a = request("PUT", f"{url}/a", {"v": 1}, user="root")
    assert request("GET", f"{url}/_purge", user="root") == (405, {"error": "method_not_allowed",
                                                                   "reason": "Only POST allowed"})
    assert request("POST", f"{url}/_purge", {"a": [a["rev"]]}, user="root",
                   headers={"Content-Type": "text/plain"})[0] == 415
    for bad in ([["a", a["rev"]]], {"a": a["rev"]}, {"a": [1]}, {"a": ["not-a-rev"]}, {"a\x00b": [a["rev"]]}):
        assert request("POST", f"{url}/_purge", bad, user="root")[0] == 400, bad
    assert request("POST", f"{url}/_purge", b"{not json", user="root")[0] == 400
    assert request("POST", f"{url}/_purge", {f"d{i}": [] for i in range(20_000)}, user="root")[0] == 413
    assert request("POST", f"{url}/_purge", {"a": ["1-" + "0" * 32] * 20_000}, user="root")[0] == 413
    assert request("POST", f"{url}/_purge", {"_local/x": [a["rev"]]}, user="root") == (
        201, {"purge_seq": None, "purged": {"_local/x": []}})
    assert request("GET", f"{url}/a", user="root")[1]["_rev"] == a["rev"]
    for name in ("Upper", "_users", "_x", "a" * 300, "a%00b", "..", "-x", "a%2Fb%2F..%2F..%2Fetc"):
        for route in ("_purge", "_purged_infos", "_purged_infos_limit"):
            method = "POST" if route == "_purge" else "GET"
            status, answer = request(method, f"{server.url}/{name}/{route}", {"a": [a["rev"]]}, user="root")
            assert status in (400, 404), (name, route, status, answer)
            assert answer["error"] in ("illegal_database_name", "not_found"), (name, route, answer)
    # _purged_infos_limit
    assert request("GET", f"{url}/_purged_infos_limit", user="root") == (200, 1000)
    for bad_limit in (0, -1, "5", 1.5, None, [5]):
        assert request("PUT", f"{url}/_purged_infos_limit", bad_limit, user="root")[0] == 400, bad_limit
    assert request("PUT", f"{url}/_purged_infos_limit", 5, user="root") == (200, {"ok": True})
    assert request("GET", f"{url}/_purged_infos_limit", user="root") == (200, 5)
    assert request("DELETE", f"{url}/_purged_infos_limit", user="root")[0] == 405


def test_compaction_frees_the_attachments_of_purged_documents(server: Any, tmp_path: Path) -> None:
    url = f"{server.url}/db"
    assert request("PUT", url, user="root")[0] == 201
    shared, own = b"s" * 5000, bytes(range(256)) * 20
    att = {"s": {"content_type": "text/plain", "data": base64.b64encode(shared).decode()}}
    _, a = request("PUT", f"{url}/a", {"_attachments": {
        **att, "o": {"content_type": "application/octet-stream", "data": base64.b64encode(own).decode()}}},
        user="root")
    request("PUT", f"{url}/b", {"_attachments": att}, user="root")
    folder = tmp_path / "srv" / "db" / "attachments"

    def blobs() -> int:
        return sum(1 for p in folder.rglob("*") if p.is_file() and len(p.name) == 64)

    assert blobs() == 2
    assert request("POST", f"{url}/_purge", {"a": [a["rev"]]}, user="root")[0] == 201
    assert request("GET", f"{url}/a/o", user="root")[0] == 404
    assert request("POST", f"{url}/_compact", b"{}", user="root")[0] == 202
    wait_until(lambda: blobs() == 1, what="the purged document's own attachment collected")
    status, _ = request("GET", f"{url}/b", user="root")
    assert status == 200
    with urllib.request.urlopen(urllib.request.Request(f"{url}/b/s", headers={
            "Authorization": "Basic " + base64.b64encode(f"root:{PASSWORD}".encode()).decode()}), timeout=15) as r:
        assert r.read() == shared


def test_a_purge_does_not_replicate_and_a_replica_brings_the_document_back(server: Any, tmp_path: Path) -> None:
    """As CouchDB: purge is local. A node that purged a document never sends it again; a replica that still has it
    sends it back when replicated from, unless it is purged there too."""
    remote = f"http://root:{PASSWORD.replace(' ', '%20')}@127.0.0.1:{server.port}/db"
    opts = MyNoSQL.Options(background_sync=False)
    with MyNoSQL.MyNoSQL(tmp_path / "local", options=opts) as db:
        db.opendb("db")
        x = db.savedoc({"id": "x", "v": 1})
        db.savedoc({"id": "y", "v": 1})
        w = db.savedoc({"id": "w", "v": 1})
        assert db.purge("w", [w["rev"]]) == [w["rev"]]  # purged before it was ever pushed: it never is
        db.push(remote)
        assert request("GET", f"{server.url}/db/w", user="root")[0] == 404
        assert db.purge("x", [x["rev"]]) == [x["rev"]]
        db.savedoc({"id": "z", "v": 1})
        db.push(remote)
        assert request("GET", f"{server.url}/db/x", user="root")[1]["_rev"] == x["rev"]  # the purge stays here
        db.pull(remote)  # the mirror still has x: it comes back
        assert db.readdoc("x") == x
        # purged on both sides: gone for good
        assert db.purge("x", [x["rev"]]) == [x["rev"]]
        assert request("POST", f"{server.url}/db/_purge", {"x": [x["rev"]]}, user="root")[1]["purged"] == {
            "x": [x["rev"]]}
        db.pull(remote)
        db.push(remote)
        with pytest.raises(MyNoSQL.DocumentNotFound):
            db.readdoc("x")
        assert request("GET", f"{server.url}/db/x", user="root")[0] == 404
        _, all_docs = request("GET", f"{server.url}/db/_all_docs", user="root")
        assert [r["id"] for r in all_docs["rows"]] == ["y", "z"]
