"""The splitter of large _bulk_docs bodies: the documents and the rest of the body, whatever the chunks."""

from __future__ import annotations

import random

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from MyNoSQL.server.bulkstream import DocsSplitter
from MyNoSQL.server.requests import HttpError

DOCS = [
    {"_id": "a", "_rev": "1-" + "0" * 32, "text": 'quotes " and \\ backslashes \\" and } ] { [ in strings'},
    {"_id": "b\u00e9\U0001f600", "nested": {"x": [1, [2, {"y": "}"}], {}], "z": []}, "e": "\\"},
    {"_id": "c", "_attachments": {"f.bin": {"content_type": "application/octet-stream", "data": "AAEC" * 5000}}},
    {},
]


def split(body: bytes, sizes: list[int], max_doc: int = 1 << 20) -> tuple[list[bytes], object]:
    s = DocsSplitter(max_doc)
    out: list[bytes] = []
    pos = 0
    for n in sizes:
        out += s.feed(body[pos:pos + n])
        pos += n
    out += s.feed(body[pos:])
    return out, s.finish()


@pytest.mark.parametrize("seed", range(20))
def test_documents_and_the_rest_come_out_whatever_the_chunks(seed: int) -> None:
    rnd = random.Random(seed)
    body = {"new_edits": False, "docs": DOCS, "after": {"docs": [1, 2]}}
    raw = orjson.dumps(body) if seed % 2 else orjson.dumps(body, option=orjson.OPT_INDENT_2)
    sizes = [rnd.choice([1, 2, 3, 7, 100, 5000]) for _ in range(200)]
    docs, rest = split(raw, sizes)
    assert [orjson.loads(d) for d in docs] == DOCS
    assert rest == {"new_edits": False, "docs": [], "after": {"docs": [1, 2]}}


def test_an_empty_batch_and_a_body_without_docs() -> None:
    assert split(b'{"docs": [ ]}', [3]) == ([], {"docs": []})
    assert split(b'{"new_edits": false}', [5]) == ([], {"new_edits": False})


@pytest.mark.parametrize(("body", "status"), [
    (b'{"docs": [1, {"_id": "a"}]}', 400),            # not an object
    (b'{"docs": [{"_id": "a"}, "x"]}', 400),
    (b'{"docs": [[]]}', 400),
    (b'{"docs": [{"_id": "a"}], "docs": []}', 400),   # two docs members
    (b'{"docs": [{"_id": "a"}', 400),                  # ends too soon
    (b'{"docs": [{"_id": "a"}]', 400),
    (b'{"docs": [{"_id": "a}]}', 400),                 # an unterminated string
    (b'{"docs": []}}', 400),
    (b'{"docs": [], "x": ' + b'"y' * 40000 + b'"}', 413),  # too much besides the documents
    (b'{"docs": [{"_id": "' + b"y" * 3000 + b'"}]}', 413),  # one document over the limit
])
def test_malformed_or_oversized_bodies_are_refused(body: bytes, status: int) -> None:
    with pytest.raises(HttpError) as info:
        docs, _ = split(body, [7] * (len(body) // 7), max_doc=2048)
        for d in docs:
            orjson.loads(d)
    assert info.value.status == status


SCALARS = (st.none() | st.booleans() | st.integers(-(2**53), 2**53)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12))
JSON = st.recursive(SCALARS,
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
                    max_leaves=12)


@settings(max_examples=40, deadline=None)
@given(docs=st.lists(st.dictionaries(st.text(max_size=6), JSON, max_size=4), max_size=5),
       extra=st.dictionaries(st.sampled_from(["new_edits", "x", "docs2", "\u00e9"]), JSON, max_size=2),
       step=st.integers(1, 40), indent=st.booleans())
def test_any_json_batch_splits_as_the_parser_reads_it(docs: list[dict[str, object]], extra: dict[str, object],
                                                      step: int, indent: bool) -> None:
    raw = orjson.dumps({**extra, "docs": docs}, option=orjson.OPT_INDENT_2 if indent else 0)
    got, rest = split(raw, [step] * (len(raw) // step + 1))
    assert [orjson.loads(d) for d in got] == docs
    assert rest == {**extra, "docs": []}


@settings(max_examples=150, deadline=None)
@given(data=st.binary(max_size=300), prefix=st.sampled_from([b"", b'{"docs": [', b'{"docs": [{"a": "']),
       step=st.integers(1, 17))
def test_arbitrary_bytes_are_refused_cleanly_or_split(data: bytes, prefix: bytes, step: int) -> None:
    """Whatever the bytes, the splitter answers an HttpError (4xx) or pieces: it never fails otherwise."""
    raw = prefix + data
    try:
        split(raw, [step] * (len(raw) // step + 1), max_doc=100)
    except HttpError as exc:
        assert 400 <= exc.status < 500
