"""What a mirror tells about itself: ``/_metrics`` (Prometheus text format) and the ``/_dashboard`` data.

Counters live in RAM (since the process started); per-second samples of writes and replication traffic are kept
for the last 10 minutes for the dashboard's chart. Clients (peers and mirrors pulling from this one) are listed
with how far behind they are and the last error this mirror answered them with (a 4xx/5xx on their requests, a
failed login; not the protocol's ordinary 404/409/412).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..database import Database
from .registry import Databases

HISTORY = 600  # seconds of per-second samples
log = logging.getLogger("MyNoSQL")

# How the log names a refusal that has no answer of its own (so no line on the dashboard).
_REFUSALS = {"max_connections": "refused a connection over the connection limit",
             "max_connections_per_address": "refused a connection over the per-address connection limit",
             "tls_handshake": "closed a connection whose TLS handshake did not complete in time",
             "malformed_http": "answered a malformed HTTP request with 400 (its content is not logged)"}


class RefusalLog:
    """Warnings about refused connections and malformed requests, summarised: the first is logged at once, then
    at most one line every ``interval`` seconds says how many there were since, of what kind, and from where.
    A flood of them costs a line a minute, not a line (or a traceback) each."""

    def __init__(self, interval: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.clock = clock
        self._last: float | None = None  # when the last line was logged
        self._kinds: collections.Counter[str] = collections.Counter()
        self._addresses: collections.Counter[str] = collections.Counter()

    def note(self, kind: str, address: str) -> None:
        now = self.clock()
        if self._last is None or (now - self._last >= self.interval and not self._kinds):
            self._last = now
            log.warning("mirror: %s, from %s (more of these are summarised every %g s)", _REFUSALS.get(kind, kind),
                        address, self.interval)
            return
        self._kinds[kind] += 1
        if len(self._addresses) < 10_000 or address in self._addresses:  # an address scan stays bounded
            self._addresses[address] += 1
        self.flush_due()

    def flush_due(self) -> None:
        """Log the summary if one is due (the server calls this every second)."""
        now = self.clock()
        if not self._kinds or self._last is None or now - self._last < self.interval:
            return
        kinds = "; ".join(f"{n} x {_REFUSALS.get(k, k)}" for k, n in self._kinds.most_common())
        top = ", ".join(f"{a} ({n})" for a, n in self._addresses.most_common(3))
        log.warning("mirror: in the last %.0f s: %s; most from %s", now - self._last, kinds, top)
        self._last = now
        self._kinds.clear()
        self._addresses.clear()


@dataclasses.dataclass(frozen=True)
class _SlowFacts:
    stamp: tuple[int, int, int]  # the database's seq, flushes and collected shards when they were computed
    at: float
    took: float
    conflicts: int
    raw: int


class Observer:
    def __init__(self, dbs: Databases, mirror_status: Callable[[str], dict[str, Any]]) -> None:
        self.dbs = dbs
        self.mirror_status = mirror_status  # database name -> its replication status, by remote
        self.started = time.time()
        self.requests: collections.Counter[tuple[str, str, int]] = collections.Counter()
        self.docs_in = 0  # revisions received by _bulk_docs / PUT (new_edits=false)
        self.docs_out = 0  # revisions sent by _bulk_get / GET ?open_revs
        self.clients: dict[str, dict[str, Any]] = {}  # recently seen peers and mirrors, by address (+ user)
        self._clients_lock = threading.Lock()  # fed on the event loop, read by snapshot() in a worker thread
        # per second: (time, writes, revisions received, revisions sent)
        self._samples: collections.deque[tuple[int, int, int, int]] = collections.deque(maxlen=HISTORY)
        self._last_seq = {name: db.seq for name, db in dbs.open_items()}
        self._last_in = self._last_out = 0
        self._slow: dict[str, _SlowFacts] = {}
        self._slow_lock = threading.Lock()
        self.refusals: collections.Counter[str] = collections.Counter()  # limit name -> requests it refused
        self.refusal_log = RefusalLog()
        self.connections: Callable[[], int] | None = None  # open connections, once the server counts them

    # -- fed by the app ---------------------------------------------------------------------------------------

    def request(self, route: str, method: str, status: int) -> None:
        self.requests[(route, method, status)] += 1

    def refused(self, limit: str, address: str | None = None) -> None:
        """A limit (a :class:`~MyNoSQL.Limits` field name, or ``tls_handshake``, ``malformed_http``) refused
        something (on the event loop). With ``address``, a refusal without an answer of its own: logged,
        summarised."""
        self.refusals[limit] += 1
        if address is not None:
            self.refusal_log.note(limit, address)

    def _client(self, addr: str, user: str | None, db: str | None) -> dict[str, Any]:
        """The entry of a client (created if new); call with the lock held."""
        key = f"{user}@{addr}" if user else addr
        now = time.time()
        c = self.clients.get(key)
        if c is None:
            if len(self.clients) >= 1000:  # keep the most recently seen ones
                for k in sorted(self.clients, key=lambda k: self.clients[k]["last_seen"])[:500]:
                    del self.clients[k]
            c = self.clients[key] = {"address": addr, "user": user, "db": db, "first_seen": now,
                                     "last_error": None, "last_error_at": None, "errors": 0}
        c["last_seen"] = now
        if db is not None:
            c["db"] = db
        return c

    def client(self, addr: str, user: str | None, db: str, since: Any = None) -> None:
        """A client read the changes feed of ``db`` since ``since`` (how far behind it is: its lag)."""
        with self._clients_lock:
            c = self._client(addr, user, db)
            if isinstance(since, int):
                c["since"] = since

    def error(self, addr: str, user: str | None, db: str | None, what: str) -> None:
        """This mirror answered a client with an error (``what``: status, error and reason, method and route)."""
        with self._clients_lock:
            c = self._client(addr, user, db)
            c["last_error"] = what
            c["last_error_at"] = c["last_seen"]
            c["errors"] += 1

    def tick(self) -> None:
        """Take this second's sample (called every second by the server)."""
        now = int(time.time())
        writes = 0
        for name, db in self.dbs.open_items():
            seq = db.seq
            writes += max(0, seq - self._last_seq.get(name, seq))
            self._last_seq[name] = seq
        self.refusal_log.flush_due()
        docs_in, docs_out = self.docs_in, self.docs_out
        self._samples.append((now, writes, docs_in - self._last_in, docs_out - self._last_out))
        self._last_in, self._last_out = docs_in, docs_out

    # -- derived views ----------------------------------------------------------------------------------------

    def _slow_facts(self, name: str, db: Database) -> dict[str, Any]:
        """Facts about a database; those that need a scan (conflicts, the size before compression) are kept until
        the database changes, then recomputed at most every 2 s (or 10 times as long as the last scan took)."""
        stats = db.storage_stats
        stamp = (db.seq, stats.flushes, stats.gc_shards)
        with self._slow_lock:  # a /_metrics scrape and a dashboard refresh at once scan once
            cached = self._slow.get(name)
            now = time.monotonic()
            if cached is None or (cached.stamp != stamp and now - cached.at >= max(2.0, 10 * cached.took)):
                conflicts = sum(1 for _ in db.conflicted())
                raw = db.raw_bytes_on_disk()
                cached = self._slow[name] = _SlowFacts(stamp, now, time.monotonic() - now, conflicts, raw)
        files = [p for p in Path(db.path).iterdir() if p.is_file()]  # a handful of files: always fresh
        disk = sum(p.stat().st_size for p in files)
        shards = sum(p.stat().st_size for p in files if p.name.startswith("shard-"))
        return {"conflicts": cached.conflicts, "disk_bytes": disk, "shard_bytes": shards,
                "compression_ratio": round(cached.raw / shards, 2) if shards and cached.raw else None}

    def snapshot(self) -> dict[str, Any]:
        dbs = []
        for name, db in self.dbs.open_items():
            mirrors = self.mirror_status(name)
            dbs.append({"name": name, "mode": db.getdbmode(), "records": len(db), "seq": db.seq,
                        **self._slow_facts(name, db), "mirrors": mirrors})
        now = time.time()
        seqs = {name: db.seq for name, db in self.dbs.open_items()}
        with self._clients_lock:
            clients = [dict(c) for c in self.clients.values()]
        peers = []
        for c in sorted(clients, key=lambda c: -c["last_seen"]):
            if now - c["last_seen"] > 600:
                continue
            lag = max(0, seqs.get(c["db"], 0) - c["since"]) if "since" in c else None
            peers.append({**c, "lag": lag})
        series = [{"t": t, "writes": w, "docs_in": i, "docs_out": o} for t, w, i, o in self._samples]
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
        metric("mynosql_limit_refusals_total", "counter",
               "Requests and connections a limit refused, by limit (docs/security.md).",
               [({"limit": k}, n) for k, n in sorted(self.refusals.items())])
        if self.connections is not None:
            metric("mynosql_connections", "gauge", "Open client connections (TLS handshakes included).",
                   [({}, self.connections())])
        live = self.dbs.open_items()
        metric("mynosql_healthy", "gauge", "1 if the database is open and its compactor works (as /_up).",
               [({"db": n}, 0 if db.health() else 1) for n, db in live])
        metric("mynosql_records", "gauge", "Records (not deleted).", [({"db": n}, len(db)) for n, db in live])
        metric("mynosql_update_seq", "gauge", "Latest change sequence.", [({"db": n}, db.seq) for n, db in live])
        facts = [(n, self._slow_facts(n, db)) for n, db in live]
        metric("mynosql_conflicts", "gauge", "Records with conflicting revisions.",
               [({"db": n}, f["conflicts"]) for n, f in facts])
        metric("mynosql_disk_bytes", "gauge", "Bytes of the database folder.", [({"db": n}, f["disk_bytes"])
                                                                               for n, f in facts])
        lag_rows: list[tuple[dict[str, Any], float]] = []
        up_rows: list[tuple[dict[str, Any], float]] = []
        fail_rows: list[tuple[dict[str, Any], float]] = []
        for n, _db in live:
            for url, st in self.mirror_status(n).items():
                labels = {"db": n, "remote": url}
                if st.get("lag") is not None:
                    lag_rows.append((labels, st["lag"]))
                up_rows.append((labels, 1 if st.get("reachable") else 0))
                fail_rows.append((labels, st.get("failures", 0)))
        metric("mynosql_replication_lag", "gauge",
               "Changes of a remote mirror not pulled yet (change sequence numbers; as last heard from it).", lag_rows)
        metric("mynosql_replication_reachable", "gauge", "1 if the remote answered last time.", up_rows)
        metric("mynosql_replication_failures", "gauge", "Failed attempts to reach a remote since its last success.",
               fail_rows)
        metric("mynosql_replication_docs_received_total", "counter", "Revisions received.", [({}, self.docs_in)])
        metric("mynosql_replication_docs_sent_total", "counter", "Revisions sent.", [({}, self.docs_out)])
        st = [(n, db.storage_stats) for n, db in live]
        metric("mynosql_compaction_total", "counter", "Flushes of the log into shard blocks.",
               [({"db": n}, s.flushes) for n, s in st])
        metric("mynosql_compaction_seconds_total", "counter", "Time spent packing and committing.",
               [({"db": n}, round(s.seconds, 6)) for n, s in st])
        metric("mynosql_compaction_errors_total", "counter", "Failed flushes (retried).",
               [({"db": n}, s.errors) for n, s in st])
        metric("mynosql_shard_fsyncs_total", "counter", "Shard fsyncs (one per shard a flush appends to).",
               [({"db": n}, s.fsyncs) for n, s in st])
        metric("mynosql_shard_fsync_seconds_total", "counter", "Time spent appending blocks to shards and fsyncing.",
               [({"db": n}, round(s.fsync_total, 6)) for n, s in st])
        metric("mynosql_wal_fsyncs_total", "counter",
               "Syncs of the write-ahead log: group commits and segment syncs (durability=power).",
               [({"db": n}, s.wal.count) for n, s in st])
        metric("mynosql_wal_fsync_seconds_total", "counter", "Time spent in syncs of the write-ahead log.",
               [({"db": n}, round(s.wal.seconds, 6)) for n, s in st])
        return "\n".join(out) + "\n"


def _esc(v: Any) -> str:
    return str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
