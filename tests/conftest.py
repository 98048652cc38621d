from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "src") not in sys.path:  # run from a clean clone without installing, too
    sys.path.insert(0, str(ROOT / "src"))

import MyNoSQL  # noqa: E402


@pytest.fixture
def location(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def db(location: Path) -> Iterator[MyNoSQL.MyNoSQL]:
    handle = MyNoSQL.MyNoSQL(location)
    handle.opendb("testdb")
    yield handle
    handle.closedb()


@pytest.fixture
def small_db(location: Path) -> Iterator[MyNoSQL.MyNoSQL]:
    """A database whose compactor flushes every few records, so shard blocks and GC are exercised."""
    handle = MyNoSQL.MyNoSQL(location, options=MyNoSQL.Options(flush_docs=8, block_docs=4, flush_interval=0.05))
    handle.opendb("testdb")
    yield handle
    handle.closedb()
