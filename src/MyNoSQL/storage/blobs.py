"""Attachment bytes: one file per distinct content, written and read in bounded chunks, compressed where it helps.

Layout, in the database folder (created with the first attachment)::

    attachments/<k[:2]>/<k>     a blob: the bytes of an attachment, k = SHA-256 of the bytes (hex)
    attachments/tmp/<r>.part    a blob being written (deleted on open: a crash left it)
    attachments/pending         blobs written since the last flush of the records that refer to them

Blob file (all integers little endian)::

    header, 32 bytes: 8s magic "MNSQATT1" | u8 version 1 | u8 flags 0 | u16 0 | u32 chunk_size (raw bytes per
                      chunk, 262144) | u64 length (raw bytes) | u32 chunks | u32 crc32 of the 28 bytes before
    chunks, back to back, each: u8 codec (0 stored as is, 1 zlib) | u8 0 | u16 0 | u32 stored_len | u32 raw_len
                      | u32 crc32 of the stored bytes | stored bytes

Every chunk holds ``chunk_size`` raw bytes but the last. Compression is tried on the first chunk (zlib level 1)
and kept for the whole blob only if that chunk shrank by 10% or more; content types that are compressed already
(JPEG, PNG, zip, video...) are never tried. Writing never holds more than a chunk in RAM, reading neither.

Crash safety: a blob is written to ``tmp/``, fsynced, its key appended to ``pending`` (fsynced) with the id of
the record it is written for, then renamed into place, and only then is the record that refers to it written
(the caller does that). Once a flush has put those records into shards, their ``pending`` lines are dropped. On
open, a blob named in ``pending`` that none of its records refers to is deleted (a crash came between the two
writes), and so is everything in ``tmp/``. Blobs that no leaf revision refers to any more are deleted by
:meth:`BlobStore.collect` (the database's ``compact``); blobs being written or read meanwhile are never.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import io
import logging
import os
import secrets
import struct
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

from ..errors import CorruptionError, StorageError
from ..records.attachments import AttachmentTooLarge
from .fileutil import atomic_write, fsync_dir, sweep_temp_files, write_all, write_all_at

log = logging.getLogger("MyNoSQL")

MAGIC = b"MNSQATT1"
VERSION = 1
CHUNK = 256 * 1024
_HEAD = struct.Struct("<8sBBHIQI")  # 28 bytes, then u32 crc32 of them
_HCRC = struct.Struct("<I")
HEADER_SIZE = _HEAD.size + _HCRC.size  # 32
_CHUNK = struct.Struct("<BBHIII")  # 16 bytes
RAW, ZLIB = 0, 1
_KEY_CHARS = frozenset("0123456789abcdef")


class BlobInfo(NamedTuple):
    key: str  # SHA-256 of the bytes, hex: the file's name
    md5: bytes  # MD5 of the bytes (CouchDB's digest)
    length: int  # bytes
    new: bool  # this write created the file (False: the same bytes were stored already)


def is_key(key: Any) -> bool:
    return type(key) is str and len(key) == 64 and _KEY_CHARS.issuperset(key)


JOURNAL_REWRITE = 256 * 1024  # a pending journal past this size is rewritten with only what is still pending


class _Pending:
    __slots__ = ("ids", "open", "seq")

    def __init__(self) -> None:
        self.open = 0  # writers that have not said how their record write ended
        self.seq = 0  # the highest change sequence of a record written that refers to the blob
        self.ids: set[str] = set()  # the records it was written for


class BlobStore:
    """The blobs of one database (thread-safe). Nothing is created on disk before the first blob."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self._lock = threading.Lock()
        self._collect_lock = threading.Lock()
        self._pins: collections.Counter[str] = collections.Counter()
        self._touched: set[str] | None = None  # while a collection runs: blobs written or re-used since it began
        self._pending: dict[str, _Pending] = {}
        self._journal: int | None = None  # fd of attachments/pending, open while lines are pending

    # -- paths ------------------------------------------------------------------------------------------------

    def path(self, key: str) -> Path:
        return self.dir / key[:2] / key

    def exists(self) -> bool:
        return self.dir.is_dir()

    def has(self, key: str) -> bool:
        return is_key(key) and self.path(key).is_file()

    def _ensure_dirs(self) -> None:
        tmp = self.dir / "tmp"
        if not tmp.is_dir():
            try:
                tmp.mkdir(parents=True, mode=0o700, exist_ok=True)
                fsync_dir(self.dir)
                fsync_dir(self.dir.parent)
            except OSError as exc:
                raise StorageError(exc.errno, f"cannot create {tmp}: {exc.strerror}") from exc

    # -- writing ----------------------------------------------------------------------------------------------

    def writer(self, *, compress: bool = True, max_bytes: int | None = None) -> BlobWriter:
        """A new blob, written in chunks (``write``), made durable by ``finish(for_id)`` (or dropped: ``abort``).
        ``compress``: worth trying (see :func:`MyNoSQL.records.attachments.worth_compressing`)."""
        self._ensure_dirs()
        return BlobWriter(self, compress=compress, max_bytes=max_bytes)

    def put(self, data: bytes, for_id: str, *, compress: bool = True) -> BlobInfo:
        """Store ``data`` (hashed first: bytes stored already are not written again). Pins the blob: call
        :meth:`release` once the record that refers to it is written (or was not)."""
        key = hashlib.sha256(data).hexdigest()
        md5 = hashlib.md5(data, usedforsecurity=False).digest()
        if self._reuse(key, for_id):
            return BlobInfo(key, md5, len(data), False)
        self._ensure_dirs()
        w = BlobWriter(self, compress=compress, max_bytes=None, known=(key, md5))
        try:
            view = memoryview(data)
            for i in range(0, len(data), CHUNK):
                w.write(view[i : i + CHUNK])
            return w.finish(for_id)
        except BaseException:
            w.abort()
            raise

    def _reuse(self, key: str, for_id: str) -> bool:
        """If the blob ``key`` is stored already: pin it for ``for_id`` and say so."""
        with self._lock:
            if not self.path(key).is_file():
                return False
            self._pin(key, for_id, new=False)
            return True

    def _install(self, tmp: Path, key: str, md5: bytes, length: int, for_id: str) -> BlobInfo:
        """A blob written and fsynced in ``tmp``: move it into place (or drop it: the same bytes are there)."""
        final = self.path(key)
        with self._lock:
            if final.is_file():
                with contextlib.suppress(OSError):
                    tmp.unlink()
                self._pin(key, for_id, new=False)
                return BlobInfo(key, md5, length, False)
            self._pin(key, for_id, new=True)  # the pending line is durable before the blob can be seen
            try:
                final.parent.mkdir(mode=0o700, exist_ok=True)
                os.replace(tmp, final)
                fsync_dir(final.parent)
            except OSError as exc:
                self._unpin(key)
                entry = self._pending.get(key)
                if entry is not None:
                    entry.open -= 1
                    if entry.open <= 0 and entry.seq == 0:
                        del self._pending[key]
                with contextlib.suppress(OSError):
                    tmp.unlink()
                raise StorageError(exc.errno, f"cannot store an attachment: {exc.strerror}") from exc
            return BlobInfo(key, md5, length, True)

    def _pin(self, key: str, for_id: str, *, new: bool) -> None:
        """Under the lock: ``key`` is in use by a writer until :meth:`release`."""
        self._pins[key] += 1
        if self._touched is not None:
            self._touched.add(key)
        entry = self._pending.get(key)
        if entry is None and new:
            entry = self._pending[key] = _Pending()
        if entry is not None:
            try:
                self._journal_line(key, for_id)
            except OSError as exc:
                self._pins[key] -= 1
                raise StorageError(exc.errno, f"cannot write {self.dir / 'pending'}: {exc.strerror}") from exc
            entry.open += 1
            entry.ids.add(for_id)

    def _unpin(self, key: str) -> None:
        self._pins[key] -= 1
        if self._pins[key] <= 0:
            del self._pins[key]

    @staticmethod
    def _line(key: str, for_id: str) -> bytes:
        return key.encode() + b" " + for_id.encode("utf-8", "surrogatepass").hex().encode() + b"\n"

    def _journal_line(self, key: str, for_id: str) -> None:
        if self._journal is None:
            self._journal = os.open(self.dir / "pending", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        write_all(self._journal, self._line(key, for_id))
        os.fsync(self._journal)

    def pin(self, key: str) -> None:
        """Keep ``key`` from being collected until :meth:`release` (a record about to refer to it again)."""
        with self._lock:
            self._pins[key] += 1
            if self._touched is not None:
                self._touched.add(key)

    def release(self, key: str, seq: int | None) -> None:
        """A writer is done with ``key``: its record was written with change sequence ``seq`` (None: it was not,
        and a blob that nothing else wrote is deleted at once)."""
        drop = False
        with self._lock:
            self._unpin(key)
            entry = self._pending.get(key)
            if entry is not None:
                entry.open -= 1
                if seq is not None:
                    entry.seq = max(entry.seq, seq)
                elif entry.open <= 0 and entry.seq == 0 and key not in self._pins:
                    del self._pending[key]
                    drop = True
            if drop:
                with contextlib.suppress(OSError):
                    self.path(key).unlink()

    def flushed(self, seq: int) -> None:
        """Records up to change sequence ``seq`` are in shards: their blobs need no ``pending`` line any more."""
        with self._lock:
            if not self._pending:
                return
            for key in [k for k, e in self._pending.items() if e.open <= 0 and e.seq <= seq]:
                del self._pending[key]
            if self._journal is None:
                return
            if not self._pending:
                os.close(self._journal)
                self._journal = None
                with contextlib.suppress(OSError):
                    os.truncate(self.dir / "pending", 0)
            elif os.fstat(self._journal).st_size > JOURNAL_REWRITE:  # writes never stop: keep it short
                with contextlib.suppress(OSError):
                    atomic_write(self.dir / "pending",
                                 b"".join(self._line(k, i) for k, e in self._pending.items() for i in e.ids))
                    os.close(self._journal)
                    self._journal = None

    # -- reading ----------------------------------------------------------------------------------------------

    def open(self, key: str) -> BlobReader:
        """A file-like reader of the blob ``key`` (``FileNotFoundError`` if there is none)."""
        if not is_key(key):
            raise FileNotFoundError(key)
        return BlobReader(self.path(key))

    def size_on_disk(self) -> int:
        total = 0
        for key in self.keys():
            with contextlib.suppress(OSError):
                total += self.path(key).stat().st_size
        return total

    def keys(self) -> Iterator[str]:
        """Every blob stored (a directory walk)."""
        if not self.dir.is_dir():
            return
        for sub in sorted(self.dir.iterdir()):
            if len(sub.name) == 2 and sub.is_dir():
                for p in sub.iterdir():
                    if is_key(p.name):
                        yield p.name

    # -- recovery and collection ------------------------------------------------------------------------------

    def recover(self, referenced: Callable[[str, str], bool]) -> list[str]:
        """On open: delete what a crash left in ``tmp/``, and return the blobs of ``pending`` that none of the
        records they were written for refers to (``referenced(key, id)``): maybe orphans of a crash between a blob
        and its record, but not certainly (the journal does not name every record that refers to a blob: one
        that re-used its bytes later, a line kept after its blob's record was flushed). They are not deleted
        here: :meth:`collect` deletes those that no record refers to (Store runs it once the store is open)."""
        if not self.dir.is_dir():
            return []
        tmp = self.dir / "tmp"
        if tmp.is_dir():
            for p in tmp.iterdir():
                with contextlib.suppress(OSError):
                    p.unlink()
        sweep_temp_files(self.dir)  # a rewrite of `pending` that a crash interrupted
        journal = self.dir / "pending"
        try:
            text = journal.read_bytes()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise StorageError(exc.errno, f"cannot read {journal}: {exc.strerror}") from exc
        ids: dict[str, set[str]] = {}
        for line in text.split(b"\n"):
            key, _, hexid = line.decode("ascii", "replace").partition(" ")
            if not is_key(key):
                continue  # a torn last line: its blob was never renamed into place
            try:
                ids.setdefault(key, set()).add(bytes.fromhex(hexid).decode("utf-8", "surrogatepass"))
            except ValueError:
                continue
        suspects = [key for key, owners in ids.items()
                    if self.path(key).is_file() and not any(referenced(key, id) for id in owners)]
        with contextlib.suppress(OSError):
            os.truncate(journal, 0)
        return suspects

    def collect(self, live_keys: Callable[[], Iterable[str]], only: Iterable[str] | None = None) -> tuple[int, int]:
        """Delete every blob (of ``only``, if given) that ``live_keys()`` (every blob a leaf revision refers to,
        computed now) does not name. Blobs written, re-used or pinned since the collection began are kept.
        Returns (blobs, bytes)."""
        if not self.dir.is_dir():
            return 0, 0
        with self._collect_lock:
            with self._lock:
                self._touched = set()
            try:
                candidates = list(self.keys()) if only is None else [k for k in only if self.has(k)]
                if not candidates:
                    return 0, 0
                live = set(live_keys())
                dropped, freed = 0, 0
                with self._lock:
                    keep = live | self._touched | set(self._pins) | set(self._pending)
                    for key in candidates:
                        if key in keep:
                            continue
                        p = self.path(key)
                        try:
                            size = p.stat().st_size
                            p.unlink()
                        except OSError:
                            continue
                        dropped += 1
                        freed += size
            finally:
                with self._lock:
                    self._touched = None
        return dropped, freed

    def close(self) -> None:
        with self._lock:
            if self._journal is not None:
                os.close(self._journal)
                self._journal = None


def _writev_all(fd: int, parts: list[bytes | memoryview]) -> None:
    """Write every byte of ``parts`` (one writev, then the rest if the kernel took less)."""
    total = sum(len(p) for p in parts)
    done = os.writev(fd, parts)
    if done < total:
        rest = b"".join(bytes(p) for p in parts)[done:]
        write_all(fd, rest)


class BlobWriter:
    """Writes one blob in chunks: ``write`` any number of times, then ``finish`` (or ``abort``)."""

    def __init__(self, store: BlobStore, *, compress: bool, max_bytes: int | None,
                 known: tuple[str, bytes] | None = None) -> None:
        """``known``: the SHA-256 (hex) and MD5 of the bytes to come, computed already (they are not again)."""
        self.store = store
        self.max_bytes = max_bytes
        self._known = known
        self.tmp = store.dir / "tmp" / f"{secrets.token_hex(12)}.part"
        try:
            self._fd: int | None = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            write_all(self._fd, bytes(HEADER_SIZE))
        except OSError as exc:
            raise StorageError(exc.errno, f"cannot write an attachment: {exc.strerror}") from exc
        self._buf = bytearray()
        self._md5 = hashlib.md5(usedforsecurity=False)
        self._sha = hashlib.sha256()
        self.length = 0
        self._chunks = 0
        self._compress: bool | None = None if compress else False  # None: decided on the first chunk

    def write(self, data: bytes | bytearray | memoryview) -> None:
        n = len(data)
        if not n:
            return
        self.length += n
        if self.max_bytes is not None and self.length > self.max_bytes:
            raise AttachmentTooLarge(f"the attachment is over the limit of {self.max_bytes} bytes")
        if self._known is None:
            self._md5.update(data)
            self._sha.update(data)
        view = memoryview(data).cast("B")
        buf = self._buf
        if buf:  # fill the chunk begun by the last write first
            need = CHUNK - len(buf)
            buf += view[:need]
            view = view[need:]
            if len(buf) < CHUNK:
                return
            self._emit(bytes(buf))
            buf.clear()
        while len(view) >= CHUNK:  # whole chunks straight from the caller's bytes: no copy
            self._emit(view[:CHUNK])
            view = view[CHUNK:]
        if len(view):
            buf += view

    def _emit(self, raw: bytes | memoryview) -> None:
        codec, stored = RAW, raw
        if self._compress is not False:
            packed = zlib.compress(raw, 1)
            if self._compress is None:
                self._compress = len(packed) <= len(raw) * 0.9
            if len(packed) < len(raw):
                codec, stored = ZLIB, packed
        assert self._fd is not None
        try:
            _writev_all(self._fd, [_CHUNK.pack(codec, 0, 0, len(stored), len(raw), zlib.crc32(stored)), stored])
        except OSError as exc:
            raise StorageError(exc.errno, f"cannot write an attachment: {exc.strerror}") from exc
        self._chunks += 1

    def finish(self, for_id: str) -> BlobInfo:
        """Make the blob durable and move it into place; pins it for the record ``for_id`` (the caller writes the
        record, then calls ``BlobStore.release``)."""
        try:
            if self._buf:
                self._emit(bytes(self._buf))
                self._buf.clear()
            head = _HEAD.pack(MAGIC, VERSION, 0, 0, CHUNK, self.length, self._chunks)
            assert self._fd is not None
            write_all_at(self._fd, head + _HCRC.pack(zlib.crc32(head)), 0)
            os.fsync(self._fd)
        except OSError as exc:
            self.abort()
            raise StorageError(exc.errno, f"cannot write an attachment: {exc.strerror}") from exc
        except BaseException:
            self.abort()
            raise
        os.close(self._fd)
        self._fd = None
        key, md5 = self._known or (self._sha.hexdigest(), self._md5.digest())
        return self.store._install(self.tmp, key, md5, self.length, for_id)

    def abort(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
        with contextlib.suppress(OSError):
            self.tmp.unlink()

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            self.abort()


class BlobReader(io.RawIOBase):
    """A blob as a binary file: ``read``, ``readinto``, ``seek``, ``tell``; one chunk in RAM at a time."""

    content_type = "application/octet-stream"  # set by the database for an attachment
    digest = ""
    revpos = 0

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self._f = open(path, "rb")  # noqa: SIM115 - closed by close()
        try:
            head = self._f.read(HEADER_SIZE)
            if len(head) != HEADER_SIZE or head[:8] != MAGIC \
                    or _HCRC.unpack_from(head, _HEAD.size)[0] != zlib.crc32(head[: _HEAD.size]):
                raise CorruptionError(f"{path}: not an attachment blob (bad header)", path=str(path))
            _magic, version, _flags, _z, self._chunk_size, self.length, self._nchunks = _HEAD.unpack_from(head)
            if version != VERSION or not 0 < self._chunk_size <= 1 << 26:
                raise CorruptionError(f"{path}: unsupported attachment blob (version {version})", path=str(path))
        except BaseException:
            self._f.close()
            raise
        self._pos = 0  # raw position
        self._cur = b""  # the decoded chunk holding _pos
        self._cur_start = 0  # its raw offset
        self._next_file = HEADER_SIZE  # file offset of the chunk after _cur
        self._index: list[int] | None = None  # file offset of each chunk (built by the first backward seek)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_CUR:
            offset += self._pos
        elif whence == io.SEEK_END:
            offset += self.length
        elif whence != io.SEEK_SET:
            raise ValueError(f"invalid whence {whence}")
        if offset < 0:
            raise ValueError("negative seek position")
        self._pos = offset
        return offset

    def _load(self, n: int) -> None:
        """Make ``_cur`` the decoded chunk ``n`` (the chunk holding ``_pos``)."""
        size = self._chunk_size
        want = n * size
        if self._cur and self._cur_start == want:
            return
        if not (self._cur and self._cur_start + size == want):  # not the next one: find it
            if self._index is None:
                self._index = self._walk()
            if n >= len(self._index):
                raise CorruptionError(f"{self.path}: chunk {n} is missing", path=str(self.path))
            self._next_file = self._index[n]
        f = self._f
        f.seek(self._next_file)
        head = f.read(_CHUNK.size)
        if len(head) != _CHUNK.size:
            raise CorruptionError(f"{self.path}: truncated attachment blob", path=str(self.path))
        codec, _a, _b, stored_len, raw_len, crc = _CHUNK.unpack(head)
        if stored_len > 2 * size + 1024 or raw_len > size:
            raise CorruptionError(f"{self.path}: damaged chunk header", path=str(self.path))
        stored = f.read(stored_len)
        if len(stored) != stored_len or zlib.crc32(stored) != crc:
            raise CorruptionError(f"{self.path}: chunk {n} fails its checksum", path=str(self.path))
        if codec == ZLIB:
            try:
                raw = zlib.decompress(stored)
            except zlib.error as exc:
                raise CorruptionError(f"{self.path}: chunk {n} does not decompress", path=str(self.path)) from exc
        elif codec == RAW:
            raw = stored
        else:
            raise CorruptionError(f"{self.path}: unknown chunk codec {codec}", path=str(self.path))
        if len(raw) != raw_len or (raw_len != size and want + raw_len != self.length):
            raise CorruptionError(f"{self.path}: chunk {n} has the wrong length", path=str(self.path))
        self._cur, self._cur_start = raw, want
        self._next_file += _CHUNK.size + stored_len

    def _walk(self) -> list[int]:
        out = []
        off = HEADER_SIZE
        f = self._f
        for _ in range(self._nchunks):
            f.seek(off)
            head = f.read(_CHUNK.size)
            if len(head) != _CHUNK.size:
                break
            out.append(off)
            off += _CHUNK.size + _CHUNK.unpack(head)[3]
        return out

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if self._pos >= self.length or not len(view):
            return 0
        self._load(self._pos // self._chunk_size)
        start = self._pos - self._cur_start
        n = min(len(view), len(self._cur) - start)
        view[:n] = self._cur[start : start + n]
        self._pos += n
        return n

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            size = max(0, self.length - self._pos)
        out = bytearray()
        while len(out) < size and self._pos < self.length:
            self._load(self._pos // self._chunk_size)
            start = self._pos - self._cur_start
            part = self._cur[start : start + size - len(out)]
            if not part:
                break
            out += part
            self._pos += len(part)
        return bytes(out)

    def chunks(self, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """The bytes from ``start`` to ``end`` (exclusive; None: the end), a chunk at a time."""
        end = self.length if end is None else min(end, self.length)
        self.seek(start)
        while self._pos < end:
            self._load(self._pos // self._chunk_size)
            off = self._pos - self._cur_start
            part = self._cur[off : off + end - self._pos]
            self._pos += len(part)
            yield part

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._f.close()
        super().close()
