"""``mynosql serve``: a mirror of the databases in a folder, with its server, its users and its replication.

The server owns its databases here (a :class:`~MyNoSQL.node.Node` is the other way round: a database that
serves itself). :class:`MirrorService` composes, on one event loop thread it starts and joins:

* :class:`~MyNoSQL.server.registry.Databases`: every database folder in the root (or those named), opened when
  a request needs one, closed when idle;
* :class:`~MyNoSQL.server.serve.MirrorServer`: the HTTP server, its users (``users.json`` in the root folder;
  roles ``admin``, ``replicator``, ``reader``);
* per open database, a :class:`~MyNoSQL.replication.mirror_pull.MirrorPulls` from every peer mirror it knows
  (``--peer``): a mirror with peers keeps every database open (replication is continuous).

Shutdown: stop accepting, stop the pulls, close the server's connections, close the databases, join the loop.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from pathlib import Path
from typing import Any

import orjson

from .credentials import Users
from .database import Database
from .errors import MyNoSQLError
from .net.urls import normalize_peer_url, redact_url
from .options import Options
from .replication.mirror_pull import MirrorPulls
from .replication.runtime import LoopThread
from .server.registry import Databases
from .server.serve import MirrorServer
from .storage.fileutil import atomic_write

log = logging.getLogger("MyNoSQL")


def server_users(root: Path, only: frozenset[str] | None) -> Users:
    """The users of a mirror of ``root``: ``root/users.json``; a folder served before databases were served
    together kept them in its one database's folder: used when that is the only place they are."""
    path = root / "users.json"
    if not path.exists() and only is not None and len(only) == 1:
        (name,) = only
        old = root / name / "users.json"
        if old.exists():
            return Users(old)
    return Users(path)


def server_uuid(root: Path) -> str:
    """The mirror's own id (CouchDB's ``GET /`` uuid), made once and kept in ``root/server.json``."""
    path = root / "server.json"
    try:
        found = orjson.loads(path.read_bytes()).get("uuid")
        if isinstance(found, str) and found:
            return found
    except (OSError, ValueError, AttributeError):
        pass
    made = secrets.token_hex(16)
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    atomic_write(path, orjson.dumps({"uuid": made}))
    return made


class MirrorService:
    def __init__(self, root: Path, options: Options, *, host: str = "127.0.0.1", port: int = 8800,
                 only: frozenset[str] | None = None, users: Users | None = None, peers: tuple[str, ...] = (),
                 advertise: str | None = None, certfile: str | None = None, keyfile: str | None = None,
                 idle: float = 300.0, max_open: int = 1000) -> None:
        self.root = Path(root)
        self.options = options
        self.peers = tuple(normalize_peer_url(p) for p in peers)
        self.advertise = advertise and normalize_peer_url(advertise)
        self.users = users if users is not None else server_users(self.root, only)
        self.dbs = Databases(root=self.root, options=options, only=only,
                             idle=float("inf") if self.peers else idle, max_open=max_open)
        self.server = MirrorServer(self.dbs, host=host, port=port, users=self.users, limits=options.limits,
                                   certfile=certfile, keyfile=keyfile, mirrors=self.known_mirrors,
                                   mirror_status=self.replication_status, cors_origins=options.cors_origins,
                                   server_uuid=server_uuid(self.root))
        self._loop: LoopThread | None = None
        self._pulls: dict[str, MirrorPulls] = {}
        self.dbs.on_open.append(self._opened)
        self.dbs.on_close.append(self._closing)

    @property
    def url(self) -> str | None:
        return self.server.url

    def known_mirrors(self) -> list[str]:
        own = [self.advertise or self.server.url] if self.server.url else []
        return list(dict.fromkeys([*[u for u in own if u], *(redact_url(p) for p in self.peers)]))

    def replication_status(self, name: str) -> dict[str, Any]:
        pulls = self._pulls.get(name)
        return pulls.status() if pulls is not None else {}

    def start(self) -> str:
        """Bind and serve (and, with peers, open every database and start replicating it). Returns the URL."""
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        loop = self._loop = LoopThread(f"MyNoSQL-serve-{self.root.name}").start()
        try:
            url = loop.run(self.server.start(), timeout=30)
            if self.peers:
                loop.run(self._open_all(), timeout=None)
        except BaseException:
            self.close()
            raise
        return url

    async def _open_all(self) -> None:
        for name in await asyncio.to_thread(self.dbs.names):
            await self.dbs.get(name)

    async def _opened(self, name: str, db: Database) -> None:
        if db.config.mode != "Mirror":  # a database a mirror serves is a full copy: its status says so
            await asyncio.to_thread(db.setdbmode, "Mirror")
        if not self.peers:
            return
        for p in self.peers:
            await asyncio.to_thread(db.addpeer, p)
        pulls = self._pulls[name] = MirrorPulls(db, self.options, own_url=lambda: self.server.url)
        await pulls.start()

    async def _closing(self, name: str, db: Database) -> None:
        pulls = self._pulls.pop(name, None)
        if pulls is not None:
            await pulls.stop()

    def close(self) -> None:
        """Stop accepting, stop replication, close connections and databases, join the loop thread."""
        loop, self._loop = self._loop, None
        if loop is None:
            return
        try:
            for step in (self.server.stop_accepting, self.server.close, self.dbs.close_all):
                try:
                    loop.run(step(), timeout=60)
                except (MyNoSQLError, OSError, TimeoutError, RuntimeError) as exc:
                    log.error("stopping the mirror of %s: %s", self.root, exc)
        finally:
            loop.stop()
