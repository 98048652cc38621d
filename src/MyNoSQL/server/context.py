"""What every route of a mirror shares: its databases, limits, request rules, observer, and per database the
notifier that wakes longpolls and the log of echoed writes."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Coroutine
from typing import Any

from aiohttp import web

from ..database import Database
from ..options import Limits
from .observe import Observer
from .registry import Databases
from .requests import NOT_ADMIN, HttpError, Rules

# The authenticated user of a request (a typed request key where aiohttp has them: no NotAppKeyWarning)
USER: Any = web.RequestKey("user", str) if hasattr(web, "RequestKey") else "user"
HELD: Any = web.RequestKey("held", list) if hasattr(web, "RequestKey") else "held"  # databases a request holds
# The role of the authenticated user ("admin", "replicator", "reader"); absent on an open mirror (no users:
# loopback only), where everyone may do everything (CouchDB's "admin party").
ROLE: Any = web.RequestKey("role", str) if hasattr(web, "RequestKey") else "role"
RENEW: Any = web.RequestKey("renew", str) if hasattr(web, "RequestKey") else "renew"  # a session cookie to renew
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


def _named(part: dict[str, list[str]], user: str | None, role: str | None) -> bool:
    """Whether a ``_security`` part (``{"names": [...], "roles": [...]}``) names this user or its role."""
    return (user is not None and user in part["names"]) or (role is not None and role in part["roles"])


class ServerContext:
    def __init__(self, dbs: Databases, limits: Limits, observer: Observer) -> None:
        self.dbs = dbs
        self.limits = limits
        self.rules = Rules(limits)
        self.observer = observer
        self.notifiers: dict[str, ChangeNotifier] = {}
        self.echo_logs: dict[str, EchoLog] = {}
        self._unlisten: dict[str, Callable[[], None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        dbs.on_open.append(self._opened)
        dbs.on_close.append(self._closing)

    async def db(self, request: web.Request) -> Database:
        """The database of the request's ``{db}``, opened if needed and held until the answer is made; a 404
        if this mirror does not serve it."""
        name = request.match_info["db"]
        db = await self.dbs.get(name)
        if db is None or db.closed:
            raise HttpError(404, "not_found", "Database does not exist.")
        role = request.get(ROLE)
        if role is not None and role != "admin":  # a database's _security may name its members
            sec = db.security
            members, user = sec["members"], request.get(USER)
            if (members["names"] or members["roles"]) and not _named(members, user, role) \
                    and not _named(sec["admins"], user, role):
                raise HttpError(403, "forbidden", "You are not allowed to access this db.")
        self.dbs.hold(name)
        request.setdefault(HELD, []).append(name)
        return db

    @staticmethod
    def is_db_admin(request: web.Request, db: Database | None = None) -> bool:
        """May this request write design documents and ``_security``? Server admins, the admins that the
        database's ``_security`` names (by name or role), or anyone on an open mirror (no users)."""
        role = request.get(ROLE)
        if role is None or role == "admin":
            return True
        return db is not None and _named(db.security["admins"], request.get(USER), role)

    def require_db_admin(self, request: web.Request, db: Database) -> None:
        if not self.is_db_admin(request, db):
            raise HttpError(401, "unauthorized", NOT_ADMIN)

    @staticmethod
    def require_admin(request: web.Request) -> None:
        """A 401 unless the request comes from a server admin (or the mirror is open: no users, loopback)."""
        role = request.get(ROLE)
        if role is not None and role != "admin":
            raise HttpError(401, "unauthorized", "You are not a server admin.")

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` in the background (a compaction...); cancelled when the server closes."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def cancel_tasks(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def release(self, request: web.Request) -> None:
        """The request is answered: the databases it held may close when idle."""
        for name in request.get(HELD, ()):
            self.dbs.release(name)

    def echo_log(self, name: str) -> EchoLog:
        log = self.echo_logs.get(name)
        if log is None:
            log = self.echo_logs[name] = EchoLog()
        return log

    # Notifiers and echo logs are keyed by Database.name (the folder's name: a "/" of the client's name is "%2F").

    async def _opened(self, name: str, db: Database) -> None:
        n = ChangeNotifier(asyncio.get_running_loop())
        self.notifiers[db.name] = n
        self._unlisten[db.name] = db.on_change(n.notify)

    async def _closing(self, name: str, db: Database) -> None:
        stop = self._unlisten.pop(db.name, None)
        if stop is not None:
            stop()
        self.notifiers.pop(db.name, None)
        self.echo_logs.pop(db.name, None)

    async def listen(self) -> None:
        """Start waking longpolls on changes of the databases open now (the server's startup)."""
        for name, db in self.dbs.open_items():
            if db.name not in self.notifiers:
                await self._opened(name, db)

    async def unlisten(self) -> None:
        for name, db in self.dbs.open_items():
            await self._closing(name, db)
