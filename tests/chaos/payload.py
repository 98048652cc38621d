"""The attachment bytes of the chaos runner: a few blobs, each made from its number alone (no file, no network).

The runner and its agents make the same bytes from the same number, so the runner knows each attachment's MD5
without trusting a node. Several records (in several databases) get the same blob: it is stored once per node.
"""

from __future__ import annotations

import base64
import hashlib
import random

# (length, content type): empty, tiny, a page, just past 64 KiB, compressible text, exactly one 256 KiB chunk
BLOBS: list[tuple[int, str]] = [
    (0, "application/octet-stream"),
    (17, "application/octet-stream"),
    (4096, "image/jpeg"),
    (65_537, "application/octet-stream"),
    (200_000, "text/plain"),
    (262_144, "image/jpeg"),
]
NAMES = ["a.bin", "photos/p.jpg", "notes.txt"]


def blob_bytes(key: int) -> bytes:
    """The bytes of blob ``key``: random bytes (incompressible), or text lines for a text type."""
    size, ctype = BLOBS[key]
    if ctype.startswith("text/"):
        line = f"line of blob {key}: the quick brown fox jumps over the lazy dog\n".encode()
        return (line * (size // len(line) + 1))[:size]
    return random.Random(key * 1_000_003 + 11).randbytes(size)


def digest(data: bytes) -> str:
    """CouchDB's digest of ``data`` (``md5-<base64>``), computed here, independently of MyNoSQL."""
    return "md5-" + base64.b64encode(hashlib.md5(data).digest()).decode("ascii")
