"""What every route of a mirror shares: its databases, limits, request rules, observer, and per database the
notifier that wakes longpolls and the log of echoed writes."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import Any

from aiohttp import web

from ..database import Database
from ..options import Limits
from .observe import Observer
from .requests import HttpError, Rules

# The authenticated user of a request (a typed request key where aiohttp has them: no NotAppKeyWarning)
USER: Any = web.RequestKey("user", str) if hasattr(web, "RequestKey") else "user"
SMALL_INLINE = 64  # a read touching fewer records runs on the event loop, not in a worker thread


class ChangeNotifier:
    """Wakes longpoll ``_changes`` requests when the database changes (from any thread)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.event = asyncio.Event()
        self._scheduled = False  # one wake-up in flight covers every change made before it runs

    def notify(self, *_args: Any) -> None:
        if self._scheduled:
            return  # a batch of writes wakes the loop once, not once per record
        self._scheduled = True
        with contextlib.suppress(RuntimeError):  # the server is shutting down: nobody waits any more
            self.loop.call_soon_threadsafe(self._fire)

    def _fire(self) -> None:
        self._scheduled = False  # before waking: a change made from now on schedules its own wake-up
        self.event.set()
        self.event = asyncio.Event()


class EchoLog:
    """Revisions a replicating client is writing here, so that the changes feed can leave out the rows that only
    echo them back to it (bounded; thread-safe).

    A peer that pushed revision R of a record, and left it the record's only leaf, learns nothing from the
    ``_changes`` row of that write: answering its waiting longpoll with it would cost a round trip per change for
    nothing. The revision is marked *before* it is written (a longpoll woken by the write finds the mark, whatever
    thread writes); a row is an echo for that client only while R is the record's only leaf: once anyone changes
    the record, its row carries news and is sent.
    """

    def __init__(self, capacity: int = 16384) -> None:
        self.capacity = capacity
        self._by_rev: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()

    def expect(self, id: str, rev: str, client: str) -> None:
        with self._lock:
            self._by_rev.pop((id, rev), None)  # re-inserted at the end: the newest are kept
            self._by_rev[(id, rev)] = client
            while len(self._by_rev) > self.capacity:
                del self._by_rev[next(iter(self._by_rev))]

    def echoes(self, row: dict[str, Any], client: str) -> bool:
        leaves = row["changes"]
        return len(leaves) == 1 and self._by_rev.get((row["id"], leaves[0]["rev"])) == client


def client_token(request: web.Request) -> str | None:
    """The ``X-MyNoSQL-Client`` token of a replicating client (an extension), if it is a sane one."""
    token = request.headers.get("X-MyNoSQL-Client")
    return token if token and len(token) <= 64 and token.isascii() and token.isalnum() else None


class ServerContext:
    def __init__(self, dbs: dict[str, Database], limits: Limits, observer: Observer) -> None:
        self.dbs = dbs
        self.limits = limits
        self.rules = Rules(limits)
        self.observer = observer
        self.notifiers: dict[str, ChangeNotifier] = {}
        self.echo_logs: dict[str, EchoLog] = {name: EchoLog() for name in dbs}
        self._unlisten: list[Callable[[], None]] = []

    def db(self, request: web.Request) -> Database:
        db = self.dbs.get(request.match_info["db"])
        if db is None or db.closed:
            raise HttpError(404, "not_found", "Database does not exist.")
        return db

    def listen(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start waking longpolls on changes (the server's startup)."""
        for name, db in self.dbs.items():
            n = ChangeNotifier(loop)
            self.notifiers[name] = n
            self._unlisten.append(db.on_change(n.notify))

    def unlisten(self) -> None:
        for stop in self._unlisten:
            stop()
        self._unlisten.clear()
        self.notifiers.clear()
