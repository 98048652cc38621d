"""A mirror stays responsive while writes wait for the compactor (back-pressure): writes run in worker
threads, never on the event loop that answers every other request."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from support.mirrors import wait_until

import MyNoSQL
from MyNoSQL.storage.store import BACKLOG

FLUSH_DOCS = 50


def _timed(url: str, data: bytes | None = None, timeout: float = 10.0) -> tuple[float, Any]:
    req = urllib.request.Request(url, data=data, method="POST" if data else "GET",
                                 headers={"Content-Type": "application/json"})
    t0 = time.monotonic()
    with urllib.request.urlopen(req, timeout=timeout) as r:
        body = json.loads(r.read())
    return time.monotonic() - t0, body


def test_a_mirror_answers_within_100_ms_while_a_writer_is_held_back_by_the_compactor(tmp_path: Path) -> None:
    opts = MyNoSQL.Options(flush_docs=FLUSH_DOCS, flush_interval=0.05)
    h = MyNoSQL.MyNoSQL(tmp_path, options=opts)
    db = h.opendb("db")
    db.setlisten("127.0.0.1", 0)
    db.setdbmode("Mirror")
    url = f"{db.server_url}/db"
    store = db._store  # white-box: hold the compactor in the middle of a flush
    release = threading.Event()
    real = store._flush_frozen

    def held(*args: Any) -> None:
        release.wait(30)
        real(*args)

    store._flush_frozen = held  # type: ignore[method-assign]
    saver_done = threading.Event()
    bulk: list[Any] = []
    try:
        def saver() -> None:
            for i in range(BACKLOG * FLUSH_DOCS + 50):  # past the back-pressure bound: it waits there
                db.savedoc({"id": f"local-{i}"})
            saver_done.set()

        threading.Thread(target=saver, daemon=True).start()
        wait_until(lambda: len(store._active) + len(store._frozen) >= BACKLOG * FLUSH_DOCS, timeout=20,
                   what="the saver reaching the back-pressure bound")
        assert not saver_done.is_set()
        # a small replicated batch now waits for the compactor too: in a worker thread, not on the event loop
        docs = json.dumps({"docs": [{"_id": f"pushed-{i}"} for i in range(10)]}).encode()
        threading.Thread(target=lambda: bulk.append(_timed(f"{url}/_bulk_docs", docs, timeout=60)),
                         daemon=True).start()
        # the batch reached its worker thread and waits there, beside the saver
        wait_until(lambda: len(store._space._waiters) >= 2, timeout=20,  # type: ignore[attr-defined]
                   what="the batch waiting for the compactor")
        assert not bulk, "the batch should be held back by the compactor"
        for _ in range(5):
            took, body = _timed(f"{db.server_url}/_up")
            assert body["status"] == "ok" and took < 0.1, took
            took, body = _timed(f"{url}/_changes?feed=longpoll&since=now&timeout=50")
            assert body["results"] == [] and took < 0.05 + 0.1, took
            took, body = _timed(f"{url}")
            assert body["db_name"] == "db" and took < 0.1, took
    finally:
        release.set()
        store._flush_frozen = real  # type: ignore[method-assign]
    wait_until(lambda: saver_done.is_set() and bulk, timeout=60, what="the held-back writes going through")
    assert [r.get("ok") for r in bulk[0][1]] == [True] * 10
    h.closedb()
