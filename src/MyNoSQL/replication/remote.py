"""What a node knows of each remote mirror (reachability, errors logged once per change of state, how far
pushes and pulls stand), retry backoff, and learning the mirror list a mirror knows (``GET /_mirrors``)."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from typing import Any

import aiohttp

from ..database import Database
from ..errors import MyNoSQLError, RemoteError
from ..options import Options
from .endpoints import HttpEndpoint

log = logging.getLogger("MyNoSQL")


def problem_kind(exc: BaseException) -> str:
    """What kind of problem ``exc`` is, without its details: a change of kind is logged, a new message is not."""
    if isinstance(exc, RemoteError):
        return exc.kind
    if isinstance(exc, (OSError, asyncio.TimeoutError)):
        return "unreachable"
    return type(exc).__name__


class RemoteState:
    """What this node knows of one remote mirror. Its problems are logged once per change of state: when it
    starts failing (a WARNING), when the kind of problem changes (another WARNING: from "unreachable" to
    "HTTP 401", say; a new address or errno text in the message of the same kind is not a change), and when it
    works again (one INFO line). Every retry in between is counted (``failures``), not logged.

    ``reachable`` says whether it answered at all: a mirror that answers with an error (a 401, a 403 for a
    database it does not serve) is reachable, and ``last_error`` says what it answered."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.reachable: bool | None = None
        self.failing: bool | None = None  # None: never tried
        self.last_success: float | None = None
        self.last_error: str | None = None
        self.last_kind: str | None = None
        self.failures = 0  # failed attempts since the last success
        self.failing_since: float | None = None
        self.pushed_seq: int | None = None  # the local seq everything up to which is pushed; None: unknown yet
        self.pulled_seq: Any = None  # where this node's pull (or poll) of the remote's feed stands; None: unknown
        self.remote_seq: Any = None  # the remote's latest change sequence as last heard; None: unknown
        self.docs_pushed = 0
        self.docs_pulled = 0

    def ok(self) -> None:
        if self.failing:
            since = time.time() - self.failing_since if self.failing_since is not None else 0.0
            log.info("mirror %s works again (after %d failed attempt(s) in %.0f s)", self.url, self.failures, since)
        elif self.failing is None:
            log.info("mirror %s is reachable", self.url)
        self.reachable = True
        self.failing = False
        self.last_success = time.time()  # last_error stays: status shows the last success and the last error
        self.failures = 0
        self.failing_since = None

    def failed(self, exc: BaseException) -> None:
        msg = str(exc) if isinstance(exc, MyNoSQLError) else f"{type(exc).__name__}: {exc}"
        kind = problem_kind(exc)
        if not self.failing or kind != self.last_kind:
            expected = isinstance(exc, (MyNoSQLError, OSError))  # network and remote errors; others are bugs
            log.warning("mirror %s: %s (will retry; logged again only if the kind of problem changes)", self.url,
                        msg, exc_info=None if expected else exc)
        if not self.failing:
            self.failing_since = time.time()
        self.failing = True
        self.reachable = isinstance(exc, RemoteError) and exc.status > 0  # it answered, with an error
        self.last_error = msg
        self.last_kind = kind
        self.failures += 1

    @property
    def lag(self) -> int | None:
        """Changes of the remote's feed not pulled yet (in change sequence numbers), if both ends are known."""
        if isinstance(self.remote_seq, int) and isinstance(self.pulled_seq, int):
            return max(0, self.remote_seq - self.pulled_seq)
        return None


class Backoff:
    def __init__(self, base: float = 0.2, cap: float = 5.0) -> None:
        self.base, self.cap, self.n = base, cap, 0

    def reset(self) -> None:
        self.n = 0

    def next(self) -> float:
        self.n += 1
        return random.uniform(0, min(self.cap, self.base * 2 ** min(self.n, 20)))


class MirrorLearner:
    """Learns the mirrors a mirror knows (``GET /_mirrors``), at most every 10 minutes per mirror, and remembers
    them in the database's configuration (see :meth:`Database.learn_mirrors`)."""

    INTERVAL = 600.0

    def __init__(self, db: Database, opts: Options, own: Callable[[], set[str | None]]) -> None:
        self.db, self.opts, self.own = db, opts, own
        self._refreshed: dict[str, float] = {}

    async def refresh(self, url: str, session: aiohttp.ClientSession) -> None:
        now = time.monotonic()
        if not self.opts.learn_mirrors or now - self._refreshed.get(url, -1e9) < self.INTERVAL:
            return
        root = HttpEndpoint(session, url, timeout=self.opts.remote_timeout)
        try:
            found = await root.request("GET", "/_mirrors")
        except RemoteError as exc:
            if exc.status in (400, 403, 404, 405):
                self._refreshed[url] = now
                return  # not a MyNoSQL mirror (CouchDB, PouchDB): nothing to learn
            raise
        self._refreshed[url] = now
        mirrors = found.get("mirrors") if isinstance(found, dict) else None
        if isinstance(mirrors, list):
            urls = [m for m in mirrors if isinstance(m, str)]
            await asyncio.to_thread(self.db.learn_mirrors, urls, via=url, own=self.own())
