"""The write-ahead log shared by the processes that have one database open (``durability="process"``).

The owner (the process holding ``LOCK``: it runs the compactor and replication) *shares* its log when the first
other process connects: from then on every process appends its own saves to the log's current segment, under an
OS lock (``flock``) on the control page ``WALCTL``, instead of sending them to the owner. A save is a frame copied
into the mapped segment (in the page cache at once: it survives the death of its process), exactly as the owner's
own. What a writer does under the lock:

1. checks the page's epoch (0: the log is not shared right now; the owner is closing, rotating or recovering it:
   the save goes to the owner instead);
2. reads the frames the others appended since it last looked (it keeps, per record id, the newest state the log
   holds that the index may not have yet: the memtable of the log);
3. finds the record's current state there, or learns from the index that it has none (a record the index has
   goes to the owner: its current state is in the shards);
4. checks the revision (a stale ``rev`` is refused whoever wrote the newer one), appends the new state with the
   next change seq, notes the record in the ``CHANGED`` ring (other processes drop it from their caches), and
   publishes the new end of the log and the seq, in that order.

The owner reads the frames others appended (under the same lock) before each of its writes and reads, and every
few milliseconds in its follower thread, into its memtable: its listeners (replication, queries, ``watch``) see
every process's saves. It alone rotates segments and flushes them into shards; after a flush it publishes the
oldest segment still needed and the seq the index covers, and the writers drop what they kept of older segments.

A writer killed while it held the lock leaves at most a frame past the published end; the next writer overwrites
it (a frame past the end that recovery finds whole was never acknowledged; keeping it is what a crash right after
the copy would do). The page's fields are written in an order that a death between two of them cannot make
unsafe: the seq before the end (a gap in change seqs, never a seq given twice); a rotation clears the epoch
first and sets it back last. A new owner clears the epoch before it recovers the log.

Page layout (little-endian u64 each): magic, epoch, segment, head (end of the frames in the segment), seq (the
last change seq given), size (bytes reserved in the segment file), oldest (the oldest segment still holding
records the index does not have), flushed (the seq the index covers).
"""

from __future__ import annotations

import contextlib
import mmap
import os
import sqlite3
import struct
import threading
import zlib
from collections.abc import Callable
from pathlib import Path

import orjson

from ..errors import ConflictError, StorageError
from ..records.revtree import DocState
from .bloom import SharedBloom
from .index import id_hash
from .wal import _FRAME, CTL_MAGIC, FLUSHED, HEAD, MAGIC, SEGMENT_RESERVE, SEQ, SIZE, Control, _segment_name, frames

_U32 = struct.Struct("<I")



def id_hash_ring(id: str) -> int:
    """64 bits of a record id, the same in every process, for the ``CHANGED`` ring (two C checksums: fast, and a
    collision only costs a needless cache miss... or, for two ids cached at once, one of them dropped late: 1 in
    2**64)."""
    b = id.encode()
    return zlib.crc32(b) | (zlib.adler32(b) << 32)


class Fallback(Exception):
    """This save goes to the owner (the log is not shared now, or the record's state is in the shards)."""


class LogWriter:
    """A process's appends to a log another process owns (see the module docstring). Thread-safe."""

    def __init__(self, folder: Path, note: Callable[[mmap.mmap, int], None], ring_bytes: int, backlog: int,
                 soft: int) -> None:
        """``note(ring, h)``: note the record whose :func:`id_hash_ring` is ``h`` in the mapped ``CHANGED`` ring
        of ``ring_bytes`` (under the log's lock, before the save is acknowledged)."""
        self.folder = folder
        self._note = note
        self._backlog = backlog  # saves wait while more records than this are not in the index yet
        self._soft = soft  # and past this many each save waits once (store.SOFT_BACKLOG)
        fd = os.open(folder / "CHANGED", os.O_RDWR)
        try:
            self._ring = mmap.mmap(fd, ring_bytes)
        finally:
            os.close(fd)
        self.ctl = Control(folder)
        self._lock = threading.Lock()
        self._epoch = 0
        self._maps: dict[int, tuple[int, mmap.mmap]] = {}  # segment -> (fd, its map)
        self._seg = 0
        self._pos = 0
        self._mem: dict[str, tuple[int, bytes]] = {}  # id -> (segment, its newest state's bytes)
        self._by_seg: dict[int, list[str]] = {}
        self._late: list[tuple[int, bytes]] = []  # frames read under the lock, not in _mem yet (see _absorb)
        self._oldest = 0  # the oldest segment the index did not cover when the log was last followed
        self._db: sqlite3.Connection | None = None
        self._filter: SharedBloom | None = None
        self._filter_tried = -1
        self.closed = False

    # -- following the log ----------------------------------------------------------------------------------

    def _reset(self, epoch: int, oldest: int) -> None:
        for fd, mm in self._maps.values():
            mm.close()
            os.close(fd)
        self._maps.clear()
        self._mem.clear()
        self._by_seg.clear()
        self._late.clear()
        self._epoch, self._seg, self._pos = epoch, oldest, len(MAGIC)
        if self._filter is not None:  # a new owner's flushes are not in an old owner's filter
            self._filter.close()
            self._filter = None
        self._filter_tried = -1

    def _map(self, seg: int, need: int) -> mmap.mmap | None:
        """Segment ``seg`` mapped over at least ``need`` bytes (as much as the file has), or None if it is gone."""
        got = self._maps.get(seg)
        if got is not None and len(got[1]) >= need:
            return got[1]
        if got is None:
            try:
                fd = os.open(self.folder / _segment_name(seg), os.O_RDWR)
            except FileNotFoundError:
                return None
        else:
            fd = got[0]
            got[1].close()
        size = os.fstat(fd).st_size
        if size < len(MAGIC):
            os.close(fd)
            self._maps.pop(seg, None)
            return None
        mm = mmap.mmap(fd, size)
        self._maps[seg] = (fd, mm)
        return mm

    def _unmap(self, seg: int) -> None:
        got = self._maps.pop(seg, None)
        if got is not None:
            got[1].close()
            os.close(got[0])

    def _drop(self, seg: int) -> None:
        self._unmap(seg)
        mem = self._mem
        for id in self._by_seg.pop(seg, ()):
            e = mem.get(id)
            if e is not None and e[0] == seg:
                del mem[id]

    def _follow(self, segment: int, head: int, oldest: int) -> None:
        """Read what the others appended up to (segment, head) into ``_late`` (:meth:`_absorb` puts it in the
        log's memtable, once the lock is let go); forget the segments the index has."""
        for s in [s for s in self._by_seg if s < oldest]:
            self._drop(s)
        for s in [s for s in self._maps if s < oldest]:
            self._drop(s)
        if self._seg < oldest:
            self._seg, self._pos = oldest, len(MAGIC)
        self._oldest = oldest
        late = self._late
        while (self._seg, self._pos) < (segment, head):
            seg = self._seg
            last = seg == segment
            if not last:
                self._unmap(seg)  # mapped while it was the current segment, maybe shorter than it grew since
            mm = self._map(seg, head)
            if mm is None:  # flushed and removed: the index has it
                if last:
                    raise Fallback
                self._seg, self._pos = seg + 1, len(MAGIC)
                continue
            got, pos = frames(mm, self._pos, head if last else len(mm), checked=not last)
            late.extend((seg, payload) for payload in got)
            if last:
                self._pos = pos
            else:
                self._seg, self._pos = seg + 1, len(MAGIC)
                self._unmap(seg)  # read to its end: no more appends there

    def _absorb(self) -> None:
        """The frames :meth:`_follow` read, into the log's memtable (the newest state of each id)."""
        mem, by_seg = self._mem, self._by_seg
        for seg, payload in self._late:
            (mlen,) = _U32.unpack_from(payload, 0)
            id = orjson.loads(payload[4:4 + mlen])[0]
            if seg >= self._oldest:
                mem[id] = (seg, payload)
                by_seg.setdefault(seg, []).append(id)
        self._late.clear()

    def _on_disk(self, id: str) -> bool:
        """Whether the index may have ``id``: the owner's id filter (``IDFILTER``) rules most new ids out; the
        index itself is asked for the others."""
        h = id_hash(id)
        filt = self._filter
        if filt is None or not filt.current:
            if filt is not None:
                filt.close()
                self._filter = filt = None
            flushed = self.ctl.get(FLUSHED)
            if flushed != self._filter_tried:  # looked for again after each flush, not at every save
                self._filter_tried = flushed
                with contextlib.suppress(OSError, ValueError):
                    filt = SharedBloom(self.folder)
                    if filt.current:  # not one the owner retired when it closed
                        self._filter = filt
                    else:
                        filt.close()
                        filt = None
        if filt is not None and h not in filt:
            return False
        db = self._db
        if db is None:
            db = self._db = sqlite3.connect(self.folder / "index.sqlite", isolation_level=None,
                                            check_same_thread=False, timeout=30)
        row = db.execute("SELECT 1 FROM docs WHERE h=? UNION ALL SELECT 1 FROM docs_x WHERE id=? LIMIT 1",
                         (h, id)).fetchall()
        return bool(row)

    # -- writing --------------------------------------------------------------------------------------------

    def save(self, id: str, fresh: bool, mutate: Callable[[DocState | None], DocState | None],
             wait: Callable[[], None]) -> tuple[DocState | None, DocState | None]:
        """``mutate(current state) -> new state or None`` appended as a frame; (previous, new). Raises
        :class:`Fallback` when the owner must do it, and whatever ``mutate`` raises (a conflict). ``wait()``
        is called (outside the lock) while the owner's compactor is behind by more than the backlog, and once after
        a save made while it is behind by more than the soft backlog (savers slow down before they stop).

        The log's lock is held as briefly as can be (a process preempted while it holds it makes every other
        wait): the index is asked, and the new state of a record believed new is made, before it is taken."""
        with self._lock:
            if self.closed:
                raise Fallback
            ctl = self.ctl
            known = None
            pre = None
            if id not in self._mem:
                if not fresh:
                    known = (ctl.get(FLUSHED), self._on_disk(id))
                if fresh or not known[1]:  # type: ignore[index]
                    try:
                        pre = mutate(None)  # what it makes if it is still new under the lock
                    except ConflictError:
                        pre = None  # an update of a record believed new: decided under the lock
            h = id_hash_ring(id)
            done: tuple[DocState | None, DocState | None] | None = None
            mine_frame: tuple[int, bytes] | None = None
            for _ in range(60_000):
                ctl.lock()
                try:
                    magic, epoch, segment, head, seq, size, oldest, flushed = ctl.fields()
                    if magic != CTL_MAGIC or epoch == 0:
                        raise Fallback
                    slow = seq - flushed > self._soft
                    if seq - flushed <= self._backlog:
                        # The index's answer holds if no flush committed since it was asked: a segment removed
                        # before this follow is one whose flush committed before that (FLUSHED goes first).
                        on_disk = known[1] if known is not None and known[0] == flushed else None
                        if epoch != self._epoch:
                            self._reset(epoch, oldest)
                        self._follow(segment, head, oldest)
                        got = self._mem.get(id)
                        if self._late:  # a state of this record read just now (its id opens the frame)?
                            mine = b"[" + orjson.dumps(id) + b","
                            for seg, payload in self._late:
                                if payload.startswith(mine, 4):
                                    got = (seg, payload)
                        if got is not None:
                            raw = DocState.from_bytes(got[1])
                            prev = None if raw.purged else raw
                            new = mutate(prev)
                        elif fresh or not (self._on_disk(id) if on_disk is None else on_disk):
                            prev = None
                            new = pre if pre is not None else mutate(None)
                        else:
                            raise Fallback
                        mine_frame = None
                        if new is not None:
                            mine_frame = self._append(new, h, segment, head, seq, size)
                        done = prev, new
                finally:
                    ctl.unlock()
                    if self._late:
                        self._absorb()
                if done is not None:
                    if mine_frame is not None:  # after the others' frames: the newest state of its record
                        self._mem[new.id] = mine_frame  # type: ignore[union-attr]
                        self._by_seg.setdefault(mine_frame[0], []).append(new.id)  # type: ignore[union-attr]
                    if slow:
                        wait()
                    return done
                wait()
            raise Fallback

    def _append(self, new: DocState, h: int, segment: int, head: int, seq: int, size: int) -> tuple[int, bytes]:
        """Under the lock: ``new`` with the next seq, at the end of the log; noted in the ring; published.
        Returns its segment and bytes (for the log's memtable)."""
        new.seq = seq + 1
        payload = new.to_bytes()
        frame = _FRAME.pack(len(payload), zlib.crc32(payload)) + payload
        end = head + len(frame)
        try:
            m = self._map(segment, 0)
            if m is None:
                raise Fallback
            if end + _FRAME.size > size:  # room for the frame and the zeros that end the segment after it
                grown = max(end + _FRAME.size + SEGMENT_RESERVE, 2 * size)
                fd = self._maps[segment][0]
                if hasattr(os, "posix_fallocate"):
                    os.posix_fallocate(fd, 0, grown)  # real blocks now: ENOSPC here, not SIGBUS later
                else:  # pragma: no cover - platforms without it
                    os.ftruncate(fd, grown)
                self.ctl.put(SIZE, grown)
            if len(m) < end + _FRAME.size:
                m = self._map(segment, end + _FRAME.size)
                if m is None or len(m) < end + _FRAME.size:
                    raise Fallback
            m[head:end] = frame
        except OSError as exc:
            raise StorageError(exc.errno, f"cannot append to the write-ahead log: {exc.strerror}") from exc
        self._note(self._ring, h)
        self.ctl.put(SEQ, seq + 1)  # the seq first: dying between the two leaves a gap, never a seq given twice
        self.ctl.put(HEAD, end)
        self._pos = end
        return segment, payload

    def close(self) -> None:
        with self._lock:
            self.closed = True
            self._reset(0, 0)
            if self._db is not None:
                self._db.close()
                self._db = None
            self.ctl.close()
            self._ring.close()
