"""The exception tree of MyNoSQL.

Every error the library raises on purpose derives from :class:`MyNoSQLError`::

    MyNoSQLError(Exception)
     ├── ConflictError                 a save or delete names a revision that is not the current one
     ├── DocumentNotFound(KeyError)    no such record (or it was deleted)
     ├── IndexNotFound(KeyError)       no secondary index of that name
     ├── InvalidDocument(ValueError)   the record, its id or a value is not acceptable; nothing was written
     │    └── InvalidValueType(TypeError)  a value of a type that cannot be stored, with its key path
     ├── DatabaseClosed                the handle has no open database (never opened, or closed)
     ├── DatabaseLocked                another process (or handle) has this database open
     ├── CorruptionError               a checksum or structure check failed on disk; says where
     ├── StorageError(OSError)         the operating system refused a write (disk full, permissions)
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

    def __init__(self, id: str, *, deleted: bool = False) -> None:
        self.id = id
        self.deleted = deleted
        what = "was deleted" if deleted else "does not exist"
        super().__init__(f"record {id!r} {what}")

    def __str__(self) -> str:  # KeyError would print the repr of the args
        return str(self.args[0])


class IndexNotFound(MyNoSQLError, KeyError):
    """No secondary index of this name (see ``indexadd``)."""

    def __str__(self) -> str:
        return str(self.args[0])


class InvalidDocument(MyNoSQLError, ValueError):
    """The record or its id is not acceptable. Nothing was written."""


class InvalidValueType(InvalidDocument, TypeError):
    """A value has a type that MyNoSQL cannot store exactly. ``path`` names where it is."""

    def __init__(self, message: str, *, path: str) -> None:
        super().__init__(message)
        self.path = path


class DatabaseClosed(MyNoSQLError):
    """The handle has no open database: call ``opendb`` first, or it was closed."""


class DatabaseLocked(MyNoSQLError):
    """The database is already open in another process (or another handle of this one)."""


class CorruptionError(MyNoSQLError):
    """A checksum or structure check failed. ``path`` names the damaged file when known."""

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class StorageError(MyNoSQLError, OSError):
    """The operating system refused a write (disk full, permission denied...). Nothing was acknowledged."""


class SecurityError(MyNoSQLError):
    """Refused: the configuration would expose data. The message says exactly what to do instead."""
