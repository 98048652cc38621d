"""Query indexes (``createindex``): one row per record and index in ``index.sqlite``'s ``qkeys`` table, written
by the compactor in the same transaction as the blocks the records went to.

``qkeys(ino, id, key, loc)``: ``ino`` numbers the index, ``key`` is the concatenation of the collation keys
(:func:`MyNoSQL.records.collate.encode_key`) of the record's values of the index's fields, ``loc`` is where the
record's state is on disk (``bno << 8 | slot``, as in ``docs``), so a query reads its records without looking
their ids up. A record gets a row only if it has every field of the index (CouchDB's json indexes: a selector can
use an index only if it requires each of its fields) and, for a partial index, matches its filter; a deleted
record has none. Records not packed yet (the memtables) are never in it: a query reads them from memory.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from ..records.collate import encode_key
from ..records.mango import MISSING, Node, Path, get_field, match_doc
from ..records.revtree import DocState

Row = tuple[int, str, bytes, int]  # ino, id, key, loc


@dataclasses.dataclass(frozen=True)
class IndexDef:
    """One query index: its number, name, fields (paths into the CouchDB form of a record: ``_id`` is its id)
    and directions, and the partial filter (a compiled selector) if any."""

    ino: int
    name: str
    ddoc: str
    paths: tuple[Path, ...]
    desc: tuple[bool, ...]
    fields: tuple[str, ...]
    partial: Node | None = None
    partial_json: Any = None

    def key(self, doc: dict[str, Any]) -> bytes | None:
        """The index key of a record (its CouchDB form), or None if it has no row."""
        parts = []
        for p in self.paths:
            v = get_field(doc, p)
            if v is MISSING:
                return None
            parts.append(encode_key(v))
        if self.partial is not None and not self.partial.test(doc):
            return None
        return b"".join(parts)


def rows_for(defs: Sequence[IndexDef], states: Sequence[DocState],
             locs: Sequence[int]) -> tuple[list[Row], list[tuple[int, str]]]:
    """The rows to write (and the (ino, id) to delete) for states packed at ``locs``."""
    sets: list[Row] = []
    dels: list[tuple[int, str]] = []
    for s, loc in zip(states, locs, strict=True):
        doc = match_doc(s)
        for d in defs:
            key = None if doc is None else d.key(doc)
            if key is None:
                dels.append((d.ino, s.id))
            else:
                sets.append((d.ino, s.id, key, loc))
    return sets, dels


Writer = Callable[[Any], None]  # called with the index's writer connection, inside the flush's transaction
