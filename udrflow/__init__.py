"""udrflow: a streaming-first data runtime for Python.

Layers, bottom up: ``udrflow.log`` is the append-only, checksummed epoch log (the one
source of truth); ``udrflow._database`` opens a database directory and hands out
:class:`Database` handles; ``udrflow.errors`` holds the one exception tree. Everything
a user needs is re-exported here; the rest is private (``_``-prefixed modules).
"""

# ruff: noqa: E402 (the imports below must follow the install)
from udrflow import _compiled

_compiled.install()  # before any engine module is imported: see udrflow/_compiled.py

from udrflow import errors as errors
from udrflow.errors import BranchNotFoundError as BranchNotFoundError
from udrflow.errors import CommitOutcomeUnknownError as CommitOutcomeUnknownError
from udrflow.errors import ConnectorError as ConnectorError
from udrflow.errors import CorruptionError as CorruptionError
from udrflow.errors import DatabaseClosedError as DatabaseClosedError
from udrflow.errors import DatabaseLockedError as DatabaseLockedError
from udrflow.errors import DatabaseNotFoundError as DatabaseNotFoundError
from udrflow.errors import InvalidNameError as InvalidNameError
from udrflow.errors import InvalidOptionError as InvalidOptionError
from udrflow.errors import InvalidPayloadError as InvalidPayloadError
from udrflow.errors import LogPoisonedError as LogPoisonedError
from udrflow.errors import MergeConflictError as MergeConflictError
from udrflow.errors import ReadOnlyError as ReadOnlyError
from udrflow.errors import SchemaError as SchemaError
from udrflow.errors import SqlError as SqlError
from udrflow.errors import SqlReadOnlyError as SqlReadOnlyError
from udrflow.errors import SqlSyntaxError as SqlSyntaxError
from udrflow.errors import StorageError as StorageError
from udrflow.errors import StorageFullError as StorageFullError
from udrflow.errors import StoragePermissionError as StoragePermissionError
from udrflow.errors import TableExistsError as TableExistsError
from udrflow.errors import TableNotFoundError as TableNotFoundError
from udrflow.errors import TransactionConflictError as TransactionConflictError
from udrflow.errors import UdrflowError as UdrflowError
from udrflow.errors import VersionNotFoundError as VersionNotFoundError

__version__ = "0.1.0"

# The engine (pyarrow, numpy, DataFusion, ...) is imported on first use of one of these
# names, not by ``import udrflow``: ``udrflow --version`` and scripts that only import
# the package stay fast (PEP 562).
_LAZY = {
    "open": ("udrflow._database", "open"),
    "Database": ("udrflow._database", "Database"),
    "Transaction": ("udrflow._transaction", "Transaction"),
    "retry": ("udrflow._transaction", "retry"),
    "merge_field": ("udrflow._branches", "merge_field"),
    "Durability": ("udrflow.log", "Durability"),
    "LogRecord": ("udrflow.log", "LogRecord"),
}


def __getattr__(name: str):
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'udrflow' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(target[0]), target[1])
    globals()[name] = value  # (next time, a plain module attribute)
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))

__all__ = [
    "open",
    "Database",
    "Transaction",
    "retry",
    "merge_field",
    "MergeConflictError",
    "Durability",
    "LogRecord",
    "errors",
    "UdrflowError",
    "CorruptionError",
    "DatabaseClosedError",
    "DatabaseLockedError",
    "DatabaseNotFoundError",
    "InvalidNameError",
    "InvalidOptionError",
    "InvalidPayloadError",
    "LogPoisonedError",
    "CommitOutcomeUnknownError",
    "ReadOnlyError",
    "SchemaError",
    "StorageError",
    "StorageFullError",
    "StoragePermissionError",
    "TableExistsError",
    "TableNotFoundError",
    "TransactionConflictError",
    "VersionNotFoundError",
    "BranchNotFoundError",
    "SqlError",
    "SqlSyntaxError",
    "SqlReadOnlyError",
    "ConnectorError",
]
