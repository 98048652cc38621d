"""One-shot replication between any two endpoints (a local database or a database URL), from sync code."""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
from collections.abc import Callable
from typing import Any

from ..database import Database
from ..options import Options
from .endpoints import Endpoint, HttpEndpoint, LocalEndpoint, client_session
from .replicator import replicate

Target = Database | str | Callable[[], Database]


async def _run(source: Database | str, target: Target, timeout: float, batch_size: int,
               opts: Options, progress: Callable[[int, int | None], None] | None) -> dict[str, Any]:
    async with client_session(opts) as session:

        def endpoint(x: Database | str) -> Endpoint:
            return LocalEndpoint(x) if isinstance(x, Database) else HttpEndpoint(session, x, timeout=timeout)

        src = endpoint(source)
        if callable(target) and not isinstance(target, (Database, str)):
            await src.info()  # the source answered: only now is the target made (a failed run creates nothing)
            target = await asyncio.to_thread(target)
        tgt = endpoint(target)
        if isinstance(tgt, HttpEndpoint):
            await tgt.ensure_exists()
        result = await replicate(src, tgt, batch_size=batch_size, progress=progress)
        return dataclasses.asdict(result)


def replicate_once(source: Database | str, target: Target, *, timeout: float = 60.0,
                   batch_size: int = 1000, options: Options | None = None,
                   progress: Callable[[int, int | None], None] | None = None) -> dict[str, Any]:
    """Copy every revision ``target`` lacks from ``source`` (a Database, or a database URL such as
    ``http://user:pass@host:5984/db``), checkpointed. Blocks until done; returns counts.

    ``target`` may also be a function that opens (creating) the target database: it is called only once the
    source has answered, so a replication that cannot start creates nothing.

    ``progress(changes processed, total)`` is called after each batch (in the calling thread); ``total`` is an
    upper bound from the source's ``update_seq`` (None if that is not a number: see ``replicate``).

    Called from a thread where an event loop runs (a Jupyter notebook, a sync call from async code), the pass
    runs on a loop of its own in a helper thread (``progress`` is then called there) while this thread waits."""
    db = source if isinstance(source, Database) else target if isinstance(target, Database) else None
    opts = options or (db.options if db is not None else Options())

    def run() -> dict[str, Any]:
        return asyncio.run(_run(source, target, timeout, batch_size, opts, progress))

    try:
        asyncio.get_running_loop()
    except RuntimeError:  # the usual case: no loop in this thread
        return run()
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="MyNoSQL-oneshot") as pool:
        return pool.submit(run).result()
