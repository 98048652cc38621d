"""A mirror is safe by default: credentials, roles, TLS, limits, no leaks. Real `mynosql serve` processes."""

from __future__ import annotations

import base64
import json
import os
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.mirrors import ENV, MirrorProcess, free_port, wait_until

import MyNoSQL

PASSWORD = "correct horse battery"


def request(method: str, url: str, body: Any = None, *, user: str | None = None, password: str = PASSWORD,
            raw: bytes | None = None, ctx: Any = None) -> tuple[int, dict[str, str], Any]:
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if user is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=15, context=ctx) as r:
            return r.status, dict(r.headers), json.loads(r.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read() or b"null")


class Serve(MirrorProcess):
    """A `mynosql serve` process of database "db" on a free port, with more options."""

    def __init__(self, path: Path, extra: list[str]) -> None:
        super().__init__(path, "db", free_port(), [], extra)


@pytest.fixture
def creds(tmp_path: Path) -> Path:
    f = tmp_path / "users.txt"
    f.write_text(f"# users of the mirror\nalice:{PASSWORD}\nbob:{PASSWORD}:reader\n")
    return f


@pytest.fixture
def secured(tmp_path: Path, creds: Path) -> Iterator[Serve]:
    s = Serve(tmp_path / "srv", ["--credentials", str(creds), "--header-timeout", "1.5",
                                 "--max-request-bytes", "200000", "--max-batch", "50"]).start()
    yield s
    s.stop()


def test_refuses_to_serve_beyond_loopback_without_credentials(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "MyNoSQL", "serve", "--path", str(tmp_path), "--db", "db",
                          "--host", "0.0.0.0", "--port", "0"], env=ENV, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "without credentials" in out.stderr and "--credentials" in out.stderr and "127.0.0.1" in out.stderr
    db = MyNoSQL.MyNoSQL(tmp_path, options=MyNoSQL.Options())
    h = db.opendb("db")
    try:
        assert h.getdbmode() == "Peer"  # the refused mode was not remembered
        h.setlisten("0.0.0.0", 0)
        with pytest.raises(MyNoSQL.SecurityError, match="without credentials"):
            h.setdbmode("Mirror")
    finally:
        db.closedb()


def test_loopback_mirror_may_run_open_and_says_so(tmp_path: Path) -> None:
    s = Serve(tmp_path / "open", []).start()
    try:
        assert request("GET", f"{s.url}/db")[0] == 200
        wait_until(lambda: "WITHOUT authentication" in "".join(s.log), what="the open-mirror warning")
    finally:
        s.stop()


def test_credentials_roles_and_no_hints(secured: Serve, tmp_path: Path) -> None:
    db = f"{secured.url}/db"
    assert request("GET", f"{secured.url}/")[0] == 200  # the welcome is public
    assert request("GET", f"{secured.url}/_up")[0] == 200
    no, headers, body = request("GET", db)
    wrong_pw = request("GET", db, user="alice", password="nope nope nope")
    no_user = request("GET", db, user="mallory")
    assert no == wrong_pw[0] == no_user[0] == 401
    assert body == wrong_pw[2] == no_user[2]  # no hint of which part was wrong
    assert headers.get("WWW-Authenticate", "").startswith("Basic")
    assert request("GET", f"{secured.url}/_mirrors")[0] == 401
    assert request("PUT", f"{db}/x", {"v": 1}, user="alice")[0] == 201
    assert request("GET", f"{db}/x", user="bob")[2]["v"] == 1
    assert request("PUT", f"{db}/y", {"v": 1}, user="bob")[0] == 403
    assert request("POST", f"{db}/_bulk_docs", {"docs": [{"_id": "z"}]}, user="bob")[0] == 403
    rev = request("GET", f"{db}/x", user="bob")[2]["_rev"]
    assert request("DELETE", f"{db}/x?rev={rev}", user="bob")[0] == 403
    assert request("POST", f"{db}/_revs_diff", {"x": [rev]}, user="bob")[0] == 200
    # checkpoints steer replication: a reader rewriting one could make a pulling mirror skip records
    assert request("PUT", f"{db}/_local/ck", {"seq": 1}, user="bob")[0] == 403
    assert request("DELETE", f"{db}/_local/ck", user="bob")[0] == 403
    assert request("PUT", f"{db}/_local/ck", {"seq": 1}, user="alice")[0] == 201
    assert request("GET", f"{db}/_local/ck", user="bob")[0] == 200
    # passwords are stored hashed, owner-only
    users = tmp_path / "srv" / "users.json"  # the mirror's users, beside its databases
    text = users.read_text()
    assert PASSWORD not in text
    assert stat.S_IMODE(os.stat(users).st_mode) == 0o600


def test_repeated_failures_are_throttled(secured: Serve) -> None:
    codes = [request("GET", f"{secured.url}/db", user="alice", password=f"guess {i}")[0] for i in range(12)]
    assert codes[:10] == [401] * 10 and codes[-1] == 429
    assert request("GET", f"{secured.url}/db", user="alice")[0] == 429  # even the right one, for a while


def test_peer_credentials_from_the_url_and_never_leaked(secured: Serve, tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    url = secured.url.replace("http://", f"http://alice:{PASSWORD.replace(' ', '%20')}@")
    h = MyNoSQL.MyNoSQL(tmp_path / "peer", options=MyNoSQL.Options(longpoll=2.0))
    h.opendb("db")
    try:
        h.addpeer(url)
        rec = h.savedoc({"id": "secret-record", "v": 42})
        wait_until(lambda: request("GET", f"{secured.url}/db/secret-record", user="alice")[0] == 200,
                   what="the push with credentials")
        assert request("GET", f"{secured.url}/db/secret-record", user="alice")[2]["_rev"] == rec["rev"]
        status = json.dumps(h.status())
        assert PASSWORD not in status and "alice" not in status
        assert all(PASSWORD not in p and "alice" not in p for p in h.db.peers())
        mirrors = request("GET", f"{secured.url}/_mirrors", user="alice")[2]
        assert PASSWORD not in json.dumps(mirrors)
        config = (tmp_path / "peer" / "db" / "config.json")
        assert stat.S_IMODE(os.stat(config).st_mode) == 0o600  # where the peer keeps them
    finally:
        h.closedb()
    assert PASSWORD not in caplog.text and PASSWORD.replace(" ", "%20") not in caplog.text
    assert PASSWORD not in "".join(secured.log)


def test_a_mirrors_own_peer_credentials_never_show_in_its_answers_or_log(secured: Serve, tmp_path: Path,
                                                                          creds: Path) -> None:
    url = secured.url.replace("http://", f"http://alice:{PASSWORD.replace(' ', '%20')}@")
    other = Serve(tmp_path / "other", ["--credentials", str(creds), "--peer", url]).start()
    try:
        assert request("PUT", f"{secured.url}/db/from-secured", {"v": 1}, user="alice")[0] == 201
        wait_until(lambda: request("GET", f"{other.url}/db/from-secured", user="bob")[0] == 200,
                   what="the mirror pulled with its peer's credentials")
        code, _, listed = request("GET", f"{other.url}/_mirrors", user="bob")
        assert code == 200 and secured.url in listed["mirrors"]  # the peer is listed, without its credentials
        text = json.dumps(listed)
        assert PASSWORD not in text and PASSWORD.replace(" ", "%20") not in text and "alice" not in text
        for path in ("/_dashboard/data", "/_metrics"):
            with urllib.request.urlopen(urllib.request.Request(f"{other.url}{path}", headers={
                    "Authorization": "Basic " + base64.b64encode(f"bob:{PASSWORD}".encode()).decode()}),
                    timeout=15) as r:
                page = r.read()
                assert r.status == 200 and b"alice" not in page and PASSWORD.replace(" ", "%20").encode() not in page
    finally:
        other.stop()
    assert PASSWORD.replace(" ", "%20") not in "".join(other.log) and PASSWORD not in "".join(other.log)


def test_the_login_throttle_is_per_address(secured: Serve) -> None:
    # 127.0.0.1 and 127.0.0.2 are different clients (both loopback): one guessing does not lock the other out.
    port = int(secured.url.rsplit(":", 1)[1])
    for i in range(11):
        assert request("GET", f"{secured.url}/db", user="alice", password=f"guess {i}")[0] in (401, 429)
    assert request("GET", f"{secured.url}/db", user="alice")[0] == 429
    conn = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=("127.0.0.2", 0))
    try:
        auth = base64.b64encode(f"alice:{PASSWORD}".encode()).decode()
        conn.sendall(f"GET /db HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {auth}\r\nConnection: close\r\n\r\n"
                     .encode())
        answer = b""
        while chunk := conn.recv(4096):  # bounded: the server closes (Connection: close)
            answer += chunk
    finally:
        conn.close()
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]


def test_slow_bodies_and_idle_connections_are_cut_off(tmp_path: Path, creds: Path) -> None:
    s = Serve(tmp_path / "slow", ["--credentials", str(creds), "--header-timeout", "1.5", "--body-timeout", "1.5"]
              ).start()
    try:
        port = int(s.url.rsplit(":", 1)[1])
        auth = base64.b64encode(f"alice:{PASSWORD}".encode()).decode()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(f"PUT /db/slow HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {auth}\r\n"
                         "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{".encode())
            t0 = time.monotonic()
            answer = sock.recv(4096)  # the rest of the body never comes
            assert answer.startswith(b"HTTP/1.1 408") and time.monotonic() - t0 < 8, answer[:200]
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"GET /_up HTTP/1.1\r\nHost: x\r\n\r\n")
            first = sock.recv(4096)
            assert first.startswith(b"HTTP/1.1 200")
            t0 = time.monotonic()
            while sock.recv(4096):  # then idle on a keep-alive connection: closed by the server
                pass
            assert time.monotonic() - t0 < 8
        assert request("GET", f"{s.url}/db/slow", user="alice")[0] == 404  # nothing of it was written
    finally:
        s.stop()


def test_ids_and_members_a_mirror_refuses(secured: Serve) -> None:
    db = f"{secured.url}/db"
    for bad in ("_design", "_x", "a%00b", "x" * 1025, "a/../b", "./a"):
        code, _, body = request("PUT", f"{db}/{bad}", {"v": 1}, user="alice")
        assert 400 <= code < 500 and body["error"], (bad, code, body)
    for doc in ({"_id": "m3", "_rev": "bad"}, {"_id": 5}, {"_id": "m4", "_rev": "0-" + "a" * 32},
                {"_id": "dotdot/../x", "_rev": "1-" + "a" * 32}, {"_id": "./x", "_rev": "1-" + "a" * 32}):
        code, _, body = request("POST", f"{db}/_bulk_docs", {"docs": [doc], "new_edits": False}, user="alice")
        assert code == 400, (doc, code, body)
    # the ids the URL routes refuse, _bulk_docs refuses too (one set of rules)
    code, _, body = request("POST", f"{db}/_bulk_docs", {"docs": [{"_id": "dotdot/../x"}]}, user="alice")
    assert code == 400 and "path segments" in body["reason"], body
    # an unknown special member fails the whole request, as CouchDB's doc_validation does
    bad = {"_id": "m2", "_rev": "1-" + "a" * 32, "_unknown": 1}
    for new_edits in (False, True):
        fine = {"_id": "fine", "_rev": "1-" + "b" * 32}
        code, _, body = request("POST", f"{db}/_bulk_docs", {"docs": [fine, bad], "new_edits": new_edits},
                                user="alice")
        assert code == 400 and body == {"error": "doc_validation", "reason": "Bad special document member: _unknown"}
    assert request("PUT", f"{db}/m2", bad, user="alice")[0] == 400
    assert request("GET", db, user="alice")[2]["doc_count"] == 0


def test_wrong_peer_credentials_fail_with_a_clear_status(secured: Serve, tmp_path: Path) -> None:
    url = secured.url.replace("http://", "http://alice:wrongpassword@")
    h = MyNoSQL.MyNoSQL(tmp_path / "peer2", options=MyNoSQL.Options(longpoll=2.0))
    h.opendb("db")
    try:
        h.addpeer(url)
        h.savedoc({"id": "a"})
        wait_until(lambda: "401" in str(h.status()["mirrors"][secured.url]["last_error"]), what="401 in status")
        assert "wrongpassword" not in json.dumps(h.status())
    finally:
        h.closedb()


def test_no_versions_paths_or_tracebacks_in_answers(secured: Serve) -> None:
    _status, headers, body = request("GET", f"{secured.url}/")
    assert headers.get("Server") == "MyNoSQL"
    assert "aiohttp" not in json.dumps(body).lower() and "python" not in json.dumps(body).lower()
    for method, path, raw in [("POST", "/db/_bulk_docs", b"{not json"), ("GET", "/db/%00", None),
                              ("PUT", "/db/a/../b", b"{}"), ("GET", "/nope/x", None)]:
        code, hdrs, answer = request(method, secured.url + path, raw=raw, user="alice")
        assert 400 <= code < 500, (path, code, answer)
        text = json.dumps(answer)
        assert "Traceback" not in text and "/tmp" not in text and str(secured.path) not in text
        assert hdrs.get("Server") == "MyNoSQL"


def test_limits_answer_4xx_and_write_nothing(secured: Serve) -> None:
    db = f"{secured.url}/db"
    big = {"docs": [{"_id": f"b{i}", "pad": "x" * 5000} for i in range(45)]}
    assert request("POST", f"{db}/_bulk_docs", big, user="alice")[0] == 413  # over 200,000 bytes
    many = {"docs": [{"_id": f"m{i}"} for i in range(51)]}
    assert request("POST", f"{db}/_bulk_docs", many, user="alice")[0] == 413  # over 50 documents
    deep: Any = 1
    for _ in range(150):
        deep = [deep]
    code, _, body = request("PUT", f"{db}/deep?new_edits=false",
                            {"_rev": "1-" + "a" * 32, "v": deep}, user="alice")
    assert code == 400 and "deeper" in body["reason"]
    history = {"_id": "h", "_rev": "2000-" + "a" * 32, "_revisions": {"start": 2000, "ids": ["a" * 32] * 1500}}
    good = {"_id": "g", "_rev": "1-" + "b" * 32, "v": 1}
    code, _, body = request("POST", f"{db}/_bulk_docs", {"docs": [good, history], "new_edits": False}, user="alice")
    assert code == 400 and "document 1" in body["reason"] and "over the limit of 1000" in body["reason"]
    deep = 1
    for _ in range(101):  # 101 lists in the document: over its limit of 100; the request is within its 103
        deep = [deep]
    code, _, body = request("POST", f"{db}/_bulk_docs", {"docs": [{"_id": "n", "v": 1}, {"_id": "d", "v": deep}]},
                            user="alice")
    assert code == 400 and "document 1" in body["reason"] and "deeper than 100" in body["reason"]
    assert request("GET", f"{db}", user="alice")[2]["doc_count"] == 0  # not even the good documents before them


def test_document_size_nesting_and_checkpoint_limits_write_nothing(tmp_path: Path, creds: Path) -> None:
    s = Serve(tmp_path / "roomy", ["--credentials", str(creds), "--max-doc-bytes", "4096", "--max-depth", "20",
                                   "--max-revisions", "10"]).start()
    try:
        db = f"{s.url}/db"
        code, _, body = request("PUT", f"{db}/big", {"pad": "x" * 5000}, user="alice")
        assert code == 400 and "over the limit of 4096" in body["reason"]
        code, _, body = request("POST", f"{db}/_bulk_docs", {"docs": [{"_id": "ok"}, {"_id": "b2", "pad": "x" * 5000}]},
                                user="alice")
        assert code == 400 and "document 1" in body["reason"]
        for depth in (21, 300, 2000):  # over the limit; past what orjson writes (255); past what it reads (1024)
            raw = ('{"v":' + '{"d":' * depth + "1" + "}" * depth + "}").encode()
            code, _, body = request("PUT", f"{db}/deep{depth}", raw=raw, user="alice")
            assert code == 400 and body["error"] == "bad_request", (depth, code, body)
        history = {"_id": "h", "_rev": "12-" + "a" * 32, "_revisions": {"start": 12, "ids": ["a" * 32] * 11}}
        code, _, body = request("POST", f"{db}/_bulk_docs", {"docs": [history], "new_edits": False}, user="alice")
        assert code == 400 and "over the limit of 10" in body["reason"]
        checkpoint = {"id": "cp", "doc": {"pad": "x" * (1024 * 1024 + 1)}}
        code, _, _ = request("POST", f"{db}/_bulk_docs", {"docs": [{"_id": "c", "_rev": "1-" + "c" * 32}],
                                                          "new_edits": False, "mynosql_checkpoint": checkpoint},
                             user="alice")
        assert code == 413
        assert request("GET", f"{db}", user="alice")[2]["doc_count"] == 0
        assert request("GET", f"{db}/_local/cp", user="alice")[0] == 404
    finally:
        s.stop()


def test_changes_refuses_a_since_from_the_future_and_survives_huge_numbers(secured: Serve) -> None:
    db = f"{secured.url}/db"
    assert request("PUT", f"{db}/a", {"v": 1}, user="alice")[0] == 201
    seq = request("GET", f"{db}/_changes", user="alice")[2]["last_seq"]
    assert request("GET", f"{db}/_changes?since={seq}", user="alice")[2]["results"] == []
    for since in (str(int(seq) + 1), "9" * 30, "9" * 400):
        code, _, body = request("GET", f"{db}/_changes?since={since}", user="alice")
        assert code == 400 and body["error"] == "since_ahead", (since, code, body)
    code, _, body = request("GET", f"{db}/_changes?feed=longpoll&since=0&timeout={'9' * 400}&limit={'9' * 400}",
                            user="alice")
    assert code == 200 and len(body["results"]) == 1  # both clamped


def test_malformed_http_gets_no_versions_either(secured: Serve) -> None:
    port = int(secured.url.rsplit(":", 1)[1])
    for raw in (b"GARBAGE\r\n\r\n", b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
                b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(raw)
            answer = b""
            while b"\r\n\r\n" not in answer:  # the status line and headers (bounded: the server closes)
                chunk = sock.recv(4096)
                if not chunk:
                    break
                answer += chunk
        head = answer.split(b"\r\n\r\n")[0].decode("latin-1")
        assert head.startswith(("HTTP/1.1 4", "HTTP/1.0 4")), head
        assert "Server: MyNoSQL" in head and "aiohttp" not in answer.decode("latin-1").lower()
        assert "python" not in answer.decode("latin-1").lower()


def test_slow_and_idle_clients_are_cut_off(secured: Serve) -> None:
    port = int(secured.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET /_up HTTP/1.1\r\nHost: x\r\n")  # headers never finished
        t0 = time.monotonic()
        assert s.recv(100) == b""  # closed by the server
        assert time.monotonic() - t0 < 8
    assert request("GET", f"{secured.url}/_up")[0] == 200  # and it still serves others


def test_tls_with_a_certificate_made_by_the_test(tmp_path: Path, creds: Path) -> None:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "server.key"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    s = Serve(tmp_path / "tls", ["--credentials", str(creds), "--cert", str(tmp_path / "server.pem"),
                                 "--key", str(tmp_path / "server.key")]).start()
    try:
        assert s.url.startswith("https://")
        url = s.url.replace("https://", f"https://alice:{PASSWORD.replace(' ', '%20')}@")
        trusted = MyNoSQL.MyNoSQL(tmp_path / "ok", options=MyNoSQL.Options(tls_ca_file=str(tmp_path / "ca.pem")))
        trusted.opendb("db")
        untrusted = MyNoSQL.MyNoSQL(tmp_path / "bad")
        untrusted.opendb("db")
        try:
            r = trusted.push(url)
            assert r["docs_written"] == 0
            trusted.savedoc({"id": "over-tls"})
            assert trusted.push(url)["docs_written"] == 1
            untrusted.savedoc({"id": "never"})
            with pytest.raises(MyNoSQL.MyNoSQLError, match=r"(?i)certificate"):
                untrusted.push(url)
        finally:
            trusted.closedb()
            untrusted.closedb()
        import ssl

        ctx = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
        assert request("GET", f"{s.url}/db/over-tls", user="alice", ctx=ctx)[0] == 200
        # A second `mynosql serve` keeps in step with it over TLS, trusting the test's CA through --ca-file.
        other = Serve(tmp_path / "tls2", ["--peer", url, "--ca-file", str(tmp_path / "ca.pem")]).start()
        try:
            wait_until(lambda: request("GET", f"{other.url}/db/over-tls")[0] == 200, what="pulled over TLS")
        finally:
            other.stop()
    finally:
        s.stop()


def test_connections_over_the_limit_are_refused(tmp_path: Path, creds: Path) -> None:
    s = Serve(tmp_path / "conns", ["--credentials", str(creds), "--max-connections", "3"]).start()
    port = int(s.url.rsplit(":", 1)[1])
    held = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(3)]
    try:
        extra = socket.create_connection(("127.0.0.1", port), timeout=10)
        with extra:
            extra.sendall(b"GET /_up HTTP/1.1\r\nHost: x\r\n\r\n")
            try:
                got = extra.recv(100)
            except ConnectionResetError:
                got = b""
            assert got == b""  # closed at once: over the limit
    finally:
        for c in held:
            c.close()
    wait_until(lambda: request("GET", f"{s.url}/_up")[0] == 200, what="serving again once they closed")
    s.stop()


def test_turning_tls_verification_off_is_explicit_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    import asyncio

    from MyNoSQL.replication import endpoints

    endpoints._warned_unverified = False

    async def make() -> None:
        await endpoints.client_session(MyNoSQL.Options(tls_verify=False)).close()
        await endpoints.client_session(MyNoSQL.Options()).close()

    with caplog.at_level("WARNING", logger="MyNoSQL"):
        asyncio.run(make())
    assert "verification is OFF" in caplog.text
    assert MyNoSQL.Options().tls_verify is True


def test_a_mirror_beyond_loopback_with_no_users_left_lets_nobody_in(tmp_path: Path) -> None:
    # What a mirror serving 0.0.0.0 does once its last user is removed (the app is run here on 127.0.0.1 with the
    # setting such an address gets): every data route answers 401, whatever the credentials; /_up still answers.
    import asyncio

    from aiohttp import web

    from MyNoSQL.server.app import MirrorApp

    h = MyNoSQL.MyNoSQL(tmp_path, options=MyNoSQL.Options(background_sync=False))
    db = h.opendb("db")
    db.adduser("alice", PASSWORD)
    assert db.removeuser("alice") and not db.users
    port = free_port()

    async def main() -> list[int]:
        runner = MirrorApp({"db": db}, users=db.users, open_without_users=False).runner()
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            calls = [("GET", "/db", None), ("GET", "/db", "alice"), ("PUT", "/db/x", "alice"), ("GET", "/_up", None)]
            return [(await asyncio.to_thread(request, m, f"http://127.0.0.1:{port}{p}", {} if m == "PUT" else None,
                                             user=u))[0] for m, p, u in calls]
        finally:
            await runner.cleanup()

    try:
        assert asyncio.run(main()) == [401, 401, 401, 200]
        assert len(db) == 0
    finally:
        h.closedb()


def test_replacing_the_users_never_leaves_a_moment_without_any(tmp_path: Path) -> None:
    import threading

    from MyNoSQL.credentials import Users

    users = Users(tmp_path / "users.json")
    users.set("old", PASSWORD)
    seen_empty = threading.Event()
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():  # bounded by the replacement below (a few PBKDF2 hashes)
            if not users:
                seen_empty.set()

    t = threading.Thread(target=watch)
    t.start()
    try:
        users.replace_all([(f"u{i}", PASSWORD, "replicator") for i in range(4)])
    finally:
        done.set()
        t.join(timeout=30)
    assert not seen_empty.is_set()
    assert sorted(users.names()) == ["u0", "u1", "u2", "u3"]
    with pytest.raises(MyNoSQL.InvalidDocument):
        users.replace_all([("new", PASSWORD, "replicator"), ("bad", "short", "replicator")])
    assert sorted(users.names()) == ["u0", "u1", "u2", "u3"]  # a bad list changes nothing


def test_mirrors_learned_through_tls_must_use_tls_too(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    h = MyNoSQL.MyNoSQL(tmp_path, options=MyNoSQL.Options(background_sync=False))
    db = h.opendb("db")
    try:
        via = "https://alice:secret-pw@127.0.0.1:8801"
        db.addpeer(via)
        db.learn_mirrors(["http://127.0.0.2:8802", "https://127.0.0.3:8803"], via=via)
        peers = db.config.peers
        assert "https://alice:secret-pw@127.0.0.3:8803" in peers  # the credentials of the mirror that listed it
        assert not any("127.0.0.2" in p for p in peers)  # never downgraded to clear text
        assert "plain-HTTP" in caplog.text and "secret-pw" not in caplog.text
    finally:
        h.closedb()


def test_hostile_writes_answer_4xx_write_nothing_and_never_break_a_record(secured: Serve) -> None:
    db = f"{secured.url}/db"

    def count() -> int:
        return int(request("GET", db, user="alice")[2]["update_seq"])

    # A replicated revision path that disagrees with the ancestry the mirror knows leaves no bodiless leaf.
    a, b, x = "a" * 32, "b" * 32, "c" * 32
    assert request("PUT", f"{db}/w?new_edits=false", {"_rev": f"2-{b}", "_revisions": {"start": 2, "ids": [b, a]},
                                                       "v": 1}, user="alice")[0] == 201
    assert request("PUT", f"{db}/w?new_edits=false", {"_rev": f"3-{x}", "_deleted": True,
                                                       "_revisions": {"start": 3, "ids": [x, b, "f" * 32]}},
                   user="alice")[0] == 201
    code, _, got = request("POST", f"{db}/_bulk_get", {"docs": [{"id": "w"}]}, user="alice")
    assert code == 200 and got["results"][0]["docs"][0]["ok"]["_deleted"] is True
    assert request("GET", f'{db}/w?open_revs=["1-{"f" * 32}"]&latest=true', user="alice")[0] == 200
    before = count()
    bad_docs: list[Any] = [{"_id": 5}, {"_id": ["l"]}, {"_id": "x\u0000y"}, {"_id": "x" * 2000},
                           {"_id": "r", "_rev": 5}, {"_id": "w", "_deleted": True, "_rev": "bad"},
                           {"_id": "t", "v": {"$date": "garbage"}}, {"_id": "t", "v": {"$int": "xyz"}},
                           {"_id": "t", "v": {"$set": [[1]]}}, {"_id": "t", "v": {"$uuid": "zz"}}]
    for bad in bad_docs:
        code, _, body = request("POST", f"{db}/_bulk_docs", {"docs": [{"_id": "ok2", "v": 1}, bad]}, user="alice")
        assert code == 400 and "document 1" in body["reason"], (bad, code, body)
    for method, path, doc in [("DELETE", "/x?rev=abc", None), ("PUT", "/w", {"_deleted": True, "_rev": "bad"}),
                              ("PUT", "/t", {"v": {"$datetime": "2020-01-01T00:00[Nowhere/Zone]"}}),
                              ("PUT", "/a?new_edits=false", {"_id": "b", "_rev": f"1-{a}"}),
                              ("POST", "/_revs_diff", {"w": ["bad"]}), ("POST", "/_revs_diff", {"a\u0000": ["1-a"]}),
                              ("POST", "/_bulk_get", {"docs": [{"id": "x" * 2000}]}),
                              ("POST", "/_bulk_docs", {"docs": [{"_id": "c", "_rev": f"1-{a}"}], "new_edits": False,
                                                       "mynosql_checkpoint": {"id": "a\u0000b", "doc": {}}})]:
        code, _, body = request(method, db + path, doc, user="alice")
        assert code == 400, (method, path, code, body)
    import gzip

    bomb = gzip.compress(b'{"docs": [' + b" " * 1_000_000 + b"]}")  # 1 MB once inflated: over the 200,000 limit
    for encoding, data, status in (("gzip", b"garbage", 400), ("deflate", b"garbage", 400), ("br", b"{}", 415),
                                   ("gzip", bomb, 413)):
        req = urllib.request.Request(f"{db}/_bulk_docs", data=data, method="POST", headers={
            "Content-Type": "application/json", "Content-Encoding": encoding,
            "Authorization": "Basic " + base64.b64encode(f"alice:{PASSWORD}".encode()).decode()})
        try:
            urllib.request.urlopen(req, timeout=15)
            raise AssertionError(f"accepted a {encoding} body it should refuse")
        except urllib.error.HTTPError as exc:
            assert exc.code == status and json.loads(exc.read())["error"], (encoding, exc.code)
    assert count() == before and request("GET", f"{db}/ok2", user="alice")[0] == 404  # nothing written
    # A reserved id in a replicated batch is refused on its own (CouchDB's design documents), not the batch.
    code, _, answer = request("POST", f"{db}/_bulk_docs", {"docs": [{"_id": "_design/x", "_rev": f"1-{a}"},
                                                                    {"_id": "kept", "_rev": f"1-{a}"}],
                                                           "new_edits": False}, user="alice")
    assert code == 201 and answer == [{"id": "_design/x", "error": "unauthorized",  # design documents: admins
                                       "reason": "You are not a db or server admin."}]
    assert request("GET", f"{db}/kept", user="alice")[0] == 200
    assert request("PUT", f"{db}/kept2", {"v": 1}, user="alice")[0] == 201
    page = request("GET", f"{db}/_all_docs?skip=1&limit=1", user="alice")[2]  # "w" is deleted: not listed
    assert page["total_rows"] == 2 and page["offset"] == 1 and [r["id"] for r in page["rows"]] == ["kept2"]
    assert request("GET", f"{db}/_all_docs?limit={'9' * 400}", user="alice")[0] == 200
