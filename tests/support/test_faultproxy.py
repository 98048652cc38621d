"""Tests for the fault-injecting TCP proxy (MyNoSQL.testing.faultproxy)."""

from __future__ import annotations

import contextlib
import http.client
import http.server
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from MyNoSQL.testing.faultproxy import FaultProxy, Mode
from support.mirrors import wait_until

# ---------------------------------------------------------------- helpers


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    timeout = 5  # a stuck upstream connection cannot pin a server thread forever

    def do_GET(self) -> None:
        # /size/N -> N bytes of body
        parts = self.path.strip("/").split("/")
        size = int(parts[1]) if len(parts) == 2 and parts[0] == "size" else 2
        body = b"x" * size
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Server", self.server.name)  # type: ignore[attr-defined]
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class HttpServer:
    def __init__(self, name: str) -> None:
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.name = name  # type: ignore[attr-defined]
        self.port = int(self.httpd.server_address[1])
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, name=f"http-{name}", daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


class Client:
    """Minimal HTTP/1.1 keep-alive client over a raw socket."""

    def __init__(self, port: int, timeout: float = 2.0, host: str = "127.0.0.1") -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.rfile = self.sock.makefile("rb")

    def get(self, path: str = "/size/2") -> tuple[int, dict[str, str], bytes]:
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
        status_line = self.rfile.readline()
        if not status_line:
            raise ConnectionError("EOF before response")
        status = int(status_line.split()[1])
        headers: dict[str, str] = {}
        while (line := self.rfile.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        body = self.rfile.read(int(headers["content-length"]))
        return status, headers, body

    def close(self) -> None:
        self.rfile.close()
        self.sock.close()


def read_to_eof(sock: socket.socket) -> bytes:
    data = bytearray()
    while chunk := sock.recv(65536):
        data += chunk
    return bytes(data)


def roundtrip(port: int, path: str = "/size/2", timeout: float = 2.0) -> tuple[int, dict[str, str], bytes]:
    c = Client(port, timeout)
    try:
        return c.get(path)
    finally:
        c.close()


# ---------------------------------------------------------------- fixtures


@pytest.fixture
def server() -> Iterator[HttpServer]:
    s = HttpServer("a")
    yield s
    s.close()


@pytest.fixture
def proxy(server: HttpServer) -> Iterator[FaultProxy]:
    with FaultProxy("127.0.0.1", server.port) as p:
        yield p
    assert p.errors == []


@pytest.fixture
def clients() -> Iterator[list[Client]]:
    made: list[Client] = []
    yield made
    for c in made:
        c.close()


# ---------------------------------------------------------------- tests


def test_pass_through_http(proxy: FaultProxy, clients: list[Client]) -> None:
    assert proxy.url == f"http://127.0.0.1:{proxy.port}"
    assert proxy.mode is Mode.PASS_THROUGH
    c = Client(proxy.port)
    clients.append(c)
    for size in (0, 5, 200_000):  # keep-alive, several requests on one connection
        status, headers, body = c.get(f"/size/{size}")
        assert (status, headers["x-server"], len(body)) == (200, "a", size)

    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=2)
    try:
        conn.request("GET", "/size/3")
        assert conn.getresponse().read() == b"xxx"
    finally:
        conn.close()
    stats = proxy.stats()
    assert stats.accepted == 2
    assert stats.bytes_server_to_client > 200_000
    assert stats.bytes_client_to_server > 0
    assert stats.cut == stats.dropped == stats.bytes_discarded == 0
    proxy.reset_stats()
    assert proxy.stats().accepted == proxy.stats().bytes_server_to_client == 0


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)


def test_pass_through_raw_bytes_and_half_close() -> None:
    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo) as echo:
        echo.daemon_threads = True
        t = threading.Thread(target=echo.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        t.start()
        try:
            with FaultProxy("127.0.0.1", echo.server_address[1]) as proxy:
                payload = bytes(range(256)) * 4096  # 1 MiB
                with socket.create_connection(("127.0.0.1", proxy.port), timeout=2) as s:

                    def send() -> None:
                        s.sendall(payload)
                        s.shutdown(socket.SHUT_WR)

                    sender = threading.Thread(target=send)
                    sender.start()
                    echoed = read_to_eof(s)  # EOF only arrives if the half-close was propagated
                    sender.join(2)
                assert echoed == payload
                stats = proxy.stats()
                assert stats.bytes_client_to_server == stats.bytes_server_to_client == len(payload)
                assert proxy.errors == []
        finally:
            echo.shutdown()
            t.join(2)


def test_delay_adds_latency_and_heal_removes_it(proxy: FaultProxy, clients: list[Client]) -> None:
    c = Client(proxy.port)
    clients.append(c)
    c.get()  # warm up the connection
    delay = 0.25
    proxy.delay(delay)
    assert proxy.mode is Mode.DELAY
    t0 = time.monotonic()
    status, _, _ = c.get()
    elapsed = time.monotonic() - t0
    assert status == 200
    # At least one chunk each way (request, response), each held `delay` seconds.
    assert elapsed >= 2 * delay - 0.01

    proxy.heal()
    t0 = time.monotonic()
    c.get()
    assert time.monotonic() - t0 < delay


def test_drop_new_closes_new_connections_only(proxy: FaultProxy, clients: list[Client]) -> None:
    old = Client(proxy.port)
    clients.append(old)
    assert old.get()[0] == 200

    proxy.drop_new()
    new = Client(proxy.port)
    clients.append(new)
    with pytest.raises(ConnectionError):  # EOF (or reset if our request was unread at close)
        new.get()
    assert old.get()[0] == 200  # established connection unaffected
    assert proxy.stats().dropped == 1

    proxy.heal()
    assert roundtrip(proxy.port)[0] == 200


def test_blackhole_new_and_existing_connections_time_out(proxy: FaultProxy, clients: list[Client]) -> None:
    old = Client(proxy.port, timeout=0.3)
    clients.append(old)
    assert old.get()[0] == 200

    proxy.blackhole()
    new = Client(proxy.port, timeout=0.3)  # the connect itself succeeds
    clients.append(new)
    with pytest.raises(TimeoutError):
        new.get()
    with pytest.raises(TimeoutError):
        old.get()
    assert proxy.stats().bytes_discarded > 0

    proxy.heal()
    assert roundtrip(proxy.port)[0] == 200


def test_partition_cuts_existing_and_refuses_new(proxy: FaultProxy, clients: list[Client]) -> None:
    old = Client(proxy.port)
    clients.append(old)
    assert old.get()[0] == 200

    proxy.partition()
    # partition() returns after the existing connection was reset: reading gives EOF/reset at once.
    old.sock.settimeout(1.0)
    with pytest.raises(ConnectionError):
        old.get()
    with pytest.raises(ConnectionError):
        roundtrip(proxy.port, timeout=1.0)
    stats = proxy.stats()
    assert stats.cut == 1
    assert stats.dropped == 1

    proxy.heal()
    assert roundtrip(proxy.port)[0] == 200


def test_cut_after_truncates_response_body(proxy: FaultProxy) -> None:
    proxy.cut_after(300)
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=2) as s:
        s.sendall(b"GET /size/10000 HTTP/1.1\r\nHost: test\r\n\r\n")
        raw = read_to_eof(s)
    assert len(raw) == 300
    head, sep, body = raw.partition(b"\r\n\r\n")
    assert sep
    assert b"Content-Length: 10000" in head
    assert 0 < len(body) < 10000

    # The same through http.client: fewer bytes than Content-Length.
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=2)
    try:
        conn.request("GET", "/size/10000")
        resp = conn.getresponse()
        assert resp.status == 200
        with pytest.raises(http.client.IncompleteRead) as info:
            resp.read()
        assert 0 < len(info.value.partial) < 10000
    finally:
        conn.close()
    assert proxy.stats().cut == 2

    proxy.heal()
    assert len(roundtrip(proxy.port, "/size/10000")[2]) == 10000


def test_cut_after_counts_from_when_mode_was_set(proxy: FaultProxy, clients: list[Client]) -> None:
    c = Client(proxy.port)
    clients.append(c)
    assert len(c.get("/size/5000")[2]) == 5000  # these bytes do not count towards the cut
    proxy.cut_after(40)
    c.sock.sendall(b"GET /size/5000 HTTP/1.1\r\nHost: test\r\n\r\n")
    c.rfile.close()
    assert len(read_to_eof(c.sock)) == 40


def test_set_target_redirects_new_connections(proxy: FaultProxy, clients: list[Client]) -> None:
    other = HttpServer("b")
    try:
        old = Client(proxy.port)
        clients.append(old)
        assert old.get()[1]["x-server"] == "a"
        proxy.set_target("127.0.0.1", other.port)
        assert proxy.target == ("127.0.0.1", other.port)
        assert roundtrip(proxy.port)[1]["x-server"] == "b"
        assert old.get()[1]["x-server"] == "a"  # established connection keeps its target
    finally:
        other.close()


def test_unreachable_target_closes_client() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    with FaultProxy("127.0.0.1", dead_port) as proxy:
        with pytest.raises(ConnectionError):
            roundtrip(proxy.port)
        assert proxy.stats().upstream_failures == 1
        assert proxy.errors == []


def test_stop_joins_threads_and_closes_everything(server: HttpServer) -> None:
    baseline = set(threading.enumerate())
    proxy = FaultProxy("127.0.0.1", server.port).start()
    thread = next(t for t in threading.enumerate() if t.name.startswith("FaultProxy"))
    port = proxy.port
    live = [Client(port), Client(port), Client(port)]
    for c in live:
        assert c.get()[0] == 200
    proxy.blackhole()
    sunk = Client(port, timeout=0.3)
    sunk.sock.sendall(b"GET / HTTP/1.1\r\n\r\n")
    proxy.delay(5.0)  # a pending 5 s delay must not hold up stop()
    live[0].sock.sendall(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
    wait_until(lambda: proxy.stats().bytes_client_to_server > 0 and proxy.stats().active == 4)

    t0 = time.monotonic()
    proxy.stop()
    assert time.monotonic() - t0 < 2.0
    proxy.stop()  # idempotent
    assert not thread.is_alive()
    assert not [t for t in threading.enumerate() if t.name.startswith("FaultProxy")]
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    # Client-side sockets see EOF...
    for c in [*live, sunk]:
        c.sock.settimeout(1.0)
        assert c.sock.recv(1) == b""
        c.close()
    # ...and the upstream sockets were closed too: the server's per-connection threads finish.
    wait_until(lambda: set(threading.enumerate()) <= baseline, what="server handler threads to exit")
    assert proxy.errors == []
    with pytest.raises(RuntimeError):
        proxy.start()


def test_modes_can_be_flipped_concurrently(proxy: FaultProxy) -> None:
    stop = threading.Event()

    def flipper() -> None:
        modes: list[Callable[[], None]] = [
            proxy.pass_through,
            lambda: proxy.delay(0.001),
            proxy.drop_new,
            proxy.blackhole,
            proxy.partition,
            lambda: proxy.cut_after(10),
            proxy.heal,
        ]
        i = 0
        while not stop.is_set():
            modes[i % len(modes)]()
            i += 1
            stop.wait(0.005)

    t = threading.Thread(target=flipper)
    t.start()
    ok = 0
    try:
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            # Any client-side failure is expected while modes flip; only the proxy's health matters.
            with contextlib.suppress(OSError, ValueError, KeyError, IndexError):
                roundtrip(proxy.port, timeout=0.05)
                ok += 1
    finally:
        stop.set()
        t.join(2)
    proxy.heal()
    assert roundtrip(proxy.port)[0] == 200
    assert proxy.stats().accepted > 10
    assert proxy.errors == []


def test_ipv6_loopback_listen(server: HttpServer) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        pytest.skip("::1 not available")
    with FaultProxy("127.0.0.1", server.port, listen_host="::1") as proxy:
        assert proxy.url == f"http://[::1]:{proxy.port}"
        c = Client(proxy.port, host="::1")
        try:
            assert c.get()[0] == 200
        finally:
            c.close()


@pytest.mark.parametrize(
    "host", ["10.0.0.1", "0.0.0.0", "8.8.8.8", "192.168.1.1", "::", "2001:db8::1", "example.com", "", "[::1]"]
)
def test_non_loopback_hosts_are_refused(host: str) -> None:
    with pytest.raises(ValueError):
        FaultProxy(host, 80)
    with pytest.raises(ValueError):
        FaultProxy("127.0.0.1", 80, listen_host=host)
    p = FaultProxy("127.0.0.1", 80)
    with pytest.raises(ValueError):
        p.set_target(host, 80)
    assert p.target == ("127.0.0.1", 80)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.1.2.3", "::1", "localhost"])
def test_loopback_hosts_are_accepted(host: str) -> None:
    FaultProxy(host, 80, listen_host=host).set_target(host, 81)


def test_argument_validation() -> None:
    p = FaultProxy("127.0.0.1", 80)
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError):
            p.cut_after(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        p.delay(-0.1)
    with pytest.raises(ValueError):
        FaultProxy("127.0.0.1", 0)
    with pytest.raises(RuntimeError):
        _ = p.port
    p.stop()  # stop() before start() is a no-op
