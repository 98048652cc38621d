"""The ``mynosql`` command (also ``python -m MyNoSQL``)."""

from __future__ import annotations

import dataclasses
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import click

from ._api import MyNoSQL
from ._options import Limits, Options


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log output (-v: info, -vv: debug).")
def cli(verbose: int) -> None:
    """MyNoSQL: an embedded, offline-first, replicated document database."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@cli.command()
@click.option("--path", "path", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder that holds the database folders.")
@click.option("--db", "name", required=True, help="Database name.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8800, show_default=True, type=click.IntRange(0, 65535),
              help="Port to listen on (0: any free port).")
@click.option("--peer", "peers", multiple=True, help="Another mirror to keep in step with (repeatable).")
@click.option("--advertise", default=None, help="The URL other nodes should use for this mirror.")
@click.option("--credentials", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="A file of user:password (or user:password:reader) lines: the users, read at start and "
                   "stored hashed. Required to listen beyond loopback.")
@click.option("--cert", type=click.Path(exists=True, dir_okay=False), default=None, help="TLS certificate (PEM).")
@click.option("--key", type=click.Path(exists=True, dir_okay=False), default=None, help="TLS private key (PEM).")
@click.option("--max-request-bytes", type=click.IntRange(1024), default=None, help="Largest request body.")
@click.option("--max-batch", type=click.IntRange(1), default=None, help="Most documents in one request.")
@click.option("--max-connections", type=click.IntRange(1), default=None, help="Most open client connections.")
@click.option("--header-timeout", type=click.FloatRange(0.1), default=None,
              help="Seconds a connection may stay without a complete request (idle or slow headers).")
def serve(path: Path, name: str, host: str, port: int, peers: tuple[str, ...], advertise: str | None,
          credentials: Path | None, cert: str | None, key: str | None, max_request_bytes: int | None,
          max_batch: int | None, max_connections: int | None, header_timeout: float | None) -> None:
    """Run a mirror in the foreground until SIGINT or SIGTERM, then shut down cleanly."""
    from ._errors import MyNoSQLError
    from .server.auth import parse_credentials_file

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    given: dict[str, Any] = {"max_request_bytes": max_request_bytes, "max_batch": max_batch,
                             "max_connections": max_connections, "header_timeout": header_timeout}
    limits = dataclasses.replace(Limits(), **{k: v for k, v in given.items() if v is not None})
    handle = MyNoSQL(path, options=Options(limits=limits))
    db = handle.opendb(name)
    try:
        if credentials is not None:
            db.users.replace_all(parse_credentials_file(credentials))
        # before the mode: never bind the default port first
        db.setlisten(host, port, advertise=advertise, certfile=cert, keyfile=key)
        try:
            db.setdbmode("Mirror")
        except MyNoSQLError as exc:
            raise click.ClickException(str(exc)) from exc
        for p in peers:
            db.addpeer(p)
        click.echo(f"serving {name} on {db.server_url}", nl=True)
        sys.stdout.flush()
        while not stop.wait(0.5):
            pass
    finally:
        handle.closedb()
    click.echo("stopped")


@cli.command()
def demo() -> None:
    """Run the demo (what scripts/demo runs)."""
    from .demo import main as run_demo

    raise SystemExit(run_demo())


def main(argv: list[str] | None = None) -> int:
    try:
        cli.main(args=argv, prog_name="mynosql", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Abort:
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
