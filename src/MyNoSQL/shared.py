"""Several processes on one database: the first to open it owns it and serves the others over a Unix socket.

``MyNoSQL().opendb(name)`` (:func:`open_node`) takes the OS lock on the database's ``LOCK`` file. The process that
gets it is the **owner**: it opens the store as a single process always did (write-ahead log, compactor,
replication, serving as a mirror) and also serves the database on the Unix socket ``SOCKET`` in its folder
(:class:`OwnerServer`). Any other process that opens the database is a **client** (:class:`ClientNode`, a
:class:`~MyNoSQL.node.Node` to its application): it keeps no store, and sends each call to the owner but its
saves: those it appends to the owner's write-ahead log itself, which the owner shares from the first client on
(:mod:`MyNoSQL.storage.sharedlog`; saves the log cannot take, as an update of a record in the shards, go to the
owner too).

The protocol: frames of a little-endian header (JSON length, raw length), orjson JSON, then raw bytes (a record's
encoded body, never base64). Nothing is pickled: records travel in the codec's tagged JSON
(:mod:`MyNoSQL.records.codec`), errors as the name of a class of :mod:`MyNoSQL.errors` and its arguments.
A client opens one socket per thread that calls at once, plus a lifeline that ends when the owner does.

Reads: a client keeps the records it read (``Options.cache_docs``). The process that writes a record notes it
in a ring in the mapped file ``CHANGED`` (the hash of its id) from the writing thread, *before* the write is
acknowledged (under the shared log's lock). Before a ``readdoc`` a client compares the ring's head with where it
stood (a read of mapped memory, no system call) and drops the records noted since. So no process reads a record
older than a save that returned anywhere. ``watch`` in a client reads the changes feed when the ring moved (every
10 ms at most).

Takeover: when the owner exits or is killed, the OS releases its lock and closes its sockets. Each client sees
the end of its sockets; the first to take the lock opens the store itself (recovering the write-ahead log: every
acknowledged save is in it), starts the owner's services (replication, the compactor) and serves the others,
which reconnect (bounded backoff, at most ``TAKEOVER_WAIT`` seconds). A call cut short by the owner's death is
sent again: a save carries the revision it wants (revisions are a hash of the parent and the body), so a save
that the dead owner had written already counts as done, not as a conflict.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import mmap
import os
import random
import select
import socket
import struct
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import orjson

from . import errors
from .config import DatabaseConfig, load_config
from .database import Change, Database, FileLock, prepare_folder, prepare_save, save_mutation, validate_db_name
from .errors import ConflictError, DatabaseClosed, DatabaseLocked, DocumentNotFound, InvalidDocument, MyNoSQLError
from .node import Node
from .options import Options
from .query import IndexInfo
from .records import revtree
from .records.codec import copy_plan, decode_value, encode_body, encode_value, loads_body
from .records.ids import validate_id
from .records.revtree import DocState
from .storage.sharedlog import Fallback, LogWriter
from .storage.sharedlog import id_hash_ring as id_hash
from .storage.store import BACKLOG, SLOWDOWN, SOFT_BACKLOG

if TYPE_CHECKING:
    from .storage.store import FlushStats, Listener, Store

log = logging.getLogger("MyNoSQL")
T = TypeVar("T")

SOCKET = "SOCKET"  # the owner's Unix socket, in the database folder (owner-only permissions, as the folder)
CHANGED = "CHANGED"  # the ring of changed ids that the owner writes and its clients map (see _Ring)
OPEN_WAIT = 1.0  # seconds opendb tries to reach the process that has the database open (or to take the lock)
TAKEOVER_WAIT = 30.0  # seconds a client tries to reach a new owner (or become it) once its owner is gone
HELLO_WAIT = 60.0  # seconds an owner may take to answer a new connection (it may be recovering its log)
CALL_WAIT = 600.0  # the longest one call may take (a compact, a pull) before its owner counts as hung
WATCH_EVERY = 0.01  # seconds between two looks of a watching client at the ring (then it reads the changes feed)
RING = 1 << 14  # entries of the ring: a client that fell further behind drops its whole cache
PAGE = 1000  # changes or records per trip of an iteration
GIVE_WAY = 0.002  # seconds the owner's own writer waits at most for a serving thread to take a waiting request
MAX_FRAME = 1 << 30
_HEAD = struct.Struct("<II")
_Q = struct.Struct("<q")
_LEN = struct.Struct("<I")
_AT = struct.Struct("<qq")  # the ring's head: entries written so far, and the owner's epoch (random at its start)
_SLOT = struct.Struct("<qQ")  # an entry: its number, the hash of the record id
_RING_BYTES = _AT.size + RING * _SLOT.size
_DECODED_MAX = 1024  # a client keeps a cached record of up to this many JSON bytes decoded (as Database.readdoc)
_TOMBSTONE_BODY = b"{}"

__all__ = ["ClientNode", "OwnerServer", "open_node"]


# -- frames ------------------------------------------------------------------------------------------------------

def _send(sock: socket.socket, msg: Any, raw: bytes = b"") -> None:
    data = orjson.dumps(msg)
    sock.sendall(b"".join((_HEAD.pack(len(data), len(raw)), data, raw)))


def _recv(sock: socket.socket) -> tuple[Any, bytes]:
    buf = sock.recv(65536)
    while len(buf) < 8:
        more = sock.recv(65536)
        if not more:
            raise EOFError
        buf += more
    jl, rl = _HEAD.unpack_from(buf)
    n = 8 + jl + rl
    if jl > MAX_FRAME or rl > MAX_FRAME:
        raise EOFError
    if len(buf) < n:
        parts = [buf]
        got = len(buf)
        while got < n:
            more = sock.recv(min(n - got, 1 << 20))
            if not more:
                raise EOFError
            parts.append(more)
            got += len(more)
        buf = b"".join(parts)
    return orjson.loads(buf[8:8 + jl]), buf[8 + jl:n]


def _address(folder: Path) -> tuple[str, int | None]:
    """The socket's address, and a directory descriptor to close after use: a path past the ~107 bytes a Unix
    socket address holds is reached through ``/proc/self/fd`` (Linux)."""
    path = str(folder / SOCKET)
    if len(os.fsencode(path)) < 100:
        return path, None
    fd = os.open(folder, os.O_RDONLY)
    return f"/proc/self/fd/{fd}/{SOCKET}", fd


def listen(folder: Path) -> socket.socket | None:
    """The owner's listening socket (its lock held: a socket file left there is a dead owner's). None, with a
    warning, where Unix sockets do not work: the database then opens for this process alone."""
    if not hasattr(socket, "AF_UNIX"):  # pragma: no cover - Windows
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    fd = None
    try:
        addr, fd = _address(folder)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(addr)
        sock.bind(addr)
        sock.listen(64)
    except OSError as exc:
        sock.close()
        log.warning("database %s: no Unix socket here (%s): other processes cannot open it while this one has it",
                    folder, exc)
        return None
    finally:
        if fd is not None:
            os.close(fd)
    sock.settimeout(1.0)
    return sock


def _map_ring(folder: Path, *, write: bool) -> mmap.mmap:
    """The ``CHANGED`` file, mapped: the owner notes there each record it changes (the hash of its id) before the
    change is acknowledged; a client compares the head with where it stood, without a system call, and drops the
    records named since from its cache. On x86 and ARM64 alike the owner writes an entry, then the head: a client
    that reads the head reads the entries before it (Python's mmap copies are ordered by the GIL's barriers)."""
    fd = os.open(folder / CHANGED, (os.O_RDWR | os.O_CREAT) if write else os.O_RDONLY, 0o600)
    try:
        if write and os.fstat(fd).st_size < _RING_BYTES:
            os.ftruncate(fd, _RING_BYTES)
        return mmap.mmap(fd, _RING_BYTES, access=mmap.ACCESS_WRITE if write else mmap.ACCESS_READ)
    finally:
        os.close(fd)


def _ring_note(ring: mmap.mmap, h: int) -> None:
    """Note the record whose id hashes to ``h`` (``id_hash``) in the ring (the caller serialises the notes: the
    owner's write lock, and the shared log's lock once other processes append too): the entry, then the head."""
    n = _Q.unpack_from(ring, 0)[0]
    _SLOT.pack_into(ring, _AT.size + (n % RING) * _SLOT.size, n, h)
    _Q.pack_into(ring, 0, n + 1)


def _backlog_wait() -> None:
    """A save waits while the owner's compactor is behind (more than BACKLOG flushes' worth not in shards), and
    once after it while more than SOFT_BACKLOG are."""
    time.sleep(SLOWDOWN)


def _dial(folder: Path, kind: str) -> tuple[socket.socket, dict[str, Any]]:
    """A connection to the owner, introduced (``kind``: "call", or "watch": the lifeline); raises OSError."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    fd = None
    try:
        addr, fd = _address(folder)
        sock.connect(addr)
        sock.settimeout(HELLO_WAIT)
        _send(sock, ["hello", kind, os.getpid()])
        hello, _ = _recv(sock)
        if not isinstance(hello, dict) or "pid" not in hello:
            raise EOFError
    except BaseException:
        sock.close()
        raise
    finally:
        if fd is not None:
            os.close(fd)
    sock.settimeout(CALL_WAIT)
    return sock, hello


def _error_reply(exc: Exception) -> list[Any]:
    attrs = {k: v for k in ("id", "current_rev", "deleted", "rev", "path", "limit")
             if isinstance(v := getattr(exc, k, None), (str, bool, int))}
    args = [a for a in exc.args if isinstance(a, (str, int, float, bool))]
    return [1, type(exc).__name__, args or [str(exc)], attrs]


def _rebuild(reply: list[Any]) -> Exception:
    name, args, attrs = reply[1], reply[2], reply[3]
    cls = getattr(errors, name, None)
    if not (isinstance(cls, type) and issubclass(cls, MyNoSQLError)):
        cls = {"TypeError": TypeError, "ValueError": ValueError, "KeyError": KeyError}.get(name)
        if cls is None:
            return MyNoSQLError(f"{name}: {' '.join(map(str, args))}")
    exc: Exception = cls.__new__(cls)
    exc.args = tuple(args)
    for k, v in attrs.items():
        setattr(exc, k, v)
    return exc


# -- what the owner does for a call (also what a client that took over does for a call it had to repeat) ---------

def _landed(state: DocState | None, parent: str | None, deleted: bool, blob: bytes) -> str | None:
    """The revision a repeated write would make, if the first attempt made it already."""
    if state is None:
        return None
    tree = state.tree
    if parent is not None:
        rev = revtree.new_rev(parent, deleted, blob)
        return rev if rev in tree else None
    for p in (None, *(r for r, (_, d) in tree.items() if d)):
        rev = revtree.new_rev(p, deleted, blob)
        if rev in tree and tree[rev][0] == p:
            return rev
    return None


def _save(node: Database, id: str, rev: str | None, blob: bytes, fresh: bool, retry: bool) -> tuple[Any, bytes]:
    """``[winning rev, True]`` if the saved body won (the caller has it), else ``[rev, False]`` and its JSON."""
    try:
        prev, state = node.put_encoded(id, rev, blob, fresh and not retry)
    except ConflictError:
        done = _landed(node.state(id), rev, False, blob) if retry else None
        if done is None:
            raise
        return [done, True], b""
    st = state or prev
    assert st is not None
    win = st.winner
    if st.bodies.get(win) == blob:
        return [win, True], b""
    data = st.doc_json
    assert data is not None
    return [win, False], data


def _delete(node: Database, id: str, rev: str, retry: bool) -> dict[str, Any]:
    try:
        return node.deletedoc(id, rev)
    except (ConflictError, DocumentNotFound):
        done = _landed(node.state(validate_id(id)), rev, True, _TOMBSTONE_BODY) if retry else None
        if done is None:
            raise
        return {"id": id, "rev": done, "deleted": True}


def _changes_page(node: Database, since: int) -> list[list[Any]]:
    return [[c.seq, c.id, c.rev, c.deleted] for c in itertools.islice(Database.changes(node, since), PAGE)]


def _docs_page(node: Database, since: int) -> tuple[int, bytes]:
    """The records changed after ``since`` (at most PAGE states read): the last seq read, and a JSON list."""
    last, out = since, []
    for s in itertools.islice(node.states_since(since), PAGE):
        last = s.seq
        data = s.doc_json
        if data is not None:
            out.append(data)
    return last, b"[" + b",".join(out) + b"]"


def _states_page(node: Database, since: int) -> tuple[int, bytes]:
    """The states changed after ``since`` (at most PAGE): the last seq, and each state's bytes after its length."""
    last, out = since, list[bytes]()
    for s in itertools.islice(Database.states_since(node, since), PAGE):
        last = s.seq
        data = s.to_bytes()
        out += (_LEN.pack(len(data)), data)
    return last, b"".join(out)


def _unpack_states(data: bytes) -> Iterator[DocState]:
    pos = 0
    while pos < len(data):
        (n,) = _LEN.unpack_from(data, pos)
        yield DocState.from_bytes(data[pos + 4:pos + 4 + n])
        pos += 4 + n


_CALLS: dict[str, Callable[..., Any]] = {
    "conflicts": Node.conflicts, "len": Node.__len__, "contains": Node.__contains__, "seq": lambda n: n.seq,
    "deleted_count": Node.deleted_count, "status": Node.status, "verify": lambda n: n.verify(),
    "compact": lambda n: n.compact(), "flush": Node.flush, "setdbmode": Node.setdbmode, "getdbmode": Node.getdbmode,
    "addpeer": Node.addpeer, "peers": Node.peers,
    "setlisten": lambda n, host, port, advertise: n.setlisten(host, port, advertise=advertise),
    "indexadd": Node.indexadd, "indexdrop": Node.indexdrop, "indexread": Node.indexread,
    "createindex": lambda n, fields, name, pfs, wait: n.createindex(fields, name, pfs, wait=wait),
    "dropindex": Node.dropindex,
    "indexes": lambda n: [[str(i), i.kind, i.fields, i.ddoc, i.partial_filter_selector, i.building]
                          for i in n.indexes()],
    "find": Node.find, "explain": Node.explain, "subscribe": Node.subscribe, "unsubscribe": Node.unsubscribe,
    "resolve": Node.resolve, "purge": Node.purge, "purge_many": Node.purge_many, "local_get": Node.local_get,
    "userlist": Node.userlist, "index_rows": Node.index_rows,
    "pull": lambda n, url, timeout: n.pull(url, timeout=timeout),
    "push": lambda n, url, timeout: n.push(url, timeout=timeout),
    "server_url": lambda n: n.server_url, "replication_status": Node.replication_status, "health": Node.health,
    "security": lambda n: n.security, "purged_infos_limit": lambda n: n.purged_infos_limit,
}


class OwnerServer:
    """Serves the owner's open database to the other processes of this machine, on its Unix socket.

    Threads: one accepts (``MyNoSQL-share-<db>``), one per calling connection (``MyNoSQL-share-<db>-call``) runs
    the calls on the node; :meth:`stop` (run first by ``Node.close``) ends and joins them all."""

    def __init__(self, node: Node, listener: socket.socket) -> None:
        # Weak: an application that drops its handle without closing it lets the node (and its lock) go, as a
        # single process always did; the others then take over, and this server's threads end.
        self._ref = weakref.ref(node)
        self._name, self._path = node.name, node.path
        self._listener = listener
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._unlisten: Callable[[], None] | None = None
        self._stopping = False
        self._accepter = threading.Thread(target=self._accept, name=f"MyNoSQL-share-{node.name}", daemon=True)
        self._ring = _map_ring(node.path, write=True)
        self._log = False  # the other processes append their saves to the log themselves (storage/sharedlog.py)
        # Giving way: the calling connections (a request waiting on one: POLLIN), the threads that serve them,
        # and the requests they took so far (see _give_way).
        self._calls = select.poll()
        self._polling = threading.Lock()
        self._callers: set[int] = set()
        self._calling = 0  # calling connections registered in _calls
        self._taken = 0
        self._turn = threading.Event()
        # A new epoch: a client that cached records under a dead owner drops them at its next read.
        _AT.pack_into(self._ring, 0, 0, random.getrandbits(62))

    def start(self) -> None:
        self._accepter.start()

    def stop(self) -> None:
        """Stop accepting, end every connection (calls under way finish first), join the threads, remove the
        socket file (the lock is still held: no new owner can have made one)."""
        with self._lock:
            self._stopping = True
            conns = list(self._conns)
            self._conns.clear()
            unlisten, self._unlisten = self._unlisten, None
        if unlisten is not None:
            unlisten()
            node = self._ref()
            if node is not None and not node.closed:  # first: the others' appends stop, this process reads them
                node._unshare_log()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
        self._accepter.join()
        for t in self._threads:
            t.join()
        for c in conns:
            c.close()
        self._ring.close()
        fd = None
        try:
            addr, fd = _address(self._path)
            os.unlink(addr)
        except OSError:
            pass
        finally:
            if fd is not None:
                os.close(fd)

    def _accept(self) -> None:
        while not self._stopping:
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                if self._ref() is None:  # dropped unclosed: end the connections (the others take over)
                    threading.Thread(target=self.stop, name=f"MyNoSQL-share-{self._name}-end", daemon=True).start()
                    return
                continue
            except OSError:
                return
            with self._lock:
                if self._stopping:
                    conn.close()
                    return
                self._conns.add(conn)
                t = threading.Thread(target=self._serve, args=(conn,), name=f"MyNoSQL-share-{self._name}-call",
                                     daemon=True)
                self._threads = [x for x in self._threads if x.is_alive()]
                self._threads.append(t)
            t.start()

    def _note(self, id: str) -> None:
        """The store's note of each write (under its write lock, before the write is acknowledged): the record in
        the ring, for the clients' caches."""
        _ring_note(self._ring, id_hash(id))

    def _changed(self, new: DocState, prev: DocState | None) -> None:
        """A store listener (after a write): a request of another process waiting gets its turn (none can wait
        while no other process has a calling connection open: their saves go to the shared log)."""
        if self._calling and threading.get_ident() not in self._callers:
            self._give_way()

    def _give_way(self) -> None:
        """After a write of this process's own (its application, its services): if another process's request is
        waiting, let a serving thread take it before this thread goes on.

        A thread that runs Python without a pause (an application saving in a loop: a save here makes no system
        call) keeps the interpreter's lock for the whole switch interval (5 ms); a serving thread woken by a
        request waits that long for it, and so would every save of the other processes (bench/processes.py: their
        p99 was the switch interval). So, one non-blocking ``poll`` of the calling connections (about a
        microsecond, and only once another process is connected); if a request waits, this thread waits (at most
        GIVE_WAY seconds) until a serving thread took one: each process's saves then take turns."""
        if not self._polling.acquire(False):  # another of this process's threads is looking
            return
        try:
            taken = self._taken
            waiting = self._calls.poll(0)
        except (OSError, RuntimeError):  # pragma: no cover - stopping
            waiting = []
        finally:
            self._polling.release()
        if waiting:
            self._turn.clear()
            if self._taken == taken:
                self._turn.wait(GIVE_WAY)

    def _serve(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(HELLO_WAIT)
            hello, _ = _recv(conn)
            if not (isinstance(hello, list) and len(hello) == 3 and hello[0] == "hello"):
                return
            answer = {"pid": os.getpid()}
            if hello[1] == "watch":  # a client's lifeline: it ends with this process (or this server)
                with self._lock:
                    if self._stopping:
                        return
                    if self._unlisten is None:  # from the first client on, until the owner closes
                        node = self._ref()
                        if node is None:
                            return
                        self._log = node._share_log(self._note)
                        self._unlisten = node.on_change(self._changed)
                answer["log"] = self._log
                _send(conn, answer)  # the ring notes every write from before this answer on
                conn.settimeout(None)
                while conn.recv(64):
                    pass
                return
            _send(conn, answer)
            conn.settimeout(None)
            me = threading.get_ident()
            self._callers.add(me)
            self.register_call(conn)
            while True:
                try:
                    msg, raw = _recv(conn)
                finally:  # taken (or ended): a thread giving way goes on
                    self._taken += 1
                    self._turn.set()
                try:
                    result, out = self._handle(msg, raw)
                    reply: list[Any] = [0, result]
                except (MyNoSQLError, TypeError, ValueError, KeyError) as exc:
                    reply, out = _error_reply(exc), b""
                except Exception as exc:  # a bug: the caller gets an error, the owner keeps serving
                    log.exception("database %s: a call from another process failed", self._name)
                    reply, out = _error_reply(MyNoSQLError(f"{type(exc).__name__}: {exc}")), b""
                _send(conn, reply, out)
        except (OSError, EOFError, orjson.JSONDecodeError):
            pass  # the client went away (or this server stops)
        finally:
            self.unregister_call(conn)
            self._callers.discard(threading.get_ident())
            with self._lock:
                self._conns.discard(conn)
            conn.close()

    def register_call(self, conn: socket.socket) -> None:
        """A calling connection: its requests are what the owner's own writes give way to."""
        self._calls.register(conn, select.POLLIN)
        self._calling += 1

    def unregister_call(self, conn: socket.socket) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._calls.unregister(conn)
            self._calling -= 1

    def _handle(self, msg: Any, raw: bytes) -> tuple[Any, bytes]:
        node = self._ref()
        if node is None:
            raise DatabaseClosed("the database was dropped by the process that had it open")
        op, args = msg
        if op == "read":
            id, rev = args
            if rev is None:
                state = node.state(validate_id(id))
                data = state.doc_json if state is not None else None
                if data is not None:
                    return None, data
                return None, encode_body(node.readdoc(id))[0]  # not found, deleted, or a Peer's read-through
            return None, encode_body(node.readdoc(id, rev))[0]
        if op == "save":
            id, rev, fresh, retry = args
            return _save(node, validate_id(id), rev, raw, fresh, retry)
        if op == "delete":
            return _delete(node, args[0], args[1], args[2]), b""
        if op == "changes":
            return _changes_page(node, args[0]), b""
        if op == "state":
            state = node.state(validate_id(args[0]))
            return state is not None, state.to_bytes() if state is not None else b""
        if op == "states":
            return _states_page(node, args[0])
        if op == "docs":
            return _docs_page(node, args[0])
        if op == "call":
            fn = _CALLS.get(args[0])
            if fn is None:
                raise InvalidDocument(f"unknown call {str(args[0])[:40]!r}")
            return encode_value(fn(node, *decode_value(args[1]))), b""
        raise InvalidDocument(f"unknown operation {str(op)[:40]!r}")


# -- the client ----------------------------------------------------------------------------------------------------

class _Promoted(Exception):
    """This client took over the database while a call was under way: it runs locally now."""


class ClientNode(Node):
    """The database as another process of this machine owns it: each call goes to that process (its
    :class:`OwnerServer`). Reads are cached here until the owner's ring (``CHANGED``) says the record changed.
    When the owner goes away this process may take over (see the module docstring): from then on it is the owner,
    and every call runs here as in a :class:`Node`.

    ``watch`` callbacks run in this client's thread, at most ``WATCH_EVERY`` seconds after a change, with the
    changes feed's newest revision of each record changed (several changes of one record in between come as one).
    Not available until it takes over: attachments, live queries (``observe``), and the replication primitives;
    they raise :class:`~MyNoSQL.MyNoSQLError` saying so."""

    def __init__(self, location: Path, name: str, options: Options) -> None:  # not Node's: no store here (yet)
        self.name = name
        self.options = options
        self.path = Path(location) / name
        self._c_location = Path(location)
        self._closed = False  # Node's (Database.__init__ sets it True while it opens, when this one takes over)
        self._c_closed = False
        self._c_closing = False
        self._promoted = False
        self._c_lock = threading.RLock()  # takeover and close, one at a time
        self._c_ring_lock = threading.Lock()  # the ring position, the cache's invalidations
        self._c_idle: list[socket.socket] = []
        self._c_epoch = 0  # connections made to an owner
        self._c_gen = 0  # changes when cached records may have missed an invalidation
        self._c_life: socket.socket | None = None  # ends when the owner does
        self._c_hup = select.poll()
        self._c_ring: mmap.mmap | None = None
        self._c_at = (0, 0)  # the ring's head and epoch when this client last took it in
        self._c_cache: dict[str, Any] = {}  # id -> JSON bytes, or (decoded record, its copy plan)
        self._c_hashes: dict[int, str] = {}  # id_hash -> id, of the cached records
        self._c_reading = 0  # reads under way
        self._c_recent: dict[int, int] = {}  # id_hash -> its ring entry, while reads are under way
        self._c_watchers: dict[int, Callable[[Change], None]] = {}
        self._c_stops: dict[int, Callable[[], None]] = {}
        self._c_keys = itertools.count()
        self._c_seq = 0  # the changes feed read by watch so far
        self._c_watch_failing = False  # the last read of the changes feed for watch failed
        self._c_seen = (0, 0)  # the ring's head and epoch then (a new owner starts its ring again at 0)
        self._c_owner = 0
        self._c_error: str | None = None
        self._c_log = False  # the owner lets this process append its saves to the log itself
        self._c_writer: LogWriter | None = None
        self._c_limit = 0  # the revs_limit, read once (for the saves appended here)
        self._c_connect()
        self._c_thread = threading.Thread(target=self._c_follow, name=f"MyNoSQL-client-{name}", daemon=True)
        self._c_thread.start()

    # -- connections ----------------------------------------------------------------------------------------

    def _c_connect(self) -> None:
        sock, hello = _dial(self.path, "watch")
        try:
            ring = _map_ring(self.path, write=False)
        except (OSError, ValueError):
            sock.close()
            raise
        hup = select.poll()
        hup.register(sock, getattr(select, "POLLRDHUP", 0x2000))
        with self._c_ring_lock:
            self._c_life, self._c_hup, self._c_ring = sock, hup, ring
            self._c_at = _AT.unpack_from(ring)
            self._c_owner = int(hello["pid"])
            self._c_log = hello.get("log") is True

    def _c_close_sockets(self) -> None:
        idle, self._c_idle = self._c_idle, []
        for s in idle:
            s.close()
        with self._c_ring_lock:
            self._c_lost()

    def _c_lost(self) -> None:
        """The owner is gone (under the ring lock): nothing cached can be trusted until a new owner answers."""
        self._c_gen += 1
        self._c_cache.clear()
        self._c_hashes.clear()
        if self._c_life is not None:
            self._c_life.close()
        self._c_life = None
        self._c_hup = select.poll()
        if self._c_ring is not None:
            self._c_ring.close()
            self._c_ring = None

    def _c_sync(self) -> None:
        """Drop from the cache the records the owner changed since this client last looked at the ring."""
        with self._c_ring_lock:
            ring = self._c_ring
            if ring is None:
                return
            head, epoch = at = _AT.unpack_from(ring)
            last, was = self._c_at
            cache, hashes = self._c_cache, self._c_hashes
            if epoch != was or head < last or head - last > RING:  # a new owner, or too far behind
                self._c_gen += 1
                cache.clear()
                hashes.clear()
            else:
                reading, recent = self._c_reading, self._c_recent
                for n in range(last, head):
                    got, h = _SLOT.unpack_from(ring, _AT.size + (n % RING) * _SLOT.size)
                    if got != n:  # overwritten meanwhile: too far behind
                        self._c_gen += 1
                        cache.clear()
                        hashes.clear()
                        break
                    id = hashes.pop(h, None)
                    if id is not None:
                        cache.pop(id, None)
                    if reading:
                        recent[h] = n
            self._c_at = at

    def _c_call(self, op: str, args: list[Any], raw: bytes = b"") -> tuple[Any, bytes]:
        """One call to the owner; repeated (at most 4 times) on a new owner if the owner went away meanwhile."""
        for _ in range(4):
            if self._promoted:
                raise _Promoted
            if self._c_closed or self._c_closing:
                raise DatabaseClosed(f"database {self.name!r} is closed")
            epoch = self._c_epoch
            try:
                conn = self._c_idle.pop()
            except IndexError:
                try:
                    conn, _ = _dial(self.path, "call")
                except (OSError, EOFError, ValueError):
                    self._c_recover(epoch)
                    continue
            try:
                _send(conn, [op, args], raw)
                reply, out = _recv(conn)
            except (OSError, EOFError, ValueError):
                conn.close()
                self._c_recover(epoch)
                if op in ("save", "delete"):
                    args = [*args[:-1], True]  # a repeat: the first attempt may have been written
                continue
            if epoch == self._c_epoch and not self._c_closed:
                self._c_idle.append(conn)
            else:
                conn.close()
            if reply[0] == 0:
                return reply[1], out
            raise _rebuild(reply)
        raise DatabaseClosed(f"database {self.name!r}: {self._c_error or 'its owner process keeps going away'}")

    def _c_recover(self, epoch: int) -> None:
        """The owner is gone (or dropped us): connect to the new one, or become it. Raises if neither works
        within TAKEOVER_WAIT seconds."""
        with self._c_lock:
            if self._c_epoch != epoch or self._promoted or self._c_closed:
                return  # another thread did it
            self._c_close_sockets()
            if self._c_error is not None:
                raise DatabaseClosed(f"database {self.name!r}: {self._c_error}")
            deadline = time.monotonic() + TAKEOVER_WAIT
            delay = 0.002
            while not self._c_closing:
                lock = FileLock(self.path / "LOCK")
                if lock.try_acquire():
                    self._c_promote(lock)
                    return
                try:
                    self._c_connect()
                    self._c_epoch += 1
                    return
                except (OSError, EOFError, ValueError) as exc:
                    why = exc
                if time.monotonic() > deadline:
                    self._c_error = f"its owner process went away and no other took over within {TAKEOVER_WAIT} s " \
                                    f"({why})"
                    raise DatabaseClosed(f"database {self.name!r}: {self._c_error}")
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 0.1)

    def _c_promote(self, lock: FileLock) -> None:
        """Become the owner (under ``_c_lock``, the lock held): open the store, start its services, serve."""
        self._c_drop_writer()
        listener = listen(self.path)
        try:
            Node.__init__(self, self._c_location, self.name, self.options, lock=lock, start=False)
        except BaseException as exc:
            if listener is not None:
                listener.close()
            self._c_error = f"taking it over failed: {exc}"
            raise
        self._promoted = True
        for key, cb in self._c_watchers.items():
            self._c_stops[key] = Database.watch(self, cb)
        if self._c_watchers:  # what came since this client's last look (saves appended while no process owned
            self._c_catch_up_watchers()  # the database, or just before its owner died): recovered, not seen
        try:
            Node.start(self)  # replication, serving as a mirror: what the configuration asks of the owner
        except Exception as exc:  # kept in sync_error (status()); the database itself is open and served
            log.error("database %s: its services did not start after the takeover: %s", self.name, exc)
        if listener is not None:  # the others' calls, last: they find the database as its owner has it
            server = OwnerServer(self, listener)
            self.share(server.stop)
            server.start()
        log.info("database %s: process %d took it over from process %d", self.name, os.getpid(), self._c_owner)

    def _c_catch_up_watchers(self) -> None:
        """Once this process took over: the changes its ``watch`` callbacks had not seen yet (up to where the live
        callbacks, registered first, begin; one may come twice, none is missed)."""
        upto = Database.seq.fget(self)  # type: ignore[attr-defined]
        try:
            missed = list(itertools.islice(Database.changes(self, self._c_seq), 100_000))
        except MyNoSQLError as exc:
            log.warning("database %s: watch could not read the changes after the takeover: %s", self.name, exc)
            return
        for change in missed:
            if change.seq > upto:
                break
            self._c_deliver(change)

    def _c_deliver(self, change: Change) -> None:
        """One change to every ``watch`` callback of this client."""
        self._c_seq = max(self._c_seq, change.seq)
        for cb in list(self._c_watchers.values()):
            try:
                cb(change)
            except Exception:
                log.exception("watch callback %r failed", cb)

    def _c_drop_writer(self) -> None:
        writer, self._c_writer = self._c_writer, None
        self._c_log = False
        if writer is not None:
            writer.close()

    def _c_append(self, id: str, rev: str | None, fresh: bool, blob: bytes
                  ) -> tuple[DocState | None, DocState | None] | None:
        """A save appended to the shared log by this process, or None: the owner must make it."""
        writer = self._c_writer
        if writer is None:
            with self._c_lock:
                if not self._c_log or self._promoted or self._c_closed or self._c_closing:
                    return None
                writer = self._c_writer
                if writer is None:
                    try:
                        self._c_limit = self.revs_limit
                        writer = self._c_writer = LogWriter(self.path, _ring_note, _RING_BYTES,
                                                            BACKLOG * self.options.flush_docs,
                                                            SOFT_BACKLOG * self.options.flush_docs)
                    except (OSError, ValueError, MyNoSQLError) as exc:
                        log.warning("database %s: saving through its owner process (%s)", self.name, exc)
                        self._c_log = False
                        return None
        limit = self._c_limit

        def attachments(*_: Any) -> DocState:
            raise Fallback  # a record with attachments: the owner keeps them

        try:
            return writer.save(id, fresh, lambda prev: save_mutation(prev, id, rev, blob, limit, attachments),
                               _backlog_wait)
        except Fallback:
            return None

    def _c_follow(self) -> None:
        """The client's thread: notices the owner's end (then takes over, or finds the new owner), and runs the
        ``watch`` callbacks."""
        while not self._c_closed and not self._promoted:
            watching = bool(self._c_watchers)
            try:
                ended = self._c_hup.poll(WATCH_EVERY * 1000 if watching else 250)
            except (OSError, ValueError, RuntimeError):  # pragma: no cover - replaced meanwhile
                ended = []
            if ended:
                with self._c_ring_lock:
                    self._c_lost()
            if self._c_life is None and not self._c_closed and not self._promoted:
                try:
                    self._c_recover(self._c_epoch)
                except MyNoSQLError as exc:
                    log.error("database %s: %s", self.name, exc)
                    return
            elif watching:
                self._c_watch_changes()

    def _c_watch_changes(self) -> None:
        """If the ring moved since the last look, read the changes feed since then and call the callbacks."""
        ring = self._c_ring
        try:
            at: tuple[int, int] = _AT.unpack_from(ring) if ring is not None else self._c_seen
        except ValueError:  # closed meanwhile
            return
        if at == self._c_seen:
            return
        try:
            changes = list(itertools.islice(self.changes(self._c_seq), 100_000))
        except MyNoSQLError as exc:  # e.g. a new owner still starting: looked at again next time
            if not self._c_watch_failing:  # logged once, not at every look
                log.warning("database %s: watch could not read the changes: %s", self.name, exc)
            self._c_watch_failing = True
            return
        self._c_watch_failing = False
        self._c_seen = at  # only now: a failed read must not mark these changes seen (the ring may not move again)
        for change in changes:
            self._c_deliver(change)

    def _either(self, local: Callable[..., T], op: str, *args: Any) -> T:
        if not self._promoted:
            try:
                result, _ = self._c_call("call", [op, encode_value(list(args))])
                out: T = decode_value(result)
                return out
            except _Promoted:
                pass
        return local(self, *args)

    def _ask(self, op: str) -> Any:
        """The owner's answer to ``op`` (a property or a call without arguments); this process's own once it took
        over (``None`` then: the caller reads it locally)."""
        if not self._promoted:
            try:
                result, _ = self._c_call("call", [op, encode_value([])])
                return decode_value(result)
            except _Promoted:
                pass
        return None

    # -- lifecycle ------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Close this process's connections (or, once it took over, the database as :meth:`Node.close`)."""
        self._c_closing = True  # a takeover under way gives up (it holds _c_lock)
        with self._c_lock:
            if self._promoted:
                Node.close(self)
            elif not self._c_closed:
                self._c_closed = True
                self._c_drop_writer()
                self._c_close_sockets()
        if self._c_thread is not threading.current_thread():
            self._c_thread.join()

    @property
    def closed(self) -> bool:
        return self._closed if self._promoted else self._c_closed

    def _check(self) -> Store:
        if self._promoted:
            return Node._check(self)
        if self._c_closed:
            raise DatabaseClosed(f"database {self.name!r} is closed")
        raise MyNoSQLError(f"this call is not available in a process that shares database {self.name!r} with the "
                           f"process that has it open (pid {self._c_owner}); make it there")

    def start(self) -> None:
        if self._promoted:
            Node.start(self)

    @property
    def config(self) -> DatabaseConfig:
        if "_config" in self.__dict__:  # took over (or taking over)
            return self._config
        return load_config(self.path)

    @property
    def uuid(self) -> str:
        return self.config.uuid

    @property
    def revs_limit(self) -> int:
        return self.config.revs_limit or self.options.revs_limit

    @property
    def server_url(self) -> str | None:
        """The URL the owner serves this database on (Mirror mode), or None."""
        out: str | None = self._ask("server_url")
        return super().server_url if self._promoted else out

    def replication_status(self) -> dict[str, Any]:
        """The owner's (replication runs there)."""
        out: dict[str, Any] = self._ask("replication_status")
        return super().replication_status() if self._promoted else out

    def health(self) -> str | None:
        """The owner's (one call to it), or why it cannot be asked."""
        if self._c_closed:
            return "closed"
        if not self._promoted:
            try:
                out: str | None = self._ask("health")
            except MyNoSQLError as exc:
                return f"its owner process cannot be asked: {exc}"
            if not self._promoted:
                return out
        return super().health()

    @property
    def security(self) -> dict[str, Any]:
        out: dict[str, Any] = self._ask("security")
        return super().security if self._promoted else out

    @property
    def purged_infos_limit(self) -> int:
        out: int = self._ask("purged_infos_limit")
        return super().purged_infos_limit if self._promoted else out

    @property
    def storage_stats(self) -> FlushStats:
        self._check()  # the owner's store: not here until this process takes over
        return super().storage_stats

    @property
    def owner_pid(self) -> int:
        """The process that owns the database (this one once it took over)."""
        return os.getpid() if self._promoted else self._c_owner

    # -- records --------------------------------------------------------------------------------------------

    def savedoc(self, doc: dict[str, Any]) -> dict[str, Any]:
        if self._promoted:
            return Node.savedoc(self, doc)
        id, rev, fresh, blob, decoded = prepare_save(doc, self.options.max_doc_bytes)
        if self._c_log and self.options.durability == "process":  # power: the owner's group commit syncs it
            done = self._c_append(id, rev, fresh, blob)
            if done is not None:
                prev, new = done
                st = new or prev
                assert st is not None
                win = st.winner
                if st.bodies.get(win) == blob:
                    return {"id": id, "rev": win, **(decoded if decoded is not None else loads_body(blob))}
                data = st.doc_json
                assert data is not None
                return loads_body(data)
        try:
            (win, own), data = self._c_call("save", [id, rev, fresh, False], blob)
        except _Promoted:  # taken over during the call: the dead owner may have written it
            (win, own), data = _save(self, id, rev, blob, fresh, True)
        if own:
            return {"id": id, "rev": win, **(decoded if decoded is not None else loads_body(blob))}
        return loads_body(data)

    def readdoc(self, id: str, rev: str | None = None) -> dict[str, Any]:
        if self._promoted:
            return Node.readdoc(self, id) if rev is None else Node.readdoc(self, id, rev)
        try:
            if _AT.unpack_from(self._c_ring) != self._c_at:  # type: ignore[arg-type]
                self._c_sync()
        except (TypeError, ValueError):  # no ring: reconnecting (the cache is empty)
            pass
        if type(id) is not str:
            id = validate_id(id)
        if rev is None:
            hit = self._c_cache.get(id)
            if hit is not None:
                if type(hit) is bytes:
                    return loads_body(hit)
                doc, plan = hit
                out = doc.copy()
                for k in plan:
                    out[k] = out[k].copy()
                return out  # type: ignore[no-any-return]
        with self._c_ring_lock:
            self._c_reading += 1
            start, gen = self._c_at[0], self._c_gen
        try:
            try:
                _, data = self._c_call("read", [id, rev])
            except _Promoted:
                return Node.readdoc(self, id) if rev is None else Node.readdoc(self, id, rev)
            if rev is None:
                h = id_hash(id)
                self._c_sync()
                with self._c_ring_lock:
                    cache = self._c_cache
                    if gen == self._c_gen and self._c_recent.get(h, -1) < start and self._c_ring is not None:
                        if len(cache) >= self.options.cache_docs:
                            old = next(iter(cache))
                            del cache[old]
                            self._c_hashes.pop(id_hash(old), None)
                        out = loads_body(data)
                        plan = copy_plan(out) if len(data) <= _DECODED_MAX else None
                        cache[id] = data if plan is None else (loads_body(data), plan)
                        self._c_hashes[h] = id
                        return out
            return loads_body(data)
        finally:
            with self._c_ring_lock:
                self._c_reading -= 1
                if not self._c_reading:
                    self._c_recent.clear()

    def deletedoc(self, id: str, rev: str) -> dict[str, Any]:
        if self._promoted:
            return Node.deletedoc(self, id, rev)
        id = validate_id(id)
        if not revtree.is_rev(rev):
            raise InvalidDocument(f"deletedoc needs the rev being deleted (N-<32 hex>), not {str(rev)[:80]!r}")
        try:
            out, _ = self._c_call("delete", [id, rev, False])
            result: dict[str, Any] = out
            return result
        except _Promoted:
            return _delete(self, id, rev, True)

    def watch(self, callback: Callable[[Change], None]) -> Callable[[], None]:
        with self._c_lock:
            if self._promoted:
                return Node.watch(self, callback)
            if self._c_closed:
                raise DatabaseClosed(f"database {self.name!r} is closed")
            if not self._c_watchers:  # from now on (the first watcher of this client)
                self._c_seq = self.seq
            key = next(self._c_keys)
            self._c_watchers[key] = callback

        def stop() -> None:
            self._c_watchers.pop(key, None)
            local = self._c_stops.pop(key, None)
            if local is not None:
                local()

        return stop

    def on_change(self, listener: Listener) -> Callable[[], None]:
        """As :meth:`Node.on_change`; in a client (until it takes over) ``listener(state, None)`` is called as a
        ``watch`` callback is, with a state that has the record's id, seq and newest revision but no body."""
        if self._promoted:
            return Node.on_change(self, listener)

        def relay(c: Change) -> None:
            listener(DocState(c.id, c.seq, {c.rev: (None, c.deleted)}, {}), None)

        return self.watch(relay)

    def state(self, id: str) -> DocState | None:
        if self._promoted:
            return Node.state(self, id)
        try:
            found, data = self._c_call("state", [id])
        except _Promoted:
            return Node.state(self, id)
        return DocState.from_bytes(data) if found else None

    def states_since(self, since: int = 0) -> Iterator[DocState]:
        while True:
            if self._promoted:
                last, data = _states_page(self, since)
            else:
                try:
                    last, data = self._c_call("states", [since])
                except _Promoted:
                    continue
            yield from _unpack_states(data)
            if last == since:
                return
            since = last

    def conflicted(self) -> Iterator[DocState]:
        return (s for s in self.states_since(0) if s.conflicts())

    def local_get(self, id: str) -> dict[str, Any] | None:
        return self._either(Node.local_get, "local_get", id)

    def userlist(self) -> dict[str, str]:
        return self._either(Node.userlist, "userlist")

    def index_rows(self) -> int:
        return self._either(Node.index_rows, "index_rows")

    def changes(self, since: int = 0) -> Iterator[Change]:
        while True:
            if self._promoted:
                rows = _changes_page(self, since)
            else:
                try:
                    rows, _ = self._c_call("changes", [since])
                except _Promoted:
                    continue
            for r in rows:
                yield Change(*r)
            if len(rows) < PAGE:
                return
            since = rows[-1][0]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        since = 0
        while True:
            if self._promoted:
                last, data = _docs_page(self, since)
            else:
                try:
                    last, data = self._c_call("docs", [since])
                except _Promoted:
                    continue
            yield from decode_value(orjson.loads(data))
            if last == since:
                return
            since = last

    def __len__(self) -> int:
        return self._either(Node.__len__, "len")

    def __contains__(self, id: object) -> bool:
        return self._either(Node.__contains__, "contains", id)

    @property
    def seq(self) -> int:
        if self._promoted:
            return self._check().seq
        out: int = self._either(lambda n: n.seq, "seq")
        return out

    def conflicts(self, id: str) -> list[str]:
        return self._either(Node.conflicts, "conflicts", id)

    def deleted_count(self) -> int:
        return self._either(Node.deleted_count, "deleted_count")

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = self._either(Node.status, "status")
        out["owner_pid"] = self.owner_pid
        return out

    def verify(self, progress: Callable[[int, int | None], None] | None = None) -> list[str]:
        out: list[str] = self._either(lambda n: Node.verify(n), "verify")
        return out

    def compact(self, progress: Callable[[int, int | None], None] | None = None) -> int:
        out: int = self._either(lambda n: Node.compact(n), "compact")
        return out

    def flush(self) -> None:
        self._either(Node.flush, "flush")

    def setdbmode(self, mode: Any) -> bool:
        return self._either(Node.setdbmode, "setdbmode", mode)

    def getdbmode(self) -> str:
        return self._either(Node.getdbmode, "getdbmode")

    def addpeer(self, url: str) -> bool:
        return self._either(Node.addpeer, "addpeer", url)

    def peers(self) -> list[str]:
        return self._either(Node.peers, "peers")

    def setlisten(self, host: str = "127.0.0.1", port: int = 8800, *, advertise: str | None = None,
                  certfile: str | None = None, keyfile: str | None = None) -> None:
        if certfile is not None or keyfile is not None:
            raise MyNoSQLError("setlisten with TLS files: call it in the process that has the database open")
        self._either(lambda n, h, p, a: Node.setlisten(n, h, p, advertise=a), "setlisten", host, port, advertise)

    def indexadd(self, name: str) -> bool:
        return self._either(Node.indexadd, "indexadd", name)

    def indexdrop(self, name: str) -> bool:
        return self._either(Node.indexdrop, "indexdrop", name)

    def indexread(self, name: str) -> dict[str, Any]:
        return self._either(Node.indexread, "indexread", name)

    def createindex(self, fields: list[Any], name: str | None = None,
                    partial_filter_selector: dict[str, Any] | None = None, *, ddoc: str | None = None,
                    wait: bool = True, progress: Callable[[int, int | None], None] | None = None,
                    python: bool = True) -> dict[str, Any]:
        if ddoc is not None or not python:
            raise MyNoSQLError("createindex with ddoc (or python=False): call it in the process that has the "
                               "database open")
        return self._either(lambda n, f, nm, p, w: Node.createindex(n, f, nm, p, wait=w), "createindex", fields, name,
                            partial_filter_selector, wait)

    def dropindex(self, name: str, ddoc: str | None = None) -> bool:
        return self._either(Node.dropindex, "dropindex", name)

    def indexes(self) -> list[Any]:
        if self._promoted:
            return Node.indexes(self)
        try:
            rows, _ = self._c_call("call", ["indexes", []])
        except _Promoted:
            return Node.indexes(self)
        return [IndexInfo.make(n, k, f, d, decode_value(p), tuple(b) if b else None) for n, k, f, d, p, b in rows]

    def find(self, selector: dict[str, Any], fields: list[str] | None = None, sort: list[Any] | None = None,
             limit: int | None = None, skip: int = 0, use_index: Any = None) -> list[dict[str, Any]]:
        return self._either(Node.find, "find", selector, fields, sort, limit, skip, use_index)

    def explain(self, selector: dict[str, Any], fields: list[str] | None = None, sort: list[Any] | None = None,
                limit: int | None = None, skip: int = 0, use_index: Any = None) -> dict[str, Any]:
        return self._either(Node.explain, "explain", selector, fields, sort, limit, skip, use_index)

    def subscribe(self, selector: dict[str, Any]) -> str:
        return self._either(Node.subscribe, "subscribe", selector)

    def unsubscribe(self, selector_or_id: dict[str, Any] | str) -> bool:
        return self._either(Node.unsubscribe, "unsubscribe", selector_or_id)

    def resolve(self, id: str, merged: dict[str, Any], losers: list[str] | None = None) -> dict[str, Any]:
        return self._either(Node.resolve, "resolve", id, merged, losers)

    def purge(self, id: str, revs: list[str]) -> list[str]:
        return self._either(Node.purge, "purge", id, revs)

    def purge_many(self, requests: dict[str, list[str]]) -> dict[str, list[str]]:
        return self._either(Node.purge_many, "purge_many", requests)

    def pull(self, url: str, *, timeout: float = 60.0) -> dict[str, Any]:
        return self._either(lambda n, u, t: Node.pull(n, u, timeout=t), "pull", url, timeout)

    def push(self, url: str, *, timeout: float = 60.0) -> dict[str, Any]:
        return self._either(lambda n, u, t: Node.push(n, u, timeout=t), "push", url, timeout)

    def __repr__(self) -> str:
        role = "owner" if self._promoted else f"client of process {self._c_owner}"
        return f"<MyNoSQL database {self.name!r} ({role}) at {self.path}>"


def _own(location: Path, name: str, options: Options, lock: FileLock) -> Node:
    listener = listen(Path(location) / name)
    try:
        node = Node(location, name, options, lock=lock)
    except BaseException:
        if listener is not None:
            listener.close()
        raise
    if listener is not None:
        server = OwnerServer(node, listener)
        node.share(server.stop)
        server.start()
    return node


def open_node(location: Path, name: str, options: Options) -> Node:
    """Open the database ``name``: as its owner if no other process has it open, else as a client of the one
    that has. ``Options(exclusive=True)``: as its only user, or :class:`DatabaseLocked` at once."""
    validate_db_name(name)
    if options.exclusive:
        return Node(location, name, options)
    path = Path(location) / name
    prepare_folder(path)
    deadline = time.monotonic() + OPEN_WAIT
    delay = 0.002
    while True:
        lock = FileLock(path / "LOCK")
        if lock.try_acquire():
            return _own(location, name, options, lock)
        try:
            return ClientNode(location, name, options)
        except (OSError, EOFError, ValueError) as exc:
            why = exc
        if time.monotonic() > deadline:
            raise DatabaseLocked(
                f"database {path} is open in another process that does not share it (opened with "
                f"Options(exclusive=True), or Unix sockets do not work there: {why}); close it there first")
        time.sleep(delay * (0.5 + random.random()))
        delay = min(delay * 2, 0.1)
