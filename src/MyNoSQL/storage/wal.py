"""The write-ahead log: append-only, CRC-framed segments.

Every ``savedoc`` appends one frame with the record's full new state into a shared memory map of the segment
file: once the copy is done the bytes are in the kernel's page cache, so they survive the death of the process
(SIGKILL included), and the saver never gives up the GIL for a system call (a background compactor thread
would otherwise make every save wait for it). Segment space is reserved with ``posix_fallocate`` before it is mapped,
so a full disk is an ``OSError`` at reservation time, never a SIGBUS while copying. In ``durability="power"``
mode the writer also waits for an ``fdatasync`` that covers its frame; writers arriving while a sync runs share
the next one (group commit). A writer alone (nobody else saving, every earlier frame already durable) instead
writes its frame with ``RWF_DSYNC`` where the OS has it: one system call that returns once the frame is on
stable storage, ~13% faster per save than a write and an ``fdatasync`` here (the segment's blocks are allocated
and zeroed beforehand, so no file metadata has to follow).

The log is cut into segments ``wal-<n>.log``. The compactor *rotates* to a new segment, packs everything the
older segments hold into shard blocks, commits the index, and only then deletes the older segments.

Segment layout: an 8-byte magic ``MNSQWAL1``, then frames ``u32 length | u32 crc32(payload) | payload``
(little endian), then zeros up to the reserved size (a zero length ends the segment; the file is cut to its
used length when the segment is closed). On recovery a frame that is short or fails its CRC at the end of the
newest segment is a torn write from a crash and is cut off. Damage anywhere else is kept aside in
``<segment>.corrupt`` and reported.

Every sync (group commits, and the syncs of segment files and their directory) is counted and timed in
``stats`` (:class:`SyncStats`, shown by a mirror's ``/_metrics``).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import mmap
import os
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import StorageError
from .fileutil import fsync_dir, write_all, write_all_at

try:
    import fcntl
except ImportError:  # pragma: no cover - no flock (Windows): the log is never shared, saves go to the owner
    fcntl = None  # type: ignore[assignment]
SHAREABLE = fcntl is not None

log = logging.getLogger("MyNoSQL")

MAGIC = b"MNSQWAL1"
_FRAME = struct.Struct("<II")
MAX_FRAME = 1 << 30
SEGMENT_RESERVE = 1 << 20  # bytes reserved ahead in the open segment (doubles as it fills)


CTL = "WALCTL"
LOCK_SPIN = 50e-6  # seconds a process tries the shared log's lock again before it sleeps until it is free
PAGE = 4096
CTL_MAGIC = 0x314C544351534E4D  # "MNSQCTL1"
_U64 = struct.Struct("<Q")
EPOCH, SEGMENT, HEAD, SEQ, SIZE, OLDEST, FLUSHED = (8 * i for i in range(1, 8))
_FIELDS = struct.Struct("<8Q")


def _libc_flock() -> Callable[[int, int], int] | None:
    """libc's ``flock``, called with the interpreter's lock held (``ctypes.PyDLL``; ``fcntl.flock`` lets it go
    around the call). Only for calls that cannot block: ``LOCK_NB``, ``LOCK_UN``."""
    if fcntl is None:  # pragma: no cover
        return None
    try:
        import ctypes

        fn = ctypes.PyDLL(None).flock
        fn.argtypes = (ctypes.c_int, ctypes.c_int)
        fn.restype = ctypes.c_int
        return fn
    except (ImportError, OSError, AttributeError):  # pragma: no cover - no ctypes, or no flock in libc
        return None


_flock_held = _libc_flock()


class Control:
    """The control page ``WALCTL``, mapped, and its lock (``flock``: between processes only; the threads of one
    process serialise themselves first)."""

    def __init__(self, folder: Path) -> None:
        fd = os.open(folder / CTL, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size < PAGE:
                os.ftruncate(fd, PAGE)
            self.mm = mmap.mmap(fd, PAGE)
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd

    def lock(self) -> None:
        # Uncontended, without letting go of the interpreter's lock (_flock_held): a thread that let it go here
        # would hold the log's lock while it waits to get the interpreter's back (up to a switch interval, 5 ms,
        # behind the compactor), and every other process's save would wait that long.
        # Taken by another process: it holds it ~10-20 us, so trying again for up to LOCK_SPIN seconds costs less
        # than going to sleep and being woken (two context switches, and a cold cache after them).
        if _flock_held is None:  # pragma: no cover
            fcntl.flock(self.fd, fcntl.LOCK_EX)
            return
        if _flock_held(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB) == 0:
            return
        until = time.perf_counter() + LOCK_SPIN
        while time.perf_counter() < until:
            if _flock_held(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB) == 0:
                return
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def unlock(self) -> None:
        if _flock_held is None or _flock_held(self.fd, fcntl.LOCK_UN) != 0:
            fcntl.flock(self.fd, fcntl.LOCK_UN)

    def get(self, field: int) -> int:
        return _U64.unpack_from(self.mm, field)[0]  # type: ignore[no-any-return]

    def put(self, field: int, value: int) -> None:
        try:
            _U64.pack_into(self.mm, field, value)
        except TypeError:  # what pack_into raises for a closed mapping; get raises ValueError, as callers expect
            if self.mm.closed:
                raise ValueError("the log's control page is closed (the log is no longer shared)") from None
            raise

    def fields(self) -> tuple[int, ...]:
        return _FIELDS.unpack_from(self.mm, 0)

    def close(self) -> None:
        with contextlib.suppress(ValueError, OSError):
            self.mm.close()
        with contextlib.suppress(OSError):
            os.close(self.fd)

    def clear_epoch(self) -> None:
        """Under the lock: stop every other process's appends (a new owner, before it recovers the log)."""
        self.lock()
        try:
            if self.get(0) == CTL_MAGIC:
                self.put(EPOCH, 0)
        finally:
            self.unlock()


def frames(mm: mmap.mmap | memoryview | bytes, pos: int, end: int, *, checked: bool) -> tuple[list[bytes], int]:
    """The payloads of the frames from ``pos`` up to ``end`` and where they stopped. ``checked``: the frames of a
    segment whose end is not known (a closed one: stop at its zero marker, or at anything not a whole, CRC-valid
    frame); otherwise ``end`` is a published end and every frame before it is whole."""
    out = []
    while pos + _FRAME.size <= end:
        length, crc = _FRAME.unpack_from(mm, pos)
        stop = pos + _FRAME.size + length
        if checked and (length == 0 or length > MAX_FRAME or stop > end):
            break
        payload = mm[pos + _FRAME.size:stop]
        if checked and zlib.crc32(payload) != crc:
            break
        out.append(bytes(payload))
        pos = stop
    return out, pos


def _segment_name(n: int) -> str:
    return f"wal-{n:08d}.log"


@dataclass
class SyncStats:
    """Syncs of the log to stable storage since it was opened: group commits (``fdatasync``), the syncs of
    segment files and of their directory (reserving, creating, closing and cutting segments), and the frames a
    lone saver wrote durably (``RWF_DSYNC``). Those are counted apart (they are serialised by the appends, the
    others by a lock of their own), so that neither path needs the other's lock."""

    synced: int = 0
    synced_seconds: float = 0.0
    written: int = 0
    written_seconds: float = 0.0

    @property
    def count(self) -> int:
        return self.synced + self.written

    @property
    def seconds(self) -> float:
        return self.synced_seconds + self.written_seconds


class WriteAheadLog:
    def __init__(self, directory: Path, *, power_safe: bool, stats: SyncStats | None = None) -> None:
        self.directory = directory
        self.power_safe = power_safe
        self.stats = stats if stats is not None else SyncStats()
        self._stats_lock = threading.Lock()  # syncs run under the sync lock, or (growing a segment) the store's
        self.problems: list[str] = []
        self._fd = -1
        self._mm: mmap.mmap | None = None
        self._size = 0
        self._pos = 0
        self._segment = 0
        self._written = 0  # bytes appended since open, over all segments
        self._synced = 0
        self._sync_lock = threading.Lock()
        self._next: tuple[int, mmap.mmap | None, int, int] | None = None  # the next segment, made ahead (prepare)
        self._dsync = power_safe and hasattr(os, "pwritev") and hasattr(os, "RWF_DSYNC")
        self.ctl: Control | None = None  # shared with other processes' appends (storage/sharedlog.py)

    # -- recovery ---------------------------------------------------------------------------------------------

    def segments(self) -> list[int]:
        out = []
        for p in self.directory.glob("wal-*.log"):
            try:
                out.append(int(p.name[4:-4]))
            except ValueError:
                continue
        return sorted(out)

    def recover(self) -> Iterator[bytes]:
        """Yield every intact payload of every segment, oldest first; cut torn tails. Then open for appends."""
        segs = self.segments()
        for i, n in enumerate(segs):
            yield from self._read_segment(self.directory / _segment_name(n), last=i == len(segs) - 1)
        self._open_segment((segs[-1] + 1) if segs else 1)

    def _read_segment(self, path: Path, *, last: bool) -> Iterator[bytes]:
        data = path.read_bytes()
        if len(data) < len(MAGIC) or data[: len(MAGIC)] != MAGIC:
            if len(data) <= len(MAGIC) and MAGIC.startswith(data):
                return  # created, crashed before the magic was complete: empty
            self._set_aside(path, data, 0, "bad segment header")
            return
        end = len(data)
        got, pos = frames(data, len(MAGIC), end, checked=True)
        yield from got
        if pos >= end:
            return
        if data.count(b"\x00", pos) == end - pos:
            self._truncate(path, pos)  # the zeroed, reserved rest of the segment: a clean end
        elif last and not self._valid_frame_after(data, pos):
            # A torn write can only be the last frame of the last segment, and only if nothing valid follows.
            log.warning("write-ahead log %s: cut a torn tail at byte %d", path.name, pos)
            self._truncate(path, pos)
        else:
            self._set_aside(path, data, pos, "checksum mismatch")

    @staticmethod
    def _valid_frame_after(data: bytes, pos: int) -> bool:
        """Is there any CRC-valid frame starting after ``pos``? (Then the damage is not a torn tail.)"""
        start = pos + 1
        end = len(data)
        while start + _FRAME.size <= end:
            length, crc = _FRAME.unpack_from(data, start)
            body_end = start + _FRAME.size + length
            if 0 < length <= MAX_FRAME and body_end <= end and zlib.crc32(data[start + 8 : body_end]) == crc:
                return True
            start += 1
            if start - pos > 1 << 20:  # bound the search: a frame header further on would have been found
                break
        return False

    def _sync(self, sync: Callable[[int], None], fd: int) -> None:
        """``sync(fd)``, timed into ``stats`` (one clock read before and after: cheap next to any sync)."""
        t0 = time.perf_counter()
        try:
            sync(fd)
        finally:
            dt = time.perf_counter() - t0
            with self._stats_lock:
                self.stats.synced += 1
                self.stats.synced_seconds += dt

    def _sync_dir(self) -> None:
        self._sync(lambda _fd: fsync_dir(self.directory), -1)

    def _truncate(self, path: Path, size: int) -> None:
        with open(path, "r+b") as f:
            f.truncate(size)
            f.flush()
            self._sync(os.fsync, f.fileno())

    def _set_aside(self, path: Path, data: bytes, pos: int, why: str) -> None:
        aside = path.with_name(path.name + ".corrupt")
        aside.write_bytes(data[pos:])
        self._truncate(path, pos)
        msg = (f"write-ahead log {path.name}: {why} at byte {pos}; {len(data) - pos} bytes kept in {aside.name}, "
               "records in them were not recovered")
        log.error(msg)
        self.problems.append(msg)

    # -- appending --------------------------------------------------------------------------------------------

    def _open_segment(self, n: int) -> None:
        self._fd, self._mm, self._size, self._pos = self._create_segment(n)
        self._segment = n

    def _create_segment(self, n: int) -> tuple[int, mmap.mmap | None, int, int]:
        """Open (or create) segment ``n`` with room reserved; on failure nothing is left behind."""
        path = self.directory / _segment_name(n)
        existed = path.exists()
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            used = os.fstat(fd).st_size
            if used == 0:
                write_all(fd, MAGIC)
                used = len(MAGIC)
            size = used + SEGMENT_RESERVE
            try:
                mm = self._map(fd, size)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                size = used + 64 * 1024  # nearly full: a small reservation still lets saves through
                mm = self._map(fd, size)
            if self.power_safe:
                self._sync(os.fsync, fd)
                self._sync_dir()
        except OSError:
            os.close(fd)
            if not existed:
                path.unlink(missing_ok=True)
            raise
        return fd, mm, size, used

    def _map(self, fd: int, size: int) -> mmap.mmap | None:
        """Reserve ``size`` bytes of file; in process mode, map them (power mode writes with pwrite)."""
        have = os.fstat(fd).st_size
        if self.power_safe and size > have:
            # Write real zeros: the file system then has nothing to convert when a sync covers these blocks
            # later (a fallocated, "unwritten" extent costs a journal commit on every fdatasync).
            zeros = bytes(1 << 20)
            pos = have
            while pos < size:
                pos += os.pwrite(fd, zeros[: min(len(zeros), size - pos)], pos)
            self._sync(os.fsync, fd)
        elif hasattr(os, "posix_fallocate"):
            os.posix_fallocate(fd, 0, size)  # real blocks now: ENOSPC here, not SIGBUS later
        elif have < size:  # pragma: no cover - platforms without posix_fallocate
            os.ftruncate(fd, size)
        return None if self.power_safe else mmap.mmap(fd, size)

    def append(self, payload: bytes, *, alone: bool = False) -> int:
        """Append one frame; the caller serialises appends. Returns the log position just past the frame.

        ``alone`` (power mode): no other writer is saving, so the frame may be written durably right here.
        """
        frame = _FRAME.pack(len(payload), zlib.crc32(payload)) + payload
        pos, end = self._pos, self._pos + len(frame)
        durable = False
        try:
            if end > self._size:
                self._grow(end)
            if self._mm is not None:
                self._mm[pos:end] = frame
            elif alone and self._dsync and self._synced == self._written:
                durable = self._write_durably(frame, pos)
            else:
                write_all_at(self._fd, frame, pos)  # power mode: a plain write, then fdatasync (faster than msync)
        except OSError as exc:
            raise StorageError(exc.errno, f"cannot append to the write-ahead log: {exc.strerror}") from exc
        self._pos = end
        self._written += len(frame)
        if durable:
            self._synced = max(self._synced, self._written)  # every earlier frame was durable already
        return self._written

    def _write_durably(self, frame: bytes, pos: int) -> bool:
        """Write ``frame`` with RWF_DSYNC (counted as a sync). False if the OS refused the flag: plainly written."""
        t0 = time.perf_counter()
        done = 0
        try:
            while done < len(frame):  # one call, but for a short write
                done += os.pwritev(self._fd, [frame[done:] if done else frame], pos + done, os.RWF_DSYNC)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                raise
            self._dsync = False  # an older kernel: write and fdatasync from now on
            write_all_at(self._fd, frame[done:], pos + done)
            return False
        stats = self.stats  # appends are serialised: no lock for these two
        stats.written += 1
        stats.written_seconds += time.perf_counter() - t0
        return True

    def _grow(self, need: int) -> None:
        size = max(need + SEGMENT_RESERVE, 2 * self._size)
        try:
            mm = self._map(self._fd, size)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
            size = need + 4096  # nearly full: just what this frame needs
            mm = self._map(self._fd, size)
        if self._mm is not None:
            self._mm.close()
        self._mm, self._size = mm, size
        if self.ctl is not None:
            self.ctl.put(SIZE, size)

    def _close_segment(self) -> None:
        """Unmap, cut the file to its used length, close. (Shared: other processes may have it mapped, and a
        frame one of them left half-written past the end: zeros mark the end instead, the length stays.)"""
        if self._mm is not None:
            if self.ctl is not None:
                self._mm[self._pos:self._pos + _FRAME.size] = bytes(_FRAME.size)
            self._mm.close()
        if self.ctl is None:
            os.ftruncate(self._fd, self._pos)
        if self.power_safe:
            self._sync(os.fsync, self._fd)
        os.close(self._fd)
        self._fd = -1

    def wait_durable(self, position: int) -> None:
        """Block until every frame up to ``position`` is on stable storage (group commit)."""
        while self._synced < position:
            with self._sync_lock:
                if self._synced >= position:
                    return
                target = self._written
                try:
                    self._sync(os.fdatasync, self._fd)
                except OSError as exc:
                    raise StorageError(exc.errno, f"cannot sync the write-ahead log: {exc.strerror}") from exc
                self._synced = max(self._synced, target)

    def prepare(self) -> None:
        """Make the next segment ahead (creating, reserving and mapping it; with ``power_safe``, zeroing and
        syncing it too), so that :meth:`rotate`, under the caller's write lock, only switches to it. Called by the
        one thread that rotates, outside that lock. A failure is left for ``rotate`` to meet and report. A crash
        leaves an empty segment, which recovery reads as such."""
        if self._next is None:
            with contextlib.suppress(OSError):
                self._next = self._create_segment(self._segment + 1)

    def rotate(self) -> int:
        """Start a new segment (caller serialises with appends). Returns the number of the last closed one."""
        with self._sync_lock:
            old = self._segment
            new, self._next = self._next, None
            if new is None:
                new = self._create_segment(old + 1)  # first: if the disk is full, the current segment stays
            self._close_segment()
            self._synced = self._written
            self._fd, self._mm, self._size, self._pos = new
            self._segment = old + 1
            ctl = self.ctl
            if ctl is not None:  # under the control lock (the store's rotation holds it)
                epoch = ctl.get(EPOCH)
                ctl.put(EPOCH, 0)  # a death before the epoch is back leaves the log unshared, never half-moved
                ctl.put(SEGMENT, self._segment)
                ctl.put(SIZE, self._size)
                ctl.put(HEAD, self._pos)
                ctl.put(EPOCH, epoch)
        return old

    # -- sharing with other processes (storage/sharedlog.py) ------------------------------------------------

    def share(self, ctl: Control, seq: int, flushed: int, epoch: int) -> bool:
        """Let other processes append (under ``ctl``'s lock, taken by the caller). Only a mapped log (process
        durability) is shared. Publishes where the log is, then the epoch."""
        if self._mm is None:
            return False
        segs = self.segments()
        ctl.put(EPOCH, 0)
        ctl.put(SEGMENT, self._segment)
        ctl.put(HEAD, self._pos)
        ctl.put(SEQ, seq)
        ctl.put(SIZE, self._size)
        ctl.put(OLDEST, segs[0] if segs else self._segment)
        ctl.put(FLUSHED, flushed)
        ctl.put(0, CTL_MAGIC)
        ctl.put(EPOCH, epoch)
        self.ctl = ctl
        return True

    def follow(self, *, locked: bool) -> tuple[list[bytes], bool]:
        """The frames other processes appended since this log's last append or follow, and whether they are all
        of what was published. ``locked``: under the control lock. Without it (this process only reads them), each
        frame's CRC is checked too, and the read stops at one that fails (not visible whole yet: the caller reads
        again under the lock)."""
        ctl = self.ctl
        assert ctl is not None and self._mm is not None
        head, size = ctl.get(HEAD), ctl.get(SIZE)
        if head <= self._pos:
            return [], True
        if size > self._size:  # another process grew the segment
            mm = mmap.mmap(self._fd, size)
            self._mm.close()
            self._mm, self._size = mm, size
        got, pos = frames(self._mm, self._pos, min(head, self._size), checked=not locked)
        self._written += pos - self._pos
        self._pos = pos
        return got, pos == head

    @property
    def end(self) -> int:
        """Where the next frame goes in the current segment (a shared log: how far this process has read)."""
        return self._pos

    def publish(self) -> None:
        """Under the control lock, after an append: the others' appends go after it."""
        assert self.ctl is not None
        self.ctl.put(HEAD, self._pos)

    def unshare(self) -> None:
        """Under the control lock: other processes stop appending (they send their saves to the owner)."""
        if self.ctl is not None:
            self.ctl.put(EPOCH, 0)
            self.ctl = None

    def remove_through(self, n: int) -> None:
        """Delete segments numbered ``n`` and below (their records are in committed shard blocks)."""
        for s in self.segments():
            if s <= n and s != self._segment:
                (self.directory / _segment_name(s)).unlink(missing_ok=True)

    def close(self) -> None:
        nxt, self._next = self._next, None
        if nxt is not None:  # made ahead, never written: not a segment to recover
            fd, mm, _size, _pos = nxt
            if mm is not None:
                mm.close()
            os.close(fd)
            (self.directory / _segment_name(self._segment + 1)).unlink(missing_ok=True)
        if self._fd >= 0:
            with self._sync_lock:
                self._close_segment()

