"""The ``MyNoSQL`` handle: the calls existing users know, and a Pythonic surface around them."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from .database import Change, default_location
from .errors import DatabaseClosed
from .live import LiveQuery, QueryChange
from .node import Node
from .options import Options
from .shared import open_node


class MyNoSQL:
    """A handle on one database at a time.

    >>> import MyNoSQL
    >>> db = MyNoSQL.MyNoSQL()           # doctest: +SKIP
    >>> db.opendb("YourDatabaseName")   # doctest: +SKIP
    >>> rec = db.savedoc({"temp": 21.5}) # doctest: +SKIP   -> {"id": "...", "rev": "1-...", "temp": 21.5}

    Several databases can be open in one process: use one handle per database (or keep the ``Database``
    objects that :meth:`opendb` returns). A handle is a context manager that closes its database on exit.

    Where the files go: ``location`` (constructor), else :meth:`setdblocation`, else ``$MYNOSQL_HOME``, else the
    per-user data directory (``~/.local/share/mynosql`` on Linux). Each database is a folder there.
    """

    def __init__(self, location: str | os.PathLike[str] | None = None, *, options: Options | None = None) -> None:
        self._location = Path(location).expanduser() if location is not None else None
        self.options = options or Options()
        self._db: Node | None = None

    # -- the seed API -----------------------------------------------------------------------------------------

    def setdblocation(self, path: str | os.PathLike[str]) -> bool:
        """Where the next :meth:`opendb` opens (or creates) its database folder."""
        self._location = Path(path).expanduser()
        return True

    @property
    def location(self) -> Path:
        """The folder where ``opendb`` opens databases (see the class docstring for the order of choice)."""
        return self._location if self._location is not None else default_location()

    def opendb(self, name: str) -> Node:
        """Open (creating if needed) the database ``name``; closes the one this handle had open, if any.

        Another process (or handle) may have it open: the first one owns it and this one sends it its calls (see
        ``Options.exclusive``). Raises :class:`DatabaseLocked` if the one that has it open does not share it.
        """
        self.closedb()
        self._db = open_node(self.location, name, self.options)
        return self._db

    def closedb(self) -> None:
        """Push what is not pushed yet (a Peer; at most ``Options.final_push`` seconds, while the database is still
        open), stop background work, pack pending records into shards and release the database. Records a
        mirror could not take in time stay in the database and are pushed at the next ``opendb``. Does nothing
        if none is open."""
        db, self._db = self._db, None
        if db is not None:
            db.close()

    @property
    def db(self) -> Node:
        """The open database (raises :class:`DatabaseClosed` if none)."""
        db = self._db
        if db is None or db.closed:
            raise DatabaseClosed("no database is open: call opendb(name) first")
        return db

    def setdbmode(self, mode: str) -> bool:
        """``"Peer"`` or ``"Mirror"`` (any case), remembered by the database. Unknown mode: returns False."""
        return self.db.setdbmode(mode)

    def getdbmode(self) -> str:
        """``"Peer"`` or ``"Mirror"``."""
        return self.db.getdbmode()

    def addpeer(self, url: str) -> bool:
        """Remember a mirror (``http://host:8800``); the database keeps the list."""
        return self.db.addpeer(url)

    def savedoc(self, doc: dict[str, Any]) -> dict[str, Any]:
        """Save a record; returns a new dict with its ``id`` (generated if absent) and new ``rev``.

        - A record without ``id`` gets a random one (32 hex digits); any other string id is kept (ids starting
          with ``_`` are reserved).
        - To update, pass the ``rev`` you read: if the stored record has another revision (it changed since),
          :class:`ConflictError` is raised and nothing is written. Saving unchanged content keeps the ``rev``.
        - Durability: when ``savedoc`` returns, the record is in the write-ahead log in the operating system's
          hands, so it survives the crash or kill of this process. With ``Options(durability="power")`` it is
          also ``fdatasync``-ed before ``savedoc`` returns, so it survives power loss; concurrent savers share
          syncs (group commit). Choose "power" for ledgers; the default suits loggers and games.
        """
        db = self._db
        if db is None:
            raise DatabaseClosed("no database is open: call opendb(name) first")
        return db.savedoc(doc)

    def readdoc(self, id: str, rev: str | None = None) -> dict[str, Any]:
        """The record's current (winning) revision, as a dict of your own. :class:`DocumentNotFound` if none.

        ``rev``: that revision instead (any stored one: the winner or a conflicting one, see :meth:`conflicts`),
        as CouchDB's ``?rev=``. A Peer asks its mirror for a record it does not hold; if no mirror can be asked
        (down, slow), :class:`DocumentUnavailable` (a ``DocumentNotFound``) says why."""
        db = self._db  # not self.db: this is the hot path, and Database.readdoc checks for closed itself
        if db is None:
            raise DatabaseClosed("no database is open: call opendb(name) first")
        return db.readdoc(id) if rev is None else db.readdoc(id, rev)

    def deletedoc(self, id: str, rev: str) -> dict[str, Any]:
        """Delete revision ``rev`` of ``id``; returns ``{"id", "rev" (the tombstone's), "deleted": True}``."""
        return self.db.deletedoc(id, rev)

    def conflicts(self, id: str) -> list[str]:
        """Revisions of ``id`` that lost the winner rule and are not deleted (CouchDB's ``_conflicts``)."""
        return self.db.conflicts(id)

    def putattachment(self, id: str, name: str, data: bytes | BinaryIO, content_type: str = "application/octet-stream",
                      rev: str | None = None) -> str:
        """Add or replace the attachment ``name`` (``photos/a.jpg``...) of record ``id``; returns its new ``rev``.

        ``data``: bytes, or a binary file object (``open(path, "rb")``), read in chunks: a big file never sits whole
        in RAM. ``rev``: the record's current revision (:class:`ConflictError` if it changed); without it, a record
        that does not exist is created (empty body). The same bytes in many records are stored once. Attachments
        replicate with the record (to mirrors, CouchDB, PouchDB); ``savedoc`` keeps them, ``deletedoc`` drops them;
        ``readdoc`` does not show them (see :meth:`attachments`)."""
        return self.db.putattachment(id, name, data, content_type, rev)

    def getattachment(self, id: str, name: str, rev: str | None = None) -> bytes:
        """The bytes of attachment ``name`` of record ``id`` (:class:`AttachmentNotFound` if it has none). A Peer
        that holds only its stub asks its mirror for the bytes (:class:`DocumentUnavailable` if none answers)."""
        return self.db.getattachment(id, name, rev)

    def openattachment(self, id: str, name: str, rev: str | None = None) -> BinaryIO:
        """The bytes of attachment ``name`` as a binary file object (``read``, ``seek``; use ``with``), read a chunk
        at a time; ``.length``, ``.content_type`` and ``.digest`` describe them."""
        return self.db.openattachment(id, name, rev)  # type: ignore[return-value]  # a RawIOBase: a binary file

    def attachments(self, id: str) -> dict[str, dict[str, Any]]:
        """``{name: {"content_type", "length", "digest", "revpos"}}`` of the record's attachments (``{}``: none).
        ``digest`` is CouchDB's (``"md5-<base64>"``); ``revpos`` the generation of the revision that added them."""
        return self.db.attachments(id)

    def deleteattachment(self, id: str, name: str, rev: str) -> str:
        """Remove the attachment ``name`` of record ``id`` (current revision ``rev``); returns the new ``rev``."""
        return self.db.deleteattachment(id, name, rev)

    def resolve(self, id: str, merged: dict[str, Any], losers: list[str] | None = None) -> dict[str, Any]:
        """Resolve a conflict in one step: save ``merged`` on the winning revision and delete the losing ones
        (``losers``, default: all of :meth:`conflicts`). Atomic; :class:`ConflictError` if the record changed
        since you read it. Returns the merged record with its new ``rev``. See docs/tutorial.md."""
        return self.db.resolve(id, merged, losers)

    def purge(self, id: str, revs: list[str]) -> list[str]:
        """Remove leaf revisions of ``id`` for good, as CouchDB's ``_purge`` (no tombstone; nothing replicates).
        Returns the revisions purged (those of ``revs`` that are leaves now). Purging every leaf removes the record
        as if it never existed; a replica that still has it sends it back unless purged there too. See
        :meth:`MyNoSQL.database.Database.purge`."""
        return self.db.purge(id, revs)

    def changes(self, since: int = 0) -> Iterator[Change]:
        """The local changes feed: the newest revision of each record changed after ``since``, oldest first."""
        return self.db.changes(since)

    def indexadd(self, name: str) -> bool:
        """Index the field ``name`` of every record (persisted, kept current). False if it already was."""
        return self.db.indexadd(name)

    def indexdrop(self, name: str) -> bool:
        """Drop the index on field ``name``. False if there was none."""
        return self.db.indexdrop(name)

    def indexread(self, name: str) -> dict[str, Any]:
        """``{id: value of field name}`` for every record that has the field."""
        return self.db.indexread(name)

    def find(self, selector: dict[str, Any], fields: list[str] | None = None, sort: list[Any] | None = None,
             limit: int | None = None, skip: int = 0, use_index: Any = None) -> list[dict[str, Any]]:
        """The records that match a Mango selector (CouchDB's query language), as dicts of your own.

        ``{"sensor": "s-7", "ts": {"$gte": t0}}``: every operator of CouchDB's ``_find`` (``$eq $ne $gt $gte $lt
        $lte $in $nin $exists $type $size $mod $regex $all $elemMatch $allMatch $keyMapMatch $and $or $nor $not``),
        dotted paths into nested fields, ``id`` for the record id. ``fields``: only these fields of each record;
        ``sort``: ``["ts"]`` or ``[{"ts": "desc"}]`` (one direction for all fields); ``limit``/``skip``;
        ``use_index``: an index name (or ``[ddoc, name]``). An index from :meth:`createindex` answers when it can
        (:meth:`explain` says which); otherwise every record is read, or with ``Options(strict_queries=True)``
        :class:`NoUsableIndex` is raised. See docs/queries.md."""
        return self.db.find(selector, fields, sort, limit, skip, use_index)

    def explain(self, selector: dict[str, Any], fields: list[str] | None = None, sort: list[Any] | None = None,
                limit: int | None = None, skip: int = 0, use_index: Any = None) -> dict[str, Any]:
        """How :meth:`find` would answer: the index it would use (CouchDB's ``_explain`` shape) and, under
        ``"mynosql"``, the strategy (``"index"``, ``"union"`` for an ``$or``, ``"id"``, ``"scan"``), how many
        records it expects to examine, and whether it sorts in memory."""
        return self.db.explain(selector, fields, sort, limit, skip, use_index)

    def createindex(self, fields: list[Any], name: str | None = None,
                    partial_filter_selector: dict[str, Any] | None = None, *, wait: bool = True,
                    progress: Callable[[int, int | None], None] | None = None) -> dict[str, Any]:
        """Index ``fields`` (``["sensor", "ts"]``, or ``[{"ts": "desc"}]``) for :meth:`find`: persisted, kept
        current on save, delete and replication. ``partial_filter_selector``: only records that match it are
        indexed (then only ``use_index`` picks it, as in CouchDB). An existing database is indexed in a background
        thread: ``wait=False`` returns at once (``progress(done, total)`` reports; :meth:`indexes` shows it).
        Returns ``{"result": "created" | "exists", "id", "name"}``."""
        return self.db.createindex(fields, name, partial_filter_selector, wait=wait, progress=progress)

    def dropindex(self, name: str) -> bool:
        """Drop the index ``name`` made by :meth:`createindex`. False if there was none."""
        return self.db.dropindex(name)

    def indexes(self) -> list[str]:
        """The names of every index: first those of :meth:`indexadd` (as before), then those of
        :meth:`createindex`; each name also carries ``kind``, ``fields``, ``partial_filter_selector`` and
        ``building`` (see :class:`MyNoSQL.query.IndexInfo`)."""
        return list(self.db.indexes())

    def observe(self, selector: dict[str, Any], callback: Callable[[QueryChange], None] | None = None, *,
                sort: list[Any] | None = None, limit: int | None = None, skip: int = 0,
                fields: list[str] | None = None) -> LiveQuery:
        """A live query: ``callback(change)`` first with the whole result (``change.initial``), then after every
        write, local or replicated, that changes it, with the records ``added`` to it, ``changed`` in it and
        ``removed`` from it (a :class:`~MyNoSQL.live.QueryChange`). It runs in the writing thread, right after
        the write (with other processes open, maybe a few ms later from a library thread: see ``watch``): keep it
        short. ``sort``/``limit``: the first ``limit`` records in that order are the result.
        Without a callback, iterate over the returned :class:`~MyNoSQL.live.LiveQuery` (or call its ``get``).
        ``.results`` is the current result; ``.stop()`` (or ``with``) ends it."""
        return self.db.observe(selector, callback, sort=sort, limit=limit, skip=skip, fields=fields)

    def subscribe(self, selector: dict[str, Any]) -> str:
        """Selective sync: this Peer keeps every record that matches ``selector`` (in addition to those it read or
        wrote): the mirror sends only those (its ``_changes`` filtered by the selector), and they are kept
        current as they change. Remembered; returns the subscription's id (the same for the same selector)."""
        return self.db.subscribe(selector)

    def unsubscribe(self, selector_or_id: dict[str, Any] | str) -> bool:
        """End a subscription (its id or its selector). Records already here stay. False if there was none."""
        return self.db.unsubscribe(selector_or_id)

    def setlisten(self, host: str = "127.0.0.1", port: int = 8800, *, advertise: str | None = None) -> None:
        """Where this database serves in Mirror mode (remembered). Call it before ``setdbmode("Mirror")``."""
        self.db.setlisten(host, port, advertise=advertise)

    def status(self) -> dict[str, Any]:
        """Mode, record count, and per mirror: reachable, last success and error, pending pushes, lag."""
        return self.db.status()

    def watch(self, callback: Callable[[Change], None]) -> Callable[[], None]:
        """Call ``callback(change)`` after every change, local or replicated, in change order; returns a function
        to stop. It runs in the thread that made the change (a change read in from another process, or made here
        while such changes are still being read in: a thread of the library, a few ms later): keep it short."""
        return self.db.watch(callback)

    def pull(self, url: str, *, timeout: float = 60.0) -> dict[str, Any]:
        """Copy now every record of the database at ``url`` that this one lacks (one-shot replication)."""
        return self.db.pull(url, timeout=timeout)

    def push(self, url: str, *, timeout: float = 60.0) -> dict[str, Any]:
        """Copy now every record of this database that the one at ``url`` lacks (one-shot replication)."""
        return self.db.push(url, timeout=timeout)

    def verify(self) -> list[str]:
        """Check every checksum, record and the index; the problems found (empty: all is well)."""
        return self.db.verify()

    def compact(self) -> int:
        """Rewrite shards that hold dead revisions; returns how many records moved."""
        return self.db.compact()

    # -- Pythonic surface -------------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """Every record that is not deleted, as dicts of your own, in change order."""
        return iter(self.db)

    def __len__(self) -> int:
        """How many records are not deleted."""
        return len(self.db)

    def __contains__(self, id: object) -> bool:
        """Whether a record with this id exists and is not deleted."""
        return id in self.db

    def __enter__(self) -> MyNoSQL:
        return self

    def __exit__(self, *exc: object) -> None:
        self.closedb()
