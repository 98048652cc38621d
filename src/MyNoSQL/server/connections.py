"""Who may hold a connection to a mirror, and how long a TLS client may take to say hello.

Every accepted TCP connection is counted from its first moment (a TLS handshake under way included), by client
address (an IPv6 address by its /64 network, which one machine usually holds whole):

* at most ``Limits.max_connections_per_address`` from one address: more are closed at once (a reset);
* at most ``Limits.max_connections`` in all. When all are taken, a connection from an address that holds fewer
  than the address holding the most closes that address's oldest connection and takes its place: a flood from
  a few addresses never locks the others out. Otherwise it is closed at once;
* a TLS client that has not completed its handshake within ``Limits.tls_handshake_timeout`` is closed (the TLS
  layer is set up here, per connection, once the connection is admitted).

Nothing of aiohttp runs for a refused connection. Refusals are counted in ``/_metrics``
(``mynosql_limit_refusals_total``) and logged summarised (:class:`~.observe.RefusalLog`), never one by one.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import ssl
from collections.abc import Callable
from typing import Any

from aiohttp import web

from ..options import Limits


def address_key(peer: Any) -> str:
    """The address a connection counts against: an IPv4 address, or an IPv6 address's /64 network."""
    host = peer[0] if isinstance(peer, tuple) and peer else None
    if not isinstance(host, str):
        return "?"
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class ConnectionGate:
    """Admits, counts and hands over a mirror's connections (see the module docstring). Runs on the event loop.

    ``handler()`` makes the HTTP protocol of an admitted connection (aiohttp's ``Server``); ``refused(limit,
    address)`` is told of every refusal."""

    def __init__(self, limits: Limits, handler: Callable[[], asyncio.Protocol], *,
                 ssl_context: ssl.SSLContext | None = None,
                 refused: Callable[[str, str], None] = lambda limit, address: None) -> None:
        self.limits = limits
        self.handler = handler
        self.ssl_context = ssl_context
        self.refused = refused
        self.per_address = min(limits.max_connections_per_address, limits.max_connections)
        self._by_address: dict[str, dict[_Connection, None]] = {}  # insertion order: the oldest first
        self._open = 0
        self._closed = False

    @property
    def open(self) -> int:
        """Connections held now (TLS handshakes under way included)."""
        return self._open

    def protocol(self) -> asyncio.Protocol:
        """The protocol factory of the listening socket."""
        return _Connection(self)

    def close(self) -> None:
        """Admit no more, and close the connections whose TLS handshake is under way (aiohttp closes the others,
        letting their requests finish first)."""
        self._closed = True
        for conns in list(self._by_address.values()):
            for conn in list(conns):
                if conn.inner is None:
                    conn.abort()

    # -- bookkeeping ------------------------------------------------------------------------------------------

    def _admit(self, conn: _Connection) -> str | None:
        """Count ``conn`` in; or the name of the limit that refuses it."""
        if self._closed:
            return "max_connections"
        mine = self._by_address.get(conn.address)
        held = len(mine) if mine else 0
        if held >= self.per_address:
            return "max_connections_per_address"
        if self._open >= self.limits.max_connections:
            heaviest = max(self._by_address.values(), key=len, default=None)
            if heaviest is None or len(heaviest) <= held + 1:
                return "max_connections"
            victim = next(iter(heaviest))
            self._release(victim)  # counted out now; its connection_lost comes later
            victim.abort()
            self.refused("max_connections", victim.address)
        self._by_address.setdefault(conn.address, {})[conn] = None
        self._open += 1
        return None

    def _release(self, conn: _Connection) -> bool:
        """Count ``conn`` out; False if it was already."""
        conns = self._by_address.get(conn.address)
        if conns is None or conn not in conns:
            return False
        del conns[conn]
        if not conns:
            del self._by_address[conn.address]
        self._open -= 1
        return True


class _Connection(asyncio.Protocol):
    """One accepted connection: counted by the gate, then (over TLS once the handshake is done) handed to
    aiohttp's protocol, which gets every later event through this one (so the gate always learns of its end)."""

    def __init__(self, gate: ConnectionGate) -> None:
        self.gate = gate
        self.address = "?"
        self.transport: asyncio.Transport | None = None
        self.inner: asyncio.Protocol | None = None
        self._tls: asyncio.Task[None] | None = None
        self._early: list[bytes] = []  # what the TLS layer decrypted before start_tls returned

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.address = address_key(transport.get_extra_info("peername"))
        refused = self.gate._admit(self)
        if refused is not None:
            transport.abort()
            self.gate.refused(refused, self.address)
            return
        if self.gate.ssl_context is None:
            self._hand_over(transport)
            return
        transport.pause_reading()  # the ClientHello waits in the socket for the TLS layer
        self._tls = asyncio.get_running_loop().create_task(self._start_tls(transport, self.gate.ssl_context))

    async def _start_tls(self, transport: asyncio.Transport, ctx: ssl.SSLContext) -> None:
        try:
            tls = await asyncio.get_running_loop().start_tls(
                transport, self, ctx, server_side=True, ssl_handshake_timeout=self.gate.limits.tls_handshake_timeout)
        except (Exception, asyncio.CancelledError):  # a timeout, a bad handshake, the server closing
            tls = None
        if tls is None:
            self._no_handshake()
            transport.abort()
            return
        self.transport = tls
        self._hand_over(tls)

    def _no_handshake(self) -> None:
        """The TLS handshake did not complete (in time): counted once, unless the connection was closed to make
        room for another or the server is closing."""
        if self.gate._release(self) and not self.gate._closed:
            self.gate.refused("tls_handshake", self.address)

    def _hand_over(self, transport: asyncio.Transport) -> None:
        inner = self.gate.handler()
        self.inner = inner
        inner.connection_made(transport)
        early, self._early = self._early, []
        for data in early:
            if self.inner is not None:
                self.inner.data_received(data)

    def abort(self) -> None:
        if self._tls is not None and not self._tls.done():
            self._tls.cancel()
        if self.transport is not None:
            self.transport.abort()

    # -- events, passed on to aiohttp's protocol --------------------------------------------------------------

    def connection_lost(self, exc: Exception | None) -> None:
        if self.inner is None and self._tls is not None:
            self._no_handshake()
        self.gate._release(self)
        inner, self.inner = self.inner, None
        if inner is not None:
            inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.inner is not None:
            self.inner.data_received(data)
        else:  # a request that came with the end of the TLS handshake
            self._early.append(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.inner is not None else None

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()


class GatedSite(web.TCPSite):
    """aiohttp's TCP site, its connections admitted by a :class:`ConnectionGate` (TLS is the gate's)."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, gate: ConnectionGate) -> None:
        super().__init__(runner, host, port, reuse_address=True)
        self.gate = gate

    @property
    def name(self) -> str:
        scheme = "https" if self.gate.ssl_context is not None else "http"
        return f"{scheme}://{self._host}:{self.port}"

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with its runner
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self.gate.protocol, self._host, self._port,
                                                backlog=self._backlog, reuse_address=True)
        sockets = self._server.sockets
        self._bound_port = sockets[0].getsockname()[1] if sockets else self._port

    async def stop(self) -> None:
        await super().stop()
        with contextlib.suppress(Exception):
            self.gate.close()
