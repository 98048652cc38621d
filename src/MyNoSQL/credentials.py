"""Users of a mirror: salted PBKDF2-SHA256 password hashes and roles (``users.json`` in the database folder).

Passwords are never stored: ``users.json`` (owner-only) holds for each user a role, a random salt, the iteration
count and the derived key. A successful check is remembered in RAM as an HMAC under a per-process random key, so a
busy replicator does not pay the slow hash on every request. Names and passwords never contain NUL, and the
remembered key frames the name by its length: no two (name, password) pairs share one.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import orjson

from .errors import CorruptionError, InvalidDocument
from .storage.fileutil import atomic_write

ROLES = ("admin", "replicator", "reader")
ITERATIONS = 200_000
_DUMMY_SALT = secrets.token_bytes(16)


def _derive(password: str, salt: bytes, iterations: int) -> bytes:
    return hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)


def _entry(password: str, role: str) -> dict[str, Any]:
    """What is stored of a user: the role and a salted PBKDF2 hash of the password (never the password)."""
    salt = secrets.token_bytes(16)
    return {"role": role, "salt": salt.hex(), "iterations": ITERATIONS,
            "hash": _derive(password, salt, ITERATIONS).hex()}


def parse_credentials_file(path: Path) -> list[tuple[str, str, str]]:
    """``user:password`` lines (optionally ``user:password:role``); ``#`` starts a comment line."""
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, rest = line.partition(":")
        if not sep or not user or not rest:
            raise InvalidDocument(f"{path}:{n}: expected user:password (or user:password:role)")
        password, role = rest, "replicator"
        head, sep2, tail = rest.rpartition(":")
        if sep2 and tail in ROLES:
            password, role = head, tail
        out.append((user, password, role))
    return out


class Users:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._key = secrets.token_bytes(32)
        self._verified: OrderedDict[bytes, str] = OrderedDict()
        self._users: dict[str, dict[str, Any]] = {}
        if path.exists():
            try:
                data = orjson.loads(path.read_bytes())
                self._users = dict(data["users"])
            except (ValueError, KeyError, TypeError) as exc:
                raise CorruptionError(f"{path} is damaged: {exc}", path=str(path)) from exc

    def __bool__(self) -> bool:
        return bool(self._users)

    def role_of(self, name: str) -> str | None:
        """The role of user ``name``, or None if there is no such user."""
        user = self._users.get(name)
        return None if user is None else str(user["role"])

    def salt(self, name: str) -> str | None:
        """The salt of user ``name``'s password hash (a new password, a new salt: sessions signed with it end)."""
        user = self._users.get(name)
        return None if user is None else str(user["salt"])

    def names(self) -> dict[str, str]:
        return {name: u["role"] for name, u in self._users.items()}

    def _save(self) -> None:
        atomic_write(self.path, orjson.dumps({"version": 1, "users": self._users}, option=orjson.OPT_INDENT_2))
        os.chmod(self.path, 0o600)

    @staticmethod
    def _validate(name: str, password: str, role: str) -> None:
        if not isinstance(name, str) or not name or ":" in name or "\x00" in name or len(name) > 200:
            raise InvalidDocument("a user name must be 1-200 characters without ':' or NUL")
        if not isinstance(password, str) or len(password) < 8 or "\x00" in password:
            raise InvalidDocument("a password must be at least 8 characters, without NUL")
        if role not in ROLES:
            raise InvalidDocument(f"role must be one of {', '.join(ROLES)}")

    def set(self, name: str, password: str, role: str = "replicator") -> None:
        self._validate(name, password, role)
        entry = _entry(password, role)
        with self._lock:
            self._users[name] = entry
            self._verified.clear()
            self._save()

    def remove(self, name: str) -> bool:
        with self._lock:
            if self._users.pop(name, None) is None:
                return False
            self._verified.clear()
            self._save()
            return True

    def replace_all(self, entries: list[tuple[str, str, str]]) -> None:
        """Make ``entries`` (name, password, role) the users, in one swap: a serving mirror never sees an
        empty or half-filled list meanwhile."""
        users = {}
        for name, password, role in entries:
            self._validate(name, password, role)
            users[name] = _entry(password, role)
        with self._lock:
            self._users = users
            self._verified.clear()
            self._save()

    def _token(self, name: str, password: str) -> bytes:
        raw_name = name.encode("utf-8", "surrogatepass")
        return hmac.new(self._key, len(raw_name).to_bytes(4, "big") + raw_name
                        + password.encode("utf-8", "surrogatepass"), "sha256").digest()

    def cached(self, name: str, password: str) -> str | None:
        """The user's role if this name and password were verified lately (no slow hash), else None."""
        if "\x00" in name or "\x00" in password:
            return None
        return self._verified.get(self._token(name, password))

    def check(self, name: str, password: str) -> str | None:
        """The user's role if the password is right, else None. Constant time in what it compares; slow (PBKDF2)
        unless this pair was verified lately."""
        if "\x00" in name or "\x00" in password:
            return None  # never a stored user's name or password (refused when set)
        token = self._token(name, password)
        role = self._verified.get(token)
        if role is not None:
            return role
        user = self._users.get(name)
        if user is None:
            _derive(password, _DUMMY_SALT, ITERATIONS)  # same work as for a real user: no user enumeration
            return None
        good = hmac.compare_digest(_derive(password, bytes.fromhex(user["salt"]), int(user["iterations"])),
                                   bytes.fromhex(user["hash"]))
        if not good:
            return None
        with self._lock:
            self._verified[token] = user["role"]
            while len(self._verified) > 1000:
                self._verified.popitem(last=False)
        return str(user["role"])
