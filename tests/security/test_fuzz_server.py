"""Hostile input against the server routes of a mirror that serves a folder of databases: database names for
PUT/DELETE, _all_dbs, _session, _security, _revs_limit, _purge, _purged_infos(_limit), _all_docs and _changes
parameters (every feed), design document routes. The server answers 2xx or 4xx, never 5xx; no folder appears
outside its root; it serves a legitimate client afterwards."""

from __future__ import annotations

import base64
import http.client
import json
import os
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from support.mirrors import MirrorProcess, free_port

EXAMPLES = int(os.environ.get("MYNOSQL_FUZZ_EXAMPLES", "300")) // 2
PASSWORD = "fuzzer-password"
ADMIN = "Basic " + base64.b64encode(f"root:{PASSWORD}".encode()).decode()
USER = "Basic " + base64.b64encode(f"user:{PASSWORD}".encode()).decode()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MirrorProcess, Path]]:
    base = tmp_path_factory.mktemp("fuzzsrv")
    creds = base / "users.txt"
    creds.write_text(f"root:{PASSWORD}:admin\nuser:{PASSWORD}\n")
    root = base / "root"
    m = MirrorProcess(root, "db", free_port(), [], ["--credentials", str(creds), "--max-auth-failures", "1000000",
                                                    "--cors-origin", "http://app.example"]).start()
    yield m, root
    m.stop()


names = st.one_of(st.sampled_from(["db", "other", "..", ".", "a/b", "%2e%2e", "_users", "_replicator", "A", "a" * 300,
                                   "a$()+-_", "a\x00b", "a%00b", "é", "x y", "-x", "9x", "users.json"]),
                  st.text(max_size=20))
values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=10),
                      lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
                      max_leaves=20)
security = st.one_of(values, st.fixed_dictionaries({}, optional={
    "admins": st.one_of(values, st.fixed_dictionaries({}, optional={"names": values, "roles": values})),
    "members": st.one_of(values, st.fixed_dictionaries({}, optional={"names": values, "roles": values}))}))
purges = st.dictionaries(st.one_of(st.sampled_from(["seed", "_local/x", "_design/d", "a\x00b", "x" * 2000]),
                                   st.text(max_size=10)),
                         st.lists(st.one_of(st.sampled_from(["1-" + "a" * 32, "0-x", "bad", ""]), st.text(max_size=8)),
                                  max_size=3), max_size=5)
queries = st.dictionaries(
    st.sampled_from(["keys", "key", "startkey", "endkey", "start_key", "end_key", "descending", "include_docs",
                     "conflicts", "limit", "skip", "inclusive_end", "feed", "since", "timeout", "heartbeat",
                     "filter", "doc_ids", "style", "batch", "rev", "revs_info", "meta", "update_seq"]),
    st.one_of(st.sampled_from(["true", "false", "0", "-1", "now", "continuous", "eventsource", "longpoll", "_doc_ids",
                               "_design", "_view", "a/b", '["seed1"]', '"seed1"', "[", "1e9", "99999999999999",
                               '{"a":1}']), st.text(max_size=10)),
    max_size=4)
routes = st.sampled_from([
    ("PUT", "/{name}"), ("DELETE", "/{name}"), ("GET", "/{name}"), ("POST", "/{name}"), ("GET", "/_all_dbs"),
    ("POST", "/_session"), ("GET", "/_session"), ("DELETE", "/_session"), ("GET", "/db/_security"),
    ("PUT", "/db/_security"), ("GET", "/db/_revs_limit"), ("PUT", "/db/_revs_limit"), ("POST", "/db/_compact"),
    ("GET", "/db/_all_docs"), ("POST", "/db/_all_docs"), ("GET", "/db/_changes"), ("POST", "/db/_changes"),
    ("GET", "/db/_design/{name}/_view/v"), ("PUT", "/db/_design/{name}"), ("GET", "/db/_design_docs"),
    ("OPTIONS", "/db"), ("GET", "/db/seed"), ("POST", "/{name}/_purge"), ("POST", "/db/_purge"),
    ("GET", "/db/_purged_infos"), ("GET", "/{name}/_purged_infos_limit"), ("PUT", "/db/_purged_infos_limit"),
])


@seed(20261202)
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(route=routes, name=names, query=queries, body=st.one_of(st.none(), security, values, purges),
       auth=st.sampled_from([ADMIN, ADMIN, USER, None, "Basic !!"]),
       origin=st.sampled_from([None, "http://app.example", "http://evil.example"]))
def test_server_routes_answer_2xx_or_4xx(server: tuple[MirrorProcess, Path], route: tuple[str, str], name: str,
                                         query: dict[str, str], body: Any, auth: str | None,
                                         origin: str | None) -> None:
    m, root = server
    method, path = route
    port = int(m.url.rsplit(":", 1)[1])
    target = path.replace("{name}", urllib.parse.quote(name, safe="%"))
    if query:
        target += "?" + urllib.parse.urlencode({k: v for k, v in query.items() if k not in ("timeout",)}
                                               | ({"timeout": "50"} if "feed" in query else {}))
    headers = {"Content-Type": "application/json"}
    if auth is not None:
        headers["Authorization"] = auth
    if origin is not None:
        headers["Origin"] = origin
        headers["Access-Control-Request-Method"] = "GET"
    data = None if body is None else json.dumps(body).encode()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    try:
        try:
            conn.request(method, target, body=data, headers=headers)
        except (UnicodeEncodeError, http.client.InvalidURL, ValueError):
            return  # the client library itself refuses to send this
        resp = conn.getresponse()
        answer = resp.read()
    finally:
        conn.close()
    assert resp.status < 500 or resp.status == 501, (method, target, resp.status, answer[:300])
    assert b"Traceback" not in answer
    outside = [p for p in root.parent.iterdir() if p.name not in ("root", "users.txt")]
    assert not outside, outside  # nothing made beside the root
    for p in root.iterdir():  # inside it: database folders with valid names, and the users
        assert p.name in ("users.json", "server.json") or (p.is_dir() and p.name[0].isalnum()), p


def test_after_the_fuzz_the_server_serves_a_legitimate_client(server: tuple[MirrorProcess, Path]) -> None:
    m, _ = server
    port = int(m.url.rsplit(":", 1)[1])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    try:
        conn.request("PUT", "/db", headers={"Authorization": ADMIN})  # the fuzz may have deleted it
        resp = conn.getresponse()
        assert resp.status in (201, 412)
        resp.read()
        conn.request("PUT", "/db/after-the-fuzz", body=b'{"ok": 1}',
                     headers={"Authorization": ADMIN, "Content-Type": "application/json"})
        resp = conn.getresponse()
        assert resp.status in (201, 409), resp.read()
        resp.read()
        conn.request("GET", "/db/after-the-fuzz", headers={"Authorization": ADMIN})
        resp = conn.getresponse()
        assert resp.status == 200 and json.loads(resp.read())["ok"] == 1
        conn.request("GET", "/_up")
        assert conn.getresponse().status == 200
    finally:
        conn.close()
