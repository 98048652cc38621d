"""Proof that the PouchDB interop harness works: a real express-pouchdb server, spoken to with urllib."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
import uuid
from typing import Any

import pytest
from pouch import (
    PouchReplicationError,
    pouch_replicate,
    pouchdb_server,
)

from MyNoSQL.testing import poll_until

HTTP_TIMEOUT_S = 10.0
FIXED_REV = "1-" + "0123456789abcdef" * 2  # 1-<32 hex>


def http(method: str, url: str, body: Any = None) -> tuple[int, Any]:
    """One JSON request with a timeout; returns (status, decoded body) for 2xx and error statuses alike."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Accept", "application/json")
    if data is not None:
        # express-pouchdb only parses JSON bodies sent as application/json.
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as err:
        with err:
            return err.code, json.loads(err.read() or b"null")


def new_db(base_url: str, prefix: str = "db") -> str:
    """Create a uniquely named database and return its URL."""
    db_url = f"{base_url}/{prefix}-{uuid.uuid4().hex[:12]}"
    status, body = http("PUT", db_url)
    assert (status, body) == (201, {"ok": True})
    return db_url


def all_doc_ids(db_url: str) -> list[str]:
    status, body = http("GET", f"{db_url}/_all_docs")
    assert status == 200, body
    return [row["id"] for row in body["rows"]]


def test_root_is_a_couchdb_style_welcome(pouchdb_url: str) -> None:
    status, body = http("GET", f"{pouchdb_url}/")
    assert status == 200
    assert isinstance(body, dict)
    assert "couchdb" in body or "express-pouchdb" in body, body
    assert body["express-pouchdb"] == "Welcome!"
    assert body["express-pouchdb-mode"] == "fullCouchDB"
    assert body["pouchdb-adapters"] == ["memory"]


def test_put_creates_database(pouchdb_url: str) -> None:
    status, body = http("PUT", f"{pouchdb_url}/testdb")
    assert (status, body) == (201, {"ok": True})
    status, info = http("GET", f"{pouchdb_url}/testdb")
    assert status == 200
    assert info["db_name"] == "testdb"
    assert info["doc_count"] == 0
    status, body = http("PUT", f"{pouchdb_url}/testdb")
    assert status == 412
    assert body["error"] == "file_exists"
    status, dbs = http("GET", f"{pouchdb_url}/_all_dbs")
    assert status == 200
    assert "testdb" in dbs


def test_put_doc_and_get_it_back_with_rev(pouchdb_url: str) -> None:
    db_url = new_db(pouchdb_url)
    status, created = http("PUT", f"{db_url}/doc1", {"name": "alice", "n": 1})
    assert status == 201
    assert created["ok"] is True
    assert created["id"] == "doc1"
    assert created["rev"].startswith("1-")

    status, doc = http("GET", f"{db_url}/doc1")
    assert status == 200
    assert doc == {"_id": "doc1", "_rev": created["rev"], "name": "alice", "n": 1}

    status, missing = http("GET", f"{db_url}/nope")
    assert status == 404
    assert missing["error"] == "not_found"


def test_changes_all_docs_lists_the_doc(pouchdb_url: str) -> None:
    db_url = new_db(pouchdb_url)
    _, created = http("PUT", f"{db_url}/doc1", {"v": 1})
    status, changes = http("GET", f"{db_url}/_changes?style=all_docs")
    assert status == 200
    assert [(row["id"], row["changes"]) for row in changes["results"]] == [
        ("doc1", [{"rev": created["rev"]}])
    ]
    assert changes["last_seq"] == changes["results"][-1]["seq"]


def test_revs_diff_then_bulk_docs_new_edits_false_keeps_the_given_rev(pouchdb_url: str) -> None:
    db_url = new_db(pouchdb_url)
    status, diff = http("POST", f"{db_url}/_revs_diff", {"doc2": [FIXED_REV]})
    assert status == 200
    assert diff == {"doc2": {"missing": [FIXED_REV]}}

    doc = {"_id": "doc2", "_rev": FIXED_REV, "x": 2}
    status, result = http("POST", f"{db_url}/_bulk_docs", {"docs": [doc], "new_edits": False})
    assert status == 201
    assert result == []

    status, stored = http("GET", f"{db_url}/doc2?revs=true")
    assert status == 200
    assert stored["_rev"] == FIXED_REV
    assert stored["x"] == 2
    assert stored["_revisions"] == {"start": 1, "ids": [FIXED_REV.split("-", 1)[1]]}

    status, diff = http("POST", f"{db_url}/_revs_diff", {"doc2": [FIXED_REV]})
    assert (status, diff) == (200, {})

    status, bulk = http("POST", f"{db_url}/_bulk_get?revs=true", {"docs": [{"id": "doc2", "rev": FIXED_REV}]})
    assert status == 200
    assert bulk["results"][0]["docs"][0]["ok"]["_rev"] == FIXED_REV


def test_replicate_js_copies_docs_between_databases(pouchdb_url: str) -> None:
    source = new_db(pouchdb_url, "src")
    target = f"{pouchdb_url}/dst-{uuid.uuid4().hex[:12]}"  # replication creates the target
    expected = [f"doc{i:02d}" for i in range(10)]
    docs = [{"_id": doc_id, "i": i} for i, doc_id in enumerate(expected)]
    status, written = http("POST", f"{source}/_bulk_docs", {"docs": docs})
    assert status == 201
    assert all(row["ok"] for row in written)

    result = pouch_replicate(source, target, timeout=60)
    assert result["ok"] is True
    assert result["exit_code"] == 0
    assert result["docs_read"] == 10
    assert result["docs_written"] == 10
    assert result["errors"] == []

    poll_until(lambda: all_doc_ids(target) == expected, timeout=10, what="replicated docs on target")
    for row in written:
        status, copied = http("GET", f"{target}/{urllib.parse.quote(row['id'])}")
        assert status == 200
        assert copied["_rev"] == row["rev"]

    again = pouch_replicate(source, target, timeout=60)  # checkpointed: nothing new to write
    assert again["ok"] is True
    assert again["docs_written"] == 0


def test_replicate_js_reports_a_missing_source(pouchdb_url: str) -> None:
    missing = f"{pouchdb_url}/missing-{uuid.uuid4().hex[:12]}"
    target = f"{pouchdb_url}/dst-{uuid.uuid4().hex[:12]}"
    result = pouch_replicate(missing, target, timeout=30, check=False)
    assert result["ok"] is False
    assert result["exit_code"] == 1
    assert result["errors"][0]["status"] == 404
    with pytest.raises(PouchReplicationError) as excinfo:
        pouch_replicate(missing, target, timeout=30)
    assert excinfo.value.result["ok"] is False


def test_server_context_manager_stops_and_reaps(pouch_node_modules: None) -> None:
    with pouchdb_server(mode="minimumForPouchDB") as server:
        status, body = http("GET", f"{server.url}/")
        assert status == 200
        assert body["express-pouchdb-mode"] == "minimumForPouchDB"
        process = server.process
        assert process.poll() is None
    assert process.returncode == 0  # clean exit on SIGTERM, already reaped
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"{server.url}/", timeout=HTTP_TIMEOUT_S)


def test_a_leveldb_server_keeps_docs_in_a_folder_it_removes(pouch_node_modules: None) -> None:
    import glob
    import os
    import tempfile

    before = set(glob.glob(os.path.join(tempfile.gettempdir(), "pouchdb-server-*")))
    with pouchdb_server(adapter="leveldb") as server:
        db_url = new_db(server.url)
        assert http("PUT", f"{db_url}/a", {"v": 1})[0] == 201
        status, doc = http("GET", f"{db_url}/a")
        assert status == 200 and doc["v"] == 1
        made = set(glob.glob(os.path.join(tempfile.gettempdir(), "pouchdb-server-*"))) - before
        assert len(made) == 1 and os.listdir(made.pop())  # the database's leveldb files
    assert set(glob.glob(os.path.join(tempfile.gettempdir(), "pouchdb-server-*"))) - before == set()
    with pytest.raises(ValueError), pouchdb_server(adapter="sqlite"):
        pass
