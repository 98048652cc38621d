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
