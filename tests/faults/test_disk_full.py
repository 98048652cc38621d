"""A full disk: savedoc raises a clear error, nothing acknowledged is lost, and it works again once there is room."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import MyNoSQL


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs made for this test (needs root); skipped where it cannot be mounted."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (not root?): the injected-ENOSPC test covers this case")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _fill_until_full(h: MyNoSQL.MyNoSQL, acked: dict[str, str], prefix: str = "k") -> MyNoSQL.StorageError:
    for i in range(1_000_000):
        try:
            rec = h.savedoc({"id": f"{prefix}{i}", "payload": os.urandom(200).hex()})
        except MyNoSQL.StorageError as exc:
            return exc
        acked[rec["id"]] = rec["rev"]
    raise AssertionError("the disk never filled")


def test_full_tmpfs(small_fs: Path) -> None:
    filler = small_fs / "filler"
    filler.write_bytes(b"\0" * (2 * 1024 * 1024))  # room we can give back later
    acked: dict[str, str] = {}
    opts = MyNoSQL.Options(flush_docs=200, flush_interval=0.05)
    h = MyNoSQL.MyNoSQL(small_fs / "data", options=opts)
    h.opendb("full")
    err = _fill_until_full(h, acked)
    assert err.errno == errno.ENOSPC and "space" in str(err).lower()
    assert len(acked) > 100
    for id, rev in list(acked.items())[:: max(1, len(acked) // 200)]:
        assert h.readdoc(id)["rev"] == rev  # everything acknowledged is readable, disk still full
    # Still full: saves keep failing cleanly. (The compactor may meanwhile have packed logged records into
    # smaller shard blocks and freed some room: then saves go on until that is used up too.)
    again = _fill_until_full(h, acked, prefix="again")
    assert again.errno == errno.ENOSPC
    filler.unlink()  # free space
    rec = h.savedoc({"id": "after", "ok": True})
    h.db.flush()
    h.closedb()
    h2 = MyNoSQL.MyNoSQL(small_fs / "data")
    h2.opendb("full")
    try:
        assert h2.readdoc("after")["rev"] == rec["rev"]
        for id, rev in acked.items():
            assert h2.readdoc(id)["rev"] == rev
        assert h2.verify() == []
    finally:
        h2.closedb()


def test_injected_enospc_in_the_log_and_the_shards(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    h = MyNoSQL.MyNoSQL(tmp_path, options=MyNoSQL.Options(flush_docs=50, flush_interval=0.02))
    h.opendb("inj")
    acked = {h.savedoc({"id": f"a{i}", "v": i})["id"] for i in range(100)}
    h.db.flush()
    full = {"on": True}
    real_fallocate, real_pwrite = os.posix_fallocate, os.pwrite

    def fallocate(fd: int, off: int, size: int) -> None:
        if full["on"]:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fallocate(fd, off, size)

    def pwrite(fd: int, data: bytes, offset: int) -> int:  # the compactor's shard appends
        if full["on"] and len(data) > 100:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "posix_fallocate", fallocate)
    monkeypatch.setattr(os, "pwrite", pwrite)
    # the open log segment still has reserved room: saves go on until it is used up, then fail cleanly
    err = None
    for i in range(100_000):
        try:
            h.savedoc({"id": f"b{i}", "pad": "y" * 500})
            acked.add(f"b{i}")
        except MyNoSQL.StorageError as exc:
            err = exc
            break
    assert err is not None and err.errno == errno.ENOSPC
    full["on"] = False
    h.savedoc({"id": "recovered"})
    h.db.flush()
    assert all(id in h for id in acked) and "recovered" in h
    assert h.verify() == []
    h.closedb()
