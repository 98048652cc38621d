"""A few seeds of the chaos runner in the suite (scripts/chaos --runs N runs more)."""

from __future__ import annotations

import pytest

from .payload import BLOBS, blob_bytes, digest
from .runner import Ack, Stats, make_history, op_db, run_seed, seed_dbs


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


def test_several_databases_with_attachments_keep_every_promise() -> None:
    """Nodes holding 2-3 databases (the mirrors: ``mynosql serve``'s service), attachment writes of shared blobs;
    every database converges, every acknowledged attachment reads back by digest on every node."""
    stats = Stats()
    problems = run_seed(60001, stats, n_ops=30, dbs=3, attachments=True)
    assert problems == [], f"{problems} (replay: python tests/chaos/runner.py --seed 60001 --dbs 3 --attachments " \
                           "--ops 30 --verbose)"
    assert stats.att_writes > 0 and stats.att_reads > 0


def test_histories_with_databases_and_attachments_replay_the_same() -> None:
    ops = make_history(60001, 200, dbs=3, attachments=True)
    assert ops == make_history(60001, 200, dbs=3, attachments=True)
    assert {op[0] for op in ops} >= {"save", "delete", "putatt", "delatt", "crash_compacting", "kill"}
    assert {op_db(op) for op in ops if op[0] in ("save", "putatt")} == set(seed_dbs(60001, 3))
    assert all(op_db(op) == "db" for op in make_history(1, 100))  # the old histories name no database
    assert {len(seed_dbs(s, 3)) for s in range(60001, 60021)} == {2, 3}
    assert [blob_bytes(k) for k in range(len(BLOBS))] == [blob_bytes(k) for k in range(len(BLOBS))]
    assert max(len(blob_bytes(k)) for k in range(len(BLOBS))) == 256 * 1024


def test_a_wrong_attachment_read_back_is_a_lost_write() -> None:
    right = [digest(blob_bytes(2)), len(blob_bytes(2))]
    op = ("putatt", 0, "r1", "a.bin", 2, "db")
    assert Ack("p0", "db", "r1", "1-" + "a" * 32, {"a.bin": right}, op).check_read_back() == []
    wrong = Ack("p0", "db", "r1", "1-" + "a" * 32, {"a.bin": [digest(b"other"), 5]}, op).check_read_back()
    assert len(wrong) == 1 and wrong[0].startswith("lost:")
    kept = Ack("p0", "db", "r1", "2-" + "b" * 32, {"a.bin": right}, ("delatt", 0, "r1", "a.bin", "db"))
    assert kept.check_read_back()[0].startswith("lost:")
