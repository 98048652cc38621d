"""The replicator's choices, in process: when a MyNoSQL target is asked ``_revs_diff`` and when it is not."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

import MyNoSQL
from MyNoSQL.database import Database
from MyNoSQL.replication.endpoints import LocalEndpoint
from MyNoSQL.replication.replicator import replicate


class Target(LocalEndpoint):
    """A local database standing in for a mirror (``mynosql``: the protocol extensions apply), counting what it
    is asked and sent."""

    def __init__(self, db: Database, *, mynosql: bool = True, empty: bool = False) -> None:
        super().__init__(db)
        self.mynosql = mynosql
        self.empty = empty  # as HttpEndpoint.ensure_exists finds it
        self.asked: list[int] = []  # revisions asked about, per _revs_diff
        self.sent: list[int] = []  # documents sent, per _bulk_docs

    async def revs_diff(self, query: dict[str, list[str]],
                        ancestors: dict[str, list[str]] | None = None) -> dict[str, list[str]]:
        self.asked.append(sum(map(len, query.values())))
        return await super().revs_diff(query, ancestors)

    async def bulk_docs(self, docs: Any, checkpoint: Any = None) -> tuple[list[dict[str, Any]], int, bool]:
        self.sent.append(len(docs))
        return await super().bulk_docs(docs, checkpoint)


def _copy(src: Database, dst: Database, ids: list[str]) -> None:
    """``dst`` gets the revisions ``src`` has of ``ids`` (as if another peer had pushed them there)."""
    for id in ids:
        state = src.state(id)
        assert state is not None
        dst.put_replicated(id, [state.winner], False, state.bodies[state.winner])


def test_an_empty_mirror_is_asked_revs_diff_once_then_sent_batches_directly(tmp_path: Path) -> None:
    with MyNoSQL.MyNoSQL(tmp_path / "a") as a, MyNoSQL.MyNoSQL(tmp_path / "b") as b:
        src, tgt = a.opendb("db"), b.opendb("db")
        for i in range(500):
            src.savedoc({"id": f"r{i:03d}", "n": i})
        target = Target(tgt)
        res = asyncio.run(replicate(LocalEndpoint(src), target, batch_size=100))
        assert res.docs_written == 500 and res.errors == [] and res.batches == 5
        assert target.asked == [100]  # the first batch: everything missing, so the others go without asking
        assert target.sent == [100] * 5
        assert len(tgt) == 500 and all(tgt.state(f"r{i:03d}").winner == src.state(f"r{i:03d}").winner
                                       for i in range(500))


def test_a_mirror_that_says_it_was_never_written_to_is_not_asked_at_all(tmp_path: Path) -> None:
    with MyNoSQL.MyNoSQL(tmp_path / "a") as a, MyNoSQL.MyNoSQL(tmp_path / "b") as b:
        src, tgt = a.opendb("db"), b.opendb("db")
        for i in range(300):
            src.savedoc({"id": f"r{i:03d}", "n": i})
        target = Target(tgt, empty=True)
        res = asyncio.run(replicate(LocalEndpoint(src), target, batch_size=100))
        assert res.docs_written == 300 and target.asked == [] and target.sent == [100] * 3
        # it was not empty after all (another peer pushed meanwhile): asked again after the first batch it held
        more = Target(tgt, empty=True)
        for i in range(300, 500):
            src.savedoc({"id": f"r{i:03d}", "n": i})
        _copy(src, tgt, [f"r{i:03d}" for i in range(300, 400)])
        res = asyncio.run(replicate(LocalEndpoint(src), more, batch_size=100, extra_id="again"))
        assert res.docs_written == 100 and len(tgt) == 500
        assert more.asked and len(more.sent) <= 4  # never every batch of the 5 read without asking


def test_a_mirror_that_holds_a_batch_already_is_asked_again(tmp_path: Path) -> None:
    with MyNoSQL.MyNoSQL(tmp_path / "a") as a, MyNoSQL.MyNoSQL(tmp_path / "b") as b:
        src, tgt = a.opendb("db"), b.opendb("db")
        for i in range(600):
            src.savedoc({"id": f"r{i:03d}", "n": i})
        held = [f"r{i:03d}" for i in range(100, 200)]  # the second batch: another peer pushed it there
        _copy(src, tgt, held)
        target = Target(tgt)
        res = asyncio.run(replicate(LocalEndpoint(src), target, batch_size=100))
        assert res.docs_written == 500 and res.errors == [] and res.batches == 6
        # batch 1 asked (all missing); batch 2 sent without asking, the target wrote none of it: asking again.
        # Batch 3 is read while batch 2 is written (pipelining): it goes without asking if its read began
        # before batch 2's answer, and then batch 4 asks. Either way, one more question, all missing again, and
        # the rest goes without asking.
        assert target.asked == [100, 100]
        assert target.sent == [100] * 6
        assert len(tgt) == 600


def test_a_mirror_that_holds_everything_is_asked_about_every_batch(tmp_path: Path) -> None:
    with MyNoSQL.MyNoSQL(tmp_path / "a") as a, MyNoSQL.MyNoSQL(tmp_path / "b") as b:
        src, tgt = a.opendb("db"), b.opendb("db")
        for i in range(300):
            src.savedoc({"id": f"r{i:03d}", "n": i})
        _copy(src, tgt, [f"r{i:03d}" for i in range(300)])
        target = Target(tgt)
        res = asyncio.run(replicate(LocalEndpoint(src), target, batch_size=100))
        assert res.docs_written == 0 and res.batches == 3
        assert target.asked == [100, 100, 100] and target.sent == []  # nothing travels in vain


def test_a_plain_couchdb_target_is_always_asked_revs_diff(tmp_path: Path) -> None:
    with MyNoSQL.MyNoSQL(tmp_path / "a") as a, MyNoSQL.MyNoSQL(tmp_path / "b") as b:
        src, tgt = a.opendb("db"), b.opendb("db")
        for i in range(300):
            src.savedoc({"id": f"r{i:03d}", "n": i})
        target = Target(tgt, mynosql=False)
        res = asyncio.run(replicate(LocalEndpoint(src), target, batch_size=100))
        assert res.docs_written == 300 and target.asked == [100, 100, 100]


def test_ensure_exists_says_whether_a_mirror_database_was_ever_written_to(tmp_path: Path) -> None:
    from MyNoSQL.replication.endpoints import HttpEndpoint, client_session

    with MyNoSQL.MyNoSQL(tmp_path / "m", options=MyNoSQL.Options()) as m:  # serving (background_sync)
        m.opendb("db")
        m.setlisten("127.0.0.1", 0)
        assert m.setdbmode("Mirror")
        url = m.status()["server"]

        async def empty(name: str) -> bool:
            async with client_session(MyNoSQL.Options()) as session:
                ep = HttpEndpoint(session, f"{url}/{name}")
                await ep.ensure_exists()
                return ep.empty

        assert asyncio.run(empty("db")) is True
        m.savedoc({"id": "x"})
        assert asyncio.run(empty("db")) is False


# -- documents read for a push: serialized without parsing their bodies ------------------------------------------


def test_a_pre_serialized_document_is_the_document_it_stands_for(tmp_path: Path) -> None:
    import datetime
    import gc

    import orjson

    from MyNoSQL.net import wire

    with MyNoSQL.MyNoSQL(tmp_path) as h:
        db = h.opendb("db")
        db.savedoc({"id": "plain", "n": 1, "values": [1.5, -2.25], "note": "é ✓", "nested": {"a": [None, True]}})
        r = db.savedoc({"id": "edited", "n": 1})
        r = db.savedoc({**r, "n": 2})
        db.savedoc({**r, "n": 3})
        db.savedoc({"id": "empty"})
        d = db.savedoc({"id": "gone", "x": 1})
        db.deletedoc("gone", d["rev"])
        db.savedoc({"id": "tagged", "when": datetime.datetime(2026, 1, 2, 3, 4, 5), "raw": b"\x00\x01"})
        db.savedoc({"id": "under", "_x": 1, "y": 2})  # a "_" key travels as "$_x": not pre-serialized
        db.savedoc({"id": "dollar", "$_y": 1})
        db.savedoc({"id": "ctl", "s": "\x01"})
        db.savedoc({"id": "a/b \u2603"})
        made, fell_back = 0, set()
        for state in db.states_since(0):
            rev = state.winner
            expected = wire.doc_to_wire(state, rev, revs=True)
            got = wire.doc_json_to_wire(state, rev)
            if state.id in ("under",):
                assert got is None
                continue
            if got is None:
                fell_back.add(state.id)
                continue
            made += 1
            data = got[wire.SERIALIZED]
            assert type(data) is bytes and got == {"_id": state.id, "_rev": rev, wire.SERIALIZED: data}
            assert orjson.loads(data) == expected  # the same document, once parsed
            assert not gc.is_tracked(got) and not gc.is_tracked(data)
            assert wire.full(got) == expected
            assert orjson.loads(orjson.dumps([wire.for_request(got)])) == [expected]
        assert made == 7 and fell_back == {"ctl"}  # an escape in the body: parsed, to be safe


def test_a_push_sends_pre_serialized_documents_a_local_target_reads_them_whole(tmp_path: Path) -> None:
    import orjson

    from MyNoSQL.net import wire

    with MyNoSQL.MyNoSQL(tmp_path / "a") as a, MyNoSQL.MyNoSQL(tmp_path / "b") as b:
        src, tgt = a.opendb("db"), b.opendb("db")
        for i in range(100):
            src.savedoc({"id": f"r{i:03d}", "n": i, "tags": ["x", i]})
        source = LocalEndpoint(src)
        docs = asyncio.run(source.bulk_get({"r000": [src.state("r000").winner]}))
        assert len(docs) == 1 and type(docs[0][wire.SERIALIZED]) is bytes
        with pytest.raises(TypeError):  # never serialized as it is: the bytes would be lost
            orjson.dumps(docs[0])
        forged = {"_id": "r000", "_rev": docs[0]["_rev"], wire.SERIALIZED: '{"x": 1}'}  # as a JSON parser makes it
        assert wire.full(forged) is forged and wire.for_request(forged) is forged
        res = asyncio.run(replicate(source, LocalEndpoint(tgt), batch_size=30))
        assert res.docs_written == 100 and res.errors == []
        assert all(tgt.readdoc(f"r{i:03d}") == src.readdoc(f"r{i:03d}") for i in range(100))


def test_a_question_refused_as_too_large_is_asked_again_in_halves() -> None:
    from MyNoSQL.errors import RemoteError
    from MyNoSQL.replication.replicator import _bulk_get, _revs_diff

    asked: list[int] = []

    class Refusing:
        """Refuses (413) any question of more than 3 revisions."""

        def _check(self, query: dict[str, list[str]]) -> None:
            n = sum(map(len, query.values()))
            asked.append(n)
            if n > 3:
                raise RemoteError("HTTP 413", status=413)

        async def bulk_get(self, wants: dict[str, list[str]]) -> list[dict[str, Any]]:
            self._check(wants)
            return [{"_id": id, "_rev": rev} for id, revs in wants.items() for rev in revs]

        async def revs_diff(self, query: dict[str, list[str]],
                            ancestors: dict[str, list[str]] | None = None) -> dict[str, list[str]]:
            self._check(query)
            if ancestors is not None:
                ancestors.update({id: ["1-a"] for id in query})
            return {id: revs[:1] for id, revs in query.items()}

    wants = {"a": ["1-a", "2-a"], "b": ["1-b"], "c": ["1-c", "2-c", "3-c"], "d": ["1-d"]}
    docs = asyncio.run(_bulk_get(Refusing(), wants))  # type: ignore[arg-type]
    assert sorted((d["_id"], d["_rev"]) for d in docs) == sorted((i, r) for i, rs in wants.items() for r in rs)
    assert asked == [7, 3, 4, 2, 2]  # the whole once, then halves of its pairs (the whole is not asked again)
    asked.clear()
    small = {"a": ["1-a"], "b": ["1-b"]}
    assert asyncio.run(_bulk_get(Refusing(), small)) == [{"_id": "a", "_rev": "1-a"}, {"_id": "b", "_rev": "1-b"}]
    assert asked == [2]  # one question, as asked
    asked.clear()
    ancestors: dict[str, list[str]] = {}
    missing = asyncio.run(_revs_diff(Refusing(), wants, ancestors))  # type: ignore[arg-type]
    # the parts' answers merged (this fake names the first revision of each id it is asked about, per part)
    assert missing == {"a": ["1-a"], "b": ["1-b"], "c": ["1-c", "3-c"], "d": ["1-d"]}
    assert set(ancestors) == set(wants) and asked == [7, 3, 4, 2, 2]

    class RefusesOne(Refusing):
        def _check(self, query: dict[str, list[str]]) -> None:
            raise RemoteError("HTTP 413", status=413)

    with pytest.raises(RemoteError):  # a single revision refused is an error, not a loop
        asyncio.run(_bulk_get(RefusesOne(), {"a": ["1-a"]}))  # type: ignore[arg-type]
