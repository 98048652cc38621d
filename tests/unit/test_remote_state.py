"""A remote mirror's problems are logged once per change of state, not once per retry."""

from __future__ import annotations

import logging

import pytest

from MyNoSQL.errors import RemoteError
from MyNoSQL.replication.remote import RemoteState, problem_kind

URL = "http://127.0.0.1:5984"


def _lines(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "MyNoSQL" and r.levelno == level]


def test_the_kind_of_a_problem_leaves_out_its_details() -> None:
    refused = RemoteError("GET http://127.0.0.1:1/db/_changes: ClientConnectorError: [Errno 111] refused",
                          kind="unreachable")
    assert problem_kind(refused) == "unreachable"
    assert problem_kind(RemoteError("GET /db: HTTP 401 unauthorized", status=401)) == "HTTP 401"
    assert problem_kind(RemoteError("HTTP 502", status=502)) == problem_kind(RemoteError("HTTP 503", status=503))
    assert problem_kind(ConnectionResetError(104, "Connection reset by peer")) == "unreachable"
    assert problem_kind(TimeoutError()) == "unreachable"
    assert problem_kind(ValueError("a bug")) == "ValueError"


def test_a_problem_is_logged_once_and_again_only_when_its_kind_changes(caplog: pytest.LogCaptureFixture) -> None:
    state = RemoteState(URL)
    with caplog.at_level(logging.INFO, logger="MyNoSQL"):
        for port, errno_text in [(8801, "Connection refused"), (8802, "Connection reset by peer"),
                                 (8803, "Connection refused")] * 3:
            state.failed(RemoteError(f"GET http://127.0.0.1:{port}/db: OSError: [Errno 111] {errno_text}",
                                     kind="unreachable"))
        assert len(_lines(caplog, logging.WARNING)) == 1 and state.failures == 9
        assert state.reachable is False and state.failing is True
        state.failed(RemoteError("GET /db/_changes: HTTP 401 unauthorized", status=401))  # another kind
        state.failed(RemoteError("GET /db/_bulk_get: HTTP 401 Name or password is incorrect.", status=401))
        warnings = _lines(caplog, logging.WARNING)
        assert len(warnings) == 2 and "HTTP 401" in warnings[1]
        # it answers, with an error: reachable (a wrong database name or password is not a network problem)
        assert state.reachable is True and state.failing is True
        assert state.last_kind == "HTTP 401" and state.failures == 11
        assert _lines(caplog, logging.INFO) == []
        state.ok()
        state.ok()
        infos = _lines(caplog, logging.INFO)
        assert len(infos) == 1 and "works again" in infos[0] and "11 failed attempt" in infos[0]
        assert state.failures == 0 and state.reachable is True
        state.failed(RemoteError("GET /db: HTTP 401", status=401))  # the same kind as before, but after a success
        assert len(_lines(caplog, logging.WARNING)) == 3
