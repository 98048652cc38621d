"""A PouchDB web app in a real browser (Debian's Chromium), served from an origin of its own, logs in to a mirror
with a cookie session and syncs both ways with it: what a browser needs (CORS, cookies) as a real one checks it."""

from __future__ import annotations

import base64
import contextlib
import hashlib
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
from support.mirrors import MirrorProcess, free_port, wait_until

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
    files = {f"/{page}": (HERE / page).read_bytes() for page in ("app.html", "attachments.html")}
    files["/pouchdb.min.js"] = BUNDLE.read_bytes()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = files.get(urllib.parse.urlsplit(self.path).path)
            self.send_response(200 if body is not None else 404)
            self.send_header("Content-Type", "text/html" if ".html" in self.path else "text/javascript")
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@contextlib.contextmanager
def browser_page(url: str) -> Iterator[Any]:
    """A page of a fresh headless Chromium (Debian's, never a downloaded one) at ``url``."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        try:
            page = browser.new_page()
            page.set_default_timeout(60000)
            page.goto(url)
            yield page
        finally:
            browser.close()


def run_app(url: str) -> dict[str, Any]:
    with browser_page(url) as page:
        page.wait_for_function("window.result !== undefined", timeout=60000)
        result: dict[str, Any] = page.evaluate("window.result")
        return result


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


def pattern(n: int, seed: int) -> bytes:
    """The bytes the page's ``pattern(n, seed)`` makes: a 31-bit LCG, one byte of each step (all 256 values)."""
    out = bytearray(n)
    x = seed & 0x7FFFFFFF
    for i in range(n):
        x = (x * 1103515245 + 12345) & 0x7FFFFFFF
        out[i] = (x >> 16) & 0xFF
    return bytes(out)


def md5_digest(data: bytes) -> str:
    """CouchDB's digest of an attachment's bytes."""
    return "md5-" + base64.b64encode(hashlib.md5(data).digest()).decode()


def fetch_raw(url: str) -> tuple[int, bytes, str]:
    """(status, body, Content-Type) of a GET as the mirror's admin; an error status is returned, not raised."""
    req = urllib.request.Request(url, headers={
        "Authorization": "Basic " + base64.b64encode(f"root:{PASSWORD}".encode()).decode()})
    try:
        with urllib.request.urlopen(req, timeout=15) as r:
            return r.status, r.read(), r.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers.get("Content-Type", "")


def check_seen(seen: dict[str, Any] | None, expected: dict[str, tuple[bytes, str]]) -> None:
    """What the page read of a document's attachments is exactly ``expected`` ({name: (bytes, content type)}):
    the bytes, their SHA-256 as the browser computed it, and the stub's md5 digest and length."""
    assert seen is not None
    assert sorted(seen["attachments"]) == sorted(expected), seen["attachments"].keys()
    for name, (data, ctype) in expected.items():
        got = seen["attachments"][name]
        assert base64.b64decode(got["base64"]) == data, name
        assert got["sha256"] == hashlib.sha256(data).hexdigest(), name
        assert got["length"] == got["stub_length"] == len(data), name
        assert got["digest"] == md5_digest(data), name
        assert got["stub_type"] == ctype and got["type"].split(";")[0] == ctype, (name, got["type"])


def test_a_web_app_syncs_attachments_both_ways(tmp_path: Path, app_origin: str) -> None:
    """A browser puts a document with a 200 KiB binary attachment and a text one and syncs; a Python peer reads
    them from the mirror byte for byte (and CouchDB's md5 digest), and pushes a record with its own attachments
    that the browser pulls and digests; then updates and deletes of attachments on both sides replicate, and
    the browser uses the mirror's attachment routes directly (GET and PUT of raw bytes, across origins)."""
    import MyNoSQL

    creds = tmp_path / "users.txt"
    creds.write_text(f"root:{PASSWORD}:admin\nweb:{PASSWORD}\n")
    m = MirrorProcess(tmp_path / "srv", "app", free_port(), [],
                      ["--credentials", str(creds), "--cors-origin", app_origin]).start()
    py = MyNoSQL.MyNoSQL(tmp_path / "py", options=MyNoSQL.Options(background_sync=False))
    try:
        py.opendb("app")
        db_url = m.url.replace("http://", f"http://root:{urllib.parse.quote(PASSWORD)}@") + "/app"
        photo, note = pattern(200 * 1024, 42), "hello from the browser \u2713"
        pic, readme = pattern(300 * 1000, 7), b"a text from Python\n"
        py.savedoc({"id": "py-doc", "from": "python"})
        rev = py.putattachment("py-doc", "pic.png", pic, "image/png", py.readdoc("py-doc")["rev"])
        py.putattachment("py-doc", "readme.txt", readme, "text/plain", rev)
        assert py.push(db_url)["errors"] == []

        with browser_page(f"{app_origin}/attachments.html") as page:
            page.wait_for_function("window.ready === true")

            def step(call: str, *args: Any) -> Any:
                return page.evaluate(f"(args) => app.{call}(...args)", list(args))

            assert step("login", m.url, "app", "web", PASSWORD) == {"status": 200, "user": "web"}
            step("putDoc", "browser-doc", len(photo), 42, note)
            assert step("sync") == {"pushed": 1, "pulled": 1, "errors": 0}

            # the browser's attachments on the mirror, as raw bytes and stubs, and through a Python pull
            stubs = call("GET", f"{m.url}/app/browser-doc")["_attachments"]
            assert stubs["photo.bin"]["digest"] == md5_digest(photo) and stubs["photo.bin"]["length"] == len(photo)
            assert stubs["note.txt"]["digest"] == md5_digest(note.encode())
            assert fetch_raw(f"{m.url}/app/browser-doc/photo.bin") == (200, photo, "application/octet-stream")
            status, body, ctype = fetch_raw(f"{m.url}/app/browser-doc/note.txt")
            assert (status, body.decode(), ctype) == (200, note, "text/plain")
            assert py.pull(db_url)["errors"] == []
            assert py.getattachment("browser-doc", "photo.bin") == photo
            assert py.attachments("browser-doc")["photo.bin"]["digest"] == md5_digest(photo)
            assert py.getattachment("browser-doc", "note.txt") == note.encode()
            # Python's attachments in the browser, digested there
            check_seen(step("read", "py-doc"), {"pic.png": (pic, "image/png"), "readme.txt": (readme, "text/plain")})

            # updates on both sides: the browser replaces its note, Python its picture and drops its readme
            step("putText", "browser-doc", "note.txt", "second version")
            pic2 = pattern(150 * 1000, 8)
            rev = py.putattachment("py-doc", "pic.png", pic2, "image/png", py.readdoc("py-doc")["rev"])
            py.deleteattachment("py-doc", "readme.txt", rev)
            assert py.push(db_url)["errors"] == []
            assert step("sync") == {"pushed": 1, "pulled": 1, "errors": 0}
            assert fetch_raw(f"{m.url}/app/browser-doc/note.txt")[1] == b"second version"
            assert fetch_raw(f"{m.url}/app/browser-doc/photo.bin")[1] == photo
            check_seen(step("read", "py-doc"), {"pic.png": (pic2, "image/png")})
            check_seen(step("read", "browser-doc"), {"photo.bin": (photo, "application/octet-stream"),
                                                     "note.txt": (b"second version", "text/plain")})

            # deletes on both sides
            step("remove", "browser-doc", "photo.bin")
            assert py.pull(db_url)["errors"] == []
            py.deleteattachment("py-doc", "pic.png", py.readdoc("py-doc")["rev"])
            assert py.push(db_url)["errors"] == []
            assert step("sync") == {"pushed": 1, "pulled": 1, "errors": 0}
            assert sorted(call("GET", f"{m.url}/app/browser-doc")["_attachments"]) == ["note.txt"]
            assert fetch_raw(f"{m.url}/app/browser-doc/photo.bin")[0] == 404
            assert "_attachments" not in call("GET", f"{m.url}/app/py-doc")
            check_seen(step("read", "py-doc"), {})
            assert py.pull(db_url)["errors"] == []
            assert sorted(py.attachments("browser-doc")) == ["note.txt"]

            # the attachment routes straight from the browser: raw bytes both ways, across origins, with the cookie
            seen = step("remoteGet", "browser-doc", "note.txt")
            assert base64.b64decode(seen["base64"]) == b"second version" and seen["type"] == "text/plain"
            name = "scans/p\u00e4ge 1 #?.png"  # a slash, non-ASCII, and characters a URL must escape
            step("remotePut", "py-doc", name, 5000, 9)
            quoted = urllib.parse.quote(name, safe="/")
            assert fetch_raw(f"{m.url}/app/py-doc/{quoted}") == (200, pattern(5000, 9), "image/png")
            assert step("remoteErrors", "py-doc") == {"missing": 404, "stale": 409, "nodoc": 404}
            got = step("remoteDoc", "py-doc")
            assert sorted(got) == ["leaf0", "winner"] and got["leaf0"] == got["winner"]
            assert list(got["winner"]) == [name] and got["winner"][name]["digest"] == md5_digest(pattern(5000, 9))
            assert base64.b64decode(got["winner"][name]["base64"]) == pattern(5000, 9)
            assert step("sync") == {"pushed": 0, "pulled": 1, "errors": 0}
            check_seen(step("read", "py-doc"), {name: (pattern(5000, 9), "image/png")})
            assert py.pull(db_url)["errors"] == []
            assert py.getattachment("py-doc", name) == pattern(5000, 9)

            # a live sync: what Python pushes reaches the page, what the page puts reaches the mirror, as it happens
            step("startLive")
            live = pattern(64 * 1024, 11)
            py.putattachment("live-py", "live.bin", live, "application/octet-stream")
            assert py.push(db_url)["errors"] == []
            seen = step("waitFor", "live-py", "live.bin", md5_digest(live), 30000)
            check_seen(seen, {"live.bin": (live, "application/octet-stream")})
            step("putDoc", "live-browser", 70 * 1024, 12, "live from the browser")
            wait_until(lambda: fetch_raw(f"{m.url}/app/live-browser/photo.bin")[1] == pattern(70 * 1024, 12),
                       timeout=30, what="the page's attachment on the mirror")
            assert step("stopLive") == []
    finally:
        py.closedb()
        m.stop()


@pytest.mark.slow
@pytest.mark.soak
def test_a_web_app_pushes_a_batch_of_photos_larger_than_a_request_may_be(tmp_path: Path, app_origin: str) -> None:
    """PouchDB sends a batch with its attachments inline (base64 JSON): 16 photos of 2 MiB make one ~45 MB
    _bulk_docs body, over the mirror's request limit (32 MiB); the mirror reads it a document at a time, and
    every photo arrives whole."""
    creds = tmp_path / "users.txt"
    creds.write_text(f"root:{PASSWORD}:admin\nweb:{PASSWORD}\n")
    m = MirrorProcess(tmp_path / "srv", "app", free_port(), [],
                      ["--credentials", str(creds), "--cors-origin", app_origin]).start()
    try:
        with browser_page(f"{app_origin}/attachments.html") as page:
            page.wait_for_function("window.ready === true")

            def step(call: str, *args: Any) -> Any:
                return page.evaluate(f"(args) => app.{call}(...args)", list(args))

            assert step("login", m.url, "app", "web", PASSWORD)["status"] == 200
            sums = step("putPhotos", "photo-", 16, 2 * 1024 * 1024)
            assert step("sync") == {"pushed": 16, "pulled": 0, "errors": 0}
        for id, sha in sums.items():
            status, data, ctype = fetch_raw(f"{m.url}/app/{id}/photo.jpg")
            assert (status, len(data), ctype) == (200, 2 * 1024 * 1024, "image/jpeg")
            assert hashlib.sha256(data).hexdigest() == sha
            assert call("GET", f"{m.url}/app/{id}")["_attachments"]["photo.jpg"]["digest"] == md5_digest(data)
    finally:
        m.stop()
