"""The thread that runs a node's asyncio event loop, and the bounded pool of worker threads the loop hands
blocking work to (``asyncio.to_thread``: store writes under back-pressure, SQLite, fsyncs never run on the loop).

One owner (a :class:`~MyNoSQL.node.Node`, or ``mynosql serve``) starts it once and stops it once: ``stop``
cancels every task still running, joins the worker pool (a write already handed to it finishes first), stops
the loop and joins its thread. Nothing it started is left running after ``stop`` returns.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

WORKERS = 8  # blocking calls at once; more wait their turn (the loop itself never blocks)


class LoopThread:
    """An event loop in a thread of its own, with its own worker pool as the loop's default executor."""

    def __init__(self, name: str, *, workers: int = WORKERS) -> None:
        self.name = name
        self.loop = asyncio.new_event_loop()
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"{name}-work")
        self.loop.set_default_executor(self._pool)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._started = threading.Event()
        self._stopped = False

    def start(self) -> LoopThread:
        self._thread.start()
        self._started.wait()
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._started.set)
        self.loop.run_forever()

    @property
    def running(self) -> bool:
        return self._thread.is_alive() and not self._stopped

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None) -> T:
        """Run ``coro`` on the loop from another thread and wait for its result, at most ``timeout`` seconds
        (then it is cancelled and :class:`TimeoutError` raised)."""
        if not self.running:
            coro.close()
            raise RuntimeError(f"{self.name}: the event loop is stopped")
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return fut.result(timeout)
        except concurrent.futures.TimeoutError:  # not the builtin TimeoutError before Python 3.11
            fut.cancel()
            raise TimeoutError(f"{self.name}: no result within {timeout} s") from None

    def call_soon(self, fn: Any, *args: Any) -> None:
        """Schedule ``fn(*args)`` on the loop from any thread (nothing, once the loop is stopped)."""
        if self.running:
            with contextlib.suppress(RuntimeError):  # closed between the check and the call
                self.loop.call_soon_threadsafe(fn, *args)

    def stop(self) -> None:
        """Cancel every task, join the worker pool, stop the loop and join its thread. Idempotent."""
        if self._stopped or not self._thread.is_alive():
            self._stopped = True
            return

        async def shutdown() -> None:
            me = asyncio.current_task()
            tasks = [t for t in asyncio.all_tasks() if t is not me]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.loop.shutdown_asyncgens()

        asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result()
        self._stopped = True
        self._pool.shutdown(wait=True)  # a blocking call handed to a worker finishes before the store closes
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()
