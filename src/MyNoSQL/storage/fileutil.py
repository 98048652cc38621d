"""Crash-safe file helpers (write to a temp file, fsync, rename, fsync the directory)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from ..errors import StorageError

TMP_SUFFIX = ".tmp-mynosql"


def fsync_dir(path: Path) -> None:
    if os.name != "posix":  # pragma: no cover - directories cannot be opened for fsync on Windows
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves either the old or the new content."""
    tmp = path.with_name(path.name + TMP_SUFFIX)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise StorageError(exc.errno, f"cannot write {path}: {exc.strerror}") from exc


def sweep_temp_files(directory: Path) -> None:
    """Remove temp files left by a crash in the middle of :func:`atomic_write`."""
    for p in directory.glob("*" + TMP_SUFFIX):
        with contextlib.suppress(OSError):
            p.unlink()


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def write_all_at(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n
