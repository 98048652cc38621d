"""/_metrics, /_up and the /_dashboard of a mirror; the dashboard in a real headless Chromium when installed."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import re
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from support.mirrors import MirrorProcess, free_port, wait_until

import MyNoSQL
from MyNoSQL.server.app import MirrorApp
from MyNoSQL.testing import FaultProxy

PASSWORD = "dashboard-password"
ARTIFACTS = Path(os.environ.get("MYNOSQL_ARTIFACTS", Path(__file__).resolve().parents[2] / "test-artifacts"))


def request(url: str, *, user: str | None = "admin", password: str = PASSWORD, method: str = "GET",
            body: Any = None) -> tuple[int, str, bytes]:
    headers = {"Content-Type": "application/json"}
    if user:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    data = None if body is None else json.dumps(body).encode()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data, headers=headers, method=method),
                                    timeout=10) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read()


def get(url: str, user: str | None = "admin") -> tuple[int, str, bytes]:
    return request(url, user=user)


def data(url: str) -> Any:
    status, _, body = get(f"{url}/_dashboard/data")
    assert status == 200, body
    return json.loads(body)


def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of ``/_metrics`` by (name, labels)."""
    status, _, body = get(f"{url}/_metrics")
    assert status == 200, body
    out = {}
    for line in body.decode().splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(r'(\w+)(?:\{(.*)\})? (\S+)', line)
        assert m is not None, line
        labels = frozenset(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        out[(m.group(1), labels)] = float(m.group(3))
    return out


def sample(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.iterdir() if p.is_file())


def open_mirror(path: Path, **options: Any) -> MyNoSQL.MyNoSQL:
    h = MyNoSQL.MyNoSQL(path, options=MyNoSQL.Options(**{"flush_docs": 100, **options}))
    db = h.opendb("db")
    db.adduser("admin", PASSWORD)
    db.setlisten("127.0.0.1", 0)
    db.setdbmode("Mirror")
    return h


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[MyNoSQL.MyNoSQL]:
    h = open_mirror(tmp_path / "mirror")
    yield h
    h.closedb()


def url_of(h: MyNoSQL.MyNoSQL) -> str:
    url = h.db.server_url
    assert url is not None
    return url


def totals(d: dict[str, Any]) -> dict[str, int]:
    """The chart's series summed up: writes, revisions received and sent over the last minutes."""
    return {k: sum(s[k] for s in d["series"]) for k in ("writes", "docs_in", "docs_out")}


def test_metrics_and_health(mirror: MyNoSQL.MyNoSQL) -> None:
    url = url_of(mirror)
    status, ctype, body = get(f"{url}/_up", user=None)
    assert status == 200 and json.loads(body) == {"status": "ok"}
    # behind the same credentials as the data: without them, or with a wrong password, nothing is shown
    for path in ("/_metrics", "/_dashboard", "/_dashboard/data"):
        status, _, body = get(f"{url}{path}", user=None)
        assert status == 401 and json.loads(body)["error"] == "unauthorized", path
        assert request(f"{url}{path}", password="wrong")[0] == 401
    for i in range(25):
        mirror.savedoc({"id": f"m{i}"})
    get(f"{url}/db/m1")
    status, ctype, body = get(f"{url}/_metrics")
    assert status == 200 and ctype.startswith("text/plain")
    text = body.decode()
    assert 'mynosql_records{db="db"} 25' in text
    assert 'mynosql_healthy{db="db"} 1' in text
    assert 'mynosql_http_requests_total{route="/{db}/{id}",method="GET",status="200"} 1' in text
    assert 'mynosql_http_requests_total{route="/_metrics",method="GET",status="401"} 2' in text
    assert 'mynosql_http_requests_total{route="/_dashboard",method="GET",status="401"} 2' in text
    for name in ("mynosql_conflicts", "mynosql_disk_bytes", "mynosql_compaction_seconds_total",
                 "mynosql_shard_fsync_seconds_total", "mynosql_wal_fsync_seconds_total",
                 "mynosql_replication_lag", "mynosql_replication_docs_received_total"):
        assert f"# TYPE {name} " in text


def test_metrics_count_conflicts_and_disk_and_time_compaction_and_syncs(tmp_path: Path) -> None:
    h = open_mirror(tmp_path / "mirror", durability="power")
    try:
        url = url_of(h)
        before = scrape(url)
        for name in ("mynosql_compaction_total", "mynosql_compaction_seconds_total", "mynosql_shard_fsyncs_total",
                     "mynosql_shard_fsync_seconds_total"):
            assert sample(before, name, db="db") == 0, name  # nothing written yet
        wal_syncs = sample(before, "mynosql_wal_fsyncs_total", db="db")
        wal_seconds = sample(before, "mynosql_wal_fsync_seconds_total", db="db")
        assert wal_syncs is not None and wal_syncs >= 2 and wal_seconds is not None  # the first segment, synced
        assert sample(before, "mynosql_conflicts", db="db") == 0
        for i in range(30):
            h.savedoc({"id": f"r{i}", "i": i})
        # a conflict, as replication makes one: two revisions of "c" that do not descend from each other
        status, _, body = request(f"{url}/db/_bulk_docs", method="POST", body={"new_edits": False, "docs": [
            {"_id": "c", "_rev": "1-" + "a" * 32, "side": "a"}, {"_id": "c", "_rev": "1-" + "b" * 32, "side": "b"}]})
        assert status == 201, body
        assert len(h.conflicts("c")) == 1
        h.db.flush()
        h.compact()
        # the scan behind the conflict count is redone at most every 2 s once the database changed
        after = wait_until_value(url, "mynosql_conflicts", 1)
        assert sample(after, "mynosql_records", db="db") == 31
        assert sample(after, "mynosql_compaction_total", db="db") >= 1  # type: ignore[operator]
        assert sample(after, "mynosql_compaction_seconds_total", db="db") > 0  # type: ignore[operator]
        assert sample(after, "mynosql_shard_fsyncs_total", db="db") >= 1  # type: ignore[operator]
        assert sample(after, "mynosql_shard_fsync_seconds_total", db="db") > 0  # type: ignore[operator]
        # durability="power": every save waited for an fdatasync (one writer: one each), the flush synced segments
        assert sample(after, "mynosql_wal_fsyncs_total", db="db") >= wal_syncs + 32 + 3  # type: ignore[operator]
        assert sample(after, "mynosql_wal_fsync_seconds_total", db="db") > wal_seconds  # type: ignore[operator]
        # the folder's bytes, as `mynosql status` counts them (nothing writes now: the two must agree)
        folder = h.db.path
        wait_until(lambda: sample(scrape(url), "mynosql_disk_bytes", db="db") == folder_bytes(folder) > 0,
                   what="mynosql_disk_bytes equal to the database folder's size")
        assert sum(p.stat().st_size for p in folder.glob("shard-*")) > 0
        assert data(url)["databases"][0]["disk_bytes"] == folder_bytes(folder)
    finally:
        h.closedb()


def test_dashboard_data_conflicts_disk_and_compression(mirror: MyNoSQL.MyNoSQL) -> None:
    url = url_of(mirror)
    folder = mirror.db.path
    (row,) = data(url)["databases"]
    # nothing in a shard yet: no ratio to show (the page shows a dash)
    assert row["name"] == "db" and row["conflicts"] == 0 and row["compression_ratio"] is None
    assert row["shard_bytes"] == 0 and row["disk_bytes"] == folder_bytes(folder) > 0
    for i in range(300):  # compressible records: the same words again and again
        mirror.savedoc({"id": f"r{i:03d}", "i": i, "text": "sensor reading within the usual range " * 10})
    # a real conflict, as replication makes one: a second revision 1 of "r007"
    status, _, body = request(f"{url}/db/_bulk_docs", method="POST", body={"new_edits": False, "docs": [
        {"_id": "r007", "_rev": "1-" + "f" * 32, "text": "written elsewhere"}]})
    assert status == 201, body
    assert len(mirror.conflicts("r007")) == 1
    mirror.db.flush()  # every record in the shards; nothing writes from now on
    shards = sum(p.stat().st_size for p in folder.glob("shard-*"))
    raw = mirror.db.raw_bytes_on_disk()  # the records' bytes before compression
    assert shards > 0 and raw > 300 * 390

    def settled() -> bool:  # the conflict scan is redone at most every 2 s after a change
        (r,) = data(url)["databases"]
        return r["conflicts"] == 1 and r["compression_ratio"] == round(raw / shards, 2)

    wait_until(settled, what="one conflict and the compression ratio of the flushed records")
    (row,) = data(url)["databases"]
    assert row["records"] == 300 and row["shard_bytes"] == shards
    ratio = row["compression_ratio"]
    assert isinstance(ratio, float) and ratio > 1, ratio  # LZMA blocks of repetitive records: far smaller
    # the disk use: the whole folder (shards, log, index), as /_metrics and `mynosql status` count it
    wait_until(lambda: data(url)["databases"][0]["disk_bytes"] == folder_bytes(folder)
               == sample(scrape(url), "mynosql_disk_bytes", db="db"),
               what="the dashboard's disk bytes equal to the folder's size and to /_metrics'")
    assert data(url)["databases"][0]["disk_bytes"] > shards
    assert sample(scrape(url), "mynosql_conflicts", db="db") == 1


def wait_until_value(url: str, name: str, value: float) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    seen: list[dict[tuple[str, frozenset[tuple[str, str]]], float]] = []

    def probe() -> bool:
        seen[:] = [scrape(url)]
        return sample(seen[0], name, db="db") == value

    wait_until(probe, what=f"{name} = {value}")
    return seen[0]


def test_replication_lag_of_a_mirror_pair(tmp_path: Path, mirrors: Any) -> None:
    """A mirror pulling from another through a link that cuts big answers: it knows how far behind it is."""
    a: MirrorProcess = mirrors(tag="a")
    for i in range(3):
        assert request(f"{a.url}/db/s{i}", user=None, method="PUT", body={"small": i})[0] == 201
    proxy = FaultProxy("127.0.0.1", a.port).start()
    b = open_mirror(tmp_path / "b", learn_mirrors=False, remote_timeout=5.0, longpoll=5.0)
    try:
        url = url_of(b)
        remote = f"http://127.0.0.1:{proxy.port}"
        down = f"http://127.0.0.1:{free_port()}"  # a known mirror that is down: nothing listens there
        b.addpeer(remote)
        b.addpeer(down)

        def mirror_state(u: str) -> dict[str, Any]:
            return b.db.status()["mirrors"][u]  # type: ignore[no-any-return]

        wait_until(lambda: len(b) == 3 and mirror_state(remote)["lag"] == 0 and mirror_state(remote)["reachable"],
                   what="b in step with a")
        # Past 3 failures a pull starts afresh (new connections): that must not cut the pull from a (its own)
        wait_until(lambda: mirror_state(down)["failures"] >= 5, timeout=30,
                   what="b failing to reach the mirror that is down, again and again")
        assert mirror_state(remote)["failures"] == 0 and mirror_state(remote)["last_error"] is None
        m = scrape(url)
        assert sample(m, "mynosql_replication_lag", db="db", remote=remote) == 0
        assert sample(m, "mynosql_replication_reachable", db="db", remote=remote) == 1
        assert sample(m, "mynosql_replication_reachable", db="db", remote=down) == 0
        assert sample(m, "mynosql_replication_failures", db="db", remote=down) >= 5  # type: ignore[operator]
        assert sample(m, "mynosql_replication_failures", db="db", remote=remote) == 0
        assert sample(m, "mynosql_replication_lag", db="db", remote=down) is None  # never heard of: unknown
        mirrors_seen = data(url)["databases"][0]["mirrors"]
        assert mirrors_seen[remote]["reachable"] is True and mirrors_seen[remote]["lag"] == 0
        assert mirrors_seen[remote]["last_error"] is None
        assert mirrors_seen[down]["reachable"] is False and mirrors_seen[down]["lag"] is None
        assert down.removeprefix("http://") in mirrors_seen[down]["last_error"]

        # Four big records on a; b hears of them in a's small _changes answer, but the link cuts every answer
        # past 16 kB (the records travel in one, ~50 kB each even gzipped): b stays 4 changes behind.
        proxy.cut_after(16_000)
        for i in range(4):
            body = {"big": os.urandom(50_000).hex()}
            assert request(f"{a.url}/db/big{i}", user=None, method="PUT", body=body)[0] == 201
        wait_until(lambda: mirror_state(remote)["lag"] == 4 and mirror_state(remote)["reachable"] is False,
                   timeout=30, what="b 4 changes behind a, the link cutting its downloads")
        assert len(b) == 3
        m = scrape(url)
        assert sample(m, "mynosql_replication_lag", db="db", remote=remote) == 4
        assert sample(m, "mynosql_replication_reachable", db="db", remote=remote) == 0
        mirrors_seen = data(url)["databases"][0]["mirrors"]
        assert mirrors_seen[remote]["lag"] == 4 and mirrors_seen[remote]["failures"] >= 1
        assert "_bulk_get" in mirrors_seen[remote]["last_error"]  # the request the link cut

        proxy.pass_through()  # the link heals: b catches up
        wait_until(lambda: len(b) == 7 and mirror_state(remote)["lag"] == 0 and mirror_state(remote)["reachable"],
                   timeout=30, what="b in step with a again")
        m = scrape(url)
        assert sample(m, "mynosql_replication_lag", db="db", remote=remote) == 0
        assert sample(m, "mynosql_replication_reachable", db="db", remote=remote) == 1
        assert sample(m, "mynosql_replication_failures", db="db", remote=remote) == 0
        assert sample(m, "mynosql_records", db="db") == 7
    finally:
        b.closedb()
        proxy.stop()


def test_dashboard_data_follows_writes_and_replication(mirror: MyNoSQL.MyNoSQL, tmp_path: Path) -> None:
    url = url_of(mirror)
    base = totals(data(url))
    for i in range(10):
        mirror.savedoc({"id": f"d{i}"})
    # the chart's writes series takes each second's writes: it grows by exactly the 10 saves
    wait_until(lambda: totals(data(url))["writes"] - base["writes"] == 10, what="10 writes in the chart")
    d = data(url)
    assert d["databases"][0]["records"] == 10 and totals(d)["docs_in"] == base["docs_in"]
    peer = MyNoSQL.MyNoSQL(tmp_path / "peer", options=MyNoSQL.Options(longpoll=5.0))
    peer.opendb("db")
    try:
        saved = [peer.savedoc({"id": f"p{i}", "v": 1}) for i in range(7)]
        peer.addpeer(url.replace("http://", f"http://admin:{PASSWORD}@"))
        wait_until(lambda: len(mirror) == 17, what="the peer's records on the mirror")
        # 7 revisions received by replication, and 7 more writes
        wait_until(lambda: totals(data(url)) == {"writes": base["writes"] + 17, "docs_in": base["docs_in"] + 7,
                                                 "docs_out": base["docs_out"]},
                   what="the peer's push in the chart")
        # a newer revision on the mirror of a record the peer holds: the peer downloads it (one revision sent)
        mirror.savedoc({"id": "p0", "rev": saved[0]["rev"], "v": 2})
        wait_until(lambda: peer.readdoc("p0")["v"] == 2, what="the peer downloading p0's new revision")
        wait_until(lambda: totals(data(url)) == {"writes": base["writes"] + 18, "docs_in": base["docs_in"] + 7,
                                                 "docs_out": base["docs_out"] + 1},
                   what="the download in the chart")

        def peer_row(user: str) -> dict[str, Any]:
            rows = [p for p in data(url)["peers"] if p["user"] == user]
            assert len(rows) == 1, rows
            return rows[0]

        wait_until(lambda: peer_row("admin")["lag"] == 0, what="the peer in step (lag 0)")
        row = peer_row("admin")
        assert row["db"] == "db" and row["last_error"] is None and row["errors"] == 0
        # errors the mirror answers a client with are shown with it: a bad request of the peer's user...
        status, _, _ = request(f"{url}/db/_bulk_docs", method="POST", body={"docs": 5})
        assert status == 400
        row = peer_row("admin")
        assert row["last_error"].startswith("400 bad_request: ") and "POST /{db}/_bulk_docs" in row["last_error"]
        assert row["errors"] == 1 and row["last_error_at"] >= row["first_seen"]
        # ...and a failed login, under the name it tried
        assert request(f"{url}/db/_changes", user="intruder", password="guess")[0] == 401
        row = peer_row("intruder")
        assert row["last_error"].startswith("401 unauthorized: ") and row["lag"] is None
        # a browser's anonymous first request for the dashboard is not a client's problem: not listed
        assert get(f"{url}/_dashboard", user=None)[0] == 401
        assert {p["user"] for p in data(url)["peers"]} == {"admin", "intruder"}
    finally:
        peer.closedb()


def test_replication_problems_are_logged_once_per_state_change(tmp_path: Path, mirrors: Any,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    remote = f"http://127.0.0.1:{port}"  # the peer's mirror, down at first
    peer = MyNoSQL.MyNoSQL(tmp_path / "peer", options=MyNoSQL.Options(remote_timeout=5.0, longpoll=5.0))
    peer.opendb("db")

    def lines(level: int, text: str = "") -> list[str]:
        return [r.getMessage() for r in caplog.records
                if r.name == "MyNoSQL" and r.levelno == level and remote in r.getMessage() and text in r.getMessage()]

    try:
        with caplog.at_level(logging.INFO, logger="MyNoSQL"):
            peer.savedoc({"id": "offline"})
            peer.addpeer(remote)
            wait_until(lambda: peer.db.status()["mirrors"][remote]["failures"] >= 6, timeout=60,
                       what="six failed attempts to reach the mirror")
            warnings = lines(logging.WARNING)
            assert len(warnings) == 1, warnings  # not one per retry
            assert lines(logging.INFO) == []
            m = mirrors(port=port)  # the mirror comes up
            wait_until(lambda: peer.db.status()["mirrors"][remote]["reachable"] is True, timeout=30,
                       what="the peer reaching the mirror")
            wait_until(lambda: json.loads(get(f"{m.url}/db", user=None)[2])["doc_count"] == 1,
                       what="the offline save on the mirror")
            again = lines(logging.INFO, "works again")
            assert len(again) == 1 and "failed attempt" in again[0], again
            assert lines(logging.INFO) == again
            assert len(lines(logging.WARNING)) == 1
            assert peer.db.status()["mirrors"][remote]["failures"] == 0
    finally:
        peer.closedb()


def test_up_answers_503_while_the_compactor_fails(mirror: MyNoSQL.MyNoSQL, monkeypatch: pytest.MonkeyPatch) -> None:
    url = url_of(mirror)
    assert get(f"{url}/_up", user=None)[0] == 200

    def disk_full(*args: Any, **kwargs: Any) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(mirror.db._store, "collect_garbage", disk_full)  # the compactor runs it every second
    wait_until(lambda: get(f"{url}/_up", user=None)[0] == 503, what="/_up answering 503")
    _, ctype, body = get(f"{url}/_up", user=None)
    answer = json.loads(body)
    assert ctype.startswith("application/json") and answer["status"] == "failing"
    assert "compactor is failing" in answer["reason"] and "No space" not in answer["reason"]  # details: the log
    assert sample(scrape(url), "mynosql_healthy", db="db") == 0
    monkeypatch.undo()
    wait_until(lambda: get(f"{url}/_up", user=None)[0] == 200, what="/_up answering 200 again")
    assert sample(scrape(url), "mynosql_healthy", db="db") == 1


def test_up_answers_503_for_a_closed_database(tmp_path: Path) -> None:
    # A mirror's own server stops before its database closes; an application serving MirrorApp itself can
    # outlive a database it closed: then /_up says so.
    h = MyNoSQL.MyNoSQL(tmp_path / "app", options=MyNoSQL.Options(background_sync=False))
    db = h.opendb("db")

    async def scenario() -> list[tuple[int, Any]]:
        runner = MirrorApp({"db": db}).runner()
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        answers = []
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
                for close in (False, True):
                    if close:
                        await asyncio.to_thread(h.closedb)
                    async with session.get(f"http://127.0.0.1:{port}/_up") as r:
                        answers.append((r.status, await r.json()))
        finally:
            await runner.cleanup()
        return answers

    try:
        ok, closed = asyncio.run(scenario())
    finally:
        h.closedb()
    assert ok == (200, {"status": "ok"})
    assert closed == (503, {"status": "failing", "reason": "database 'db': closed"})


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
NO_VALUE = "\u2013"  # what the page shows where there is no value (an en dash)
TIMES = "\u00d7"  # what follows a compression ratio on the page (a multiplication sign)


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed (Debian: apt-get install chromium): "
                                            "the dashboard browser test is skipped")
@pytest.mark.browser
def test_dashboard_in_a_real_browser(mirror: MyNoSQL.MyNoSQL, tmp_path: Path, mirrors: Any) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    expect = sync_api.expect
    url = url_of(mirror)
    for i in range(12):  # compressible records: a compression ratio well above 1 once flushed
        mirror.savedoc({"id": f"b{i}", "text": "sensor reading within the usual range " * 10})
    other: MirrorProcess = mirrors(tag="other")  # a known mirror that is up...
    down = f"http://127.0.0.1:{free_port()}"  # ...and one that is down
    mirror.addpeer(other.url)
    mirror.addpeer(down)
    errors: list[str] = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        page = None
        try:
            ctx = browser.new_context(http_credentials={"username": "admin", "password": PASSWORD})
            page = ctx.new_page()
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"{url}/_dashboard")
            records = page.locator("#dbs td.records")  # locators: no eval, so the page's CSP stays on
            expect(records).to_have_text("12", timeout=15000)
            expect(page.locator("#dbs td.conflicts")).to_have_text("0")
            expect(page.locator("#total-writes")).to_have_text("12", timeout=15000)
            # the known mirrors: the one that is up, in step; the one that is down, with its last error
            up_row = page.locator(f'#mirrors tr[data-url="{other.url}"]')
            expect(up_row.locator("td.reachable")).to_have_text("yes", timeout=30000)
            expect(up_row.locator("td.lag")).to_have_text("0")
            down_row = page.locator(f'#mirrors tr[data-url="{down}"]')
            expect(down_row.locator("td.reachable")).to_have_text("no", timeout=30000)
            expect(down_row.locator("td.error")).to_contain_text(down.removeprefix("http://"))
            expect(down_row.locator("td.lag")).to_have_text(NO_VALUE)
            peer = MyNoSQL.MyNoSQL(tmp_path / "peer", options=MyNoSQL.Options(longpoll=5.0))
            peer.opendb("db")
            try:
                for i in range(5):
                    peer.savedoc({"id": f"q{i}"})
                peer.addpeer(url.replace("http://", f"http://admin:{PASSWORD}@"))
                # the page refreshes itself and shows the replicated records, in the table and the chart
                expect(records).to_have_text("17", timeout=30000)
                expect(page.locator("#total-in")).to_have_text("5", timeout=30000)
                expect(page.locator("#total-writes")).to_have_text("17", timeout=30000)
                peer_row = page.locator("#peers tbody tr", has_text="admin")
                expect(peer_row.locator("td.user")).to_have_text("admin", timeout=30000)
                expect(peer_row.locator("td.lag")).to_have_text("0", timeout=30000)
                expect(peer_row.locator("td.error")).to_have_text(NO_VALUE)
                # a client that fails to log in is shown with the error it got
                assert request(f"{url}/db/_changes", user="intruder", password="guess")[0] == 401
                intruder = page.locator("#peers tbody tr", has_text="intruder")
                expect(intruder.locator("td.error")).to_contain_text("401 unauthorized", timeout=30000)
                # the mirror that is up had no error all along (the retries to reach the other one left it alone)
                expect(up_row.locator("td.error")).to_have_text(NO_VALUE)
                expect(up_row.locator("td.failures")).to_have_text("0")
            finally:
                peer.closedb()
            # a real conflict (a second revision 1 of "b0", as replication makes one): the page counts it
            status, _, body = request(f"{url}/db/_bulk_docs", method="POST", body={"new_edits": False, "docs": [
                {"_id": "b0", "_rev": "1-" + "f" * 32, "text": "written elsewhere"}]})
            assert status == 201, body
            expect(page.locator("#dbs td.conflicts")).to_have_text("1", timeout=30000)
            expect(records).to_have_text("17")
            # the compression ratio of the flushed records (the compactor flushes within a second), as the data
            mirror.db.flush()
            ratio = page.locator("#dbs td.compression")
            expect(ratio).to_have_text(re.compile(rf"\d+(\.\d+)?{TIMES}"), timeout=30000)
            shown = float((ratio.text_content() or "").rstrip(TIMES))
            assert shown > 1, shown
            wait_until(lambda: float((ratio.text_content() or "").rstrip(TIMES))
                       == data(url)["databases"][0]["compression_ratio"], timeout=30,
                       what="the page's compression ratio equal to /_dashboard/data's")
        finally:
            if page is not None:  # also when the test fails: the screenshot shows what the page showed
                ARTIFACTS.mkdir(parents=True, exist_ok=True)
                try:
                    page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
                except Exception as exc:  # never hide the test's own failure behind this one
                    logging.getLogger(__name__).warning("no screenshot: %s", exc)
            browser.close()
    assert errors == []
