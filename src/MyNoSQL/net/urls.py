"""Mirror and database URLs: normalised, shown without credentials, credentials as a header. Pure, no I/O."""

from __future__ import annotations

import base64
import ipaddress
import urllib.parse
from typing import Any

from ..errors import InvalidDocument


def normalize_peer_url(url: Any) -> str:
    """``http(s)://[user:pass@]host[:port][/path]`` without a trailing slash, query or fragment; else
    :class:`InvalidDocument`."""
    if not isinstance(url, str):
        raise InvalidDocument(f"a mirror URL must be a string, not {type(url).__name__}")
    parts = urllib.parse.urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidDocument(f"not a mirror URL (expected http://host:port or https://...): {url!r}")
    try:
        parts.port  # noqa: B018 - validates the port
    except ValueError as exc:
        raise InvalidDocument(f"bad port in mirror URL {url!r}") from exc
    path = parts.path.rstrip("/")
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def redact_url(url: str) -> str:
    """A URL without user and password: what logs, errors, status and /_mirrors show."""
    p = urllib.parse.urlsplit(url)
    host = p.hostname or ""
    netloc = (f"[{host}]" if ":" in host else host) + (f":{p.port}" if p.port else "")
    return urllib.parse.urlunsplit((p.scheme, netloc, p.path, "", ""))


def with_credentials_of(url: str, via: str) -> str:
    """``url`` with the user and password of ``via`` when it has none of its own."""
    creds = urllib.parse.urlsplit(via)
    p = urllib.parse.urlsplit(url)
    if creds.username and not p.username:
        return urllib.parse.urlunsplit((p.scheme, f"{creds.netloc.rpartition('@')[0]}@{p.netloc}", p.path, "", ""))
    return url


def basic_authorization(url: str) -> str | None:
    """The ``Authorization`` header for the credentials in ``url`` (CouchDB style), or None if it has none."""
    p = urllib.parse.urlsplit(url)
    if not p.username:
        return None
    pair = f"{urllib.parse.unquote(p.username)}:{urllib.parse.unquote(p.password or '')}"
    return "Basic " + base64.b64encode(pair.encode("utf-8")).decode("ascii")


def db_url(mirror: str, name: str) -> str:
    """The URL of database ``name`` on a mirror given by its server URL (or already a database URL)."""
    p = urllib.parse.urlsplit(mirror)
    return mirror.rstrip("/") if p.path.strip("/") else f"{mirror.rstrip('/')}/{urllib.parse.quote(name)}"


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address, IPv6 in brackets or not) is this machine's loopback."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
