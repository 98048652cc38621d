#!/usr/bin/env python3
"""Several processes on one database: MyNoSQL against SQLite (WAL) and diskcache, in the same run.

Run from the repository root::

    .venv/bin/python bench/processes.py            # 4 processes x 5,000 saves; writes bench/results/processes.md
    .venv/bin/python bench/processes.py --quick    # smoke run (4 x 500)

Phases, each engine in turn on a fresh database, every process started first and then told to go at once:

1. writes: ``--procs`` processes each save ``--n`` new records (~135-byte JSON, bench/local.py's records), one
   at a time. MyNoSQL with its default durability (a save survives a crash of its process) and its default
   sharing (every process appends its saves to the shared log; the first to open owns the rest); SQLite in WAL
   mode, synchronous=NORMAL (also survives a process crash), one connection per process, ``BEGIN IMMEDIATE`` + one
   INSERT + ``COMMIT`` per record; diskcache's ``Cache.set`` (its own SQLite per process). Throughput is all
   saves over the time from the first start to the last end; latencies are per save, over every process.
2. visibility: with ``--procs`` processes open, one saves a record (a counter) 2,000 times, noting the time each
   ``savedoc`` returned; another reads it in a loop, noting when it first sees each value. Visibility = seen -
   returned (a read that began after the save returned always sees it; so this is the reader's loop time).
3. cached reads: with the others open, one process reads 2,000 records it read before, 20 times over
   (MyNoSQL: a client's cache, kept current by the owner's ring) vs SQLite's point SELECT + orjson decode.

``--repeat K`` runs the write phase K more times (MyNoSQL then SQLite, in turn, after the phases above) and adds
their ratios and maxima to the results: on a shared 2-CPU host one run's throughput ratio and save max move with
whatever else runs, so a claim rests on the median and the spread of many.

``BENCH_SWITCH=0.0005`` sets ``sys.setswitchinterval`` in every process (the owner's threads then take turns every
0.5 ms instead of 5: its clients' calls wait less behind its own busy thread).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "src"))

from local import make_docs  # noqa: E402 - the records of bench/local.py

ENGINES = ("mynosql", "sqlite", "diskcache")
VIS_N = 2000
READ_IDS = 2000
READ_PASSES = 20


# -- the worker processes ------------------------------------------------------------------------------------------

class Engine:
    def __init__(self, kind: str, path: Path) -> None:
        self.kind = kind
        if kind == "mynosql":
            import MyNoSQL

            self.h = MyNoSQL.MyNoSQL(path)
            self.h.opendb("bench")
        elif kind == "sqlite":
            self.conn = sqlite3.connect(path / "bench.sqlite", isolation_level=None, timeout=120)
            self.conn.execute("PRAGMA journal_mode=WAL").fetchone()
            self.conn.execute("PRAGMA synchronous=NORMAL")
            self.conn.execute("CREATE TABLE IF NOT EXISTS docs(id TEXT PRIMARY KEY, body TEXT)")
        else:
            import diskcache

            self.cache = diskcache.Cache(str(path / "diskcache"))

    def save(self, id: str, doc: dict[str, Any]) -> None:
        if self.kind == "mynosql":
            self.h.savedoc({**doc, "id": id})
        elif self.kind == "sqlite":
            c = self.conn
            c.execute("BEGIN IMMEDIATE")
            c.execute("INSERT OR REPLACE INTO docs(id, body) VALUES(?, ?)", (id, orjson.dumps(doc).decode()))
            c.execute("COMMIT")
        else:
            self.cache.set(id, orjson.dumps(doc))

    def update(self, id: str, doc: dict[str, Any], rev: str | None) -> str | None:
        """Save a new version of ``id`` (MyNoSQL needs the current rev); returns the new rev."""
        if self.kind == "mynosql":
            return str(self.h.savedoc({**doc, "id": id, **({"rev": rev} if rev else {})})["rev"])
        self.save(id, doc)
        return None

    def read(self, id: str) -> dict[str, Any] | None:
        if self.kind == "mynosql":
            import MyNoSQL

            try:
                return self.h.readdoc(id)
            except MyNoSQL.DocumentNotFound:
                return None
        if self.kind == "sqlite":
            row = self.conn.execute("SELECT body FROM docs WHERE id = ?", (id,)).fetchone()
            return orjson.loads(row[0]) if row else None
        data = self.cache.get(id)
        return orjson.loads(data) if data is not None else None

    def held(self) -> dict[str, float]:
        """MyNoSQL's owner: how often and how long its saves waited for its compactor (back-pressure)."""
        store = getattr(self.h.db, "_store", None) if self.kind == "mynosql" else None
        if store is None:
            return {}
        return {"held": store.stats.held, "held_max": store.stats.held_max * 1000, "slowed": store.stats.slowed}

    def close(self) -> None:
        if self.kind == "mynosql":
            self.h.closedb()
        elif self.kind == "sqlite":
            self.conn.close()
        else:
            self.cache.close()


def worker(spec: dict[str, Any]) -> None:
    if os.environ.get("BENCH_SWITCH"):
        sys.setswitchinterval(float(os.environ["BENCH_SWITCH"]))
    eng = Engine(spec["engine"], Path(spec["path"]))
    print("ready", flush=True)
    sys.stdin.readline()  # go
    out: dict[str, Any] = {}
    role = spec["role"]
    if role == "write":
        docs = make_docs(spec["n"])
        prefix = f"w{spec['index']}-"
        lat = []
        t0 = time.monotonic()
        for i, d in enumerate(docs):
            s = time.perf_counter_ns()
            eng.save(prefix + str(i), d)
            lat.append(time.perf_counter_ns() - s)
        out = {"t0": t0, "t1": time.monotonic(), "lat": lat, **eng.held()}
    elif role == "vis-writer":
        acks = []
        rev = eng.update("probe", {"k": -1}, None)
        print("primed", flush=True)
        sys.stdin.readline()
        for k in range(VIS_N):
            rev = eng.update("probe", {"k": k}, rev)
            acks.append(time.monotonic())
            time.sleep(0.0005)  # a pace the reader's loop can follow (not a wait for anything)
        out = {"acks": acks}
    elif role == "vis-reader":
        seen: dict[int, float] = {}
        print("primed", flush=True)
        sys.stdin.readline()
        deadline = time.monotonic() + 120
        k = -1
        while k < VIS_N - 1 and time.monotonic() < deadline:
            doc = eng.read("probe")
            now = time.monotonic()
            k = doc["k"] if doc else -1
            if k >= 0 and k not in seen:
                seen[k] = now
        out = {"seen": seen}
    elif role == "reader":
        ids = [f"r{i}" for i in range(READ_IDS)]
        for i in ids:
            eng.read(i)
        for i in ids:
            eng.read(i)
        t0 = time.perf_counter()
        for _ in range(READ_PASSES):
            for i in ids:
                eng.read(i)
        out = {"rate": READ_PASSES * READ_IDS / (time.perf_counter() - t0)}
    Path(spec["result"]).write_bytes(orjson.dumps(out, option=orjson.OPT_NON_STR_KEYS))
    print("done", flush=True)
    sys.stdin.readline()  # exit: every process stays open until all are done
    eng.close()


# -- the parent ----------------------------------------------------------------------------------------------------

class Group:
    """Processes with one database open, started one after the other (the first is MyNoSQL's owner)."""

    def __init__(self, engine: str, path: Path, roles: list[str], n: int) -> None:
        self.procs: list[subprocess.Popen[str]] = []
        self.results: list[Path] = []
        for i, role in enumerate(roles):
            res = path / f"result-{i}.json"
            spec = {"engine": engine, "path": str(path), "role": role, "n": n, "index": i, "result": str(res)}
            p = subprocess.Popen([sys.executable, __file__, "--worker", orjson.dumps(spec).decode()],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            self.expect(p, "ready")
            self.procs.append(p)
            self.results.append(res)

    @staticmethod
    def expect(p: subprocess.Popen[str], what: str) -> None:
        assert p.stdout is not None
        line = p.stdout.readline().strip()
        if line != what:
            raise RuntimeError(f"worker {p.pid}: expected {what!r}, got {line!r} (exit {p.poll()})")

    def tell(self, procs: list[subprocess.Popen[str]], line: str) -> None:
        for p in procs:
            assert p.stdin is not None
            p.stdin.write(line + "\n")
            p.stdin.flush()

    def finish(self) -> list[dict[str, Any]]:
        for p in self.procs:
            self.expect(p, "done")
        self.tell(self.procs, "exit")
        for p in self.procs:
            p.wait(timeout=300)
        return [orjson.loads(r.read_bytes()) for r in self.results]


def fresh(root: Path, name: str) -> Path:
    path = root / name
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def phase_writes(root: Path, engine: str, procs: int, n: int, tag: str = "") -> dict[str, Any]:
    g = Group(engine, fresh(root, f"w-{engine}{tag}"), ["write"] * procs, n)
    g.tell(g.procs, "go")
    res = g.finish()
    lat = [x / 1e6 for r in res for x in r["lat"]]
    first = [x / 1e6 for x in res[0]["lat"]]  # MyNoSQL: the owner's own saves
    others = [x / 1e6 for r in res[1:] for x in r["lat"]]  # MyNoSQL: its clients'
    span = max(r["t1"] for r in res) - min(r["t0"] for r in res)
    return {"rate": procs * n / span, "p50": pct(lat, 0.5), "p99": pct(lat, 0.99), "max": max(lat),
            "first_p99": pct(first, 0.99), "first_max": max(first), "others_p99": pct(others, 0.99),
            "others_max": max(others), "held": res[0].get("held", 0), "held_max": res[0].get("held_max", 0.0),
            "slowed": res[0].get("slowed", 0),
            "ends": [round(r["t1"] - min(x["t0"] for x in res), 3) for r in res]}  # when each process finished


def phase_visibility(root: Path, engine: str, procs: int) -> dict[str, float]:
    path = fresh(root, f"v-{engine}")
    roles = ["idle"] * max(0, procs - 2) + ["vis-writer", "vis-reader"]  # the owner is an idle process
    g = Group(engine, path, roles, 0)
    w, r = g.procs[-2], g.procs[-1]
    g.tell([w], "go")
    g.expect(w, "primed")
    g.tell([r], "go")
    g.expect(r, "primed")
    g.tell(g.procs[:-2], "go")
    g.tell([w, r], "go")
    for p in g.procs[:-2]:
        g.expect(p, "done")
    rest = g.procs[-2:]
    for p in rest:
        g.expect(p, "done")
    g.tell(g.procs, "exit")
    for p in g.procs:
        p.wait(timeout=300)
    acks = orjson.loads(g.results[-2].read_bytes())["acks"]
    seen = {int(k): v for k, v in orjson.loads(g.results[-1].read_bytes())["seen"].items()}
    vis = [(seen[k] - acks[k]) * 1000 for k in range(len(acks)) if k in seen]
    missed = len(acks) - len(vis)  # overwritten before the reader's loop came round (not a stale read)
    return {"p50": pct(vis, 0.5), "p99": pct(vis, 0.99), "max": max(vis), "missed": missed}


def phase_reads(root: Path, engine: str, procs: int) -> float:
    path = fresh(root, f"r-{engine}")
    eng_docs = make_docs(READ_IDS)
    e = Engine(engine, path)  # fill it here, then close
    for i, d in enumerate(eng_docs):
        e.save(f"r{i}", d)
    e.close()
    g = Group(engine, path, ["idle"] * (procs - 1) + ["reader"], 0)
    g.tell(g.procs, "go")
    return float(g.finish()[-1]["rate"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--procs", type=int, default=4)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--writes-only", action="store_true", help="only the write phase (not saved)")
    ap.add_argument("--repeat", type=int, default=0, help="the write phase this many more times (see above)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "processes.md"))
    args = ap.parse_args()
    if args.worker:
        worker(orjson.loads(args.worker))
        return
    n = 500 if args.quick else args.n
    root = Path(tempfile.mkdtemp(prefix="mynosql-bench-procs-"))
    t_start = time.monotonic()
    try:
        writes = {e: phase_writes(root, e, args.procs, n) for e in ENGINES}
        if args.writes_only:
            print(orjson.dumps(writes, option=orjson.OPT_INDENT_2).decode())
            return
        vis = {e: phase_visibility(root, e, args.procs) for e in ENGINES}
        reads = {e: phase_reads(root, e, args.procs) for e in ("mynosql", "sqlite")}
        again = []
        for i in range(args.repeat):
            again.append({e: phase_writes(root, e, args.procs, n, f"-{i}") for e in ("mynosql", "sqlite")})
            r = again[-1]
            print(f"repeat {i + 1}/{args.repeat}: {r['mynosql']['rate']:,.0f} / {r['sqlite']['rate']:,.0f} saves/s "
                  f"({r['mynosql']['rate'] / r['sqlite']['rate']:.2f}x), max {r['mynosql']['max']:.1f} ms "
                  f"(owner {r['mynosql']['first_max']:.1f}; slowed {r['mynosql']['slowed']}, held back "
                  f"{r['mynosql']['held']} times, longest {r['mynosql']['held_max']:.1f} ms)", file=sys.stderr,
                  flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    m, s, d = writes["mynosql"], writes["sqlite"], writes["diskcache"]
    rows = [
        ("saves/s, 4 processes together", f"{m['rate']:,.0f}", f"{s['rate']:,.0f}", f"{d['rate']:,.0f}",
         f"{m['rate'] / s['rate']:.2f}x", ">= 1x SQLite"),
        ("save p50 (ms)", f"{m['p50']:.3f}", f"{s['p50']:.3f}", f"{d['p50']:.3f}", "", ""),
        ("save p99 (ms)", f"{m['p99']:.2f}", f"{s['p99']:.2f}", f"{d['p99']:.2f}", "", "<= 5 ms"),
        ("save max (ms)", f"{m['max']:.1f}", f"{s['max']:.1f}", f"{d['max']:.1f}", "", "<= 50 ms"),
        ("another process sees a save, p50 (ms)", f"{vis['mynosql']['p50']:.3f}", f"{vis['sqlite']['p50']:.3f}",
         f"{vis['diskcache']['p50']:.3f}", "", ""),
        ("another process sees a save, p99 (ms)", f"{vis['mynosql']['p99']:.3f}", f"{vis['sqlite']['p99']:.3f}",
         f"{vis['diskcache']['p99']:.3f}", "", "<= 10 ms"),
        ("cached readdoc/s, others open", f"{reads['mynosql']:,.0f}", f"{reads['sqlite']:,.0f}", "",
         f"{reads['mynosql'] / reads['sqlite']:.2f}x", ">= 5x SQLite"),
    ]
    lines = [
        "# Several processes on one database",
        "",
        f"- Command: `{' '.join([Path(sys.executable).name, *sys.argv])}`; {args.procs} processes x {n:,} saves; "
        f"run time {time.monotonic() - t_start:.0f} s",
        f"- Date: {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}; {platform.platform()}, "
        f"{os.cpu_count()} CPUs; Python {platform.python_version()}; SQLite {sqlite3.sqlite_version}",
        "- MyNoSQL: default options (durability=process; every process appends its saves to the shared log, the "
        "first to open the database owns the rest: compactor, replication). SQLite: WAL, synchronous=NORMAL, "
        "BEGIN IMMEDIATE + 1 INSERT + COMMIT per save, one connection per process. diskcache: Cache.set per save.",
        "",
        "| metric | MyNoSQL | SQLite WAL | diskcache | MyNoSQL / SQLite | aim |",
        "|---|---:|---:|---:|---:|---|",
        *[f"| {' | '.join(r)} |" for r in rows],
        "",
        f"MyNoSQL's saves by role: the owner's own p99 {m['first_p99']:.2f} ms, max {m['first_max']:.1f} ms; its "
        f"clients' p99 {m['others_p99']:.2f} ms, max {m['others_max']:.1f} ms. The owner's saves held back by its "
        f"compactor (back-pressure): {m['held']}, the longest {m['held_max']:.1f} ms.",
        "",
        f"Visibility: values overwritten before the reader saw them (not stale reads): MyNoSQL "
        f"{vis['mynosql']['missed']}, SQLite {vis['sqlite']['missed']}, diskcache {vis['diskcache']['missed']} of "
        f"{VIS_N}.",
        "",
    ]
    if again:
        ratios = sorted(r["mynosql"]["rate"] / r["sqlite"]["rate"] for r in again)
        maxes = sorted(r["mynosql"]["max"] for r in again)
        p99s = sorted(r["mynosql"]["p99"] for r in again)
        lines += [
            f"The write phase {len(again)} more times (MyNoSQL then SQLite WAL, in turn, in this run): MyNoSQL / "
            f"SQLite median {statistics.median(ratios):.2f}x, {sum(x >= 1 for x in ratios)} of {len(ratios)} at or "
            f"above 1x, range {ratios[0]:.2f}x-{ratios[-1]:.2f}x; MyNoSQL's save max median "
            f"{statistics.median(maxes):.1f} ms, {sum(x <= 50 for x in maxes)} of {len(maxes)} at or below 50 ms, "
            f"worst {maxes[-1]:.1f} ms; save p99 median {statistics.median(p99s):.2f} ms, worst {p99s[-1]:.2f} ms.",
            "",
            "| run | MyNoSQL saves/s | SQLite saves/s | ratio | MyNoSQL p99 (ms) | max (ms) | owner's max | "
            "clients' max | owner held back: saves, longest (ms) | SQLite max (ms) |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
            *[f"| {i + 1} | {r['mynosql']['rate']:,.0f} | {r['sqlite']['rate']:,.0f} | "
              f"{r['mynosql']['rate'] / r['sqlite']['rate']:.2f}x | {r['mynosql']['p99']:.2f} | "
              f"{r['mynosql']['max']:.1f} | {r['mynosql']['first_max']:.1f} | {r['mynosql']['others_max']:.1f} | "
              f"{r['mynosql']['held']}, {r['mynosql']['held_max']:.1f} | "
              f"{r['sqlite']['max']:.1f} |" for i, r in enumerate(again)],
            "",
        ]
    text = "\n".join(lines)
    print(text)
    if not args.quick:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
