"""The asyncio API: :class:`AsyncMyNoSQL`, the calls of the :class:`~MyNoSQL.handle.MyNoSQL` handle as coroutines,
for services built on an event loop (FastAPI, aiohttp, Starlette).

>>> from MyNoSQL.aio import AsyncMyNoSQL
>>> async with AsyncMyNoSQL() as db:                   # doctest: +SKIP
...     await db.opendb("YourDatabaseName")
...     rec = await db.savedoc({"temp": 21.5})
...     async for change in db.changes(since=0, live=True):
...         ...

Nothing here blocks the event loop. Every call that can block (a save waiting for the compactor, an fsync, a
read that waits on a slow mirror, ``opendb`` and ``closedb`` with its final push) runs in a worker thread of a
small pool that the handle owns: at most ``workers`` such calls run at once, more wait their turn in the pool's
queue (never on the loop). ``closedb`` shuts the pool down and joins its threads, so a closed handle leaves no
thread behind. The pool is the handle's own rather than the loop's default executor (``asyncio.to_thread``):
saves held back by the compactor or reads waiting on a mirror then never take the threads the rest of the
application (and the loop's own DNS look-ups) share, and closing knows exactly which threads to join.

Cancellation: cancelling the task that awaits a call stops the waiting, not the call. A call is handed to the
pool as soon as its coroutine starts (before it first waits), and from then on it is carried out whatever happens
to its caller, whether a worker had already taken it or it was still queued: a save is written, a delete applied
(an error such as ``ConflictError`` then reaches nobody), a read's result is dropped. ``closedb`` waits for every
such call before it closes the database. So a cancelled ``savedoc`` is written, or about to be, when the
``CancelledError`` arrives. ``opendb`` cancelled mid-way still opens the database in this handle (``closedb``
closes it); ``closedb`` cancelled mid-way still closes it (the next ``opendb`` or ``closedb`` waits for that).

Live changes: ``changes(since, live=True)`` (and :meth:`AsyncMyNoSQL.watch`) follows the database's own changes
feed, local and replicated changes alike: each time it has yielded everything up to the latest change it waits,
without a thread, until the next write wakes it, then reads the feed again from where it stood, in batches. It
buffers nothing per change: a slow consumer costs no memory (it reads each changed record's newest revision when
it gets there), and a burst of writes schedules one wake-up of the loop, not one per change.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import os
import threading
from collections.abc import AsyncGenerator, Callable
from pathlib import Path
from typing import Any, BinaryIO, ParamSpec, TypeVar

from .database import Change
from .errors import DatabaseClosed
from .handle import MyNoSQL
from .node import Node
from .options import Options

T = TypeVar("T")
P = ParamSpec("P")

WORKERS = 8  # blocking calls of one handle at once (the service loop's pool has as many)
BATCH = 256  # changes read per trip to a worker: what a changes iterator holds at most

__all__ = ["AsyncMyNoSQL"]

_NOT_OPEN = "no database is open: call (and await) opendb(name) first"


def _read_changes(node: Node, since: int, limit: int) -> list[Change]:
    """At most ``limit`` changes after ``since`` (in a worker thread)."""
    return list(itertools.islice(node.changes(since), limit))  # the generator is closed as it is dropped


class _Wakeup:
    """Wakes one live changes iterator when the database changes (from any thread, at most once per read)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.event = asyncio.Event()
        self.closed = False
        self._scheduled = False

    def notify(self, *_args: Any) -> None:
        """A database change listener: runs in the writing thread, so it only schedules the wake-up."""
        if self._scheduled:
            return  # a wake-up is on its way: it covers this change too
        self._scheduled = True
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
            self.loop.call_soon_threadsafe(self._fire)

    def _fire(self) -> None:
        self._scheduled = False  # before waking: a change from now on schedules its own wake-up
        self.event.set()

    def close(self) -> None:
        """The handle closes: the iterator ends (on the loop)."""
        self.closed = True
        self.event.set()


class AsyncMyNoSQL:
    """A handle on one database at a time, for asyncio: every call of :class:`MyNoSQL.MyNoSQL` as a coroutine.

    >>> from MyNoSQL.aio import AsyncMyNoSQL
    >>> async with AsyncMyNoSQL(options=MyNoSQL.Options(read_timeout=1.0)) as db:   # doctest: +SKIP
    ...     await db.opendb("YourDatabaseName")
    ...     rec = await db.savedoc({"temp": 21.5})
    ...     rec = await db.readdoc(rec["id"])

    Where the files go, the rules of each call, its errors and its durability are those of the ``MyNoSQL``
    handle; this one runs the blocking work in ``workers`` threads of its own (see the module docstring: what
    runs where, what cancelling a call does, how live changes work). ``async with`` closes the database on exit.
    Use a handle from one event loop at a time. Don't change a dict you passed to ``savedoc`` or ``resolve``
    until the call returned: a worker thread reads it meanwhile.
    """

    def __init__(self, location: str | os.PathLike[str] | None = None, *, options: Options | None = None,
                 workers: int = WORKERS) -> None:
        if type(workers) is not int or workers < 1:
            raise ValueError("workers must be a positive int")
        self._handle = MyNoSQL(location, options=options)
        self.options = self._handle.options
        self._workers = workers
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None  # while a database is open
        self._lifecycle = asyncio.Lock()  # opendb and closedb, one at a time
        self._closer: tuple[threading.Thread, asyncio.Future[None]] | None = None  # a close under way
        self._feeds: set[_Wakeup] = set()  # the live changes iterators, ended by closedb

    # -- running blocking work ----------------------------------------------------------------------------------

    async def _call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``fn(*args, **kwargs)`` in a worker thread of this handle; cancelling the caller does not cancel it."""
        pool = self._pool
        if pool is None:
            raise DatabaseClosed(_NOT_OPEN)
        # shield: a cancelled caller leaves the call running (and its result or error is dropped, not logged)
        return await asyncio.shield(asyncio.wrap_future(pool.submit(fn, *args, **kwargs)))

    def _node(self) -> Node:
        """The open database (:class:`DatabaseClosed` if none, or if it is being closed). No I/O."""
        if self._pool is None:
            raise DatabaseClosed(_NOT_OPEN)
        return self._handle.db

    # -- lifecycle ----------------------------------------------------------------------------------------------

    async def setdblocation(self, path: str | os.PathLike[str]) -> bool:
        """Where the next :meth:`opendb` opens (or creates) its database folder. No I/O."""
        return self._handle.setdblocation(path)

    @property
    def location(self) -> Path:
        """The folder where ``opendb`` opens databases (as :attr:`MyNoSQL.MyNoSQL.location`)."""
        return self._handle.location

    async def opendb(self, name: str) -> Node:
        """Open (creating if needed) the database ``name`` in a worker thread, after closing the one this handle
        had open. Returns the :class:`~MyNoSQL.Node` (its methods block: see :meth:`run`).

        Another process may have it open too (see :meth:`MyNoSQL.MyNoSQL.opendb`); :class:`DatabaseLocked` if it
        does not share it."""
        async with self._lifecycle:
            await self._close()
            self._pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=self._workers, thread_name_prefix=f"MyNoSQL-aio-{str(name)[:40]}")
            try:
                return await self._call(self._handle.opendb, name)
            except Exception:  # not opened (a cancelled open goes on: closedb closes what it opened)
                await self._close()
                raise

    async def closedb(self) -> None:
        """Close the database as :meth:`MyNoSQL.MyNoSQL.closedb` does (final push, services stopped, records
        packed, lock released), after every call already handed to a worker has finished; live changes
        iterators end. Then the worker threads are joined. Does nothing if none is open."""
        async with self._lifecycle:
            await self._close()

    async def _close(self) -> None:
        pool, self._pool = self._pool, None  # from now on, new calls raise DatabaseClosed
        for feed in list(self._feeds):
            feed.close()
        if pool is not None:
            self._closer = self._start_closer(pool)
        if self._closer is None:
            return
        thread, done = self._closer
        try:
            await asyncio.shield(done)  # cancelled: the close goes on, and the next opendb/closedb waits for it
        finally:
            if done.done():
                self._closer = None
                thread.join()  # it has finished: settling `done` was its last step

    def _start_closer(self, pool: concurrent.futures.ThreadPoolExecutor) -> tuple[threading.Thread,
                                                                                 asyncio.Future[None]]:
        """A thread that waits for the calls handed to ``pool``, joins its workers, then closes the database."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def settle(exc: BaseException | None) -> None:
            if not done.done():
                if exc is None:
                    done.set_result(None)
                else:
                    done.set_exception(exc)

        def close() -> None:
            error: BaseException | None = None
            try:
                pool.shutdown(wait=True)  # a call already handed over finishes first (a save is written)
                self._handle.closedb()
            except BaseException as exc:
                error = exc
            with contextlib.suppress(RuntimeError):  # the loop was closed meanwhile: nobody waits
                loop.call_soon_threadsafe(settle, error)

        thread = threading.Thread(target=close, name="MyNoSQL-aio-close", daemon=True)
        thread.start()
        return thread, done

    async def __aenter__(self) -> AsyncMyNoSQL:
        """``async with AsyncMyNoSQL(...) as db:`` gives the handle (open a database in it with :meth:`opendb`)."""
        return self

    async def __aexit__(self, *exc: object) -> None:
        """The end of ``async with`` closes the database (:meth:`closedb`)."""
        await self.closedb()

    # -- the seed API -------------------------------------------------------------------------------------------

    async def setdbmode(self, mode: str) -> bool:
        """``"Peer"`` or ``"Mirror"`` (any case), remembered; starts or stops the services. Unknown: False."""
        return await self._call(self._node().setdbmode, mode)

    async def getdbmode(self) -> str:
        """``"Peer"`` or ``"Mirror"``. No I/O."""
        return self._node().getdbmode()

    async def addpeer(self, url: str) -> bool:
        """Remember a mirror (``http://host:8800``); the database keeps the list."""
        return await self._call(self._node().addpeer, url)

    async def setlisten(self, host: str = "127.0.0.1", port: int = 8800, *, advertise: str | None = None) -> None:
        """Where this database serves in Mirror mode (remembered). Call it before ``setdbmode("Mirror")``."""
        await self._call(self._node().setlisten, host, port, advertise=advertise)

    async def savedoc(self, doc: dict[str, Any]) -> dict[str, Any]:
        """Save a record; returns a new dict with its ``id`` and new ``rev`` (the rules and the durability of
        :meth:`MyNoSQL.MyNoSQL.savedoc`: when it returns, the record is in the write-ahead log). A save held back
        by the compactor waits in its worker thread, not on the loop."""
        return await self._call(self._node().savedoc, doc)

    async def readdoc(self, id: str, rev: str | None = None) -> dict[str, Any]:
        """The record's winning revision (or revision ``rev``), as a dict of your own. :class:`DocumentNotFound`
        if none; a Peer asks a mirror for a record it does not hold, at most ``Options.read_timeout`` seconds
        (then :class:`DocumentUnavailable`), in its worker thread."""
        return await self._call(self._node().readdoc, id, rev)

    async def deletedoc(self, id: str, rev: str) -> dict[str, Any]:
        """Delete revision ``rev`` of ``id``; returns ``{"id", "rev" (the tombstone's), "deleted": True}``."""
        return await self._call(self._node().deletedoc, id, rev)

    async def conflicts(self, id: str) -> list[str]:
        """Revisions of ``id`` that lost the winner rule and are not deleted (CouchDB's ``_conflicts``)."""
        return await self._call(self._node().conflicts, id)

    async def putattachment(self, id: str, name: str, data: bytes | BinaryIO,
                            content_type: str = "application/octet-stream", rev: str | None = None) -> str:
        """:meth:`MyNoSQL.MyNoSQL.putattachment` in a worker thread (a file object is read there, in chunks)."""
        return await self._call(self._node().putattachment, id, name, data, content_type, rev)

    async def getattachment(self, id: str, name: str, rev: str | None = None) -> bytes:
        """:meth:`MyNoSQL.MyNoSQL.getattachment` in a worker thread (a Peer may fetch the bytes from a mirror)."""
        return await self._call(self._node().getattachment, id, name, rev)

    async def attachments(self, id: str) -> dict[str, dict[str, Any]]:
        """:meth:`MyNoSQL.MyNoSQL.attachments` in a worker thread."""
        return await self._call(self._node().attachments, id)

    async def deleteattachment(self, id: str, name: str, rev: str) -> str:
        """:meth:`MyNoSQL.MyNoSQL.deleteattachment` in a worker thread."""
        return await self._call(self._node().deleteattachment, id, name, rev)

    async def resolve(self, id: str, merged: dict[str, Any], losers: list[str] | None = None) -> dict[str, Any]:
        """Save ``merged`` on the winning revision and delete the losing ones, atomically (as
        :meth:`MyNoSQL.MyNoSQL.resolve`). Returns the merged record with its new ``rev``."""
        return await self._call(self._node().resolve, id, merged, losers)

    async def purge(self, id: str, revs: list[str]) -> list[str]:
        """Remove leaf revisions of ``id`` for good (as :meth:`MyNoSQL.MyNoSQL.purge`). Returns those purged."""
        return await self._call(self._node().purge, id, revs)

    def changes(self, since: int = 0, *, live: bool = False) -> AsyncGenerator[Change, None]:
        """The changes feed: the newest revision of each record changed after ``since``, oldest first.

        ``live=True``: then keep yielding each new change, local or replicated, as it happens, until the loop
        that iterates breaks or the handle closes (then the iteration ends). Memory stays bounded whatever the
        pace of the writers: the iterator holds at most one batch, and reads the database's own feed again
        from where it stands when woken (a record changed many times meanwhile comes once, at its newest).
        Breaking out of ``async for`` stops it (at once with ``contextlib.aclosing``, else when collected).
        :class:`DatabaseClosed` now if no database is open."""
        return self._feed(self._node(), since, live)

    def watch(self) -> AsyncGenerator[Change, None]:
        """Every change from now on, local or replicated: ``changes(since=<the latest seq now>, live=True)``.

        The asyncio form of :meth:`MyNoSQL.MyNoSQL.watch`: ``async for change in db.watch(): ...`` instead of
        a callback run in the writing thread."""
        node = self._node()
        return self._feed(node, node.seq, True)

    async def _feed(self, node: Node, since: int, live: bool) -> AsyncGenerator[Change, None]:
        wake = _Wakeup(asyncio.get_running_loop()) if live else None
        unlisten: Callable[[], None] | None = None
        try:
            if wake is not None:
                self._feeds.add(wake)
                unlisten = node.on_change(wake.notify)  # before the first read: no change falls between the two
            while True:
                if wake is not None:
                    if wake.closed:
                        return
                    wake.event.clear()  # before reading: a change during the read wakes the next wait
                batch = await self._call(_read_changes, node, since, BATCH)
                for change in batch:
                    since = change.seq
                    yield change
                if len(batch) == BATCH:
                    continue
                if wake is None:
                    return
                await wake.event.wait()
        except DatabaseClosed:
            if wake is None:
                raise  # a feed of what is there, cut short
            # the handle closed under a live iterator: it ends
        finally:
            if unlisten is not None:
                unlisten()
            if wake is not None:
                self._feeds.discard(wake)

    async def indexadd(self, name: str) -> bool:
        """Index the field ``name`` of every record (persisted, kept current). False if it already was."""
        return await self._call(self._node().indexadd, name)

    async def indexdrop(self, name: str) -> bool:
        """Drop the index on field ``name``. False if there was none."""
        return await self._call(self._node().indexdrop, name)

    async def indexread(self, name: str) -> dict[str, Any]:
        """``{id: value of field name}`` for every record that has the field."""
        return await self._call(self._node().indexread, name)

    async def find(self, selector: dict[str, Any], fields: list[str] | None = None, sort: list[Any] | None = None,
                   limit: int | None = None, skip: int = 0, use_index: Any = None) -> list[dict[str, Any]]:
        """The records that match a Mango selector, as :meth:`MyNoSQL.find` (in a worker: a scan of a large
        database does not hold the event loop)."""
        return await self._call(self._node().find, selector, fields, sort, limit, skip, use_index)

    async def explain(self, selector: dict[str, Any], fields: list[str] | None = None, sort: list[Any] | None = None,
                      limit: int | None = None, skip: int = 0, use_index: Any = None) -> dict[str, Any]:
        """How :meth:`find` would answer, as :meth:`MyNoSQL.explain`."""
        return await self._call(self._node().explain, selector, fields, sort, limit, skip, use_index)

    async def createindex(self, fields: list[Any], name: str | None = None,
                          partial_filter_selector: dict[str, Any] | None = None, *,
                          wait: bool = True) -> dict[str, Any]:
        """Index ``fields`` for :meth:`find`, as :meth:`MyNoSQL.createindex` (``wait``: until it is built)."""
        return await self._call(self._node().createindex, fields, name, partial_filter_selector, wait=wait)

    async def dropindex(self, name: str) -> bool:
        """Drop the index ``name`` made by :meth:`createindex`. False if there was none."""
        return await self._call(self._node().dropindex, name)

    async def subscribe(self, selector: dict[str, Any]) -> str:
        """Selective sync, as :meth:`MyNoSQL.subscribe`: this Peer keeps every record that matches."""
        return await self._call(self._node().subscribe, selector)

    async def unsubscribe(self, selector_or_id: dict[str, Any] | str) -> bool:
        """End a subscription (by its selector or id). False if there was none."""
        return await self._call(self._node().unsubscribe, selector_or_id)

    async def status(self) -> dict[str, Any]:
        """Mode, record count, and per mirror: reachable, last success and error, pending pushes, lag."""
        return await self._call(self._node().status)

    async def pull(self, url: str, *, timeout: float = 60.0) -> dict[str, Any]:
        """Copy now every record of the database at ``url`` that this one lacks (one-shot replication)."""
        return await self._call(self._node().pull, url, timeout=timeout)

    async def push(self, url: str, *, timeout: float = 60.0) -> dict[str, Any]:
        """Copy now every record of this database that the one at ``url`` lacks (one-shot replication)."""
        return await self._call(self._node().push, url, timeout=timeout)

    async def verify(self) -> list[str]:
        """Check every checksum, record and the index; the problems found (empty: all is well)."""
        return await self._call(self._node().verify)

    async def compact(self) -> int:
        """Rewrite shards that hold dead revisions; returns how many records moved."""
        return await self._call(self._node().compact)

    # -- beyond the seed API ----------------------------------------------------------------------------------

    async def run(self, fn: Callable[[Node], T]) -> T:
        """``fn(db)`` in a worker thread, with ``db`` the open :class:`~MyNoSQL.Node`: for its blocking methods
        that have no coroutine here (``adduser``, ``flush``, ``peers``...). Returns what ``fn`` returns."""
        return await self._call(fn, self._node())

    @property
    def db(self) -> Node:
        """The open database (:class:`DatabaseClosed` if none). Its methods block: call them through
        :meth:`run`, never on the event loop."""
        return self._node()
