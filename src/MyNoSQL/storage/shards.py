"""Shard files: append-only sequences of LZMA-compressed blocks of records.

A shard file starts with the 8-byte magic ``MNSQSHD1`` and then holds blocks, one after the other::

    block header (48 bytes, little endian)
      magic      4s   b"MNBK"
      version    u8   1
      flags      u8   the payload's codec: 0 raw LZMA2 (64 KiB dictionary), 1 raw DEFLATE
      count      u16  records in the block (1..255)
      raw_len    u32  length of the decompressed payload
      comp_len   u32  length of the compressed payload that follows the header
      bno        u64  block number (global, increasing in the order blocks were written)
      first_seq  u64  change sequence of the first record
      last_seq   u64  change sequence of the last record
      crc        u32  crc32 of the compressed payload
      hcrc       u32  crc32 of the 44 header bytes before it
    payload: compressed (raw LZMA2, lzma.FORMAT_RAW; or raw DEFLATE, zlib wbits -15) form of
      count x u32 record lengths, then the records themselves

LZMA2 is the default codec (``Options.codec``) and makes the smallest blocks; the compactor packs DEFLATE blocks
while it is behind the savers and re-packs them with LZMA2 when idle (store.py). ``codec="deflate"`` packs only
DEFLATE: on small JSON records ~5x cheaper to compress and ~7x cheaper to decompress for ~4% more bytes.
Blocks written before codecs existed have flags 0 (LZMA2): they read as they always did.

Blocks are written in change-sequence order, so a shard file is also a slice of the changes feed. The index
(SQLite) records which byte length of each shard is committed; anything past it is the tail of a flush that
crashed before its index commit (those records are still in the write-ahead log) and is cut on open.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import lzma
import os
import struct
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import CorruptionError, StorageError
from .fileutil import fsync_dir, write_all, write_all_at

log = logging.getLogger("MyNoSQL")

MAGIC = b"MNSQSHD1"
BLOCK_MAGIC = b"MNBK"
VERSION = 1
_HEAD = struct.Struct("<4sBBHIIQQQI")
_HCRC = struct.Struct("<I")
HEADER_SIZE = _HEAD.size + _HCRC.size  # 48
CODEC_LZMA = 0  # raw LZMA2, decoded with FILTERS
CODEC_DEFLATE = 1  # raw DEFLATE (RFC 1951), zlib wbits -15
CODECS = (CODEC_LZMA, CODEC_DEFLATE)
DEFLATE_LEVEL = 9  # ~1.5% smaller than level 6 on blocks of ~15-30 KB of records, for about the same time
# The level of a block packed while the compactor is behind the savers (re-packed with LZMA2 when idle): on
# bench/local.py's records in blocks of 255, 80.1 bytes a record for ~8.4 us of compression against 77.0 for ~18.
DEFLATE_FAST_LEVEL = 4
# What a reader needs: raw LZMA2 with a 64 KiB dictionary (lc/lp/pb travel inside the LZMA2 stream).
FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 6, "dict_size": 1 << 16}]
# How the compactor encodes (not part of the format): preset 6 with a binary-tree match finder of 3-byte hashes,
# 32-byte nice length and pb=0 (records are text, not 4-byte aligned). On ~360-byte JSON-ish records in blocks of
# 64 this compresses ~1.3x faster than plain preset 6 for the same size (within 0.2%).
ENCODE_FILTERS = [{**FILTERS[0], "mf": lzma.MF_BT3, "nice_len": 32, "pb": 0}]


_MALLOC_TUNED = False


def tune_malloc() -> None:
    """Let glibc's malloc keep the LZMA encoder's memory between blocks (once per process).

    Each ``lzma.compress`` builds an encoder of ~1 MB in a few allocations of 128 KiB-1 MiB. With glibc's default
    thresholds they are mapped fresh and returned on every call: ~230 us of page faults per block, spent holding
    the GIL (the encoder is built before the GIL is released), against ~20 us with the heap keeping them. So,
    as ``../shared/GUIDE.md`` measured: allocations under 1 MiB come from the heap (M_MMAP_THRESHOLD) and up to
    2 MiB of free heap top is kept (M_TRIM_THRESHOLD). Both are below what glibc's own dynamic thresholds may reach
    (32 MiB / 64 MiB). Process-wide: ``MYNOSQL_MALLOPT=0`` leaves malloc alone; other C libraries are not touched.
    """
    global _MALLOC_TUNED
    if _MALLOC_TUNED or os.environ.get("MYNOSQL_MALLOPT") == "0":
        return
    _MALLOC_TUNED = True
    try:
        if not (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc"):
            return
        mallopt = ctypes.CDLL(None).mallopt
    except (ValueError, OSError, AttributeError):  # not glibc (no such confstr name, no mallopt)
        return
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    mallopt(m_mmap_threshold, 1 << 20)
    mallopt(m_trim_threshold, 2 << 20)


def shard_name(n: int) -> str:
    return f"shard-{n:06d}.msd"


@dataclass(frozen=True)
class BlockInfo:
    bno: int
    shard: int
    offset: int
    length: int  # header + compressed payload
    count: int
    first_seq: int
    last_seq: int


def deflate(raw: bytes, level: int = DEFLATE_LEVEL) -> bytes:
    # Z_FILTERED (fewer short matches, more literals for the Huffman coder): ~4.5% smaller than the default
    # strategy on bench/local.py's records (78.8 against 82.6 bytes a record in blocks of 128), for ~5% more time.
    c = zlib.compressobj(level, zlib.DEFLATED, -15, 9, zlib.Z_FILTERED)
    return c.compress(raw) + c.flush()


def pack_block(bno: int, records: Sequence[bytes], first_seq: int, last_seq: int,
               codec: int = CODEC_LZMA, level: int = DEFLATE_LEVEL) -> bytes:
    """A block of ``records``; ``codec`` CODEC_LZMA (the normal one) or CODEC_DEFLATE (the fast one, at
    ``level``)."""
    raw = b"".join((struct.pack(f"<{len(records)}I", *map(len, records)), *records))
    if codec == CODEC_DEFLATE:
        comp = deflate(raw, level)
    else:
        comp = lzma.compress(raw, format=lzma.FORMAT_RAW, filters=ENCODE_FILTERS)
    head = _HEAD.pack(BLOCK_MAGIC, VERSION, codec, len(records), len(raw), len(comp), bno, first_seq, last_seq,
                      zlib.crc32(comp))
    return head + _HCRC.pack(zlib.crc32(head)) + comp


def parse_header(buf: bytes, where: str) -> tuple[int, int, int, int, int, int, int, int]:
    """Check and unpack a block header: (count, raw_len, comp_len, bno, first_seq, last_seq, crc, codec)."""
    if len(buf) < HEADER_SIZE:
        raise CorruptionError(f"{where}: truncated block header", path=where)
    head = buf[: _HEAD.size]
    (hcrc,) = _HCRC.unpack_from(buf, _HEAD.size)
    magic, version, flags, count, raw_len, comp_len, bno, first_seq, last_seq, crc = _HEAD.unpack(head)
    if magic != BLOCK_MAGIC or zlib.crc32(head) != hcrc:
        raise CorruptionError(f"{where}: damaged block header", path=where)
    if version != VERSION:
        raise CorruptionError(f"{where}: block format version {version} is not supported", path=where)
    if flags not in CODECS:
        raise CorruptionError(f"{where}: block codec {flags} is not supported", path=where)
    return count, raw_len, comp_len, bno, first_seq, last_seq, crc, flags


def unpack_payload(comp: bytes, count: int, raw_len: int, crc: int, where: str,
                   codec: int = CODEC_LZMA) -> list[bytes]:
    if zlib.crc32(comp) != crc:
        raise CorruptionError(f"{where}: block checksum mismatch", path=where)
    try:
        if codec == CODEC_DEFLATE:
            d = zlib.decompressobj(-15)
            raw = d.decompress(comp, raw_len + 1)
            if not d.eof:
                raise zlib.error("the stream does not end where the block does")
        else:
            raw = lzma.decompress(comp, format=lzma.FORMAT_RAW, filters=FILTERS)
    except (lzma.LZMAError, zlib.error) as exc:
        raise CorruptionError(f"{where}: block does not decompress: {exc}", path=where) from exc
    if len(raw) != raw_len or count * 4 > raw_len:
        raise CorruptionError(f"{where}: block length mismatch", path=where)
    lens = struct.unpack_from(f"<{count}I", raw, 0)
    out = []
    pos = count * 4
    for n in lens:
        out.append(raw[pos : pos + n])
        pos += n
    if pos != raw_len:
        raise CorruptionError(f"{where}: block record table mismatch", path=where)
    return out


class ShardFiles:
    """The shard files of one database: append blocks to the newest, read blocks from any."""

    def __init__(self, directory: Path, *, max_bytes: int) -> None:
        tune_malloc()
        self.directory = directory
        self.max_bytes = max_bytes
        self._fds: dict[int, int] = {}
        self._sizes: dict[int, int] = {}
        self._roll = False
        self._names: dict[int, str] = {}
        self.problems: list[str] = []

    def path(self, n: int) -> Path:
        return self.directory / shard_name(n)

    def existing(self) -> list[int]:
        out = []
        for p in self.directory.glob("shard-*.msd"):
            with contextlib.suppress(ValueError):
                out.append(int(p.name[6:-4]))
        return sorted(out)

    def open(self, committed: dict[int, int]) -> None:
        """Open shard files, cutting each back to its committed length (uncommitted tails are crash debris)."""
        for n in self.existing():
            if n not in committed:
                # Created by a flush that crashed before its index commit: nothing references it.
                self.path(n).unlink()
                continue
        for n, size in committed.items():
            path = self.path(n)
            if not path.exists():
                # Reads of its records raise CorruptionError; everything else stays readable.
                self.problems.append(f"shard file {path.name} is missing")
                self._roll = True
                self._sizes[n] = size
                continue
            fd = os.open(path, os.O_RDWR)
            actual = os.fstat(fd).st_size
            if actual > size:
                os.ftruncate(fd, size)
            elif actual < size:
                self.problems.append(f"shard file {path.name} is shorter than committed ({actual} < {size} bytes)")
                self._roll = True  # never append after a hole
            self._fds[n] = fd
            self._sizes[n] = size
        for msg in self.problems:
            log.error("%s: %s", self.directory, msg)

    @property
    def current(self) -> int:
        return max(self._sizes) if self._sizes else 0

    def readable(self, n: int) -> bool:
        return n in self._fds

    @property
    def appending(self) -> int:
        """The shard the next append goes to (0 if a new one will be started)."""
        return 0 if self._roll else self.current

    def sizes(self) -> dict[int, int]:
        return dict(self._sizes)

    def append(self, blocks: Sequence[tuple[int, bytes, int, int, int]]) -> list[BlockInfo]:
        """Append packed blocks ``(bno, data, count, first_seq, last_seq)`` and fsync. Single writer.

        The blocks bound for one shard go out in one ``pwrite``: every system call releases the GIL, and taking
        it back from a thread running Python (a busy saver) can cost a whole switch interval (5 ms), so a write
        per block made a 64-block flush wait ~0.6 s under a busy writer.
        """
        infos: list[BlockInfo] = []
        runs: dict[int, tuple[int, list[bytes]]] = {}  # shard -> (offset of its first new block, data)
        before = dict(self._sizes)
        roll = self._roll
        try:
            for bno, data, count, first_seq, last_seq in blocks:
                n = self.current
                if n == 0 or self._roll or (self._sizes[n] + len(data) > self.max_bytes
                                            and self._sizes[n] > len(MAGIC)):
                    n = self._create(n + 1)
                    self._roll = False
                offset = self._sizes[n]
                runs.setdefault(n, (offset, []))[1].append(data)
                self._sizes[n] = offset + len(data)
                infos.append(BlockInfo(bno, n, offset, len(data), count, first_seq, last_seq))
            for n, (offset, parts) in runs.items():
                write_all_at(self._fds[n], b"".join(parts), offset)
            for n in runs:
                os.fsync(self._fds[n])
        except OSError as exc:
            # Nothing of this append may stay: a half-written block would sit in the middle of the shard.
            self._roll = roll
            try:
                self.rollback(before)
            except OSError as exc2:
                log.error("%s: could not cut back a failed append: %s", self.directory, exc2)
            raise StorageError(exc.errno, f"cannot write shard file: {exc.strerror}") from exc
        return infos

    def roll(self) -> None:
        """Make the next append start a new shard file."""
        self._roll = True

    def rollback(self, sizes: dict[int, int]) -> None:
        """Forget appends past ``sizes`` (after a failed append or a failed index commit)."""
        for n in list(self._sizes):
            if n not in sizes:
                self.remove(n)
                continue
            fd = self._fds.get(n)
            if fd is not None and os.fstat(fd).st_size > sizes[n]:  # a half-written block counts too
                os.ftruncate(fd, sizes[n])
            self._sizes[n] = sizes[n]

    def _create(self, n: int) -> int:
        path = self.path(n)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        write_all(fd, MAGIC)
        os.fsync(fd)
        fsync_dir(self.directory)
        self._fds[n] = fd
        self._sizes[n] = len(MAGIC)
        return n

    def read_block(self, shard: int, offset: int, length: int) -> list[bytes]:
        fd = self._fds.get(shard)
        if fd is None:
            where = str(self.path(shard))
            raise CorruptionError(f"{where}@{offset}: shard file is missing", path=where)
        buf = os.pread(fd, length, offset)
        if len(buf) != length:
            where = str(self.path(shard))
            raise CorruptionError(f"{where}@{offset}: block is truncated", path=where)
        where = self._names.get(shard) or self._names.setdefault(shard, str(self.path(shard)))
        count, raw_len, comp_len, _bno, _f, _l, crc, codec = parse_header(buf, where)
        if HEADER_SIZE + comp_len != length:
            raise CorruptionError(f"{where}@{offset}: block length mismatch", path=where)
        return unpack_payload(buf[HEADER_SIZE:], count, raw_len, crc, where, codec)

    def scan(self, shard: int) -> Iterator[tuple[int, int, tuple[int, int, int, int, int, int, int, int]]]:
        """Walk a shard's block headers: (offset, length, header fields). Raises CorruptionError on damage."""
        fd = self._fds[shard]
        pos = len(MAGIC)
        end = self._sizes[shard]
        while pos < end:
            head = os.pread(fd, HEADER_SIZE, pos)
            fields = parse_header(head, f"{self.path(shard)}@{pos}")
            length = HEADER_SIZE + fields[2]
            if pos + length > end:
                raise CorruptionError(f"{self.path(shard)}@{pos}: block runs past the end", path=str(self.path(shard)))
            yield pos, length, fields
            pos += length

    def remove(self, n: int) -> None:
        fd = self._fds.pop(n, None)
        self._sizes.pop(n, None)
        if fd is not None:
            os.close(fd)
        self.path(n).unlink(missing_ok=True)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
