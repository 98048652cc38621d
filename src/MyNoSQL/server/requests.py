"""What a mirror checks of a request before any database sees it: bodies (size, compression, JSON), batches,
ids and revisions, documents (CouchDB's rules, our limits), and the error answers (CouchDB-shaped JSON)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import zlib
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple, TypeVar

import orjson
from aiohttp import web

from ..database import Database
from ..errors import InvalidDocument
from ..net import wire
from ..options import Limits
from ..records import attachments as att
from ..records import revtree
from ..records.ids import DESIGN_PREFIX, validate_id

T = TypeVar("T")
INLINE_BODY = 64 * 1024  # a plain body up to this size is parsed on the event loop; larger ones, and compressed
#                          ones, in the parse pool
PARSE_WORKERS = 2  # threads that decompress and parse large bodies (their own: reads never wait behind them)


class HttpError(Exception):
    """An answer other than success: ``status``, CouchDB's ``error`` word and a ``reason``."""

    def __init__(self, status: int, error: str, reason: str) -> None:
        super().__init__(reason)
        self.status, self.error, self.reason = status, error, reason


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def error_response(status: int, error: str, reason: str) -> web.Response:
    return json_response({"error": error, "reason": reason}, status)


class Edit(NamedTuple):
    """A checked normal write: a record to save with its attachments, or (``deleted``) a deletion of ``rev``
    keeping ``record`` as its body (CouchDB's ``{"_deleted": true, ...}``; a deletion has no attachments)."""

    id: Any
    rev: str | None
    record: dict[str, Any] | None
    atts: dict[str, Any] | None = None  # the document's _attachments, checked (att.AttIn; None: it has none)
    deleted: bool = False


class Refused(NamedTuple):
    """A document of a batch refused on its own (a reserved id, an unknown ``_`` member, a design document written
    by someone not an admin), as CouchDB does."""

    id: Any
    reason: str
    error: str = "forbidden"


NOT_ADMIN = "You are not a db or server admin."


class LocalWrite(NamedTuple):
    """A ``_local/`` document in a ``_bulk_docs`` batch: written as a local document, as CouchDB does."""

    id: str
    doc: dict[str, Any]


def reserved(id: Any) -> bool:
    """A well-formed id that starts with ``_`` but is not a design document's (``_design/NAME`` are records): never
    held here, refused on its own in a batch (as CouchDB refuses a document its validation forbids), never a
    reason to refuse a batch."""
    return isinstance(id, str) and id[:1] == "_" and not id.startswith(DESIGN_PREFIX) and "\x00" not in id \
        and len(id) <= 1024 and len(id.encode("utf-8", "surrogatepass")) <= 1024


def check_ids_and_revs(pairs: Iterable[tuple[Any, Any]]) -> None:
    """A 400 unless every id is a record id (or a reserved one) and every rev (None: any) a revision id."""
    for id, rev in pairs:
        try:
            if not reserved(id):
                validate_id(id)
        except InvalidDocument as exc:
            raise HttpError(400, "bad_request", f"{str(id)[:80]!r}: {exc}") from exc
        if rev is not None and not revtree.is_rev(rev):
            raise HttpError(400, "bad_request", f"invalid rev format: {str(rev)[:80]!r}")


def checked_local_id(id: str) -> str:
    """The id of a ``_local`` document (a checkpoint), or a 400."""
    if not id or "\x00" in id or len(id.encode("utf-8", "surrogatepass")) > 1024:
        raise HttpError(400, "illegal_docid", "local document ids are 1-1024 bytes without NUL")
    return id


def doc_id(request: web.Request) -> str:
    """The record id of a document route, or a 400 (the same rules as every write: ``validate_id``)."""
    try:
        return validate_id(request.match_info["id"])
    except InvalidDocument as exc:
        raise HttpError(400, "illegal_docid", str(exc)) from exc


def local_id(request: web.Request) -> str:
    return checked_local_id(request.match_info["id"])


def flag(request: web.Request, name: str) -> bool:
    return request.query.get(name, "false").lower() == "true"


class Rules:
    """The checks that depend on a mirror's :class:`Limits`."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    async def body(self, request: web.Request) -> Any:
        """The request's JSON body: within the time and size limits, decompressed here if it is compressed. A
        large or compressed body is decompressed and parsed in a pool of its own (:data:`PARSE_WORKERS` threads):
        never on the event loop, and never more than that many at once."""
        length = request.content_length
        try:
            if length is not None and length <= 65536 and request.content.is_eof():
                raw = await request.read()  # already here: no timer task needed
            else:
                raw = await asyncio.wait_for(request.read(), self.limits.body_timeout)
        except asyncio.TimeoutError as exc:
            raise HttpError(408, "timeout", "the request body did not arrive in time") from exc
        coding = request.headers.get("Content-Encoding", "").strip().lower()
        if coding in ("", "identity"):
            coding = ""
        elif coding not in ("gzip", "x-gzip", "deflate"):
            raise HttpError(415, "unsupported_media_type", "request bodies may be gzip or deflate encoded, or plain")
        if len(raw) <= INLINE_BODY:
            small = self._inflate_small(raw, coding, min(INLINE_BODY, self.limits.max_request_bytes)) if coding \
                else raw
            if small is not None:
                return self.parse(small, "")
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(PARSE_WORKERS, thread_name_prefix="MyNoSQL-parse")
        return await asyncio.get_running_loop().run_in_executor(self._pool, self.parse, raw, coding)

    @staticmethod
    def _inflate_small(raw: bytes, coding: str, most: int) -> bytes | None:
        """A compressed body that inflates to ``most`` bytes at most (most of a replicator's are small), or None
        (larger, or not decompressible: the parse pool says which)."""
        for wbits in ((31,) if coding != "deflate" else (15, -15)):
            d = zlib.decompressobj(wbits)
            try:
                out = d.decompress(raw, most + 1)
            except zlib.error:
                continue
            return out if d.eof and len(out) <= most else None
        return None

    def parse(self, raw: bytes, coding: str) -> Any:
        """Decompress (``coding``: "" for none) and parse a body, within the size and JSON-values limits."""
        if coding:
            raw = self.decompress(raw, coding)
        # An upper bound of the values (and keys) parsing would make, from the bytes that start or separate one:
        # a body of millions of tiny values would take ~30x its size in RAM once parsed.
        values = 1 + raw.count(b",") + raw.count(b":") + raw.count(b"[") + raw.count(b"{")
        if values > self.limits.max_json_values:
            raise HttpError(413, "too_large", f"the request body holds up to {values} JSON values, over the limit "
                            f"of {self.limits.max_json_values}")
        try:
            return orjson.loads(raw)  # its documents' nesting is checked where they are encoded again
        except orjson.JSONDecodeError as exc:
            raise HttpError(400, "bad_request", "invalid JSON body") from exc

    def decompress(self, raw: bytes, coding: str) -> bytes:
        """A gzip or deflate request body, decompressed (not by aiohttp: see :meth:`MirrorApp.runner`) no further
        than the request size limit; a body that does not decompress is a 400."""
        if coding not in ("gzip", "x-gzip", "deflate"):
            raise HttpError(415, "unsupported_media_type", "request bodies may be gzip or deflate encoded, or plain")
        limit = self.limits.max_request_bytes
        for wbits in ((31,) if coding != "deflate" else (15, -15)):  # deflate: zlib-wrapped, or raw from some
            d = zlib.decompressobj(wbits)
            try:
                out = d.decompress(raw, limit + 1)  # never more than the limit (and one byte) is inflated
            except zlib.error:
                continue
            if len(out) > limit or d.unconsumed_tail:
                raise HttpError(413, "too_large", "the request body is too large")
            if d.eof:
                return out
        raise HttpError(400, "bad_request", "the request body could not be decoded")

    def batch(self, items: Any, what: str) -> None:
        if len(items) > self.limits.max_batch:
            raise HttpError(413, "too_large", f"{len(items)} {what} in one request, over the limit of "
                            f"{self.limits.max_batch}")

    async def revs_body(self, request: web.Request) -> dict[str, list[str]]:
        """The ``{id: [rev, ...]}`` body of ``_revs_diff`` and ``_purge``: its shape, its batch limits (ids and
        revisions), every id and rev well-formed, or a 4xx."""
        body = await self.body(request)
        if not isinstance(body, dict) or not all(
            isinstance(k, str) and isinstance(v, list) and all(isinstance(r, str) for r in v) for k, v in body.items()
        ):
            raise HttpError(400, "bad_request", "expected {id: [rev, ...]}")
        self.batch(body, "ids")
        self.batch([r for v in body.values() for r in v], "revisions")
        check_ids_and_revs((id, rev) for id, revs in body.items() for rev in revs)
        return body

    def wire(self, db: Database, doc: Any) -> wire.WireDoc:
        """A replicated document (``new_edits=false``), checked."""
        lim = self.limits
        return wire.doc_from_wire(doc, validate_id=validate_id, max_bytes=db.options.max_doc_bytes,
                                  max_revs=db.options.revs_limit, max_depth=lim.max_depth,
                                  max_history=lim.max_revisions, max_attachment_bytes=lim.max_attachment_bytes)

    def local_size(self, doc: dict[str, Any]) -> None:
        """A ``_local`` document (a checkpoint) within the nesting limit and ``Limits.max_local_bytes``, or a
        4xx."""
        try:
            size = len(wire.encode_checked(doc, self.limits.max_depth))
        except InvalidDocument as exc:
            raise HttpError(400, "bad_request", str(exc)) from exc
        if size > self.limits.max_local_bytes:
            raise HttpError(413, "too_large", f"a local document is {size} bytes, over the limit of "
                            f"{self.limits.max_local_bytes}")

    def record(self, db: Database, doc: Any, id: str | None) -> Edit:
        """Check a document of a normal write (PUT, or ``_bulk_docs`` without ``new_edits=false``)."""
        if not isinstance(doc, dict):
            raise InvalidDocument("document must be a JSON object")
        doc_id = id if id is not None else doc.get("_id")
        if id is not None and doc.get("_id", id) != id:
            raise InvalidDocument("document id does not match the URL")
        if doc_id is not None:
            validate_id(doc_id)
        rev = doc.get("_rev")
        if rev is not None and not revtree.is_rev(rev):
            raise InvalidDocument(f"invalid rev format: {str(rev)[:80]!r}")
        deleted = doc.get("_deleted") is True
        if deleted and doc_id is None:
            raise InvalidDocument("a deletion needs the document's _id")
        body = wire.body_from_wire(doc)
        data = wire.encode_checked(body, self.limits.max_depth)  # what savedoc stores, give or take the id
        if len(data) > db.options.max_doc_bytes:
            raise InvalidDocument(f"document is {len(data)} bytes, over the limit of {db.options.max_doc_bytes}")
        record = wire.decode_body(data)
        if deleted:
            return Edit(doc_id, rev, record, deleted=True)  # its _attachments, if any, are dropped
        if doc_id is not None:
            record["id"] = doc_id
        if rev is not None:
            record["rev"] = rev
        atts = doc.get("_attachments")
        return Edit(doc_id, None, record,
                    None if atts is None else att.parse_attachments(atts, max_bytes=self.limits.max_attachment_bytes))

    @staticmethod
    def checked(check: Callable[[Any], T], doc: Any, n: int, *, admin: bool = True) -> T | Refused | LocalWrite:
        """``check(doc)``; a document that breaks a rule or limit refuses the whole request (nothing written),
        one that CouchDB's rules refuse (a reserved id, an unknown ``_`` member, a design document when ``admin``
        is False) is refused on its own."""
        if isinstance(doc, dict):  # what CouchDB refuses document by document: a reserved id, a bad member
            id = doc.get("_id")
            if isinstance(id, str) and id.startswith("_local/"):
                return LocalWrite(checked_local_id(id[7:]), doc)
            if reserved(id):
                return Refused(id, "ids starting with '_' are reserved")
            if not admin and isinstance(id, str) and id.startswith(DESIGN_PREFIX):
                return Refused(id, NOT_ADMIN, "unauthorized")
            problem = wire.unsupported_member(doc)
            if problem is not None:
                if problem.startswith("Bad special document member"):  # CouchDB refuses the whole request
                    raise HttpError(400, "doc_validation", problem)
                return Refused(doc.get("_id"), problem)
        try:
            return check(doc)
        except att.AttachmentTooLarge as exc:  # CouchDB refuses the whole request: 413 attachment_too_large
            raise HttpError(413, "attachment_too_large", f"document {n}: {exc}") from exc
        except InvalidDocument as exc:
            raise HttpError(400, "bad_request", f"document {n}: {exc}") from exc
