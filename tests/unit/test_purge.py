"""Purge (CouchDB's ``_purge``) through the Python API and the storage layer: leaves removed for good, a record
purged whole is gone from every read, listing, feed and index, durably (log, flush, reopen, a SIGKILL, compaction),
and its attachments' bytes are collected."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import MyNoSQL
from MyNoSQL.database import Change
from MyNoSQL.records import revtree
from MyNoSQL.records.codec import encode_body


def blob_files(db: MyNoSQL.MyNoSQL) -> int:
    folder = db.db.path / "attachments"
    return sum(1 for p in folder.rglob("*") if p.is_file() and len(p.name) == 64)


def graft(db: MyNoSQL.MyNoSQL, id: str, parent: str, body: dict[str, object]) -> str:
    """A conflicting child of ``parent``, as replication grafts one; returns its revision."""
    blob = encode_body(body)[0]
    rev = revtree.new_rev(parent, False, blob)
    assert db.db.put_replicated(id, [rev, parent], False, blob)
    return rev


def gone(db: MyNoSQL.MyNoSQL, id: str) -> None:
    """Record ``id`` is nowhere: reads, membership, iteration, the changes feed, the replication primitives."""
    with pytest.raises(MyNoSQL.DocumentNotFound):
        db.readdoc(id)
    assert id not in db
    assert all(r["id"] != id for r in db)
    assert all(c.id != id for c in db.changes())
    assert db.db.state(id) is None
    assert db.db.revs_diff({id: ["1-" + "a" * 32]}) == {id: ["1-" + "a" * 32]}


def test_purging_every_leaf_removes_the_record(db: MyNoSQL.MyNoSQL) -> None:
    a = db.savedoc({"id": "a", "v": 1})
    a = db.savedoc({**a, "v": 2})
    b = db.savedoc({"id": "b", "v": 1})
    seq = db.db.seq
    assert db.db.purge_seq == 0
    assert db.purge("a", [a["rev"]]) == [a["rev"]]
    gone(db, "a")
    assert len(db) == 1 and db.db.deleted_count() == 0  # no tombstone left
    assert db.db.seq == seq + 1  # update_seq moves, as CouchDB's
    assert db.db.purge_seq == 1
    assert db.db.purged_infos() == [{"id": "a", "revs": [a["rev"]], "purge_seq": 1}]
    assert db.readdoc("b") == b
    db.db.flush()
    gone(db, "a")
    assert db.verify() == []


def test_only_leaves_are_purged_and_unknown_ids_are_ignored(db: MyNoSQL.MyNoSQL) -> None:
    first = db.savedoc({"id": "a", "v": 1})
    second = db.savedoc({**first, "v": 2})
    assert db.purge("a", [first["rev"], "9-" + "f" * 32]) == []  # not a leaf; not a revision of it
    assert db.purge("nobody", [first["rev"]]) == []
    assert db.readdoc("a") == second and db.db.purge_seq == 0
    with pytest.raises(MyNoSQL.InvalidDocument):
        db.purge("a", second["rev"])  # type: ignore[arg-type]  # a list is needed
    with pytest.raises(MyNoSQL.InvalidDocument):
        db.purge("_bad", [second["rev"]])


def test_purge_many_checks_everything_first_and_logs_each_record(db: MyNoSQL.MyNoSQL) -> None:
    revs = {f"d{i}": db.savedoc({"id": f"d{i}"})["rev"] for i in range(3)}
    with pytest.raises(MyNoSQL.InvalidDocument):
        db.db.purge_many({"d0": [revs["d0"]], "../bad": [revs["d1"]]})
    with pytest.raises(MyNoSQL.InvalidDocument):
        db.db.purge_many({"d0": [revs["d0"]], "d1": revs["d1"]})  # type: ignore[dict-item]  # not a list
    assert len(db) == 3 and db.db.purge_seq == 0  # nothing purged
    out = db.db.purge_many({"d0": [revs["d0"]], "d1": [revs["d1"], "1-" + "0" * 32], "none": [revs["d2"]]})
    assert out == {"d0": [revs["d0"]], "d1": [revs["d1"]], "none": []}
    assert [r["id"] for r in db] == ["d2"] and db.db.purge_seq == 2
    assert [p["id"] for p in db.db.purged_infos()] == ["d0", "d1"]


def test_purging_a_deleted_record_removes_its_tombstone(db: MyNoSQL.MyNoSQL) -> None:
    a = db.savedoc({"id": "a"})
    tomb = db.deletedoc("a", a["rev"])
    assert db.db.deleted_count() == 1
    assert db.purge("a", [tomb["rev"]]) == [tomb["rev"]]
    assert db.db.deleted_count() == 0 and db.db.state("a") is None


def test_purging_the_winner_of_a_conflict_leaves_the_other_leaf(db: MyNoSQL.MyNoSQL) -> None:
    base = db.savedoc({"id": "c", "by": "start"})
    mine = db.savedoc({**base, "by": "me"})
    theirs = graft(db, "c", base["rev"], {"by": "them"})
    winner = db.readdoc("c")["rev"]
    loser = theirs if winner == mine["rev"] else mine["rev"]
    before = db.db.seq
    assert db.purge("c", [winner]) == [winner]
    doc = db.readdoc("c")
    assert doc["rev"] == loser and db.conflicts("c") == []
    state = db.db.state("c")
    assert state is not None and set(state.tree) == {base["rev"], loser}  # the purged branch is gone
    assert [(c.id, c.rev) for c in db.changes(before)] == [("c", loser)]  # a change, as CouchDB's
    with pytest.raises(MyNoSQL.DocumentNotFound):
        db.readdoc("c", rev=winner)
    # the purged revision can come back by replication: it is unknown here now
    assert db.db.revs_diff({"c": [winner]}) == {"c": [winner]}


def test_purging_a_branch_keeps_the_shared_ancestors_only(db: MyNoSQL.MyNoSQL) -> None:
    one = db.savedoc({"id": "t", "v": 1})
    two = db.savedoc({**one, "v": 2})
    three = db.savedoc({**two, "v": 3})
    side = graft(db, "t", one["rev"], {"v": "side"})
    assert db.purge("t", [three["rev"]]) == [three["rev"]]
    state = db.db.state("t")
    assert state is not None and set(state.tree) == {one["rev"], side}  # 2- went with 3-: it had no other leaf
    assert db.readdoc("t")["v"] == "side"


def test_a_record_saved_again_after_its_purge_is_a_new_record(small_db: MyNoSQL.MyNoSQL) -> None:
    db = small_db
    a = db.savedoc({"id": "a", "v": 1})
    db.db.flush()  # on disk: the purge must drop its index row
    db.purge("a", [a["rev"]])
    again = db.savedoc({"id": "a", "v": 2})  # no rev needed: it does not exist
    assert again["rev"].startswith("1-") and db.readdoc("a") == again
    db.db.flush()
    assert db.verify() == [] and len(db) == 1 and db.db.deleted_count() == 0
    db.purge("a", [again["rev"]])
    db.db.flush()
    gone(db, "a")
    assert db.verify() == []


def test_a_record_saved_while_its_purge_is_being_packed(small_db: MyNoSQL.MyNoSQL,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A save of the id lands between the flush's index commit (which drops the row) and the end of the flush: the
    new state must not count the old location as its previous one."""
    db = small_db
    a = db.savedoc({"id": "a", "v": 1})
    db.db.flush()
    store = db.db._store
    commit = store.index.commit_flush
    saved: list[dict[str, object]] = []

    def commit_then_save(**kw: object) -> list[bool]:
        out = commit(**kw)  # type: ignore[arg-type]
        if not saved:
            saved.append(db.savedoc({"id": "a", "v": 2}))
        return out

    monkeypatch.setattr(store.index, "commit_flush", commit_then_save)
    db.purge("a", [a["rev"]])
    db.db.flush()
    assert saved and db.readdoc("a") == saved[0]
    db.db.flush()
    assert db.verify() == [] and len(db) == 1
    db.compact()
    assert db.readdoc("a") == saved[0] and db.verify() == []


def test_a_purge_survives_reopen_and_compaction(location: Path) -> None:
    with MyNoSQL.MyNoSQL(location) as db:
        db.opendb("p")
        keep = db.savedoc({"id": "keep", "v": 1})
        a = db.savedoc({"id": "a", "v": 1})
        db.db.flush()
        db.purge("a", [a["rev"]])  # the close packs the marker
    with MyNoSQL.MyNoSQL(location) as db:
        db.opendb("p")
        gone(db, "a")
        assert len(db) == 1 and db.readdoc("keep") == keep and db.db.purge_seq == 1
        db.compact()
        gone(db, "a")
        assert db.verify() == []
    with MyNoSQL.MyNoSQL(location) as db:
        db.opendb("p")
        gone(db, "a")
        assert len(db) == 1 and db.db.deleted_count() == 0


def test_attachment_bytes_of_a_purged_record_are_collected_unless_shared(db: MyNoSQL.MyNoSQL) -> None:
    shared, own = os.urandom(3000), os.urandom(4000)
    ra = db.putattachment("a", "s", shared)
    ra = db.putattachment("a", "o", own, rev=ra)
    db.putattachment("b", "s", shared)
    assert blob_files(db) == 2
    db.purge("a", [ra])
    db.compact()
    assert blob_files(db) == 1  # `own` is freed; `shared` is b's too
    assert db.getattachment("b", "s") == shared
    with pytest.raises(MyNoSQL.DocumentNotFound):
        db.getattachment("a", "s")


def test_indexes_and_queries_forget_a_purged_record(small_db: MyNoSQL.MyNoSQL) -> None:
    db = small_db
    db.indexadd("k")
    db.createindex(["k"])
    recs = [db.savedoc({"id": f"r{i}", "k": i % 3}) for i in range(20)]
    db.db.flush()
    hits = db.observe({"k": 1})
    assert {r["id"] for r in hits.results} == {r["id"] for r in recs if r["k"] == 1}
    db.purge("r1", [recs[1]["rev"]])
    assert "r1" not in {r["id"] for r in db.find({"k": 1})}  # pending marker
    assert "r1" not in {r["id"] for r in hits.results}
    db.db.flush()
    assert "r1" not in {r["id"] for r in db.find({"k": 1})}  # its query index row is gone
    assert "r1" not in db.indexread("k")
    db.createindex(["k", "_id"])  # an index built from the disk now
    assert "r1" not in {r["id"] for r in db.find({"k": 1}, sort=[{"k": "asc"}, {"_id": "asc"}])}
    hits.stop()


def test_watch_reports_a_purge_as_a_deletion(db: MyNoSQL.MyNoSQL) -> None:
    a = db.savedoc({"id": "a"})
    seen: list[Change] = []
    stop = db.watch(seen.append)
    db.purge("a", [a["rev"]])
    stop()
    assert len(seen) == 1 and seen[0].id == "a" and seen[0].rev == "" and seen[0].deleted


def test_purged_infos_keep_the_newest_within_the_limit(location: Path) -> None:
    with MyNoSQL.MyNoSQL(location) as db:
        db.opendb("p")
        assert db.db.purged_infos_limit == 1000
        db.db.set_purged_infos_limit(2)
        with pytest.raises(MyNoSQL.InvalidDocument):
            db.db.set_purged_infos_limit(0)
        for i in range(3):
            r = db.savedoc({"id": f"d{i}"})
            db.purge(f"d{i}", [r["rev"]])
    with MyNoSQL.MyNoSQL(location) as db:
        db.opendb("p")
        assert db.db.purged_infos_limit == 2 and db.db.purge_seq == 3
        assert [p["id"] for p in db.db.purged_infos()] == ["d1", "d2"]
        db.db.set_purged_infos_limit(1)  # forgets at once; the sequence stays
        assert [p["id"] for p in db.db.purged_infos()] == ["d2"] and db.db.purge_seq == 3


@pytest.mark.parametrize("seed, steps", [(15, 150), pytest.param(16, 2000, marks=[pytest.mark.slow, pytest.mark.soak]),
                                         pytest.param(17, 2000, marks=[pytest.mark.slow, pytest.mark.soak])])
def test_random_saves_and_purges_agree_with_a_model(location: Path, seed: int, steps: int) -> None:
    """Saves, deletions, partial and whole purges interleaved with small flushes, garbage collection and reopens."""
    rng = random.Random(seed)
    opts = MyNoSQL.Options(flush_docs=6, block_docs=3, flush_interval=0.05, background_sync=False)
    model: dict[str, dict[str, object]] = {}
    db = MyNoSQL.MyNoSQL(location, options=opts)
    db.opendb("m")
    try:
        for step in range(steps):
            id = f"k{rng.randrange(25)}"
            cur = model.get(id)
            op = rng.random()
            if op < 0.5:
                saved = db.savedoc({**cur, "n": step} if cur else {"id": id, "n": step})
                model[id] = saved
            elif op < 0.6 and cur is not None:
                db.deletedoc(id, str(cur["rev"]))
                del model[id]
            elif op < 0.65 and cur is not None:
                graft(db, id, str(cur["rev"]), {"n": -step})
                model[id] = db.readdoc(id)
            elif op < 0.85:
                state = db.db.state(id)
                if state is not None:
                    leaves = list(state.bodies)
                    picked = rng.sample(leaves, rng.randint(1, len(leaves)))
                    assert sorted(db.purge(id, picked)) == sorted(picked)
                    after = db.db.state(id)
                    if after is None or after.deleted:
                        model.pop(id, None)
                    else:
                        model[id] = db.readdoc(id)
            elif op < 0.9:
                db.db.flush()
            elif op < 0.93:
                db.compact()
            elif op < 0.95:
                db.closedb()
                db = MyNoSQL.MyNoSQL(location, options=opts)
                db.opendb("m")
            assert len(db) == len(model)
        assert {r["id"]: r for r in db} == model
        assert db.verify() == []
        db.closedb()
        db = MyNoSQL.MyNoSQL(location, options=opts)
        db.opendb("m")
        assert {r["id"]: r for r in db} == model
        assert sum(1 for _ in db.changes()) == len(model) + db.db.deleted_count()
        assert db.verify() == []
    finally:
        db.closedb()


@pytest.mark.process
@pytest.mark.parametrize("flushed", [False, True])
def test_a_purge_survives_a_sigkill(location: Path, flushed: bool) -> None:
    """The purge is in the write-ahead log when ``purge`` returns: a process killed right after loses nothing
    (the record stays gone), whether the purge was packed yet or not."""
    script = textwrap.dedent(f"""
        import os, signal, MyNoSQL
        db = MyNoSQL.MyNoSQL({str(location)!r}, options=MyNoSQL.Options(background_sync=False, flush_interval=60))
        db.opendb("k")
        for i in range(50):
            db.savedoc({{"id": f"d{{i}}", "v": i}})
        db.db.flush()
        for i in range(0, 50, 2):
            db.purge(f"d{{i}}", [db.readdoc(f"d{{i}}")["rev"]])
        if {flushed!r}:
            db.db.flush()
        db.savedoc({{"id": "d0", "v": "again"}})
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], timeout=60, capture_output=True)
    assert proc.returncode == -9, proc.stderr.decode()
    with MyNoSQL.MyNoSQL(location, options=MyNoSQL.Options(background_sync=False)) as db:
        db.opendb("k")
        assert {r["id"] for r in db} == {"d0"} | {f"d{i}" for i in range(1, 50, 2)}
        assert db.readdoc("d0")["v"] == "again" and db.db.deleted_count() == 0
        assert db.db.purge_seq == 25
        db.db.flush()
        assert db.verify() == []
    with MyNoSQL.MyNoSQL(location, options=MyNoSQL.Options(background_sync=False)) as db:
        db.opendb("k")
        assert db.readdoc("d0")["v"] == "again"  # from the disk: the index row is the new record's
        db.compact()
        assert len(db) == 26 and db.verify() == [] and db.readdoc("d0")["v"] == "again"
