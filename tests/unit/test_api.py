"""The calls existing users know, and the Pythonic surface around them."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import MyNoSQL

REV = re.compile(r"^\d+-[0-9a-f]{32}$")


def test_seed_readme_snippet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MYNOSQL_HOME", str(tmp_path / "home"))
    db = MyNoSQL.MyNoSQL()
    db.opendb("YourDatabaseName")
    assert db.setdbmode("Mirror") is True
    assert db.addpeer("http://mirrorhostname:8800") is True
    myrecord = {"name": "sensor-1", "temp": 21.5}
    myrecord = db.savedoc(myrecord)
    assert REV.match(myrecord["rev"]) and myrecord["rev"].startswith("1-")
    myrecordid = myrecord["id"]
    myrecord = db.readdoc(myrecordid)
    assert myrecord == {"id": myrecordid, "rev": myrecord["rev"], "name": "sensor-1", "temp": 21.5}
    db.closedb()
    assert (tmp_path / "home" / "YourDatabaseName").is_dir()
    # mode and peers are remembered
    db.opendb("YourDatabaseName")
    assert db.getdbmode() == "Mirror"
    assert db.db.peers() == ["http://mirrorhostname:8800"]
    db.closedb()


def test_generated_id_is_uuid4_hex_and_given_id_kept(db: MyNoSQL.MyNoSQL) -> None:
    a = db.savedoc({"x": 1})
    assert re.match(r"^[0-9a-f]{12}4[0-9a-f]{3}[89ab][0-9a-f]{15}$", a["id"])
    b = db.savedoc({"id": "sensor/17 ü", "x": 2})
    assert b["id"] == "sensor/17 ü"
    assert db.readdoc("sensor/17 ü")["x"] == 2
    ids = {db.savedoc({})["id"] for _ in range(500)}
    assert len(ids) == 500


def test_generated_ids_are_unique_across_threads_and_a_fork() -> None:
    from MyNoSQL.records.ids import new_id

    uuid4 = re.compile(r"^[0-9a-f]{12}4[0-9a-f]{3}[89ab][0-9a-f]{15}$")
    parts: list[list[str]] = [[] for _ in range(4)]

    def draw(k: int) -> None:
        parts[k] = [new_id() for _ in range(700)]  # several pools of 256 each, refilled concurrently

    threads = [threading.Thread(target=draw, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids = [i for part in parts for i in part]
    assert len(set(ids)) == 2800 and all(uuid4.match(i) for i in ids)
    if not hasattr(os, "fork"):
        return
    # A forked child must not hand out the ids its parent's pool still holds (run in a fresh, one-thread process).
    script = """if True:
        import os
        from MyNoSQL.records.ids import new_id
        new_id()
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.write(write, new_id().encode())
            os._exit(0)
        os.close(write)
        os.waitpid(pid, 0)
        print(os.read(read, 64).decode(), new_id())
    """
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60)
    child, parent = out.stdout.split()
    assert uuid4.match(child) and uuid4.match(parent) and child != parent


def test_rev_increments_and_unchanged_save_keeps_rev(db: MyNoSQL.MyNoSQL) -> None:
    r1 = db.savedoc({"id": "a", "v": 1})
    r2 = db.savedoc({**r1, "v": 2})
    assert r1["rev"].startswith("1-") and r2["rev"].startswith("2-")
    r3 = db.savedoc(r2)
    assert r3["rev"] == r2["rev"]
    assert db.readdoc("a")["rev"] == r2["rev"]
    assert len(list(db.changes())) == 1


def test_conflicts_on_stale_or_missing_rev(db: MyNoSQL.MyNoSQL) -> None:
    r1 = db.savedoc({"id": "a", "v": 1})
    db.savedoc({**r1, "v": 2})
    with pytest.raises(MyNoSQL.ConflictError) as err:
        db.savedoc({**r1, "v": 3})  # stale rev
    assert err.value.current_rev == db.readdoc("a")["rev"]
    with pytest.raises(MyNoSQL.ConflictError):
        db.savedoc({"id": "a", "v": 4})  # exists, no rev
    with pytest.raises(MyNoSQL.ConflictError):
        db.savedoc({"id": "a", "rev": "9-" + "0" * 32, "v": 5})  # a rev it never had
    with pytest.raises(MyNoSQL.ConflictError):
        db.savedoc({"id": "new", "rev": r1["rev"]})  # rev for a record that does not exist
    assert db.readdoc("a")["v"] == 2
    assert "new" not in db


def test_returned_and_read_dicts_are_the_callers_own(db: MyNoSQL.MyNoSQL) -> None:
    doc = {"id": "a", "nested": {"list": [1, 2]}}
    saved = db.savedoc(doc)
    doc["nested"]["list"].append(3)
    saved["nested"]["list"].append(4)
    read = db.readdoc("a")
    assert read["nested"]["list"] == [1, 2]
    read["nested"]["list"].clear()
    read["id"] = "b"
    assert db.readdoc("a")["nested"]["list"] == [1, 2]
    assert doc == {"id": "a", "nested": {"list": [1, 2, 3]}}  # the caller's dict is not changed


def test_a_record_read_again_is_still_the_callers_own(db: MyNoSQL.MyNoSQL) -> None:
    # Small records with one level of containers are copied from a decoded memo from the second read on.
    db.savedoc({"id": "f", "values": [1.5, 2.5], "tags": {"a": 1}, "set": {1, 2}, "pair": (1, "x"), "n": 3})
    first = db.readdoc("f")
    for _ in range(3):
        read = db.readdoc("f")
        assert read == first and read is not first
        read["values"].append(9.5)
        read["tags"]["b"] = 2
        read["set"].add(3)
        read["n"] = 4
        read["new"] = True
    assert db.readdoc("f") == first == {"id": "f", "rev": first["rev"], "values": [1.5, 2.5], "tags": {"a": 1},
                                         "set": {1, 2}, "pair": (1, "x"), "n": 3}
    saved = db.savedoc({**first, "n": 5})  # a new revision is read as itself, not as the old memo
    assert db.readdoc("f") == saved and db.readdoc("f")["n"] == 5


def test_readdoc_unknown_raises_documentnotfound_which_is_a_keyerror(db: MyNoSQL.MyNoSQL) -> None:
    with pytest.raises(MyNoSQL.DocumentNotFound) as err:
        db.readdoc("nope")
    assert isinstance(err.value, KeyError)
    assert "nope" in str(err.value)


def test_delete_leaves_tombstone(db: MyNoSQL.MyNoSQL) -> None:
    r = db.savedoc({"id": "a", "v": 1})
    with pytest.raises(MyNoSQL.ConflictError):
        db.deletedoc("a", "1-" + "f" * 32)
    d = db.deletedoc("a", r["rev"])
    assert d["deleted"] is True and d["rev"].startswith("2-")
    with pytest.raises(MyNoSQL.DocumentNotFound) as err:
        db.readdoc("a")
    assert err.value.deleted
    assert "a" not in db and len(db) == 0
    changes = list(db.changes())
    assert [(c.id, c.rev, c.deleted) for c in changes] == [("a", d["rev"], True)]
    # re-creating continues the history, without a rev
    again = db.savedoc({"id": "a", "v": 2})
    assert again["rev"].startswith("3-")
    assert db.readdoc("a")["v"] == 2 and len(db) == 1


def test_changes_feed_since(db: MyNoSQL.MyNoSQL) -> None:
    a = db.savedoc({"id": "a"})
    db.savedoc({"id": "b"})
    since = db.db.seq
    db.savedoc({**a, "x": 1})
    db.savedoc({"id": "c"})
    feed = list(db.changes(since=since))
    assert [c.id for c in feed] == ["a", "c"]
    assert all(c.seq > since for c in feed)
    assert [c.id for c in db.changes()] == ["b", "a", "c"]


def test_iteration_len_contains(small_db: MyNoSQL.MyNoSQL) -> None:
    db = small_db
    for i in range(50):
        db.savedoc({"id": f"r{i:03d}", "i": i})
    r = db.readdoc("r010")
    db.deletedoc("r010", r["rev"])
    db.db.flush()
    for i in range(50, 60):
        db.savedoc({"id": f"r{i:03d}", "i": i})
    assert len(db) == 59
    assert "r011" in db and "r010" not in db and 5 not in db
    got = sorted(d["id"] for d in db)
    assert got == sorted(f"r{i:03d}" for i in range(60) if i != 10)


def test_context_managers_and_closed_errors(location: Path) -> None:
    with MyNoSQL.MyNoSQL(location) as h:
        h.opendb("one")
        h.savedoc({"id": "x"})
    with pytest.raises(MyNoSQL.DatabaseClosed):
        h.readdoc("x")
    with MyNoSQL.MyNoSQL(location) as h2, h2.opendb("one") as d:
        assert d.readdoc("x")["id"] == "x"
    with pytest.raises(MyNoSQL.DatabaseClosed):
        d.readdoc("x")
    with pytest.raises(MyNoSQL.DatabaseClosed):
        MyNoSQL.MyNoSQL(location).savedoc({})


def test_several_databases_open_at_once(location: Path) -> None:
    a, b = MyNoSQL.MyNoSQL(location), MyNoSQL.MyNoSQL(location)
    a.opendb("a")
    b.opendb("b")
    a.savedoc({"id": "k", "db": "a"})
    b.savedoc({"id": "k", "db": "b"})
    assert a.readdoc("k")["db"] == "a" and b.readdoc("k")["db"] == "b"
    a.closedb()
    b.closedb()


def test_same_database_twice_is_locked_when_exclusive(location: Path) -> None:
    a = MyNoSQL.MyNoSQL(location, options=MyNoSQL.Options(exclusive=True))
    a.opendb("x")
    with pytest.raises(MyNoSQL.DatabaseLocked):
        MyNoSQL.MyNoSQL(location).opendb("x")
    with pytest.raises(MyNoSQL.DatabaseLocked):
        MyNoSQL.MyNoSQL(location, options=MyNoSQL.Options(exclusive=True)).opendb("x")
    a.closedb()
    b = MyNoSQL.MyNoSQL(location)
    b.opendb("x")  # released on close
    b.closedb()


def test_setdbmode(db: MyNoSQL.MyNoSQL) -> None:
    assert db.getdbmode() == "Peer"
    assert db.setdbmode("MIRROR") is True and db.getdbmode() == "Mirror"
    assert db.setdbmode("peer") is True and db.getdbmode() == "Peer"
    assert db.setdbmode("master") is False and db.getdbmode() == "Peer"
    assert db.setdbmode(3) is False  # type: ignore[arg-type]


def test_addpeer_validates_and_dedupes(db: MyNoSQL.MyNoSQL) -> None:
    assert db.addpeer("http://m1:8800/") is True
    assert db.addpeer("http://m1:8800") is True
    assert db.db.peers() == ["http://m1:8800"]
    for bad in ("ftp://x", "not a url", "http://", 5):
        with pytest.raises(MyNoSQL.InvalidDocument):
            db.addpeer(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "doc, why",
    [
        ([1, 2], "must be a dict"),
        ({"id": 5}, "must be a string"),
        ({"id": ""}, "empty"),
        ({"id": "a\x00b"}, "NUL"),
        ({"id": "x" * 1025}, "1024 bytes"),
        ({"id": "é" * 600}, "1024 bytes"),
        ({"id": "_design"}, "reserved"),
        ({"id": "dotdot/../x"}, "path segments"),  # no URL could name it: the same rule on every mirror route
        ({"id": "./x"}, "path segments"),
        ({"rev": 5}, "rev must be a string"),
        ({"v": object()}, "cannot be stored"),
        ({"v": {1: "a"}}, "keys must be strings"),
        ({"v": float("nan")}, "not a JSON number"),
    ],
)
def test_bad_input_is_refused_and_writes_nothing(db: MyNoSQL.MyNoSQL, doc: object, why: str) -> None:
    with pytest.raises(MyNoSQL.InvalidDocument, match=why):
        db.savedoc(doc)  # type: ignore[arg-type]
    assert len(db) == 0 and list(db.changes()) == []


def test_bad_value_type_is_a_typeerror_naming_the_path(db: MyNoSQL.MyNoSQL) -> None:
    with pytest.raises(TypeError) as err:
        db.savedoc({"a": {"b": [1, 2, {"c": complex(1, 2)}]}})
    assert isinstance(err.value, MyNoSQL.InvalidValueType)
    assert err.value.path == "['a']['b'][2]['c']"
    assert "['a']['b'][2]['c']" in str(err.value)


def test_document_size_limit(location: Path) -> None:
    with MyNoSQL.MyNoSQL(location, options=MyNoSQL.Options(max_doc_bytes=1000)) as h:
        h.opendb("x")
        h.savedoc({"blob": "a" * 900})
        with pytest.raises(MyNoSQL.InvalidDocument, match="over the limit"):
            h.savedoc({"blob": "a" * 1000})
        assert len(h) == 1
    assert MyNoSQL.Options().max_doc_bytes == 8 * 1024 * 1024


def test_database_names_never_escape_the_location(location: Path) -> None:
    h = MyNoSQL.MyNoSQL(location)
    for bad in ("../x", "a/b", "", ".hidden", "x" * 300, "a\x00"):
        with pytest.raises(MyNoSQL.InvalidDocument):
            h.opendb(bad)
    assert not (location.parent / "x").exists()


def test_data_directory_is_private(location: Path) -> None:
    with MyNoSQL.MyNoSQL(location) as h:
        h.opendb("p")
    assert stat.S_IMODE(os.stat(location).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(location / "p").st_mode) == 0o700


def test_default_location_is_per_user_not_temp(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("MYNOSQL_HOME", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert MyNoSQL.MyNoSQL().location == tmp_path / "xdg" / "mynosql"
    monkeypatch.delenv("XDG_DATA_HOME")
    assert MyNoSQL.MyNoSQL().location == Path.home() / ".local" / "share" / "mynosql"
    monkeypatch.setenv("MYNOSQL_HOME", str(tmp_path / "env"))
    h = MyNoSQL.MyNoSQL()
    assert h.location == tmp_path / "env"
    h.setdblocation(tmp_path / "set")
    assert h.location == tmp_path / "set"
    assert MyNoSQL.MyNoSQL(tmp_path / "ctor").location == tmp_path / "ctor"


def test_secondary_indexes(small_db: MyNoSQL.MyNoSQL, location: Path) -> None:
    db = small_db
    for i in range(20):
        db.savedoc({"id": f"d{i}", "site": f"s{i % 3}", **({"odd": True} if i % 2 else {})})
    assert db.indexadd("site") is True
    assert db.indexadd("site") is False
    db.indexadd("odd")
    assert db.indexread("site") == {f"d{i}": f"s{i % 3}" for i in range(20)}
    assert db.indexread("odd") == {f"d{i}": True for i in range(1, 20, 2)}
    # kept up to date on save and delete, before and after flushes
    d3 = db.readdoc("d3")
    db.savedoc({**d3, "site": "moved"})
    db.deletedoc("d4", db.readdoc("d4")["rev"])
    db.savedoc({"id": "new", "site": "s9"})
    expected = {f"d{i}": f"s{i % 3}" for i in range(20) if i != 4} | {"d3": "moved", "new": "s9"}
    assert db.indexread("site") == expected
    db.db.flush()
    assert db.indexread("site") == expected
    db.closedb()
    db.opendb("testdb")  # persisted
    assert db.db.indexes() == ["site", "odd"]
    assert db.indexread("site") == expected
    assert db.indexdrop("odd") is True and db.indexdrop("odd") is False
    with pytest.raises(MyNoSQL.IndexNotFound):
        db.indexread("odd")
    with pytest.raises(KeyError):
        db.indexread("never")


def test_records_survive_reopen_after_flush_and_without(location: Path) -> None:
    opts = MyNoSQL.Options(flush_docs=100, block_docs=16)
    with MyNoSQL.MyNoSQL(location, options=opts) as h:
        h.opendb("r")
        saved = [h.savedoc({"i": i, "pad": "x" * (i % 50)}) for i in range(1000)]
    with MyNoSQL.MyNoSQL(location, options=opts) as h:
        h.opendb("r")
        assert len(h) == 1000
        for s in saved:
            assert h.readdoc(s["id"]) == s
        assert h.verify() == []


def test_updates_many_times_with_stemming(location: Path) -> None:
    opts = MyNoSQL.Options(revs_limit=5, flush_docs=7, block_docs=3)
    with MyNoSQL.MyNoSQL(location, options=opts) as h:
        h.opendb("s")
        r = h.savedoc({"id": "ledger", "n": 0})
        for n in range(1, 40):
            r = h.savedoc({**r, "n": n})
        assert r["rev"].startswith("40-")
        state = h.db.state("ledger")
        assert state is not None and len(state.tree) == 5
    with MyNoSQL.MyNoSQL(location, options=opts) as h:
        h.opendb("s")
        assert h.readdoc("ledger") == r


def test_one_shot_replication_works_where_an_event_loop_runs(tmp_path: Path) -> None:
    """The sync calls' one-shot replication (``pull``/``push``) also works called from a thread whose event loop
    runs (a Jupyter notebook, Playwright's sync API): it runs on a loop of its own in a helper thread."""
    import asyncio

    from MyNoSQL.replication.oneshot import replicate_once

    opts = MyNoSQL.Options(background_sync=False)
    with MyNoSQL.MyNoSQL(tmp_path, options=opts) as a, MyNoSQL.MyNoSQL(tmp_path, options=opts) as b:
        a.opendb("a")
        b.opendb("b")
        a.savedoc({"id": "x", "n": 1})
        rev = a.putattachment("x", "f.bin", b"\x00\xff" * 1000, "application/octet-stream", a.readdoc("x")["rev"])

        async def inside_a_loop() -> dict[str, object]:
            return replicate_once(a.db, b.db)

        result = asyncio.run(inside_a_loop())
        assert result["errors"] == [] and result["docs_written"] == 1
        assert b.readdoc("x")["rev"] == rev and b.getattachment("x", "f.bin") == b"\x00\xff" * 1000
