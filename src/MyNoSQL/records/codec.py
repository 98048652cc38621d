"""The reversible encoding of record values (dict <-> JSON bytes). No pickle, ever.

JSON holds ``dict`` (string keys), ``list``, ``str``, ``int``, ``float`` (finite), ``bool`` and ``None``; they are
stored as themselves. Other supported types are stored as a JSON object with exactly one key that starts with
``$`` (a *tag*):

=====================  ==========================================  =====================================
Python value           stored as                                   notes
=====================  ==========================================  =====================================
``bytes``              ``{"$bytes": "<base64>"}``                  ``bytearray``/``memoryview`` -> bytes
``datetime.datetime``  ``{"$datetime": "<isoformat>"}``            naive stays naive; aware keeps its
                                                                   offset; a ``zoneinfo`` zone is kept
                                                                   as wall time + name, e.g.
                                                                   ``2026-03-29T02:30:00[Europe/Paris]``
                                                                   (``~fold`` marks fold=1)
``datetime.date``      ``{"$date": "YYYY-MM-DD"}``
``datetime.time``      ``{"$time": "<isoformat>"}``
``decimal.Decimal``    ``{"$decimal": "<str>"}``                   exact, NaN and signs included
``uuid.UUID``          ``{"$uuid": "<canonical str>"}``
``tuple``              ``{"$tuple": [...]}``
``set``/``frozenset``  ``{"$set": [...]}`` / ``{"$frozenset": ...}`` elements sorted by their encoding
``int`` beyond 64 bit  ``{"$int": "<decimal digits>"}``
=====================  ==========================================  =====================================

A dict of the application's that itself has exactly one key starting with ``$`` is wrapped as
``{"$dict": {...}}`` so it can never be mistaken for a tag. Subclasses of ``str``, ``int``, ``float``, ``dict``
and ``list`` (an ``Enum`` of strings, an ``OrderedDict``...) are stored as their base type. Anything else, a
non-string dict key, NaN or infinity raises :class:`~MyNoSQL.InvalidValueType` naming the key path, and nothing
is written.
"""

from __future__ import annotations

import base64
import datetime
import decimal
import math
import uuid
import zoneinfo
from typing import Any

import orjson

from ..errors import InvalidDocument, InvalidValueType

MAX_DEPTH = 200
_FAST = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_SUBCLASS | orjson.OPT_PASSTHROUGH_DATACLASS
_INT_MIN = -(2**63)
_INT_MAX = 2**64 - 1
_NoneType = type(None)
_ATOMIC = frozenset(
    (str, int, float, bool, _NoneType, bytes, datetime.datetime, datetime.date, datetime.time, decimal.Decimal,
     uuid.UUID)
)
_TAGS = frozenset(
    ("$bytes", "$datetime", "$date", "$time", "$decimal", "$uuid", "$tuple", "$set", "$frozenset", "$int",
     "$dict")
)


def _path(parent: Any) -> str:
    parts: list[str] = []
    while parent is not None:
        parent, key = parent
        parts.append(f"[{key!r}]")
    return "".join(reversed(parts)) or "<record>"


def _bad(value: Any, where: Any, why: str | None = None) -> InvalidValueType:
    path = _path(where)
    what = why or f"values of type {type(value).__module__}.{type(value).__qualname__} cannot be stored"
    return InvalidValueType(f"{what} (at {path})", path=path)


def encode_value(v: Any, where: Any = None, depth: int = 0) -> Any:
    """Return the JSON-able form of ``v``; ``where`` is the key path as nested (parent, key) pairs."""
    t = type(v)
    if t is str or t is bool or t is _NoneType:
        return v
    if t is float:
        if math.isfinite(v):
            return v
        raise _bad(v, where, f"{v!r} is not a JSON number")
    if t is int:
        return v if _INT_MIN <= v <= _INT_MAX else {"$int": str(v)}
    if depth >= MAX_DEPTH:
        raise InvalidDocument(f"values nest deeper than {MAX_DEPTH} levels (at {_path(where)})")
    d1 = depth + 1
    if t is dict:
        out = {}
        for k, item in v.items():
            if type(k) is not str:
                if not isinstance(k, str):
                    raise _bad(k, (where, k), f"dict keys must be strings, not {type(k).__name__}")
                k = str(k)
            out[k] = encode_value(item, (where, k), d1)
        if len(out) == 1 and next(iter(out)).startswith("$"):
            return {"$dict": out}
        return out
    if t is list:
        return [encode_value(item, (where, i), d1) for i, item in enumerate(v)]
    if t is datetime.datetime:
        key = getattr(v.tzinfo, "key", None)
        if isinstance(key, str):  # a zoneinfo zone: wall time, fold and zone name, exactly
            wall = v.replace(tzinfo=None, fold=0).isoformat()
            return {"$datetime": f"{wall}{'~fold' if v.fold else ''}[{key}]"}
        return {"$datetime": v.isoformat()}
    if t is datetime.date:
        return {"$date": v.isoformat()}
    if t is datetime.time:
        return {"$time": v.isoformat()}
    if t is bytes:
        return {"$bytes": base64.b64encode(v).decode("ascii")}
    if t is decimal.Decimal:
        return {"$decimal": str(v)}
    if t is uuid.UUID:
        return {"$uuid": str(v)}
    if t is tuple:
        return {"$tuple": [encode_value(item, (where, i), d1) for i, item in enumerate(v)]}
    if t is set or t is frozenset:
        items = [encode_value(item, (where, "<set item>"), d1) for item in v]
        items.sort(key=orjson.dumps)
        return {"$set" if t is set else "$frozenset": items}
    # Subclasses of the plain types are stored as their base type.
    if isinstance(v, bool):
        return bool(v)
    if isinstance(v, str):
        return str.__str__(v)  # the string value itself, not a subclass's __str__ (Enum's would add its name)
    if isinstance(v, int):
        return encode_value(int(v), where, depth)
    if isinstance(v, float):
        return encode_value(float(v), where, depth)
    if isinstance(v, dict):
        return encode_value(dict(v), where, depth)
    if isinstance(v, list):
        return encode_value(list(v), where, depth)
    if isinstance(v, (bytearray, memoryview)):
        return encode_value(bytes(v), where, depth)
    raise _bad(v, where)


def decode_value(v: Any) -> Any:
    """Inverse of :func:`encode_value` on a freshly parsed JSON value (mutated in place where possible)."""
    t = type(v)
    if t is dict:
        if len(v) == 1:
            key = next(iter(v))
            if key in _TAGS:
                return _decode_tag(key, v[key])
        for k, item in v.items():
            if type(item) is dict or type(item) is list:
                v[k] = decode_value(item)
        return v
    if t is list:
        for i, item in enumerate(v):
            if type(item) is dict or type(item) is list:
                v[i] = decode_value(item)
        return v
    return v


def _decode_tag(tag: str, arg: Any) -> Any:
    if tag == "$dict":
        return {k: decode_value(item) for k, item in arg.items()}
    if tag == "$datetime":
        if arg.endswith("]"):
            wall, _, key = arg[:-1].partition("[")
            fold = wall.endswith("~fold")
            naive = datetime.datetime.fromisoformat(wall.removesuffix("~fold"))
            return naive.replace(tzinfo=zoneinfo.ZoneInfo(key), fold=int(fold))
        return datetime.datetime.fromisoformat(arg)
    if tag == "$date":
        return datetime.date.fromisoformat(arg)
    if tag == "$time":
        return datetime.time.fromisoformat(arg)
    if tag == "$bytes":
        return base64.b64decode(arg)
    if tag == "$decimal":
        return decimal.Decimal(arg)
    if tag == "$uuid":
        return uuid.UUID(arg)
    if tag == "$tuple":
        return tuple(decode_value(item) for item in arg)
    if tag == "$set":
        return {decode_value(item) for item in arg}
    if tag == "$frozenset":
        return frozenset(decode_value(item) for item in arg)
    if tag == "$int":
        return int(arg)
    raise AssertionError(tag)  # pragma: no cover - _TAGS and this function list the same tags


def _refuse(value: Any) -> Any:
    raise TypeError


def encode_body(body: dict[str, Any]) -> tuple[bytes, dict[str, Any] | None]:
    """A record body (without ``id``/``rev``) as compact JSON bytes, and a decoded copy of them when that comes
    for free (else None).

    Fast path: most records hold only plain JSON types. orjson serialises them (refusing anything it would
    have to convert), and if parsing the result gives back an equal value with no ``"$`` string in it, the
    bytes are exactly what :func:`encode_value` would give, and the parsed value is what :func:`loads_body`
    of them returns: a new dict that shares nothing with ``body`` (``savedoc`` hands it back). Otherwise the
    full walk runs.
    """
    try:
        data = orjson.dumps(body, option=_FAST, default=_refuse)
        if data.find(b'"$') < 0:  # not `in`: on bytes it first tries its operand as an int (a TypeError)
            back = orjson.loads(data)
            if back == body:
                return _exact(data), back
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        pass
    return _exact(orjson.dumps(encode_value(body))), None


def dumps_exact(value: Any) -> bytes:
    """``orjson.dumps`` for bytes that will be kept (see :func:`_exact`)."""
    return _exact(orjson.dumps(value))


def _exact(data: bytes) -> bytes:
    """A copy of exactly the right size: orjson's result keeps its ~4 KiB buffer, and bodies live on in the
    memtable and caches (measured: 120 MiB for 30,000 pending records without this)."""
    return memoryview(data).tobytes() if len(data) < 2048 else data


def loads_body(data: bytes) -> dict[str, Any]:
    """Decode bytes made by :func:`encode_body` into a new dict owned by the caller."""
    value = orjson.loads(data)
    if data.find(b'"$') >= 0:
        value = decode_value(value)
    result: dict[str, Any] = value
    return result


def copy_plan(doc: dict[str, Any]) -> tuple[str, ...] | None:
    """How to copy a decoded record cheaply, or None if it nests too deep for that (decode it again instead).

    The plan is the keys whose values are lists, dicts or sets of immutable values: ``doc.copy()`` plus a
    shallow copy of each of those gives a record that shares nothing mutable with ``doc``.
    """
    keys: list[str] = []
    for k, v in doc.items():
        t = type(v)
        if t in _ATOMIC:
            continue
        if t is list or t is set:
            items = v
        elif t is dict:
            items = v.values()
        elif t is tuple or t is frozenset:
            if all(_immutable(x) for x in v):
                continue
            return None
        else:
            return None
        if not _ATOMIC.issuperset(map(type, items)) and not all(_immutable(x) for x in items):
            return None
        keys.append(k)
    return tuple(keys)


def _immutable(v: Any) -> bool:
    t = type(v)
    return t in _ATOMIC or ((t is tuple or t is frozenset) and all(_immutable(x) for x in v))
