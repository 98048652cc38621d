"""A large _bulk_docs body (PouchDB's batches carry attachments inline, base64) is read a document at a time:
a batch far over the request size limit passes when each document is within it, and what a refused one stored
is dropped."""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from support.mirrors import MirrorProcess

MB = 1024 * 1024


def md5(data: bytes) -> str:
    return "md5-" + base64.b64encode(hashlib.md5(data).digest()).decode()


def post(url: str, body: bytes, *, chunked: bool = False) -> tuple[int, Any]:
    """A POST of JSON; with ``chunked``, sent without a Content-Length, in pieces."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    try:
        headers = {"Content-Type": "application/json"}
        if chunked:
            pieces: Iterator[bytes] = (body[i:i + 65536] for i in range(0, len(body), 65536))
            conn.request("POST", parts.path, body=pieces, headers=headers, encode_chunked=True)
        else:
            conn.request("POST", parts.path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"null")
    finally:
        conn.close()


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as r:
        return r.read()  # type: ignore[no-any-return]


def blobs(folder: Path) -> set[str]:
    """The attachment blobs a database folder holds (``attachments/ab/abcd...``)."""
    return {p.name for p in (folder / "attachments").glob("??/*") if p.is_file()}


def batch(n: int, size: int, *, replicated: bool, prefix: str = "photo") -> tuple[dict[str, Any], list[bytes]]:
    datas = [os.urandom(size) for _ in range(n)]
    docs = []
    for i, data in enumerate(datas):
        doc: dict[str, Any] = {"_id": f"{prefix}-{i}", "n": i, "_attachments": {"p.jpg": {
            "content_type": "image/jpeg", "data": base64.b64encode(data).decode(), "digest": md5(data)}}}
        if replicated:
            doc["_rev"] = f"1-{hashlib.md5(data).hexdigest()}"
            doc["_attachments"]["p.jpg"]["revpos"] = 1
        docs.append(doc)
    return {"docs": docs, **({"new_edits": False} if replicated else {})}, datas


def test_a_batch_over_the_request_limit_passes_a_document_at_a_time(
        mirrors: Callable[..., MirrorProcess], tmp_path: Path) -> None:
    m = mirrors("app", extra=["--max-request-bytes", str(4 * MB)])
    url = f"{m.url}/app"
    # as PouchDB's replicator sends them: 6 documents of 2 MiB each, ~16 MB of JSON (the limit: 4 MiB)
    body, datas = batch(6, 2 * MB, replicated=True)
    status, answer = post(f"{url}/_bulk_docs", json.dumps(body).encode())
    assert (status, answer) == (201, [])
    for i, data in enumerate(datas):
        assert get(f"{url}/photo-{i}/p.jpg") == data
        stub = json.loads(get(f"{url}/photo-{i}"))["_attachments"]["p.jpg"]
        assert stub["digest"] == md5(data) and stub["length"] == len(data) and stub["revpos"] == 1
    # new documents (new_edits true), sent chunked (no Content-Length): streamed too
    body, datas = batch(5, MB, replicated=False, prefix="new")
    status, answer = post(f"{url}/_bulk_docs", json.dumps(body).encode(), chunked=True)
    assert status == 201 and [a["id"] for a in answer] == [f"new-{i}" for i in range(5)], answer
    assert all(a["ok"] and a["rev"].startswith("1-") for a in answer)
    assert [get(f"{url}/new-{i}/p.jpg") for i in range(5)] == datas
    # a conflict stays a per-document answer, as in CouchDB; the others are written
    body, datas = batch(5, MB, replicated=False, prefix="new")
    body["docs"][2]["_id"] = "fresh"
    status, answer = post(f"{url}/_bulk_docs", json.dumps(body).encode(), chunked=True)
    assert status == 201 and [a.get("error") for a in answer] == ["conflict"] * 2 + [None] + ["conflict"] * 2
    assert get(f"{url}/fresh/p.jpg") == datas[2]


def test_a_refused_streamed_batch_writes_nothing_and_keeps_no_bytes(mirrors: Callable[..., MirrorProcess]) -> None:
    m = mirrors("app", extra=["--max-request-bytes", str(4 * MB)])
    url = f"{m.url}/app"
    body, _ = batch(1, 1000, replicated=True, prefix="small")
    assert post(f"{url}/_bulk_docs", json.dumps(body).encode()) == (201, [])
    before = blobs(m.path / "app")
    assert len(before) == 1
    body, _ = batch(4, 2 * MB, replicated=True)
    body["docs"].append({"_id": "big", "_rev": "1-" + "a" * 32, "_attachments": {"x.bin": {
        "content_type": "application/octet-stream", "data": base64.b64encode(os.urandom(4 * MB)).decode()}}})
    status, answer = post(f"{url}/_bulk_docs", json.dumps(body).encode())
    assert status == 413 and answer["error"] == "too_large", answer
    body, _ = batch(4, 2 * MB, replicated=True)
    raw = json.dumps(body).encode()
    status, answer = post(f"{url}/_bulk_docs", raw[:-3], chunked=True)  # it ends too soon
    assert status == 400 and answer["error"] == "bad_request", answer
    # documents without attachments hold RAM once parsed: together they stay within the limit (4 MiB here)
    small = [{"_id": f"s{i}", "_rev": f"1-{i:032x}", "text": "x" * 900} for i in range(10_000)]
    status, answer = post(f"{url}/_bulk_docs", json.dumps({"docs": small, "new_edits": False}).encode())
    assert status == 413 and answer["error"] == "too_large", answer
    assert json.loads(get(url))["doc_count"] == 1
    assert blobs(m.path / "app") == before
