"""Peers and mirrors in step: real mirror processes on 127.0.0.1, peers in this process."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support.mirrors import ENV, MirrorProcess, free_port, wait_until

import MyNoSQL

FAST = MyNoSQL.Options(flush_docs=200, remote_timeout=5.0, read_timeout=3.0, longpoll=5.0, final_push=5.0)


def http_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def mirror_doc(m: MirrorProcess, id: str) -> dict[str, Any] | None:
    try:
        return http_json(f"{m.url}/{m.name}/{id}?conflicts=true")  # type: ignore[no-any-return]
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise


def two_peers_sharing(m: MirrorProcess, peers: Any, id: str, body: dict[str, Any]) -> tuple[Any, Any, dict[str, Any]]:
    """Peers a and b on mirror ``m``; a saves record ``id`` and it reaches the mirror. Returns (a, b, a's save)."""
    a, b = peers("a"), peers("b")
    a.addpeer(m.url)
    b.addpeer(m.url)
    saved = a.savedoc({"id": id, **body})
    wait_until(lambda: mirror_doc(m, id) is not None, what=f"{id} on the mirror")
    return a, b, saved


@pytest.fixture
def peers(tmp_path: Path) -> Iterator[Callable[[str], MyNoSQL.MyNoSQL]]:
    opened: list[MyNoSQL.MyNoSQL] = []

    def make(tag: str) -> MyNoSQL.MyNoSQL:
        h = MyNoSQL.MyNoSQL(tmp_path / tag, options=FAST)
        h.opendb("db")
        opened.append(h)
        return h

    yield make
    for h in opened:
        h.closedb()


def test_offline_saves_arrive_when_the_mirror_starts(mirrors: Any, peers: Any) -> None:
    port = free_port()
    p = peers("p1")
    p.addpeer(f"http://127.0.0.1:{port}")  # nothing listens there yet
    saved = [p.savedoc({"reading": i}) for i in range(50)]
    wait_until(lambda: p.db.status()["mirrors"][f"http://127.0.0.1:{port}"]["reachable"] is False,
               what="the peer noticing that the mirror is down")
    assert p.db.status()["mirrors"][f"http://127.0.0.1:{port}"]["pending"] == 50
    m = mirrors(port=port)
    wait_until(lambda: http_json(f"{m.url}/db")["doc_count"] == 50, what="50 records on the mirror")
    for s in saved[:5]:
        assert mirror_doc(m, s["id"])["_rev"] == s["rev"]  # type: ignore[index]
    wait_until(lambda: p.db.status()["mirrors"][m.url]["pending"] == 0, what="nothing pending")


def test_second_peer_reads_through_the_mirror_and_sees_updates(mirrors: Any, peers: Any) -> None:
    m = mirrors()
    a, b, rec = two_peers_sharing(m, peers, "shared", {"hp": 10})
    assert "shared" not in b.db._store.cache._lru  # b never held it
    got = b.readdoc("shared")  # fetched from the mirror, stored, returned
    assert got == rec
    assert b.db.state("shared") is not None
    upd = a.savedoc({**rec, "hp": 7})
    wait_until(lambda: b.readdoc("shared")["rev"] == upd["rev"], what="update on the other peer")
    assert b.readdoc("shared")["hp"] == 7
    with pytest.raises(MyNoSQL.DocumentNotFound):
        b.readdoc("never-written")


def test_reads_do_not_hang_when_no_mirror_answers(peers: Any) -> None:
    p = peers("lonely")
    p.addpeer(f"http://127.0.0.1:{free_port()}")
    import time

    t0 = time.monotonic()
    with pytest.raises(MyNoSQL.DocumentNotFound):
        p.readdoc("x")
    assert time.monotonic() - t0 < FAST.read_timeout + 1.0
    p.savedoc({"id": "local"})
    assert p.readdoc("local")["id"] == "local"


def test_two_mirrors_three_peers_converge_and_failover(mirrors: Any, peers: Any) -> None:
    p1, p2 = free_port(), free_port()
    m1 = mirrors(port=p1, peers=[f"http://127.0.0.1:{p2}"], tag="m1")
    m2 = mirrors(port=p2, peers=[f"http://127.0.0.1:{p1}"], tag="m2")
    a, b, c = peers("a"), peers("b"), peers("c")
    a.addpeer(m1.url)
    b.addpeer(m2.url)
    c.addpeer(m1.url)
    ids = []
    for i, p in enumerate((a, b, c)):
        ids += [p.savedoc({"id": f"p{i}-{k}", "v": k})["id"] for k in range(20)]
    for m in (m1, m2):
        wait_until(lambda m=m: http_json(f"{m.url}/db")["doc_count"] == 60, what=f"60 records on {m.url}")
    # every peer learned both mirrors
    wait_until(lambda: len(a.db.peers()) == 2, what="peer a learning the mirror list")
    assert set(a.db.peers()) == {m1.url, m2.url}
    # every peer can read every record
    for p in (a, b, c):
        for id in ids[::7]:
            assert p.readdoc(id)["id"] == id
    # m1 dies: a fails over to m2
    m1.kill()
    rec = a.savedoc({"id": "after-failover", "ok": True})
    wait_until(lambda: mirror_doc(m2, "after-failover") is not None, timeout=30, what="failover to m2")
    assert mirror_doc(m2, "after-failover")["_rev"] == rec["rev"]  # type: ignore[index]
    assert a.db.status()["mirrors"][m2.url]["current"] is True


WRITER = """
import sys, MyNoSQL
h = MyNoSQL.MyNoSQL(sys.argv[1], options=MyNoSQL.Options(final_push=0.1))
h.opendb("db")
h.addpeer(sys.argv[2])
for i in range(int(sys.argv[3])):
    r = h.savedoc({"id": f"w{i}", "i": i})
    print(r["id"], r["rev"], flush=True)
print("done", flush=True)
sys.stdin.read()
"""


def test_sigkilled_peer_pushes_its_saves_after_restart(tmp_path: Path, mirrors: Any) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path / "w"), url, "40"], env=ENV, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    acked = {}
    for line in proc.stdout:
        if line.strip() == "done":
            break
        id, rev = line.split()
        acked[id] = rev
    os.kill(proc.pid, signal.SIGKILL)  # the mirror was never up: nothing was pushed
    proc.wait(timeout=30)
    assert len(acked) == 40
    m = mirrors(port=port)
    h = MyNoSQL.MyNoSQL(tmp_path / "w", options=FAST)
    h.opendb("db")  # the remembered mirror and the durable outbox do the rest
    try:
        wait_until(lambda: http_json(f"{m.url}/db")["doc_count"] == 40, what="40 records pushed after restart")
        for id, rev in acked.items():
            assert mirror_doc(m, id)["_rev"] == rev  # type: ignore[index]
    finally:
        h.closedb()


def test_conflicting_offline_edits_converge_to_one_winner(mirrors: Any, peers: Any) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    a, b = peers("a"), peers("b")
    base = a.savedoc({"id": "hero", "hp": 100})
    # both peers start from the same revision (b gets it by replication later; here by a direct copy)
    state = a.db.state("hero")
    assert state is not None
    b.db.put_replicated("hero", [base["rev"]], False, state.bodies[base["rev"]])
    a.addpeer(url)
    b.addpeer(url)
    ra = a.savedoc({**base, "hp": 90, "by": "a"})  # offline on both sides: the mirror is not up
    rb = b.savedoc({**base, "hp": 80, "by": "b"})
    assert ra["rev"] != rb["rev"] and ra["rev"][:2] == rb["rev"][:2] == "2-"
    m = mirrors(port=port)
    winner = max(ra["rev"], rb["rev"], key=lambda r: r.split("-")[1])
    loser = rb["rev"] if winner == ra["rev"] else ra["rev"]

    def converged(p: MyNoSQL.MyNoSQL) -> bool:
        return p.readdoc("hero")["rev"] == winner and p.conflicts("hero") == [loser]

    wait_until(lambda: (mirror_doc(m, "hero") or {}).get("_conflicts") == [loser], what="conflict on the mirror")
    assert mirror_doc(m, "hero")["_rev"] == winner  # type: ignore[index]
    wait_until(lambda: converged(a) and converged(b), what="both peers agree on winner and conflicts")
    # resolving: delete the loser on one peer; the resolution replicates
    a.deletedoc("hero", loser)
    wait_until(lambda: b.conflicts("hero") == [] and (mirror_doc(m, "hero") or {}).get("_conflicts") is None,
               what="resolution everywhere")


def test_watch_reports_local_and_replicated_changes_and_status(mirrors: Any, peers: Any) -> None:
    m = mirrors()
    a, b = peers("a"), peers("b")
    seen: list[MyNoSQL.Change] = []
    stop = b.watch(seen.append)
    b.addpeer(m.url)
    a.addpeer(m.url)
    mine = b.savedoc({"id": "game-state", "turn": 1})
    assert seen[-1] == MyNoSQL.Change(seen[-1].seq, "game-state", mine["rev"], False)
    wait_until(lambda: mirror_doc(m, "game-state") is not None, what="push")
    theirs = a.readdoc("game-state")
    moved = a.savedoc({**theirs, "turn": 2})  # another player moves
    wait_until(lambda: any(c.rev == moved["rev"] for c in seen), what="a replicated change reported by watch")
    stop()
    b.savedoc({"id": "after-unwatch"})
    assert all(c.id != "after-unwatch" for c in seen)
    st = b.status()
    assert st["mode"] == "Peer" and st["records"] == 2
    info = st["mirrors"][m.url]
    assert info["reachable"] is True and info["last_error"] is None and info["current"] is True
    wait_until(lambda: b.status()["mirrors"][m.url]["pending"] == 0, what="nothing pending")


FORGETFUL = """
import sys, MyNoSQL
h = MyNoSQL.MyNoSQL(sys.argv[1])
h.opendb("db")
h.addpeer(sys.argv[2])
h.savedoc({"id": "kept"})
print("saved", flush=True)
"""  # no closedb: the interpreter must still exit


def test_a_process_that_forgets_closedb_still_exits(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nobody listens: the push keeps failing in the background
    out = subprocess.run([sys.executable, "-c", FORGETFUL, str(tmp_path), url], env=ENV, text=True,
                         capture_output=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "saved", out.stderr
    h = MyNoSQL.MyNoSQL(tmp_path)
    h.opendb("db")
    try:
        assert h.readdoc("kept")["id"] == "kept"  # and the record was safe in the log
    finally:
        h.closedb()


def _requests(m: MirrorProcess, route: str, method: str) -> int:
    """Requests to ``route`` the mirror answered, from its own /_metrics."""
    with urllib.request.urlopen(f"{m.url}/_metrics", timeout=10) as r:
        text = r.read().decode()
    return sum(int(float(line.rsplit(" ", 1)[1])) for line in text.splitlines()
               if line.startswith(f'mynosql_http_requests_total{{route="{route}",method="{method}"'))


def _changes_requests(m: MirrorProcess) -> int:
    """GET /{db}/_changes requests the mirror answered."""
    return _requests(m, "/{db}/_changes", "GET")


def test_a_peer_is_not_woken_by_the_echo_of_its_own_pushes(mirrors: Any, peers: Any) -> None:
    m = mirrors()
    p, other = peers("p"), peers("other")
    p.addpeer(m.url)
    first = p.savedoc({"id": "seed"})
    wait_until(lambda: mirror_doc(m, "seed") is not None, what="the first push")
    wait_until(lambda: p.db.status()["mirrors"][m.url]["pending"] == 0, what="nothing pending")
    before = _changes_requests(m)
    for i in range(12):  # one at a time: each push lands while the peer's longpoll waits
        p.savedoc({"id": f"echo-{i}", "i": i})
        wait_until(lambda i=i: mirror_doc(m, f"echo-{i}") is not None, what=f"push {i}")
    woken = _changes_requests(m) - before  # a longpoll (5 s) that times out may add one
    assert woken <= 2, f"{woken} _changes requests for 12 pushes: the peer was woken by its own writes"
    # a change by someone else still wakes the peer at once, also for a record the peer wrote itself
    other.addpeer(m.url)
    theirs = other.readdoc("seed")
    assert theirs["rev"] == first["rev"]
    moved = other.savedoc({**theirs, "by": "other"})
    wait_until(lambda: p.db.state("seed").winner == moved["rev"], timeout=4.0,  # < the 5 s longpoll
               what="the author seeing another peer's update within one longpoll")


@pytest.mark.parametrize("others", [0, 80], ids=["small-push", "push-with-revs-diff"])
def test_a_record_created_anew_offline_with_a_revision_the_mirror_moved_past_converges(
        mirrors: Any, peers: Any, others: int) -> None:
    """Regression (chaos seed 94028): a peer, offline, creates a record it never held with the same content as its
    first revision on the mirror, which has moved past it (revisions are a hash of parent and content: the same
    revision). Its push sends nothing new (the mirror has that revision) and its poll position is past the
    record's changes, so the peer kept its stale revision for good. The mirror now says which revisions sent to it
    it has moved past (in a small push's _bulk_docs answer, a large one's _revs_diff answer) and the peer asks it
    for their leaves."""
    m = mirrors()
    a, c = peers("a"), peers("c")
    a.addpeer(m.url)
    first = a.savedoc({"id": "r6", "hp": 10})
    wait_until(lambda: mirror_doc(m, "r6") is not None, what="r6 on the mirror")
    later_rev = a.savedoc({**first, "hp": 0})["rev"]
    wait_until(lambda: mirror_doc(m, "r6")["_rev"] == later_rev, what="r6's second revision on the mirror")
    c.savedoc({"id": "c-seed"})  # c holds records: its first poll reads the mirror's feed from the start...
    c.addpeer(m.url)
    # ... past r6's changes, which it skips (it does not hold r6)
    wait_until(lambda: c.db.status()["mirrors"][m.url]["lag"] == 0, what="the peer's poll past r6's changes")
    wait_until(lambda: c.db.status()["mirrors"][m.url]["pending"] == 0, what="nothing pending")
    m.stop()
    for i in range(others):  # more than a small batch: the push asks _revs_diff first
        c.savedoc({"id": f"c-{i}", "i": i})
    anew = c.savedoc({"id": "r6", "hp": 10})
    assert anew["rev"] == first["rev"]  # the same revision, created apart
    m.start()  # its metrics start afresh
    wait_until(lambda: c.db.state("r6").winner == later_rev, what="the peer taking the mirror's later revision of r6")
    wait_until(lambda: c.db.status()["mirrors"][m.url]["pending"] == 0, what="nothing pending")
    assert mirror_doc(m, "r6")["_rev"] == later_rev  # type: ignore[index]
    assert c.db.state("r6").bodies.keys() == {later_rev}  # one leaf: the mirror's
    assert c.readdoc("r6")["hp"] == 0
    assert (_requests(m, "/{db}/_revs_diff", "POST") > 0) == (others > 0)  # the path each case is about


def test_a_download_that_fails_is_retried_not_skipped(mirrors: Any, peers: Any,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression (chaos seeds 11 and 15): the poll position moved past rows whose download then failed."""
    from MyNoSQL.errors import RemoteError
    from MyNoSQL.replication.endpoints import HttpEndpoint

    m = mirrors()
    a, b, mine = two_peers_sharing(m, peers, "shared", {"v": 1})
    theirs = b.readdoc("shared")
    real = HttpEndpoint.bulk_get
    failed: list[bool] = []

    async def fail_once_for_a(self: HttpEndpoint, wants: dict[str, list[str]]) -> list[dict[str, Any]]:
        if self.client == a.db._peer.client_token and not failed:
            failed.append(True)
            raise RemoteError("injected: the link dropped between _changes and _bulk_get")
        return await real(self, wants)

    monkeypatch.setattr(HttpEndpoint, "bulk_get", fail_once_for_a)
    newer = b.savedoc({**theirs, "v": 2})
    wait_until(lambda: bool(failed), what="a's download failing once")
    wait_until(lambda: a.db.state("shared").winner == newer["rev"], timeout=15.0,
               what="a downloading the newer revision after the failure")
    assert a.readdoc("shared")["v"] == 2 and mine["rev"] != newer["rev"]


def test_a_poll_loop_that_ends_by_cancellation_is_restarted(mirrors: Any, peers: Any,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression (chaos seed 504): a poll loop that ended by cancellation left the peer pushing but never polling."""
    from MyNoSQL.replication.peer import PeerSync

    real = PeerSync._poll_loop
    calls: list[int] = []

    async def cancelled_once(self: PeerSync, url: str) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise asyncio.CancelledError  # as if something cancelled the poll task from inside
        await real(self, url)

    monkeypatch.setattr(PeerSync, "_poll_loop", cancelled_once)
    m = mirrors()
    a, b = peers("a"), peers("b")
    a.addpeer(m.url)
    mine = a.savedoc({"id": "shared", "v": 1})
    wait_until(lambda: mirror_doc(m, "shared") is not None, what="a's push")
    b.addpeer(m.url)
    newer = b.savedoc({**b.readdoc("shared"), "v": 2})
    wait_until(lambda: a.db.state("shared").winner == newer["rev"], timeout=15.0,
               what="a polling again and downloading b's update")
    assert mine["rev"] != newer["rev"] and len(calls) >= 2


def test_a_changes_position_past_a_restored_mirror_is_read_again_from_the_start(
        mirrors: Any, caplog: pytest.LogCaptureFixture) -> None:
    import aiohttp

    from MyNoSQL.replication.endpoints import HttpEndpoint

    m = mirrors()
    for i in range(3):
        urllib.request.urlopen(urllib.request.Request(f"{m.url}/db/r{i}", data=b"{}", method="PUT"), timeout=10)

    async def read(since: int) -> tuple[list[dict[str, Any]], Any]:
        async with aiohttp.ClientSession() as session:
            return await HttpEndpoint(session, f"{m.url}/db", timeout=10).changes(since, 100)

    # A position the mirror never gave (it was restored from an older backup, or re-created): the mirror refuses
    # it, and the replicator reads everything again from 0 rather than stopping or skipping anything.
    rows, last = asyncio.run(read(1000))
    assert sorted(r["id"] for r in rows) == ["r0", "r1", "r2"] and last == 3
    assert "restored or re-created" in caplog.text
    rows, last = asyncio.run(read(3))
    assert rows == [] and last == 3
