"""Several processes on one database (issue 17): the first to open it owns it, the others call it over its Unix
socket, and one of them takes over when the owner exits or is killed. Real processes: tests/support/mp_agent.py."""

from __future__ import annotations

import contextlib
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from support.mirrors import call, free_port, wait_until

import MyNoSQL
from MyNoSQL.records.revtree import rev_gen
from MyNoSQL.shared import ClientNode
from MyNoSQL.testing import poll_until

pytestmark = pytest.mark.process

ROOT = Path(__file__).resolve().parents[2]
AGENT = ROOT / "tests" / "support" / "mp_agent.py"
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src")}


class Agent:
    """A child process with the database open, driven one command at a time (see mp_agent.py)."""

    def __init__(self, location: Path, name: str = "db") -> None:
        self.p = subprocess.Popen([sys.executable, str(AGENT), str(location), name], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True, env=ENV)
        self.lines: queue.Queue[str] = queue.Queue()
        self.acks: list[tuple[str, str, int]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        assert self.answer() == "open"

    def _read(self) -> None:
        assert self.p.stdout is not None
        for line in self.p.stdout:
            if not line.endswith("\n"):  # cut by a kill: not acknowledged
                break
            if line.startswith("ack "):
                _, id, rev, i = line.split()
                self.acks.append((id, rev, int(i)))
            elif not line.startswith("conflict "):
                self.lines.put(line)
        self.lines.put("")

    def send(self, *cmd: Any) -> None:
        assert self.p.stdin is not None
        self.p.stdin.write(orjson.dumps(list(cmd)).decode() + "\n")
        self.p.stdin.flush()

    def answer(self, timeout: float = 60.0) -> Any:
        line = self.lines.get(timeout=timeout)
        if not line:
            raise EOFError(f"agent {self.p.pid} exited ({self.p.poll()})")
        msg = orjson.loads(line)
        if "err" in msg:
            raise AssertionError(f"agent {self.p.pid}: {msg['err']}: {msg['msg']}")
        return msg["ok"]

    def ask(self, *cmd: Any) -> Any:
        self.send(*cmd)
        return self.answer()

    def error(self, *cmd: Any) -> str:
        """The name of the error the command raises."""
        self.send(*cmd)
        msg = orjson.loads(self.lines.get(timeout=60))
        assert "err" in msg, msg
        return str(msg["err"])

    def kill(self) -> None:
        self.p.send_signal(signal.SIGKILL)
        self.p.wait(timeout=30)
        self._reader.join(timeout=30)

    def close(self) -> None:
        if self.p.poll() is None:
            with contextlib.suppress(EOFError, BrokenPipeError, queue.Empty):
                self.ask("close")
            self.p.wait(timeout=60)
        self._reader.join(timeout=30)


@pytest.fixture
def agents() -> Any:
    started: list[Agent] = []
    yield started
    for a in started:
        if a.p.poll() is None:
            a.p.kill()
            a.p.wait(timeout=30)


def test_a_second_process_reads_and_writes_while_the_first_has_it_open(tmp_path: Path, agents: list[Agent]) -> None:
    with MyNoSQL.MyNoSQL(tmp_path) as h:
        h.opendb("db")
        b = Agent(tmp_path)
        agents.append(b)
        assert b.ask("role") == "client"
        saved = b.ask("save", {"id": "a", "v": 1})
        assert h.readdoc("a") == saved  # another's write, as soon as its savedoc returned
        assert b.ask("read", "a") == saved  # its own write
        s2 = h.savedoc({**saved, "v": 2})
        assert b.ask("read", "a") == s2  # its cached copy was dropped before h's savedoc returned
        assert b.error("save", saved) == "ConflictError"  # a stale rev, whichever process wrote the newer one
        s3 = b.ask("save", {**s2, "v": 3})
        with pytest.raises(MyNoSQL.ConflictError):
            h.savedoc(s2)
        assert h.readdoc("a") == s3
        fresh = b.ask("save", {"when": "now"})  # an id made by the client
        assert h.readdoc(fresh["id"]) == fresh
        gone = b.ask("delete", "a", s3["rev"])
        assert gone["deleted"]
        with pytest.raises(MyNoSQL.DocumentNotFound):
            h.readdoc("a")
        assert b.error("read", "a") == "DocumentNotFound"
        assert b.ask("dump") == {fresh["id"]: [fresh["rev"], {"when": "now"}]}
        b.close()
        assert h.verify() == []


def test_a_client_appends_its_saves_itself_and_needs_no_answer_from_the_owner(tmp_path: Path,
                                                                             agents: list[Agent]) -> None:
    """A client's save is a frame it appends to the shared log: with the owner process stopped (SIGSTOP), new
    records and updates of them are acknowledged all the same; once it runs again it reads every one of them."""
    owner, b = Agent(tmp_path), Agent(tmp_path)
    agents.extend((owner, b))
    assert [owner.ask("role"), b.ask("role")] == ["owner", "client"]
    first = b.ask("save", {"id": "warm", "v": 0})  # dials and maps the log; the owner shares it
    owner.p.send_signal(signal.SIGSTOP)
    try:
        saved = [b.ask("save", {"id": f"r{i}", "v": i}) for i in range(200)]
        updated = b.ask("save", {**saved[7], "v": "seven"})  # its newest state is in the log: checked there
        assert updated["rev"].startswith("2-")
        assert b.error("save", saved[7]) == "ConflictError"  # a stale rev, refused without the owner
        again = b.ask("save", {**first, "v": 1})
    finally:
        owner.p.send_signal(signal.SIGCONT)
    dump = owner.ask("dump")
    assert {id: rev for id, (rev, _) in dump.items()} == {
        **{d["id"]: d["rev"] for d in saved}, "r7": updated["rev"], "warm": again["rev"]}
    assert dump["r7"][1] == {"v": "seven"}
    assert owner.ask("verify") == []


def test_updates_of_flushed_records_and_of_attachments_go_through_the_owner(tmp_path: Path,
                                                                           agents: list[Agent]) -> None:
    """A record the index has (flushed into the shards) or one with attachments: the client cannot see its state
    in the log, so the owner makes the save; the answer is the same."""
    with MyNoSQL.MyNoSQL(tmp_path) as h:
        h.opendb("db")
        old = h.savedoc({"id": "old", "v": 1})
        h.db.flush()
        withatt = h.savedoc({"id": "att", "v": 1})
        h.putattachment("att", "a.txt", b"hello", "text/plain", rev=withatt["rev"])
        b = Agent(tmp_path)
        agents.append(b)
        new = b.ask("save", {**old, "v": 2})
        assert new["rev"].startswith("2-") and h.readdoc("old") == new
        assert b.error("save", old) == "ConflictError"
        cur = h.readdoc("att")
        att2 = b.ask("save", {**cur, "v": 2})
        assert h.readdoc("att")["rev"] == att2["rev"] and att2["rev"].startswith("3-")
        assert list(h.attachments("att")) == ["a.txt"]  # the revision edited keeps its attachments
        b.close()
        assert h.verify() == []


def test_a_writer_killed_in_the_middle_of_a_frame_leaves_the_log_whole(tmp_path: Path, agents: list[Agent]) -> None:
    """A process killed while it copied a frame leaves bytes past the published end of the log: the next save
    overwrites them (shorter, it leaves some of them after it), and the process that recovers the log after the
    owner is killed finds every acknowledged save and nothing broken."""
    from MyNoSQL.storage.wal import CTL_MAGIC, HEAD, SEGMENT, Control, _segment_name

    owner = Agent(tmp_path)
    agents.append(owner)
    with MyNoSQL.MyNoSQL(tmp_path) as b:
        b.opendb("db")
        assert isinstance(b.db, ClientNode)
        x = b.savedoc({"id": "x", "v": 1})
        assert b.db._c_writer is not None  # it appended the save itself
        folder = tmp_path / "db"
        ctl = Control(folder)
        try:
            assert ctl.get(0) == CTL_MAGIC
            seg, head = ctl.get(SEGMENT), ctl.get(HEAD)
            with open(folder / _segment_name(seg), "r+b") as f:  # the start of a 2,000-byte frame: cut short
                f.seek(head)
                f.write(b"\xd0\x07\x00\x00\xde\xad\xbe\xef" + bytes(range(256)) * 2)
        finally:
            ctl.close()
        y = b.savedoc({"id": "y", "v": 2})
        x2 = b.savedoc({**x, "v": 3})
        assert owner.ask("read", "y") == y and owner.ask("read", "x") == x2
        owner.kill()  # nothing flushed: the log is all there is of x and y
        z = b.savedoc({"id": "z"})  # this process took over: it recovered the log
        assert b.readdoc("x") == x2 and b.readdoc("y") == y
    with MyNoSQL.MyNoSQL(tmp_path) as h:
        h.opendb("db")
        assert h.readdoc("x") == x2 and h.readdoc("y") == y and h.readdoc("z") == z
        assert h.verify() == []


def test_a_second_handle_in_the_same_process_shares_too(tmp_path: Path) -> None:
    with MyNoSQL.MyNoSQL(tmp_path) as a, MyNoSQL.MyNoSQL(tmp_path) as b:
        a.opendb("db")
        b.opendb("db")
        assert isinstance(b.db, ClientNode) and not isinstance(a.db, ClientNode)
        saved = b.savedoc({"id": "k", "v": [1, 2], "t": (1, "x")})  # tagged values travel as they are stored
        assert a.readdoc("k") == saved == b.readdoc("k")
        assert len(b) == 1 and "k" in b and b.find({"v": {"$size": 2}}) == [saved]
        assert [c.id for c in b.changes()] == ["k"] and list(b) == [saved]
        assert b.status()["owner_pid"] == os.getpid()
        assert b.purge("k", [saved["rev"]]) == [saved["rev"]]  # the owner's cache and the client's forget it
        with pytest.raises(MyNoSQL.DocumentNotFound):
            b.readdoc("k")
        with pytest.raises(MyNoSQL.DocumentNotFound):
            a.readdoc("k")


def test_a_client_answers_what_a_node_says_of_itself(tmp_path: Path) -> None:
    """server_url, replication_status, health, security, purged_infos_limit read the owner's (they raised
    AttributeError in a client: the chaos runner's agent asks server_url of every process); storage_stats, the
    owner's store, raises the error naming the owner."""
    port = free_port()
    with MyNoSQL.MyNoSQL(tmp_path) as a, MyNoSQL.MyNoSQL(tmp_path) as b:
        a.opendb("db").setlisten("127.0.0.1", port)
        a.setdbmode("Mirror")
        client = b.opendb("db")
        assert isinstance(client, ClientNode)
        assert client.server_url == a.db.server_url == f"http://127.0.0.1:{port}"
        assert client.known_mirrors() == a.db.known_mirrors()
        assert client.replication_status() == a.db.replication_status()
        assert client.health() is None
        assert client.security == a.db.security and client.purged_infos_limit == a.db.purged_infos_limit
        with pytest.raises(MyNoSQL.MyNoSQLError, match=f"pid {os.getpid()}"):
            client.storage_stats  # noqa: B018
        a.closedb()  # the client takes over: the same calls now answer from its own store
        poll_until(lambda: client._promoted and client.server_url, timeout=30, interval=0.01,
                   what="the client to take over and serve")  # its services start once it owns the database
        assert client.health() is None and client.server_url == f"http://127.0.0.1:{port}"
        assert client.storage_stats is not None and client.replication_status() == {}
    assert client.health() == "closed"


def test_the_asyncio_handle_follows_the_changes_of_other_processes(tmp_path: Path) -> None:
    import asyncio

    from MyNoSQL.aio import AsyncMyNoSQL

    async def main() -> list[str]:
        with MyNoSQL.MyNoSQL(tmp_path) as owner:
            owner.opendb("db")
            async with AsyncMyNoSQL(tmp_path) as db:
                await db.opendb("db")  # a client of the owner
                got: list[str] = []
                owner.savedoc({"id": "before"})
                async for change in db.changes(since=0, live=True):
                    got.append(change.id)
                    if change.id == "before":
                        await asyncio.to_thread(owner.savedoc, {"id": "after"})
                    if len(got) == 2:
                        break
                return got

    assert asyncio.run(asyncio.wait_for(main(), 30)) == ["before", "after"]


def test_a_save_repeated_after_a_takeover_is_not_a_conflict(tmp_path: Path) -> None:
    """What a client does when its owner died during a save: it sends the save again, to the new owner (the dead
    one may have written it). The same save twice is the revision it makes, not a ConflictError."""
    from MyNoSQL import shared
    from MyNoSQL.records.codec import encode_body

    with MyNoSQL.MyNoSQL(tmp_path) as h:
        db = h.opendb("db")
        blob = encode_body({"v": 1})[0]
        first, _ = shared._save(db, "k", None, blob, True, False)
        assert shared._save(db, "k", None, blob, True, True)[0] == first  # a repeat of a creation
        blob2 = encode_body({"v": 2})[0]
        second, _ = shared._save(db, "k", first[0], blob2, False, False)
        assert shared._save(db, "k", first[0], blob2, False, True)[0] == second  # a repeat of an update
        with pytest.raises(MyNoSQL.ConflictError):  # a stale rev that was never this save's is still refused
            shared._save(db, "k", first[0], encode_body({"v": 3})[0], False, True)
        gone = shared._delete(db, "k", second[0], False)
        assert shared._delete(db, "k", second[0], True) == gone


def test_the_owner_closing_hands_the_database_to_a_client(tmp_path: Path, agents: list[Agent]) -> None:
    h = MyNoSQL.MyNoSQL(tmp_path)
    h.opendb("db")
    saved = h.savedoc({"id": "a"})
    b = Agent(tmp_path)
    agents.append(b)
    assert b.ask("watch") is True
    h.closedb()
    assert b.ask("read", "a") == saved
    assert b.ask("role") == "owner"  # it took the lock once the owner released it
    b.ask("save", {"id": "b"})
    poll_until(lambda: b.ask("events") == ["b"], timeout=10, what="b's watch after it took over")
    with MyNoSQL.MyNoSQL(tmp_path) as again:  # and now this process is its client
        again.opendb("db")
        assert isinstance(again.db, ClientNode) and again.readdoc("b")["id"] == "b"


def test_exclusive_keeps_the_database_to_one_process(tmp_path: Path, agents: list[Agent]) -> None:
    b = Agent(tmp_path)
    agents.append(b)
    t0 = time.monotonic()
    with pytest.raises(MyNoSQL.DatabaseLocked, match="open in another process"):
        MyNoSQL.MyNoSQL(tmp_path, options=MyNoSQL.Options(exclusive=True)).opendb("db")
    assert time.monotonic() - t0 < 2.0
    b.close()
    with MyNoSQL.MyNoSQL(tmp_path, options=MyNoSQL.Options(exclusive=True)) as h:
        h.opendb("db")
        t0 = time.monotonic()
        with pytest.raises(MyNoSQL.DatabaseLocked, match="does not share it"):
            MyNoSQL.MyNoSQL(tmp_path).opendb("db")
        assert time.monotonic() - t0 < 3.0


def test_watch_in_one_process_sees_saves_in_another(tmp_path: Path, agents: list[Agent]) -> None:
    with MyNoSQL.MyNoSQL(tmp_path) as h:
        h.opendb("db")
        seen: list[str] = []
        h.watch(lambda c: seen.append(c.id))
        b, c = Agent(tmp_path), Agent(tmp_path)
        agents.extend((b, c))
        assert b.ask("watch") is True
        b.ask("save", {"id": "from-b"})
        # b appended its save to the shared log itself: the owner's follower reads it within milliseconds
        poll_until(lambda: seen == ["from-b"], timeout=10, what="the owner's callback for b's save")
        h.savedoc({"id": "from-owner"})
        c.ask("save", {"id": "from-c"})
        poll_until(lambda: b.ask("events") == ["from-b", "from-owner", "from-c"], timeout=10, what="b's events")
        assert seen == ["from-b", "from-owner", "from-c"]


def test_the_owner_saving_among_other_writers_reports_every_change_once_and_in_order(tmp_path: Path,
                                                                                       agents: list[Agent]) -> None:
    """The owner's own saves while two clients append theirs: the clients' frames are read into the owner's
    memtable a slice at a time, partly after the owner's later saves. Its watch still hears every change once, in
    change order; a changes feed read a bit at a time meanwhile skips none; a stale rev is refused at once."""
    with MyNoSQL.MyNoSQL(tmp_path) as h:
        h.opendb("db")
        seqs: list[int] = []
        h.watch(lambda ch: seqs.append(ch.seq))
        b, c = Agent(tmp_path), Agent(tmp_path)
        agents.extend((b, c))
        b.send("write", 2000, 2000, 1, "b")
        c.send("write", 2000, 2000, 2, "c")
        fed: dict[str, str] = {}
        since = 0

        def read_feed() -> None:
            nonlocal since
            for ch in h.changes(since):
                assert ch.seq > since
                fed[ch.id] = ch.rev
                since = ch.seq

        for i in range(1500):
            h.savedoc({"id": f"o{i}", "i": i})
            if i % 25 == 0:
                read_feed()
        assert b.answer(timeout=120) == "done" and c.answer(timeout=120) == "done"
        read_feed()
        assert fed == {d["id"]: d["rev"] for d in h}  # the feed read incrementally skipped no record
        saves = 1500 + len(b.acks) + len(c.acks)
        poll_until(lambda: len(seqs) >= saves, timeout=30, what="the owner's watch hearing every save")
        assert len(seqs) == saves and seqs == sorted(set(seqs))
        # b updates a record; the owner, with b's rev 1, is refused before it even read b's frame in
        first = b.ask("save", {"id": "x"})
        b.ask("save", {"id": "x", "rev": first["rev"], "v": 2})
        with pytest.raises(MyNoSQL.ConflictError):
            h.savedoc({"id": "x", "rev": first["rev"], "v": 3})
        assert h.readdoc("x")["v"] == 2
        assert h.verify() == []


def test_a_watch_callback_in_the_owner_may_save_while_other_processes_write(tmp_path: Path,
                                                                             agents: list[Agent]) -> None:
    """A callback that saves runs its own change's callbacks after the ones before it (no deadlock, no change
    heard twice or out of order), whether the owner's or another process's save called it."""
    with MyNoSQL.MyNoSQL(tmp_path) as h:
        h.opendb("db")
        heard: list[tuple[int, str]] = []

        def echo(ch: MyNoSQL.Change) -> None:
            heard.append((ch.seq, ch.id))
            if not ch.id.startswith("echo-"):
                h.savedoc({"id": f"echo-{ch.id}"})

        h.watch(echo)
        b = Agent(tmp_path)
        agents.append(b)
        for i in range(20):
            b.ask("save", {"id": f"b{i}"})
            h.savedoc({"id": f"o{i}"})
        want = {f"b{i}" for i in range(20)} | {f"o{i}" for i in range(20)}
        want |= {f"echo-{x}" for x in want}
        poll_until(lambda: {id for _, id in heard} >= want, timeout=30, what="every save and its echo heard")
        assert len(heard) == len(want) == 80
        assert [seq for seq, _ in heard] == sorted(seq for seq, _ in heard)
        assert {d["id"] for d in h} == want


def test_the_owner_killed_a_client_takes_over_and_nothing_acknowledged_is_lost(tmp_path: Path,
                                                                            agents: list[Agent]) -> None:
    owner = Agent(tmp_path)
    c, d = Agent(tmp_path), Agent(tmp_path)
    agents.extend((owner, c, d))
    assert [owner.ask("role"), c.ask("role"), d.ask("role")] == ["owner", "client", "client"]
    assert d.ask("watch") is True
    c.ask("write", 200, 30, 1)
    assert len(c.acks) > 100
    owner.kill()
    after = c.ask("save", {"id": "after"})  # appended to the log: no owner needed for that
    poll_until(lambda: sorted([c.ask("role"), d.ask("role")]) == ["client", "owner"], timeout=30,
               what="c or d taking over")
    last = {id: rev for id, rev, _ in c.acks}
    dump_c, dump_d = c.ask("dump"), d.ask("dump")
    assert dump_c == dump_d
    assert {id: dump_c[id][0] for id in last} == last and dump_c["after"][0] == after["rev"]
    assert d.ask("verify") == []
    poll_until(lambda: "after" in d.ask("events"), timeout=10, what="d's watch after the takeover")


def test_clients_saving_at_once_lose_nothing_when_one_of_them_is_killed(tmp_path: Path,
                                                                         agents: list[Agent]) -> None:
    """Three clients save at once (the owner serves them side by side); one of
    them is killed mid-run: the others go on and finish, and every save acknowledged to any of them is there."""
    owner = Agent(tmp_path)
    writers = [Agent(tmp_path) for _ in range(3)]
    agents.extend((owner, *writers))
    for i, w in enumerate(writers):
        w.send("write", 600, 20, i, f"w{i}-")
    victim = writers[2]
    poll_until(lambda: len(victim.acks) > 100, timeout=60, what="the victim's first saves")
    victim.kill()
    assert [w.answer() for w in writers[:2]] == ["done", "done"]
    assert owner.ask("role") == "owner"
    dump = owner.ask("dump")
    for w in writers[:2]:
        assert len(w.acks) == 600
        assert {id: dump[id][0] for id, _, _ in w.acks} == {id: rev for id, rev, _ in w.acks}
    for id, rev, _ in victim.acks:  # its last save may have been written without its answer arriving
        assert rev_gen(dump[id][0]) >= rev_gen(rev)
    assert owner.ask("verify") == []


def test_replication_runs_in_the_owner_alone_and_moves_when_it_is_killed(tmp_path: Path, agents: list[Agent],
                                                                       mirrors: Any) -> None:
    m = mirrors("db")
    owner = Agent(tmp_path)
    agents.append(owner)
    owner.ask("addpeer", m.url)
    c, d = Agent(tmp_path), Agent(tmp_path)
    agents.extend((c, d))
    assert [owner.ask("syncing"), c.ask("syncing"), d.ask("syncing")] == [True, False, False]
    c.ask("write", 100, 30, 1)

    def on_mirror() -> bool:
        last = {id: rev for id, rev, _ in c.acks}
        return all(call("GET", f"{m.url}/db/{id}")["_rev"] == rev for id, rev in last.items())

    wait_until(on_mirror, what="the first writes on the mirror")
    owner.kill()
    c.ask("write", 100, 30, 2)  # through the takeover

    seen: list[list[bool]] = []

    def one_pusher() -> bool:  # the new owner starts its replication (while it already answers calls)
        seen.append([c.ask("syncing"), d.ask("syncing")])
        return seen[-1].count(True) == 1

    wait_until(one_pusher, what="the replication in the new owner")
    assert [True, True] not in seen  # never two pushers
    wait_until(on_mirror, what="the writes after the takeover on the mirror")
    assert call("GET", f"{m.url}/db")["doc_count"] == len({id for id, _, _ in c.acks})


def owner_pid(location: Path) -> int | None:
    """The process that holds the database's lock (Linux's /proc/locks), or None."""
    ino = os.stat(location / "db" / "LOCK").st_ino
    for line in Path("/proc/locks").read_text().splitlines():
        parts = line.split()
        if "FLOCK" in parts and parts[-3].endswith(f":{ino}"):
            return int(parts[-4])
    return None


@pytest.mark.slow
@pytest.mark.soak
@pytest.mark.skipif(not Path("/proc/locks").exists(), reason="needs Linux's /proc/locks")
def test_writers_and_readers_killed_at_random_lose_no_acknowledged_save(tmp_path: Path, agents: list[Agent]) -> None:
    """4 writer and 2 reader processes on 40 ids (collisions: conflicts are refused), 8 SIGKILLs (every other one
    the owner's, the others of random processes) while they run, each process replaced; then every acknowledged
    save is there, the same from every process, and verify is clean."""
    rnd = random.Random(17)
    writers: list[Agent] = []
    readers: list[Agent] = []
    killed: list[Agent] = []

    def start(n_writers: int, n_readers: int) -> None:
        new = [(Agent(tmp_path), True) for _ in range(n_writers)] + [(Agent(tmp_path), False) for _ in range(n_readers)]
        for a, writes in new:  # all started first, then told to go: they run at the same time
            if writes:
                a.send("write", 1500, 40, rnd.randrange(1 << 30))
                writers.append(a)
            else:
                a.send("readloop", 20000, 40, rnd.randrange(1 << 30))
                readers.append(a)
            agents.append(a)

    def acked() -> int:
        return sum(len(a.acks) for a in writers)

    def running() -> list[Agent]:
        return [a for a in writers + readers if a.p.poll() is None and a not in killed]

    start(4, 2)
    conflicts_seen = False
    for step in range(8):
        base = acked()
        try:
            poll_until(lambda: acked() >= base + 100 or not any(a in writers for a in running()),  # noqa: B023
                       timeout=60, what="progress of the writers")
        except TimeoutError:
            for a in running():  # where each stands, on stderr (faulthandler)
                a.p.send_signal(signal.SIGUSR1)  # faulthandler writes the dump in the signal handler
            raise
        pid = owner_pid(tmp_path) if step % 2 == 0 else None
        victims = [a for a in running() if a.p.pid == pid] or running()
        victim = rnd.choice(victims)
        victim.kill()
        killed.append(victim)
        start(int(victim in writers), int(victim in readers))
    for a in running():
        result = a.answer(timeout=180)  # a reader that saw a revision go back fails here
        assert result == "done" or isinstance(result, int)
        conflicts_seen = conflicts_seen or (a in writers and len(a.acks) < 1500)
    assert conflicts_seen  # the writers did collide
    for a in agents:
        a.close()

    acks = [ack for a in writers for ack in a.acks]
    assert len(acks) > 3000
    p1, p2 = Agent(tmp_path), Agent(tmp_path)
    agents.extend((p1, p2))
    dump = p1.ask("dump")
    assert dump == p2.ask("dump")
    assert p1.ask("verify") == []
    p1.close()
    p2.close()
    with MyNoSQL.MyNoSQL(tmp_path, options=MyNoSQL.Options(exclusive=True)) as h:
        db = h.opendb("db")
        for id, rev, _ in acks:
            state = db.state(id)
            assert state is not None and rev in state.tree, (id, rev)
        best: dict[str, tuple[int, str, int]] = {}
        for id, rev, i in acks:
            if rev_gen(rev) > best.get(id, (0, "", 0))[0]:
                best[id] = (rev_gen(rev), rev, i)
        for id, (gen, rev, i) in best.items():
            cur_rev, body = dump[id]
            assert rev_gen(cur_rev) >= gen  # a save in flight when its writer was killed may have landed after
            if cur_rev == rev:
                assert body["i"] == i
        assert db.verify() == []

