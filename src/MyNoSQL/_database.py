"""One open database: its directory, lock, remembered configuration and the record operations."""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import re
import sys
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, NamedTuple

import orjson

from ._errors import (
    ConflictError,
    DatabaseClosed,
    DatabaseLocked,
    DocumentNotFound,
    IndexNotFound,
    InvalidDocument,
    MyNoSQLError,
    StorageError,
)
from ._options import Options
from .docs import revtree
from .docs.codec import copy_plan, decode_value, encode_body, loads_body
from .docs.revtree import DocState
from .storage.fileutil import atomic_write, sweep_temp_files
from .storage.store import Store, secondary_value

if TYPE_CHECKING:
    from .replication.sync import Sync

log = logging.getLogger("MyNoSQL")

CONFIG_FORMAT = 1
MAX_ID_BYTES = 1024
MODES = {"peer": "Peer", "mirror": "Mirror"}
DEFAULT_PORT = 8800
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,199}$")
_TOMBSTONE_BODY = b"{}"
# readdoc keeps the records it reads more than once, of up to this many JSON bytes, decoded while their state is
# in RAM (about 3x the RAM of the JSON; the record cache's count bounds it): later reads copy that memo.
_DECODED_MAX = 1024


class _IdSource:
    """uuid4 hex strings, made 256 at a time from one getrandom call; the pool is emptied in a forked child."""

    _VERSION = bytes((b & 0x0F) | 0x40 for b in range(256))  # byte 6 of a uuid4: version 4
    _VARIANT = bytes((b & 0x3F) | 0x80 for b in range(256))  # byte 8: the RFC 4122 variant

    def __init__(self) -> None:
        self._ids: collections.deque[str] = collections.deque()
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._ids.clear)

    def __call__(self) -> str:
        try:
            return self._ids.popleft()  # atomic: threads never get the same id, and need no lock
        except IndexError:
            return self._refill()

    def _refill(self) -> str:
        raw = bytearray(os.urandom(4096))
        raw[6::16] = raw[6::16].translate(self._VERSION)
        raw[8::16] = raw[8::16].translate(self._VARIANT)
        text = raw.hex()
        self._ids.extend([text[i : i + 32] for i in range(32, len(text), 32)])  # two threads may both refill
        return text[:32]


new_id = _IdSource()


class Change(NamedTuple):
    """One entry of the changes feed: the newest revision of a record changed after ``since``."""

    seq: int
    id: str
    rev: str
    deleted: bool


def validate_id(id: Any) -> str:
    if type(id) is not str:
        if isinstance(id, str):
            return validate_id(str(id))
        raise InvalidDocument(f"a record id must be a string, not {type(id).__name__}")
    if not id:
        raise InvalidDocument("a record id must not be empty")
    if "\x00" in id:
        raise InvalidDocument("a record id must not contain NUL")
    if len(id) > MAX_ID_BYTES // 4 and len(id.encode("utf-8", "surrogatepass")) > MAX_ID_BYTES:
        raise InvalidDocument(f"a record id must be at most {MAX_ID_BYTES} bytes in UTF-8")
    if id[0] == "_":
        raise InvalidDocument(f"record ids starting with '_' are reserved (CouchDB's rule): {id[:40]!r}")
    try:
        id.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidDocument("a record id must be valid Unicode (no lone surrogates)") from exc
    return id


def validate_db_name(name: Any) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name) or name.endswith("."):
        raise InvalidDocument(
            f"database name {name!r} is not valid: use 1-200 letters, digits, '_', '-' or '.', "
            "starting with a letter or digit"
        )
    return name


def normalize_peer_url(url: Any) -> str:
    if not isinstance(url, str):
        raise InvalidDocument(f"a mirror URL must be a string, not {type(url).__name__}")
    parts = urllib.parse.urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidDocument(f"not a mirror URL (expected http://host:port or https://...): {url!r}")
    try:
        parts.port  # noqa: B018 - validates the port
    except ValueError as exc:
        raise InvalidDocument(f"bad port in mirror URL {url!r}") from exc
    path = parts.path.rstrip("/")
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def redact_url(url: str) -> str:
    """A URL without user and password: what logs, errors, status and /_mirrors show."""
    p = urllib.parse.urlsplit(url)
    host = p.hostname or ""
    netloc = (f"[{host}]" if ":" in host else host) + (f":{p.port}" if p.port else "")
    return urllib.parse.urlunsplit((p.scheme, netloc, p.path, "", ""))


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
            self.config = self._load_config()
            self.store = Store(self.path, options)
            self.store.sidx_fields = tuple(self.config["indexes"])
        except BaseException:
            self._lock.release()
            raise
        from .server.auth import Users

        self.users = Users(self.path / "users.json")
        self._closed = False
        self.sync: Sync | None = None
        self._sync_lock = threading.Lock()
        self.sync_error: str | None = None
        try:
            self._restart_sync()
        except (MyNoSQLError, OSError) as exc:
            # The records are usable all the same; the reason is logged and shown by status().
            self.sync_error = f"{type(exc).__name__}: {exc}"
            log.error("database %s: background replication/serving did not start: %s", name, exc)

    # -- lifecycle --------------------------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once ``close`` was called."""
        return self._closed

    def _check(self) -> Store:
        if self._closed:
            raise DatabaseClosed(f"database {self.name!r} is closed")
        return self.store

    def close(self) -> None:
        """Flush pending records into shards, stop background work and release the lock. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            with self._sync_lock:
                if self.sync is not None:
                    self.sync.stop(final_push=self.options.final_push)
                    self.sync = None
            self.store.close()
        finally:
            self._lock.release()

    def __enter__(self) -> Database:
        """``with`` closes the database at the end."""
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- configuration (remembered in config.json) ------------------------------------------------------------

    def _load_config(self) -> dict[str, Any]:
        path = self.path / "config.json"
        base: dict[str, Any] = {"format": CONFIG_FORMAT, "mode": "Peer", "peers": [], "indexes": [],
                                "host": "127.0.0.1", "port": DEFAULT_PORT, "advertise": None, "certfile": None,
                                "keyfile": None}
        if path.exists():
            try:
                loaded = orjson.loads(path.read_bytes())
                if not isinstance(loaded, dict):
                    raise ValueError("not an object")
            except (ValueError, orjson.JSONDecodeError) as exc:
                from ._errors import CorruptionError

                raise CorruptionError(f"{path} is damaged: {exc}", path=str(path)) from exc
            base.update(loaded)
        if "uuid" not in base:
            base["uuid"] = new_id()
            self.config = base
            self._save_config()
        return base

    def _save_config(self) -> None:
        atomic_write(self.path / "config.json", orjson.dumps(self.config, option=orjson.OPT_INDENT_2))

    def setdbmode(self, mode: Any) -> bool:
        """``"Peer"`` or ``"Mirror"`` (any case), remembered. Unknown mode: False. Starts or stops serving."""
        self._check()
        norm = MODES.get(mode.lower()) if isinstance(mode, str) else None
        if norm is None:
            return False
        with self._config_lock:
            before = self.config["mode"]
            if before != norm:
                self.config["mode"] = norm
                self._save_config()
        if before != norm:
            try:
                self._restart_sync()
            except BaseException:
                with self._config_lock:  # not remembered: the next opendb must not fail the same way
                    self.config["mode"] = before
                    self._save_config()
                self._restart_sync()
                raise
        return True

    def setlisten(self, host: str = "127.0.0.1", port: int = DEFAULT_PORT, *, advertise: str | None = None,
                  certfile: str | None = None, keyfile: str | None = None) -> None:
        """Where this database serves as a mirror (remembered): host, port (0: any free port), the URL other
        nodes should use for it (default ``http(s)://host:port``), and a TLS certificate and key (PEM files;
        then it serves ``https://``). Serving beyond loopback needs users (``adduser``)."""
        self._check()
        if not isinstance(host, str) or not host or not isinstance(port, int) or not 0 <= port < 65536:
            raise InvalidDocument("setlisten needs a host name and a port number (0-65535)")
        if (certfile is None) != (keyfile is None):
            raise InvalidDocument("TLS needs both certfile and keyfile")
        with self._config_lock:
            self.config.update(host=host, port=port, advertise=advertise and normalize_peer_url(advertise),
                               certfile=certfile and str(Path(certfile).resolve()),
                               keyfile=keyfile and str(Path(keyfile).resolve()))
            self._save_config()
        if self.config["mode"] == "Mirror":
            self._restart_sync()

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

    @property
    def server_url(self) -> str | None:
        """The URL this database serves on (Mirror mode), or None."""
        return self.sync.server_url if self.sync else None

    def _restart_sync(self) -> None:
        self.sync_error = None
        with self._sync_lock:
            if self.sync is not None:
                self.sync.stop(final_push=0)
                self.sync = None
            if os.environ.get("MYNOSQL_SYNC", "1") == "0" or not self.options.background_sync:
                return  # background replication and serving switched off (tests, air-gapped runs)
            if self.config["mode"] == "Mirror" or self.config["peers"]:
                from .replication.sync import Sync

                sync = Sync(self)
                sync.start()
                self.sync = sync

    def learn_mirrors(self, urls: list[str], *, via: str) -> None:
        """Remember mirrors that a known mirror (``via``) lists; keeps the credentials of ``via`` for them.

        Mirrors learned through an ``https://`` mirror must be ``https://`` too: a plain-HTTP one is skipped
        (credentials and records would travel in clear text because of what a mirror said)."""
        creds = urllib.parse.urlsplit(via)
        added = []
        for url in urls:
            try:
                norm = normalize_peer_url(url)
            except InvalidDocument:
                continue
            p = urllib.parse.urlsplit(norm)
            if creds.scheme == "https" and p.scheme != "https":
                log.warning("mirror %s lists %s, a plain-HTTP address: not used (it would downgrade TLS)",
                            redact_url(via), redact_url(norm))
                continue
            if creds.username and not p.username:
                norm = urllib.parse.urlunsplit((p.scheme, f"{creds.netloc.rpartition('@')[0]}@{p.netloc}",
                                                p.path, "", ""))
            added.append(norm)
        with self._config_lock:
            own = {self.config.get("advertise"), self.server_url}
            known = {redact_url(u) for u in self.config["peers"]}
            new = [u for u in added if redact_url(u) not in known and redact_url(u) not in own]
            if new:
                self.config["peers"] = [*self.config["peers"], *dict.fromkeys(new)]
                self._save_config()

    def getdbmode(self) -> str:
        """``"Peer"`` or ``"Mirror"``."""
        self._check()
        return str(self.config["mode"])

    def addpeer(self, url: str) -> bool:
        """Remember a mirror URL (normalised; duplicates are ignored), learn its list of mirrors, and start
        replicating with it in the background. Returns True (also when the mirror cannot be reached now)."""
        self._check()
        norm = normalize_peer_url(url)
        with self._config_lock:
            is_new = norm not in self.config["peers"]
            if is_new:
                self.config["peers"] = [*self.config["peers"], norm]
                self._save_config()
        if self.sync is None:
            self._restart_sync()  # the running loops pick up new mirrors from the config by themselves
        return True

    def status(self) -> dict[str, Any]:
        """Mode, records, pending pushes and, per mirror: reachable, last success/error, pending, lag."""
        store = self._check()
        sync = self.sync
        return {"name": self.name, "mode": self.config["mode"], "records": len(self), "seq": store.seq,
                "server": self.server_url, "mirrors": sync.status() if sync else {},
                "sync_error": self.sync_error, "compactor_error": store.stats.last_error}

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

        store.listeners.append(listener)

        def unwatch() -> None:
            with contextlib.suppress(ValueError):
                store.listeners.remove(listener)

        return unwatch

    def peers(self) -> list[str]:
        """The mirrors this database knows (without credentials)."""
        self._check()
        return [redact_url(u) for u in self.config["peers"]]

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
        limit = self.options.revs_limit

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

    def readdoc(self, id: str) -> dict[str, Any]:
        """The winning revision of ``id`` as a new dict; a peer asks a mirror for a record it does not hold."""
        if self._closed:
            raise DatabaseClosed(f"database {self.name!r} is closed")
        state = self.store.get_state(id if type(id) is str else validate_id(id))
        if state is None:
            state = self._fetch_remote(id)
            if state is None:
                raise DocumentNotFound(id)
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

    def _fetch_remote(self, id: str) -> DocState | None:
        """A peer reading a record it does not hold asks a mirror, for at most ``read_timeout`` seconds."""
        sync = self.sync
        if sync is None or self.config["mode"] == "Mirror" or not isinstance(id, str):
            return None
        try:
            sync.run(sync.fetch(validate_id(id)), timeout=self.options.read_timeout)
        except (TimeoutError, MyNoSQLError, OSError):
            return None
        return self.store.get_state(id)

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
            return DocState(id, 0, revtree.stem(tree2, self.options.revs_limit), bodies)

        store.put(id, mutate)
        return {"id": id, "rev": tombstone, "deleted": True}

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
            if name in self.config["indexes"]:
                return False
            with store._flush_lock:
                rows = []
                for s in store.iter_states(0):
                    v = secondary_value(s, name)
                    if v is not None:
                        rows.append((s.id, v))
                store.index.set_secondary(name, rows)
                self.config["indexes"] = [*self.config["indexes"], name]
                self._save_config()
                store.sidx_fields = tuple(self.config["indexes"])
        return True

    def indexdrop(self, name: str) -> bool:
        """Drop the index on field ``name``. False if there was none."""
        store = self._check()
        with self._config_lock:
            if name not in self.config["indexes"]:
                return False
            with store._flush_lock:
                self.config["indexes"] = [n for n in self.config["indexes"] if n != name]
                store.sidx_fields = tuple(self.config["indexes"])
                self._save_config()
                store.index.drop_secondary(name)
        return True

    def indexes(self) -> list[str]:
        """The fields indexed by ``indexadd``."""
        self._check()
        return list(self.config["indexes"])

    def indexread(self, name: str) -> dict[str, Any]:
        """``{id: value of field name}`` for every record that has the field."""
        store = self._check()
        if name not in self.config["indexes"]:
            raise IndexNotFound(f"no index on field {name!r}; create it with indexadd({name!r})")
        with store.lock:
            pending = dict(store._frozen)
            pending.update(store._active)
        out: dict[str, Any] = {i: decode_value(orjson.loads(v)) for i, v in store.index.secondary(name)}
        for id, s in pending.items():
            v = secondary_value(s, name)
            if v is None:
                out.pop(id, None)
            else:
                out[id] = decode_value(orjson.loads(v))
        return out

    def pull(self, url: str, *, timeout: float = 60.0) -> dict[str, Any]:
        """Copy every record of the database at ``url`` (CouchDB, PouchDB Server or a mirror; a server URL
        without a path means the database of this one's name there) that this one lacks, now, whatever the
        mode. Returns counts (``docs_read``, ``docs_written``, ``errors``...)."""
        from .replication.oneshot import replicate_once
        from .replication.sync import db_url

        self._check()
        return replicate_once(db_url(normalize_peer_url(url), self.name), self, timeout=timeout)

    def push(self, url: str, *, timeout: float = 60.0) -> dict[str, Any]:
        """Copy every record of this database that the one at ``url`` lacks, now (creating it if needed)."""
        from .replication.oneshot import replicate_once
        from .replication.sync import db_url

        self._check()
        return replicate_once(self, db_url(normalize_peer_url(url), self.name), timeout=timeout)

    # -- replication primitives (the replicator and the mirror server use these) -----------------------------

    def state(self, id: str) -> DocState | None:
        """Everything stored about ``id`` (revision tree and leaf bodies), or None."""
        return self._check().get_state(id)

    def put_replicated(self, id: str, path: list[str], deleted: bool, blob: bytes) -> bool:
        """Merge a revision received by replication (``new_edits=false``). Returns False if it was known.

        ``path`` is the revision and its ancestors, newest first, as in ``_revisions``; ``blob`` its encoded body.
        """
        return self.merge_replicated(id, path, deleted, blob) is not None

    def merge_replicated(self, id: str, path: list[str], deleted: bool, blob: bytes) -> DocState | None:
        """``put_replicated`` returning the record's new state (its seq and tree), or None if it was known."""
        store = self._check()
        limit = self.options.revs_limit

        def mutate(prev: DocState | None) -> DocState | None:
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

    def local_put(self, id: str, doc: dict[str, Any] | None) -> str:
        body = None if doc is None else orjson.dumps({k: v for k, v in doc.items() if k[:1] != "_"})
        return f"0-{self._check().index.put_local(id, body)}"

    # -- maintenance ------------------------------------------------------------------------------------------

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
