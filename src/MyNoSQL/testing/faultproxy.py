"""Fault-injecting TCP proxy for tests (pure stdlib).

``FaultProxy`` listens on a loopback port and forwards every accepted connection to a loopback
target.  From the test thread the proxy can be switched, at any time, between modes that
simulate network faults:

* ``pass_through()`` / ``heal()`` -- forward bytes unchanged.
* ``delay(seconds)`` -- every chunk, in each direction, is held ``seconds`` before it is forwarded.
* ``drop_new()`` -- new connections are accepted and closed at once (the client sees EOF);
  established connections keep working.
* ``blackhole()`` -- new connections are accepted and whatever they send is read and discarded;
  nothing is ever answered.  Established connections stop forwarding too (both directions are
  discarded, and an EOF from either side is swallowed), so clients time out.
* ``partition()`` -- every established connection is reset (RST) and every new connection is
  accepted and reset at once.  ``partition()`` returns only after the existing connections have
  been closed.
* ``cut_after(n_bytes)`` -- on each connection, after ``n_bytes`` of server->client data (counted
  from the moment the mode was set, or from the connection's start if later) both sockets are
  closed; the client receives exactly those bytes followed by EOF.

``set_target(host, port)`` redirects *new* connections (failover tests).  Only loopback
addresses are accepted, for both the listening and the target side.

The proxy runs an asyncio event loop in one daemon thread.  ``stop()`` closes the listener and
every connection, stops the loop, joins the thread (bounded by ``stop_timeout``) and raises
``RuntimeError`` if the thread did not finish in time.

Example::

    with FaultProxy("127.0.0.1", server_port) as proxy:
        client = connect(proxy.url)
        proxy.partition()
        ...
        proxy.heal()
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import enum
import ipaddress
import socket
import struct
import threading
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any, Final, TypeVar

__all__ = ["FaultProxy", "Mode", "ProxyStats"]

_CHUNK: Final = 64 * 1024
_T = TypeVar("_T")


class Mode(enum.Enum):
    PASS_THROUGH = "pass_through"
    DELAY = "delay"
    DROP_NEW = "drop_new"
    BLACKHOLE = "blackhole"
    PARTITION = "partition"
    CUT_AFTER = "cut_after"


@dataclasses.dataclass(frozen=True)
class _State:
    mode: Mode
    delay: float = 0.0
    cut_after: int = 0
    generation: int = 0


@dataclasses.dataclass(frozen=True)
class ProxyStats:
    """Snapshot of the proxy counters (all cumulative since start or ``reset_stats()``)."""

    accepted: int = 0
    """Connections accepted on the listening socket (including ones dropped right away)."""
    dropped: int = 0
    """New connections closed at accept time because of ``drop_new()`` or ``partition()``."""
    cut: int = 0
    """Established connections closed by the proxy (``partition()`` or ``cut_after()``)."""
    upstream_failures: int = 0
    """Connections whose target could not be reached (the client is closed)."""
    bytes_client_to_server: int = 0
    bytes_server_to_client: int = 0
    bytes_discarded: int = 0
    """Bytes read but not forwarded (blackhole, the tail beyond a cut)."""
    active: int = 0
    """Connections currently open on the client side."""


class _Conn:
    """One proxied connection.  Only touched from the loop thread."""

    __slots__ = ("client", "closed", "cut_generation", "cut_sent", "task", "upstream")

    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None
        self.task: asyncio.Task[None] | None = None
        self.closed = False
        self.cut_generation = -1
        self.cut_sent = 0

    def close(self, *, reset: bool = False) -> None:
        """Close both sockets.  A graceful close flushes bytes already written; ``reset`` sends RST."""
        if self.closed:
            return
        self.closed = True
        for writer in (self.client, self.upstream):
            if writer is None:
                continue
            if reset:
                _abort_with_rst(writer)
            else:
                writer.close()


def _abort_with_rst(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def _require_loopback(host: str, what: str) -> None:
    if not isinstance(host, str):
        raise ValueError(f"{what} must be a string, got {host!r}")
    if host == "localhost":
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"{what} {host!r} is not a loopback address (only 127.0.0.0/8, ::1, localhost)")


def _require_port(port: int, what: str, *, allow_zero: bool) -> None:
    if isinstance(port, bool) or not isinstance(port, int) or not (0 if allow_zero else 1) <= port <= 65535:
        raise ValueError(f"invalid {what}: {port!r}")


class FaultProxy:
    """A loopback-only TCP proxy whose behaviour can be switched between fault modes.

    Mode switches, ``set_target``, ``stats`` and ``reset_stats`` are thread-safe and may be
    called at any time (before ``start()`` as well).  ``start()``/``stop()`` must be called from
    a thread other than the proxy's own.
    """

    def __init__(
        self,
        target_host: str,
        target_port: int,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
        *,
        connect_timeout: float = 2.0,
        stop_timeout: float = 5.0,
    ) -> None:
        _require_loopback(target_host, "target_host")
        _require_port(target_port, "target_port", allow_zero=False)
        _require_loopback(listen_host, "listen_host")
        _require_port(listen_port, "listen_port", allow_zero=True)
        if connect_timeout <= 0 or stop_timeout <= 0:
            raise ValueError("timeouts must be positive")
        self._lock = threading.Lock()
        self._target = (target_host, target_port)
        # "localhost" may resolve to both ::1 and 127.0.0.1; with port 0 that would bind two
        # different ports, so pin it to IPv4.
        self._listen_host = "127.0.0.1" if listen_host == "localhost" else listen_host
        self._listen_port = listen_port
        self._connect_timeout = connect_timeout
        self._stop_timeout = stop_timeout
        self._generation = 0
        self._state = _State(Mode.PASS_THROUGH)
        self._stats = ProxyStats()
        self._errors: list[str] = []
        self._started = False
        self._stopped = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._port: int | None = None
        # Loop-thread-only state.
        self._server: asyncio.AbstractServer | None = None
        self._conns: set[_Conn] = set()

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> FaultProxy:
        """Bind the listening socket and start the proxy thread.  Returns ``self``."""
        with self._lock:
            if self._started:
                raise RuntimeError("FaultProxy can only be started once")
            self._started = True
        loop = asyncio.new_event_loop()
        loop.set_exception_handler(self._on_loop_error)
        thread = threading.Thread(
            target=self._run_loop, args=(loop,), name=f"FaultProxy-{id(self):x}", daemon=True
        )
        self._loop = loop
        self._thread = thread
        thread.start()
        try:
            self._port = self._run_in_loop(self._open_server(), self._stop_timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Close every socket, stop the loop and join the thread.  Idempotent."""
        with self._lock:
            if not self._started or self._stopped:
                return
            self._stopped = True
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:  # pragma: no cover - start() always sets both
            return
        if threading.current_thread() is thread:
            raise RuntimeError("FaultProxy.stop() called from the proxy thread")
        if thread.is_alive():
            with contextlib.suppress(concurrent.futures.TimeoutError, RuntimeError):
                self._run_in_loop(self._shutdown(), self._stop_timeout)
            with contextlib.suppress(RuntimeError):  # loop already closed
                loop.call_soon_threadsafe(loop.stop)
        thread.join(self._stop_timeout)
        if thread.is_alive():
            raise RuntimeError(f"FaultProxy thread did not stop within {self._stop_timeout} s")

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------ properties

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("FaultProxy is not started")
        return self._port

    @property
    def host(self) -> str:
        return self._listen_host

    @property
    def address(self) -> tuple[str, int]:
        return (self._listen_host, self.port)

    @property
    def url(self) -> str:
        host = f"[{self._listen_host}]" if ":" in self._listen_host else self._listen_host
        return f"http://{host}:{self.port}"

    @property
    def mode(self) -> Mode:
        with self._lock:
            return self._state.mode

    @property
    def target(self) -> tuple[str, int]:
        with self._lock:
            return self._target

    @property
    def errors(self) -> list[str]:
        """Unexpected errors reported by the proxy loop (should stay empty; useful in asserts)."""
        with self._lock:
            return list(self._errors)

    def stats(self) -> ProxyStats:
        with self._lock:
            return self._stats

    def reset_stats(self) -> None:
        with self._lock:
            self._stats = ProxyStats(active=self._stats.active)

    # ------------------------------------------------------------------ modes

    def pass_through(self) -> None:
        self._set_state(Mode.PASS_THROUGH)

    def heal(self) -> None:
        """Same as ``pass_through()``."""
        self._set_state(Mode.PASS_THROUGH)

    def delay(self, seconds: float) -> None:
        if not seconds >= 0:
            raise ValueError(f"delay must be >= 0, got {seconds!r}")
        self._set_state(Mode.DELAY, delay=float(seconds))

    def drop_new(self) -> None:
        self._set_state(Mode.DROP_NEW)

    def blackhole(self) -> None:
        self._set_state(Mode.BLACKHOLE)

    def partition(self) -> None:
        """Reset every established connection (synchronously) and reset new ones on accept."""
        self._set_state(Mode.PARTITION)
        self._call_soon_in_loop(self._cut_all)

    def cut_after(self, n_bytes: int) -> None:
        if isinstance(n_bytes, bool) or not isinstance(n_bytes, int) or n_bytes < 0:
            raise ValueError(f"cut_after needs a non-negative int, got {n_bytes!r}")
        self._set_state(Mode.CUT_AFTER, cut_after=n_bytes)

    def set_target(self, host: str, port: int) -> None:
        """Send *new* connections to ``host:port``; established ones keep their target."""
        _require_loopback(host, "target_host")
        _require_port(port, "target_port", allow_zero=False)
        with self._lock:
            self._target = (host, port)

    # ------------------------------------------------------------------ internals: thread side

    def _set_state(self, mode: Mode, *, delay: float = 0.0, cut_after: int = 0) -> None:
        with self._lock:
            self._generation += 1
            self._state = _State(mode, delay, cut_after, self._generation)

    def _current(self) -> _State:
        with self._lock:
            return self._state

    def _bump(self, **deltas: int) -> None:
        with self._lock:
            s = self._stats
            self._stats = dataclasses.replace(s, **{k: getattr(s, k) + v for k, v in deltas.items()})

    def _record_error(self, message: str) -> None:
        with self._lock:
            self._errors.append(message)

    def _run_in_loop(self, coro: Coroutine[Any, Any, _T], timeout: float) -> _T:
        loop = self._loop
        assert loop is not None
        fut = asyncio.run_coroutine_threadsafe(coro, loop)
        try:
            return fut.result(timeout)
        except concurrent.futures.TimeoutError:
            fut.cancel()
            raise

    def _call_soon_in_loop(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the loop thread and wait for it (no-op if the proxy is not running)."""
        with self._lock:
            running = self._started and not self._stopped
        loop, thread = self._loop, self._thread
        if not running or loop is None or thread is None or not thread.is_alive():
            return
        if threading.current_thread() is thread:
            fn()
            return

        async def call() -> None:
            fn()
            await asyncio.sleep(0)  # let aborted transports run connection_lost (close the fds)

        # The loop may be shutting down concurrently (stop() from another thread).
        with contextlib.suppress(
            RuntimeError, concurrent.futures.TimeoutError, concurrent.futures.CancelledError
        ):
            self._run_in_loop(call(), self._stop_timeout)

    def _run_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            try:
                pending = asyncio.all_tasks(loop)
                for task in pending:
                    task.cancel()
                if pending:
                    loop.run_until_complete(asyncio.wait(pending, timeout=self._stop_timeout))
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                asyncio.set_event_loop(None)
                loop.close()

    def _on_loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        self._record_error(f"{context.get('message')}: {exc!r}")

    # ------------------------------------------------------------------ internals: loop side

    async def _open_server(self) -> int:
        server = await asyncio.start_server(self._on_client, host=self._listen_host, port=self._listen_port)
        self._server = server
        return int(server.sockets[0].getsockname()[1])

    async def _shutdown(self) -> None:
        server = self._server
        if server is not None:
            server.close()
        tasks = self._close_conns(reset=False, count_cut=False)
        if tasks:
            await asyncio.wait(tasks, timeout=self._stop_timeout / 2)
        if server is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(server.wait_closed(), self._stop_timeout / 2)

    def _cut_all(self) -> None:
        self._close_conns(reset=True, count_cut=True)

    def _close_conns(self, *, reset: bool, count_cut: bool) -> list[asyncio.Task[None]]:
        tasks: list[asyncio.Task[None]] = []
        current = asyncio.current_task()
        for conn in list(self._conns):
            if not conn.closed:
                if count_cut:
                    self._bump(cut=1)
                conn.close(reset=reset)
            if conn.task is not None and conn.task is not current and not conn.task.done():
                conn.task.cancel()
                tasks.append(conn.task)
        return tasks

    def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = _Conn(writer)
        self._conns.add(conn)
        self._bump(accepted=1, active=1)
        loop = asyncio.get_running_loop()
        task = loop.create_task(self._handle(conn, reader))
        conn.task = task
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self._record_error(f"connection handler failed: {task.exception()!r}")

    async def _handle(self, conn: _Conn, reader: asyncio.StreamReader) -> None:
        try:
            await self._serve(conn, reader)
        finally:
            conn.close()
            self._conns.discard(conn)
            self._bump(active=-1)

    async def _serve(self, conn: _Conn, reader: asyncio.StreamReader) -> None:
        with self._lock:
            state = self._state
            target = self._target
        if state.mode is Mode.PARTITION:
            self._bump(dropped=1)
            conn.close(reset=True)
            return
        if state.mode is Mode.DROP_NEW:
            self._bump(dropped=1)
            conn.close()
            return
        if state.mode is Mode.BLACKHOLE:
            await self._sink(conn, reader)
            return
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(*target), self._connect_timeout
            )
        except (OSError, asyncio.TimeoutError):
            self._bump(upstream_failures=1)
            conn.close()
            return
        conn.upstream = up_writer
        if conn.closed:  # cut while we were connecting
            up_writer.transport.abort()
            return
        await asyncio.gather(
            self._pump(conn, reader, up_writer, to_server=True),
            self._pump(conn, up_reader, conn.client, to_server=False),
        )

    async def _sink(self, conn: _Conn, reader: asyncio.StreamReader) -> None:
        """Blackholed new connection: read and discard until EOF or close; never answer."""
        with contextlib.suppress(OSError):
            while not conn.closed:
                chunk = await reader.read(_CHUNK)
                if not chunk:
                    return
                self._bump(bytes_discarded=len(chunk))

    async def _pump(
        self,
        conn: _Conn,
        src: asyncio.StreamReader,
        dst: asyncio.StreamWriter,
        *,
        to_server: bool,
    ) -> None:
        counter = "bytes_client_to_server" if to_server else "bytes_server_to_client"
        try:
            while not conn.closed:
                chunk = await src.read(_CHUNK)
                if conn.closed:
                    return
                state = self._current()
                if not chunk:
                    # EOF: propagate as a half-close, unless blackholed (never answer).
                    if state.mode is not Mode.BLACKHOLE and not dst.is_closing() and dst.can_write_eof():
                        dst.write_eof()
                    return
                if state.mode is Mode.DELAY and state.delay > 0:
                    await asyncio.sleep(state.delay)
                    if conn.closed:
                        return
                    state = self._current()
                if state.mode in (Mode.BLACKHOLE, Mode.PARTITION):
                    self._bump(bytes_discarded=len(chunk))
                    continue
                if not to_server and state.mode is Mode.CUT_AFTER:
                    if conn.cut_generation != state.generation:
                        conn.cut_generation = state.generation
                        conn.cut_sent = 0
                    remaining = state.cut_after - conn.cut_sent
                    if len(chunk) >= remaining:
                        self._bump(**{counter: remaining}, bytes_discarded=len(chunk) - remaining, cut=1)
                        if remaining:
                            dst.write(chunk[:remaining])
                        conn.close()  # graceful: flushes the head, then FIN on both sides
                        return
                    conn.cut_sent += len(chunk)
                self._bump(**{counter: len(chunk)})
                dst.write(chunk)
                await dst.drain()
        except OSError:
            conn.close()
