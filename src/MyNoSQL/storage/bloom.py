"""A Bloom filter of the id hashes on disk: "certainly not stored" answered in RAM, without SQLite.

Most reads of an id that is not stored (a new record, a replicated one) would otherwise query the index: a call
that releases the GIL and, when the compactor thread is busy, waits for it to give the GIL back. Sixteen bits
per record of capacity (built for twice the records on disk: 4 MB at a million records) and four probes give
about one false "maybe" in 400 when full, one in 5,000 when half full.

Ten bits (one in a hundred when full) were too few for a bulk load of new ids: importing 1,000,000 records made
5,788 index queries from the importing thread for ids the filter could not rule out, 0.65 ms each (mostly
waiting for the GIL while the compactor packed): 3.75 s of a 43 s import.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import struct
from collections.abc import Sequence
from pathlib import Path

FILTER = "IDFILTER"  # the filter, shared with other processes that append to the log (storage/sharedlog.py)
_MAGIC = 0x31544C464449534E  # "NSIDFLT1"
_HEAD = struct.Struct("<QQQ")  # magic, retired (1: a newer filter replaced it), m
_HEADER = 64


class Bloom:
    BITS_PER_KEY = 16

    def __init__(self, capacity: int, folder: Path | None = None) -> None:
        """``folder``: keep the bits in a mapped file there (``IDFILTER`` once :meth:`publish` ed), for the other
        processes that have the database open to read."""
        self.capacity = max(capacity, 1 << 14)
        self.m = self.capacity * self.BITS_PER_KEY
        self.count = 0
        self.folder = folder
        self._mm: mmap.mmap | None = None
        self.bits: bytearray | memoryview
        if folder is None:
            self.bits = bytearray(self.m // 8 + 1)
            return
        tmp = folder / (FILTER + ".tmp")
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.ftruncate(fd, _HEADER + self.m // 8 + 1)
            self._mm = mmap.mmap(fd, _HEADER + self.m // 8 + 1)
        finally:
            os.close(fd)
        _HEAD.pack_into(self._mm, 0, _MAGIC, 0, self.m)
        self.bits = memoryview(self._mm)[_HEADER:]

    def publish(self) -> None:
        """Built: other processes may read it (it replaces the file of the filter before it)."""
        assert self.folder is not None
        os.replace(self.folder / (FILTER + ".tmp"), self.folder / FILTER)

    def retire(self) -> None:
        """A newer filter replaced this one (or the database closes): readers drop it."""
        if self._mm is not None:
            with contextlib.suppress(ValueError):
                _HEAD.pack_into(self._mm, 0, _MAGIC, 1, self.m)

    @staticmethod
    def remove(folder: Path) -> None:
        """The filter file of a previous owner: not to be trusted by anyone (a new owner, before it opens)."""
        for name in (FILTER, FILTER + ".tmp"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(folder / name)

    def _probes(self, h: int) -> tuple[int, int, int, int]:
        a = h & 0xFFFFFFFF
        b = (h >> 32) & 0xFFFFFFFF | 1
        m = self.m
        return a % m, (a + b) % m, (a + 2 * b) % m, (a + 3 * b) % m

    def add_all(self, hashes: Sequence[int]) -> None:
        """Add the id hashes of a flush (or of a rebuild)."""
        # _probes inlined: this runs in the compactor thread, holding the GIL, for every record a flush packs
        bits, m = self.bits, self.m
        for h in hashes:
            a = h & 0xFFFFFFFF
            b = (h >> 32) & 0xFFFFFFFF | 1
            p = a % m
            bits[p >> 3] |= 1 << (p & 7)
            p = (a + b) % m
            bits[p >> 3] |= 1 << (p & 7)
            p = (a + 2 * b) % m
            bits[p >> 3] |= 1 << (p & 7)
            p = (a + 3 * b) % m
            bits[p >> 3] |= 1 << (p & 7)
        self.count += len(hashes)

    def __contains__(self, h: int) -> bool:
        # _probes inlined, each probe tested as soon as it is known (most ids asked about are not there)
        bits, m = self.bits, self.m
        a = h & 0xFFFFFFFF
        b = (h >> 32) & 0xFFFFFFFF | 1
        p = a % m
        if not bits[p >> 3] & (1 << (p & 7)):
            return False
        p = (a + b) % m
        if not bits[p >> 3] & (1 << (p & 7)):
            return False
        p = (a + 2 * b) % m
        if not bits[p >> 3] & (1 << (p & 7)):
            return False
        p = (a + 3 * b) % m
        return bool(bits[p >> 3] & (1 << (p & 7)))

    @property
    def full(self) -> bool:
        return self.count > self.capacity


class SharedBloom(Bloom):
    """Another process's view of the filter file ``IDFILTER`` (read-only): ``h in filter`` as :class:`Bloom`;
    :attr:`current` goes False once the owner replaced or retired it."""

    def __init__(self, folder: Path) -> None:  # not Bloom's: nothing to build, the owner's bits are read
        fd = os.open(folder / FILTER, os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            self._mm = mmap.mmap(fd, size, access=mmap.ACCESS_READ)
        finally:
            os.close(fd)
        magic, _retired, m = _HEAD.unpack_from(self._mm, 0)
        if magic != _MAGIC or size < _HEADER + m // 8 + 1:
            self._mm.close()
            raise ValueError("not a filter file")
        self.m = m
        self.bits = memoryview(self._mm)[_HEADER:]
        self.capacity, self.count, self.folder = m // self.BITS_PER_KEY, 0, None

    @property
    def current(self) -> bool:
        assert self._mm is not None
        return _HEAD.unpack_from(self._mm, 0)[1] == 0  # type: ignore[no-any-return]


    def close(self) -> None:
        assert isinstance(self.bits, memoryview) and self._mm is not None
        self.bits.release()
        self._mm.close()
