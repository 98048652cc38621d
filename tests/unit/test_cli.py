"""The mynosql command against real databases (and a real mirror for replicate)."""

from __future__ import annotations

import base64
import fcntl
import json
import os
import pty
import re
import select
import selectors
import signal
import struct
import subprocess
import sys
import termios
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from support.mirrors import ENV, MirrorProcess, free_port

import MyNoSQL
from MyNoSQL.testing import poll_until


def run(*args: str, input: bytes | None = None,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "MyNoSQL", *args], input=input, capture_output=True,
                          env={**ENV, **(env or {})}, timeout=300)


def run_on_terminal(*args: str, timeout: float = 120.0) -> tuple[int, str]:
    """Run the command with stderr on a pseudo-terminal (stdout to /dev/null); its exit code and what the
    terminal showed. Bounded: ``timeout`` seconds in all, at most 10,000 reads."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # rows, columns
    proc = subprocess.Popen([sys.executable, "-m", "MyNoSQL", *args], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=slave, env=ENV)
    os.close(slave)
    shown = b""
    deadline = time.monotonic() + timeout
    try:
        for _ in range(10_000):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{args[0]} did not finish within {timeout} s: {shown[-2000:]!r}")
            ready, _, _ = select.select([master], [], [], min(left, 1.0))
            if not ready:
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the command closed the terminal (it exited)
                break
            if not chunk:
                break
            shown += chunk
        return proc.wait(timeout=30), shown.decode(errors="replace")
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


COMMANDS = ["serve", "status", "get", "put", "delete", "export", "import", "verify", "compact", "conflicts",
            "replicate", "bench", "demo"]


def test_every_subcommand_has_help_and_all_but_demo_take_json() -> None:
    for cmd in COMMANDS:
        out = run(cmd, "--help")
        assert out.returncode == 0 and b"Usage: mynosql " + cmd.encode() in out.stdout, cmd
        assert (b"--json" in out.stdout) == (cmd != "demo"), cmd


def test_top_level_help_lists_every_exit_code() -> None:
    out = run("--help")
    assert out.returncode == 0
    codes = re.findall(r"^ +(\d+) +\S", out.stdout.decode(), flags=re.M)
    assert codes == ["0", "1", "2", "3", "4", "5", "6", "130"], out.stdout.decode()



@pytest.mark.process
def test_ctrl_c_in_the_middle_of_a_file_import_keeps_what_was_read_and_closes_cleanly(tmp_path: Path) -> None:
    """SIGINT while an import of a file is busy (not waiting for input): it stops at the next line, writes the
    records read so far, closes the database, exits 130; every record there is the file's, and verify is clean."""
    n = 60_000
    dump = tmp_path / "dump.jsonl"
    with dump.open("wb") as f:
        for i in range(n):
            rev = f"1-{i:032x}"
            f.write(json.dumps({"id": f"r{i:06}", "revs": [[rev, -1, 0]], "leaves": {rev: {"i": i}}}).encode() + b"\n")
    proc = subprocess.Popen([sys.executable, "-m", "MyNoSQL", "import", "--path", str(tmp_path / "db"), "--db", "d",
                             str(dump)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**ENV, "MYNOSQL_PROGRESS_INTERVAL": "0"})
    assert proc.stderr is not None
    try:
        shown = b""
        deadline = time.monotonic() + 60
        while shown.count(b"import: ") < 2000 and time.monotonic() < deadline:  # well into the file
            ready, _, _ = select.select([proc.stderr], [], [], 1.0)
            if ready:
                chunk = os.read(proc.stderr.fileno(), 65536)
                assert chunk, "import ended before it was interrupted"
                shown += chunk
        proc.send_signal(signal.SIGINT)
        _stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    assert proc.returncode == 130, stderr[-2000:]
    assert b"Interrupted." in stderr and b"Traceback" not in stderr
    with MyNoSQL.MyNoSQL(tmp_path / "db") as h:
        db = h.opendb("d")
        got = {doc["id"]: doc for doc in db}
        assert 2000 <= len(got) < n  # interrupted in the middle, what came before it kept
        for id, doc in got.items():
            assert doc["i"] == int(id[1:]) and doc["rev"] == f"1-{int(id[1:]):032x}"
        assert db.verify() == []

def test_ctrl_c_exits_130_with_a_json_error(tmp_path: Path) -> None:
    """An import reading a pipe, interrupted (SIGINT) while it waits for the next line: exit 130, the records
    read so far kept, and with --json the error object on stdout."""
    proc = subprocess.Popen([sys.executable, "-m", "MyNoSQL", "import", "--path", str(tmp_path), "--db", "d",
                             "--json", "-"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**ENV, "MYNOSQL_PROGRESS_INTERVAL": "0"})
    assert proc.stdin is not None and proc.stderr is not None
    try:
        for id in ("a", "b"):
            rev = "1-" + id * 32
            proc.stdin.write(json.dumps({"id": id, "revs": [[rev, -1, 0]], "leaves": {rev: {"n": 1}}}).encode() + b"\n")
        proc.stdin.flush()
        # a progress line as each line is read (before it is imported): two lines, "a" is imported; the command
        # is in its loop, importing "b" or waiting for the next line
        shown = b""
        deadline = time.monotonic() + 60
        while shown.count(b"import: ") < 2 and time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stderr], [], [], 1.0)
            if ready:
                chunk = os.read(proc.stderr.fileno(), 4096)
                assert chunk, "import ended before it was interrupted"
                shown += chunk
        assert shown.count(b"import: ") == 2, shown
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    assert proc.returncode == 130, shown + stderr
    assert b"Interrupted." in stderr and b"Traceback" not in stderr
    assert json.loads(stdout) == {"error": "interrupted", "message": "interrupted", "exit_code": 130}
    out = run("get", "--path", str(tmp_path), "--db", "d", "a")  # closed cleanly: what was imported is there
    assert out.returncode == 0 and json.loads(out.stdout)["n"] == 1, out.stderr


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
    bad = run("put", *p, "--json", input=b"{not json")  # an error with --json: a JSON object on stdout as well
    assert bad.returncode == 2 and json.loads(bad.stdout)["error"] == "usage" and b"not JSON" in bad.stderr
    assert json.loads(bad.stdout)["exit_code"] == 2 and "not JSON" in json.loads(bad.stdout)["message"]
    upd = run("put", *p, "--json", input=json.dumps({"id": "a", "rev": rev, "n": 2}).encode())
    assert upd.returncode == 0
    st = json.loads(run("status", *p, "--json").stdout)
    assert st["records"] == 1 and st["mode"] == "Peer" and st["conflicts"] == 0
    assert run("delete", *p, "a").returncode == 0
    assert run("get", *p, "a").returncode == 4
    with MyNoSQL.MyNoSQL(tmp_path) as h:  # the command shares the database with the process that has it open
        h.opendb("d")
        h.savedoc({"id": "b"})
        assert json.loads(run("status", *p, "--json").stdout)["records"] == 1
        assert json.loads(run("get", *p, "b").stdout)["id"] == "b"
        assert run("export", *p).stdout.count(b"\n") == 2  # a (deleted) and b
    with MyNoSQL.MyNoSQL(tmp_path, options=MyNoSQL.Options(exclusive=True)) as h:
        h.opendb("d")
        assert "a" not in h
        locked = run("status", *p)
        assert locked.returncode == 3 and b"open in another process" in locked.stderr


@pytest.mark.slow
@pytest.mark.parametrize("n", [5_000, pytest.param(100_000, marks=pytest.mark.soak)])
def test_export_import_round_trip_with_conflicts(tmp_path: Path, n: int) -> None:
    with MyNoSQL.MyNoSQL(tmp_path) as h:
        db = h.opendb("src")
        for i in range(n):
            h.savedoc({"id": f"r{i:06d}", "i": i, "tags": ["x", i % 7]})
        # a conflict, a deletion and a history
        base = h.readdoc("r000001")
        h.savedoc({**base, "i": 111})
        other = MyNoSQL.records.revtree.new_rev(base["rev"], False, b'{"i":-1}')
        db.put_replicated("r000001", [other, base["rev"]], False, b'{"i":-1}')  # a concurrent edit
        h.deletedoc("r000002", h.readdoc("r000002")["rev"])
        expected = {s.id: (s.tree, s.bodies) for s in db.states_since(0)}
    dump = tmp_path / "dump.jsonl"
    out = run("export", "--path", str(tmp_path), "--db", "src", str(dump))
    assert out.returncode == 0, out.stderr
    assert sum(1 for _ in dump.open("rb")) == n
    out = run("import", "--path", str(tmp_path), "--db", "dst", str(dump), "--json")
    assert out.returncode == 0 and json.loads(out.stdout) == {"imported": n, "errors": 0}
    with MyNoSQL.MyNoSQL(tmp_path) as h:
        db = h.opendb("dst")
        got = {s.id: (s.tree, s.bodies) for s in db.states_since(0)}
        assert got == expected  # same ids, same revision trees (conflicts, tombstones), same bodies
        assert len(h) == n - 1 and len(h.conflicts("r000001")) == 1
    assert run("verify", "--path", str(tmp_path), "--db", "dst").returncode == 0


def test_export_import_round_trip_of_attachments(tmp_path: Path) -> None:
    photo, note = os.urandom(300_000), b"a note"
    with MyNoSQL.MyNoSQL(tmp_path) as h:
        h.opendb("src")
        h.savedoc({"id": "plain", "v": 1})
        rev = h.putattachment("a", "photos/p.jpg", photo, "image/jpeg")
        h.putattachment("a", "note.txt", note, "text/plain", rev)
        h.putattachment("b", "same.jpg", photo, "image/jpeg")
    dump = tmp_path / "dump.jsonl"
    assert run("export", "--path", str(tmp_path), "--db", "src", str(dump)).returncode == 0
    lines = {json.loads(line)["id"]: json.loads(line) for line in dump.open("rb")}
    assert "attachments" not in lines["plain"]  # a record without attachments: the line it always was
    out = run("import", "--path", str(tmp_path), "--db", "dst", str(dump), "--json")
    assert out.returncode == 0 and json.loads(out.stdout) == {"imported": 3, "errors": 0}, out.stderr
    with MyNoSQL.MyNoSQL(tmp_path) as h:
        h.opendb("dst")
        assert h.getattachment("a", "photos/p.jpg") == photo and h.getattachment("a", "note.txt") == note
        assert h.attachments("b")["same.jpg"]["revpos"] == 1 and h.getattachment("b", "same.jpg") == photo
        assert len(list((tmp_path / "dst" / "attachments").glob("??/*"))) == 2
    bad = lines["a"]
    leaf = next(iter(bad["attachments"]))
    bad["attachments"][leaf]["note.txt"]["data"] = base64.b64encode(b"tampered").decode()
    out = run("import", "--path", str(tmp_path), "--db", "dst2", "-", input=json.dumps(bad).encode() + b"\n")
    assert out.returncode == 1 and b"digest" in out.stderr


def test_verify_catches_a_flipped_byte(tmp_path: Path) -> None:
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


def test_status_of_running_and_stopped_mirrors(tmp_path: Path) -> None:
    a = MirrorProcess(tmp_path / "a", "db", free_port(), []).start()
    b = MirrorProcess(tmp_path / "b", "db", free_port(), [f"{a.url}"]).start()
    try:
        for i in range(5):
            urllib.request.urlopen(urllib.request.Request(f"{a.url}/db/r{i}", data=b"{}", method="PUT"), timeout=10)
        locked = run("status", "--path", str(tmp_path / "b"), "--db", "db")
        assert locked.returncode == 3 and b"--url" in locked.stderr  # the running mirror holds it: say what to do

        def pulled() -> dict[str, Any] | None:
            st = json.loads(run("status", "--db", "db", "--url", b.url, "--json").stdout)
            return st if st["records"] == 5 and st["mirrors"][a.url]["lag"] == 0 else None

        st = poll_until(pulled, timeout=60, what="b's status: a's 5 records pulled, lag 0")
        assert st["mode"] == "Mirror" and st["mirrors"][a.url]["reachable"] is True and st["disk_bytes"] > 0
        missing = run("status", "--db", "nope", "--url", b.url)
        assert missing.returncode == 4
        assert run("status", "--db", "db", "--url", f"http://127.0.0.1:{free_port()}").returncode == 6
    finally:
        b.stop()
    for i in range(5, 8):  # a moves on while b is stopped: b's status (read from its folder) shows the lag
        urllib.request.urlopen(urllib.request.Request(f"{a.url}/db/r{i}", data=b"{}", method="PUT"), timeout=10)
    try:
        st = json.loads(run("status", "--path", str(tmp_path / "b"), "--db", "db", "--json").stdout)
        assert st["mode"] == "Mirror" and st["records"] == 5
        assert st["mirrors"][a.url] == {"pending_pushes": 0, "reachable": True, "lag": 3}
    finally:
        a.stop()


@pytest.mark.slow
def test_bench_subcommand_runs_the_benchmark_scripts_with_a_json_summary(tmp_path: Path) -> None:
    out = run("bench", "local", "--quick", "--out", str(tmp_path / "local.md"), "--json")
    assert out.returncode == 0, out.stderr[-2000:]
    assert b"| metric |" in out.stderr and (tmp_path / "local.md").exists()  # the report: on stderr with --json
    summary = json.loads(out.stdout)
    assert summary["ok"] is True and [b["benchmark"] for b in summary["benchmarks"]] == ["local"]
    (table,) = summary["benchmarks"][0]["tables"]
    written = (tmp_path / "local.md").read_text()
    assert len(table) == written.count("\n| ") - 1  # a row per table line of the report (header excluded)
    for row in table:
        assert set(row) == {"metric", "MyNoSQL", "anchor", "anchor value", "ratio", "aim", "met?"}
        assert f"| {row['metric']} | {row['MyNoSQL']} |" in written


def test_bench_export_import_quick_reports_peak_rss_and_the_commit(tmp_path: Path) -> None:
    out = run("bench", "export_import", "--quick", "--out", str(tmp_path / "ei.md"), "--json")
    assert out.returncode == 0, out.stderr[-2000:]
    written = (tmp_path / "ei.md").read_text()
    assert "- 2,000 records;" in written and b"| step |" in out.stderr  # --quick: a small run; the report on stderr
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).resolve().parents[2],
                          capture_output=True, text=True, check=False).stdout.strip()
    assert re.search(r"^- MyNoSQL from .*\(git [0-9a-f]{7,}", written, flags=re.M), written
    if head:
        assert f"(git {head}" in written
    summary = json.loads(out.stdout)
    assert summary["ok"] is True and [b["benchmark"] for b in summary["benchmarks"]] == ["export_import"]
    (table,) = summary["benchmarks"][0]["tables"]
    rows = {row["step"]: row for row in table}
    assert set(rows) == {"create (savedoc loop, context)", "export", "import"}
    for step in ("export", "import"):
        assert 0 < float(rows[step]["peak RSS (MB)"].replace(",", "")) < 150
        assert rows[step]["aim"] == "< 150 MB" and rows[step]["met?"] == "yes"
        assert f"| {step} | {rows[step]['seconds']} |" in written


def test_put_from_a_file_and_delete_by_rev_with_json(tmp_path: Path) -> None:
    p = ["--path", str(tmp_path), "--db", "d"]
    rec = tmp_path / "rec.json"
    rec.write_text(json.dumps({"id": "f", "n": 1, "blob": {"$bytes": "AAE="}}))
    first = run("put", *p, str(rec), "--json")
    assert first.returncode == 0, first.stderr
    rev1 = json.loads(first.stdout)["rev"]
    assert rev1.startswith("1-") and json.loads(first.stdout)["id"] == "f"
    rec.write_text(json.dumps({"id": "f", "rev": rev1, "n": 2}))
    second = run("put", *p, str(rec))  # text: "ID REV"
    assert second.returncode == 0
    id, rev2 = second.stdout.decode().split()
    assert id == "f" and rev2.startswith("2-")
    assert json.loads(run("get", *p, "f").stdout) == {"id": "f", "rev": rev2, "n": 2}
    assert run("put", *p, str(tmp_path / "missing.json")).returncode == 2  # no such file: usage
    stale = run("delete", *p, "f", "--rev", rev1, "--json")
    assert stale.returncode == 5 and json.loads(stale.stdout) == {
        "error": "conflict", "exit_code": 5, "message": f"record 'f' has revision {rev2}, not {rev1}"}
    gone = run("delete", *p, "f", "--rev", rev2, "--json")
    assert gone.returncode == 0, gone.stderr
    res = json.loads(gone.stdout)
    assert res["id"] == "f" and res["deleted"] is True and res["rev"].startswith("3-")
    missing = run("delete", *p, "f", "--json")
    assert missing.returncode == 4 and json.loads(missing.stdout)["error"] == "not_found"
    with MyNoSQL.MyNoSQL(tmp_path) as h:
        db = h.opendb("d")
        state = db.state("f")
        assert state is not None and state.winner == res["rev"] and state.tree[res["rev"]] == (rev2, True)


@pytest.mark.parametrize("cmd", [["status"], ["get", "a"], ["delete", "a"], ["export"], ["verify"], ["compact"],
                                 ["conflicts"]])
def test_a_database_that_does_not_exist_is_not_found_and_not_created(tmp_path: Path, cmd: list[str]) -> None:
    nowhere = tmp_path / "nowhere"
    out = run(cmd[0], "--path", str(nowhere), "--db", "x", *cmd[1:])
    assert out.returncode == 4 and b"no database 'x'" in out.stderr, out.stderr
    assert not nowhere.exists()
    data = tmp_path / "data"
    (data / "notadb").mkdir(parents=True)
    (data / "notadb" / "notes.txt").write_text("not a database")
    for name in ("x", "notadb"):
        out = run(cmd[0], "--path", str(data), "--db", name, "--json", *cmd[1:])
        assert out.returncode == 4 and json.loads(out.stdout)["error"] == "not_found", out.stderr
    assert sorted(p.relative_to(data).as_posix() for p in data.rglob("*")) == ["notadb", "notadb/notes.txt"]


def test_replicate_from_a_missing_path_creates_nothing_put_and_import_create(tmp_path: Path) -> None:
    out = run("replicate", str(tmp_path / "a" / "src"), str(tmp_path / "b" / "dst"))
    assert out.returncode == 4 and b"no database 'src'" in out.stderr
    assert list(tmp_path.iterdir()) == []  # neither side was created
    assert run("put", "--path", str(tmp_path / "p"), "--db", "d", input=b'{"id": "x"}').returncode == 0
    assert run("import", "--path", str(tmp_path / "i"), "--db", "d", input=b"").returncode == 0
    assert run("replicate", str(tmp_path / "p" / "d"), str(tmp_path / "r" / "d")).returncode == 0
    for folder in ("p", "i", "r"):
        assert run("status", "--path", str(tmp_path / folder), "--db", "d").returncode == 0, folder
    assert json.loads(run("get", "--path", str(tmp_path / "r"), "--db", "d", "x").stdout)["id"] == "x"


def make_dirty(location: Path, n: int = 2400) -> dict[str, Any]:
    """Database "d": ``n`` records on disk, every third one then rewritten (a third of the old states dead).
    Returns the records as saved last."""
    recs = {}
    with MyNoSQL.MyNoSQL(location, options=MyNoSQL.Options(block_docs=16)) as h:
        h.opendb("d")
        for i in range(n):
            rec = h.savedoc({"id": f"k{i:05d}", "text": f"value {i} " * 8})
            recs[rec["id"]] = rec
    with MyNoSQL.MyNoSQL(location, options=MyNoSQL.Options(block_docs=16)) as h:
        h.opendb("d")
        for i in range(0, n, 3):
            rec = h.savedoc({**recs[f"k{i:05d}"], "text": "rewritten"})
            recs[rec["id"]] = rec
    return recs


def test_compact_reclaims_dead_records_and_keeps_the_data(tmp_path: Path) -> None:
    recs = make_dirty(tmp_path)
    p = ["--path", str(tmp_path), "--db", "d"]
    out = run("compact", *p, "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    # every live record of the shard that held dead ones moved; the dead third is gone from the shards
    assert report["moved"] == len(recs) == 2400
    assert report["shard_bytes_after"] < report["shard_bytes_before"] * 0.9
    assert report["bytes_before"] - report["bytes_after"] >= report["shard_bytes_before"] - report["shard_bytes_after"]
    with MyNoSQL.MyNoSQL(tmp_path) as h:
        h.opendb("d")
        assert {r["id"]: r for r in h} == recs  # same records, same revisions
    assert run("verify", *p).returncode == 0
    again = json.loads(run("compact", *p, "--json").stdout)
    assert again["moved"] == 0 and again["shard_bytes_after"] == report["shard_bytes_after"]
    text = run("compact", *p).stdout.decode()
    assert text.startswith("moved 0 records;")


def test_conflicts_of_two_divergent_databases_listed_and_resolved(tmp_path: Path) -> None:
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    assert run("put", "--path", a, "--db", "d", input=b'{"id": "c", "v": 0}').returncode == 0
    assert run("put", "--path", a, "--db", "d", input=b'{"id": "calm", "v": 0}').returncode == 0
    assert run("replicate", f"{a}/d", f"{b}/d").returncode == 0
    for where, v in ((a, "from a"), (b, "from b")):  # both edit "c" while apart
        with MyNoSQL.MyNoSQL(where) as h:
            h.opendb("d")
            h.savedoc({**h.readdoc("c"), "v": v})
    assert json.loads(run("conflicts", "--path", a, "--db", "d", "--json").stdout) == {}
    assert run("replicate", f"{b}/d", f"{a}/d").returncode == 0
    with MyNoSQL.MyNoSQL(a) as h:
        h.opendb("d")
        winner, losers = h.readdoc("c")["rev"], h.conflicts("c")
    assert len(losers) == 1
    out = run("conflicts", "--path", a, "--db", "d", "--json")
    assert out.returncode == 0 and json.loads(out.stdout) == {"c": {"winner": winner, "conflicts": losers}}
    assert run("conflicts", "--path", a, "--db", "d").stdout.decode().strip() == f"c {winner} vs {losers[0]}"
    assert json.loads(run("status", "--path", a, "--db", "d", "--json").stdout)["conflicts"] == 1
    # the losers' contents, to merge them
    shown = json.loads(run("conflicts", "--path", a, "--db", "d", "--json", "--contents").stdout)["c"]["contents"]
    assert {doc["v"] for doc in shown.values()} == {"from a", "from b"} and set(shown) == {winner, *losers}
    text = run("conflicts", "--path", a, "--db", "d", "--contents").stdout.decode()
    assert f"{winner} (winner): " in text and f"{losers[0]}: " in text and '"from a"' in text and '"from b"' in text
    # an export carries the conflict into another database
    dump = run("export", "--path", a, "--db", "d").stdout
    assert run("import", "--path", str(tmp_path / "c"), "--db", "d", input=dump).returncode == 0
    assert json.loads(run("conflicts", "--path", str(tmp_path / "c"), "--db", "d", "--json").stdout) == {
        "c": {"winner": winner, "conflicts": losers}}
    # resolved by deleting the losing revision
    assert run("delete", "--path", a, "--db", "d", "c", "--rev", losers[0]).returncode == 0
    assert run("conflicts", "--path", a, "--db", "d").stdout.decode().strip() == "no conflicts"
    assert json.loads(run("get", "--path", a, "--db", "d", "c").stdout)["rev"] == winner


def progress_command(cmd: str, tmp_path: Path) -> list[str]:
    """The arguments of ``cmd`` over the dirty database "d" in ``tmp_path`` (import: from its export)."""
    p = ["--path", str(tmp_path), "--db", "d"]
    if cmd == "import":
        dump = tmp_path / "dump.jsonl"
        with dump.open("wb") as f:
            subprocess.run([sys.executable, "-m", "MyNoSQL", "export", *p], stdout=f, env=ENV, check=True,
                           timeout=120, stderr=subprocess.DEVNULL)
        return ["import", "--path", str(tmp_path), "--db", "copy", str(dump)]
    if cmd == "replicate":
        return ["replicate", str(tmp_path / "d"), str(tmp_path / "copy")]
    if cmd == "export":
        return ["export", *p, str(tmp_path / "out.jsonl")]
    return [cmd, *p]


# what each command counts: the total it knows (at the end), and its unit
PROGRESS = {"export": (2400, "records"), "verify": (3200, "records"), "compact": (2400, "records"),
            "import": (-1, "MB"), "replicate": (2400, "changes")}


@pytest.mark.parametrize("cmd", sorted(PROGRESS))
def test_progress_lines_when_not_on_a_terminal(tmp_path: Path, cmd: str) -> None:
    make_dirty(tmp_path)
    args = progress_command(cmd, tmp_path)
    out = run(*args, env={"MYNOSQL_PROGRESS_INTERVAL": "0"})  # a line at every step instead of every 5 s
    assert out.returncode == 0, out.stderr
    lines = out.stderr.decode().splitlines()
    total, unit = PROGRESS[cmd]
    num = r"[\d,.]+"
    pattern = rf"{cmd}: ({num}) of ({num}) {unit}, {num} {unit}/s, ETA {num} s"
    steps = [m for m in map(re.compile(pattern).fullmatch, lines) if m]
    assert len(steps) >= 2, lines  # periodic: more than one line along the way
    counts = [float(m.group(1).replace(",", "")) for m in steps]
    assert counts == sorted(counts) and counts[-1] > counts[0]
    if cmd == "import":
        size = f"{(tmp_path / 'dump.jsonl').stat().st_size / 1e6:,.1f}"
        assert {m.group(2) for m in steps} == {size} and steps[-1].group(1) == size
    elif cmd == "replicate":
        # the total: first an upper bound, the source's 3,200 writes (2,400 records, 800 of them written twice;
        # the feed has a row per record), never below the count; once the feed is read to its end, the count
        totals = [float(m.group(2).replace(",", "")) for m in steps]
        assert totals[0] == 3200 and all(t >= c for t, c in zip(totals, counts, strict=True)), lines
        assert steps[-1].group(1) == steps[-1].group(2) == "2,400"  # every change processed
    else:
        assert {m.group(2) for m in steps} == {f"{total:,}"} and steps[-1].group(1) == f"{total:,}"
    assert re.fullmatch(rf"{cmd}: {num} {unit} in {num} s", lines[-1]), lines


def test_replicate_total_from_the_sources_update_seq() -> None:
    """The total of replicate's progress: the source's update_seq (CouchDB's "123-g1AAA...": its integer prefix)
    minus where the pass starts; None when either cannot be read as a number."""
    import asyncio

    from MyNoSQL.errors import RemoteError
    from MyNoSQL.replication.replicator import changes_to_come, seq_number

    class Source:
        def __init__(self, update_seq: Any = None, status: int | None = None) -> None:
            self.update_seq, self.status = update_seq, status

        async def info(self) -> dict[str, Any]:
            if self.status is not None:
                raise RemoteError("refused", status=self.status)
            return {"db_name": "d", "update_seq": self.update_seq}

    def total(update_seq: Any, since: Any) -> int | None:
        return asyncio.run(changes_to_come(Source(update_seq), since))  # type: ignore[arg-type]

    assert [seq_number(x) for x in (7, "123-g1AAAAB", "42", "now", "", None, True, [3])] == [
        7, 123, 42, None, None, None, None, None]
    assert total(3200, 0) == 3200 and total(3200, 1000) == 2200 and total(5, 9) == 0
    assert total("1500-g1AAAAFTeJzLYWBg", "1000-g1AAAAE") == 500  # CouchDB 2+ sequences
    assert total("1500-g1AAAAFTeJzLYWBg", 0) == 1500
    assert total("g1AAAAFTeJzLYWBg", 0) is None and total(None, 0) is None and total(10, "opaque") is None
    # a source refusing GET /{db} (an HTTP status): no total, the pass goes on; unreachable (no status): raised
    assert asyncio.run(changes_to_come(Source(status=403), 0)) is None  # type: ignore[arg-type]
    with pytest.raises(RemoteError):
        asyncio.run(changes_to_come(Source(status=0), 0))  # type: ignore[arg-type]


def test_progress_default_interval_prints_only_the_last_line(tmp_path: Path) -> None:
    make_dirty(tmp_path, 600)
    out = run("verify", "--path", str(tmp_path), "--db", "d")
    assert out.returncode == 0
    assert re.fullmatch(r"verify: 800 records in [\d.]+ s", out.stderr.decode().strip()), out.stderr


@pytest.mark.parametrize("cmd", sorted(PROGRESS))
def test_progress_bar_on_a_terminal(tmp_path: Path, cmd: str) -> None:
    make_dirty(tmp_path)
    args = progress_command(cmd, tmp_path)
    rc, shown = run_on_terminal(*args)
    assert rc == 0, shown
    total, unit = PROGRESS[cmd]
    if cmd == "import":
        kb = round((tmp_path / "dump.jsonl").stat().st_size / 1024)
        # tqdm: "import: 100%|#####| 212k/212k [00:00<00:00, 3.75MB/s]"
        assert re.search(rf"\rimport: 100%\|.*\| {kb}k/{kb}k \[\d\d:\d\d<\d\d:\d\d, [\d.]+[kM]?B/s\]", shown), shown
    else:
        t = f"{total / 1000:.2f}k"
        assert re.search(rf"\r{cmd}: 100%\|.*\| {t}/{t} \[\d\d:\d\d<\d\d:\d\d, [\d.]+k? {unit}/s\]", shown), shown


def test_replicate_to_a_mirror_with_credentials_401_is_exit_6(tmp_path: Path) -> None:
    users = tmp_path / "users.txt"
    users.write_text("alice:a-long-password-1\n")
    m = MirrorProcess(tmp_path / "m", "db", free_port(), [], ["--credentials", str(users)]).start()
    try:
        assert run("put", "--path", str(tmp_path), "--db", "local", input=b'{"id": "a"}').returncode == 0
        out = run("replicate", str(tmp_path / "local"), f"{m.url}/db", "--json")
        assert out.returncode == 6 and b"401" in out.stderr, out.stderr
        err = json.loads(out.stdout)
        assert err["error"] == "remote" and err["exit_code"] == 6 and "401" in err["message"]
        wrong = run("replicate", str(tmp_path / "local"), m.url.replace("://", "://alice:wrong@") + "/db")
        assert wrong.returncode == 6 and b"wrong" not in wrong.stderr  # the password is never echoed
        good = run("replicate", str(tmp_path / "local"), m.url.replace("://", "://alice:a-long-password-1@") + "/db",
                   "--json")
        assert good.returncode == 0 and json.loads(good.stdout)["docs_written"] == 1, good.stderr
        assert b"a-long-password-1" not in good.stdout + good.stderr
    finally:
        m.stop()


def test_serve_json_lines(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "MyNoSQL", "serve", "--path", str(tmp_path), "--db", "db",
                             "--port", str(port), "--peer", "http://u:secret@127.0.0.1:9/", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, env=ENV)
    assert proc.stdout is not None
    try:
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            assert sel.select(timeout=60), "serve printed nothing within 60 s"
            started = json.loads(proc.stdout.readline())
        url = f"http://127.0.0.1:{port}"
        assert started == {"event": "serving", "db": "db", "dbs": ["db"], "url": url,
                           "peers": ["http://127.0.0.1:9"]}  # no password
        with urllib.request.urlopen(f"{url}/db", timeout=15) as r:
            assert json.loads(r.read())["db_name"] == "db"
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0
        assert [json.loads(x) for x in rest.splitlines()] == [{"event": "stopped", "db": "db"}]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


def test_import_writes_a_new_record_whole_as_merging_each_leaf_would(tmp_path: Path) -> None:
    from MyNoSQL.cli import export_line, import_line
    from MyNoSQL.records import revtree

    with MyNoSQL.MyNoSQL(tmp_path / "a") as h, MyNoSQL.MyNoSQL(tmp_path / "b") as h2:
        src = h.opendb("src")
        h.savedoc({"id": "a", "v": 1})
        base = h.readdoc("a")
        h.savedoc({**base, "v": 2})
        other = revtree.new_rev(base["rev"], False, b'{"v":-1}')
        src.put_replicated("a", [other, base["rev"]], False, b'{"v":-1}')  # a conflict
        gone = revtree.new_rev(other, True, b'{}')
        src.put_replicated("a", [gone, other, base["rev"]], True, b'{}')  # ... deleted on one side
        h.savedoc({"id": "b", "v": 1})
        lines = [export_line(s) for s in src.states_since(0)]
        expected = {s.id: (list(s.tree.items()), s.bodies) for s in src.states_since(0)}
        dst = h2.opendb("dst")
        dst.put_replicated("b", [src.readdoc("b")["rev"]], False, b'{"v":1}')  # held already: merged leaf by leaf
        for line in lines:
            import_line(dst, line)
        got = {s.id: (list(s.tree.items()), s.bodies) for s in dst.states_since(0)}
        assert got == expected  # same trees, in the same order, and the same leaves
        bad = orjson_line({"id": "c", "revs": [["2-" + "a" * 32, -1, 0], ["4-" + "b" * 32, 0, 0]],
                           "leaves": {"4-" + "b" * 32: {}}})
        with pytest.raises(MyNoSQL.errors.InvalidDocument):
            import_line(dst, bad)  # a revision two generations after its parent
        assert "c" not in dst


def orjson_line(obj: Any) -> bytes:
    return json.dumps(obj).encode() + b"\n"


@pytest.mark.slow
def test_a_killed_import_leaves_a_clean_database_that_a_second_import_completes(tmp_path: Path) -> None:
    """SIGKILL in the middle of an import: the database opens and verifies clean, holds at least every batch
    written before the last line it had read (each one in the write-ahead log, which a killed process does not
    lose), nothing else than what the dump says, and the same import run again completes it."""
    import threading

    from MyNoSQL.records.revtree import new_rev

    lines = []
    for i in range(40_000):
        body = json.dumps({"i": i, "sensor": f"s-{i % 50}"}, separators=(",", ":")).encode()
        rev = new_rev(None, False, body)
        r = rev.encode()
        lines.append(b'{"id":"r%06d","revs":[["%s",-1,0]],"leaves":{"%s":%s}}\n' % (i, r, r, body))
    dump = tmp_path / "dump.jsonl"
    dump.write_bytes(b"".join(lines))
    p = ["--path", str(tmp_path), "--db", "d"]
    proc = subprocess.Popen([sys.executable, "-m", "MyNoSQL", "import", *p, "-"], stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**ENV, "MYNOSQL_PROGRESS_INTERVAL": "0.05"})
    assert proc.stdin is not None and proc.stderr is not None
    stdin = proc.stdin

    def feed() -> None:
        try:
            stdin.write(dump.read_bytes())  # the whole dump, then the pipe stays open: the import waits for more
            stdin.flush()
        except (BrokenPipeError, ValueError):
            pass

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    shown, read_mb = b"", 0.0
    try:
        deadline = time.monotonic() + 120
        while read_mb < 3.0 and time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stderr], [], [], 1.0)
            if ready:
                chunk = os.read(proc.stderr.fileno(), 65536)
                assert chunk, f"import ended before it was killed: {shown[-2000:]!r}"
                shown += chunk
                done = re.findall(rb"import: ([0-9.]+) MB", shown)
                read_mb = float(done[-1]) if done else 0.0
        assert read_mb >= 3.0, shown[-2000:]
        proc.kill()
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        stdin.close()
        writer.join(timeout=30)
    # The progress line counts a line's bytes as it starts on it: every line before was imported, but for the
    # batch (256 lines) that had not reached the store yet.
    ends = 0
    started = 0
    for line in lines:
        ends += len(line)
        if ends > (read_mb - 0.05) * 1e6:
            break
        started += 1
    assert run("verify", *p).returncode == 0
    with MyNoSQL.MyNoSQL(tmp_path) as h:
        db = h.opendb("d")
        got = {s.id: s for s in db.states_since(0)}
    assert len(got) >= (started - 1) // 256 * 256 >= 20_000, (len(got), started)
    for id, s in got.items():
        i = int(id[1:])
        assert {r: json.loads(b) for r, b in s.bodies.items()} == json.loads(lines[i])["leaves"]
    out = run("import", *p, str(dump), "--json")
    assert out.returncode == 0 and json.loads(out.stdout) == {"imported": 40_000, "errors": 0}, out.stderr
    assert run("verify", *p).returncode == 0
    with MyNoSQL.MyNoSQL(tmp_path) as h:
        h.opendb("d")
        assert len(h) == 40_000 and h.readdoc("r039999")["i"] == 39_999


def test_a_serve_process_freezes_its_start_up_heap_and_collects_young_objects_less_often() -> None:
    import gc

    from MyNoSQL.cli import GC_YOUNG, tune_gc

    before = gc.get_threshold()
    try:
        tune_gc()
        assert gc.get_threshold() == (GC_YOUNG, *before[1:])
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_ctrl_c_is_noted_while_working_raised_while_waiting_and_at_a_second_press() -> None:
    """cli.CtrlC, in this process (the main thread): a first SIGINT while the command works only sets ``hit``;
    one while it waits for input raises at once; a second one raises wherever it lands; the context raises
    KeyboardInterrupt at its end if one was noted; the handler before it is back afterwards."""
    from MyNoSQL.cli import CtrlC

    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt), CtrlC() as c:
        signal.raise_signal(signal.SIGINT)  # working: noted
        assert c.hit
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)  # a second press: raised here
    assert signal.getsignal(signal.SIGINT) is before
    with pytest.raises(KeyboardInterrupt), CtrlC() as c, pytest.raises(KeyboardInterrupt), c.waiting():
        signal.raise_signal(signal.SIGINT)  # waiting for input: raised at once
    with CtrlC() as c:  # nothing pressed: nothing raised
        assert not c.hit
    assert signal.getsignal(signal.SIGINT) is before
