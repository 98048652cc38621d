"""Revision trees, CouchDB style. Pure functions and one small value class; no I/O.

A revision id is ``"<generation>-<hash>"`` where the generation counts edits from the first save and the hash is
32 lowercase hex digits (MD5 of the parent revision, the deleted flag and the encoded body, so the same edit
made on two nodes gets the same id). A record keeps a tree of revisions: every edit adds a child to a leaf;
replication can add branches (concurrent edits), which are *conflicts*.

The winner among the leaves is the same everywhere (CouchDB's rule): the leaf that is not deleted before one
that is, then the highest generation, then the highest hash in ASCII order. Bodies are kept for leaves only;
ancestors are remembered by id, at most ``revs_limit`` of them behind each leaf (stemming).
"""

from __future__ import annotations

import hashlib
import itertools
import re
import struct
from collections.abc import Iterable, Sequence
from typing import Any

import orjson

from ..errors import CorruptionError

try:  # CPython's own MD5 costs half of OpenSSL's per call on inputs this short (same digest, of course)
    from _md5 import md5 as _md5  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - an interpreter built without it
    _md5 = hashlib.md5

REV_RE = re.compile(r"^([1-9][0-9]{0,9})-([0-9a-zA-Z]{1,64})$")
_U32 = struct.Struct("<I").pack
_U32_FROM = struct.Struct("<I").unpack_from
STRICT_REV_RE = re.compile(r"^[1-9][0-9]{0,9}-[0-9a-f]{32}$")
# The only revision of a *purge marker*: the state a purge that removed every leaf of a record leaves in the store
# until the compactor drops the record's index row (generation 0: never a real revision, which starts at 1, and
# refused wherever a revision comes in). It looks like a deleted record to whatever reads a state.
PURGED_REV = "0-purged"

# node: rev -> (parent rev or None, deleted)
Tree = dict[str, tuple[str | None, bool]]
# The node of a first revision, one object for all (a constant: the garbage collector does not track it, nor then
# the tree of a one-revision record that holds it). A tuple made per record made a decoded record three objects
# for the collector instead of one, and the owner of a shared log decodes every other process's save
# (bench/processes.py).
ROOT_NODES = ((None, False), (None, True))
_NO_ATTS: dict[str, dict[str, Any]] = {}


def is_rev(rev: Any) -> bool:
    """Whether ``rev`` is a revision id (``N-<hash>``)."""
    return type(rev) is str and REV_RE.match(rev) is not None


def parse_rev(rev: str) -> tuple[int, str]:
    """Split ``"3-abc..."`` into ``(3, "abc...")``; raise ``ValueError`` if it is not a revision id."""
    m = REV_RE.match(rev) if type(rev) is str else None
    if m is None:
        raise ValueError(f"not a revision id: {rev!r}")
    return int(m.group(1)), m.group(2)


def rev_gen(rev: str) -> int:
    return int(rev[: rev.index("-")])


def rev_key(rev: str, deleted: bool) -> tuple[bool, int, str]:
    """Sort key of the winner rule: higher wins."""
    gen, _, h = rev.partition("-")
    return (not deleted, int(gen), h)


def new_rev(parent: str | None, deleted: bool, body: bytes) -> str:
    """The deterministic id of the revision that follows ``parent`` with this body."""
    gen = rev_gen(parent) + 1 if parent else 1
    h = _md5(b"".join(((parent or "").encode(), b"\x01" if deleted else b"\x00", body)), usedforsecurity=False)
    return f"{gen}-{h.hexdigest()}"


def leaves(tree: Tree) -> list[str]:
    if len(tree) == 1:  # most records: one revision, its own leaf
        return list(tree)
    parents = {p for p, _ in tree.values() if p is not None}
    return [r for r in tree if r not in parents]


def winner(tree: Tree) -> str:
    if len(tree) == 1:
        return next(iter(tree))
    return max(leaves(tree), key=lambda r: rev_key(r, tree[r][1]))


def sorted_leaves(tree: Tree) -> list[str]:
    """Leaves, winner first, then the others in the order of the winner rule."""
    if len(tree) == 1:
        return list(tree)
    return sorted(leaves(tree), key=lambda r: rev_key(r, tree[r][1]), reverse=True)


def ancestry(tree: Tree, rev: str) -> list[str]:
    """``rev`` and its known ancestors, newest first."""
    out = [rev]
    parent = tree[rev][0]
    while parent is not None and parent in tree:
        out.append(parent)
        parent = tree[parent][0]
    return out


def stem(tree: Tree, limit: int) -> Tree:
    """Keep at most ``limit`` revisions on each leaf's path (the leaf included)."""
    if len(tree) <= limit:
        return tree
    keep: set[str] = set()
    for leaf in leaves(tree):
        keep.update(ancestry(tree, leaf)[:limit])
    out: Tree = {}
    for rev, (parent, deleted) in tree.items():
        if rev in keep:
            out[rev] = (parent if parent in keep else None, deleted)
    return out


def merge_path(tree: Tree, path: Sequence[str], deleted: bool) -> tuple[Tree, bool]:
    """Graft a revision path (leaf first, then its ancestors, newest to oldest) into ``tree``.

    Returns the new tree and whether the leaf was new. Used by replication (``new_edits=false``): the path's
    generations must be consecutive. The leaf is marked ``deleted`` as given; ancestors already known keep
    their flags.
    """
    if not path:
        raise ValueError("empty revision path")
    gens = [parse_rev(r)[0] for r in path]
    for a, b in itertools.pairwise(gens):
        if a != b + 1:
            raise ValueError(f"revision path is not consecutive: {list(path)!r}")
    if path[0] in tree:
        return tree, False
    out = dict(tree)
    # The path is grafted on its newest revision the tree knows: what the path says of older ones is not
    # added (the tree has that revision's ancestry already; a path that disagrees must not leave a stray root,
    # a leaf without a body, behind).
    known = next((i for i, rev in enumerate(path) if rev in tree), len(path))
    new = path[:known]
    # Oldest first, so parents are inserted before children (the encoding relies on that order).
    for i in range(len(new) - 1, -1, -1):
        out[new[i]] = (path[i + 1] if i + 1 < len(path) else None, False)
    out[path[0]] = (out[path[0]][0], deleted)
    return out, True


def without_leaves(tree: Tree, gone: Iterable[str]) -> Tree:
    """``tree`` without the leaves ``gone`` and the ancestors that only they had (CouchDB's purge of leaves: the
    path from each purged leaf up to the revision another leaf shares goes). Order kept (parents first)."""
    drop = set(gone)
    keep: set[str] = set()
    for leaf in leaves(tree):
        if leaf not in drop:
            keep.update(ancestry(tree, leaf))
    return {rev: node for rev, node in tree.items() if rev in keep}


def revs_diff(tree: Tree | None, revs: Iterable[str]) -> list[str]:
    """The revisions of ``revs`` that ``tree`` does not hold."""
    if tree is None:
        return list(dict.fromkeys(revs))
    return [r for r in dict.fromkeys(revs) if r not in tree]


def peek_winner(data: bytes) -> tuple[str, str, bool, bytes] | None:
    """(id, rev, deleted, body) of an encoded record of one revision (the usual case) without building its
    :class:`DocState`; None for a record with more (then decode it)."""
    try:
        (mlen,) = struct.unpack_from("<I", data, 0)
        id, _seq, nodes, _lens = orjson.loads(data[4 : 4 + mlen])
        if len(nodes) != 1:
            return None
        rev, _parent, deleted = nodes[0]
        return id, rev, bool(deleted), data[4 + mlen :]
    except (ValueError, TypeError, IndexError, struct.error) as exc:
        raise CorruptionError(f"undecodable record: {exc}") from exc


class DocState:
    """Everything stored about one record: its id, last change seq, revision tree and leaf bodies."""

    __slots__ = (
        "__weakref__", "_json", "_win", "atts", "bodies", "decoded", "disk_loc", "hit", "id", "in_x", "purged", "raw",
        "seq", "tree"
    )

    def __init__(self, id: str, seq: int, tree: Tree, bodies: dict[str, bytes],
                 atts: dict[str, dict[str, dict[str, Any]]] | None = None) -> None:
        self.id = id
        self.seq = seq
        self.tree = tree
        # A purge marker (:meth:`purge_marker`): the record is gone. A plain slot, not a property: the store tests
        # it on every cached read.
        self.purged = PURGED_REV in tree
        self.bodies = bodies  # leaf rev -> encoded body (JSON bytes); deleted leaves keep theirs too
        # leaf rev -> {attachment name: metadata} (see records/attachments.py), for the leaves that have any;
        # None when none has (most records): never an empty dict. Never mutated once the state is built.
        self.atts = atts
        # Where the newest on-disk state of this id is (bno << 8 | slot), -1 if none; and whether its index row
        # is in the collision table. Storage bookkeeping, not part of the encoding.
        self.disk_loc = -1
        self.in_x = False
        self.hit = False  # read since the record cache last looked at it (its second-chance eviction)
        self.raw: bytes | None = None  # to_bytes() of a state waiting in the log to be packed
        self._win: str | None = None  # memoised; a state is never mutated after it is built
        self._json: bytes | None = None
        # readdoc's memo of doc_json decoded, with the codec's copy_plan for it: never handed out, only copied.
        # None: not read yet; True: read once; False: no memo (too big, or nested too deep to copy cheaply).
        self.decoded: tuple[dict[str, Any], tuple[str, ...]] | bool | None = None

    @property
    def winner(self) -> str:
        win = self._win
        if win is None:
            tree = self.tree
            win = self._win = next(iter(tree)) if len(tree) == 1 else winner(tree)
        return win

    @property
    def doc_json(self) -> bytes | None:
        """JSON of the winning revision as ``readdoc`` returns it (``id``, ``rev``, body); None if deleted."""
        data = self._json
        if data is None:
            win = self.winner
            if self.tree[win][1]:
                return None
            body = self.bodies[win]
            if body.startswith(b'{"$dict":'):  # maybe the wrapper of a body whose only key starts with "$"
                outer = orjson.loads(body)
                if len(outer) == 1:  # spliced beside id and rev, its key can no longer pass for a tag
                    body = orjson.dumps(outer["$dict"])
            head = b'{"id":' + orjson.dumps(self.id) + b',"rev":"' + win.encode() + b'"'
            data = self._json = head + (b"}" if body == b"{}" else b"," + body[1:])
        return data

    @property
    def deleted(self) -> bool:
        return self.tree[self.winner][1]

    @classmethod
    def purge_marker(cls, id: str) -> DocState:
        """The state that says "record ``id`` was purged": the store never hands it out as a record, and drops
        the record's index row when it packs it."""
        return cls(id, 0, {PURGED_REV: (None, True)}, {PURGED_REV: b"{}"})

    def conflicts(self) -> list[str]:
        """Non-deleted leaves other than the winner, in winner-rule order (CouchDB's ``_conflicts``)."""
        tree = self.tree
        return [r for r in sorted_leaves(tree)[1:] if not tree[r][1]]

    def deleted_conflicts(self) -> list[str]:
        tree = self.tree
        return [r for r in sorted_leaves(tree)[1:] if tree[r][1]]

    def moved_past(self, revs: Iterable[str]) -> list[str]:
        """Those of ``revs`` this record has as revisions that are no longer leaves (bodies are kept for leaves
        only): it has later ones (see Database.behind)."""
        tree, bodies = self.tree, self.bodies
        return [r for r in revs if r in tree and r not in bodies]

    def leaf_atts(self, rev: str) -> dict[str, dict[str, Any]]:
        """The attachments of leaf ``rev`` (an empty dict when it has none: do not change it)."""
        atts = self.atts
        return atts.get(rev, _NO_ATTS) if atts is not None else _NO_ATTS

    # -- encoding ---------------------------------------------------------------------------------------------
    # record := meta_len u32 | meta JSON [id, seq, [[rev, parent_index, deleted], ...], [[node, body_len], ...]
    #                                     (, [[node, {name: attachment}], ...] when a leaf has attachments)]
    #           | body bytes, in the order of the meta list

    def to_bytes(self) -> bytes:
        tree, bodies = self.tree, self.bodies
        if self.atts is not None:
            return self._to_bytes_general()
        if len(tree) == 1 and len(bodies) == 1:  # one revision, the usual case: the general path's bytes, faster
            for rev, (parent, deleted) in tree.items():
                body = bodies.get(rev)
                if parent is None and body is not None:
                    meta = orjson.dumps([self.id, self.seq, [[rev, -1, 1 if deleted else 0]], [[0, len(body)]]])
                    return _U32(len(meta)) + meta + body
        return self._to_bytes_general()

    def _to_bytes_general(self) -> bytes:
        index = {}
        nodes: list[list[Any]] = []
        for i, (rev, (parent, deleted)) in enumerate(self.tree.items()):
            index[rev] = i
            nodes.append([rev, -1 if parent is None else index[parent], 1 if deleted else 0])
        lens = [[index[r], len(b)] for r, b in self.bodies.items()]
        head: list[Any] = [self.id, self.seq, nodes, lens]
        if self.atts:
            head.append([[index[r], a] for r, a in self.atts.items()])
        meta = orjson.dumps(head)
        return b"".join((_U32(len(meta)), meta, *self.bodies.values()))

    @classmethod
    def from_bytes(cls, data: bytes | memoryview) -> DocState:
        try:
            (mlen,) = _U32_FROM(data, 0)
            head = orjson.loads(data[4 : 4 + mlen])
            atts = None
            if len(head) == 4:
                id, seq, nodes, lens = head
                if len(nodes) == 1 and len(lens) == 1:  # one revision, the usual case: what the loop below makes
                    rev, parent, deleted = nodes[0]
                    idx, blen = lens[0]
                    if parent < 0 and idx == 0 and 4 + mlen + blen == len(data) and type(rev) is str:
                        return cls(id, seq, {rev: ROOT_NODES[1 if deleted else 0]}, {rev: bytes(data[4 + mlen :])})
            else:
                id, seq, nodes, lens, by_node = head
            revs = [n[0] for n in nodes]
            tree: Tree = {n[0]: (None if n[1] < 0 else revs[n[1]], bool(n[2])) for n in nodes}
            bodies: dict[str, bytes] = {}
            pos = 4 + mlen
            for idx, blen in lens:
                bodies[revs[idx]] = bytes(data[pos : pos + blen])
                pos += blen
            if pos != len(data) or not tree:
                raise ValueError("record length mismatch")
            if len(head) != 4:
                atts = {revs[idx]: a for idx, a in by_node} or None
                if atts is not None and not all(type(a) is dict and r in bodies for r, a in atts.items()):
                    raise ValueError("attachments of a revision that has no body")
        except (ValueError, TypeError, IndexError, KeyError, struct.error) as exc:
            raise CorruptionError(f"undecodable record: {exc}") from exc
        return cls(id, seq, tree, bodies, atts)
