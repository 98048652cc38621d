"""A node of the chaos runner: a MyNoSQL peer (or mirror) in its own process, driven by JSON lines on stdin.

Usage: python agent.py PATH DBNAME MODE CLOCK_OFFSET_SECONDS [PORT]
Commands (one JSON object a line) and answers (one JSON line each):
  {"op": "save", "id": I, "body": {...}}      -> {"ok": true, "rev": R} | {"ok": false, "error": E}
  {"op": "delete", "id": I}                   -> {"ok": true, "rev": R} | {"ok": false, "error": E}
  {"op": "addpeer", "url": U}                 -> {"ok": true}
  {"op": "read", "id": I}                     -> {"ok": true, "rev": R} | {"ok": false, "error": E}
  {"op": "dump"}      -> {"ok": true, "docs": {id: {"winner": R, "leaves": {rev: deleted}, "revs": [...]}}}
  {"op": "status"}                            -> {"ok": true, "status": ...}
  {"op": "hang_in_compaction", "at": P}       -> {"ok": true, "hung": bool}
      compacts in a thread that stops for good right after the store step P ("shards.append": blocks written,
      index not committed; "index.commit_flush": index committed, log not yet dropped; "wal.remove_through":
      log dropped); the runner then SIGKILLs the node, so the crash lands exactly there.
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
import time

_offset = float(sys.argv[4])
if _offset:  # a skewed clock: everything in Python that asks for the wall time gets it wrong by this much
    _real_time = time.time
    time.time = lambda: _real_time() + _offset  # type: ignore[assignment]

import MyNoSQL  # noqa: E402
from MyNoSQL.records import revtree  # noqa: E402


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


def main() -> None:
    path, name, mode = sys.argv[1], sys.argv[2], sys.argv[3]
    opts = MyNoSQL.Options(flush_docs=40, block_docs=8, flush_interval=0.05, longpoll=2.0, remote_timeout=2.0,
                           read_timeout=1.0, final_push=0.5, shard_max_bytes=30_000, learn_mirrors=False)
    h = MyNoSQL.MyNoSQL(path, options=opts)
    db = h.opendb(name)
    if mode == "Mirror":
        db.setlisten("127.0.0.1", int(sys.argv[5]))
        db.setdbmode("Mirror")
    print(json.dumps({"ready": True, "url": db.server_url}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd["op"]
        try:
            if op == "save":
                doc = dict(cmd["body"], id=cmd["id"])
                with contextlib.suppress(MyNoSQL.DocumentNotFound):
                    doc["rev"] = db.readdoc(cmd["id"])["rev"]
                out = {"ok": True, "rev": db.savedoc(doc)["rev"]}
            elif op == "delete":
                cur = db.readdoc(cmd["id"])
                out = {"ok": True, "rev": db.deletedoc(cmd["id"], cur["rev"])["rev"]}
            elif op == "addpeer":
                db.addpeer(cmd["url"])
                out = {"ok": True}
            elif op == "read":
                out = {"ok": True, "rev": db.readdoc(cmd["id"])["rev"]}
            elif op == "dump":
                docs = {}
                for s in db.states_since(0):
                    leaves = {r: s.tree[r][1] for r in revtree.leaves(s.tree)}
                    docs[s.id] = {"winner": s.winner, "leaves": leaves, "revs": list(s.tree), "seq": s.seq}
                out = {"ok": True, "docs": docs}
            elif op == "status":
                out = {"ok": True, "status": db.status()}
            elif op == "sync_state":  # for the report of a divergence
                sync = db._peer  # white-box: what the peer's replication holds
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
    h.closedb()


if __name__ == "__main__":
    main()
