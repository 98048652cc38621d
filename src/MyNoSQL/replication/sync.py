"""Background replication of one open database: a thread running an asyncio loop that owns every task.

Peer mode (the default):
  * push: the local changes feed since the push checkpoint goes to the current mirror (a durable outbox: what
    was saved offline, or before a crash, is pushed when a mirror answers);
  * poll: the mirror's changes feed since the poll checkpoint (longpoll: an idle poll is one small round
    trip); records this peer holds and for which the mirror has revisions it lacks are downloaded;
  * the mirror list is learned from ``GET /_mirrors`` and remembered; when the current mirror fails, the next
    one is tried (failover).
Mirror mode: the HTTP server, and a continuous pull from every other known mirror.

Retries use capped exponential backoff with jitter; a remote's state changes (reachable <-> unreachable, or a
different kind of problem) are logged once each, not once per retry, and exposed in ``status()`` (see
:class:`RemoteState`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
import secrets
import ssl
import threading
import time
import urllib.parse
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

import aiohttp

from .._errors import MyNoSQLError, SecurityError
from .._options import Options
from . import protocol
from .endpoints import HttpEndpoint, LocalEndpoint, RemoteError, redact
from .replicator import Resume, replicate

if TYPE_CHECKING:
    from .._database import Database

log = logging.getLogger("MyNoSQL")
T = TypeVar("T")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


_warned_unverified = False


def client_session(opts: Options) -> aiohttp.ClientSession:
    """An HTTP client that verifies TLS certificates (system CAs, or ``opts.tls_ca_file``)."""
    global _warned_unverified
    ssl_arg: ssl.SSLContext | bool = True
    if not opts.tls_verify:
        if not _warned_unverified:
            log.warning("TLS certificate verification is OFF (Options.tls_verify=False): anyone on the network "
                        "path can read and change what is replicated")
            _warned_unverified = True
        ssl_arg = False
    elif opts.tls_ca_file:
        ssl_arg = ssl.create_default_context(cafile=opts.tls_ca_file)
    return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=opts.remote_timeout),
                                 connector=aiohttp.TCPConnector(limit=16, ssl=ssl_arg))


def db_url(mirror: str, name: str) -> str:
    """The URL of database ``name`` on a mirror given by its server URL (or already a database URL)."""
    p = urllib.parse.urlsplit(mirror)
    return mirror.rstrip("/") if p.path.strip("/") else f"{mirror.rstrip('/')}/{urllib.parse.quote(name)}"


def problem_kind(exc: BaseException) -> str:
    """What kind of problem ``exc`` is, without its details: a change of kind is logged, a new message is not."""
    if isinstance(exc, RemoteError):
        return exc.kind
    if isinstance(exc, (OSError, asyncio.TimeoutError)):
        return "unreachable"
    return type(exc).__name__


class RemoteState:
    """What this node knows of one remote mirror. Its problems are logged once per change of state: when it
    becomes unreachable (a WARNING), when the kind of problem changes (another WARNING: from "unreachable" to
    "HTTP 401", say; a new address or errno text in the message of the same kind is not a change), and when it
    answers again (one INFO line). Every retry in between is counted (``failures``), not logged."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.reachable: bool | None = None
        self.last_success: float | None = None
        self.last_error: str | None = None
        self.last_kind: str | None = None
        self.failures = 0  # failed attempts since the last success
        self.failing_since: float | None = None
        self.pushed_seq = 0
        self.pulled_seq: Any = None  # where this node's pull (or poll) of the remote's feed stands; None: unknown
        self.remote_seq: Any = None  # the remote's latest change sequence as last heard; None: unknown
        self.docs_pushed = 0
        self.docs_pulled = 0

    def ok(self) -> None:
        if self.reachable is False:
            since = time.time() - self.failing_since if self.failing_since is not None else 0.0
            log.info("mirror %s is reachable again (after %d failed attempt(s) in %.0f s)", self.url, self.failures,
                     since)
        elif self.reachable is None:
            log.info("mirror %s is reachable", self.url)
        self.reachable = True
        self.last_success = time.time()
        self.failures = 0
        self.failing_since = None

    def failed(self, exc: BaseException) -> None:
        msg = str(exc) if isinstance(exc, MyNoSQLError) else f"{type(exc).__name__}: {exc}"
        kind = problem_kind(exc)
        if self.reachable is not False or kind != self.last_kind:
            expected = isinstance(exc, (MyNoSQLError, OSError))  # network and remote errors; others are bugs
            log.warning("mirror %s: %s (will retry; logged again only if the kind of problem changes)", self.url,
                        msg, exc_info=None if expected else exc)
        if self.reachable is not False:
            self.failing_since = time.time()
        self.reachable = False
        self.last_error = msg
        self.last_kind = kind
        self.failures += 1

    @property
    def lag(self) -> int | None:
        """Changes of the remote's feed not pulled yet (in change sequence numbers), if both ends are known."""
        if isinstance(self.remote_seq, int) and isinstance(self.pulled_seq, int):
            return max(0, self.remote_seq - self.pulled_seq)
        return None


class Backoff:
    def __init__(self, base: float = 0.2, cap: float = 5.0) -> None:
        self.base, self.cap, self.n = base, cap, 0

    def reset(self) -> None:
        self.n = 0

    def next(self) -> float:
        self.n += 1
        return random.uniform(0, min(self.cap, self.base * 2 ** min(self.n, 20)))


class Sync:
    """Owned by a Database: started by ``opendb``, stopped and joined by ``closedb``."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.opts = db.options
        self.loop = asyncio.new_event_loop()
        self.remotes: dict[str, RemoteState] = {}
        self.server_url: str | None = None
        self._thread = threading.Thread(target=self._run, name=f"MyNoSQL-sync-{db.name}", daemon=True)
        self._ready = threading.Event()
        self._stopping: asyncio.Event | None = None
        self._changed: asyncio.Event | None = None
        self._session: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._runner: Any = None
        self._start_error: BaseException | None = None
        self.current: str | None = None  # the mirror a peer talks to now
        self._refreshed: dict[str, float] = {}
        self._resume: dict[str, Resume] = {}  # per mirror: where the push stands (no checkpoint re-reads)
        self._poll_since: dict[str, Any] = {}
        self._endpoints: dict[str, HttpEndpoint] = {}
        # names this peer to its mirrors, which then leave its own writes out of its longpoll answers
        self.client_token = secrets.token_hex(8)

    # -- lifecycle --------------------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()
        self._ready.wait(timeout=30)
        if self._start_error is not None:
            self._thread.join(timeout=10)
            raise self._start_error

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._main())
        finally:
            # whatever is still pending (a longpoll handler, a cancelled request) ends here, not in the GC
            pending = asyncio.all_tasks(self.loop)
            for t in pending:
                t.cancel()
            self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()

    async def _main(self) -> None:
        self._stopping = asyncio.Event()
        self._changed = asyncio.Event()
        self._session = self._make_session()
        try:
            if self.db.config["mode"] == "Mirror":
                await self._start_server()
            else:  # only a peer's push waits for local changes; a mirror would wake nothing, once per record
                self.db.store.listeners.append(self._on_local_change)
        except BaseException as exc:
            self._start_error = exc
            await self._session.close()
            self._ready.set()
            return
        self._ready.set()
        if self.db.config["mode"] == "Mirror":
            self._tasks.append(asyncio.create_task(self._mirror_loop()))
        else:
            self._tasks.append(asyncio.create_task(self._peer_loop()))
        await self._stopping.wait()
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if self._runner is not None:
            await self._runner.cleanup()
        await self._session.close()

    def stop(self, final_push: float = 5.0) -> None:
        """Make one last push (bounded by ``final_push`` seconds), stop every task and join the thread."""
        if not self._thread.is_alive():
            return
        with contextlib.suppress(ValueError):
            self.db.store.listeners.remove(self._on_local_change)
        if final_push > 0 and self.db.config["mode"] != "Mirror" and self.current:
            with contextlib.suppress(Exception):
                self.run(self._push(self.current), timeout=final_push)
        if self._stopping is not None:
            self.loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(timeout=30)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        """Run ``coro`` on the sync loop from another thread, waiting at most ``timeout`` seconds."""
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return fut.result(timeout)
        except TimeoutError:
            fut.cancel()
            raise

    def _on_local_change(self, new: Any, prev: Any) -> None:
        if self._changed is not None and not self.loop.is_closed():
            with contextlib.suppress(RuntimeError):
                self.loop.call_soon_threadsafe(self._changed.set)

    # -- the server (mirror mode) -----------------------------------------------------------------------------

    async def _start_server(self) -> None:
        from aiohttp import web

        from ..server.app import MirrorApp

        cfg = self.db.config
        host, port = cfg["host"], int(cfg["port"])
        users, limits = self.db.users, self.opts.limits
        if not users and not is_loopback(host):
            raise SecurityError(
                f"refusing to serve database {self.db.name!r} on {host}:{port} without credentials: anyone who "
                "can reach that address could read and change every record. Add users first (mynosql serve "
                "--credentials FILE, or db.adduser(name, password)), or listen on 127.0.0.1.")
        if not users:
            log.warning("mirror %s serves WITHOUT authentication (loopback only: %s)", self.db.name, host)
        ssl_ctx = None
        if cfg.get("certfile"):
            ssl_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ssl_ctx.load_cert_chain(cfg["certfile"], cfg["keyfile"])
        app = MirrorApp({self.db.name: self.db}, mirrors=self.known_mirrors, users=users, limits=limits,
                        open_without_users=is_loopback(host))
        self._runner = app.runner(access_log=None, handle_signals=False, shutdown_timeout=1.0,
                                  keepalive_timeout=limits.header_timeout)
        await self._runner.setup()
        server = self._runner.server
        assert server is not None
        accept = server.connection_made

        def guarded(handler: Any, transport: Any) -> None:  # refuse connections past the limit
            accept(handler, transport)
            if len(server.connections) > limits.max_connections:
                transport.close()

        server.connection_made = guarded
        site = web.TCPSite(self._runner, host, port, reuse_address=True, ssl_context=ssl_ctx)
        await site.start()
        sockets = getattr(site._server, "sockets", None) or []
        real_port = sockets[0].getsockname()[1] if sockets else port
        shown = f"[{host}]" if ":" in host else host
        self.server_url = f"{'https' if ssl_ctx else 'http'}://{shown}:{real_port}"
        log.info("mirror %s serving on %s", self.db.name, self.server_url)

    def known_mirrors(self) -> list[str]:
        own = [self.db.config.get("advertise") or self.server_url] if self.server_url else []
        return list(dict.fromkeys([*own, *(redact(u) for u in self.db.config["peers"])]))

    # -- mirror mode: pull from every other mirror ------------------------------------------------------------

    async def _mirror_loop(self) -> None:
        """Keep one pull running from every other known mirror (new ones are picked up within seconds)."""
        running: set[str] = set()
        while True:
            for url in self.db.config["peers"]:
                if url not in running and redact(url) != self.server_url:
                    running.add(url)
                    self._tasks.append(asyncio.create_task(self._pull_forever(url)))
            await asyncio.sleep(2.0)

    async def _pull_forever(self, url: str) -> None:
        state = self.remotes.setdefault(redact(url), RemoteState(redact(url)))
        backoff = Backoff()
        local = LocalEndpoint(self.db)
        # Its own HTTP session: starting afresh after failures to reach one mirror must not close the connections
        # (and cut the waiting longpoll) of the pulls from the others.
        session = self._make_session()
        try:
            while True:
                remote: HttpEndpoint | None = None
                progress = Resume()  # a fresh one each pass (checkpoints are read as before): where we stand
                try:
                    await self._refresh_mirrors(url, session)
                    remote = HttpEndpoint(session, db_url(url, self.db.name), timeout=self.opts.remote_timeout)
                    # the first pass, and the first after a failure, does not wait for changes: the state
                    # (reachable, lag) is known at once, not after a longpoll on an idle remote
                    wait = self.opts.longpoll if state.reachable else None
                    res = await replicate(remote, local, wait=wait, resume=progress)
                    state.ok()
                    state.docs_pulled += res.docs_written
                    state.pulled_seq = res.last_seq
                    if remote.update_seq is not None:
                        state.remote_seq = remote.update_seq
                    backoff.reset()
                except Exception as exc:  # a background loop must never die (cancellation still ends it)
                    # what this pass learnt still counts: the remote's seq from a _changes answer, the batches done
                    if remote is not None and remote.update_seq is not None:
                        state.remote_seq = remote.update_seq
                    if progress.since is not None:
                        state.pulled_seq = progress.since
                    state.failed(exc)
                    await asyncio.sleep(backoff.next())
                    if backoff.n > 3:  # pooled connections may be dead or black-holed: start afresh
                        old, session = session, self._make_session()
                        await old.close()
        finally:
            await session.close()

    def _make_session(self) -> aiohttp.ClientSession:
        return client_session(self.opts)

    async def _new_session(self) -> None:
        old, self._session = self._session, self._make_session()
        if old is not None:
            await old.close()

    def _session_(self) -> aiohttp.ClientSession:
        assert self._session is not None
        return self._session

    # -- peer mode ----------------------------------------------------------------------------------------------

    async def _peer_loop(self) -> None:
        """Talk to one mirror at a time, pushing and polling side by side; on failure try the next (failover)."""
        backoff = Backoff()
        index = 0
        while True:
            peers = list(self.db.config["peers"])
            if not peers:
                await asyncio.sleep(1.0)
                continue
            url = peers[index % len(peers)]
            state = self.remotes.setdefault(redact(url), RemoteState(redact(url)))
            tasks: list[asyncio.Task[None]] = []
            try:
                await self._refresh_mirrors(url)
                self.current = url
                await self._push(url)  # the outbox first: what was saved offline or before a crash
                backoff.reset()
                tasks = [asyncio.create_task(self._push_loop(url)), asyncio.create_task(self._poll_loop(url))]
                # FIRST_COMPLETED, not FIRST_EXCEPTION: a loop that ended by cancellation (which FIRST_EXCEPTION
                # ignores) left the other one running alone, e.g. a peer still pushing but never polling again.
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                for t in done:
                    if t.cancelled():
                        raise RemoteError(f"{redact(url)}: a replication loop was cancelled; starting afresh")
                    t.result()  # raises the failure that ended the loop
                raise RemoteError(f"{redact(url)}: a replication loop ended; starting afresh")
            except Exception as exc:  # any failure: a background loop must never die (cancellation still ends it)
                state.failed(exc)
                self._resume.pop(url, None)
                await self._new_session()  # pooled connections may be dead or black-holed: start afresh
                index += 1  # fail over to the next mirror
                if index % len(peers) == 0:
                    await asyncio.sleep(backoff.next())
            finally:
                for t in tasks:
                    t.cancel()
                for t in tasks:
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await t

    async def _push_loop(self, url: str) -> None:
        """Push after every local change (a save made during a push wakes the next one at once)."""
        assert self._changed is not None
        state = self.remotes[redact(url)]
        while True:
            self._changed.clear()
            if state.pushed_seq != self.db.seq:
                await self._push(url)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), 30.0)

    async def _poll_loop(self, url: str) -> None:
        while True:
            await self._poll(url)

    async def _refresh_mirrors(self, url: str, session: aiohttp.ClientSession | None = None) -> None:
        """Learn the mirrors ``url`` knows (``GET /_mirrors``), at most every 10 minutes per mirror."""
        now = time.monotonic()
        if not self.opts.learn_mirrors or now - self._refreshed.get(url, -1e9) < 600:
            return
        root = HttpEndpoint(session or self._session_(), url, timeout=self.opts.remote_timeout)
        try:
            found = await root.request("GET", "/_mirrors")
        except RemoteError as exc:
            if exc.status in (400, 404, 405):
                self._refreshed[url] = now
                return  # not a MyNoSQL mirror (CouchDB, PouchDB): nothing to learn
            raise
        self._refreshed[url] = now
        mirrors = found.get("mirrors") if isinstance(found, dict) else None
        if isinstance(mirrors, list):
            self.db.learn_mirrors([m for m in mirrors if isinstance(m, str)], via=url)

    def _endpoint(self, url: str) -> HttpEndpoint:
        """One HttpEndpoint per mirror and session: it remembers that the mirror exists and speaks MyNoSQL."""
        ep = self._endpoints.get(url)
        if ep is None or ep.session is not self._session:
            ep = HttpEndpoint(self._session_(), db_url(url, self.db.name), timeout=self.opts.remote_timeout,
                              client=self.client_token)
            self._endpoints[url] = ep
        return ep

    async def _push(self, url: str) -> None:
        state = self.remotes.setdefault(redact(url), RemoteState(redact(url)))
        remote = self._endpoint(url)
        await remote.ensure_exists()
        resume = self._resume.setdefault(url, Resume())
        res = await replicate(LocalEndpoint(self.db), remote, resume=resume)
        state.ok()
        state.docs_pushed += res.docs_written
        if isinstance(res.last_seq, int):  # the local feed is empty past it: everything up to it is pushed
            state.pushed_seq = res.last_seq

    async def _poll(self, url: str) -> None:
        """Wait (longpoll) for the mirror's changes to records this peer holds, then for a local change."""
        state = self.remotes.setdefault(redact(url), RemoteState(redact(url)))
        remote = self._endpoint(url)
        ck_id = "poll-" + remote.identity
        since = self._poll_since.get(url)
        if since is None:
            ck = await asyncio.to_thread(self.db.local_get, ck_id)
            since = ck.get("since", 0) if ck else 0
        rows, last_seq = await remote.changes(since, 1000, timeout=self.opts.longpoll)
        state.ok()
        # the mirror's latest seq (a MyNoSQL mirror says it; a batch may end before it), else where the feed ended
        state.remote_seq = remote.update_seq if remote.update_seq is not None else last_seq
        if rows:
            pulled = await self._download_held(remote, rows)
            state.docs_pulled += pulled
            await asyncio.to_thread(self.db.local_put, ck_id, {"since": last_seq})
        # Only now: a download that fails (the link drops) must be retried from the same rows, not skipped.
        self._poll_since[url] = last_seq
        state.pulled_seq = last_seq

    async def _download_held(self, remote: HttpEndpoint, rows: list[dict[str, Any]]) -> int:
        """Fetch the revisions the mirror has of records held here and this peer lacks."""
        query = {r["id"]: [c["rev"] for c in r.get("changes", [])] for r in rows if isinstance(r.get("id"), str)}

        def held_missing() -> dict[str, list[str]]:
            out = {}
            for id, revs in query.items():
                st = self.db.state(id)
                if st is not None:
                    missing = [r for r in revs if r not in st.tree]
                    if missing:
                        out[id] = missing
            return out

        want = await asyncio.to_thread(held_missing)
        if not want:
            return 0
        docs = await remote.bulk_get(want)
        errors, written, _ck = await LocalEndpoint(self.db).bulk_docs(docs)
        got = {(d.get("_id"), d.get("_rev")) for d in docs if isinstance(d, dict)}
        lacking = [(id, rev) for id, revs in want.items() for rev in revs if (id, rev) not in got]
        if errors or lacking:  # the poll position must not move past rows not downloaded: retry them
            raise RemoteError(f"{remote.url}: {len(lacking)} wanted revision(s) not served, {len(errors)} refused "
                              f"(first: {(lacking or errors)[0]})", kind="protocol")
        return written

    async def fetch(self, id: str) -> bool:
        """Download every leaf of ``id`` from a mirror (a peer reading a record it does not hold)."""
        for url in [self.current, *self.db.config["peers"]]:
            if not url:
                continue
            remote = HttpEndpoint(self._session_(), db_url(url, self.db.name), timeout=self.opts.read_timeout)
            try:
                from urllib.parse import quote

                docs = await remote.request("GET", "/" + quote(id, safe=""),
                                            params={"open_revs": "all", "revs": "true"},
                                            timeout=self.opts.read_timeout)
            except RemoteError as exc:
                if exc.status == 404:
                    return False
                continue
            found = [d["ok"] for d in docs if isinstance(d, dict) and "ok" in d]
            if found:
                await LocalEndpoint(self.db).bulk_docs(found)
            return bool(found)
        return False

    # -- status -------------------------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        seq = self.db.seq
        out = {}
        for url, st in list(self.remotes.items()):
            out[url] = {
                "reachable": st.reachable,
                "last_success": st.last_success,
                "last_error": st.last_error,
                "pending": max(0, seq - st.pushed_seq) if self.db.config["mode"] != "Mirror" else 0,
                "lag": st.lag,
                "failures": st.failures,
                "docs_pushed": st.docs_pushed,
                "docs_pulled": st.docs_pulled,
                "current": redact(self.current) == url if self.current else False,
            }
        return out


__all__ = ["Sync", "db_url", "protocol"]
