"""Seeded chaos: 2 mirrors and 3 peers as real processes, random histories, then heal and check the promises.

    python tests/chaos/runner.py --runs 20            # seeds 1..20
    python tests/chaos/runner.py --seed 7 --verbose   # replay one seed, printing its history
    python tests/chaos/runner.py --seed 7 --shrink    # look for a shorter history that still fails
    python tests/chaos/runner.py --runs 1000 --jobs 3 --report docs/chaos-1000.md   # seeds in 3 worker processes

A history mixes creates, updates and deletes of a small set of ids (so conflicts happen), partitions of any
link (each peer-mirror and mirror-mirror link goes through its own fault proxy), isolated peers editing the same
record offline, SIGKILL and restart of any node (in the middle of whatever it was doing: a flush, a
replication batch; or at an exact step of a compaction: after the shard append, after the index commit, after
the log is dropped), and clocks that differ by hours. Then every link heals, every node runs, and once quiet:

- convergence: both mirrors hold the same records with the same leaves, winner and tombstones, and every peer's
  copy of a record it holds has the mirrors' winner;
- no acknowledged write lost: every revision a save or delete returned is on every mirror (leaf or ancestor);
- the winner is CouchDB's rule applied to the leaves;
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

AGENT = Path(__file__).with_name("agent.py")
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
IDS = [f"r{i}" for i in range(12)]
N_PEERS, N_MIRRORS = 3, 2
COMPACTION_STEPS = ["shards.append", "index.commit_flush", "wal.remove_through"]


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


class Node:
    def __init__(self, name: str, path: Path, mode: str, offset: float, port: int = 0) -> None:
        self.name, self.path, self.mode, self.offset, self.port = name, path, mode, offset, port
        self.proc: subprocess.Popen[str] | None = None

    @property
    def stderr_path(self) -> Path:
        return self.path.with_name(f"{self.name}.stderr")  # beside the node's folder, kept across restarts

    def stderr_tail(self, lines: int = 15) -> str:
        try:
            return " | ".join(self.stderr_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def start(self) -> None:
        args = [sys.executable, str(AGENT), str(self.path), "db", self.mode, str(self.offset), str(self.port)]
        with open(self.stderr_path, "a") as err:
            self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                                         text=True, env=ENV)
        ready = self._readline(60)
        if not ready.get("ready"):
            raise RuntimeError(f"{self.name} did not start: {ready}")

    def _readline(self, timeout: float) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdout is not None
        import selectors

        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            raise TimeoutError(f"{self.name} did not answer within {timeout} s")
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(10)
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; its stderr: {self.stderr_tail()}")
        return json.loads(line)  # type: ignore[no-any-return]

    def call(self, op: str, timeout: float = 30, **kw: Any) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"op": op, **kw}) + "\n")
        self.proc.stdin.flush()
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


@dataclasses.dataclass
class Stats:
    runs: int = 0
    ops: int = 0
    acked: int = 0
    faults: dict[str, int] = dataclasses.field(default_factory=dict)
    divergences: int = 0
    lost: int = 0
    failures: list[int] = dataclasses.field(default_factory=list)


def make_history(seed: int, n_ops: int) -> list[tuple[Any, ...]]:
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


def run_seed(seed: int, stats: Stats, *, n_ops: int = 40, verbose: bool = False,
             history: list[tuple[Any, ...]] | None = None, skew: bool = False) -> list[str]:
    """Run one seeded history; return the problems found (empty: every promise held)."""
    rnd = random.Random(seed * 7919 + 1)
    ops = history if history is not None else make_history(seed, n_ops)
    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix=f"mynosql-chaos-{seed}-") as tmp:
        base = Path(tmp)
        names = [*(f"p{i}" for i in range(N_PEERS)), *(f"m{j}" for j in range(N_MIRRORS))]
        offsets = {name: rnd.choice([0, 0, 3 * 3600, -5 * 3600, 86400]) for name in names}
        if skew:  # every node hours away from every other
            offsets = {name: (k - 2) * 7 * 3600.0 for k, name in enumerate(names)}
        mirrors = {f"m{j}": Node(f"m{j}", base / f"m{j}", "Mirror", offsets[f"m{j}"], free_port())
                   for j in range(N_MIRRORS)}
        peers = {f"p{i}": Node(f"p{i}", base / f"p{i}", "Peer", offsets[f"p{i}"]) for i in range(N_PEERS)}
        proxies: dict[str, FaultProxy] = {}
        for i in range(N_PEERS):
            for j in range(N_MIRRORS):
                proxies[f"p{i}-m{j}"] = FaultProxy("127.0.0.1", mirrors[f"m{j}"].port).start()
        proxies["m0-m1"] = FaultProxy("127.0.0.1", mirrors["m1"].port).start()
        proxies["m1-m0"] = FaultProxy("127.0.0.1", mirrors["m0"].port).start()
        acked: list[tuple[str, str, str]] = []
        try:
            for m in mirrors.values():
                m.start()
            mirrors["m0"].call("addpeer", url=proxies["m0-m1"].url)
            mirrors["m1"].call("addpeer", url=proxies["m1-m0"].url)
            for name, p in peers.items():
                p.start()
                for j in range(N_MIRRORS):
                    p.call("addpeer", url=proxies[f"{name}-m{j}"].url)
            for op in ops:
                stats.ops += 1
                kind = op[0]
                if verbose:
                    print("  ", op)
                if kind in ("save", "delete"):
                    node = peers[f"p{op[1]}"]
                    if not node.alive:
                        node.start()
                    ans = node.call("save", id=op[2], body={"v": op[3], "by": node.name}) if kind == "save" \
                        else node.call("delete", id=op[2])
                    if ans.get("ok"):
                        acked.append((node.name, op[2], ans["rev"]))
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
                        node.kill()
                        if op[1].startswith("m"):
                            node.start()  # a mirror comes back at once (same port); peers on their next op
                    elif kind == "crash_compacting":
                        node = (peers | mirrors)[op[1]]
                        if not node.alive:
                            node.start()
                        if node.call("hang_in_compaction", at=op[2]).get("hung"):
                            stats.faults["crash_compacting: landed at the step"] = \
                                stats.faults.get("crash_compacting: landed at the step", 0) + 1
                        node.kill()
                        if op[1].startswith("m"):
                            node.start()
                    elif kind == "restart":
                        node = peers[op[1]]
                        node.stop()
                        node.start()
                    elif kind == "pause":  # let background replication interleave: until the links carry
                        pause(proxies, op[1])  # something, for at most op[1] seconds (all may be partitioned)
            stats.acked += len(acked)
            # -- heal everything and wait until quiet ------------------------------------------------------------
            for p in proxies.values():
                p.heal()
            for node in (*mirrors.values(), *peers.values()):
                if not node.alive:
                    node.start()
            problems = settle_and_check(mirrors, peers, acked, stats)
        except Exception as exc:  # the harness itself failed: report it as a problem of this seed
            problems = [f"harness: {type(exc).__name__}: {exc}"]
        finally:
            for p in proxies.values():
                p.stop()
            for node in (*peers.values(), *mirrors.values()):
                node.stop()
        if not problems:
            problems = verify_files(base)
    stats.runs += 1
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


def settle_and_check(mirrors: dict[str, Node], peers: dict[str, Node], acked: list[tuple[str, str, str]],
                     stats: Stats, timeout: float = 60.0) -> list[str]:
    problems: list[str] = ["never checked"]

    def in_step() -> bool:
        nonlocal problems
        problems = check(mirrors, peers, acked)
        return not problems

    with contextlib.suppress(TimeoutError):  # the problems of the last check are reported below
        poll_until(in_step, timeout=timeout, interval=0.2, what="replication to settle")
    if problems:
        stats.divergences += sum(1 for p in problems if p.startswith("diverged"))
        stats.lost += sum(1 for p in problems if p.startswith("lost"))
        return problems
    # replicating again when in step moves nothing
    urls = [f"http://127.0.0.1:{m.port}/db" for m in mirrors.values()]
    for a, b in ((urls[0], urls[1]), (urls[1], urls[0])):
        res = replicate_once(a, b, timeout=10)
        if res["docs_written"]:
            problems.append(f"not idempotent: replicating {a} -> {b} again wrote {res['docs_written']}")
    return problems


def check(mirrors: dict[str, Node], peers: dict[str, Node], acked: list[tuple[str, str, str]]) -> list[str]:
    problems = []
    dumps = {name: m.call("dump")["docs"] for name, m in mirrors.items()}
    first, second = dumps["m0"], dumps["m1"]
    if {k: v["leaves"] for k, v in first.items()} != {k: v["leaves"] for k, v in second.items()}:
        diff = sorted(k for k in set(first) | set(second) if first.get(k, {}).get("leaves")
                      != second.get(k, {}).get("leaves"))
        detail = {k: {"m0": first.get(k, {}).get("leaves"), "m1": second.get(k, {}).get("leaves")} for k in diff[:3]}
        pulls = {name: m.call("status")["status"]["mirrors"] for name, m in mirrors.items()}
        return [f"diverged: mirrors differ on {diff[:5]}: {json.dumps(detail)}; mirror pull states: "
                f"{json.dumps(pulls, default=str)}"]
    for id, d in first.items():
        if d["winner"] != winner_rule(d["leaves"]):
            problems.append(f"diverged: {id} winner {d['winner']} is not CouchDB's rule")
        if second[id]["winner"] != d["winner"]:
            problems.append(f"diverged: {id} winners differ")
    for peer, id, rev in acked:
        for name, docs in dumps.items():
            if id not in docs or rev not in docs[id]["revs"]:
                problems.append(f"lost: {peer}'s acknowledged {id} {rev} is not on {name}")
    for name, p in peers.items():
        st = p.call("status")["status"]
        pending = sum(m["pending"] or 0 for m in st["mirrors"].values() if m.get("current"))
        if pending:
            problems.append(f"not quiet: {name} has {pending} pending")
        for id, d in p.call("dump")["docs"].items():
            if id in first and d["winner"] != first[id]["winner"]:
                where = {m: {"seq": docs[id].get("seq"), "leaves": docs[id]["leaves"]} for m, docs in dumps.items()
                         if id in docs}
                problems.append(f"diverged: {name} holds {id} at {d['winner']}, mirrors at {first[id]['winner']}; "
                                f"{name}: leaves {d['leaves']}, sync {json.dumps(p.call('sync_state'))}; "
                                f"mirrors: {json.dumps(where)}; "
                                f"{name} status: {json.dumps(st['mirrors'], default=str)}; "
                                f"{name} stderr: {p.stderr_tail(25)}")
    return problems


def verify_files(base: Path) -> list[str]:
    import MyNoSQL

    problems = []
    for d in sorted(base.iterdir()):
        if (d / "db").is_dir():
            with MyNoSQL.MyNoSQL(d, options=MyNoSQL.Options(background_sync=False)) as h:
                h.opendb("db")
                problems += [f"verify {d.name}: {p}" for p in h.verify()]
    return problems


def shrink(seed: int, n_ops: int, budget: int = 30) -> list[tuple[Any, ...]]:
    """Delta debugging: drop chunks of the history while the run still fails."""
    ops = make_history(seed, n_ops)
    chunk = max(1, len(ops) // 2)
    tries = 0
    while chunk >= 1 and tries < budget:
        i = 0
        changed = False
        while i < len(ops) and tries < budget:
            candidate = ops[:i] + ops[i + chunk:]
            tries += 1
            if run_seed(seed, Stats(), history=candidate):
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
            ("acknowledged writes checked", stats.acked), ("divergences found", stats.divergences),
            ("lost writes", stats.lost), ("failed seeds", ", ".join(map(str, sorted(stats.failures))) or "none"),
            ("wall time", f"{seconds:,.0f} s")]
    lines = ["| what | count |", "|---|---:|", *(f"| {k} | {v} |" for k, v in rows)]
    running = planned is not None and stats.runs < planned
    progress = f"**In progress: {stats.runs} of {planned} seeds so far.**\n\n" if running else ""
    return f"{progress}Command: `{command}`\n\n" + "\n".join(lines) + "\n"


def _one_seed(seed: int, n_ops: int, verbose: bool) -> tuple[int, list[str], dict[str, Any]]:
    """One seed in a worker process: its problems and its own counts (merged by the parent)."""
    stats = Stats()
    problems = run_seed(seed, stats, n_ops=n_ops, verbose=verbose)
    return seed, problems, dataclasses.asdict(stats)


def _merge(total: Stats, part: dict[str, Any]) -> None:
    for key in ("runs", "ops", "acked", "divergences", "lost"):
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
        futures = [pool.submit(_one_seed, s, a.ops, a.verbose) for s in seeds]
        for fut in concurrent.futures.as_completed(futures):
            s, problems, part = fut.result()
            _merge(stats, part)
            print(f"seed {s}: {'ok' if not problems else 'FAILED'}", flush=True)
            for p in problems[:10]:
                print("   ", p, flush=True)
            if problems:
                print(f"   replay: python tests/chaos/runner.py --seed {s} --verbose", flush=True)
            if a.report and stats.runs % 25 == 0:
                a.report.write_text(report_markdown(stats, time.monotonic() - t0, command, planned=len(seeds)))
    if a.shrink:
        for s in sorted(stats.failures):
            short = shrink(s, a.ops)
            print(f"seed {s}: shortest failing history found ({len(short)} ops):")
            for op in short:
                print("     ", op)
    dt = time.monotonic() - t0
    summary = (f"{stats.runs} runs, {stats.ops} operations, {stats.acked} acknowledged writes checked, "
               f"faults {json.dumps(stats.faults, sort_keys=True)}, {stats.divergences} divergences, "
               f"{stats.lost} lost writes, failed seeds {sorted(stats.failures)}, {dt:.0f} s")
    print(summary)
    if a.report:
        a.report.write_text(report_markdown(stats, dt, command))
    return 1 if stats.failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
