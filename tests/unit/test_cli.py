"""The mynosql command against real databases (and a real mirror for replicate)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from support.mirrors import ENV, MirrorProcess, free_port

import MyNoSQL


def run(*args: str, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "MyNoSQL", *args], input=input, capture_output=True, env=ENV,
                          timeout=300)


def test_every_subcommand_has_help() -> None:
    for cmd in ["serve", "status", "get", "put", "delete", "export", "import", "verify", "compact", "conflicts",
                "replicate", "bench", "demo"]:
        out = run(cmd, "--help")
        assert out.returncode == 0 and b"Usage: mynosql " + cmd.encode() in out.stdout, cmd


def test_put_get_delete_status_with_exit_codes(tmp_path: Path) -> None:
    p = ["--path", str(tmp_path), "--db", "d"]
    out = run("put", *p, "--json", input=b'{"id": "a", "n": 1, "day": {"$date": "2026-11-26"}}')
    assert out.returncode == 0
    rev = json.loads(out.stdout)["rev"]
    got = run("get", *p, "a")
    assert got.returncode == 0 and json.loads(got.stdout) == {"id": "a", "rev": rev, "n": 1,
                                                              "day": {"$date": "2026-11-26"}}
    assert run("get", *p, "missing").returncode == 4
    assert run("put", *p, input=b'{"id": "a", "n": 2}').returncode == 5  # exists: needs its rev
    assert run("put", *p, input=b"{not json").returncode == 2
    upd = run("put", *p, "--json", input=json.dumps({"id": "a", "rev": rev, "n": 2}).encode())
    assert upd.returncode == 0
    st = json.loads(run("status", *p, "--json").stdout)
    assert st["records"] == 1 and st["mode"] == "Peer" and st["conflicts"] == 0
    assert run("delete", *p, "a").returncode == 0
    assert run("get", *p, "a").returncode == 4
    with MyNoSQL.MyNoSQL(tmp_path) as h:
        h.opendb("d")
        assert "a" not in h
        locked = run("status", *p)
        assert locked.returncode == 3 and b"open in another process" in locked.stderr


def test_export_import_round_trip_of_100000_records_with_conflicts(tmp_path: Path) -> None:
    with MyNoSQL.MyNoSQL(tmp_path) as h:
        db = h.opendb("src")
        for i in range(100_000):
            h.savedoc({"id": f"r{i:06d}", "i": i, "tags": ["x", i % 7]})
        # a conflict, a deletion and a history
        base = h.readdoc("r000001")
        h.savedoc({**base, "i": 111})
        other = MyNoSQL.docs.revtree.new_rev(base["rev"], False, b'{"i":-1}')
        db.put_replicated("r000001", [other, base["rev"]], False, b'{"i":-1}')  # a concurrent edit
        h.deletedoc("r000002", h.readdoc("r000002")["rev"])
        expected = {s.id: (s.tree, s.bodies) for s in db.store.iter_states(0)}
    dump = tmp_path / "dump.jsonl"
    out = run("export", "--path", str(tmp_path), "--db", "src", str(dump))
    assert out.returncode == 0, out.stderr
    assert sum(1 for _ in dump.open("rb")) == 100_000
    out = run("import", "--path", str(tmp_path), "--db", "dst", str(dump), "--json")
    assert out.returncode == 0 and json.loads(out.stdout) == {"imported": 100_000, "errors": 0}
    with MyNoSQL.MyNoSQL(tmp_path) as h:
        db = h.opendb("dst")
        got = {s.id: (s.tree, s.bodies) for s in db.store.iter_states(0)}
        assert got == expected  # same ids, same revision trees (conflicts, tombstones), same bodies
        assert len(h) == 99_999 and len(h.conflicts("r000001")) == 1
    assert run("verify", "--path", str(tmp_path), "--db", "dst").returncode == 0


def test_verify_catches_a_flipped_byte_and_compact_and_conflicts(tmp_path: Path) -> None:
    with MyNoSQL.MyNoSQL(tmp_path, options=MyNoSQL.Options(block_docs=16)) as h:
        h.opendb("v")
        for i in range(500):
            h.savedoc({"id": f"k{i}", "text": f"value {i}" * 4})
    assert run("verify", "--path", str(tmp_path), "--db", "v").returncode == 0
    assert json.loads(run("conflicts", "--path", str(tmp_path), "--db", "v", "--json").stdout) == {}
    shard = next((tmp_path / "v").glob("shard-*.msd"))
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    out = run("verify", "--path", str(tmp_path), "--db", "v", "--json")
    assert out.returncode == 1
    report = json.loads(out.stdout)
    assert report["ok"] is False and "checksum" in " ".join(report["problems"])
    damaged = run("conflicts", "--path", str(tmp_path), "--db", "v")
    assert damaged.returncode == 1 and b"checksum mismatch" in damaged.stderr  # said, not hidden
    assert json.loads(run("compact", "--path", str(tmp_path), "--db", "x", "--json").stdout)["moved"] == 0


@pytest.fixture
def mirror(tmp_path: Path) -> Any:
    m = MirrorProcess(tmp_path / "m", "db", free_port(), []).start()
    yield m
    m.stop()


def test_replicate_between_a_path_and_a_mirror_both_ways(tmp_path: Path, mirror: MirrorProcess) -> None:
    with MyNoSQL.MyNoSQL(tmp_path) as h:
        h.opendb("local")
        for i in range(50):
            h.savedoc({"id": f"p{i}"})
    out = run("replicate", str(tmp_path / "local"), f"{mirror.url}/db", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["docs_written"] == 50
    back = run("replicate", f"{mirror.url}/db", str(tmp_path / "copy"), "--json")
    assert json.loads(back.stdout)["docs_written"] == 50
    again = run("replicate", f"{mirror.url}/db", str(tmp_path / "copy"), "--json")
    assert json.loads(again.stdout)["docs_written"] == 0
    down = run("replicate", str(tmp_path / "local"), f"http://127.0.0.1:{free_port()}/db")
    assert down.returncode == 6
    # status of a peer of this mirror: its pending pushes and the mirror's lag, live
    with MyNoSQL.MyNoSQL(tmp_path, options=MyNoSQL.Options(background_sync=False)) as h:
        h.opendb("local")
        h.addpeer(f"{mirror.url}/db")
        h.savedoc({"id": "unsent"})
    st = json.loads(run("status", "--path", str(tmp_path), "--db", "local", "--json").stdout)
    info = st["mirrors"][f"{mirror.url}/db"]
    # the one-shot push above shares the checkpoint of the background push: only the new record is pending
    assert info["reachable"] is True and info["pending_pushes"] == 1 and isinstance(info["lag"], int)


def test_bench_subcommand_runs_the_benchmark_scripts(tmp_path: Path) -> None:
    out = run("bench", "local", "--quick", "--out", str(tmp_path / "local.md"))
    assert out.returncode == 0, out.stderr[-2000:]
    assert b"| metric |" in out.stdout and (tmp_path / "local.md").exists()
