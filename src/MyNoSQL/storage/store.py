"""The store: memtables over a write-ahead log, packed by a background compactor into LZMA shard blocks.

Write path (``put``, under the store's write lock): read the current state, let the caller derive the new one,
append it to the write-ahead log, put it in the *active* memtable and the record cache. Nothing else: the
index and the shards are not touched by a save.

Compactor (one thread): when the active memtable holds ``flush_docs`` records or ``flush_bytes`` bytes of
them, or its oldest is ``flush_interval`` old, it freezes it, rotates the log, packs the frozen states in change
order into blocks, compresses them with the options' codec (LZMA2 by default; zlib and LZMA release the GIL, so
savers keep going; with ``codec="lzma"``, while a whole flush's worth of newer records waits already, a block is
compressed with DEFLATE instead, so that a saver that goes on is not held to LZMA's pace),
appends them to the newest shard (one write) and fsyncs it, commits the index in one transaction, and only then
deletes the rotated log segments and drops the frozen memtable. A crash at any point leaves either the log
segments or the committed blocks, never neither. Shards whose records are mostly dead are garbage-collected:
their live records are re-appended (with a new change sequence, like any other write; flushed as a save would
be) and the file is deleted once nothing in it is live; with ``codec="lzma"``, once no save has come for
``REPACK_IDLE`` seconds, a shard that is mostly DEFLATE blocks is moved the same way, so that its records end up
in LZMA blocks. Back-pressure: a saver waits while the two memtables
together hold ``BACKLOG`` times either amount.

Read path: active memtable, frozen memtable, record cache, then index -> block (decompressed-block cache) ->
record. Disk reads are cached only if no flush completed meanwhile, so a stale state can never be cached.

Purge (``Database.purge``): a record whose every leaf is purged gets a *purge marker*
(``DocState.purge_marker``) written like any state (log, memtable: durable as a save); reads and the changes
feed treat it as no record at all, and the flush that packs it writes no block for it but deletes the record's
index row (its old block's record is dead from then on: garbage collection and ``compact`` drop it with the
shard). So a crash, a reopen, a flush, garbage collection or a rebuild of anything from the index cannot bring
it back.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import random
import threading
import time
from array import array
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from ..errors import CorruptionError, MyNoSQLError, StorageError
from ..options import Options
from ..records.revtree import DocState, leaves, peek_winner
from .blobs import BlobStore
from .bloom import Bloom
from .cache import BlockCache, RecordCache
from .index import Index, id_hash
from .qindex import IndexDef, rows_for
from .shards import CODEC_DEFLATE, CODEC_LZMA, DEFLATE_FAST_LEVEL, DEFLATE_LEVEL, ShardFiles, pack_block, shard_name
from .wal import FLUSHED, HEAD, OLDEST, SEQ, SHAREABLE, Control, SyncStats, WriteAheadLog

Progress = Callable[[int, int | None], None]  # progress(done, total): total None when unknown

log = logging.getLogger("MyNoSQL")

Mutation = Callable[[DocState | None], DocState | None]
Listener = Callable[[DocState, DocState | None], None]  # (new state, previous state), after the write

# Savers wait while the records not yet in shards (both memtables) reach this many times flush_docs (or
# flush_bytes): RAM stays bounded, and a burst of writes is taken at the saver's pace up to there while the
# compactor packs what came before.
BACKLOG = 4
# Past this many times flush_docs (or flush_bytes), each save first gives the compactor up to SLOWDOWN seconds:
# savers slow down before they would stop, so a burst the compactor nearly keeps up with costs each save a
# little instead of one save a whole flush (bench/processes.py: the owner's save max was 125-175 ms, a wait at
# BACKLOG for the flush in progress, once near the end of every run).
SOFT_BACKLOG = 3
SLOWDOWN = 0.001
# Seconds without a save before the compactor re-packs, with the normal codec, a shard whose records are mostly
# in fast (DEFLATE) blocks written while it was behind (``Store._repack``). Only in a process that has saved
# something: one that only reads never rewrites the files under its reads.
REPACK_IDLE = 5.0
INGEST_BULK = 1000  # states other processes append in a second that make a bulk load (see _ingest)
INGEST_SLICE = 64  # states the follower thread reads into the memtable per hold of the write lock
FOLLOW_IDLE = 0.005  # the follower thread reads the queue in only this long after this process's last save
SAVE_SLICE = 32  # of the queued states, at most this many are read into the memtable by each save (see _put_shared)
# A store that looks up many record locations loads every (id hash, location) row of the index into two sorted
# arrays (16 bytes a record) and looks up there (~1 us) instead of asking SQLite (~8-13 us a query from Python):
# once it has made 1/LOCMAP_AFTER as many lookups as there are records (then loading, ~0.2 us a row, has cost
# at most what those lookups cost), up to LOCMAP_MAX_ROWS records. Any flush makes the arrays stale: they are
# dropped, and the count starts again.
LOCMAP_AFTER = 32
LOCMAP_MAX_ROWS = 1 << 21
# The end of a flush updates the packed states RELEASE_SLICE at a time under the write lock, pausing
# RELEASE_PAUSE seconds between two slices so that savers waiting for the lock get it (Python's locks are not
# fair: without a pause the compactor would take it again first).
RELEASE_SLICE = 512
RELEASE_PAUSE = 0.0001


def _frame_key(data: bytes, start: int) -> bytes:
    """The opening of a state's bytes (``data[start:]``: ``["<id>",``) up to the first ``",`` in it: the same for two
    states of one record (a state's bytes open with its id), rarely for two records (only ids that share what
    comes before a ``",`` inside one of them, which JSON writes as an escaped quote and a comma)."""
    return data[start : data.find(b'",', start + 2) + 2]


class _Frames(deque):  # type: ignore[type-arg]
    """The other processes' frames read from the shared log and not in the memtable yet, in log order (among them
    this process's own saves whose listeners wait for them: tuples), with a count of their records' keys
    (:func:`_frame_key`): a save asks whether a frame of its record is queued in one lookup. A scan of the queue
    per save (hundreds of frames when the owner's follower fell behind) took 15% of the owner's time
    (bench/processes.py, py-spy)."""

    def __init__(self) -> None:
        super().__init__()
        self.keys: dict[bytes, int] = {}

    def extend(self, frames: list[bytes]) -> None:  # type: ignore[override]
        keys = self.keys
        for p in frames:
            k = _frame_key(p, 4)
            keys[k] = keys.get(k, 0) + 1
        super().extend(frames)

    def popleft(self) -> bytes | tuple[DocState, DocState | None]:
        item = super().popleft()
        if type(item) is bytes:
            keys = self.keys
            k = _frame_key(item, 4)
            n = keys[k] - 1
            if n:
                keys[k] = n
            else:
                del keys[k]
        return item  # type: ignore[no-any-return]

    def may_hold(self, mine: bytes) -> bool:
        """Whether a queued frame may be of the record whose bytes open with ``mine`` (``["<id>",``)."""
        return _frame_key(mine, 0) in self.keys


class _Moved(Exception):
    """A block vanished between the index lookup and the read (garbage collection moved its records)."""


@dataclass
class FlushStats:
    flushes: int = 0
    records: int = 0
    blocks: int = 0
    seconds: float = 0.0
    gc_shards: int = 0
    last_error: str | None = None
    errors: int = 0
    fsync_total: float = 0.0  # seconds appending blocks to shards and fsyncing them
    fsyncs: int = 0  # shard fsyncs (one per shard a flush appended to)
    wal: SyncStats = field(default_factory=SyncStats)  # the write-ahead log's syncs (durability="power")
    raw_bytes: int = 0  # records packed since open, before compression
    packed_bytes: int = 0  # the blocks they became
    fast_blocks: int = 0  # blocks packed with the fast codec (DEFLATE) because the compactor was behind
    slowed: int = 0  # saves that gave the compactor a moment first (SOFT_BACKLOG)
    held: int = 0  # saves that waited for the compactor (back-pressure, BACKLOG)
    held_seconds: float = 0.0  # how long they waited in all
    held_max: float = 0.0  # the longest wait


class Store:
    def __init__(self, directory: Path, options: Options) -> None:
        self.directory = directory
        self.opts = options
        self.lock = threading.RLock()
        self._flush_lock = threading.Lock()
        self._active: dict[str, DocState] = {}
        self._frozen: dict[str, DocState] = {}
        self._active_delta = 0
        self._active_bytes = 0  # encoded size of the active memtable's states
        self._frozen_delta = 0
        self._frozen_bytes = 0
        self._first_pending = 0.0
        self._flush_gen = 0
        self._gc_pending: set[int] = set()
        self._behind = False  # the last flush ended behind: savers were held back, a flush's worth waits already
        self._held = False  # a saver waited for space (back-pressure) since the last flush ended
        self._bulk_at = -1e9  # time.monotonic() of the last bulk load's batch (put_many(fast=True))
        self._fast: dict[int, int] | None = None  # shard -> records in its fast blocks (None: not counted yet)
        self._puts = 0  # saves since open (the compactor's idle test)
        self._repacked_at = -1  # self._puts when _repack last found nothing to do
        self._locmap: tuple[int, array[int], array[int]] | None = None  # (flush gen, hashes, locations)
        self._lookups = 0  # index lookups since the location arrays were last loaded or dropped
        self._bloom: Bloom | None = None  # built by the compactor thread once the database is written to
        self._want_bloom = False
        self.stats = FlushStats()
        self._sidx_fields: tuple[str, ...] = ()
        self.qdefs: tuple[IndexDef, ...] = ()  # the query indexes each flush keeps current (qindex.py)
        self._listeners: list[Listener] = []
        self.cache: RecordCache[str, DocState] = RecordCache(options.cache_docs)
        self.blocks = BlockCache(options.block_cache_bytes)
        self._space = threading.Condition(self.lock)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._power = options.durability == "power"
        self._lzma = options.codec == "lzma"
        # One entry per saver between the start of put and its frame being durable (power mode): list.append and
        # list.pop are atomic, so counting needs no lock.
        self._savers: list[None] = []
        # Sharing with other processes (share()): the log's control page while they may append to the log,
        # the hook that notes each write in their ring, the frames of theirs read from the log and not in the
        # memtable yet (in log order; among them, this process's own saves whose listeners wait for them: see
        # _put_shared), and the states they appended that are in the memtable and whose listeners have not run yet.
        self._shared: Control | None = None
        self._note: Callable[[str], None] | None = None
        self._queued = _Frames()
        self._ingested: list[tuple[DocState, DocState | None]] = []
        self._dispatching = threading.Lock()  # held by the thread running their listeners (see _dispatch)
        self._put_at = 0.0  # when this process's last save began (while shared)
        self._follower: threading.Thread | None = None
        self._ingest_since, self._ingest_count = 0.0, 0  # states read from others in the current second

        self.index = Index(directory / "index.sqlite")
        self.blobs = BlobStore(directory / "attachments")  # attachment bytes (nothing on disk before the first)
        self._blob_suspects: list[str] = []  # blobs that may be orphans of a crash (see BlobStore.recover)
        try:
            self.shards = ShardFiles(directory, max_bytes=options.shard_max_bytes)
            self.shards.open(self.index.shard_sizes())
            self.flushed_seq = int(self.index.meta("flushed_seq") or 0)
            self._next_bno = int(self.index.meta("next_bno") or 1)
            self._flushed_live = int(self.index.meta("live_count") or 0)
            rows, self.x_rows = self.index.count_rows()
            self.record_count = int(rows) + int(self.x_rows)  # every id with a state, deleted ones too
            self.seq = self.flushed_seq
            self.live_count = self._flushed_live
            if not options.exclusive and SHAREABLE:  # others that appended to a dead owner's log stop first
                ctl = Control(directory)
                try:
                    ctl.clear_epoch()
                finally:
                    ctl.close()
                Bloom.remove(directory)  # a dead owner's filter knows nothing of the flushes to come
            self.wal = WriteAheadLog(directory, power_safe=options.durability == "power", stats=self.stats.wal)
            old_segments = self.wal.segments()
            for payload in self.wal.recover():
                state = DocState.from_bytes(payload)
                if state.seq > self.flushed_seq:
                    state.raw = bytes(payload)
                    prev = self._get_raw(state.id)
                    self._install(state, prev)
                    self.seq = max(self.seq, state.seq)
            if not self._active and old_segments:
                self.wal.remove_through(old_segments[-1])  # everything in them is in committed blocks
            # what a crash left between a blob and its record: deleted by the compactor thread if no record
            # refers to them (a scan of every record; chaos seed 95021: a mirror lost the bytes of a record that
            # re-used a blob whose journal line named only a record that no longer had it)
            self._blob_suspects = self.blobs.recover(self._blob_referenced)
        except BaseException:
            self.shards.close()
            self.index.close()
            raise
        self._thread = threading.Thread(target=self._compactor, name=f"MyNoSQL-compactor-{directory.name}",
                                        daemon=True)
        self._thread.start()

    # -- reads ------------------------------------------------------------------------------------------------

    def get_state(self, id: str) -> DocState | None:
        """The newest state of record ``id``, or None (never held, or purged)."""
        ctl = self._shared
        if ctl is not None and (ctl.get(HEAD) != self.wal.end or self._queued):
            self.catch_up()
        s = self._active.get(id)
        if s is not None:
            return None if s.purged else s
        s = self._frozen.get(id)
        if s is not None:
            return None if s.purged else s
        s = self.cache.get(id)
        if s is not None:
            return s
        return self._get_disk(id)

    def _get_raw(self, id: str) -> DocState | None:
        """``get_state``, purge markers included (what a write replaces: the marker knows the disk location)."""
        s = self._active.get(id)
        if s is not None:
            return s
        s = self._frozen.get(id)
        if s is not None:
            return s
        s = self.cache.get(id)
        if s is not None:
            return s
        return self._get_disk(id)

    def _get_disk(self, id: str) -> DocState | None:
        gen = self._flush_gen
        s = self._read_disk(id)
        if s is not None:
            with self.lock:
                if gen == self._flush_gen and id not in self._active and id not in self._frozen:
                    self.cache.put(id, s)
        return s

    def _read_disk(self, id: str) -> DocState | None:
        h = id_hash(id)
        bloom = self._bloom
        if bloom is not None and h not in bloom:
            return None  # certainly not on disk: no index query
        for _attempt in range(3):
            try:
                loc = self._loc_by_hash(h)
                if loc is None:
                    return None
                s = self._read_loc(loc)
                if s.id == id:
                    s.disk_loc = loc
                    return s
                if not self.x_rows:
                    return None
                loc = self.index.loc_by_id(id)
                if loc is None:
                    return None
                s = self._read_loc(loc)
                s.disk_loc = loc
                s.in_x = True
                return s
            except _Moved:
                self._locmap = None
                continue
        raise CorruptionError(f"record {id!r}: its index entry points to a block that does not exist")

    def _loc_by_hash(self, h: int) -> int | None:
        """The index's location of the id hash ``h`` (``Index.loc_by_hash``), from the location arrays when they
        are loaded and current (see LOCMAP_AFTER)."""
        m = self._locmap
        if m is not None:
            if m[0] == self._flush_gen:
                hs = m[1]
                i = bisect_left(hs, h)
                return m[2][i] if i < len(hs) and hs[i] == h else None
            self._locmap = None  # a flush changed the index since they were loaded
            self._lookups = 0
        self._lookups = n = self._lookups + 1
        if n * LOCMAP_AFTER >= self.record_count >= LOCMAP_AFTER and self.record_count <= LOCMAP_MAX_ROWS:
            gen = self._flush_gen  # before reading: a flush committing meanwhile makes them stale at once
            self._lookups = 0
            try:
                hs, locs = self.index.all_locs()
            except CorruptionError:
                return self.index.loc_by_hash(h)
            self._locmap = (gen, hs, locs)
        return self.index.loc_by_hash(h)

    def _read_block(self, bno: int) -> list[bytes]:
        records = self.blocks.get(bno)
        if records is None:
            where = self.index.block(bno)
            if where is None:
                raise _Moved(bno)
            shard, off, length = where
            try:
                records = self.shards.read_block(shard, off, length)
            except CorruptionError:
                if self.index.block(bno) is None:
                    raise _Moved(bno) from None
                raise
            self.blocks.put(bno, records)
        return records

    def _read_loc(self, loc: int) -> DocState:
        records = self._read_block(loc >> 8)
        slot = loc & 0xFF
        if slot >= len(records):
            raise CorruptionError(f"index points past the end of block {loc >> 8}")
        return DocState.from_bytes(records[slot])

    # -- writes -----------------------------------------------------------------------------------------------

    def put(self, id: str, mutate: Mutation, *, fresh: bool = False) -> tuple[DocState | None, DocState | None]:
        """Apply ``mutate(current) -> new or None`` atomically. Returns (previous, new); new is None if no-op.

        ``fresh``: the caller generated this id at random, so no current state can exist.
        """
        if not self._want_bloom and not fresh:
            # The first write of an id that may exist: reads of unknown ids start to matter (a reader never pays,
            # nor a saver of new records only: an id generated at random is never looked up, and the filter, ~3 us
            # of the compactor's Python a record, a third of it rebuilding as the database doubles, would go unused)
            self._want_bloom = True
            self._wake.set()
        savers = self._savers
        if self._power:
            savers.append(None)
        shared = False
        try:
            with self.lock:
                self._wait_for_space()
                if self._shared is not None:
                    shared = True  # its listeners run from _ingested, in change order with the others' saves
                    prev, new = self._put_shared(id, mutate, fresh)
                    if new is None:
                        return prev, None
                else:
                    raw = None if fresh else self._get_raw(id)
                    prev = None if raw is None or raw.purged else raw
                    new = mutate(prev)
                    if new is None:
                        return prev, None
                    # Alone, a saver makes its own frame durable as it writes it; with others, they share syncs.
                    pos = self._log_frame(new, raw, alone=self._power and len(savers) == 1)
                    self._install(new, raw)
                    self._puts += 1
            if self._power:
                self.wal.wait_durable(pos)
        finally:
            if self._power:
                savers.pop()
            if self._ingested:
                self._dispatch()
        if shared:
            return prev, new
        for listener in self._listeners:
            try:
                listener(new, prev)
            except Exception:  # the save is done and durable: a failing observer must not undo that
                log.exception("a change listener failed")
        return prev, new

    def put_many(self, items: list[tuple[str, Mutation]], *, fast: bool = False
                 ) -> list[tuple[DocState | None, DocState | None] | Exception]:
        """``put`` of each item in turn under one hold of the lock and one back-pressure check: a bulk writer's
        path (``mynosql import``, a mirror's ``_bulk_docs``). A mutation that raises gives its exception in place
        of that item's result, and the other items are written; a storage error stops the batch (the items before
        it are written).

        ``fast``: a batch of a bulk load that goes on (a replication catching up): until ``flush_interval`` after
        the last such batch the compactor packs with the fast codec, as when it is behind, and re-packs with the
        normal one once the saves stop (``REPACK_IDLE``)."""
        if fast:
            self._bulk_at = time.monotonic()
        if self._power:  # each save waits for its sync there: the savers' group commit does the batching
            out: list[tuple[DocState | None, DocState | None] | Exception] = []
            for id, mutate in items:
                try:
                    out.append(self.put(id, mutate))
                except (ValueError, KeyError, TypeError) as exc:
                    out.append(exc)
            return out
        if not self._want_bloom:
            self._want_bloom = True
            self._wake.set()
        out = []
        ctl = None
        try:
            with self.lock:
                self._wait_for_space()
                ctl = self._lock_log()
                try:
                    for id, mutate in items:
                        raw = self._get_raw(id)
                        prev = None if raw is None or raw.purged else raw
                        try:
                            new = mutate(prev)
                        except (ValueError, KeyError, TypeError) as exc:
                            out.append(exc)
                            continue
                        if new is not None:
                            self._write(new, raw)
                            self._puts += 1
                            if ctl is not None:  # shared: listeners in change order with the others' saves
                                self._ingested.append((new, prev))
                        out.append((prev, new))
                finally:
                    if ctl is not None:
                        ctl.unlock()
        finally:
            if self._ingested:
                self._dispatch()
            for r in out if ctl is None else ():
                if isinstance(r, tuple) and r[1] is not None:
                    for listener in self._listeners:
                        try:
                            listener(r[1], r[0])
                        except Exception:
                            log.exception("a change listener failed")
        return out

    def _flush_due(self) -> bool:
        return len(self._active) >= self.opts.flush_docs or self._active_bytes >= self.opts.flush_bytes

    def _wait_for_space(self) -> None:
        # Back-pressure: savers wait while the records not yet in shards (the batch being packed and the next)
        # reach BACKLOG flushes' worth, whatever the compactor is busy with (a flush, garbage collection,
        # rebuilding the id filter). A writer faster than the compactor holds a bounded backlog, in records and in
        # bytes (bench/replication.py, RSS phase; test_a_writer_faster_than_the_compactor_is_held_back,
        # test_big_records_are_held_back_by_their_bytes), and a burst below that never waits (bench/local.py).
        opts = self.opts
        n, nbytes = len(self._active) + len(self._frozen), self._active_bytes + self._frozen_bytes
        if n < SOFT_BACKLOG * opts.flush_docs and nbytes < SOFT_BACKLOG * opts.flush_bytes:
            return  # nearly every save
        if self._stop.is_set() or self.stats.last_error is not None:  # a failing compactor (disk full) must not
            return  # block savers
        docs, size = BACKLOG * opts.flush_docs, BACKLOG * opts.flush_bytes
        if n < docs and nbytes < size:  # slow down: the compactor gets the lock (and the interpreter) a moment
            self.stats.slowed += 1
            self._wake.set()
            self._space.wait(timeout=SLOWDOWN)
            return
        deadline = None  # read the clock only when waiting, not on every save
        while (len(self._active) + len(self._frozen) >= docs or self._active_bytes + self._frozen_bytes >= size) \
                and not self._stop.is_set() \
                and self.stats.last_error is None:
            if deadline is None:
                deadline = time.monotonic() + 60.0
                self._held = True
            self._wake.set()
            if not self._space.wait(timeout=max(0.0, deadline - time.monotonic())):
                break
        if deadline is not None:
            waited = time.monotonic() - deadline + 60.0
            stats = self.stats
            stats.held += 1
            stats.held_seconds += waited
            stats.held_max = max(stats.held_max, waited)

    def _write(self, new: DocState, prev: DocState | None, *, alone: bool = False) -> int:
        pos = self._log_frame(new, prev, alone=alone)
        self._install(new, prev)
        return pos

    def _log_frame(self, new: DocState, prev: DocState | None, *, alone: bool = False) -> int:
        """The log half of :meth:`_write` (under the log's lock when it is shared): seq, frame, note, publish."""
        self.seq += 1
        new.seq = self.seq
        if prev is not None:
            new.disk_loc, new.in_x = prev.disk_loc, prev.in_x
        new.raw = raw = new.to_bytes()
        try:
            pos = self.wal.append(raw, alone=alone)
        except StorageError:
            self.seq -= 1
            raise
        note = self._note
        if note is not None:  # before the write is acknowledged: other processes drop their cached copy
            note(new.id)
        ctl = self._shared
        if ctl is not None:  # the others' appends go after this one (the seq first: see sharedlog.py)
            ctl.put(SEQ, self.seq)
            self.wal.publish()
        return pos

    # -- sharing with other processes (storage/sharedlog.py) --------------------------------------------------

    def share(self, note: Callable[[str], None]) -> bool:
        """From now on note every write (``note(id)``, under the write lock, before it is acknowledged) and let
        other processes append to the log themselves (a mapped log only: ``durability="process"``). True if the
        log is shared."""
        with self.lock:
            self._note = note
            if self._shared is not None:
                return True
            if self._stop.is_set() or not SHAREABLE:
                return False
            ctl = Control(self.directory)
            ctl.lock()
            try:
                shared = self.wal.share(ctl, self.seq, self.flushed_seq, random.getrandbits(63) | 1)
            finally:
                ctl.unlock()
            if not shared:
                ctl.close()
                return False
            self._shared = ctl
            self._want_bloom = True  # the others ask it (in a file) whether an id may be on disk
            self._wake.set()
            self._follower = threading.Thread(target=self._follow_loop, name=f"MyNoSQL-follow-{self.directory.name}",
                                              daemon=True)
            self._follower.start()
            return True

    def unshare(self) -> None:
        """Other processes stop appending (their saves go to this one, or wait for the next owner); what they
        appended is read first. Notes stop."""
        with self.lock:
            self._note = None
            ctl = self._lock_log()
            if ctl is None:
                return
            try:
                self.wal.unshare()
                self._shared = None
                if self._bloom is not None:
                    self._bloom.retire()
            finally:
                ctl.unlock()
                ctl.close()
        follower, self._follower = self._follower, None
        if follower is not None and follower is not threading.current_thread():
            follower.join()
        self._dispatch()

    def _put_shared(self, id: str, mutate: Mutation, fresh: bool) -> tuple[DocState | None, DocState | None]:
        """``put`` while other processes append to the log (under the write lock). Its listeners are due after
        those of the others' saves before it: it goes to ``_ingested`` (or, behind the frames still queued, to
        ``_queued``), and the caller runs ``_dispatch``.

        The others' frames are not read into the memtable here (``_queued``: the follower thread does that, a slice
        at a time, and every read first): reading hundreds of them (the follower held back a few ms on 2 busy CPUs)
        into the memtable took half of the owner's save time and made its slowest saves (bench/processes.py). Only
        a frame of the same record counts for this save: then every queued frame is read in first.
        The new state is made before the log's lock is taken, from what the others published: a process that holds
        that lock makes every other wait (and this one may lose the interpreter's lock to its compactor meanwhile),
        so it holds it for the append alone, unless a state of the same record came in between."""
        ctl = self._shared
        assert ctl is not None
        self._put_at = time.monotonic()  # the follower leaves the queue to the saves meanwhile
        queued = self._queued
        queued.extend(self.wal.follow(locked=False)[0])
        mine = b"" if fresh else b"[" + orjson.dumps(id) + b","  # a frame's id opens it
        if queued and mine and queued.may_hold(mine):
            self._drain()
        elif queued:  # a share of the follower's work: the queue stays short, each save pays a bounded part of it
            self._drain(SAVE_SLICE)
        raw = None if fresh else self._get_raw(id)
        prev = None if raw is None or raw.purged else raw
        new = mutate(prev)  # a conflict here is one with a save that returned before this one began
        if new is None:
            return prev, None
        ctl.lock()
        try:
            late = self.wal.follow(locked=True)[0]
            if late and mine and any(p.startswith(mine, 4) for p in late):  # the same record, just now
                queued.extend(late)
                late = []
                self._drain()
                raw = self._get_raw(id)
                prev = None if raw is None or raw.purged else raw
                new = mutate(prev)
                if new is None:
                    return prev, None
            seq = ctl.get(SEQ)
            if seq > self.seq:  # the others' seqs (or a gap a writer that died left)
                self.seq = seq
            self._log_frame(new, raw)
        finally:
            ctl.unlock()
        queued.extend(late)
        self._install(new, raw)
        self._puts += 1
        if queued:
            queued.append((new, prev))  # its listeners after those of the frames before it
        else:
            self._ingested.append((new, prev))
        return prev, new

    def _drain(self, limit: int = 0) -> None:
        """Under the write lock: the queued frames into the memtable, in order (``limit``: at most that many)."""
        queued = self._queued
        n = len(queued) if limit <= 0 else min(limit, len(queued))
        payloads: list[bytes] = []
        for _ in range(n):
            item = queued.popleft()
            if type(item) is bytes:
                payloads.append(item)
            else:  # a save of this process: its listeners after those of the frames before it
                if payloads:
                    self._ingest(payloads)
                    payloads = []
                self._ingested.append(item)  # type: ignore[arg-type]
        if payloads:
            self._ingest(payloads)

    def _lock_log(self) -> Control | None:
        """Under the write lock: if the log is shared, take its lock and read what the others appended."""
        ctl = self._shared
        if ctl is None:
            return None
        # What the others published is read before the lock is taken (no lock of theirs is needed for that): a
        # process that holds the lock makes every other wait, so it holds it for as short a time as it can.
        queued = self._queued
        queued.extend(self.wal.follow(locked=False)[0])
        self._drain()
        ctl.lock()
        try:
            queued.extend(self.wal.follow(locked=True)[0])
            self._drain()
            seq = ctl.get(SEQ)
            if seq > self.seq:  # a writer died between giving a seq and publishing its frame: a gap
                self.seq = seq
        except BaseException:
            ctl.unlock()
            raise
        return ctl

    def _ingest(self, payloads: list[bytes]) -> None:
        """Under the write lock: the states other processes appended into the memtable (their listeners run at
        the next _dispatch). The owner of a shared log reads every other process's save here (a quarter of its time
        in bench/processes.py): ``_get_raw`` inlined, the loop's lookups hoisted out of it."""
        from_bytes = DocState.from_bytes
        active, frozen, cache = self._active, self._frozen, self.cache
        install, ingested = self._install, self._ingested
        top = self.seq
        try:
            for payload in payloads:
                state = from_bytes(payload)
                state.raw = payload
                id = state.id
                raw = active.get(id)
                if raw is None:
                    raw = frozen.get(id)
                    if raw is None:
                        raw = cache.get(id)
                        if raw is None:
                            raw = self._get_disk(id)
                install(state, raw)
                if state.seq > top:
                    top = state.seq
                ingested.append((state, None if raw is None or raw.purged else raw))
        finally:  # (what was installed before a frame that failed to decode counts)
            self.seq = top
            self._puts += len(payloads)
        if payloads:
            if not self._want_bloom:
                self._want_bloom = True
                self._wake.set()
            # Other processes saving fast count as a bulk load: the compactor packs with the fast codec (LZMA2 took
            # most of a core from 2 that their saves needed: bench/processes.py) and re-packs once they stop.
            now = time.monotonic()
            if now - self._ingest_since >= 1.0:
                self._ingest_since, self._ingest_count = now, 0
            self._ingest_count += len(payloads)
            if self._ingest_count >= INGEST_BULK:
                self._bulk_at = now

    def catch_up(self, limit: int = 0) -> None:
        """Read what other processes appended to the shared log (before a read: theirs are as current as
        this process's own writes), and run the listeners for it. Reading needs no lock of theirs: only this
        process moves the log to a new segment, and what they publish is whole (the log's lock only if a frame
        is not visible whole yet). ``limit``: read at most that many of the queued frames into the memtable (the
        follower thread's slices; a read takes them all)."""
        ctl = self._shared
        if ctl is not None and (ctl.get(HEAD) != self.wal.end or self._queued):
            with self.lock:
                if self._shared is ctl:
                    got, whole = self.wal.follow(locked=False)
                    self._queued.extend(got)
                    self._drain(limit)
                    if not whole:
                        ctl = self._lock_log()
                        if ctl is not None:
                            ctl.unlock()
        if self._ingested:
            self._dispatch()

    def _dispatch(self) -> None:
        """Run the listeners for the states in ``_ingested`` (other processes' saves, and while shared this
        process's own), in change order: one thread at a time, outside the write lock. A thread that finds another
        at it leaves them to it (that one goes on until none is left, the follower thread within 20 ms): waiting
        could deadlock with a listener that waits for this thread (a live query's lock), and a listener that saves
        must not run the next ones ahead of those after it."""
        if not self._dispatching.acquire(False):
            return
        try:
            for _ in range(4):  # bounded: a thread of the application's must not deliver the others' saves for ever
                with self.lock:
                    got, self._ingested = self._ingested, []
                if not got:
                    return
                for new, prev in got:
                    for listener in self._listeners:
                        try:
                            listener(new, prev)
                        except Exception:
                            log.exception("a change listener failed")
        finally:
            self._dispatching.release()

    def _follow_loop(self) -> None:
        """While the log is shared: read the others' appends every 2 ms (every 20 ms after a second without
        any), so that listeners (replication, watch, live queries) hear of them without a read here."""
        quiet = 0
        while not self._stop.wait(0.002 if quiet < 500 else 0.02):
            ctl = self._shared
            if ctl is None:
                return
            try:
                if time.monotonic() - self._put_at < FOLLOW_IDLE and len(self._queued) < 4 * SAVE_SLICE:
                    # This process saves: its saves read the queue in and run the listeners, 32 frames each; here
                    # that would only take turns with them for the interpreter's lock (and hold the write lock).
                    quiet = 0
                    continue
                if ctl.get(HEAD) != self.wal.end or self._ingested or self._queued:
                    quiet = 0
                    self.catch_up(INGEST_SLICE)
                    # A slice at a time, with a pause between in which a saver waiting for the write lock takes it
                    # (the lock is not handed over: this thread would take it again at once).
                    while self._queued and self._shared is ctl and not self._stop.is_set():
                        time.sleep(RELEASE_PAUSE)
                        self.catch_up(INGEST_SLICE)
                else:
                    quiet += 1
            except (ValueError, OSError):  # unshared meanwhile
                return
            except Exception:
                log.exception("%s: reading the other processes' appends failed", self.directory.name)

    def _install(self, new: DocState, prev: DocState | None) -> None:
        if prev is not None and new.disk_loc < 0:
            new.disk_loc, new.in_x = prev.disk_loc, prev.in_x
        delta = (0 if new.deleted else 1) - (0 if prev is None or prev.deleted else 1)
        active = self._active
        if not active:
            self._first_pending = time.monotonic()
        old = active.get(new.id)
        self._active_bytes += len(new.raw or b"") - (len(old.raw or b"") if old is not None else 0)
        active[new.id] = new
        self._active_delta += delta
        self.live_count += delta
        # A purge marker is no record: it takes one away (the index row goes when it is packed).
        self.record_count += (0 if new.purged else 1) - (0 if prev is None or prev.purged else 1)
        # The record cache is refreshed when this state leaves the memtables (end of its flush); until then
        # every read finds it in the memtable first.
        if self._flush_due() and not self._wake.is_set():  # (set() takes a lock: each save past the mark paid it)
            self._wake.set()

    def add_listener(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(new, previous)`` after every write, in change order (in the writing thread; a write of
        another process, or one made while such writes are queued: the thread that reads them in). Returns the
        remover."""
        self._listeners.append(listener)  # list.append and remove are atomic: no lock against put's loop

        def remove() -> None:
            with contextlib.suppress(ValueError):
                self._listeners.remove(listener)

        return remove

    # -- secondary indexes (one field each, values as JSON) ---------------------------------------------------

    def set_secondary_fields(self, fields: tuple[str, ...]) -> None:
        """The fields whose values the index keeps (flushes write their rows): those of the configuration."""
        self._sidx_fields = fields

    def add_secondary(self, name: str, fields: tuple[str, ...]) -> None:
        """Index ``name`` for every record there is, then keep ``fields`` (``name`` among them) current."""
        with self._flush_lock:  # no flush between the scan and the switch: none can miss a row
            rows = []
            for s in self.iter_states(0):
                v = secondary_value(s, name)
                if v is not None:
                    rows.append((s.id, v))
            self.index.set_secondary(name, rows)
            self._sidx_fields = fields

    def drop_secondary(self, name: str, fields: tuple[str, ...]) -> None:
        with self._flush_lock:
            self._sidx_fields = fields
            self.index.drop_secondary(name)

    def secondary(self, name: str) -> dict[str, bytes]:
        """``{id: JSON value}`` of an indexed field, pending records included."""
        with self.lock:
            pending = dict(self._frozen)
            pending.update(self._active)
        out = dict(self.index.secondary(name))
        for id, s in pending.items():
            v = secondary_value(s, name)
            if v is None:
                out.pop(id, None)
            else:
                out[id] = v
        return out

    # -- query indexes (qindex.py) ----------------------------------------------------------------------------

    def pending(self) -> dict[str, DocState]:
        """The states not packed yet (a copy): what the query indexes do not hold."""
        with self.lock:
            if self._queued:
                self._drain()
            pending = dict(self._frozen)
            pending.update(self._active)
        return pending

    def has_pending(self) -> bool:
        """Whether any state is not packed yet (and so in no query index)."""
        with self.lock:
            if self._queued:
                self._drain()
            return bool(self._active) or bool(self._frozen)

    def read_block(self, bno: int) -> list[bytes] | None:
        """The encoded records of block ``bno`` (through the block cache), or None if it is gone (moved)."""
        try:
            return self._read_block(bno)
        except _Moved:
            return None

    def winner_at(self, loc: int, id: str, memo: dict[int, list[bytes]]) -> tuple[str, bytes] | None:
        """(rev, body) of the winning revision of ``id`` where a query index row places it (``loc``), or of its
        current state if that block has moved meanwhile; None if it is deleted. ``memo``: the blocks this query
        has read (a query reads many records of the same blocks)."""
        bno = loc >> 8
        records = memo.get(bno)
        if records is None:
            try:
                records = memo[bno] = self._read_block(bno)
            except _Moved:
                records = None
        data = records[loc & 0xFF] if records is not None and (loc & 0xFF) < len(records) else None
        if data is not None:
            fast = peek_winner(data)
            if fast is not None and fast[0] == id:
                return None if fast[2] else (fast[1], fast[3])
            s: DocState | None = DocState.from_bytes(data)
            if s is None or s.id != id:
                s = self.get_state(id)
        else:
            s = self.get_state(id)
        if s is None or s.deleted:
            return None
        win = s.winner
        return win, s.bodies[win]

    def maintain_query_indexes(self, defs: tuple[IndexDef, ...]) -> None:
        """The query indexes every flush from now on writes rows for."""
        with self._flush_lock:
            self.qdefs = defs

    def build_query_index(self, d: IndexDef, progress: Progress | None = None,
                          cancelled: Callable[[], bool] = lambda: False) -> bool:
        """Write the rows of ``d`` (already maintained by flushes) for every record on disk, a page of blocks at
        a time under the flush lock (no flush can commit between reading where a record is and writing its row),
        then mark it ready. False if ``cancelled()`` said so first."""
        total = self.index_rows()
        done = 0
        after_bno = -1
        while True:
            page = self.index.blocks_after(0, after_bno)
            if not page:
                break
            if cancelled():
                return False
            with self._flush_lock:
                states: list[DocState] = []
                locs: list[int] = []
                for bno, *_rest in page:
                    after_bno = bno
                    try:
                        records = [DocState.from_bytes(r) for r in self._read_block(bno)]
                    except _Moved:
                        continue
                    for slot, st in self._live_filter(bno, records):
                        states.append(st)
                        locs.append(bno << 8 | slot)
                sets, _dels = rows_for((d,), states, locs)
                self.index.write_qkeys(sets, ())
            done += len(states)
            if progress is not None:
                progress(done, total)
        with self._flush_lock:
            self.index.write_qkeys((), (), meta={f"qready:{d.ino}": 1})
        return True

    # -- the compactor ----------------------------------------------------------------------------------------

    def _build_bloom(self) -> None:
        """(Re)build the filter of on-disk ids; holds the flush lock so no flush adds ids meanwhile."""
        with self._flush_lock:
            docs, x = self.index.count_rows()
            shared = self._shared is not None  # then in a file, for the other processes' appends too
            bloom = Bloom(2 * (int(docs) + int(x)), self.directory if shared else None)
            hashes = self.index.iter_hashes()
            while chunk := list(itertools.islice(hashes, 4096)):
                bloom.add_all(chunk)
            if shared:
                bloom.publish()
            old, self._bloom = self._bloom, bloom
            if old is not None:
                old.retire()

    def _count_fast(self) -> dict[int, int]:
        """Records in fast blocks per shard, from the block headers (nothing is decompressed)."""
        fast: dict[int, int] = {}
        with self._flush_lock:
            for shard in sorted(self.shards.sizes()):
                if not self.shards.readable(shard):
                    continue
                with contextlib.suppress(CorruptionError):  # damage is verify()'s to report
                    for _off, _len, fields in self.shards.scan(shard):
                        if fields[7] == CODEC_DEFLATE:
                            fast[shard] = fast.get(shard, 0) + fields[0]
        return fast

    def _repack(self) -> bool:
        """Idle: move the live records of one shard that is mostly fast blocks, so that they are packed again with
        the normal codec; garbage collection then deletes the shard (nothing live is left in it). Stops at the
        next save or at close, the rest left for the next idle moment. Returns whether there was a shard to do."""
        puts = self._puts
        if puts == self._repacked_at:
            return False  # nothing to do then, and no save since
        if self._fast is None:
            self._fast = self._count_fast()
        with self._flush_lock:
            counts = {shard: count for shard, _live, count in self.index.shard_liveness()}
            for shard in sorted(self._fast):
                count = counts.get(shard, 0)
                if count == 0 or shard in self._gc_pending or not self.shards.readable(shard):
                    del self._fast[shard]
                    continue
                if self._fast[shard] * 2 < count:
                    continue  # mostly LZMA2 already: re-packing would cost more bytes (its dead ones) than it saves
                self._behind = False  # idle: no saver is going (else the moved records would be packed fast again)
                self._bulk_at = -1e9  # nor a bulk load
                if shard == self.shards.appending:
                    self.shards.roll()  # the moved records go to a new shard, so this one can be deleted
                self._evacuate(shard, stop=lambda: self._puts != puts or self._stop.is_set())
                if self._puts == puts and not self._stop.is_set():
                    self._gc_pending.add(shard)
                    del self._fast[shard]
                    if self._active:
                        self._flush_locked()
                    log.info("re-packed shard %s of %s", shard_name(shard), self.directory.name)
                return True
        self._repacked_at = puts
        return False

    def _compactor(self) -> None:
        backoff = 0.0
        idle_puts, idle_since = -1, 0.0
        while not self._stop.is_set():
            self._wake.wait(timeout=backoff or min(self.opts.flush_interval, 1.0))
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                due = self._active and (
                    self._flush_due() or time.monotonic() - self._first_pending >= self.opts.flush_interval
                )
                if due:
                    self.flush()
                self.collect_garbage()
                if self._blob_suspects:
                    self._collect_suspects()
                if self._active or self._puts != idle_puts:
                    idle_puts, idle_since = self._puts, time.monotonic()
                elif self._lzma and self._puts and time.monotonic() - idle_since >= REPACK_IDLE and self._repack():
                    self.collect_garbage()
                    self._wake.set()  # more to do: go on at once while still idle
                bloom = self._bloom
                if (bloom is None and self._want_bloom) or (bloom is not None and (
                        bloom.full or (self._shared is not None and bloom.folder is None))):
                    try:
                        self._build_bloom()
                    except Exception as exc:  # reads just keep asking the index
                        self._want_bloom = False
                        log.warning("%s: no id filter (%s); reads of unknown ids query the index",
                                    self.directory.name, exc)
                backoff = 0.0
                if self.stats.last_error is not None:
                    log.info("compactor of %s works again", self.directory.name)
                    self.stats.last_error = None
            except Exception as exc:  # the loop must survive; the error is logged once per kind and exposed
                msg = f"{type(exc).__name__}: {exc}"
                if msg != self.stats.last_error:
                    log.error("compactor of %s failed: %s (will retry)", self.directory.name, msg)
                self.stats.last_error = msg
                self.stats.errors += 1
                with self.lock:
                    self._space.notify_all()  # a failing compactor must not hold savers back (back-pressure)
                backoff = min(30.0, max(0.5, backoff * 2))

    def flush(self) -> None:
        """Pack every pending record into shard blocks and commit the index. Safe to call from any thread."""
        with self._flush_lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        if not self._active:
            return
        # The queued frames of other processes a slice at a time (what comes meanwhile, under the lock below), not
        # all under one hold of the write lock: every save of this process would wait for it.
        # (No listener runs here: this thread holds the flush lock, which a listener may need. The follower does.)
        for _ in range(len(self._queued) // INGEST_SLICE):
            with self.lock:
                if self._shared is None:
                    break
                self._drain(INGEST_SLICE)
            time.sleep(RELEASE_PAUSE)
        self.wal.prepare()  # the slow part of a rotation (a new file, reserved), outside the write lock
        with self.lock:
            ctl = self._lock_log()  # shared: what the others appended is flushed with the rest, then rotated
            try:
                if not self._active:
                    return
                frozen, delta = self._active, self._active_delta
                self._frozen, self._frozen_delta, self._frozen_bytes = frozen, delta, self._active_bytes
                self._active, self._active_delta, self._active_bytes = {}, 0, 0
                self._space.notify_all()  # the active memtable is empty again: waiting savers go on
                try:
                    closed = self.wal.rotate()
                except OSError as exc:
                    self._unfreeze()
                    raise StorageError(exc.errno, f"cannot rotate the write-ahead log: {exc.strerror}") from exc
            finally:
                if ctl is not None:
                    ctl.unlock()
        try:
            self._flush_frozen(closed)
        except BaseException:
            with self.lock:
                self._unfreeze()
            raise
        self.stats.flushes += 1

    def _unfreeze(self) -> None:
        """A flush failed: its records go back to the active memtable (their log segments were kept)."""
        merged = self._frozen
        merged.update(self._active)
        self._active = merged
        self._active_bytes = sum(len(s.raw or b"") for s in merged.values())  # an id may have been in both
        self._active_delta += self._frozen_delta
        self._frozen, self._frozen_delta, self._frozen_bytes = {}, 0, 0
        self._space.notify_all()  # savers waiting for this flush must not wait for a timeout

    def _flush_frozen(self, closed_segment: int) -> None:
        t0 = time.perf_counter()
        frozen, delta = self._frozen, self._frozen_delta
        every = sorted(frozen.values(), key=lambda s: s.seq)
        # Purge markers get no block: their records' index rows are deleted (they have none if never packed).
        states = [s for s in every if not s.purged]
        gone = [s for s in every if s.purged]
        n = self.opts.block_docs
        bno = self._next_bno
        packed = []
        locs: list[int] = []
        raw_total = 0
        fast = 0
        codecs: list[int] = []
        pos = 0
        while pos < len(states):
            # DEFLATE, unless the codec is LZMA2 and the compactor is not behind the savers: with a whole flush's
            # worth waiting already, DEFLATE, so that a saver that goes on runs at its own pace rather than
            # LZMA's (checked per block: the backlog moves while we pack). A flush that starts right after one that
            # ended behind (self._behind: savers were held back by it) is behind from its first block: the savers
            # are still going, and LZMA2 blocks at the start of each flush were a quarter of a long burst's records
            # at ~7x DEFLATE's cost.
            # DEFLATE blocks hold 4 times as many records (at most 255): ~2% smaller than at twice, still cheap to
            # decompress for one read (~1 us a record), and half the compressor calls. Each call releases the GIL,
            # and taking it back from a saver that runs Python (its log is a mapped file: no system call) can
            # wait a whole switch interval (5 ms): per block, that was more than its compression.
            # A bulk load that goes on (put_many(fast=True) within flush_interval) counts as behind too: its
            # batches come faster than LZMA2 packs them, and LZMA2 would take a core from the writer and its peer
            # (a mirror's ingest: ~45-75 us of compression a record against ~8 for DEFLATE at the fast level).
            bulk = time.monotonic() - self._bulk_at < self.opts.flush_interval
            behind = (self._behind or self._flush_due() or bulk) and not self._stop.is_set()
            codec = CODEC_LZMA if self._lzma and not behind else CODEC_DEFLATE
            step = n if codec == CODEC_LZMA else min(255, 4 * n)
            chunk = states[pos : pos + step]
            pos += step
            records = [s.raw or s.to_bytes() for s in chunk]
            raw_total += sum(map(len, records))
            fast += codec == CODEC_DEFLATE
            codecs.append(codec)
            level = DEFLATE_FAST_LEVEL if behind else DEFLATE_LEVEL
            packed.append((bno, pack_block(bno, records, chunk[0].seq, chunk[-1].seq, codec, level),
                           len(chunk), chunk[0].seq, chunk[-1].seq))
            locs.extend((bno << 8) | slot for slot in range(len(chunk)))
            bno += 1
        before = self.shards.sizes()
        t1 = time.perf_counter()
        infos = self.shards.append(packed)
        if self._fast is not None and fast:
            for info, codec in zip(infos, codecs, strict=True):
                if codec == CODEC_DEFLATE:
                    self._fast[info.shard] = self._fast.get(info.shard, 0) + info.count
        self.stats.fsync_total += time.perf_counter() - t1
        self.stats.fsyncs += len({i.shard for i in infos})  # one fsync per shard appended to
        sizes = {i.shard: self.shards.sizes()[i.shard] for i in infos}
        sidx_set, sidx_del = self._secondary_rows(every)
        hashes = [id_hash(s.id) for s in states]
        extra = None
        if self.qdefs:
            qsets, qdels = rows_for(self.qdefs, states, locs)
            qdels += rows_for(self.qdefs, gone, [-1] * len(gone))[1]  # a marker is deleted: no row
            extra = lambda w: self.index.write_qkeys(qsets, qdels, w)  # noqa: E731
        removals = [(s.id, id_hash(s.id), s.disk_loc, s.in_x) for s in gone if s.disk_loc >= 0]
        try:
            in_x = self.index.commit_flush(
                blocks=infos,
                placements=([s.id for s in states], hashes, locs, [s.disk_loc for s in states],
                            [s.in_x for s in states]),
                removals=removals,
                shard_sizes=sizes,
                meta={"flushed_seq": every[-1].seq, "next_bno": bno, "live_count": self._flushed_live + delta},
                sidx_set=sidx_set,
                sidx_del=sidx_del,
                extra=extra,
            )
        except BaseException:
            self.shards.rollback(before)
            raise
        self._next_bno = bno
        self.flushed_seq = every[-1].seq
        self._flushed_live += delta
        self.x_rows += sum(1 for s, x in zip(states, in_x, strict=True) if x and not s.in_x)
        self.x_rows -= sum(1 for r in removals if r[3])
        # From here on nothing may fail the flush: the index has the records where ``locs`` says. A flush failed
        # now would put the frozen states back with their old locations (_unfreeze), and their next flush would
        # count them dead in their old blocks again: live counts that drift (one way to chaos seed 96162's).
        bloom = self._bloom
        if bloom is not None:  # before the memtable lets go of them: a reader must find them one way or the other
            try:
                bloom.add_all([h for s, h in zip(states, hashes, strict=True) if s.disk_loc < 0])
            except Exception as exc:  # e.g. a shared filter's mapping closed: every reader asks the index instead
                bloom.retire()  # (the other processes' too) until the compactor builds a new one
                self._bloom = None
                log.warning("%s: id filter dropped (%s: %s); reads of unknown ids query the index",
                            self.directory.name, type(exc).__name__, exc)
        ctl = self._shared
        if ctl is not None:  # before the segments go: other processes' appenders learn that the index moved on
            with contextlib.suppress(ValueError):  # unshared meanwhile (closing): the page is closed (Control.put)
                ctl.put(FLUSHED, self.flushed_seq)
        with contextlib.suppress(OSError):
            self.wal.remove_through(closed_segment)
        if ctl is not None:  # they forget those segments: the index has them
            with contextlib.suppress(ValueError):
                ctl.put(OLDEST, closed_segment + 1)
        try:
            self.blobs.flushed(self.flushed_seq)
        except OSError as exc:  # the journal keeps lines it no longer needs: harmless (see BlobStore.recover)
            log.warning("%s: attachment journal not trimmed: %s", self.directory.name, exc)
        # The packed states learn where they are, a slice at a time under the write lock (each record's update is
        # atomic against a saver that replaces it), with a pause between slices in which waiting savers get the
        # lock: a whole flush's worth at once held every saver for 5-70 ms (bench/processes.py on 2 busy CPUs).
        for start in range(0, len(states), RELEASE_SLICE):
            if start:
                time.sleep(RELEASE_PAUSE)
            with self.lock:
                active = self._active
                end = start + RELEASE_SLICE  # (zip's tuple is reused: no tuple per record lives through the slices)
                for s, loc, x in zip(states[start:end], locs[start:end], in_x[start:end], strict=True):
                    s.disk_loc, s.in_x, s.raw = loc, x, None
                    self.cache.refresh(s.id, s)
                    newer = active.get(s.id)
                    if newer is not None:
                        newer.disk_loc, newer.in_x = loc, x
        with self.lock:
            active = self._active
            for s in gone:
                s.disk_loc, s.in_x, s.raw = -1, False, None
                self.cache.discard(s.id)
                newer = active.get(s.id)
                if newer is not None:  # saved again since: a new record as far as the index knows
                    newer.disk_loc, newer.in_x = -1, False
            self._frozen, self._frozen_delta, self._frozen_bytes = {}, 0, 0
            self._flush_gen += 1
            # Behind for good: savers were held back while this one was packed, and a whole flush's worth came
            # meanwhile (a burst that fits in the backlog never waits: its next flush starts with LZMA2).
            self._behind = self._held and self._flush_due()
            self._held = False
            self._space.notify_all()
        self.stats.records += len(states)
        self.stats.blocks += len(packed)
        self.stats.fast_blocks += fast
        self.stats.raw_bytes += raw_total
        self.stats.packed_bytes += sum(len(p[1]) for p in packed)
        self.stats.seconds += time.perf_counter() - t0

    def _secondary_rows(self, states: list[DocState]) -> tuple[list[tuple[str, str, bytes]], list[tuple[str, str]]]:
        sets: list[tuple[str, str, bytes]] = []
        dels: list[tuple[str, str]] = []
        for name in self._sidx_fields:
            for s in states:
                value = secondary_value(s, name)
                if value is None:
                    dels.append((name, s.id))
                else:
                    sets.append((name, s.id, value))
        return sets, dels

    # -- garbage collection -----------------------------------------------------------------------------------

    def collect_garbage(self, *, everything: bool = False, progress: Progress | None = None) -> int:
        """Move live records out of mostly dead shards and delete shards with nothing live. Returns moves.

        ``progress(moved, total)``: called after each block moved; ``total`` is the live records of the shards
        chosen (an upper bound: a record saved meanwhile is not moved)."""
        with self._flush_lock:
            return self._collect(everything, progress)

    def _collect(self, everything: bool, progress: Progress | None = None) -> int:
        moved = 0
        current = self.shards.appending
        ratio = 1.0 if everything else self.opts.gc_live_ratio
        liveness = self.index.shard_liveness()
        total = sum(live for shard, live, count in liveness
                    if shard != current and 0 < live < count * ratio and shard not in self._gc_pending)
        if progress is not None:
            progress(0, total)
        for shard, live, count in liveness:
            if shard == current:
                continue
            if live <= 0:
                # The index's counts say nothing there is live; its locations decide (a count that drifted,
                # chaos seed 96162, must never delete a record): what they still place there moves first.
                if not self.index.places_in_shard(shard):  # (a record moved out, not flushed yet, is still there)
                    self._drop_shard(shard)
                else:  # moved now (or when the newer state pending is flushed), then it goes
                    held = self._evacuate(shard)
                    log.warning("%s: shard %s still held records its live count did not (%d moved)",
                                self.directory.name, shard_name(shard), held)
                    moved += held
            elif shard not in self._gc_pending and live < count * ratio:
                step = None if progress is None else lambda k, base=moved: progress(base + k, total)
                moved += self._evacuate(shard, step)
                self._gc_pending.add(shard)
        return moved

    def _drop_shard(self, shard: int) -> None:
        bnos = [b for b, _, _ in self.index.blocks_of_shard(shard)]
        self.index.drop_shard(shard)
        for b in bnos:
            self.blocks.discard(b)
        self.shards.remove(shard)
        self._gc_pending.discard(shard)
        self.stats.gc_shards += 1
        log.info("collected shard %s of %s", shard_name(shard), self.directory.name)

    def _evacuate(self, shard: int, progress: Callable[[int], None] | None = None,
                  stop: Callable[[], bool] | None = None) -> int:
        """Move the live records of ``shard`` (``progress(moved so far)`` after each block; ``stop()`` checked
        before each block: True leaves the rest where it is)."""
        moved = 0
        for bno, off, length in self.index.blocks_of_shard(shard):
            if stop is not None and stop():
                break
            records = [DocState.from_bytes(r) for r in self.shards.read_block(shard, off, length)]
            live = self._live_filter(bno, records)
            with self.lock:
                ctl = self._lock_log()  # a newer state another process appended counts as pending too
                try:
                    for slot, s in live:
                        if s.id in self._active or s.id in self._frozen:
                            continue  # a newer state is pending; it supersedes this one when flushed
                        s.disk_loc = (bno << 8) | slot
                        s.in_x = self.index.loc_by_id(s.id) == s.disk_loc if self.x_rows else False
                        self._write(s, s)  # same record, new change seq: a move, not an edit
                        moved += 1
                finally:
                    if ctl is not None:
                        ctl.unlock()
            if self._flush_due():  # a big shard moves a flush at a time: bounded RAM
                self._flush_locked()
            if progress is not None:
                progress(moved)
        return moved

    def _live_filter(self, bno: int, records: list[DocState]) -> list[tuple[int, DocState]]:
        hashes = [id_hash(s.id) for s in records]
        current = self.index.live_locs(hashes)
        out = []
        for slot, (s, h) in enumerate(zip(records, hashes, strict=True)):
            loc = (bno << 8) | slot
            if current.get(h) == loc or (self.x_rows and self.index.loc_by_id(s.id) == loc):
                out.append((slot, s))
        return out

    def compact(self, progress: Progress | None = None) -> int:
        """Flush, then rewrite every shard that holds dead records. Returns how many records moved.

        ``progress(moved, total)``: see :meth:`collect_garbage`."""
        self.flush()
        with self._flush_lock:
            self.shards.roll()
        self._gc_pending.clear()
        moved = self.collect_garbage(everything=True, progress=progress)
        self.flush()
        self.collect_garbage()
        self.collect_blobs()
        return moved

    # -- attachment bytes -------------------------------------------------------------------------------------

    def _blob_referenced(self, key: str, id: str) -> bool:
        """Whether the record ``id`` refers to the blob ``key`` (recovery after a crash)."""
        state = self.get_state(id)
        if state is None or not state.atts:
            return False
        for atts in state.atts.values():
            for meta in atts.values():
                if meta.get("blob") == key or ("blob" not in meta and self.index.fetched_blob(meta["digest"]) == key):
                    return True
        return False

    def live_blobs(self) -> set[str]:
        """Every blob that a leaf revision refers to (a scan of every record). Rows of ``att_fetched`` (digest ->
        blob) whose digest no stub and whose blob no leaf refers to any more are dropped on the way."""
        fetched = self.index.fetched_all()
        keys: set[str] = set()
        stubs: set[str] = set()
        for s in self.iter_states(0):
            if s.atts:
                for atts in s.atts.values():
                    for meta in atts.values():
                        key = meta.get("blob")
                        if key is not None:
                            keys.add(key)
                        else:
                            stubs.add(meta["digest"])
        for digest, key in fetched.items():
            if digest in stubs:
                keys.add(key)
            elif key not in keys:  # kept while a leaf refers to its blob (a replicated stub may name it again)
                self.index.set_fetched(digest, None)
        return keys

    def _collect_suspects(self) -> None:
        """Delete the blobs recovery suspected to be orphans of a crash that no record refers to."""
        dropped, freed = self.blobs.collect(self.live_blobs, only=self._blob_suspects)
        self._blob_suspects = []
        if dropped:
            log.info("%s: removed %d attachment blob(s), %d bytes, that a crash left before their records were "
                     "written", self.directory.name, dropped, freed)

    def collect_blobs(self) -> tuple[int, int]:
        """Delete the attachment blobs no leaf revision refers to any more. Returns (blobs, bytes) deleted."""
        dropped, freed = self.blobs.collect(self.live_blobs)
        if dropped:
            log.info("%s: deleted %d attachment blob(s), %d bytes, no revision refers to any more",
                     self.directory.name, dropped, freed)
        return dropped, freed

    # -- changes feed -----------------------------------------------------------------------------------------

    def iter_states(self, since: int = 0) -> Iterator[DocState]:
        """The newest state of every record changed after ``since``, in change order (the changes feed)."""
        cursor = since
        while True:
            gen = self._flush_gen
            after_bno = -1
            while True:
                page = self.index.blocks_after(cursor, after_bno)
                if not page:
                    break
                for bno, _shard, _off, _len, last_seq in page:
                    after_bno = bno
                    try:
                        records = [DocState.from_bytes(r) for r in self._read_block(bno)]
                    except _Moved:
                        continue
                    for _slot, s in self._live_filter(bno, records):
                        # Skip a disk state only when a newer one is pending (it comes later). A pending state with
                        # the same seq is the one a flush is committing right now: the cursor moves past it here,
                        # so it must be yielded from disk, not left for the pending pass.
                        newer = self._active.get(s.id) or self._frozen.get(s.id)
                        if s.seq > cursor and (newer is None or newer.seq <= s.seq):
                            yield s
                    cursor = max(cursor, last_seq)
            with self.lock:
                if gen != self._flush_gen:
                    continue  # a flush landed while we read the disk: read what it wrote first
                if self._queued:  # the memtable holds every state up to its newest: none is skipped for good
                    self._drain()
                pending = dict(self._frozen)
                pending.update(self._active)
            break
        yield from sorted((s for s in pending.values() if s.seq > cursor and not s.purged), key=lambda s: s.seq)

    def raw_bytes_on_disk(self) -> int:
        """Decompressed size of every block on disk (from the block headers: nothing is decompressed)."""
        total = 0
        with self._flush_lock:
            for shard in sorted(self.shards.sizes()):
                if not self.shards.readable(shard):
                    continue
                with contextlib.suppress(CorruptionError):
                    total += sum(fields[1] for _off, _len, fields in self.shards.scan(shard))
        return total

    def index_rows(self) -> int:
        """Records on disk plus pending ones (an upper bound of ``iter_states(0)``, for progress bars)."""
        docs, x = self.index.count_rows()
        return int(docs) + int(x) + len(self._active) + len(self._frozen)

    # -- inspection and shutdown ------------------------------------------------------------------------------

    def verify(self, progress: Progress | None = None) -> list[str]:
        """Check every block's checksums and records, and the index. Returns a list of problems (empty: clean).

        ``progress(records checked, records in the index's blocks)``: called after each block."""
        with self._flush_lock:  # no flush or collection while we look
            return self._verify(progress)

    def _verify(self, progress: Progress | None = None) -> list[str]:
        problems = [*self.wal.problems, *self.shards.problems]
        try:
            integrity = self.index.integrity()
            if integrity != "ok":
                problems.append(f"index.sqlite: {integrity}")
        except MyNoSQLError as exc:
            problems.append(str(exc))
        known = {b[0]: b for b in self.index.all_blocks()}
        seen = set()
        rows, x_rows = self.index.count_rows()
        found = 0  # index rows that point at a record with their id: every row must
        done, total = 0, sum(b[4] for b in known.values())
        if progress is not None:
            progress(done, total)
        for shard in sorted(self.shards.sizes()):
            if not self.shards.readable(shard):
                continue  # missing file: already reported
            try:
                for off, length, fields in self.shards.scan(shard):
                    bno = fields[3]
                    seen.add(bno)
                    done += fields[0]
                    if progress is not None:
                        progress(done, total)
                    row = known.get(bno)
                    if row is None or row[1] != shard or row[2] != off or row[3] != length:
                        problems.append(f"{shard_name(shard)}@{off}: block {bno} does not match the index")
                        continue
                    try:
                        states = [DocState.from_bytes(rec) for rec in self.shards.read_block(shard, off, length)]
                    except CorruptionError as exc:
                        problems.append(str(exc))
                        continue
                    problems.extend(f"{shard_name(shard)}@{off}: record {st.id!r} has a revision leaf without a "
                                    "body" for st in states if any(r not in st.bodies for r in leaves(st.tree)))
                    problems.extend(self._missing_blobs(states))
                    live = self._indexed_here(bno, states, x_rows > 0)
                    found += live
                    if live != row[7]:
                        problems.append(f"block {bno}: the index counts {row[7]} current records in it, but {live} "
                                        "of its records are where the index says their id is")
            except CorruptionError as exc:
                problems.append(str(exc))
        for bno, row in known.items():
            if bno not in seen and row[1] in self.shards.sizes():
                problems.append(f"block {bno} is in the index but not in {shard_name(row[1])}")
        if found != rows + x_rows:
            problems.append(f"index.sqlite: {rows + x_rows - found} of its {rows + x_rows} record locations point "
                            "at no record of that id")
        return problems

    def _missing_blobs(self, states: list[DocState]) -> list[str]:
        out = []
        for st in states:
            for rev, atts in (st.atts or {}).items():
                for name, meta in atts.items():
                    key = meta.get("blob")
                    if key is not None and not self.blobs.has(key):
                        out.append(f"record {st.id!r} revision {rev}: the bytes of attachment {name!r} are missing "
                                   f"(attachments/{key[:2]}/{key})")
        return out

    def _indexed_here(self, bno: int, states: list[DocState], collisions: bool) -> int:
        """How many of block ``bno``'s records the index places there (the newest state of their id)."""
        hashes = [id_hash(s.id) for s in states]
        locs = self.index.live_locs(hashes)
        here = 0
        for slot, (s, h) in enumerate(zip(states, hashes, strict=True)):
            loc = bno << 8 | slot
            if locs.get(h) == loc or (collisions and self.index.loc_by_id(s.id) == loc):
                here += 1
        return here

    def problem(self) -> str | None:
        """Why this store is not healthy now, or None (cheap: no I/O; for health checks)."""
        if self._stop.is_set():
            return "closed"
        if not self._thread.is_alive():
            return "its compactor has stopped"
        if self.stats.last_error is not None:
            return "its compactor is failing (it retries; the error is in the log)"
        return None

    def close(self) -> None:
        """Stop and join the compactor (a flush under way finishes first), pack what is pending, close files."""
        self._stop.set()
        self._wake.set()
        with self.lock:
            self._space.notify_all()
        self._thread.join()  # no timeout: a flush running on when the files close could lose its batch
        self.unshare()  # what other processes appended is read, and flushed below with the rest
        try:
            self.flush()
            self.blobs.flushed(self.flushed_seq)
        finally:
            self.blobs.close()
            self.wal.close()
            self.shards.close()
            self.index.close()
            self.cache.clear()
            self.blocks.clear()


def secondary_value(state: DocState, field: str) -> bytes | None:
    """JSON (encoded form) of ``field`` in the winning body, or None if deleted or absent."""
    win = state.winner
    if state.tree[win][1]:
        return None
    body: Any = orjson.loads(state.bodies[win])
    if field not in body:
        return None
    return orjson.dumps(body[field])
