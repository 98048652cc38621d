"""Real mirror processes (`python -m MyNoSQL serve`) on 127.0.0.1, started and stopped by the tests."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from MyNoSQL.testing import poll_until

ROOT = Path(__file__).resolve().parents[2]  # the repository
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src")}


def call(method: str, url: str, body: Any = None) -> Any:
    """One JSON request to a server on 127.0.0.1; its JSON answer (an HTTP error raises)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json",
                                                                        "Accept": "application/json"})
    with urllib.request.urlopen(req, timeout=15) as r:
        return json.loads(r.read())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(cond: Callable[[], object], timeout: float = 20.0, what: str = "condition") -> None:
    """Poll ``cond`` until it is true (an exception counts as "not yet"); fail the test after ``timeout`` s."""
    try:
        poll_until(cond, timeout=timeout, what=what, ignore=(Exception,))
    except TimeoutError as exc:
        raise AssertionError(str(exc)) from None


class MirrorProcess:
    def __init__(self, path: Path, name: str | None, port: int, peers: list[str],
                 extra: list[str] | None = None) -> None:
        """``name`` None: serve every database of the folder (no --db)."""
        self.path, self.name, self.port, self.peers = path, name, port, peers
        self.extra = extra or []  # more `serve` options (credentials, TLS, limits)
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen[str] | None = None
        self.log: list[str] = []

    def start(self) -> MirrorProcess:
        args = [sys.executable, "-m", "MyNoSQL", "-v", "serve", "--path", str(self.path),
                *(["--db", self.name] if self.name else []), "--host", "127.0.0.1", "--port", str(self.port),
                *self.extra]
        for p in self.peers:
            args += ["--peer", p]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV,
                                     stdin=subprocess.DEVNULL)
        assert self.proc.stdout is not None
        line = ""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line or line.startswith("serving"):
                break
            self.log.append(line)
        assert line.startswith("serving"), f"mirror did not start: {line!r} {''.join(self.log)}"
        self.url = line.split(" on ")[1].strip()  # http or https, as the mirror says
        threading.Thread(target=self._drain, daemon=True).start()
        return self

    def _drain(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.log.append(line)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def mirrors(tmp_path: Path) -> Iterator[Callable[..., MirrorProcess]]:
    started: list[MirrorProcess] = []

    def make(name: str | None = "db", *, port: int | None = None, peers: list[str] | None = None, tag: str = "m",
             start: bool = True, extra: list[str] | None = None) -> MirrorProcess:
        m = MirrorProcess(tmp_path / tag, name, port or free_port(), peers or [], extra)
        started.append(m)
        return m.start() if start else m

    yield make
    for m in started:
        m.stop()
