"""A mirror's HTTP server: binds (TLS optional), admits connections within the limits (:mod:`.connections`), and
stops in two steps (stop accepting, then close) so its owner can make a last push in between."""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable

from aiohttp import web

from ..credentials import Users
from ..database import Database
from ..errors import SecurityError
from ..net.urls import is_loopback
from ..options import Limits
from .app import MirrorApp, MirrorStatus
from .connections import ConnectionGate, GatedSite
from .registry import Databases

log = logging.getLogger("MyNoSQL")


class MirrorServer:
    """Serves ``dbs`` on ``host:port`` (0: any free port). Runs on its owner's event loop."""

    def __init__(self, dbs: dict[str, Database] | Databases, *, host: str, port: int, users: Users, limits: Limits,
                 certfile: str | None = None, keyfile: str | None = None,
                 mirrors: Callable[[], list[str]] | None = None, mirror_status: MirrorStatus | None = None,
                 cors_origins: tuple[str, ...] = (), server_uuid: str | None = None) -> None:
        self.dbs, self.host, self.port, self.users, self.limits = dbs, host, port, users, limits
        self.certfile, self.keyfile = certfile, keyfile
        self.mirrors, self.mirror_status = mirrors, mirror_status
        self.cors_origins = cors_origins
        self.server_uuid = server_uuid
        self.url: str | None = None
        self._runner: web.AppRunner | None = None
        self._site: GatedSite | None = None

    async def start(self) -> str:
        """Bind and serve; returns the URL it serves on. :class:`SecurityError` if it would serve beyond
        loopback without users; ``OSError`` if the address cannot be bound."""
        host, port, users, limits = self.host, self.port, self.users, self.limits
        names = (", ".join(repr(n) for n in self.dbs) if isinstance(self.dbs, dict)
                 else f"of {self.dbs.root}" if self.dbs.only is None else ", ".join(map(repr, sorted(self.dbs.only))))
        if not users and not is_loopback(host):
            raise SecurityError(
                f"refusing to serve database {names} on {host}:{port} without credentials: anyone who "
                "can reach that address could read and change every record. Add users first (mynosql serve "
                "--credentials FILE, or db.adduser(name, password)), or listen on 127.0.0.1.")
        if not users:
            log.warning("mirror %s serves WITHOUT authentication (loopback only: %s)", names, host)
        ssl_ctx = None
        if self.certfile:
            ssl_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ssl_ctx.load_cert_chain(self.certfile, self.keyfile)
        app = MirrorApp(self.dbs, mirrors=self.mirrors, users=users, limits=limits,
                        open_without_users=is_loopback(host), mirror_status=self.mirror_status,
                        cors_origins=self.cors_origins, tls=ssl_ctx is not None, server_uuid=self.server_uuid)
        runner = app.runner(access_log=None, handle_signals=False, shutdown_timeout=1.0,
                            keepalive_timeout=limits.header_timeout)
        await runner.setup()
        self._runner = runner
        server = runner.server
        assert server is not None
        gate = ConnectionGate(limits, server, ssl_context=ssl_ctx, refused=app.observer.refused)
        app.observer.connections = lambda: gate.open
        site = GatedSite(runner, host, port, gate)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            self._runner = None
            raise
        self._site = site
        sockets = getattr(site._server, "sockets", None) or []
        real_port = sockets[0].getsockname()[1] if sockets else port
        shown = f"[{host}]" if ":" in host else host
        self.url = f"{'https' if ssl_ctx else 'http'}://{shown}:{real_port}"
        log.info("mirror %s serving on %s", names, self.url)
        return self.url

    async def stop_accepting(self) -> None:
        """Close the listening socket: no new connections (those open finish their requests)."""
        if self._site is not None:
            srv = self._site._server
            if srv is not None:
                srv.close()

    async def close(self) -> None:
        """Close every connection and the application (its longpolls answered, its listeners removed)."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
            self._site = None
