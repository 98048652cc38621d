#!/usr/bin/env python3
"""Mango queries on 100,000 records: find against SQLite (the same records as JSON text, expression indexes on
json_extract), TinyDB and pouchdb-find (memory adapter, in node), all measured in this run; a live query's
callback latency; and the bytes a subscribed peer moves. Writes bench/results/query.md.

    PYTHONPATH=src .venv/bin/python bench/query.py                 # full run (--n 100000)
    PYTHONPATH=src .venv/bin/python bench/query.py --n 20000 --quick

Every query is checked to give the same records in every engine before it is timed. Ratios are the anchor's
time over ours (> 1: we are faster); p50 and p99 over the repetitions, run interleaved (one of each engine in
turn, which one goes first alternating) so that a slow spell of this shared machine, and the cold CPU caches
another engine's query leaves behind, hit all of them alike. The first ``--warmup`` repetitions of every engine
are not timed: the first queries fill caches (our record memo, SQLite's page cache, the CPU's), and a p99 is
one of a few slowest repetitions, so two or three cold starts would otherwise be all of it.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

import MyNoSQL  # noqa: E402

BASE_TS = 1764000000.123
FIND_JS = ROOT / "tests" / "interop" / "find.js"


def make_docs(n: int) -> list[dict[str, Any]]:
    """bench/local.py's records (about 200 bytes of JSON), with a sensor (1,000 of them: 100 records each for
    100,000), a site (50) and a player (5,000)."""
    rng = random.Random(42)
    return [{"sensor": f"s-{i % 1000}", "ts": BASE_TS + i,
             "values": [round(rng.gauss(20.0, 2.0), 3) for _ in range(10)],
             "site": f"site-{i % 50}", "player": f"p-{i % 5000}"} for i in range(n)]


def queries(n: int) -> list[dict[str, Any]]:
    return [
        {"name": "equality on an indexed field (100 records)", "selector": {"sensor": "s-7"},
         "sql": ("WHERE json_extract(body, '$.sensor') = ?", ["s-7"]), "sort": None, "limit": None},
        {"name": "range + sort + limit 50", "selector": {"ts": {"$gte": BASE_TS + n // 2}},
         "sql": ("WHERE json_extract(body, '$.ts') >= ? ORDER BY json_extract(body, '$.ts') DESC LIMIT 50",
                 [BASE_TS + n // 2]), "sort": [{"ts": "desc"}], "limit": 50},
        {"name": "$or of two indexed fields", "selector": {"$or": [{"sensor": "s-7"}, {"player": "p-42"}]},
         "sql": ("WHERE json_extract(body, '$.sensor') = ? OR json_extract(body, '$.player') = ?", ["s-7", "p-42"]),
         "sort": None, "limit": None},
        {"name": "$in of 20 values", "selector": {"sensor": {"$in": [f"s-{k}" for k in range(100, 120)]}},
         "sql": (f"WHERE json_extract(body, '$.sensor') IN ({','.join('?' * 20)})",
                 [f"s-{k}" for k in range(100, 120)]),
         "sort": None, "limit": None},
    ]


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))]


def settle(db: Any, quiet: float = 8.0, deadline: float = 600.0) -> float:
    """Wait until the database's compactor has had nothing to do for ``quiet`` seconds (no flush), and return how
    long that took. After a burst of saves it re-packs the burst's fast (DEFLATE) blocks with LZMA2 once no save
    came for 5 s, moving their records through its memtable: queries timed meanwhile would measure that work and
    a memtable of moved records to scan (explain said "examines ~4,118" for a 100-record equality), not the
    database as an application that runs on finds it. SQLite's side is complete (committed, ANALYZEd) too."""
    t0 = last_change = time.monotonic()
    seen = db.storage_stats.flushes
    while time.monotonic() - t0 < deadline:
        time.sleep(0.25)
        now = db.storage_stats.flushes
        if now != seen:
            seen, last_change = now, time.monotonic()
        elif time.monotonic() - last_change >= quiet:
            return time.monotonic() - t0
    raise RuntimeError(f"the compactor did not settle within {deadline:.0f} s")


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


# -- engines ---------------------------------------------------------------------------------------------------


def sqlite_engine(path: Path, docs: list[dict[str, Any]]) -> Callable[[dict[str, Any]], list[dict[str, Any]]]:
    con = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("CREATE TABLE docs(id TEXT PRIMARY KEY, body TEXT NOT NULL) WITHOUT ROWID")
    con.execute("BEGIN")
    con.executemany("INSERT INTO docs VALUES(?, ?)", ((f"d{i:06}", orjson.dumps(d).decode()) for i, d in
                                                      enumerate(docs)))
    con.execute("COMMIT")
    for f in ("sensor", "ts", "player"):
        con.execute(f"CREATE INDEX docs_{f} ON docs(json_extract(body, '$.{f}'))")
    con.execute("ANALYZE")

    def run(q: dict[str, Any]) -> list[dict[str, Any]]:
        where, args = q["sql"]
        return [{"id": id, **orjson.loads(body)} for id, body in con.execute(f"SELECT id, body FROM docs {where}",
                                                                                args)]

    run.con = con  # type: ignore[attr-defined]
    return run


def sqlite_plans(con: sqlite3.Connection, qs: list[dict[str, Any]]) -> list[str]:
    out = []
    for q in qs:
        where, args = q["sql"]
        plan = con.execute(f"EXPLAIN QUERY PLAN SELECT id, body FROM docs {where}", args).fetchall()
        out.append("; ".join(str(r[-1]) for r in plan))
    return out


def tinydb_engine(docs: list[dict[str, Any]]) -> Callable[[dict[str, Any]], list[dict[str, Any]]]:
    from tinydb import Query, TinyDB
    from tinydb.storages import MemoryStorage

    # No query cache: TinyDB caches each query's result, and a repeated query would time a dict lookup.
    db = TinyDB(storage=MemoryStorage).table("_default", cache_size=0)
    db.insert_multiple([{"id": f"d{i:06}", **d} for i, d in enumerate(docs)])
    Q = Query()

    def run(q: dict[str, Any]) -> list[dict[str, Any]]:
        sel = q["selector"]
        if "$or" in sel:
            cond = (Q.sensor == sel["$or"][0]["sensor"]) | (Q.player == sel["$or"][1]["player"])
        elif isinstance(sel.get("sensor"), dict):
            cond = Q.sensor.one_of(sel["sensor"]["$in"])
        elif "sensor" in sel:
            cond = Q.sensor == sel["sensor"]
        else:
            cond = Q.ts >= sel["ts"]["$gte"]
        rows = [dict(r) for r in db.search(cond)]
        if q["sort"]:
            rows.sort(key=lambda r: r["ts"], reverse=True)
            rows = rows[: q["limit"]]
        return rows

    return run


def pouch_run(docs: list[dict[str, Any]], qs: list[dict[str, Any]], repeat: int) -> dict[str, Any] | None:
    node = shutil.which("node")
    if node is None or not (ROOT / "tests" / "interop" / "node_modules" / "pouchdb-find").exists():
        return None
    request = {"url": None, "docs": [{"_id": f"d{i:06}", **d} for i, d in enumerate(docs)], "queries": [
        {"index": [next(iter(q["selector"]))] if "$or" not in q["selector"] else None, "selector": q["selector"],
         "sort": q["sort"], "limit": q["limit"], "repeat": 1} for q in qs]}
    for q in qs:  # then timed: each query `repeat` times (the first round above built the indexes)
        request["queries"].append({"selector": q["selector"], "sort": q["sort"], "limit": q["limit"],
                                   "repeat": repeat, "budget_ms": 5000})
    proc = subprocess.run([node, "--max-old-space-size=4096", str(FIND_JS)], cwd=FIND_JS.parent,
                          input=json.dumps(request), capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        print("pouchdb-find failed:", proc.stdout[-2000:], proc.stderr[-2000:], file=sys.stderr)
        return None
    out: dict[str, Any] = json.loads(proc.stdout)
    return out


# -- the run ---------------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--reps", type=int, default=500)
    ap.add_argument("--warmup", type=int, default=5, help="untimed repetitions of each query and engine first")
    ap.add_argument("--tiny-reps", type=int, default=5)
    ap.add_argument("--live", type=int, default=2000)
    ap.add_argument("--quick", action="store_true", help="fewer repetitions, no pouchdb-find, no peer")
    ap.add_argument("--no-pouch", action="store_true")
    ap.add_argument("--no-peer", action="store_true")
    ap.add_argument("--cache-docs", type=int, default=None,
                    help="Options.cache_docs (1: find's record memo keeps nothing: every record is read and parsed)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "query.md"))
    args = ap.parse_args()
    if args.quick:
        args.reps, args.live, args.no_pouch, args.no_peer = 30, 300, True, True
    n = args.n
    lines: list[str] = []

    def say(s: str = "") -> None:
        print(s, flush=True)
        lines.append(s)

    tmp = Path(tempfile.mkdtemp(prefix="mynosql-query-bench-"))
    try:
        docs = make_docs(n)
        qs = queries(n)
        # ours
        extra = {} if args.cache_docs is None else {"cache_docs": args.cache_docs}
        h = MyNoSQL.MyNoSQL(tmp / "ours", options=MyNoSQL.Options(background_sync=False, **extra))
        db = h.opendb("bench")
        load, _ = timed(lambda: [db.savedoc({"id": f"d{i:06}", **d}) for i, d in enumerate(docs)])
        db.flush()
        build, _ = timed(lambda: [db.createindex([f]) for f in ("sensor", "ts", "player")])
        settled = settle(db)
        sq = sqlite_engine(tmp / "sqlite.db", docs)
        tiny = tinydb_engine(docs)
        say(f"# Query benchmark ({n:,} records)")
        say()
        git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
        flags = "" if args.cache_docs is None else f" --cache-docs {args.cache_docs}"
        say(f"`PYTHONPATH=src .venv/bin/python bench/query.py --n {n}{flags}` on {time.strftime('%Y-%m-%d')}, "
            f"git {git.stdout.strip()}; "
            f"{args.reps} repetitions per query after {args.warmup} untimed (TinyDB {args.tiny_reps}), "
            "interleaved (MyNoSQL and SQLite take turns "
            f"going first). Load {load:.1f} s; three "
            f"one-field indexes built in {build:.1f} s; then {settled:.1f} s until the compactor was idle (a burst's "
            "fast blocks re-packed with LZMA2) before anything was timed.")
        say()
        # Every engine's records are loaded: the cyclic GC need not walk them again and again while the queries
        # allocate (it would tax whichever engine allocates the most with the others' objects).
        gc.collect()
        gc.freeze()
        say("SQLite's plans (EXPLAIN QUERY PLAN): " + " | ".join(sqlite_plans(sq.con, qs)))  # type: ignore[attr-defined]
        say()

        def ours(q: dict[str, Any]) -> list[dict[str, Any]]:
            return db.find(q["selector"], sort=q["sort"], limit=q["limit"])

        # same results everywhere first
        for q in qs:
            a, b, c = ours(q), sq(q), tiny(q)
            key = (lambda r: r["id"]) if not q["sort"] else None
            ids = [r["id"] for r in (sorted(a, key=key) if key else a)]
            assert ids == [r["id"] for r in (sorted(b, key=key) if key else b)], q["name"]
            assert ids == [r["id"] for r in (sorted(c, key=key) if key else c)], q["name"]
            norev = [{k: v for k, v in r.items() if k != "rev"} for r in a]
            assert sorted(map(orjson.dumps, norev)) == sorted(map(orjson.dumps, b)), q["name"]  # the same records
            q["count"] = len(a)
            q["explain"] = db.explain(q["selector"], sort=q["sort"], limit=q["limit"])["mynosql"]
        times: dict[str, dict[str, list[float]]] = {q["name"]: {"ours": [], "sqlite": [], "tinydb": []} for q in qs}
        engines: list[tuple[str, Callable[[dict[str, Any]], list[dict[str, Any]]]]] = [("ours", ours),
                                                                                      ("sqlite", sq)]
        for _ in range(args.warmup):
            for q in qs:
                for _name, fn in engines:
                    fn(q)
        for rep in range(args.reps):
            for q in qs:
                # Which engine runs first alternates: the first after another query finds the CPU caches cold
                # (the other engine's records in them), and measured here that costs a query of 50 records 2-3x.
                for name, fn in (engines if rep % 2 == 0 else engines[::-1]):
                    times[q["name"]][name].append(timed(lambda q=q, fn=fn: fn(q))[0])
                if rep < args.tiny_reps:
                    times[q["name"]]["tinydb"].append(timed(lambda q=q: tiny(q))[0])
        pouch = None if args.no_pouch else pouch_run(docs, qs, min(args.reps, 50))
        if pouch is not None:
            for i, q in enumerate(qs):
                theirs = pouch["results"][i]
                assert "error" not in theirs, theirs
                want = [d["_id"] for d in theirs["docs"]]
                got = [r["id"] for r in ours(q)]
                assert (want if q["sort"] else sorted(want)) == (got if q["sort"] else sorted(got)), q["name"]
        say("| query | records | our plan | ours p50 / p99 (ms) | SQLite p50 / p99 | ratio p50 / p99 | TinyDB p50 "
            "(ratio) | pouchdb-find mean (ratio) |")
        say("|---|---|---|---|---|---|---|---|")
        for i, q in enumerate(qs):
            tm = times[q["name"]]
            o50, o99 = pct(tm["ours"], 50) * 1e3, pct(tm["ours"], 99) * 1e3
            s50, s99 = pct(tm["sqlite"], 50) * 1e3, pct(tm["sqlite"], 99) * 1e3
            t50 = pct(tm["tinydb"], 50) * 1e3
            pm = pouch["elapsed_ms"][len(qs) + i] if pouch is not None else None
            ex = q["explain"]
            plan = f"{ex['strategy']}, examines ~{ex['examined']}"
            pcell = f"{pm:.2f} ({pm / o50:.1f}x)" if pm else "not run"
            say(f"| {q['name']} | {q['count']} | {plan} | {o50:.2f} / {o99:.2f} | {s50:.2f} / {s99:.2f} | "
                f"**{s50 / o50:.2f}x** / {s99 / o99:.2f}x | {t50:.1f} ({t50 / o50:.0f}x) | {pcell} |")
        say()
        say("Ratios are the anchor's time over ours: above 1, MyNoSQL is faster. Every engine returns Python dicts "
            "(SQLite's JSON text parsed with orjson, as our records are); the results were checked equal first "
            "(pouchdb-find's ids too).")
        say()
        live_latency(db, args.live, say)
        h.closedb()
        sq.con.close()  # type: ignore[attr-defined]
        if not args.no_peer:
            peer_bytes(tmp, docs, say)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


def live_latency(db: Any, count: int, say: Callable[[str], None]) -> None:
    """From the start of the savedoc that changes a live query's result to its callback."""
    for label, kwargs, make in (
        ("no limit: {\"sensor\": \"s-7\"}", {}, lambda i: {"sensor": "s-7", "ts": 0.0 + i}),
        ("top 50 by ts (an entering record pushes the last out)", {"sort": [{"ts": "desc"}], "limit": 50},
         lambda i: {"sensor": "s-1", "ts": BASE_TS * 2 + i}),
    ):
        started = [0.0]
        lat: list[float] = []
        sel = {"sensor": "s-7"} if not kwargs else {"ts": {"$gte": BASE_TS}}

        def callback(change: Any, started: list[float] = started, lat: list[float] = lat) -> None:
            if not change.initial:
                lat.append(time.perf_counter() - started[0])

        live = db.observe(sel, callback, **kwargs)
        for i in range(count):
            started[0] = time.perf_counter()
            db.savedoc(make(i))
        live.stop()
        say(f"Live query, {label}: {len(lat)} callbacks for {count} saves; latency p50 {pct(lat, 50) * 1e3:.3f} ms, "
            f"p99 {pct(lat, 99) * 1e3:.3f} ms (aim <= 10 ms p99).")
    say()


def peer_bytes(tmp: Path, docs: list[dict[str, Any]], say: Callable[[str], None]) -> None:
    """A mirror with every record; a fresh peer subscribes to one site in 100 (1%): bytes on the wire."""
    import urllib.request

    from MyNoSQL.testing import FaultProxy, poll_until

    mh = MyNoSQL.MyNoSQL(tmp / "mirror")
    mdb = mh.opendb("bench")
    mdb.setlisten("127.0.0.1", 0)
    t0 = time.perf_counter()
    for i, d in enumerate(docs):
        mdb.savedoc({"id": f"d{i:06}", **d, "site": f"site-{i % 100}"})
    mdb.flush()
    mh.setdbmode("Mirror")
    server = poll_until(lambda: mdb.status().get("server"), timeout=30, what="the mirror")
    port = int(str(server).rsplit(":", 1)[1].strip("/"))
    load = time.perf_counter() - t0
    wanted = [{**d, "site": f"site-{i % 100}"} for i, d in enumerate(docs) if i % 100 == 7]
    json_bytes = sum(len(orjson.dumps(d)) for d in wanted)
    proxy = FaultProxy("127.0.0.1", int(port)).start()
    try:
        ph = MyNoSQL.MyNoSQL(tmp / "peer", options=MyNoSQL.Options(longpoll=5.0))
        pdb = ph.opendb("bench")
        t1 = time.perf_counter()
        ph.subscribe({"site": "site-7"})
        ph.addpeer(proxy.url)
        poll_until(lambda: len(pdb) == len(wanted), timeout=600, interval=0.2, what="the subscribed records")
        took = time.perf_counter() - t1
        moved = proxy.stats().bytes_server_to_client
        sent = proxy.stats().bytes_client_to_server
        ph.closedb()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/bench/_changes?limit=1", timeout=10) as r:
            r.read()
    finally:
        proxy.stop()
        mh.closedb()
    say(f"Subscribed peer: {len(wanted):,} of {len(docs):,} records (1%) on a mirror (loaded in {load:.0f} s); "
        f"the peer had them {took:.1f} s after subscribe+addpeer, moving {moved:,} bytes mirror->peer (gzip) and "
        f"{sent:,} peer->mirror, for {json_bytes:,} bytes of those records' JSON: **{moved / json_bytes:.2f}x** "
        "(aim <= 1.2x).")


if __name__ == "__main__":
    main()
