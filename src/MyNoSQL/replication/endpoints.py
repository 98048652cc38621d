"""The two kinds of replication endpoint: a local database and a CouchDB-compatible server over HTTP.

Both offer the same async methods, so one replicator moves records between any two of them: local -> mirror,
mirror -> local, and (for the ``replicate`` command) server -> server. All foreign errors of the HTTP client are
translated here, at one boundary, into :class:`~MyNoSQL.errors.RemoteError` (``raise ... from exc``).
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import logging
import secrets
import ssl
import urllib.parse
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from itertools import islice
from typing import Any, Protocol

import aiohttp
import orjson

from ..database import Database
from ..errors import DocumentNotFound, DocumentUnavailable, InvalidDocument, RemoteError
from ..net import wire
from ..net.urls import basic_authorization, db_url, redact_url
from ..options import Options
from ..records import attachments as att
from ..records.ids import DESIGN_PREFIX, validate_id
from ..records.revtree import DocState
from ..storage.blobs import BlobReader

__all__ = ["Endpoint", "HttpEndpoint", "LocalEndpoint", "client_session", "push_checkpoint_id", "replication_id"]

log = logging.getLogger("MyNoSQL")
_warned_unverified = False


def client_session(opts: Options) -> aiohttp.ClientSession:
    """An HTTP client that verifies TLS certificates (system CAs, or ``opts.tls_ca_file``)."""
    global _warned_unverified
    ssl_arg: ssl.SSLContext | bool = True
    if not opts.tls_verify:
        if not _warned_unverified:
            log.warning("TLS certificate verification is OFF (Options.tls_verify=False): anyone on the network "
                        "path can read and change what is replicated")
            _warned_unverified = True
        ssl_arg = False
    elif opts.tls_ca_file:
        ssl_arg = ssl.create_default_context(cafile=opts.tls_ca_file)
    return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=opts.remote_timeout),
                                 connector=aiohttp.TCPConnector(limit=16, ssl=ssl_arg))


def _network_kind(exc: BaseException) -> str:
    """The kind of a failure below HTTP: a TLS problem, or the remote being unreachable (any other)."""
    if isinstance(exc, (ssl.SSLError, aiohttp.ClientSSLError)):
        return "tls"
    return "unreachable"


HOP = 1024 * 1024  # attachment bytes handed to a worker thread (or read from the network) at a time

# What a target asks for an attachment's bytes while it writes a document: name -> the bytes, a chunk at a time
Fetch = Callable[[str], AsyncIterator[bytes]]


def doc_path(id: str) -> str:
    """The URL path of a document (``/id``, quoted; ``/_design/name`` keeps its slash, as CouchDB wants it)."""
    if id.startswith(DESIGN_PREFIX):
        return "/_design/" + urllib.parse.quote(id[len(DESIGN_PREFIX):], safe="")
    return "/" + urllib.parse.quote(id, safe="")


def attachment_path(id: str, name: str) -> str:
    return doc_path(id) + "/" + "/".join(urllib.parse.quote(part, safe="") for part in name.split("/"))


async def rechunk(chunks: AsyncIterator[bytes], size: int = HOP) -> AsyncIterator[bytes]:
    """The same bytes in pieces of about ``size`` (fewer thread hops for a writer)."""
    buf = bytearray()
    async for chunk in chunks:
        buf += chunk
        if len(buf) >= size:
            yield bytes(buf)
            buf.clear()
    if buf:
        yield bytes(buf)


class Endpoint(Protocol):
    """What the replicator needs of either side."""

    identity: str  # a stable name for replication ids (a URL without credentials, or a path)
    inline_bytes: int  # a document's attachments up to this many bytes go inline (base64) in _bulk_docs

    async def info(self) -> dict[str, Any]: ...
    async def changes(
        self, since: Any, limit: int, timeout: float | None = None
    ) -> tuple[list[dict[str, Any]], Any]: ...
    async def revs_diff(self, query: dict[str, list[str]],
                        ancestors: dict[str, list[str]] | None = None) -> dict[str, list[str]]: ...
    async def bulk_get(self, wants: dict[str, list[str]]) -> list[dict[str, Any]]: ...
    def attachment_chunks(self, id: str, rev: str | None, name: str) -> AsyncIterator[bytes]: ...
    async def put_with_attachments(self, doc: dict[str, Any], fetch: Fetch) -> int: ...
    async def bulk_docs(
        self, docs: Sequence[dict[str, Any]], checkpoint: tuple[str, dict[str, Any]] | None = None
    ) -> tuple[list[dict[str, Any]], int, bool]: ...
    async def get_local(self, id: str) -> dict[str, Any] | None: ...
    async def put_local(self, id: str, doc: dict[str, Any]) -> None: ...


SMALL = 64  # below this many changes or documents, local work runs inline on the event loop


class LocalEndpoint:
    """A database of this process. Blocking work runs in worker threads, off the event loop.

    ``lazy`` (a Peer downloading records): attachments that arrive as stubs whose bytes are not here are kept as
    stubs (their bytes are fetched when read); else a stub must name bytes held here."""

    inline_bytes = 0  # a local target takes every attachment's bytes as a stream

    def __init__(self, db: Database, *, ids: set[str] | None = None, lazy: bool = False) -> None:
        self.db = db
        self.lazy = lazy
        self.identity = local_identity(db)
        # What the last changes() read, by id: the next bulk_get serves the same batch from it instead of looking
        # every record up again (a revision's body and ancestry never change, so an older state serves it as
        # well), then drops it. A record with one leaf is kept as that leaf's document, serialized (its state is
        # not kept: see wire.SERIALIZED).
        self._recent: dict[str, DocState | dict[str, Any]] = {}

    async def info(self) -> dict[str, Any]:
        return {"db_name": self.db.name, "update_seq": self.db.seq, "doc_count": len(self.db)}

    async def changes(self, since: Any, limit: int, timeout: float | None = None) -> tuple[list[dict[str, Any]], Any]:
        start = since if isinstance(since, int) else 0

        def read() -> tuple[list[dict[str, Any]], int]:
            recent: dict[str, DocState | dict[str, Any]] = {}
            rows = []
            for s in islice(self.db.states_since(start), limit):
                rows.append(wire.changes_row(s))
                recent[s.id] = (len(s.tree) == 1 and wire.doc_json_to_wire(s, s.winner)) or s
            self._recent = recent
            return rows, rows[-1]["seq"] if rows else start

        if self.db.seq - start <= SMALL:
            return read()  # a few changes, from the memtable: a thread hop would cost more than the work
        return await asyncio.to_thread(read)

    async def revs_diff(self, query: dict[str, list[str]],
                        ancestors: dict[str, list[str]] | None = None) -> dict[str, list[str]]:
        return await asyncio.to_thread(self.db.revs_diff, query, ancestors)

    async def attachment_chunks(self, id: str, rev: str | None, name: str) -> AsyncIterator[bytes]:
        """The bytes of an attachment (a Peer that holds only its stub fetches them from a mirror first)."""

        def open_() -> BlobReader:
            state = self.db.state(id)
            if state is None:
                raise DocumentNotFound(id)
            return self.db.open_blob(state, rev or state.winner, name)

        reader = await asyncio.to_thread(open_)
        try:
            while True:
                data = await asyncio.to_thread(reader.read, HOP)
                if not data:
                    break
                yield data
        finally:
            reader.close()

    async def bytes_lacking(self, id: str, rev: str, names: list[str]) -> list[str]:
        """Of the attachments ``names`` of revision ``rev``, those whose bytes this database neither holds nor can
        fetch now: a Peer that held only the stub of an attachment it never read, whose revision no mirror serves
        any more (another writer replaced it). They can only travel as stubs, which a MyNoSQL mirror resolves by
        digest while it still holds the bytes."""
        db = self.db

        def check() -> list[str]:
            state = db.state(id)
            if state is None:
                return []
            out = []
            for name in names:
                try:
                    if db.local_blob(state, db.attachment_meta(state, rev, name)) is None:
                        db.open_blob(state, rev, name).close()  # fetched from a mirror now, if one has them
                except DocumentUnavailable:
                    out.append(name)
            return out

        return await asyncio.to_thread(check)

    async def put_with_attachments(self, doc: dict[str, Any], fetch: Fetch) -> int:
        """Write a replicated revision whose attachments marked ``follows`` come from ``fetch(name)``, each
        streamed to disk as it arrives. Returns 1 if the revision was new here."""
        opts = self.db.options
        w = wire.doc_from_wire(wire.full(doc), validate_id=validate_id, max_bytes=opts.max_doc_bytes,
                               max_revs=opts.revs_limit)
        db = self.db
        given: dict[str, att.AttNew] = {}
        stored: list[att.Stored] = []
        try:
            for name, a in (w.atts or {}).items():
                if not isinstance(a, att.Follows):
                    given[name] = a
                    continue
                writer = await asyncio.to_thread(db.attachment_writer, a.content_type)
                try:
                    async for chunk in rechunk(fetch(name)):
                        await asyncio.to_thread(writer.write, chunk)
                    s = await asyncio.to_thread(db.finish_attachment, writer, w.id, a.content_type, digest=a.digest,
                                                revpos=a.revpos, length=a.length)
                except BaseException:
                    await asyncio.to_thread(writer.abort)
                    raise
                stored.append(s)
                given[name] = s
        except BaseException:
            for s in stored:
                db.release_attachment(s)
            raise
        new = await asyncio.to_thread(db.merge_replicated, w.id, w.path, w.deleted, w.blob, given, lazy=self.lazy)
        return 0 if new is None else 1

    async def bulk_get(self, wants: dict[str, list[str]]) -> list[dict[str, Any]]:
        def read() -> list[dict[str, Any]]:
            out: list[dict[str, Any]] = []
            recent = self._recent
            self._recent = {}  # served once (a batch asks once): what it kept need not outlive it
            for id, revs in wants.items():
                kept = recent.get(id)
                state: DocState | None
                if isinstance(kept, dict):
                    if revs == [kept["_rev"]]:
                        out.append(kept)
                        continue
                    state = None
                else:
                    state = kept
                if state is None or not all(rev in state.bodies for rev in revs):
                    state = self.db.state(id)
                if state is None:
                    continue
                for rev in revs:
                    if rev in state.bodies:  # serialized already when it can be (no body parsed to be dumped)
                        out.append(wire.doc_json_to_wire(state, rev) or wire.doc_to_wire(state, rev, revs=True))
            return out

        if len(wants) <= SMALL:
            return read()
        return await asyncio.to_thread(read)

    async def bulk_docs(
        self, docs: Sequence[dict[str, Any]], checkpoint: tuple[str, dict[str, Any]] | None = None
    ) -> tuple[list[dict[str, Any]], int, bool]:
        """Write replicated revisions; returns (per-document errors, revisions new here, checkpoint written)."""

        def write() -> tuple[list[dict[str, Any]], int, bool]:
            errors = []
            written = 0
            opts = self.db.options
            for doc in map(wire.full, docs):
                try:
                    w = wire.doc_from_wire(doc, validate_id=validate_id, max_bytes=opts.max_doc_bytes,
                                               max_revs=opts.revs_limit)
                    atts = w.atts
                    if atts is not None and any(isinstance(a, att.Follows) for a in atts.values()):
                        raise InvalidDocument("follows: true needs a multipart body")
                    written += self.db.put_replicated(w.id, w.path, w.deleted, w.blob, atts,  # type: ignore[arg-type]
                                                      lazy=self.lazy)
                except att.MissingStub as exc:
                    errors.append({"id": doc.get("_id"), "error": "missing_stub", "reason": str(exc)})
                except InvalidDocument as exc:
                    errors.append({"id": doc.get("_id") if isinstance(doc, dict) else None,
                                   "error": "forbidden", "reason": str(exc)})
            if checkpoint is not None:
                self.db.local_put(*checkpoint)
            return errors, written, checkpoint is not None

        return await asyncio.to_thread(write)

    async def get_local(self, id: str) -> dict[str, Any] | None:
        return await asyncio.to_thread(self.db.local_get, id)

    async def put_local(self, id: str, doc: dict[str, Any]) -> None:
        await asyncio.to_thread(self.db.local_put, id, doc)


class HttpEndpoint:
    """A database on a CouchDB-compatible server (a MyNoSQL mirror, CouchDB, PouchDB Server)."""

    inline_bytes = 64 * 1024  # attachments of a document up to this size go base64 in _bulk_docs, else multipart

    def __init__(self, session: aiohttp.ClientSession, db_url: str, *, timeout: float = 30.0,
                 client: str | None = None, track_behind: bool = False) -> None:
        """``client``: a token naming this replicating client to a MyNoSQL mirror, which then leaves the client's
        own writes out of its ``_changes`` answers (they would only echo what it already has). ``track_behind``:
        ask a MyNoSQL mirror which revisions sent to it it has moved past (:attr:`behind`)."""
        self._auth = basic_authorization(db_url)
        self.url = redact_url(db_url).rstrip("/")
        self.identity = self.url
        self.session = session
        self.timeout = timeout
        self._has_bulk_get: bool | None = None
        self._gzip = False  # set once the server says it is a MyNoSQL mirror
        self._last_written: int | None = None
        self.exists = False  # ensure_exists succeeded once
        self.empty = False  # ensure_exists found (or made) a database that was never written to
        self.client = client
        self._local_revs: dict[str, str] = {}  # _local doc id -> the _rev our last write of it got
        # The remote's latest change sequence, as a MyNoSQL mirror tells it with each _changes answer
        # (X-MyNoSQL-Update-Seq, an extension): how far behind its feed a pull is (replication lag).
        self.update_seq: int | None = None
        # Records a MyNoSQL mirror said it holds later revisions of than the ones sent to it (an extension, see
        # Database.behind): their changes may be behind this client's position in its feed. Filled by revs_diff
        # and bulk_docs when ``track_behind``; the caller takes them (PeerSync._push).
        self.track_behind = track_behind
        self.behind: set[str] = set()

    def _headers(self, accept: str = "application/json") -> dict[str, str]:
        headers = {"Accept": accept}
        if self.client is not None:
            headers["X-MyNoSQL-Client"] = self.client
        if self._auth is not None:
            headers["Authorization"] = self._auth
        return headers

    @contextlib.contextmanager
    def _translated(self, method: str, path: str, timeout: float | None = None) -> Iterator[None]:
        """Foreign errors of the HTTP client as RemoteError (the one boundary)."""
        try:
            yield
        except RemoteError:
            raise
        except asyncio.TimeoutError as exc:
            raise RemoteError(f"{method} {self.url}{path}: no answer within {timeout or self.timeout:g} s",
                              kind="unreachable") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise RemoteError(f"{method} {self.url}{path}: {type(exc).__name__}: {exc or 'no details'}",
                              kind=_network_kind(exc)) from exc

    async def request(self, method: str, path: str, *, params: dict[str, str] | None = None, body: Any = None,
                      ok: tuple[int, ...] = (200, 201, 202), timeout: float | None = None) -> Any:
        url = self.url + path
        data = None if body is None else orjson.dumps(body)
        headers = self._headers()
        if data is not None:
            headers["Content-Type"] = "application/json"
            if self._gzip and len(data) > 1024:  # a MyNoSQL mirror takes gzip bodies: ~4x fewer bytes
                data = gzip.compress(data, compresslevel=1)
                headers["Content-Encoding"] = "gzip"
        try:
            async with self.session.request(
                method, url, params=params, data=data, headers=headers,
                timeout=aiohttp.ClientTimeout(total=timeout or self.timeout),
            ) as resp:
                raw = await resp.read()
                if not self._gzip and resp.headers.get("X-MyNoSQL") == "1":
                    self._gzip = True
                written = resp.headers.get("X-MyNoSQL-Written")
                self._last_written = int(written) if written and written.isdigit() else None
                if resp.status not in ok:
                    reason = raw[:200].decode("utf-8", "replace")
                    raise RemoteError(f"{method} {self.url}{path}: HTTP {resp.status} {reason}", status=resp.status)
                seq = resp.headers.get("X-MyNoSQL-Update-Seq")
                if seq is not None and seq.isdigit():
                    self.update_seq = int(seq)
                return orjson.loads(raw) if raw else None
        except RemoteError:
            raise
        except asyncio.TimeoutError as exc:
            raise RemoteError(f"{method} {self.url}{path}: no answer within {timeout or self.timeout:g} s",
                              kind="unreachable") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise RemoteError(f"{method} {self.url}{path}: {type(exc).__name__}: {exc or 'no details'}",
                              kind=_network_kind(exc)) from exc
        except orjson.JSONDecodeError as exc:
            raise RemoteError(f"{method} {self.url}{path}: the answer is not JSON", kind="protocol") from exc

    async def info(self) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("GET", "")
        return result

    async def ensure_exists(self) -> None:
        if self.exists:
            return
        try:
            info = await self.request("GET", "")
            seq = info.get("update_seq") if isinstance(info, dict) else None
            self.empty = type(seq) is int and seq == 0
        except RemoteError as exc:
            if exc.status != 404:
                raise
            await self.request("PUT", "", ok=(201, 202, 412))
            self.empty = True
        self.exists = True

    async def changes(self, since: Any, limit: int, timeout: float | None = None) -> tuple[list[dict[str, Any]], Any]:
        params = {"style": "all_docs", "since": str(since) if not isinstance(since, str) else since,
                  "limit": str(limit)}
        if timeout:
            params.update(feed="longpoll", timeout=str(int(timeout * 1000)))
        try:
            result = await self.request("GET", "/_changes", params=params, timeout=(timeout or 0) + self.timeout)
        except RemoteError as exc:
            if exc.status != 400 or '"since_ahead"' not in str(exc) or params["since"] == "0":
                raise
            # A MyNoSQL mirror restored from a backup, or re-created: our position is past all it has.
            log.warning("%s has fewer changes than we had read from it (restored or re-created?): reading them "
                        "again from the start", self.identity)
            return await self.changes(0, limit, timeout)
        return list(result.get("results", [])), result.get("last_seq", since)

    async def revs_diff(self, query: dict[str, list[str]],
                        ancestors: dict[str, list[str]] | None = None) -> dict[str, list[str]]:
        result = await self.request("POST", "/_revs_diff", body=query,
                                    params={"mynosql_behind": "true"} if self.track_behind and self.mynosql else None)
        out = {}
        for id, v in (result or {}).items():
            if not isinstance(v, dict):
                continue
            if v.get("mynosql_behind"):
                self.behind.add(id)
            if v.get("missing"):
                out[id] = v["missing"]
            found = v.get("possible_ancestors")
            if ancestors is not None and isinstance(found, list):
                ancestors[id] = [r for r in found if isinstance(r, str)]
        return out

    async def attachment_chunks(self, id: str, rev: str | None, name: str) -> AsyncIterator[bytes]:
        """``GET /{db}/{doc}/{name}?rev=`` (no rev: the winner's), streamed: no whole attachment in RAM. Each read
        waits at most the endpoint's timeout (a big attachment may take longer in all)."""
        path = attachment_path(id, name)
        timeout = aiohttp.ClientTimeout(total=None, connect=self.timeout, sock_read=self.timeout)
        with self._translated("GET", path):
            async with self.session.get(self.url + path, params={"rev": rev} if rev else None,
                                        headers=self._headers("*/*"),
                                        timeout=timeout) as resp:
                if resp.status != 200:
                    reason = (await resp.content.read(200)).decode("utf-8", "replace")
                    raise RemoteError(f"GET {self.url}{path}: HTTP {resp.status} {reason}", status=resp.status)
                async for chunk in resp.content.iter_chunked(HOP):
                    yield chunk

    async def put_with_attachments(self, doc: dict[str, Any], fetch: Fetch) -> int:
        """``PUT /{db}/{doc}?new_edits=false`` as ``multipart/related`` (CouchDB's replicator does the same): the
        document, then the bytes of each attachment marked ``follows`` (``fetch(name)``), streamed."""
        doc = wire.full(doc)
        boundary = secrets.token_hex(16)
        follows = [(n, a) for n, a in doc.get("_attachments", {}).items() if a.get("follows")]
        first = (f"--{boundary}\r\nContent-Type: application/json\r\n\r\n").encode() + orjson.dumps(doc)
        heads = []
        for name, a in follows:
            shown = name.replace("\\", "\\\\").replace('"', '\\"')
            heads.append((f'\r\n--{boundary}\r\nContent-Disposition: attachment; filename="{shown}"\r\n'
                          f"Content-Type: {a['content_type']}\r\nContent-Length: {a['length']}\r\n\r\n").encode())
        tail = f"\r\n--{boundary}--".encode()
        length = len(first) + sum(len(h) + a["length"] for h, (_n, a) in zip(heads, follows, strict=True)) + len(tail)

        async def body() -> AsyncIterator[bytes]:
            yield first
            for h, (name, a) in zip(heads, follows, strict=True):
                yield h
                sent = 0
                async for chunk in fetch(name):
                    sent += len(chunk)
                    yield chunk
                if sent != a["length"]:
                    raise RemoteError(f"attachment {name!r} of {doc['_id']!r}: the source sent {sent} bytes, not "
                                      f"{a['length']}", kind="protocol")
            yield tail

        path = doc_path(doc["_id"])
        headers = self._headers()
        headers["Content-Type"] = f'multipart/related; boundary="{boundary}"'
        headers["Content-Length"] = str(length)
        timeout = aiohttp.ClientTimeout(total=None, connect=self.timeout, sock_read=max(self.timeout, 60.0))
        with self._translated("PUT", path):
            async with self.session.put(self.url + path, params={"new_edits": "false"}, data=body(),
                                        headers=headers, timeout=timeout) as resp:
                raw = await resp.read()
                if not self._gzip and resp.headers.get("X-MyNoSQL") == "1":
                    self._gzip = True
                if resp.status not in (200, 201, 202):
                    raise RemoteError(f"PUT {self.url}{path}: HTTP {resp.status} "
                                      f"{raw[:200].decode('utf-8', 'replace')}", status=resp.status)
        return 1

    async def bulk_get(self, wants: dict[str, list[str]]) -> list[dict[str, Any]]:
        if self._has_bulk_get is not False:
            try:
                body = {"docs": [{"id": id, "rev": rev} for id, revs in wants.items() for rev in revs]}
                result = await self.request("POST", "/_bulk_get", params={"revs": "true"}, body=body)
                self._has_bulk_get = True
                out = []
                for entry in result.get("results", []):
                    for d in entry.get("docs", []):
                        if "ok" in d:
                            out.append(d["ok"])
                return out
            except RemoteError as exc:
                if exc.status not in (400, 404, 405, 501):
                    raise
                self._has_bulk_get = False
        out = []
        for id, revs in wants.items():  # the plain protocol: one GET per document
            params = {"revs": "true", "latest": "true", "open_revs": orjson.dumps(revs).decode()}
            result = await self.request("GET", doc_path(id), params=params)
            out.extend(d["ok"] for d in result if "ok" in d)
        return out

    @property
    def mynosql(self) -> bool:
        """The server said it is a MyNoSQL mirror: the protocol extensions may be used."""
        return self._gzip

    async def bulk_docs(
        self, docs: Sequence[dict[str, Any]], checkpoint: tuple[str, dict[str, Any]] | None = None
    ) -> tuple[list[dict[str, Any]], int, bool]:
        body: dict[str, Any] = {"docs": [wire.for_request(d) for d in docs], "new_edits": False}
        extended = self.mynosql and checkpoint is not None
        if extended:
            assert checkpoint is not None
            body["mynosql_checkpoint"] = {"id": checkpoint[0], "doc": checkpoint[1]}
        if self.track_behind and self.mynosql:
            body["mynosql_behind"] = True
        result = await self.request("POST", "/_bulk_docs", body=body)
        rows = [r for r in (result or []) if isinstance(r, dict)]
        self.behind.update(r["id"] for r in rows if r.get("mynosql_behind") is True and isinstance(r.get("id"), str))
        errors = [r for r in rows if "error" in r]
        written = self._last_written if extended and self._last_written is not None else len(docs) - len(errors)
        return errors, written, extended

    async def get_local(self, id: str) -> dict[str, Any] | None:
        try:
            result: dict[str, Any] = await self.request("GET", "/_local/" + urllib.parse.quote(id, safe=""))
            return result
        except RemoteError as exc:
            if exc.status == 404:
                return None
            raise

    async def put_local(self, id: str, doc: dict[str, Any]) -> None:
        """Write a checkpoint: with the ``_rev`` our last write of it returned (one round trip), else (first
        write, or someone else wrote it since: 409) with the ``_rev`` read first."""
        path = "/_local/" + urllib.parse.quote(id, safe="")
        known = self._local_revs.get(id)
        if known is not None:
            try:
                answer = await self.request("PUT", path, body={**doc, "_rev": known})
                self._remember_local_rev(id, answer)
                return
            except RemoteError as exc:
                self._local_revs.pop(id, None)
                if exc.status != 409:
                    raise
        current = await self.get_local(id)
        body = dict(doc)
        if current and "_rev" in current:
            body["_rev"] = current["_rev"]
        self._remember_local_rev(id, await self.request("PUT", path, body=body))

    def _remember_local_rev(self, id: str, answer: Any) -> None:
        rev = answer.get("rev") if isinstance(answer, dict) else None
        if isinstance(rev, str):
            self._local_revs[id] = rev


class Identified(Protocol):
    identity: str


def local_identity(db: Database) -> str:
    """How a local database is named in replication ids: by its own id, whatever path it was opened by."""
    return f"local:{db.uuid}"


def replication_id(source: Identified, target: Identified, extra: str = "") -> str:
    return hashlib.md5(f"{source.identity}|{target.identity}|{extra}".encode(), usedforsecurity=False).hexdigest()


class _Named:
    def __init__(self, identity: str) -> None:
        self.identity = identity


def push_checkpoint_id(db: Database, mirror: str) -> str:
    """The replication id of ``db``'s push to the database of its name on ``mirror`` (a server URL)."""
    there = redact_url(db_url(mirror, db.name)).rstrip("/")
    return replication_id(_Named(local_identity(db)), _Named(there))


def pull_checkpoint_id(db: Database, mirror: str) -> str:
    """The replication id of a pull from the database of ``db``'s name on ``mirror`` into ``db``."""
    there = redact_url(db_url(mirror, db.name)).rstrip("/")
    return replication_id(_Named(there), _Named(local_identity(db)))
