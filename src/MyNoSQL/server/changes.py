"""``GET|POST /{db}/_changes``: the changes feed, normal and longpoll (a waiting request is woken by the
database's change notifier; it costs nothing while it waits)."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from ..net import wire
from .context import SMALL_INLINE, USER, ServerContext, client_token
from .queries import changes_filter
from .requests import HttpError, json_response

MAX_LIMIT = 10_000


class ChangesRoutes:
    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx

    def add_to(self, r: web.UrlDispatcher) -> None:
        r.add_get("/{db}/_changes", self.changes)
        r.add_post("/{db}/_changes", self.changes)

    async def changes(self, request: web.Request) -> web.Response:
        db = self.ctx.db(request)
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
        except ValueError as exc:
            raise HttpError(400, "bad_request", "limit and timeout must be integers") from exc
        all_docs = q.get("style") == "all_docs"
        keep = await changes_filter(self.ctx, request, db)  # filter=_selector
        include_docs, revs = q.get("include_docs") == "true", q.get("revs") == "true"  # revs: an extension
        feed = q.get("feed", "normal")
        notifier = self.ctx.notifiers.get(db.name)
        event = notifier.event if notifier else None
        client = client_token(request)
        echo_log = self.ctx.echo_logs.get(db.name) if client else None

        def read(after: int) -> tuple[list[dict[str, Any]], int]:
            """The rows after ``after`` worth sending, and the seq they cover (echoes skipped, still covered)."""
            out = []
            last = after
            for s in db.states_since(after):
                last = s.seq
                row = wire.changes_row(s)
                if echo_log is not None and client is not None and echo_log.echoes(row, client):
                    continue
                if keep is not None and not keep(s):
                    continue
                if not all_docs:
                    row["changes"] = row["changes"][:1]
                if include_docs:
                    row["doc"] = wire.doc_to_wire(s, s.winner, revs=revs)
                out.append(row)
                if len(out) >= limit:
                    break
            return out, last

        async def answer(after: int) -> tuple[list[dict[str, Any]], int]:
            return read(after) if db.seq - after <= SMALL_INLINE else await asyncio.to_thread(read, after)

        self.ctx.observer.client(request.remote or "?", request.get(USER), db.name, since)
        rows, last = await answer(since)
        if not rows and feed in ("longpoll", "continuous") and notifier is not None and event is not None \
                and timeout > 0:
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
            self.ctx.observer.client(request.remote or "?", request.get(USER), db.name, last)
        resp = json_response({"results": rows, "last_seq": last, "pending": 0})
        resp.headers["X-MyNoSQL-Update-Seq"] = str(db.seq)  # a MyNoSQL client learns how far behind it is
        return resp
