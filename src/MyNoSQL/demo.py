"""``scripts/demo``: a mirror and an IoT-logger peer on 127.0.0.1, replicating through a failing link.

1. A mirror runs as its own process (``python -m MyNoSQL serve``).
2. Between the logger and the mirror sits a fault-injecting proxy: the link is cut, then restored, then made
   to swallow traffic (black hole), then restored again.
3. The logger never stops writing: its saves are local and durable; replication catches up by itself.
4. At the end every reading is on the mirror, and the demo says so with counts and timings.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from .handle import MyNoSQL
from .options import Options
from .testing.faultproxy import FaultProxy

RATE = 200  # readings per second
DURATION = 16.0  # seconds of logging
SCRIPT = [  # (at second, what the link does)
    (3.0, "cut"),
    (7.0, "restore"),
    (10.0, "black hole"),
    (12.0, "restore"),
]


def say(text: str) -> None:
    """One line on stdout in one write: print() writes the text and its newline apart, and a log line from the
    library's background thread could land between them (glued to the demo's line)."""
    sys.stdout.write(text + "\n")


def _count(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return int(json.loads(r.read())["doc_count"])
    except OSError:
        return -1


def main() -> int:
    # line buffering, so the demo's lines and the library's log lines come out in order
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    logging.basicConfig(level=logging.WARNING, format="            log: %(message)s", stream=sys.stdout)
    root = Path(tempfile.mkdtemp(prefix="mynosql-demo-"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        mirror_port = s.getsockname()[1]
    # The proxy first: the mirror advertises the proxy's address, so the logger never learns a way around it.
    proxy = FaultProxy("127.0.0.1", mirror_port).start()
    mirror = subprocess.Popen([sys.executable, "-m", "MyNoSQL", "serve", "--path", str(root / "mirror"),
                               "--db", "iot", "--port", str(mirror_port), "--advertise", proxy.url],
                              stdout=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        assert mirror.stdout is not None
        line = mirror.stdout.readline()
        if not line.startswith("serving"):
            sys.stderr.write(f"the mirror did not start: {line}\n")
            return 1
        mirror_url = line.split(" on ")[1].strip()
        say(f"mirror: {mirror_url} (a separate process); the logger reaches it through a proxy at {proxy.url}")

        logger = MyNoSQL(root / "logger", options=Options(longpoll=5.0, remote_timeout=3.0))
        db = logger.opendb("iot")
        db.addpeer(proxy.url)
        written = 0
        stop = threading.Event()
        rnd = random.Random(3)

        def log_readings() -> None:
            nonlocal written
            start = time.monotonic()
            while not stop.is_set():
                due = int((time.monotonic() - start) * RATE)
                while written < due:
                    logger.savedoc({"sensor": f"s-{rnd.randint(1, 12)}", "ts": time.time(),
                                    "values": [round(rnd.gauss(20, 4), 2) for _ in range(4)], "site": "north-3"})
                    written += 1
                stop.wait(0.01)

        t0 = time.monotonic()
        writer = threading.Thread(target=log_readings, name="iot-logger")
        writer.start()
        steps = list(SCRIPT)
        link = "up"
        restored_at = None
        say(f"the logger writes {RATE} readings/s for {DURATION:.0f} s, whatever the link does")
        while time.monotonic() - t0 < DURATION:
            now = time.monotonic() - t0
            while steps and now >= steps[0][0]:
                _, action = steps.pop(0)
                if action == "cut":
                    proxy.partition()
                    link = "CUT"
                elif action == "black hole":
                    proxy.blackhole()
                    link = "BLACK HOLE"
                else:
                    proxy.heal()
                    link = "up"
                    restored_at = time.monotonic()
                say(f"  t={now:5.1f}s  link: {action}")
            pending = db.status()["mirrors"].get(proxy.url, {}).get("pending")
            say(f"  t={now:5.1f}s  link {link:10}  written {written:5}  on mirror {_count(mirror_url + '/iot'):5}"
                  f"  pending push {pending}")
            time.sleep(1.0)  # the demo's display interval
        stop.set()
        writer.join()
        end_written = time.monotonic()
        say(f"logging stopped: {written} readings written in {end_written - t0:.1f} s; waiting for the mirror")
        deadline = time.monotonic() + 30
        on_mirror = _count(mirror_url + "/iot")
        while on_mirror != written and time.monotonic() < deadline:
            time.sleep(0.05)  # polling the mirror's count
            on_mirror = _count(mirror_url + "/iot")
        caught_up = time.monotonic()
        ok = on_mirror == written
        say(f"mirror holds {on_mirror} of {written} readings: {'ALL THERE' if ok else 'MISSING SOME'}; "
              f"last reading arrived {caught_up - end_written:.2f} s after logging stopped"
              + (f", {caught_up - restored_at:.1f} s after the last restore" if restored_at else ""))
        stats = proxy.stats()
        say(f"proxy: {stats.accepted} connections, {stats.cut} cut, {stats.dropped} refused while down")
        t = time.monotonic()
        logger.closedb()
        say(f"logger closed in {time.monotonic() - t:.2f} s; total demo time {time.monotonic() - t0:.1f} s")
        return 0 if ok else 1
    finally:
        proxy.stop()
        mirror.terminate()
        try:
            mirror.wait(timeout=20)
        except subprocess.TimeoutExpired:
            mirror.kill()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
