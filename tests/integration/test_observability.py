"""/_metrics, /_up and the /_dashboard of a mirror; the dashboard in a real headless Chromium when installed."""

from __future__ import annotations

import base64
import json
import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from support.mirrors import wait_until

import MyNoSQL

PASSWORD = "dashboard-password"
ARTIFACTS = Path(os.environ.get("MYNOSQL_ARTIFACTS", Path(__file__).resolve().parents[2] / "test-artifacts"))


def get(url: str, user: str | None = "admin") -> tuple[int, str, bytes]:
    headers = {}
    if user:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{PASSWORD}".encode()).decode()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read()


@pytest.fixture
def mirror(tmp_path: Path) -> Any:
    h = MyNoSQL.MyNoSQL(tmp_path / "mirror", options=MyNoSQL.Options(flush_docs=100))
    db = h.opendb("db")
    db.adduser("admin", PASSWORD)
    db.setlisten("127.0.0.1", 0)
    db.setdbmode("Mirror")
    yield h
    h.closedb()


def test_metrics_and_health(mirror: MyNoSQL.MyNoSQL) -> None:
    url = mirror.db.server_url
    assert get(f"{url}/_up", user=None)[0] == 200
    assert get(f"{url}/_metrics", user=None)[0] == 401  # behind the same credentials as the data
    for i in range(25):
        mirror.savedoc({"id": f"m{i}"})
    get(f"{url}/db/m1")
    status, ctype, body = get(f"{url}/_metrics")
    assert status == 200 and ctype.startswith("text/plain")
    text = body.decode()
    assert 'mynosql_records{db="db"} 25' in text
    assert 'mynosql_http_requests_total{route="/{db}/{id}",method="GET",status="200"} 1' in text
    assert 'route="/_metrics",method="GET",status="401"' in text
    for name in ("mynosql_conflicts", "mynosql_disk_bytes", "mynosql_compaction_seconds_total",
                 "mynosql_shard_fsync_seconds_total", "mynosql_replication_docs_received_total"):
        assert f"# TYPE {name} " in text


def test_dashboard_data_follows_writes_and_replication(mirror: MyNoSQL.MyNoSQL, tmp_path: Path) -> None:
    url = mirror.db.server_url
    assert url is not None
    for i in range(10):
        mirror.savedoc({"id": f"d{i}"})
    data = json.loads(get(f"{url}/_dashboard/data")[2])
    assert data["databases"][0]["records"] == 10
    peer = MyNoSQL.MyNoSQL(tmp_path / "peer")
    peer.opendb("db")
    try:
        for i in range(7):
            peer.savedoc({"id": f"p{i}"})
        peer.addpeer(url.replace("http://", f"http://admin:{PASSWORD}@"))
        wait_until(lambda: len(mirror) == 17, what="the peer's records on the mirror")
        wait_until(lambda: json.loads(get(f"{url}/_dashboard/data")[2])["peers"], what="the peer listed")
        d = json.loads(get(f"{url}/_dashboard/data")[2])
        assert d["peers"][0]["user"] == "admin"
        assert sum(s["docs_in"] for s in d["series"]) + 7 >= 7
    finally:
        peer.closedb()


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed (Debian: apt-get install chromium): "
                                            "the dashboard browser test is skipped")
def test_dashboard_in_a_real_browser(mirror: MyNoSQL.MyNoSQL, tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    url = mirror.db.server_url
    assert url is not None
    for i in range(12):
        mirror.savedoc({"id": f"b{i}"})
    errors: list[str] = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        try:
            ctx = browser.new_context(http_credentials={"username": "admin", "password": PASSWORD})
            page = ctx.new_page()
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"{url}/_dashboard")
            records = page.locator("#dbs td.records")  # locators: no eval, so the page's CSP stays on
            sync_api.expect(records).to_have_text("12", timeout=15000)
            peer = MyNoSQL.MyNoSQL(tmp_path / "peer")
            peer.opendb("db")
            try:
                for i in range(5):
                    peer.savedoc({"id": f"q{i}"})
                peer.addpeer(url.replace("http://", f"http://admin:{PASSWORD}@"))
                # the page refreshes itself and shows the replicated records
                sync_api.expect(records).to_have_text("17", timeout=30000)
                sync_api.expect(page.locator("#peers tbody tr").first.locator("td").nth(1)).to_have_text(
                    "admin", timeout=30000)
            finally:
                peer.closedb()
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
        finally:
            browser.close()
    assert errors == []
