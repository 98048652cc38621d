"""What a red-team pass against `mynosql serve` got through (issue 19), scaled down, each against real processes.

Attacks come from their own loopback addresses (127.0.0.x, x >= 10); the legitimate client is 127.0.0.1. After
each attack the mirror answers the legitimate client within 1 s and every record is intact (``healthy``), and a
mirror's database verifies clean once it has stopped.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import http.client
import json
import re
import socket
import ssl
import threading
import time
import types
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from support.mirrors import MirrorProcess, free_port, wait_until

import MyNoSQL
from MyNoSQL.replication.endpoints import pull_checkpoint_id, push_checkpoint_id

PASSWORD = "correct horse battery"
LEGIT = "127.0.0.1"


class Serve(MirrorProcess):
    """A `mynosql serve` process of database "db" on a free port, with more options."""

    def __init__(self, path: Path, extra: list[str], ctx: ssl.SSLContext | None = None) -> None:
        super().__init__(path, "db", free_port(), [], extra)
        self.ctx = ctx  # a TLS mirror's clients trust this

    def rss(self) -> int:
        assert self.proc is not None
        return int(psutil.Process(self.proc.pid).memory_info().rss)

    def fds(self) -> int:
        assert self.proc is not None
        return int(psutil.Process(self.proc.pid).num_fds())

    def verify_after_stop(self) -> None:
        self.stop()
        h = MyNoSQL.MyNoSQL(self.path, options=MyNoSQL.Options(background_sync=False))
        h.opendb("db")
        try:
            assert h.verify() == []
            for i in range(3):
                assert h.readdoc(f"sentinel-{i}")["i"] == i
        finally:
            h.closedb()


def auth(user: str, password: str = PASSWORD) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def call(server: Serve, method: str, path: str, body: Any = None, *, user: str | None = "alice",
         password: str = PASSWORD, source: str = LEGIT, raw: bytes | None = None,
         headers: dict[str, str] | None = None, timeout: float = 30) -> tuple[int, bytes]:
    """One request from ``source`` (a loopback address); (status, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=timeout, source_address=(source, 0)) \
        if server.ctx is None else \
        http.client.HTTPSConnection("127.0.0.1", server.port, timeout=timeout, source_address=(source, 0),
                                    context=server.ctx)
    try:
        hdrs = {"Content-Type": "application/json", **(headers or {})}
        if user is not None:
            hdrs["Authorization"] = auth(user, password)
        data = raw if raw is not None else None if body is None else json.dumps(body).encode()
        conn.request(method, path, body=data, headers=hdrs)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def jcall(server: Serve, method: str, path: str, body: Any = None, **kw: Any) -> tuple[int, Any]:
    status, data = call(server, method, path, body, **kw)
    return status, json.loads(data) if data else None


def metric(server: Serve, name: str, **labels: str) -> float:
    status, data = call(server, "GET", "/_metrics")
    assert status == 200
    lab = ",".join(f'{k}="{v}"' for k, v in labels.items())
    m = re.search(rf"^{re.escape(name)}{re.escape('{' + lab + '}') if lab else ''} (\S+)$", data.decode(), re.M)
    return float(m.group(1)) if m else 0.0


def seed(server: Serve) -> None:
    for i in range(3):
        assert call(server, "PUT", f"/db/sentinel-{i}", {"i": i})[0] == 201


def healthy(server: Serve) -> None:
    """The legitimate client is answered within 1 s, and the records are intact."""
    t0 = time.monotonic()
    status, doc = jcall(server, "GET", "/db/sentinel-1", timeout=5)
    assert status == 200 and doc["i"] == 1, (status, doc)
    assert time.monotonic() - t0 < 1.0, f"answered in {time.monotonic() - t0:.2f} s"


def closed_by_server(sock: socket.socket, within: float) -> bool:
    """Whether the server closes ``sock`` within ``within`` seconds (reset or end of stream)."""
    sock.settimeout(within)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


@pytest.fixture(scope="module")
def creds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    f = tmp_path_factory.mktemp("creds") / "users.txt"
    f.write_text(f"alice:{PASSWORD}\nbob:{PASSWORD}:reader\n")
    return f


@pytest.fixture(scope="module")
def mirror(tmp_path_factory: pytest.TempPathFactory, creds: Path) -> Iterator[Serve]:
    """One mirror for the attacks on records and reads (small limits)."""
    s = Serve(tmp_path_factory.mktemp("mirror"), [
        "--credentials", str(creds), "--max-batch", "100", "--max-leaves", "150", "--max-answer-bytes", "400000",
        "--max-connections", "60", "--max-connections-per-address", "16"]).start()
    assert isinstance(s, Serve)
    seed(s)
    yield s
    s.verify_after_stop()


# -- 1. checkpoints --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_rewritten_checkpoint_never_makes_a_pulling_mirror_skip_records(tmp_path: Path, creds: Path) -> None:
    # B pulls from A. While B is down, a user who may write _local documents on A rewrites the checkpoint B keeps
    # there: same session, a later source_last_seq. B must still get every record written meanwhile.
    a = Serve(tmp_path / "a", ["--credentials", str(creds)]).start()
    assert isinstance(a, Serve)
    peer = a.url.replace("http://", f"http://alice:{PASSWORD.replace(' ', '%20')}@")
    b = Serve(tmp_path / "b", ["--peer", peer])
    try:
        seed(a)
        b.start()
        uuid = json.loads((tmp_path / "b" / "db" / "config.json").read_text())["uuid"]
        rep_id = pull_checkpoint_id(types.SimpleNamespace(name="db", uuid=uuid), a.url)  # B's pull from A
        wait_until(lambda: jcall(b, "GET", "/db", user=None)[1]["doc_count"] == 3
                   and jcall(a, "GET", f"/db/_local/{rep_id}")[0] == 200, what="B pulled, checkpointed on A")
        b.stop()
        for i in range(5):
            assert call(a, "PUT", f"/db/meanwhile-{i}", {"i": i})[0] == 201
        status, ck = jcall(a, "GET", f"/db/_local/{rep_id}")
        assert status == 200
        seq = jcall(a, "GET", "/db")[1]["update_seq"]
        ck["source_last_seq"] = seq
        ck["history"][0]["recorded_seq"] = seq
        assert call(a, "PUT", f"/db/_local/{rep_id}", ck)[0] == 201  # the forgery (same session, later seq)
        b.start()
        wait_until(lambda: jcall(b, "GET", "/db", user=None)[1]["doc_count"] == 8, timeout=20,
                   what="B pulled the records written while it was down")
        assert all(jcall(b, "GET", f"/db/meanwhile-{i}", user=None)[0] == 200 for i in range(5))
    finally:
        b.stop()
        a.stop()


def test_a_reader_pulls_with_its_checkpoint_on_its_own_side(mirror: Serve, tmp_path: Path) -> None:
    # A reader may not write _local documents on the mirror (403): the pull goes on, keeps its checkpoint on its
    # own side only (marked source_readonly), and the next pull resumes from it.
    url = mirror.url.replace("http://", f"http://bob:{PASSWORD.replace(' ', '%20')}@")
    h = MyNoSQL.MyNoSQL(tmp_path / "reader", options=MyNoSQL.Options(background_sync=False))
    db = h.opendb("db")
    try:
        first = h.pull(url)
        assert first["docs_written"] >= 3 and first["errors"] == []
        assert h.readdoc("sentinel-2")["i"] == 2
        rep_id = pull_checkpoint_id(db, mirror.url)
        mine = db.local_get(rep_id)
        assert mine is not None and mine["source_readonly"] is True and mine["source_last_seq"] == first["last_seq"]
        assert jcall(mirror, "GET", f"/db/_local/{rep_id}")[0] == 404  # nothing of it on the mirror
        assert call(mirror, "PUT", "/db/after-first-pull", {"v": 1})[0] == 201
        second = h.pull(url)
        assert second["start_seq"] == first["last_seq"]  # resumed, not read again from the start
        assert second["docs_written"] == 1 and h.readdoc("after-first-pull")["v"] == 1
    finally:
        h.closedb()
    healthy(mirror)


def test_a_planted_target_checkpoint_is_never_trusted_alone(mirror: Serve, tmp_path: Path) -> None:
    # A replicator-role user plants on the mirror the checkpoint of a peer's future push, claiming a read-only
    # source and a far position: the peer's source takes a checkpoint, so the planted one is ignored.
    h = MyNoSQL.MyNoSQL(tmp_path / "pusher", options=MyNoSQL.Options(background_sync=False))
    db = h.opendb("db")
    try:
        for i in range(4):
            h.savedoc({"id": f"pushed-{i}", "i": i})
        rep_id = push_checkpoint_id(db, mirror.url)
        planted = {"session_id": "s", "source_last_seq": 10**6, "source_readonly": True,
                   "history": [{"session_id": "s", "recorded_seq": 10**6}]}
        assert call(mirror, "PUT", f"/db/_local/{rep_id}", planted)[0] == 201
        result = h.push(mirror.url.replace("http://", f"http://alice:{PASSWORD.replace(' ', '%20')}@"))
        assert result["start_seq"] == 0 and result["docs_written"] == 4
    finally:
        h.closedb()
    assert all(jcall(mirror, "GET", f"/db/pushed-{i}")[1]["i"] == i for i in range(4))


# -- 2, 6. connection floods -----------------------------------------------------------------------------------


def test_an_idle_flood_leaves_room_for_others_and_is_logged_in_one_line(tmp_path: Path, creds: Path) -> None:
    s = Serve(tmp_path / "flood", ["--credentials", str(creds), "--max-connections", "40",
                                   "--max-connections-per-address", "8"]).start()
    assert isinstance(s, Serve)
    held: list[socket.socket] = []
    try:
        seed(s)
        fds = s.fds()
        # 300 idle connections from one address: 8 are held, the others closed at once
        for _ in range(300):
            held.append(socket.create_connection(("127.0.0.1", s.port), timeout=5, source_address=("127.0.0.20", 0)))
        healthy(s)
        assert metric(s, "mynosql_limit_refusals_total", limit="max_connections_per_address") >= 292
        assert metric(s, "mynosql_connections") <= 8 + 2  # the flood's 8 and the metrics request itself
        # every address holding its 8: the total cap (40) is reached, a newcomer still gets in
        for n in range(21, 27):
            for _ in range(8):
                held.append(socket.create_connection(("127.0.0.1", s.port), timeout=5,
                                                     source_address=(f"127.0.0.{n}", 0)))
        healthy(s)
        assert s.fds() <= fds + 40 + 5  # bounded by the cap, whatever was opened
        assert metric(s, "mynosql_connections") <= 40
    finally:
        for c in held:
            c.close()
    healthy(s)
    s.verify_after_stop()
    log = "".join(s.log)
    assert "Traceback" not in log and "AssertionError" not in log
    refusals = [line for line in s.log if "refused" in line]
    assert 1 <= len(refusals) <= 2, refusals  # the first at once; then at most one summary a minute
    assert len(log.encode()) < 20_000


@pytest.mark.slow
def test_tls_clients_that_never_say_hello_are_counted_and_cut_off(tmp_path: Path, creds: Path) -> None:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "server.key"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    ctx = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
    s = Serve(tmp_path / "tls", ["--credentials", str(creds), "--cert", str(tmp_path / "server.pem"),
                                 "--key", str(tmp_path / "server.key"), "--tls-handshake-timeout", "1",
                                 "--max-connections", "30", "--max-connections-per-address", "8"], ctx).start()
    assert isinstance(s, Serve) and s.url.startswith("https://")
    silent: list[socket.socket] = []
    try:
        seed(s)  # logged in (the slow hash is behind us)
        fds = s.fds()
        t0 = time.monotonic()
        for _ in range(200):  # never a ClientHello
            silent.append(socket.create_connection(("127.0.0.1", s.port), timeout=5, source_address=("127.0.0.30", 0)))
        healthy(s)
        assert s.fds() <= fds + 8 + 5
        assert all(closed_by_server(c, max(0.1, t0 + 4 - time.monotonic())) for c in silent)  # 1 s + slack
        assert metric(s, "mynosql_limit_refusals_total", limit="tls_handshake") >= 8
        assert metric(s, "mynosql_limit_refusals_total", limit="max_connections_per_address") >= 150
    finally:
        for c in silent:
            c.close()
        s.verify_after_stop()
    assert "Traceback" not in "".join(s.log)


# -- 3. amplifying reads ---------------------------------------------------------------------------------------


def test_bulk_get_and_open_revs_answer_each_revision_once_bounded_and_streamed(mirror: Serve) -> None:
    big = {"pad": "x" * 300_000}
    for id in ("big-a", "big-b"):
        assert call(mirror, "PUT", f"/db/{id}", big)[0] == 201
    rev = jcall(mirror, "GET", "/db/big-a")[1]["_rev"]
    status, data = call(mirror, "POST", "/db/_bulk_get?revs=true", {"docs": [{"id": "big-a", "rev": rev}] * 100},
                        source="127.0.0.40")
    assert status == 200 and len(data) < 2 * 300_000, len(data)  # one copy, not 100
    results = json.loads(data)["results"]
    assert len(results) == 1 and results[0]["docs"][0]["ok"]["pad"] == big["pad"]
    status, data = call(mirror, "GET", f"/db/big-a?open_revs={urllib.parse.quote(json.dumps([rev] * 40))}",
                        source="127.0.0.40")
    assert status == 200 and len(json.loads(data)) == 1
    # two different records of 300 KB: over the 400,000 bytes an answer may have
    status, body = jcall(mirror, "POST", "/db/_bulk_get", {"docs": [{"id": "big-a"}, {"id": "big-b"}]},
                         source="127.0.0.40")
    assert status == 413 and body["error"] == "too_large" and "fewer documents" in body["reason"]
    assert metric(mirror, "mynosql_limit_refusals_total", limit="max_answer_bytes") >= 1
    # one document is always answered, streamed when large; asking for it 100 times costs what once does
    huge = {"pad": "y" * 1_500_000}
    assert call(mirror, "PUT", "/db/huge", huge)[0] == 201
    rss = mirror.rss()
    for _ in range(3):
        status, data = call(mirror, "POST", "/db/_bulk_get?revs=true", {"docs": [{"id": "huge"}] * 100},
                            source="127.0.0.40")
        assert status == 200 and len(data) < 2 * 1_500_000
        assert json.loads(data)["results"][0]["docs"][0]["ok"]["pad"] == huge["pad"]
        status, data = call(mirror, "GET", "/db/huge?open_revs=all&revs=true", source="127.0.0.40")
        assert status == 200 and json.loads(data)[0]["ok"]["pad"] == huge["pad"]
    assert mirror.rss() - rss < 64 * 1024 * 1024, (rss, mirror.rss())
    healthy(mirror)


# -- 4, 9. the login throttle ----------------------------------------------------------------------------------


async def _guesses(port: int, source: str, n: int, right_at: int | None = None) -> Counter[int]:
    """``n`` logins as alice at once from ``source``, each on its own connection (the ``right_at``-th with the
    right password); how many got each status."""

    async def one(i: int) -> int:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
        try:
            password = PASSWORD if i == right_at else f"guess {i}"
            writer.write(f"GET /db HTTP/1.1\r\nHost: x\r\nAuthorization: {auth('alice', password)}\r\n"
                         "Connection: close\r\n\r\n".encode())
            line = await asyncio.wait_for(reader.readline(), 60)
            return int(line.split()[1])
        finally:
            writer.close()

    return Counter(await asyncio.gather(*(one(i) for i in range(n))))


@pytest.mark.slow
def test_parallel_guesses_are_counted_before_the_hash_which_never_slows_others(tmp_path: Path, creds: Path) -> None:
    s = Serve(tmp_path / "auth", ["--credentials", str(creds), "--max-connections", "1000",
                                  "--max-connections-per-address", "1000"]).start()
    assert isinstance(s, Serve)
    try:
        seed(s)  # alice logged in from 127.0.0.1 (her credentials verified once)
        got = asyncio.run(_guesses(s.port, "127.0.0.41", 100, right_at=95))
        assert got[401] + got[200] <= 10 + 1 and got[429] >= 89, got  # checked: at most max_auth_failures
        assert call(s, "GET", "/db", source="127.0.0.41")[0] == 429  # the right password too, for a while
        got = asyncio.run(_guesses(s.port, "127.0.0.42", 400))
        assert got[401] <= 10 and got[429] >= 390, got
        # A flood of guesses from several addresses (each checked, 10 each: ~40 slow hashes) never slows a
        # client whose credentials are verified: its reads never wait behind the hashes.
        flood = threading.Thread(target=lambda: [asyncio.run(_guesses(s.port, f"127.0.0.{n}", 30))
                                                 for n in range(43, 47)])
        flood.start()
        slowest = 0.0
        try:
            for _ in range(500):  # bounded: the flood takes a few seconds
                if not flood.is_alive():
                    break
                t0 = time.monotonic()
                assert call(s, "GET", "/db/sentinel-1")[0] == 200
                slowest = max(slowest, time.monotonic() - t0)
        finally:
            flood.join(timeout=120)
        assert slowest < 1.0, slowest
        healthy(s)
    finally:
        s.stop()


def test_anonymous_requests_never_lock_an_address_out(mirror: Serve) -> None:
    for _ in range(20):  # a browser, a misconfigured client: 401, not a failed login
        assert call(mirror, "GET", "/db", user=None, source="127.0.0.60")[0] == 401
    assert call(mirror, "GET", "/db", source="127.0.0.60")[0] == 200


# -- 5. leaf bombs ---------------------------------------------------------------------------------------------


def test_a_leaf_bomb_is_bounded_and_replication_goes_on(mirror: Serve, tmp_path: Path) -> None:
    before = metric(mirror, "mynosql_limit_refusals_total", limit="max_leaves")
    answers: Counter[str] = Counter()
    for batch in range(3):  # 300 conflicting leaves of one record, against a limit of 150
        docs = [{"_id": "bomb", "_rev": f"1-{batch * 100 + i:032x}", "n": batch * 100 + i} for i in range(100)]
        status, body = jcall(mirror, "POST", "/db/_bulk_docs", {"docs": docs, "new_edits": False},
                             source="127.0.0.50")
        assert status == 201
        answers.update(r.get("error", "ok") for r in body)
        answers["ok"] += 100 - len(body)
    assert answers == {"ok": 150, "forbidden": 150}, answers
    assert metric(mirror, "mynosql_limit_refusals_total", limit="max_leaves") - before == 150
    status, row = jcall(mirror, "GET", "/db/_changes?style=all_docs&since=0")
    assert len(next(r for r in row["results"] if r["id"] == "bomb")["changes"]) == 150
    healthy(mirror)
    # A pull from it: 150 revisions in one batch, over the mirror's 100 per _bulk_get (413): split, not retried
    h = MyNoSQL.MyNoSQL(tmp_path / "puller", options=MyNoSQL.Options(background_sync=False))
    h.opendb("db")
    try:
        result = h.pull(mirror.url.replace("http://", f"http://alice:{PASSWORD.replace(' ', '%20')}@"))
        assert result["errors"] == []
        assert len(h.conflicts("bomb")) == 149
    finally:
        h.closedb()


def test_the_replicator_halves_a_batch_refused_as_too_large(mirror: Serve, tmp_path: Path) -> None:
    # 6 records of 150 KB: one batch of them is over the mirror's 400,000-byte answers; pushed back through a
    # mirror whose requests may be 200 KB at most.
    for i in range(6):
        assert call(mirror, "PUT", f"/db/wide-{i}", {"pad": str(i) * 150_000})[0] == 201
    h = MyNoSQL.MyNoSQL(tmp_path / "halves", options=MyNoSQL.Options(background_sync=False))
    h.opendb("db")
    h2 = MyNoSQL.MyNoSQL(tmp_path / "pusher", options=MyNoSQL.Options(background_sync=False))
    h2.opendb("db")
    small = Serve(tmp_path / "small", ["--max-request-bytes", "200000"]).start()
    try:
        url = mirror.url.replace("http://", f"http://alice:{PASSWORD.replace(' ', '%20')}@")
        assert h.pull(url)["errors"] == []
        assert all(h.readdoc(f"wide-{i}")["pad"] == str(i) * 150_000 for i in range(6))
        for i in range(6):
            h2.savedoc({"id": f"wide-{i}", "pad": str(i) * 150_000})
        assert h2.push(small.url)["docs_written"] == 6
        assert all(jcall(small, "GET", f"/db/wide-{i}", user=None)[0] == 200 for i in range(6))
    finally:
        small.stop()
        h.closedb()
        h2.closedb()


# -- 7, 8. local documents, inflating bodies -------------------------------------------------------------------


def test_local_documents_are_bounded_in_size_and_number(tmp_path: Path, creds: Path) -> None:
    s = Serve(tmp_path / "limits", ["--credentials", str(creds), "--max-local-docs", "5",
                                    "--max-local-bytes", "4096"]).start()
    assert isinstance(s, Serve)
    try:
        seed(s)
        assert call(s, "PUT", "/db/_local/r", {"v": 1}, user="bob")[0] == 403  # a reader writes none
        status, body = jcall(s, "PUT", "/db/_local/big", {"pad": "x" * 5000})
        assert status == 413 and "over the limit of 4096" in body["reason"]
        assert [call(s, "PUT", f"/db/_local/ck{i}", {"v": i})[0] for i in range(6)] == [201] * 5 + [403]
        assert call(s, "PUT", "/db/_local/ck0", {"v": 9})[0] == 201  # an update is no new document
        status, body = jcall(s, "POST", "/db/_bulk_docs", {
            "docs": [{"_id": "with-ck", "_rev": "1-" + "a" * 32}], "new_edits": False,
            "mynosql_checkpoint": {"id": "ck-new", "doc": {"v": 1}}})
        assert status == 403 and "local documents" in body["reason"]
        assert call(s, "GET", "/db/with-ck")[0] == 404  # nothing of the request was written
        # a large batch (its checkpoint written by the thread that writes its documents): refused the same way
        status, body = jcall(s, "POST", "/db/_bulk_docs", {
            "docs": [{"_id": f"many-{i}", "_rev": "1-" + "b" * 32} for i in range(100)], "new_edits": False,
            "mynosql_checkpoint": {"id": "ck-new", "doc": {"v": 1}}})
        assert status == 403 and "local documents" in body["reason"]
        assert all(call(s, "GET", f"/db/many-{i}")[0] == 404 for i in (0, 50, 99))
        assert metric(s, "mynosql_limit_refusals_total", limit="max_local_docs") == 3
        status, body = jcall(s, "POST", "/db/_bulk_docs", {  # an existing checkpoint is updated with them
            "docs": [{"_id": f"many-{i}", "_rev": "1-" + "b" * 32} for i in range(100)], "new_edits": False,
            "mynosql_checkpoint": {"id": "ck1", "doc": {"v": 7}}})
        assert status == 201 and call(s, "GET", "/db/many-99")[0] == 200
        assert jcall(s, "GET", "/db/_local/ck1")[1]["v"] == 7
    finally:
        s.verify_after_stop()


def test_an_inflating_body_of_tiny_values_is_refused_before_it_is_parsed_off_the_loop(mirror: Serve) -> None:
    # 32 KiB of gzip that inflates to 32 MiB of tiny JSON values: refused before it is parsed, off the loop
    bomb = gzip.compress(b"[" + b"[]," * 11_000_000 + b"[]]", 9)  # 33 MB: within the 32 MiB limit
    assert len(bomb) < 64 * 1024
    rss = mirror.rss()
    results: list[tuple[int, bytes]] = []

    def send() -> None:
        results.append(call(mirror, "POST", "/db/_bulk_docs", raw=bomb, headers={"Content-Encoding": "gzip"},
                            source="127.0.0.70"))

    senders = [threading.Thread(target=send) for _ in range(4)]
    for t in senders:
        t.start()
    for _ in range(200):  # the legitimate client, while the bombs are in (bounded: they take seconds)
        healthy(mirror)
        if not any(t.is_alive() for t in senders):
            break
    for t in senders:
        t.join(timeout=60)
    assert [status for status, _ in results] == [413] * 4, results
    assert all(b"JSON values" in data for _, data in results), results
    assert mirror.rss() - rss < 160 * 1024 * 1024, (rss, mirror.rss())
    healthy(mirror)


# -- 10, 11. credentials in logs, NUL bytes --------------------------------------------------------------------


def test_credentials_never_reach_the_log_and_nul_bytes_never_log_in(tmp_path: Path, creds: Path) -> None:
    s = Serve(tmp_path / "log", ["--credentials", str(creds)]).start()
    assert isinstance(s, Serve)
    secret = base64.b64encode(f"alice:{PASSWORD}".encode()).decode()
    try:
        seed(s)  # alice logged in: her credentials are remembered
        # the exact attack: "alice\0<password>" with an empty password, and the password with trailing NULs
        assert call(s, "GET", "/db", user=f"alice\x00{PASSWORD}", password="")[0] == 401
        assert call(s, "GET", "/db", user="alice", password=PASSWORD + "\x00\x00")[0] == 401
        assert call(s, "GET", "/db", user="alice\x00", password=PASSWORD)[0] == 401
        assert call(s, "GET", "/db")[0] == 200
        # an Authorization header folded onto a continuation line: a 400 from the HTTP parser
        with socket.create_connection(("127.0.0.1", s.port), timeout=10) as sock:
            sock.sendall(f"GET /db HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {secret[:12]}\r\n {secret[12:]}\r\n"
                         "\r\n".encode())
            assert sock.recv(100).startswith(b"HTTP/1.")  # answered 400
        assert metric(s, "mynosql_limit_refusals_total", limit="malformed_http") == 1
        healthy(s)
    finally:
        s.verify_after_stop()
    log = "".join(s.log)
    assert secret[12:] not in log and secret[:12] not in log and PASSWORD not in log
    assert "Traceback" not in log and "malformed HTTP" in log
