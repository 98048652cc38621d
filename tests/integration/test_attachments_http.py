"""A mirror's attachment routes and documents with ``_attachments``, over HTTP as CouchDB clients use them: raw
bytes (``PUT|GET|HEAD|DELETE /{db}/{doc}/{name}``, ``Range``), inline base64, stubs, ``attachments=true``,
``atts_since``, ``open_revs``, ``_bulk_get`` and ``_bulk_docs`` (both modes)."""

from __future__ import annotations

import base64
import email.message
import email.parser
import email.policy
import gzip
import hashlib
import http.client
import json
import os
import urllib.parse
from typing import Any

import pytest
from support.mirrors import MirrorProcess


def md5(data: bytes) -> str:
    return "md5-" + base64.b64encode(hashlib.md5(data).digest()).decode()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class Client:
    def __init__(self, url: str) -> None:
        p = urllib.parse.urlsplit(url)
        self.host, self.port = p.hostname or "127.0.0.1", p.port or 80

    def req(self, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        try:
            hdrs = dict(headers or {})
            data = raw
            if body is not None:
                data = json.dumps(body).encode()
                hdrs.setdefault("Content-Type", "application/json")
            conn.request(method, path, body=data, headers=hdrs)
            r = conn.getresponse()
            return r.status, {k: v for k, v in r.getheaders()}, r.read()
        finally:
            conn.close()

    def json(self, method: str, path: str, body: Any = None, **kw: Any) -> tuple[int, Any]:
        status, _, data = self.req(method, path, body, **kw)
        return status, json.loads(data) if data else None


@pytest.fixture
def mirror(mirrors: Any) -> Client:
    m: MirrorProcess = mirrors("db")
    return Client(m.url)


def test_raw_bytes_put_get_range_head_delete(mirror: Client) -> None:
    data = os.urandom(700_000)
    code, body = mirror.json("PUT", "/db/doc1/photos%2F2026/a.jpg", raw=data, headers={"Content-Type": "image/jpeg"})
    assert code == 201 and body["ok"] and body["rev"].startswith("1-"), body
    rev = body["rev"]
    code, hdrs, got = mirror.req("GET", "/db/doc1/photos/2026/a.jpg")  # %2F or / in a name: the same
    assert code == 200 and got == data and hdrs["Content-Type"] == "image/jpeg"
    assert hdrs["Content-Length"] == str(len(data)) and hdrs["Accept-Ranges"] == "bytes"
    assert hdrs["Content-MD5"] == md5(data)[4:] and hdrs["ETag"] == f'"{md5(data)[4:]}"'
    code, hdrs, got = mirror.req("GET", "/db/doc1/photos/2026/a.jpg", headers={"Range": "bytes=262140-262150"})
    assert code == 206 and got == data[262140:262151] and hdrs["Content-Range"] == f"bytes 262140-262150/{len(data)}"
    code, hdrs, got = mirror.req("GET", "/db/doc1/photos/2026/a.jpg", headers={"Range": "bytes=-10"})
    assert code == 206 and got == data[-10:]
    code, hdrs, _ = mirror.req("GET", "/db/doc1/photos/2026/a.jpg", headers={"Range": "bytes=999999999-"})
    assert code == 416 and hdrs["Content-Range"] == f"bytes */{len(data)}"
    code, hdrs, got = mirror.req("HEAD", "/db/doc1/photos/2026/a.jpg")
    assert code == 200 and got == b"" and hdrs["Content-Length"] == str(len(data))
    code, _, _ = mirror.req("GET", "/db/doc1/photos/2026/a.jpg", headers={"If-None-Match": f'"{md5(data)[4:]}"'})
    assert code == 304
    code, doc = mirror.json("GET", "/db/doc1")
    assert doc["_attachments"] == {"photos/2026/a.jpg": {"content_type": "image/jpeg", "revpos": 1,
                                                         "digest": md5(data), "length": len(data), "stub": True}}
    assert mirror.json("PUT", "/db/doc1/b.txt", raw=b"x")[0] == 409  # the document exists: its rev is needed
    code, body = mirror.json("PUT", f"/db/doc1/b.txt?rev={rev}", raw=b"bee", headers={"Content-Type": "text/plain"})
    assert code == 201
    assert mirror.json("DELETE", "/db/doc1/photos/2026/a.jpg")[0] == 409  # no rev
    code, body = mirror.json("DELETE", f"/db/doc1/photos/2026/a.jpg?rev={body['rev']}")
    assert code == 200 and body["rev"].startswith("3-")
    assert mirror.req("GET", "/db/doc1/photos/2026/a.jpg")[0] == 404
    assert mirror.req("GET", f"/db/doc1/photos/2026/a.jpg?rev={rev}")[0] == 404  # not a leaf any more
    code, hdrs, got = mirror.req("GET", "/db/doc1/b.txt")
    assert got == b"bee" and hdrs["Content-Type"] == "text/plain"
    assert mirror.json("PUT", f"/db/doc1/x?rev={body['rev']}", raw=b"abc",
                       headers={"Content-MD5": md5(b"abd")[4:]})[0] == 400  # bytes that are not what was said


def test_inline_attachments_stubs_attachments_true_and_atts_since(mirror: Client) -> None:
    one, two = b"first bytes" * 50, os.urandom(3000)
    code, r1 = mirror.json("PUT", "/db/d", {"v": 1, "_attachments": {
        "one.txt": {"content_type": "text/plain", "data": b64(one)}}})
    assert code == 201
    code, r2 = mirror.json("PUT", "/db/d", {"_rev": r1["rev"], "v": 2, "_attachments": {
        "one.txt": {"stub": True}, "two.bin": {"content_type": "application/octet-stream", "data": b64(two),
                                               "digest": md5(two)}}})
    assert code == 201, r2
    code, doc = mirror.json("GET", "/db/d?attachments=true")
    assert doc["v"] == 2 and base64.b64decode(doc["_attachments"]["one.txt"]["data"]) == one
    assert doc["_attachments"]["two.bin"] == {"content_type": "application/octet-stream", "revpos": 2,
                                              "digest": md5(two), "data": b64(two)}
    code, doc = mirror.json("GET", f"/db/d?atts_since={urllib.parse.quote(json.dumps([r1['rev']]))}")
    assert doc["_attachments"]["one.txt"]["stub"] is True and "data" in doc["_attachments"]["two.bin"]
    # CouchDB's rule: a PUT lists the new revision's attachments; what it leaves out is gone
    code, r3 = mirror.json("PUT", "/db/d", {"_rev": r2["rev"], "v": 3, "_attachments": {"two.bin": {"stub": True}}})
    assert code == 201
    code, doc = mirror.json("GET", "/db/d")
    assert list(doc["_attachments"]) == ["two.bin"]
    code, body = mirror.json("PUT", "/db/d", {"_rev": r3["rev"], "_attachments": {"nope": {"stub": True}}})
    assert code == 412 and body["error"] == "missing_stub"
    code, _ = mirror.json("PUT", "/db/d", {"_rev": r3["rev"], "v": 4})
    assert code == 201 and "_attachments" not in mirror.json("GET", "/db/d")[1]
    code, body = mirror.json("PUT", "/db/e", {"_attachments": {"a": {"data": b64(b"abc"), "digest": md5(b"abd")}}})
    assert code == 400 and "digest" in body["reason"]
    code, body = mirror.json("POST", "/db", {"_attachments": {"a": {"content_type": "text/plain", "data": b64(b"p")}}})
    assert code == 201
    assert mirror.req("GET", f"/db/{body['id']}/a")[2] == b"p"


def test_replication_routes_carry_attachments(mirror: Client) -> None:
    data = os.urandom(10_000)
    r1, r2 = "1-" + "a" * 32, "2-" + "b" * 32
    doc = {"_id": "rep", "_rev": r1, "v": 1, "_attachments": {"f.bin": {"content_type": "application/octet-stream",
                                                                        "revpos": 1, "digest": md5(data),
                                                                        "data": b64(data)}}}
    code, body = mirror.json("POST", "/db/_bulk_docs", {"docs": [doc], "new_edits": False})
    assert code == 201 and body == []
    # the next revision as a replicator sends it when the target has the previous one: a stub
    stubbed = {"_id": "rep", "_rev": r2, "v": 2, "_revisions": {"start": 2, "ids": ["b" * 32, "a" * 32]},
               "_attachments": {"f.bin": {"content_type": "application/octet-stream", "revpos": 1,
                                          "digest": md5(data), "length": len(data), "stub": True}}}
    missing = {"_id": "other", "_rev": r1, "_attachments": {"g": {"stub": True, "digest": md5(b"?"), "revpos": 1}}}
    code, body = mirror.json("POST", "/db/_bulk_docs", {"docs": [stubbed, missing], "new_edits": False})
    assert code == 201 and body == [{"id": "other", "error": "missing_stub",
                                     "reason": body[0]["reason"]}], body
    assert mirror.req("GET", "/db/rep/f.bin")[2] == data
    assert mirror.req("GET", "/db/other")[0] == 404
    code, got = mirror.json("POST", "/db/_bulk_get?revs=true&attachments=true",
                            {"docs": [{"id": "rep", "rev": r2}, {"id": "rep", "rev": r2, "atts_since": [r1]}]})
    full, since = (r["docs"][0]["ok"] for r in got["results"])
    assert base64.b64decode(full["_attachments"]["f.bin"]["data"]) == data
    assert since["_attachments"]["f.bin"]["stub"] is True
    code, got = mirror.json("POST", "/db/_bulk_get", {"docs": [{"id": "rep"}]})
    assert got["results"][0]["docs"][0]["ok"]["_attachments"]["f.bin"]["stub"] is True
    revs = urllib.parse.quote(json.dumps([r2]))
    code, got = mirror.json("GET", f"/db/rep?open_revs={revs}&revs=true&attachments=true")
    assert base64.b64decode(got[0]["ok"]["_attachments"]["f.bin"]["data"]) == data
    code, got = mirror.json("GET", f"/db/rep?open_revs={revs}&revs=true")
    assert got[0]["ok"]["_attachments"]["f.bin"]["stub"] is True
    code, rows = mirror.json("GET", "/db/_all_docs?include_docs=true")
    assert rows["rows"][0]["doc"]["_attachments"]["f.bin"]["stub"] is True
    code, ch = mirror.json("GET", "/db/_changes?include_docs=true")
    assert ch["results"][-1]["doc"]["_attachments"]["f.bin"]["length"] == len(data)


def test_ids_with_slashes_design_documents_and_names(mirror: Client) -> None:
    code, body = mirror.json("PUT", "/db/a%2Fb/c/d.txt", raw=b"in a/b", headers={"Content-Type": "text/plain"})
    assert code == 201 and body["id"] == "a/b"
    assert mirror.req("GET", "/db/a%2Fb/c/d.txt")[2] == b"in a/b"
    assert mirror.json("GET", "/db/a%2Fb")[1]["_attachments"]["c/d.txt"]["length"] == 6
    code, body = mirror.json("PUT", "/db/_design/app/index.html", raw=b"<p>", headers={"Content-Type": "text/html"})
    assert code == 201 and body["id"] == "_design/app"
    assert mirror.req("GET", "/db/_design/app/index.html")[2] == b"<p>"
    assert mirror.req("GET", "/db/_design%2Fapp/index.html")[2] == b"<p>"
    for bad in ("/db/x/_reserved", "/db/x/a%00b", "/db/x/" + "n" * 1100, "/db/x/a//b", "/db/x/%2E%2E/y"):
        code, body = mirror.json("PUT", bad, raw=b"x")
        assert code == 400, (bad, code, body)
    assert mirror.json("GET", "/db/_all_docs")[1]["total_rows"] == 2


def related(boundary: str, doc: dict[str, Any], parts: list[tuple[str, str, bytes]]) -> bytes:
    out = [f"--{boundary}\r\nContent-Type: application/json\r\n\r\n".encode() + json.dumps(doc).encode()]
    for name, ctype, data in parts:
        out.append(f'\r\n--{boundary}\r\nContent-Disposition: attachment; filename="{name}"\r\nContent-Type: '
                   f"{ctype}\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data)
    out.append(f"\r\n--{boundary}--".encode())
    return b"".join(out)


def parse_multipart(content_type: str, body: bytes) -> email.message.Message:
    return email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body)


def test_the_multipart_forms_couchdbs_replicator_uses(mirror: Client) -> None:
    one, two = os.urandom(300_000), b"gzip'ed on the wire " * 500
    packed = gzip.compress(two)
    r1, r2 = "1-" + "c" * 32, "2-" + "d" * 32
    doc = {"_id": "mp", "_rev": r1, "v": 1, "_attachments": {
        "one.bin": {"content_type": "application/octet-stream", "revpos": 1, "digest": md5(one),
                    "length": len(one), "follows": True},
        "two.txt": {"content_type": "text/plain", "revpos": 1, "digest": md5(packed), "length": len(two),
                    "encoding": "gzip", "encoded_length": len(packed), "follows": True}}}
    body = related("xyz", doc, [("one.bin", "application/octet-stream", one), ("two.txt", "text/plain", packed)])
    code, got = mirror.json("PUT", "/db/mp?new_edits=false", raw=body,
                            headers={"Content-Type": 'multipart/related; boundary="xyz"'})
    assert code == 201, got
    assert mirror.req("GET", "/db/mp/one.bin")[2] == one and mirror.req("GET", "/db/mp/two.txt")[2] == two
    nxt = {"_id": "mp", "_rev": r2, "v": 2, "_revisions": {"start": 2, "ids": ["d" * 32, "c" * 32]},
           "_attachments": {"one.bin": {"stub": True, "digest": md5(one), "revpos": 1, "length": len(one),
                                        "content_type": "application/octet-stream"},
                            "three": {"content_type": "text/plain", "revpos": 2, "digest": md5(b"3"),
                                      "length": 1, "follows": True}}}
    code, got = mirror.json("PUT", "/db/mp?new_edits=false", raw=related("b2", nxt, [("three", "text/plain", b"3")]),
                            headers={"Content-Type": 'multipart/related; boundary="b2"'})
    assert code == 201, got
    # what CouchDB's replicator asks for: open_revs, atts_since, multipart/mixed
    q = (f"open_revs={urllib.parse.quote(json.dumps([r2, '9-' + 'e' * 32]))}&revs=true&latest=true"
         f"&attachments=true&atts_since={urllib.parse.quote(json.dumps([r1]))}")
    code, hdrs, raw = mirror.req("GET", f"/db/mp?{q}", headers={"Accept": "multipart/mixed"})
    assert code == 200 and hdrs["Content-Type"].startswith("multipart/mixed")
    outer = parse_multipart(hdrs["Content-Type"], raw)
    found, missing = outer.get_payload()
    assert found.get_content_type() == "multipart/related"
    head, three = found.get_payload()
    sent = json.loads(head.get_payload(decode=True))
    assert sent["_rev"] == r2 and sent["_attachments"]["one.bin"]["stub"] is True  # the target has it (atts_since)
    assert sent["_attachments"]["three"]["follows"] is True and three.get_payload(decode=True) == b"3"
    assert json.loads(missing.get_payload(decode=True)) == {"missing": "9-" + "e" * 32}
    code, hdrs, raw = mirror.req("GET", "/db/mp?attachments=true", headers={"Accept": "multipart/related"})
    parts = parse_multipart(hdrs["Content-Type"], raw).get_payload()
    sent = json.loads(parts[0].get_payload(decode=True))
    by_name = {p.get_filename(): p.get_payload(decode=True) for p in parts[1:]}
    assert list(sent["_attachments"]) == ["one.bin", "three"] and by_name == {"one.bin": one, "three": b"3"}
    # a normal edit as multipart too (CouchDB takes them): the document and a new attachment
    code, got = mirror.json("PUT", "/db/mp2", raw=related("n1", {"v": 1, "_attachments": {"a.txt": {
        "content_type": "text/plain", "length": 2, "follows": True}}}, [("a.txt", "text/plain", b"hi")]),
        headers={"Content-Type": 'multipart/related; boundary="n1"'})
    assert code == 201 and mirror.req("GET", "/db/mp2/a.txt")[2] == b"hi"
