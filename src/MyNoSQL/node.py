"""A database with its background services: the composition root of one open database.

:class:`Node` is the :class:`~MyNoSQL.database.Database` that ``MyNoSQL.opendb`` returns. It owns what runs
around the database and starts or stops it whenever the configuration changes (mode, mirrors, where to serve):

* Peer with mirrors: :class:`~MyNoSQL.replication.peer.PeerSync` (push, poll, failover, read-through fetch);
* Mirror: :class:`~MyNoSQL.server.serve.MirrorServer` and :class:`~MyNoSQL.replication.mirror_pull.MirrorPulls`;

all on one event loop thread (:class:`~MyNoSQL.replication.runtime.LoopThread`) that it starts and joins. The
network modules are imported only when a service starts: a local-only database never imports aiohttp.

Shutdown order (``close``), each step done before the next starts:

0. the database stops serving other processes (:mod:`MyNoSQL.shared`; they take over once the lock is released);
1. the server stops accepting connections;
2. the final push (Peer): what is not pushed yet goes to a mirror, bounded by ``Options.final_push``, while the
   database is still open;
3. the services stop: their tasks are cancelled, the server closes its connections;
4. the event loop's worker pool and thread are joined (a write handed to a worker finishes first);
5. the store closes: the compactor is joined and what is pending is packed into shards;
6. the lock is released.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import DatabaseConfig
from .database import Database, FileLock
from .errors import DocumentUnavailable, MyNoSQLError
from .net.urls import db_url, normalize_peer_url
from .options import Options
from .records.revtree import DocState

if TYPE_CHECKING:
    from .replication.mirror_pull import MirrorPulls
    from .replication.peer import PeerSync
    from .replication.runtime import LoopThread
    from .server.serve import MirrorServer

log = logging.getLogger("MyNoSQL")


class Node(Database):
    """An open database and the background services its configuration asks for. Thread-safe."""

    def __init__(self, location: Path, name: str, options: Options, *, start: bool = True,
                 lock: FileLock | None = None) -> None:
        """``start=False`` opens the database without starting any service yet (``mynosql serve`` changes the
        configuration first, then calls :meth:`start`). ``lock``: the database's lock, already held."""
        self._unshare: Callable[[], None] | None = None  # stops serving other processes (MyNoSQL.shared)
        self._services_lock = threading.RLock()
        self._loop: LoopThread | None = None
        self._peer: PeerSync | None = None
        self._server: MirrorServer | None = None
        self._pulls: MirrorPulls | None = None
        self._running: tuple[Any, ...] | None = None  # what the running services were started for
        self._started = False
        self.sync_error: str | None = None
        super().__init__(location, name, options, lock=lock)
        if start:
            self.start()

    # -- lifecycle --------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start what the configuration asks for (nothing with ``Options(background_sync=False)``)."""
        self._check()
        self._started = True
        self._reconcile()

    def _wanted(self, cfg: DatabaseConfig) -> tuple[Any, ...] | None:
        if not self._started or not self.options.background_sync or self.closed:
            return None
        if cfg.mode == "Mirror":
            return ("Mirror", cfg.host, cfg.port, cfg.certfile, cfg.keyfile)
        return ("Peer",) if cfg.peers else None

    def _config_changed(self, before: DatabaseConfig, after: DatabaseConfig) -> None:
        self._reconcile()
        peer = self._peer
        if peer is not None and before.subscriptions != after.subscriptions:
            peer.subscriptions_changed()  # catch up on the new selectors now, not after the next change

    def _reconcile(self) -> None:
        """Make the running services what the configuration asks for. Mirrors added while running are picked up
        by the running loops themselves. A failure to start is kept in ``sync_error`` (and raised)."""
        with self._services_lock:
            wanted = self._wanted(self.config)
            if wanted == self._running:
                return
            self._stop_services(final_push=0)
            self.sync_error = None
            if wanted is None:
                return
            try:
                self._start_services(wanted[0])
            except BaseException as exc:
                self._stop_services(final_push=0)
                self.sync_error = f"{type(exc).__name__}: {exc}"
                raise
            self._running = wanted

    def _start_services(self, kind: str) -> None:
        from .replication.runtime import LoopThread

        loop = self._loop = LoopThread(f"MyNoSQL-{self.name}").start()
        if kind == "Mirror":
            from .replication.mirror_pull import MirrorPulls
            from .server.serve import MirrorServer

            cfg = self.config
            pulls = self._pulls = MirrorPulls(self, self.options, own_url=lambda: self.server_url)
            server = self._server = MirrorServer(
                {self.name: self}, host=cfg.host, port=cfg.port, users=self.users, limits=self.options.limits,
                certfile=cfg.certfile, keyfile=cfg.keyfile, mirrors=self.known_mirrors,
                mirror_status=lambda name: pulls.status(), cors_origins=self.options.cors_origins,
                server_uuid=self.uuid)
            loop.run(server.start(), timeout=30)
            loop.run(pulls.start(), timeout=30)
        else:
            from .replication.peer import PeerSync

            peer = self._peer = PeerSync(self, self.options)
            loop.run(peer.start(), timeout=30)
            self.set_read_through(self._fetch)
            self.set_attachment_fetch(self._fetch_attachment)

    def _stop_services(self, final_push: float) -> None:
        """Stop what runs, in the order of the module docstring (steps 1-4)."""
        loop, peer, server, pulls = self._loop, self._peer, self._server, self._pulls
        self._loop = self._peer = self._server = self._pulls = None
        self._running = None
        self.set_read_through(None)
        self.set_attachment_fetch(None)
        if loop is None:
            return
        try:
            if server is not None:
                loop.run(server.stop_accepting(), timeout=10)
            if peer is not None and final_push > 0:
                self._final_push(loop, peer, final_push)
            for service in (pulls, peer, server):
                if service is not None:
                    try:
                        loop.run(service.close() if service is server else service.stop(),  # type: ignore[union-attr]
                                 timeout=30)
                    except Exception as exc:  # the others must stop all the same
                        log.error("database %s: stopping %s failed: %s", self.name, type(service).__name__, exc)
        finally:
            loop.stop()

    def _final_push(self, loop: LoopThread, peer: PeerSync, seconds: float) -> None:
        t0 = time.monotonic()
        try:
            left = loop.run(peer.final_push(), timeout=seconds)
        except TimeoutError:
            left = peer.pending()
        if left:
            log.warning("database %s: %d change(s) not pushed to any mirror at close (%.1f s; %s); they are kept and "
                        "pushed at the next opendb", self.name, left, time.monotonic() - t0,
                        "; ".join(f"{u}: {s['last_error']}" for u, s in peer.status().items() if s["last_error"])
                        or "no mirror answered in time")

    def close(self) -> None:
        """Stop the background services (a final push first, see the module docstring), then close the
        database. Idempotent."""
        if self.closed:
            return
        unshare, self._unshare = self._unshare, None
        if unshare is not None:  # other processes' calls end first: they take over once the lock is released
            unshare()
        with self._services_lock:
            self._started = False
            try:
                self._stop_services(final_push=self.options.final_push)
            finally:
                super().close()

    def share(self, stop: Callable[[], None]) -> None:
        """Remember how to stop serving this database to other processes (:mod:`MyNoSQL.shared`): ``close`` does
        it first, before anything else stops."""
        self._unshare = stop

    # -- what the services add to the database's API ----------------------------------------------------------

    def _fetch(self, id: Any) -> DocState | None:
        """The read-through of a Peer: ask a mirror for a record this database does not hold."""
        loop, peer = self._loop, self._peer
        if loop is None or peer is None or self.config.mode == "Mirror" or not isinstance(id, str):
            return None
        try:
            found, why = loop.run(peer.fetch(id), timeout=self.options.read_timeout)
        except TimeoutError:
            raise DocumentUnavailable(id, f"no mirror answered within {self.options.read_timeout} s "
                                          "(Options.read_timeout)") from None
        except (MyNoSQLError, RuntimeError) as exc:
            raise DocumentUnavailable(id, str(exc)) from exc
        if why is not None:
            raise DocumentUnavailable(id, why)
        return self.state(id) if found else None

    def _fetch_attachment(self, id: str, rev: str, name: str, meta: dict[str, Any]) -> str:
        """The read-through of a Peer for attachment bytes: download them from a mirror (see
        :meth:`PeerSync.fetch_attachment`: each step within ``Options.read_timeout``)."""
        loop, peer = self._loop, self._peer
        if loop is None or peer is None:
            raise DocumentUnavailable(id, f"the bytes of attachment {name!r} are not stored here and this database "
                                      "does not replicate now")
        try:
            return loop.run(peer.fetch_attachment(id, rev, name, meta), timeout=None)
        except DocumentUnavailable:
            raise
        except (MyNoSQLError, RuntimeError, OSError) as exc:
            raise DocumentUnavailable(id, f"the bytes of attachment {name!r}: {exc}") from exc

    @property
    def server_url(self) -> str | None:
        """The URL this database serves on (Mirror mode), or None."""
        server = self._server
        return server.url if server is not None else None

    def known_mirrors(self) -> list[str]:
        """What ``GET /_mirrors`` lists: this mirror first, then every mirror it knows (without credentials)."""
        own = [self.config.advertise or self.server_url] if self.server_url else []
        return list(dict.fromkeys([*[u for u in own if u], *self.peers()]))

    def learn_mirrors(self, urls: list[str], *, via: str, own: set[str | None] | None = None) -> None:
        super().learn_mirrors(urls, via=via, own=(own or set()) | {self.server_url})

    def status(self) -> dict[str, Any]:
        """Mode, records, pending pushes and, per mirror: reachable, last success/error, pending, lag."""
        out = super().status()
        peer, pulls = self._peer, self._pulls
        out["server"] = self.server_url
        out["mirrors"] = peer.status() if peer is not None else pulls.status() if pulls is not None else {}
        out["sync_error"] = self.sync_error
        return out

    def replication_status(self) -> dict[str, Any]:
        """Per remote mirror, what the running replication knows (empty when none runs)."""
        peer, pulls = self._peer, self._pulls
        return peer.status() if peer is not None else pulls.status() if pulls is not None else {}

    def pull(self, url: str, *, timeout: float = 60.0) -> dict[str, Any]:
        """Copy every record of the database at ``url`` (CouchDB, PouchDB Server or a mirror; a server URL
        without a path means the database of this one's name there) that this one lacks, now, whatever the
        mode. Returns counts (``docs_read``, ``docs_written``, ``errors``...)."""
        from .replication.oneshot import replicate_once

        self._check()
        return replicate_once(db_url(normalize_peer_url(url), self.name), self, timeout=timeout)

    def push(self, url: str, *, timeout: float = 60.0) -> dict[str, Any]:
        """Copy every record of this database that the one at ``url`` lacks, now (creating it if needed)."""
        from .replication.oneshot import replicate_once

        self._check()
        return replicate_once(self, db_url(normalize_peer_url(url), self.name), timeout=timeout)

    def __repr__(self) -> str:
        return f"<MyNoSQL database {self.name!r} ({self.config.mode}) at {self.path}>"


__all__ = ["Node"]
