"""Record ids: generated ones (uuid4 hex) and the rules every id follows. Pure code, no I/O."""

from __future__ import annotations

import collections
import os
from typing import Any

from ..errors import InvalidDocument

MAX_ID_BYTES = 1024
DESIGN_PREFIX = "_design/"  # CouchDB's design documents: stored and replicated as records (no JavaScript runs)


class _IdSource:
    """uuid4 hex strings, made 256 at a time from one getrandom call; the pool is emptied in a forked child."""

    _VERSION = bytes((b & 0x0F) | 0x40 for b in range(256))  # byte 6 of a uuid4: version 4
    _VARIANT = bytes((b & 0x3F) | 0x80 for b in range(256))  # byte 8: the RFC 4122 variant

    def __init__(self) -> None:
        self._ids: collections.deque[str] = collections.deque()
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._ids.clear)

    def __call__(self) -> str:
        try:
            return self._ids.popleft()  # atomic: threads never get the same id, and need no lock
        except IndexError:
            return self._refill()

    def _refill(self) -> str:
        raw = bytearray(os.urandom(4096))
        raw[6::16] = raw[6::16].translate(self._VERSION)
        raw[8::16] = raw[8::16].translate(self._VARIANT)
        text = raw.hex()
        self._ids.extend([text[i : i + 32] for i in range(32, len(text), 32)])  # two threads may both refill
        return text[:32]


new_id = _IdSource()


def validate_id(id: Any) -> str:
    """``id`` if it is a record id, else :class:`InvalidDocument`: a non-empty string of valid Unicode, at most
    1024 bytes, no NUL, not starting with ``_`` (CouchDB reserves it; design documents, ``_design/NAME``, are
    records), no ``.`` or ``..`` path segment (no URL could carry it). The one set of id rules: ``savedoc``,
    replication and every mirror route."""
    if type(id) is not str:
        if isinstance(id, str):
            return validate_id(str(id))
        raise InvalidDocument(f"a record id must be a string, not {type(id).__name__}")
    if not id:
        raise InvalidDocument("a record id must not be empty")
    if "\x00" in id:
        raise InvalidDocument("a record id must not contain NUL")
    if len(id) > MAX_ID_BYTES // 4 and len(id.encode("utf-8", "surrogatepass")) > MAX_ID_BYTES:
        raise InvalidDocument(f"a record id must be at most {MAX_ID_BYTES} bytes in UTF-8")
    if id[0] == "_" and (not id.startswith(DESIGN_PREFIX) or len(id) == len(DESIGN_PREFIX)):
        raise InvalidDocument(f"record ids starting with '_' are reserved (CouchDB's rule; only design "
                              f"documents, '_design/NAME', are records): {id[:40]!r}")
    if "." in id and any(part in (".", "..") for part in id.split("/")):
        raise InvalidDocument(f"a record id must not have '.' or '..' path segments (no URL could name it): "
                              f"{id[:40]!r}")
    try:
        id.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidDocument("a record id must be valid Unicode (no lone surrogates)") from exc
    return id
