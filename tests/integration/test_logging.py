"""The library logs nothing per record at INFO: a run with ten times the records logs no more lines."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support.mirrors import MirrorProcess, call, wait_until

import MyNoSQL
from MyNoSQL.storage.store import BACKLOG

FLUSH_DOCS = 256


class Lines(logging.Handler):
    """Every record of the "MyNoSQL" logger at INFO and above, as text."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.levelname} {record.getMessage()}")


@pytest.fixture
def info_lines() -> Iterator[Lines]:
    logger = logging.getLogger("MyNoSQL")
    handler, level = Lines(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def life_of_records(tmp_path: Path, n: int, mirror: MirrorProcess) -> None:
    """``n`` records saved on peer a (several flushes), read back, pushed to the mirror; peer b pulls them, then
    polls the mirror and downloads a new revision of each."""
    opts = MyNoSQL.Options(flush_docs=FLUSH_DOCS, block_docs=16, flush_interval=0.05, longpoll=5.0)
    a = MyNoSQL.MyNoSQL(tmp_path / f"a{n}", options=opts)
    b = MyNoSQL.MyNoSQL(tmp_path / f"b{n}", options=opts)
    a.opendb("db")
    b.opendb("db")
    try:
        saved = [a.savedoc({"id": f"r{i:05d}", "i": i, "v": 1, "text": f"reading {i} " * 4}) for i in range(n)]
        a.db.flush()
        # a flush takes at most what waits (savers are held back at BACKLOG * flush_docs)
        assert a.db.storage_stats.flushes >= max(1, n // (BACKLOG * FLUSH_DOCS))
        assert [a.readdoc(f"r{i:05d}")["i"] for i in range(n)] == list(range(n))
        a.addpeer(mirror.url)
        wait_until(lambda: call("GET", f"{mirror.url}/db")["doc_count"] == n, timeout=60,
                   what=f"the {n} records on the mirror")
        assert b.pull(mirror.url)["docs_written"] == n
        b.addpeer(mirror.url)
        for rec in saved:
            a.savedoc({**rec, "v": 2})
        wait_until(lambda: sum(1 for rec in b if rec["v"] == 2) == n, timeout=120,
                   what=f"peer b polling the {n} new revisions")
    finally:
        a.closedb()
        b.closedb()


def test_nothing_is_logged_per_record_at_info(tmp_path: Path, info_lines: Lines,
                                              mirrors: Callable[..., MirrorProcess]) -> None:
    counts = {}
    for n in (300, 3000):
        mirror = mirrors(tag=f"m{n}")  # its process logs at INFO (serve -v)
        before = len(info_lines.lines)
        life_of_records(tmp_path, n, mirror)
        ours = info_lines.lines[before:]
        mirror.stop()  # its log is complete once it stopped
        theirs = [line for line in mirror.log if " MyNoSQL: " in line]
        # a few lines for the whole run (the mirror reachable, serving...), none naming a record
        assert len(ours) < 20 and len(theirs) < 20, (ours, theirs)
        assert not [line for line in ours + theirs if re.search(r"\br\d{5}\b", line)], (ours, theirs)
        counts[n] = (len(ours), len(theirs))
    # ten times the records (and flushes, batches, polls): not more lines, give or take a retry's pair
    assert counts[3000][0] <= counts[300][0] + 2 and counts[3000][1] <= counts[300][1] + 2, counts
