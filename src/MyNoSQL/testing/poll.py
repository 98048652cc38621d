"""Waiting for a condition with a deadline: the way to wait for replication in a test, never a fixed sleep."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def poll_until(probe: Callable[[], T], *, timeout: float = 10.0, interval: float = 0.1, what: str = "condition",
               ignore: tuple[type[Exception], ...] = ()) -> T:
    """Call ``probe`` until it returns a truthy value, and return that value.

    Bounded in time (``timeout`` seconds) and so in count: the pause between probes starts at 5 ms and doubles up
    to ``interval``. Exceptions of the types in ``ignore`` count as "not yet" (e.g. ``DocumentNotFound`` while a
    record is on its way). Raises ``TimeoutError`` naming ``what`` and the last value or exception seen.

    >>> poll_until(lambda: db.readdoc(id)["v"] == 2, timeout=5, what="v=2 on the peer", ignore=(KeyError,))
    """
    if timeout <= 0 or interval <= 0:
        raise ValueError("timeout and interval must be positive")
    deadline = time.monotonic() + timeout
    delay = min(0.005, interval)
    last: object = None
    for _ in range(int(timeout / delay) + 2):
        try:
            value = probe()
        except ignore as exc:
            last = exc
        else:
            if value:
                return value
            last = value
        left = deadline - time.monotonic()
        if left <= 0:
            break
        time.sleep(min(delay, left))  # the pause between probes
        delay = min(interval, delay * 2)
    raise TimeoutError(f"{what} not reached within {timeout:g} s (last: {last!r})")
