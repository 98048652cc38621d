#!/usr/bin/env python3
"""Local benchmark of MyNoSQL against anchors measured in the same run, on the same data.

Run from the repository root::

    PYTHONPATH=src python bench/local.py            # full run (--n 20000 --tinydb-n 2000 --rss-n 200000)
    PYTHONPATH=src python bench/local.py --quick    # smoke run with small counts
    PYTHONPATH=src python bench/local.py --only sustained,random-cold   # only these rows (printed)

Everything happens in one invocation: the records are generated once (seeded), every engine stores the same
dicts, and each ratio compares numbers taken minutes apart on the same machine. Fresh-process phases
(cold reads, peak RSS) run in child interpreters started through a small launcher process, so that the
children's ``ru_maxrss`` does not inherit the resident size of this (large) parent process: Linux carries the
old image's peak RSS across ``fork``/``vfork`` + ``execve``.

Needs orjson, psutil, tinydb and diskcache (``pip install -e .[bench]``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import math
import os
import platform
import random
import resource
import shlex
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import orjson
import psutil

import MyNoSQL

Doc = dict[str, Any]

DB_NAME = "bench"
SQLITE_SCHEMA = "CREATE TABLE docs(id TEXT PRIMARY KEY, rev TEXT, body TEXT)"
SQLITE_INSERT = "INSERT INTO docs(id, rev, body) VALUES(?, ?, ?)"
SQLITE_SELECT = "SELECT rev, body FROM docs WHERE id = ?"
THREADS = 4

# A minimal process (stdlib only, ~10 MB resident) that starts the fresh children on request, one JSON line
# per child. Children started from it inherit at most its own small peak RSS in ru_maxrss, not this script's.
_LAUNCHER = r"""
import json, subprocess, sys
for line in sys.stdin:
    argv = json.loads(line)
    p = subprocess.run(argv, capture_output=True, text=True)
    sys.stdout.write(json.dumps({"rc": p.returncode, "stdout": p.stdout, "stderr": p.stderr}) + "\n")
    sys.stdout.flush()
"""


# -- data ------------------------------------------------------------------------------------------


def make_docs(n: int) -> list[Doc]:
    """The benchmark records: deterministic (random.Random(42)), about 200 bytes of JSON each."""
    rng = random.Random(42)
    return [
        {
            "sensor": "s-17",
            "ts": 1764000000.123 + i,
            "values": [round(rng.gauss(20.0, 2.0), 3) for _ in range(10)],
            "site": "north-3",
        }
        for i in range(n)
    ]


def read_order(n: int) -> list[int]:
    """The random order of the cold and RSS reads (the same for every engine)."""
    order = list(range(n))
    random.Random(7).shuffle(order)
    return order


def on_disk(p: Path) -> int:
    """The bytes a file takes on the disk: its allocated blocks (``du``), not its length. They differ for a
    sparse file: a database's ``CHANGED`` ring (issue 17) is 256 KiB long, and only its first page is written
    until another process opens the database (13 B a record of 20,000 if counted by length). Every engine's
    files are measured this way."""
    st = p.stat()
    return st.st_blocks * 512 if hasattr(st, "st_blocks") else st.st_size


def dir_bytes(path: Path) -> int:
    return sum(on_disk(p) for p in path.rglob("*") if p.is_file())


def sqlite_bytes(path: Path) -> int:
    return sum(on_disk(p) for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")) if p.exists())


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def ts_sum(docs: Sequence[Doc]) -> float:
    return math.fsum(d["ts"] for d in docs)


# -- child processes -------------------------------------------------------------------------------


def _vm_hwm_bytes() -> int | None:
    """Peak RSS of this process image (VmHWM), reset by execve unlike ru_maxrss; None off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _maxrss_bytes() -> int:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r if sys.platform == "darwin" else r * 1024)


def child_read(args: dict[str, Any]) -> dict[str, Any]:
    """Open a database in this fresh process and read every id of ``ids_file`` once, in that order."""
    proc = psutil.Process()
    maxrss_at_start = _maxrss_bytes()
    ids: list[str] = orjson.loads(Path(args["ids_file"]).read_bytes())
    acc: list[float] = []
    append = acc.append
    rss_before_open = proc.memory_info().rss
    if args["engine"] == "mynosql":
        t0 = time.perf_counter()
        handle = MyNoSQL.MyNoSQL(args["location"])
        db = handle.opendb(args["name"])
        t1 = time.perf_counter()
        rss_after_open = proc.memory_info().rss
        readdoc = db.readdoc
        c1 = time.process_time()
        for id in ids:
            append(readdoc(id)["ts"])
        t2 = time.perf_counter()
        c2 = time.process_time()
        rss_after_read = proc.memory_info().rss
        handle.closedb()
    else:
        t0 = time.perf_counter()
        conn = sqlite3.connect(args["path"], isolation_level=None)
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()  # loads the schema
        t1 = time.perf_counter()
        rss_after_open = proc.memory_info().rss
        execute = conn.execute
        loads = orjson.loads
        c1 = time.process_time()
        for id in ids:
            rev, body = execute(SQLITE_SELECT, (id,)).fetchone()
            out: Doc = {"id": id, "rev": rev}
            out.update(loads(body))
            append(out["ts"])
        t2 = time.perf_counter()
        c2 = time.process_time()
        rss_after_read = proc.memory_info().rss
        conn.close()
    return {
        "n": len(ids),
        "open_s": t1 - t0,
        "read_s": t2 - t1,
        "read_cpu": c2 - c1,  # CPU seconds of this process (all threads) over the reads: a check on a busy machine
        "ts_fsum": math.fsum(acc),
        "rss_before_open": rss_before_open,
        "rss_after_open": rss_after_open,
        "rss_after_read": rss_after_read,
        "maxrss": _maxrss_bytes(),
        "maxrss_at_start": maxrss_at_start,
        "vm_hwm": _vm_hwm_bytes(),
    }


def _rss_sampler(n: int) -> tuple[list[int], Any]:
    """Peak RSS of each quarter of ``n`` operations, sampled every 1,000: (quarters, sample(i))."""
    proc = psutil.Process()
    quarters = [0, 0, 0, 0]

    def sample(i: int) -> None:
        q = min(3, i * 4 // n)
        quarters[q] = max(quarters[q], proc.memory_info().rss)

    return quarters, sample


def child_create(args: dict[str, Any]) -> dict[str, Any]:
    """Create a MyNoSQL database of ``n`` benchmark records in this fresh process, one ``savedoc`` each, in one go
    (the sustained row); write its ids to a file. RSS is sampled every 1,000 saves; the bytes on disk are taken
    right after the last save (the compactor still behind) and after ``closedb``."""
    n = args["n"]
    docs = make_docs(n)
    quarters, sample = _rss_sampler(n)
    handle = MyNoSQL.MyNoSQL(args["location"])
    handle.opendb(args["name"])
    folder = Path(args["location"]) / args["name"]
    # The ids go to their file a thousand at a time: a list of 200,000 ids would itself grow RSS by ~18 MB.
    with Path(args["ids_file"]).open("wb") as out:
        out.write(b"[")
        t0 = time.perf_counter()
        c0 = time.process_time()
        savedoc = handle.savedoc
        for i in range(0, n, 1000):
            chunk = [savedoc(d)["id"] for d in docs[i : i + 1000]]
            out.write((b"," if i else b"") + orjson.dumps(chunk)[1:-1])
            sample(i)
        t1 = time.perf_counter()
        c1 = time.process_time()
        out.write(b"]")
    behind = dir_bytes(folder)
    packed = handle.db.storage_stats.records  # records the compactor had packed when the saver finished
    handle.closedb()
    t2 = time.perf_counter()
    return {"n": n, "save_s": t1 - t0, "close_s": t2 - t1, "maxrss": _maxrss_bytes(),
            "rss_quarters": quarters, "bytes_behind": behind, "bytes_closed": dir_bytes(folder),
            "packed_at_end": packed, "save_cpu": c1 - c0, "close_cpu": time.process_time() - c1}


def child_sqlite_create(args: dict[str, Any]) -> dict[str, Any]:
    """The sustained row's anchor in a fresh process: ``n`` inserts into SQLite WAL synchronous=NORMAL, one
    transaction each, then close (a checkpoint); the same RSS samples and byte counts as ``child_create``."""
    n = args["n"]
    docs = make_docs(n)
    ids = [uuid.uuid4().hex for _ in range(n)]
    revs = ["1-" + uuid.uuid4().hex for _ in range(n)]
    quarters, sample = _rss_sampler(n)
    path = Path(args["path"])
    conn = sqlite_create(path, "NORMAL")
    t0 = time.perf_counter()
    c0 = time.process_time()
    for i in range(0, n, 1000):
        sqlite_save(conn, ids[i : i + 1000], revs[i : i + 1000], docs[i : i + 1000])
        sample(i)
    t1 = time.perf_counter()
    c1 = time.process_time()
    behind = sqlite_bytes(path)
    conn.close()
    t2 = time.perf_counter()
    return {"n": n, "save_s": t1 - t0, "close_s": t2 - t1, "maxrss": _maxrss_bytes(),
            "rss_quarters": quarters, "bytes_behind": behind, "bytes_closed": sqlite_bytes(path),
            "save_cpu": c1 - c0, "close_cpu": time.process_time() - c1}


def child_main(argv: Sequence[str]) -> int:
    kind, raw = argv
    args = orjson.loads(raw)
    children = {"read": child_read, "create": child_create, "sqlite-create": child_sqlite_create}
    out = children[kind](args)
    sys.stdout.write(orjson.dumps(out).decode() + "\n")
    return 0


class Launcher:
    """Starts fresh child interpreters of this script through a small stdlib-only process."""

    def __init__(self) -> None:
        self._p = subprocess.Popen(
            [sys.executable, "-c", _LAUNCHER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )

    def run(self, kind: str, args: dict[str, Any]) -> dict[str, Any]:
        assert self._p.stdin is not None and self._p.stdout is not None
        argv = [sys.executable, str(Path(__file__).resolve()), "--child", kind, orjson.dumps(args).decode()]
        self._p.stdin.write(orjson.dumps(argv).decode() + "\n")
        self._p.stdin.flush()
        line = self._p.stdout.readline()
        if not line:
            raise RuntimeError("the launcher process died")
        res = orjson.loads(line)
        if res["rc"] != 0:
            raise RuntimeError(f"child {kind} failed (exit {res['rc']}):\n{res['stderr']}")
        out: dict[str, Any] = orjson.loads(res["stdout"].strip().splitlines()[-1])
        return out

    def close(self) -> None:
        if self._p.stdin is not None:
            self._p.stdin.close()
        self._p.wait(timeout=60)


# -- engines under test ----------------------------------------------------------------------------


def mynosql_open(location: Path, durability: str = "process", cache_docs: int | None = None) -> MyNoSQL.MyNoSQL:
    """Default options, except that the cached-read phase sizes the record cache to hold every record."""
    opts = MyNoSQL.Options(durability=durability)
    if cache_docs is not None:
        opts = dataclasses.replace(opts, cache_docs=max(cache_docs, opts.cache_docs))
    handle = MyNoSQL.MyNoSQL(location, options=opts)
    handle.opendb(DB_NAME)
    return handle


def mynosql_save(handle: MyNoSQL.MyNoSQL, docs: Sequence[Doc], threads: int = 1) -> tuple[float, list[str]]:
    """Save ``docs`` (split over ``threads`` threads); returns (seconds, ids in docs order)."""
    db = handle  # the public facade, as users call it
    if threads == 1:
        savedoc = db.savedoc
        t0 = time.perf_counter()
        ids = [savedoc(d)["id"] for d in docs]
        return time.perf_counter() - t0, ids
    parts: list[list[str]] = [[] for _ in range(threads)]
    barrier = threading.Barrier(threads + 1)
    errors: list[BaseException] = []

    def work(k: int) -> None:
        savedoc = db.savedoc
        mine = docs[k::threads]
        barrier.wait()
        try:
            parts[k] = [savedoc(d)["id"] for d in mine]
        except BaseException as exc:
            errors.append(exc)
            raise

    ts = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    for t in ts:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in ts:
        t.join()
    dt = time.perf_counter() - t0
    if errors:
        raise errors[0]
    ids = [""] * len(docs)
    for k in range(threads):
        ids[k::threads] = parts[k]
    return dt, ids


def sqlite_connect(path: Path, synchronous: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=120)
    conn.execute("PRAGMA journal_mode=WAL").fetchone()
    conn.execute(f"PRAGMA synchronous={synchronous}")
    return conn


def sqlite_create(path: Path, synchronous: str) -> sqlite3.Connection:
    conn = sqlite_connect(path, synchronous)
    conn.execute(SQLITE_SCHEMA)
    return conn


def sqlite_save(
    conn: sqlite3.Connection,
    ids: Sequence[str],
    revs: Sequence[str],
    docs: Sequence[Doc],
    begin: str = "BEGIN",
) -> float:
    """One transaction per insert; the body is serialised inside the timed loop, as savedoc does."""
    execute = conn.execute
    dumps = orjson.dumps
    t0 = time.perf_counter()
    for id, rev, doc in zip(ids, revs, docs, strict=True):
        execute(begin)
        execute(SQLITE_INSERT, (id, rev, dumps(doc).decode()))
        execute("COMMIT")
    return time.perf_counter() - t0


def sqlite_save_threads(
    path: Path, synchronous: str, ids: Sequence[str], revs: Sequence[str], docs: Sequence[Doc], threads: int
) -> float:
    """``threads`` threads, each with its own connection, inserting concurrently (BEGIN IMMEDIATE)."""
    conns = [sqlite_connect(path, synchronous) for _ in range(threads)]
    barrier = threading.Barrier(threads + 1)
    errors: list[BaseException] = []

    def work(k: int) -> None:
        barrier.wait()
        try:
            sqlite_save(conns[k], ids[k::threads], revs[k::threads], docs[k::threads],
                        begin="BEGIN IMMEDIATE")
        except BaseException as exc:
            errors.append(exc)
            raise

    ts = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    for t in ts:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in ts:
        t.join()
    dt = time.perf_counter() - t0
    for c in conns:
        c.close()
    if errors:
        raise errors[0]
    return dt


def mynosql_read_pass(handle: MyNoSQL.MyNoSQL, ids: Sequence[str]) -> tuple[float, float]:
    readdoc = handle.readdoc
    acc: list[float] = []
    append = acc.append
    t0 = time.perf_counter()
    for id in ids:
        append(readdoc(id)["ts"])
    return time.perf_counter() - t0, math.fsum(acc)


def sqlite_read_pass(
    conn: sqlite3.Connection, ids: Sequence[str], decode: bool = True
) -> tuple[float, float]:
    """Point SELECT by id; with ``decode`` the row becomes a dict like readdoc's (id, rev, body fields)."""
    execute = conn.execute
    loads = orjson.loads
    acc: list[float] = []
    append = acc.append
    t0 = time.perf_counter()
    if decode:
        for id in ids:
            rev, body = execute(SQLITE_SELECT, (id,)).fetchone()
            out: Doc = {"id": id, "rev": rev}
            out.update(loads(body))
            append(out["ts"])
    else:
        for id in ids:
            execute(SQLITE_SELECT, (id,)).fetchone()
    dt = time.perf_counter() - t0
    return dt, math.fsum(acc)


# -- report ----------------------------------------------------------------------------------------


@dataclass
class Row:
    metric: str
    ours: str
    anchor: str
    anchor_value: str
    ratio: float | None
    aim: str  # ">= x", "<= x", "< x MB" or "—"
    met: bool | None


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    phases: list[tuple[str, float]] = field(default_factory=list)

    def add_ratio(
        self, metric: str, ours: float, anchor: str, theirs: float, unit: str, aim: str | None
    ) -> None:
        """A row comparing ours with an anchor; ratio = ours / anchor; ``aim`` like '>= 1.5' or '<= 0.4'."""
        ratio = ours / theirs if theirs else math.inf
        met: bool | None = None
        if aim is not None:
            op, _, val = aim.partition(" ")
            met = ratio >= float(val) if op == ">=" else ratio <= float(val)
        self.rows.append(Row(metric, fmt(ours, unit), anchor, fmt(theirs, unit), ratio, aim or "—", met))

    def markdown(self) -> str:
        head = ("| metric | MyNoSQL | anchor | anchor value | ratio | aim | met? |\n"
                "|---|---:|---|---:|---:|---|---|\n")
        lines = []
        for r in self.rows:
            ratio = "—" if r.ratio is None else f"{r.ratio:.2f}x"
            met = "—" if r.met is None else ("yes" if r.met else "**NO**")
            cells = [r.metric, r.ours, r.anchor, r.anchor_value, ratio, r.aim, met]
            lines.append("| " + " | ".join(cells) + " |")
        return head + "\n".join(lines) + "\n"


def fmt(x: float, unit: str) -> str:
    if unit == "ops/s":
        return f"{x:,.0f} ops/s"
    if unit == "B":
        return f"{x:,.1f} B"
    if unit == "MB":
        return f"{x:,.1f} MB"
    if unit == "ms":
        return f"{x:,.1f} ms"
    return f"{x:,.3g} {unit}"


MB = 1024 * 1024


@contextlib.contextmanager
def phase(report: Report, name: str) -> Iterator[None]:
    print(f"[{time.strftime('%H:%M:%S')}] {name} ...", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    yield
    dt = time.perf_counter() - t0
    report.phases.append((name, dt))
    print(f"[{time.strftime('%H:%M:%S')}]   {name}: {dt:.1f} s", file=sys.stderr, flush=True)


# -- the sustained and random-cold rows (also run alone: --only sustained,random-cold) ---------------


def sustained_rows(
    rep: Report, args: argparse.Namespace, tmp: Path, launcher: Launcher
) -> tuple[Path, Path, dict[str, Any]]:
    """``--sustained-n`` savedocs in one go in a fresh process against SQLite NORMAL (1 txn/insert) in another.
    Returns (location, ids file, the creating child's numbers): the database the peak-RSS phase reads."""
    sn = args.sustained_n
    loc = tmp / "mynosql-sustained"
    ids_file = tmp / "ids-mynosql-sustained.json"
    sq_path = tmp / "sqlite-sustained.db"
    with phase(rep, f"sustained: {sn} savedocs in one go, fresh processes (MyNoSQL, SQLite NORMAL)"):
        ours = launcher.run("create", {"location": str(loc), "name": DB_NAME, "n": sn, "ids_file": str(ids_file)})
        theirs = launcher.run("sqlite-create", {"path": str(sq_path), "n": sn})
        for path in (sq_path, Path(f"{sq_path}-wal"), Path(f"{sq_path}-shm")):
            path.unlink(missing_ok=True)
    rep.add_ratio(f"savedoc x{sn:,} in one go (sustained; fresh process)", sn / ours["save_s"],
                  "SQLite WAL NORMAL, 1 txn/insert, same process shape", sn / theirs["save_s"], "ops/s", ">= 1.5")
    rep.add_ratio(f"savedoc x{sn:,} in one go, incl. closedb (everything packed)",
                  sn / (ours["save_s"] + ours["close_s"]), "SQLite NORMAL, incl. close (checkpoint)",
                  sn / (theirs["save_s"] + theirs["close_s"]), "ops/s", ">= 1.0")
    q = ours["rss_quarters"]
    growth = (q[3] - q[0]) / MB
    rep.rows.append(Row(f"RSS growth while saving {sn:,}: peak of the last quarter - peak of the first",
                        fmt(growth, "MB"), "SQLite, same (context only)",
                        fmt((theirs["rss_quarters"][3] - theirs["rss_quarters"][0]) / MB, "MB"), None,
                        "<= 20 MB", growth <= 20))
    rep.add_ratio(f"bytes on disk per record right after the last save ({sn:,}; compactor behind)",
                  ours["bytes_behind"] / sn, "SQLite file (+ -wal/-shm) before close", theirs["bytes_behind"] / sn,
                  "B", "<= 0.45")
    rep.add_ratio(f"bytes on disk per record after closedb ({sn:,})", ours["bytes_closed"] / sn,
                  "SQLite file after close", theirs["bytes_closed"] / sn, "B", "<= 0.4")
    rep.notes.append(
        f"Sustained ({sn:,} records, fresh processes): MyNoSQL saves {ours['save_s']:.2f} s + closedb "
        f"{ours['close_s']:.2f} s (the compactor had packed {ours['packed_at_end']:,} records when the last save "
        f"returned); SQLite {theirs['save_s']:.2f} s + close {theirs['close_s']:.2f} s. RSS peak by quarter: MyNoSQL "
        + ", ".join(f"{x / MB:.1f}" for x in q) + " MB; SQLite "
        + ", ".join(f"{x / MB:.1f}" for x in theirs["rss_quarters"]) + f" MB. Bytes: MyNoSQL "
        f"{ours['bytes_behind']:,} behind, {ours['bytes_closed']:,} closed; SQLite {theirs['bytes_behind']:,} before "
        f"close, {theirs['bytes_closed']:,} after. CPU seconds (every thread of the process: the compactor's too), "
        f"saves + close: MyNoSQL {ours['save_cpu']:.2f} + {ours['close_cpu']:.2f}, SQLite {theirs['save_cpu']:.2f} + "
        f"{theirs['close_cpu']:.2f}.")
    return loc, ids_file, ours


def random_cold_rows(rep: Report, reps: int, tmp: Path, launcher: Launcher, our_loc: Path, our_ids: Sequence[str],
                     sq_path: Path, anchor_ids: Sequence[str], docs: Sequence[Doc], k: int) -> None:
    """``k`` random readdocs of the ``len(docs)`` records, from a fresh process, against SQLite's point SELECTs."""
    n = len(docs)
    k = min(k, n)
    pick = random.Random(11).sample(range(n), k)
    expected = math.fsum(docs[i]["ts"] for i in pick)
    ours_file = tmp / "ids-mynosql-random-cold.json"
    ours_file.write_bytes(orjson.dumps([our_ids[i] for i in pick]))
    sq_file = tmp / "ids-sqlite-random-cold.json"
    sq_file.write_bytes(orjson.dumps([anchor_ids[i] for i in pick]))
    cold: list[dict[str, Any]] = []
    sq_cold: list[dict[str, Any]] = []
    with phase(rep, f"random cold reads in fresh processes x{reps} ({k} of {n})"):
        for _ in range(reps):
            cold.append(launcher.run("read", {"engine": "mynosql", "location": str(our_loc), "name": DB_NAME,
                                              "ids_file": str(ours_file)}))
            sq_cold.append(launcher.run("read", {"engine": "sqlite", "path": str(sq_path), "ids_file": str(sq_file)}))
        for res in (*cold, *sq_cold):
            if res["ts_fsum"] != expected or res["n"] != k:
                raise RuntimeError(f"a random-cold child read other records than were saved: {res}")
    rep.add_ratio(f"readdoc, random cold ({k:,} random of {n:,}, fresh process; reads only)",
                  k / median([c["read_s"] for c in cold]), "SQLite point SELECT + decode, fresh process, same ids",
                  k / median([c["read_s"] for c in sq_cold]), "ops/s", ">= 0.35")
    rep.notes.append(f"Random cold reads ({k:,} of {n:,}, fresh process): MyNoSQL "
                     + ", ".join(f"{k / c['read_s']:,.0f}" for c in cold) + " ops/s (open "
                     + ", ".join(f"{c['open_s'] * 1e3:.1f}" for c in cold) + " ms); SQLite "
                     + ", ".join(f"{k / c['read_s']:,.0f}" for c in sq_cold)
                     + " ops/s. CPU time of the reads (a check when the machine is busy): MyNoSQL "
                     + ", ".join(f"{c['read_cpu'] / k * 1e6:.1f}" for c in cold)
                     + " us/read; SQLite " + ", ".join(f"{c['read_cpu'] / k * 1e6:.1f}" for c in sq_cold)
                     + f" us/read (ratio of the medians "
                     f"{median([c['read_cpu'] for c in sq_cold]) / median([c['read_cpu'] for c in cold]):.2f}x).")


def run_only(args: argparse.Namespace, tmp: Path, launcher: Launcher) -> Report:
    """Only the rows named by ``--only`` (to iterate on them quickly)."""
    rep = Report()
    if "random-cold" in args.only:
        n = args.n
        docs = make_docs(n)
        our_loc = tmp / "mynosql-cold"
        with phase(rep, f"random cold: create {n} records (MyNoSQL, SQLite)"):
            handle = mynosql_open(our_loc)
            try:
                _dt, our_ids = mynosql_save(handle, docs)
            finally:
                handle.closedb()
            anchor_ids = [uuid.uuid4().hex for _ in range(n)]
            sq_path = tmp / "sqlite-cold.db"
            conn = sqlite_create(sq_path, "NORMAL")
            sqlite_save(conn, anchor_ids, ["1-" + uuid.uuid4().hex for _ in range(n)], docs)
            conn.close()
        random_cold_rows(rep, args.repeats, tmp, launcher, our_loc, our_ids, sq_path, anchor_ids, docs,
                         args.cold_k)
    if "sustained" in args.only:
        sustained_rows(rep, args, tmp, launcher)
    return rep


# -- the run ---------------------------------------------------------------------------------------


def run(args: argparse.Namespace, tmp: Path, launcher: Launcher) -> Report:
    rep = Report()
    n, reps = args.n, args.repeats
    n_power = max(THREADS, n // 4)
    docs = make_docs(n)
    anchor_ids = [uuid.uuid4().hex for _ in range(n)]
    anchor_revs = ["1-" + uuid.uuid4().hex for _ in range(n)]
    expected_sum = ts_sum(docs)
    order = read_order(n)

    # 1. savedoc, default durability ("process"), then cached reads, closedb and bytes on disk -----
    save_s: list[float] = []
    save_close_s: list[float] = []
    cached: list[float] = []
    first_pass = 0.0
    our_ids: list[str] = []
    our_loc = tmp / "mynosql-process-last"
    with phase(rep, f"MyNoSQL savedoc durability=process x{reps} (n={n}) + cached reads"):
        for r in range(reps):
            last = r == reps - 1
            loc = our_loc if last else tmp / f"mynosql-process-{r}"
            handle = mynosql_open(loc, cache_docs=n)
            try:
                dt, our_ids = mynosql_save(handle, docs)
                save_s.append(dt)
                if len(handle) != n:
                    raise RuntimeError(f"MyNoSQL holds {len(handle)} records after saving {n}")
                if last:
                    handle.db.flush()  # steady state: no background packing while the reads are timed
                    first_pass, s = mynosql_read_pass(handle, our_ids)
                    if s != expected_sum:
                        raise RuntimeError("MyNoSQL readdoc returned other records than were saved")
                    for _ in range(reps):
                        cached.append(mynosql_read_pass(handle, our_ids)[0])
            finally:
                t0 = time.perf_counter()
                handle.closedb()
                close_dt = time.perf_counter() - t0
            save_close_s.append(dt + close_dt)
            if not last:
                shutil.rmtree(loc)
        our_bytes = dir_bytes(our_loc / DB_NAME)
        files = sorted((p.name, on_disk(p)) for p in (our_loc / DB_NAME).rglob("*") if p.is_file())

    # 2. SQLite synchronous=NORMAL, then cached point SELECTs and bytes on disk --------------------
    sq_save_s: list[float] = []
    sq_save_close_s: list[float] = []
    sq_cached: list[float] = []
    sq_cached_raw: list[float] = []
    sq_first = 0.0
    sq_path = tmp / "sqlite-normal-last.db"
    with phase(rep, f"SQLite WAL synchronous=NORMAL x{reps} (n={n}) + cached SELECTs"):
        for r in range(reps):
            last = r == reps - 1
            path = sq_path if last else tmp / f"sqlite-normal-{r}.db"
            conn = sqlite_create(path, "NORMAL")
            try:
                dt = sqlite_save(conn, anchor_ids, anchor_revs, docs)
                sq_save_s.append(dt)
                if last:
                    sq_first, s = sqlite_read_pass(conn, anchor_ids)
                    if s != expected_sum:
                        raise RuntimeError("SQLite returned other records than were saved")
                    for _ in range(reps):
                        sq_cached.append(sqlite_read_pass(conn, anchor_ids)[0])
                        sq_cached_raw.append(sqlite_read_pass(conn, anchor_ids, decode=False)[0])
            finally:
                t0 = time.perf_counter()
                conn.close()
                close_dt = time.perf_counter() - t0
            sq_save_close_s.append(dt + close_dt)
            if not last:
                path.unlink()
                for suffix in ("-wal", "-shm"):
                    Path(f"{path}{suffix}").unlink(missing_ok=True)
        sq_bytes = sqlite_bytes(sq_path)

    rep.add_ratio("savedoc, durability=process (default)", n / median(save_s),
                  "SQLite WAL, synchronous=NORMAL, 1 txn/insert", n / median(sq_save_s), "ops/s", ">= 1.5")
    rep.add_ratio("savedoc, durability=process, incl. closedb flush", n / median(save_close_s),
                  "SQLite NORMAL, incl. close (checkpoint)", n / median(sq_save_close_s), "ops/s", None)

    # 3. durability="power" vs synchronous=FULL, 1 thread and 4 threads ----------------------------
    pw: list[float] = []
    sq_full: list[float] = []
    pw_t: list[float] = []
    sq_full_t: list[float] = []
    pdocs = docs[:n_power]
    with phase(rep, f"durability=power vs SQLite FULL, 1 and {THREADS} threads x{reps} (n={n_power})"):
        for r in range(reps):
            for threads, ours, theirs in ((1, pw, sq_full), (THREADS, pw_t, sq_full_t)):
                loc = tmp / f"mynosql-power-{threads}-{r}"
                handle = mynosql_open(loc, "power")
                try:
                    dt, ids = mynosql_save(handle, pdocs, threads)
                    if len(handle) != n_power or len(set(ids)) != n_power:
                        raise RuntimeError(f"MyNoSQL power mode ({threads} threads) lost records")
                finally:
                    handle.closedb()
                ours.append(dt)
                shutil.rmtree(loc)
                path = tmp / f"sqlite-full-{threads}-{r}.db"
                conn = sqlite_create(path, "FULL")
                if threads == 1:
                    theirs.append(sqlite_save(conn, anchor_ids[:n_power], anchor_revs[:n_power], pdocs))
                    conn.close()
                else:
                    conn.close()
                    theirs.append(sqlite_save_threads(path, "FULL", anchor_ids[:n_power],
                                                      anchor_revs[:n_power], pdocs, threads))
                check = sqlite3.connect(path)
                count = check.execute("SELECT count(*) FROM docs").fetchone()[0]
                check.close()
                if count != n_power:
                    raise RuntimeError(f"SQLite FULL ({threads} threads) holds {count} rows, not {n_power}")
                path.unlink()
                for suffix in ("-wal", "-shm"):
                    Path(f"{path}{suffix}").unlink(missing_ok=True)
    rep.add_ratio(f"savedoc, durability=power, 1 thread (n={n_power})", n_power / median(pw),
                  "SQLite WAL, synchronous=FULL, 1 txn/insert", n_power / median(sq_full), "ops/s", ">= 1.0")
    rep.add_ratio(f"savedoc, durability=power, {THREADS} threads (group commit, n={n_power})",
                  n_power / median(pw_t),
                  f"SQLite FULL, {THREADS} threads, 1 connection each (BEGIN IMMEDIATE)",
                  n_power / median(sq_full_t), "ops/s", None)

    # 4. cached reads (numbers taken in phases 1 and 2) --------------------------------------------
    rep.add_ratio("readdoc, cached (warm passes after a first pass)", n / median(cached),
                  "SQLite point SELECT by id + orjson decode to dict, warm", n / median(sq_cached), "ops/s",
                  ">= 5")

    # 5. cold reads: fresh processes, random order -------------------------------------------------
    ours_ids_file = tmp / "ids-mynosql-cold.json"
    ours_ids_file.write_bytes(orjson.dumps([our_ids[i] for i in order]))
    sq_ids_file = tmp / "ids-sqlite-cold.json"
    sq_ids_file.write_bytes(orjson.dumps([anchor_ids[i] for i in order]))
    cold: list[dict[str, Any]] = []
    sq_cold: list[dict[str, Any]] = []
    with phase(rep, f"cold reads in fresh processes x{reps} (n={n})"):
        for _ in range(reps):
            cold.append(launcher.run("read", {"engine": "mynosql", "location": str(our_loc), "name": DB_NAME,
                                              "ids_file": str(ours_ids_file)}))
            sq_cold.append(launcher.run("read", {"engine": "sqlite", "path": str(sq_path),
                                                 "ids_file": str(sq_ids_file)}))
        for res in (*cold, *sq_cold):
            if res["ts_fsum"] != expected_sum or res["n"] != n:
                raise RuntimeError(f"a cold-read child read other records than were saved: {res}")
    cold_read = median([c["read_s"] for c in cold])
    sq_cold_read = median([c["read_s"] for c in sq_cold])
    rep.add_ratio("readdoc, cold (fresh process, random order; reads only)", n / cold_read,
                  "SQLite SELECT + decode, fresh process, same order", n / sq_cold_read, "ops/s", ">= 0.25")
    random_cold_rows(rep, reps, tmp, launcher, our_loc, our_ids, sq_path, anchor_ids, docs, args.cold_k)
    rep.add_ratio("open time of the cold process (lower is better)",
                  median([c["open_s"] for c in cold]) * 1e3, "SQLite connect + schema load",
                  median([c["open_s"] for c in sq_cold]) * 1e3, "ms", None)

    # 6. TinyDB and diskcache anchors (imported here so that the fresh children stay lean) ---------
    import diskcache
    from tinydb import TinyDB

    tn = min(args.tinydb_n, n)
    tiny_path = tmp / "tinydb.json"
    tiny_split: list[float] = []
    with phase(rep, f"TinyDB insert x1 (n={tn}, capped)"):
        tdb = TinyDB(tiny_path)
        t0 = time.perf_counter()
        for i in range(tn):
            if i % max(1, tn // 10) == 0:
                tiny_split.append(time.perf_counter())
            tdb.insert({"id": anchor_ids[i], "rev": anchor_revs[i], **docs[i]})
        tiny_s = time.perf_counter() - t0
        tiny_split.append(time.perf_counter())
        tdb.close()
        tiny_bytes = on_disk(tiny_path)
    dc_set: list[float] = []
    dc_get: list[float] = []
    dc_path = tmp / "diskcache-last"
    with phase(rep, f"diskcache set x{reps} + get (n={n})"):
        for r in range(reps):
            last = r == reps - 1
            path = dc_path if last else tmp / f"diskcache-{r}"
            cache = diskcache.Cache(str(path))
            try:
                cset = cache.set
                dumps = orjson.dumps
                t0 = time.perf_counter()
                for id, rev, doc in zip(anchor_ids, anchor_revs, docs, strict=True):
                    cset(id, dumps({"rev": rev, **doc}))
                dc_set.append(time.perf_counter() - t0)
                if last:
                    cget = cache.get
                    loads = orjson.loads
                    for k in range(reps + 1):  # the first pass warms, like the others
                        t0 = time.perf_counter()
                        for id in anchor_ids:
                            out: Doc = {"id": id}
                            out.update(loads(cget(id)))
                        if k:
                            dc_get.append(time.perf_counter() - t0)
            finally:
                cache.close()
            if not last:
                shutil.rmtree(path)
        dc_bytes = dir_bytes(dc_path)

    # 7. bytes on disk -----------------------------------------------------------------------------
    rep.add_ratio("bytes on disk per record after closedb", our_bytes / n,
                  "SQLite file (+ -wal/-shm) after close", sq_bytes / n, "B", "<= 0.4")
    rep.add_ratio("bytes on disk per record", our_bytes / n, f"TinyDB JSON file ({tn} records)",
                  tiny_bytes / tn, "B", None)
    rep.add_ratio("bytes on disk per record", our_bytes / n, "diskcache directory (orjson bytes values)",
                  dc_bytes / n, "B", None)
    rep.add_ratio("savedoc, durability=process", n / median(save_s),
                  f"TinyDB insert, CAPPED at {tn} records (rewrites + fsyncs the whole file per insert: "
                  "per-insert cost grows with size)", tn / tiny_s, "ops/s", None)
    rep.add_ratio("savedoc, durability=process", n / median(save_s), "diskcache Cache.set",
                  n / median(dc_set), "ops/s", None)
    rep.add_ratio("readdoc, cached (warm)", n / median(cached), "diskcache Cache.get + decode, warm",
                  n / median(dc_get), "ops/s", None)

    # 8. peak RSS reading rss_n records in a fresh process -----------------------------------------
    rn = args.sustained_n
    rss_loc, rss_ids_file, created = sustained_rows(rep, args, tmp, launcher)
    with phase(rep, f"peak RSS: prepare the reads of {rn} records"):
        rss_order = read_order(rn)
        rss_ids: list[str] = orjson.loads(rss_ids_file.read_bytes())
        rss_ids_file.write_bytes(orjson.dumps([rss_ids[i] for i in rss_order]))
        del rss_ids
        rss_docs = make_docs(rn)
        rss_expected = ts_sum(rss_docs)
        rss_sq_path = tmp / "sqlite-rss.db"
        conn = sqlite_create(rss_sq_path, "NORMAL")
        rss_sq_ids = [uuid.uuid4().hex for _ in range(rn)]
        conn.execute("BEGIN")
        conn.executemany(SQLITE_INSERT, ((id, "1-" + uuid.uuid4().hex, orjson.dumps(d).decode())
                                         for id, d in zip(rss_sq_ids, rss_docs, strict=True)))
        conn.execute("COMMIT")
        conn.close()
        del rss_docs
        rss_sq_ids_file = tmp / "ids-sqlite-rss.json"
        rss_sq_ids_file.write_bytes(orjson.dumps([rss_sq_ids[i] for i in rss_order]))
        del rss_sq_ids, rss_order
    with phase(rep, f"peak RSS: read {rn} records once in a fresh process"):
        rss = launcher.run("read", {"engine": "mynosql", "location": str(rss_loc), "name": DB_NAME,
                                    "ids_file": str(rss_ids_file)})
        rss_sq = launcher.run("read", {"engine": "sqlite", "path": str(rss_sq_path),
                                       "ids_file": str(rss_sq_ids_file)})
        for res in (rss, rss_sq):
            if res["ts_fsum"] != rss_expected or res["n"] != rn:
                raise RuntimeError(f"an RSS child read other records than were saved: {res}")
    peak = rss["maxrss"] / MB
    sq_peak = rss_sq["maxrss"] / MB
    rep.rows.append(Row(f"peak RSS reading {rn:,} records once, fresh process (ru_maxrss)", fmt(peak, "MB"),
                        "SQLite, same reads (context only)", fmt(sq_peak, "MB"), peak / sq_peak, "< 150 MB",
                        peak < 150))

    # -- notes -------------------------------------------------------------------------------------
    nt = rep.notes
    nt.append(f"Records: {n:,} (power-mode rows: {n_power:,}); each ~{len(orjson.dumps(docs[0]))} bytes of "
              "JSON. Rates are medians of the repetitions; ratio = MyNoSQL / anchor.")
    nt.append("savedoc timings: " + ", ".join(f"{n / s:,.0f}" for s in save_s) + " ops/s; SQLite NORMAL: "
              + ", ".join(f"{n / s:,.0f}" for s in sq_save_s) + " ops/s.")
    nt.append("power 1 thread: " + ", ".join(f"{n_power / s:,.0f}" for s in pw) + " ops/s vs SQLite FULL "
              + ", ".join(f"{n_power / s:,.0f}" for s in sq_full) + f"; {THREADS} threads: "
              + ", ".join(f"{n_power / s:,.0f}" for s in pw_t) + " vs "
              + ", ".join(f"{n_power / s:,.0f}" for s in sq_full_t) + " ops/s.")
    nt.append(f"Cached reads, in save order: MyNoSQL first pass {n / first_pass:,.0f} ops/s, warm passes "
              + ", ".join(f"{n / s:,.0f}" for s in cached) + f" ops/s (record cache sized to hold them: "
              f"Options(cache_docs={max(n, MyNoSQL.Options().cache_docs):,}); the default is "
              f"{MyNoSQL.Options().cache_docs:,}); the first warm pass is each record's second read, which "
              "builds readdoc's decoded copy of it, and later reads copy that). "
              f"SQLite first pass {n / sq_first:,.0f}, warm "
              + ", ".join(f"{n / s:,.0f}" for s in sq_cached) + " ops/s; SQLite SELECT without decoding the "
              f"body: {n / median(sq_cached_raw):,.0f} ops/s (readdoc would be "
              f"{median(sq_cached_raw) / median(cached):.2f}x that).")
    nt.append("Cold reads (fresh process, reads only): MyNoSQL "
              + ", ".join(f"{n / c['read_s']:,.0f}" for c in cold) + " ops/s, open "
              + ", ".join(f"{c['open_s'] * 1e3:.1f}" for c in cold) + " ms; SQLite "
              + ", ".join(f"{n / c['read_s']:,.0f}" for c in sq_cold) + " ops/s, open "
              + ", ".join(f"{c['open_s'] * 1e3:.1f}" for c in sq_cold) + " ms. The files are in the OS page "
              "cache (written moments before): cold means a fresh process, not a cold disk.")
    nt.append(f"MyNoSQL files after closedb ({our_bytes:,} bytes on disk, allocated blocks as du counts them): "
              + ", ".join(f"{name} {size:,}" for name, size in files)
              + f". SQLite {sq_bytes:,} bytes; TinyDB {tiny_bytes:,} bytes for {tn:,} records; "
              f"diskcache {dc_bytes:,} bytes.")
    if len(tiny_split) > 2:
        per = [(b - a) / max(1, tn // 10) * 1e3 for a, b in itertools.pairwise(tiny_split)]
        nt.append(f"TinyDB per-insert cost by tenth of the {tn:,} inserts: "
                  + ", ".join(f"{p:.2f}" for p in per) + " ms (it grows with the file).")
    nt.append(f"Peak-RSS database: created in a fresh process ({rn / created['save_s']:,.0f} savedoc/s, "
              f"closedb {created['close_s']:.2f} s, {dir_bytes(rss_loc / DB_NAME) / rn:.1f} B/record). "
              f"Reader (random order, {rn / rss['read_s']:,.0f} readdoc/s, "
              f"open {rss['open_s'] * 1e3:.1f} ms): "
              f"psutil RSS {rss['rss_before_open'] / MB:.1f} MB before open (interpreter + {rn:,} ids), "
              f"{rss['rss_after_open'] / MB:.1f} MB after open, "
              f"{rss['rss_after_read'] / MB:.1f} MB after the "
              f"reads; ru_maxrss {rss['maxrss'] / MB:.1f} MB (already {rss['maxrss_at_start'] / MB:.1f} MB "
              "at child start, after imports: nothing inherited from the parent), "
              f"VmHWM {(rss['vm_hwm'] or 0) / MB:.1f} MB. SQLite reader: "
              f"{rss_sq['rss_before_open'] / MB:.1f} / {rss_sq['rss_after_open'] / MB:.1f} / "
              f"{rss_sq['rss_after_read'] / MB:.1f} MB, ru_maxrss {rss_sq['maxrss'] / MB:.1f} MB, "
              f"{rn / rss_sq['read_s']:,.0f} reads/s.")
    nt.append("Anchors store the same information: id (uuid4 hex made up front), rev ('1-' + 32 hex) and the "
              "body as orjson JSON (TinyDB: id and rev as fields; diskcache: key = id, value = orjson bytes, "
              "so no pickling). SQLite bodies are serialised and (for reads) decoded inside the timed loops, "
              "as savedoc/readdoc do. SQLite multi-thread inserts use BEGIN IMMEDIATE (plain BEGIN can fail "
              "to upgrade its lock under contention).")
    return rep


def machine() -> str:
    freq = psutil.cpu_freq()
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = psutil.virtual_memory().total / 2**30
    return (f"{platform.platform()}; {cpu}, {os.cpu_count()} CPUs"
            + (f" @ {freq.current:.0f} MHz" if freq else "")
            + f", {mem:.1f} GiB RAM; Python {platform.python_version()} ({sys.executable}); "
            f"SQLite {sqlite3.sqlite_version}")


def temp_fs(path: Path) -> str:
    """The filesystem type and device holding ``path`` (from /proc/mounts), or 'unknown'."""
    best, kind = "", "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            dev, mnt, fstype = line.split()[:3]
            if (str(path) + "/").startswith(mnt.rstrip("/") + "/") and len(mnt) >= len(best):
                best, kind = mnt, f"{fstype} ({dev} on {mnt})"
    return kind


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--child"]:
        return child_main(argv[1:])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=None, help="records (default 20000; --quick 2000)")
    ap.add_argument("--tinydb-n", type=int, default=None,
                    help="TinyDB insert cap (default 2000; --quick 200)")
    ap.add_argument("--sustained-n", "--rss-n", dest="sustained_n", type=int, default=None,
                    help="records of the sustained row, read back by the peak-RSS row (default 200000; --quick 20000)")
    ap.add_argument("--cold-k", type=int, default=None,
                    help="random reads of the random-cold row, of --n records (default 5000; --quick 500)")
    ap.add_argument("--only", default=None,
                    help="run only these rows, comma-separated: sustained, random-cold (prints them; written to "
                         "--out only when given)")
    ap.add_argument("--out", type=Path, default=None, help="Markdown output (default bench/results/local.md; "
                                                             "--quick: bench/results/local-quick.md)")
    ap.add_argument("--quick", action="store_true", help="small counts and one repetition (smoke run)")
    args = ap.parse_args(argv)
    q = args.quick
    args.n = args.n if args.n is not None else (2000 if q else 20000)
    args.tinydb_n = args.tinydb_n if args.tinydb_n is not None else (200 if q else 2000)
    args.sustained_n = args.sustained_n if args.sustained_n is not None else (20000 if q else 200000)
    args.cold_k = args.cold_k if args.cold_k is not None else (500 if q else 5000)
    only = set(filter(None, (args.only or "").split(",")))
    if only - {"sustained", "random-cold"}:
        ap.error(f"--only: unknown rows {sorted(only - {'sustained', 'random-cold'})}")
    args.only = only
    args.repeats = 1 if q else 3
    default_out = "bench/results/local-quick.md" if q else "bench/results/local.md"
    out: Path | None = args.out or (None if args.only else Path(__file__).resolve().parent.parent / default_out)
    if args.n < THREADS or args.tinydb_n < 1 or args.sustained_n < 1 or args.cold_k < 1:
        ap.error("counts must be positive (--n at least 4)")

    command = shlex.join([sys.executable, *sys.argv])
    if os.environ.get("PYTHONPATH"):
        command = f"PYTHONPATH={shlex.quote(os.environ['PYTHONPATH'])} {command}"
    started = datetime.now(timezone.utc).astimezone()
    t_start = time.perf_counter()
    launcher = Launcher()  # started while this process is still small
    tmp = Path(tempfile.mkdtemp(prefix="mynosql-bench-"))
    try:
        rep = run_only(args, tmp, launcher) if args.only else run(args, tmp, launcher)
    finally:
        launcher.close()
        shutil.rmtree(tmp, ignore_errors=True)
    total = time.perf_counter() - t_start

    text = [
        "# MyNoSQL local benchmark",
        "",
        f"- Command: `{command}` (cwd `{os.getcwd()}`)",
        f"- Date: {started.isoformat(timespec='seconds')}; total run time {total:.1f} s",
        f"- Machine: {machine()}",
        f"- Temp files: under {tmp} on {temp_fs(tmp)}",
        f"- MyNoSQL {MyNoSQL.__version__} from {Path(MyNoSQL.__file__).parent}; orjson {orjson.__version__}; "
        f"tinydb {_version('tinydb')}; diskcache {_version('diskcache')}",
        "",
        rep.markdown(),
        "Notes:",
        "",
        *[f"- {x}" for x in rep.notes],
        "- Phase wall times: " + "; ".join(f"{name}: {dt:.1f} s" for name, dt in rep.phases),
        "",
    ]
    report = "\n".join(text)
    print(report)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(report)
        print(f"(written to {out})")
    return 0


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "?"


if __name__ == "__main__":
    raise SystemExit(main())
