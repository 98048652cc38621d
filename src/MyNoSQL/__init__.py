"""MyNoSQL: an embedded, offline-first, replicated document database.

Re-exports only; the code lives in the private modules.
"""

from ._api import MyNoSQL
from ._database import Change, Database
from ._errors import (
    ConflictError,
    CorruptionError,
    DatabaseClosed,
    DatabaseLocked,
    DocumentNotFound,
    IndexNotFound,
    InvalidDocument,
    InvalidValueType,
    MyNoSQLError,
    SecurityError,
    StorageError,
)
from ._options import Limits, Options

__version__ = "0.1.0"

__all__ = [
    "Change",
    "ConflictError",
    "CorruptionError",
    "Database",
    "DatabaseClosed",
    "DatabaseLocked",
    "DocumentNotFound",
    "IndexNotFound",
    "Limits",
    "InvalidDocument",
    "InvalidValueType",
    "MyNoSQL",
    "MyNoSQLError",
    "Options",
    "SecurityError",
    "StorageError",
    "__version__",
]
