"""Cookie sessions and CORS, for web applications (a PouchDB app in a browser) as CouchDB has them.

Sessions: ``POST /_session`` with ``{"name", "password"}`` (JSON or a form) checks them as a Basic login does
(the same throttle) and sets the ``AuthSession`` cookie: the user's name, an expiry time and an HMAC-SHA256 over
both and the user's password salt, under a random key of this server process. The cookie is ``HttpOnly``,
``SameSite=Lax``, ``Path=/``, ``Secure`` on a TLS mirror; it lasts ``SESSION_SECONDS`` and is renewed once
half of that has passed. Changing a user's password (or restarting the mirror) ends their sessions.
``GET /_session`` says who the request is (CouchDB's ``userCtx``); ``DELETE /_session`` clears the cookie.

CORS: off unless origins are allowed (``serve --cors-origin``). For an allowed ``Origin`` every answer carries
``Access-Control-Allow-Origin`` (that origin, with ``Access-Control-Allow-Credentials: true``; or ``*`` when
``*`` is allowed, without credentials, as the CORS rules require) and preflight ``OPTIONS`` requests are
answered without credentials.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Sequence

from aiohttp import web

from ..credentials import Users

SESSION_SECONDS = 600  # CouchDB's default [chttpd_auth] timeout
COOKIE = "AuthSession"
ALLOW_METHODS = "GET, PUT, POST, HEAD, DELETE"
ALLOW_HEADERS = "accept, authorization, content-type, origin, referer, x-csrf-token"
EXPOSE_HEADERS = "content-type, cache-control, accept-ranges, etag, server, x-couch-request-id, " \
                 "x-couch-update-newrev, x-couchdb-body-time"


class Sessions:
    """Makes and checks ``AuthSession`` cookies for one server process."""

    def __init__(self, users: Users | None, *, seconds: int = SESSION_SECONDS) -> None:
        self.users = users
        self.seconds = seconds
        self._key = secrets.token_bytes(32)

    def _mac(self, name: str, expires: int) -> str:
        salt = self.users.salt(name) if self.users is not None else None
        msg = f"{name}:{expires:x}:{salt or ''}".encode("utf-8", "surrogatepass")
        return hmac.new(self._key, msg, hashlib.sha256).hexdigest()

    def cookie_value(self, name: str) -> str:
        expires = int(time.time()) + self.seconds
        raw = f"{name}:{expires:x}:{self._mac(name, expires)}"
        return base64.urlsafe_b64encode(raw.encode("utf-8", "surrogatepass")).decode("ascii").rstrip("=")

    def check(self, value: str) -> tuple[str, bool] | None:
        """(user name, renew it now) of a valid, unexpired cookie value; None otherwise."""
        try:
            raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).decode("utf-8")
            name, expires_hex, mac = raw.rsplit(":", 2)
            expires = int(expires_hex, 16)
        except (ValueError, UnicodeDecodeError):
            return None
        if not name or expires < time.time() or not hmac.compare_digest(mac, self._mac(name, expires)):
            return None
        if self.users is None or self.users.role_of(name) is None:
            return None
        return name, expires - time.time() < self.seconds / 2

    def set_cookie(self, resp: web.StreamResponse, name: str, *, secure: bool) -> None:
        resp.set_cookie(COOKIE, self.cookie_value(name), max_age=self.seconds, path="/", httponly=True,
                        samesite="Lax", secure=secure)

    @staticmethod
    def clear_cookie(resp: web.StreamResponse, *, secure: bool) -> None:
        resp.set_cookie(COOKIE, "", max_age=0, path="/", httponly=True, samesite="Lax", secure=secure)


class Cors:
    """The CORS answers of a mirror (see the module docstring)."""

    def __init__(self, origins: Sequence[str]) -> None:
        self.any = "*" in origins
        self.origins = frozenset(o.rstrip("/") for o in origins if o != "*")

    def __bool__(self) -> bool:
        return self.any or bool(self.origins)

    def allow(self, origin: str | None) -> str | None:
        """The ``Access-Control-Allow-Origin`` value for a request from ``origin``, or None (not allowed)."""
        if not origin:
            return None
        if origin in self.origins:
            return origin
        return "*" if self.any else None

    def headers(self, origin: str | None) -> dict[str, str]:
        allowed = self.allow(origin)
        if allowed is None:
            return {}
        out = {"Access-Control-Allow-Origin": allowed, "Access-Control-Expose-Headers": EXPOSE_HEADERS,
               "Vary": "Origin"}
        if allowed != "*":
            out["Access-Control-Allow-Credentials"] = "true"
        return out

    def preflight(self, request: web.Request) -> web.Response:
        """The answer to an ``OPTIONS`` preflight request (204 if its origin is allowed, else 403)."""
        origin = request.headers.get("Origin")
        headers = self.headers(origin)
        if not headers:
            return web.Response(status=403)
        wanted = request.headers.get("Access-Control-Request-Headers", "")
        allow_headers = ", ".join(dict.fromkeys([*ALLOW_HEADERS.split(", "),
                                                 *(h.strip().lower() for h in wanted.split(",") if h.strip())]))
        headers.update({"Access-Control-Allow-Methods": ALLOW_METHODS, "Access-Control-Allow-Headers": allow_headers,
                        "Access-Control-Max-Age": "600"})
        return web.Response(status=204, headers=headers)
