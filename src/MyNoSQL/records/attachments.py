"""Attachments of a record: the rules for their names, their metadata, their digests, and what a client may send
as ``_attachments``. Pure code, no I/O (the bytes live in :mod:`MyNoSQL.storage.blobs`).

A revision's attachments are a dict ``{name: meta}`` kept next to the leaf's body (see :class:`DocState.atts`),
each ``meta``::

    {"content_type": str, "digest": "md5-<base64 of the MD5 of the bytes>", "length": int (bytes),
     "revpos": int (the generation of the revision that added these bytes), "blob": "<sha256 hex>"}

``blob`` names the local file holding the bytes (their SHA-256: the same bytes are stored once whatever the
number of records holding them). It is absent when this node has the metadata but not the bytes yet (a Peer
downloads records with attachment *stubs* and fetches the bytes when they are read). ``digest`` and ``revpos``
are CouchDB's and travel; ``blob`` never leaves this node.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Mapping
from typing import Any, NamedTuple

import orjson

from ..errors import InvalidDocument

MAX_NAME_BYTES = 1024  # bytes of an attachment name in UTF-8
MAX_ATTACHMENTS = 1000  # attachments of one revision
MAX_CONTENT_TYPE = 255

Meta = dict[str, Any]  # one attachment's metadata, see the module docstring
Atts = dict[str, Meta]  # a revision's attachments by name

# Content types whose bytes are compressed already (or random): stored as they are, no compression attempt.
_INCOMPRESSIBLE_PREFIXES = ("image/", "video/", "audio/", "font/woff")
_INCOMPRESSIBLE = frozenset((
    "application/zip", "application/gzip", "application/x-gzip", "application/x-bzip2", "application/x-xz",
    "application/x-7z-compressed", "application/x-rar-compressed", "application/vnd.rar", "application/zstd",
    "application/pdf", "application/epub+zip", "application/java-archive", "application/x-lzma",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    "application/vnd.oasis.opendocument.text",
))
_COMPRESSIBLE_IMAGES = frozenset(("image/svg+xml", "image/bmp", "image/x-ms-bmp", "image/tiff", "image/x-icon"))


class AttachmentTooLarge(InvalidDocument):
    """An attachment is over the size limit (nothing was stored)."""


def worth_compressing(content_type: str) -> bool:
    """Whether bytes of this content type may compress (JPEG, PNG, zip, video... are stored as they are)."""
    base = content_type.split(";", 1)[0].strip().lower()
    if base in _COMPRESSIBLE_IMAGES:
        return True
    return base not in _INCOMPRESSIBLE and not base.startswith(_INCOMPRESSIBLE_PREFIXES)


def validate_name(name: Any) -> str:
    """``name`` if it is an attachment name, else :class:`InvalidDocument`: a non-empty string of valid Unicode,
    at most 1024 bytes in UTF-8, no NUL or other control character, not starting with ``_`` (CouchDB reserves
    it), no empty, ``.`` or ``..`` path segment (``/`` is allowed, as in CouchDB: ``photos/2026/a.jpg``)."""
    if type(name) is not str:
        raise InvalidDocument(f"an attachment name must be a string, not {type(name).__name__}")
    if not name:
        raise InvalidDocument("an attachment name must not be empty")
    if len(name) > MAX_NAME_BYTES // 4 and len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        raise InvalidDocument(f"an attachment name must be at most {MAX_NAME_BYTES} bytes in UTF-8")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise InvalidDocument("an attachment name must not contain NUL or other control characters")
    if name[0] == "_":
        raise InvalidDocument(f"attachment names starting with '_' are reserved: {name[:40]!r}")
    if any(part in ("", ".", "..") for part in name.split("/")):
        raise InvalidDocument(f"an attachment name must not have empty, '.' or '..' path segments: {name[:40]!r}")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidDocument("an attachment name must be valid Unicode (no lone surrogates)") from exc
    return name


def validate_content_type(value: Any) -> str:
    if value is None:
        return "application/octet-stream"
    if type(value) is not str or len(value) > MAX_CONTENT_TYPE or not value.isascii() \
            or any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise InvalidDocument("an attachment's content_type must be a printable ASCII string of at most "
                              f"{MAX_CONTENT_TYPE} characters")
    return value.strip() or "application/octet-stream"


def md5_digest(md5: bytes) -> str:
    """CouchDB's form of an MD5: ``"md5-<base64>"``."""
    return "md5-" + base64.b64encode(md5).decode("ascii")


def digest_of(data: bytes) -> str:
    return md5_digest(hashlib.md5(data, usedforsecurity=False).digest())


def check_digest(value: Any) -> str:
    """A digest as CouchDB writes them (``md5-<24 base64 chars>``); other algorithms are kept as opaque text."""
    if type(value) is not str or not 5 <= len(value) <= 200 or not value.isascii() or "-" not in value \
            or any(ord(c) <= 32 for c in value):
        raise InvalidDocument("an attachment digest must look like \"md5-<base64>\"")
    return value


def rev_key(atts: Atts | None) -> bytes:
    """What a revision id hashes besides the body: the attachments' names, digests and types (empty when none,
    so a record without attachments keeps the revision ids it always had)."""
    if not atts:
        return b""
    return b"\x00" + orjson.dumps(sorted([n, m["digest"], m["content_type"]] for n, m in atts.items()))


def public(meta: Mapping[str, Any]) -> dict[str, Any]:
    """What the Python API shows of an attachment: content_type, length, digest, revpos."""
    return {"content_type": meta["content_type"], "length": meta["length"], "digest": meta["digest"],
            "revpos": meta["revpos"]}


def stub(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The CouchDB stub of an attachment (``_attachments`` of a document read without ``attachments=true``)."""
    return {"content_type": meta["content_type"], "revpos": meta["revpos"], "digest": meta["digest"],
            "length": meta["length"], "stub": True}


def find_blob(atts_by_leaf: Mapping[str, Atts] | None, digest: str, name: str | None = None) -> Meta | None:
    """An attachment with this digest whose bytes are here, among a record's leaves (the same name first)."""
    if not atts_by_leaf:
        return None
    found = None
    for atts in atts_by_leaf.values():
        for n, m in atts.items():
            if m["digest"] == digest and "blob" in m:
                if n == name:
                    return m
                found = found or m
    return found


# -- what a client sends -----------------------------------------------------------------------------------------


class Stub(NamedTuple):
    """``{"stub": true}``: keep the attachment of that name (and digest, if given) that the record has."""

    digest: str | None
    revpos: int | None
    content_type: str | None
    length: int | None


class Inline(NamedTuple):
    """``{"data": "<base64>"}``: the bytes themselves (decoded)."""

    content_type: str
    data: bytes
    digest: str | None  # as the client gave it (checked against the data when it is an MD5)
    revpos: int | None


class Follows(NamedTuple):
    """``{"follows": true}``: the bytes come in a later part of a ``multipart/related`` body."""

    content_type: str
    length: int | None
    digest: str | None
    revpos: int | None
    encoding: str | None  # "gzip": the part holds the bytes gzip'ed (CouchDB's replicator may send them so)


class Stored(NamedTuple):
    """Bytes stored already as a blob (a streamed upload): pinned until the record write that uses them is done."""

    content_type: str
    key: str  # the blob
    digest: str
    length: int
    revpos: int | None


AttIn = Stub | Inline | Follows
AttNew = Stub | Inline | Stored  # what a record write takes: Follows parts are Stored by then


class MissingStub(InvalidDocument):
    """A stub names an attachment that the revision it builds on does not have (CouchDB's ``missing_stub``)."""


def _int(value: Any, what: str) -> int | None:
    if value is None:
        return None
    if type(value) is not int or value < 0:
        raise InvalidDocument(f"an attachment's {what} must be a non-negative integer")
    return value


def parse_attachments(value: Any, *, max_bytes: int | None = None) -> dict[str, AttIn]:
    """Check a document's ``_attachments`` member: ``{name: stub | inline data | follows}``. ``max_bytes``: the
    largest attachment accepted. Raises :class:`InvalidDocument` (nothing is written then)."""
    if not isinstance(value, dict):
        raise InvalidDocument("_attachments must be an object of attachments by name")
    if len(value) > MAX_ATTACHMENTS:
        raise InvalidDocument(f"a document may have at most {MAX_ATTACHMENTS} attachments")
    out: dict[str, AttIn] = {}
    for name, att in value.items():
        name = validate_name(name)
        if not isinstance(att, dict):
            raise InvalidDocument(f"attachment {name[:80]!r} must be an object")
        digest = att.get("digest")
        if digest is not None:
            digest = check_digest(digest)
        revpos = _int(att.get("revpos"), "revpos")
        length = _int(att.get("length"), "length")
        if max_bytes is not None and length is not None and length > max_bytes:
            raise AttachmentTooLarge(f"attachment {name[:80]!r} is {length} bytes, over the limit of {max_bytes}")
        ctype = att.get("content_type")
        if att.get("stub") is True:
            out[name] = Stub(digest, revpos, None if ctype is None else validate_content_type(ctype), length)
        elif att.get("follows") is True:
            encoding = att.get("encoding")
            if encoding not in (None, "gzip", "identity"):
                raise InvalidDocument(f"attachment {name[:80]!r}: unsupported encoding {str(encoding)[:20]!r}")
            out[name] = Follows(validate_content_type(ctype), length, digest, revpos,
                                "gzip" if encoding == "gzip" else None)
        elif "data" in att:
            data = att["data"]
            if type(data) is not str:
                raise InvalidDocument(f"attachment {name[:80]!r}: data must be a base64 string")
            if max_bytes is not None and len(data) > (max_bytes + 2) // 3 * 4 + 4:
                raise AttachmentTooLarge(f"attachment {name[:80]!r} is over the limit of {max_bytes} bytes")
            try:
                raw = base64.b64decode(data, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise InvalidDocument(f"attachment {name[:80]!r}: data is not valid base64") from exc
            if max_bytes is not None and len(raw) > max_bytes:
                raise AttachmentTooLarge(f"attachment {name[:80]!r} is over the limit of {max_bytes} bytes")
            if digest is not None and digest.startswith("md5-") and digest != digest_of(raw):
                raise InvalidDocument(f"attachment {name[:80]!r}: its digest does not match its data")
            out[name] = Inline(validate_content_type(ctype), raw, digest, revpos)
        else:
            raise InvalidDocument(f"attachment {name[:80]!r} needs data, stub: true or follows: true")
    return out


def since_generation(revisions: list[str], atts_since: list[str] | None) -> int:
    """CouchDB's ``atts_since``: the highest generation among those revisions that are ``revisions`` (the
    revision sent and its ancestors); attachments with a ``revpos`` above it travel with their bytes, the others
    as stubs (the receiver has them). 0: every attachment travels with its bytes."""
    if not atts_since:
        return 0
    known = set(revisions)
    best = 0
    for r in atts_since:
        if r in known:
            gen = int(r.partition("-")[0])
            best = max(best, gen)
    return best
