"""A few seeds of the chaos runner in the suite (scripts/chaos --runs N runs more)."""

from __future__ import annotations

import pytest

from .payload import BLOBS, blob_bytes, digest
from .runner import Ack, Stats, make_history, op_db, run_seed, seed_dbs, seed_procs

SEED_PROCS = 17006


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


# A short history for peer p0, a node of 2 processes (seed_procs(SEED_PROCS, 2)[0] == 2): writes from both,
# attachment writes (to the owner), the owner SIGKILLed twice (takeovers), a client killed, a crash in a compaction.
PROCS_HISTORY: list[tuple[object, ...]] = [
    ("save", 0, "r1", 1, "db"), ("save", 0, "r2", 2, "photos"), ("putatt", 0, "r1", "a.bin", 2, "db"),
    ("save", 0, "r1", 3, "db"), ("kill", "p0", "owner"), ("save", 0, "r1", 4, "db"),
    ("putatt", 0, "r2", "notes.txt", 1, "photos"), ("save", 1, "r1", 5, "db"), ("kill", "p0", "client"),
    ("delete", 0, "r2", "photos"), ("save", 0, "r3", 6, "db"), ("crash_compacting", "p0", "index.commit_flush", "db"),
    ("save", 0, "r3", 7, "db"), ("pause", 0.1), ("kill", "p0", "owner"), ("save", 0, "r1", 8, "db"),
    ("save", 2, "r1", 9, "db"),
]


@pytest.mark.slow
def test_peers_of_several_processes_keep_every_promise() -> None:
    """``--procs``: a peer of 2 processes sharing its databases (one owns each, the other is its client), SIGKILL
    of an owner (a takeover follows) and of a client; every write acknowledged by any process is on every mirror,
    the other process reads it at once, and every process reads what its node holds."""
    assert seed_procs(SEED_PROCS, 2)[0] == 2
    stats = Stats()
    problems = run_seed(SEED_PROCS, stats, history=PROCS_HISTORY, dbs=2, attachments=True, procs=2)
    assert problems == [], problems
    assert stats.reads_checked > 0 and stats.att_writes > 0
    assert stats.faults.get("kill: a process of several, owner") == 2, stats.faults
    assert stats.faults.get("kill: a process of several, client") == 1, stats.faults


def test_histories_with_databases_and_attachments_replay_the_same() -> None:
    ops = make_history(60001, 200, dbs=3, attachments=True)
    assert ops == make_history(60001, 200, dbs=3, attachments=True)
    assert {op[0] for op in ops} >= {"save", "delete", "putatt", "delatt", "crash_compacting", "kill"}
    assert {op_db(op) for op in ops if op[0] in ("save", "putatt")} == set(seed_dbs(60001, 3))
    assert all(op_db(op) == "db" for op in make_history(1, 100))  # the old histories name no database
    assert {len(seed_dbs(s, 3)) for s in range(60001, 60021)} == {2, 3}
    assert [blob_bytes(k) for k in range(len(BLOBS))] == [blob_bytes(k) for k in range(len(BLOBS))]
    assert max(len(blob_bytes(k)) for k in range(len(BLOBS))) == 256 * 1024
    assert seed_procs(70001, 1) == [1, 1, 1] and seed_procs(70001, 3) == seed_procs(70001, 3)
    assert all(max(seed_procs(s, 3)) == 3 and min(seed_procs(s, 3)) >= 1 for s in range(70001, 70021))


def test_a_wrong_attachment_read_back_is_a_lost_write() -> None:
    right = [digest(blob_bytes(2)), len(blob_bytes(2))]
    op = ("putatt", 0, "r1", "a.bin", 2, "db")
    assert Ack("p0", "db", "r1", "1-" + "a" * 32, {"a.bin": right}, op).check_read_back() == []
    wrong = Ack("p0", "db", "r1", "1-" + "a" * 32, {"a.bin": [digest(b"other"), 5]}, op).check_read_back()
    assert len(wrong) == 1 and wrong[0].startswith("lost:")
    kept = Ack("p0", "db", "r1", "2-" + "b" * 32, {"a.bin": right}, ("delatt", 0, "r1", "a.bin", "db"))
    assert kept.check_read_back()[0].startswith("lost:")
