"""The demo's lines are written whole: a log line from a background thread never lands in the middle of one."""

from __future__ import annotations

import io

import pytest

from MyNoSQL import demo


class Recorder(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def write(self, s: str) -> int:
        self.calls.append(s)
        return super().write(s)


def test_a_demo_line_is_one_write(monkeypatch: pytest.MonkeyPatch) -> None:
    out = Recorder()
    monkeypatch.setattr("sys.stdout", out)
    demo.say("  t=  1.0s  link up  written   200")
    assert out.calls == ["  t=  1.0s  link up  written   200\n"]  # print() would make two writes
