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


class _Turn:
    """A stand-in for the owner's ``_turn`` event that records how long it was asked to wait."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def clear(self) -> None:
        pass

    def wait(self, timeout: float) -> bool:
        self.waits.append(timeout)
        return False


def test_the_owner_s_own_write_gives_way_only_to_a_waiting_request(tmp_path: Path) -> None:
    """After its own write, an owner thread waits (GIVE_WAY at most) only while another process's request waits on
    a calling connection; never in a serving thread, never before a client connected (no listener then)."""
    h = MyNoSQL.MyNoSQL(tmp_path)
    h.opendb("db")
    b = MyNoSQL.MyNoSQL(tmp_path)
    b.opendb("db")  # a client (a second handle shares too): its lifeline makes the owner note its writes
    try:
        server = h.db._unshare.__self__  # type: ignore[attr-defined, union-attr]
        assert isinstance(server, shared.OwnerServer)
        turn = _Turn()
        server._turn = turn  # type: ignore[assignment]
        mine, theirs = socket.socketpair()
        with mine, theirs:
            server.register_call(mine)
            h.savedoc({"id": "quiet"})
            assert turn.waits == []  # nothing waits: no pause
            theirs.send(b"request")
            h.savedoc({"id": "busy"})
            assert turn.waits == [shared.GIVE_WAY]
            server._callers.add(threading.get_ident())  # as a serving thread: it is the one taking requests
            try:
                h.savedoc({"id": "served"})
            finally:
                server._callers.discard(threading.get_ident())
            assert turn.waits == [shared.GIVE_WAY]
            server._calls.unregister(mine)
    finally:
        b.closedb()
        h.closedb()
