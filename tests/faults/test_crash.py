"""Crash safety: SIGKILL at random moments, torn and damaged files, the process lock."""

from __future__ import annotations

import os
import random
import signal
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import MyNoSQL

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src")}

WRITER = textwrap.dedent(
    """
    import sys, MyNoSQL
    location, durability, start = sys.argv[1], sys.argv[2], int(sys.argv[3])
    opts = MyNoSQL.Options(durability=durability, flush_docs=50, block_docs=8, flush_interval=0.02,
                           shard_max_bytes=20000)
    db = MyNoSQL.MyNoSQL(location, options=opts)
    db.opendb("crash")
    print("open", flush=True)
    i = start
    while True:
        doc = {"id": f"k{i % 300}", "i": i, "pad": "x" * (i % 97)}
        try:
            cur = db.readdoc(doc["id"])
            doc["rev"] = cur["rev"]
        except MyNoSQL.DocumentNotFound:
            pass
        saved = db.savedoc(doc)
        print(saved["id"], saved["rev"], i, flush=True)
        i += 1
    """
)


def _run_and_kill(location: Path, durability: str, start: int, rnd: random.Random) -> dict[str, tuple[str, int]]:
    """Start a writer, SIGKILL it after a random number of acknowledged saves; return the last ack per id."""
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(location), durability, str(start)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    acked: dict[str, tuple[str, int]] = {}
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.strip() == "open", proc.stderr.read() if proc.stderr else first
        target = rnd.randint(20, 1500)
        deadline = time.monotonic() + 60
        n = 0
        while n < target and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            id, rev, i = line.split()
            acked[id] = (rev, int(i))
            n += 1
        assert n == target, f"writer stopped early: {proc.stderr.read() if proc.stderr else ''}"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    # Lines the writer printed before it died are acknowledged too.
    assert proc.stdout is not None
    for line in proc.stdout.read().splitlines():
        parts = line.split()
        if len(parts) == 3:
            acked[parts[0]] = (parts[1], int(parts[2]))
    return acked


@pytest.mark.parametrize("durability", ["process", "power"])
def test_sigkill_loses_no_acknowledged_save(tmp_path: Path, durability: str) -> None:
    rnd = random.Random(1234 if durability == "process" else 4321)
    expected: dict[str, tuple[str, int]] = {}
    start = 0
    for _round in range(6):
        acked = _run_and_kill(tmp_path, durability, start, rnd)
        expected.update(acked)
        start = max(i for _, i in expected.values()) + 1
        with MyNoSQL.MyNoSQL(tmp_path) as db:
            db.opendb("crash")
            newer = 0
            for id, (rev, i) in expected.items():
                got = db.readdoc(id)
                if got["rev"] != rev:
                    # Saved but killed before it printed: allowed once (the save in flight), and it must
                    # descend from the acknowledged revision.
                    state = db.db.state(id)
                    assert state is not None and rev in state.tree, (id, got["rev"], rev)
                    newer += 1
                    expected[id] = (got["rev"], got["i"])
                    continue
                assert got["i"] == i and got["pad"] == "x" * (i % 97)
            assert newer <= 1
            assert len(db) >= len(expected) and len(db) <= len(expected) + 1
            # An unacknowledged new record may exist too; that is the in-flight save.
            expected.update({d["id"]: (d["rev"], d["i"]) for d in db if d["id"] not in expected})
            assert db.verify() == []


def test_second_process_gets_databaselocked_and_lock_dies_with_holder(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, MyNoSQL; h = MyNoSQL.MyNoSQL(sys.argv[1]); h.opendb('l');"
         "print('open', flush=True); sys.stdin.read()", str(tmp_path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        t0 = time.monotonic()
        with pytest.raises(MyNoSQL.DatabaseLocked, match="open in another process"):
            MyNoSQL.MyNoSQL(tmp_path, options=MyNoSQL.Options(exclusive=True)).opendb("l")
        assert time.monotonic() - t0 < 2.0  # at once, never a hang
    finally:
        holder.kill()
        holder.wait(timeout=30)
    with MyNoSQL.MyNoSQL(tmp_path) as db:  # the OS released the lock with the dead holder
        db.opendb("l")


def _filled(location: Path, n: int = 300) -> list[dict[str, object]]:
    opts = MyNoSQL.Options(flush_docs=64, block_docs=16)
    with MyNoSQL.MyNoSQL(location, options=opts) as db:
        db.opendb("c")
        return [db.savedoc({"id": f"r{i:04d}", "v": i, "text": f"value {i}" * 5}) for i in range(n)]


def _readable(location: Path, saved: list[dict[str, object]]) -> tuple[int, int]:
    good = bad = 0
    with MyNoSQL.MyNoSQL(location) as db:
        db.opendb("c")
        for s in saved:
            try:
                assert db.readdoc(str(s["id"])) == s
                good += 1
            except MyNoSQL.CorruptionError:
                bad += 1
        problems = db.verify()
    assert (bad == 0) == (problems == []), problems
    return good, bad


def test_bit_flip_in_a_shard_is_detected_and_the_rest_stays_readable(tmp_path: Path) -> None:
    saved = _filled(tmp_path)
    shard = tmp_path / "c" / "shard-000001.msd"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x10
    shard.write_bytes(bytes(data))
    good, bad = _readable(tmp_path, saved)
    assert 0 < bad <= 64 and good == len(saved) - bad  # one block: a DEFLATE block holds 4 x block_docs records


def test_truncated_shard_reports_corruption_for_its_tail_only(tmp_path: Path) -> None:
    saved = _filled(tmp_path)
    shard = tmp_path / "c" / "shard-000001.msd"
    size = shard.stat().st_size
    with open(shard, "r+b") as f:
        f.truncate(size - 100)
    good, bad = _readable(tmp_path, saved)
    assert 0 < bad <= 64 and good == len(saved) - bad  # the last block (DEFLATE: up to 4 x block_docs records)
    # the database stays writable: new records go to a new shard
    with MyNoSQL.MyNoSQL(tmp_path) as db:
        db.opendb("c")
        db.savedoc({"id": "after", "ok": True})
    with MyNoSQL.MyNoSQL(tmp_path) as db:
        db.opendb("c")
        assert db.readdoc("after")["ok"] is True


def test_torn_wal_tail_is_cut_and_everything_before_it_kept(tmp_path: Path) -> None:
    opts = MyNoSQL.Options(flush_docs=10**6, flush_interval=3600)
    db = MyNoSQL.MyNoSQL(tmp_path, options=opts)
    db.opendb("w")
    saved = [db.savedoc({"i": i}) for i in range(100)]
    wal = sorted((tmp_path / "w").glob("wal-*.log"))[-1]
    # simulate a crash: drop the handle without closing, then tear the last frame
    store = db.db._store
    store._stop.set()
    store._wake.set()
    store._thread.join()
    db.db._lock.release()
    data = bytearray(wal.read_bytes())
    end = _frames_end(bytes(data))
    data[end - 7 : end] = bytes(7)  # the last copy into the log was cut short by the crash
    wal.write_bytes(bytes(data))
    with MyNoSQL.MyNoSQL(tmp_path) as db2:
        db2.opendb("w")
        assert len(db2) == 99
        for s in saved[:-1]:
            assert db2.readdoc(str(s["id"])) == s
        assert db2.verify() == []


def _frames_end(data: bytes) -> int:
    pos = 8
    while pos + 8 <= len(data):
        (length,) = struct.unpack_from("<I", data, pos)
        if length == 0:
            break
        pos += 8 + length
    return pos


def test_damage_inside_the_wal_is_reported_not_silently_dropped(tmp_path: Path) -> None:
    opts = MyNoSQL.Options(flush_docs=10**6, flush_interval=3600)
    db = MyNoSQL.MyNoSQL(tmp_path, options=opts)
    db.opendb("w")
    for i in range(100):
        db.savedoc({"i": i})
    store = db.db._store
    store._stop.set()
    store._wake.set()
    store._thread.join()
    db.db._lock.release()
    wal = sorted((tmp_path / "w").glob("wal-*.log"))[-1]
    data = bytearray(wal.read_bytes())
    data[_frames_end(bytes(data)) // 2] ^= 0xFF
    wal.write_bytes(bytes(data))
    with MyNoSQL.MyNoSQL(tmp_path) as db2:
        db2.opendb("w")
        problems = db2.verify()
        assert problems and "checksum mismatch" in problems[0]
        assert 0 < len(db2) < 100
    assert list((tmp_path / "w").glob("*.corrupt"))


COMPACTING = textwrap.dedent(
    """
    import sys, threading, MyNoSQL
    location, step, round_ = sys.argv[1], sys.argv[2], int(sys.argv[3])
    opts = MyNoSQL.Options(flush_docs=10_000, block_docs=8, flush_interval=60, shard_max_bytes=4000,
                           background_sync=False)
    h = MyNoSQL.MyNoSQL(location, options=opts)
    db = h.opendb("c")
    for i in range(60):  # updates and deletes leave dead records behind, so the compaction has work
        id = f"k{i % 25}"
        doc = {"id": id, "i": i, "round": round_, "pad": "p" * (i * 7 % 50)}
        if id in db:
            doc["rev"] = db.readdoc(id)["rev"]
        if i % 9 == 8 and "rev" in doc:
            saved = db.deletedoc(id, doc["rev"])
        else:
            saved = db.savedoc(doc)
        print("ack", id, saved["rev"], db.seq, flush=True)
        if i == 30:
            db.flush()
    owner_name, method = step.split(".")
    owner = getattr(db._store, owner_name)
    real = getattr(owner, method)

    def step_then_hang(*args, **kwargs):
        out = real(*args, **kwargs)
        print("at", step, flush=True)
        threading.Event().wait()  # until SIGKILL
        return out

    setattr(owner, method, step_then_hang)
    db.compact()
    print("compacted without reaching the step", flush=True)
    """
)


@pytest.mark.parametrize("step", ["shards.append", "index.commit_flush", "wal.remove_through"])
def test_sigkill_at_each_step_of_a_compaction_loses_nothing(tmp_path: Path, step: str) -> None:
    """SIGKILL exactly after a step of compaction (blocks written / index committed / log dropped), twice over."""
    for round_ in range(3):
        proc = subprocess.Popen([sys.executable, "-c", COMPACTING, str(tmp_path), step, str(round_)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
        acked: dict[str, str] = {}
        seq = 0
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                parts = line.split()
                if parts[0] == "ack":
                    acked[parts[1]] = parts[2]
                    seq = int(parts[3])
                else:
                    assert parts[:2] == ["at", step], line
                    break
            else:
                pytest.fail(f"the child ended early: {proc.stderr.read() if proc.stderr else ''}")
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        with MyNoSQL.MyNoSQL(tmp_path, options=MyNoSQL.Options(background_sync=False)) as h:
            db = h.opendb("c")
            assert db.verify() == []
            assert db.seq >= seq, "the change sequence went back: a peer's poll position would skip changes"
            for id, rev in acked.items():
                assert db.state(id).winner == rev  # type: ignore[union-attr]
            db.savedoc({"id": f"after-{round_}"})
            db.compact()
            assert db.verify() == []
