"""A Mirror's replication with the other mirrors it knows: one continuous, checkpointed pull from each (new ones
are picked up within seconds), so that every mirror ends up with every record; and, to a peer that is not a
MyNoSQL mirror (CouchDB, PouchDB Server: it does not pull), a continuous push of every change too, so that a
mirror and a CouchDB cluster behind it stay in step both ways. Runs as tasks on the node's event loop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from ..database import Database
from ..net.urls import db_url, redact_url
from ..options import Options
from .endpoints import HttpEndpoint, LocalEndpoint, client_session
from .remote import Backoff, MirrorLearner, RemoteState
from .replicator import Resume, replicate


class MirrorPulls:
    """Started and stopped by its node, on the node's event loop. ``own_url()``: the URL this mirror serves on
    (never pulled from)."""

    def __init__(self, db: Database, opts: Options, own_url: Callable[[], str | None]) -> None:
        self.db = db
        self.opts = opts
        self.own_url = own_url
        self.remotes: dict[str, RemoteState] = {}
        self.learner = MirrorLearner(db, opts, own=lambda: {own_url()})
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._pushes: dict[str, asyncio.Task[None]] = {}
        self.pushed: dict[str, RemoteState] = {}
        self._watch: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._watch = asyncio.create_task(self._watch_peers(), name=f"MyNoSQL-pulls-{self.db.name}")

    async def stop(self) -> None:
        tasks = [t for t in (self._watch, *self._tasks.values(), *self._pushes.values()) if t is not None]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks.clear()
        self._pushes.clear()
        self._watch = None

    async def _watch_peers(self) -> None:
        """Keep one pull running from every other known mirror (new ones are picked up within seconds)."""
        while True:
            for url in self.db.config.peers:
                if url not in self._tasks and redact_url(url) != self.own_url():
                    self._tasks[url] = asyncio.create_task(self._pull_forever(url))
                    self._pushes[url] = asyncio.create_task(self._push_if_needed(url))
            await asyncio.sleep(2.0)

    async def _pull_forever(self, url: str) -> None:
        state = self.remotes.setdefault(redact_url(url), RemoteState(redact_url(url)))
        backoff = Backoff()
        local = LocalEndpoint(self.db)
        # Its own HTTP session: starting afresh after failures to reach one mirror must not close the connections
        # (and cut the waiting longpoll) of the pulls from the others.
        session = client_session(self.opts)
        try:
            while True:
                remote: HttpEndpoint | None = None
                progress = Resume()  # a fresh one each pass (checkpoints are read as before): where we stand
                try:
                    await self.learner.refresh(url, session)
                    remote = HttpEndpoint(session, db_url(url, self.db.name), timeout=self.opts.remote_timeout)
                    # the first pass, and the first after a failure, does not wait for changes: the state
                    # (reachable, lag) is known at once, not after a longpoll on an idle remote
                    wait = self.opts.longpoll if state.failing is False else None
                    res = await replicate(remote, local, wait=wait, resume=progress)
                    state.ok()
                    state.docs_pulled += res.docs_written
                    state.pulled_seq = res.last_seq
                    if remote.update_seq is not None:
                        state.remote_seq = remote.update_seq
                    backoff.reset()
                except Exception as exc:  # a background loop must never die (cancellation still ends it)
                    # what this pass learnt still counts: the remote's seq from a _changes answer, the batches done
                    if remote is not None and remote.update_seq is not None:
                        state.remote_seq = remote.update_seq
                    if progress.since is not None:
                        state.pulled_seq = progress.since
                    state.failed(exc)
                    await asyncio.sleep(backoff.next())
                    if backoff.n > 3:  # pooled connections may be dead or black-holed: start afresh
                        old, session = session, client_session(self.opts)
                        await old.close()
        finally:
            await session.close()

    async def _push_if_needed(self, url: str) -> None:
        """Push every change to ``url`` continuously, unless it is a MyNoSQL mirror (which pulls by itself)."""
        session = client_session(self.opts)
        try:
            backoff = Backoff()
            while True:  # until the server says what it is
                try:
                    welcome = await HttpEndpoint(session, url, timeout=self.opts.remote_timeout).request("GET", "/")
                    break
                except Exception:  # unreachable for now: the pull reports it; ask again later
                    await asyncio.sleep(backoff.next())
            features = welcome.get("features") if isinstance(welcome, dict) else None
            if isinstance(features, list) and "mynosql" in features:
                return
            await self._push_forever(url, session)
        finally:
            await session.close()

    async def _push_forever(self, url: str, session: Any) -> None:
        state = self.pushed.setdefault(redact_url(url), RemoteState(redact_url(url)))
        loop = asyncio.get_running_loop()
        changed = asyncio.Event()

        def on_change(new: Any, prev: Any) -> None:  # in the writing thread
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(changed.set)

        unlisten = self.db.on_change(on_change)
        backoff = Backoff()
        resume = Resume()
        try:
            while True:
                try:
                    remote = HttpEndpoint(session, db_url(url, self.db.name), timeout=self.opts.remote_timeout)
                    await remote.ensure_exists()
                    changed.clear()
                    res = await replicate(LocalEndpoint(self.db), remote, resume=resume)
                    state.ok()
                    state.docs_pushed += res.docs_written
                    if isinstance(res.last_seq, int):
                        state.pushed_seq = res.last_seq
                    backoff.reset()
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(changed.wait(), 30.0)
                except Exception as exc:  # a background loop must never die (cancellation still ends it)
                    state.failed(exc)
                    resume = Resume()
                    await asyncio.sleep(backoff.next())
        finally:
            unlisten()

    def status(self) -> dict[str, Any]:
        out = {}
        for url, st in list(self.remotes.items()):
            push = self.pushed.get(url)
            pending = 0 if push is None or push.pushed_seq is None else max(0, self.db.seq - push.pushed_seq)
            out[url] = {"reachable": st.reachable, "last_success": st.last_success, "last_error": st.last_error,
                        "pending": pending, "lag": st.lag, "failures": st.failures,
                        "docs_pushed": push.docs_pushed if push is not None else 0,
                        "docs_pulled": st.docs_pulled, "current": False}
        return out
