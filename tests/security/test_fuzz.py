"""Hostile requests against every route of a real mirror (HTTP on 127.0.0.1): only 2xx/4xx, no crash, no damage.

Besides random shapes, the shapes of the red-team pass (issue 19): reads that ask for the same documents again and
again (``_bulk_get``, ``open_revs``), leaf bombs (many conflicting revisions of one record), bodies of millions of
tiny JSON values (plain and compressed), and floods of connections (idle, half-sent, garbage) from several
addresses, bounded in count and time. After them the mirror answers a legitimate client within 1 s, every record
is intact and within the limits, and the database verifies clean.

Bounded and seeded here (``MYNOSQL_FUZZ_EXAMPLES``, default 300); ``scripts/fuzz`` runs longer.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import http.client
import json
import os
import socket
import time
import urllib.parse
import zlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

import MyNoSQL

EXAMPLES = int(os.environ.get("MYNOSQL_FUZZ_EXAMPLES", "300"))
ANSWERS: Counter[int] = Counter()  # status -> how many answers, over the whole fuzz run
ROUTES_REACHED: set[tuple[str, str]] = set()  # (method, path pattern) answered past the login check
AUTH = "Basic " + base64.b64encode(b"fuzzer:fuzzer-password").decode()
MAX_LEAVES = 20
MAX_CONNECTIONS = 64


@pytest.fixture(scope="module")
def mirror(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MyNoSQL.MyNoSQL, int, Path]]:
    path = tmp_path_factory.mktemp("fuzz")
    # The login throttle is off here: with it, a few bad logins early on would turn every later answer into a 429
    # that never reaches a route (it has its own test in test_mirror_security.py).
    limits = MyNoSQL.Limits(max_longpoll=0.2, max_request_bytes=256 * 1024, max_batch=200, header_timeout=5,
                            max_auth_failures=10**9, max_leaves=MAX_LEAVES, max_answer_bytes=64 * 1024,
                            max_json_values=50_000, max_local_docs=200, max_connections=MAX_CONNECTIONS,
                            max_connections_per_address=16)
    h = MyNoSQL.MyNoSQL(path, options=MyNoSQL.Options(limits=limits, flush_docs=50))
    db = h.opendb("db")
    db.adduser("fuzzer", "fuzzer-password")
    db.adduser("reader", "reader-password", role="reader")
    db.setlisten("127.0.0.1", 0)
    db.setdbmode("Mirror")
    for i in range(20):
        h.savedoc({"id": f"seed{i}", "i": i, "pad": "p" * (i * 1000)})
    url = db.server_url
    assert url is not None
    yield h, int(url.rsplit(":", 1)[1]), path
    h.closedb()


ids = st.one_of(
    st.sampled_from(["seed1", "seed2", "x", "a/b", "..", "a/../b", "_design/x", "_local/y", "%00", "a%00b",
                     "é", "x" * 2000, "", " ", "?", "#"]),
    st.text(min_size=0, max_size=40),
)
tagged = st.sampled_from([{"$date": "garbage"}, {"$int": "xyz"}, {"$dict": 5}, {"$tuple": 5}, {"$set": [[1]]},
                          {"$uuid": "zz"}, {"$bytes": "!!"}, {"$datetime": "2020-01-01T00:00[Nowhere/Zone]"},
                          {"$decimal": "1e999999999"}, {"$date": "2026-11-26"}, {"$int": "1" * 30}])
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20) | tagged,
    lambda kids: st.lists(kids, max_size=5) | st.dictionaries(st.text(max_size=8), kids, max_size=5),
    max_leaves=30,
)
hexes = st.sampled_from(["a" * 32, "b" * 32, "c" * 32, "f" * 32])
revs = st.one_of(st.sampled_from(["1-" + "a" * 32, "2-" + "b" * 32, "0-x", "99999999999-" + "f" * 32, "bad", "", "1-",
                                  "abc"]),
                 st.text(max_size=20))
docs = st.one_of(
    json_values,
    st.fixed_dictionaries({"_id": ids, "_rev": revs}, optional={
        "_deleted": st.one_of(st.booleans(), json_values), "v": json_values, "_attachments": json_values,
        "_revisions": st.one_of(json_values, st.fixed_dictionaries({"start": st.integers(-5, 10**12),
                                                                     "ids": st.lists(st.text(max_size=34))}),
                                # chains over a few known hashes: they share ancestors with what is stored
                                st.integers(1, 4).flatmap(lambda n: st.fixed_dictionaries({
                                    "start": st.just(n), "ids": st.lists(hexes, min_size=n, max_size=n)})))}),
)
bodies = st.one_of(
    st.none(),
    docs.map(lambda d: json.dumps(d).encode()),
    st.fixed_dictionaries({"docs": st.lists(docs, max_size=30)},
                          optional={"new_edits": json_values}).map(lambda d: json.dumps(d).encode()),
    st.dictionaries(ids, st.lists(revs, max_size=5), max_size=10).map(lambda d: json.dumps(d).encode()),
    st.binary(max_size=300),
    st.just(b'{"docs": [' * 2000),  # truncated and deep
    st.just(b"[" * 5000 + b"]" * 5000),
    st.just(json.dumps({"docs": [{"_id": f"many{i}"} for i in range(300)]}).encode()),  # over max_batch
    st.just(b'{"x": "' + b"y" * 300_000 + b'"}'),  # over max_request_bytes
    # the red-team shapes: amplifying reads, leaf bombs, millions of tiny values
    st.integers(1, 200).map(lambda n: json.dumps({"docs": [{"id": "seed19"}] * n}).encode()),
    st.lists(st.sampled_from([f"seed{i}" for i in range(20)]), max_size=200).map(
        lambda ids: json.dumps({"docs": [{"id": i} for i in ids]}).encode()),
    st.tuples(st.sampled_from(["bomb", "seed3"]), st.integers(1, 150), st.integers(0, 10**6)).map(
        lambda b: json.dumps({"docs": [{"_id": b[0], "_rev": f"1-{b[2] + i:032x}"} for i in range(b[1])],
                              "new_edits": False}).encode()),
    st.sampled_from([b"[" + b"[]," * 60_000 + b"[]]", b"[" + b"0," * 100_000 + b"0]",
                     b'{"docs": [' + b"{}," * 70_000 + b"{}]}"]),
)
queries = st.dictionaries(
    st.sampled_from(["since", "limit", "style", "feed", "timeout", "rev", "revs", "open_revs", "latest",
                     "conflicts", "new_edits", "heartbeat"]),
    st.one_of(st.sampled_from(["0", "-1", "now", "99999999999999999999", "all", "true", "false", "longpoll",
                               "all_docs", "[\"1-x\"]", "[", "1e9", "abc",
                               json.dumps(["1-" + "a" * 32] * 40), json.dumps([f"1-{i:032x}" for i in range(40)])]),
              st.text(max_size=10)),
    max_size=4,
)
paths = st.sampled_from([
    "/", "/_up", "/_mirrors", "/_metrics", "/_dashboard", "/_dashboard/data", "/db", "/db/", "/other",
    "/db/_changes", "/db/_revs_diff", "/db/_bulk_get",
    "/db/_bulk_docs", "/db/_ensure_full_commit", "/db/_all_docs", "/db/_local/{id}", "/db/{id}", "/{id}",
    "/db/_design/{id}", "/db/{id}/{id}", "/db/_purge", "/db/_purged_infos", "/db/_purged_infos_limit",
])
encodings = st.one_of(st.none(), st.tuples(st.sampled_from(["gzip", "deflate"]), st.booleans()),
                      st.just(("identity", False)))
auths = st.one_of(st.just(AUTH), st.just(AUTH), st.just(AUTH), st.none(), st.just("Basic !!!"),
                  st.just("Basic " + base64.b64encode(b"reader:reader-password").decode()),
                  st.text(max_size=30).map(lambda t: "Basic " + t))


@seed(20261126)
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(method=st.sampled_from(["GET", "PUT", "POST", "DELETE", "HEAD", "PATCH", "COPY"]), path=paths, id=ids,
       query=queries, body=bodies, auth=auths, encoding=encodings)
def test_every_route_answers_2xx_or_4xx(mirror: Any, method: str, path: str, id: str, query: dict[str, str],
                                        body: bytes | None, auth: str | None,
                                        encoding: tuple[str, bool] | None) -> None:
    h, port, _p = mirror
    seq = h.db.seq
    target = path.replace("{id}", urllib.parse.quote(id, safe="/%"))
    if query:
        target += "?" + urllib.parse.urlencode(query)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    try:
        headers = {"Content-Type": "application/json"}
        if auth is not None:
            headers["Authorization"] = auth
        if encoding is not None and body is not None:
            headers["Content-Encoding"], really = encoding
            if really:  # a body that does decompress (else the header lies about it)
                body = gzip.compress(body) if encoding[0] == "gzip" else zlib.compress(body)
        try:
            conn.request(method, target, body=body, headers=headers)
        except (UnicodeEncodeError, http.client.InvalidURL, ValueError):
            return  # the client library itself refuses to send this
        resp = conn.getresponse()
        data = resp.read()
        ANSWERS[resp.status] += 1
        if resp.status not in (401, 403, 429):
            ROUTES_REACHED.add((method, path))
        assert resp.status < 500, (method, target, resp.status, data[:300])
        if resp.status >= 400:  # a refused request wrote nothing
            assert h.db.seq == seq, (method, target, resp.status, data[:300])
        assert b"Traceback" not in data and b"aiohttp/" not in data and b"Python/" not in data
        if data and method != "HEAD" and resp.getheader("Content-Type", "").startswith("application/json"):
            json.loads(data)  # our answers are JSON (the HTTP parser's own 400s for malformed requests are text)
    finally:
        conn.close()


def _legit_answer_seconds(port: int) -> float:
    """How long a legitimate client (127.0.0.1, the fuzzer's credentials) waits for a record."""
    t0 = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/db/seed3", headers={"Authorization": AUTH})
        resp = conn.getresponse()
        assert resp.status == 200 and json.loads(resp.read())["i"] == 3
    finally:
        conn.close()
    return time.monotonic() - t0


def _open_connections(port: int) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/_metrics", headers={"Authorization": AUTH})
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    return int(next(line for line in text.splitlines() if line.startswith("mynosql_connections ")).split()[1])


floods = st.lists(st.tuples(st.integers(2, 9), st.integers(1, 60),
                            st.sampled_from([b"", b"GET /db HTTP/1.1\r\nHost: x\r\n", b"\x16\x03\x01\x02\x00",
                                             b"GARBAGE\r\n\r\n", b"POST /db/_bulk_docs HTTP/1.1\r\nHost: x\r\n"
                                             b"Content-Length: 100000\r\n\r\n{"])),
                  min_size=1, max_size=6)


@seed(20261202)
@settings(max_examples=max(5, EXAMPLES // 30), deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(flood=floods)
def test_connection_floods_leave_room_for_a_legitimate_client(mirror: Any, flood: list[tuple[int, int, bytes]]
                                                              ) -> None:
    _h, port, _p = mirror
    held: list[socket.socket] = []
    try:
        for last, n, data in flood:  # at most 6 x 60 connections, each opened with a 5 s timeout
            for _ in range(n):
                try:
                    c = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(f"127.0.0.{last}", 0))
                except OSError:
                    continue
                held.append(c)
                if data:
                    with contextlib.suppress(OSError):  # closed by the mirror already: over a limit
                        c.sendall(data)
        assert _legit_answer_seconds(port) < 1.0
        assert _open_connections(port) <= MAX_CONNECTIONS
    finally:
        for c in held:
            c.close()


def test_after_the_fuzz_the_server_is_alive_and_the_database_clean(mirror: Any) -> None:
    h, port, _path = mirror
    # The fuzz reached the routes: most answers came from past the login check, many different routes answered.
    total = sum(ANSWERS.values())
    assert total >= EXAMPLES // 2, ANSWERS
    assert ANSWERS[429] == 0 and ANSWERS[401] < total / 2, ANSWERS
    assert sum(n for status, n in ANSWERS.items() if status < 300) >= total / 20, ANSWERS
    assert len(ROUTES_REACHED) >= min(25, EXAMPLES // 10), sorted(ROUTES_REACHED)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/_up")
    assert conn.getresponse().status == 200
    conn.close()
    assert h.readdoc("seed3")["i"] == 3
    # every record intact (the fuzz writes to seed1 and seed2 itself)
    assert all(h.readdoc(f"seed{i}")["pad"] == "p" * (i * 1000) for i in (0, *range(3, 20)))
    assert all(len(s.bodies) <= MAX_LEAVES for s in h.db.states_since(0))  # no leaf bomb got past the limit
    assert _legit_answer_seconds(port) < 1.0
    h.db.flush()
    assert h.verify() == []
