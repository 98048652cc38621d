"""Typed, frozen options of a database."""

from __future__ import annotations

import dataclasses
from typing import Literal

Durability = Literal["process", "power"]
Codec = Literal["deflate", "lzma"]


@dataclasses.dataclass(frozen=True)
class Limits:
    """What a mirror accepts from a client. Over a limit: a 4xx answer with a JSON error, nothing written."""

    max_request_bytes: int = 32 * 1024 * 1024  # one request body, once decompressed (JSON: attachments inline
    #                                               in base64 included); a plain _bulk_docs body over 8 MiB is
    #                                               read a document at a time: then each document
    max_json_values: int = 2_000_000  # JSON values and keys in one request body, counted before it is parsed
    #                                   (its commas, colons and brackets: ~130 MB of parsed objects at most)
    max_attachment_bytes: int = 1024 * 1024 * 1024  # one attachment (its bytes stream to disk: not held in RAM)
    max_batch: int = 10_000  # documents (or ids) in one _bulk_docs, _bulk_get or _revs_diff
    max_answer_bytes: int = 64 * 1024 * 1024  # documents in one _bulk_get or open_revs answer (one document
    #                                           is always answered, whatever its size)
    max_depth: int = 100  # JSON nesting of a document
    max_revisions: int = 1000  # entries of a document's _revisions list
    max_leaves: int = 1000  # leaf revisions (conflicting branches, tombstones included) of one record
    max_local_docs: int = 10_000  # _local documents (replication checkpoints) a mirror holds
    max_local_bytes: int = 64 * 1024  # one _local document
    max_connections: int = 512  # open client connections (TLS handshakes included); more are refused
    max_connections_per_address: int = 64  # of them from one client address (an IPv6 /64); at the total cap,
    #                                         a newcomer from an address holding fewer closes the oldest of the
    #                                         address holding the most
    tls_handshake_timeout: float = 10.0  # seconds for a TLS client to complete its handshake
    header_timeout: float = 15.0  # a connection with no complete request this long after it opened (or after
    #                               its last answer) is closed: idle keep-alive and slow headers alike
    body_timeout: float = 60.0  # seconds for a client to send a request's body
    max_longpoll: float = 60.0  # seconds a longpoll _changes request may wait
    max_auth_failures: int = 10  # failed logins from one address within auth_failure_window before it gets 429s
    auth_failure_window: float = 60.0  # seconds

    def __post_init__(self) -> None:
        if not 1 <= self.max_depth <= 200:
            raise ValueError("max_depth must be between 1 and 200 (the deepest nesting a record may have)")
        for name in ("max_request_bytes", "max_json_values", "max_attachment_bytes", "max_batch", "max_answer_bytes",
                     "max_revisions", "max_leaves", "max_local_docs", "max_local_bytes", "max_connections",
                     "max_connections_per_address", "max_auth_failures"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        for name in ("tls_handshake_timeout", "header_timeout", "body_timeout", "max_longpoll",
                     "auth_failure_window"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")


@dataclasses.dataclass(frozen=True)
class Options:
    """Tuning knobs of one open database. The defaults suit most applications.

    durability:
        ``"process"`` (default): a ``savedoc`` that returned survives a crash of the process (SIGKILL included),
        because the write-ahead log record is in the operating system's hands before ``savedoc`` returns.
        ``"power"``: a ``savedoc`` that returned also survives power loss or an OS crash: the log is
        ``fdatasync``-ed before returning. Concurrent writers share one sync (group commit).
    cache_docs:
        how many recently used records stay decoded in RAM (the LRU); records still referenced elsewhere stay
        reachable through a weak-value map at no extra cost. A small record (up to 1 KiB of JSON) read more
        than once also keeps its dict form, about 3x its JSON in RAM, so later reads copy it instead of parsing.
        ``find`` keeps its own memo of that kind, of at most as many records: those an index returned more than
        once (the oldest go first).
    block_cache_bytes:
        how many bytes of decompressed shard blocks stay in RAM.
    max_doc_bytes:
        the largest encoded record accepted by ``savedoc`` (default 8 MiB).
    revs_limit:
        how many ancestors of each leaf revision are remembered (as CouchDB's ``_revs_limit``).
    flush_docs, flush_bytes, flush_interval:
        the background compactor packs the write-ahead log into shard blocks once this many records, or
        records of this many encoded bytes, are pending, or this many seconds after the first pending one. When
        records come faster than it packs them, ``savedoc`` (and a mirror taking pushed records) waits while
        four times that many records or bytes are not yet packed (the batch being packed and the next): RAM
        holds at most that (~1.3 KB per small record), and a burst of writes below it never waits. Past it, a
        save may wait until the batch being packed is in its shard (~1.4 s for 16,384 small records on a
        2-core machine).
    block_docs:
        records per LZMA2 block (16-64 is the measured sweet spot of size against read latency); a DEFLATE
        block holds 4 times as many (at most 255).
    codec:
        how the compactor compresses new shard blocks. ``"lzma"`` (default): raw LZMA2, the smallest files;
        while the compactor is behind the savers (and for the whole flush after one that ended behind) it packs
        DEFLATE blocks (so a saver that goes on is not held to LZMA's pace), and re-packs them with LZMA2 once no
        save has come for a few seconds. ``"deflate"``: raw
        DEFLATE only; on small JSON records (bench/local.py's) ~5x cheaper to compress and ~7x cheaper to
        decompress than LZMA2 for ~4% more bytes (faster cold reads). Blocks of either codec are read whatever
        this says (docs/format.md).
    shard_max_bytes:
        a shard file is closed for appends past this size and a new one begun.
    remote_timeout:
        seconds an HTTP request to a mirror may take before it counts as failed.
    read_timeout:
        how long ``readdoc`` of a record this peer does not hold may wait for a mirror before it gives up
        (``DocumentNotFound``): reads never hang on the network.
    longpoll:
        how long one poll of a mirror's changes feed waits for a change (an idle poll is one request).
    final_push:
        how long ``closedb`` may spend on a last push of unsent records.
    tls_ca_file, tls_verify:
        a CA bundle to verify ``https://`` mirrors with (default: the system's); ``tls_verify=False`` turns
        verification off (it logs a warning: anyone on the path can then read and change what travels).
    learn_mirrors:
        False keeps the mirror list to what ``addpeer`` was given (no ``GET /_mirrors``): for networks where
        the mirrors' own addresses are not reachable (NAT, proxies).
    background_sync:
        False opens the database without its background thread: no replication, no serving (tools that
        inspect a database, like the ``mynosql`` command, use this).
    limits:
        what this database accepts when it serves as a mirror (:class:`Limits`).
    cors_origins:
        the web origins (``https://app.example``) whose pages may call this database when it serves as a mirror
        (CORS, with credentials and cookie sessions); ``("*",)`` lets any origin in without credentials. Empty
        (the default): no CORS headers, browsers refuse cross-origin calls.
    strict_queries:
        True makes ``find`` (and ``explain``, ``observe``) raise :class:`~MyNoSQL.NoUsableIndex` for a query no
        index can answer, instead of reading every record (see docs/queries.md).
    exclusive:
        False (default): other processes that open the same database share it: the first one owns it (its store,
        compactor and replication) and serves the others' calls over a Unix socket in the database folder; when
        it exits or dies, another takes over (see docs/architecture.md). True: this process opens the database
        only if no other has it open, and lets no other in (:class:`~MyNoSQL.DatabaseLocked` either way).
    gc_live_ratio:
        a closed shard whose live records fall below this fraction of its records is rewritten (its live
        records move to the newest shard) and deleted.
    """

    durability: Durability = "process"
    limits: Limits = dataclasses.field(default_factory=Limits)
    cache_docs: int = 10_000
    block_cache_bytes: int = 32 * 1024 * 1024
    max_doc_bytes: int = 8 * 1024 * 1024
    revs_limit: int = 1000
    flush_docs: int = 4096
    flush_bytes: int = 4 * 1024 * 1024
    flush_interval: float = 1.0
    block_docs: int = 64
    codec: Codec = "lzma"
    shard_max_bytes: int = 64 * 1024 * 1024
    gc_live_ratio: float = 0.5
    remote_timeout: float = 10.0
    read_timeout: float = 2.0
    longpoll: float = 25.0
    final_push: float = 5.0
    tls_ca_file: str | None = None
    tls_verify: bool = True
    background_sync: bool = True
    learn_mirrors: bool = True
    cors_origins: tuple[str, ...] = ()
    strict_queries: bool = False
    exclusive: bool = False

    def __post_init__(self) -> None:
        if self.durability not in ("process", "power"):
            raise ValueError(f"durability must be 'process' or 'power', not {self.durability!r}")
        for name in ("cache_docs", "block_cache_bytes", "max_doc_bytes", "revs_limit", "flush_docs",
                     "flush_bytes", "block_docs", "shard_max_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.codec not in ("deflate", "lzma"):
            raise ValueError(f"codec must be 'deflate' or 'lzma', not {self.codec!r}")
        if not 1 <= self.block_docs <= 255:
            raise ValueError("block_docs must be between 1 and 255")
        if self.flush_interval <= 0:
            raise ValueError("flush_interval must be positive")
        if not 0.0 <= self.gc_live_ratio < 1.0:
            raise ValueError("gc_live_ratio must be in [0, 1)")
