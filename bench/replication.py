#!/usr/bin/env python3
"""Replication benchmark of MyNoSQL against PouchDB <-> express-pouchdb, measured in the same run on the same data.

Run from the repository root::

    .venv/bin/python bench/replication.py            # full run, writes bench/results/replication.md
    .venv/bin/python bench/replication.py --quick    # smoke run with small counts

What is measured (every process is started and stopped here; everything talks over 127.0.0.1):

1. Initial replication, docs/s: a local MyNoSQL database holding N records pushed with ``db.push(mirror_db_url)``
   to a fresh mirror process (``python -m MyNoSQL serve``); also mirror -> mirror with
   ``replicate_once(url1, url2)``. Anchor: PouchDB's replicator (tests/interop/replicate.js) copying N documents
   from one express-pouchdb database (loaded beforehand with ``_bulk_docs``, not timed) to an empty one.
2. A poll when nothing changed, with 10k and 100k records in the database: round trips, bytes both ways (through
   a FaultProxy) and ms of ``GET {db}/_changes?style=all_docs&since=<last_seq>&limit=1000`` sent by MyNoSQL's own
   HTTP endpoint code, against a mirror and against express-pouchdb. Plus (diagnostic) the real background
   cycle of an idle peer.
3. Latency of one change peer -> mirror: a peer in this process saves a record; a separate client long-polling
   the mirror's ``_changes`` sees it. Anchor: PouchDB live replication (bench/pouch_live.js) to express-pouchdb.
4. Bytes on the wire per record during the initial replication / raw JSON size of the records.
5. Peak RSS of a mirror process receiving ``--rss-n`` records (psutil, every 50 ms) over its idle empty RSS; the
   same for an express-pouchdb server receiving them from another one (context).

Needs node >= 18 and the interop node_modules (``npm ci`` in tests/interop, done on demand).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import gc
import hashlib
import http.client
import os
import platform
import random
import re
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import psutil

import MyNoSQL
from MyNoSQL.replication.endpoints import HttpEndpoint
from MyNoSQL.replication.oneshot import replicate_once
from MyNoSQL.testing.faultproxy import FaultProxy

ROOT = Path(__file__).resolve().parents[1]
INTEROP = ROOT / "tests" / "interop"
sys.path.insert(0, str(INTEROP))
import pouch  # noqa: E402  (tests/interop/pouch.py: the PouchDB server harness)

DB = "bench"
HOST = "127.0.0.1"
MB = 1024 * 1024
POUCH_LIVE_JS = Path(__file__).resolve().parent / "pouch_live.js"
POUCH_PUSH_JS = Path(__file__).resolve().parent / "pouch_push.js"
Doc = dict[str, Any]

WORDS = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet", "kilo", "lima",
         "mike", "november", "oscar", "papa", "quebec", "romeo", "sierra", "tango", "uniform", "victor", "whiskey",
         "xray", "yankee", "zulu", "north", "south", "east", "west", "pump", "valve", "meter")
SITES = ("north-3", "south-1", "harbour", "plant-7", "depot-12", "field-b")


# -- data ---------------------------------------------------------------------------------------------------------


def make_docs(n: int, seed: int = 20260401) -> list[Doc]:
    """The records: deterministic, ~300 bytes of JSON each; a shorter list is a prefix of a longer one."""
    rng = random.Random(seed)
    return [
        {
            "id": f"{rng.getrandbits(128):032x}",
            "type": "reading",
            "sensor": f"s-{rng.randrange(1000):03d}",
            "site": rng.choice(SITES),
            "ts": 1775000000.0 + i * 0.25,
            "n": i,
            "values": [round(rng.uniform(-40.0, 60.0), 2) for _ in range(8)],
            "ok": rng.random() < 0.95,
            "note": " ".join(rng.choice(WORDS) for _ in range(16)),
        }
        for i in range(n)
    ]


def raw_json_bytes(docs: Sequence[Doc]) -> int:
    """The raw JSON size of the records: each record with its id, compact, no revision."""
    return sum(len(orjson.dumps(d)) for d in docs)


def to_couch(doc: Doc) -> Doc:
    out = {"_id": doc["id"]}
    out.update((k, v) for k, v in doc.items() if k != "id")
    return out


# -- small helpers ------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def wait_until(cond: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    delay = 0.005
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if cond():
                return
        time.sleep(delay)
        delay = min(0.1, delay * 2)
    raise TimeoutError(f"timed out after {timeout} s waiting for {what}")


def http_json(method: str, url: str, body: Any = None, timeout: float = 120.0) -> Any:
    """One request with the standard library (keeps this process out of the measured paths' client code)."""
    from urllib.parse import urlsplit

    p = urlsplit(url)
    conn = http.client.HTTPConnection(p.hostname, p.port, timeout=timeout)
    try:
        data = None if body is None else orjson.dumps(body)
        headers = {"Content-Type": "application/json"} if data is not None else {}
        conn.request(method, p.path + (f"?{p.query}" if p.query else ""), body=data, headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
        if resp.status >= 400:
            raise RuntimeError(f"{method} {url}: HTTP {resp.status} {raw[:200]!r}")
        return orjson.loads(raw) if raw else None
    finally:
        conn.close()


def pct(xs: Sequence[float], q: float) -> float:
    s = sorted(xs)
    if not s:
        return float("nan")
    k = (len(s) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def fmt_rate(x: float) -> str:
    return f"{x:,.0f} docs/s"


def fmt_bytes(x: float) -> str:
    return f"{x:,.0f} B"


def fmt_ms(x: float) -> str:
    return f"{x:.2f} ms" if x < 10 else f"{x:.1f} ms"


def fmt_mb(x: float) -> str:
    return f"{x:,.1f} MB"


# -- a mirror process ---------------------------------------------------------------------------------------------


class Mirror:
    """``python -m MyNoSQL serve`` on 127.0.0.1 with its own folder; stopped with SIGTERM (SIGKILL if stuck)."""

    def __init__(self, root: Path, tag: str) -> None:
        self.path = root / tag
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.db_url = f"{self.url}/{DB}"
        self.proc: subprocess.Popen[str] | None = None
        self.log: list[str] = []

    def start(self) -> Mirror:
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
        args = [sys.executable, "-m", "MyNoSQL", "serve", "--path", str(self.path), "--db", DB, "--host", HOST,
                "--port", str(self.port)]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                     stdin=subprocess.DEVNULL)
        assert self.proc.stdout is not None
        deadline = time.monotonic() + 30
        line = ""
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line or line.startswith("serving"):
                break
            self.log.append(line)
        if not line.startswith("serving"):
            self.stop()
            raise RuntimeError(f"mirror did not start: {line!r} {''.join(self.log)}")
        threading.Thread(target=self._drain, daemon=True).start()
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def _drain(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.log.append(line)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)

    def info(self) -> dict[str, Any]:
        result: dict[str, Any] = http_json("GET", self.db_url)
        return result


# -- a proxy that also counts HTTP requests -----------------------------------------------------------------------

_REQUEST_LINE = re.compile(rb"(GET|HEAD|POST|PUT|DELETE|COPY|OPTIONS) (\S+) HTTP/1\.[01]\r\n")


def _route(method: bytes, target: bytes) -> str:
    path = target.split(b"?", 1)[0].decode("latin-1")
    parts = path.split("/")
    if len(parts) >= 2 and parts[1] and not parts[1].startswith("_"):
        parts[1] = "{db}"
    if len(parts) >= 3:
        if parts[2] == "_local":
            parts[3:] = ["*"]
        elif not parts[2].startswith("_"):
            parts[2:] = ["{doc}"]
    return f"{method.decode()} {'/'.join(parts)}"


class _RequestTap:
    """Wraps the client -> server StreamReader of one proxied connection; counts request lines as they pass."""

    def __init__(self, reader: Any, sink: Callable[[bytes, bytes], None]) -> None:
        self._reader = reader
        self._sink = sink
        self._tail = b""

    async def read(self, n: int = -1) -> bytes:
        data: bytes = await self._reader.read(n)
        if data:
            buf = self._tail + data
            for m in _REQUEST_LINE.finditer(buf):
                if m.end() > len(self._tail):
                    self._sink(m.group(1), m.group(2))
            self._tail = buf[-1024:]
        return data


class CountingProxy(FaultProxy):
    """FaultProxy (bytes both ways, connections) plus a count of the HTTP requests that cross it, by route.

    Uses FaultProxy's private ``_pump`` hook: a benchmark helper, not an API.
    """

    def __init__(self, target_port: int) -> None:
        super().__init__(HOST, target_port)
        self._req_lock = threading.Lock()
        self._requests: collections.Counter[str] = collections.Counter()

    def _on_request(self, method: bytes, target: bytes) -> None:
        with self._req_lock:
            self._requests[_route(method, target)] += 1

    async def _pump(self, conn: Any, src: Any, dst: Any, *, to_server: bool) -> None:
        if to_server:
            src = _RequestTap(src, self._on_request)
        await super()._pump(conn, src, dst, to_server=to_server)

    def requests(self) -> collections.Counter[str]:
        with self._req_lock:
            return collections.Counter(self._requests)

    def reset(self) -> None:
        self.reset_stats()
        with self._req_lock:
            self._requests.clear()

    def snapshot(self) -> dict[str, Any]:
        st = self.stats()
        reqs = self.requests()
        return {"c2s": st.bytes_client_to_server, "s2c": st.bytes_server_to_client,
                "bytes": st.bytes_client_to_server + st.bytes_server_to_client, "connections": st.accepted,
                "requests": sum(reqs.values()), "routes": dict(reqs)}


def routes_text(routes: dict[str, int], per: float = 1.0) -> str:
    items = sorted(routes.items(), key=lambda kv: -kv[1])
    return ", ".join(f"{k} x{v / per:g}" for k, v in items)


# -- RSS sampling -------------------------------------------------------------------------------------------------


class RssSampler:
    """Samples a process's RSS every ``interval`` seconds in a thread (bounded by ``max_seconds``)."""

    def __init__(self, pid: int, interval: float = 0.05, max_seconds: float = 3600.0) -> None:
        self.proc = psutil.Process(pid)
        self.interval = interval
        self.max_seconds = max_seconds
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        t0 = time.monotonic()
        while not self._stop.is_set() and time.monotonic() - t0 < self.max_seconds:
            try:
                self.samples.append((time.monotonic(), self.proc.memory_info().rss))
            except psutil.Error:
                return
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def idle_rss(pid: int, seconds: float = 1.0) -> int:
    with RssSampler(pid) as s:
        time.sleep(seconds)
    return int(statistics.median(r for _t, r in s.samples))


def rss_profile(samples: list[tuple[float, int]], t_start: float, t_end: float, base: int) -> dict[str, Any]:
    """Peak over everything sampled, and the peak in each quarter of [t_start, t_end] (MB over ``base``)."""
    peak = max(r for _t, r in samples)
    quarters = []
    span = max(t_end - t_start, 1e-9)
    for q in range(4):
        lo, hi = t_start + span * q / 4, t_start + span * (q + 1) / 4
        rs = [r for t, r in samples if lo <= t <= hi]
        quarters.append((max(rs) - base) / MB if rs else float("nan"))
    return {"peak_mb": (peak - base) / MB, "quarters_mb": quarters, "base_mb": base / MB,
            "end_mb": (samples[-1][1] - base) / MB, "n_samples": len(samples)}


# -- MyNoSQL side -------------------------------------------------------------------------------------------------


def build_local(path: Path, docs: Sequence[Doc]) -> tuple[MyNoSQL.MyNoSQL, Any, float]:
    """A local peer-mode database (no mirrors: no background sync) holding ``docs``; returns its rate of saves."""
    handle = MyNoSQL.MyNoSQL(path)
    db = handle.opendb(DB)
    t0 = time.perf_counter()
    for d in docs:
        db.savedoc(d)
    db.flush()
    return handle, db, len(docs) / (time.perf_counter() - t0)


def fill_mirror_folder(root: Path, docs: Sequence[Doc]) -> None:
    """Write ``docs`` straight into a mirror's database folder (before the mirror process starts)."""
    handle = MyNoSQL.MyNoSQL(root)
    handle.opendb(DB)
    try:
        for d in docs:
            handle.savedoc(d)
    finally:
        handle.closedb()


# -- PouchDB side -------------------------------------------------------------------------------------------------


def pouch_load(db_url: str, docs: Sequence[Doc], chunk: int = 2000) -> float:
    """Create the database and load ``docs`` with _bulk_docs (new edits); returns docs/s of the load."""
    http_json("PUT", db_url)
    t0 = time.perf_counter()
    for i in range(0, len(docs), chunk):
        res = http_json("POST", db_url + "/_bulk_docs", {"docs": [to_couch(d) for d in docs[i:i + chunk]]})
        bad = [r for r in res if "error" in r]
        if bad:
            raise RuntimeError(f"_bulk_docs into {db_url} failed: {bad[:3]}")
    return len(docs) / (time.perf_counter() - t0)


def pouch_push(docs_file: Path, tgt: str, n: int, opts: dict[str, Any]) -> dict[str, Any]:
    """bench/pouch_push.js: a PouchDB peer (local database, ``opts["adapter"]``) pushes ``docs_file`` to ``tgt``."""
    env = {**os.environ, "NODE_PATH": str(INTEROP / "node_modules")}
    t0 = time.perf_counter()
    proc = subprocess.run(["node", str(POUCH_PUSH_JS), str(docs_file), tgt, orjson.dumps(opts).decode()],
                          capture_output=True, text=True, env=env, cwd=INTEROP, timeout=1900.0,
                          check=False)
    try:
        res: dict[str, Any] = orjson.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, orjson.JSONDecodeError):
        raise RuntimeError(f"pouch_push.js failed: {proc.stdout[-500:]} {proc.stderr[-2000:]}") from None
    res["wall_s"] = time.perf_counter() - t0
    if not res.get("ok") or res.get("docs_written") != n:
        raise RuntimeError(f"PouchDB push wrote {res.get('docs_written')} of {n}: {res}")
    return res


def pouch_replicate(src: str, tgt: str, n: int, timeout: float | None = None) -> dict[str, Any]:
    t0 = time.perf_counter()
    res = pouch.pouch_replicate(src, tgt, timeout=timeout or max(120.0, n / 100.0), fetch_timeout=120.0)
    res["wall_s"] = time.perf_counter() - t0
    if res.get("docs_written") != n:
        raise RuntimeError(f"PouchDB replication wrote {res.get('docs_written')} of {n}: {res}")
    return res


# -- CPU accounting -----------------------------------------------------------------------------------------------


def machine_busy_cpu() -> float:
    """CPU seconds the whole machine has spent busy (every process), since boot."""
    t = psutil.cpu_times()
    return float(sum(t) - t.idle - getattr(t, "iowait", 0.0) - getattr(t, "guest", 0.0)
                 - getattr(t, "guest_nice", 0.0))


def wait_for_quiet(max_seconds: float, threshold: float = 0.3, window: float = 20.0) -> str:
    """Wait (at most ``max_seconds``) until other processes use under ``threshold`` cores for ``window`` s."""
    if max_seconds <= 0:
        return "not waited for"
    t0 = time.monotonic()
    quiet_since: float | None = None
    last = machine_busy_cpu()
    while time.monotonic() - t0 < max_seconds:
        time.sleep(2.0)
        now = machine_busy_cpu()
        busy, last = (now - last) / 2.0, now
        if busy < threshold:
            quiet_since = quiet_since or time.monotonic()
            if time.monotonic() - quiet_since >= window:
                return f"quiet after {time.monotonic() - t0:.0f} s of waiting"
        else:
            quiet_since = None
    return f"still busy after waiting {max_seconds:.0f} s: ran anyway"


def own_cpu() -> float:
    """CPU seconds of this process and of its children that have been waited for (mirrors, node servers)."""
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


# -- the report ---------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Row:
    metric: str
    mine: str
    anchor: str
    anchor_value: str
    ratio: str = "—"
    aim: str = "—"
    met: str = "—"


def yes_no(ok: bool | None) -> str:
    if ok is None:
        return "—"
    return "yes" if ok else "**NO**"


class Report:
    def __init__(self) -> None:
        self.rows: list[Row] = []
        self.notes: list[str] = []
        self.phases: list[tuple[str, float]] = []
        self.contention: list[str] = []

    def row(self, *args: Any, **kw: Any) -> None:
        r = Row(*args, **kw)
        self.rows.append(r)
        print(f"  | {r.metric} | {r.mine} | {r.anchor} | {r.anchor_value} | {r.ratio} | {r.aim} | {r.met} |",
              flush=True)

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"  - {text}", flush=True)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Times a phase, and how much CPU other processes of the machine used meanwhile (they skew results)."""
        print(f"\n== {name}", flush=True)
        t0 = time.perf_counter()
        busy0, own0 = machine_busy_cpu(), own_cpu()
        try:
            yield
        finally:
            dt = time.perf_counter() - t0
            busy, own = machine_busy_cpu() - busy0, own_cpu() - own0
            other = max(0.0, busy - own)
            self.phases.append((name, dt))
            self.contention.append(f"{name}: {other / dt:.2f} of {os.cpu_count()} cores")
            print(f"   ({dt:.1f} s; this benchmark's processes used {own / dt:.2f} cores, other processes "
                  f"{other / dt:.2f})", flush=True)

    def markdown(self, header: list[str]) -> str:
        out = ["# MyNoSQL replication benchmark", "", *header, "",
               "| metric | MyNoSQL | anchor | anchor value | ratio | aim | met? |",
               "|---|---:|---|---:|---:|---|---|"]
        for r in self.rows:
            out.append(f"| {r.metric} | {r.mine} | {r.anchor} | {r.anchor_value} | {r.ratio} | {r.aim} | {r.met} |")
        out += ["", "Notes:", ""]
        out += [f"- {n}" for n in self.notes]
        out += ["- Phase wall times: " + "; ".join(f"{name}: {dt:.1f} s" for name, dt in self.phases)]
        out += ["- CPU used by OTHER processes of the machine during each phase (average; this machine has "
                f"{os.cpu_count()} cores, so anything well above 0 slowed the measurements down): "
                + "; ".join(self.contention), ""]
        return "\n".join(out)


# -- 1 + 4: initial replication and bytes per record --------------------------------------------------------------


def bench_initial(args: argparse.Namespace, tmp: Path, rep: Report) -> None:
    sizes = args.sizes
    docs_all = make_docs(max(sizes))
    bytes_n = min(sizes)
    for n in sizes:
        docs = docs_all[:n]
        raw = raw_json_bytes(docs)
        docs_file = tmp / f"docs-{n}.ndjson"
        docs_file.write_bytes(b"".join(orjson.dumps(to_couch(d)) + b"\n" for d in docs))
        push_times: list[float] = []
        pouch_runs: list[dict[str, Any]] = []
        wire: dict[str, Any] | None = None
        wire_m2m: dict[str, Any] | None = None
        pwire: dict[str, Any] | None = None
        p_http: dict[str, Any] | None = None
        with contextlib.ExitStack() as stack:
            # MyNoSQL: a peer (MyNoSQL(dir), its database closed after the load) opens its database and pushes it
            # with db.push to a fresh mirror process, timed from the open. PouchDB: the same in node
            # (bench/pouch_push.js: a local leveldb PouchDB, closed after the load, reopened and replicate.to())
            # into a new empty database of a fresh express-pouchdb server. Interleaved, args.reps times.
            local = tmp / f"local-{n}"
            handle, db, load_rate = build_local(local, docs)
            handle.closedb()
            mirrors: list[Mirror] = []
            for i in range(args.reps):
                m = Mirror(tmp, f"init-{n}-{i}").start()
                stack.callback(m.stop)
                mirrors.append(m)
                t0 = time.perf_counter()
                handle = MyNoSQL.MyNoSQL(local)
                db = handle.opendb(DB)
                res = db.push(m.db_url, timeout=300)
                push_times.append(time.perf_counter() - t0)
                handle.closedb()
                if res["docs_written"] != n or res["errors"]:
                    raise RuntimeError(f"push wrote {res['docs_written']} of {n}: {res['errors'][:3]}")
                if m.info()["doc_count"] != n:
                    raise RuntimeError(f"mirror holds {m.info()['doc_count']} records, expected {n}")
                if i:
                    m.stop()  # keep only the first one (the source of mirror -> mirror) running
                with pouch.pouchdb_server(adapter=args.pouch_server) as server:
                    pouch_runs.append(pouch_push(docs_file, f"{server.url}/tgt", n, args.pouch_opts))
            handle = MyNoSQL.MyNoSQL(local)
            db = handle.opendb(DB)
            stack.callback(handle.closedb)
            m1 = mirrors[0]
            m2 = Mirror(tmp, f"init-b-{n}").start()
            stack.callback(m2.stop)
            t0 = time.perf_counter()
            res2 = replicate_once(m1.db_url, m2.db_url, timeout=300)
            m2m_s = time.perf_counter() - t0
            if res2["docs_written"] != n or m2.info()["doc_count"] != n:
                raise RuntimeError(f"mirror -> mirror wrote {res2['docs_written']} of {n}")
            m2.stop()
            if n == bytes_n:
                m3 = Mirror(tmp, f"init-c-{n}").start()
                stack.callback(m3.stop)
                proxy = stack.enter_context(CountingProxy(m3.port))
                res3 = db.push(f"{proxy.url}/{DB}", timeout=300)
                if res3["docs_written"] != n:
                    raise RuntimeError("push through the proxy did not write every record")
                wire = proxy.snapshot()
                m4 = Mirror(tmp, f"init-d-{n}").start()
                stack.callback(m4.stop)
                p_src = stack.enter_context(CountingProxy(m1.port))
                p_tgt = stack.enter_context(CountingProxy(m4.port))
                replicate_once(f"{p_src.url}/{DB}", f"{p_tgt.url}/{DB}", timeout=300)
                wire_m2m = {"src": p_src.snapshot(), "tgt": p_tgt.snapshot()}
                # The former anchor, for context and for the wire bytes of PouchDB's replicator: replicate.js
                # copying an express-pouchdb database to an empty one on the same server (HTTP -> HTTP).
                server = stack.enter_context(pouch.pouchdb_server())
                pouch_load(f"{server.url}/src", docs)
                with CountingProxy(server.port) as pp_src, CountingProxy(server.port) as pp_tgt:
                    try:
                        p_http = pouch_replicate(f"{pp_src.url}/src", f"{pp_tgt.url}/tgt-wire", n,
                                                 timeout=max(300.0, n / 20.0))
                        pwire = {"src": pp_src.snapshot(), "tgt": pp_tgt.snapshot()}
                    except pouch.PouchReplicationError as exc:  # context only: the rows above stand without it
                        rep.note(f"The former anchor (replicate.js HTTP -> HTTP, {n:,} records) did not finish: "
                                 f"{exc}")
        push_s = statistics.median(push_times)
        pouch_times = [r["elapsed_ms"] / 1000 for r in pouch_runs]
        pouch_s = statistics.median(pouch_times)
        pres = pouch_runs[pouch_times.index(pouch_s)] if pouch_s in pouch_times else pouch_runs[0]
        mine, anchor = n / push_s, n / pouch_s
        ratio = mine / anchor
        anchor_name = (f"PouchDB peer ({pres['adapter']}) replicate.to(express-pouchdb {args.pouch_server}), "
                       "open included")
        rep.row(f"initial replication, {n:,} records (peer opens its db and pushes to a fresh mirror process)",
                fmt_rate(mine), anchor_name, fmt_rate(anchor), f"{ratio:.2f}x", ">= 5x PouchDB", yes_no(ratio >= 5))
        rep.row(f"initial replication, {n:,} records, mirror -> mirror (replicate_once)", fmt_rate(n / m2m_s),
                "same PouchDB run", fmt_rate(anchor), f"{n / m2m_s / anchor:.2f}x", "—", "—")
        rep.note(f"{n:,} records, {raw / n:.0f} B of raw JSON each ({raw:,} B): local load {load_rate:,.0f} "
                 f"savedoc/s (not timed); open + push (median of {args.reps}, each to a fresh mirror process) "
                 f"{push_s:.2f} s, runs " + ", ".join(fmt_rate(n / t) for t in push_times) + f" "
                 f"({res['batches']} batches of ~{n // max(1, res['batches']):,} records); mirror -> mirror "
                 f"{m2m_s:.2f} s (one run); PouchDB peer (bench/pouch_push.js, {pres['adapter']} adapter, "
                 f"replicate options {orjson.dumps(pres['opts']).decode()}, bulkDocs load "
                 f"{n / max(pres['load_ms'], 1) * 1000:,.0f} docs/s not timed) open + replicate.to (median) "
                 f"{pouch_s:.2f} s, runs " + ", ".join(fmt_rate(n / t) for t in pouch_times) + f" (node process "
                 f"wall time {pres['node_ms'] / 1000:.2f} s, start-up and load included)"
                 + ("" if p_http is None else f"; the former anchor (replicate.js, express-pouchdb -> "
                    f"express-pouchdb on one server, HTTP -> HTTP, through two proxies, one run) "
                    f"{fmt_rate(n / (p_http['elapsed_ms'] / 1000))}"))
        if wire is not None and pwire is not None and wire_m2m is not None:
            mine_r = wire["bytes"] / raw
            p_tgt, p_src = pwire["tgt"], pwire["src"]
            p_all = p_tgt["bytes"] + p_src["bytes"]
            m_all = wire_m2m["src"]["bytes"] + wire_m2m["tgt"]["bytes"]
            rep.row(f"wire bytes / raw JSON, initial replication of {n:,} (push: peer <-> mirror link, both ways)",
                    f"{mine_r:.2f}x ({wire['bytes'] / n:,.0f} B/record)",
                    "PouchDB replicator <-> target db link, both ways", f"{p_tgt['bytes'] / raw:.2f}x "
                    f"({p_tgt['bytes'] / n:,.0f} B/record)", f"{wire['bytes'] / p_tgt['bytes']:.2f}x",
                    "<= 1.2x raw JSON", yes_no(mine_r <= 1.2))
            rep.row(f"wire bytes / raw JSON, {n:,}, mirror -> mirror (replicator <-> source + target)",
                    f"{m_all / raw:.2f}x ({m_all / n:,.0f} B/record)", "PouchDB replicator <-> source + target",
                    f"{p_all / raw:.2f}x ({p_all / n:,.0f} B/record)", f"{m_all / p_all:.2f}x", "—", "—")
            rep.note(f"Wire detail ({n:,} records; c2s = client to server): MyNoSQL push c2s {wire['c2s']:,} B, "
                     f"s2c {wire['s2c']:,} B, {wire['requests']} requests on {wire['connections']} connections "
                     f"({routes_text(wire['routes'])}). PouchDB target side c2s {p_tgt['c2s']:,} B, s2c "
                     f"{p_tgt['s2c']:,} B, {p_tgt['requests']} requests ({routes_text(p_tgt['routes'])}); source "
                     f"side c2s {p_src['c2s']:,} B, s2c {p_src['s2c']:,} B, {p_src['requests']} requests "
                     f"({routes_text(p_src['routes'])}). MyNoSQL mirror -> mirror: source side "
                     f"{wire_m2m['src']['bytes']:,} B in {wire_m2m['src']['requests']} requests "
                     f"({routes_text(wire_m2m['src']['routes'])}), target side {wire_m2m['tgt']['bytes']:,} B in "
                     f"{wire_m2m['tgt']['requests']} requests ({routes_text(wire_m2m['tgt']['routes'])}).")
    del docs_all
    gc.collect()


# -- 2: a poll when nothing changed -------------------------------------------------------------------------------


async def _polls(targets: list[tuple[str, Any, CountingProxy]], k: int) -> list[tuple[list[float], dict[str, Any]]]:
    """``k`` rounds of one poll per target, the way a peer sends it (HttpEndpoint.changes: same client, headers
    and query) on a warm pooled connection; the targets alternate within each round, so that load from outside
    hits every target alike. Returns, per target, the ms of each poll and what crossed its proxy."""
    async with contextlib.AsyncExitStack() as stack:
        eps = []
        for url, since, _proxy in targets:
            session = await stack.enter_async_context(
                aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=16)))
            ep = HttpEndpoint(session, url, timeout=30)
            rows, _ = await ep.changes(since, 1000)  # warm-up: opens the pooled connection
            if rows:
                raise RuntimeError(f"the poll of {url} since {since} is not empty: {rows[:2]}")
            eps.append(ep)
        await asyncio.sleep(0.05)
        for _url, _since, proxy in targets:
            proxy.reset()
        times: list[list[float]] = [[] for _ in targets]
        for _ in range(k):
            for i, (ep, (_url, since, _proxy)) in enumerate(zip(eps, targets, strict=True)):
                t0 = time.perf_counter()
                rows, _last = await ep.changes(since, 1000)
                times[i].append((time.perf_counter() - t0) * 1000)
                if rows:
                    raise RuntimeError("a poll found changes")
        await asyncio.sleep(0.05)
        return [(times[i], proxy.snapshot()) for i, (_u, _s, proxy) in enumerate(targets)]


def bench_poll(args: argparse.Namespace, tmp: Path, rep: Report) -> None:
    sizes = args.poll_sizes
    k = args.poll_k
    docs_all = make_docs(max(sizes))
    results: dict[int, dict[str, Any]] = {}
    with contextlib.ExitStack() as stack:
        # Every database is up at once and the polls alternate between them (see _polls).
        server = stack.enter_context(pouch.pouchdb_server())
        targets: list[tuple[str, Any, CountingProxy]] = []
        seqs: dict[int, tuple[Any, Any]] = {}
        for n in sizes:
            docs = docs_all[:n]
            m = Mirror(tmp, f"poll-{n}")
            fill_mirror_folder(m.path, docs)
            m.start()
            stack.callback(m.stop)
            seq = m.info()["update_seq"]
            proxy = stack.enter_context(CountingProxy(m.port))
            targets.append((f"{proxy.url}/{DB}", seq, proxy))
            pouch_load(f"{server.url}/src-{n}", docs)
            pseq = http_json("GET", f"{server.url}/src-{n}")["update_seq"]
            pproxy = stack.enter_context(CountingProxy(server.port))
            targets.append((f"{pproxy.url}/src-{n}", pseq, pproxy))
            seqs[n] = (seq, pseq)
        measured = asyncio.run(_polls(targets, k))
    for j, n in enumerate(sizes):
        (times, snap), (ptimes, psnap) = measured[2 * j], measured[2 * j + 1]
        seq, pseq = seqs[n]
        results[n] = {"ms": statistics.median(times), "bytes": snap["bytes"] / k, "rt": snap["requests"] / k,
                      "conn": snap["connections"], "c2s": snap["c2s"] / k, "s2c": snap["s2c"] / k,
                      "p_ms": statistics.median(ptimes), "p_bytes": psnap["bytes"] / k,
                      "p_rt": psnap["requests"] / k, "p_c2s": psnap["c2s"] / k, "p_s2c": psnap["s2c"] / k,
                      "seq": seq, "pseq": pseq}
    del docs_all
    gc.collect()
    lo, hi = min(sizes), max(sizes)
    for n in sizes:
        r = results[n]
        rep.row(f"idle poll, {n:,} records: round trips (HTTP requests; new connections)",
                f"{r['rt']:g} ({r['conn']} over {k} polls)", "same request to express-pouchdb", f"{r['p_rt']:g}",
                f"{r['rt'] / r['p_rt']:.2f}x", "1", yes_no(r["rt"] <= 1))
        rep.row(f"idle poll, {n:,} records: bytes on the wire, both ways", fmt_bytes(r["bytes"]),
                "same request to express-pouchdb", fmt_bytes(r["p_bytes"]), f"{r['bytes'] / r['p_bytes']:.2f}x",
                "<= 1 KB", yes_no(r["bytes"] <= 1024))
        rep.row(f"idle poll, {n:,} records: time (median of {k})", fmt_ms(r["ms"]),
                "same request to express-pouchdb", fmt_ms(r["p_ms"]), f"{r['ms'] / r['p_ms']:.2f}x", "—", "—")
    if lo != hi:
        a, b = results[lo], results[hi]
        flat_ms, flat_b = b["ms"] / a["ms"], b["bytes"] / a["bytes"]
        rep.row(f"idle poll flatness, {hi:,} vs {lo:,} records (time; bytes)", f"{flat_ms:.2f}x; {flat_b:.3f}x",
                "express-pouchdb", f"{b['p_ms'] / a['p_ms']:.2f}x; {b['p_bytes'] / a['p_bytes']:.3f}x", "—",
                "flat (time <= 1.5x, bytes <= 1.05x)", yes_no(flat_ms <= 1.5 and flat_b <= 1.05))
    detail = "; ".join(
        f"{n:,} records (last_seq {r['seq']} / PouchDB {r['pseq']}): MyNoSQL c2s {r['c2s']:.0f} B + s2c "
        f"{r['s2c']:.0f} B, PouchDB c2s {r['p_c2s']:.0f} B + s2c {r['p_s2c']:.0f} B" for n, r in results.items())
    rep.note(f"Idle poll = GET {{db}}/_changes?style=all_docs&since=<last_seq>&limit=1000 sent by MyNoSQL's "
             f"HttpEndpoint.changes (the peer's client code, aiohttp, same headers), {k} times on a warm pooled "
             f"connection, through a FaultProxy, every database up at once and the polls alternating between them "
             f"(outside load hits all alike); bytes are per poll. The real peer adds feed=longpoll&timeout=25000 "
             f"(same bytes plus ~30; it is answered when something changes or after 25 s). The mirrors' records "
             f"were written into their folders before they started (no replication); express-pouchdb's were "
             f"loaded with _bulk_docs. {detail}.")


# -- 2b (diagnostic): what an idle peer really sends, and what one change costs on the wire --------------------


def bench_peer_wire(args: argparse.Namespace, tmp: Path, rep: Report) -> None:
    longpoll = 1.0
    n_changes = 20
    with contextlib.ExitStack() as stack:
        m = Mirror(tmp, "peerwire").start()
        stack.callback(m.stop)
        proxy = stack.enter_context(CountingProxy(m.port))
        handle = MyNoSQL.MyNoSQL(tmp / "peerwire-peer", options=MyNoSQL.Options(longpoll=longpoll))
        db = handle.opendb(DB)
        stack.callback(handle.closedb)
        db.addpeer(proxy.url)
        db.savedoc({"id": "warm-up", "x": 1})
        wait_until(lambda: m.info()["doc_count"] == 1, 30, "the first record on the mirror")
        time.sleep(2 * longpoll + 0.5)
        proxy.reset()
        window = 5 * longpoll
        time.sleep(window)
        idle = proxy.snapshot()
        cycles = idle["routes"].get("GET /{db}/_changes", 0)
        docs = make_docs(n_changes, seed=7)
        time.sleep(0.2)
        proxy.reset()
        for d in docs:
            before = m.info()["doc_count"]
            db.savedoc(d)
            wait_until(lambda b=before: m.info()["doc_count"] > b, 30, "a record on the mirror")
            time.sleep(0.1)
        busy = proxy.snapshot()
        raw = raw_json_bytes(docs)
    per_cycle = idle["requests"] / cycles if cycles else float("nan")
    rep.row(f"idle peer (diagnostic): HTTP requests per poll cycle (Options(longpoll={longpoll:g}))",
            f"{per_cycle:.1f}", "—", "—", "—", "1", yes_no(per_cycle <= 1))
    rep.note(f"Idle peer, real background sync through a CountingProxy, longpoll {longpoll:g} s, {window:g} s "
             f"window: {idle['requests']} requests ({routes_text(idle['routes'])}), {idle['bytes']:,} B, "
             f"{idle['connections']} new connections, {cycles} poll cycles: {per_cycle:.1f} requests and "
             f"{idle['bytes'] / max(cycles, 1):,.0f} B per cycle (with the default longpoll of 25 s, one cycle per "
             f"25 s when idle).")
    rep.note(f"One change peer -> mirror, real background sync ({n_changes} saves, one at a time, ~300 B each, "
             f"{raw / n_changes:.0f} B raw JSON): {busy['requests'] / n_changes:.1f} requests and "
             f"{busy['bytes'] / n_changes:,.0f} B per change ({busy['bytes'] / raw:.1f}x the raw JSON), "
             f"{busy['connections'] / n_changes:.1f} new TCP connections per change; requests: "
             f"{routes_text(busy['routes'], n_changes)} per change (mirror-side doc_count polling by this "
             f"benchmark does not cross the proxy).")


# -- 3: latency of one change peer -> mirror ----------------------------------------------------------------------


class Longpoll:
    """A separate HTTP client (stdlib, keep-alive) long-polling a server's ``_changes`` in a thread."""

    def __init__(self, port: int, db: str) -> None:
        self.conn = http.client.HTTPConnection(HOST, port, timeout=30)
        self.db = db
        self.t_done = 0.0
        self.result: dict[str, Any] | None = None
        self.error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def start(self, since: Any) -> None:
        self.t_done, self.result, self.error = 0.0, None, None
        self._thread = threading.Thread(target=self._run, args=(since,), daemon=True)
        self._thread.start()

    def _run(self, since: Any) -> None:
        try:
            self.conn.request("GET", f"/{self.db}/_changes?feed=longpoll&since={since}&timeout=10000")
            resp = self.conn.getresponse()
            body = resp.read()
            self.t_done = time.perf_counter()
            self.result = orjson.loads(body)
        except BaseException as exc:  # reported by wait()
            self.error = exc

    def wait(self, timeout: float = 15.0) -> dict[str, Any]:
        assert self._thread is not None
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError("the longpoll did not answer")
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result

    def close(self) -> None:
        self.conn.close()


def measure_latency(save: Callable[[Doc], None], watcher: Longpoll, since: Any, docs: Sequence[Doc],
                    settle: float) -> tuple[list[float], list[float]]:
    """For each doc: start the longpoll, save, and time until the longpoll answers with the doc."""
    lat: list[float] = []
    save_ms: list[float] = []
    for d in docs:
        watcher.start(since)
        time.sleep(0.01)  # let the longpoll reach the server and wait there
        t0 = time.perf_counter()
        save(d)
        t1 = time.perf_counter()
        for _ in range(10):
            res = watcher.wait()
            since = res["last_seq"]
            if any(r.get("id") == d["id"] for r in res["results"]):
                break
            watcher.start(since)
        else:
            raise RuntimeError(f"the record {d['id']} never showed up on the server")
        lat.append((watcher.t_done - t0) * 1000)
        save_ms.append((t1 - t0) * 1000)
        time.sleep(settle)
    return lat, save_ms


def bench_latency(args: argparse.Namespace, tmp: Path, rep: Report) -> None:
    n = args.latency_n
    warm = 5
    docs = make_docs(n + warm, seed=99)
    settle = 0.03
    with contextlib.ExitStack() as stack:
        m = Mirror(tmp, "latency").start()
        stack.callback(m.stop)
        handle = MyNoSQL.MyNoSQL(tmp / "latency-peer")
        db = handle.opendb(DB)
        stack.callback(handle.closedb)
        db.addpeer(m.url)
        wait_until(lambda: any(s["reachable"] for s in db.status()["mirrors"].values()), 30, "the peer to connect")
        watcher = Longpoll(m.port, DB)
        stack.callback(watcher.close)
        since = m.info()["update_seq"]
        _, _ = measure_latency(db.savedoc, watcher, since, docs[:warm], settle)
        since = m.info()["update_seq"]
        lat, save_ms = measure_latency(db.savedoc, watcher, since, docs[warm:], settle)
        status = db.status()
    env = {**os.environ, "NODE_PATH": str(INTEROP / "node_modules")}
    with pouch.pouchdb_server() as server:
        http_json("PUT", f"{server.url}/live")
        proc = subprocess.Popen(["node", str(POUCH_LIVE_JS), f"{server.url}/live", "900"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=INTEROP)
        try:
            assert proc.stdin is not None and proc.stdout is not None
            line = proc.stdout.readline().strip()
            if line != "READY":
                raise RuntimeError(f"pouch_live.js did not start: {line!r} {proc.stderr.read() if proc.stderr else ''}")
            saved: list[str] = []
            threading.Thread(target=lambda: saved.extend(proc.stdout), daemon=True).start()  # type: ignore[arg-type]

            def pouch_save(d: Doc) -> None:
                assert proc.stdin is not None
                proc.stdin.write(orjson.dumps(to_couch(d)).decode() + "\n")
                proc.stdin.flush()

            pw = Longpoll(server.port, "live")
            try:
                since = http_json("GET", f"{server.url}/live")["update_seq"]
                measure_latency(pouch_save, pw, since, docs[:warm], settle)
                since = http_json("GET", f"{server.url}/live")["update_seq"]
                plat, _ = measure_latency(pouch_save, pw, since, docs[warm:], settle)
            finally:
                pw.close()
            errors = [s for s in saved if not s.startswith("SAVED")]
            if errors:
                raise RuntimeError(f"pouch_live.js: {errors[:3]}")
        finally:
            if proc.stdin is not None:
                with contextlib.suppress(OSError):
                    proc.stdin.close()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
    for q, aim in ((0.5, 5.0), (0.99, 25.0)):
        a, b = pct(lat, q), pct(plat, q)
        rep.row(f"one change peer -> mirror, p{int(q * 100)} ({n} changes)", fmt_ms(a),
                "PouchDB live replicate.to(express-pouchdb)", fmt_ms(b), f"{a / b:.2f}x", f"<= {aim:g} ms",
                yes_no(a <= aim))
    mirror_status = next(iter(status["mirrors"].values()), {})
    rep.note(f"Latency: the peer (MyNoSQL.MyNoSQL(dir), default Options, addpeer(mirror URL)) runs in this process; "
             f"each save starts after a separate stdlib HTTP client has sent GET {{db}}/_changes?feed=longpoll&since="
             f"<seq> (10 ms earlier) and ends when that longpoll's answer, holding the record, has been read; "
             f"{settle * 1000:.0f} ms pause between changes; {warm} warm-up changes not counted. MyNoSQL: min "
             f"{min(lat):.2f}, p90 {pct(lat, 0.9):.2f}, max {max(lat):.2f} ms; savedoc itself p50 "
             f"{pct(save_ms, 0.5):.3f} ms. PouchDB (save = one line to the node helper's stdin, db.put in memory): "
             f"min {min(plat):.2f}, p90 {pct(plat, 0.9):.2f}, max {max(plat):.2f} ms. Peer status at the end: "
             f"docs_pushed {mirror_status.get('docs_pushed')}, reachable {mirror_status.get('reachable')}, "
             f"last_error {mirror_status.get('last_error')!r}.")


# -- 5: peak RSS of a mirror receiving many records ---------------------------------------------------------------


def bench_rss(args: argparse.Namespace, tmp: Path, rep: Report) -> None:
    n = args.rss_n
    docs = make_docs(n)
    with contextlib.ExitStack() as stack:
        handle, db, _rate = build_local(tmp / "rss-local", docs)
        stack.callback(handle.closedb)
        m = Mirror(tmp, "rss").start()
        stack.callback(m.stop)
        time.sleep(1.0)
        base = idle_rss(m.pid)
        with RssSampler(m.pid) as sampler:
            t0 = time.monotonic()
            res = db.push(m.db_url, timeout=300)
            t1 = time.monotonic()
            time.sleep(3.0)  # the compactor packs the last records after the push
        if res["docs_written"] != n:
            raise RuntimeError(f"push wrote {res['docs_written']} of {n}")
        prof = rss_profile(sampler.samples, t0, t1, base)
    n_pouch = args.pouch_rss_n if args.pouch_rss_n is not None else n
    pprof: dict[str, Any] | None = None
    if n_pouch > 0:
        with pouch.pouchdb_server() as src, pouch.pouchdb_server() as tgt:
            pouch_load(f"{src.url}/src", docs[:n_pouch])
            time.sleep(1.0)
            pbase = idle_rss(tgt.process.pid)
            with RssSampler(tgt.process.pid) as psampler:
                pt0 = time.monotonic()
                pres = pouch_replicate(f"{src.url}/src", f"{tgt.url}/tgt", n_pouch)
                pt1 = time.monotonic()
                time.sleep(3.0)
            pprof = rss_profile(psampler.samples, pt0, pt1, pbase)
    del docs
    gc.collect()
    q = prof["quarters_mb"]
    flat = q[3] - q[0] <= 20.0
    pouch_value = "—" if pprof is None else fmt_mb(pprof["peak_mb"])
    rep.row(f"peak RSS of a mirror receiving {n:,} records, over the idle empty mirror", fmt_mb(prof["peak_mb"]),
            f"express-pouchdb (memory adapter) receiving {n_pouch:,} (context)", pouch_value,
            "—" if pprof is None else f"{prof['peak_mb'] / pprof['peak_mb']:.2f}x",
            "flat, <= 100 MB", yes_no(prof["peak_mb"] <= 100 and flat))
    text = (f"RSS: idle empty mirror {prof['base_mb']:.1f} MB; over it, the peak in each quarter of the push "
            f"({t1 - t0:.1f} s, {n / (t1 - t0):,.0f} docs/s): " + ", ".join(f"{x:.1f}" for x in q) +
            f" MB; 3 s after the push {prof['end_mb']:.1f} MB ({prof['n_samples']} samples every 50 ms). 'Flat' "
            f"means the last quarter's peak is at most 20 MB over the first quarter's.")
    if pprof is not None:
        text += (f" express-pouchdb target: idle {pprof['base_mb']:.1f} MB; quarters "
                 + ", ".join(f"{x:.1f}" for x in pprof["quarters_mb"])
                 + f" MB over it; replication {pt1 - pt0:.1f} s ({n_pouch / (pt1 - pt0):,.0f} docs/s, "
                 f"elapsed {pres['elapsed_ms'] / 1000:.1f} s). It keeps every document in memory (memory "
                 f"adapter), so it is context, not a target.")
    rep.note(text)


# -- main ---------------------------------------------------------------------------------------------------------


def machine_text() -> str:
    cpu = platform.processor() or "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = psutil.virtual_memory().total / 1024 ** 3
    node = subprocess.run(["node", "--version"], capture_output=True, text=True, check=False).stdout.strip()
    pkg = orjson.loads((INTEROP / "package.json").read_bytes()).get("dependencies", {})
    pouch_v = f"pouchdb-core {pkg.get('pouchdb-core')}, express-pouchdb {pkg.get('express-pouchdb')}"
    return (f"{platform.platform()}; {cpu}, {os.cpu_count()} CPUs, {mem:.1f} GiB RAM; Python "
            f"{platform.python_version()} ({sys.executable}); aiohttp {aiohttp.__version__}; node {node}; {pouch_v}")


def git_text() -> str:
    def git(*a: str) -> str:
        r = subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True, check=False)
        return r.stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "?"
    dirty = git("status", "--porcelain", "--", "src")
    return f"git {head}" + (" with uncommitted changes under src/" if dirty else "")


def src_fingerprint() -> str:
    """A hash of every file under src/: shows whether the code changed while the benchmark ran."""
    h = hashlib.sha256()
    for f in sorted((ROOT / "src").rglob("*.py")):
        with contextlib.suppress(OSError):
            h.update(str(f).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:12]


def parse_sizes(text: str) -> list[int]:
    out = [int(x.replace("_", "")) for x in text.split(",") if x.strip()]
    if not out or any(x < 1 for x in out):
        raise argparse.ArgumentTypeError(f"bad list of sizes: {text!r}")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=parse_sizes, default=None, help="initial replication sizes (10000,50000)")
    ap.add_argument("--poll-sizes", type=parse_sizes, default=None, help="records behind the poll (10000,100000)")
    ap.add_argument("--pouch-opts", type=orjson.loads, default=None, metavar="JSON",
                    help='the PouchDB peer of the initial replication: {"adapter": "leveldb"|"memory"} and '
                         'PouchDB.replicate options such as batch_size (default {"adapter": "leveldb"})')
    ap.add_argument("--pouch-server", choices=("memory", "leveldb"), default="memory",
                    help="express-pouchdb's storage for the initial replication (memory)")
    ap.add_argument("--reps", type=int, default=3, help="runs of each initial replication (median; 3)")
    ap.add_argument("--poll-k", type=int, default=50, help="polls per measurement (50)")
    ap.add_argument("--latency-n", type=int, default=None, help="changes timed peer -> mirror (200)")
    ap.add_argument("--rss-n", type=int, default=None, help="records received by the RSS mirror (200000)")
    ap.add_argument("--pouch-rss-n", type=int, default=None,
                    help="records for express-pouchdb's RSS (default: --rss-n; 0 skips it)")
    ap.add_argument("--only", default="initial,poll,peer,latency,rss",
                    help="phases to run, comma-separated (initial,poll,peer,latency,rss)")
    ap.add_argument("--quick", action="store_true", help="small counts (a smoke run)")
    ap.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                    help="first wait up to SECONDS for other processes to use < 0.3 cores for 20 s (default 0: no)")
    ap.add_argument("--out", type=Path, default=None, help="Markdown report (bench/results/replication.md)")
    args = ap.parse_args(argv)
    quick = args.quick
    args.pouch_opts = args.pouch_opts if args.pouch_opts is not None else {"adapter": "leveldb"}
    args.sizes = args.sizes or ([1000, 3000] if quick else [10_000, 50_000])
    args.poll_sizes = args.poll_sizes or ([1000, 5000] if quick else [10_000, 100_000])
    args.latency_n = args.latency_n or (30 if quick else 200)
    args.rss_n = args.rss_n or (10_000 if quick else 200_000)
    if quick:
        args.poll_k = min(args.poll_k, 10)
        args.reps = min(args.reps, 2)
    if args.reps < 1:
        ap.error("--reps must be at least 1")
    out = args.out or (ROOT / "bench" / "results" / ("replication-quick.md" if quick else "replication.md"))
    phases = {p.strip() for p in args.only.split(",") if p.strip()}
    unknown = phases - {"initial", "poll", "peer", "latency", "rss"}
    if unknown:
        ap.error(f"unknown phases: {sorted(unknown)}")
    if not pouch.npm_available():
        print("node >= 18 and npm are needed for the PouchDB anchor", file=sys.stderr)
        return 2
    pouch.ensure_node_modules()

    command = shlex.join([os.path.relpath(sys.executable, Path.cwd()) if sys.executable.startswith(str(Path.cwd()))
                          else sys.executable, *sys.argv])
    if args.wait_quiet > 0:
        print(f"waiting up to {args.wait_quiet:.0f} s for a quiet machine...", flush=True)
    quiet = wait_for_quiet(args.wait_quiet)
    git_start, src_start = git_text(), src_fingerprint()
    started = datetime.now(timezone.utc)
    t_start = time.perf_counter()
    rep = Report()
    tmp = Path(tempfile.mkdtemp(prefix="mynosql-repbench-"))
    try:
        if "initial" in phases:
            with rep.phase("1+4. initial replication and wire bytes"):
                bench_initial(args, tmp, rep)
        if "poll" in phases:
            with rep.phase("2. idle poll"):
                bench_poll(args, tmp, rep)
        if "peer" in phases:
            with rep.phase("2b. real peer on the wire (diagnostic)"):
                bench_peer_wire(args, tmp, rep)
        if "latency" in phases:
            with rep.phase("3. latency peer -> mirror"):
                bench_latency(args, tmp, rep)
        if "rss" in phases:
            with rep.phase("5. peak RSS of a receiving mirror"):
                bench_rss(args, tmp, rep)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    total = time.perf_counter() - t_start
    rep.note(f"ratio = MyNoSQL / anchor (higher is better for docs/s, lower for bytes, ms and MB). Initial "
             f"replication rates are medians of {args.reps} interleaved runs (MyNoSQL, PouchDB, MyNoSQL, ...); the "
             f"other rows are one measurement each, so single rows can move by ~10-20% between runs.")
    header = [f"- Command: `{command}` (cwd `{Path.cwd()}`)",
              f"- Date: {started.isoformat(timespec='seconds')}; total run time {total:.1f} s",
              f"- Machine: {machine_text()}; other processes before the start: {quiet}",
              f"- MyNoSQL {MyNoSQL.__version__} from {Path(MyNoSQL.__file__).parent} ({git_start}, src/ "
              f"fingerprint {src_start}" + ("" if src_fingerprint() == src_start else
                                            f"; **src/ CHANGED during the run**, now {git_text()}") + ")",
              "- Data: seeded random records of ~300 bytes of JSON (same records, same ids for both engines); "
              "everything on 127.0.0.1"]
    text = rep.markdown(header)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print("\n" + text)
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
