"""A few seeds of the chaos runner in the suite (scripts/chaos --runs N runs more)."""

from __future__ import annotations

import pytest

from .runner import Stats, run_seed


@pytest.mark.parametrize("seed", [1, 2])
def test_chaos_seed_keeps_every_promise(seed: int) -> None:
    stats = Stats()
    problems = run_seed(seed, stats)
    assert problems == [], f"seed {seed}: {problems} (replay: python tests/chaos/runner.py --seed {seed} --verbose)"
    assert stats.acked > 0


def test_clocks_hours_apart_still_converge() -> None:
    stats = Stats()
    problems = run_seed(3, stats, skew=True)
    assert problems == []
