"""Who may do what on a mirror: Basic credentials checked against the database's users, roles, and the
throttle on failed logins.

Rules (docs/security.md): ``GET /`` and ``GET /_up`` are public; everything else needs a user once users exist
(a loopback mirror without users is open to its own machine). A ``reader`` may read, and POST only the read-only
replication requests; writing records or ``_local`` documents (checkpoints) needs a ``replicator``. Failed logins
are counted per address *before* the slow hash runs (so parallel guesses cannot all be checked), and only
requests that tried a name and password count (an anonymous request is answered 401 but never throttles the
address: many users can share one NAT address). While an address is refused, only its connections that logged
in before the refusal began are still served (with the same credentials): a right guess from it is refused like a
wrong one, so the 429 tells nothing (were remembered credentials let through, a guesser could tell the right
password from its 200 at no hashing cost). Password hashes run on a small pool of their own, so a flood of
guesses never takes the workers that serve reads and writes.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import time
import weakref
from collections.abc import Callable
from typing import Any

from aiohttp import web

from ..credentials import Users
from .context import RENEW, ROLE, USER
from .requests import error_response
from .session import COOKIE, Sessions

# What a "reader" may POST: the read-only requests of replication.
READER_POSTS = ("_revs_diff", "_bulk_get", "_changes", "_ensure_full_commit", "_find", "_explain")
PUBLIC = ("/", "/_up")  # everything else needs a user once users exist (/_metrics and /_dashboard too)
HASH_WORKERS = 2


def basic_credentials(request: web.Request) -> tuple[str, str]:
    """(name, password) of a request's Basic credentials; ("", "") if none or unreadable."""
    auth = request.headers.get("Authorization", "")
    if auth[:6].lower() != "basic ":
        return "", ""
    try:
        name, _, password = base64.b64decode(auth[6:], validate=True).decode("utf-8").partition(":")
    except (ValueError, UnicodeDecodeError):
        return "", ""
    return name, password


class Throttle:
    """Refuse a client address for a while after repeated failed logins. A login under way counts as a failure
    until it succeeds, so ``failures`` guesses at once are all an address gets in a window."""

    def __init__(self, failures: int = 10, window: float = 60.0) -> None:
        self.failures, self.window = failures, window
        self._seen: dict[str, list[float]] = {}
        self._checking: dict[str, int] = {}

    def blocked(self, addr: str) -> bool:
        times = self._seen.get(addr)  # only addresses that failed are remembered, not every client's
        recent = len(self._recent(addr, times)) if times is not None else 0
        return recent + self._checking.get(addr, 0) >= self.failures

    def begin(self, addr: str) -> bool:
        """A login from ``addr`` is about to be checked: False (refuse it) if that would pass the limit."""
        if self.blocked(addr):
            return False
        self._checking[addr] = self._checking.get(addr, 0) + 1
        return True

    def end(self, addr: str, ok: bool) -> None:
        n = self._checking.get(addr, 1) - 1
        if n:
            self._checking[addr] = n
        else:
            self._checking.pop(addr, None)
        if not ok:
            self.failed(addr)

    def failed(self, addr: str) -> None:
        self._recent(addr, self._seen.get(addr, [])).append(time.monotonic())
        if len(self._seen) > 10_000:  # bound the memory an address scan can take: forget the expired ones,
            now = time.monotonic()    # then the addresses whose last failure is oldest
            live = sorted((ts[-1], a) for a, ts in self._seen.items() if ts and now - ts[-1] < self.window)
            self._seen = {a: self._seen[a] for _, a in live[-5_000:]}

    def _recent(self, addr: str, times: list[float]) -> list[float]:
        now = time.monotonic()
        times = [t for t in times if now - t < self.window]
        self._seen[addr] = times
        return times


def _unauthorized() -> web.Response:
    resp = error_response(401, "unauthorized", "Name or password is incorrect.")
    resp.headers["WWW-Authenticate"] = 'Basic realm="MyNoSQL"'
    return resp


class Authenticator:
    """The authentication middleware of a mirror (see the module docstring for the rules): Basic credentials,
    or an ``AuthSession`` cookie made by ``POST /_session`` (:mod:`.session`)."""

    def __init__(self, users: Users | None, throttle: Throttle, *, open_without_users: bool,
                 sessions: Sessions | None = None) -> None:
        self.users = users
        self.throttle = throttle
        self.open_without_users = open_without_users
        self.sessions = sessions if sessions is not None else Sessions(users)
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        # connection (its transport) -> the user it logged in as
        self._logged_in: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()

    @property
    def open(self) -> bool:
        """No users, on loopback: everyone may do everything."""
        return not self.users and self.open_without_users

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    async def login(self, addr: str, name: str, password: str) -> str | bool | None:
        """The user's role; None: wrong; False: refused without checking (throttled)."""
        users = self.users
        if not users or not name:  # a non-loopback mirror whose last user was removed lets nobody in
            return None
        role = users.cached(name, password)
        if role is not None:
            return role
        if not self.throttle.begin(addr):
            return False
        ok = False
        try:
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(HASH_WORKERS, thread_name_prefix="MyNoSQL-auth")
            role = await asyncio.get_running_loop().run_in_executor(self._pool, users.check, name, password)
            ok = role is not None
            return role
        finally:
            self.throttle.end(addr, ok)

    async def identify(self, request: web.Request) -> tuple[str, str] | web.Response | None:
        """Who the request is: (name, role) from its Basic credentials or its session cookie; None if it names
        nobody; an error answer (401, 429) if its credentials are wrong or its address is throttled."""
        users = self.users
        addr = request.remote or "?"
        name, password = basic_credentials(request)
        if not name:
            cookie = request.cookies.get(COOKIE)
            checked = self.sessions.check(cookie) if cookie else None
            if checked is None or users is None:
                return None
            who, renew = checked
            cookie_role = users.role_of(who)
            if cookie_role is None:
                return None
            if renew:
                request[RENEW] = who
            return who, cookie_role
        # While an address is throttled, only a connection that logged in before goes on: remembered credentials
        # would otherwise tell a guesser which password is right (200 among 429s) at no cost.
        transport = request.transport
        if self.throttle.blocked(addr) and not (
                users is not None and transport is not None and self._logged_in.get(transport) == name
                and users.cached(name, password) is not None):
            return error_response(429, "too_many_requests", "Too many failed logins; try again later.")
        role = await self.login(addr, name, password)
        if role is False:
            return error_response(429, "too_many_requests", "Too many failed logins; try again later.")
        if role is None or not isinstance(role, str):
            return _unauthorized()
        if transport is not None:
            self._logged_in[transport] = name
        return name, role

    @web.middleware
    async def middleware(self, request: web.Request, handler: Callable[[web.Request], Any]) -> web.StreamResponse:
        if self.open or (request.path in PUBLIC and request.method in ("GET", "HEAD")) \
                or request.path == "/_session":  # its handler says who the request is, or logs it in
            resp: web.StreamResponse = await handler(request)
            return resp
        who = await self.identify(request)
        if who is None:
            return _unauthorized()  # no credentials: a browser's first request, a misconfigured client
        if isinstance(who, web.Response):
            return who
        name, role = who
        request[USER] = name
        request[ROLE] = role
        if role == "reader" and request.method not in ("GET", "HEAD"):
            parts = request.path.strip("/").split("/")
            if not (request.method == "POST" and len(parts) == 2 and parts[1] in READER_POSTS):
                return error_response(403, "forbidden", "You are not allowed to write to this database.")
        resp = await handler(request)
        return resp
