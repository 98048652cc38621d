"""A node of the chaos runner: a MyNoSQL peer (or mirror) in its own process, driven by JSON lines on stdin.

Usage: python agent.py PATH DBNAMES MODE CLOCK_OFFSET_SECONDS [PORT [PEER_URLS]]
DBNAMES: one database name, or several separated by commas. A peer opens each with its own handle (and
replicates each). A mirror of one database is a database that serves itself (``setdbmode("Mirror")``); a
mirror of several is ``mynosql serve``'s :class:`MirrorService` over the folder PATH, pulling every database
from PEER_URLS (comma-separated server URLs of the other mirrors).
Commands (one JSON object a line; "db" names the database, the first one when absent) and answers (one line):
  {"op": "save", "id": I, "body": {...}}      -> {"ok": true, "rev": R, "atts": A} | {"ok": false, "error": E}
  {"op": "delete", "id": I}                   -> {"ok": true, "rev": R} | {"ok": false, "error": E}
  {"op": "putatt", "id": I, "name": N, "blob": K}  -> {"ok": true, "rev": R, "atts": A} (blob K of payload.py)
  {"op": "delatt", "id": I, "name": N}        -> {"ok": true, "rev": R, "atts": A} | {"ok": false, "error": E}
      A: the attachments of the new revision, {name: [digest, length]} (None if it could not be read back)
  {"op": "addpeer", "url": U}                 -> {"ok": true}
  {"op": "read", "id": I}                     -> {"ok": true, "rev": R} | {"ok": false, "error": E}
  {"op": "dump"}      -> {"ok": true, "docs": {id: {"winner": R, "leaves": {rev: deleted}, "revs": [...],
                                                    "atts": {leaf: {name: [digest, length]}}}}}
  {"op": "atthash", "winners": bool}          -> {"ok": true, "hashes": {id: {rev: {name: digest}}}, "errors": [...]}
      reads the bytes of every attachment of every live leaf (only the winners with "winners": a Peer then
      fetches from a mirror those it has only the stub of) and gives the MD5 digest of what it read
  {"op": "status"}                            -> {"ok": true, "status": ...}
  {"op": "role"}                              -> {"ok": true, "pid": P, "owns": [names of the databases it owns]}
      a node may be several processes opening the same databases (the runner's --procs): the first to open a
      database owns it, the others are its clients, and one of them takes over when the owner goes away
  {"op": "readcheck", "id": I, "rev": R}      -> {"ok": true, "rev": what readdoc gives here, "stale": bool}
      after another process of the node acknowledged R: stale if the read gave an ancestor of R, or nothing
      while R is a live leaf
  {"op": "readall"}                           -> {"ok": true, "revs": {id: readdoc's rev here, None if deleted}}
  {"op": "hang_in_compaction", "at": P}       -> {"ok": true, "hung": bool}
      compacts in a thread that stops for good right after the store step P ("shards.append": blocks written,
      index not committed; "index.commit_flush": index committed, log not yet dropped; "wal.remove_through":
      log dropped); the runner then SIGKILLs the node, so the crash lands exactly there.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

_offset = float(sys.argv[4])
if _offset:  # a skewed clock: everything in Python that asks for the wall time gets it wrong by this much
    _real_time = time.time
    time.time = lambda: _real_time() + _offset  # type: ignore[assignment]

from payload import BLOBS, blob_bytes  # noqa: E402  (beside this file)

import MyNoSQL  # noqa: E402
from MyNoSQL.records import revtree  # noqa: E402
from MyNoSQL.testing import poll_until  # noqa: E402


def hang_in_compaction(db: MyNoSQL.Database, at: str) -> bool:
    """Run a compaction that blocks for ever right after ``at`` (a store step); True once it blocks there."""
    owner_name, method = at.split(".")
    owner = getattr(db._store, owner_name)
    real = getattr(owner, method)
    reached = threading.Event()

    def step_then_hang(*args: object, **kwargs: object) -> object:
        out = real(*args, **kwargs)
        reached.set()
        threading.Event().wait()  # until SIGKILL
        return out

    setattr(owner, method, step_then_hang)
    done = threading.Event()

    def compact() -> None:
        with contextlib.suppress(MyNoSQL.MyNoSQLError):
            db.compact()
        done.set()

    threading.Thread(target=compact, daemon=True).start()
    deadline = time.monotonic() + 5
    while not reached.is_set() and not done.is_set() and time.monotonic() < deadline:
        reached.wait(0.01)
    return reached.is_set()


def atts_of(db: MyNoSQL.Database, id: str, rev: str) -> dict[str, list[Any]] | None:
    """The attachments of leaf ``rev``: {name: [digest, length]} (None if it is no longer a leaf here)."""
    state = db.state(id)
    if state is None or rev not in state.bodies:
        return None
    return {n: [m["digest"], m["length"]] for n, m in state.leaf_atts(rev).items()}


def md5_of(f: Any) -> str:
    h = hashlib.md5()
    while chunk := f.read(65536):
        h.update(chunk)
    return "md5-" + base64.b64encode(h.digest()).decode("ascii")


def atthash(db: MyNoSQL.Database, winners: bool) -> tuple[dict[str, Any], list[str]]:
    hashes: dict[str, Any] = {}
    errors: list[str] = []
    for s in list(db.states_since(0)):
        leaves = [s.winner] if winners else [r for r in revtree.leaves(s.tree) if r in s.bodies]
        for rev in leaves:
            if s.tree[rev][1]:
                continue
            for name in s.leaf_atts(rev):
                try:
                    with db.openattachment(s.id, name, rev) as f:
                        hashes.setdefault(s.id, {}).setdefault(rev, {})[name] = md5_of(f)
                except (MyNoSQL.MyNoSQLError, OSError) as exc:
                    errors.append(f"{s.id} {rev} {name}: {type(exc).__name__}: {exc}")
    return hashes, errors


def owns(db: Any) -> bool:
    """Whether this process owns ``db`` (a plain database, or a shared one's client that took it over)."""
    return getattr(db, "owner_pid", os.getpid()) == os.getpid()


def read_rev(db: Any, id: str) -> str | None:
    """What ``readdoc`` gives in this process (a client: from its cache when it holds the record)."""
    try:
        return str(db.readdoc(id)["rev"])
    except MyNoSQL.DocumentNotFound:
        return None


def readcheck(db: Any, id: str, acked: str) -> dict[str, Any]:
    """Read ``id`` here after another process of this node acknowledged revision ``acked`` of it. The read is
    stale if it gives an ancestor of ``acked`` (then ``acked`` was already written, so what it read was no
    longer a leaf), or nothing while ``acked`` is still a live leaf (then the winner was live all along)."""
    rev = read_rev(db, id)
    state = db.state(id)  # the owner's, after the read: a tree only grows
    stale = False
    if state is not None and acked in state.tree:
        ancestors, at = set(), state.tree[acked][0]
        for _ in range(len(state.tree)):
            if at is None:
                break
            ancestors.add(at)
            at = state.tree[at][0] if at in state.tree else None
        live_leaf = acked in revtree.leaves(state.tree) and not state.tree[acked][1]
        stale = rev in ancestors or (rev is None and live_leaf)
    return {"rev": rev, "stale": stale}


def readall(db: Any) -> dict[str, str | None]:
    """``readdoc`` here of every record the database holds: the winner, or None for a tombstone."""
    return {s.id: read_rev(db, s.id) for s in list(db.states_since(0))}


class Service:
    """A mirror of several databases: ``mynosql serve``'s composition over the folder ``path``."""

    def __init__(self, path: Path, names: list[str], port: int, peers: list[str], opts: MyNoSQL.Options) -> None:
        from MyNoSQL.service import MirrorService

        for name in names:  # the folders exist before the mirror serves them (mynosql serve --db NAME)
            if not (path / name).exists():
                with MyNoSQL.MyNoSQL(path, options=MyNoSQL.Options(background_sync=False)) as h:
                    h.opendb(name).setdbmode("Mirror")
        self.dbs: dict[str, MyNoSQL.Database] = {}

        async def opened(name: str, db: MyNoSQL.Database) -> None:
            self.dbs[name] = db

        self.service = MirrorService(path, opts, host="127.0.0.1", port=port, only=frozenset(names),
                                     peers=tuple(peers))
        self.service.dbs.on_open.append(opened)
        self.url = self.service.start()  # with peers, it opens every database and replicates it
        # A request (another mirror's pull) may have opened a database first: its hooks (this one included)
        # may still be running when start() returns; they end on the service's loop.
        try:
            poll_until(lambda: not set(names) - set(self.dbs), timeout=30, interval=0.01,
                       what=f"the mirror to open {sorted(names)}")
        except TimeoutError as exc:
            raise RuntimeError(f"the mirror did not open {sorted(set(names) - set(self.dbs))}") from exc

    def status(self, name: str) -> dict[str, Any]:
        return {"mirrors": self.service.replication_status(name), "server": self.url}


def main() -> None:
    path, names, mode = Path(sys.argv[1]), sys.argv[2].split(","), sys.argv[3]
    port = int(sys.argv[5]) if len(sys.argv) > 5 else 0
    peer_urls = [u for u in sys.argv[6].split(",") if u] if len(sys.argv) > 6 else []
    opts = MyNoSQL.Options(flush_docs=40, block_docs=8, flush_interval=0.05, longpoll=2.0, remote_timeout=2.0,
                           read_timeout=1.0, final_push=0.5, shard_max_bytes=30_000, learn_mirrors=False)
    handles: list[MyNoSQL.MyNoSQL] = []
    service: Service | None = None
    dbs: dict[str, Any] = {}
    if mode == "Mirror" and len(names) > 1:
        service = Service(path, names, port, peer_urls, opts)
        dbs = service.dbs
        url = service.url
    else:
        for name in names:
            h = MyNoSQL.MyNoSQL(path, options=opts)
            handles.append(h)
            dbs[name] = h.opendb(name)
        if mode == "Mirror":
            db = dbs[names[0]]
            db.setlisten("127.0.0.1", port)
            db.setdbmode("Mirror")
            for u in peer_urls:
                db.addpeer(u)
        url = dbs[names[0]].server_url
    print(json.dumps({"ready": True, "url": url}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd["op"]
        name = cmd.get("db") or names[0]
        db = dbs.get(name)
        if db is None:
            raise SystemExit(f"no database {name!r} here: {sorted(dbs)} {sys.argv}")
        try:
            if op in ("save", "putatt", "delatt"):
                rev = None
                with contextlib.suppress(MyNoSQL.DocumentNotFound):
                    rev = db.readdoc(cmd["id"])["rev"]
                if op == "save":
                    doc = dict(cmd["body"], id=cmd["id"])
                    if rev is not None:
                        doc["rev"] = rev
                    new = db.savedoc(doc)["rev"]
                elif op == "putatt":
                    key = cmd["blob"]
                    new = db.putattachment(cmd["id"], cmd["name"], blob_bytes(key), BLOBS[key][1], rev)
                else:
                    if rev is None:
                        raise MyNoSQL.DocumentNotFound(cmd["id"])
                    new = db.deleteattachment(cmd["id"], cmd["name"], rev)
                out = {"ok": True, "rev": new, "atts": atts_of(db, cmd["id"], new)}
            elif op == "delete":
                cur = db.readdoc(cmd["id"])
                out = {"ok": True, "rev": db.deletedoc(cmd["id"], cur["rev"])["rev"]}
            elif op == "addpeer":
                db.addpeer(cmd["url"])
                out = {"ok": True}
            elif op == "read":
                out = {"ok": True, "rev": db.readdoc(cmd["id"])["rev"]}
            elif op == "role":
                out = {"ok": True, "pid": os.getpid(), "owns": sorted(n for n, d in dbs.items() if owns(d))}
            elif op == "readcheck":
                out = {"ok": True, **readcheck(db, cmd["id"], cmd["rev"])}
            elif op == "readall":
                out = {"ok": True, "revs": readall(db)}
            elif op == "dump":
                docs = {}
                for s in db.states_since(0):
                    leaves = {r: s.tree[r][1] for r in revtree.leaves(s.tree)}
                    atts = {r: {n: [m["digest"], m["length"]] for n, m in s.leaf_atts(r).items()}
                            for r in leaves if s.atts and s.leaf_atts(r)}
                    docs[s.id] = {"winner": s.winner, "leaves": leaves, "revs": list(s.tree), "seq": s.seq,
                                  "atts": atts}
                out = {"ok": True, "docs": docs}
            elif op == "atthash":
                hashes, errors = atthash(db, bool(cmd.get("winners")))
                out = {"ok": True, "hashes": hashes, "errors": errors}
            elif op == "status":
                out = {"ok": True, "status": service.status(name) if service is not None else db.status()}
            elif op == "sync_state":  # for the report of a divergence
                sync = getattr(db, "_peer", None)  # white-box: what the peer's replication holds
                out = {"ok": True, "current": sync and sync.current, "poll_since": sync and sync._poll_since,
                       "token": sync and sync.client_token, "seq": db.seq,
                       "get_state": {s.id: (lambda st: st and st.winner)(db.state(s.id))
                                     for s in db.states_since(0)}}
            elif op == "hang_in_compaction":
                out = {"ok": True, "hung": hang_in_compaction(db, cmd["at"])}
            elif op == "verify":
                db.flush()
                out = {"ok": True, "problems": db.verify()}
            else:
                out = {"ok": False, "error": f"unknown op {op}"}
        except MyNoSQL.MyNoSQLError as exc:
            out = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(out, default=str), flush=True)
    if service is not None:
        service.service.close()
    for h in handles:
        h.closedb()


if __name__ == "__main__":
    main()
