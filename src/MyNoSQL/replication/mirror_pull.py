"""A Mirror's pulls: one continuous, checkpointed pull from every other known mirror (new ones are picked up
within seconds), so that every mirror ends up with every record. Runs as tasks on the node's event loop."""

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
        self._watch: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._watch = asyncio.create_task(self._watch_peers(), name=f"MyNoSQL-pulls-{self.db.name}")

    async def stop(self) -> None:
        tasks = [t for t in (self._watch, *self._tasks.values()) if t is not None]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks.clear()
        self._watch = None

    async def _watch_peers(self) -> None:
        """Keep one pull running from every other known mirror (new ones are picked up within seconds)."""
        while True:
            for url in self.db.config.peers:
                if url not in self._tasks and redact_url(url) != self.own_url():
                    self._tasks[url] = asyncio.create_task(self._pull_forever(url))
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

    def status(self) -> dict[str, Any]:
        out = {}
        for url, st in list(self.remotes.items()):
            out[url] = {"reachable": st.reachable, "last_success": st.last_success, "last_error": st.last_error,
                        "pending": 0, "lag": st.lag, "failures": st.failures, "docs_pushed": st.docs_pushed,
                        "docs_pulled": st.docs_pulled, "current": False}
        return out
