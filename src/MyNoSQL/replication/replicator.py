"""One replication pass, CouchDB's protocol step by step (see docs/replication.md).

1. Find the checkpoint: ``_local/<replication id>`` on both sides; resume from ``source_last_seq`` when both
   agree (else from a common session in their histories, else from the start). A source this client may only
   read (a reader's pull: it refuses the checkpoint with 401 or 403) keeps none: the target's checkpoint, marked
   ``source_readonly``, is then the only one, as with PouchDB's checkpointer.
2. Read the source's changes feed since the checkpoint, a batch at a time (``style=all_docs``: every leaf).
3. Ask the target which of those revisions it lacks (``_revs_diff``): only those travel.
4. Fetch them from the source with their histories (``_bulk_get?revs=true``), write them to the target
   (``_bulk_docs`` with ``new_edits=false``: revisions are kept, never re-made). Attachments the target has (in
   a leaf that ``_revs_diff`` names as a ``possible_ancestor``: CouchDB's ``atts_since``) travel as stubs; the
   bytes of the others are read from the source (``GET /{db}/{doc}/{name}``) and go inline (base64) for a
   small document, else in a ``multipart/related`` ``PUT`` of the document, streamed from source to target.
5. Record the checkpoint on both sides after each batch. A pass is idempotent: re-running it after a failure
   at any step moves only what is still missing.

A request the other side refuses as too large (413: over its batch, body, JSON-values or answer-bytes limit) is
sent again as two halves, and so on: a batch never stalls a replication because of its size.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from ..errors import RemoteError
from ..records import attachments as att
from .endpoints import Endpoint, replication_id

T = TypeVar("T")
R = TypeVar("R")
HEAVY_AT_ONCE = 4  # documents with attachment bytes written to the target at the same time


@dataclasses.dataclass
class ReplicationResult:
    docs_read: int = 0
    docs_written: int = 0
    missing_checked: int = 0
    errors: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    start_seq: Any = 0
    last_seq: Any = 0
    batches: int = 0
    seconds: float = 0.0


def _since(src: dict[str, Any] | None, tgt: dict[str, Any] | None) -> Any:
    """Where to resume: only a position both checkpoints confirm. Either side may have been written by someone
    else (a ``_local`` document is writable by a replicating client), so when the two disagree for the same
    session, the earlier position wins (replicating again what one side claims is done costs a ``_revs_diff``;
    skipping what it falsely claims would lose records for good); else the newest session both histories share."""
    if not src or not tgt:
        return 0
    if src.get("session_id") == tgt.get("session_id") and src.get("source_last_seq") is not None:
        a, b = src["source_last_seq"], tgt.get("source_last_seq")
        if a == b:
            return a
        na, nb = seq_number(a), seq_number(b)
        if na is not None and nb is not None:
            return a if na <= nb else b
    tgt_sessions = {h.get("session_id"): h for h in tgt.get("history", []) if isinstance(h, dict)}
    for h in src.get("history", []):
        if isinstance(h, dict) and h.get("session_id") in tgt_sessions:
            mine, theirs = h.get("recorded_seq", 0), tgt_sessions[h.get("session_id")].get("recorded_seq", 0)
            if mine == theirs:
                return mine
            na, nb = seq_number(mine), seq_number(theirs)
            if na is not None and nb is not None:
                return mine if na <= nb else theirs
    return 0


@dataclasses.dataclass
class Resume:
    """What a replicator that runs again and again (a peer's push) remembers between passes, so an idle or
    one-change pass does not re-read checkpoints it wrote itself."""

    since: Any = None
    session: str = dataclasses.field(default_factory=lambda: uuid.uuid4().hex)
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    source_readonly: bool = False


def seq_number(seq: Any) -> int | None:
    """The integer part of a change sequence: an int as such, CouchDB's ``"123-g1AAA..."`` as 123 (its leading
    number), anything else None."""
    if isinstance(seq, bool):
        return None
    if isinstance(seq, int):
        return seq
    if isinstance(seq, str):
        m = re.match(r"\d+", seq)
        return int(m.group()) if m else None
    return None


async def changes_to_come(source: Endpoint, since: Any) -> int | None:
    """An upper bound of the changes feed rows after ``since``: the source's ``update_seq`` minus ``since`` (a
    sequence counts every write, the feed has one row per record: fewer when a record changed more than once).
    None when a sequence is not a number (or has no integer prefix)."""
    try:
        info = await source.info()
    except RemoteError as exc:
        if not exc.status:
            raise  # unreachable: so is its feed
        return None  # an HTTP error: the feed may still answer (and fail for itself if not)
    last, start = seq_number(info.get("update_seq") if isinstance(info, dict) else None), seq_number(since)
    return None if last is None or start is None else max(0, last - start)


async def halving(call: Callable[[list[T]], Awaitable[R]], items: list[T]) -> list[R]:
    """``[call(items)]``; when the other side refuses that as too large (413), ``call`` of each half in turn, and
    so on down to single items (a single item it refuses is an error)."""
    try:
        return [await call(items)]
    except RemoteError as exc:
        if exc.status != 413 or len(items) < 2:
            raise
    half = len(items) // 2
    return [*await halving(call, items[:half]), *await halving(call, items[half:])]


def _pairs(query: dict[str, list[str]]) -> list[tuple[str, str]]:
    return [(id, rev) for id, revs in query.items() for rev in revs]


def _grouped(pairs: Sequence[tuple[str, str]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for id, rev in pairs:
        out.setdefault(id, []).append(rev)
    return out


async def _revs_diff(target: Endpoint, query: dict[str, list[str]],
                     ancestors: dict[str, list[str]] | None = None) -> dict[str, list[str]]:
    """``target.revs_diff``, halved while it is refused as too large (``ancestors`` filled as it says)."""
    out: dict[str, list[str]] = {}
    for part in await halving(lambda pairs: target.revs_diff(_grouped(pairs), ancestors), _pairs(query)):
        for id, revs in part.items():
            out.setdefault(id, []).extend(revs)
    return out


async def _bulk_get(source: Endpoint, wants: dict[str, list[str]]) -> list[dict[str, Any]]:
    parts = await halving(lambda pairs: source.bulk_get(_grouped(pairs)), _pairs(wants))
    return [doc for part in parts for doc in part]


async def _bulk_docs(target: Endpoint, docs: list[dict[str, Any]], checkpoint: tuple[str, dict[str, Any]] | None
                     ) -> tuple[list[dict[str, Any]], int, bool]:
    """``target.bulk_docs``, halved while it is refused as too large; the checkpoint rides with the last part."""
    try:
        return await target.bulk_docs(docs, checkpoint=checkpoint)
    except RemoteError as exc:
        if exc.status != 413 or len(docs) < 2:
            raise
    half = len(docs) // 2
    errors, written, _ = await _bulk_docs(target, docs[:half], None)
    more, written_more, ck_written = await _bulk_docs(target, docs[half:], checkpoint)
    return errors + more, written + written_more, ck_written


async def _source_writable(source: Endpoint, rep_id: str, session: str) -> bool:
    """Whether the source takes a checkpoint (a fresh one, from the start) or refuses it (401, 403)."""
    try:
        await source.put_local(rep_id, {"session_id": session, "source_last_seq": 0, "history": [],
                                        "replication_id_version": 1})
    except RemoteError as exc:
        if exc.status in (401, 403):
            return False
        raise
    return True


SMALL_BATCH = 50  # below this many revisions, a MyNoSQL target gets the documents without a _revs_diff first


class _Blind:
    """Whether a MyNoSQL target gets the next batch without a ``_revs_diff`` first: while it lacked every
    revision of the last batch it was asked about (or said it was never written to: ``empty``) and has written
    every document sent since (a first replication into an empty mirror). The first batch the target already
    holds a revision of ends it; with pipelining, at most the batch read meanwhile travels in vain."""

    def __init__(self, empty: bool) -> None:
        self.on = empty

    def asked(self, n_revs: int, missing: dict[str, list[str]]) -> None:
        self.on = n_revs > SMALL_BATCH and sum(map(len, missing.values())) == n_revs

    def wrote(self, sent: int, written: int, errors: int) -> None:
        if written < sent - errors:
            self.on = False


def _revision_ids(doc: dict[str, Any]) -> list[str]:
    """The revision of a document read with ``revs=true`` and its ancestors, newest first."""
    hist = doc.get("_revisions")
    if isinstance(hist, dict) and type(hist.get("start")) is int and isinstance(hist.get("ids"), list):
        return [f"{hist['start'] - i}-{h}" for i, h in enumerate(hist["ids"]) if isinstance(h, str)]
    rev = doc.get("_rev")
    return [rev] if isinstance(rev, str) else []


def _revpos(a: dict[str, Any]) -> int:
    r = a.get("revpos")
    return r if type(r) is int else 1 << 30


def bytes_to_send(doc: dict[str, Any], ancestors: list[str] | None) -> list[str]:
    """The attachments of ``doc`` (stubs as read from a source) whose bytes the target lacks: those added after
    the newest of its revisions the target has (``ancestors``: CouchDB's ``atts_since``)."""
    atts = doc.get("_attachments")
    if not isinstance(atts, dict) or not atts:
        return []
    since = att.since_generation(_revision_ids(doc), ancestors)
    return [n for n, a in atts.items() if isinstance(a, dict) and a.get("stub") is True and _revpos(a) > since]


def _has_attachments(doc: dict[str, Any]) -> bool:
    """Whether ``doc`` has attachments: the target may hold its revision already (none of their bytes need travel
    again) or an ancestor (those added before it need not)."""
    atts = doc.get("_attachments")
    return isinstance(atts, dict) and bool(atts) and isinstance(doc.get("_rev"), str)


def _unpushable(id: str, names: list[str]) -> RemoteError:
    """The target lacks the bytes of attachments this source has only as stubs: the revision cannot go yet (the
    replication fails and is retried; never skipped past, which would lose it)."""
    which = ", ".join(map(repr, names))[:200]
    return RemoteError(f"record {id!r}: the target lacks the bytes of attachment(s) {which} and neither this "
                       "database nor a mirror has them", status=412, kind="missing_stub")


async def _send_attachments(source: Endpoint, target: Endpoint, docs: list[tuple[dict[str, Any], list[str]]],
                            result: ReplicationResult) -> list[dict[str, Any]]:
    """Write the documents that need attachment bytes: small ones get them inline and are returned (for the
    batch's ``_bulk_docs``), the others go one by one, streamed (a few at a time). A target that lacks a stub's
    bytes after all (its leaf changed meanwhile: ``missing_stub``) gets every byte."""
    inline: list[dict[str, Any]] = []
    gate = asyncio.Semaphore(HEAVY_AT_ONCE)

    async def one(read: dict[str, Any], names: list[str], retry: bool = True) -> None:
        """``read``: the document as the source gave it (stubs); ``names``: the attachments whose bytes go."""
        stubs: dict[str, Any] = read["_attachments"]
        atts = dict(stubs)
        doc = {**read, "_attachments": atts}
        id, rev = doc["_id"], doc["_rev"]
        lacking = getattr(source, "bytes_lacking", None)  # a local Peer may hold some attachments as stubs only
        gone: list[str] = await lacking(id, rev, names) if lacking is not None else []
        if gone:  # they travel as stubs: a MyNoSQL mirror finds the bytes by digest if it still has them
            names = [n for n in names if n not in gone]
        size = sum(a.get("length") or 0 for n, a in atts.items() if n in names)
        unknown = any(type(atts[n].get("length")) is not int for n in names)
        if size <= target.inline_bytes or unknown:
            for n in names:
                data = b"".join([c async for c in source.attachment_chunks(id, rev, n)])
                a = atts[n]
                atts[n] = {"content_type": a.get("content_type", "application/octet-stream"),
                           "revpos": a.get("revpos"), "digest": a.get("digest") or att.digest_of(data),
                           "data": base64.b64encode(data).decode("ascii")}
            inline.append(doc)
            return
        for n in names:
            a = atts[n]
            atts[n] = {"content_type": a.get("content_type", "application/octet-stream"), "revpos": a.get("revpos"),
                       "digest": a.get("digest"), "length": a["length"], "follows": True}
        try:
            async with gate:
                written = await target.put_with_attachments(doc, lambda name: source.attachment_chunks(id, rev, name))
            result.docs_written += written  # not `+= await`: that reads the count before the wait
        except (RemoteError, att.MissingStub) as exc:
            status = exc.status if isinstance(exc, RemoteError) else 412
            if status == 412 and retry:  # missing_stub: the target lacks bytes it had: send them all
                await one(read, [n for n, a in stubs.items() if isinstance(a, dict) and a.get("stub") is True],
                          retry=False)
            elif status == 412 and gone:
                raise _unpushable(id, gone) from exc
            elif isinstance(exc, RemoteError) and 400 <= status < 500 and status not in (401, 403, 407, 408, 429):
                result.errors.append({"id": id, "error": f"HTTP {status}", "reason": str(exc)[:300]})
            else:
                raise

    await asyncio.gather(*(one(d, names) for d, names in docs))
    return inline


async def replicate(source: Endpoint, target: Endpoint, *, batch_size: int = 1000, extra_id: str = "",
                    max_batches: int | None = None, wait: float | None = None,
                    resume: Resume | None = None,
                    progress: Callable[[int, int | None], None] | None = None) -> ReplicationResult:
    """Move every revision the target lacks from ``source`` to ``target``. Returns what was done.

    ``wait``: if the first read of the changes feed finds nothing, wait up to this many seconds for a change
    (longpoll) before returning. ``resume``: state kept by the caller between passes (see :class:`Resume`).
    ``progress(changes processed, total)``: called after each batch is written and checkpointed. ``total`` is an
    upper bound read once from the source (its ``update_seq`` minus the start: sequences count every write, the
    feed one row per record), never below the changes processed; None when the sequences are not numbers. Once
    the feed is read to its end, ``total`` is the number of changes processed.

    Extensions with a MyNoSQL mirror as target (plain protocol with anything else): a small batch skips
    ``_revs_diff`` (the mirror ignores revisions it has) except for its documents with attachments (their bytes
    must not travel to a target that holds them), and the checkpoint rides in the ``_bulk_docs``
    request: one round trip for a change. A large batch skips it too while the target lacked everything of the
    last batch it was asked about and wrote everything sent since (see :class:`_Blind`).
    """
    t0 = time.monotonic()
    result = ReplicationResult()
    rep_id = replication_id(source, target, extra_id)
    if resume is not None and resume.since is not None:
        since, session, history = resume.since, resume.session, resume.history
        readonly = resume.source_readonly
    else:
        src_ck = await source.get_local(rep_id)
        tgt_ck = await target.get_local(rep_id)
        session = uuid.uuid4().hex
        # The target's checkpoint alone counts only when it says the source kept none and the source still
        # refuses one: a checkpoint anyone else wrote on the target is never trusted on its own.
        readonly = src_ck is None and bool(tgt_ck and tgt_ck.get("source_readonly")) \
            and not await _source_writable(source, rep_id, session)
        if readonly:
            assert tgt_ck is not None
            since = tgt_ck.get("source_last_seq", 0)
        else:
            since = _since(src_ck, tgt_ck)
        history = list(((tgt_ck if readonly else src_ck) or {}).get("history", []))[:20]
    result.start_seq = result.last_seq = since
    extended = getattr(target, "mynosql", False)
    blind = _Blind(extended and getattr(target, "empty", False) is True)
    total = await changes_to_come(source, since) if progress is not None else None

    # (rows read, last seq, documents, ancestors): the rows themselves are not kept (a batch's objects that
    # live on while the one before it is written burden the collector's oldest generation)
    Batch = tuple[int, Any, list[dict[str, Any]], dict[str, list[str]]]

    async def fetch(after: Any, wait_for: float | None) -> Batch:
        """Steps 3-5 for one batch: the changes after ``after``, what the target lacks, those documents, and the
        revisions the target has of them (whose attachments need not travel)."""
        rows, last = await source.changes(after, batch_size, timeout=wait_for)
        ancestors: dict[str, list[str]] = {}
        n_rows = len(rows)
        if not rows:
            return 0, last, [], ancestors
        query = {r["id"]: [c["rev"] for c in r.get("changes", [])] for r in rows if "id" in r}
        del rows
        n_revs = sum(map(len, query.values()))
        result.missing_checked += n_revs
        small = extended and (n_revs <= SMALL_BATCH or blind.on)
        missing = query if small or not query else await _revs_diff(target, query, ancestors)
        if not small and extended:
            blind.asked(n_revs, missing)
        docs = await _bulk_get(source, missing) if missing else []
        if small:  # no _revs_diff asked: ask it now for documents with attachments (their bytes must not travel
            # to a target that holds them: a source without a checkpoint with it, a failover, a one-shot pass)
            # every revision of a record is asked about: a record's leaves come as several documents
            heavy: dict[str, list[str]] = {}
            for d in docs:
                if _has_attachments(d):
                    heavy.setdefault(d["_id"], []).append(d["_rev"])
            if heavy:
                lacking = await _revs_diff(target, heavy, ancestors)
                docs = [d for d in docs
                        if d["_rev"] not in heavy.get(d["_id"], ()) or d["_rev"] in lacking.get(d["_id"], ())]
        return n_rows, last, docs, ancestors

    batch = await fetch(since, wait)
    while batch[0] and (max_batches is None or result.batches < max_batches):
        n_rows, last_seq, docs, ancestors = batch
        result.docs_read += n_rows
        # pipelining: the next batch is read while this one is written (checkpoints stay in order)
        more = n_rows >= batch_size and (max_batches is None or result.batches + 1 < max_batches)
        prefetch = asyncio.ensure_future(fetch(last_seq, None)) if more else None
        try:
            since = last_seq
            entry = {"session_id": session, "recorded_seq": since}
            ck = {"session_id": session, "source_last_seq": since, "history": [entry, *history][:20],
                  "replication_id_version": 1}
            if readonly:
                ck["source_readonly"] = True
            ck_written = False
            heavy = [(d, names) for d in docs if (names := bytes_to_send(d, ancestors.get(d.get("_id", ""))))]
            if heavy:
                sent = {id(d) for d, _ in heavy}
                docs = [d for d in docs if id(d) not in sent]
                docs += await _send_attachments(source, target, heavy, result)
            if docs:
                # a document whose stubs the target turns out to lack is sent again with its bytes: the
                # checkpoint must not ride ahead of it
                stubs = any("_attachments" in d for d in docs)
                errors, written, ck_written = await _bulk_docs(target, docs, None if stubs else (rep_id, ck))
                result.docs_written += written
                blind.wrote(len(docs), written, len(errors))
                retry = {e.get("id") for e in errors if e.get("error") == "missing_stub"}
                result.errors.extend(e for e in errors if e.get("id") not in retry)
                again = [(d, [n for n, a in d["_attachments"].items() if isinstance(a, dict) and a.get("stub")])
                         for d in docs if d.get("_id") in retry]
                if again:
                    extra = await _send_attachments(source, target, again, result)
                    if extra:
                        errs, written, _ = await _bulk_docs(target, extra, None)
                        missing = [e for e in errs if e.get("error") == "missing_stub"]
                        if missing:  # every byte this source has went: the rest it has only as stubs
                            raise _unpushable(str(missing[0].get("id")), ["held as stubs only"])
                        result.errors.extend(errs)
                        result.docs_written += written
            result.last_seq = since
            result.batches += 1
            if not ck_written:
                await target.put_local(rep_id, ck)
            if not readonly:
                try:
                    await source.put_local(rep_id, ck)
                except RemoteError as exc:
                    if exc.status not in (401, 403):
                        raise
                    readonly = True  # a source we may only read: the target's checkpoint says where we stand
                    await target.put_local(rep_id, {**ck, "source_readonly": True})
            if resume is not None:
                resume.since, resume.session, resume.history = since, session, ck["history"]
                resume.source_readonly = readonly
            if progress is not None:
                done = result.docs_read
                if n_rows < batch_size:  # a short batch: the end of the feed, the count is final
                    total = done
                progress(done, None if total is None else max(total, done))
        except BaseException:
            if prefetch is not None:
                prefetch.cancel()
                with contextlib.suppress(BaseException):
                    await prefetch
            raise
        if prefetch is None:
            break
        batch = await prefetch
    if progress is not None and not batch[0] and result.batches and total != result.docs_read:
        progress(result.docs_read, result.docs_read)  # the feed ended right after a full batch
    result.seconds = time.monotonic() - t0
    return result


__all__ = ["RemoteError", "ReplicationResult", "replicate"]
