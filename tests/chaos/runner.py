"""Seeded chaos: 2 mirrors and 3 peers as real processes, random histories, then heal and check the promises.

    python tests/chaos/runner.py --runs 20            # seeds 1..20
    python tests/chaos/runner.py --seed 7 --verbose   # replay one seed, printing its history
    python tests/chaos/runner.py --seed 7 --shrink    # look for a shorter history that still fails
    python tests/chaos/runner.py --runs 1000 --jobs 3 --report docs/chaos-1000.md   # seeds in 3 worker processes
    python tests/chaos/runner.py --runs 500 --first 60001 --dbs 3 --attachments     # 2-3 databases, attachments
    python tests/chaos/runner.py --runs 100 --first 70001 --procs 3 --dbs 2 --attachments  # peers of 1-3 processes

A history mixes creates, updates and deletes of a small set of ids (so conflicts happen), partitions of any
link (each peer-mirror and mirror-mirror link goes through its own fault proxy), isolated peers editing the same
record offline, SIGKILL and restart of any node (in the middle of whatever it was doing: a flush, a
replication batch; or at an exact step of a compaction: after the shard append, after the index commit, after
the log is dropped), and clocks that differ by hours.

With ``--dbs N`` every node holds 2..N databases (the seed chooses how many): the mirrors are ``mynosql
serve``'s MirrorService over a folder (serving and pulling each database), the peers open each with its own
handle and replicate each; every operation names its database, and the same ids exist in
every database. With ``--attachments`` the histories also put attachments on records (new ones, replacing one of
the same name, on a record created by it, on a tombstone) and delete them; the bytes are a few blobs of 0 B to
256 KiB (``payload.py``) shared by many records, so the same bytes are stored once and travel again and again.
With ``--procs N`` a peer node is 1..N OS processes (the seed chooses how many for each peer; one peer at least
has N) that open the same folder and databases (``MyNoSQL/shared.py``): the first to open a database owns it
(its store, replication), the others are its clients, and when the owner exits or is killed one of them takes
over. Each process of the node runs the agent. A save or delete of the history goes to a random process of the
node (a dead one starts again first); attachment writes, and the compaction that a ``crash_compacting`` stops,
go to the process that owns the database, since a client cannot make them yet (its attachment calls and
``observe`` raise an error naming the owner's pid): so the histories stay the same and ownership moves under
them. A ``kill`` of such a node SIGKILLs one of its processes, half the time the owner of one of its databases
(a takeover follows) and otherwise any one (owner or client); the killed process starts again at once half the
time (as under a supervisor), else at its next operation. A ``restart`` stops and starts one process
gracefully (an owner hands its databases over). After every acknowledged write another running process of the
node reads the record at once: reading an ancestor of the acknowledged revision (or nothing while it is a live
leaf) is a stale read, counted as a divergence. Mirrors stay one process each.

Then every link heals, every node (every process of it) runs, and once quiet, in every database:

- convergence: both mirrors hold the same records with the same leaves, winner, tombstones and attachments
  (name, digest, length of each leaf's), and every peer's copy of a record it holds has the mirrors' winner with
  the same attachments;
- no acknowledged write lost: every revision a save, delete or attachment write returned is on every mirror
  (leaf or ancestor); an attachment write read back at once has the bytes asked for (the runner's own MD5 of
  them), and every acknowledged revision still a leaf has, on every node holding it, exactly the attachments
  its write left;
- attachment bytes: every attachment of every leaf on a mirror, and of every winner a peer holds (a peer fetches
  from a mirror those it has only the stub of), reads back as bytes whose MD5 is its digest;
- the winner is CouchDB's rule applied to the leaves;
- with ``--procs``: every process of a peer reads (``readdoc``) every record at the winner its node holds;
- replicating again when in step moves nothing;
- every database passes verify.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import json
import multiprocessing
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))

from MyNoSQL.records import revtree  # noqa: E402
from MyNoSQL.replication.oneshot import replicate_once  # noqa: E402
from MyNoSQL.testing import FaultProxy, poll_until  # noqa: E402

try:
    from .payload import BLOBS, NAMES, blob_bytes, digest
except ImportError:  # run as a script: this folder is on sys.path
    from payload import BLOBS, NAMES, blob_bytes, digest  # type: ignore[no-redef]

AGENT = Path(__file__).with_name("agent.py")
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
IDS = [f"r{i}" for i in range(12)]
N_PEERS, N_MIRRORS = 3, 2
COMPACTION_STEPS = ["shards.append", "index.commit_flush", "wal.remove_through"]
DB_NAMES = ["db", "photos", "user_7"]
_DIGESTS: dict[int, tuple[str, int]] = {}


def blob_digest(key: int) -> tuple[str, int]:
    """The runner's own digest and length of blob ``key`` (what a node must give back)."""
    if key not in _DIGESTS:
        data = blob_bytes(key)
        _DIGESTS[key] = (digest(data), len(data))
    return _DIGESTS[key]


def seed_dbs(seed: int, max_dbs: int) -> list[str]:
    """The databases every node of ``seed`` holds: "db" alone, or 2..max_dbs of them (the seed chooses)."""
    if max_dbs <= 1:
        return ["db"]
    rnd = random.Random(seed * 104_729 + 3)
    return DB_NAMES[:rnd.randint(2, min(max_dbs, len(DB_NAMES)))]


def op_db(op: tuple[Any, ...]) -> str:
    """The database an operation names (histories with one database do not name it)."""
    pos = {"save": 4, "delete": 3, "putatt": 5, "delatt": 4, "crash_compacting": 3}.get(op[0])
    return op[pos] if pos is not None and len(op) > pos else "db"


def free_port() -> int:
    """A free port below the ephemeral range: a mirror restarted on its port must not find it taken by the local
    end of some outgoing connection (with several jobs, hundreds of them come and go every second)."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    rnd = random.Random()
    for _ in range(200):
        port = rnd.randrange(10_000, max(10_001, low))
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Proc:
    """One process of a node: an agent (``agent.py``) driven by JSON lines."""

    def __init__(self, node: Node, index: int) -> None:
        self.node, self.index = node, index
        self.name = node.name if len(node.procs_wanted) == 1 else f"{node.name}.{index}"
        self.proc: subprocess.Popen[str] | None = None

    @property
    def stderr_path(self) -> Path:
        return self.node.path.with_name(f"{self.name}.stderr")  # beside the node's folder, kept across restarts

    def stderr_tail(self, lines: int = 15) -> str:
        try:
            return " | ".join(self.stderr_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def start(self) -> None:
        n = self.node
        args = [sys.executable, str(AGENT), str(n.path), ",".join(n.dbs), n.mode, str(n.offset),
                str(n.port), ",".join(n.peer_urls)]
        with open(self.stderr_path, "a") as err:
            self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                                         text=True, env=ENV)
        ready = self._readline(120)  # under a load average of 30+ a mirror once took more than 60 s (seed 70109)
        if not ready.get("ready"):
            raise RuntimeError(f"{self.name} did not start: {ready}")

    def _readline(self, timeout: float) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdout is not None
        import selectors

        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            raise TimeoutError(f"{self.name} did not answer within {timeout} s; its stderr: {self.stderr_tail(5)}")
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(10)
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; its stderr: {self.stderr_tail()}")
        return json.loads(line)  # type: ignore[no-any-return]

    def call(self, op: str, timeout: float = 30, **kw: Any) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps({"op": op, **kw}) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            self.proc.wait(10)
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode} (asked {op}); its stderr: "
                               f"{self.stderr_tail()}") from None
        return self._readline(timeout)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.alive:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)

    def stop(self) -> None:
        if self.alive:
            assert self.proc is not None and self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()


class Node:
    """A node of the history: one process (a mirror, a peer by default), or ``procs`` processes that open the
    same folder and databases (a peer with ``--procs``): the first to open a database owns it, the others are
    its clients (``MyNoSQL/shared.py``)."""

    def __init__(self, name: str, path: Path, mode: str, offset: float, port: int = 0, *,
                 dbs: list[str] | None = None, peer_urls: list[str] | None = None, procs: int = 1) -> None:
        self.name, self.path, self.mode, self.offset, self.port = name, path, mode, offset, port
        self.dbs, self.peer_urls = dbs or ["db"], peer_urls or []
        self.procs_wanted = range(max(1, procs))
        self.procs = [Proc(self, k) for k in self.procs_wanted]

    def stderr_tail(self, lines: int = 15) -> str:
        return " || ".join(f"{p.name}: {p.stderr_tail(lines)}" for p in self.procs)

    def start(self) -> None:
        """Start every process that is not running, one after the other (the first of a fresh node owns)."""
        for p in self.procs:
            if not p.alive:
                p.start()

    def any(self) -> Proc:
        """A running process (the first one); starts the first if none runs."""
        for p in self.procs:
            if p.alive:
                return p
        self.procs[0].start()
        return self.procs[0]

    def call(self, op: str, timeout: float = 30, **kw: Any) -> dict[str, Any]:
        return self.any().call(op, timeout, **kw)

    def owner(self, db: str) -> Proc:
        """The running process that owns ``db`` (after a kill of the owner, once another took it over)."""
        if len(self.procs) == 1:
            return self.any()

        def find() -> Proc | None:
            running = [p for p in self.procs if p.alive] or [self.any()]
            return next((p for p in running if db in p.call("role")["owns"]), None)

        try:
            return poll_until(find, timeout=40, interval=0.05, what=f"a process of {self.name} to own {db}")
        except TimeoutError as exc:
            raise RuntimeError(f"no process of {self.name} owns {db}: {exc}; {self.stderr_tail(5)}") from exc

    @property
    def alive(self) -> bool:
        return any(p.alive for p in self.procs)

    def kill(self) -> None:
        for p in self.procs:
            p.kill()

    def stop(self) -> None:
        for p in reversed(self.procs):  # the clients first: the owner (usually the first) has the least to hand on
            p.stop()


@dataclasses.dataclass
class Stats:
    runs: int = 0
    ops: int = 0
    acked: int = 0
    att_writes: int = 0  # acknowledged attachment writes (put or delete)
    att_reads: int = 0  # attachment bytes read back and checked against their digest, over every node
    faults: dict[str, int] = dataclasses.field(default_factory=dict)
    reads_checked: int = 0  # reads in another process of the node right after an acknowledged write
    divergences: int = 0  # including stale reads
    lost: int = 0
    failures: list[int] = dataclasses.field(default_factory=list)


def make_history(seed: int, n_ops: int, *, dbs: int = 1, attachments: bool = False) -> list[tuple[Any, ...]]:
    if dbs > 1 or attachments:
        return make_history_v2(seed, n_ops, dbs=dbs, attachments=attachments)
    rnd = random.Random(seed)
    links = [f"p{i}-m{j}" for i in range(N_PEERS) for j in range(N_MIRRORS)] + ["m0-m1", "m1-m0"]
    ops: list[tuple[Any, ...]] = []
    for _ in range(n_ops):
        x = rnd.random()
        peer = rnd.randrange(N_PEERS)
        if x < 0.45:
            ops.append(("save", peer, rnd.choice(IDS), rnd.randrange(1000)))
        elif x < 0.55:
            ops.append(("delete", peer, rnd.choice(IDS)))
        elif x < 0.65:
            ops.append(("partition", rnd.choice(links)))
        elif x < 0.72:
            ops.append(("heal", rnd.choice(links)))
        elif x < 0.78:
            ops.append(("isolate", peer))
        elif x < 0.84:
            ops.append(("kill", f"p{peer}"))
        elif x < 0.87:
            ops.append(("kill", f"m{rnd.randrange(N_MIRRORS)}"))
        elif x < 0.93:
            ops.append(("pause", round(rnd.uniform(0.02, 0.3), 3)))
        elif x < 0.96:  # SIGKILL at an exact step of a compaction
            if rnd.random() < 0.6:  # a peer, right after a save, so the compaction has a memtable to flush
                ops.append(("save", peer, rnd.choice(IDS), rnd.randrange(1000)))
                node = f"p{peer}"
            else:
                node = f"m{rnd.randrange(N_MIRRORS)}"
            ops.append(("crash_compacting", node, rnd.choice(COMPACTION_STEPS)))
        else:
            ops.append(("restart", f"p{peer}"))
    return ops


def make_history_v2(seed: int, n_ops: int, *, dbs: int, attachments: bool) -> list[tuple[Any, ...]]:
    """A history over several databases (each operation names one), with attachment writes."""
    rnd = random.Random(seed)
    names = seed_dbs(seed, dbs)
    ids = IDS[:8]  # fewer ids than with one database: concurrent edits of one record stay frequent
    links = [f"p{i}-m{j}" for i in range(N_PEERS) for j in range(N_MIRRORS)] + ["m0-m1", "m1-m0"]
    ops: list[tuple[Any, ...]] = []

    def write(peer: int, db: str) -> tuple[Any, ...]:
        if attachments and rnd.random() < 0.5:
            return ("putatt", peer, rnd.choice(ids), rnd.choice(NAMES), rnd.randrange(len(BLOBS)), db)
        return ("save", peer, rnd.choice(ids), rnd.randrange(1000), db)

    for _ in range(n_ops):
        x = rnd.random()
        peer = rnd.randrange(N_PEERS)
        db = rnd.choice(names)
        if x < 0.42:
            ops.append(write(peer, db))
        elif x < 0.49:
            if attachments and rnd.random() < 0.5:
                ops.append(("delatt", peer, rnd.choice(ids), rnd.choice(NAMES), db))
            else:
                ops.append(("delete", peer, rnd.choice(ids), db))
        elif x < 0.58:
            ops.append(("partition", rnd.choice(links)))
        elif x < 0.65:
            ops.append(("heal", rnd.choice(links)))
        elif x < 0.71:
            ops.append(("isolate", peer))
        elif x < 0.77:
            ops.append(("kill", f"p{peer}"))
        elif x < 0.80:
            ops.append(("kill", f"m{rnd.randrange(N_MIRRORS)}"))
        elif x < 0.88:
            ops.append(("pause", round(rnd.uniform(0.02, 0.3), 3)))
        elif x < 0.92:  # SIGKILL at an exact step of a compaction (of one database; the others too are open)
            if rnd.random() < 0.6:
                ops.append(write(peer, db))
                node = f"p{peer}"
            else:
                node = f"m{rnd.randrange(N_MIRRORS)}"
            ops.append(("crash_compacting", node, rnd.choice(COMPACTION_STEPS), db))
        else:
            ops.append(("restart", f"p{peer}"))
    return ops


def replay_flags(dbs: int, attachments: bool, procs: int = 1) -> str:
    return (f" --dbs {dbs}" if dbs > 1 else "") + (" --attachments" if attachments else "") \
        + (f" --procs {procs}" if procs > 1 else "")


def seed_procs(seed: int, max_procs: int) -> list[int]:
    """How many processes each peer node of ``seed`` runs: 1..max_procs each (the seed chooses), at least one
    peer with ``max_procs`` when that is more than 1."""
    if max_procs <= 1:
        return [1] * N_PEERS
    rnd = random.Random(seed * 6_700_417 + 5)
    counts = [rnd.randint(1, max_procs) for _ in range(N_PEERS)]
    if max(counts) < max_procs:
        counts[rnd.randrange(N_PEERS)] = max_procs
    return counts


def run_seed(seed: int, stats: Stats, *, n_ops: int = 40, verbose: bool = False,
             history: list[tuple[Any, ...]] | None = None, skew: bool = False, dbs: int = 1,
             attachments: bool = False, procs: int = 1) -> list[str]:
    """Run one seeded history; return the problems found (empty: every promise held)."""
    rnd = random.Random(seed * 7919 + 1)
    prnd = random.Random(seed * 15_485_863 + 7)  # which process of a node: apart, so histories stay the same
    n_procs = seed_procs(seed, procs)
    ops = history if history is not None else make_history(seed, n_ops, dbs=dbs, attachments=attachments)
    db_names = seed_dbs(seed, dbs)
    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix=f"mynosql-chaos-{seed}-") as tmp:
        base = Path(tmp)
        names = [*(f"p{i}" for i in range(N_PEERS)), *(f"m{j}" for j in range(N_MIRRORS))]
        offsets = {name: rnd.choice([0, 0, 3 * 3600, -5 * 3600, 86400]) for name in names}
        if skew:  # every node hours away from every other
            offsets = {name: (k - 2) * 7 * 3600.0 for k, name in enumerate(names)}
        mirrors = {f"m{j}": Node(f"m{j}", base / f"m{j}", "Mirror", offsets[f"m{j}"], free_port(), dbs=db_names)
                   for j in range(N_MIRRORS)}
        peers = {f"p{i}": Node(f"p{i}", base / f"p{i}", "Peer", offsets[f"p{i}"], dbs=db_names, procs=n_procs[i])
                 for i in range(N_PEERS)}
        if verbose and procs > 1:
            print("   processes of each peer:", dict(zip(peers, n_procs, strict=True)))
        proxies: dict[str, FaultProxy] = {}
        for i in range(N_PEERS):
            for j in range(N_MIRRORS):
                proxies[f"p{i}-m{j}"] = FaultProxy("127.0.0.1", mirrors[f"m{j}"].port).start()
        proxies["m0-m1"] = FaultProxy("127.0.0.1", mirrors["m1"].port).start()
        proxies["m1-m0"] = FaultProxy("127.0.0.1", mirrors["m0"].port).start()
        mirrors["m0"].peer_urls = [proxies["m0-m1"].url]  # given at every start (a MirrorService's --peer)
        mirrors["m1"].peer_urls = [proxies["m1-m0"].url]
        acked: list[Ack] = []
        try:
            for m in mirrors.values():
                m.start()
            for name, p in peers.items():
                p.start()
                for db in db_names:
                    for j in range(N_MIRRORS):
                        p.call("addpeer", url=proxies[f"{name}-m{j}"].url, db=db)
            for op in ops:
                stats.ops += 1
                kind = op[0]
                if verbose:
                    print("  ", op)
                if kind in ("save", "delete", "putatt", "delatt"):
                    node = peers[f"p{op[1]}"]
                    db = op_db(op)
                    if kind in ("putatt", "delatt"):  # only the owner of a database writes attachments
                        proc = node.owner(db)
                    else:  # any process of the node (a dead one starts again)
                        proc = prnd.choice(node.procs)
                        if not proc.alive:
                            proc.start()
                    if verbose and len(node.procs) > 1:
                        print("      in", proc.name)
                    if kind == "save":
                        ans = proc.call("save", id=op[2], body={"v": op[3], "by": node.name}, db=db)
                    elif kind == "delete":
                        ans = proc.call("delete", id=op[2], db=db)
                    elif kind == "putatt":
                        ans = proc.call("putatt", id=op[2], name=op[3], blob=op[4], db=db)
                    else:
                        ans = proc.call("delatt", id=op[2], name=op[3], db=db)
                    if ans.get("ok"):
                        ack = Ack(proc.name, db, op[2], ans["rev"], ans.get("atts"), op)
                        acked.append(ack)
                        if kind in ("putatt", "delatt"):
                            stats.att_writes += 1
                        problems += ack.check_read_back()
                        others = [p for p in node.procs if p is not proc and p.alive]
                        if others:  # another process reads it at once: never an older revision
                            reader = prnd.choice(others)
                            got = reader.call("readcheck", id=op[2], rev=ans["rev"], db=db)
                            stats.reads_checked += 1
                            if not got.get("ok") or got["stale"]:
                                problems.append(f"stale: [{db}] {reader.name} read {op[2]} at {got} right after "
                                                f"{proc.name} acknowledged {ans['rev']} ({op})")
                else:
                    stats.faults[kind] = stats.faults.get(kind, 0) + 1
                    if kind == "partition":
                        proxies[op[1]].partition()
                    elif kind == "heal":
                        proxies[op[1]].heal()
                    elif kind == "isolate":
                        for j in range(N_MIRRORS):
                            proxies[f"p{op[1]}-m{j}"].partition()
                    elif kind == "kill":
                        node = (peers | mirrors)[op[1]]
                        running = [p for p in node.procs if p.alive]
                        if len(node.procs) > 1 and running:  # one process of several: the owner, or a client
                            # half the time the owner of a database (a takeover follows), else any process;
                            # a history written by hand may say which: ("kill", node, "owner" | "client")
                            owner = op[2] == "owner" if len(op) > 2 else prnd.random() < 0.5
                            victim = node.owner(prnd.choice(db_names)) if owner else prnd.choice(running)
                            if len(op) > 2 and op[2] == "client":
                                victim = prnd.choice([p for p in running if not p.call("role")["owns"]] or running)
                            role = "owner" if victim.call("role")["owns"] else "client"
                            stats.faults[f"kill: a process of several, {role}"] = \
                                stats.faults.get(f"kill: a process of several, {role}", 0) + 1
                            victim.kill()
                            if prnd.random() < 0.5:  # restarted at once (a supervisor), else at its next op
                                victim.start()
                        else:
                            node.kill()
                        if op[1].startswith("m"):
                            node.start()  # a mirror comes back at once (same port); peers on their next op
                    elif kind == "crash_compacting":
                        node = (peers | mirrors)[op[1]]
                        victim = node.owner(op_db(op))  # the process whose store compacts
                        if victim.call("hang_in_compaction", at=op[2], db=op_db(op)).get("hung"):
                            stats.faults["crash_compacting: landed at the step"] = \
                                stats.faults.get("crash_compacting: landed at the step", 0) + 1
                        victim.kill()
                        if op[1].startswith("m"):
                            node.start()
                    elif kind == "restart":  # a graceful stop and start: of one process of a node of several
                        node = peers[op[1]]
                        if len(node.procs) > 1:
                            victim = prnd.choice(node.procs)
                            victim.stop()
                            victim.start()
                        else:
                            node.stop()
                            node.start()
                    elif kind == "pause":  # let background replication interleave: until the links carry
                        pause(proxies, op[1])  # something, for at most op[1] seconds (all may be partitioned)
            stats.acked += len(acked)
            # -- heal everything and wait until quiet ------------------------------------------------------------
            for p in proxies.values():
                p.heal()
            for node in (*mirrors.values(), *peers.values()):
                node.start()  # every process of it that is not running
            problems += settle_and_check(mirrors, peers, acked, stats, db_names)
        except Exception as exc:  # the harness itself failed: report it as a problem of this seed
            problems = [f"harness: {type(exc).__name__}: {exc}"]
        finally:
            for p in proxies.values():
                try:
                    p.stop()
                except RuntimeError as exc:  # a proxy thread slow to stop on a loaded machine: the checks stand
                    print(f"seed {seed}: note: {exc}", file=sys.stderr, flush=True)
            for node in (*peers.values(), *mirrors.values()):
                node.stop()
        if not problems:
            problems = verify_files(base, db_names)
    stats.runs += 1
    stats.divergences += sum(1 for p in problems if p.startswith(("diverged", "stale")))
    stats.lost += sum(1 for p in problems if p.startswith("lost"))
    if problems:
        stats.failures.append(seed)
    return problems


def winner_rule(leaves: dict[str, bool]) -> str:
    return max(leaves, key=lambda r: revtree.rev_key(r, leaves[r]))


def pause(proxies: dict[str, FaultProxy], seconds: float) -> None:
    """Let the background replication run before the next operation: until the proxied links have carried new
    bytes, or ``seconds`` at most (every link may be partitioned: then the time passing is the history)."""
    def carried() -> int:
        return sum(s.bytes_client_to_server + s.bytes_server_to_client for s in (p.stats() for p in proxies.values()))

    before = carried()
    with contextlib.suppress(TimeoutError):
        poll_until(lambda: carried() > before, timeout=seconds, interval=0.01, what="replication traffic")


@dataclasses.dataclass
class Ack:
    """An acknowledged write: which node, database, record and revision; the attachments that revision had when
    read back at once ({name: [digest, length]}; None: not read back, e.g. a tombstone); the operation."""
    node: str
    db: str
    id: str
    rev: str
    atts: dict[str, list[Any]] | None
    op: tuple[Any, ...]

    def check_read_back(self) -> list[str]:
        """An attachment write must have written the bytes asked for (the runner's own MD5 of them)."""
        kind = self.op[0]
        if self.atts is None or kind not in ("putatt", "delatt"):
            return []
        name = self.op[3]
        if kind == "putatt" and self.atts.get(name) != list(blob_digest(self.op[4])):
            return [f"lost: [{self.db}] {self.node}'s {self.op} acknowledged {self.id} {self.rev} but reads back "
                    f"{self.atts.get(name)}, not {list(blob_digest(self.op[4]))}"]
        if kind == "delatt" and name in self.atts:
            return [f"lost: [{self.db}] {self.node}'s {self.op} acknowledged {self.id} {self.rev} but {name!r} is "
                    "still there"]
        return []


def settle_and_check(mirrors: dict[str, Node], peers: dict[str, Node], acked: list[Ack], stats: Stats,
                     dbs: list[str] | None = None, timeout: float = 60.0) -> list[str]:
    dbs = dbs or ["db"]
    problems: list[str] = ["never checked"]

    def in_step() -> bool:
        nonlocal problems
        problems = [p for db in dbs for p in check(mirrors, peers, [a for a in acked if a.db == db], db)]
        return not problems

    with contextlib.suppress(TimeoutError):  # the problems of the last check are reported below
        poll_until(in_step, timeout=timeout, interval=0.2, what="replication to settle")
    if problems:
        return problems
    for db in dbs:
        problems += check_bytes(mirrors, peers, db, stats)
    # replicating again when in step moves nothing
    for db in dbs:
        urls = [f"http://127.0.0.1:{m.port}/{db}" for m in mirrors.values()]
        for a, b in ((urls[0], urls[1]), (urls[1], urls[0])):
            res = replicate_once(a, b, timeout=10)
            if res["docs_written"]:
                problems.append(f"not idempotent: replicating {a} -> {b} again wrote {res['docs_written']}")
    return problems


def check(mirrors: dict[str, Node], peers: dict[str, Node], acked: list[Ack], db: str = "db") -> list[str]:
    """The promises in database ``db`` (``acked``: the writes acknowledged in it)."""
    problems = []
    dumps = {name: m.call("dump", db=db)["docs"] for name, m in mirrors.items()}
    first, second = dumps["m0"], dumps["m1"]

    def shape(docs: dict[str, Any]) -> dict[str, Any]:
        return {k: (v["leaves"], v["atts"]) for k, v in docs.items()}

    if shape(first) != shape(second):
        diff = sorted(k for k in set(first) | set(second)
                      if shape({k: first[k]} if k in first else {}) != shape({k: second[k]} if k in second else {}))
        detail = {k: {m: (dumps[m][k]["leaves"], dumps[m][k]["atts"]) if k in dumps[m] else None for m in dumps}
                  for k in diff[:3]}
        pulls = {name: m.call("status", db=db)["status"]["mirrors"] for name, m in mirrors.items()}
        return [f"diverged: [{db}] mirrors differ on {diff[:5]}: {json.dumps(detail)}; mirror pull states: "
                f"{json.dumps(pulls, default=str)}"]
    for id, d in first.items():
        if d["winner"] != winner_rule(d["leaves"]):
            problems.append(f"diverged: [{db}] {id} winner {d['winner']} is not CouchDB's rule")
        if second[id]["winner"] != d["winner"]:
            problems.append(f"diverged: [{db}] {id} winners differ")
    for a in acked:
        for name, docs in dumps.items():
            if a.id not in docs or a.rev not in docs[a.id]["revs"]:
                problems.append(f"lost: [{db}] {a.node}'s acknowledged {a.id} {a.rev} is not on {name}")
            elif a.atts is not None and a.rev in docs[a.id]["leaves"] \
                    and docs[a.id]["atts"].get(a.rev, {}) != a.atts:
                problems.append(f"lost: [{db}] {a.node}'s acknowledged {a.id} {a.rev} had attachments {a.atts}; "
                                f"{name} has {docs[a.id]['atts'].get(a.rev, {})}")
    for name, p in peers.items():
        if len(p.procs) > 1:  # every process of the node reads what its owner holds
            own = {id: None if d["leaves"][d["winner"]] else d["winner"]
                   for id, d in p.call("dump", db=db)["docs"].items()}
            for proc in p.procs:
                revs = proc.call("readall", db=db)["revs"]
                if revs != own:
                    diff = sorted(k for k in set(revs) | set(own) if revs.get(k, "-") != own.get(k, "-"))
                    problems.append(f"diverged: [{db}] {proc.name} reads {[(k, revs.get(k, '-')) for k in diff[:3]]},"
                                    f" its node holds {[(k, own.get(k, '-')) for k in diff[:3]]}")
        st = p.call("status", db=db)["status"]
        pending = sum(m["pending"] or 0 for m in st["mirrors"].values() if m.get("current"))
        if pending:
            problems.append(f"not quiet: [{db}] {name} has {pending} pending")
        for id, d in p.call("dump", db=db)["docs"].items():
            if id in first and d["winner"] != first[id]["winner"]:
                where = {m: {"seq": docs[id].get("seq"), "leaves": docs[id]["leaves"]} for m, docs in dumps.items()
                         if id in docs}
                problems.append(f"diverged: [{db}] {name} holds {id} at {d['winner']}, mirrors at "
                                f"{first[id]['winner']}; {name}: leaves {d['leaves']}, "
                                f"sync {json.dumps(p.call('sync_state', db=db))}; "
                                f"mirrors: {json.dumps(where)}; "
                                f"{name} status: {json.dumps(st['mirrors'], default=str)}; "
                                f"{name} stderr: {p.stderr_tail(25)}")
            elif id in first and d["atts"].get(d["winner"], {}) != first[id]["atts"].get(d["winner"], {}):
                problems.append(f"diverged: [{db}] {name} holds {id} {d['winner']} with attachments "
                                f"{d['atts'].get(d['winner'], {})}, the mirrors with "
                                f"{first[id]['atts'].get(d['winner'], {})}")
            for a in acked:
                if a.id == id and a.atts is not None and a.rev in d["leaves"] \
                        and d["atts"].get(a.rev, {}) != a.atts:
                    problems.append(f"lost: [{db}] {a.node}'s acknowledged {id} {a.rev} had attachments {a.atts}; "
                                    f"{name} has {d['atts'].get(a.rev, {})}")
    return problems


def check_bytes(mirrors: dict[str, Node], peers: dict[str, Node], db: str, stats: Stats) -> list[str]:
    """Read back the bytes of every attachment of every leaf on the mirrors and of every winner a peer holds
    (fetched from a mirror when it has only the stub): their MD5 must be the digest the record gives."""
    problems = []
    for name, node in (peers | mirrors).items():
        docs = node.call("dump", db=db)["docs"]
        ans = node.owner(db).call("atthash", db=db, winners=name.startswith("p"), timeout=120)
        problems += [f"lost: [{db}] {name} cannot read attachment bytes: {e}" for e in ans["errors"]]
        for id, revs in ans["hashes"].items():
            for rev, hashes in revs.items():
                for att_name, got in hashes.items():
                    stats.att_reads += 1
                    want = docs.get(id, {}).get("atts", {}).get(rev, {}).get(att_name, [None])[0]
                    if got != want:
                        problems.append(f"lost: [{db}] {name}: the bytes of {id} {rev} {att_name!r} hash to {got}, "
                                        f"its digest says {want}")
        expected = sum(len(a) for id, d in docs.items() for rev, a in d["atts"].items()
                       if not d["leaves"].get(rev, True) and (name.startswith("m") or rev == d["winner"]))
        read = sum(len(h) for revs in ans["hashes"].values() for h in revs.values())
        if read + len(ans["errors"]) != expected:
            problems.append(f"harness: [{db}] {name} read {read} attachments of the {expected} it holds")
    return problems


def verify_files(base: Path, dbs: list[str] | None = None) -> list[str]:
    import MyNoSQL

    problems = []
    for d in sorted(base.iterdir()):
        for db in dbs or ["db"]:
            if (d / db).is_dir():
                with MyNoSQL.MyNoSQL(d, options=MyNoSQL.Options(background_sync=False)) as h:
                    h.opendb(db)
                    problems += [f"verify {d.name}/{db}: {p}" for p in h.verify()]
    return problems


def shrink(seed: int, n_ops: int, budget: int = 30, *, dbs: int = 1,
           attachments: bool = False, procs: int = 1) -> list[tuple[Any, ...]]:
    """Delta debugging: drop chunks of the history while the run still fails."""
    ops = make_history(seed, n_ops, dbs=dbs, attachments=attachments)
    chunk = max(1, len(ops) // 2)
    tries = 0
    while chunk >= 1 and tries < budget:
        i = 0
        changed = False
        while i < len(ops) and tries < budget:
            candidate = ops[:i] + ops[i + chunk:]
            tries += 1
            if run_seed(seed, Stats(), history=candidate, dbs=dbs, attachments=attachments, procs=procs):
                ops = candidate
                changed = True
            else:
                i += chunk
        if not changed:
            chunk //= 2
    return ops


def report_markdown(stats: Stats, seconds: float, command: str, *, planned: int | None = None) -> str:
    rows = [("runs executed (seeds)", stats.runs), ("operations", stats.ops),
            *((f"faults injected: {k}", v) for k, v in sorted(stats.faults.items())),
            ("acknowledged writes checked", stats.acked),
            *((("reads in another process right after a write, checked", stats.reads_checked),)
              if stats.reads_checked else ()),
            *((("acknowledged attachment writes (put, delete)", stats.att_writes),
               ("attachments read back and checked by digest (all nodes)", stats.att_reads))
              if stats.att_writes or stats.att_reads else ()),
            ("divergences found (stale reads included)", stats.divergences),
            ("lost writes", stats.lost), ("failed seeds", ", ".join(map(str, sorted(stats.failures))) or "none"),
            ("wall time", f"{seconds:,.0f} s")]
    lines = ["| what | count |", "|---|---:|", *(f"| {k} | {v} |" for k, v in rows)]
    running = planned is not None and stats.runs < planned
    progress = f"**In progress: {stats.runs} of {planned} seeds so far.**\n\n" if running else ""
    return f"{progress}Command: `{command}`\n\n" + "\n".join(lines) + "\n"


def _one_seed(seed: int, n_ops: int, verbose: bool, dbs: int = 1, attachments: bool = False,
              procs: int = 1) -> tuple[int, list[str], dict[str, Any]]:
    """One seed in a worker process: its problems and its own counts (merged by the parent)."""
    stats = Stats()
    problems = run_seed(seed, stats, n_ops=n_ops, verbose=verbose, dbs=dbs, attachments=attachments, procs=procs)
    return seed, problems, dataclasses.asdict(stats)


def _merge(total: Stats, part: dict[str, Any]) -> None:
    for key in ("runs", "ops", "acked", "att_writes", "att_reads", "reads_checked", "divergences", "lost"):
        setattr(total, key, getattr(total, key) + part[key])
    for kind, n in part["faults"].items():
        total.faults[kind] = total.faults.get(kind, 0) + n
    total.failures.extend(part["failures"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--first", type=int, default=1, help="first seed of --runs")
    ap.add_argument("--seed", type=int, default=None, help="replay this one seed")
    ap.add_argument("--ops", type=int, default=40)
    ap.add_argument("--jobs", type=int, default=1, help="seeds run at once, each in its own worker process")
    ap.add_argument("--dbs", type=int, default=1,
                    help="databases on every node: 1 (\"db\"), or up to N (2..N, each seed chooses; at most 3)")
    ap.add_argument("--attachments", action="store_true", help="histories also write and delete attachments")
    ap.add_argument("--procs", type=int, default=1,
                    help="processes of each peer node: 1, or 1..N (each seed chooses, one peer at least N); they "
                         "open the same databases, one owns each and the others are its clients")
    ap.add_argument("--verbose", action="store_true")
    ap.add_argument("--shrink", action="store_true")
    ap.add_argument("--report", type=Path, default=None,
                    help="write the summary table (Markdown) here; rewritten every 25 seeds while running")
    a = ap.parse_args(argv)
    seeds = [a.seed] if a.seed is not None else list(range(a.first, a.first + a.runs))
    command = " ".join(["python tests/chaos/runner.py", *(argv if argv is not None else sys.argv[1:])])
    stats = Stats()
    t0 = time.monotonic()
    # spawn, not fork: a worker must not inherit the parent's threads (fault proxies) or file descriptors
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=max(1, a.jobs), mp_context=ctx) as pool:
        futures = [pool.submit(_one_seed, s, a.ops, a.verbose, a.dbs, a.attachments, a.procs) for s in seeds]
        for fut in concurrent.futures.as_completed(futures):
            try:
                s, problems, part = fut.result()
            except Exception as exc:  # the worker itself failed: a harness error of that seed, the others go on
                s = seeds[futures.index(fut)]
                problems, part = [f"harness: {type(exc).__name__}: {exc}"], dataclasses.asdict(Stats(runs=1))
                part["failures"] = [s]
            _merge(stats, part)
            print(f"seed {s}: {'ok' if not problems else 'FAILED'} ({part['ops']} ops, {part['acked']} acked, "
                  f"{part['att_writes']} attachment writes, {part['att_reads']} attachment reads, "
                  f"{part['reads_checked']} reads checked)", flush=True)
            for p in problems[:10]:
                print("   ", p, flush=True)
            if problems:
                print(f"   replay: python tests/chaos/runner.py --seed {s}{replay_flags(a.dbs, a.attachments, a.procs)}"
                      f"{'' if a.ops == 40 else f' --ops {a.ops}'} --verbose", flush=True)
            if a.report and stats.runs % 25 == 0:
                a.report.write_text(report_markdown(stats, time.monotonic() - t0, command, planned=len(seeds)))
    if a.shrink:
        for s in sorted(stats.failures):
            short = shrink(s, a.ops, dbs=a.dbs, attachments=a.attachments, procs=a.procs)
            print(f"seed {s}: shortest failing history found ({len(short)} ops):")
            for op in short:
                print("     ", op)
    dt = time.monotonic() - t0
    summary = (f"{stats.runs} runs, {stats.ops} operations, {stats.acked} acknowledged writes checked "
               f"({stats.att_writes} attachment writes, {stats.att_reads} attachment reads checked), "
               f"{stats.reads_checked} reads in another process checked, "
               f"faults {json.dumps(stats.faults, sort_keys=True)}, {stats.divergences} divergences, "
               f"{stats.lost} lost writes, failed seeds {sorted(stats.failures)}, {dt:.0f} s")
    print(summary)
    if a.report:
        a.report.write_text(report_markdown(stats, dt, command))
    return 1 if stats.failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
