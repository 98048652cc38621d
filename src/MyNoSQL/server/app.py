"""The HTTP application of a mirror (aiohttp): its middlewares (observe, errors, authentication), the server's
own routes, and the routes of :mod:`.documents` and :mod:`.changes`. Answers are JSON, but for ``/_metrics``
(Prometheus text) and ``/_dashboard`` (an HTML page); errors are CouchDB-shaped JSON, ``{"error", "reason"}``.

Routes: ``GET /``, ``GET /_up``, ``GET /_mirrors``, ``GET /_metrics``, ``GET /_dashboard``,
``GET /_dashboard/data`` (the page's JSON), ``GET|HEAD|PUT /{db}``, ``GET|POST /{db}/_changes`` (normal and
longpoll), ``POST /{db}/_revs_diff``, ``POST /{db}/_bulk_get``, ``POST /{db}/_bulk_docs``,
``POST /{db}/_ensure_full_commit``, ``GET /{db}/_all_docs``, ``GET|PUT|DELETE /{db}/_local/{id}``,
``GET|PUT|DELETE /{db}/{id}`` (``rev``, ``revs``, ``open_revs``, ``latest``, ``conflicts``, ``new_edits``,
``attachments``, ``atts_since``), ``GET|HEAD|PUT|DELETE /{db}/{id}/{attachment}`` (``rev``, ``Range``),
``POST /{db}/_find``, ``POST /{db}/_explain``, ``GET|POST /{db}/_index``, ``DELETE /{db}/_index/{ddoc}/json/{name}``
(:mod:`.queries`).
``GET /`` and ``GET /_up`` need no credentials; the others need a user's once the mirror has users.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web, web_response
from aiohttp.http_exceptions import HttpProcessingError

from ..credentials import Users
from ..database import Database
from ..errors import (
    AttachmentNotFound,
    ConflictError,
    DatabaseClosed,
    DocumentNotFound,
    InvalidDocument,
    MyNoSQLError,
)
from ..options import Limits
from ..records.attachments import AttachmentTooLarge, MissingStub
from .auth import Authenticator, Throttle, basic_credentials
from .changes import ChangesRoutes
from .context import RENEW, USER, ServerContext
from .databases import DatabaseRoutes
from .documents import DocumentRoutes
from .observe import Observer
from .queries import QueryRoutes
from .registry import Databases
from .requests import HttpError, error_response, json_response
from .session import Cors

log = logging.getLogger("MyNoSQL")

# aiohttp names itself and Python's version in the Server header of the answers it makes on its own (a request
# it cannot parse gets its 400 before any middleware or on_response_prepare hook runs). Say only our name.
web_response.SERVER_SOFTWARE = "MyNoSQL"  # type: ignore[attr-defined]

# Answers that are part of the protocol, not a client's problem: a missing record or checkpoint (404), a conflict
# (409), a database that exists already (412). The dashboard shows a client's other 4xx/5xx answers.
_ORDINARY = (404, 409, 412)

MirrorStatus = Callable[[str], dict[str, Any]]  # database name -> its replication status, by remote


class _HttpServerLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """The logger aiohttp's HTTP protocol is given. A request its parser refuses (answered 400 by aiohttp) is
    counted and summarised (:class:`~.observe.RefusalLog`), never logged with its content: the parser's message
    quotes the bytes it choked on, and a malformed ``Authorization`` header would put credentials in the log.
    Anything else is logged as aiohttp logs it."""

    def __init__(self, observer: Observer) -> None:
        super().__init__(logging.getLogger("aiohttp.server"), {})
        self.observer = observer

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info")
        if exc is True:
            exc = sys.exc_info()[1]
        if isinstance(exc, HttpProcessingError):
            address = args[0] if args and isinstance(args[0], str) else "?"  # "... request from %s", remote
            self.observer.refused("malformed_http", address)
            return
        super().log(level, msg, *args, **kwargs)


class MirrorApp:
    def __init__(self, dbs: dict[str, Database] | Databases, *, mirrors: Callable[[], list[str]] | None = None,
                 users: Users | None = None, limits: Limits | None = None, open_without_users: bool = True,
                 mirror_status: MirrorStatus | None = None, cors_origins: Sequence[str] = (),
                 tls: bool = False, server_uuid: str | None = None) -> None:
        """``dbs``: the databases served (a fixed mapping, or a :class:`Databases` registry of a folder).
        ``open_without_users``: serve everyone while no user exists (only ever for a loopback address).
        ``mirrors()``: the mirror URLs ``/_mirrors`` lists. ``mirror_status(db)``: the replication status the
        dashboard and the metrics show for a database. ``cors_origins``: the web origins allowed to call this
        mirror from a browser (``*``: any, without credentials). ``tls``: it serves https (session cookies are
        then ``Secure``)."""
        self.dbs = dbs if isinstance(dbs, Databases) else Databases(fixed=dbs)
        dbs = self.dbs
        self.mirrors = mirrors or (lambda: [])
        self.limits = limits or Limits()
        self.observer = Observer(dbs, mirror_status or (lambda name: {}))
        self.ctx = ServerContext(dbs, self.limits, self.observer)
        self.auth = Authenticator(users, Throttle(self.limits.max_auth_failures, self.limits.auth_failure_window),
                                  open_without_users=open_without_users)
        self.cors = Cors(cors_origins)
        self.tls = tls
        self.server_uuid = server_uuid or secrets.token_hex(16)  # CouchDB's GET / "uuid": the server's identity
        self._ticker: asyncio.Task[None] | None = None

    # -- plumbing ---------------------------------------------------------------------------------------------

    def build(self) -> web.Application:
        app = web.Application(client_max_size=self.limits.max_request_bytes,
                              middlewares=[self._preflight, self._observe, self._errors, self.auth.middleware,
                                           self._hold])
        app.on_response_prepare.append(self._headers)
        r = app.router
        r.add_get("/", self.root)
        r.add_get("/_up", self.up)
        r.add_get("/_mirrors", self.get_mirrors)
        r.add_get("/_metrics", self.metrics)
        r.add_get("/_dashboard", self.dashboard)
        r.add_get("/_dashboard/data", self.dashboard_data)
        r.add_get("/_all_dbs", self.all_dbs)
        r.add_get("/_session", self.session_get)
        r.add_post("/_session", self.session_post)
        r.add_delete("/_session", self.session_delete)
        # before the document routes: /{db}/{id} would take /{db}/_changes, /{db}/_all_docs...
        ChangesRoutes(self.ctx).add_to(r)
        QueryRoutes(self.ctx).add_to(r)  # likewise /{db}/_index
        DatabaseRoutes(self.ctx).add_to(r)
        DocumentRoutes(self.ctx).add_to(r)
        app.on_startup.append(self._startup)
        app.on_cleanup.append(self._cleanup)
        return app

    def runner(self, **kwargs: Any) -> web.AppRunner:
        """An aiohttp runner for :meth:`build`'s application. Request bodies are decompressed by the routes
        (aiohttp's own decompression can leave a connection unanswered when a body does not decompress)."""
        return web.AppRunner(self.build(), auto_decompress=False, logger=_HttpServerLog(self.observer), **kwargs)

    async def _startup(self, app: web.Application) -> None:
        self._ticker = asyncio.create_task(self._tick())
        await self.ctx.listen()

    async def _cleanup(self, app: web.Application) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        await self.ctx.cancel_tasks()
        await self.ctx.unlisten()
        await asyncio.to_thread(self.auth.close)
        await asyncio.to_thread(self.ctx.rules.close)

    async def _tick(self) -> None:
        n = 0
        while True:
            await asyncio.sleep(1.0)
            self.observer.tick()
            n += 1
            if n % 10 == 0:  # every 10 s: databases no request used lately close
                try:
                    await self.dbs.close_idle()
                except Exception as exc:  # the ticker must go on
                    log.error("closing idle databases failed: %s", exc)

    @web.middleware
    async def _hold(self, request: web.Request, handler: Callable[[web.Request], Any]) -> web.StreamResponse:
        """The databases a request uses stay open until its answer is made."""
        try:
            resp: web.StreamResponse = await handler(request)
            return resp
        finally:
            self.ctx.release(request)

    async def _headers(self, request: web.Request, response: web.StreamResponse) -> None:
        response.headers["Server"] = "MyNoSQL"  # never the versions of Python or aiohttp
        response.headers["X-MyNoSQL"] = "1"  # our clients may then send gzip request bodies (an extension)
        if self.cors:
            response.headers.update(self.cors.headers(request.headers.get("Origin")))
        renew = request.get(RENEW)
        if renew is not None and response.status < 400:
            self.auth.sessions.set_cookie(response, renew, secure=self.tls)

    @web.middleware
    async def _preflight(self, request: web.Request, handler: Callable[[web.Request], Any]) -> web.StreamResponse:
        """CORS preflight requests are answered here, before any credentials are asked for."""
        if self.cors and request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            return self.cors.preflight(request)
        resp: web.StreamResponse = await handler(request)
        return resp

    @web.middleware
    async def _observe(self, request: web.Request, handler: Callable[[web.Request], Any]) -> web.StreamResponse:
        resp: web.StreamResponse = await handler(request)
        info = request.match_info.route.resource
        route = info.canonical if info is not None else "unmatched"
        self.observer.request(route, request.method, resp.status)
        if resp.status >= 400 and resp.status not in _ORDINARY:
            self._client_error(request, resp, route)
        return resp

    def _client_error(self, request: web.Request, resp: web.StreamResponse, route: str) -> None:
        """Remember the error this mirror answered a replicating client with (the dashboard shows it next to the
        client): on the routes of its databases and ``/_mirrors``, and any failed login that gave a name. (Not,
        say, the anonymous first request of a browser for the dashboard, which the 401 makes ask for a password.)"""
        db = request.match_info.get("db")
        db = db if db in dict(self.dbs.open_items()) else None
        user = request.get(USER)
        if user is None and resp.status == 401:  # a failed login: the name it tried (never the password)
            user = basic_credentials(request)[0][:64] or None
        if db is None and route != "/_mirrors" and not (resp.status == 401 and user):
            return
        error = reason = ""
        body = resp.body if isinstance(resp, web.Response) else None
        if isinstance(body, bytes) and len(body) <= 4096:
            with contextlib.suppress(orjson.JSONDecodeError):
                answer = orjson.loads(body)
                if isinstance(answer, dict):
                    error, reason = str(answer.get("error", "")), str(answer.get("reason", ""))
        what = f"{resp.status} {error}: {reason}" if error else str(resp.status)
        self.observer.error(request.remote or "?", user, db, f"{what} ({request.method} {route})"[:300])

    @web.middleware
    async def _errors(self, request: web.Request, handler: Callable[[web.Request], Any]) -> web.StreamResponse:
        try:
            resp: web.StreamResponse = await handler(request)
            # gzip when the client accepts it and it is worth it (our peers, CouchDB's and PouchDB's clients)
            body = resp.body if isinstance(resp, web.Response) else None
            if isinstance(body, (bytes, bytearray)) and len(body) > 1024 \
                    and "gzip" in request.headers.get("Accept-Encoding", ""):
                resp.enable_compression(web.ContentCoding.gzip)
            return resp
        except HttpError as exc:
            return error_response(exc.status, exc.error, exc.reason)
        except AttachmentNotFound:
            return error_response(404, "not_found", "Document is missing attachment")
        except DocumentNotFound as exc:
            return error_response(404, "not_found", "deleted" if exc.deleted else "missing")
        except ConflictError:
            return error_response(409, "conflict", "Document update conflict.")
        except MissingStub as exc:
            return error_response(412, "missing_stub", str(exc))
        except AttachmentTooLarge as exc:  # CouchDB's {request_entity_too_large, {attachment, Name}}
            return error_response(413, "attachment_too_large", str(exc))
        except InvalidDocument as exc:
            return error_response(400, "bad_request", str(exc))
        except HttpProcessingError:  # a body's parser (aiohttp's multipart) refused what it read: the client's fault
            return error_response(400, "bad_request", "malformed request body")
        except DatabaseClosed:
            name = request.match_info.get("db", "")
            if name and not self.dbs.servable(name):  # deleted while the request ran: CouchDB's answer then
                return error_response(404, "not_found", "Database does not exist.")
            return error_response(503, "unavailable", "the database closed while the request ran: retry it")
        except web.HTTPException as exc:
            if exc.status == 413:
                return error_response(413, "too_large", "the request body is too large")
            return error_response(exc.status, "not_found" if exc.status == 404 else "bad_request", exc.reason)
        except MyNoSQLError as exc:
            log.error("mirror: %s %s failed: %s", request.method, request.path, exc)
            return error_response(500, "internal_error", "the database could not complete the request")
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug: logged with its traceback here, never shown to the client
            log.exception("mirror: %s %s failed", request.method, request.path)
            return error_response(500, "internal_error", "the database could not complete the request")

    # -- server routes ----------------------------------------------------------------------------------------

    async def root(self, request: web.Request) -> web.Response:
        return json_response({"couchdb": "Welcome", "version": "3.3.0", "uuid": self.server_uuid,
                              "vendor": {"name": "MyNoSQL"}, "features": ["mynosql"]})

    async def up(self, request: web.Request) -> web.Response:
        """Health: every database open and its compactor working (no I/O: cheap enough for any prober)."""
        problems = []
        for name, db in self.dbs.held():
            problem = db.health()
            if problem:
                problems.append(f"database {name!r}: {problem}")
        if problems:
            return json_response({"status": "failing", "reason": "; ".join(problems)}, 503)
        return json_response({"status": "ok"})

    async def get_mirrors(self, request: web.Request) -> web.Response:
        return json_response({"mirrors": self.mirrors()})

    async def metrics(self, request: web.Request) -> web.Response:
        text = await asyncio.to_thread(self.observer.prometheus)
        return web.Response(text=text, content_type="text/plain", charset="utf-8",
                            headers={"X-Content-Type-Options": "nosniff"})

    async def dashboard(self, request: web.Request) -> web.Response:
        page = (Path(__file__).parent / "static" / "dashboard.html").read_bytes()
        return web.Response(body=page, content_type="text/html", charset="utf-8", headers={
            "Content-Security-Policy": "default-src 'self'; script-src 'self' 'unsafe-inline'; "
                                       "style-src 'self' 'unsafe-inline'; img-src 'self' data:",
            "X-Frame-Options": "DENY", "Cache-Control": "no-store"})

    async def dashboard_data(self, request: web.Request) -> web.Response:
        return json_response(await asyncio.to_thread(self.observer.snapshot))

    # -- cookie sessions (browsers) ---------------------------------------------------------------------------

    @staticmethod
    def _roles(role: str | None) -> list[str]:
        return ["_admin"] if role in (None, "admin") else [role]

    async def session_get(self, request: web.Request) -> web.Response:
        """``GET /_session``: who the request is (CouchDB's ``userCtx``)."""
        handlers = {"authentication_handlers": ["cookie", "default"]}
        if self.auth.open:
            return json_response({"ok": True, "userCtx": {"name": None, "roles": ["_admin"]}, "info": handlers})
        who = await self.auth.identify(request)
        if isinstance(who, web.Response):
            return who
        how = "cookie" if request.headers.get("Authorization") is None else "default"
        ctx: dict[str, Any] = {"name": who[0], "roles": self._roles(who[1])} if who else {"name": None, "roles": []}
        info: dict[str, Any] = {"authentication_handlers": ["cookie", "default"]}
        if who:
            info["authenticated"] = how
        return json_response({"ok": True, "userCtx": ctx, "info": info})

    async def session_post(self, request: web.Request) -> web.Response:
        """``POST /_session`` with ``{"name", "password"}`` (JSON or a form): log in; sets the ``AuthSession``
        cookie (counted by the login throttle like any login)."""
        given: Any
        if request.content_type == "application/x-www-form-urlencoded":
            try:
                given = dict(await request.post())
            except (UnicodeDecodeError, ValueError) as exc:  # not UTF-8, or not a form
                raise HttpError(400, "bad_request", "the form is not valid") from exc
        elif request.content_type != "application/json":  # CouchDB's bad_ctype (no login by a text/plain CSRF)
            raise HttpError(415, "bad_content_type", "Content-Type must be 'application/x-www-form-urlencoded' or "
                            "'application/json'")
        else:
            given = await self.ctx.rules.body(request)
            if not isinstance(given, dict):
                raise HttpError(400, "bad_request", "expected {name, password}")
        name, password = given.get("name"), given.get("password")
        if not isinstance(name, str) or not isinstance(password, str) or not name:
            raise HttpError(400, "bad_request", "name and password must be strings")
        role = await self.auth.login(request.remote or "?", name, password)
        if role is False:
            return error_response(429, "too_many_requests", "Too many failed logins; try again later.")
        if not isinstance(role, str):
            return error_response(401, "unauthorized", "Name or password is incorrect.")
        request[USER] = name
        resp = json_response({"ok": True, "name": name, "roles": self._roles(role)})
        self.auth.sessions.set_cookie(resp, name, secure=self.tls)
        return resp

    async def session_delete(self, request: web.Request) -> web.Response:
        resp = json_response({"ok": True})
        self.auth.sessions.clear_cookie(resp, secure=self.tls)
        return resp

    async def all_dbs(self, request: web.Request) -> web.Response:
        """``GET /_all_dbs``: the databases served, sorted (CouchDB's ``start_key``/``end_key``/``limit``/``skip``
        and ``descending`` apply)."""
        names = await asyncio.to_thread(self.dbs.names)
        q = request.query
        try:
            start = orjson.loads(q.get("start_key", q.get("startkey", "null")))
            end = orjson.loads(q.get("end_key", q.get("endkey", "null")))
            limit = int(q["limit"]) if "limit" in q else None
            skip = max(0, int(q.get("skip", 0)))
        except (ValueError, orjson.JSONDecodeError) as exc:
            raise HttpError(400, "bad_request", "start_key and end_key must be JSON strings; limit and skip "
                            "integers") from exc
        if q.get("descending", "false") == "true":
            names.reverse()
            names = [n for n in names if (not isinstance(start, str) or n <= start)
                     and (not isinstance(end, str) or n >= end)]
        else:
            names = [n for n in names if (not isinstance(start, str) or n >= start)
                     and (not isinstance(end, str) or n <= end)]
        names = names[skip:] if limit is None or limit < 0 else names[skip:skip + limit]
        return json_response(names)
