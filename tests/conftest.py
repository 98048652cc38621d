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


# -- tests by cost ------------------------------------------------------------------------------------------------
# Every test carries the markers of what it needs (pyproject.toml lists them); `scripts/test --fast` runs those with
# none of them: in-process tests of a few hundred milliseconds at most.
_BY_FOLDER = {"integration": "process", "faults": "process", "security": "process", "interop": "interop",
              "chaos": "chaos", "browser": "browser"}
_BY_MODULE = {"test_cli.py": "process", "test_docs.py": "process"}  # they run the command and the doc examples
_BY_FIXTURE = {"mirrors": "process", "peers": "process", "pouchdb_url": "interop", "pouch_node_modules": "interop"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        path = Path(str(item.fspath))
        wanted = {_BY_FOLDER.get(path.parent.name), _BY_MODULE.get(path.name)}
        wanted |= {m for f, m in _BY_FIXTURE.items() if f in getattr(item, "fixturenames", ())}
        for marker in sorted(m for m in wanted if m):
            item.add_marker(marker)
