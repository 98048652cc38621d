"""A 50 MB attachment through a mirror process, in bounded memory: uploaded raw (chunked) and downloaded, pushed
by a peer's replicator (multipart/related, streamed from its blob) and pulled by another mirror. The mirrors'
RSS is sampled every 10 ms (psutil) and must not grow by more than a fraction of the attachment."""

from __future__ import annotations

import hashlib
import http.client
import random
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from support.mirrors import MirrorProcess, free_port, wait_until

import MyNoSQL

pytestmark = pytest.mark.slow

MB = 1024 * 1024
SIZE = 50 * MB
BOUND = 30 * MB  # RSS growth allowed: the bytes never sit whole in RAM


class Peak:
    """The highest RSS of a process while the block runs (sampled every 10 ms)."""

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.base = self.proc.memory_info().rss
        self.peak = self.base
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __enter__(self) -> Peak:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()

    @property
    def growth(self) -> int:
        return self.peak - self.base


def pseudo_random(size: int, seed: int = 5) -> Iterator[bytes]:
    """``size`` bytes that do not compress (the same ones for the same seed), a MiB at a time, never all in RAM."""
    rnd = random.Random(seed)
    for _ in range(size // MB):
        yield rnd.randbytes(MB)


def md5_of(chunks: Iterator[bytes]) -> str:
    h = hashlib.md5()
    for c in chunks:
        h.update(c)
    return h.hexdigest()


def stream_put(m: MirrorProcess, path: str, chunks: Iterator[bytes]) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", m.port, timeout=120)
    try:
        conn.request("PUT", path, body=chunks, headers={"Content-Type": "video/mp4"}, encode_chunked=True)
        r = conn.getresponse()
        r.read()
        return r.status
    finally:
        conn.close()


def stream_md5(m: MirrorProcess, path: str) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", m.port, timeout=120)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        assert r.status == 200
        h = hashlib.md5()
        while chunk := r.read(MB):
            h.update(chunk)
        return h.hexdigest()
    finally:
        conn.close()


def test_a_50_mb_attachment_streams_through_a_mirror(mirrors: Any) -> None:
    m = mirrors()
    assert m.proc is not None
    want = md5_of(pseudo_random(SIZE))
    with Peak(m.proc.pid) as up:
        assert stream_put(m, "/db/movie/clip.mp4", pseudo_random(SIZE)) == 201
    with Peak(m.proc.pid) as down:
        assert stream_md5(m, "/db/movie/clip.mp4") == want
    print(f"mirror RSS growth: upload {up.growth / MB:.1f} MiB, download {down.growth / MB:.1f} MiB")
    assert up.growth < BOUND and down.growth < BOUND, (up.growth / MB, down.growth / MB)


def test_a_50_mb_attachment_replicates_peer_to_mirror_to_mirror(mirrors: Any, tmp_path: Path) -> None:
    p1, p2 = free_port(), free_port()
    m1 = mirrors(tag="m1", port=p1)
    m2 = mirrors(tag="m2", port=p2, peers=[m1.url], start=False)
    assert m1.proc is not None
    want = md5_of(pseudo_random(SIZE))

    class Source:  # a binary file that is never whole in RAM
        def __init__(self) -> None:
            self.it = pseudo_random(SIZE)

        def read(self, n: int = -1) -> bytes:
            return next(self.it, b"")

    with MyNoSQL.MyNoSQL(tmp_path / "peer", options=MyNoSQL.Options(background_sync=False)) as peer:
        peer.opendb("db")
        peer.putattachment("movie", "clip.mp4", Source(), "video/mp4")  # type: ignore[arg-type]
        with Peak(m1.proc.pid) as pushed:
            res = peer.push(m1.url)
        assert res["docs_written"] == 1 and not res["errors"], res
    assert stream_md5(m1, "/db/movie/clip.mp4") == want
    m2.start()
    assert m2.proc is not None
    with Peak(m2.proc.pid) as pulled:
        wait_until(lambda: stream_md5(m2, "/db/movie/clip.mp4") == want, timeout=120,
                   what="the second mirror pulling the attachment")
    print(f"mirror RSS growth: pushed to {pushed.growth / MB:.1f} MiB, pulling {pulled.growth / MB:.1f} MiB")
    assert pushed.growth < BOUND and pulled.growth < BOUND, (pushed.growth / MB, pulled.growth / MB)
    folder = m2.path / "db" / "attachments"
    assert sum(p.stat().st_size for p in folder.glob("??/*")) < SIZE * 1.01

