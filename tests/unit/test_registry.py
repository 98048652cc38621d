"""The registry of a mirror's databases: a database is handed out only once its open hooks (change notifier,
pulls) have run, and a failed hook leaves nothing open."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import MyNoSQL
from MyNoSQL.database import Database
from MyNoSQL.server.registry import Databases


def make(root: Path, name: str) -> None:
    with MyNoSQL.MyNoSQL(root) as h:
        h.opendb(name)
        h.savedoc({"id": "a"})


def test_a_request_during_the_open_hooks_waits_for_them(tmp_path: Path) -> None:
    make(tmp_path, "db")

    async def run() -> None:
        dbs = Databases(root=tmp_path)
        hooked = asyncio.Event()
        release = asyncio.Event()
        done: list[str] = []

        async def slow_hook(name: str, db: Database) -> None:
            hooked.set()
            await release.wait()
            done.append(name)

        dbs.on_open.append(slow_hook)
        first = asyncio.create_task(dbs.get("db"))
        await asyncio.wait_for(hooked.wait(), 10)
        second = asyncio.create_task(dbs.get("db"))
        await asyncio.sleep(0)  # let the second request run up to its wait
        assert not second.done() and dbs.open_items() == []  # not handed out while its hooks run
        release.set()
        a, b = await asyncio.wait_for(asyncio.gather(first, second), 10)
        assert a is b and a is not None and done == ["db"]  # one opening, its hooks ran once
        assert [n for n, _ in dbs.open_items()] == ["db"]
        await dbs.close_all()
        assert a.closed

    asyncio.run(run())


def test_a_failed_open_hook_closes_the_database_and_reports_the_error(tmp_path: Path) -> None:
    make(tmp_path, "db")

    async def run() -> None:
        dbs = Databases(root=tmp_path)
        closed: list[str] = []

        async def failing(name: str, db: Database) -> None:
            raise RuntimeError("pull set-up failed")

        async def on_close(name: str, db: Database) -> None:
            closed.append(name)

        dbs.on_open.append(failing)
        dbs.on_close.append(on_close)
        with pytest.raises(RuntimeError, match="pull set-up failed"):
            await dbs.get("db")
        assert dbs.open_items() == [] and closed == ["db"]
        dbs.on_open.clear()
        db = await dbs.get("db")  # the lock was released: the next request opens it
        assert db is not None and db.readdoc("a")["id"] == "a"
        await dbs.close_all()

    asyncio.run(run())


def test_close_all_waits_for_an_opening_under_way(tmp_path: Path) -> None:
    make(tmp_path, "db")

    async def run() -> None:
        dbs = Databases(root=tmp_path)
        hooked = asyncio.Event()
        release = asyncio.Event()

        async def slow_hook(name: str, db: Database) -> None:
            hooked.set()
            await release.wait()

        dbs.on_open.append(slow_hook)
        opening = asyncio.create_task(dbs.get("db"))
        await asyncio.wait_for(hooked.wait(), 10)
        closing = asyncio.create_task(dbs.close_all())
        await asyncio.sleep(0)
        assert not closing.done()
        release.set()
        db = await asyncio.wait_for(opening, 10)
        await asyncio.wait_for(closing, 10)
        assert db is not None and db.closed

    asyncio.run(run())


def test_a_database_being_deleted_is_not_opened_again_meanwhile(tmp_path: Path) -> None:
    """DELETE /{db} closes the database and removes its folder; a request that comes meanwhile gets None (404),
    never a database opened again in the folder being removed (the PouchDB suite under load: "Directory not
    empty", "no such table")."""
    make(tmp_path, "db")

    async def run() -> None:
        dbs = Databases(root=tmp_path)
        closing, release = asyncio.Event(), asyncio.Event()

        async def slow_close(name: str, db: Database) -> None:
            closing.set()
            await release.wait()

        dbs.on_close.append(slow_close)
        db = await dbs.get("db")
        assert db is not None
        deleting = asyncio.create_task(dbs.delete("db"))
        await asyncio.wait_for(closing.wait(), 10)
        assert await dbs.get("db") is None and not dbs.servable("db")
        release.set()
        await asyncio.wait_for(deleting, 30)
        assert db.closed and dbs.names() == [] and dbs.open_items() == []
        assert await dbs.get("db") is None

    asyncio.run(run())


def test_a_request_during_an_idle_close_waits_for_it_and_opens_the_database_again(tmp_path: Path) -> None:
    """A database closed for idleness leaves the open list before its close ends (its on_close hooks run, then its
    store closes and releases the folder's lock): a request that comes meanwhile waits for the close and opens
    it again, never DatabaseLocked (a 503 on a mirror under load: test_couch_server's idle test saw it)."""
    make(tmp_path, "db")

    async def run() -> None:
        dbs = Databases(root=tmp_path, idle=0.0)
        hooked = asyncio.Event()
        release = asyncio.Event()

        async def slow_close(name: str, db: Database) -> None:
            hooked.set()
            await release.wait()

        dbs.on_close.append(slow_close)
        first = await dbs.get("db")
        assert first is not None
        closing = asyncio.create_task(dbs.close_idle())
        await asyncio.wait_for(hooked.wait(), 10)
        assert dbs.open_items() == [] and not first.closed  # out of the list, still holding its lock
        again = asyncio.create_task(dbs.get("db"))
        for _ in range(5):
            await asyncio.sleep(0)
        assert not again.done()  # it waits for the close
        release.set()
        assert await asyncio.wait_for(closing, 10) == 1
        second = await asyncio.wait_for(again, 10)
        assert first.closed and second is not None and second is not first
        assert second.readdoc("a")["id"] == "a"
        dbs.on_close.clear()
        await dbs.close_all()

    asyncio.run(run())
