"""Wire shapes of CouchDB's replication protocol, and the mapping between records and CouchDB documents.

A record ``{"id": ..., "rev": ..., **body}`` travels as the CouchDB document
``{"_id": id, "_rev": rev, **body}`` plus ``"_deleted": true`` for a tombstone and
``"_revisions": {"start": N, "ids": [hash, ...]}`` (newest first) when the history is asked for.

The body is the record's stored JSON (see :mod:`MyNoSQL.records.codec`: values that JSON cannot hold travel as
one-key ``{"$tag": ...}`` objects). CouchDB reserves top-level keys that start with ``_``, so a record's own
top-level key ``_x`` travels as ``$_x`` and is mapped back on arrival (a document from elsewhere with a
top-level ``$_x`` key therefore arrives as ``_x``).

A revision's attachments travel as CouchDB's ``_attachments``: stubs (``{"content_type", "revpos", "digest",
"length", "stub": true}``), or with their bytes (``"data": "<base64>"``, or ``"follows": true`` in a multipart
body) when the receiver does not have them (see :mod:`MyNoSQL.records.attachments`).
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import orjson

from ..errors import InvalidDocument
from ..records import attachments as att
from ..records import revtree
from ..records.codec import dumps_exact, loads_body
from ..records.revtree import DocState

# Keys a document may carry on the wire besides its body; others starting with "_" are refused.
_WIRE_META = frozenset(("_id", "_rev", "_deleted", "_revisions", "_conflicts", "_deleted_conflicts",
                        "_revs_info", "_local_seq", "_attachments"))
# Special members CouchDB keeps in a document's body (its replicator's state): stored and sent as they are.
KEPT_SPECIAL = frozenset(("_replication_id", "_replication_state", "_replication_state_time",
                          "_replication_stats", "_replication_state_reason"))
# What doc_to_wire asks for the bytes of an attachment it sends with them: (name, metadata) -> bytes
AttData = Callable[[str, dict[str, Any]], bytes]


def body_to_wire(blob: bytes) -> dict[str, Any]:
    body: dict[str, Any] = orjson.loads(blob)
    # a key starting with _ shows as '"_' in the JSON (or as an escape, which orjson never writes): most bodies
    # have neither, and skip the look at every key
    if (b'"_' in blob or b"\\u" in blob) and any(k[:1] == "_" for k in body):
        body = {("$" + k if k[:1] == "_" and k not in KEPT_SPECIAL else k): v for k, v in body.items()}
    return body


def unsupported_member(doc: dict[str, Any]) -> str | None:
    """Why a document's ``_`` members make it one this database does not take, or None."""
    for k in doc:
        if k[:1] == "_" and k not in _WIRE_META and k not in KEPT_SPECIAL:
            return f"Bad special document member: {k}"
    return None


def body_from_wire(doc: dict[str, Any]) -> dict[str, Any]:
    """The body of a document from the wire: its members but the special ones (those of ``KEPT_SPECIAL`` are
    kept), ``$_x`` as ``_x``; a special member this database does not take is an InvalidDocument
    (``unsupported_member``'s reason). One pass over the members (a replicated batch checks every document)."""
    out: dict[str, Any] = {}
    for k, v in doc.items():
        c = k[:1]
        if c == "_":
            if k in KEPT_SPECIAL:
                out[k] = v
            elif k not in _WIRE_META:
                raise InvalidDocument(f"Bad special document member: {k}")
            continue
        if c == "$" and k[:2] == "$_":
            k = "_" + k[2:]
        out[k] = v
    return out


def revisions(state: DocState, rev: str) -> dict[str, Any]:
    chain = revtree.ancestry(state.tree, rev)
    return {"start": revtree.rev_gen(rev), "ids": [r.partition("-")[2] for r in chain]}


def doc_to_wire(state: DocState, rev: str, *, revs: bool = False, conflicts: bool = False,
                data: AttData | None = None, since: int = 0, follows: bool = False) -> dict[str, Any]:
    """The CouchDB document for leaf ``rev`` of ``state``. Its attachments are stubs, unless ``data`` is given:
    then those added after generation ``since`` (CouchDB's ``atts_since``) carry their bytes (``data(name,
    meta)``), or ``"follows": true`` with ``follows`` (their bytes come in the parts of a multipart body)."""
    doc: dict[str, Any] = {"_id": state.id, "_rev": rev}
    deleted = state.tree[rev][1]
    if deleted:
        doc["_deleted"] = True
    doc.update(body_to_wire(state.bodies[rev]))
    atts = state.atts
    if atts is not None and rev in atts:
        doc["_attachments"] = attachments_to_wire(atts[rev], data, since, follows)
    if revs:
        doc["_revisions"] = revisions(state, rev)
    if conflicts:
        c = state.conflicts()
        if c:
            doc["_conflicts"] = c
    return doc


# A document read for a push, serialized already (doc_json_to_wire), is {"_id": id, "_rev": rev, SERIALIZED: the
# whole document's JSON bytes}: the id and rev a replicator looks at, and the document itself, which a sender puts
# in its request as it is (for_request) and anything else parses (full). No JSON parser makes a bytes value, so
# no document from elsewhere passes for one; orjson refuses to serialize bytes, so one that reached a request
# unconverted would fail loudly; and a dict of strings and bytes is not tracked by the garbage collector (the
# documents of a batch in flight do not burden its oldest generation, which scans the whole heap).
SERIALIZED = "_mynosql_json"


def full(doc: dict[str, Any]) -> dict[str, Any]:
    """The document itself (a pre-serialized one parsed; any other as it is)."""
    data = doc.get(SERIALIZED)
    if type(data) is bytes:
        parsed: dict[str, Any] = orjson.loads(data)
        return parsed
    return doc


def for_request(doc: dict[str, Any]) -> Any:
    """What goes in a request body for ``doc``: a pre-serialized document's bytes as they are, else the dict."""
    data = doc.get(SERIALIZED)
    return orjson.Fragment(data) if type(data) is bytes else doc


def doc_json_to_wire(state: DocState, rev: str) -> dict[str, Any] | None:
    """``doc_to_wire(state, rev, revs=True)`` serialized without parsing the stored body (its bytes are spliced
    after the metadata; see SERIALIZED), or None when that is not possible: a revision with attachments, or a
    body that may have a top-level key starting with ``_`` (it travels as ``$_x``)."""
    body = state.bodies[rev]
    if (state.atts is not None and rev in state.atts) or b'"_' in body or b"\\u" in body or body[:1] != b"{":
        return None
    chain = revtree.ancestry(state.tree, rev)
    gen = revtree.rev_gen(rev)
    head = orjson.dumps({"_id": state.id, "_rev": rev, "_deleted": True} if state.tree[rev][1]
                        else {"_id": state.id, "_rev": rev})
    hist = orjson.dumps({"start": gen, "ids": [r.partition("-")[2] for r in chain]})
    tail = b"}" if body == b"{}" else b"," + body[1:]
    return {"_id": state.id, "_rev": rev,
            SERIALIZED: b"".join((head[:-1], b',"_revisions":', hist, tail))}


def attachments_to_wire(atts: att.Atts, data: AttData | None, since: int, follows: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, meta in atts.items():
        if (data is None and not follows) or meta["revpos"] <= since:
            out[name] = att.stub(meta)
        elif follows:
            out[name] = {"content_type": meta["content_type"], "revpos": meta["revpos"], "digest": meta["digest"],
                         "length": meta["length"], "follows": True}
        else:
            assert data is not None
            out[name] = {"content_type": meta["content_type"], "revpos": meta["revpos"], "digest": meta["digest"],
                         "data": base64.b64encode(data(name, meta)).decode("ascii")}
    return out


def needs_bytes(doc: dict[str, Any]) -> bool:
    """Whether a document read from elsewhere has attachments that are stubs (their bytes to be asked for)."""
    atts = doc.get("_attachments")
    return isinstance(atts, dict) and any(isinstance(a, dict) and a.get("stub") is True for a in atts.values())


class WireDoc:
    """A document received with ``new_edits=false``, checked and ready to merge."""

    __slots__ = ("atts", "blob", "deleted", "id", "path")

    def __init__(self, id: str, path: list[str], deleted: bool, blob: bytes,
                 atts: dict[str, att.AttIn] | None = None) -> None:
        self.id = id
        self.path = path  # leaf first, then ancestors, newest to oldest
        self.deleted = deleted
        self.blob = blob
        self.atts = atts  # its _attachments, checked (None: it has none)


def check_depth(value: Any, limit: int) -> None:
    """Raise InvalidDocument if ``value`` nests dicts and lists deeper than ``limit`` (iterative: no recursion)."""
    stack = [(value, 0)]
    while stack:
        v, d = stack.pop()
        if d > limit:
            raise InvalidDocument(f"document nests deeper than {limit} levels")
        if type(v) is dict:
            stack.extend((x, d + 1) for x in v.values() if type(x) is dict or type(x) is list)
        elif type(v) is list:
            stack.extend((x, d + 1) for x in v if type(x) is dict or type(x) is list)


def encode_checked(value: Any, max_depth: int) -> bytes:
    """``dumps_exact(value)`` of a value a client sent, refused (InvalidDocument) if it nests deeper than
    ``max_depth`` levels or cannot be encoded. The walk runs only when the JSON has more brackets than that."""
    try:
        data = dumps_exact(value)
    except TypeError as exc:  # orjson refuses what nests past 255 levels (and what JSON cannot hold)
        raise InvalidDocument(f"document nests deeper than {max_depth} levels, or cannot be encoded") from exc
    if data.count(b"{") + data.count(b"[") > max_depth:  # fewer brackets than the limit: cannot nest deeper
        check_depth(value, max_depth)
    return data


def doc_from_wire(doc: Any, *, validate_id: Any, max_bytes: int, max_revs: int, max_depth: int = 100,
                  max_history: int = 1000, max_attachment_bytes: int | None = None) -> WireDoc:
    """Check a CouchDB document sent for replication; raise InvalidDocument with CouchDB's wording."""
    if not isinstance(doc, dict):
        raise InvalidDocument("document must be a JSON object")
    id = validate_id(doc.get("_id"))
    rev = doc.get("_rev")
    if not isinstance(rev, str):
        raise InvalidDocument("missing _rev (replicated documents need one)")
    try:
        gen, _ = revtree.parse_rev(rev)
    except ValueError as exc:
        raise InvalidDocument(f"invalid rev format: {rev[:80]!r}") from exc
    deleted = doc.get("_deleted", False)
    if not isinstance(deleted, bool):
        raise InvalidDocument("_deleted must be a boolean")
    path = [rev]
    hist = doc.get("_revisions")
    if hist is not None:
        if not isinstance(hist, dict) or type(hist.get("start")) is not int or not isinstance(hist.get("ids"), list):
            raise InvalidDocument("_revisions must be {start: int, ids: [str]}")
        ids = hist["ids"]
        if len(ids) > max_history:
            raise InvalidDocument(f"_revisions lists {len(ids)} revisions, over the limit of {max_history}")
        if not ids or not isinstance(ids[0], str):
            raise InvalidDocument("_revisions must list at least the revision itself")
        # Where _revisions and _rev disagree, _revisions names the revision (CouchDB's rule: PouchDB sends
        # {"_rev": "2-a", "_revisions": {"start": 1, "ids": ["a"]}} for a hash repeated along a path).
        gen = hist["start"]
        if len(ids) > max_revs:
            ids = ids[:max_revs]
        if gen - len(ids) < 0:
            raise InvalidDocument("_revisions is longer than the revision's generation")
        path = []
        for i, x in enumerate(ids):
            r = f"{gen - i}-{x}" if isinstance(x, str) else ""
            if not revtree.REV_RE.match(r):
                raise InvalidDocument("invalid revision id in _revisions")
            path.append(r)
    body = body_from_wire(doc)
    blob = encode_checked(body, max_depth)
    if len(blob) > max_bytes:
        raise InvalidDocument(f"document is {len(blob)} bytes, over the limit of {max_bytes}")
    if blob.find(b'"$') >= 0:
        decode_body(blob)  # the tagged values must decode
    atts = doc.get("_attachments")
    return WireDoc(id, path, deleted, blob,
                   None if atts is None else att.parse_attachments(atts, max_bytes=max_attachment_bytes))


def decode_body(data: bytes) -> dict[str, Any]:
    """``loads_body`` of a body that came over the wire: a malformed tagged value is an InvalidDocument."""
    try:
        return loads_body(data)
    except (ValueError, TypeError, KeyError, AttributeError, ArithmeticError, RecursionError) as exc:
        raise InvalidDocument(f"document holds a malformed tagged value: {str(exc)[:200]}") from exc


def changes_row(state: DocState) -> dict[str, Any]:
    """One ``_changes?style=all_docs`` row: the winner first, then the other leaves."""
    leaves = revtree.sorted_leaves(state.tree)
    row: dict[str, Any] = {"seq": state.seq, "id": state.id, "changes": [{"rev": r} for r in leaves]}
    if state.tree[leaves[0]][1]:
        row["deleted"] = True
    return row
