from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _no_background_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unit tests name mirrors that do not exist (m1:8800...): keep replication and serving off."""
    monkeypatch.setenv("MYNOSQL_SYNC", "0")
