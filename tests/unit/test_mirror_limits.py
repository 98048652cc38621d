"""The pieces behind a mirror's limits (issue 19), in process: the connection gate, the summarised refusal log,
body parsing, the login cache key, conflicting leaves, _local documents, and the replicator's answers to a
refusing other side (halving a batch; a source that refuses checkpoints)."""

from __future__ import annotations

import asyncio
import gzip
import logging
from pathlib import Path
from typing import Any

import pytest

import MyNoSQL
from MyNoSQL.credentials import Users
from MyNoSQL.errors import InvalidDocument, LimitExceeded, RemoteError
from MyNoSQL.options import Limits
from MyNoSQL.replication.endpoints import LocalEndpoint, replication_id
from MyNoSQL.replication.replicator import halving, replicate
from MyNoSQL.server.connections import ConnectionGate, address_key
from MyNoSQL.server.observe import RefusalLog
from MyNoSQL.server.requests import HttpError, Rules

PASSWORD = "correct horse battery"


# -- connections -----------------------------------------------------------------------------------------------


class FakeTransport(asyncio.Transport):
    def __init__(self, host: str) -> None:
        super().__init__()
        self.host = host
        self.aborted = False
        self.protocol: asyncio.BaseProtocol | None = None

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return (self.host, 40000) if name == "peername" else default

    def abort(self) -> None:
        if not self.aborted and self.protocol is not None:
            self.aborted = True
            self.protocol.connection_lost(None)
        self.aborted = True

    def is_closing(self) -> bool:
        return self.aborted


class Handler(asyncio.Protocol):
    def __init__(self) -> None:
        self.made = self.lost = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.made += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost += 1


def open_from(gate: ConnectionGate, host: str) -> FakeTransport:
    t = FakeTransport(host)
    p = gate.protocol()
    t.protocol = p
    p.connection_made(t)
    return t


def test_the_gate_bounds_each_address_and_leaves_room_for_others() -> None:
    refused: list[tuple[str, str]] = []
    handlers: list[Handler] = []

    def handler() -> Handler:
        handlers.append(Handler())
        return handlers[-1]

    gate = ConnectionGate(Limits(max_connections=10, max_connections_per_address=4), handler,
                          refused=lambda limit, addr: refused.append((limit, addr)))
    flood = [open_from(gate, "10.0.0.1") for _ in range(50)]
    assert sum(not t.aborted for t in flood) == 4 and gate.open == 4
    assert refused.count(("max_connections_per_address", "10.0.0.1")) == 46
    assert len(handlers) == 4  # nothing of the HTTP server runs for a refused connection
    others = [open_from(gate, f"10.0.0.{n}") for n in (2, 2, 2, 2, 3, 3)]
    assert gate.open == 10 and not any(t.aborted for t in others)
    newcomer = open_from(gate, "10.0.0.9")  # the cap is reached: the oldest of the heaviest address makes room
    assert not newcomer.aborted and flood[0].aborted and gate.open == 10
    assert ("max_connections", "10.0.0.1") in refused and handlers[0].lost == 1
    third = open_from(gate, "10.0.0.3")  # 10.0.0.3 holds 2, the heaviest 4 (10.0.0.2): room is made again
    assert not third.aborted and others[0].aborted
    balanced = open_from(gate, "10.0.0.3")  # now nobody holds more than 3 + 1: refused
    assert balanced.aborted and refused[-1] == ("max_connections", "10.0.0.3")
    for t in [*flood, *others, newcomer, third]:
        t.abort()
    assert gate.open == 0


def test_addresses_are_counted_by_ipv4_address_or_ipv6_network() -> None:
    assert address_key(("192.0.2.7", 1)) == "192.0.2.7"
    assert address_key(("2001:db8::1", 1, 0, 0)) == address_key(("2001:db8::ffff:1", 1, 0, 0)) == "2001:db8::/64"
    assert address_key(("::ffff:192.0.2.7", 1, 0, 0)) == "192.0.2.7"
    assert address_key(None) == "?"


def test_refusals_are_logged_once_then_summarised(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    refusals = RefusalLog(interval=60.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="MyNoSQL"):
        for i in range(1000):
            now[0] = i * 0.01
            refusals.note("max_connections_per_address", "10.0.0.1" if i % 4 else "10.0.0.2")
        assert len(caplog.records) == 1 and "per-address" in caplog.records[0].getMessage()
        now[0] = 59.0
        refusals.flush_due()
        assert len(caplog.records) == 1
        now[0] = 61.0
        refusals.flush_due()
        assert len(caplog.records) == 2
        summary = caplog.records[1].getMessage()
        assert "999 x refused a connection over the per-address" in summary and "10.0.0.1 (750)" in summary
        refusals.flush_due()
        assert len(caplog.records) == 2  # nothing new: nothing more


# -- request bodies --------------------------------------------------------------------------------------------


def test_a_body_of_too_many_json_values_is_refused_before_it_is_parsed() -> None:
    rules = Rules(Limits(max_json_values=1000, max_request_bytes=100_000))
    assert rules.parse(b"[" + b"0," * 998 + b"0]", "") == [0] * 999
    with pytest.raises(HttpError) as err:
        rules.parse(b"[" + b"[]," * 1000 + b"[]]", "")
    assert err.value.status == 413 and "JSON values" in err.value.reason
    with pytest.raises(HttpError) as err:
        rules.parse(gzip.compress(b" " * 100_001), "gzip")  # inflates past the request limit
    assert err.value.status == 413
    assert rules.parse(gzip.compress(b'{"a": [1, 2]}'), "gzip") == {"a": [1, 2]}


# -- logins ----------------------------------------------------------------------------------------------------


def test_names_and_passwords_hold_no_nul_and_remembered_logins_are_unambiguous(tmp_path: Path) -> None:
    users = Users(tmp_path / "users.json")
    for name, password in (("al\x00ice", PASSWORD), ("alice", PASSWORD + "\x00")):
        with pytest.raises(InvalidDocument, match="NUL"):
            users.set(name, password)
    users.set("alice", PASSWORD)
    assert users.check("alice", PASSWORD) == "replicator"
    assert users.cached("alice", PASSWORD) == "replicator"
    for name, password in ((f"alice\x00{PASSWORD}", ""), ("alice", PASSWORD + "\x00\x00"), ("alice\x00", PASSWORD)):
        assert users.cached(name, password) is None and users.check(name, password) is None
    assert users._token("a\x00b", "c") != users._token("a", "b\x00c")  # the name is framed by its length
    assert users._token("ab", "c") != users._token("a", "bc")


# -- records and checkpoints -----------------------------------------------------------------------------------


def test_conflicting_leaves_of_one_record_are_bounded(tmp_path: Path) -> None:
    h = MyNoSQL.MyNoSQL(tmp_path, options=MyNoSQL.Options(limits=Limits(max_leaves=3)))
    db = h.opendb("db")
    try:
        for i in range(3):
            assert db.put_replicated("r", [f"1-{i:032x}"], False, b"{}")
        with pytest.raises(LimitExceeded) as err:
            db.put_replicated("r", [f"1-{9:032x}"], False, b"{}")
        assert err.value.limit == "max_leaves"
        # extending a leaf (a child, a deletion) makes no new leaf: always taken
        assert db.put_replicated("r", [f"2-{1:032x}", f"1-{0:032x}"], True, b"{}")
        assert db.put_replicated("r", [f"3-{2:032x}", f"2-{2:032x}", f"1-{1:032x}"], False, b"{}")  # grafted on
        assert len(db.state("r").bodies) == 3  # type: ignore[union-attr]
        with pytest.raises(LimitExceeded):  # a branch off an ancestor is a new leaf
            db.put_replicated("r", [f"2-{3:032x}", f"1-{0:032x}"], False, b"{}")
    finally:
        h.closedb()


def test_a_batch_of_replicated_revisions_merges_as_one_at_a_time(tmp_path: Path) -> None:
    """merge_replicated_many (a mirror's _bulk_docs, new_edits=false) gives the states, answers and change order
    that merge_replicated of each revision in turn gives: conflicts, a revision known already, one record twice in
    the batch, a deletion, a path that extends another of the batch, and a leaf over max_leaves refused alone."""
    r = [f"{g}-{i:032x}" for g, i in ((1, 0), (1, 1), (1, 2), (1, 9), (2, 1), (3, 2), (2, 2), (2, 3))]
    batch: list[tuple[str, list[str], bool, bytes]] = [
        ("r", [r[0]], False, b'{"a":0}'), ("r", [r[1]], False, b'{"a":1}'), ("s", [r[0]], False, b'{"s":0}'),
        ("r", [r[2]], False, b'{"a":2}'), ("r", [r[3]], False, b'{"a":9}'),  # a fourth leaf: refused alone
        ("r", [r[0]], False, b'{"a":0}'),  # known already
        ("r", [r[4], r[0]], True, b"{}"),  # deletes the first leaf
        ("t", [r[5], r[6], r[1]], False, b'{"t":3}'), ("t", [r[7], r[1]], False, b'{"t":2}'),
        ("s", [r[4], r[0]], False, b'{"s":1}'),
    ]
    outcomes = []
    for name in ("one", "many"):
        h = MyNoSQL.MyNoSQL(tmp_path / name, options=MyNoSQL.Options(limits=Limits(max_leaves=3)))
        db = h.opendb("db")
        try:
            if name == "one":
                got: list[object] = []
                for id, path, deleted, blob in batch:
                    try:
                        got.append(db.merge_replicated(id, path, deleted, blob))
                    except LimitExceeded as exc:
                        got.append(exc)
            else:
                got = list(db.merge_replicated_many(batch))
            answers = [type(g).__name__ if isinstance(g, Exception) else None if g is None else (g.id, g.seq)
                       for g in got]
            states = {s.id: (s.seq, s.tree, s.bodies) for s in db.states_since(0)}
            outcomes.append((answers, states, [(c.id, c.rev) for c in db.changes(0)]))
        finally:
            h.closedb()
    assert outcomes[0] == outcomes[1]
    answers = outcomes[1][0]
    assert answers[4] == "LimitExceeded" and answers[5] is None and answers.count(None) == 1


def test_a_new_record_of_one_revision_gets_the_state_a_merge_makes(tmp_path: Path) -> None:
    """The shortcut for a record new here whose revision comes without ancestors (a first replication) makes the
    state merge_path would, refuses a malformed revision alone, and later revisions merge onto it."""
    from MyNoSQL.records import revtree

    a, b, c, d = (f"1-{x * 32}" for x in "abcd")
    batch: list[tuple[str, list[str], bool, bytes]] = [
        ("a", [a], False, b'{"x":1}'), ("d", [b], True, b"{}"), ("bad", ["x-1"], False, b"{}"),
        ("two", [f"2-{'e' * 32}", c], False, b'{"y":2}'),
    ]
    h = MyNoSQL.MyNoSQL(tmp_path)
    db = h.opendb("db")
    try:
        got = db.merge_replicated_many(batch)
        assert isinstance(got[2], ValueError)
        for (id, path, deleted, blob), state in zip(batch, got, strict=True):
            if id == "bad":
                continue
            assert isinstance(state, revtree.DocState)
            assert state.tree == revtree.merge_path({}, path, deleted)[0] and state.bodies == {path[0]: blob}
            assert state.atts is None and state.deleted is deleted and db.state(id).tree == state.tree
        assert db.state("bad") is None
        more = db.merge_replicated_many([("a", [f"2-{'f' * 32}", a], False, b'{"x":2}'), ("a", [d], False, b"{}")])
        s = db.state("a")
        assert more[0] is not None and s is not None and len(s.tree) == 3 and set(s.bodies) == {f"2-{'f' * 32}", d}
        assert db.readdoc("a")["x"] == 2
    finally:
        h.closedb()


def test_local_documents_are_bounded_in_number(tmp_path: Path) -> None:
    h = MyNoSQL.MyNoSQL(tmp_path)
    db = h.opendb("db")
    try:
        for i in range(3):
            db.local_put(f"c{i}", {"v": i}, max_docs=3)
        with pytest.raises(LimitExceeded):
            db.local_put("c3", {"v": 3}, max_docs=3)
        db.local_put("c0", {"v": 9}, max_docs=3)  # an update
        assert db.local_count() == 3 and db.local_get("c0")["v"] == 9  # type: ignore[index]
    finally:
        h.closedb()


# -- the replicator against a refusing other side --------------------------------------------------------------


def test_a_batch_refused_as_too_large_is_halved() -> None:
    sizes: list[int] = []

    async def call(items: list[int]) -> int:
        sizes.append(len(items))
        if len(items) > 3:
            raise RemoteError("HTTP 413", status=413)
        return sum(items)

    assert sum(asyncio.run(halving(call, list(range(10))))) == 45
    assert sizes == [10, 5, 2, 3, 5, 2, 3]

    async def refuse(items: list[int]) -> int:
        raise RemoteError("HTTP 413", status=413)

    with pytest.raises(RemoteError):  # a single item it refuses is an error, not a loop
        asyncio.run(halving(refuse, [1, 2]))


class ReadOnly(LocalEndpoint):
    """A source that refuses checkpoints, as a mirror refuses a reader's (403)."""

    async def put_local(self, id: str, doc: dict[str, Any]) -> None:
        raise RemoteError("PUT _local: HTTP 403 forbidden", status=403)


def test_a_source_that_refuses_checkpoints_is_resumed_from_the_targets_own(tmp_path: Path) -> None:
    h1, h2 = MyNoSQL.MyNoSQL(tmp_path / "src"), MyNoSQL.MyNoSQL(tmp_path / "tgt")
    src, tgt = h1.opendb("db"), h2.opendb("db")
    try:
        for i in range(5):
            src.savedoc({"id": f"r{i}"})
        first = asyncio.run(replicate(ReadOnly(src), LocalEndpoint(tgt), batch_size=2))
        assert first.docs_written == 5 and first.batches == 3
        rep_id = replication_id(ReadOnly(src), LocalEndpoint(tgt))
        assert src.local_get(rep_id) is None
        mine = tgt.local_get(rep_id)
        assert mine is not None and mine["source_readonly"] is True and mine["source_last_seq"] == first.last_seq
        src.savedoc({"id": "r5"})
        second = asyncio.run(replicate(ReadOnly(src), LocalEndpoint(tgt)))
        assert second.start_seq == first.last_seq and second.docs_read == 1
        # the same target checkpoint with a source that takes checkpoints: not trusted alone, read from 0
        third = asyncio.run(replicate(LocalEndpoint(src), LocalEndpoint(tgt)))
        assert third.start_seq == 0 and third.docs_written == 0
    finally:
        h1.closedb()
        h2.closedb()
