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

from collections.abc import Sequence


class Bloom:
    BITS_PER_KEY = 16

    def __init__(self, capacity: int) -> None:
        self.capacity = max(capacity, 1 << 14)
        self.m = self.capacity * self.BITS_PER_KEY
        self.bits = bytearray(self.m // 8 + 1)
        self.count = 0

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
