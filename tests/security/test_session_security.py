"""Hostile input to cookie sessions (``/_session`` and the ``AuthSession`` cookie): malformed, forged, tampered
(another user's name or a later expiry under the same HMAC), oversized cookies and login bodies. None logs anyone
in, none gets a 5xx, and the mirror serves its real session afterwards."""

from __future__ import annotations

import base64
import http.client
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.mirrors import MirrorProcess, free_port

from MyNoSQL.server.session import COOKIE

PASSWORD = "correct horse battery"


class Serve(MirrorProcess):
    def req(self, method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            r = conn.getresponse()
            raw = r.read()
            try:
                answer = json.loads(raw) if raw else None
            except ValueError:
                answer = raw
            return r.status, {k.lower(): v for k, v in r.getheaders()}, answer
        finally:
            conn.close()


@pytest.fixture
def srv(tmp_path: Path) -> Iterator[Serve]:
    creds = tmp_path / "users.txt"
    creds.write_text(f"web:{PASSWORD}\nreader:{PASSWORD}:reader\n")
    s = Serve(tmp_path / "srv", "app", free_port(), [], ["--credentials", str(creds), "--max-auth-failures",
                                                         "1000000"])
    s.start()
    yield s
    s.stop()


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def login(srv: Serve, name: str = "web") -> str:
    status, headers, body = srv.req("POST", "/_session", json.dumps({"name": name, "password": PASSWORD}).encode(),
                                    {"Content-Type": "application/json"})
    assert status == 200 and body["ok"], body
    return headers["set-cookie"].split(";")[0].split("=", 1)[1]


def not_logged_in(srv: Serve, cookie: str) -> None:
    headers = {"Cookie": f"{COOKIE}={cookie}"}
    status, _, body = srv.req("PUT", "/app/hacked", b'{"v": 1}', {**headers, "Content-Type": "application/json"})
    assert status in (400, 401, 403), (cookie[:80], status, body)
    status, _, body = srv.req("GET", "/_session", headers=headers)
    assert status < 500, (cookie[:80], status)
    if status == 200:
        assert body["userCtx"]["name"] is None, (cookie[:80], body)
    # a forged cookie next to good Basic credentials never adds rights: the request is the reader's
    basic = "Basic " + base64.b64encode(f"reader:{PASSWORD}".encode()).decode()
    status, _, _ = srv.req("PUT", "/app/hacked", b'{"v": 1}', {**headers, "Authorization": basic,
                                                               "Content-Type": "application/json"})
    assert status in (400, 401, 403), (cookie[:80], status)


def test_malformed_and_forged_cookies_log_nobody_in(srv: Serve) -> None:
    real = login(srv)
    name, expires, mac = base64.urlsafe_b64decode(real + "=" * (-len(real) % 4)).decode().rsplit(":", 2)
    assert name == "web"
    later = f"{int(expires, 16) + 3600:x}"
    cases = [
        "", "=", "!!!!", "a" * 4000, '"quoted"', "web", b64(b"web"), b64(b"web:zz:abc"), b64(b":1:" + b"0" * 64),
        b64(b"\xff\xfe:1:2"), b64(f"web:{'f' * 12}:{'0' * 64}".encode()),  # far future, made-up HMAC
        b64(f"web:{expires}:{'0' * 64}".encode()),  # the real expiry, a made-up HMAC
        b64(f"reader:{expires}:{mac}".encode()),  # another user's name under web's HMAC
        b64(f"web:{later}:{mac}".encode()),  # a later expiry under the same HMAC
        b64(f"nobody:{expires}:{mac}".encode()),  # a user that does not exist
        b64(f"web\x00:{expires}:{mac}".encode()), b64(f"web:{expires}:{mac}:extra".encode()),
        b64(f"web:-{expires}:{mac}".encode()), b64(f"web:{expires}:{mac.upper()}".encode()),
        real[:-4] + ("AAAA" if not real.endswith("AAAA") else "BBBB"), real + "x", real[1:],
    ]
    for cookie in cases:
        not_logged_in(srv, cookie)
    # a cookie too large for a header: aiohttp refuses the request (400), the mirror goes on
    status, _, _ = srv.req("GET", "/_session", headers={"Cookie": f"{COOKIE}={'a' * 20_000}"})
    assert status == 400
    # the real session still works
    status, _, body = srv.req("GET", "/_session", headers={"Cookie": f"{COOKIE}={real}"})
    assert status == 200 and body["userCtx"]["name"] == "web"
    assert srv.req("PUT", "/app/ok", b'{"v": 1}', {"Cookie": f"{COOKIE}={real}",
                                                   "Content-Type": "application/json"})[0] == 201


def test_hostile_login_bodies_answer_4xx(srv: Serve) -> None:
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    js = {"Content-Type": "application/json"}
    cases: list[tuple[bytes, dict[str, str]]] = [
        (b"", js), (b"{nope", js), (b"[]", js), (b'"web"', js), (b"null", js),
        (json.dumps({"name": 5, "password": PASSWORD}).encode(), js),
        (json.dumps({"name": "web", "password": ["x"]}).encode(), js),
        (json.dumps({"name": "web"}).encode(), js), (json.dumps({"password": PASSWORD}).encode(), js),
        (json.dumps({"name": "w" * 100_000, "password": PASSWORD}).encode(), js),
        (json.dumps({"name": "web", "password": "p" * 2_000_000}).encode(), js),
        (json.dumps({"name": "web\x00", "password": PASSWORD}).encode(), js),
        (json.dumps({"name": "web", "password": PASSWORD + "\x00"}).encode(), js),
        (b"name=web", form), (b"name=web&password=%ZZ", form), (b"\xff\xfe=\xff", form),
        (b"name=web&password=wrong&name=reader", form),
        (json.dumps({"name": "web", "password": PASSWORD}).encode(), {"Content-Type": "text/plain"}),
    ]
    for body, headers in cases:
        status, resp_headers, answer = srv.req("POST", "/_session", body, headers)
        assert 400 <= status < 500, (body[:60], headers, status, answer)
        assert COOKIE not in resp_headers.get("set-cookie", "") or "Max-Age=0" in resp_headers["set-cookie"]
    assert login(srv)  # and a real login still works
