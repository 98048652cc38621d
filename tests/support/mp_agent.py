"""A process that opens a database and does what a test tells it: one JSON command a line on stdin, one JSON answer
a line on stdout. For the tests of several processes on one database (tests/integration/test_processes.py).

    python mp_agent.py LOCATION NAME
    -> ["save", {"id": "a"}]      <- {"ok": {"id": "a", "rev": "1-..."}}
    -> ["read", "a"]              <- {"ok": {...}} or {"err": "DocumentNotFound", "msg": "..."}

Also: ``delete id rev``, ``role`` ("owner" or "client"), ``addpeer url``, ``syncing`` (whether this process
runs the replication), ``watch`` (start collecting changes), ``events`` (the
ids of the changes collected so far), ``dump`` ({id: [rev, body]} of every record), ``verify``, ``close``, and
``write n ids seed [prefix]`` (a writer loop: n saves of random ids among ``ids`` (``<prefix><number>``,
prefix "k" by default), each read then saved; prints one line ``ack id rev i`` per acknowledged save,
``conflict id`` per refused one, then ``done``), ``readloop n ids seed``
(n reads of random ids; fails if a record's revision ever goes back).
"""

from __future__ import annotations

import contextlib
import faulthandler
import random
import signal
import sys
from typing import Any

import orjson

import MyNoSQL
from MyNoSQL.records.revtree import rev_gen
from MyNoSQL.shared import ClientNode


def out(value: Any) -> None:
    sys.stdout.write(orjson.dumps(value).decode() + "\n")
    sys.stdout.flush()


def main() -> None:
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # a test that times out can ask where it stands
    location, name = sys.argv[1], sys.argv[2]
    h = MyNoSQL.MyNoSQL(location)
    h.opendb(name)
    events: list[str] = []
    out({"ok": "open"})
    for line in sys.stdin:
        cmd = orjson.loads(line)
        op, args = cmd[0], cmd[1:]
        try:
            if op == "save":
                out({"ok": h.savedoc(args[0])})
            elif op == "read":
                out({"ok": h.readdoc(args[0])})
            elif op == "delete":
                out({"ok": h.deletedoc(args[0], args[1])})
            elif op == "role":
                db = h.db
                out({"ok": "client" if isinstance(db, ClientNode) and not db._promoted else "owner"})
            elif op == "addpeer":
                out({"ok": h.addpeer(args[0])})
            elif op == "syncing":  # whether this process runs the replication (only the owner may)
                out({"ok": getattr(h.db, "_peer", None) is not None})
            elif op == "watch":
                h.watch(lambda c: events.append(c.id))
                out({"ok": True})
            elif op == "events":
                out({"ok": list(events)})
            elif op == "dump":
                out({"ok": {d["id"]: [d["rev"], {k: v for k, v in d.items() if k not in ("id", "rev")}]
                            for d in h}})
            elif op == "verify":
                out({"ok": h.verify()})
            elif op == "close":
                h.closedb()
                out({"ok": True})
                return
            elif op == "write":
                n, ids, seed, *more = args
                prefix = more[0] if more else "k"
                rnd = random.Random(seed)
                for i in range(n):
                    id = f"{prefix}{rnd.randrange(ids)}"
                    doc: dict[str, Any] = {"id": id, "i": i, "seed": seed}
                    with contextlib.suppress(MyNoSQL.DocumentNotFound):
                        doc["rev"] = h.readdoc(id)["rev"]
                    try:
                        saved = h.savedoc(doc)
                    except MyNoSQL.ConflictError:
                        sys.stdout.write(f"conflict {id}\n")
                        continue
                    sys.stdout.write(f"ack {id} {saved['rev']} {i}\n")
                    sys.stdout.flush()
                out({"ok": "done"})
            elif op == "readloop":
                n, ids, seed = args
                rnd = random.Random(seed)
                seen: dict[str, int] = {}
                for _ in range(n):
                    id = f"k{rnd.randrange(ids)}"
                    try:
                        gen = rev_gen(h.readdoc(id)["rev"])
                    except MyNoSQL.DocumentNotFound:
                        continue
                    if gen < seen.get(id, 0):
                        raise AssertionError(f"{id}: read generation {gen} after {seen[id]}")
                    seen[id] = gen
                out({"ok": len(seen)})
            else:
                out({"err": "unknown", "msg": op})
        except Exception as exc:
            out({"err": type(exc).__name__, "msg": str(exc)})


if __name__ == "__main__":
    main()
