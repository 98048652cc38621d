"""MyNoSQL.testing.poll_until: the deadline-bounded wait every test uses instead of a sleep."""

from __future__ import annotations

import pytest

from MyNoSQL.testing import poll_until


def test_returns_the_first_truthy_value_and_counts_listed_exceptions_as_not_yet() -> None:
    calls = []

    def probe() -> int:
        calls.append(1)
        if len(calls) == 1:
            raise KeyError("not there yet")
        return 0 if len(calls) < 4 else len(calls)

    assert poll_until(probe, timeout=5, ignore=(KeyError,)) == 4


def test_gives_up_at_the_deadline_naming_what_and_the_last_value() -> None:
    calls = []

    def never() -> list[str]:
        calls.append(1)
        return []

    with pytest.raises(TimeoutError, match=r"the thing not reached within 0.2 s \(last: \[\]\)"):
        poll_until(never, timeout=0.2, interval=0.05, what="the thing")
    assert 2 <= len(calls) <= int(0.2 / 0.005) + 2  # bounded in count as well as time


def test_other_exceptions_propagate_and_bad_bounds_are_refused() -> None:
    with pytest.raises(ZeroDivisionError):
        poll_until(lambda: 1 // 0, timeout=1, ignore=(KeyError,))
    with pytest.raises(ValueError):
        poll_until(lambda: True, timeout=0)
