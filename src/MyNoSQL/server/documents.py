"""The document routes of a mirror: replication (``_revs_diff``, ``_bulk_get``, ``_bulk_docs``), ``_local``
checkpoints and single documents with their attachments (the database's own routes are in :mod:`.databases`,
the attachment routes in :mod:`.attachments`). Every write runs in a worker thread, never on the event loop (a
write may wait for the compactor: back-pressure must not stall other requests).

Answers of documents (``_bulk_get``, ``GET ?open_revs``) name each asked revision once, however often it is
asked, are bounded in bytes (``Limits.max_answer_bytes``: over it, a 413 before anything is sent; one document is
always answered; attachments sent inline count, and are read before the answer starts) and, when large, are
encoded in worker threads and streamed a piece at a time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

import orjson
from aiohttp import web

from ..database import Database
from ..errors import ConflictError, DocumentNotFound, LimitExceeded
from ..net import wire
from ..records import attachments as att
from ..records import revtree
from ..records.ids import DESIGN_PREFIX
from ..records.revtree import DocState
from .attachments import (
    AttachmentRoutes,
    InlineBudget,
    MultipartAnswer,
    doc_path,
    receive_multipart,
    release_all,
)
from .bulkstream import receive_bulk_docs, streamed
from .context import SMALL_INLINE, ServerContext, client_token
from .requests import (
    NOT_ADMIN,
    Edit,
    HttpError,
    LocalWrite,
    Refused,
    check_ids_and_revs,
    checked_local_id,
    flag,
    json_response,
    local_id,
)

INLINE_STATE = 64 * 1024  # the open_revs answer of a record of fewer bytes is made on the event loop
STREAM_ABOVE = 1024 * 1024  # an answer of documents larger than this (about) is streamed
STREAM_PIECE = 256 * 1024  # bytes encoded in a worker thread and written at a time


def answer_size(state: DocState, rev: str, revs: bool) -> int:
    """About the bytes of leaf ``rev`` of ``state`` as a document on the wire."""
    size = len(state.bodies[rev]) + len(state.id) + 96
    return size + 35 * len(revtree.ancestry(state.tree, rev)) if revs else size


class Answer:
    """A JSON answer of documents, planned in a worker thread: rendered there whole when small, else streamed."""

    def __init__(self, head: bytes, parts: Iterator[bytes], tail: bytes, size: int, sent: int) -> None:
        self.head, self.parts, self.tail, self.size, self.sent = head, parts, tail, size, sent
        self.body: bytes | None = None
        if size <= STREAM_ABOVE:
            self.body = head + b",".join(parts) + tail

    async def send(self, request: web.Request) -> web.StreamResponse:
        if self.body is not None:
            return web.Response(body=self.body, content_type="application/json")
        resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        if "gzip" in request.headers.get("Accept-Encoding", ""):
            resp.enable_compression(web.ContentCoding.gzip)
        await resp.prepare(request)
        pieces = self._pieces()
        while chunk := await asyncio.to_thread(next, pieces, b""):  # one thread at a time advances it
            await resp.write(chunk)  # waits while the client is slow to read: one piece in RAM at a time
        await resp.write_eof()
        return resp

    def _pieces(self) -> Iterator[bytes]:
        out = bytearray(self.head)
        for n, part in enumerate(self.parts):
            if n:
                out += b","
            out += part
            if len(out) >= STREAM_PIECE:
                yield bytes(out)
                out.clear()
        yield bytes(out + self.tail)


def atts_since(request: web.Request) -> list[str] | None:
    """The ``atts_since`` query parameter: a JSON list of revisions, or None."""
    raw = request.query.get("atts_since")
    if raw is None:
        return None
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise HttpError(400, "bad_request", "atts_since must be a JSON list of revisions") from exc
    if not isinstance(value, list) or len(value) > 1000 or not all(isinstance(r, str) for r in value):
        raise HttpError(400, "bad_request", "atts_since must be a JSON list of revisions")
    return value


def no_follows(atts: dict[str, att.AttIn] | None) -> dict[str, att.AttNew] | None:
    """A JSON document's attachments: bytes inline or stubs (``follows`` needs a multipart body)."""
    if atts is not None:
        for name, a in atts.items():
            if isinstance(a, att.Follows):
                raise HttpError(400, "bad_request", f"attachment {name[:80]!r}: follows: true needs a multipart "
                                "body")
    return atts  # type: ignore[return-value]  # no Follows left


def with_stored(atts: dict[str, att.AttIn], kept: dict[str, att.Stored]) -> dict[str, att.AttNew]:
    """A document's attachments, those whose bytes were stored already (a streamed ``_bulk_docs``) as such."""
    out: dict[str, att.AttNew] = {}
    for name, a in atts.items():
        if isinstance(a, att.Follows):
            if name not in kept:
                no_follows({name: a})  # a JSON body's "follows": refused
            out[name] = kept[name]
        else:
            out[name] = a
    return out


class DocumentRoutes:
    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx
        self.rules = ctx.rules
        self.atts = AttachmentRoutes(ctx)

    def add_to(self, r: web.UrlDispatcher) -> None:
        r.add_post("/{db}/_revs_diff", self.revs_diff)
        r.add_post("/{db}/_bulk_get", self.bulk_get)
        r.add_post("/{db}/_bulk_docs", self.bulk_docs)
        r.add_get("/{db}/_local/{id:.+}", self.local_get)
        r.add_put("/{db}/_local/{id:.+}", self.local_put)
        r.add_delete("/{db}/_local/{id:.+}", self.local_delete)
        r.add_get("/{db}/{id:.+}", self.doc_get)
        r.add_put("/{db}/{id:.+}", self.doc_put)
        r.add_delete("/{db}/{id:.+}", self.doc_delete)

    async def revs_diff(self, request: web.Request) -> web.Response:
        db = await self.ctx.db(request)
        body = await self.rules.revs_body(request)
        ancestors: dict[str, list[str]] = {}
        behind: dict[str, list[str]] = {}  # an extension a MyNoSQL peer asks for: see Database.behind
        missing = await asyncio.to_thread(db.revs_diff, body, ancestors,
                                          behind if flag(request, "mynosql_behind") else None)
        out: dict[str, Any] = {}
        for id, revs in missing.items():
            out[id] = {"missing": revs}
            if id in ancestors:
                out[id]["possible_ancestors"] = ancestors[id]
        for id, revs in behind.items():
            out.setdefault(id, {"missing": []})["mynosql_behind"] = revs
        return json_response(out)

    def _over(self, size: int) -> NoReturn:
        limit = self.ctx.limits.max_answer_bytes
        self.ctx.observer.refused("max_answer_bytes")
        raise HttpError(413, "too_large", f"the answer would be about {size} bytes, over the limit of {limit}: ask "
                        "for fewer documents at a time")

    async def bulk_get(self, request: web.Request) -> web.StreamResponse:
        db = await self.ctx.db(request)
        body = await self.rules.body(request)
        docs = body.get("docs") if isinstance(body, dict) else None
        if not isinstance(docs, list) or not all(isinstance(d, dict) for d in docs):
            raise HttpError(400, "bad_request", "expected {docs: [{id, rev}, ...]}")
        self.rules.batch(docs, "documents")
        check_ids_and_revs((d.get("id"), d.get("rev")) for d in docs)
        revs = flag(request, "revs")
        latest = flag(request, "latest")
        budget = InlineBudget(db, self.ctx.limits.max_request_bytes) if flag(request, "attachments") else None
        for d in docs:
            since = d.get("atts_since")
            if since is not None and (not isinstance(since, list) or not all(isinstance(r, str) for r in since)):
                raise HttpError(400, "bad_request", "atts_since must be a list of revisions")
        # asked twice: answered once (the same revision with other atts_since is another answer)
        wanted = list(dict.fromkeys((d["id"], d.get("rev"), tuple(d.get("atts_since") or ())) for d in docs))
        limit = self.ctx.limits.max_answer_bytes

        def plan() -> Answer | int:
            """The answer, or its size when that is over the limit."""
            states: dict[str, DocState | None] = {}
            found: list[tuple[str, str | None, DocState | None, bytes | None]] = []
            size = 0
            for id, rev, since_revs in wanted:
                state = states[id] = states[id] if id in states else db.state(id)
                if state is not None and rev is not None and rev not in state.bodies and latest \
                        and rev in state.tree:  # CouchDB's latest=true: the leaves that descend from it
                    leaves = [leaf for leaf in revtree.leaves(state.tree)
                              if rev in revtree.ancestry(state.tree, leaf)]
                else:
                    leaves = [rev or state.winner] if state is not None and (rev is None or rev in state.bodies) \
                        else []
                if state is None or not leaves:
                    found.append((id, rev, None, None))
                    continue
                for leaf in leaves:
                    ready = None  # with attachments inline: rendered now (their bytes read, counted)
                    if budget is not None and state.atts is not None and leaf in state.atts:
                        since = att.since_generation(revtree.ancestry(state.tree, leaf), list(since_revs) or None)
                        ready = orjson.dumps({"id": id, "docs": [{"ok": wire.doc_to_wire(
                            state, leaf, revs=revs, data=budget.leaf(state, leaf), since=since)}]})
                        size += len(ready)
                    else:
                        size += answer_size(state, leaf, revs)
                    if size > limit and len(wanted) > 1:
                        return size
                    found.append((id, leaf, state, ready))

            def parts() -> Iterator[bytes]:
                for id, rev, state, ready in found:
                    if ready is not None:
                        yield ready
                    elif state is None:
                        yield orjson.dumps({"id": id, "docs": [{"error": {
                            "id": id, "rev": rev or "undefined", "error": "not_found", "reason": "missing"}}]})
                    else:
                        assert rev is not None
                        yield orjson.dumps({"id": id, "docs": [{"ok": wire.doc_to_wire(state, rev, revs=revs)}]})

            return Answer(b'{"results":[', parts(), b"]}", size, sum(1 for f in found if f[2] is not None))

        answer = await asyncio.to_thread(plan)
        if isinstance(answer, int):
            self._over(answer)
        self.ctx.observer.docs_out += answer.sent
        return await answer.send(request)

    async def bulk_docs(self, request: web.Request) -> web.Response:
        db = await self.ctx.db(request)
        # a large body (PouchDB's batches carry attachments inline) is read a document at a time, the bytes of
        # their inline attachments stored on the way: stored[n] are document n's (released unless written)
        stored: list[dict[str, att.Stored]] = []
        try:
            if streamed(request):
                body = await receive_bulk_docs(request, db, self.rules, stored)
            else:
                body = await self.rules.body(request)
            return await self._bulk_docs(request, db, body, stored)
        finally:
            for kept in stored:
                release_all(db, kept)

    async def _bulk_docs(self, request: web.Request, db: Database, body: Any,
                         stored: list[dict[str, att.Stored]]) -> web.Response:
        docs = body.get("docs") if isinstance(body, dict) else None
        if not isinstance(docs, list):
            raise HttpError(400, "bad_request", "Missing JSON list of 'docs'")
        self.rules.batch(docs, "documents")
        new_edits = body.get("new_edits", True)
        if not isinstance(new_edits, bool):
            raise HttpError(400, "bad_request", "new_edits must be true or false")

        checkpoint = body.get("mynosql_checkpoint") if new_edits is False else None  # extension: see replicator
        if checkpoint is not None and not (isinstance(checkpoint, dict) and isinstance(checkpoint.get("id"), str)
                                           and isinstance(checkpoint.get("doc"), dict)):
            raise HttpError(400, "bad_request", "mynosql_checkpoint must be {id: str, doc: {...}}")
        if checkpoint is not None:
            checked_local_id(checkpoint["id"])
            self.rules.local_size(checkpoint["doc"])
        # A large batch (a replication catching up) has its checkpoint written by the thread that wrote its
        # documents, right after them: one thread hop a request. A small one (a change as it happens) lets the
        # longpolls its write woke answer first, then writes the checkpoint.
        ck_inline = checkpoint is not None and len(docs) > SMALL_INLINE
        # An extension a MyNoSQL peer asks for: the revisions sent that were here already and are no longer leaves
        # (this mirror has later ones the peer may never see in its feed: see Database.behind), answered as
        # {"id", "rev", "mynosql_behind": true} rows, which carry no "error".
        report_behind = new_edits is False and body.get("mynosql_behind") is True
        known: list[tuple[str, str]] = []
        room = ck_written = True
        written = 0
        admin = self.ctx.is_db_admin(request, db)
        refused = 0
        client = client_token(request)
        echo_log = self.ctx.echo_log(db.name) if client else None

        mine = stored[:]  # the write's thread owns them now: a cancelled request does not wait for it to end
        stored.clear()

        def write() -> list[dict[str, Any]]:
            nonlocal written, refused, room, ck_written
            if checkpoint is not None and not self._local_room(db, checkpoint["id"]):
                room = False  # refused before any document is written
                return []
            # Every document is checked against the limits before any is written: over a limit, the whole
            # request is refused and nothing is written (a conflict stays a per-document answer, as in CouchDB).
            check: Callable[[Any], wire.WireDoc | Edit] = \
                (lambda d: self.rules.wire(db, d)) if new_edits is False else (lambda d: self.rules.record(db, d, None))
            checked = [self.rules.checked(check, doc, n, admin=admin) for n, doc in enumerate(docs)]
            atts: list[dict[str, att.AttNew] | None] = []
            for n, w in enumerate(checked):
                if isinstance(w, LocalWrite):
                    self.rules.local_size(w.doc)
                if isinstance(w, (wire.WireDoc, Edit)) and w.atts is not None:
                    atts.append(with_stored(w.atts, mine[n] if n < len(mine) else {}))
                else:
                    atts.append(None)
            out: list[dict[str, Any]] = []
            # Replicated revisions without attachments (nearly all of a replication) are written a run at a time
            # through the store's bulk path (one hold of its lock, one back-pressure check, listeners woken after
            # the run); a run ends before any other document, so the answers keep the batch's order.
            run: list[tuple[dict[str, Any], wire.WireDoc]] = []

            def write_run() -> None:
                nonlocal written, refused
                if echo_log is not None and client is not None:
                    for _doc, w in run:
                        echo_log.expect(w.id, w.path[0], client)  # before the write can wake a longpoll
                results = db.merge_replicated_many([(w.id, w.path, w.deleted, w.blob) for _doc, w in run])
                failed: Exception | None = None
                for (doc, w), r in zip(run, results, strict=True):
                    if isinstance(r, LimitExceeded):  # refused on its own, as CouchDB refuses what validation forbids
                        refused += 1
                        out.append({"id": doc.get("_id"), "error": "forbidden", "reason": str(r)})
                    elif isinstance(r, Exception):
                        failed = failed or r
                    elif r is not None:
                        written += 1
                    elif report_behind:
                        known.append((w.id, w.path[0]))
                run.clear()
                if failed is not None:
                    raise failed

            for n, (doc, w) in enumerate(zip(docs, checked, strict=True)):
                if n < len(mine) and (isinstance(w, wire.WireDoc) or (isinstance(w, Edit) and not w.deleted)):
                    mine[n] = {}  # the write below releases them
                if isinstance(w, wire.WireDoc) and atts[n] is None:
                    run.append((doc, w))
                    continue
                if run:
                    write_run()
                try:
                    if isinstance(w, Refused):
                        out.append({"id": w.id, "error": w.error, "reason": w.reason})
                    elif isinstance(w, LocalWrite):  # a _local document in the batch: CouchDB writes it
                        rev = db.local_put(w.id, w.doc, max_docs=self.ctx.limits.max_local_docs)
                        out.append({"ok": True, "id": "_local/" + w.id, "rev": rev})
                    elif isinstance(w, wire.WireDoc):
                        if echo_log is not None and client is not None:
                            echo_log.expect(w.id, w.path[0], client)  # before the write can wake a longpoll
                        if db.merge_replicated(w.id, w.path, w.deleted, w.blob, atts[n]) is not None:
                            written += 1
                        elif report_behind:
                            known.append((w.id, w.path[0]))
                    else:
                        edit = w if w.deleted or atts[n] is None else w._replace(atts=atts[n])
                        out.append({"ok": True, **self._write(db, edit)})
                except LimitExceeded as exc:  # refused on its own, as CouchDB refuses what validation forbids
                    refused += 1
                    out.append({"id": doc.get("_id"), "error": "forbidden", "reason": str(exc)})
                except att.MissingStub as exc:
                    out.append({"id": doc.get("_id"), "error": "missing_stub", "reason": str(exc)})
                except (ConflictError, DocumentNotFound) as exc:
                    out.append({"id": doc.get("_id"), "error": "conflict", "reason": str(exc)})
            if run:
                write_run()
            if report_behind and known:
                for id, revs in db.behind(known).items():
                    out.extend({"id": id, "rev": r, "mynosql_behind": True} for r in revs)
            if ck_inline:  # after the documents: a checkpoint never runs ahead of what it covers
                assert checkpoint is not None
                try:
                    db.local_put(checkpoint["id"], checkpoint["doc"], max_docs=self.ctx.limits.max_local_docs)
                except LimitExceeded:
                    ck_written = False
            return out

        def write_releasing() -> list[dict[str, Any]]:
            try:
                return write()
            finally:  # what no write took (a refused request, a document refused on its own)
                for kept in mine:
                    release_all(db, kept)

        answer = await asyncio.to_thread(write_releasing)  # even a small write may wait for the compactor
        if not room:
            self._local_full()
        self.ctx.observer.docs_in += written  # counted here, on the event loop: worker threads never race on it
        if refused:
            self.ctx.observer.refusals["max_leaves"] += refused
        if not ck_written:
            self._local_full()
        if checkpoint is not None and not ck_inline:
            if written and self.ctx.notifiers.get(db.name):
                for _ in range(3):  # let waiting longpolls answer first: the checkpoint below can wait a moment
                    await asyncio.sleep(0)
            await self._local_put(db, checkpoint["id"], checkpoint["doc"])  # after the documents
        resp = json_response(answer, 201)
        resp.headers["X-MyNoSQL-Written"] = str(written)
        return resp

    # -- local documents --------------------------------------------------------------------------------------

    async def local_get(self, request: web.Request) -> web.Response:
        db = await self.ctx.db(request)
        doc = await asyncio.to_thread(db.local_get, local_id(request))
        if doc is None:
            raise HttpError(404, "not_found", "missing")
        return json_response(doc)

    async def local_put(self, request: web.Request) -> web.Response:
        db = await self.ctx.db(request)
        body = await self.rules.body(request)
        if not isinstance(body, dict):
            raise HttpError(400, "bad_request", "document must be a JSON object")
        id = local_id(request)
        self.rules.local_size(body)
        rev = await self._local_put(db, id, body)
        return json_response({"ok": True, "id": "_local/" + id, "rev": rev}, 201)

    def _local_room(self, db: Database, id: str) -> bool:
        """False if ``id`` is a new ``_local`` document and the database holds as many as it may (checked before
        a batch is written; :meth:`_local_put` checks again, atomically)."""
        return db.local_get(id) is not None or db.local_count() < self.ctx.limits.max_local_docs

    def _local_full(self) -> NoReturn:
        self.ctx.observer.refused("max_local_docs")
        raise HttpError(403, "forbidden", f"this database holds {self.ctx.limits.max_local_docs} local documents, "
                        "its limit")

    async def _local_put(self, db: Database, id: str, doc: dict[str, Any]) -> str:
        try:
            return await asyncio.to_thread(db.local_put, id, doc, max_docs=self.ctx.limits.max_local_docs)
        except LimitExceeded:
            self._local_full()

    async def local_delete(self, request: web.Request) -> web.Response:
        db = await self.ctx.db(request)
        id = local_id(request)
        if await asyncio.to_thread(db.local_get, id) is None:
            raise HttpError(404, "not_found", "missing")
        rev = await asyncio.to_thread(db.local_put, id, None)
        return json_response({"ok": True, "id": "_local/" + id, "rev": rev})


    @staticmethod
    def _write(db: Database, edit: Edit) -> dict[str, Any]:
        if edit.deleted:  # a deletion, which may keep a body (CouchDB's {"_deleted": true, ...}), never attachments
            res = db.save_deleted(edit.id, edit.rev, edit.record or {})
        else:  # CouchDB's rule: the new revision has the attachments the document lists (none: none)
            assert edit.record is not None
            res = db.save_with_attachments(edit.record, no_follows(edit.atts))
        return {"id": res["id"], "rev": res["rev"]}

    def _open_revs(self, state: DocState, items: dict[str, bool], revs: bool,
                   to_wire: Callable[..., dict[str, Any]]) -> Answer | int:
        """The answer of ``GET ?open_revs`` (or its size, over the limit); attachments sent inline are read and
        counted here."""
        sent = [rev for rev, ok in items.items() if ok]
        ready: dict[str, bytes] = {}
        size = 0
        for rev in sent:
            if state.atts is not None and rev in state.atts:
                ready[rev] = orjson.dumps({"ok": to_wire(state, rev, revs=revs)})
                size += len(ready[rev])
            else:
                size += answer_size(state, rev, revs)
            if size > self.ctx.limits.max_answer_bytes and len(sent) > 1:
                return size

        def parts() -> Iterator[bytes]:
            for rev, ok in items.items():
                yield ready.get(rev) or orjson.dumps({"ok": wire.doc_to_wire(state, rev, revs=revs)} if ok
                                                     else {"missing": rev})

        return Answer(b"[", parts(), b"]", size, len(sent))

    async def doc_get(self, request: web.Request) -> web.StreamResponse:
        db = await self.ctx.db(request)
        id, name = doc_path(request)
        if name is not None:
            return await self.atts.get(request, db, id, name)
        q = request.query
        state = await asyncio.to_thread(db.state, id)
        revs = flag(request, "revs")
        since_revs = atts_since(request)
        budget = InlineBudget(db, self.ctx.limits.max_request_bytes) \
            if flag(request, "attachments") or since_revs is not None else None

        def to_wire(state: Any, rev: str, **kw: Any) -> dict[str, Any]:
            if budget is None or state.atts is None or rev not in state.atts:
                return wire.doc_to_wire(state, rev, **kw)
            since = att.since_generation(revtree.ancestry(state.tree, rev), since_revs)
            return wire.doc_to_wire(state, rev, data=budget.leaf(state, rev), since=since, **kw)
        if "open_revs" in q:
            if state is None:
                raise HttpError(404, "not_found", "missing")
            raw = q["open_revs"]
            if raw == "all":
                wanted = revtree.leaves(state.tree)
            else:
                try:
                    wanted = orjson.loads(raw)
                except orjson.JSONDecodeError as exc:
                    raise HttpError(400, "bad_request", "open_revs must be 'all' or a JSON list") from exc
                if not isinstance(wanted, list) or not all(isinstance(r, str) for r in wanted):
                    raise HttpError(400, "bad_request", "open_revs must be 'all' or a JSON list")
            latest = flag(request, "latest")
            items: dict[str, bool] = {}  # rev -> found (its leaf is sent), each once, in the order asked
            for rev in dict.fromkeys(wanted):
                if rev in state.bodies:
                    items.setdefault(rev, True)
                elif latest and rev in state.tree:
                    for leaf in revtree.leaves(state.tree):
                        if rev in revtree.ancestry(state.tree, leaf):
                            items.setdefault(leaf, True)
                else:
                    items.setdefault(rev, False)
            if "multipart/mixed" in request.headers.get("Accept", ""):  # CouchDB's replicator
                self.ctx.observer.docs_out += sum(items.values())
                return await MultipartAnswer(request, db).open_revs(state, list(items.items()), revs=revs,
                                                                    since=since_revs)
            args = (state, items, revs, to_wire)
            small = sum(map(len, state.bodies.values())) <= INLINE_STATE and len(wanted) <= SMALL_INLINE \
                and (budget is None or not state.atts)
            answer = self._open_revs(*args) if small else await asyncio.to_thread(self._open_revs, *args)
            if isinstance(answer, int):
                self._over(answer)
            self.ctx.observer.docs_out += answer.sent  # the plain protocol's _bulk_get
            return await answer.send(request)
        if state is None:
            raise HttpError(404, "not_found", "missing")
        rev = q.get("rev") or state.winner
        if rev not in state.bodies:
            raise HttpError(404, "not_found", "missing")
        if "rev" not in q and state.tree[rev][1]:
            raise HttpError(404, "not_found", "deleted")
        meta = flag(request, "meta")
        conflicts = meta or flag(request, "conflicts")
        if budget is not None and state.atts is not None and rev in state.atts \
                and "multipart/related" in request.headers.get("Accept", ""):
            return await MultipartAnswer(request, db).one(state, rev, revs=revs, since=since_revs, conflicts=conflicts)
        if budget is not None and state.atts is not None and rev in state.atts:
            doc = await asyncio.to_thread(to_wire, state, rev, revs=revs, conflicts=conflicts)
        else:
            doc = wire.doc_to_wire(state, rev, revs=revs, conflicts=conflicts)
        if meta or flag(request, "deleted_conflicts"):
            gone = state.deleted_conflicts()
            if gone:
                doc["_deleted_conflicts"] = gone
        if meta or flag(request, "revs_info"):
            doc["_revs_info"] = [{"rev": r, "status": "deleted" if state.tree[r][1] and r in state.bodies
                                  else "available" if r in state.bodies else "missing"}
                                 for r in revtree.ancestry(state.tree, rev)]
        if flag(request, "local_seq"):
            doc["_local_seq"] = state.seq
        return json_response(doc)

    def _design_write(self, request: web.Request, db: Database, id: str) -> None:
        """A design document is written by database or server admins only (CouchDB's rule)."""
        if id.startswith(DESIGN_PREFIX) and not self.ctx.is_db_admin(request, db):
            raise HttpError(401, "unauthorized", NOT_ADMIN)

    async def doc_put(self, request: web.Request) -> web.Response:
        db = await self.ctx.db(request)
        id, name = doc_path(request)
        self._design_write(request, db, id)
        if name is not None:
            return await self.atts.put(request, db, id, name)
        stored: dict[str, att.Stored] = {}
        if request.content_type == "multipart/related":  # the document, then its attachments' bytes
            body, stored = await receive_multipart(request, db, id, self.ctx.limits)
        else:
            body = await self.rules.body(request)

        def with_bytes(atts: dict[str, att.AttIn] | None) -> dict[str, att.AttNew] | None:
            if atts is None or not stored:
                return no_follows(atts)
            return {n: stored[n] if isinstance(a, att.Follows) else a for n, a in atts.items()}

        try:
            if request.query.get("new_edits") == "false":
                if isinstance(body, dict) and body.setdefault("_id", id) != id:
                    raise HttpError(400, "bad_request", "document id does not match the URL")
                w = self.rules.wire(db, body)
                atts = with_bytes(w.atts)
                stored = {}  # the write below releases them
                try:
                    if await asyncio.to_thread(db.put_replicated, w.id, w.path, w.deleted, w.blob, atts):
                        self.ctx.observer.docs_in += 1
                except LimitExceeded as exc:
                    self.ctx.observer.refused(exc.limit)
                    raise HttpError(403, "forbidden", str(exc)) from exc
                return json_response({"ok": True, "id": w.id, "rev": w.path[0]}, 201)
            if isinstance(body, dict) and "rev" in request.query:
                body.setdefault("_rev", request.query["rev"])
            edit = self.rules.record(db, body, id)
            if not edit.deleted:
                edit = edit._replace(atts=with_bytes(edit.atts))
                stored = {}
            res = await asyncio.to_thread(self._write, db, edit)
            return json_response({"ok": True, **res}, 201)
        finally:
            release_all(db, stored)

    async def doc_delete(self, request: web.Request) -> web.Response:
        db = await self.ctx.db(request)
        id, name = doc_path(request)
        self._design_write(request, db, id)
        if name is not None:
            return await self.atts.delete(request, db, id, name)
        rev = request.query.get("rev")
        if not rev:
            raise HttpError(409, "conflict", "Document update conflict.")
        res = await asyncio.to_thread(db.deletedoc, id, rev)
        return json_response({"ok": True, "id": res["id"], "rev": res["rev"]})
