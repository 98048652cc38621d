"""Hostile input to a mirror's attachment routes: names, multipart bodies (malformed, lying lengths, too many or
too few parts, a gzip bomb), sizes over the limit, digests that do not match, stalled uploads, readers writing.
Every one gets a 4xx, nothing is written (no record, no blob, no temp file left) and the mirror goes on."""

from __future__ import annotations

import base64
import gzip
import hashlib
import http.client
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.mirrors import MirrorProcess, free_port

PASSWORD = "correct horse battery"
LIMIT = 100_000


def md5(data: bytes) -> str:
    return "md5-" + base64.b64encode(hashlib.md5(data).digest()).decode()


def auth(user: str = "alice") -> str:
    return "Basic " + base64.b64encode(f"{user}:{PASSWORD}".encode()).decode()


class Serve(MirrorProcess):
    def __init__(self, path: Path, extra: list[str]) -> None:
        super().__init__(path, "db", free_port(), [], extra)

    def req(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None, *,
            user: str = "alice") -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body=body, headers={"Authorization": auth(user), **(headers or {})})
            r = conn.getresponse()
            return r.status, dict(r.getheaders()), r.read()
        finally:
            conn.close()

    def json(self, method: str, path: str, doc: Any, **kw: Any) -> tuple[int, Any]:
        code, _, raw = self.req(method, path, json.dumps(doc).encode(), {"Content-Type": "application/json"}, **kw)
        return code, json.loads(raw or b"null")

    def nothing_written(self) -> None:
        code, _, raw = self.req("GET", "/db")
        assert code == 200 and json.loads(raw)["doc_count"] == 0, raw
        folder = self.path / "db" / "attachments"
        leftovers = [p for p in folder.rglob("*") if p.is_file() and p.name != "pending"] if folder.exists() else []
        assert leftovers == [], leftovers
        assert self.req("GET", "/_up")[0] == 200 and self.proc is not None and self.proc.poll() is None


@pytest.fixture
def srv(tmp_path: Path) -> Iterator[Serve]:
    creds = tmp_path / "users.txt"
    creds.write_text(f"alice:{PASSWORD}\nbob:{PASSWORD}:reader\n")
    s = Serve(tmp_path / "srv", ["--credentials", str(creds), "--max-attachment-bytes", str(LIMIT),
                                 "--max-request-bytes", "400000", "--body-timeout", "1.5"]).start()
    yield s
    s.stop()


def related(boundary: str, doc: Any, parts: list[tuple[dict[str, str], bytes]], *, close: bool = True) -> bytes:
    out = [f"--{boundary}\r\nContent-Type: application/json\r\n\r\n".encode()
           + (doc if isinstance(doc, bytes) else json.dumps(doc).encode())]
    for headers, data in parts:
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        out.append(f"\r\n--{boundary}\r\n{head}\r\n".encode() + data)
    if close:
        out.append(f"\r\n--{boundary}--".encode())
    return b"".join(out)


def follows(name: str, data: bytes, **extra: Any) -> dict[str, Any]:
    return {name: {"content_type": "application/octet-stream", "length": len(data), "digest": md5(data),
                   "follows": True, **extra}}


MP = {"Content-Type": 'multipart/related; boundary="bnd"'}


def test_hostile_attachment_names(srv: Serve) -> None:
    for path in ("/db/d/..%2Fx", "/db/d/a/../b", "/db/d/a%00b", "/db/d/" + "n" * 1100, "/db/d/_x", "/db/d/a//b",
                 "/db/d/%2E", "/db/d/a/%2E%2E", "/db/d/%FF%FE", "/db/d/tab%09name"):
        code, _, raw = srv.req("PUT", path, b"data", {"Content-Type": "text/plain"})
        assert 400 <= code < 500, (path, code, raw)
    for name in ("../x", "a\x00b", "n" * 1100, "_x", "", "a//b", "a/./b"):
        code, body = srv.json("PUT", "/db/d", {"_attachments": {name: {"data": base64.b64encode(b"x").decode()}}})
        assert code == 400, (name, code, body)
        code, body = srv.json("POST", "/db/_bulk_docs", {"new_edits": False, "docs": [
            {"_id": "d", "_rev": "1-" + "a" * 32, "_attachments": {name: {"data": "eA=="}}}]})
        assert code == 400, (name, code, body)
    srv.nothing_written()


def test_hostile_multipart_bodies(srv: Serve) -> None:
    data = b"0123456789" * 100
    doc = {"_id": "m", "_rev": "1-" + "b" * 32, "_attachments": follows("a.bin", data)}
    cases: list[tuple[str, bytes, dict[str, str]]] = [
        ("garbage", b"\x00\xff not multipart at all", MP),
        ("no boundary", related("bnd", doc, [({}, data)]), {"Content-Type": "multipart/related"}),
        ("json is not json", related("bnd", b"{nope", [({}, data)]), MP),
        ("json is a list", related("bnd", [1, 2], []), MP),
        ("too few parts", related("bnd", doc, []), MP),
        ("too many parts", related("bnd", doc, [({}, data), ({}, data)]), MP),
        ("part shorter than said", related("bnd", doc, [({}, data[:-1])]), MP),
        ("part longer than said", related("bnd", doc, [({}, data + b"!")]), MP),
        ("part Content-Length lies (short)", related("bnd", doc, [({"Content-Length": "10"}, data)]), MP),
        ("part Content-Length lies (long)", related("bnd", doc, [({"Content-Length": "99999"}, data)]), MP),
        ("no closing boundary", related("bnd", doc, [({}, data)], close=False), MP),
        ("wrong digest", related("bnd", {**doc, "_attachments": follows("a.bin", data, digest=md5(b"other"))},
                                 [({}, data)]), MP),
        ("over the limit", related("bnd", {**doc, "_attachments": follows("a.bin", b"x" * (LIMIT + 1))},
                                   [({}, b"x" * (LIMIT + 1))]), MP),
        ("over the limit, length not said", related("bnd", {**doc, "_attachments": {"a.bin": {
            "follows": True}}}, [({}, b"x" * (LIMIT + 1))]), MP),
        ("a gzip bomb", related("bnd", {**doc, "_attachments": {"a.bin": {"follows": True, "encoding": "gzip"}}},
                                [({}, gzip.compress(b"\x00" * (LIMIT * 50)))]), MP),
        ("bad gzip", related("bnd", {**doc, "_attachments": {"a.bin": {"follows": True, "encoding": "gzip"}}},
                             [({}, b"not gzip at all")]), MP),
        ("huge json part", related("bnd", b'{"x": "' + b"y" * 500_000 + b'"}', []), MP),
        ("thousands of parts", related("bnd", {**doc, "_attachments": {f"n{i}": {"follows": True}
                                                                       for i in range(1001)}}, []), MP),
        ("bad id", related("bnd", {**doc, "_id": "other"}, [({}, data)]), MP),
        ("wrong boundary", related("other", doc, [({}, data)]), MP),
        ("a boundary of 5,000 bytes", related("b" * 5000, doc, [({}, data)]),
         {"Content-Type": f'multipart/related; boundary="{"b" * 5000}"'}),
        ("empty body", b"", MP),
        ("only the closing boundary", b"--bnd--", MP),
        ("a huge part header", related("bnd", doc, [({"X-Pad": "p" * 200_000}, data)]), MP),
        ("thousands of part headers", related("bnd", doc, [({f"X-H{i}": "v" for i in range(5000)}, data)]), MP),
        ("a huge header on the JSON part", b"--bnd\r\nContent-Type: application/json\r\nX-Pad: " + b"p" * 200_000
         + b"\r\n\r\n" + json.dumps(doc).encode() + b"\r\n--bnd--", MP),
        ("cut in the part headers", related("bnd", doc, [({}, data)])[:-len(data) - 30], MP),
        ("cut in the JSON part", related("bnd", doc, [({}, data)])[:60], MP),
        ("part headers never end", related("bnd", doc, [])[:-8] + b"\r\n--bnd\r\nContent-Type: x" + b"y" * 100_000,
         MP),
    ]
    for what, body, headers in cases:
        for query in ("?new_edits=false", ""):
            path = "/db/m" + query
            sent = body if query else body.replace(b'"_rev": "1-' + b"b" * 32 + b'", ', b"")
            code, _, raw = srv.req("PUT", path, sent, headers)
            assert 400 <= code < 500, (what, query, code, raw[:300])
    srv.nothing_written()


def test_sizes_over_the_limit(srv: Serve) -> None:
    code, _, raw = srv.req("PUT", "/db/big/a.bin", b"x" * (LIMIT + 1), {"Content-Type": "application/octet-stream"})
    assert code == 413, raw
    # the same without a Content-Length (chunked): refused once the limit is passed
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
    try:
        conn.putrequest("PUT", "/db/big/a.bin")
        conn.putheader("Authorization", auth())
        conn.putheader("Transfer-Encoding", "chunked")
        conn.endheaders()
        try:
            for _ in range(30):
                chunk = b"y" * 8192
                conn.send(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            conn.send(b"0\r\n\r\n")
        except OSError:
            pass  # the server answered and closed while we were still sending
        assert conn.getresponse().status == 413
    finally:
        conn.close()
    big = base64.b64encode(b"z" * (LIMIT + 1)).decode()
    assert srv.json("PUT", "/db/big", {"_attachments": {"a": {"data": big}}})[0] == 413
    assert srv.json("PUT", "/db/big", {"_attachments": {"a": {"stub": True, "length": LIMIT + 1}}})[0] == 413
    code, body = srv.json("POST", "/db/_bulk_docs", {"docs": [{"_attachments": {"a": {"data": big}}}]})
    assert code == 413 and body["error"] == "attachment_too_large" and "over the limit" in body["reason"], body
    code, body = srv.json("POST", "/db/_bulk_docs", {"new_edits": False, "docs": [
        {"_id": "big", "_rev": "1-" + "c" * 32, "_attachments": {"a": {"data": big}}}]})
    assert code == 413 and body["error"] == "attachment_too_large", body  # CouchDB: the whole request, 413
    over = b"x" * (LIMIT + 1)
    for att_meta in (follows("a.bin", over), {"a.bin": {"follows": True}}):
        sent = related("bnd", {"_id": "big", "_rev": "1-" + "c" * 32, "_attachments": att_meta}, [({}, over)])
        code, _, raw = srv.req("PUT", "/db/big?new_edits=false", sent, MP)
        assert code == 413 and json.loads(raw)["error"] == "attachment_too_large", raw[:300]
    code, _, raw = srv.req("PUT", "/db/big/a.bin", b"x" * (LIMIT + 1), {"Content-Type": "application/octet-stream"})
    assert json.loads(raw)["error"] == "attachment_too_large"
    srv.nothing_written()


def test_digests_that_do_not_match(srv: Serve) -> None:
    data = b"the bytes"
    assert srv.json("PUT", "/db/d", {"_attachments": {"a": {"data": base64.b64encode(data).decode(),
                                                            "digest": md5(b"not them")}}})[0] == 400
    code, body = srv.json("POST", "/db/_bulk_docs", {"new_edits": False, "docs": [
        {"_id": "d", "_rev": "1-" + "a" * 32, "_attachments": {"a": {"data": base64.b64encode(data).decode(),
                                                                     "digest": md5(b"not them")}}}]})
    assert code == 400, body
    code, _, raw = srv.req("PUT", "/db/d/a", data, {"Content-MD5": md5(b"not them")[4:]})
    assert code == 400, raw
    assert srv.json("PUT", "/db/d", {"_attachments": {"a": {"data": "not base64!!"}}})[0] == 400
    srv.nothing_written()


def test_a_stalled_upload_times_out_and_leaves_nothing(srv: Serve) -> None:
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as sock:
        sock.sendall(b"PUT /db/slow/a.bin HTTP/1.1\r\nHost: x\r\nAuthorization: " + auth().encode()
                     + b"\r\nContent-Length: 50000\r\n\r\n" + b"x" * 1000)
        t0 = time.monotonic()
        answer = sock.recv(4096)
        assert answer.startswith(b"HTTP/1.1 408") and time.monotonic() - t0 < 10, answer[:200]
    srv.nothing_written()


def test_readers_cannot_write_attachments_and_ranges_are_checked(srv: Serve) -> None:
    assert srv.req("PUT", "/db/r/a", b"x", user="bob")[0] in (401, 403)
    code, _, raw = srv.req("PUT", "/db/r/a", b"hello", {"Content-Type": "text/plain"})
    assert code == 201
    rev = json.loads(raw)["rev"]
    assert srv.req("DELETE", f"/db/r/a?rev={rev}", user="bob")[0] in (401, 403)
    for rng in ("bytes=9-1", "bytes=100-", "bytes=-0", "bytes=abc", "bytes=0-1,3-4", "pages=1-2", "bytes=" + "9" * 30):
        code, _, _ = srv.req("GET", "/db/r/a", headers={"Range": rng})
        assert code in (200, 206, 416), (rng, code)
    assert srv.req("GET", "/db/r/a", user="bob")[2] == b"hello"
