"""RAM caches: decoded records (weak-value map + bounded LRU) and decompressed blocks (LRU bounded in bytes).

Records that nothing uses any more are purged: the LRU holds at most ``capacity`` states; a state evicted from
it stays reachable through the weak-value map only while something else (a pending write, an iterator, a
replication batch) still holds it, and vanishes with the last reference.

The record LRU is a *second chance* (CLOCK) approximation: a hit only sets the value's ``hit`` flag instead of
moving the entry (``move_to_end`` was a third of a cached ``readdoc``); eviction takes the oldest entry and, if
it was hit since it was last looked at, clears the flag and moves it to the young end instead.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

K = TypeVar("K")


class _Hittable(Protocol):
    hit: bool


V = TypeVar("V", bound=_Hittable)


class RecordCache(Generic[K, V]):
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._lru: OrderedDict[K, V] = OrderedDict()
        self._weak: weakref.WeakValueDictionary[K, V] = weakref.WeakValueDictionary()
        # The map's own dict of weak references (CPython's WeakValueDictionary.data): a miss there costs no KeyError
        # raised and caught, as WeakValueDictionary.get and .pop do (~0.4 and ~1 us of every cold read).
        self._wdata: dict[K, Callable[[], V | None]] = self._weak.data  # type: ignore[attr-defined]
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        value = self._lru.get(key)
        if value is not None:
            value.hit = True
            return value
        ref = self._wdata.get(key)
        value = ref() if ref is not None else None
        if value is not None:
            self.put(key, value)
        return value

    def put(self, key: K, value: V) -> None:
        with self._lock:
            lru = self._lru
            lru.pop(key, None)
            self._wdata.pop(key, None)  # the LRU holds it now; an older weak entry must not shadow it later
            chances = len(lru)  # bounded even while readers keep setting flags
            while len(lru) >= self.capacity:  # make room first: the newcomer is not a candidate
                old_key, old = lru.popitem(last=False)
                if old.hit and chances > 0:
                    chances -= 1
                    old.hit = False
                    lru[old_key] = old  # read since it was last looked at: a second chance at the young end
                    continue
                # Evicted: it stays findable only while something else still holds it (a pending write, an
                # iterator, a replication batch). Entering the weak map here, not on every put, keeps reads cheap.
                self._weak[old_key] = old
            lru[key] = value

    def refresh(self, key: K, value: V) -> None:
        """Replace the cached value of ``key`` if there is one (a newer state of a cached record)."""
        if key in self._lru:
            self.put(key, value)
            return
        ref = self._wdata.get(key)  # `key in self._weak` is Python code (this runs for every record a flush packs)
        if ref is not None and ref() is not None:
            self.put(key, value)

    def discard(self, key: K) -> None:
        """Forget ``key`` (a record that no longer exists)."""
        with self._lock:
            self._lru.pop(key, None)
            self._weak.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._lru.clear()
            self._weak.clear()

    def __len__(self) -> int:
        return len(self._lru)


class BlockCache:
    """Decompressed blocks by block number, bounded by the total bytes they hold."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._lru: OrderedDict[int, list[bytes]] = OrderedDict()
        self._sizes: dict[int, int] = {}
        self._total = 0
        self._lock = threading.Lock()

    def get(self, bno: int) -> list[bytes] | None:
        with self._lock:
            value = self._lru.get(bno)
            if value is not None:
                self._lru.move_to_end(bno)
            return value

    def put(self, bno: int, records: list[bytes]) -> None:
        size = sum(map(len, records)) + 64 * len(records)
        if size > self.max_bytes:
            return
        with self._lock:
            if bno in self._lru:
                return
            self._lru[bno] = records
            self._sizes[bno] = size
            self._total += size
            while self._total > self.max_bytes:
                old, _ = self._lru.popitem(last=False)
                self._total -= self._sizes.pop(old)

    def discard(self, bno: int) -> None:
        with self._lock:
            if self._lru.pop(bno, None) is not None:
                self._total -= self._sizes.pop(bno)

    def clear(self) -> None:
        with self._lock:
            self._lru.clear()
            self._sizes.clear()
            self._total = 0
