"""The databases a mirror serves, by name: opened when a request first needs one, closed when idle.

Two kinds:

* fixed: the mapping a :class:`~MyNoSQL.node.Node` gives (it serves its own database); nothing is created or
  deleted over HTTP;
* a folder (``mynosql serve --path DIR``): every database folder in DIR (or only those named with ``--db``),
  opened in a worker thread when a request first needs it and closed once no request has used it for
  ``idle`` seconds; past ``max_open`` open databases the least recently used idle one closes first. A mirror
  with 10,000 small databases (one per user or device, CouchDB's usual pattern) starts at once and holds in RAM
  only those in use. ``PUT /{db}`` creates one (CouchDB's name rules), ``DELETE /{db}`` closes and removes it.

A database in use by a request (a longpoll waiting on it included) is never closed under it: requests hold it
(:meth:`Databases.hold`) until their answer is made.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import shutil
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ..database import Database, validate_db_name
from ..errors import DatabaseLocked, MyNoSQLError
from ..options import Options
from .requests import HttpError

log = logging.getLogger("MyNoSQL")

# CouchDB's rule for a database name a client creates. A "/" in a name is "%2F" in its folder's name.
COUCH_NAME = re.compile(r"^[a-z][a-z0-9_$()+/-]{0,199}$")


def folder_of(name: str) -> str:
    """The folder (and ``Database.name``) of the database a client names ``name``."""
    return name.replace("/", "%2F")


def name_of(folder: str) -> str:
    """The name clients use for the database in ``folder``."""
    return folder.replace("%2F", "/")

Hook = Callable[[str, Database], Awaitable[None]]


@dataclass
class _Entry:
    db: Database
    last_used: float
    busy: int = 0


def is_database_folder(folder: Path) -> bool:
    return folder.is_dir() and any((folder / f).is_file() for f in ("config.json", "index.sqlite"))


class Databases:
    def __init__(self, *, fixed: dict[str, Database] | None = None, root: Path | None = None,
                 options: Options | None = None, only: frozenset[str] | None = None, idle: float = 300.0,
                 max_open: int = 1000) -> None:
        if (fixed is None) == (root is None):
            raise ValueError("Databases needs either fixed databases or a root folder")
        self.fixed = fixed is not None
        self.root = root
        self.options = options or Options(background_sync=False)
        self.only = only
        self.idle, self.max_open = idle, max_open
        self._open: dict[str, _Entry] = {n: _Entry(db, time.monotonic()) for n, db in (fixed or {}).items()}
        self._opening: dict[str, asyncio.Future[Database | None]] = {}
        self._closing: dict[str, asyncio.Future[None]] = {}  # closes under way: an opening waits for its end
        self._deleting: set[str] = set()  # DELETE /{db} under way: not opened again meanwhile (404)
        self._lock = asyncio.Lock()  # creating, deleting and closing take turns
        self.on_open: list[Hook] = []  # run on the loop once a database is open (notifiers, replication)
        self.on_close: list[Hook] = []  # run on the loop before a database closes

    # -- what exists --------------------------------------------------------------------------------------------

    def names(self) -> list[str]:
        """Every database served, sorted (a folder scan; no database is opened)."""
        if self.fixed or self.root is None:
            return sorted(self._open)
        found = set()
        with contextlib.suppress(FileNotFoundError):
            for p in self.root.iterdir():
                if (self.only is None or name_of(p.name) in self.only) and is_database_folder(p):
                    found.add(name_of(p.name))
        return sorted(found)

    def open_items(self) -> list[tuple[str, Database]]:
        """The databases open now (for metrics and health: nothing is opened to answer them)."""
        return [(n, e.db) for n, e in list(self._open.items()) if not e.db.closed]

    def held(self) -> list[tuple[str, Database]]:
        """Every database this registry holds, closed ones too (a node's database that its application closed
        while a server still runs: ``/_up`` says so)."""
        return [(n, e.db) for n, e in list(self._open.items())]

    def servable(self, name: str) -> bool:
        """Whether this mirror serves database ``name`` now (a folder check: nothing is opened)."""
        return self._servable(name)

    def _servable(self, name: str) -> bool:
        if self.fixed or self.root is None:
            return name in self._open
        if name in self._deleting:
            return False
        if self.only is not None and name not in self.only:
            return False
        try:
            validate_db_name(folder_of(name))
        except MyNoSQLError:
            return False
        return is_database_folder(self.root / folder_of(name))

    # -- using one ----------------------------------------------------------------------------------------------

    async def get(self, name: str) -> Database | None:
        """The open database ``name`` (opened now if it is not), or None if this mirror does not serve it."""
        if name in self._deleting:
            return None
        entry = self._open.get(name)
        if entry is not None and not entry.db.closed:
            entry.last_used = time.monotonic()
            return entry.db
        if self.fixed:
            return None
        pending = self._opening.get(name)
        if pending is not None:
            return await asyncio.shield(pending)
        return await self._open_one(name, if_servable=True)

    async def _open_one(self, name: str, *, if_servable: bool = False) -> Database | None:
        """Open ``name`` and run the open hooks; only then is it handed out (a request that comes meanwhile waits
        for the same opening, so it never sees a database whose change notifier or pulls are not set up yet)."""
        assert self.root is not None
        pending = self._opening.get(name)
        if pending is not None:
            return await asyncio.shield(pending)
        fut: asyncio.Future[Database | None] = asyncio.get_running_loop().create_future()
        self._opening[name] = fut
        try:
            closing = self._closing.get(name)
            if closing is not None:  # closed for idleness (or past max_open) a moment ago: it still holds its lock
                await asyncio.shield(closing)
            db = await self._open_with_hooks(name) if not if_servable or self._servable(name) else None
            if db is not None:
                self._open[name] = _Entry(db, time.monotonic())
            fut.set_result(db)
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # retrieved: a failed open is reported to the request that made it
            raise
        finally:
            del self._opening[name]
        await self._close_past_max()
        return db

    async def _open_with_hooks(self, name: str) -> Database:
        assert self.root is not None
        try:
            db = await asyncio.to_thread(Database, self.root, folder_of(name), self.options)
        except DatabaseLocked as exc:
            raise HttpError(503, "database_locked", f"database {name!r} is open in another process") from exc
        try:
            for hook in self.on_open:
                await hook(name, db)
        except BaseException:
            for hook in self.on_close:  # undo what the hooks that ran set up; the database closes all the same
                with contextlib.suppress(Exception):
                    await hook(name, db)
            await asyncio.to_thread(db.close)
            raise
        return db

    def hold(self, name: str) -> None:
        entry = self._open.get(name)
        if entry is not None:
            entry.busy += 1
            entry.last_used = time.monotonic()

    def release(self, name: str) -> None:
        entry = self._open.get(name)
        if entry is not None:
            entry.busy = max(0, entry.busy - 1)
            entry.last_used = time.monotonic()

    # -- creating, deleting, closing ----------------------------------------------------------------------------

    async def create(self, name: str) -> Database:
        """``PUT /{db}``: a new database (CouchDB's name rules); 412 if it exists."""
        if self.fixed or self.root is None:
            if name in self._open:
                raise HttpError(412, "file_exists", "The database could not be created, the file already exists.")
            raise HttpError(403, "forbidden", "this mirror serves only its configured databases")
        if not COUCH_NAME.match(name):
            raise HttpError(400, "illegal_database_name",
                            f"Name: '{name[:100]}'. Only lowercase characters (a-z), digits (0-9), and any of the "
                            "characters _, $, (, ), +, and - are allowed. Must begin with a letter.")
        if self.only is not None and name not in self.only:
            raise HttpError(403, "forbidden", "this mirror serves only the databases it was started with")
        async with self._lock:
            if is_database_folder(self.root / folder_of(name)):
                raise HttpError(412, "file_exists", "The database could not be created, the file already exists.")
            db = await self._open_one(name)
        assert db is not None
        return db

    async def delete(self, name: str) -> None:
        """``DELETE /{db}``: close the database and remove its folder; 404 if there is none."""
        if self.fixed or self.root is None:
            raise HttpError(403, "forbidden", "this mirror serves only its configured databases")
        if not self._servable(name):
            raise HttpError(404, "not_found", "Database does not exist.")
        self._deleting.add(name)  # requests that come meanwhile get 404, and nothing opens it again under rmtree
        try:
            pending = self._opening.get(name)
            if pending is not None:  # an opening under way: let it finish, then close what it opened
                await asyncio.wait([pending], timeout=60)
            async with self._lock:
                await self._close(name)
                folder = self.root / validate_db_name(folder_of(name))
                await asyncio.to_thread(shutil.rmtree, folder)
        finally:
            self._deleting.discard(name)

    async def _close(self, name: str) -> None:
        """Close ``name``. From the moment it leaves ``_open``, a request for it waits for this close to end and
        then opens it again (not DatabaseLocked: the closing one holds the lock until its store is closed)."""
        entry = self._open.pop(name, None)
        if entry is None:
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._closing[name] = done
        try:
            for hook in self.on_close:
                try:
                    await hook(name, entry.db)
                except Exception as exc:  # the database closes all the same
                    log.error("closing database %s: %s", name, exc)
            await asyncio.to_thread(entry.db.close)
        finally:
            del self._closing[name]
            done.set_result(None)

    async def _close_past_max(self) -> None:
        idle = sorted((e.last_used, n) for n, e in self._open.items() if not e.busy)
        for _, name in idle[: max(0, len(self._open) - self.max_open)]:
            await self._close(name)

    async def close_idle(self) -> int:
        """Close the databases no request used for ``idle`` seconds. Returns how many closed."""
        if self.fixed:
            return 0
        now = time.monotonic()
        names = [n for n, e in self._open.items() if not e.busy and now - e.last_used >= self.idle]
        async with self._lock:
            for name in names:
                entry = self._open.get(name)
                if entry is not None and not entry.busy:
                    await self._close(name)
        return len(names)

    async def close_all(self) -> None:
        """Close every database this registry opened (fixed ones belong to their node: left open)."""
        if self.fixed:
            return
        if self._opening:  # let openings under way finish, so that what they open is closed here too
            await asyncio.wait(list(self._opening.values()), timeout=60)
        async with self._lock:
            for name in list(self._open):
                await self._close(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
