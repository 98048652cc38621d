"""HTTP routes of a mirror (aiohttp). Answers are JSON, but for ``/_metrics`` (Prometheus text) and ``/_dashboard``
(an HTML page); errors are CouchDB-shaped JSON, ``{"error", "reason"}``, on those routes too.

Routes: ``GET /``, ``GET /_up``, ``GET /_mirrors``, ``GET /_metrics``, ``GET /_dashboard``,
``GET /_dashboard/data`` (the page's JSON), ``GET|HEAD|PUT /{db}``, ``GET|POST /{db}/_changes`` (normal and
longpoll), ``POST /{db}/_revs_diff``, ``POST /{db}/_bulk_get``, ``POST /{db}/_bulk_docs``,
``POST /{db}/_ensure_full_commit``, ``GET /{db}/_all_docs``, ``GET|PUT|DELETE /{db}/_local/{id}``,
``GET|PUT|DELETE /{db}/{id}`` (``rev``, ``revs``, ``open_revs``, ``latest``, ``conflicts``, ``new_edits``).
``GET /`` and ``GET /_up`` need no credentials; the others need a user's once the mirror has users.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import threading
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import orjson
from aiohttp import web, web_response

from .._database import Database, validate_id
from .._errors import ConflictError, DocumentNotFound, InvalidDocument, MyNoSQLError
from .._options import Limits
from ..docs import revtree
from ..replication import protocol
from .auth import Throttle, Users
from .observe import Observer

log = logging.getLogger("MyNoSQL")

# aiohttp names itself and Python's version in the Server header of the answers it makes on its own (a request
# it cannot parse gets its 400 before any middleware or on_response_prepare hook runs). Say only our name.
web_response.SERVER_SOFTWARE = "MyNoSQL"  # type: ignore[attr-defined]

MAX_LIMIT = 10_000
_LOCAL_MAX = 1024 * 1024  # bytes of one _local document (a checkpoint)
SMALL_INLINE = 64  # a request touching fewer records runs on the event loop, not in a worker thread


_T = TypeVar("_T")


class _Edit(NamedTuple):
    """A checked normal write: a record to save, or (record None) the deletion of ``rev``."""

    id: Any
    rev: str | None
    record: dict[str, Any] | None


class _Refused(NamedTuple):
    """A document of a batch refused on its own (a reserved id, attachments), as CouchDB does."""

    id: Any
    reason: str


class HttpError(Exception):
    def __init__(self, status: int, error: str, reason: str) -> None:
        super().__init__(reason)
        self.status, self.error, self.reason = status, error, reason


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def _err(status: int, error: str, reason: str) -> web.Response:
    return _json({"error": error, "reason": reason}, status)


def _checked_local_id(id: str) -> str:
    """The id of a ``_local`` document (a checkpoint), or a 400."""
    if not id or "\x00" in id or len(id.encode("utf-8", "surrogatepass")) > 1024:
        raise HttpError(400, "illegal_docid", "local document ids are 1-1024 bytes without NUL")
    return id


def _reserved(id: Any) -> bool:
    """A well-formed id that starts with ``_`` (a CouchDB design document...): never held here, refused on
    its own in a batch (as CouchDB refuses a document its validation forbids), never a reason to refuse a batch."""
    return isinstance(id, str) and id[:1] == "_" and "\x00" not in id and len(id) <= 1024 \
        and len(id.encode("utf-8", "surrogatepass")) <= 1024


def _check_ids_and_revs(pairs: Iterable[tuple[Any, Any]]) -> None:
    """A 400 unless every id is a record id (or a reserved one) and every rev (None: any) a revision id."""
    for id, rev in pairs:
        try:
            if not _reserved(id):
                validate_id(id)
        except InvalidDocument as exc:
            raise HttpError(400, "bad_request", f"{str(id)[:80]!r}: {exc}") from exc
        if rev is not None and not revtree.is_rev(rev):
            raise HttpError(400, "bad_request", f"invalid rev format: {str(rev)[:80]!r}")


class ChangeNotifier:
    """Wakes longpoll ``_changes`` requests when the database changes (from any thread)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.event = asyncio.Event()
        self._scheduled = False  # one wake-up in flight covers every change made before it runs

    def notify(self, *_args: Any) -> None:
        if self._scheduled:
            return  # a batch of writes wakes the loop once, not once per record
        self._scheduled = True
        with contextlib.suppress(RuntimeError):  # the server is shutting down: nobody waits any more
            self.loop.call_soon_threadsafe(self._fire)

    def _fire(self) -> None:
        self._scheduled = False  # before waking: a change made from now on schedules its own wake-up
        self.event.set()
        self.event = asyncio.Event()


class EchoLog:
    """Recent changes that only echo a replicating client's own write (bounded; thread-safe).

    A peer that pushed revision R of a record, and left it the record's only leaf, learns nothing from the
    ``_changes`` row of that write: answering its waiting longpoll with it would cost a round trip per change for
    nothing. Rows are marked here by seq; a row whose record changed again has a new seq and is not an echo.
    """

    def __init__(self, capacity: int = 16384) -> None:
        self.capacity = capacity
        self._by_seq: dict[int, str] = {}
        self._lock = threading.Lock()

    def add(self, seq: int, client: str) -> None:
        with self._lock:
            self._by_seq[seq] = client
            while len(self._by_seq) > self.capacity:
                del self._by_seq[next(iter(self._by_seq))]

    def echoes(self, row: dict[str, Any], client: str) -> bool:
        return self._by_seq.get(row["seq"]) == client


def _client_token(request: web.Request) -> str | None:
    """The ``X-MyNoSQL-Client`` token of a replicating client (an extension), if it is a sane one."""
    token = request.headers.get("X-MyNoSQL-Client")
    return token if token and len(token) <= 64 and token.isascii() and token.isalnum() else None


# What a "reader" may do besides GET/HEAD: read-only POSTs, and replication checkpoints (_local documents,
# which are not records: a reader pulling from the mirror records its progress there).
_READER_POSTS = ("_revs_diff", "_bulk_get", "_changes", "_ensure_full_commit")
# The authenticated user of a request (a typed request key where aiohttp has them: no NotAppKeyWarning)
_USER: Any = web.RequestKey("user", str) if hasattr(web, "RequestKey") else "user"
_PUBLIC = ("/", "/_up")  # everything else needs a user once users exist (/_metrics and /_dashboard too)
# Answers that are part of the protocol, not a client's problem: a missing record or checkpoint (404), a conflict
# (409), a database that exists already (412). The dashboard shows a client's other 4xx/5xx answers.
_ORDINARY = (404, 409, 412)


def _basic_credentials(request: web.Request) -> tuple[str, str]:
    """(name, password) of a request's Basic credentials; ("", "") if none or unreadable."""
    auth = request.headers.get("Authorization", "")
    if auth[:6].lower() != "basic ":
        return "", ""
    try:
        name, _, password = base64.b64decode(auth[6:], validate=True).decode("utf-8").partition(":")
    except (ValueError, UnicodeDecodeError):
        return "", ""
    return name, password


class MirrorApp:
    def __init__(self, dbs: dict[str, Database], *, mirrors: Callable[[], list[str]] | None = None,
                 users: Users | None = None, limits: Limits | None = None, open_without_users: bool = True) -> None:
        """``open_without_users``: serve everyone while no user exists (only ever for a loopback address)."""
        self.dbs = dbs
        self.mirrors = mirrors or (lambda: [])
        self.notifiers: dict[str, ChangeNotifier] = {}
        self.echo_logs: dict[str, EchoLog] = {name: EchoLog() for name in dbs}
        self.users = users
        self.open_without_users = open_without_users
        self.limits = limits or Limits()
        self.throttle = Throttle(self.limits.max_auth_failures, self.limits.auth_failure_window)
        self.observer = Observer(dbs)
        self._ticker: asyncio.Task[None] | None = None

    # -- plumbing ---------------------------------------------------------------------------------------------

    def build(self) -> web.Application:
        app = web.Application(client_max_size=self.limits.max_request_bytes,
                              middlewares=[self._observe, self._errors, self._auth])
        app.on_response_prepare.append(self._headers)
        r = app.router
        r.add_get("/", self.root)
        r.add_get("/_up", self.up)
        r.add_get("/_mirrors", self.get_mirrors)
        r.add_get("/_metrics", self.metrics)
        r.add_get("/_dashboard", self.dashboard)
        r.add_get("/_dashboard/data", self.dashboard_data)
        r.add_get("/{db}", self.db_info)
        r.add_get("/{db}/", self.db_info)
        r.add_put("/{db}", self.db_create)
        r.add_put("/{db}/", self.db_create)
        r.add_get("/{db}/_changes", self.changes)
        r.add_post("/{db}/_changes", self.changes)
        r.add_post("/{db}/_revs_diff", self.revs_diff)
        r.add_post("/{db}/_bulk_get", self.bulk_get)
        r.add_post("/{db}/_bulk_docs", self.bulk_docs)
        r.add_post("/{db}/_ensure_full_commit", self.full_commit)
        r.add_get("/{db}/_all_docs", self.all_docs)
        r.add_get("/{db}/_local/{id:.+}", self.local_get)
        r.add_put("/{db}/_local/{id:.+}", self.local_put)
        r.add_delete("/{db}/_local/{id:.+}", self.local_delete)
        r.add_get("/{db}/{id:.+}", self.doc_get)
        r.add_put("/{db}/{id:.+}", self.doc_put)
        r.add_delete("/{db}/{id:.+}", self.doc_delete)
        app.on_startup.append(self._startup)
        app.on_cleanup.append(self._cleanup)
        return app

    async def _cleanup(self, app: web.Application) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
        for name, n in self.notifiers.items():
            with contextlib.suppress(ValueError):
                self.dbs[name].store.listeners.remove(n.notify)
        self.notifiers.clear()

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self.observer.tick()

    async def _startup(self, app: web.Application) -> None:
        self._ticker = asyncio.create_task(self._tick())
        loop = asyncio.get_running_loop()
        for name, db in self.dbs.items():
            n = ChangeNotifier(loop)
            self.notifiers[name] = n
            db.store.listeners.append(n.notify)

    @staticmethod
    async def _headers(request: web.Request, response: web.StreamResponse) -> None:
        response.headers["Server"] = "MyNoSQL"  # never the versions of Python or aiohttp
        response.headers["X-MyNoSQL"] = "1"  # our clients may then send gzip request bodies (an extension)

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
        db = db if db in self.dbs else None
        user = request.get(_USER)
        if user is None and resp.status == 401:  # a failed login: the name it tried (never the password)
            user = _basic_credentials(request)[0][:64] or None
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
    async def _auth(self, request: web.Request, handler: Callable[[web.Request], Any]) -> web.StreamResponse:
        users = self.users
        if (not users and self.open_without_users) or (request.path in _PUBLIC and request.method in ("GET", "HEAD")):
            resp: web.StreamResponse = await handler(request)
            return resp
        addr = request.remote or "?"
        if self.throttle.blocked(addr):
            return _err(429, "too_many_requests", "Too many failed logins; try again later.")
        role = None
        name, password = _basic_credentials(request)
        if name and users:  # a non-loopback mirror whose last user was removed lets nobody in
            role = await asyncio.to_thread(users.check, name, password)
        if role is None:
            self.throttle.failed(addr)
            resp = _err(401, "unauthorized", "Name or password is incorrect.")
            resp.headers["WWW-Authenticate"] = 'Basic realm="MyNoSQL"'
            return resp
        request[_USER] = name
        if role == "reader" and request.method not in ("GET", "HEAD"):
            parts = request.path.strip("/").split("/")
            local = len(parts) >= 3 and parts[1] == "_local"
            if not (local or (request.method == "POST" and len(parts) == 2 and parts[1] in _READER_POSTS)):
                return _err(403, "forbidden", "You are not allowed to write to this database.")
        resp = await handler(request)
        return resp

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
            return _err(exc.status, exc.error, exc.reason)
        except DocumentNotFound as exc:
            return _err(404, "not_found", "deleted" if exc.deleted else "missing")
        except ConflictError:
            return _err(409, "conflict", "Document update conflict.")
        except InvalidDocument as exc:
            return _err(400, "bad_request", str(exc))
        except web.HTTPException as exc:
            if exc.status == 413:
                return _err(413, "too_large", "the request body is too large")
            return _err(exc.status, "not_found" if exc.status == 404 else "bad_request", exc.reason)
        except MyNoSQLError as exc:
            log.error("mirror: %s %s failed: %s", request.method, request.path, exc)
            return _err(500, "internal_error", "the database could not complete the request")
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug: logged with its traceback here, never shown to the client
            log.exception("mirror: %s %s failed", request.method, request.path)
            return _err(500, "internal_error", "the database could not complete the request")

    def _db(self, request: web.Request) -> Database:
        db = self.dbs.get(request.match_info["db"])
        if db is None or db.closed:
            raise HttpError(404, "not_found", "Database does not exist.")
        return db

    async def _body(self, request: web.Request) -> Any:
        length = request.content_length
        try:
            if length is not None and length <= 65536 and request.content.is_eof():
                raw = await request.read()  # already here: no timer task needed
            else:
                raw = await asyncio.wait_for(request.read(), self.limits.body_timeout)
        except asyncio.TimeoutError as exc:
            raise HttpError(408, "timeout", "the request body did not arrive in time") from exc
        coding = request.headers.get("Content-Encoding", "").strip().lower()
        if coding not in ("", "identity"):
            raw = self._decompress(raw, coding)
        try:
            return orjson.loads(raw)  # its documents' nesting is checked where they are encoded again
        except orjson.JSONDecodeError as exc:
            raise HttpError(400, "bad_request", "invalid JSON body") from exc

    def _decompress(self, raw: bytes, coding: str) -> bytes:
        """A gzip or deflate request body, decompressed here (not by aiohttp: see :meth:`runner`), within the
        request size limit; a body that does not decompress is a 400."""
        if coding not in ("gzip", "x-gzip", "deflate"):
            raise HttpError(415, "unsupported_media_type", "request bodies may be gzip or deflate encoded, or plain")
        limit = self.limits.max_request_bytes
        for wbits in ((31,) if coding != "deflate" else (15, -15)):  # deflate: zlib-wrapped, or raw from some
            d = zlib.decompressobj(wbits)
            try:
                out = d.decompress(raw, limit + 1)
            except zlib.error:
                continue
            if len(out) > limit or d.unconsumed_tail:
                raise HttpError(413, "too_large", "the request body is too large")
            if d.eof:
                return out
        raise HttpError(400, "bad_request", "the request body could not be decoded")

    def runner(self, **kwargs: Any) -> web.AppRunner:
        """An aiohttp runner for :meth:`build`'s application. Request bodies are decompressed by the routes
        (aiohttp's own decompression can leave a connection unanswered when a body does not decompress)."""
        return web.AppRunner(self.build(), auto_decompress=False, **kwargs)

    def _batch(self, items: Any, what: str) -> None:
        if len(items) > self.limits.max_batch:
            raise HttpError(413, "too_large", f"{len(items)} {what} in one request, over the limit of "
                            f"{self.limits.max_batch}")

    def _wire(self, db: Database, doc: Any) -> protocol.WireDoc:
        lim = self.limits
        return protocol.doc_from_wire(doc, validate_id=validate_id, max_bytes=db.options.max_doc_bytes,
                                      max_revs=db.options.revs_limit, max_depth=lim.max_depth,
                                      max_history=lim.max_revisions)

    def _local_size(self, doc: dict[str, Any]) -> None:
        """A ``_local`` document (a checkpoint) within the nesting limit and 1 MiB, or a 4xx."""
        try:
            size = len(protocol.encode_checked(doc, self.limits.max_depth))
        except InvalidDocument as exc:
            raise HttpError(400, "bad_request", str(exc)) from exc
        if size > _LOCAL_MAX:
            raise HttpError(413, "too_large", "local documents are limited to 1 MiB")

    @staticmethod
    def _local_id(request: web.Request) -> str:
        return _checked_local_id(request.match_info["id"])

    @staticmethod
    def _doc_id(request: web.Request) -> str:
        id = request.match_info["id"]
        if any(part in (".", "..") for part in id.split("/")):
            raise HttpError(400, "illegal_docid", "document ids must not contain '.' or '..' path segments")
        try:
            return validate_id(id)
        except InvalidDocument as exc:
            raise HttpError(400, "illegal_docid", str(exc)) from exc

    @staticmethod
    def _flag(request: web.Request, name: str) -> bool:
        return request.query.get(name, "false").lower() == "true"

    # -- server -----------------------------------------------------------------------------------------------

    async def root(self, request: web.Request) -> web.Response:
        return _json({"couchdb": "Welcome", "version": "3.3.0", "vendor": {"name": "MyNoSQL"},
                      "features": ["mynosql"]})

    async def up(self, request: web.Request) -> web.Response:
        """Health: every database open and its compactor working (no I/O: cheap enough for any prober)."""
        problems = []
        for name, db in self.dbs.items():
            problem = "closed" if db.closed else db.store.problem()
            if problem:
                problems.append(f"database {name!r}: {problem}")
        if problems:
            return _json({"status": "failing", "reason": "; ".join(problems)}, 503)
        return _json({"status": "ok"})

    async def get_mirrors(self, request: web.Request) -> web.Response:
        return _json({"mirrors": self.mirrors()})

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
        return _json(await asyncio.to_thread(self.observer.snapshot))

    # -- database ---------------------------------------------------------------------------------------------

    async def db_info(self, request: web.Request) -> web.Response:
        db = self._db(request)
        return _json({"db_name": db.name, "doc_count": len(db), "doc_del_count": 0, "update_seq": db.seq,
                      "instance_start_time": "0", "purge_seq": 0})

    async def db_create(self, request: web.Request) -> web.Response:
        if request.match_info["db"] in self.dbs:
            return _err(412, "file_exists", "The database could not be created, the file already exists.")
        raise HttpError(403, "forbidden", "this mirror serves only its configured databases")

    async def full_commit(self, request: web.Request) -> web.Response:
        self._db(request)
        return _json({"ok": True, "instance_start_time": "0"}, 201)

    async def changes(self, request: web.Request) -> web.Response:
        db = self._db(request)
        q = request.query
        since_raw = q.get("since", "0")
        if since_raw == "now":
            since = db.seq
        else:
            try:
                since = max(0, int(since_raw.split("-")[0]) if since_raw else 0)
            except ValueError as exc:
                raise HttpError(400, "bad_request", "since must be an integer or 'now'") from exc
            if since > db.seq:  # not a seq this database gave: it was restored or re-created since
                raise HttpError(400, "since_ahead", f"since {str(since)[:40]} is ahead of this database's last "
                                f"change ({db.seq}); start again from 0")
        try:
            limit = min(MAX_LIMIT, max(1, int(q.get("limit", MAX_LIMIT))))
            timeout = min(self.limits.max_longpoll, max(0, min(int(q.get("timeout", 60000)), 10**9)) / 1000)
        except ValueError as exc:
            raise HttpError(400, "bad_request", "limit and timeout must be integers") from exc
        all_docs = q.get("style") == "all_docs"
        feed = q.get("feed", "normal")
        notifier = self.notifiers.get(db.name)
        event = notifier.event if notifier else None
        client = _client_token(request)
        echo_log = self.echo_logs.get(db.name) if client else None

        def read(after: int) -> list[dict[str, Any]]:
            out = []
            for s in db.store.iter_states(after):
                row = protocol.changes_row(s)
                if not all_docs:
                    row["changes"] = row["changes"][:1]
                out.append(row)
                if len(out) >= limit:
                    break
            return out

        async def answer(after: int) -> tuple[list[dict[str, Any]], int]:
            """The rows after ``after`` worth sending, and the seq they cover (echoes skipped, still covered)."""
            rows = read(after) if db.seq - after <= SMALL_INLINE else await asyncio.to_thread(read, after)
            last = rows[-1]["seq"] if rows else after
            if echo_log is not None and client is not None:
                rows = [r for r in rows if not echo_log.echoes(r, client)]
            return rows, last

        self.observer.client(request.remote or "?", request.get(_USER), db.name, since)
        rows, last = await answer(since)
        if not rows and feed in ("longpoll", "continuous") and notifier is not None and event is not None \
                and timeout > 0:
            deadline = asyncio.get_running_loop().time() + timeout
            while not rows:
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    break
                try:
                    await asyncio.wait_for(event.wait(), remaining)
                except asyncio.TimeoutError:
                    break
                event = notifier.event  # taken before reading: a change during the read wakes the next wait
                rows, last = await answer(last)
        if last != since:  # what the client has been sent (echoes it skipped included): its lag from now on
            self.observer.client(request.remote or "?", request.get(_USER), db.name, last)
        resp = _json({"results": rows, "last_seq": last, "pending": 0})
        resp.headers["X-MyNoSQL-Update-Seq"] = str(db.seq)  # a MyNoSQL client learns how far behind it is
        return resp

    async def revs_diff(self, request: web.Request) -> web.Response:
        db = self._db(request)
        body = await self._body(request)
        if not isinstance(body, dict) or not all(
            isinstance(k, str) and isinstance(v, list) and all(isinstance(r, str) for r in v) for k, v in body.items()
        ):
            raise HttpError(400, "bad_request", "expected {id: [rev, ...]}")
        self._batch(body, "ids")
        self._batch([r for v in body.values() for r in v], "revisions")
        _check_ids_and_revs((id, rev) for id, revs in body.items() for rev in revs)
        missing = await asyncio.to_thread(db.revs_diff, body)
        return _json({id: {"missing": revs} for id, revs in missing.items()})

    async def bulk_get(self, request: web.Request) -> web.Response:
        db = self._db(request)
        body = await self._body(request)
        docs = body.get("docs") if isinstance(body, dict) else None
        if not isinstance(docs, list) or not all(isinstance(d, dict) for d in docs):
            raise HttpError(400, "bad_request", "expected {docs: [{id, rev}, ...]}")
        self._batch(docs, "documents")
        _check_ids_and_revs((d.get("id"), d.get("rev")) for d in docs)
        revs = self._flag(request, "revs")

        def read() -> list[dict[str, Any]]:
            results = []
            for want in docs:
                id, rev = want["id"], want.get("rev")
                state = db.state(id)
                if state is None or (rev is not None and rev not in state.bodies):
                    results.append({"id": id, "docs": [{"error": {"id": id, "rev": rev or "undefined",
                                                                  "error": "not_found", "reason": "missing"}}]})
                    continue
                results.append({"id": id, "docs": [{"ok": protocol.doc_to_wire(state, rev or state.winner,
                                                                                revs=revs)}]})
            return results

        results = await asyncio.to_thread(read)
        self.observer.docs_out += sum(1 for r in results for d in r["docs"] if "ok" in d)
        return _json({"results": results})

    async def bulk_docs(self, request: web.Request) -> web.Response:
        db = self._db(request)
        body = await self._body(request)
        docs = body.get("docs") if isinstance(body, dict) else None
        if not isinstance(docs, list):
            raise HttpError(400, "bad_request", "Missing JSON list of 'docs'")
        self._batch(docs, "documents")
        new_edits = body.get("new_edits", True)
        if not isinstance(new_edits, bool):
            raise HttpError(400, "bad_request", "new_edits must be true or false")

        checkpoint = body.get("mynosql_checkpoint") if new_edits is False else None  # extension: see replicator
        if checkpoint is not None and not (isinstance(checkpoint, dict) and isinstance(checkpoint.get("id"), str)
                                           and isinstance(checkpoint.get("doc"), dict)):
            raise HttpError(400, "bad_request", "mynosql_checkpoint must be {id: str, doc: {...}}")
        if checkpoint is not None:
            _checked_local_id(checkpoint["id"])
            self._local_size(checkpoint["doc"])
        written = 0
        client = _client_token(request)
        echo_log = self.echo_logs.get(db.name) if client else None

        def write() -> list[dict[str, Any]]:
            nonlocal written
            # Every document is checked against the limits before any is written: over a limit, the whole
            # request is refused and nothing is written (a conflict stays a per-document answer, as in CouchDB).
            check: Callable[[Any], protocol.WireDoc | _Edit] = \
                (lambda d: self._wire(db, d)) if new_edits is False else (lambda d: self._record(db, d, None))
            checked = [self._checked(check, doc, n) for n, doc in enumerate(docs)]
            out: list[dict[str, Any]] = []
            for doc, w in zip(docs, checked, strict=True):
                try:
                    if isinstance(w, _Refused):
                        out.append({"id": w.id, "error": "forbidden", "reason": w.reason})
                    elif isinstance(w, protocol.WireDoc):
                        state = db.merge_replicated(w.id, w.path, w.deleted, w.blob)
                        if state is not None:
                            written += 1
                            if echo_log is not None and client is not None \
                                    and revtree.leaves(state.tree) == [w.path[0]]:
                                echo_log.add(state.seq, client)  # the client's write, the record's only leaf
                    else:
                        out.append({"ok": True, **self._write(db, w)})
                except (ConflictError, DocumentNotFound) as exc:
                    out.append({"id": doc.get("_id"), "error": "conflict", "reason": str(exc)})
            return out

        answer = write() if len(docs) <= SMALL_INLINE else await asyncio.to_thread(write)
        self.observer.docs_in += written  # counted here, on the event loop: worker threads never race on it
        if written and self.notifiers.get(db.name):
            for _ in range(3):  # let waiting longpolls answer first: the checkpoint below can wait a moment
                await asyncio.sleep(0)
        if checkpoint is not None:  # after the documents: a checkpoint never runs ahead of what it covers
            if len(docs) <= SMALL_INLINE:
                db.local_put(checkpoint["id"], checkpoint["doc"])  # no fsync: cheap enough inline
            else:
                await asyncio.to_thread(db.local_put, checkpoint["id"], checkpoint["doc"])
        resp = _json(answer, 201)
        resp.headers["X-MyNoSQL-Written"] = str(written)
        return resp

    async def all_docs(self, request: web.Request) -> web.Response:
        db = self._db(request)
        try:
            skip = max(0, int(request.query.get("skip", 0)))
            limit = max(0, int(request.query["limit"])) if "limit" in request.query else None
        except ValueError as exc:
            raise HttpError(400, "bad_request", "skip and limit must be integers") from exc

        def read() -> list[dict[str, Any]]:
            return [{"id": s.id, "key": s.id, "value": {"rev": s.winner}}
                    for s in db.store.iter_states(0) if not s.deleted]

        rows = sorted(await asyncio.to_thread(read), key=lambda r: r["id"])
        page = rows[skip:] if limit is None else rows[skip:skip + limit]
        return _json({"total_rows": len(rows), "offset": min(skip, len(rows)), "rows": page})

    # -- local documents --------------------------------------------------------------------------------------

    async def local_get(self, request: web.Request) -> web.Response:
        db = self._db(request)
        doc = await asyncio.to_thread(db.local_get, self._local_id(request))
        if doc is None:
            raise HttpError(404, "not_found", "missing")
        return _json(doc)

    async def local_put(self, request: web.Request) -> web.Response:
        db = self._db(request)
        body = await self._body(request)
        if not isinstance(body, dict):
            raise HttpError(400, "bad_request", "document must be a JSON object")
        id = self._local_id(request)
        self._local_size(body)
        rev = await asyncio.to_thread(db.local_put, id, body)
        return _json({"ok": True, "id": "_local/" + id, "rev": rev}, 201)

    async def local_delete(self, request: web.Request) -> web.Response:
        db = self._db(request)
        id = self._local_id(request)
        if await asyncio.to_thread(db.local_get, id) is None:
            raise HttpError(404, "not_found", "missing")
        rev = await asyncio.to_thread(db.local_put, id, None)
        return _json({"ok": True, "id": "_local/" + id, "rev": rev})

    # -- documents --------------------------------------------------------------------------------------------

    def _record(self, db: Database, doc: Any, id: str | None) -> _Edit:
        """Check a document of a normal write (PUT, or ``_bulk_docs`` without ``new_edits=false``)."""
        if not isinstance(doc, dict):
            raise InvalidDocument("document must be a JSON object")
        doc_id = id if id is not None else doc.get("_id")
        if id is not None and doc.get("_id", id) != id:
            raise InvalidDocument("document id does not match the URL")
        if doc_id is not None:
            validate_id(doc_id)
        rev = doc.get("_rev")
        if rev is not None and not revtree.is_rev(rev):
            raise InvalidDocument(f"invalid rev format: {str(rev)[:80]!r}")
        if doc.get("_deleted") is True:
            if doc_id is None:
                raise InvalidDocument("a deletion needs the document's _id")
            return _Edit(doc_id, rev, None)
        body = protocol.body_from_wire(doc)
        data = protocol.encode_checked(body, self.limits.max_depth)  # what savedoc stores, give or take the id
        if len(data) > db.options.max_doc_bytes:
            raise InvalidDocument(f"document is {len(data)} bytes, over the limit of {db.options.max_doc_bytes}")
        record = protocol.decode_body(data)
        if doc_id is not None:
            record["id"] = doc_id
        if rev is not None:
            record["rev"] = rev
        return _Edit(doc_id, None, record)

    @staticmethod
    def _write(db: Database, edit: _Edit) -> dict[str, Any]:
        if edit.record is None:  # a deletion
            if edit.rev is None:
                raise ConflictError("a deletion needs the current _rev")
            res = db.deletedoc(edit.id, edit.rev)
        else:
            res = db.savedoc(edit.record)
        return {"id": res["id"], "rev": res["rev"]}

    @staticmethod
    def _checked(check: Callable[[Any], _T], doc: Any, n: int) -> _T | _Refused:
        """``check(doc)``; a document that breaks a rule or limit refuses the whole request (nothing written),
        one that CouchDB's rules refuse (a reserved id, attachments) is refused on its own."""
        if isinstance(doc, dict):  # what CouchDB refuses document by document: a reserved id, attachments
            if _reserved(doc.get("_id")):
                return _Refused(doc["_id"], "ids starting with '_' are reserved")
            problem = protocol.unsupported_member(doc)
            if problem is not None:
                return _Refused(doc.get("_id"), problem)
        try:
            return check(doc)
        except InvalidDocument as exc:
            raise HttpError(400, "bad_request", f"document {n}: {exc}") from exc

    async def doc_get(self, request: web.Request) -> web.Response:
        db = self._db(request)
        id = self._doc_id(request)
        q = request.query
        state = await asyncio.to_thread(db.state, id)
        revs = self._flag(request, "revs")
        if "open_revs" in q:
            if state is None:
                raise HttpError(404, "not_found", "missing")
            raw = q["open_revs"]
            if raw == "all":
                wanted = revtree.leaves(state.tree)
            else:
                try:
                    wanted = orjson.loads(raw)
                except orjson.JSONDecodeError as exc:
                    raise HttpError(400, "bad_request", "open_revs must be 'all' or a JSON list") from exc
                if not isinstance(wanted, list) or not all(isinstance(r, str) for r in wanted):
                    raise HttpError(400, "bad_request", "open_revs must be 'all' or a JSON list")
            out: list[dict[str, Any]] = []
            latest = self._flag(request, "latest")
            for rev in wanted:
                if rev in state.bodies:
                    out.append({"ok": protocol.doc_to_wire(state, rev, revs=revs)})
                elif latest and rev in state.tree:
                    for leaf in revtree.leaves(state.tree):
                        if rev in revtree.ancestry(state.tree, leaf):
                            out.append({"ok": protocol.doc_to_wire(state, leaf, revs=revs)})
                else:
                    out.append({"missing": rev})
            self.observer.docs_out += sum(1 for d in out if "ok" in d)  # the plain protocol's _bulk_get
            return _json(out)
        if state is None:
            raise HttpError(404, "not_found", "missing")
        rev = q.get("rev") or state.winner
        if rev not in state.bodies:
            raise HttpError(404, "not_found", "missing")
        if "rev" not in q and state.tree[rev][1]:
            raise HttpError(404, "not_found", "deleted")
        return _json(protocol.doc_to_wire(state, rev, revs=revs, conflicts=self._flag(request, "conflicts")))

    async def doc_put(self, request: web.Request) -> web.Response:
        db = self._db(request)
        id = self._doc_id(request)
        body = await self._body(request)
        if request.query.get("new_edits") == "false":
            if isinstance(body, dict) and body.setdefault("_id", id) != id:
                raise HttpError(400, "bad_request", "document id does not match the URL")
            w = self._wire(db, body)
            if await asyncio.to_thread(db.put_replicated, w.id, w.path, w.deleted, w.blob):
                self.observer.docs_in += 1
            return _json({"ok": True, "id": w.id, "rev": w.path[0]}, 201)
        if isinstance(body, dict) and "rev" in request.query:
            body.setdefault("_rev", request.query["rev"])
        edit = self._record(db, body, id)
        res = await asyncio.to_thread(self._write, db, edit)
        return _json({"ok": True, **res}, 201)

    async def doc_delete(self, request: web.Request) -> web.Response:
        db = self._db(request)
        rev = request.query.get("rev")
        if not rev:
            raise HttpError(409, "conflict", "Document update conflict.")
        res = await asyncio.to_thread(db.deletedoc, self._doc_id(request), rev)
        return _json({"ok": True, "id": res["id"], "rev": res["rev"]})
