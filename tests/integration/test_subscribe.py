"""Selective sync: a subscribed peer pulls the records that match its selectors, only those, keeps them current,
and its live queries see them arrive."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from support.mirrors import call, wait_until

import MyNoSQL
from MyNoSQL.testing import FaultProxy


def test_a_subscribed_peer_keeps_what_matches_and_only_that(mirrors: Any, tmp_path: Path) -> None:
    m = mirrors("iot")
    url = f"{m.url}/iot"
    docs = [{"_id": f"r{i:04}", "site": f"site-{i % 20}", "v": i, "pad": "x" * 100} for i in range(2000)]
    call("POST", f"{url}/_bulk_docs", {"docs": docs})
    wanted = [d for d in docs if d["site"] == "site-3"]
    wanted_bytes = sum(len(orjson.dumps({k: v for k, v in d.items() if k != "_id"})) for d in wanted)
    proxy = FaultProxy("127.0.0.1", m.port).start()
    try:
        opts = MyNoSQL.Options(longpoll=2.0)
        with MyNoSQL.MyNoSQL(tmp_path / "peer", options=opts) as h:
            db = h.opendb("iot")
            events: list[Any] = []
            db.observe({"site": "site-3"}, events.append)
            sid = h.subscribe({"site": "site-3"})
            h.addpeer(proxy.url)
            wait_until(lambda: len(db) == len(wanted), what="the subscribed records")
            assert {r["id"] for r in db} == {d["_id"] for d in wanted}
            moved = proxy.stats().bytes_server_to_client
            print(f"moved {moved} bytes for {wanted_bytes} bytes of JSON")
            assert moved <= 1.2 * wanted_bytes, (moved, wanted_bytes)  # gzip: usually far below
            assert sum(len(e.added) for e in events) == len(wanted)  # replicated writes reach live queries
            # kept current: a new matching record and a change to a held one arrive; others do not
            call("POST", f"{url}/_bulk_docs", {"docs": [{"_id": "late", "site": "site-3", "v": -1},
                                                        {"_id": "other", "site": "site-4", "v": -1}]})
            wait_until(lambda: "late" in db, what="a new matching record")
            rev = call("GET", f"{url}/r0003")["_rev"]
            call("PUT", f"{url}/r0003", {"_rev": rev, "site": "site-3", "v": 1003})
            wait_until(lambda: db.readdoc("r0003")["v"] == 1003, what="a change to a subscribed record")
            assert db.state("other") is None
            assert h.unsubscribe(sid) is True and h.unsubscribe(sid) is False
            assert db.subscriptions() == {}
        with MyNoSQL.MyNoSQL(tmp_path / "peer", options=MyNoSQL.Options(background_sync=False)) as h:
            h.opendb("iot")
            sid2 = h.subscribe({"site": "site-3"})
            assert sid2 == sid and list(h.db.subscriptions()) == [sid]  # remembered in the configuration
    finally:
        proxy.stop()
