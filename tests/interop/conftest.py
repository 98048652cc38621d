"""Fixtures for the PouchDB interop tests (see pouch.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pouch import ensure_node_modules, npm_available, pouchdb_server
from support.mirrors import mirrors  # noqa: F401 - the fixture


@pytest.fixture(scope="session")
def pouch_node_modules() -> None:
    """Skip without node/npm; otherwise make sure node_modules matches the lockfile (npm ci)."""
    if not npm_available():
        pytest.skip("PouchDB interop tests need node >= 18 and npm on PATH (not found)")
    ensure_node_modules()


@pytest.fixture(scope="module")
def pouchdb_url(pouch_node_modules: None) -> Iterator[str]:
    """Base URL (http://127.0.0.1:PORT) of an in-memory PouchDB server, one per test module."""
    with pouchdb_server() as server:
        yield server.url
