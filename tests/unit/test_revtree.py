"""Revision trees: ids, the winner rule, merging replicated paths, stemming, revs_diff."""

from __future__ import annotations

import hashlib
import struct

import orjson
import pytest

from MyNoSQL import CorruptionError
from MyNoSQL.records import revtree
from MyNoSQL.records.revtree import DocState


def test_rev_ids_are_couchdb_shaped_and_deterministic() -> None:
    a = revtree.new_rev(None, False, b'{"x":1}')
    assert revtree.STRICT_REV_RE.match(a) and a.startswith("1-")
    assert a == revtree.new_rev(None, False, b'{"x":1}')
    assert a != revtree.new_rev(None, True, b'{"x":1}')
    b = revtree.new_rev(a, False, b'{"x":2}')
    assert b.startswith("2-")
    assert revtree.parse_rev(b) == (2, b[2:])
    for bad in ("", "0-abc", "x-abc", "1-", "1-a b", 5):
        with pytest.raises(ValueError):
            revtree.parse_rev(bad)  # type: ignore[arg-type]


def test_rev_id_is_the_md5_of_parent_deleted_flag_and_body() -> None:
    # Pinned: a revision id never changes for the same parent, flag and body, whichever MD5 computes it.
    first = revtree.new_rev(None, False, b'{"x":1}')
    assert first == "1-" + hashlib.md5(b'\x00{"x":1}').hexdigest()
    assert revtree.new_rev(first, True, b"{}") == "2-" + hashlib.md5(first.encode() + b"\x01{}").hexdigest()


def test_winner_rule_matches_couchdb() -> None:
    h = "a" * 32
    tree: revtree.Tree = {"1-" + h: (None, False)}
    tree["2-" + "b" * 32] = ("1-" + h, False)
    tree["2-" + "c" * 32] = ("1-" + h, False)
    assert revtree.winner(tree) == "2-" + "c" * 32  # same generation: the higher hash wins
    tree["3-" + "0" * 32] = ("2-" + "b" * 32, True)
    assert revtree.winner(tree) == "2-" + "c" * 32  # a deleted leaf loses to a live one, whatever its depth
    tree["3-" + "1" * 32] = ("2-" + "c" * 32, True)
    assert revtree.winner(tree) == "3-" + "1" * 32  # all deleted: highest generation, then hash
    state = DocState("d", 1, tree, {r: b"{}" for r in revtree.leaves(tree)})
    assert state.deleted and state.conflicts() == [] and state.deleted_conflicts() == ["3-" + "0" * 32]


def test_merge_path_and_revs_diff() -> None:
    r1 = revtree.new_rev(None, False, b"{}")
    r2a = revtree.new_rev(r1, False, b'{"a":1}')
    r2b = revtree.new_rev(r1, False, b'{"b":1}')
    tree: revtree.Tree = {r1: (None, False), r2a: (r1, False)}
    merged, added = revtree.merge_path(tree, [r2b, r1], deleted=False)
    assert added and set(revtree.leaves(merged)) == {r2a, r2b}
    again, added2 = revtree.merge_path(merged, [r2b, r1], deleted=False)
    assert not added2 and again == merged
    r3 = revtree.new_rev(r2b, False, b"{}")
    assert revtree.revs_diff(merged, [r1, r2b, r3, r3]) == [r3]
    assert revtree.revs_diff(None, [r1, r1]) == [r1]
    with pytest.raises(ValueError):
        revtree.merge_path(tree, ["3-" + "a" * 32, r1], deleted=False)  # generations not consecutive
    assert revtree.ancestry(merged, r2b) == [r2b, r1]


def test_a_path_that_disagrees_with_a_known_ancestry_leaves_no_stray_leaf() -> None:
    a, b, x = "1-" + "a" * 32, "2-" + "b" * 32, "3-" + "c" * 32
    tree, _ = revtree.merge_path({}, [b, a], False)
    # The same 2-b, but with another parent claimed: 2-b's known ancestry stands, "1-f" is not added.
    tree, added = revtree.merge_path(tree, [x, b, "1-" + "f" * 32], True)
    assert added and tree == {a: (None, False), b: (a, False), x: (b, True)}
    assert revtree.leaves(tree) == [x]


def test_stemming_keeps_the_newest_revisions_of_each_leaf() -> None:
    tree: revtree.Tree = {}
    parent = None
    chain = []
    for i in range(10):
        rev = revtree.new_rev(parent, False, str(i).encode())
        tree[rev] = (parent, False)
        chain.append(rev)
        parent = rev
    stemmed = revtree.stem(tree, 4)
    assert list(stemmed) == chain[-4:]
    assert stemmed[chain[-4]][0] is None
    assert revtree.winner(stemmed) == chain[-1]


def test_state_encoding_round_trips_and_detects_damage() -> None:
    r1 = revtree.new_rev(None, False, b'{"a":1}')
    r2 = revtree.new_rev(r1, True, b"{}")
    s = DocState("id/ü", 42, {r1: (None, False), r2: (r1, True)}, {r2: b"{}"})
    back = DocState.from_bytes(s.to_bytes())
    assert (back.id, back.seq, back.tree, back.bodies) == (s.id, s.seq, s.tree, s.bodies)

    with pytest.raises(CorruptionError):
        DocState.from_bytes(s.to_bytes()[:-1])


@pytest.mark.parametrize("deleted", [False, True])
def test_a_one_revision_state_is_encoded_as_the_format_says(deleted: bool) -> None:
    # to_bytes has a short path for the usual one-revision record: its bytes must be the general layout's.
    body = b'{"v":[1,2.5,"x"]}'
    rev = revtree.new_rev(None, deleted, body)
    s = DocState("r/1", 7, {rev: (None, deleted)}, {rev: body})
    meta = orjson.dumps(["r/1", 7, [[rev, -1, int(deleted)]], [[0, len(body)]]])
    assert s.to_bytes() == struct.pack("<I", len(meta)) + meta + body
    back = DocState.from_bytes(s.to_bytes())
    assert (back.id, back.seq, back.tree, back.bodies) == (s.id, s.seq, s.tree, s.bodies)
    stub = DocState("r/2", 8, {rev: (None, deleted)}, {})  # a revision without its body (never fetched)
    assert DocState.from_bytes(stub.to_bytes()).bodies == {}
    # from_bytes has a short path for it too: it must read what the general path reads, and refuse what it refuses
    for data in (s.to_bytes(), memoryview(s.to_bytes())):
        back = DocState.from_bytes(data)
        assert type(back.bodies[rev]) is bytes and back.tree == {rev: (None, deleted)}
    with pytest.raises(CorruptionError):
        DocState.from_bytes(s.to_bytes()[:-1])
    with pytest.raises(CorruptionError):
        DocState.from_bytes(s.to_bytes() + b" ")
