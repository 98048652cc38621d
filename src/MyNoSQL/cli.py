"""The ``mynosql`` command (also ``python -m MyNoSQL``).

Exit codes scripts can rely on: 0 success; 1 failure (``verify`` found damage, a replication failed...);
2 bad usage; 3 the database is open in another process; 4 no such record, or no such database (only ``put``,
``import`` and a path TARGET of ``replicate`` create a database); 5 conflict (stale revision); 6 a remote server
could not be reached or refused (a 401 included); 130 interrupted (Ctrl-C, SIGINT; ``serve`` stops cleanly on it
instead and exits 0).

``--json`` (every subcommand but ``demo``) prints one JSON document on stdout, whatever the exit code: the
result, or on an error ``{"error": KIND, "message": ..., "exit_code": N}`` (the message also goes to stderr as
text). ``serve --json`` prints JSON Lines instead (one object when it serves, one when it stops); the summary of
``export --json`` goes to stderr when the export itself goes to stdout.

Progress of long work (``export``, ``import``, ``verify``, ``compact``, ``replicate``) goes to stderr: a bar when
stderr is a terminal, else a plain line every $MYNOSQL_PROGRESS_INTERVAL seconds (default 5) and one at the end.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any, TypeVar

import click
import orjson

from .database import Database, default_location, validate_db_name
from .errors import (
    ConflictError,
    DatabaseLocked,
    DocumentNotFound,
    InvalidDocument,
    MyNoSQLError,
    RemoteError,
    SecurityError,
)
from .handle import MyNoSQL
from .net.urls import basic_authorization, db_url, redact_url
from .options import Limits, Options
from .records import revtree
from .records.attachments import Follows, parse_attachments
from .records.codec import decode_value, dumps_exact, loads_body
from .records.ids import validate_id
from .version import __version__

EXIT_FAIL, EXIT_USAGE, EXIT_LOCKED, EXIT_NOT_FOUND, EXIT_CONFLICT, EXIT_REMOTE = 1, 2, 3, 4, 5, 6
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report a command stopped by Ctrl-C
MAX_OPEN = 200  # databases a mirror keeps open at once (CouchDB: max_dbs_open, 500)
ERROR_KINDS = {EXIT_FAIL: "failed", EXIT_USAGE: "usage", EXIT_LOCKED: "locked", EXIT_NOT_FOUND: "not_found",
               EXIT_CONFLICT: "conflict", EXIT_REMOTE: "remote", EXIT_INTERRUPTED: "interrupted"}
PROGRESS_INTERVAL_ENV = "MYNOSQL_PROGRESS_INTERVAL"
T = TypeVar("T")


class Fail(click.ClickException):
    """An error with one of the exit codes above (``code``)."""

    def __init__(self, message: str, code: int = EXIT_FAIL) -> None:
        super().__init__(message)
        self.code = code


def _out(data: Any, as_json: bool, text: str | None = None, *, err: bool = False) -> None:
    if as_json:
        click.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS, default=str).decode(),
                   err=err)
    else:
        click.echo(text if text is not None else orjson.dumps(data, option=orjson.OPT_INDENT_2, default=str),
                   err=err)


def _interval() -> float:
    """Seconds between plain progress lines: $MYNOSQL_PROGRESS_INTERVAL, default 5."""
    try:
        return max(0.0, float(os.environ.get(PROGRESS_INTERVAL_ENV) or 5.0))
    except ValueError:
        return 5.0


def _amount(x: float, unit: str, of: float | None = None) -> str:
    """``1,234 records``, ``1,234 of 5,000 records``; bytes in MB."""
    mb = unit == "bytes"

    def num(v: float) -> str:
        return f"{v / 1e6:,.1f}" if mb else f"{v:,.0f}"

    return f"{num(x)}{'' if of is None else ' of ' + num(of)} {'MB' if mb else unit}"


class Progress:
    """A progress bar (tqdm) when stderr is a terminal; otherwise a plain line every ``every`` seconds and one
    at the end. Counts ``unit`` ("records", "changes" or "bytes"); with a ``total``, also the ETA.

    ``update(k)`` adds ``k``; calling the object with ``(done, total)`` sets both: it is the ``progress`` hook
    of ``Database.verify``, ``Database.compact`` and ``replicate_once``."""

    def __init__(self, what: str, total: int | None = None, unit: str = "records",
                 every: float | None = None) -> None:
        self.what, self.total, self.unit = what, total, unit
        self.every = _interval() if every is None else every
        self.n = 0
        self.t0 = self.last = time.monotonic()
        self.bar: Any = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            byte = unit == "bytes"
            self.bar = tqdm(total=total, desc=what, unit="B" if byte else f" {unit}", unit_scale=True,
                            unit_divisor=1024 if byte else 1000, file=sys.stderr)

    def __call__(self, done: int, total: int | None = None) -> None:
        if total is not None:
            total = max(total, done)  # an estimate (replicate's) may fall short: the bar never passes 100%
        if total is not None and total != self.total:
            self.total = total
            if self.bar is not None:
                self.bar.total = total
                self.bar.refresh()
        self.update(done - self.n)

    def update(self, k: int = 1) -> None:
        self.n += k
        if self.bar is not None:
            self.bar.update(k)
            return
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            rate = self.n / max(now - self.t0, 1e-9)
            eta = f", ETA {(self.total - self.n) / rate:,.0f} s" if self.total and rate > 0 else ""
            done = _amount(self.n, self.unit, self.total or None)
            click.echo(f"{self.what}: {done}, {_amount(rate, self.unit)}/s{eta}", err=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        else:
            dt = time.monotonic() - self.t0
            click.echo(f"{self.what}: {_amount(self.n, self.unit)} in {dt:.1f} s", err=True)


@contextlib.contextmanager
def progress(what: str, total: int | None = None, unit: str = "records") -> Iterator[Progress]:
    p = Progress(what, total, unit)
    try:
        yield p
    finally:
        p.close()


def tracked(items: Iterable[T], what: str, total: int | None) -> Iterator[T]:
    with progress(what, total) as p:
        for x in items:
            yield x
            p.update()


class CtrlC:
    """Ctrl-C (SIGINT) during a command that must finish what it started (``import``: write the records read so
    far, then close the database). Raised at once only inside ``waiting()`` (a blocking read of input) or at a
    second Ctrl-C; anywhere else it is noted (``hit``: the command stops at its next step) and raised as
    KeyboardInterrupt when this context ends, after the contexts inside it (the database's close) ended.

    With Python's default handler the KeyboardInterrupt lands at whatever bytecode runs when the signal is
    seen: also in a ``finally`` that should write the last batch, before it writes anything (a pipe's end and
    the signal arriving together: the read returns at the end of input, the loop ends, the signal is seen at
    the first line of the ``finally``; test_ctrl_c_exits_130_with_a_json_error lost its records 1 run in 3)."""

    def __init__(self) -> None:
        self.hit = False
        self._waiting = False
        self._old: Any = None

    def __enter__(self) -> CtrlC:
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handler)
        return self

    def _handler(self, signum: int, frame: Any) -> None:
        if self._waiting or self.hit:  # waiting for input, or a second Ctrl-C: the user insists
            self.hit = True
            raise KeyboardInterrupt
        self.hit = True

    def waiting(self) -> _Waiting:
        """``with ctrl_c.waiting():`` around a blocking read: Ctrl-C there is raised at once. A small class, not a
        generator context manager: ``import`` enters it once per line (1.5 against 0.3 us a line here)."""
        return _Waiting(self)

    def __exit__(self, kind: type[BaseException] | None, *_rest: Any) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
        if self.hit and kind is None:
            raise KeyboardInterrupt


class _Waiting:
    __slots__ = ("ctrl_c",)

    def __init__(self, ctrl_c: CtrlC) -> None:
        self.ctrl_c = ctrl_c

    def __enter__(self) -> None:
        self.ctrl_c._waiting = True

    def __exit__(self, *_exc: object) -> None:
        self.ctrl_c._waiting = False


def _regular_size(f: IO[bytes]) -> int | None:
    """Bytes left to read in ``f`` if it is a regular file (a path, or stdin redirected from one), else None."""
    try:
        st = os.fstat(f.fileno())
        return st.st_size - f.tell() if stat.S_ISREG(st.st_mode) else None
    except (OSError, ValueError):
        return None


def _location(path: Path | None) -> Path:
    return path if path is not None else default_location()


_EXIT_CODES: list[tuple[type[BaseException], int]] = [
    (DatabaseLocked, EXIT_LOCKED), (DocumentNotFound, EXIT_NOT_FOUND), (ConflictError, EXIT_CONFLICT),
    (InvalidDocument, EXIT_USAGE),
]


def _is_database(folder: Path) -> bool:
    return folder.is_dir() and any((folder / f).is_file() for f in ("config.json", "index.sqlite"))


def _require(location: Path, name: str) -> None:
    """Fail with EXIT_NOT_FOUND, creating nothing, unless ``location/name`` is a database."""
    try:
        validate_db_name(name)
    except InvalidDocument as exc:
        raise Fail(str(exc), EXIT_USAGE) from exc
    if not _is_database(location / name):
        raise Fail(f"no database {name!r} in {location} (only put, import and replicate to a path create one)",
                   EXIT_NOT_FOUND)


@contextlib.contextmanager
def opened(path: Path | None, name: str, *, create: bool = False, options: Options | None = None
           ) -> Iterator[Database]:
    """The database, opened without background work and closed at the end; errors become exit codes.

    Without ``create``, a database that does not exist is an error (EXIT_NOT_FOUND) and nothing is created."""
    location = _location(path)
    if not create:
        _require(location, name)
    h = MyNoSQL(location, options=options or Options(background_sync=False))
    try:
        yield h.opendb(name)
    except MyNoSQLError as exc:
        code = next((c for kind, c in _EXIT_CODES if isinstance(exc, kind)), EXIT_FAIL)
        raise Fail(str(exc), code) from exc
    finally:
        h.closedb()


def db_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option("--json", "as_json", is_flag=True, help="Print JSON.")(f)
    f = click.option("--db", "name", required=True, help="Database name.")(f)
    f = click.option("--path", type=click.Path(file_okay=False, path_type=Path), default=None,
                     help="Folder holding the databases (default: $MYNOSQL_HOME or the user data folder).")(f)
    return f


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="mynosql", message="%(prog)s %(version)s")
@click.option("-v", "--verbose", count=True, help="More log output (-v: info, -vv: debug).")
def cli(verbose: int) -> None:
    """MyNoSQL: an embedded, offline-first, replicated document database.

    \b
    Exit codes:
      0    success
      1    failure (verify found damage, a replication failed...)
      2    bad usage
      3    the database is open in another process
      4    no such record, or no such database
      5    conflict (stale revision)
      6    a remote server could not be reached or refused (401 included)
      130  interrupted (Ctrl-C; serve stops cleanly instead, exit 0)

    With --json, an error is also a JSON object on stdout:
    {"error": KIND, "message": ..., "exit_code": N}.
    """
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


# A mirror process allocates a few containers per document it receives (a _bulk_docs batch: parsed JSON, checked
# revisions, states): with the default threshold (700) the collector ran ~250 times for 10,000 records and took
# ~15% of the mirror's CPU (bench/replication.py, initial replication); at 10,000 it runs ~12 times, each a few ms.
GC_YOUNG = 10_000


def tune_gc() -> None:
    """The collector of a ``serve`` process (the process is ours): what start-up made lives as long as the process
    and is never scanned again (``gc.freeze``), and young objects are collected less often (``GC_YOUNG``)."""
    gc.collect()
    gc.freeze()
    _young, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG, middle, old)


# -- serve ------------------------------------------------------------------------------------------------------


@cli.command()
@click.option("--path", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder that holds the database folders: every one is served (or only those of --db).")
@click.option("--db", "names", multiple=True,
              help="Serve only this database (repeatable); created if it does not exist.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8800, show_default=True, type=click.IntRange(0, 65535),
              help="Port to listen on (0: any free port).")
@click.option("--peer", "peers", multiple=True,
              help="Another mirror (server URL) to keep every database in step with (repeatable).")
@click.option("--advertise", default=None, help="The URL other nodes should use for this mirror.")
@click.option("--credentials", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="A file of user:password[:role] lines (role admin, replicator (the default) or reader): the "
                   "users, read at start and stored hashed in PATH/users.json. Required beyond loopback.")
@click.option("--cors-origin", "cors_origins", multiple=True,
              help="A web origin (https://app.example) whose pages may call this mirror from a browser, with "
                   "credentials and cookie sessions (repeatable); * lets any origin in, without credentials.")
@click.option("--idle", type=click.FloatRange(1), default=300.0, show_default=True,
              help="Seconds without a request after which an open database is closed.")
@click.option("--max-open", type=click.IntRange(1), default=MAX_OPEN, show_default=True,
              help="Databases open at once; past it the least recently used idle one is closed (each open "
                   "database holds its files, caches and a compactor thread: ~0.4 MB of RAM).")
@click.option("--cert", type=click.Path(exists=True, dir_okay=False), default=None, help="TLS certificate (PEM).")
@click.option("--key", type=click.Path(exists=True, dir_okay=False), default=None, help="TLS private key (PEM).")
@click.option("--ca-file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="CA bundle (PEM) to verify https:// peers with, instead of the system's.")
@click.option("--no-verify-tls", is_flag=True, help="Do not verify https:// peers' certificates (insecure; warns).")
@click.option("--max-request-bytes", type=click.IntRange(1024), default=None, help="Largest request body.")
@click.option("--max-attachment-bytes", type=click.IntRange(1), default=None,
              help="Largest attachment accepted (default 1 GiB; streamed to disk, never held in RAM).")
@click.option("--max-batch", type=click.IntRange(1), default=None, help="Most documents in one request.")
@click.option("--max-json-values", type=click.IntRange(1), default=None,
              help="Most JSON values (and keys) in one request body.")
@click.option("--max-answer-bytes", type=click.IntRange(1024), default=None,
              help="Largest answer of documents (_bulk_get, open_revs); one document is always answered.")
@click.option("--max-connections", type=click.IntRange(1), default=None,
              help="Most open client connections (TLS handshakes included).")
@click.option("--max-connections-per-address", type=click.IntRange(1), default=None,
              help="Most open connections from one client address (raise it behind a reverse proxy).")
@click.option("--tls-handshake-timeout", type=click.FloatRange(0.1), default=None,
              help="Seconds a TLS client has to complete its handshake.")
@click.option("--header-timeout", type=click.FloatRange(0.1), default=None,
              help="Seconds a connection may stay without a complete request (idle or slow headers).")
@click.option("--body-timeout", type=click.FloatRange(0.1), default=None, help="Seconds to send a request body.")
@click.option("--max-doc-bytes", type=click.IntRange(1024), default=None, help="Largest encoded document.")
@click.option("--max-depth", type=click.IntRange(1, 200), default=None, help="Deepest JSON nesting of a document.")
@click.option("--max-revisions", type=click.IntRange(1), default=None,
              help="Longest revision history (_revisions) sent with one document.")
@click.option("--max-leaves", type=click.IntRange(1), default=None,
              help="Most leaf revisions (conflicting branches) of one record.")
@click.option("--max-local-docs", type=click.IntRange(1), default=None,
              help="Most _local documents (replication checkpoints) the mirror holds.")
@click.option("--max-local-bytes", type=click.IntRange(1024), default=None, help="Largest _local document.")
@click.option("--max-auth-failures", type=click.IntRange(1), default=None,
              help="Failed logins from one address in a minute before it is refused for a while (429).")
@click.option("--json", "as_json", is_flag=True,
              help='JSON Lines on stdout: {"event": "serving", "db", "dbs", "url", "peers"} then '
                   '{"event": "stopped"}.')
def serve(path: Path, names: tuple[str, ...], host: str, port: int, peers: tuple[str, ...], advertise: str | None,
          credentials: Path | None, cors_origins: tuple[str, ...], idle: float, max_open: int, cert: str | None,
          key: str | None, ca_file: str | None,
          no_verify_tls: bool, max_doc_bytes: int | None, as_json: bool, **limit_options: Any) -> None:
    """Run a mirror of the databases in PATH in the foreground until SIGINT or SIGTERM, then shut down cleanly.

    Clients create and delete databases with PUT and DELETE /{db} (server admins); databases open when first
    used and close when idle."""
    from .credentials import parse_credentials_file
    from .service import MirrorService, server_users

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    limits = dataclasses.replace(Limits(), **{k: v for k, v in limit_options.items() if v is not None})
    options = Options(limits=limits, tls_ca_file=ca_file, tls_verify=not no_verify_tls, background_sync=False,
                      cors_origins=cors_origins)
    if max_doc_bytes is not None:
        options = dataclasses.replace(options, max_doc_bytes=max_doc_bytes)
    only = frozenset(names) if names else None
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        for name in names:  # the databases named exist from the start (created if need be)
            Database(path, validate_db_name(name), options).close()
        users = server_users(path, only)
        if credentials is not None:
            users.replace_all(parse_credentials_file(credentials))
        service = MirrorService(path, options, host=host, port=port, only=only, users=users, peers=peers,
                                advertise=advertise, certfile=cert, keyfile=key, idle=idle, max_open=max_open)
    except DatabaseLocked as exc:
        raise Fail(str(exc), EXIT_LOCKED) from exc
    except InvalidDocument as exc:
        raise Fail(str(exc), EXIT_USAGE) from exc
    try:
        try:
            url = service.start()
        except (SecurityError, OSError) as exc:
            raise Fail(str(exc)) from exc
        tune_gc()
        shown = " ".join(sorted(only)) if only else f"every database in {path}"
        if as_json:
            click.echo(orjson.dumps({"event": "serving", "db": names[0] if len(names) == 1 else None,
                                     "dbs": sorted(only) if only else None, "url": url,
                                     "peers": [redact_url(p) for p in service.peers]}))
        else:
            click.echo(f"serving {shown} on {url}")
        sys.stdout.flush()
        while not stop.wait(0.5):
            pass
    finally:
        service.close()
    click.echo(orjson.dumps({"event": "stopped", "db": names[0] if len(names) == 1 else None})
               if as_json else "stopped")


# -- inspecting and editing -------------------------------------------------------------------------------------


def _disk(folder: Path) -> tuple[int, int]:
    """Bytes of every file of a database folder, and of its shards."""
    files = [p for p in folder.iterdir() if p.is_file()]
    shards = sum(p.stat().st_size for p in files if p.name.startswith("shard-"))
    return sum(p.stat().st_size for p in files), shards


@cli.command()
@db_options
@click.option("--url", default=None, help="Ask the running mirror at this URL (http(s)://[user:pass@]host:port) "
              "instead of opening the database folder (which a running mirror holds locked).")
def status(path: Path | None, name: str, as_json: bool, url: str | None) -> None:
    """Mode, records, conflicts, disk use, mirrors and their lag, pending pushes."""
    if url is not None:
        info = _mirror_status(url, name)
    else:
        try:
            with opened(path, name) as db:
                info = _local_status(db)
        except Fail as exc:
            if exc.code != EXIT_LOCKED:
                raise
            raise Fail(f"{exc.message} (a running mirror? ask it: mynosql status --db {name} --url URL)",
                       EXIT_LOCKED) from exc
    lines = [f"{k}: {v}" for k, v in info.items()]
    _out(info, as_json, "\n".join(lines))


def _local_status(db: Database) -> dict[str, Any]:
    """What ``status`` shows of a database opened here (its mirrors asked for their seq within 2 s each)."""
    from .replication.endpoints import pull_checkpoint_id, push_checkpoint_id

    mirror_mode = db.getdbmode() == "Mirror"
    mirrors = {}
    pending: int | None
    for url in db.config.peers:
        remote = _remote_seq(db_url(url, db.name))
        if mirror_mode:  # a mirror pulls from the others (they pull from it): nothing to push, lag of its pull
            ck = db.local_get(pull_checkpoint_id(db, url))
            since, pending = (ck.get("source_last_seq", 0) if ck else 0), 0
        else:  # a peer pushes its changes and polls the mirror for newer revisions of its records
            ck = db.local_get(push_checkpoint_id(db, url))
            seq = ck.get("source_last_seq", 0) if ck else 0
            pending = max(0, db.seq - seq) if isinstance(seq, int) else None
            poll = db.local_get("poll-" + redact_url(db_url(url, db.name)).rstrip("/"))
            since = poll.get("since", 0) if poll else 0
        mirrors[redact_url(url)] = {
            "pending_pushes": pending,
            "reachable": remote is not None,
            "lag": max(0, remote - since) if isinstance(remote, int) and isinstance(since, int) else None,
        }
    total, shards = _disk(db.path)
    return {"name": db.name, "path": str(db.path), "mode": db.getdbmode(), "records": len(db),
            "conflicts": sum(1 for _ in db.conflicted()), "seq": db.seq,
            "disk_bytes": total, "shard_bytes": shards, "mirrors": mirrors, "indexes": db.indexes(),
            "users": db.userlist()}


def _mirror_status(url: str, name: str) -> dict[str, Any]:
    """What a running mirror says of database ``name`` (its dashboard data), in ``status``'s shape."""
    data = _get_json(url.rstrip("/") + "/_dashboard/data", timeout=10.0)
    if not isinstance(data, dict):
        raise Fail(f"{redact_url(url)} did not answer as a MyNoSQL mirror", EXIT_REMOTE)
    db = next((d for d in data.get("databases", []) if d.get("name") == name), None)
    if db is None:
        raise Fail(f"the mirror at {redact_url(url)} does not serve a database {name!r}", EXIT_NOT_FOUND)
    return {"name": name, "url": redact_url(url), "mode": db.get("mode"), "records": db.get("records"),
            "conflicts": db.get("conflicts"), "seq": db.get("seq"), "disk_bytes": db.get("disk_bytes"),
            "compression_ratio": db.get("compression_ratio"),
            "mirrors": {u: {"reachable": m.get("reachable"), "lag": m.get("lag"), "pending_pushes": m.get("pending"),
                            "last_error": m.get("last_error")} for u, m in (db.get("mirrors") or {}).items()},
            "peers": [p for p in data.get("peers", []) if p.get("db") == name]}


def _get_json(url: str, timeout: float) -> Any:
    """GET ``url`` (basic credentials from it, never shown) and parse the JSON answer; errors become exit 6."""
    import urllib.error
    import urllib.request

    headers = {"Accept": "application/json"}
    auth = basic_authorization(url)
    if auth is not None:
        headers["Authorization"] = auth
    try:
        with urllib.request.urlopen(urllib.request.Request(redact_url(url), headers=headers), timeout=timeout) as r:
            return orjson.loads(r.read())
    except urllib.error.HTTPError as exc:
        raise Fail(f"{redact_url(url)}: HTTP {exc.code} {exc.reason}", EXIT_REMOTE) from exc
    except (OSError, ValueError) as exc:
        raise Fail(f"{redact_url(url)}: {exc}", EXIT_REMOTE) from exc


def _remote_seq(url: str, timeout: float = 2.0) -> int | None:
    """The update_seq of a remote database (None if it does not answer within ``timeout``)."""
    try:
        seq = _get_json(url, timeout).get("update_seq")
    except (Fail, AttributeError):
        return None
    return seq if isinstance(seq, int) else None


def _plain(doc: dict[str, Any]) -> dict[str, Any]:
    """A record as JSON can print it: bytes, dates... in their tagged form."""
    from .records.codec import encode_value

    out: dict[str, Any] = encode_value(doc)
    return out


@cli.command()
@db_options
@click.argument("id")
def get(path: Path | None, name: str, as_json: bool, id: str) -> None:
    """Print a record (its winning revision) as JSON."""
    with opened(path, name) as db:
        rec = db.readdoc(id)
    _out(_plain(rec), True)


@cli.command()
@db_options
@click.argument("source", type=click.File("rb"), default="-")
def put(path: Path | None, name: str, as_json: bool, source: IO[bytes]) -> None:
    """Save a record: one JSON object from SOURCE (a file, or - for stdin). Prints its id and new rev."""
    try:
        doc = decode_value(orjson.loads(source.read()))
    except orjson.JSONDecodeError as exc:
        raise Fail(f"not JSON: {exc}", EXIT_USAGE) from exc
    with opened(path, name, create=True) as db:
        saved = db.savedoc(doc)
    _out({"id": saved["id"], "rev": saved["rev"]}, as_json, f"{saved['id']} {saved['rev']}")


@cli.command()
@db_options
@click.argument("id")
@click.option("--rev", default=None, help="The revision to delete (default: the current one).")
def delete(path: Path | None, name: str, as_json: bool, id: str, rev: str | None) -> None:
    """Delete a record (a tombstone, which replicates)."""
    with opened(path, name) as db:
        res = db.deletedoc(id, rev or db.readdoc(id)["rev"])
    _out(res, as_json, f"{res['id']} {res['rev']} deleted")


@cli.command()
@db_options
@click.option("--contents", is_flag=True, help="Also print every conflicting revision's content (to merge them).")
def conflicts(path: Path | None, name: str, as_json: bool, contents: bool) -> None:
    """List the records that have conflicting revisions (the winner first, then the losers).

    To merge: read the revisions (``--contents``, or ``readdoc(id, rev=...)``), then save the merged record and
    delete the losers in one step with ``resolve(id, merged)`` (docs/tutorial.md shows it end to end)."""
    with opened(path, name) as db:
        found: dict[str, dict[str, Any]] = {}
        for s in db.conflicted():
            entry: dict[str, Any] = {"winner": s.winner, "conflicts": s.conflicts()}
            if contents:
                entry["contents"] = {rev: _plain(db.readdoc(s.id, rev)) for rev in [s.winner, *s.conflicts()]}
            found[s.id] = entry
    lines = []
    for id, v in found.items():
        lines.append(f"{id} {v['winner']} vs {' '.join(v['conflicts'])}")
        for rev, doc in v.get("contents", {}).items():
            body = {k: x for k, x in doc.items() if k not in ("id", "rev")}
            lines.append(f"  {rev}{' (winner)' if rev == v['winner'] else ''}: {orjson.dumps(body).decode()}")
    _out(found, as_json, "\n".join(lines) or "no conflicts")


# -- export / import --------------------------------------------------------------------------------------------


@cli.command("export")
@db_options
@click.argument("target", type=click.File("wb"), default="-")
def export_(path: Path | None, name: str, as_json: bool, target: IO[bytes]) -> None:
    """Write every record (all revisions that matter: the tree and every leaf) as JSON Lines, streaming."""
    n = 0
    with opened(path, name) as db:
        for s in tracked(db.states_since(0), "export", db.index_rows()):
            target.write(export_line(s, db))
            n += 1
    if as_json:
        _out({"exported": n}, True, err=_is_stdout(target))  # not in the middle of the export


def _is_stdout(f: IO[bytes]) -> bool:
    try:
        return os.path.sameopenfile(f.fileno(), sys.stdout.fileno())
    except (OSError, ValueError):
        return False


def export_line(s: revtree.DocState, db: Database | None = None) -> bytes:
    index = {}
    nodes = []
    for i, (rev, (parent, deleted)) in enumerate(s.tree.items()):
        index[rev] = i
        nodes.append([rev, -1 if parent is None else index[parent], 1 if deleted else 0])
    leaves = {rev: orjson.Fragment(body) for rev, body in s.bodies.items()}
    line: dict[str, Any] = {"id": s.id, "revs": nodes, "leaves": leaves}
    if s.atts and db is not None:  # a record without attachments: the line it always was
        line["attachments"] = {rev: {name: _exported_attachment(db, s, rev, name, meta) for name, meta in a.items()}
                               for rev, a in s.atts.items()}
    return orjson.dumps(line) + b"\n"


def _exported_attachment(db: Database, s: revtree.DocState, rev: str, name: str, meta: dict[str, Any]) -> Any:
    """An attachment in an export line: its metadata and its bytes (base64); a stub whose bytes this database
    does not hold (a Peer's) stays a stub."""
    import base64

    out = {"content_type": meta["content_type"], "revpos": meta["revpos"], "digest": meta["digest"],
           "length": meta["length"]}
    if db.local_blob(s, meta) is None:
        return {**out, "stub": True}
    with db.open_blob(s, rev, name) as f:
        return {**out, "data": base64.b64encode(f.read()).decode("ascii")}


@cli.command("import")
@db_options
@click.argument("source", type=click.File("rb"), default="-")
def import_(path: Path | None, name: str, as_json: bool, source: IO[bytes]) -> None:
    """Read JSON Lines made by ``export``: ids, revisions and conflicts are kept (merged like replication)."""
    n = errors = 0
    # Progress in bytes: their total is known when SOURCE is a regular file (a count of lines is not, cheaply).
    # Records without attachments go to the database in batches (Database.import_records: one hold of the store's
    # lock per batch); a line with attachments is merged on its own, after the batch before it.
    pending: list[tuple[int, tuple[str, revtree.Tree, dict[str, bytes]]]] = []

    def write_pending() -> None:
        nonlocal n, errors
        batch = list(pending)
        pending.clear()
        results = db.import_records([r for _lineno, r in batch]) if batch else []
        for (lineno, _r), res in zip(batch, results, strict=True):
            if isinstance(res, Exception):
                errors += 1
                click.echo(f"line {lineno}: {res}", err=True)
            else:
                n += 1

    with CtrlC() as ctrl_c, opened(path, name, create=True, options=_import_options()) as db, \
            progress("import", _regular_size(source), "bytes") as bar:
        try:
            lines = enumerate(source, 1)
            waiting = ctrl_c.waiting()
            while not ctrl_c.hit:
                with waiting:  # Ctrl-C while waiting for a line: raised at once
                    item = next(lines, None)
                if item is None:
                    break
                lineno, line = item
                bar.update(len(line))
                if not line.strip():
                    continue
                try:
                    obj = orjson.loads(line)
                    if obj.get("attachments"):
                        write_pending()
                        _import_leaves(db, validate_id(obj["id"]), obj, obj["revs"])
                        n += 1
                    else:
                        pending.append((lineno, _import_record(obj)))
                except (ValueError, KeyError, TypeError, AttributeError, InvalidDocument) as exc:
                    errors += 1
                    click.echo(f"line {lineno}: {exc}", err=True)
                if len(pending) >= IMPORT_BATCH:
                    write_pending()
        finally:  # what was read is kept, also when the import is interrupted (Ctrl-C)
            write_pending()
    _out({"imported": n, "errors": errors}, as_json, f"imported {n} records, {errors} errors")
    if errors:
        raise SystemExit(EXIT_FAIL)


IMPORT_BATCH = 256  # records per Database.import_records call


def _import_options() -> Options:
    """The options ``import`` opens the database with: flushes of twice the records (not the bytes).

    A flush's index commit rewrites every page of the ``docs`` b-tree that one of its records lands in (rows
    are keyed by a hash: they land all over it), and SQLite writes each such page twice (its log, then the file)
    with an fsync each time; at 1,000,000 records a flush of ~8,000 touched most of the table's pages. Twice
    the records per flush is about half the pages and fsyncs per record: 1,000,000 records imported in ~33
    instead of ~38 s here (index commits 14 -> 10 s). The cost is RAM: the memtables hold up to twice as many
    records while the compactor packs (peak RSS ~90 -> ~110 MB at 1,000,000 records of ~160 bytes). Bytes per
    flush stay as they are: records of ~6 KB reach ``flush_bytes`` first, and doubling it too took an import of
    20,000 of them from ~210 to ~310-350 MB."""
    d = Options()
    return Options(background_sync=False, flush_docs=2 * d.flush_docs)


def import_line(db: Database, line: bytes) -> None:
    """Import one line made by ``export``."""
    obj = orjson.loads(line)
    if obj.get("attachments"):
        _import_leaves(db, validate_id(obj["id"]), obj, obj["revs"])
    else:
        db.import_record(*_import_record(obj))


def _import_record(obj: dict[str, Any]) -> tuple[str, revtree.Tree, dict[str, bytes]]:
    """A line without attachments: (id, tree, encoded leaves) for Database.import_records, which checks the
    revisions once; each leaf's body is encoded once."""
    id = validate_id(obj["id"])
    nodes = obj["revs"]
    tree: revtree.Tree = {}
    revs: list[str] = []
    for node in nodes:
        rev, parent, deleted = node
        if parent < 0:
            tree[rev] = (None, bool(deleted))
        elif parent < len(revs):
            tree[rev] = (revs[parent], bool(deleted))
        else:
            raise InvalidDocument(f"record {id!r}: revision {rev!r} comes before its parent in the tree")
        revs.append(rev)
    leaves: dict[str, bytes] = {}
    for leaf, body in obj["leaves"].items():
        if leaf not in tree or not isinstance(body, dict):
            raise InvalidDocument(f"record {id!r}: leaf {leaf!r} is not in its revision tree")
        blob = dumps_exact(body)
        if b'"$' in blob:
            loads_body(blob)  # the tagged values must decode
        leaves[leaf] = blob
    return id, tree, leaves


def _import_leaves(db: Database, id: str, obj: dict[str, Any], nodes: list[Any]) -> None:
    """A line with attachments: each leaf is merged like a replicated revision (``put_replicated``)."""
    revs = [n[0] for n in nodes]
    tree: revtree.Tree = {n[0]: (None if n[1] < 0 else revs[n[1]], bool(n[2])) for n in nodes}
    atts = obj.get("attachments") or {}
    if not isinstance(atts, dict):
        raise InvalidDocument(f"record {id!r}: attachments must be an object of attachments by revision")
    for leaf, body in obj["leaves"].items():
        if leaf not in tree or not isinstance(body, dict):
            raise InvalidDocument(f"record {id!r}: leaf {leaf!r} is not in its revision tree")
        for r in revtree.ancestry(tree, leaf):
            revtree.parse_rev(r)
        blob = dumps_exact(body)
        loads_body(blob)  # the tagged values must decode
        given = parse_attachments(atts[leaf]) if leaf in atts else None
        if given is not None and any(isinstance(a, Follows) for a in given.values()):
            raise InvalidDocument(f"record {id!r}: an exported attachment has its bytes (data) or is a stub")
        db.put_replicated(id, revtree.ancestry(tree, leaf), tree[leaf][1], blob, given,  # type: ignore[arg-type]
                          lazy=True)


# -- maintenance ------------------------------------------------------------------------------------------------


@cli.command()
@db_options
def verify(path: Path | None, name: str, as_json: bool) -> None:
    """Check every checksum, every record and the index. Exit 1 if anything is damaged."""
    with opened(path, name) as db, progress("verify") as bar:
        t0 = time.monotonic()
        problems = db.verify(progress=bar)
        dt = time.monotonic() - t0
    _out({"ok": not problems, "problems": problems, "seconds": round(dt, 3)}, as_json,
         "\n".join(problems) if problems else f"ok ({dt:.1f} s)")
    if problems:
        raise SystemExit(EXIT_FAIL)


@cli.command()
@db_options
def compact(path: Path | None, name: str, as_json: bool) -> None:
    """Rewrite shards holding dead records and delete what is left empty."""
    folder = _location(path) / name
    with opened(path, name) as db:
        before, shards_before = _disk(folder)
        t0 = time.monotonic()
        with progress("compact") as bar:
            moved = db.compact(progress=bar)
        dt = time.monotonic() - t0
    after, shards_after = _disk(folder)  # once closed: an open database also holds its logs
    _out({"moved": moved, "bytes_before": before, "bytes_after": after, "shard_bytes_before": shards_before,
          "shard_bytes_after": shards_after, "seconds": round(dt, 3)}, as_json,
         f"moved {moved} records; {before:,} -> {after:,} bytes in {dt:.1f} s")


def _endpoint_arg(spec: str, stack: list[MyNoSQL], *,
                  create: bool) -> Database | str | Callable[[], Database]:
    """A URL stays a URL; a path DIR/NAME opens the local database NAME in DIR. With ``create``, a database that
    does not exist yet is not made here: a function that makes it is returned, for the replication to call once
    the source has answered (a replication that cannot start creates nothing)."""
    if spec.startswith(("http://", "https://")):
        return spec
    p = Path(spec).expanduser()
    validate_db_name(p.name)
    if not create:
        _require(p.parent, p.name)

    def open_it() -> Database:
        h = MyNoSQL(p.parent, options=Options(background_sync=False))
        try:
            db = h.opendb(p.name)
        except DatabaseLocked as exc:
            raise Fail(str(exc), EXIT_LOCKED) from exc
        stack.append(h)
        return db

    return open_it if create and not _is_database(p) else open_it()


@cli.command()
@click.argument("source")
@click.argument("target")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--timeout", default=60.0, show_default=True, help="Seconds for each HTTP request.")
def replicate(source: str, target: str, as_json: bool, timeout: float) -> None:
    """One-shot replication from SOURCE to TARGET: each a database folder (DIR/NAME) or a database URL
    (a MyNoSQL mirror, CouchDB or PouchDB Server; credentials in the URL).

    Progress counts changes (one per record changed since the last replication); its total and ETA are an upper
    bound, the writes the source counts since then (a record written twice is one change), known only when the
    source's update_seq is a number or starts with one (CouchDB's)."""
    from .replication.oneshot import replicate_once

    handles: list[MyNoSQL] = []
    try:
        src = _endpoint_arg(source, handles, create=False)
        if callable(src):  # pragma: no cover - create=False never defers
            src = src()
        tgt = _endpoint_arg(target, handles, create=True)
        with progress("replicate", unit="changes") as bar:
            result = replicate_once(src, tgt, timeout=timeout, progress=bar)
    except MyNoSQLError as exc:
        code = EXIT_REMOTE if isinstance(exc, RemoteError) else EXIT_USAGE if isinstance(exc, InvalidDocument) \
            else EXIT_FAIL
        raise Fail(str(exc), code) from exc
    finally:
        for h in handles:
            h.closedb()
    _out(result, as_json, f"read {result['docs_read']} changes, wrote {result['docs_written']} revisions, "
         f"{len(result['errors'])} errors, in {result['seconds']:.2f} s")
    if result["errors"]:
        raise SystemExit(EXIT_FAIL)


@cli.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("which", type=click.Choice(["local", "replication", "export_import", "all"]), default="local")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.option("--json", "as_json", is_flag=True,
              help="Print a JSON summary on stdout (every table of each report, a row as an object keyed by the "
                   "column headers); the reports go to stderr.")
def bench(which: str, args: tuple[str, ...], as_json: bool) -> None:
    """Run the benchmark scripts of a source checkout (bench/local.py, bench/replication.py,
    bench/export_import.py); extra ARGS go to the script (e.g. --quick)."""
    root = Path(__file__).resolve().parents[2] / "bench"
    names = ["local", "replication", "export_import"] if which == "all" else [which]
    runs = []
    rc = 0
    for n in names:
        script = root / f"{n}.py"
        if not script.exists():
            raise Fail(f"the benchmarks (bench/{n}.py) come with a source checkout of MyNoSQL, not with an "
                       "installed package: run `mynosql bench` (or scripts/test) from a clone of the repository")
        if not as_json:
            rc = subprocess.call([sys.executable, str(script), *args], env={**os.environ})
        else:
            done = subprocess.run([sys.executable, str(script), *args], env={**os.environ}, stdout=subprocess.PIPE,
                                  text=True, check=False)
            rc = done.returncode
            click.echo(done.stdout, err=True, nl=False)
            runs.append({"benchmark": n, "exit_code": rc, "tables": markdown_tables(done.stdout)})
        if rc:
            break
    if as_json:
        _out({"benchmarks": runs, "ok": rc == 0}, True)
    if rc:
        raise SystemExit(rc)


def markdown_tables(text: str) -> list[list[dict[str, str]]]:
    """The tables of a Markdown text: each a list of rows, a row a dict keyed by the header cells."""
    def cells(line: str) -> list[str]:
        return [c.strip().replace("**", "") for c in line.strip().strip("|").split("|")]

    tables: list[list[dict[str, str]]] = []
    lines = text.splitlines()
    i = 0
    while i + 1 < len(lines):
        head, rule = lines[i].strip(), lines[i + 1].strip()
        if head.startswith("|") and rule.startswith("|") and set(rule) <= set("|-: "):
            keys = cells(head)
            i += 2
            rows = []
            while i < len(lines) and lines[i].strip().startswith("|"):
                rows.append(dict(zip(keys, cells(lines[i]), strict=False)))
                i += 1
            tables.append(rows)
        else:
            i += 1
    return tables


@cli.command()
def demo() -> None:
    """Run the demo (what scripts/demo runs)."""
    from .demo import main as run_demo

    raise SystemExit(run_demo())


def _json_error(message: str, code: int) -> None:
    """With --json, an error is a JSON document on stdout too (the text went to stderr)."""
    _out({"error": ERROR_KINDS.get(code, "failed"), "message": message, "exit_code": code}, True)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        # Started with SIGINT ignored (a shell script's background job inherits that): Ctrl-C or `kill -INT`
        # must still interrupt a command that waits on the network, as the exit code 130 promises.
        signal.signal(signal.SIGINT, signal.default_int_handler)
    as_json = "--json" in (args[: args.index("--")] if "--" in args else args)
    try:
        cli.main(args=args, prog_name="mynosql", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        code = exc.code if isinstance(exc, Fail) else exc.exit_code
        if as_json:
            _json_error(exc.format_message(), code)
        return code
    except click.exceptions.Abort:  # Ctrl-C (click turns KeyboardInterrupt into Abort)
        click.echo("Interrupted.", err=True)
        if as_json:
            _json_error("interrupted", EXIT_INTERRUPTED)
        return EXIT_INTERRUPTED
    except MyNoSQLError as exc:
        click.echo(f"Error: {exc}", err=True)
        if as_json:
            _json_error(str(exc), EXIT_FAIL)
        return EXIT_FAIL
    return 0
