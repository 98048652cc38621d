"""MyNoSQL and a real PouchDB agree: documents, revisions, deletes and conflict winners, both ways."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from pouch import pouch_replicate
from support.mirrors import MirrorProcess, call, free_port

import MyNoSQL


def get_doc(db_url: str, id: str) -> dict[str, Any] | None:
    try:
        return call("GET", f"{db_url}/{id}?conflicts=true")  # type: ignore[no-any-return]
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise


def leaves(db_url: str, id: str) -> set[str]:
    docs = call("GET", f"{db_url}/{id}?open_revs=all")
    return {d["ok"]["_rev"] for d in docs if "ok" in d}


def winner_view(db_url: str, ids: list[str]) -> dict[str, tuple[str | None, list[str], set[str]]]:
    out = {}
    for id in ids:
        d = get_doc(db_url, id)
        out[id] = (d["_rev"] if d else None, sorted(d.get("_conflicts", [])) if d else [], leaves(db_url, id))
    return out


def test_peer_replicates_both_ways_with_a_pouchdb_server(tmp_path: Path, pouchdb_url: str) -> None:
    target = f"{pouchdb_url}/frompeer"
    with MyNoSQL.MyNoSQL(tmp_path) as h:
        db = h.opendb("p")
        recs = [h.savedoc({"id": f"r{i}", "i": i, "nested": {"b": b"\x00\x01", "t": (1, 2)}}) for i in range(30)]
        upd = h.savedoc({**recs[0], "i": 100})
        gone = h.deletedoc("r1", recs[1]["rev"])
        h.savedoc({"id": "under", "_private": 1})
        result = db.push(target)
        assert result["errors"] == [] and result["docs_written"] == 31
        assert get_doc(target, "r0")["_rev"] == upd["rev"]  # type: ignore[index]
        assert get_doc(target, "r0")["i"] == 100  # type: ignore[index]
        assert get_doc(target, "r1") is None and leaves(target, "r1") == {gone["rev"]}
        assert get_doc(target, "r5")["nested"] == {"b": {"$bytes": "AAE="}, "t": {"$tuple": [1, 2]}}  # type: ignore[index]
        assert get_doc(target, "under")["$_private"] == 1  # type: ignore[index]
        # PouchDB-side changes come back
        call("PUT", f"{target}/fromPouch", {"hello": "world"})
        r2 = get_doc(target, "r2")
        assert r2 is not None
        r2["i"] = 222
        new_rev = call("PUT", f"{target}/r2", r2)["rev"]
        back = db.pull(target)
        assert back["errors"] == []
        assert h.readdoc("fromPouch")["hello"] == "world"
        assert h.readdoc("r2") == {"id": "r2", "rev": new_rev, "i": 222, "nested": {"b": b"\x00\x01", "t": (1, 2)}}
        assert h.readdoc("under") == {"id": "under", "rev": h.readdoc("under")["rev"], "_private": 1}
        again = db.pull(target)
        assert again["docs_written"] == 0  # in step: nothing moves


@pytest.fixture
def mirror(tmp_path: Path) -> Any:
    m = MirrorProcess(tmp_path / "mirror", "db", free_port(), []).start()
    yield m
    m.stop()


def test_pouchdb_replicates_both_ways_with_a_mynosql_mirror(mirror: MirrorProcess, pouchdb_url: str) -> None:
    ours = f"{mirror.url}/db"
    theirs = f"{pouchdb_url}/mirrorcopy"
    call("PUT", theirs)
    ids = [f"d{i}" for i in range(20)]
    revs = {}
    for id in ids:
        revs[id] = call("PUT", f"{ours}/{id}", {"n": id})["rev"]
    call("DELETE", f"{ours}/d3?rev={revs['d3']}")
    pouch_replicate(ours, theirs)
    assert winner_view(ours, ids) == winner_view(theirs, ids)
    # concurrent edits of the same records on both sides, then replication both ways
    for id in ids[5:10]:
        call("PUT", f"{ours}/{id}", {"_rev": revs[id], "edited_by": "mynosql"})
        d = get_doc(theirs, id)
        assert d is not None
        call("PUT", f"{theirs}/{id}", {**d, "edited_by": "pouchdb"})
    call("PUT", f"{theirs}/onlypouch", {"x": 1})
    pouch_replicate(theirs, ours)
    pouch_replicate(ours, theirs)
    all_ids = [*ids, "onlypouch"]
    view_ours, view_theirs = winner_view(ours, all_ids), winner_view(theirs, all_ids)
    assert view_ours == view_theirs
    for id in ids[5:10]:
        rev, conflicts, all_leaves = view_ours[id]
        assert len(all_leaves) == 2 and len(conflicts) == 1  # the loser is kept, on both sides
        # the winner is CouchDB's rule: same generation, higher hash
        assert rev == max(all_leaves, key=lambda r: (int(r.split("-")[0]), r.split("-")[1]))


def test_checkpoints_on_a_pouchdb_server_take_one_round_trip_and_survive_other_writers(pouchdb_url: str) -> None:
    import asyncio

    from MyNoSQL.replication.endpoints import HttpEndpoint

    call("PUT", f"{pouchdb_url}/ck")

    async def scenario() -> list[str]:
        import aiohttp

        async with aiohttp.ClientSession() as session:
            ep = HttpEndpoint(session, f"{pouchdb_url}/ck")
            calls: list[str] = []
            real = ep.request

            async def counted(method: str, path: str, **kw: Any) -> Any:
                calls.append(method)
                return await real(method, path, **kw)

            ep.request = counted  # type: ignore[method-assign]
            await ep.put_local("rep-1", {"last_seq": 1})  # first write: read the _rev first
            await ep.put_local("rep-1", {"last_seq": 2})  # then one PUT each
            await ep.put_local("rep-1", {"last_seq": 3})
            other = call("GET", f"{pouchdb_url}/ck/_local/rep-1")
            call("PUT", f"{pouchdb_url}/ck/_local/rep-1", {**other, "last_seq": 99})  # someone else writes it
            await ep.put_local("rep-1", {"last_seq": 4})  # 409 with our old _rev: read it again, write
            assert (await ep.get_local("rep-1") or {}).get("last_seq") == 4
            return calls

    calls = asyncio.run(scenario())
    assert calls == ["GET", "PUT", "PUT", "PUT", "PUT", "GET", "PUT", "GET"]
