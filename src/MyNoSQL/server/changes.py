"""``GET|POST /{db}/_changes``: the changes feed, as CouchDB serves it.

Feeds: ``normal``, ``longpoll`` (a waiting request is woken by the database's change notifier; it costs nothing
while it waits), ``continuous`` (one JSON row a line) and ``eventsource`` (server-sent events), both with
``heartbeat`` and ended by ``timeout`` (at most ``Limits.max_longpoll``). Parameters: ``since`` (a seq, or
``now``), ``limit``, ``descending``, ``style=all_docs`` (every leaf, else the winner), ``include_docs`` (with
``conflicts``), ``filter=_doc_ids`` with ``doc_ids`` (JSON in the query, or ``{"doc_ids": [...]}`` in a POST
body), ``filter=_design``, ``filter=_selector`` (a Mango selector in a POST body, tested on the winning revision;
``revs=true`` adds each doc's ``_revisions``, an extension). Filters that would run JavaScript
(``filter=ddoc/name``, ``_view``) answer 501.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web

from ..database import Database
from ..net import wire
from ..records.ids import DESIGN_PREFIX
from ..records.revtree import DocState
from .context import SMALL_INLINE, USER, ServerContext, client_token
from .databases import NO_JAVASCRIPT
from .queries import selector_filter
from .requests import HttpError, json_response

MAX_LIMIT = 10_000
Keep = Callable[[DocState], bool]


class ChangesRoutes:
    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx

    def add_to(self, r: web.UrlDispatcher) -> None:
        r.add_get("/{db}/_changes", self.changes)
        r.add_post("/{db}/_changes", self.changes)

    async def _filter(self, request: web.Request, db: Database) -> Keep | None:
        """The ``filter`` of the request as a predicate on a record's state (None: every record)."""
        q = request.query
        body: Any = {}
        if request.method == "POST" and request.body_exists:
            body = await self.ctx.rules.body(request)
            if not isinstance(body, dict):
                raise HttpError(400, "bad_request", "the body of POST _changes must be a JSON object")
        name = q.get("filter")
        if name is None and ("doc_ids" in q or "doc_ids" in body):
            name = "_doc_ids"
        if name is None:
            return None
        if name == "_doc_ids":
            ids = body.get("doc_ids")
            if ids is None and "doc_ids" in q:
                try:
                    ids = orjson.loads(q["doc_ids"])
                except orjson.JSONDecodeError as exc:
                    raise HttpError(400, "bad_request", "doc_ids must be a JSON list of ids") from exc
            if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
                raise HttpError(400, "bad_request", "filter=_doc_ids needs doc_ids: a JSON list of document ids")
            self.ctx.rules.batch(ids, "doc_ids")
            wanted = frozenset(ids)
            return lambda s: s.id in wanted
        if name == "_design":
            return lambda s: s.id.startswith(DESIGN_PREFIX)
        if name == "_selector":
            return selector_filter(body)
        if name == "_view" or "/" in name:
            raise HttpError(501, "not_implemented", NO_JAVASCRIPT)
        raise HttpError(400, "bad_request", f"unknown filter {name[:80]!r}")

    async def changes(self, request: web.Request) -> web.StreamResponse:
        db = await self.ctx.db(request)
        q = request.query
        since_raw = q.get("since", "0")
        if since_raw == "now":
            since = db.seq
        else:
            try:
                since = max(0, int(since_raw.split("-")[0]) if since_raw else 0)
            except ValueError as exc:
                raise HttpError(400, "bad_request", "since must be an integer or 'now'") from exc
            if since > db.seq:  # not a seq this database gave: it was restored or re-created since
                raise HttpError(400, "since_ahead", f"since {str(since)[:40]} is ahead of this database's last "
                                f"change ({db.seq}); start again from 0")
        try:
            limit = min(MAX_LIMIT, max(1, int(q.get("limit", MAX_LIMIT))))
            timeout = min(self.ctx.limits.max_longpoll, max(0, min(int(q.get("timeout", 60000)), 10**9)) / 1000)
            beat = q.get("heartbeat")
            heartbeat = None if beat in (None, "false") else 60.0 if beat == "true" else \
                max(0.1, min(int(beat), 10**9) / 1000)
        except ValueError as exc:
            raise HttpError(400, "bad_request", "limit, timeout and heartbeat must be integers") from exc
        all_docs = q.get("style") == "all_docs"
        include_docs = q.get("include_docs") == "true"
        revs = q.get("revs") == "true"  # with include_docs, each doc's _revisions: an extension
        conflicts = q.get("conflicts") == "true"
        descending = q.get("descending") == "true"
        feed = q.get("feed", "normal")
        if feed not in ("normal", "longpoll", "continuous", "eventsource"):
            raise HttpError(400, "bad_request", "feed must be normal, longpoll, continuous or eventsource")
        keep = await self._filter(request, db)
        client = client_token(request)
        echo_log = self.ctx.echo_log(db.name) if client else None

        def row_of(s: DocState) -> dict[str, Any]:
            row = wire.changes_row(s)
            if not all_docs:
                row["changes"] = row["changes"][:1]
            if include_docs:
                row["doc"] = wire.doc_to_wire(s, s.winner, revs=revs, conflicts=conflicts)
            return row

        def read(after: int) -> tuple[list[dict[str, Any]], int]:
            """The rows after ``after`` worth sending, and the seq they cover (echoes skipped, still covered)."""
            out = []
            last = after
            if descending:  # newest first: every change since ``after``, reversed (CouchDB's ``descending``)
                states = [s for s in db.states_since(after) if keep is None or keep(s)]
                states.reverse()
                return [row_of(s) for s in states[:limit]], (states[min(limit, len(states)) - 1].seq
                                                             if states else after)
            for s in db.states_since(after):
                last = s.seq
                if keep is not None and not keep(s):
                    continue
                if echo_log is not None and client is not None and echo_log.echoes(wire.changes_row(s), client):
                    continue
                out.append(row_of(s))
                if len(out) >= limit:
                    break
            return out, last

        async def answer(after: int) -> tuple[list[dict[str, Any]], int]:
            return read(after) if db.seq - after <= SMALL_INLINE else await asyncio.to_thread(read, after)

        observer, addr, user = self.ctx.observer, request.remote or "?", request.get(USER)
        observer.client(addr, user, db.name, since)
        notifier = self.ctx.notifiers.get(db.name)
        event = notifier.event if notifier else None
        rows, last = await answer(since)
        if feed in ("continuous", "eventsource"):
            return await self._stream(request, db, feed, rows, last, answer, timeout, heartbeat, limit)
        if not rows and feed == "longpoll" and notifier is not None and event is not None and timeout > 0:
            deadline = asyncio.get_running_loop().time() + timeout
            while not rows:
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    break
                try:
                    await asyncio.wait_for(event.wait(), remaining)
                except asyncio.TimeoutError:
                    break
                event = notifier.event  # taken before reading: a change during the read wakes the next wait
                rows, last = await answer(last)
        if last != since:  # what the client has been sent (echoes it skipped included): its lag from now on
            observer.client(addr, user, db.name, last)
        resp = json_response({"results": rows, "last_seq": last, "pending": 0})
        resp.headers["X-MyNoSQL-Update-Seq"] = str(db.seq)  # a MyNoSQL client learns how far behind it is
        return resp

    async def _stream(self, request: web.Request, db: Database, feed: str, rows: list[dict[str, Any]], last: int,
                      answer: Callable[[int], Any], timeout: float, heartbeat: float | None,
                      limit: int) -> web.StreamResponse:
        """A continuous or eventsource feed: the rows so far, then each change as it comes, until ``timeout``
        (or ``limit`` rows); a heartbeat (an empty line) every ``heartbeat`` seconds while nothing changes."""
        resp = web.StreamResponse(headers={
            "Content-Type": "text/event-stream" if feed == "eventsource" else "application/json",
            "Cache-Control": "no-cache", "X-MyNoSQL-Update-Seq": str(db.seq)})
        await resp.prepare(request)
        sent = 0

        async def send(batch: list[dict[str, Any]]) -> None:
            nonlocal sent
            for row in batch[: limit - sent]:
                data = orjson.dumps(row)
                await resp.write(b"data: " + data + b"\nid: " + str(row["seq"]).encode() + b"\n\n"
                                 if feed == "eventsource" else data + b"\n")
                sent += 1

        await send(rows)
        notifier = self.ctx.notifiers.get(db.name)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while sent < limit and notifier is not None:
            event = notifier.event
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                await asyncio.wait_for(event.wait(), min(remaining, heartbeat or remaining))
            except asyncio.TimeoutError:
                if heartbeat is not None and loop.time() < deadline:
                    await resp.write(b"\n")
                continue
            batch, last = await answer(last)
            await send(batch)
        if feed == "continuous":
            await resp.write(orjson.dumps({"last_seq": last, "pending": 0}) + b"\n")
        await resp.write_eof()
        return resp
