"""Live queries: a Mango query whose result is kept, and reported as it changes (``Database.observe``).

A :class:`LiveQuery` runs its query once, then listens to every write of the database (local saves and deletions,
and revisions merged by replication alike: they all go through the store's listeners) and reports, after the
write that changed the result, which records were added to it, changed in it, or removed from it.

Without ``limit`` (and ``skip``), a write is judged on its own: the record matches or not, was in the result or
not; no query runs. With ``limit``, a write that can change the first ``limit`` records (the record is among
them, or sorts before the last of them, or the result is not full) runs the query again (an index makes that a
read of ``limit`` records) and reports the difference.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

from .query import Hit, Plan, py_spec, python_names
from .records.collate import encode_key
from .records.mango import Path, compile_selector, match_doc, parse_fields, parse_sort, sort_key
from .records.revtree import DocState

log = logging.getLogger("MyNoSQL")


@dataclasses.dataclass(frozen=True)
class QueryChange:
    """What changed in a live query's result: records that entered it, records in it with a new revision, and
    records that left it (as they were last reported). ``initial``: the first report, the whole result."""

    added: list[dict[str, Any]]
    changed: list[dict[str, Any]]
    removed: list[dict[str, Any]]
    initial: bool = False


_STOP = object()


class LiveQuery:
    """A live query; see :meth:`MyNoSQL.observe`. Stop it with :meth:`stop` (or ``with``)."""

    def __init__(self, engine: Any, selector: dict[str, Any], callback: Callable[[QueryChange], None] | None, *,
                 sort: list[Any] | None = None, limit: int | None = None, skip: int = 0,
                 fields: list[str] | None = None, python: bool = True) -> None:
        self._engine = engine
        self._python = python
        self._selector = python_names(selector) if python else selector
        self._sort = py_spec(sort) if python else sort
        self._fields = py_spec(fields) if python else fields
        self._limit, self._skip = limit, skip
        self._node = compile_selector(self._selector, python=python)
        self._test = self._node.test
        self._paths, self._desc = parse_sort(self._sort)
        self._fpaths = parse_fields(self._fields)
        self._callback = callback
        self._queue: queue.SimpleQueue[Any] | None = queue.SimpleQueue() if callback is None else None
        self._lock = threading.Lock()
        self._rows: dict[str, tuple[bytes, str, dict[str, Any]]] = {}  # id -> (sort key, rev, record)
        self._plan: tuple[int, Plan] | None = None  # planned once, again only when the indexes change
        self._stopped = False
        with self._lock:
            self._unlisten = engine.store.add_listener(self._on_write)
            first = self._query()
            self._rows = first
        self._emit(QueryChange([r for _k, _rev, r in self._ordered(first)], [], [], initial=True))

    # -- the result ---------------------------------------------------------------------------------------

    def _query(self) -> dict[str, tuple[bytes, str, dict[str, Any]]]:
        self._plan = planned = self._engine.plan_held(self._node, self._paths, self._plan)
        picked, _plan = self._engine.select(self._node, self._paths, self._desc, limit=self._limit, skip=self._skip,
                                            plan=planned[1])
        rows = {}
        for i, (doc, s) in enumerate(picked):
            key = sort_key(doc, self._paths, s.id) if self._paths else encode_key(i)
            rows[s.id] = (key, s.winner, self._out(doc, s))
        return rows

    def _out(self, doc: dict[str, Any], s: Any) -> dict[str, Any]:
        return self._engine.output(doc, s, self._fpaths, self._python)  # type: ignore[no-any-return]

    def _ordered(self, rows: dict[str, tuple[bytes, str, dict[str, Any]]]) -> list[tuple[bytes, str, dict[str, Any]]]:
        return sorted(rows.values(), key=lambda r: r[0], reverse=self._desc)

    @property
    def results(self) -> list[dict[str, Any]]:
        """The current result, in order (copies)."""
        with self._lock:
            return [dict(r) for _k, _rev, r in self._ordered(self._rows)]

    # -- writes -------------------------------------------------------------------------------------------

    def _on_write(self, new: DocState, prev: DocState | None) -> None:
        if self._stopped:
            return
        try:
            with self._lock:
                change = self._judge(new)
            if change is not None:
                self._emit(change)
        except Exception:
            log.exception("live query %r failed on a write", self._selector)

    def _judge(self, state: DocState) -> QueryChange | None:
        doc = match_doc(state)
        matches = doc is not None and self._test(doc)
        id = state.id
        had = self._rows.get(id)
        if self._limit is not None or self._skip:
            return self._judge_top(state, doc if matches else None, had)
        if not matches:
            if had is None:
                return None
            del self._rows[id]
            return QueryChange([], [], [had[2]])
        assert doc is not None
        key = sort_key(doc, self._paths, id) if self._paths else b""
        if had is not None and had[1] == state.winner:
            return None
        out = self._out(doc, Hit.of(state, True))
        self._rows[id] = (key, state.winner, out)
        return QueryChange([out], [], []) if had is None else QueryChange([], [out], [])

    def _judge_top(self, state: DocState, doc: dict[str, Any] | None,
                   had: tuple[bytes, str, dict[str, Any]] | None) -> QueryChange | None:
        """A write against a result of the first ``limit`` records (after ``skip``). A record that enters sorts
        into it and pushes its last out, with no query; a record that leaves it, or moves towards its end,
        runs the query again (the next record must come in)."""
        id = state.id
        rows = self._rows
        if had is None and doc is None:
            return None
        limit, paths, desc = self._limit, self._paths, self._desc
        if self._skip or not paths or limit is None:
            if had is None and limit is not None and len(rows) >= limit and not self._skip and not paths:
                return None  # no order: a full result keeps the records it has
            return self._diff(self._query())
        key = sort_key(doc, paths, id) if doc is not None else b""
        full = len(rows) >= limit
        if full:
            last_id, (last_key, _r, _d) = (max if not desc else min)(rows.items(), key=lambda kv: kv[1][0])
        if doc is None or (had is not None and full and (key > last_key if not desc else key < last_key)):
            return self._diff(self._query())  # it left, or fell behind the last: which record comes next?
        if had is None and full and (key > last_key if not desc else key < last_key):
            return None  # behind the last one: not in the result
        if had is not None and had[1] == state.winner:
            return None
        out = self._out(doc, Hit.of(state, True))
        rows[id] = (key, state.winner, out)
        if had is not None:
            return QueryChange([], [out], [])
        if full:
            gone = rows.pop(last_id)
            return QueryChange([out], [], [gone[2]])
        return QueryChange([out], [], [])

    def _diff(self, new_rows: dict[str, tuple[bytes, str, dict[str, Any]]]) -> QueryChange | None:
        old = self._rows
        self._rows = new_rows
        added = [r for id, (_k, _rev, r) in new_rows.items() if id not in old]
        removed = [r for id, (_k, _rev, r) in old.items() if id not in new_rows]
        changed = [r for id, (_k, rev, r) in new_rows.items() if id in old and old[id][1] != rev]
        if not (added or removed or changed):
            return None
        return QueryChange(added, changed, removed)

    def _emit(self, change: QueryChange) -> None:
        if self._callback is not None:
            try:
                self._callback(change)
            except Exception:
                log.exception("live query callback %r failed", self._callback)
        elif self._queue is not None:
            self._queue.put(change)

    # -- the iterator form and stopping -------------------------------------------------------------------

    def get(self, timeout: float | None = None) -> QueryChange | None:
        """The next change (the iterator form: ``observe`` without a callback); None after ``timeout`` seconds
        or once stopped."""
        if self._queue is None:
            raise RuntimeError("this live query has a callback: its changes go there")
        try:
            item = self._queue.get(timeout=timeout)
        except queue.Empty:
            return None
        if item is _STOP:
            self._queue.put(_STOP)  # for any other reader
            return None
        change: QueryChange = item
        return change

    def __iter__(self) -> Iterator[QueryChange]:
        """Each change as it comes (blocks); ends when the live query is stopped."""
        while True:
            change = self.get()
            if change is None:
                return
            yield change

    def stop(self) -> None:
        """Stop listening (idempotent); an iteration ends."""
        if self._stopped:
            return
        self._stopped = True
        self._unlisten()
        if self._queue is not None:
            self._queue.put(_STOP)

    def __enter__(self) -> LiveQuery:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


__all__ = ["LiveQuery", "Path", "QueryChange"]
