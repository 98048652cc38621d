"""Attachments on a mirror: ``GET|HEAD|PUT|DELETE /{db}/{doc}/{name}`` (raw bytes, ``?rev=``, ``Range``), the
way a document URL splits into document id and attachment name (CouchDB's rule), and the streaming of bytes
both ways: an upload goes to disk a chunk at a time as it arrives (never whole in RAM), a download is read from
disk a chunk at a time. Disk work runs in worker threads, never on the event loop."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import re
import secrets
import sys
import urllib.parse
import zlib
from collections.abc import Awaitable, Iterator
from typing import Any, TypeVar

import aiohttp
import orjson
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from ..database import Database
from ..errors import InvalidDocument
from ..net import wire
from ..records import attachments as att
from ..records.ids import validate_id
from ..records.revtree import DocState, ancestry
from ..storage.blobs import BlobReader, BlobWriter
from .context import ServerContext
from .requests import HttpError, json_response

T = TypeVar("T")
HOP_BYTES = 1024 * 1024  # bytes handed to (or taken from) a worker thread at a time
_RANGE = re.compile(r"^bytes=(\d{0,19})-(\d{0,19})$")
_DESIGN_OR_LOCAL = ("_design", "_local")


def _segment(raw: str) -> str:
    try:
        return urllib.parse.unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise HttpError(400, "bad_request", "the URL path is not valid UTF-8") from exc


def doc_path(request: web.Request) -> tuple[str, str | None]:
    """The document id and attachment name (None: the document itself) of ``/{db}/{doc}[/{name}]``, CouchDB's
    rule: the document is the first path segment (``%2F`` in it is a ``/`` of the id), or two for ``_design/x``
    and ``_local/x``; what follows, slashes included, is the attachment name. 400 for an id or name the rules
    refuse."""
    segs = request.rel_url.raw_path.split("/")[2:]
    first = _segment(segs[0]) if segs else ""
    if first in _DESIGN_OR_LOCAL and len(segs) >= 2:
        id, rest = f"{first}/{_segment(segs[1])}", segs[2:]
    else:
        id, rest = first, segs[1:]
    try:
        id = validate_id(id)
    except InvalidDocument as exc:
        raise HttpError(400, "illegal_docid", str(exc)) from exc
    if not rest:
        return id, None
    try:
        return id, att.validate_name("/".join(_segment(s) for s in rest))
    except InvalidDocument as exc:
        raise HttpError(400, "bad_request", str(exc)) from exc


def etag(digest: str) -> str:
    return '"' + (digest[4:] if digest.startswith("md5-") else digest) + '"'


def parse_range(header: str | None, length: int) -> tuple[int, int] | None:
    """The one byte range ``[start, end)`` a ``Range: bytes=a-b`` header asks for; None for the whole (no header,
    or one this server does not do: several ranges, other units). 416 for a range outside the bytes."""
    if not header:
        return None
    m = _RANGE.match(header.strip())
    if m is None:
        return None
    a, b = m.groups()
    if not a and not b:
        return None
    if not a:
        n = int(b)
        if n == 0:
            raise HttpError(416, "range_not_satisfiable", "Requested range not satisfiable")
        return max(0, length - n), length
    start = int(a)
    end = min(int(b) + 1, length) if b else length
    if start >= length or start >= end:
        raise HttpError(416, "range_not_satisfiable", "Requested range not satisfiable")
    return start, end


def _take(it: Iterator[bytes]) -> bytes:
    """Up to HOP_BYTES of the iterator's chunks, joined (in a worker thread)."""
    parts: list[bytes] = []
    size = 0
    for chunk in it:
        parts.append(chunk)
        size += len(chunk)
        if size >= HOP_BYTES:
            break
    return b"".join(parts)


async def send_blob(request: web.Request, resp: web.StreamResponse, reader: BlobReader, start: int,
                    end: int) -> None:
    """Write bytes ``[start, end)`` of ``reader`` to a prepared response, a hop of up to 1 MiB at a time."""
    it = reader.chunks(start, end)
    while True:
        data = await asyncio.to_thread(_take, it)
        if not data:
            break
        await resp.write(data)


if sys.version_info >= (3, 11):
    async def _within(aw: Awaitable[T], seconds: float) -> T:
        """``await aw`` within ``seconds`` (``asyncio.TimeoutError`` after): no task per call, unlike wait_for."""
        async with asyncio.timeout(seconds):
            return await aw
else:  # pragma: no cover - Python 3.10
    async def _within(aw: Awaitable[T], seconds: float) -> T:
        return await asyncio.wait_for(aw, seconds)


async def receive_into(stream: Any, writer: BlobWriter, timeout: float, *, limit: int | None = None,
                       gunzip: Any = None) -> int:
    """Copy a request body (an aiohttp ``StreamReader``, or a multipart part with ``read_chunk``) into a blob as it
    arrives: at most ~1 MiB in RAM, each read within ``timeout`` seconds (a stalled upload fails: 408). Returns
    the bytes received. Over ``limit`` (or the writer's): 413. ``gunzip``: a :class:`Gunzip` the bytes go
    through first (they travel gzip'ed)."""
    buf = bytearray()
    total = 0
    if hasattr(stream, "readany"):
        read = stream.readany
    else:
        def read() -> Any:
            return stream.read_chunk(256 * 1024)
    try:
        while True:
            try:
                chunk = await _within(read(), timeout)
            except asyncio.TimeoutError as exc:
                raise HttpError(408, "timeout", "the request body did not arrive in time") from exc
            if not chunk:
                break
            total += len(chunk)
            if limit is not None and total > limit:
                raise HttpError(413, "attachment_too_large", f"the attachment is over the limit of {limit} bytes")
            if gunzip is not None:
                for part in gunzip.feed(chunk):
                    buf += part
                    if len(buf) >= HOP_BYTES:
                        data, buf = buf, bytearray()  # handed over whole: no copy
                        await asyncio.to_thread(writer.write, data)
                continue
            buf += chunk
            if len(buf) >= HOP_BYTES:
                data, buf = buf, bytearray()
                await asyncio.to_thread(writer.write, data)
        if buf:
            await asyncio.to_thread(writer.write, buf)
    except att.AttachmentTooLarge as exc:
        raise HttpError(413, "attachment_too_large", str(exc)) from exc
    return total


class Gunzip:
    """Decompresses a gzip'ed attachment as it arrives (a chunk at a time: no bomb), and hashes what travelled."""

    def __init__(self) -> None:
        self._d = zlib.decompressobj(31)
        self.md5 = hashlib.md5(usedforsecurity=False)

    def feed(self, data: bytes) -> Iterator[bytes]:
        self.md5.update(data)
        try:
            out = self._d.decompress(data, HOP_BYTES)
            while out:
                yield out
                out = self._d.decompress(self._d.unconsumed_tail, HOP_BYTES) if self._d.unconsumed_tail else b""
        except zlib.error as exc:
            raise HttpError(400, "bad_request", "a gzip'ed attachment does not decompress") from exc


async def receive_multipart(request: web.Request, db: Database, id: str, limits: Any) -> tuple[Any, dict[str, Any]]:
    """A ``multipart/related`` document (CouchDB's replicator sends them): its JSON, then one part per attachment
    marked ``follows``, in the order the JSON lists them, each streamed to disk. Returns the document and its
    attachments (``follows`` ones ``Stored``: the caller's write releases them, or it calls
    :func:`release_all`). Malformed bodies, lying lengths, too many or too few parts: 4xx, nothing kept."""
    timeout = limits.body_timeout
    stored: dict[str, att.Stored] = {}
    try:
        try:
            reader = aiohttp.MultipartReader(request.headers, request.content)
            part = await asyncio.wait_for(reader.next(), timeout)
            if not isinstance(part, aiohttp.BodyPartReader):
                raise HttpError(400, "bad_request", "a multipart/related document starts with its JSON")
            raw = bytearray()
            while chunk := await asyncio.wait_for(part.read_chunk(256 * 1024), timeout):
                raw += chunk
                if len(raw) > limits.max_request_bytes:
                    raise HttpError(413, "too_large", "the document's JSON is too large")
            try:
                doc = orjson.loads(bytes(raw))
            except orjson.JSONDecodeError as exc:
                raise HttpError(400, "bad_request", "the first part is not a JSON document") from exc
            if not isinstance(doc, dict):
                raise HttpError(400, "bad_request", "document must be a JSON object")
            given = doc.get("_attachments")
            try:
                parsed = {} if given is None else att.parse_attachments(given, max_bytes=limits.max_attachment_bytes)
            except att.AttachmentTooLarge as exc:
                raise HttpError(413, "attachment_too_large", str(exc)) from exc
            except InvalidDocument as exc:
                raise HttpError(400, "bad_request", str(exc)) from exc
            for name, a in parsed.items():
                if not isinstance(a, att.Follows):
                    continue
                part = await asyncio.wait_for(reader.next(), timeout)
                if not isinstance(part, aiohttp.BodyPartReader):
                    raise HttpError(400, "bad_request", f"no part for attachment {name[:80]!r} (fewer parts than "
                                    "attachments that follow)")
                writer = await asyncio.to_thread(db.attachment_writer, a.content_type, limits.max_attachment_bytes)
                try:
                    gunzip = Gunzip() if a.encoding == "gzip" else None
                    await receive_into(part, writer, timeout, limit=limits.max_attachment_bytes, gunzip=gunzip)
                    stored[name] = await asyncio.to_thread(
                        db.finish_attachment, writer, id, a.content_type, digest=a.digest, revpos=a.revpos,
                        length=a.length, encoded_md5=gunzip.md5.digest() if gunzip is not None else None)
                except BaseException:
                    await asyncio.to_thread(writer.abort)
                    raise
            if await asyncio.wait_for(reader.next(), timeout) is not None:
                raise HttpError(400, "bad_request", "more parts than attachments that follow")
        except asyncio.TimeoutError as exc:
            raise HttpError(408, "timeout", "the request body did not arrive in time") from exc
        except InvalidDocument as exc:
            raise HttpError(400, "bad_request", str(exc)) from exc
        except HttpProcessingError as exc:  # aiohttp's parser: a part header over its limits (8 KiB, 32 of them)
            raise HttpError(400, "bad_request", "malformed multipart body: a part's headers are too long or too "
                            "many") from exc
        except (ValueError, AssertionError, LookupError, aiohttp.ClientError, RuntimeError) as exc:
            raise HttpError(400, "bad_request", f"malformed multipart body: {str(exc)[:200]}") from exc
    except BaseException:
        release_all(db, stored)
        raise
    return doc, stored


def _quoted(name: str) -> str:
    return name.replace("\\", "\\\\").replace('"', '\\"')


class MultipartAnswer:
    """Documents with their attachments' bytes as CouchDB's replicator asks for them: a ``multipart/related``
    body (the JSON, then one part per attachment marked ``follows``), or ``multipart/mixed`` for ``open_revs``
    (one part per revision: a nested ``multipart/related`` when it has bytes to send, else its JSON; a missing
    revision as ``{"missing": rev}`` with ``error="true"``). Streamed: one blob chunk in RAM at a time."""

    def __init__(self, request: web.Request, db: Database) -> None:
        self.request, self.db = request, db

    async def related(self, resp: web.StreamResponse, state: DocState, rev: str, doc: dict[str, Any],
                      boundary: str) -> None:
        await resp.write(f"--{boundary}\r\nContent-Type: application/json\r\n\r\n".encode() + orjson.dumps(doc))
        for name, a in doc.get("_attachments", {}).items():
            if not a.get("follows"):
                continue
            await resp.write((f'\r\n--{boundary}\r\nContent-Disposition: attachment; filename="{_quoted(name)}"'
                              f"\r\nContent-Type: {a['content_type']}\r\nContent-Length: {a['length']}\r\n\r\n")
                             .encode())
            reader = await asyncio.to_thread(self.db.open_blob, state, rev, name)
            try:
                await send_blob(self.request, resp, reader, 0, reader.length)
            finally:
                reader.close()
        await resp.write(f"\r\n--{boundary}--".encode())

    async def one(self, state: DocState, rev: str, *, revs: bool, since: list[str] | None,
                  conflicts: bool = False) -> web.StreamResponse:
        """``GET /{db}/{doc}?attachments=true`` with ``Accept: multipart/related``."""
        doc = wire.doc_to_wire(state, rev, revs=revs, conflicts=conflicts, follows=True,
                               since=att.since_generation(ancestry(state.tree, rev), since))
        boundary = secrets.token_hex(16)
        resp = web.StreamResponse(headers={"Content-Type": f'multipart/related; boundary="{boundary}"'})
        await resp.prepare(self.request)
        await self.related(resp, state, rev, doc, boundary)
        await resp.write_eof()
        return resp

    async def open_revs(self, state: DocState, entries: list[tuple[str, bool]], *, revs: bool,
                        since: list[str] | None) -> web.StreamResponse:
        """``open_revs`` with ``Accept: multipart/mixed``: ``entries`` are (rev, found)."""
        outer = secrets.token_hex(16)
        resp = web.StreamResponse(headers={"Content-Type": f'multipart/mixed; boundary="{outer}"'})
        await resp.prepare(self.request)
        sep = b""  # the CRLF before a delimiter belongs to it: none before the first
        for rev, found in entries:
            await resp.write(sep + f"--{outer}\r\n".encode())
            sep = b"\r\n"
            if not found:
                await resp.write(b'Content-Type: application/json; error="true"\r\n\r\n'
                                 + orjson.dumps({"missing": rev}))
                continue
            doc = wire.doc_to_wire(state, rev, revs=revs, follows=True,
                                   since=att.since_generation(ancestry(state.tree, rev), since))
            if any(a.get("follows") for a in doc.get("_attachments", {}).values()):
                inner = secrets.token_hex(16)
                await resp.write(f'Content-Type: multipart/related; boundary="{inner}"\r\n\r\n'.encode())
                await self.related(resp, state, rev, doc, inner)
            else:
                await resp.write(b"Content-Type: application/json\r\n\r\n" + orjson.dumps(doc))
        await resp.write(sep + f"--{outer}--".encode())
        await resp.write_eof()
        return resp


def release_all(db: Database, stored: dict[str, Any]) -> None:
    for s in stored.values():
        if isinstance(s, att.Stored):
            db.release_attachment(s)


class InlineBudget:
    """Reads attachments' bytes to send them inline (base64 in JSON), at most ``limit`` bytes in one answer (a
    client wanting more gets a 413 naming the ways that stream them). In a worker thread."""

    def __init__(self, db: Database, limit: int) -> None:
        self.db, self.left = db, limit

    def leaf(self, state: DocState, rev: str) -> Any:
        """What ``wire.doc_to_wire`` calls for the bytes of an attachment of leaf ``rev`` of ``state``."""

        def data(name: str, meta: dict[str, Any]) -> bytes:
            self.left -= meta["length"]
            if self.left < 0:
                raise HttpError(413, "too_large", "these attachments are too large to send inline in JSON; ask with "
                                "Accept: multipart/related (multipart/mixed for open_revs), or GET /{db}/{doc}/{name}")
            try:
                with self.db.open_blob(state, rev, name) as f:
                    return f.read()
            except FileNotFoundError as exc:
                raise HttpError(404, "not_found", "Document is missing attachment") from exc

        return data


class AttachmentRoutes:
    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx

    def _rev(self, request: web.Request) -> str | None:
        rev = request.query.get("rev")
        if rev is None:
            match = request.headers.get("If-Match")
            rev = match.strip().strip('"') if match else None
        return rev or None

    async def get(self, request: web.Request, db: Database, id: str, name: str) -> web.StreamResponse:
        """``GET|HEAD /{db}/{doc}/{name}``: the bytes (``?rev=``: of that leaf), ``Range`` honoured (one range)."""
        state = await asyncio.to_thread(db.state, id)
        if state is None:
            raise HttpError(404, "not_found", "missing")
        rev = request.query.get("rev") or state.winner
        if rev not in state.bodies or state.tree[rev][1]:
            raise HttpError(404, "not_found", "deleted" if rev in state.bodies else "missing")
        meta = state.leaf_atts(rev).get(name)
        if meta is None:
            raise HttpError(404, "not_found", "Document is missing attachment")
        tag = etag(meta["digest"])
        headers = {"Content-Type": meta["content_type"], "ETag": tag, "Accept-Ranges": "bytes",
                   "Cache-Control": "must-revalidate"}
        if request.headers.get("If-None-Match") == tag:
            return web.Response(status=304, headers={"ETag": tag})
        try:
            reader = await asyncio.to_thread(db.open_blob, state, rev, name)
        except FileNotFoundError as exc:  # compacted away since we read the record: it changed
            raise HttpError(404, "not_found", "Document is missing attachment") from exc
        try:
            length = reader.length
            span = parse_range(request.headers.get("Range"), length) if request.method == "GET" else None
            status = 200
            start, end = 0, length
            if span is not None:
                start, end = span
                status = 206
                headers["Content-Range"] = f"bytes {start}-{end - 1}/{length}"
            elif meta["digest"].startswith("md5-"):
                headers["Content-MD5"] = meta["digest"][4:]
            resp = web.StreamResponse(status=status, headers=headers)
            resp.content_length = end - start
            await resp.prepare(request)
            if request.method != "HEAD":
                await send_blob(request, resp, reader, start, end)
            await resp.write_eof()
            return resp
        except HttpError as exc:
            if exc.status == 416:
                return web.Response(status=416, headers={"Content-Range": f"bytes */{reader.length}"},
                                    body=b'{"error":"range_not_satisfiable","reason":"Requested range not '
                                         b'satisfiable"}', content_type="application/json")
            raise
        finally:
            reader.close()

    async def put(self, request: web.Request, db: Database, id: str, name: str) -> web.Response:
        """``PUT /{db}/{doc}/{name}?rev=``: the request body is the bytes (streamed to disk), ``Content-Type`` their
        type; a ``Content-MD5`` header must match them. Creates the document if it does not exist (no rev)."""
        limits = self.ctx.limits
        limit = limits.max_attachment_bytes
        rev = self._rev(request)
        try:
            ctype = att.validate_content_type(request.headers.get("Content-Type"))
        except InvalidDocument as exc:
            raise HttpError(400, "bad_request", str(exc)) from exc
        coding = request.headers.get("Content-Encoding", "").strip().lower()
        if coding not in ("", "identity"):
            raise HttpError(415, "unsupported_media_type", "attachment bodies are sent as they are (no "
                            "Content-Encoding)")
        length = request.content_length
        if length is not None and length > limit:
            raise HttpError(413, "attachment_too_large", f"the attachment is over the limit of {limit} bytes")
        md5 = request.headers.get("Content-MD5")
        digest = None
        if md5 is not None:
            try:
                digest = att.md5_digest(base64.b64decode(md5, validate=True))
            except (binascii.Error, ValueError) as exc:
                raise HttpError(400, "bad_request", "Content-MD5 is not base64") from exc
        writer = await asyncio.to_thread(db.attachment_writer, ctype, limit)
        try:
            got = await receive_into(request.content, writer, limits.body_timeout, limit=limit)
            if length is not None and got != length:
                raise HttpError(400, "bad_request", "the body is shorter than its Content-Length")
            stored = await asyncio.to_thread(db.finish_attachment, writer, id, ctype, digest=digest)
        except BaseException:
            await asyncio.to_thread(writer.abort)
            raise
        new_rev = await asyncio.to_thread(db.attach, id, name, stored, rev)
        resp = json_response({"ok": True, "id": id, "rev": new_rev}, 201)
        resp.headers["ETag"] = f'"{new_rev}"'
        return resp

    async def delete(self, request: web.Request, db: Database, id: str, name: str) -> web.Response:
        rev = self._rev(request)
        if rev is None:
            raise HttpError(409, "conflict", "Document update conflict.")
        new_rev = await asyncio.to_thread(db.deleteattachment, id, name, rev)
        return json_response({"ok": True, "id": id, "rev": new_rev})
