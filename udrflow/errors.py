"""The one exception tree of udrflow.

Every failure a user can cause or meet raises a subclass of :class:`UdrflowError`. The
tree is shallow on purpose: catch ``UdrflowError`` for "anything udrflow", a middle class
for a family, a leaf when you act on one cause. Following trio, "you closed it"
(:class:`DatabaseClosedError`) is distinct from "an outside failure broke it"
(:class:`LogPoisonedError`, whose ``__cause__`` is the original ``OSError``).

Messages say what was expected, what was found, and where::

    checksum mismatch in segment 00000000000000000001.seg at byte 81920 (version 1234)

    UdrflowError
    ├── UsageError                 the caller asked for something invalid
    │   ├── InvalidPayloadError    a commit payload that cannot be written
    │   ├── InvalidNameError       a table/branch/view name that breaks a rule
    │   ├── SchemaError            data that does not fit a table's schema or key
    │   ├── TableNotFoundError     a table that does not exist (at that version)
    │   ├── TableExistsError       create_table of a name already taken
    │   ├── InvalidOptionError     an option outside its allowed values
    │   └── BranchNotFoundError    a branch that does not exist
    ├── DatabaseNotFoundError      no database (or log) at the path given
    ├── DatabaseLockedError        another process holds the writer lock
    ├── DatabaseClosedError        the database (or log) was closed by its owner
    ├── ReadOnlyError              a write through a read-only handle
    ├── VersionNotFoundError       a version outside [since, upper)
    ├── TransactionConflictError   a concurrent commit wrote what this transaction wrote (or read)
    ├── SqlError                   a SQL query that cannot be planned or run (DataFusion's text, position)
    │   ├── SqlSyntaxError         a query that does not parse
    │   └── SqlReadOnlyError       a statement that is not a query (INSERT, DDL, COPY, SET, ...)
    ├── StorageError               the file system failed us
    │   ├── StorageFullError       no space left (ENOSPC / EDQUOT)
    │   ├── StoragePermissionError the OS refused access to a path
    │   ├── CorruptionError        stored bytes fail a checksum or an invariant
    │   └── LogPoisonedError       an fsync failed; the writer refuses work until reopened
    │       └── CommitOutcomeUnknownError  this commit was written, then its fsync failed: it may be durable
    ├── MergeConflictError         a merge found rows both branches changed differently (nothing applied)
    ├── ConnectorError             an outside system (Kafka) or its data failed a connector
    └── InternalError              an invariant of udrflow itself broke (a bug: report it)
"""

from __future__ import annotations

import errno as _errno

__all__ = [
    "UdrflowError",
    "CommitOutcomeUnknownError",
    "MergeConflictError",
    "UsageError",
    "InvalidPayloadError",
    "InvalidNameError",
    "InvalidOptionError",
    "SchemaError",
    "TableNotFoundError",
    "TableExistsError",
    "TransactionConflictError",
    "DatabaseNotFoundError",
    "DatabaseLockedError",
    "DatabaseClosedError",
    "ReadOnlyError",
    "VersionNotFoundError",
    "StorageError",
    "StorageFullError",
    "StoragePermissionError",
    "CorruptionError",
    "LogPoisonedError",
    "InternalError",
    "SqlError",
    "SqlSyntaxError",
    "SqlReadOnlyError",
    "BranchNotFoundError",
    "ConnectorError",
]


class UdrflowError(Exception):
    """Root of every error udrflow raises on purpose."""


class UsageError(UdrflowError):
    """The caller asked for something invalid; nothing was changed."""


class InvalidPayloadError(UsageError):
    """A commit payload of the wrong type or size; rejected before anything was written."""


class InvalidNameError(UsageError):
    """A table, branch or view name that breaks a naming rule (the message names it)."""


class InvalidOptionError(UsageError):
    """An option outside its allowed values (the message lists them)."""


class SchemaError(UsageError):
    """Rows that do not fit the table: a wrong type, a missing or unknown column, a null
    or duplicate primary key. The message names the column, the expected type, the value
    found and its row."""


class TableNotFoundError(UsageError):
    """No table of that name exists (at the version asked for)."""


class TableExistsError(UsageError):
    """``create_table`` of a name that is already a table."""


class TransactionConflictError(UdrflowError):
    """A transaction lost to a concurrent commit. ``table`` and ``keys`` name what collided
    (``keys`` is None for a table-level conflict). Nothing of the loser is visible; retry
    it (``udrflow.retry`` does, with backoff)."""

    def __init__(self, message: str, table: str | None = None, keys: list | None = None,
                 version: int | None = None) -> None:
        super().__init__(message)
        self.table = table
        self.keys = keys
        self.version = version


class DatabaseNotFoundError(UdrflowError):
    """There is no udrflow database at the path given (and it was not to be created)."""


class DatabaseLockedError(UdrflowError):
    """Another process holds the database's writer lock. Open read-only, or close the other writer."""


class DatabaseClosedError(UdrflowError):
    """The database or log was closed by its owner; open it again to continue."""


class ReadOnlyError(UdrflowError):
    """A write was attempted through a read-only handle."""


class VersionNotFoundError(UdrflowError):
    """A version below ``since`` (compacted away) or at/above ``upper`` (not yet written)."""


class StorageError(UdrflowError):
    """The file system failed an operation; ``path`` names the file involved."""

    def __init__(self, message: str, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class StorageFullError(StorageError):
    """No space left on the device holding ``path``. Nothing unacknowledged was kept."""


class StoragePermissionError(StorageError):
    """The OS refused access to ``path`` (permissions or a read-only file system)."""


class CorruptionError(StorageError):
    """Stored bytes fail a checksum or a structural invariant; never skipped silently."""

    def __init__(self, message: str, path: str | None = None, offset: int | None = None,
                 version: int | None = None) -> None:
        super().__init__(message, path)
        self.offset = offset
        self.version = version


class LogPoisonedError(StorageError):
    """An fsync (or a write that could not be undone) failed. After a failed fsync the
    kernel may have dropped the dirty pages, so retrying could report success for data
    that is gone: the writer refuses all further work until the database is reopened,
    and recovery then decides from what is really on disk."""


class CommitOutcomeUnknownError(LogPoisonedError):
    """The commit was written but its fsync (or what followed the write) failed: it may or
    may not be durable. After a reopen, recovery keeps it if its frame reached the disk
    whole. Do not simply retry a non-idempotent commit: read the database after reopening
    to learn whether it is there (a retry could apply a transfer twice)."""


class InternalError(UdrflowError):
    """An invariant of udrflow itself does not hold. This is a bug; please report it."""


def storage_error_from_os(exc: OSError, action: str, path: str) -> StorageError:
    """Translate an ``OSError`` from ``action`` on ``path`` into the matching StorageError."""
    code = exc.errno
    detail = exc.strerror or str(exc)
    if code in (_errno.ENOSPC, _errno.EDQUOT):
        return StorageFullError(f"no space left to {action} {path}: {detail}", path)
    if code in (_errno.EACCES, _errno.EPERM, _errno.EROFS):
        return StoragePermissionError(f"permission denied to {action} {path}: {detail}", path)
    return StorageError(f"failed to {action} {path}: {detail} (errno {code})", path)


def require(condition: bool, message: str) -> None:
    """Check an internal invariant. Unlike ``assert`` it survives ``python -O``."""
    if not condition:
        raise InternalError(message)


class SqlError(UdrflowError):
    """A SQL query that cannot be planned or run. The message keeps DataFusion's own text
    and says where in the query; ``query`` is the query, ``line`` and ``column`` (1-based)
    the position when known, else None."""

    def __init__(self, message: str, query: str | None = None, line: int | None = None,
                 column: int | None = None) -> None:
        super().__init__(message)
        self.query = query
        self.line = line
        self.column = column


class SqlSyntaxError(SqlError):
    """A query that does not parse: udrflow's extensions (``AS OF``, ``@branch``) or
    DataFusion's SQL. The message names the position."""


class SqlReadOnlyError(SqlError):
    """A statement that is not a query. SQL in udrflow only reads: INSERT, UPDATE, DELETE,
    DDL, COPY, SET and other statements are rejected before anything runs (change tables
    with ``insert``/``upsert``/``delete`` or a transaction)."""


class BranchNotFoundError(UsageError):
    """A branch that does not exist (the message names it and the branches that do)."""


class MergeConflictError(UdrflowError):
    """A merge found rows that both branches changed differently. ``conflicts`` lists them
    (table, key, ours, theirs); nothing was applied."""

    def __init__(self, message: str, conflicts: list | None = None) -> None:
        super().__init__(message)
        self.conflicts = conflicts or []


class ConnectorError(UdrflowError):
    """A connector (``connectors.kafka``) could not do its work: the broker is unreachable
    or refused a request, a topic is missing, a record could not be decoded while
    ``on_error="raise"``, or a topic holds records that contradict what the connector
    wrote. The message names the topic, partition and offset (or the setting) involved."""
