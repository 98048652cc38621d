"""A large ``_bulk_docs`` body, read one document at a time.

PouchDB (a web app's replication above all) sends a batch of documents with their attachments inline, base64 in
the JSON: 20 photos of 2 MB make a 53 MB body, and a batch is retried as it was until it passes. Such a body is
not read whole: as it arrives, :class:`DocsSplitter` cuts out each element of its top-level ``docs`` array;
each document is parsed on its own (within ``Limits.max_request_bytes``, its attachments' base64 included) and
its inline attachments' bytes go to disk at once (``Stored`` blobs, as a ``multipart/related`` upload's do), so
RAM holds one document at a time, whatever the batch. What else the body holds (``new_edits``...) is kept
apart and parsed at the end. The request's answer is the one a body read whole would get: the documents are
checked and written together afterwards, and every blob a refused request stored is released.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
from typing import Any

import orjson
from aiohttp import web

from ..database import Database
from ..errors import InvalidDocument
from ..records import attachments as att
from .requests import HttpError, Rules

STREAM_BODY = 8 * 1024 * 1024  # a plain _bulk_docs body larger than this (or of unknown length) is streamed
MAX_SKELETON = 64 * 1024  # what a streamed body holds besides its documents
HOP = 256 * 1024  # bytes read from the connection at a time

# Outside a string: everything up to the next bracket, whole strings included (the "unrolled loop" form: linear,
# never backtracking much), so that Python runs once per bracket; it stops at a string this chunk does not end.
_SKIP = re.compile(rb'(?:[^"{}\[\]]+|"[^"\\]*(?:\\.[^"\\]*)*")*', re.DOTALL)
_DOCS_KEY = re.compile(rb'"docs"\s*:\s*\Z')
_BETWEEN = re.compile(rb"[\s,]*\Z")  # what separates two documents of the array
_SKEL, _DOCS, _DOC = 0, 1, 2


class DocsSplitter:
    """Cuts a ``_bulk_docs`` JSON body into its documents as bytes arrive (:meth:`feed`), and the rest of the body
    with an empty ``docs`` array (:meth:`finish`). Checks only the structure it needs (strings, nesting); each
    piece is then parsed as JSON, which finds what else is wrong. ``max_doc``: the largest document, in bytes."""

    def __init__(self, max_doc: int, max_skeleton: int = MAX_SKELETON) -> None:
        self.max_doc, self.max_skeleton = max_doc, max_skeleton
        self._buf = bytearray()
        self._i = 0  # where scanning resumes in _buf
        self._depth = 0
        self._in_str = False
        self._mode = _SKEL
        self._mark = 0  # _SKEL: the first byte not yet in the skeleton; _DOCS: after the last document; _DOC: its start
        self._skeleton = bytearray()
        self._seen_docs = False

    def feed(self, data: bytes) -> list[bytes]:
        """The documents complete with ``data`` (the JSON of each, in order)."""
        buf = self._buf
        buf += data
        out: list[bytes] = []
        i = self._i
        while True:
            if self._in_str:  # memchr-fast: a base64 attachment is one long string
                q = buf.find(b'"', i)
                j = buf.find(b"\\", i, len(buf) if q < 0 else q)
                if j < 0:
                    j = q
                if j < 0:
                    i = len(buf)
                    break
                if buf[j] == 0x5C:  # a backslash: the next byte is escaped
                    if j + 1 >= len(buf):
                        i = j
                        break
                    i = j + 2
                    continue
                self._in_str = False
                i = j + 1
                continue
            m = _SKIP.match(buf, i)
            j = m.end() if m is not None else i
            if j >= len(buf):
                i = len(buf)
                break
            c = buf[j]
            i = j + 1
            if c == 0x22:  # a string that goes on past what is here: read on with find
                self._in_str = True
            elif c in (0x7B, 0x5B):  # { [
                if self._mode == _SKEL and self._depth == 1 and c == 0x5B:
                    self._skeleton += buf[self._mark:j]
                    if _DOCS_KEY.search(self._skeleton[-64:]):
                        if self._seen_docs:
                            raise HttpError(400, "bad_request", "the body has two 'docs' members")
                        self._seen_docs = True
                        self._skeleton += b"["
                        self._mode, self._mark = _DOCS, j + 1
                    else:
                        self._mark = j
                elif self._mode == _DOCS:
                    self._between(buf, j)
                    if c != 0x7B:
                        raise HttpError(400, "bad_request", "every document must be a JSON object")
                    self._mode, self._mark = _DOC, j
                self._depth += 1
            else:  # } ]
                self._depth -= 1
                if self._depth < 0:
                    raise HttpError(400, "bad_request", "invalid JSON body")
                if self._mode == _DOC and self._depth == 2:
                    out.append(bytes(buf[self._mark:j + 1]))
                    self._mode, self._mark = _DOCS, j + 1
                elif self._mode == _DOCS and self._depth == 1:
                    self._between(buf, j)
                    self._mode, self._mark = _SKEL, j
            if self._mode == _DOC and j - self._mark > self.max_doc:
                raise HttpError(413, "too_large", f"a document is over the limit of {self.max_doc} bytes")
        # keep only what is still needed: the document being read, or nothing once it is in the skeleton
        if self._mode == _SKEL:
            self._skeleton += buf[self._mark:i]
            if len(self._skeleton) > self.max_skeleton:
                raise HttpError(413, "too_large", "the request body holds too much besides its documents")
            cut = i
        elif self._mode == _DOCS:
            self._between(buf, i)
            cut = i
        else:
            if len(buf) - self._mark > self.max_doc:
                raise HttpError(413, "too_large", f"a document is over the limit of {self.max_doc} bytes")
            cut = self._mark
        del buf[:cut]
        self._i, self._mark = i - cut, self._mark - cut if self._mode == _DOC else 0
        return out

    def _between(self, buf: bytearray, end: int) -> None:
        if not _BETWEEN.match(buf[self._mark:end]):
            raise HttpError(400, "bad_request", "every document must be a JSON object")
        self._mark = end

    def finish(self) -> Any:
        """The body without its documents (``docs`` empty), parsed: once every byte was fed."""
        if self._mode != _SKEL or self._in_str or self._depth != 0:
            raise HttpError(400, "bad_request", "invalid JSON body (it ends too soon)")
        try:
            return orjson.loads(bytes(self._skeleton))
        except orjson.JSONDecodeError as exc:
            raise HttpError(400, "bad_request", "invalid JSON body") from exc


def streamed(request: web.Request) -> bool:
    """Whether a ``_bulk_docs`` body is read a document at a time: a plain (not compressed) one of unknown length
    or over :data:`STREAM_BODY` bytes."""
    if request.headers.get("Content-Encoding", "").strip().lower() not in ("", "identity"):
        return False
    length = request.content_length
    return length is None or length > STREAM_BODY


def stash_inline(db: Database, doc: Any, max_attachment_bytes: int) -> dict[str, att.Stored]:
    """Store the bytes of ``doc``'s inline attachments now (in a worker thread), each replaced in ``doc`` by a
    ``follows`` entry; returns them by name. One that is not plainly valid (content type, base64, digest) stays
    inline, for the usual checks to refuse it as they would have."""
    atts = doc.get("_attachments") if isinstance(doc, dict) else None
    id = doc.get("_id") if isinstance(doc, dict) else None
    stored: dict[str, att.Stored] = {}
    if not isinstance(atts, dict) or not isinstance(id, str):
        return stored
    try:
        for name, a in list(atts.items()):
            if not isinstance(a, dict) or type(a.get("data")) is not str or a.get("stub") or a.get("follows"):
                continue
            digest = a.get("digest")
            try:
                ctype = att.validate_content_type(a.get("content_type"))
                raw = base64.b64decode(a["data"], validate=True)
            except (InvalidDocument, binascii.Error, ValueError):
                continue
            if len(raw) > max_attachment_bytes or not (digest is None or (isinstance(digest, str)
                                                                          and digest.startswith("md5-"))):
                continue
            writer = db.attachment_writer(ctype, max_attachment_bytes)
            try:
                writer.write(raw)
            except BaseException:
                writer.abort()
                raise
            del raw
            try:
                s = db.finish_attachment(writer, id, ctype, digest=digest, revpos=a.get("revpos")
                                         if type(a.get("revpos")) is int else None)
            except InvalidDocument:  # its digest does not match: left inline, refused as before
                continue
            stored[name] = s
            atts[name] = {"follows": True, "content_type": ctype, "length": s.length, "digest": s.digest,
                          **({"revpos": s.revpos} if s.revpos is not None else {})}
    except BaseException:
        for s in stored.values():
            db.release_attachment(s)
        raise
    return stored


async def receive_bulk_docs(request: web.Request, db: Database, rules: Rules,
                            stored: list[dict[str, att.Stored]]) -> Any:
    """The body of a streamed ``_bulk_docs`` (see the module docstring), its ``docs`` parsed one by one; the
    blobs of their inline attachments are appended to ``stored`` (one dict per document; the caller releases
    what no write took, also when this raises)."""
    limits = rules.limits
    splitter = DocsSplitter(limits.max_request_bytes)
    docs: list[Any] = []
    total = 0
    held = [0, 0]  # JSON bytes and values the parsed documents hold in RAM (their stored attachments aside)

    def prepare(pieces: list[bytes]) -> None:  # in a worker thread: one hop for what one chunk completed
        for raw in pieces:
            doc = rules.parse(raw, "")
            kept = stash_inline(db, doc, limits.max_attachment_bytes)
            docs.append(doc)
            stored.append(kept)  # from here the caller releases them
            # what a body read whole may hold, the batch's documents may hold together: the same RAM bound
            held[0] += len(raw) - sum((s.length + 2) // 3 * 4 for s in kept.values())
            held[1] += 1 + raw.count(b",") + raw.count(b":") + raw.count(b"[") + raw.count(b"{")
            if held[0] > limits.max_request_bytes:
                raise HttpError(413, "too_large", "the request body is too large (its documents without their "
                                "attachments)")
            if held[1] > limits.max_json_values:
                raise HttpError(413, "too_large", f"the request body holds over {limits.max_json_values} JSON "
                                "values, the limit")

    try:
        while True:
            chunk = await asyncio.wait_for(request.content.read(HOP), limits.body_timeout)
            if not chunk:
                break
            total += len(chunk)
            if total > limits.max_attachment_bytes:  # a whole batch: as much as one attachment may be
                raise HttpError(413, "too_large", "the request body is too large")
            pieces = splitter.feed(chunk)
            if len(docs) + len(pieces) > limits.max_batch:
                raise HttpError(413, "too_large", f"over {limits.max_batch} documents in one request, the limit")
            if pieces:
                await asyncio.to_thread(prepare, pieces)
    except asyncio.TimeoutError as exc:
        raise HttpError(408, "timeout", "the request body did not arrive in time") from exc
    body = splitter.finish()
    if isinstance(body, dict) and isinstance(body.get("docs"), list) and not body["docs"]:
        body["docs"] = docs
    return body
