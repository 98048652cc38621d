"""Harness for interop tests against a real PouchDB HTTP server (stdlib and MyNoSQL.testing only).

The Node side lives next to this module: ``server.js`` (express + express-pouchdb over an in-memory
PouchDB, bound to 127.0.0.1) and ``replicate.js`` (a one-shot ``PouchDB.replicate`` CLI).  Their
dependencies are pinned in ``package.json`` / ``package-lock.json``; ``node_modules`` is git-ignored
and installed on demand with ``npm ci``.

Usage from a test (the ``pouchdb_url`` fixture in ``conftest.py`` wraps the first three steps and
skips when node/npm are missing)::

    from pouch import ensure_node_modules, npm_available, pouch_replicate, pouchdb_server

    if npm_available():
        ensure_node_modules()                 # npm ci, only if node_modules is missing or stale
        with pouchdb_server() as server:      # node server.js 0, waits for "LISTENING <port>"
            print(server.url)                 # http://127.0.0.1:<port>
            result = pouch_replicate(f"{server.url}/a", f"{server.url}/b", timeout=60)
            assert result["ok"]
        # leaving the block sends SIGTERM (SIGKILL after a timeout) and always reaps the process

Every wait is bounded: starting the server waits on its stdout with a deadline, ``npm ci`` and
replication run under subprocess timeouts, and ``replicate.js`` has its own overall and per-request
timeouts.  Only 127.0.0.1 is used.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from MyNoSQL.testing import poll_until

__all__ = [
    "INTEROP_DIR",
    "PouchHarnessError",
    "PouchReplicationError",
    "PouchServer",
    "ensure_node_modules",
    "node_modules_fresh",
    "npm_available",
    "pouch_replicate",
    "pouchdb_server",
]

INTEROP_DIR = Path(__file__).resolve().parent
SERVER_JS = INTEROP_DIR / "server.js"
REPLICATE_JS = INTEROP_DIR / "replicate.js"
PACKAGE_JSON = INTEROP_DIR / "package.json"
PACKAGE_LOCK = INTEROP_DIR / "package-lock.json"
NODE_MODULES = INTEROP_DIR / "node_modules"
# npm writes this "hidden lockfile" describing what is actually installed in node_modules.
HIDDEN_LOCK = NODE_MODULES / ".package-lock.json"

MIN_NODE_MAJOR = 18
HOST = "127.0.0.1"
SERVER_MODES = ("fullCouchDB", "minimumForPouchDB")
_LISTENING_RE = re.compile(r"^LISTENING (\d{1,5})$")
_VERSION_TIMEOUT_S = 15.0
_STDERR_TAIL_CHARS = 4000
_MAX_PREAMBLE_LINES = 1000  # stdout lines tolerated before LISTENING
# replicate.js enforces its own timeout; the subprocess gets this much extra before it is killed.
_REPLICATE_GRACE_S = 15.0


class PouchHarnessError(RuntimeError):
    """The Node side of the harness could not be installed, started or run."""


class PouchReplicationError(PouchHarnessError):
    """replicate.js reported a failed (or timed-out) replication; ``result`` holds its JSON line."""

    def __init__(self, message: str, result: dict[str, Any]) -> None:
        super().__init__(message)
        self.result = result


def _node_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "npm_config_audit": "false",
            "npm_config_fund": "false",
            "npm_config_update_notifier": "false",
            "npm_config_loglevel": "error",
        }
    )
    if extra:
        env.update(extra)
    return env


def _tail(text: str, limit: int = _STDERR_TAIL_CHARS) -> str:
    text = text.strip()
    return text if len(text) <= limit else "..." + text[-limit:]


def _tool_version(tool: str) -> str | None:
    path = shutil.which(tool)
    if path is None:
        return None
    try:
        proc = subprocess.run(
            [path, "--version"],
            capture_output=True,
            text=True,
            timeout=_VERSION_TIMEOUT_S,
            env=_node_env(),
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def npm_available() -> bool:
    """True if ``node`` (>= 18) and ``npm`` are on PATH and answer ``--version``."""
    node_version = _tool_version("node")
    if node_version is None or _tool_version("npm") is None:
        return False
    match = re.match(r"v?(\d+)\.", node_version)
    return match is not None and int(match.group(1)) >= MIN_NODE_MAJOR


def _read_json(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as fh:
        data = json.load(fh)
    if not isinstance(data, dict):
        raise PouchHarnessError(f"{path} does not hold a JSON object")
    return data


def _check_lock_matches_package_json() -> dict[str, Any]:
    """Return the lockfile's ``packages`` map (root excluded) after checking it against package.json."""
    package = _read_json(PACKAGE_JSON)
    lock = _read_json(PACKAGE_LOCK)
    packages = lock.get("packages")
    if not isinstance(packages, dict):
        raise PouchHarnessError(f"{PACKAGE_LOCK} has no 'packages' map (lockfileVersion >= 2 expected)")
    root = packages.get("", {})
    if root.get("dependencies", {}) != package.get("dependencies", {}):
        raise PouchHarnessError(
            f"{PACKAGE_LOCK} does not match the dependencies in {PACKAGE_JSON}; "
            f"run `npm install` in {INTEROP_DIR} and commit the new lockfile"
        )
    return {key: value for key, value in packages.items() if key}


def node_modules_fresh() -> bool:
    """True if node_modules holds exactly what package-lock.json pins (per npm's hidden lockfile)."""
    locked = _check_lock_matches_package_json()
    if not HIDDEN_LOCK.is_file():
        return False
    try:
        installed = _read_json(HIDDEN_LOCK).get("packages")
    except (OSError, ValueError, PouchHarnessError):
        return False
    return installed == locked


@contextlib.contextmanager
def _install_lock(timeout: float) -> Iterator[None]:
    """Serialise ``npm ci`` across processes (e.g. pytest-xdist workers), waiting at most ``timeout``."""
    digest = hashlib.sha256(str(INTEROP_DIR).encode()).hexdigest()[:16]
    lock_path = Path(tempfile.gettempdir()) / f"mynosql-interop-npm-{digest}.lock"
    with lock_path.open("a") as fh:

        def locked() -> bool:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            return True

        try:
            poll_until(locked, timeout=timeout, interval=0.2, what=f"the lock of another `npm ci` ({lock_path})")
        except TimeoutError as exc:
            raise PouchHarnessError(str(exc)) from None
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def ensure_node_modules(timeout: float = 300.0) -> None:
    """Run ``npm ci`` in the interop directory if node_modules is missing or stale.

    Raises ``PouchHarnessError`` with npm's output if npm is missing, fails or exceeds ``timeout``.
    """
    if node_modules_fresh():
        return
    npm = shutil.which("npm")
    if npm is None:
        raise PouchHarnessError("npm is not on PATH; cannot install the PouchDB interop harness")
    deadline = time.monotonic() + timeout
    with _install_lock(timeout):
        if node_modules_fresh():  # another process installed while we waited
            return
        remaining = max(1.0, deadline - time.monotonic())
        cmd = [npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--prefer-offline"]
        try:
            proc = subprocess.run(
                cmd,
                cwd=INTEROP_DIR,
                capture_output=True,
                text=True,
                timeout=remaining,
                env=_node_env(),
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise PouchHarnessError(
                f"`npm ci` in {INTEROP_DIR} did not finish within {timeout:.0f}s"
            ) from exc
        if proc.returncode != 0:
            raise PouchHarnessError(
                f"`npm ci` in {INTEROP_DIR} failed with exit code {proc.returncode}:\n"
                f"{_tail(proc.stdout + proc.stderr)}"
            )
    if not node_modules_fresh():
        raise PouchHarnessError(f"`npm ci` succeeded but {NODE_MODULES} still does not match the lockfile")


@dataclass
class PouchServer:
    """A running ``server.js``; ``url`` is its base URL (no trailing slash)."""

    url: str
    port: int
    process: subprocess.Popen[str]
    _stderr: IO[bytes] = field(repr=False)

    def stderr_text(self) -> str:
        """Everything the server wrote to stderr so far (warnings, crashes)."""
        self._stderr.flush()
        self._stderr.seek(0)
        return self._stderr.read().decode("utf-8", errors="replace")


def _pump_lines(stream: IO[str], lines: queue.Queue[str | None]) -> None:
    """Forward every stdout line to ``lines``, then ``None`` at EOF (keeps the pipe drained)."""
    try:
        for line in stream:
            lines.put(line.rstrip("\n"))
    except (OSError, ValueError):
        pass
    finally:
        lines.put(None)


def _wait_for_listening(proc: subprocess.Popen[str], lines: queue.Queue[str | None], timeout: float) -> int:
    deadline = time.monotonic() + timeout
    for _ in range(_MAX_PREAMBLE_LINES):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise PouchHarnessError(f"server.js did not print LISTENING within {timeout:.1f}s")
        try:
            line = lines.get(timeout=remaining)
        except queue.Empty:
            continue  # the deadline check above raises
        if line is None:
            try:
                code: int | None = proc.wait(timeout=min(2.0, max(0.1, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                code = None
            raise PouchHarnessError(f"server.js closed stdout before LISTENING (exit code {code})")
        match = _LISTENING_RE.match(line.strip())
        if match:
            return int(match.group(1))
    raise PouchHarnessError(f"server.js printed {_MAX_PREAMBLE_LINES} lines without LISTENING")


def _stop(proc: subprocess.Popen[str], stop_timeout: float) -> None:
    """SIGTERM, then SIGKILL after ``stop_timeout``; always reaps the process."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=stop_timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(timeout=stop_timeout)


@contextlib.contextmanager
def pouchdb_server(
    port: int = 0,
    *,
    mode: str = "fullCouchDB",
    adapter: str = "memory",
    startup_timeout: float = 30.0,
    stop_timeout: float = 5.0,
) -> Iterator[PouchServer]:
    """Start ``server.js`` on 127.0.0.1 (``port`` 0 = any free port) and yield a ``PouchServer``.

    ``mode`` is the express-pouchdb mode (``fullCouchDB`` or ``minimumForPouchDB``).  ``adapter`` is the
    server's storage: ``memory`` (the default) or ``leveldb`` (a temporary folder, pouchdb-server's default
    storage); either way the databases vanish with the process.  Call ``ensure_node_modules()`` first.
    """
    if mode not in SERVER_MODES:
        raise ValueError(f"mode must be one of {SERVER_MODES}, got {mode!r}")
    if adapter not in ("memory", "leveldb"):
        raise ValueError(f"adapter must be memory or leveldb, got {adapter!r}")
    if not 0 <= port <= 65535:
        raise ValueError(f"port must be in 0..65535, got {port}")
    node = shutil.which("node")
    if node is None:
        raise PouchHarnessError("node is not on PATH")
    if not NODE_MODULES.is_dir():
        raise PouchHarnessError(f"{NODE_MODULES} is missing; call ensure_node_modules() first")

    with tempfile.TemporaryFile() as stderr_file:
        # stdin stays an open pipe: server.js exits when it sees EOF, so the server dies with us
        # even if this process is killed before it can send SIGTERM.
        proc = subprocess.Popen(
            [node, str(SERVER_JS), str(port)],
            cwd=INTEROP_DIR,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr_file,
            text=True,
            env=_node_env({"POUCHDB_SERVER_MODE": mode, "POUCHDB_SERVER_WATCH_STDIN": "1",
                           "POUCHDB_SERVER_ADAPTER": adapter}),
        )
        assert proc.stdout is not None
        lines: queue.Queue[str | None] = queue.Queue()
        reader = threading.Thread(
            target=_pump_lines, args=(proc.stdout, lines), name="pouchdb-server-stdout", daemon=True
        )
        reader.start()
        try:
            try:
                actual_port = _wait_for_listening(proc, lines, startup_timeout)
            except PouchHarnessError as exc:
                stderr_file.seek(0)
                detail = _tail(stderr_file.read().decode("utf-8", errors="replace"))
                raise PouchHarnessError(f"{exc}\nserver.js stderr:\n{detail}") from None
            yield PouchServer(
                url=f"http://{HOST}:{actual_port}", port=actual_port, process=proc, _stderr=stderr_file
            )
        finally:
            _stop(proc, stop_timeout)
            if proc.stdin is not None:
                with contextlib.suppress(OSError):
                    proc.stdin.close()
            reader.join(timeout=stop_timeout)
            proc.stdout.close()


def pouch_replicate(
    source_url: str,
    target_url: str,
    timeout: float = 60.0,
    *,
    fetch_timeout: float = 30.0,
    options: dict[str, Any] | None = None,
    check: bool = True,
) -> dict[str, Any]:
    """Run a one-shot ``PouchDB.replicate(source_url, target_url)`` via ``replicate.js``.

    Returns replicate.js's result (``ok``, ``docs_read``, ``docs_written``, ``doc_write_failures``,
    ``last_seq``, ``status``, ``errors``, ``elapsed_ms``).  ``options`` are extra PouchDB replicate
    options (e.g. ``{"batch_size": 10}``).  With ``check`` (the default) a failed or timed-out
    replication raises ``PouchReplicationError``; otherwise its result is returned with ``ok`` false.
    """
    node = shutil.which("node")
    if node is None:
        raise PouchHarnessError("node is not on PATH")
    if timeout <= 0 or fetch_timeout <= 0:
        raise ValueError("timeout and fetch_timeout must be positive")
    extra = {"POUCH_FETCH_TIMEOUT": str(fetch_timeout)}
    if options:
        extra["POUCH_REPLICATE_OPTS"] = json.dumps(options)
    try:
        proc = subprocess.run(
            [node, str(REPLICATE_JS), source_url, target_url, str(timeout)],
            cwd=INTEROP_DIR,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout + _REPLICATE_GRACE_S,
            env=_node_env(extra),
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise PouchHarnessError(
            f"replicate.js did not exit within {timeout + _REPLICATE_GRACE_S:.0f}s "
            f"({source_url} -> {target_url})"
        ) from exc
    out_lines = proc.stdout.strip().splitlines()
    try:
        result = json.loads(out_lines[-1]) if out_lines else None
    except ValueError:
        result = None
    if not isinstance(result, dict):
        raise PouchHarnessError(
            f"replicate.js exited {proc.returncode} without a JSON result line\n"
            f"stdout:\n{_tail(proc.stdout)}\nstderr:\n{_tail(proc.stderr)}"
        )
    result["exit_code"] = proc.returncode
    failed = proc.returncode != 0 or not result.get("ok")
    if failed and check:
        raise PouchReplicationError(
            f"replication {source_url} -> {target_url} failed (exit {proc.returncode}): "
            f"{json.dumps(result.get('errors'))}\nstderr:\n{_tail(proc.stderr)}",
            result,
        )
    return result
