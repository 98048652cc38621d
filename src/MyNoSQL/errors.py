"""The exception tree of MyNoSQL.

Every error the library raises on purpose derives from :class:`MyNoSQLError`::

    MyNoSQLError(Exception)
     ├── ConflictError                 a save or delete names a revision that is not the current one
     ├── DocumentNotFound(KeyError)    no such record (or it was deleted)
     │    ├── DocumentUnavailable      a peer does not hold it (or an attachment's bytes) and no mirror could be
     │    │                            asked (says why)
     │    └── AttachmentNotFound       the record has no attachment of that name
     ├── IndexNotFound(KeyError)       no secondary index of that name
     ├── InvalidDocument(ValueError)   the record, its id or a value is not acceptable; nothing was written
     │    ├── InvalidValueType(TypeError)  a value of a type that cannot be stored, with its key path
     │    ├── LimitExceeded            a limit of the database refuses it (Limits: conflicting leaves of one
     │                                 record, _local documents); ``limit`` names it
     │    └── InvalidQuery              a selector, sort, field list or index definition that is not valid
     ├── DatabaseClosed                the handle has no open database (never opened, or closed)
     ├── DatabaseLocked                another process (or handle) has this database open, not shared
     ├── CorruptionError               a checksum or structure check failed on disk; says where
     ├── StorageError(OSError)         the operating system refused a write (disk full, permissions)
     ├── RemoteError                   a mirror or server could not be reached, or answered with an error
     └── SecurityError                 a configuration that would expose data (e.g. serving beyond loopback
                                       without credentials); the message says what to do

Foreign errors (``OSError`` from the file system, ``sqlite3.Error`` from the index) are translated into these
at the storage boundary with ``raise ... from exc`` so the original stays visible in the traceback.
"""

from __future__ import annotations


class MyNoSQLError(Exception):
    """Base class of every error raised by MyNoSQL."""


class ConflictError(MyNoSQLError):
    """The stored record has a different (later or concurrent) revision than the one given."""

    def __init__(self, message: str, *, id: str | None = None, current_rev: str | None = None) -> None:
        super().__init__(message)
        self.id = id
        self.current_rev = current_rev


class DocumentNotFound(MyNoSQLError, KeyError):
    """No record with this id exists (or it was deleted)."""

    def __init__(self, id: str, *, deleted: bool = False, rev: str | None = None, known: bool = False) -> None:
        self.id = id
        self.deleted = deleted
        self.rev = rev
        if rev is None:
            what = "was deleted" if deleted else "does not exist"
            super().__init__(f"record {id!r} {what}")
        elif deleted:
            super().__init__(f"revision {rev} of record {id!r} is a deletion")
        elif known:
            super().__init__(f"revision {rev} of record {id!r} is not stored: only the latest revision of each "
                             "branch (the winner and the conflicting ones) keeps its content")
        else:
            super().__init__(f"record {id!r} has no revision {rev}")

    def __str__(self) -> str:  # KeyError would print the repr of the args
        return str(self.args[0])


class DocumentUnavailable(DocumentNotFound):
    """A peer does not hold this record and could not ask any mirror for it (down, slow, refusing).

    A :class:`DocumentNotFound` (so ``except KeyError`` code keeps working), but it does not say the record does
    not exist: ``reason`` says why the mirrors could not be asked. Try again once a mirror answers.
    """

    def __init__(self, id: str, reason: str) -> None:
        super().__init__(id)
        self.reason = reason
        self.args = (f"record {id!r} is not held here and no mirror could be asked for it: {reason}",)


class AttachmentNotFound(DocumentNotFound):
    """The record exists but its revision has no attachment of this name (``name``)."""

    def __init__(self, id: str, name: str, *, rev: str | None = None) -> None:
        super().__init__(id)
        self.name = name
        self.rev = rev
        where = f"revision {rev} of record {id!r}" if rev else f"record {id!r}"
        self.args = (f"{where} has no attachment {name!r}",)


class IndexNotFound(MyNoSQLError, KeyError):
    """No secondary index of this name (see ``indexadd``)."""

    def __str__(self) -> str:
        return str(self.args[0])


class InvalidDocument(MyNoSQLError, ValueError):
    """The record or its id is not acceptable. Nothing was written."""


class InvalidQuery(InvalidDocument):
    """A selector, sort, field list or index definition is not valid (the message says what is wrong)."""


class NoUsableIndex(MyNoSQLError):
    """``Options(strict_queries=True)``: no index can answer this query, and it would scan every record."""


class InvalidValueType(InvalidDocument, TypeError):
    """A value has a type that MyNoSQL cannot store exactly. ``path`` names where it is."""

    def __init__(self, message: str, *, path: str) -> None:
        super().__init__(message)
        self.path = path


class LimitExceeded(InvalidDocument):
    """A limit of the database refuses the write (``limit``: the :class:`~MyNoSQL.Limits` field, such as
    ``max_leaves``). Nothing was written."""

    def __init__(self, message: str, *, limit: str) -> None:
        super().__init__(message)
        self.limit = limit


class DatabaseClosed(MyNoSQLError):
    """The handle has no open database: call ``opendb`` first, or it was closed."""


class DatabaseLocked(MyNoSQLError):
    """The database is already open in another process (or another handle of this one) that does not share it
    (``Options(exclusive=True)``), or this one asked for it alone and another has it open."""


class CorruptionError(MyNoSQLError):
    """A checksum or structure check failed. ``path`` names the damaged file when known."""

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class StorageError(MyNoSQLError, OSError):
    """The operating system refused a write (disk full, permission denied...). Nothing was acknowledged."""


class RemoteError(MyNoSQLError):
    """A mirror could not be reached, or answered with an error. ``status`` is the HTTP status (0: network).

    ``kind`` names the problem without its details (addresses, ports, errno texts), so that a background loop
    logs a problem once, not again for every retry whose message differs: ``"unreachable"`` (connection refused,
    reset or timed out), ``"tls"``, ``"HTTP 401"`` (each 4xx on its own), ``"HTTP 5xx"``, ``"protocol"`` (an answer
    that is not what the protocol says), ``"error"``.
    """

    def __init__(self, message: str, *, status: int = 0, kind: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        if kind is None:
            kind = ("HTTP 5xx" if status >= 500 else f"HTTP {status}") if status else "error"
        self.kind = kind


class SecurityError(MyNoSQLError):
    """Refused: the configuration would expose data. The message says exactly what to do instead."""
