"""closedb keeps its promise: a short-lived peer's records are on the mirror when closedb returns; with the
mirror down, closedb returns within Options.final_push and the next opendb pushes them; nothing keeps running.

The peers are child processes that save, close and exit, as a cron logger or a command-line tool does."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from support.mirrors import ENV, call, free_port, wait_until

import MyNoSQL

pytestmark = pytest.mark.process

N = 2000

PEER = """if True:
    import json, sys, time, urllib.request
    import MyNoSQL
    location, mirror, n, style, final_push = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], float(sys.argv[5])
    opts = MyNoSQL.Options(final_push=final_push, remote_timeout=2.0)

    def save(db):
        db.addpeer(mirror)
        for i in range(n):
            db.savedoc({"id": f"r{i:05d}", "reading": i * 0.5, "sensor": "s-7"})

    t0 = time.monotonic()
    if style == "with":
        with MyNoSQL.MyNoSQL(location, options=opts) as db:
            db.opendb("iot")
            save(db)
            t0 = time.monotonic()
    else:
        db = MyNoSQL.MyNoSQL(location, options=opts)
        db.opendb("iot")
        save(db)
        t0 = time.monotonic()
        db.closedb()
    closed = time.monotonic() - t0
    try:  # asked only after closedb returned: what the mirror holds then
        with urllib.request.urlopen(mirror + "/iot", timeout=5) as r:
            on_mirror = json.loads(r.read())["doc_count"]
    except OSError:
        on_mirror = None
    import threading
    print(json.dumps({"close_seconds": closed, "on_mirror": on_mirror,
                      "threads": sorted(t.name for t in threading.enumerate() if t.name.startswith("MyNoSQL"))}))
"""


def _peer(location: Path, mirror: str, n: int, style: str = "closedb", final_push: float = 5.0) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-c", PEER, str(location), mirror, str(n), style, str(final_push)],
                         capture_output=True, text=True, env=ENV, timeout=120)
    assert out.returncode == 0, out.stderr
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.parametrize("style", ["closedb", "with"])
def test_a_short_lived_peer_leaves_every_record_on_the_mirror_when_closedb_returns(
        mirrors: Any, tmp_path: Path, style: str) -> None:
    m = mirrors("iot")
    result = _peer(tmp_path / "peer", m.url, N, style)
    assert result["on_mirror"] == N, result
    assert result["threads"] == [], result  # nothing of the database still runs after closedb


def test_with_the_mirror_down_closedb_returns_within_final_push_and_the_next_opendb_pushes(
        mirrors: Any, tmp_path: Path) -> None:
    port = free_port()  # nothing listens here yet
    url = f"http://127.0.0.1:{port}"
    result = _peer(tmp_path / "peer", url, 300, final_push=1.5)
    assert result["on_mirror"] is None and result["close_seconds"] < 1.5 + 1.0, result
    assert result["threads"] == [], result
    m = mirrors("iot", port=port)  # the mirror comes up; the peer is started again (a cron job's next run)
    again = _peer(tmp_path / "peer", m.url, 0)
    assert again["on_mirror"] == 300, again


def test_a_black_holed_mirror_cannot_hold_closedb_past_final_push(tmp_path: Path) -> None:
    """A mirror that accepts connections and never answers: closedb still returns in time."""
    import socket

    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(64)
        url = f"http://127.0.0.1:{srv.getsockname()[1]}"
        h = MyNoSQL.MyNoSQL(tmp_path, options=MyNoSQL.Options(final_push=1.0, remote_timeout=30.0))
        h.opendb("iot")
        h.addpeer(url)
        for i in range(50):
            h.savedoc({"i": i})
        t0 = time.monotonic()
        h.closedb()
        took = time.monotonic() - t0
    assert took < 1.0 + 1.0, took
    assert not [t.name for t in threading.enumerate() if t.name.startswith("MyNoSQL-iot")]


def test_closing_stops_and_joins_every_thread_it_started(mirrors: Any, tmp_path: Path) -> None:
    m = mirrors("iot")
    before = {t.ident for t in threading.enumerate()}
    for mode in ("Peer", "Mirror"):
        h = MyNoSQL.MyNoSQL(tmp_path / mode, options=MyNoSQL.Options(final_push=2.0))
        db = h.opendb("iot")
        if mode == "Mirror":
            db.setlisten("127.0.0.1", 0)
            db.setdbmode("Mirror")
        db.addpeer(m.url)
        db.savedoc({"mode": mode})
        if mode == "Mirror":
            assert call("GET", f"{db.server_url}/_up")["status"] == "ok"
            wait_until(lambda db=db: db.status()["mirrors"].get(m.url, {}).get("reachable") is True, what="the pull")
        h.closedb()
        left = [t.name for t in threading.enumerate() if t.ident not in before and t.is_alive()]
        assert left == [], f"{mode}: threads still running after closedb: {left}"
