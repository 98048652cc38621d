#!/usr/bin/env python3
"""A mirror with many small databases (one per user or device, CouchDB's usual pattern): how fast it starts, and
its memory while clients write to many of them.

Run from the repository root::

    .venv/bin/python bench/many_databases.py              # 10,000 databases, writes to 1,000 of them
    .venv/bin/python bench/many_databases.py --quick      # 500 databases, writes to 100

What is measured (every process is started and stopped here; everything talks over 127.0.0.1):

1. Start: the time from launching ``python -m MyNoSQL serve --path DIR`` (DIR holding ``--dbs`` databases of one
   record each, made before the timer starts) to its "serving" line, and the time until a first request for one
   database is answered; the median of ``--starts`` starts. Aim: < 2 s. The same starts on an empty folder are
   the control: a start that read anything per database would grow with ``--dbs``. The mirror runs as an
   installed program does, with its modules' bytecode cached (``PYTHONPYCACHEPREFIX`` in the work folder, one
   untimed start first); starts that compile MyNoSQL's own modules each time (a checkout run with
   ``PYTHONDONTWRITEBYTECODE=1``, as in the sandbox where this bench first ran) are shown too.
2. Memory: the mirror's RSS (psutil, every 50 ms) while ``--clients`` concurrent clients push records into
   ``--written`` of the databases with ``_bulk_docs`` (``new_edits=false``, as replicating peers do), several
   rounds each, then read them back. Aim: peak RSS < 200 MB. The registry keeps at most ``--max-open``
   databases open (the serve default, 200).

No anchor runs here: CouchDB is not on this machine, and express-pouchdb keeps every database in RAM (its memory
grows with the data, which is what this aim is about). The figures are absolute; run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import aiohttp
import orjson
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

import MyNoSQL  # noqa: E402
from MyNoSQL.records import revtree  # noqa: E402
from MyNoSQL.records.codec import encode_body  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_databases(folder: Path, n: int) -> None:
    """``n`` databases of one record each: one made for real, copied (with a uuid of its own each)."""
    template = folder / "_template"
    with MyNoSQL.MyNoSQL(template) as h:
        h.opendb("db")
        h.savedoc({"id": "profile", "name": "someone", "settings": {"theme": "dark"}})
    src = template / "db"
    config = orjson.loads((src / "config.json").read_bytes())
    for i in range(n):
        dst = folder / f"user{i:05d}"
        shutil.copytree(src, dst)
        (dst / "LOCK").unlink(missing_ok=True)
        config["uuid"] = os.urandom(16).hex()
        (dst / "config.json").write_bytes(orjson.dumps(config))
    shutil.rmtree(template)


class Sampler:
    """RSS of a process every 50 ms, in a thread."""

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.peak = 0
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            try:
                rss = self.proc.memory_info().rss
            except psutil.Error:
                return
            self.samples.append(rss)
            self.peak = max(self.peak, rss)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def replicated_docs(prefix: str, n: int) -> list[dict[str, object]]:
    docs = []
    for i in range(n):
        body = {"t": time.time(), "v": random.random(), "sensor": f"s-{i % 7}"}
        blob, _ = encode_body(body)
        rev = revtree.new_rev(None, False, blob)
        docs.append({"_id": f"{prefix}-{i}", "_rev": rev, **body})
    return docs


async def write_many(url: str, names: list[str], clients: int, rounds: int, per_round: int) -> float:
    sem = asyncio.Semaphore(clients)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:

        async def one(name: str, r: int) -> None:
            async with sem:
                body = {"docs": replicated_docs(f"r{r}", per_round), "new_edits": False}
                async with session.post(f"{url}/{name}/_bulk_docs", data=orjson.dumps(body),
                                        headers={"Content-Type": "application/json"}) as resp:
                    assert resp.status == 201, await resp.text()

        t0 = time.perf_counter()
        for r in range(rounds):
            await asyncio.gather(*(one(n, r) for n in names))
        for name in names:  # and read one back from each
            async with sem, session.get(f"{url}/{name}/profile") as resp:
                assert resp.status == 200
        return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dbs", type=int, default=10_000)
    ap.add_argument("--written", type=int, default=1_000, help="databases the clients write to")
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--per-round", type=int, default=20, help="records per database per round")
    ap.add_argument("--max-open", type=int, default=None, help="the mirror's --max-open (default: serve's)")
    ap.add_argument("--starts", type=int, default=5, help="timed starts of each kind (their median is shown)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "many_databases.md")
    args = ap.parse_args()
    if args.quick:
        args.dbs, args.written, args.out = 500, 100, args.out.with_name("many_databases-quick.md")
    work = Path(tempfile.mkdtemp(prefix="mynosql-many-"))
    proc = None
    try:
        t0 = time.perf_counter()
        make_databases(work / "data", args.dbs)
        made = time.perf_counter() - t0
        (work / "empty").mkdir()
        warm = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "PYTHONPYCACHEPREFIX": str(work / "pycache")}
        warm.pop("PYTHONDONTWRITEBYTECODE", None)
        cold = {**warm, "PYTHONDONTWRITEBYTECODE": "1"}
        cold.pop("PYTHONPYCACHEPREFIX")
        extra = ["--max-open", str(args.max_open)] if args.max_open else []
        stop(start_mirror(work / "data", warm, extra, None)[0])  # untimed: caches the bytecode
        times: dict[str, list[tuple[float, float, float]]] = {"data": [], "empty": [], "data-cold": []}
        load_before = os.getloadavg()[0]
        for _ in range(args.starts):  # interleaved, so that the machine's load falls on each alike
            for kind, folder, env, first_db in (("data", work / "data", warm, "user00000"),
                                                ("empty", work / "empty", warm, None),
                                                ("data-cold", work / "data", cold, "user00000")):
                p, _, serving, first, cpu = start_mirror(folder, env, extra, first_db)
                stop(p)
                times[kind].append((serving, first, cpu))
        load_after = os.getloadavg()[0]

        def median(kind: str, i: int) -> float:
            return statistics.median(t[i] for t in times[kind])

        started, first_answer, empty_start = median("data", 0), median("data", 1), median("empty", 0)
        proc, url, _, _, _ = start_mirror(work / "data", warm, extra, "user00000")
        sampler = Sampler(proc.pid)
        asyncio.run(asyncio.sleep(0.5))
        idle_rss = sampler.samples[-1] if sampler.samples else 0
        names = sorted(random.Random(1).sample([f"user{i:05d}" for i in range(args.dbs)], args.written))
        took = asyncio.run(write_many(url, names, args.clients, args.rounds, args.per_round))
        sampler.stop()
        records = args.written * args.rounds * args.per_round
        rows = [
            ("databases in the folder", f"{args.dbs:,}", ""),
            (f"start: launch -> serving (median of {args.starts})", f"{started:.2f} s",
             "< 2 s: " + ("met" if started < 2 else "**missed**")),
            ("start: launch -> first answer from a database", f"{first_answer:.2f} s", ""),
            ("start of the same mirror on an empty folder (control)", f"{empty_start:.2f} s",
             f"ratio {started / empty_start:.2f}"),
            ("CPU time to serving: with DIR / empty folder", f"{median('data', 2):.2f} s / {median('empty', 2):.2f} s",
             ""),
            ("load average (1 min) before / after the starts", f"{load_before:.1f} / {load_after:.1f}",
             f"{os.cpu_count()} CPUs"),
            ("start with MyNoSQL's modules compiled each time: serving / first answer",
             f"{median('data-cold', 0):.2f} s / {median('data-cold', 1):.2f} s", ""),
            ("every start (serving s): with DIR / empty / no bytecode", " / ".join(
                ", ".join(f"{t[0]:.2f}" for t in times[k]) for k in ("data", "empty", "data-cold")), ""),
            ("RSS when serving, idle", f"{idle_rss / 2**20:.1f} MB", ""),
            (f"peak RSS while {args.clients} clients write {records:,} records to {args.written:,} databases",
             f"{sampler.peak / 2**20:.1f} MB", "< 200 MB: " + ("met" if sampler.peak < 200 * 2**20 else "**missed**")),
            ("writes", f"{records / took:,.0f} records/s ({took:.1f} s)", ""),
        ]
        report = [f"# Many databases ({datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC)", "",
                  f"`{' '.join(sys.argv)}`; databases made in {made:.1f} s (not timed).", "",
                  "| metric | value | aim |", "|---|---:|---|", *(f"| {a} | {b} | {c} |" for a, b, c in rows), ""]
        text = "\n".join(report)
        print(text)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        return 0
    finally:
        if proc is not None:
            stop(proc)
        shutil.rmtree(work, ignore_errors=True)


def start_mirror(folder: Path, env: dict[str, str], extra: list[str],
                 first_db: str | None) -> tuple[subprocess.Popen[str], str, float, float, float]:
    """A mirror of ``folder``: (process, URL, seconds to its "serving" line, seconds to the answer of a first
    request: ``GET /{first_db}``, which opens that database, or ``GET /``), both from the launch, and the CPU
    seconds (user + system) the process had used when it said "serving": what load on the machine does not
    change)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "MyNoSQL", "serve", "--path", str(folder), "--port", str(port),
                             *extra], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    serving = time.perf_counter() - t0
    cpu = psutil.Process(proc.pid).cpu_times()
    assert line.startswith("serving"), line
    asyncio.run(_first(url, first_db or ""))
    return proc, url, serving, time.perf_counter() - t0, cpu.user + cpu.system


def stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=60)


async def _first(url: str, name: str) -> None:
    async with aiohttp.ClientSession() as session, session.get(f"{url}/{name}") as resp:
        assert resp.status == 200


if __name__ == "__main__":
    raise SystemExit(main())
