"""One open database: its folder and lock, its remembered configuration, the record operations, the changes feed
and ``watch``, secondary indexes, and the primitives CouchDB's replication needs (``revs_diff``, the merge of
replicated revisions, ``_local`` checkpoint documents).

It knows nothing of HTTP, replication or serving: those are composed around it (:mod:`MyNoSQL.node`), and reach
it only through the methods here. Two hooks let them in without this module knowing them:
:meth:`Database.set_read_through` (a Peer asks a mirror for a record it does not hold) and
:meth:`Database._config_changed` (a subclass starts or stops what the configuration asks for).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import logging
import os
import re
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any, BinaryIO, NamedTuple

import orjson

from .config import MODES, DatabaseConfig, load_config, save_config
from .credentials import Users
from .errors import (
    AttachmentNotFound,
    ConflictError,
    DatabaseClosed,
    DatabaseLocked,
    DocumentNotFound,
    DocumentUnavailable,
    IndexNotFound,
    InvalidDocument,
    InvalidQuery,
    LimitExceeded,
    StorageError,
)
from .live import LiveQuery, QueryChange
from .net.urls import normalize_peer_url, redact_url, with_credentials_of
from .options import Options
from .query import IndexInfo, QueryEngine, field_name, index_spec, make_def, parse_index_fields, python_names
from .records import attachments as att
from .records import revtree
from .records.codec import copy_plan, decode_value, encode_body, loads_body
from .records.ids import new_id, validate_id
from .records.mango import compile_selector
from .records.revtree import DocState
from .storage.blobs import CHUNK, BlobInfo, BlobReader, BlobWriter
from .storage.fileutil import sweep_temp_files
from .storage.store import FlushStats, Listener, Store

log = logging.getLogger("MyNoSQL")

DEFAULT_PORT = 8800
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.$()+%-]{0,199}$")
_TOMBSTONE_BODY = b"{}"
DEFAULT_PURGED_INFOS_LIMIT = 1000  # CouchDB's default _purged_infos_limit
# readdoc keeps the records it reads more than once, of up to this many JSON bytes, decoded while their state is
# in RAM (about 3x the RAM of the JSON; the record cache's count bounds it): later reads copy that memo.
_DECODED_MAX = 1024

ReadThrough = Callable[[str], "DocState | None"]
# (id, leaf rev, attachment name, its metadata) -> the blob that now holds its bytes; raises DocumentUnavailable
AttachmentFetch = Callable[[str, str, str, dict[str, Any]], str]

__all__ = ["Change", "Database", "default_location", "new_id", "validate_db_name", "validate_id"]


# A batch of at least this many replicated revisions is a bulk load (a replication catching up): the compactor
# packs it with the fast codec and re-packs it once the saves stop (Store.put_many(fast=True)).
BULK_LOAD = 100


def _check_leaves(prev: DocState | None, id: str, path: list[str], max_leaves: int) -> None:
    """A replicated path grafted on anything but a leaf (its newest revision the tree knows) is one more leaf:
    bounded, or a replicator could make a record of so many conflicting leaves that no batch could carry it
    (Limits.max_leaves). Checked first: refusing costs no copy of the tree. (Only leaves keep a body.)"""
    if prev is not None and len(prev.bodies) >= max_leaves and path and path[0] not in prev.tree \
            and next((r for r in path[1:] if r in prev.tree), None) not in prev.bodies:
        raise LimitExceeded(f"record {id!r} has {len(prev.bodies)} leaf revisions (conflicting branches), "
                            "its limit", limit="max_leaves")


def _without(atts: dict[str, att.Atts] | None, revs: Any) -> dict[str, att.Atts] | None:
    """A record's attachments by leaf, without those of ``revs`` (leaves that stop being leaves)."""
    if atts is None or not any(r in atts for r in revs):
        return atts
    return {r: a for r, a in atts.items() if r not in revs} or None


def _resolve(id: str, given: dict[str, att.AttNew], leaves: dict[str, att.Atts] | None, revpos: int, *,
             lazy: bool, by_name: att.Atts | None,
             by_digest: Callable[[att.Stub], att.Meta | None] | None = None) -> att.Atts:
    """The metadata of a new revision's attachments. Bytes are ``Stored`` by now; a stub takes the metadata of
    the attachment it names: in ``by_name`` (the revision edited: a normal write), else among the record's
    ``leaves`` by digest (replication), else ``by_digest`` (bytes of that digest this database still holds: a
    revision that is no leaf here any more had them)."""
    out: att.Atts = {}
    for name in sorted(given):
        a = given[name]
        if isinstance(a, att.Stored):
            out[name] = {"content_type": a.content_type, "digest": a.digest, "length": a.length,
                         "revpos": a.revpos or revpos, "blob": a.key}
            continue
        assert isinstance(a, att.Stub)
        if by_name is not None:
            m = by_name.get(name)
            if m is None or (a.digest is not None and a.digest != m["digest"]):
                raise att.MissingStub(f"Invalid attachment stub in {id} for {name}")
            out[name] = m
            continue
        m = att.find_blob(leaves, a.digest, name) if a.digest is not None else None
        if m is None and a.digest is not None and leaves:  # the same stub, bytes not here (a Peer's record)
            m = next((x for la in leaves.values() for n, x in la.items() if n == name and x["digest"] == a.digest),
                     None)
        if m is not None:
            meta = dict(m)
            meta["revpos"] = a.revpos or m["revpos"]
            if a.content_type is not None:
                meta["content_type"] = a.content_type
            out[name] = meta
        elif lazy and a.digest is not None and a.length is not None:
            out[name] = {"content_type": a.content_type or "application/octet-stream", "digest": a.digest,
                         "length": a.length, "revpos": a.revpos or revpos}
        elif by_digest is not None and (found := by_digest(a)) is not None:
            out[name] = {**found, "revpos": a.revpos or revpos}
        else:
            raise att.MissingStub(f"Invalid attachment stub in {id} for {name}: its bytes are not here")
    return out


class Change(NamedTuple):
    """One entry of the changes feed: the newest revision of a record changed after ``since``."""

    seq: int
    id: str
    rev: str
    deleted: bool


def validate_db_name(name: Any) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name) or name.endswith("."):
        raise InvalidDocument(
            f"database name {name!r} is not valid: use 1-200 letters, digits and '_-.$()+%', "
            "starting with a letter or digit"
        )
    return name


def default_location() -> Path:
    """The per-user data directory: ``$MYNOSQL_HOME``, else the platform's user data directory + MyNoSQL."""
    env = os.environ.get("MYNOSQL_HOME")
    if env:
        return Path(env).expanduser()
    home = Path.home()
    if sys.platform == "win32":  # pragma: no cover
        return Path(os.environ.get("LOCALAPPDATA", home / "AppData" / "Local")) / "MyNoSQL"
    if sys.platform == "darwin":  # pragma: no cover
        return home / "Library" / "Application Support" / "MyNoSQL"
    return Path(os.environ.get("XDG_DATA_HOME") or home / ".local" / "share") / "mynosql"


def _subscription(selector: dict[str, Any]) -> tuple[str, Any]:
    """A subscription's id and its selector, normalised, in stored JSON form (what a mirror matches)."""
    sel = compile_selector(python_names(selector), python=True).json()
    return hashlib.sha1(orjson.dumps(sel, option=orjson.OPT_SORT_KEYS), usedforsecurity=False).hexdigest()[:16], sel


class FileLock:
    """An exclusive OS lock on ``LOCK``: released by the OS if the process dies."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._f: IO[bytes] | None = None

    def acquire(self) -> None:
        if not self.try_acquire():
            raise DatabaseLocked(
                f"database {self.path.parent} is open in another process or handle; close it there first"
            )

    def try_acquire(self) -> bool:
        """Take the lock if no one holds it. False if someone does; :class:`StorageError` if this file system
        has no working locks (some network file systems), as opening must fail rather than share unsafely."""
        if self._f is not None:
            return True
        try:
            f = open(self.path, "a+b")  # noqa: SIM115 - held open for the database's lifetime
        except OSError as exc:
            raise StorageError(exc.errno, f"cannot open the lock file {self.path}: {exc.strerror}") from exc
        try:
            if sys.platform == "win32":  # pragma: no cover
                import msvcrt

                msvcrt.locking(f.fileno(), msvcrt.LK_NBLCK, 1)
            else:
                import fcntl

                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            f.close()
            if sys.platform != "win32" and exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise StorageError(exc.errno, f"file locks do not work where database {self.path.parent} is "
                                   f"({exc.strerror}): MyNoSQL needs them to open a database safely") from exc
            return False
        self._f = f
        return True

    def release(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


def prepare_folder(path: Path) -> None:
    """Create a database's folder (and the data directory above it, owner only) if need be."""
    try:
        if not path.parent.exists():
            path.parent.mkdir(parents=True, mode=0o700)  # the data directory: owner only
        if not path.exists():
            path.mkdir(mode=0o700)
    except FileExistsError:  # made by another process meanwhile
        pass
    except OSError as exc:
        raise StorageError(exc.errno, f"cannot create database directory {path}: {exc.strerror}") from exc



def prepare_save(doc: Any, max_doc_bytes: int) -> tuple[str, str | None, bool, bytes, dict[str, Any] | None]:
    """The checks and encoding of a ``savedoc`` input, the same in the owner and in a process that shares its
    database: ``(id, rev, fresh, blob, decoded)``. ``fresh``: the id was just made at random (no current state
    can exist); ``blob``, ``decoded``: what :func:`encode_body` returns for the body (``id`` and ``rev`` taken
    out). Raises :class:`InvalidDocument`."""
    if not isinstance(doc, dict):
        raise InvalidDocument(f"a record must be a dict, not {type(doc).__name__}")
    id = doc.get("id")
    fresh = id is None  # a random 128-bit id is new: no need to look it up
    id = new_id() if fresh else validate_id(id)
    rev = doc.get("rev")
    if rev is not None and type(rev) is not str:
        raise InvalidDocument(f"rev must be a string, not {type(rev).__name__}")
    body = dict(doc)
    body.pop("id", None)
    body.pop("rev", None)
    blob, decoded = encode_body(body)
    if len(blob) > max_doc_bytes:
        raise InvalidDocument(f"record {id!r} is {len(blob)} bytes encoded, over the limit of {max_doc_bytes}")
    return id, rev, fresh, blob, decoded

def save_mutation(prev: DocState | None, id: str, rev: str | None, blob: bytes, limit: int,
                  child: Callable[[DocState, str, bytes, att.Atts, int], DocState]) -> DocState | None:
    """The new state a ``savedoc`` of ``blob`` (with ``rev``) makes of record ``id`` in state ``prev``, or None
    (same content: nothing to write). Raises :class:`ConflictError`. ``child``: the new state when ``prev`` has
    attachments (the revision edited keeps its attachments, and other leaves theirs). The same in the owner and
    in a process that appends to the shared log itself."""
    if prev is None:
        if rev is not None:
            raise ConflictError(f"record {id!r} does not exist, so {rev!r} is not its current revision", id=id)
        new = revtree.new_rev(None, False, blob)
        return DocState(id, 0, {new: (None, False)}, {new: blob})
    tree = prev.tree
    win = prev.winner
    if rev is None:
        if not tree[win][1]:
            raise ConflictError(f"record {id!r} already exists (rev {win}); pass its current rev to update it",
                                id=id, current_rev=win)
        parent = win  # re-creating a deleted record continues its history
    elif rev in prev.bodies and not tree[rev][1]:
        parent = rev
        if prev.bodies[rev] == blob:
            return None  # same content: no new revision
    else:
        raise ConflictError(f"record {id!r} has revision {win}, not {rev}: it was changed since you read it",
                            id=id, current_rev=win)
    if prev.atts is not None:
        return child(prev, parent, blob, prev.leaf_atts(parent), limit)
    new = revtree.new_rev(parent, False, blob)
    tree2 = dict(tree)
    tree2[new] = (parent, False)
    bodies = dict(prev.bodies)
    del bodies[parent]
    bodies[new] = blob
    return DocState(id, 0, revtree.stem(tree2, limit), bodies)


class Database:
    """An open database. Thread-safe. Get one from ``MyNoSQL.opendb``."""

    def __init__(self, location: Path, name: str, options: Options, *, lock: FileLock | None = None) -> None:
        """``lock``: the lock on the database's ``LOCK`` file, already held (see :func:`prepare_folder`)."""
        self.name = validate_db_name(name)
        self.options = options
        self.path = Path(location) / name
        self._closed = True
        self._read_through: ReadThrough | None = None
        self._att_fetch: AttachmentFetch | None = None
        if lock is None:
            prepare_folder(self.path)
            lock = FileLock(self.path / "LOCK")
            lock.acquire()
        self._lock = lock
        try:
            sweep_temp_files(self.path)
            self._config_lock = threading.Lock()
            self._config = load_config(self.path)
            self.users = Users(self.path / "users.json")
            self._store = Store(self.path, options)
            self._store.set_secondary_fields(self._config.indexes)
            self._queries = QueryEngine(self._store, options, name)
            try:
                self._queries.load(self._config.query_indexes)
            except BaseException:
                self._queries.close()
                self._store.close()
                raise
        except BaseException:
            self._lock.release()
            raise
        self._closed = False

    # -- lifecycle --------------------------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once ``close`` was called."""
        return self._closed

    def _check(self) -> Store:
        if self._closed:
            raise DatabaseClosed(f"database {self.name!r} is closed")
        store = self._store
        if store._shared is not None:  # other processes' appends to a shared log: as current as this one's
            store.catch_up()
        return store

    def _check_for_put(self) -> Store:
        """``_check`` for a save: ``Store.put`` reads the other processes' appends itself."""
        if self._closed:
            raise DatabaseClosed(f"database {self.name!r} is closed")
        return self._store

    def close(self) -> None:
        """Pack pending records into shards, join the compactor and release the lock. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._read_through = None
        self._att_fetch = None
        try:
            self._queries.close()
            self._store.close()
        finally:
            self._lock.release()

    def __enter__(self) -> Database:
        """``with`` closes the database at the end."""
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- configuration (remembered in config.json) ------------------------------------------------------------

    @property
    def config(self) -> DatabaseConfig:
        """The remembered configuration (a frozen value: a change makes a new one)."""
        return self._config

    @property
    def uuid(self) -> str:
        """The database's own id, made when it was created: stable whatever path it is opened by."""
        return self._config.uuid

    def _update_config(self, **changes: Any) -> DatabaseConfig:
        """Save a changed configuration, then let :meth:`_config_changed` act on it. If that fails, the old
        configuration is saved back (the next ``opendb`` must not fail the same way) and the error raised."""
        with self._config_lock:
            before = self._config
            after = dataclasses.replace(before, **changes)
            if after == before:
                return before
            save_config(self.path, after)
            self._config = after
        try:
            self._config_changed(before, after)
        except BaseException:
            with self._config_lock:
                save_config(self.path, before)
                self._config = before
            with contextlib.suppress(Exception):
                self._config_changed(after, before)
            raise
        return after

    def _config_changed(self, before: DatabaseConfig, after: DatabaseConfig) -> None:
        """Called after the configuration changed (mode, mirrors, where to serve). The local database needs
        nothing; :class:`MyNoSQL.node.Node` starts and stops its background services here."""

    def setdbmode(self, mode: Any) -> bool:
        """``"Peer"`` or ``"Mirror"`` (any case), remembered. Unknown mode: False."""
        self._check()
        norm = MODES.get(mode.lower()) if isinstance(mode, str) else None
        if norm is None:
            return False
        self._update_config(mode=norm)
        return True

    def getdbmode(self) -> str:
        """``"Peer"`` or ``"Mirror"``."""
        self._check()
        return self._config.mode

    def setlisten(self, host: str = "127.0.0.1", port: int = DEFAULT_PORT, *, advertise: str | None = None,
                  certfile: str | None = None, keyfile: str | None = None) -> None:
        """Where this database serves as a mirror (remembered): host, port (0: any free port), the URL other
        nodes should use for it (default ``http(s)://host:port``), and a TLS certificate and key (PEM files;
        then it serves ``https://``). Serving beyond loopback needs users (``adduser``)."""
        self._check()
        if not isinstance(host, str) or not host or type(port) is not int or not 0 <= port < 65536:
            raise InvalidDocument("setlisten needs a host name and a port number (0-65535)")
        if (certfile is None) != (keyfile is None):
            raise InvalidDocument("TLS needs both certfile and keyfile")
        self._update_config(host=host, port=port, advertise=advertise and normalize_peer_url(advertise),
                            certfile=certfile and str(Path(certfile).resolve()),
                            keyfile=keyfile and str(Path(keyfile).resolve()))

    def addpeer(self, url: str) -> bool:
        """Remember a mirror URL (normalised; duplicates are ignored). Returns True (also when the mirror cannot
        be reached now: it is remembered, and replication keeps trying in the background)."""
        self._check()
        norm = normalize_peer_url(url)
        with self._config_lock:
            peers = self._config.peers
        if norm not in peers:
            self._update_config(peers=(*peers, norm))
        return True

    @property
    def revs_limit(self) -> int:
        """How many ancestors of each leaf revision are remembered: CouchDB's ``_revs_limit`` of this database
        (``set_revs_limit``, remembered), else ``Options.revs_limit``."""
        return self._config.revs_limit or self.options.revs_limit

    def set_revs_limit(self, limit: int) -> None:
        """Remember a ``_revs_limit`` for this database (applies to the revisions written from now on)."""
        self._check()
        if type(limit) is not int or not 1 <= limit <= 1_000_000:
            raise InvalidDocument("revs_limit must be an integer from 1 to 1,000,000")
        self._update_config(revs_limit=limit)

    @property
    def purged_infos_limit(self) -> int:
        """How many of the newest purges the database remembers (:meth:`purged_infos`): CouchDB's
        ``_purged_infos_limit`` (``set_purged_infos_limit``, remembered; 1000 by default)."""
        return self._config.purged_infos_limit or DEFAULT_PURGED_INFOS_LIMIT

    def set_purged_infos_limit(self, limit: int) -> None:
        """Remember a ``_purged_infos_limit`` for this database; older purges are forgotten now (the purge
        sequence stays)."""
        store = self._check()
        if type(limit) is not int or not 1 <= limit <= 1_000_000_000:
            raise InvalidDocument("purged_infos_limit must be a positive integer")
        self._update_config(purged_infos_limit=limit)
        store.index.add_purges([], limit)

    @property
    def security(self) -> dict[str, Any]:
        """CouchDB's ``_security`` object of this database (``admins`` and ``members``, each ``names`` and
        ``roles``); empty lists by default. The database keeps it; a mirror enforces it."""
        sec = self._config.security or {}
        return {part: {"names": list(sec.get(part, {}).get("names", [])),
                       "roles": list(sec.get(part, {}).get("roles", []))} for part in ("admins", "members")}

    def set_security(self, security: dict[str, Any]) -> None:
        """Remember a ``_security`` object: ``{"admins": {"names": [...], "roles": [...]}, "members": {...}}``."""
        self._check()
        clean: dict[str, Any] = {}
        if not isinstance(security, dict):
            raise InvalidDocument("_security must be a JSON object")
        for part in ("admins", "members"):
            value = security.get(part, {})
            if not isinstance(value, dict):
                raise InvalidDocument(f"_security {part} must be an object with names and roles")
            entry = {}
            for key in ("names", "roles"):
                items = value.get(key, [])
                if not isinstance(items, list) or not all(isinstance(x, str) and x for x in items) \
                        or len(items) > 10_000:
                    raise InvalidDocument(f"_security {part}.{key} must be a list of names")
                entry[key] = list(dict.fromkeys(items))
            clean[part] = entry
        self._update_config(security=clean)

    def peers(self) -> list[str]:
        """The mirrors this database knows (without credentials)."""
        self._check()
        return [redact_url(u) for u in self._config.peers]

    def learn_mirrors(self, urls: list[str], *, via: str, own: set[str | None] | None = None) -> None:
        """Remember mirrors that a known mirror (``via``) lists; keeps the credentials of ``via`` for them.
        ``own``: this node's own addresses (never learned).

        Mirrors learned through an ``https://`` mirror must be ``https://`` too: a plain-HTTP one is skipped
        (credentials and records would travel in clear text because of what a mirror said)."""
        https = via.startswith("https:")
        added = []
        for url in urls:
            try:
                norm = normalize_peer_url(url)
            except InvalidDocument:
                continue
            if https and not norm.startswith("https:"):
                log.warning("mirror %s lists %s, a plain-HTTP address: not used (it would downgrade TLS)",
                            redact_url(via), redact_url(norm))
                continue
            added.append(with_credentials_of(norm, via))
        own = (own or set()) | {self._config.advertise}
        with self._config_lock:
            peers = self._config.peers
        known = {redact_url(u) for u in peers}
        new = [u for u in dict.fromkeys(added) if redact_url(u) not in known and redact_url(u) not in own]
        if new:
            self._update_config(peers=(*peers, *new))

    def adduser(self, name: str, password: str, role: str = "replicator") -> None:
        """Let ``name`` reach this database when it serves as a mirror. Roles: ``"replicator"`` (read and
        write records, replicate) and ``"reader"`` (read and replicate from, never write records). The password
        is stored only as a salted PBKDF2-SHA256 hash. Once any user exists, every data route needs one."""
        self._check()
        self.users.set(name, password, role)

    def removeuser(self, name: str) -> bool:
        """Remove a user of the mirror. False if there was none."""
        self._check()
        return self.users.remove(name)

    def userlist(self) -> dict[str, str]:
        """``{name: role}`` of the users of this database (never their passwords)."""
        self._check()
        return self.users.names()

    def status(self) -> dict[str, Any]:
        """Mode, records, change sequence and the compactor's health. (An open ``MyNoSQL`` handle's database
        adds its mirrors: reachable, last success and error, pending pushes, lag.)"""
        store = self._check()
        return {"name": self.name, "mode": self._config.mode, "records": store.live_count, "seq": store.seq,
                "server": None, "mirrors": {}, "sync_error": None, "compactor_error": store.stats.last_error}

    def watch(self, callback: Callable[[Change], None]) -> Callable[[], None]:
        """Call ``callback(change)`` after every change, local or replicated. Returns a function that stops it.

        Callbacks run in the thread that made the change; keep them short. An exception in one is logged.
        While other processes have the database open, the changes they make, and those this process makes while
        theirs are still being read in, reach the callbacks a few milliseconds later from a thread of the
        library, in change order. A record purged (:meth:`purge`, every leaf) is reported deleted, with ``rev`` ``""``.
        """
        store = self._check()

        def listener(new: DocState, prev: DocState | None) -> None:
            win = new.winner
            try:
                callback(Change(new.seq, new.id, "", True) if new.purged else
                         Change(new.seq, new.id, win, new.tree[win][1]))
            except Exception:
                log.exception("watch callback %r failed", callback)

        return store.add_listener(listener)

    # -- records ----------------------------------------------------------------------------------------------

    def savedoc(self, doc: dict[str, Any]) -> dict[str, Any]:
        """Save a record; see :meth:`MyNoSQL.savedoc` for the rules and the durability contract."""
        store = self._check_for_put()
        id, rev, fresh, blob, decoded = prepare_save(doc, self.options.max_doc_bytes)
        prev, state = self._put_body(store, id, rev, blob, fresh)
        if decoded is not None and state is not None:
            win = state.winner
            if state.bodies[win] is blob:  # the saved revision won: answer with the copy encode_body decoded
                return {"id": id, "rev": win, **decoded}
        data = (state or prev).doc_json  # type: ignore[union-attr]  # one of them exists
        assert data is not None
        return loads_body(data)  # a new dict, nothing shared with the caller or the store

    def put_encoded(self, id: str, rev: str | None, blob: bytes,
                    fresh: bool = False) -> tuple[DocState | None, DocState | None]:
        """:meth:`savedoc` of a body already encoded (``encode_body``; another process did it): the previous
        state and the new one (None: same content, nothing written). ``fresh``: ``id`` was just made at random."""
        store = self._check()
        validate_id(id)
        if len(blob) > self.options.max_doc_bytes:
            raise InvalidDocument(
                f"record {id!r} is {len(blob)} bytes encoded, over the limit of {self.options.max_doc_bytes}"
            )
        return self._put_body(store, id, rev, blob, fresh)

    def _put_body(self, store: Store, id: str, rev: str | None, blob: bytes,
                  fresh: bool) -> tuple[DocState | None, DocState | None]:
        """The write of :meth:`savedoc`, its record already encoded: (previous state, new state or None)."""
        limit = self.revs_limit

        def mutate(prev: DocState | None) -> DocState | None:
            return save_mutation(prev, id, rev, blob, limit, self._child)

        return store.put(id, mutate, fresh=fresh)

    def readdoc(self, id: str, rev: str | None = None) -> dict[str, Any]:
        """The winning revision of ``id`` as a new dict; with ``rev``, that revision (any stored leaf: the winner
        or a conflicting one, as CouchDB's ``GET /db/id?rev=``). A peer asks a mirror for a record it does not
        hold (:class:`DocumentUnavailable` if no mirror could be asked)."""
        if self._closed:
            raise DatabaseClosed(f"database {self.name!r} is closed")
        state = self._store.get_state(id if type(id) is str else validate_id(id))
        if state is None:
            fetch = self._read_through
            state = fetch(id) if fetch is not None else None
            if state is None:
                raise DocumentNotFound(id)
        if rev is not None:
            return self._read_rev(state, rev)
        decoded = state.decoded
        if decoded is None:  # a first read (a cold one, or a scan): parse the body alone, unless it has tags
            win = state.winner
            body = state.bodies[win]
            if not state.tree[win][1] and body.find(b'"$') < 0:
                state.decoded = True
                out: dict[str, Any] = {"id": state.id, "rev": win}
                out.update(orjson.loads(body))
                return out
        if type(decoded) is not tuple:  # no memo yet: parse the JSON
            data = state.doc_json
            if data is None:
                raise DocumentNotFound(id, deleted=True)
            out = loads_body(data)
            if decoded is not True:  # None: a first read (a scan or a cold read may never come back); False: no memo
                if decoded is None:
                    state.decoded = True
                return out
            plan = copy_plan(out) if len(data) <= _DECODED_MAX else None
            if plan is None:  # too big, or nested too deep to copy cheaply
                state.decoded = False
                return out
            decoded = state.decoded = (out, plan)
        # A record read again is copied from its decoded memo: ~2x faster than parsing its JSON again.
        doc, plan = decoded
        out = doc.copy()
        for k in plan:
            out[k] = out[k].copy()
        return out

    @staticmethod
    def _read_rev(state: DocState, rev: Any) -> dict[str, Any]:
        body = state.bodies.get(rev) if type(rev) is str else None
        if body is None:
            raise DocumentNotFound(state.id, rev=str(rev)[:80],
                                   known=type(rev) is str and rev in state.tree)
        if state.tree[rev][1]:
            raise DocumentNotFound(state.id, deleted=True, rev=rev)
        return {"id": state.id, "rev": rev, **loads_body(body)}

    def set_read_through(self, fetch: ReadThrough | None) -> None:
        """What ``readdoc`` calls for a record this database does not hold: ``fetch(id)`` returns its state once
        stored here, or None if it does not exist anywhere, or raises :class:`DocumentUnavailable`. A Peer's
        replication sets it (the database itself never reaches a network)."""
        self._read_through = fetch

    def deletedoc(self, id: str, rev: str) -> dict[str, Any]:
        """Delete the revision ``rev`` of record ``id`` (leaves a tombstone that replicates)."""
        store = self._check()
        id = validate_id(id)
        if not revtree.is_rev(rev):
            raise InvalidDocument(f"deletedoc needs the rev being deleted (N-<32 hex>), not {str(rev)[:80]!r}")
        tombstone = revtree.new_rev(rev, True, _TOMBSTONE_BODY)

        def mutate(prev: DocState | None) -> DocState:
            if prev is None:
                raise DocumentNotFound(id)
            tree = prev.tree
            if rev not in prev.bodies or tree[rev][1]:
                if tree[prev.winner][1]:
                    raise DocumentNotFound(id, deleted=True)
                raise ConflictError(f"record {id!r} has revision {prev.winner}, not {rev}", id=id,
                                    current_rev=prev.winner)
            tree2 = dict(tree)
            tree2[tombstone] = (rev, True)
            bodies = dict(prev.bodies)
            del bodies[rev]
            bodies[tombstone] = _TOMBSTONE_BODY
            return DocState(id, 0, revtree.stem(tree2, self.revs_limit), bodies, _without(prev.atts, (rev,)))

        store.put(id, mutate)
        return {"id": id, "rev": tombstone, "deleted": True}

    def save_deleted(self, id: str, rev: str | None, body: dict[str, Any]) -> dict[str, Any]:
        """A deletion that keeps a body, as CouchDB's ``PUT`` of ``{"_deleted": true, ...}``: a tombstone child
        of ``rev`` (or, for a record that does not exist or is deleted, with no ``rev``: a tombstone of its own),
        holding ``body`` (``readdoc(id, rev=...)`` does not show deletions; the mirror's ``GET ?rev=`` does)."""
        store = self._check()
        id = validate_id(id)
        if rev is not None and not revtree.is_rev(rev):
            raise InvalidDocument(f"invalid rev format: {str(rev)[:80]!r}")
        blob, _ = encode_body(body)
        if len(blob) > self.options.max_doc_bytes:
            raise InvalidDocument(f"record {id!r} is {len(blob)} bytes encoded, over the limit of "
                                  f"{self.options.max_doc_bytes}")
        limit = self.revs_limit
        out: list[str] = []

        def mutate(prev: DocState | None) -> DocState:
            if prev is None:
                if rev is not None:
                    raise ConflictError(f"record {id!r} does not exist, so {rev!r} is not its current revision", id=id)
                new = revtree.new_rev(None, True, blob)
                out.append(new)
                return DocState(id, 0, {new: (None, True)}, {new: blob})
            tree = prev.tree
            win = prev.winner
            if rev is None:
                if not tree[win][1]:
                    raise ConflictError(f"record {id!r} already exists (rev {win}); pass its current rev", id=id,
                                        current_rev=win)
                parent = win
            elif rev in prev.bodies and not tree[rev][1]:
                parent = rev
            else:
                raise ConflictError(f"record {id!r} has revision {win}, not {rev}", id=id, current_rev=win)
            new = revtree.new_rev(parent, True, blob)
            out.append(new)
            tree2 = dict(tree)
            tree2[new] = (parent, True)
            bodies = dict(prev.bodies)
            if not tree[parent][1]:
                del bodies[parent]
            bodies[new] = blob
            tree2 = revtree.stem(tree2, limit)
            kept = _without(prev.atts, (parent,))  # the deletion has none; other leaves keep theirs
            return DocState(id, 0, tree2, {r: b for r, b in bodies.items() if r in tree2},
                            {r: a for r, a in kept.items() if r in tree2} or None if kept else None)

        store.put(id, mutate)
        return {"id": id, "rev": out[-1], "deleted": True}

    def resolve(self, id: str, merged: dict[str, Any], losers: list[str] | None = None) -> dict[str, Any]:
        """Resolve a conflict in one step: save ``merged`` as the next revision of the winner and delete the
        losing revisions ``losers`` (default: every conflicting revision, :meth:`conflicts`). Atomic: all of it
        is written, or (:class:`ConflictError`, when the winner or a loser changed meanwhile) none of it.

        ``merged`` is the record as it should be; its ``rev``, if given, must be the current winner's (the one
        you read). Returns the saved record with its new ``rev``. The deletions replicate like any other edit, so
        every replica ends with the merged record and no conflict."""
        store = self._check()
        id = validate_id(id)
        if not isinstance(merged, dict):
            raise InvalidDocument(f"the merged record must be a dict, not {type(merged).__name__}")
        based_on = merged.get("rev")
        if merged.get("id", id) != id:
            raise InvalidDocument(f"the merged record's id {merged.get('id')!r} is not {id!r}")
        if losers is not None and (not isinstance(losers, list) or not all(revtree.is_rev(r) for r in losers)):
            raise InvalidDocument("losers must be a list of revision ids (N-<32 hex>)")
        body = {k: v for k, v in merged.items() if k not in ("id", "rev")}
        blob, _ = encode_body(body)
        if len(blob) > self.options.max_doc_bytes:
            raise InvalidDocument(f"record {id!r} is {len(blob)} bytes encoded, over the limit of "
                                  f"{self.options.max_doc_bytes}")
        limit = self.revs_limit

        def mutate(prev: DocState | None) -> DocState | None:
            if prev is None:
                raise DocumentNotFound(id)
            tree = prev.tree
            win = prev.winner
            if tree[win][1]:
                raise DocumentNotFound(id, deleted=True)
            if based_on is not None and based_on != win:
                raise ConflictError(f"record {id!r} has revision {win}, not {based_on}: it changed since you "
                                    "read it", id=id, current_rev=win)
            live = prev.conflicts()
            gone = live if losers is None else losers
            for r in gone:
                if r not in live:
                    raise ConflictError(f"{r} is not a conflicting revision of record {id!r} (now: "
                                        f"{', '.join(live) or 'none'})", id=id, current_rev=win)
            tree2 = dict(tree)
            bodies = dict(prev.bodies)
            atts = _without(prev.atts, gone)
            for r in gone:
                tomb = revtree.new_rev(r, True, _TOMBSTONE_BODY)
                tree2[tomb] = (r, True)
                del bodies[r]
                bodies[tomb] = _TOMBSTONE_BODY
            if bodies[win] != blob:
                kept = prev.leaf_atts(win)
                new = revtree.new_rev(win, False, blob + att.rev_key(kept))
                tree2[new] = (win, False)
                del bodies[win]
                bodies[new] = blob
                if kept:  # the winner's attachments stay with the merged revision
                    atts = {r: a for r, a in (atts or {}).items() if r != win}
                    atts[new] = kept
            elif not gone:
                return None  # nothing to change
            return DocState(id, 0, revtree.stem(tree2, limit), bodies, atts)

        prev, state = store.put(id, mutate)
        data = (state or prev).doc_json  # type: ignore[union-attr]  # one of them exists
        assert data is not None
        return loads_body(data)

    def _child(self, prev: DocState, parent: str, blob: bytes, atts: att.Atts, limit: int) -> DocState:
        """The state after saving ``blob`` with ``atts`` as the child of leaf ``parent`` of ``prev``."""
        return self._child_rev(prev, parent, blob, atts, limit)[0]

    def _child_rev(self, prev: DocState, parent: str, blob: bytes, atts: att.Atts,
                   limit: int) -> tuple[DocState, str]:
        """The state after saving ``blob`` with ``atts`` as the child of leaf ``parent`` of ``prev``, and the new
        revision."""
        new = revtree.new_rev(parent, False, blob + att.rev_key(atts))
        tree2 = dict(prev.tree)
        tree2[new] = (parent, False)
        bodies = dict(prev.bodies)
        bodies.pop(parent, None)
        bodies[new] = blob
        all_atts = {r: a for r, a in (prev.atts or {}).items() if r != parent}
        if atts:
            all_atts[new] = atts
        return DocState(prev.id, 0, revtree.stem(tree2, limit), bodies, all_atts or None), new

    # -- attachments ------------------------------------------------------------------------------------------

    def putattachment(self, id: str, name: str, data: bytes | BinaryIO, content_type: str = "application/octet-stream",
                      rev: str | None = None) -> str:
        """Add (or replace) the attachment ``name`` of record ``id``; returns the record's new ``rev``.

        ``data``: bytes, or a binary file object read in chunks (a 1 GiB file never sits whole in RAM). ``rev``:
        the record's current revision (:class:`ConflictError` if it changed); None creates the record (with an
        empty body) if it does not exist. The bytes are stored once whatever the number of records holding them
        (by their SHA-256), compressed when that helps (not JPEG, PNG, zip...)."""
        store = self._check()
        id = validate_id(id)
        name = att.validate_name(name)
        ctype = att.validate_content_type(content_type)
        if rev is not None and not revtree.is_rev(rev):
            raise InvalidDocument(f"rev must be a revision id (N-<32 hex>), not {str(rev)[:80]!r}")
        stored = self._store_data(store, id, data, ctype)
        return self._edit_attachments(id, rev, {name: stored}, (), keys=[stored.key])

    def attach(self, id: str, name: str, stored: att.Stored, rev: str | None) -> str:
        """``putattachment`` of bytes streamed into a blob already (:meth:`finish_attachment`; released here)."""
        self._check()
        try:
            id = validate_id(id)
            name = att.validate_name(name)
            if rev is not None and not revtree.is_rev(rev):
                raise InvalidDocument(f"rev must be a revision id (N-<32 hex>), not {str(rev)[:80]!r}")
        except BaseException:
            self.release_attachment(stored)
            raise
        return self._edit_attachments(id, rev, {name: stored}, (), keys=[stored.key])

    def deleteattachment(self, id: str, name: str, rev: str) -> str:
        """Remove the attachment ``name`` from record ``id`` at its current revision ``rev``; returns the new
        ``rev``. :class:`AttachmentNotFound` if it has none of that name."""
        self._check()
        id = validate_id(id)
        if not revtree.is_rev(rev):
            raise InvalidDocument(f"deleteattachment needs the record's rev (N-<32 hex>), not {str(rev)[:80]!r}")
        return self._edit_attachments(id, rev, {}, (name,), keys=[])

    def _edit_attachments(self, id: str, rev: str | None, add: dict[str, att.Stored], remove: tuple[str, ...], *,
                          keys: list[str]) -> str:
        limit = self.revs_limit
        new_rev: list[str] = []

        def mutate(prev: DocState | None) -> DocState:
            if prev is None or (rev is None and prev.deleted):
                if rev is not None:
                    raise ConflictError(f"record {id!r} does not exist, so {rev!r} is not its current revision",
                                        id=id)
                if remove:
                    raise AttachmentNotFound(id, remove[0])
                base = prev if prev is not None else DocState(id, 0, {}, {})
                parent = prev.winner if prev is not None else None
                body = _TOMBSTONE_BODY
                atts: att.Atts = {}
            else:
                win = prev.winner
                if rev is None:
                    raise ConflictError(f"record {id!r} already exists (rev {win}); pass its current rev to "
                                        "change its attachments", id=id, current_rev=win)
                if rev not in prev.bodies or prev.tree[rev][1]:
                    raise ConflictError(f"record {id!r} has revision {win}, not {rev}: it was changed since you "
                                        "read it", id=id, current_rev=win)
                base, parent, body = prev, rev, prev.bodies[rev]
                atts = dict(prev.leaf_atts(rev))
            gen = revtree.rev_gen(parent) + 1 if parent else 1
            for name in remove:
                if atts.pop(name, None) is None:
                    raise AttachmentNotFound(id, name, rev=rev)
            for name, s in add.items():
                atts[name] = {"content_type": s.content_type, "digest": s.digest, "length": s.length,
                              "revpos": gen, "blob": s.key}
            atts = dict(sorted(atts.items()))
            if parent is None:
                new = revtree.new_rev(None, False, body + att.rev_key(atts))
                state = DocState(id, 0, {new: (None, False)}, {new: body}, {new: atts} if atts else None)
            else:
                state, new = self._child_rev(base, parent, body, atts, limit)
            new_rev.append(new)
            return state

        self._put_releasing(id, mutate, keys)
        return new_rev[-1]

    def save_with_attachments(self, record: dict[str, Any], atts: dict[str, att.AttNew] | None) -> dict[str, Any]:
        """Save ``record`` (``savedoc``'s rules) with exactly the attachments ``atts``: as a CouchDB client's
        ``PUT`` does (None or ``{}``: the new revision has none). A stub keeps the attachment of that name of the
        revision edited (:class:`~MyNoSQL.records.attachments.MissingStub` if it has none); bytes (``Inline``, or
        ``Stored``: this call releases them) are stored. Returns ``{"id", "rev"}``."""
        self._check()
        id = record.get("id")
        fresh = id is None
        id = new_id() if fresh else validate_id(id)
        rev = record.get("rev")
        if rev is not None and not revtree.is_rev(rev):
            raise InvalidDocument(f"invalid rev format: {str(rev)[:80]!r}")
        blob, _ = encode_body({k: v for k, v in record.items() if k not in ("id", "rev")})
        if len(blob) > self.options.max_doc_bytes:
            raise InvalidDocument(f"record {id!r} is {len(blob)} bytes encoded, over the limit of "
                                  f"{self.options.max_doc_bytes}")
        given, keys = self._store_inline(id, atts or {})
        limit = self.revs_limit
        result: list[str] = []

        def mutate(prev: DocState | None) -> DocState | None:
            if prev is None or (rev is None and prev.deleted):
                if prev is None and rev is not None:
                    raise ConflictError(f"record {id!r} does not exist, so {rev!r} is not its current revision",
                                        id=id)
                parent = prev.winner if prev is not None else None
                new_atts = _resolve(id, given, None, revtree.rev_gen(parent) + 1 if parent else 1, lazy=False,
                                    by_name={})
                if prev is None:
                    new = revtree.new_rev(None, False, blob + att.rev_key(new_atts))
                    result.append(new)
                    return DocState(id, 0, {new: (None, False)}, {new: blob}, {new: new_atts} if new_atts else None)
                assert parent is not None
            else:
                win = prev.winner
                if rev is None:
                    raise ConflictError(f"record {id!r} already exists (rev {win}); pass its current rev to update "
                                        "it", id=id, current_rev=win)
                if rev not in prev.bodies or prev.tree[rev][1]:
                    raise ConflictError(f"record {id!r} has revision {win}, not {rev}: it was changed since you "
                                        "read it", id=id, current_rev=win)
                parent = rev
                old = prev.leaf_atts(rev)
                new_atts = _resolve(id, given, None, revtree.rev_gen(rev) + 1, lazy=False, by_name=old)
                if prev.bodies[rev] == blob and new_atts == old:
                    result.append(rev)
                    return None  # same content: no new revision
            state, new = self._child_rev(prev, parent, blob, new_atts, limit)
            result.append(new)
            return state

        self._put_releasing(id, mutate, keys, fresh=fresh)
        return {"id": id, "rev": result[-1]}

    def _put_releasing(self, id: str, mutate: Any, keys: list[str], *,
                       fresh: bool = False) -> tuple[DocState | None, DocState | None]:
        """``store.put``, then release the blobs ``keys`` (pinned for this write) with the outcome."""
        store = self._store
        seq: int | None = None
        try:
            prev, new = store.put(id, mutate, fresh=fresh)
            seq = new.seq if new is not None else None
            return prev, new
        finally:
            for key in keys:
                store.blobs.release(key, seq)

    def _store_inline(self, id: str, given: dict[str, att.AttNew]) -> tuple[dict[str, att.AttNew], list[str]]:
        """Store the bytes of ``Inline`` attachments (before the record is written); returns the attachments with
        those as ``Stored``, and the blobs to release once the record is written (the ``Stored`` given too)."""
        out: dict[str, att.AttNew] = {}
        keys: list[str] = [a.key for a in given.values() if isinstance(a, att.Stored)]
        try:
            for name, a in given.items():
                if isinstance(a, att.Inline):
                    info = self._check().blobs.put(a.data, id, compress=att.worth_compressing(a.content_type))
                    keys.append(info.key)
                    out[name] = att.Stored(a.content_type, info.key, self._held_digest(info), info.length, a.revpos)
                else:
                    out[name] = a
        except BaseException:
            for key in keys:
                self._store.blobs.release(key, None)
            raise
        return out, keys

    def _store_data(self, store: Store, id: str, data: Any, ctype: str) -> att.Stored:
        compress = att.worth_compressing(ctype)
        if isinstance(data, (bytes, bytearray, memoryview)):
            info = store.blobs.put(bytes(data), id, compress=compress)
        elif callable(getattr(data, "read", None)):
            w = store.blobs.writer(compress=compress)
            try:
                while True:
                    chunk = data.read(CHUNK)
                    if not chunk:
                        break
                    if not isinstance(chunk, (bytes, bytearray, memoryview)):
                        raise InvalidDocument("an attachment's file must be opened in binary mode ('rb')")
                    w.write(chunk)
                info = w.finish(id)
            except BaseException:
                w.abort()
                raise
        else:
            raise InvalidDocument(f"attachment data must be bytes or a binary file object, not {type(data).__name__}")
        return att.Stored(ctype, info.key, self._held_digest(info), info.length, None)

    def attachment_writer(self, content_type: str, max_bytes: int | None = None) -> BlobWriter:
        """A blob to write an attachment's bytes into as they arrive (a mirror's upload): ``write`` them, then
        :meth:`finish_attachment` (or ``abort``). Over ``max_bytes``, ``write`` raises ``AttachmentTooLarge``."""
        return self._check().blobs.writer(compress=att.worth_compressing(content_type), max_bytes=max_bytes)

    def finish_attachment(self, writer: BlobWriter, id: str, content_type: str, *, digest: str | None = None,
                          revpos: int | None = None, encoded_md5: bytes | None = None,
                          length: int | None = None) -> att.Stored:
        """The written blob, pinned for record ``id`` (hand it to :meth:`save_with_attachments` or
        :meth:`merge_replicated`, which release it). ``digest``: what the sender said it is; an MD5 digest must
        match the bytes (or ``encoded_md5``, the MD5 of the bytes as they travelled gzip'ed), and ``length`` their
        length, else :class:`InvalidDocument` and nothing is kept."""
        if length is not None and writer.length != length:
            writer.abort()
            raise InvalidDocument(f"the attachment is {writer.length} bytes, not the {length} its length says")
        info = writer.finish(id)
        actual = att.md5_digest(info.md5)
        if digest is not None and digest.startswith("md5-") and digest != actual \
                and (encoded_md5 is None or digest != att.md5_digest(encoded_md5)):
            self._store.blobs.release(info.key, None)
            raise InvalidDocument("the attachment's digest does not match its data")
        self._held_digest(info)
        return att.Stored(content_type, info.key, digest or actual, info.length, revpos)

    def _held_digest(self, info: BlobInfo) -> str:
        """The MD5 digest of a blob just stored, remembered with its blob (``att_fetched``, kept while the blob is
        on disk): a replicated revision whose stub names bytes no leaf here has any more finds them by it."""
        digest = att.md5_digest(info.md5)
        self._check().index.set_fetched(digest, info.key)
        return digest

    def release_attachment(self, stored: att.Stored) -> None:
        """Drop a ``Stored`` attachment that no record write took (a request that failed on the way)."""
        self._store.blobs.release(stored.key, None)

    def store_fetched(self, writer: BlobWriter, id: str, digest: str) -> str:
        """Keep the bytes of ``digest`` a Peer fetched from a mirror (written into ``writer``): they must match
        the digest (else :class:`InvalidDocument`, nothing kept). Returns the blob."""
        info = writer.finish(id)
        store = self._store
        if digest.startswith("md5-") and att.md5_digest(info.md5) != digest:
            store.blobs.release(info.key, None)
            raise InvalidDocument("the attachment bytes a mirror sent do not match their digest")
        try:
            store.index.set_fetched(digest, info.key)
        finally:
            store.blobs.release(info.key, 0)
        return info.key

    def set_attachment_fetch(self, fetch: AttachmentFetch | None) -> None:
        """What ``getattachment`` calls for bytes this database does not hold (a Peer asks its mirror):
        ``fetch(id, rev, name, metadata)`` stores them (:meth:`store_fetched`) and returns their blob, or raises
        :class:`DocumentUnavailable`."""
        self._att_fetch = fetch

    def _held(self, id: str) -> DocState:
        state = self._check().get_state(id)
        if state is None:
            fetch = self._read_through
            state = fetch(id) if fetch is not None else None
            if state is None:
                raise DocumentNotFound(id)
        return state

    @staticmethod
    def _leaf(state: DocState, rev: str | None) -> str:
        if rev is None:
            leaf = state.winner
            if state.tree[leaf][1]:
                raise DocumentNotFound(state.id, deleted=True)
            return leaf
        if type(rev) is not str or rev not in state.bodies:
            raise DocumentNotFound(state.id, rev=str(rev)[:80], known=type(rev) is str and rev in state.tree)
        if state.tree[rev][1]:
            raise DocumentNotFound(state.id, deleted=True, rev=rev)
        return rev

    def attachments(self, id: str, rev: str | None = None) -> dict[str, dict[str, Any]]:
        """``{name: {"content_type", "length", "digest", "revpos"}}`` of the record's winning revision (or of
        leaf ``rev``); ``{}`` if it has none."""
        state = self._held(validate_id(id))
        return {n: att.public(m) for n, m in state.leaf_atts(self._leaf(state, rev)).items()}

    def attachment_meta(self, state: DocState, rev: str, name: str) -> dict[str, Any]:
        meta = state.leaf_atts(rev).get(name)
        if meta is None:
            raise AttachmentNotFound(state.id, name, rev=rev)
        return meta

    def local_blob(self, state: DocState, meta: dict[str, Any]) -> str | None:
        """The blob holding an attachment's bytes here, or None (a Peer that has its stub only)."""
        store = self._check()
        key = meta.get("blob")
        if key is None:
            found = att.find_blob(state.atts, meta["digest"])
            key = found["blob"] if found is not None else store.index.fetched_blob(meta["digest"])
        return key if key is not None and store.blobs.has(key) else None

    def open_blob(self, state: DocState, rev: str, name: str) -> BlobReader:
        """A reader of the bytes of attachment ``name`` of leaf ``rev`` (fetched first by a Peer that has only
        its stub)."""
        meta = self.attachment_meta(state, rev, name)
        key = self.local_blob(state, meta)
        if key is None:
            fetch = self._att_fetch
            if fetch is None:
                raise DocumentUnavailable(state.id, f"the bytes of attachment {name!r} are not stored here, and no "
                                          "mirror is known to ask for them")
            key = fetch(state.id, rev, name, meta)
        reader = self._store.blobs.open(key)
        reader.content_type, reader.digest, reader.revpos = meta["content_type"], meta["digest"], meta["revpos"]
        return reader

    def openattachment(self, id: str, name: str, rev: str | None = None) -> BlobReader:
        """The bytes of attachment ``name`` as a binary file object (``read``, ``seek``, ``with``); it holds one
        chunk (256 KiB) in RAM at a time. Also ``.length``, ``.content_type``, ``.digest``. A Peer that holds only
        the attachment's stub fetches its bytes from a mirror first (:class:`DocumentUnavailable` if it cannot,
        within ``Options.read_timeout`` of silence)."""
        id = validate_id(id)
        for _attempt in range(3):
            state = self._held(id)
            leaf = self._leaf(state, rev)
            try:
                return self.open_blob(state, leaf, name)
            except FileNotFoundError:
                continue  # compaction deleted the bytes of a revision that changed since: read it again
        raise AttachmentNotFound(id, name, rev=rev)

    def getattachment(self, id: str, name: str, rev: str | None = None) -> bytes:
        """The bytes of attachment ``name`` of record ``id`` (its winning revision, or leaf ``rev``)."""
        with self.openattachment(id, name, rev) as f:
            return f.read()

    def purge(self, id: str, revs: list[str]) -> list[str]:
        """Remove leaf revisions of a record for good, as CouchDB's ``_purge``: no tombstone is left and nothing
        replicates. Returns the revisions purged (those of ``revs`` that are leaves of the record now; others, and
        a record that does not exist, are ignored).

        Purging some leaves of a conflicted record leaves the others (the winner is chosen among them again: a
        change in the changes feed). Purging every leaf removes the record: ``readdoc`` raises
        :class:`DocumentNotFound`, it is in no listing nor the changes feed, and the next ``compact()`` deletes
        its attachments' bytes if no other record has them. A purge is durable as a save is (the write-ahead
        log). A replica that still has the record sends it back at the next replication that reads from it
        (as with CouchDB): purge it there too.
        """
        return self.purge_many({id: revs})[id]

    def purge_many(self, requests: dict[str, list[str]]) -> dict[str, list[str]]:
        """:meth:`purge` of each ``{id: [rev, ...]}``; returns ``{id: [the revisions purged]}`` (CouchDB's
        ``_purge``). Every id and list is checked before anything is purged; the purges are logged together."""
        store = self._check()
        if not isinstance(requests, dict):
            raise InvalidDocument("purge needs {id: [rev, ...]}")
        for id, revs in requests.items():
            validate_id(id)
            if not isinstance(revs, list) or not all(type(r) is str for r in revs) or len(revs) > 10_000:
                raise InvalidDocument("purge needs a list of revision ids")
        out: dict[str, list[str]] = {}
        log: list[tuple[str, str]] = []
        try:
            for id, revs in requests.items():
                out[id] = self._purge(store, id, revs)
                if out[id]:
                    log.append((id, orjson.dumps(out[id]).decode()))
        finally:
            if log:
                store.index.add_purges(log, self.purged_infos_limit)
        return out

    @staticmethod
    def _purge(store: Store, id: str, revs: list[str]) -> list[str]:
        purged: list[str] = []

        def mutate(prev: DocState | None) -> DocState | None:
            purged.clear()
            if prev is None:
                return None
            leaves = set(revtree.leaves(prev.tree))
            purged.extend(r for r in dict.fromkeys(revs) if r in leaves)
            if not purged:
                return None
            if len(purged) == len(leaves):
                return DocState.purge_marker(id)
            tree = revtree.without_leaves(prev.tree, purged)
            atts = {r: a for r, a in (prev.atts or {}).items() if r in tree} or None
            return DocState(id, 0, tree, {r: b for r, b in prev.bodies.items() if r in tree}, atts)

        store.put(id, mutate)
        return list(purged)

    @property
    def purge_seq(self) -> int:
        """How many purges this database made (CouchDB's ``purge_seq``: one step per record purged)."""
        return self._check().index.purge_seq()

    def purged_infos(self) -> list[dict[str, Any]]:
        """The newest purges (at most :attr:`purged_infos_limit`), oldest first: ``{"id", "revs", "purge_seq"}``."""
        return [{"id": id, "revs": orjson.loads(revs), "purge_seq": seq}
                for seq, id, revs in self._check().index.purges()]

    def conflicts(self, id: str) -> list[str]:
        """Revisions of ``id`` that lost the winner rule and are not deleted (CouchDB's ``_conflicts``)."""
        state = self._check().get_state(validate_id(id))
        if state is None:
            raise DocumentNotFound(id)
        return state.conflicts()

    def changes(self, since: int = 0) -> Iterator[Change]:
        """The local changes feed: the newest revision of each record changed after ``since``, oldest first."""
        store = self._check()
        for s in store.iter_states(since):
            win = s.winner
            yield Change(s.seq, s.id, win, s.tree[win][1])

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """Every record (not deleted), in change order."""
        store = self._check()
        for s in store.iter_states(0):
            win = s.winner
            if not s.tree[win][1]:
                out: dict[str, Any] = {"id": s.id, "rev": win}
                out.update(loads_body(s.bodies[win]))
                yield out

    def __len__(self) -> int:
        """How many records are not deleted."""
        return self._check().live_count

    def deleted_count(self) -> int:
        """How many records are deleted (tombstones: CouchDB's ``doc_del_count``)."""
        store = self._check()
        return max(0, store.record_count - store.live_count)

    def __contains__(self, id: object) -> bool:
        """Whether a record with this id exists and is not deleted."""
        if not isinstance(id, str):
            return False
        state = self._check().get_state(id)
        return state is not None and not state.deleted

    @property
    def seq(self) -> int:
        """The change sequence of the latest change."""
        return self._check().seq

    # -- secondary indexes ------------------------------------------------------------------------------------

    def indexadd(self, name: str) -> bool:
        """Index the field ``name`` of every record. Returns False if it was indexed already."""
        store = self._check()
        if not isinstance(name, str) or not name or name in ("id", "rev"):
            raise InvalidDocument(f"cannot index field {name!r}")
        with self._config_lock:
            if name in self._config.indexes:
                return False
            fields = (*self._config.indexes, name)
            store.add_secondary(name, fields)
            self._config = dataclasses.replace(self._config, indexes=fields)
            save_config(self.path, self._config)
        if not any(q["name"] == name for q in self._config.query_indexes):
            self.createindex([field_name((name,))], name=name)  # so that find uses it too
        return True

    def indexdrop(self, name: str) -> bool:
        """Drop the index on field ``name``. False if there was none."""
        store = self._check()
        with self._config_lock:
            if name not in self._config.indexes:
                return False
            fields = tuple(n for n in self._config.indexes if n != name)
            self._config = dataclasses.replace(self._config, indexes=fields)
            save_config(self.path, self._config)
            store.drop_secondary(name, fields)
        if any(q["name"] == name and [f for f, _d in q["fields"]] == [field_name((name,))]
               for q in self._config.query_indexes):
            self.dropindex(name)
        return True

    def indexes(self) -> list[IndexInfo]:
        """Every index, by name: first the fields of ``indexadd`` (as before: ``db.indexes() == ["site"]``),
        then those of ``createindex``. Each is an :class:`~MyNoSQL.query.IndexInfo`, a ``str`` (its name) that
        also tells its ``kind``, ``fields``, ``partial_filter_selector`` and ``building`` progress."""
        self._check()
        out = [IndexInfo.make(f, "field", [f]) for f in self._config.indexes]
        names = set(self._config.indexes)
        for item in self._queries.describe()[1:]:
            if item["name"] in names:
                continue
            out.append(IndexInfo.make(item["name"], "json", [next(iter(f)) for f in item["def"]["fields"]],
                                      item["ddoc"], item["def"].get("partial_filter_selector"),
                                      (item["building"]["done"], item["building"]["total"])
                                      if "building" in item else None))
        return out

    # -- queries (query.py) -------------------------------------------------------------------------------

    def createindex(self, fields: list[Any], name: str | None = None,
                    partial_filter_selector: dict[str, Any] | None = None, *, ddoc: str | None = None,
                    wait: bool = True, progress: Callable[[int, int | None], None] | None = None,
                    python: bool = True) -> dict[str, Any]:
        """Create a query index (persisted; kept current on save, delete and replication); see
        :meth:`MyNoSQL.createindex`. ``wait`` False returns at once while the index is built in the background
        (``progress(done, total)`` is called from the building thread; :meth:`indexes` shows it too).
        ``python`` False: the fields name the id ``_id`` (CouchDB's documents), as the mirror's routes do.
        Returns CouchDB's answer: ``{"result": "created" | "exists", "id": ddoc, "name": name}``."""
        self._check()
        names, desc = parse_index_fields(fields, python=python)
        partial = partial_filter_selector
        if partial is not None:
            if python:
                partial = python_names(partial)
            compile_selector(partial)  # checked now: a bad one is refused, not stored
        with self._config_lock:
            current = self._config.query_indexes
            ino = max((int(q["ino"]) for q in current), default=0) + 1
            spec = index_spec(names, desc, name, ddoc, partial, ino)
            for q in current:
                if q["name"] == spec["name"] or (name is None and q["fields"] == spec["fields"]
                                                   and q.get("partial_filter_selector") == partial):
                    if q["fields"] == spec["fields"] and q.get("partial_filter_selector") == partial:
                        if wait:
                            self._queries.wait(q["name"])
                        return {"result": "exists", "id": q["ddoc"], "name": q["name"]}
                    raise InvalidQuery(f"an index named {spec['name']!r} exists with another definition; "
                                       "drop it first (dropindex)")
            d = make_def(spec)
            self._config = dataclasses.replace(self._config, query_indexes=(*current, spec))
            save_config(self.path, self._config)
        self._queries.add(d, wait=wait, progress=progress)
        return {"result": "created", "id": d.ddoc, "name": d.name}

    def dropindex(self, name: str, ddoc: str | None = None) -> bool:
        """Drop the query index ``name`` (of design document ``ddoc``, if given). False if there was none."""
        self._check()
        with self._config_lock:
            current = self._config.query_indexes
            keep = tuple(q for q in current if not (q["name"] == name and (ddoc is None or q["ddoc"] in
                                                                           (ddoc, f"_design/{ddoc}"))))
            if len(keep) == len(current):
                return False
            self._config = dataclasses.replace(self._config, query_indexes=keep)
            save_config(self.path, self._config)
        self._queries.remove(name)
        return True

    def find(self, selector: dict[str, Any], fields: list[str] | None = None, sort: list[Any] | None = None,
             limit: int | None = None, skip: int = 0, use_index: Any = None) -> list[dict[str, Any]]:
        """The records that match a Mango selector; see :meth:`MyNoSQL.find`."""
        self._check()
        return self._queries.query(selector, fields=fields, sort=sort, limit=limit, skip=skip,
                                   use_index=use_index)[0]

    def explain(self, selector: dict[str, Any], fields: list[str] | None = None, sort: list[Any] | None = None,
                limit: int | None = None, skip: int = 0, use_index: Any = None) -> dict[str, Any]:
        """How :meth:`find` would answer: the index (CouchDB's ``_explain`` shape) and, under ``"mynosql"``,
        the strategy and how many records it expects to examine."""
        self._check()
        return self._queries.explain(selector, fields=fields, sort=sort, limit=limit, skip=skip,
                                     use_index=use_index)

    def observe(self, selector: dict[str, Any], callback: Callable[[QueryChange], None] | None = None, *,
                sort: list[Any] | None = None, limit: int | None = None, skip: int = 0,
                fields: list[str] | None = None) -> LiveQuery:
        """A live query; see :meth:`MyNoSQL.observe`."""
        self._check()
        return LiveQuery(self._queries, selector, callback, sort=sort, limit=limit, skip=skip, fields=fields)

    # -- selective sync (a Peer keeps what matches; replication/peer.py does the work) ----------------------

    def subscribe(self, selector: dict[str, Any]) -> str:
        """Keep every record that matches ``selector`` (a Peer pulls them, and keeps them current); see
        :meth:`MyNoSQL.subscribe`. Remembered in the configuration. Returns the subscription's id."""
        self._check()
        sid, sel = _subscription(selector)
        with self._config_lock:
            subs = self._config.subscriptions
        if not any(s.get("id") == sid for s in subs):
            self._update_config(subscriptions=(*subs, {"id": sid, "selector": sel}))
        return sid

    def unsubscribe(self, selector_or_id: dict[str, Any] | str) -> bool:
        """Stop keeping the records of a subscription (its id, or the same selector). The records already here
        stay (and stay current, as every record a Peer holds). False if there was no such subscription."""
        self._check()
        sid = selector_or_id if isinstance(selector_or_id, str) else _subscription(selector_or_id)[0]
        with self._config_lock:
            subs = self._config.subscriptions
        keep = tuple(s for s in subs if s.get("id") != sid)
        if len(keep) == len(subs):
            return False
        self._update_config(subscriptions=keep)
        return True

    def subscriptions(self) -> dict[str, dict[str, Any]]:
        """``{id: selector}`` of the subscriptions (selectors normalised, values in their stored JSON form)."""
        self._check()
        return {str(s["id"]): s["selector"] for s in self._config.subscriptions}

    @property
    def queries(self) -> QueryEngine:
        """The query engine (for the mirror's routes and live queries)."""
        self._check()
        return self._queries

    def indexread(self, name: str) -> dict[str, Any]:
        """``{id: value of field name}`` for every record that has the field."""
        store = self._check()
        if name not in self._config.indexes:
            raise IndexNotFound(f"no index on field {name!r}; create it with indexadd({name!r})")
        return {i: decode_value(orjson.loads(v)) for i, v in store.secondary(name).items()}

    # -- replication primitives (the replicator and the mirror server use these) -----------------------------

    def state(self, id: str) -> DocState | None:
        """Everything stored about ``id`` (revision tree and leaf bodies), or None."""
        return self._check().get_state(id)

    def states_since(self, since: int = 0) -> Iterator[DocState]:
        """The newest state of every record changed after ``since``, in change order (the changes feed)."""
        return self._check().iter_states(since)

    def _share_log(self, note: Callable[[str], None]) -> bool:
        """Other processes have this database open (``shared.py``): ``note(id)`` every write from now on, before it
        is acknowledged, and let them append to the log themselves where it is mapped. True if they may."""
        return self._check().share(note)

    def _unshare_log(self) -> None:
        """The other processes' appends stop (they send their saves here, or to the next owner); notes stop."""
        self._check().unshare()

    def on_change(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(new_state, previous_state)`` after every write (in the writing thread, or in change order
        from the thread that reads other processes' writes in: see :meth:`watch`; keep it short).
        Returns the function that removes it. For the replicator and the server; applications use ``watch``."""
        return self._check().add_listener(listener)

    def put_replicated(self, id: str, path: list[str], deleted: bool, blob: bytes,
                       atts: dict[str, att.AttNew] | None = None, *, lazy: bool = False) -> bool:
        """Merge a revision received by replication (``new_edits=false``). Returns False if it was known.

        ``path`` is the revision and its ancestors, newest first, as in ``_revisions``; ``blob`` its encoded body;
        ``atts`` its attachments (see :meth:`merge_replicated`).
        """
        return self.merge_replicated(id, path, deleted, blob, atts, lazy=lazy) is not None

    def merge_replicated(self, id: str, path: list[str], deleted: bool, blob: bytes,
                         atts: dict[str, att.AttNew] | None = None, *, lazy: bool = False) -> DocState | None:
        """``put_replicated`` returning the record's new state (its seq and tree), or None if it was known.

        ``atts``: the revision's attachments: bytes (:class:`~MyNoSQL.records.attachments.Inline`, or ``Stored``
        already: this call releases them), or stubs, which name bytes that a leaf of the record here has (the same
        digest). ``lazy`` (a Peer): a stub whose bytes are not here is kept as a stub (its bytes are fetched when
        read); else it is a :class:`~MyNoSQL.records.attachments.MissingStub` error, and nothing is written."""
        store = self._check()
        limit = self.revs_limit
        max_leaves = self.options.limits.max_leaves

        def check_leaves(prev: DocState | None) -> None:
            _check_leaves(prev, id, path, max_leaves)

        if not atts:
            _prev, new = store.put(id, self._merge_mutation(id, path, deleted, blob))
            return new

        given, keys = self._store_inline(id, atts)
        gen = revtree.rev_gen(path[0])

        def by_digest(stub: att.Stub) -> att.Meta | None:
            # A stub whose bytes no leaf here has: a Peer that holds only the stub of an attachment it never read
            # edited the record from a revision that is no leaf here any more (another writer replaced the
            # attachment meanwhile). The bytes are still here until compact() collects them: found by digest.
            digest = stub.digest
            if digest is None or not digest.startswith("md5-"):
                return None
            key = store.index.fetched_blob(digest)
            if key is None:
                return None
            store.blobs.pin(key)  # pinned first: collect() keeps what is pinned
            keys.append(key)  # released once the record is written (or not)
            try:
                with store.blobs.open(key) as reader:
                    length = reader.length
            except OSError:  # collected already
                return None
            if stub.length is not None and stub.length != length:
                return None
            return {"content_type": stub.content_type or "application/octet-stream", "digest": digest,
                    "length": length, "revpos": stub.revpos or gen, "blob": key}

        def mutate_atts(prev: DocState | None) -> DocState | None:
            check_leaves(prev)
            tree, added = revtree.merge_path(prev.tree if prev else {}, path, deleted)
            if not added:
                return None
            # by digest only for a revision that extends one known here (whose attachment it keeps): a stub of a
            # record that never had it stays CouchDB's missing_stub
            extends = prev is not None and any(r in prev.tree for r in path[1:])
            new_atts = _resolve(id, given, prev.atts if prev is not None else None, gen, lazy=lazy, by_name=None,
                                by_digest=by_digest if extends and not lazy else None)
            bodies = dict(prev.bodies) if prev else {}
            all_atts = dict(prev.atts or {}) if prev else {}
            for ancestor in path[1:]:
                bodies.pop(ancestor, None)
                all_atts.pop(ancestor, None)
            bodies[path[0]] = blob
            if new_atts:
                all_atts[path[0]] = new_atts
            tree = revtree.stem(tree, limit)
            return DocState(id, 0, tree, {r: b for r, b in bodies.items() if r in tree},
                            {r: a for r, a in all_atts.items() if r in tree} or None)

        return self._put_releasing(id, mutate_atts, keys)[1]

    def _merge_mutation(self, id: str, path: list[str], deleted: bool, blob: bytes) -> Callable[..., Any]:
        """The store mutation that merges a replicated revision without attachments (``merge_replicated``)."""
        limit = self.revs_limit
        max_leaves = self.options.limits.max_leaves

        def mutate(prev: DocState | None) -> DocState | None:
            if prev is None and len(path) == 1:  # a new record of one revision (a first replication): no merge
                revtree.parse_rev(path[0])  # a revision id, or ValueError (as merge_path says)
                return DocState(id, 0, {path[0]: (None, deleted)}, {path[0]: blob}, None)
            _check_leaves(prev, id, path, max_leaves)
            tree, added = revtree.merge_path(prev.tree if prev else {}, path, deleted)
            if not added:
                return None
            bodies = dict(prev.bodies) if prev else {}
            for ancestor in path[1:]:
                bodies.pop(ancestor, None)  # a leaf this path extends is a leaf no more
            bodies[path[0]] = blob
            tree = revtree.stem(tree, limit)
            return DocState(id, 0, tree, {r: b for r, b in bodies.items() if r in tree},
                            _without(prev.atts, path[1:]) if prev is not None else None)

        return mutate

    def merge_replicated_many(self, revisions: list[tuple[str, list[str], bool, bytes]]
                              ) -> list[DocState | Exception | None]:
        """``merge_replicated`` of each ``(id, path, deleted, blob)`` in turn (revisions without attachments),
        written in one batch (one hold of the store's lock: a mirror's ``_bulk_docs`` with ``new_edits=false``).
        Returns, per revision, the record's new state, None if it was known, or the error that refused it
        (:class:`LimitExceeded`, ``ValueError``; the others are written). Each is durable as
        :meth:`merge_replicated`'s when this returns."""
        store = self._check()
        done = store.put_many([(id, self._merge_mutation(id, path, deleted, blob))
                               for id, path, deleted, blob in revisions], fast=len(revisions) >= BULK_LOAD)
        return [r if isinstance(r, Exception) else r[1] for r in done]

    def import_record(self, id: str, tree: revtree.Tree, leaves: dict[str, bytes]) -> int:
        """Merge a whole record made elsewhere (``mynosql import``): its revision tree (parents first; each
        revision one generation after its parent, else InvalidDocument) and the encoded bodies of its leaves (a body is
        not checked), no attachments. The result is what :meth:`put_replicated` of each leaf's
        path in turn gives; a record this database does not hold yet is written in one save. Returns how many
        of ``leaves`` were new here."""
        result = self.import_records([(id, tree, leaves)])[0]
        if isinstance(result, Exception):
            raise result
        return result

    def import_records(self, records: list[tuple[str, revtree.Tree, dict[str, bytes]]]) -> list[int | Exception]:
        """:meth:`import_record` of each record in turn, the new ones written in one batch (one hold of the
        store's lock). Returns, per record, how many of its leaves were new, or the error that refused it (the
        others are written)."""
        store = self._check()
        limit = self.revs_limit
        max_leaves = self.options.limits.max_leaves
        whole: set[int] = set()

        def mutation(k: int, id: str, tree: revtree.Tree, leaves: dict[str, bytes]) -> Callable[..., Any]:
            def mutate(prev: DocState | None) -> DocState | None:
                if len(tree) == 1:  # the usual record: one revision, which has no parent (generations start at 1)
                    for rev, (parent, _deleted) in tree.items():
                        revtree.parse_rev(rev)  # ValueError: not a revision id
                        if parent is not None:
                            raise InvalidDocument(f"record {id!r}: revision {rev!r} does not follow its parent "
                                                  f"{parent!r}")
                else:
                    gens = {rev: revtree.parse_rev(rev)[0] for rev in tree}  # ValueError: not a revision id
                    for rev, (parent, _deleted) in tree.items():
                        if parent is not None and gens.get(parent, -1) + 1 != gens[rev]:
                            raise InvalidDocument(f"record {id!r}: revision {rev!r} does not follow its parent "
                                                  f"{parent!r}")
                if any(leaf not in tree for leaf in leaves):
                    raise InvalidDocument(f"record {id!r}: a leaf is not in its revision tree")
                if prev is not None or len(leaves) > max_leaves:
                    return None  # merged leaf by leaf below, with every check of put_replicated
                if len(tree) == 1 and len(leaves) == 1:  # one revision, the usual record: the tree as it is
                    whole.add(k)
                    return DocState(id, 0, tree, leaves, None)
                out: revtree.Tree = {}
                for leaf in leaves:
                    path = revtree.ancestry(tree, leaf)
                    for i in range(len(path) - 1, -1, -1):
                        if path[i] not in out:  # oldest first: parents before children, as merge_path inserts
                            out[path[i]] = (path[i + 1] if i + 1 < len(path) else None, False)
                parents = {parent for parent, _deleted in out.values()}
                if any(leaf in parents for leaf in leaves):
                    return None  # a "leaf" that another one extends: leaf by leaf below
                for leaf in leaves:
                    out[leaf] = (out[leaf][0], tree[leaf][1])
                out = revtree.stem(out, limit)
                whole.add(k)
                return DocState(id, 0, out, {r: b for r, b in leaves.items() if r in out}, None)
            return mutate

        results: list[int | Exception] = []
        done = store.put_many([(id, mutation(k, id, tree, leaves)) for k, (id, tree, leaves) in enumerate(records)],
                              fast=len(records) >= BULK_LOAD)
        for k, ((id, tree, leaves), outcome) in enumerate(zip(records, done, strict=True)):
            if isinstance(outcome, Exception):
                results.append(outcome)
            elif k in whole:
                results.append(len(leaves))
            else:
                try:
                    results.append(sum(self.put_replicated(id, revtree.ancestry(tree, leaf), tree[leaf][1], blob)
                                       for leaf, blob in leaves.items()))
                except (ValueError, LimitExceeded) as exc:
                    results.append(exc)
        return results

    def revs_diff(self, query: dict[str, list[str]], ancestors: dict[str, list[str]] | None = None,
                  behind: dict[str, list[str]] | None = None) -> dict[str, list[str]]:
        """For each id, the revisions of the list that this database does not have. ``ancestors``, if given, is
        filled with CouchDB's ``possible_ancestors``: per id, the leaves here of a lower generation than a missing
        revision (a sender sends their attachments as stubs: ``atts_since``). ``behind``, if given, with the
        revisions of the list this database has moved past (see :meth:`behind`)."""
        store = self._check()
        out: dict[str, list[str]] = {}
        for id, revs in query.items():
            state = store.get_state(id)
            if behind is not None and state is not None:
                old = state.moved_past(revs)
                if old:
                    behind[id] = old
            missing = revtree.revs_diff(state.tree if state else None, revs)
            if missing:
                out[id] = missing
                if ancestors is not None and state is not None:
                    top = max(revtree.rev_gen(r) for r in missing)
                    found = [r for r in state.bodies if revtree.rev_gen(r) < top and not state.tree[r][1]]
                    if found:
                        ancestors[id] = found
        return out

    def behind(self, query: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
        """Of these (id, revision) pairs, those this database has as a revision that is no longer a leaf (it has a
        later revision of the record), by id. A Peer that pushed such a revision learns that the mirror holds a
        newer one its changes feed may never show it (see PeerSync._push)."""
        store = self._check()
        out: dict[str, list[str]] = {}
        for id, rev in query:
            state = store.get_state(id)
            if state is not None and state.moved_past((rev,)):
                out.setdefault(id, []).append(rev)
        return out

    def local_get(self, id: str) -> dict[str, Any] | None:
        """A ``_local`` document (replication checkpoints): never replicated, never in the changes feed."""
        row = self._check().index.get_local(id)
        if row is None:
            return None
        doc: dict[str, Any] = orjson.loads(row[1])
        doc["_id"] = "_local/" + id
        doc["_rev"] = f"0-{row[0]}"
        return doc

    def local_count(self) -> int:
        """How many ``_local`` documents the database holds."""
        return self._check().index.local_count()

    def local_put(self, id: str, doc: dict[str, Any] | None, *, max_docs: int | None = None) -> str:
        """Write (``doc``) or delete (None) a ``_local`` document; returns its new ``_rev``. ``max_docs``: a new
        one is refused (:class:`LimitExceeded`) once the database holds that many."""
        body = None if doc is None else orjson.dumps({k: v for k, v in doc.items() if k[:1] != "_"})
        return f"0-{self._check().index.put_local(id, body, max_docs)}"

    # -- maintenance and health -------------------------------------------------------------------------------

    def flush(self) -> None:
        """Pack pending records into shard files now (the compactor does this by itself)."""
        self._check().flush()

    def compact(self, progress: Callable[[int, int | None], None] | None = None) -> int:
        """Rewrite shards that hold dead records and delete what is left empty. Returns records moved.

        ``progress(moved, total)`` is called as blocks move (``total``: the live records to move, an upper bound).
        """
        return self._check().compact(progress)

    def verify(self, progress: Callable[[int, int | None], None] | None = None) -> list[str]:
        """Check every checksum and the index. Returns the problems found (an empty list: all is well).

        ``progress(checked, total)`` is called after each block (counts of records).
        """
        return self._check().verify(progress)

    def health(self) -> str | None:
        """Why this database is not healthy now (closed, its compactor stopped or failing), or None. No I/O."""
        return "closed" if self._closed else self._store.problem()

    @property
    def storage_stats(self) -> FlushStats:
        """Counters of the compactor and the write-ahead log since open (for metrics)."""
        return self._store.stats

    def raw_bytes_on_disk(self) -> int:
        """Size of the records on disk before compression (from block headers; nothing is decompressed)."""
        return self._check().raw_bytes_on_disk()

    def index_rows(self) -> int:
        """An upper bound of the records the changes feed holds (for progress bars)."""
        return self._check().index_rows()

    def conflicted(self) -> Iterator[DocState]:
        """The states of every record that has conflicting revisions (a scan)."""
        return (s for s in self._check().iter_states(0) if s.conflicts())
