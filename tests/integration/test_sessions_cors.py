"""Cookie sessions (POST/GET/DELETE /_session) and CORS, as CouchDB has them, against a real `serve` process."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from support.mirrors import MirrorProcess, free_port

from MyNoSQL.credentials import Users
from MyNoSQL.server.session import COOKIE, Sessions

PASSWORD = "correct horse battery"
APP = "http://app.example:3000"


def send(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None) -> tuple[int, Any, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=15) as r:
            raw = r.read()
            return r.status, r.headers, json.loads(raw) if raw else None
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        return exc.code, exc.headers, json.loads(raw) if raw else None


@pytest.fixture
def mirror(tmp_path: Path) -> Any:
    creds = tmp_path / "users.txt"
    creds.write_text(f"web:{PASSWORD}\nreader:{PASSWORD}:reader\n")
    m = MirrorProcess(tmp_path / "srv", "app", free_port(), [], ["--credentials", str(creds), "--cors-origin", APP,
                                                                 "--max-auth-failures", "5"]).start()
    yield m
    m.stop()


def cookie_of(headers: Any) -> str:
    for value in headers.get_all("Set-Cookie") or []:
        if value.startswith(COOKIE + "="):
            return value
    raise AssertionError("no AuthSession cookie set")


def test_a_cookie_session_logs_in_once_and_logs_out(mirror: Any) -> None:
    url = mirror.url
    status, headers, body = send("POST", f"{url}/_session", {"name": "web", "password": PASSWORD})
    assert status == 200 and body == {"ok": True, "name": "web", "roles": ["replicator"]}
    set_cookie = cookie_of(headers)
    assert "HttpOnly" in set_cookie and "SameSite=Lax" in set_cookie and "Path=/" in set_cookie
    cookie = {"Cookie": set_cookie.split(";")[0]}
    assert send("PUT", f"{url}/app/a", {"v": 1}, cookie)[0] == 201  # the cookie stands for the password
    status, _, who = send("GET", f"{url}/_session", headers=cookie)
    assert who["userCtx"] == {"name": "web", "roles": ["replicator"]} and who["info"]["authenticated"] == "cookie"
    assert send("GET", f"{url}/_session")[2]["userCtx"] == {"name": None, "roles": []}
    forged = {"Cookie": f"{COOKIE}=" + cookie["Cookie"].split("=", 1)[1][:-4] + "AAAA"}
    assert send("GET", f"{url}/app/a", headers=forged)[0] == 401
    status, headers, _ = send("DELETE", f"{url}/_session", headers=cookie)
    assert status == 200 and "Max-Age=0" in cookie_of(headers)
    assert send("POST", f"{url}/_session", {"name": "web", "password": "wrong password"})[0] == 401
    assert send("POST", f"{url}/_session", {"name": "web"})[0] == 400


def test_session_logins_are_throttled_like_any_login(mirror: Any) -> None:
    codes = [send("POST", f"{mirror.url}/_session", {"name": "web", "password": f"guess {i}"})[0] for i in range(7)]
    assert codes[:5] == [401] * 5 and codes[5:] == [429, 429]


def test_a_session_expires_and_is_renewed_after_half_its_life(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    users = Users(tmp_path / "users.json")
    users.set("web", PASSWORD)
    sessions = Sessions(users, seconds=600)
    now = time.time()
    value = sessions.cookie_value("web")
    assert sessions.check(value) == ("web", False)
    monkeypatch.setattr(time, "time", lambda: now + 400)
    assert sessions.check(value) == ("web", True)  # past half its life: renew it
    monkeypatch.setattr(time, "time", lambda: now + 601)
    assert sessions.check(value) is None  # expired
    monkeypatch.setattr(time, "time", lambda: now)
    users.set("web", "a new password!")  # a new password ends the sessions made with the old one
    assert sessions.check(value) is None


def test_cors_is_answered_for_allowed_origins_only(mirror: Any) -> None:
    url = mirror.url
    status, headers, _ = send("OPTIONS", f"{url}/app/_changes", headers={
        "Origin": APP, "Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "content-type"})
    assert status == 204 and headers["Access-Control-Allow-Origin"] == APP  # no credentials needed for it
    assert headers["Access-Control-Allow-Credentials"] == "true"
    assert "GET" in headers["Access-Control-Allow-Methods"]
    assert "content-type" in headers["Access-Control-Allow-Headers"]
    status, headers, _ = send("GET", f"{url}/app", headers={"Origin": APP})
    assert status == 401 and headers["Access-Control-Allow-Origin"] == APP  # the browser can read the 401
    status, headers, _ = send("GET", f"{url}/", headers={"Origin": "http://elsewhere.example"})
    assert status == 200 and "Access-Control-Allow-Origin" not in headers
    status, _, _ = send("OPTIONS", f"{url}/app", headers={"Origin": "http://elsewhere.example",
                                                          "Access-Control-Request-Method": "GET"})
    assert status == 403


def test_any_origin_gets_no_credentials(tmp_path: Path) -> None:
    m = MirrorProcess(tmp_path / "open", "app", free_port(), [], ["--cors-origin", "*"]).start()
    try:
        status, headers, _ = send("GET", f"{m.url}/app", headers={"Origin": "http://any.example"})
        assert status == 200 and headers["Access-Control-Allow-Origin"] == "*"
        assert "Access-Control-Allow-Credentials" not in headers
    finally:
        m.stop()
