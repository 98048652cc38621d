"""What a new user tripped on (issue 14): each test failed before its fix."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.mirrors import ENV, free_port, wait_until

import MyNoSQL


def mynosql(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "MyNoSQL", *args], capture_output=True, text=True, env=ENV,
                          timeout=timeout)


@pytest.fixture
def black_hole() -> Iterator[str]:
    """A server on 127.0.0.1 that accepts connections and never answers."""
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(64)
        yield f"http://127.0.0.1:{srv.getsockname()[1]}"


def test_pending_pushes_do_not_depend_on_how_the_path_is_spelled(mirrors: Any, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    m = mirrors("iot")
    with MyNoSQL.MyNoSQL(tmp_path / "data") as h:
        h.opendb("iot")
        h.addpeer(m.url)
        for i in range(30):
            h.savedoc({"i": i})
        wait_until(lambda: h.status()["mirrors"][m.url]["pending"] == 0, what="everything pushed")
    monkeypatch.chdir(tmp_path)
    opts = MyNoSQL.Options(final_push=0.0, longpoll=60.0)
    with MyNoSQL.MyNoSQL("./data/../data", options=opts) as h:  # the same folder, spelled otherwise
        h.opendb("iot")
        # right after opendb, before any round with the mirror: what the persisted checkpoint says
        assert h.status()["mirrors"][m.url]["pending"] == 0
    out = mynosql("status", "--path", f"{tmp_path}/./data", "--db", "iot", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["mirrors"][m.url]["pending_pushes"] == 0


def test_reading_a_record_no_mirror_can_be_asked_for_says_so(tmp_path: Path, black_hole: str) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    with MyNoSQL.MyNoSQL(tmp_path, options=MyNoSQL.Options(read_timeout=1.0)) as h:
        h.opendb("iot")
        h.addpeer(down)
        with pytest.raises(MyNoSQL.DocumentUnavailable) as err:
            h.readdoc("sensor-7")
        assert isinstance(err.value, MyNoSQL.DocumentNotFound) and isinstance(err.value, KeyError)
        assert "no mirror could be asked" in str(err.value) and "does not exist" not in str(err.value)
        assert "127.0.0.1" in err.value.reason
    with MyNoSQL.MyNoSQL(tmp_path / "slow", options=MyNoSQL.Options(read_timeout=1.0)) as h:
        h.opendb("iot")
        h.addpeer(black_hole)
        t0 = time.monotonic()
        with pytest.raises(MyNoSQL.DocumentUnavailable, match="within 1"):
            h.readdoc("sensor-7")
        assert time.monotonic() - t0 < 1.0 + 1.0


def test_a_record_the_mirror_does_not_have_is_not_found(mirrors: Any, tmp_path: Path) -> None:
    m = mirrors("iot")
    with MyNoSQL.MyNoSQL(tmp_path) as h:
        h.opendb("iot")
        h.addpeer(m.url)
        with pytest.raises(MyNoSQL.DocumentNotFound) as err:
            h.readdoc("nobody")
        assert not isinstance(err.value, MyNoSQL.DocumentUnavailable)


def test_interrupting_a_network_wait_exits_130_at_once_and_creates_nothing(tmp_path: Path, black_hole: str) -> None:
    # started with SIGINT ignored, as a shell script's background job is: an explicit SIGINT still interrupts
    proc = subprocess.Popen([sys.executable, "-m", "MyNoSQL", "replicate", f"{black_hole}/db", str(tmp_path / "db"),
                             "--timeout", "30"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        wait_until(lambda: _waiting_on_network(proc.pid), timeout=20, what="the command waiting on the source")
        proc.send_signal(signal.SIGINT)
        t0 = time.monotonic()
        _, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 130 and time.monotonic() - t0 < 3.0, (proc.returncode, err)
    assert not (tmp_path / "db").exists()


def _waiting_on_network(pid: int) -> bool:
    """The process has an established TCP connection (it sent its first request)."""
    fds = os.listdir(f"/proc/{pid}/fd")
    socks = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in fds if os.path.exists(f"/proc/{pid}/fd/{fd}")}
    return any(s.startswith("socket:") for s in socks)


def test_a_failed_replicate_creates_no_target_and_says_why(tmp_path: Path, black_hole: str) -> None:
    down = f"http://127.0.0.1:{free_port()}/db"
    out = mynosql("replicate", down, str(tmp_path / "a"))
    assert out.returncode == 6 and not (tmp_path / "a").exists(), out.stderr
    out = mynosql("replicate", f"{black_hole}/db", str(tmp_path / "b"), "--timeout", "1")
    assert out.returncode == 6 and not (tmp_path / "b").exists()
    assert "no answer within 1 s" in out.stderr and "TimeoutError: \n" not in out.stderr + "\n"


def test_serve_on_a_new_port_never_tries_the_remembered_one(tmp_path: Path) -> None:
    old, new = free_port(), free_port()
    first = subprocess.Popen([sys.executable, "-m", "MyNoSQL", "serve", "--path", str(tmp_path), "--db", "db",
                              "--port", str(old)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                             env=ENV)
    assert first.stdout is not None and first.stdout.readline().startswith("serving")
    # something else takes the remembered port meanwhile
    first.send_signal(signal.SIGTERM)
    first.communicate(timeout=30)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", old))
        squatter.listen(1)
        second = subprocess.Popen([sys.executable, "-m", "MyNoSQL", "-v", "serve", "--path", str(tmp_path), "--db",
                                   "db", "--port", str(new)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True, env=ENV)
        assert second.stdout is not None
        lines = []
        for _ in range(200):
            line = second.stdout.readline()
            lines.append(line)
            if not line or line.startswith("serving"):
                break
        second.send_signal(signal.SIGTERM)
        rest, _ = second.communicate(timeout=30)
    assert lines[-1].strip() == f"serving db on http://127.0.0.1:{new}", lines
    text = "".join(lines) + rest
    assert str(old) not in text and " ERROR " not in text and text.count("WITHOUT authentication") == 1, text


def test_a_mirror_that_refuses_the_database_is_reachable_with_its_error(mirrors: Any, tmp_path: Path) -> None:
    m = mirrors("other")  # serves only "other"
    with MyNoSQL.MyNoSQL(tmp_path) as h:
        h.opendb("iot")
        h.addpeer(m.url)
        h.savedoc({"x": 1})
        wait_until(lambda: (h.status()["mirrors"].get(m.url) or {}).get("last_error"), what="the refusal")
        state = h.status()["mirrors"][m.url]
        assert state["reachable"] is True and "403" in state["last_error"], state


def test_version_and_bench_outside_a_checkout(tmp_path: Path) -> None:
    out = mynosql("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"mynosql {MyNoSQL.__version__}"
    # an installed copy (no bench/ beside it): the message names no path that does not exist
    pkg = tmp_path / "site" / "lib" / "MyNoSQL"
    import shutil

    shutil.copytree(Path(MyNoSQL.__file__).parent, pkg)
    out = subprocess.run([sys.executable, "-m", "MyNoSQL", "bench", "local"], capture_output=True, text=True,
                         env={**ENV, "PYTHONPATH": str(pkg.parent)}, timeout=60)
    assert out.returncode == 1 and "source checkout" in out.stderr and str(tmp_path) not in out.stderr, out.stderr
