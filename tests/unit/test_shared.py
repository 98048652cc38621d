"""The pieces of several processes on one database that need no second process (the rest:
tests/integration/test_processes.py)."""

from __future__ import annotations

import errno
import fcntl
import socket
import threading
from pathlib import Path
from typing import Any

import pytest

import MyNoSQL
from MyNoSQL import shared


def test_a_file_system_without_locks_fails_to_open_with_a_clear_error(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    def no_locks(fd: int, op: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.raises(MyNoSQL.StorageError, match="file locks do not work"):
        MyNoSQL.MyNoSQL(tmp_path).opendb("db")


@pytest.mark.parametrize("exc", [
    MyNoSQL.ConflictError("record 'a' has revision 2-x", id="a", current_rev="2-x"),
    MyNoSQL.DocumentNotFound("a", deleted=True),
    MyNoSQL.InvalidDocument("bad"),
    ValueError("plain"),
])
def test_errors_cross_as_their_class_arguments_and_fields(exc: Exception) -> None:
    back = shared._rebuild(shared._error_reply(exc))
    assert type(back) is type(exc) and str(back) == str(exc)
    for k in ("id", "current_rev", "deleted"):
        assert getattr(back, k, None) == getattr(exc, k, None)


def test_an_unknown_error_class_is_never_looked_up_beyond_the_exception_tree() -> None:
    back = shared._rebuild([1, "Path", ["/etc"], {}])
    assert type(back) is MyNoSQL.MyNoSQLError and "Path" in str(back)


def test_frames_carry_json_and_raw_bytes_of_any_size() -> None:
    a, b = socket.socketpair()
    with a, b:
        big = bytes(range(256)) * 4096  # 1 MiB: several recv calls (sent by a thread: more than a socket holds)
        sender = threading.Thread(target=shared._send, args=(a, ["save", {"id": "x"}], big))
        sender.start()
        msg: Any
        msg, raw = shared._recv(b)
        sender.join(timeout=30)
        assert msg == ["save", {"id": "x"}] and raw == big
        a.close()
        with pytest.raises(EOFError):
            shared._recv(b)
