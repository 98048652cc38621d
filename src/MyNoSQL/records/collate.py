"""CouchDB's view collation of JSON values, as an order-preserving byte encoding.

The order is pouchdb-collate's (the one pouchdb-find sorts and compares with): ``null < false < true < numbers <
strings < arrays < objects``; numbers by value; strings by their UTF-16 code units (JavaScript's ``<``), not by
ICU as CouchDB does (ICU's order depends on the ICU version and locale, and cannot be computed from the bytes of
one key alone); arrays element by element, then the shorter first; objects key by key in their order (the key,
then its value), then the one with fewer keys first.

:func:`encode_key` maps a value to bytes whose ``memcmp`` order is that collation, so SQLite (which compares
BLOBs with ``memcmp``) keeps index keys in collation order, and Python sorts by them. Each encoded value is
self-delimiting, so the concatenation of several is ordered as the tuple of them (compound keys):

==========  ==============================================================================================
value       bytes
==========  ==============================================================================================
null        ``02``
false/true  ``03`` / ``04``
number      ``05`` + the IEEE-754 double, big-endian, sign bit flipped (negative: every bit flipped);
            ``-0.0`` is ``0.0``; integers beyond 2**53 are rounded as JavaScript rounds them
string      ``06`` + UTF-8 of the string with each character beyond U+FFFF written as its UTF-16 surrogate
            pair (so the bytes sort by UTF-16 code units), every ``00`` byte written ``00 FF``, then ``00``
array       ``07`` + each element, then ``01``
object      ``08`` + each key (as a string) and its value, then ``01``
==========  ==============================================================================================

Values are compared in their stored JSON form (see :mod:`MyNoSQL.records.codec`): a ``datetime`` is the object
``{"$datetime": "<isoformat>"}``, so datetimes with the same offset (or all naive) sort in time order, and a
``Decimal`` sorts as the string of its digits.
"""

from __future__ import annotations

import re
import struct
from typing import Any

_pack = struct.Struct(">d").pack
_from_bytes = int.from_bytes
_ASTRAL = re.compile("[\U00010000-\U0010ffff]")
NULL, FALSE, TRUE, NUMBER, STRING = b"\x02", b"\x03", b"\x04", b"\x05", b"\x06"
ARRAY, OBJECT, END = b"\x07", b"\x08", b"\x01"
HIGH = b"\xff"  # greater than every byte an encoded value can start or continue a compound key with


def _pair(m: re.Match[str]) -> str:
    c = ord(m.group()) - 0x10000
    return chr(0xD800 + (c >> 10)) + chr(0xDC00 + (c & 0x3FF))


def encode_string(s: str) -> bytes:
    b = s.encode() if s.isascii() else _ASTRAL.sub(_pair, s).encode("utf-8", "surrogatepass")
    if b"\x00" in b:
        b = b.replace(b"\x00", b"\x00\xff")
    return STRING + b + b"\x00"


def _number(v: float) -> bytes:
    if v == 0:
        v = 0.0
    b = _pack(v)
    n = _from_bytes(b, "big")
    n = n ^ 0xFFFFFFFFFFFFFFFF if n >> 63 else n | 0x8000000000000000
    return NUMBER + n.to_bytes(8, "big")


def encode_key(v: Any) -> bytes:
    """The collation key of a JSON value (as ``orjson.loads`` gives it)."""
    t = type(v)
    if t is str:
        return encode_string(v)
    if t is int or t is float:
        return _number(float(v))
    if v is None:
        return NULL
    if t is bool:
        return TRUE if v else FALSE
    if t is list:
        return ARRAY + b"".join([encode_key(x) for x in v]) + END
    if t is dict:
        return OBJECT + b"".join([encode_string(k) + encode_key(x) for k, x in v.items()]) + END
    if isinstance(v, (int, float)):
        return _number(float(v))
    raise TypeError(f"not a JSON value: {type(v).__name__}")


def collate(a: Any, b: Any) -> int:
    """-1, 0 or 1 as ``a`` sorts before, with or after ``b``."""
    ka, kb = encode_key(a), encode_key(b)
    return (ka > kb) - (ka < kb)
