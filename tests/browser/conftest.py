"""Browser tests use the PouchDB bundle installed for the interop tests (tests/interop/node_modules)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "interop"))

from pouch import ensure_node_modules, npm_available


@pytest.fixture(scope="session")
def pouch_node_modules() -> None:
    """Skip without node/npm; otherwise make sure node_modules matches the lockfile (npm ci)."""
    if not npm_available():
        pytest.skip("the browser tests need PouchDB's bundle from npm: node >= 18 and npm on PATH (not found)")
    ensure_node_modules()
