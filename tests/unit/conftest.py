from __future__ import annotations

import functools

import pytest

import MyNoSQL
import MyNoSQL.handle


@pytest.fixture(autouse=True)
def _no_background_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unit tests name mirrors that do not exist (m1:8800, mirrorhostname...): a handle made without options opens
    its databases with no background replication or serving (as ``Options(background_sync=False)``)."""
    monkeypatch.setattr(MyNoSQL.handle, "Options", functools.partial(MyNoSQL.Options, background_sync=False))
