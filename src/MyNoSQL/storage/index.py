"""The index: where each record's newest state lives, which blocks exist, and secondary indexes.

It is a SQLite database (``index.sqlite``, WAL journal) written only by the compactor, once per flush, in one
transaction with the shard lengths it covers; so the index and the shard files always agree after a crash.

Tables::

    meta(k TEXT PRIMARY KEY, v)                         format, flushed_seq, next_bno, live_count
    docs(h INTEGER PRIMARY KEY, loc INTEGER)            h = 64-bit BLAKE2b of the id; loc = bno << 8 | slot
    docs_x(id TEXT PRIMARY KEY, loc INTEGER)            the rare id whose hash another id already has
    blocks(bno INTEGER PRIMARY KEY, shard, off, len,    one row per shard block; live = records in it that
           count, first_seq, last_seq, live)             are still the newest state of their id
    shards(n INTEGER PRIMARY KEY, size)                 committed length of each shard file
    sidx(name TEXT, id TEXT, value BLOB)                secondary indexes: JSON of the field's value
    local(id TEXT PRIMARY KEY, rev, body)               CouchDB ``_local`` documents (replication checkpoints)
    qkeys(ino, id, key BLOB, loc)                       query indexes (``createindex``), see qindex.py; read
                                                        through qkeys_by_key(ino, key, id, loc), a covering index
    att_fetched(digest TEXT PRIMARY KEY, blob TEXT)     attachment bytes a Peer fetched from a mirror: the blob
                                                        holding the bytes of that digest (records keep stubs)
    purges(seq INTEGER PRIMARY KEY, id, revs)           the newest purges (CouchDB's purged infos): the purge
                                                        sequence, the record, its purged revisions (JSON list)

Keying ``docs`` by a hash keeps the row at ~20 bytes whatever the id's length: the id itself is inside the
record, and every read checks it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
import struct
import threading
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from ..errors import CorruptionError, LimitExceeded, StorageError
from .shards import BlockInfo

FORMAT = 1
WAL_TRIM = 1 << 20  # bytes of index.sqlite-wal past which a flush empties it (Index._trim_wal)
_QLOCS = ("SELECT group_concat(loc) FROM (SELECT loc FROM qkeys WHERE ino=? AND key>=? AND key<? ORDER BY key, id "
          "LIMIT ?)")
_QLOCS_DESC = ("SELECT group_concat(loc) FROM (SELECT loc FROM qkeys WHERE ino=? AND key>=? AND key<? "
               "ORDER BY key DESC, id DESC LIMIT ?)")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(k TEXT PRIMARY KEY, v) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS docs(h INTEGER PRIMARY KEY, loc INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS docs_x(id TEXT PRIMARY KEY, loc INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS blocks(bno INTEGER PRIMARY KEY, shard INTEGER NOT NULL, off INTEGER NOT NULL,
    len INTEGER NOT NULL, count INTEGER NOT NULL, first_seq INTEGER NOT NULL, last_seq INTEGER NOT NULL,
    live INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS blocks_by_seq ON blocks(last_seq);
CREATE TABLE IF NOT EXISTS shards(n INTEGER PRIMARY KEY, size INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS sidx(name TEXT NOT NULL, id TEXT NOT NULL, value BLOB, PRIMARY KEY(name, id))
    WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS local(id TEXT PRIMARY KEY, rev INTEGER NOT NULL, body BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS qkeys(ino INTEGER NOT NULL, id TEXT NOT NULL, key BLOB NOT NULL, loc INTEGER NOT NULL,
    PRIMARY KEY(ino, id)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS qkeys_by_key ON qkeys(ino, key, id, loc);
CREATE TABLE IF NOT EXISTS att_fetched(digest TEXT PRIMARY KEY, blob TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS purges(seq INTEGER PRIMARY KEY, id TEXT NOT NULL, revs TEXT NOT NULL);
"""


# A flush's record placements, as columns: ids, id hashes, new locations, previous locations (-1: none), and
# whether each previous state's row is in docs_x (see Index.commit_flush).
Placements = tuple[Sequence[str], Sequence[int], Sequence[int], Sequence[int], Sequence[bool]]


def _rows(con: sqlite3.Connection, head: str, rows: Sequence[tuple[Any, ...]], tail: str = "") -> None:
    """``head VALUES (..),(..),... tail`` with as many rows per statement as 999 parameters allow.

    Every SQLite step releases the GIL, and taking it back while another thread runs Python can cost the whole
    switch interval (5 ms): ``executemany`` steps once per row, so a flush of 4,096 records took seconds under a
    busy reader or writer. A multi-row statement is one step for hundreds of rows. (999 is the oldest SQLite's
    limit on parameters; multi-row VALUES works since SQLite 3.7.11.)
    """
    if not rows:
        return
    width = len(rows[0])
    per = max(1, 999 // width)
    one = "(" + ",".join("?" * width) + ")"
    for i in range(0, len(rows), per):
        part = rows[i : i + per]
        con.execute(f"{head} VALUES {','.join([one] * len(part))}{tail}", [v for r in part for v in r])


_BLAKE2B_8 = hashlib.blake2b(digest_size=8)  # never updated: each hash starts from a copy (cheaper than a new one)
_I64 = struct.Struct("<q").unpack


def id_hash(id: str) -> int:
    """The index's key of a record id (stored: it must never change): the first 8 bytes of its BLAKE2b-64 digest,
    a little-endian signed integer. Twice as fast as ``int.from_bytes(hashlib.blake2b(id.encode(), digest_size=8)
    .digest(), "little", signed=True)``, which it equals: the owner of a shared log hashes every record twice
    (7% of its time in bench/processes.py)."""
    h = _BLAKE2B_8.copy()
    h.update(id.encode())
    return _I64(h.digest())[0]  # type: ignore[no-any-return]


class Index:
    """SQLite index. Reads go through one shared connection (serialised); the compactor writes through its own."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._w = self._connect()
            self._w.executescript(_SCHEMA)
            fmt = self.meta("format")
            if fmt is None:
                self._w.execute("INSERT INTO meta VALUES('format', ?)", (FORMAT,))
            elif fmt != FORMAT:
                raise CorruptionError(f"{path}: index format {fmt} is not supported (expected {FORMAT})",
                                      path=str(path))
            self._r = self._connect()
        except sqlite3.DatabaseError as exc:
            raise CorruptionError(f"{path}: the index cannot be opened: {exc}", path=str(path)) from exc
        self._rlock = threading.Lock()
        self._wlock = threading.Lock()  # the writer connection: the compactor
        self._llock = threading.Lock()  # local documents (checkpoints) have their own connection
        self._l: sqlite3.Connection | None = None

    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=FULL")
        con.execute("PRAGMA cache_size=-8000")
        return con

    def close(self) -> None:
        self._r.close()
        self._w.close()
        if self._l is not None:
            self._l.close()

    # -- reads (any thread) -----------------------------------------------------------------------------------

    def _one(self, sql: str, args: tuple[Any, ...]) -> Any:
        try:
            with self._rlock:
                row = self._r.execute(sql, args).fetchone()
        except sqlite3.DatabaseError as exc:
            raise CorruptionError(f"{self.path}: index read failed: {exc}", path=str(self.path)) from exc
        return None if row is None else row[0] if len(row) == 1 else row

    def _all(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        try:
            with self._rlock:
                return self._r.execute(sql, args).fetchall()
        except sqlite3.DatabaseError as exc:
            raise CorruptionError(f"{self.path}: index read failed: {exc}", path=str(self.path)) from exc

    def meta(self, key: str) -> Any:
        row = self._w.execute("SELECT v FROM meta WHERE k=?", (key,)).fetchone()
        return None if row is None else row[0]

    def loc_by_hash(self, h: int) -> int | None:
        result: int | None = self._one("SELECT loc FROM docs WHERE h=?", (h,))
        return result

    def all_locs(self, chunk: int = 65_536) -> tuple[array[int], array[int]]:
        """Every ``docs`` row as two arrays in hash order: (hashes, locations), for a store that looks many up.

        A chunk of rows per query, joined into text values (see :meth:`iter_hashes`): ~0.2 us a row, against
        ~8-13 us for one ``SELECT`` from Python."""
        hs: array[int] = array("q")
        locs: array[int] = array("q")
        low = -(1 << 63)
        while True:
            text_h, text_l, high, n = self._one(
                "SELECT group_concat(h), group_concat(loc), max(h), count(*) FROM (SELECT h, loc FROM docs "
                "WHERE h >= ? ORDER BY h LIMIT ?)", (low, chunk))
            if n:
                hs.extend(map(int, text_h.split(",")))
                locs.extend(map(int, text_l.split(",")))
            if n < chunk or high == (1 << 63) - 1:
                break
            low = high + 1
        if len(hs) != len(locs):
            raise CorruptionError(f"{self.path}: index rows changed while read", path=str(self.path))
        return hs, locs

    def loc_by_id(self, id: str) -> int | None:
        result: int | None = self._one("SELECT loc FROM docs_x WHERE id=?", (id,))
        return result

    def block(self, bno: int) -> tuple[int, int, int] | None:
        """(shard, offset, length) of a block."""
        result: tuple[int, int, int] | None = self._one("SELECT shard, off, len FROM blocks WHERE bno=?", (bno,))
        return result

    def blocks_after(self, seq: int, after_bno: int = -1) -> list[tuple[int, int, int, int, int]]:
        """Blocks holding changes past ``seq`` (bno order): (bno, shard, off, len, last_seq); a page at a time."""
        return self._all(
            "SELECT bno, shard, off, len, last_seq FROM blocks WHERE last_seq > ? AND bno > ? ORDER BY bno LIMIT 64",
            (seq, after_bno),
        )

    def all_blocks(self) -> list[tuple[int, int, int, int, int, int, int, int]]:
        return self._all("SELECT bno, shard, off, len, count, first_seq, last_seq, live FROM blocks ORDER BY bno")

    def live_locs(self, hashes: Iterable[int]) -> dict[int, int]:
        hs = list(hashes)
        if not hs:
            return {}
        q = ",".join("?" * len(hs))
        return dict(self._all(f"SELECT h, loc FROM docs WHERE h IN ({q})", tuple(hs)))

    def shard_sizes(self) -> dict[int, int]:
        return dict(self._all("SELECT n, size FROM shards"))

    def shard_liveness(self) -> list[tuple[int, int, int]]:
        """(shard, live records, all records) per shard."""
        return self._all("SELECT shard, SUM(live), SUM(count) FROM blocks GROUP BY shard ORDER BY shard")

    def places_in_shard(self, shard: int) -> bool:
        """Whether any row places a record in a block of ``shard`` (a scan of the rows, in SQLite)."""
        q = "(SELECT 1 FROM {} WHERE (loc >> 8) IN (SELECT bno FROM blocks WHERE shard=?) LIMIT 1)"
        return bool(self._one(f"SELECT EXISTS{q.format('docs')} OR EXISTS{q.format('docs_x')}", (shard, shard)))

    def blocks_of_shard(self, shard: int) -> list[tuple[int, int, int]]:
        return self._all("SELECT bno, off, len FROM blocks WHERE shard=? ORDER BY bno", (shard,))

    def secondary(self, name: str) -> list[tuple[str, bytes]]:
        return self._all("SELECT id, value FROM sidx WHERE name=?", (name,))

    def count_rows(self) -> tuple[int, int]:
        return self._one("SELECT (SELECT COUNT(*) FROM docs), (SELECT COUNT(*) FROM docs_x)", ())  # type: ignore[no-any-return]

    def integrity(self) -> str:
        return str(self._one("PRAGMA integrity_check", ()))

    # -- the compactor's transaction --------------------------------------------------------------------------

    def commit_flush(
        self,
        *,
        blocks: list[BlockInfo],
        placements: Placements,
        shard_sizes: dict[int, int],
        meta: dict[str, Any],
        sidx_set: list[tuple[str, str, bytes]],
        sidx_del: list[tuple[str, str]],
        extra: Callable[[sqlite3.Connection], None] | None = None,
        removals: Sequence[tuple[str, int, int, bool]] = (),
    ) -> list[bool]:
        """One transaction: new blocks, record placements, live counts, shard lengths, meta, secondary indexes,
        and what ``extra(connection)`` writes (the query indexes' rows).

        The placements are columns, ``(ids, hashes, locs, prev_locs, prev_in_x)``: each record's new location and
        where its previous state was (``prev_loc`` -1: never on disk). Returns, per placement, whether it lives in
        ``docs_x``. (Columns, not a tuple per record: a flush's tuples lived as long as the flush, as many survivors
        of the garbage collector's young collections as the records themselves in bench/processes.py.)
        A removal is ``(id, h, prev_loc, prev_in_x)``: a purged record, whose row goes (its state is dead).
        """
        with self._wlock:
            return self._commit_flush(blocks, placements, shard_sizes, meta, sidx_set, sidx_del, extra, removals)

    def _commit_flush(self, blocks: list[BlockInfo], placements: Placements,
                      shard_sizes: dict[int, int], meta: dict[str, Any], sidx_set: list[tuple[str, str, bytes]],
                      sidx_del: list[tuple[str, str]],
                      extra: Callable[[sqlite3.Connection], None] | None = None,
                      removals: Sequence[tuple[str, int, int, bool]] = ()) -> list[bool]:
        w = self._w
        in_x: list[bool] = []
        dead: dict[int, int] = {}
        for _id, _h, prev_loc, _x in removals:
            dead[prev_loc >> 8] = dead.get(prev_loc >> 8, 0) + 1
        try:
            w.execute("BEGIN IMMEDIATE")
            _rows(w, "INSERT INTO blocks(bno, shard, off, len, count, first_seq, last_seq, live)",
                  [(b.bno, b.shard, b.offset, b.length, b.count, b.first_seq, b.last_seq, b.count) for b in blocks])
            docs_upd: list[tuple[int, int]] = []
            x_set: list[tuple[str, int]] = []
            ids, hashes, locs, prev_locs, prev_xs = placements
            fresh: list[int] = []  # the placements of records never on disk before
            for k, prev_loc in enumerate(prev_locs):
                if prev_loc < 0:
                    fresh.append(k)
                    in_x.append(False)
                    continue
                prev_in_x = prev_xs[k]
                in_x.append(prev_in_x)
                dead[prev_loc >> 8] = dead.get(prev_loc >> 8, 0) + 1
                if prev_in_x:
                    x_set.append((ids[k], locs[k]))
                else:
                    docs_upd.append((hashes[k], locs[k]))
            # A fresh record takes the row of its hash unless another id has it already (on disk, or an earlier
            # placement of this flush): a 1-in-2**64 event per pair, handled all the same, in docs_x. The rows
            # go in hash order (an insert lands next to the one before in the b-tree: ~30% less CPU than in
            # placement order at 1,000,000 rows) and INSERT OR IGNORE says how many it took; only a statement
            # that took fewer than its rows asks which (no SELECT of every hash first: half the commit's CPU).
            fresh.sort(key=hashes.__getitem__)  # stable: of two fresh ids of one hash, the earlier placement wins
            per = 999 // 2
            for i in range(0, len(fresh), per):
                rows = fresh[i : i + per]
                params: list[int] = []
                for k in rows:
                    params += (hashes[k], locs[k])
                before = w.total_changes
                w.execute(f"INSERT OR IGNORE INTO docs(h, loc) VALUES {','.join(['(?,?)'] * len(rows))}", params)
                if w.total_changes - before != len(rows):
                    hs = list({hashes[k] for k in rows})
                    have = set(w.execute(f"SELECT h, loc FROM docs WHERE h IN ({','.join('?' * len(hs))})", hs))
                    for k in rows:
                        if (hashes[k], locs[k]) not in have:  # locations are unique: this placement's row was not taken
                            x_set.append((ids[k], locs[k]))
                            in_x[k] = True
            docs_upd.sort()
            _rows(w, "INSERT OR REPLACE INTO docs(h, loc)", docs_upd)  # rows that exist: a replace is an update
            w.executemany("INSERT OR REPLACE INTO docs_x(id, loc) VALUES(?,?)", x_set)
            # (Purging an id that owns its hash in docs while another id of that hash sits in docs_x would hide
            # the other one from reads: a 1-in-2**64 pair of ids, accepted.)
            w.executemany("DELETE FROM docs WHERE h=?", [(h,) for _id, h, _loc, x in removals if not x])
            w.executemany("DELETE FROM docs_x WHERE id=?", [(id,) for id, _h, _loc, x in removals if x])
            dead_rows = list(dead.items())
            for i in range(0, len(dead_rows), 300):
                part = dead_rows[i : i + 300]
                w.execute(f"UPDATE blocks SET live = live - CASE bno {' '.join(['WHEN ? THEN ?'] * len(part))} END "
                          f"WHERE bno IN ({','.join('?' * len(part))})", [v for r in part for v in r] +
                          [b for b, _n in part])
            _rows(w, "INSERT OR REPLACE INTO shards(n, size)", list(shard_sizes.items()))
            _rows(w, "INSERT OR REPLACE INTO meta(k, v)", list(meta.items()))
            _rows(w, "INSERT OR REPLACE INTO sidx(name, id, value)", sidx_set)
            _rows(w, "DELETE FROM sidx WHERE (name, id) IN (", sidx_del, ")")
            if extra is not None:
                extra(w)
            w.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                w.execute("ROLLBACK")
            raise StorageError(None, f"index commit failed: {exc}") from exc
        self._trim_wal()
        return in_x

    def _trim_wal(self) -> None:
        """Checkpoint and empty SQLite's own log once a commit left it over WAL_TRIM bytes. A flush's rows land all
        over the ``docs`` b-tree (keyed by hash), so one commit can log most of its pages: left as it is, the -wal
        file sits at that size between flushes (7 MB of 4 MB of index, 200,000 records: bench/local.py's bytes
        while the compactor is behind). SQLite checkpoints such a commit right away anyway (wal_autocheckpoint);
        this also cuts the file. Best effort: a reader in the way only leaves the file as it was."""
        with contextlib.suppress(OSError, sqlite3.Error):
            if os.stat(f"{self.path}-wal").st_size > WAL_TRIM:
                self._w.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    def drop_shard(self, shard: int) -> None:
        with self._wlock:
            self._drop_shard(shard)

    def _drop_shard(self, shard: int) -> None:
        w = self._w
        try:
            w.execute("BEGIN IMMEDIATE")
            w.execute("DELETE FROM blocks WHERE shard=?", (shard,))
            w.execute("DELETE FROM shards WHERE n=?", (shard,))
            w.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                w.execute("ROLLBACK")
            raise StorageError(None, f"index commit failed: {exc}") from exc

    def set_secondary(self, name: str, rows: Iterable[tuple[str, bytes]]) -> None:
        with self._wlock:
            w = self._w
            try:
                w.execute("BEGIN IMMEDIATE")
                w.execute("DELETE FROM sidx WHERE name=?", (name,))
                w.executemany("INSERT INTO sidx(name, id, value) VALUES(?,?,?)", ((name, i, v) for i, v in rows))
                w.execute("COMMIT")
            except sqlite3.Error as exc:
                with contextlib.suppress(sqlite3.Error):
                    w.execute("ROLLBACK")
                raise StorageError(None, f"cannot build index {name!r}: {exc}") from exc

    def drop_secondary(self, name: str) -> None:
        with self._wlock:
            self._w.execute("DELETE FROM sidx WHERE name=?", (name,))

    # -- query indexes (qindex.py) ----------------------------------------------------------------------------

    def write_qkeys(self, sets: Sequence[tuple[int, str, bytes, int]], dels: Sequence[tuple[int, str]],
                    w: sqlite3.Connection | None = None, meta: dict[str, Any] | None = None) -> None:
        """Write query-index rows (and delete others): inside a flush's transaction when ``w`` is given, else in
        a transaction of their own (an index being built), with ``meta`` in the same transaction."""
        if w is not None:
            _rows(w, "INSERT OR REPLACE INTO qkeys(ino, id, key, loc)", sets)
            _rows(w, "DELETE FROM qkeys WHERE (ino, id) IN (", dels, ")")
            return
        with self._wlock:
            w = self._w
            try:
                w.execute("BEGIN IMMEDIATE")
                _rows(w, "INSERT OR REPLACE INTO qkeys(ino, id, key, loc)", sets)
                _rows(w, "DELETE FROM qkeys WHERE (ino, id) IN (", dels, ")")
                _rows(w, "INSERT OR REPLACE INTO meta(k, v)", list((meta or {}).items()))
                w.execute("COMMIT")
            except sqlite3.Error as exc:
                with contextlib.suppress(sqlite3.Error):
                    w.execute("ROLLBACK")
                raise StorageError(None, f"cannot write a query index: {exc}") from exc

    def drop_qkeys(self, ino: int) -> None:
        with self._wlock:
            try:
                self._w.execute("DELETE FROM qkeys WHERE ino=?", (ino,))
                self._w.execute("DELETE FROM meta WHERE k=?", (f"qready:{ino}",))
            except sqlite3.Error as exc:
                raise StorageError(None, f"cannot drop a query index: {exc}") from exc

    def qkeys_range(self, ino: int, lo: bytes, hi: bytes, *, desc: bool = False,
                    after: tuple[bytes, str] | None = None, limit: int | None = None) -> list[tuple[str, int, Any]]:
        """(id, loc, key) of the rows with ``lo <= key < hi`` in (key, id) order (``desc``: reversed), after the
        row ``after`` (key, id), at most ``limit`` (None: all of them, and the key is left out: None)."""
        order = "DESC" if desc else ""
        if limit is None:
            return self._all(f"SELECT id, loc, NULL FROM qkeys WHERE ino=? AND key>=? AND key<? ORDER BY key {order}, "
                             f"id {order}", (ino, lo, hi))
        if after is None:
            sql = (f"SELECT id, loc, key FROM qkeys WHERE ino=? AND key>=? AND key<? "
                   f"ORDER BY key {order}, id {order} LIMIT ?")
            return self._all(sql, (ino, lo, hi, limit))
        sql = (f"SELECT id, loc, key FROM qkeys WHERE ino=? AND key>=? AND key<? AND (key, id) {'<' if desc else '>'} "
               f"(?, ?) ORDER BY key {order}, id {order} LIMIT ?")
        return self._all(sql, (ino, lo, hi, after[0], after[1], limit))

    def qlocs_range(self, ino: int, lo: bytes, hi: bytes, *, desc: bool = False, limit: int | None = None) -> str:
        """The ``loc`` of the rows with ``lo <= key < hi`` in (key, id) order (``desc``: reversed), at most
        ``limit``, as one text of decimal numbers and commas ("" for none): what a query answered from its record
        memo needs, in one row rather than a row (and two Python objects) per index entry; a query of 50 rows
        took 30 us where ``qkeys_range`` took 68 us (2,000 rows: 0.73 ms against 2.8 ms). The subquery's
        ``LIMIT`` (always bound, so SQLite keeps its ``ORDER BY``) feeds ``group_concat`` in index order."""
        sql = _QLOCS_DESC if desc else _QLOCS
        try:
            with self._rlock:
                row = self._r.execute(sql, (ino, lo, hi, -1 if limit is None else limit)).fetchone()
        except sqlite3.DatabaseError as exc:
            raise CorruptionError(f"{self.path}: index read failed: {exc}", path=str(self.path)) from exc
        return row[0] or ""

    def qkeys_count(self, ino: int, lo: bytes, hi: bytes) -> int:
        return int(self._one("SELECT count(*) FROM qkeys WHERE ino=? AND key>=? AND key<?", (ino, lo, hi)))

    # -- _local documents (not replicated, not in the changes feed) -------------------------------------------

    def get_local(self, id: str) -> tuple[int, bytes] | None:
        result: tuple[int, bytes] | None = self._one("SELECT rev, body FROM local WHERE id=?", (id,))
        return result

    def local_count(self) -> int:
        result: int = self._one("SELECT count(*) FROM local", ())
        return result

    def put_local(self, id: str, body: bytes | None, max_docs: int | None = None) -> int:
        """Store (or delete, with None) a local document; returns its new revision number. ``max_docs``: a new
        one is refused (:class:`LimitExceeded`) once that many are stored.

        Local documents are replication checkpoints, written after every batch: they go through their own
        connection with ``synchronous=NORMAL`` (no fsync per write). Losing the last one to a power cut only
        makes the next replication pass re-check a few revisions.
        """
        with self._llock:
            if self._l is None:
                self._l = self._connect()
                self._l.execute("PRAGMA synchronous=NORMAL")
            con = self._l
            try:
                row = con.execute("SELECT rev FROM local WHERE id=?", (id,)).fetchone()
                if row is None and body is not None and max_docs is not None \
                        and con.execute("SELECT count(*) FROM local").fetchone()[0] >= max_docs:
                    raise LimitExceeded(f"this database holds {max_docs} local documents, its limit",
                                        limit="max_local_docs")
                rev = (row[0] if row else 0) + 1
                if body is None:
                    con.execute("DELETE FROM local WHERE id=?", (id,))
                else:
                    con.execute("INSERT OR REPLACE INTO local(id, rev, body) VALUES(?,?,?)", (id, rev, body))
            except sqlite3.Error as exc:
                raise StorageError(None, f"cannot write local document: {exc}") from exc
        return rev

    # -- purges (CouchDB's purge sequence and purged infos) -----------------------------------------------------

    def _local_con(self) -> sqlite3.Connection:
        if self._l is None:
            self._l = self._connect()
            self._l.execute("PRAGMA synchronous=NORMAL")
        return self._l

    def add_purges(self, entries: Sequence[tuple[str, str]], keep: int) -> int:
        """Log purges ``(id, revs as a JSON list)``, each one step of the purge sequence, and keep only the newest
        ``keep`` (CouchDB's ``purged_infos_limit``). Returns the purge sequence. Written after the purge itself
        (no fsync: like checkpoints, a power cut may lose the last entries; the purge is in the log)."""
        with self._llock:
            con = self._local_con()
            try:
                con.execute("BEGIN IMMEDIATE")
                seq = int(con.execute("SELECT coalesce(max(seq), 0) FROM purges").fetchone()[0])
                con.executemany("INSERT INTO purges(seq, id, revs) VALUES(?,?,?)",
                                [(seq + i + 1, id, revs) for i, (id, revs) in enumerate(entries)])
                seq += len(entries)
                con.execute("DELETE FROM purges WHERE seq <= ?", (seq - max(1, keep),))
                con.execute("COMMIT")
            except sqlite3.Error as exc:
                with contextlib.suppress(sqlite3.Error):
                    con.execute("ROLLBACK")
                raise StorageError(None, f"cannot log a purge: {exc}") from exc
        return seq

    def purge_seq(self) -> int:
        return int(self._one("SELECT coalesce(max(seq), 0) FROM purges", ()))

    def purges(self) -> list[tuple[int, str, str]]:
        """The purges logged, oldest first: (purge seq, id, revs as JSON)."""
        return self._all("SELECT seq, id, revs FROM purges ORDER BY seq")

    # -- attachment bytes fetched by a Peer (see storage/blobs.py) ----------------------------------------------

    def fetched_blob(self, digest: str) -> str | None:
        result: str | None = self._one("SELECT blob FROM att_fetched WHERE digest=?", (digest,))
        return result

    def fetched_all(self) -> dict[str, str]:
        return dict(self._all("SELECT digest, blob FROM att_fetched"))

    def set_fetched(self, digest: str, blob: str | None) -> None:
        """Remember (or forget, with None) which blob holds the bytes of ``digest``. Like local documents: no
        fsync per write (a row lost to a power cut only makes the Peer fetch those bytes again)."""
        with self._llock:
            if self._l is None:
                self._l = self._connect()
                self._l.execute("PRAGMA synchronous=NORMAL")
            try:
                if blob is None:
                    self._l.execute("DELETE FROM att_fetched WHERE digest=?", (digest,))
                else:
                    self._l.execute("INSERT OR REPLACE INTO att_fetched(digest, blob) VALUES(?,?)", (digest, blob))
            except sqlite3.Error as exc:
                raise StorageError(None, f"cannot write the attachment index: {exc}") from exc

    def iter_hashes(self, chunk: int = 65_536) -> Iterator[int]:
        """Every id hash in the index (its own connection: it may be long).

        The hashes come ``chunk`` to a query, joined into one text value: a query step releases the GIL, and taking
        it back while another thread runs Python can take the whole switch interval (5 ms), so one step per row
        turned a 100,000-record rebuild of the id filter into minutes under a busy writer.
        """
        con = self._connect()
        try:
            low = -(1 << 63)
            while True:
                text, high, n = con.execute(
                    "SELECT group_concat(h), max(h), count(*) FROM (SELECT h FROM docs WHERE h >= ? ORDER BY h "
                    "LIMIT ?)", (low, chunk)).fetchone()
                if n:
                    yield from map(int, text.split(","))
                if n < chunk or high == (1 << 63) - 1:
                    break
                low = high + 1
            for (id,) in con.execute("SELECT id FROM docs_x"):
                yield id_hash(id)
        finally:
            con.close()
