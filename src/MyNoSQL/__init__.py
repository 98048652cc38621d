"""MyNoSQL: an embedded, offline-first, replicated document database.

Re-exports only; the code lives in the modules below (docs/architecture.md shows how they fit together).
"""

from .database import Change, Database
from .errors import (
    AttachmentNotFound,
    ConflictError,
    CorruptionError,
    DatabaseClosed,
    DatabaseLocked,
    DocumentNotFound,
    DocumentUnavailable,
    IndexNotFound,
    InvalidDocument,
    InvalidQuery,
    InvalidValueType,
    MyNoSQLError,
    NoUsableIndex,
    RemoteError,
    SecurityError,
    StorageError,
)
from .handle import MyNoSQL
from .node import Node
from .options import Limits, Options
from .version import __version__

__all__ = [
    "AttachmentNotFound",
    "Change",
    "ConflictError",
    "CorruptionError",
    "Database",
    "DatabaseClosed",
    "DatabaseLocked",
    "DocumentNotFound",
    "DocumentUnavailable",
    "IndexNotFound",
    "InvalidDocument",
    "InvalidQuery",
    "InvalidValueType",
    "Limits",
    "MyNoSQL",
    "MyNoSQLError",
    "NoUsableIndex",
    "Node",
    "Options",
    "RemoteError",
    "SecurityError",
    "StorageError",
    "__version__",
]
