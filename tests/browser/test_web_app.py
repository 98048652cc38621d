"""A PouchDB web app in a real browser (Debian's Chromium), served from an origin of its own, logs in to a mirror
with a cookie session and syncs both ways with it: what a browser needs (CORS, cookies) as a real one checks it."""

from __future__ import annotations

import base64
import http.server
import json
import shutil
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.mirrors import MirrorProcess, free_port

HERE = Path(__file__).resolve().parent
BUNDLE = HERE.parent / "interop" / "node_modules" / "pouchdb" / "dist" / "pouchdb.min.js"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
PASSWORD = "correct horse battery"


def call(method: str, url: str, body: Any = None) -> Any:
    """One JSON request as the mirror's admin."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={
        "Content-Type": "application/json",
        "Authorization": "Basic " + base64.b64encode(f"root:{PASSWORD}".encode()).decode()})
    with urllib.request.urlopen(req, timeout=15) as r:
        return json.loads(r.read())

pytestmark = [pytest.mark.browser, pytest.mark.skipif(CHROMIUM is None, reason="no Chromium (Debian: chromium)")]


@pytest.fixture
def app_origin(pouch_node_modules: None) -> Iterator[str]:
    """The web app's own origin: a static server on 127.0.0.1 with the page and PouchDB's browser bundle."""
    files = {"/app.html": (HERE / "app.html").read_bytes(), "/pouchdb.min.js": BUNDLE.read_bytes()}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = files.get(urllib.parse.urlsplit(self.path).path)
            self.send_response(200 if body is not None else 404)
            self.send_header("Content-Type", "text/html" if self.path.startswith("/app") else "text/javascript")
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def run_app(url: str) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        try:
            page = browser.new_page()
            page.goto(url)
            page.wait_for_function("window.result !== undefined", timeout=60000)
            result: dict[str, Any] = page.evaluate("window.result")
            return result
        finally:
            browser.close()


def test_a_web_app_logs_in_with_a_cookie_and_syncs_both_ways(tmp_path: Path, app_origin: str) -> None:
    creds = tmp_path / "users.txt"
    creds.write_text(f"root:{PASSWORD}:admin\nweb:{PASSWORD}\n")
    m = MirrorProcess(tmp_path / "srv", "app", free_port(), [],
                      ["--credentials", str(creds), "--cors-origin", app_origin]).start()
    try:
        auth = m.url
        for i in range(5):
            call("PUT", f"{auth}/app/server-{i}", {"n": i, "from": "server"})
        query = urllib.parse.urlencode({"mirror": m.url, "db": "app", "name": "web", "password": PASSWORD})
        result = run_app(f"{app_origin}/app.html?{query}")
        assert result["ok"], result
        assert result["login"] == 200 and result["user"] == "web"
        assert result["pushed"] == 20 and result["pulled"] == 5
        assert sorted(result["local_ids"]) == sorted([f"browser-{i}" for i in range(20)]
                                                     + [f"server-{i}" for i in range(5)])
        assert call("GET", f"{auth}/app")["doc_count"] == 25
        assert call("GET", f"{auth}/app/browser-7")["from"] == "browser"
        # the same page from an origin the mirror does not allow: the browser refuses the calls
        other = app_origin.replace("127.0.0.1", "localhost")
        refused = run_app(f"{other}/app.html?{query}")
        assert refused["ok"] is False, refused
    finally:
        m.stop()
