"""What a mirror tells about itself: ``/_metrics`` (Prometheus text format) and the ``/_dashboard`` data.

Counters live in RAM (since the process started); per-second samples of writes and replication traffic are kept
for the last 10 minutes for the dashboard's chart.
"""

from __future__ import annotations

import collections
import itertools
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .._database import Database

HISTORY = 600  # seconds of per-second samples


class Observer:
    def __init__(self, dbs: dict[str, Database]) -> None:
        self.dbs = dbs
        self.started = time.time()
        self.requests: collections.Counter[tuple[str, str, int]] = collections.Counter()
        self.docs_in = 0  # revisions received by _bulk_docs / PUT
        self.docs_out = 0  # revisions sent by _bulk_get / GET
        self.clients: dict[str, dict[str, Any]] = {}  # recently seen peers and mirrors, by address (+ user)
        self._samples: collections.deque[tuple[int, int, int, int]] = collections.deque(maxlen=HISTORY)
        self._last_seq = {name: db.seq for name, db in dbs.items()}
        self._slow: dict[str, tuple[float, dict[str, Any]]] = {}

    # -- fed by the app ---------------------------------------------------------------------------------------

    def request(self, route: str, method: str, status: int) -> None:
        self.requests[(route, method, status)] += 1

    def client(self, addr: str, user: str | None, db: str, since: Any = None) -> None:
        key = f"{user}@{addr}" if user else addr
        c = self.clients.setdefault(key, {"address": addr, "user": user, "db": db, "first_seen": time.time()})
        c["last_seen"] = time.time()
        if isinstance(since, int):
            c["since"] = since
        if len(self.clients) > 1000:  # keep the busiest recent ones
            for k in sorted(self.clients, key=lambda k: self.clients[k]["last_seen"])[:500]:
                del self.clients[k]

    def tick(self) -> None:
        """Take this second's sample (called every second by the server)."""
        now = int(time.time())
        writes = 0
        for name, db in self.dbs.items():
            if db.closed:
                continue
            seq = db.seq
            writes += max(0, seq - self._last_seq.get(name, seq))
            self._last_seq[name] = seq
        self._samples.append((now, writes, self.docs_in, self.docs_out))

    # -- derived views ----------------------------------------------------------------------------------------

    def _slow_facts(self, name: str, db: Database) -> dict[str, Any]:
        """Facts that need a scan (conflicts, disk), recomputed at most every 30 s."""
        at, facts = self._slow.get(name, (0.0, {}))
        if time.monotonic() - at < 30 and facts:
            return facts
        conflicts = sum(1 for s in db.store.iter_states(0) if s.conflicts())
        files = [p for p in Path(db.path).iterdir() if p.is_file()]
        disk = sum(p.stat().st_size for p in files)
        shards = sum(p.stat().st_size for p in files if p.name.startswith("shard-"))
        raw = db.store.raw_bytes_on_disk()
        facts = {"conflicts": conflicts, "disk_bytes": disk, "shard_bytes": shards,
                 "compression_ratio": round(raw / shards, 2) if shards else None}
        self._slow[name] = (time.monotonic(), facts)
        return facts

    def snapshot(self) -> dict[str, Any]:
        dbs = []
        for name, db in self.dbs.items():
            if db.closed:
                continue
            sync = db.sync
            mirrors = sync.status() if sync else {}
            dbs.append({"name": name, "mode": db.getdbmode(), "records": len(db), "seq": db.seq,
                        **self._slow_facts(name, db), "mirrors": mirrors})
        now = time.time()
        seqs = {name: db.seq for name, db in self.dbs.items() if not db.closed}
        peers = []
        for c in sorted(self.clients.values(), key=lambda c: -c["last_seen"]):
            if now - c["last_seen"] > 600:
                continue
            lag = seqs.get(c["db"], 0) - c["since"] if "since" in c else None
            peers.append({**c, "lag": lag, "last_error": None})
        samples = list(self._samples)
        series = []
        for (_t0, _w0, i0, o0), (t1, w1, i1, o1) in itertools.pairwise(samples):
            series.append({"t": t1, "writes": w1, "docs_in": i1 - i0, "docs_out": o1 - o0})
        return {"uptime": round(now - self.started, 1), "databases": dbs, "peers": peers[:50], "series": series,
                "requests": sum(self.requests.values())}

    def prometheus(self) -> str:
        out: list[str] = []

        def metric(name: str, kind: str, help: str, rows: list[tuple[dict[str, Any], float]]) -> None:
            out.append(f"# HELP {name} {help}")
            out.append(f"# TYPE {name} {kind}")
            for labels, value in rows:
                lab = ",".join(f'{k}="{_esc(v)}"' for k, v in labels.items())
                out.append(f"{name}{{{lab}}} {value}" if lab else f"{name} {value}")

        metric("mynosql_http_requests_total", "counter", "HTTP requests by route, method and status.",
               [({"route": r, "method": m, "status": s}, n) for (r, m, s), n in sorted(self.requests.items())])
        live = [(name, db) for name, db in self.dbs.items() if not db.closed]
        metric("mynosql_records", "gauge", "Records (not deleted).", [({"db": n}, len(db)) for n, db in live])
        metric("mynosql_update_seq", "gauge", "Latest change sequence.", [({"db": n}, db.seq) for n, db in live])
        facts = [(n, self._slow_facts(n, db)) for n, db in live]
        metric("mynosql_conflicts", "gauge", "Records with conflicting revisions.",
               [({"db": n}, f["conflicts"]) for n, f in facts])
        metric("mynosql_disk_bytes", "gauge", "Bytes of the database folder.", [({"db": n}, f["disk_bytes"])
                                                                               for n, f in facts])
        lag_rows: list[tuple[dict[str, Any], float]] = []
        up_rows: list[tuple[dict[str, Any], float]] = []
        for n, db in live:
            for url, st in (db.sync.status() if db.sync else {}).items():
                if st.get("lag") is not None:
                    lag_rows.append(({"db": n, "remote": url}, st["lag"]))
                up_rows.append(({"db": n, "remote": url}, 1 if st.get("reachable") else 0))
        metric("mynosql_replication_lag", "gauge", "Changes of a remote not yet pulled.", lag_rows)
        metric("mynosql_replication_reachable", "gauge", "1 if the remote answered last time.", up_rows)
        metric("mynosql_replication_docs_received_total", "counter", "Revisions received.", [({}, self.docs_in)])
        metric("mynosql_replication_docs_sent_total", "counter", "Revisions sent.", [({}, self.docs_out)])
        st = [(n, db.store.stats) for n, db in live]
        metric("mynosql_compaction_total", "counter", "Flushes of the log into shard blocks.",
               [({"db": n}, s.flushes) for n, s in st])
        metric("mynosql_compaction_seconds_total", "counter", "Time spent packing and committing.",
               [({"db": n}, round(s.seconds, 6)) for n, s in st])
        metric("mynosql_shard_fsync_seconds_total", "counter", "Time spent in shard fsyncs.",
               [({"db": n}, round(s.fsync_total, 6)) for n, s in st])
        metric("mynosql_compaction_errors_total", "counter", "Failed flushes (retried).",
               [({"db": n}, s.errors) for n, s in st])
        return "\n".join(out) + "\n"


def _esc(v: Any) -> str:
    return str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
