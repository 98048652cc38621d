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
import hashlib
import logging
import os
import re
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, NamedTuple

import orjson

from .config import MODES, DatabaseConfig, load_config, save_config
from .credentials import Users
from .errors import (
    ConflictError,
    DatabaseClosed,
    DatabaseLocked,
    DocumentNotFound,
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
from .records import revtree
from .records.codec import copy_plan, decode_value, encode_body, loads_body
from .records.ids import new_id, validate_id
from .records.mango import compile_selector
from .records.revtree import DocState
from .storage.fileutil import sweep_temp_files
from .storage.store import FlushStats, Listener, Store

log = logging.getLogger("MyNoSQL")

DEFAULT_PORT = 8800
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.$()+%-]{0,199}$")
_TOMBSTONE_BODY = b"{}"
# readdoc keeps the records it reads more than once, of up to this many JSON bytes, decoded while their state is
# in RAM (about 3x the RAM of the JSON; the record cache's count bounds it): later reads copy that memo.
_DECODED_MAX = 1024

ReadThrough = Callable[[str], "DocState | None"]

__all__ = ["Change", "Database", "default_location", "new_id", "validate_db_name", "validate_id"]


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


class _FileLock:
    """An exclusive OS lock on ``LOCK``: released by the OS if the process dies."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._f: IO[bytes] | None = None

    def acquire(self) -> None:
        f = open(self.path, "a+b")  # noqa: SIM115 - held open for the database's lifetime
        try:
            if sys.platform == "win32":  # pragma: no cover
                import msvcrt

                msvcrt.locking(f.fileno(), msvcrt.LK_NBLCK, 1)
            else:
                import fcntl

                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            f.close()
            raise DatabaseLocked(
                f"database {self.path.parent} is open in another process or handle; close it there first"
            ) from exc
        self._f = f

    def release(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


class Database:
    """An open database. Thread-safe. Get one from ``MyNoSQL.opendb``."""

    def __init__(self, location: Path, name: str, options: Options) -> None:
        self.name = validate_db_name(name)
        self.options = options
        self.path = Path(location) / name
        self._closed = True
        self._read_through: ReadThrough | None = None
        try:
            location = Path(location)
            if not location.exists():
                location.mkdir(parents=True, mode=0o700)  # the data directory: owner only
            if not self.path.exists():
                self.path.mkdir(mode=0o700)
        except OSError as exc:
            raise StorageError(exc.errno, f"cannot create database directory {self.path}: {exc.strerror}") from exc
        self._lock = _FileLock(self.path / "LOCK")
        self._lock.acquire()
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
        return self._store

    def close(self) -> None:
        """Pack pending records into shards, join the compactor and release the lock. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._read_through = None
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
        """
        store = self._check()

        def listener(new: DocState, prev: DocState | None) -> None:
            win = new.winner
            try:
                callback(Change(new.seq, new.id, win, new.tree[win][1]))
            except Exception:
                log.exception("watch callback %r failed", callback)

        return store.add_listener(listener)

    # -- records ----------------------------------------------------------------------------------------------

    def savedoc(self, doc: dict[str, Any]) -> dict[str, Any]:
        """Save a record; see :meth:`MyNoSQL.savedoc` for the rules and the durability contract."""
        store = self._check()
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
        if len(blob) > self.options.max_doc_bytes:
            raise InvalidDocument(
                f"record {id!r} is {len(blob)} bytes encoded, over the limit of {self.options.max_doc_bytes}"
            )
        limit = self.revs_limit

        def mutate(prev: DocState | None) -> DocState | None:
            if prev is None:
                if rev is not None:
                    raise ConflictError(f"record {id!r} does not exist, so {rev!r} is not its current revision",
                                        id=id)
                new = revtree.new_rev(None, False, blob)
                return DocState(id, 0, {new: (None, False)}, {new: blob})
            tree = prev.tree
            win = prev.winner
            if rev is None:
                if not tree[win][1]:
                    raise ConflictError(
                        f"record {id!r} already exists (rev {win}); pass its current rev to update it",
                        id=id, current_rev=win)
                parent = win  # re-creating a deleted record continues its history
            elif rev in prev.bodies and not tree[rev][1]:
                parent = rev
                if prev.bodies[rev] == blob:
                    return None  # same content: no new revision
            else:
                raise ConflictError(
                    f"record {id!r} has revision {win}, not {rev}: it was changed since you read it",
                    id=id, current_rev=win)
            new = revtree.new_rev(parent, False, blob)
            tree2 = dict(tree)
            tree2[new] = (parent, False)
            bodies = dict(prev.bodies)
            del bodies[parent]
            bodies[new] = blob
            return DocState(id, 0, revtree.stem(tree2, limit), bodies)

        prev, state = store.put(id, mutate, fresh=fresh)
        if decoded is not None and state is not None:
            win = state.winner
            if state.bodies[win] is blob:  # the saved revision won: answer with the copy encode_body decoded
                return {"id": id, "rev": win, **decoded}
        data = (state or prev).doc_json  # type: ignore[union-attr]  # one of them exists
        assert data is not None
        return loads_body(data)  # a new dict, nothing shared with the caller or the store

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
            return DocState(id, 0, revtree.stem(tree2, self.revs_limit), bodies)

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
            return DocState(id, 0, revtree.stem(tree2, limit), bodies)

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
            for r in gone:
                tomb = revtree.new_rev(r, True, _TOMBSTONE_BODY)
                tree2[tomb] = (r, True)
                del bodies[r]
                bodies[tomb] = _TOMBSTONE_BODY
            if bodies[win] != blob:
                new = revtree.new_rev(win, False, blob)
                tree2[new] = (win, False)
                del bodies[win]
                bodies[new] = blob
            elif not gone:
                return None  # nothing to change
            return DocState(id, 0, revtree.stem(tree2, limit), bodies)

        prev, state = store.put(id, mutate)
        data = (state or prev).doc_json  # type: ignore[union-attr]  # one of them exists
        assert data is not None
        return loads_body(data)

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

    def on_change(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(new_state, previous_state)`` after every write (in the writing thread; keep it short).
        Returns the function that removes it. For the replicator and the server; applications use ``watch``."""
        return self._check().add_listener(listener)

    def put_replicated(self, id: str, path: list[str], deleted: bool, blob: bytes) -> bool:
        """Merge a revision received by replication (``new_edits=false``). Returns False if it was known.

        ``path`` is the revision and its ancestors, newest first, as in ``_revisions``; ``blob`` its encoded body.
        """
        return self.merge_replicated(id, path, deleted, blob) is not None

    def merge_replicated(self, id: str, path: list[str], deleted: bool, blob: bytes) -> DocState | None:
        """``put_replicated`` returning the record's new state (its seq and tree), or None if it was known."""
        store = self._check()
        limit = self.revs_limit
        max_leaves = self.options.limits.max_leaves

        def mutate(prev: DocState | None) -> DocState | None:
            # A path grafted on anything but a leaf (its newest revision the tree knows) is one more leaf: bounded,
            # or a replicator could make a record of so many conflicting leaves that no batch could carry it
            # (Limits.max_leaves). Checked first: refusing costs no copy of the tree. (Only leaves keep a body.)
            if prev is not None and len(prev.bodies) >= max_leaves and path and path[0] not in prev.tree \
                    and next((r for r in path[1:] if r in prev.tree), None) not in prev.bodies:
                raise LimitExceeded(f"record {id!r} has {len(prev.bodies)} leaf revisions (conflicting branches), "
                                    "its limit", limit="max_leaves")
            tree, added = revtree.merge_path(prev.tree if prev else {}, path, deleted)
            if not added:
                return None
            bodies = dict(prev.bodies) if prev else {}
            for ancestor in path[1:]:
                bodies.pop(ancestor, None)  # a leaf this path extends is a leaf no more
            bodies[path[0]] = blob
            tree = revtree.stem(tree, limit)
            return DocState(id, 0, tree, {r: b for r, b in bodies.items() if r in tree})

        _prev, new = store.put(id, mutate)
        return new

    def revs_diff(self, query: dict[str, list[str]]) -> dict[str, list[str]]:
        """For each id, the revisions of the list that this database does not have."""
        store = self._check()
        out: dict[str, list[str]] = {}
        for id, revs in query.items():
            state = store.get_state(id)
            missing = revtree.revs_diff(state.tree if state else None, revs)
            if missing:
                out[id] = missing
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
