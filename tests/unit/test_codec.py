"""Values round-trip exactly through the documented encoding; anything else is refused with its path."""

from __future__ import annotations

import datetime
import decimal
import enum
import uuid
from collections import OrderedDict
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import MyNoSQL
from MyNoSQL.records.codec import copy_plan, encode_body, loads_body

UTC = datetime.timezone.utc
SPECIAL: dict[str, Any] = {
    "bytes": b"\x00\xffbinary",
    "dt_naive": datetime.datetime(2026, 11, 26, 15, 11, 44, 123456),
    "dt_aware": datetime.datetime(2026, 11, 26, 15, 11, tzinfo=datetime.timezone(datetime.timedelta(hours=-5))),
    "date": datetime.date(2026, 1, 2),
    "time": datetime.time(23, 59, 1, 5),
    "dec": decimal.Decimal("-1234.5678900"),
    "dec_nan": decimal.Decimal("NaN"),
    "uuid": uuid.UUID("12345678-1234-5678-1234-567812345678"),
    "tuple": (1, "a", (2.5, None)),
    "set": {3, 1, 2},
    "frozen": frozenset({"x", "y"}),
    "big": 2**80,
    "neg_big": -(2**70),
    "nested": [{"t": (b"x",)}, {datetime.date(2020, 1, 1)}],
    "lookalike": {"$bytes": "not really"},
    "dollar": {"$x": 1},
    "two_dollars": {"$a": 1, "$b": 2},
    "unicode": "ü€𝄞",
    "minus_zero": -0.0,
    "empty": {},
}


def test_special_types_round_trip(db: MyNoSQL.MyNoSQL) -> None:
    saved = db.savedoc({"id": "s", **SPECIAL})
    for source in (saved, db.readdoc("s")):
        for key, value in SPECIAL.items():
            assert source[key] == value or repr(source[key]) == repr(value), key  # Decimal NaN != NaN
            assert type(source[key]) is type(value), key
        assert source["dt_aware"].utcoffset() == SPECIAL["dt_aware"].utcoffset()


@pytest.mark.parametrize("body", [{"v": [1, 2.5], "s": "x"}, {}, {"d": datetime.date(2026, 1, 2)},
                                  {"two": {"$a": 1}, "n": None}, {"look": {"$bytes": "not really"}}])
def test_a_first_read_from_disk_is_what_a_later_one_is(location: Any, body: dict[str, Any]) -> None:
    """readdoc parses a record's body alone the first time (a cold read), its whole JSON later: the same dict."""
    with MyNoSQL.MyNoSQL(location) as db:
        db.opendb("c")
        rev = db.savedoc({"id": "r", **body})["rev"]
    with MyNoSQL.MyNoSQL(location) as db:
        db.opendb("c")
        reads = [db.readdoc("r") for _ in range(3)]
    for out in reads:
        assert out == {"id": "r", "rev": rev, **body} and list(out) == ["id", "rev", *body]


def test_subclasses_are_stored_as_their_base_type(db: MyNoSQL.MyNoSQL) -> None:
    class Color(str, enum.Enum):
        RED = "red"

    class Level(enum.IntEnum):
        HIGH = 3

    r = db.savedoc({"c": Color.RED, "l": Level.HIGH, "od": OrderedDict(a=1), "flag": True})
    read = db.readdoc(r["id"])
    assert read["c"] == "red" and type(read["c"]) is str
    assert read["l"] == 3 and type(read["l"]) is int
    assert read["od"] == {"a": 1} and type(read["od"]) is dict
    assert read["flag"] is True


@pytest.mark.parametrize("bad", [complex(1, 1), object(), float("inf"), {1, (1, complex(0, 2))}, bytearray])
def test_unsupported_values_are_refused(bad: Any) -> None:
    with pytest.raises((MyNoSQL.InvalidValueType, TypeError)):
        encode_body({"v": bad})[0]


def test_too_deep_nesting_is_refused() -> None:
    deep: Any = 1
    for _ in range(300):
        deep = [deep]
    with pytest.raises(MyNoSQL.InvalidDocument, match="nest deeper"):
        encode_body({"v": deep})[0]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=20,
)
extra_values = (
    st.binary(max_size=20)
    | st.datetimes(timezones=st.none() | st.timezones())
    | st.dates()
    | st.times()
    | st.decimals(allow_nan=False)
    | st.uuids()
    | st.tuples(st.integers(), st.text(max_size=5))
    | st.sets(st.integers(), max_size=5)
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=8), json_values | extra_values, max_size=6))
@pytest.mark.slow
def test_random_bodies_round_trip(body: dict[str, Any]) -> None:
    data = encode_body(body)[0]
    back = loads_body(data)
    assert back == body
    assert encode_body(back)[0] == data  # the encoding is stable


def _mutable_parts(v: Any) -> list[Any]:
    """Every list, dict and set reachable from ``v`` (inside tuples and frozensets too)."""
    found: list[Any] = []
    todo = [v]
    while todo:
        x = todo.pop()
        if isinstance(x, (list, dict, set)):
            found.append(x)
        if isinstance(x, dict):
            todo.extend(x.values())
        elif isinstance(x, (list, set, tuple, frozenset)):
            todo.extend(x)
    return found


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=8), json_values | extra_values, max_size=6))
@pytest.mark.slow
def test_a_copy_by_the_copy_plan_shares_nothing_mutable(body: dict[str, Any]) -> None:
    doc = loads_body(encode_body(body)[0])
    plan = copy_plan(doc)
    # No plan exactly when a list, dict or set sits inside another container: readdoc parses the JSON instead.
    nested = any(len(_mutable_parts(v)) > (type(v) in (list, dict, set)) for v in doc.values())
    assert (plan is None) == nested
    if plan is None:
        return
    out = doc.copy()
    for k in plan:
        out[k] = out[k].copy()
    assert out == doc
    ours = {id(x) for x in _mutable_parts(out)}
    assert not ours & {id(x) for x in _mutable_parts(doc)}


@pytest.mark.parametrize("body", [{"$x": 1}, {"$int": "7"}, {"$dict": {"k": 1}}, {"$dict": {"$int": "7"}},
                                  {"$datetime": "not a date"}])
def test_a_record_whose_only_field_starts_with_a_dollar_reads_back_as_saved(tmp_path: Path, body: dict) -> None:
    """The codec wraps a body whose only key starts with "$" in {"$dict": ...} (it could pass for a tag); the
    record read back had that wrapper as a field ({"$x": 1} came back as {"$dict": {"$x": 1}})."""
    with MyNoSQL.MyNoSQL(tmp_path) as db:
        db.opendb("db")
        saved = db.savedoc({"id": "r", **body})
        assert {k: v for k, v in saved.items() if k not in ("id", "rev")} == body
        for _ in range(3):  # the first read, the memo, a copy of it
            doc = db.readdoc("r")
            assert {k: v for k, v in doc.items() if k not in ("id", "rev")} == body
    with MyNoSQL.MyNoSQL(tmp_path) as db:  # from disk
        db.opendb("db")
        doc = db.readdoc("r")
        assert {k: v for k, v in doc.items() if k not in ("id", "rev")} == body
        assert db.find({"_id": "r"})[0]["id"] == "r"
