"""Database: what ``udrflow.open`` returns; the entry point to everything else.

A database is a directory::

    shop.udr/
      UDRFLOW           marker and format version, written once, durably
      LOCK              the writer lock (see _lock.py)
      log/main/         the epoch log of branch "main": NNN.seg segment files and HEAD

Within one process, every ``open`` of the same directory shares one store (one writer
lock, one log writer per branch), like DuckDB's instance cache: a second handle is
cheap and sees the same commits at once. The store closes with its last handle.
"""

from __future__ import annotations

import os
import threading

from udrflow._clock import Clock
from udrflow._fileio import FileIO, make_dirs_durably, write_file_durably
from udrflow._limits import FSYNC_INTERVAL_MS_DEFAULT, SEGMENT_SIZE_BYTES_DEFAULT
from udrflow._lock import WriterLock
from udrflow._names import check_name
from udrflow.errors import (
    DatabaseClosedError,
    DatabaseNotFoundError,
    InvalidOptionError,
    UsageError,
    storage_error_from_os,
)
from udrflow.log import Durability, EpochLog

MARKER_NAME = "UDRFLOW"
FORMAT = b"udrflow database format 1\n"
DEFAULT_BRANCH = "main"


class _Store:
    """The shared, reference-counted state of one open database directory in this process."""

    def __init__(self, path: str, readonly: bool, options: dict) -> None:
        self.path = path
        self.readonly = readonly
        self.options = options
        self.lock = None if readonly else WriterLock(path)
        self.logs: dict[str, EpochLog] = {}
        self.refs = 0

    def log(self, branch: str) -> EpochLog:
        log = self.logs.get(branch)
        if log is None:
            o = self.options
            log = EpochLog.open(os.path.join(self.path, "log", branch), readonly=self.readonly,
                                durability=o["durability"], fsync_interval_ms=o["fsync_interval_ms"],
                                segment_size_bytes=o["segment_size_bytes"], io=o["io"], clock=o["clock"])
            self.logs[branch] = log
        return log

    def close(self) -> None:
        try:
            for log in self.logs.values():
                log.close()
        finally:
            if self.lock is not None:
                self.lock.release()


_stores: dict[tuple[str, bool], _Store] = {}
_stores_lock = threading.Lock()


def open(path: str | os.PathLike, *, branch: str = DEFAULT_BRANCH, readonly: bool = False, create: bool = True,
         durability: str = Durability.SYNC, fsync_interval_ms: int = FSYNC_INTERVAL_MS_DEFAULT,
         segment_size_bytes: int = SEGMENT_SIZE_BYTES_DEFAULT, io: FileIO | None = None,
         clock: Clock | None = None) -> Database:
    """Open the database at ``path`` (a directory), creating it if missing.

    >>> import tempfile, udrflow
    >>> db = udrflow.open(tempfile.mkdtemp() + "/shop.udr")
    >>> db.version
    0
    >>> db.close()

    Options:

    - ``branch``: the branch this handle reads and writes (default ``"main"``).
    - ``readonly``: ``False`` (default) takes the writer lock (one writing process per
      database); ``True`` takes no lock and follows what the writer publishes.
    - ``create``: ``True`` (default) creates a missing database; ``False`` raises
      DatabaseNotFoundError instead.
    - ``durability``: ``"sync"`` (default) | ``"interval"`` | ``"none"``; see
      ``udrflow.log.Durability``. Fixed by the first handle of the process.
    - ``fsync_interval_ms``: the interval for ``"interval"`` durability.
    - ``segment_size_bytes``: the size at which a new log segment file is started.
    - ``io`` / ``clock``: test doubles (``udrflow.testing``).
    """
    path = os.path.abspath(os.fspath(path))
    check_name(branch, "branch")
    options = dict(durability=durability, fsync_interval_ms=fsync_interval_ms,
                   segment_size_bytes=segment_size_bytes, io=io, clock=clock)
    with _stores_lock:
        key = (os.path.realpath(path) if os.path.exists(path) else path, readonly)
        store = _stores.get(key)
        if store is None:
            _prepare_directory(path, readonly, create, io or FileIO())
            store = _Store(path, readonly, options)
            _stores[key] = store
        elif any(options[k] != store.options[k] for k in ("durability", "io", "clock")):
            raise InvalidOptionError(
                f"database {path} is already open in this process with durability={store.options['durability']!r}: "
                f"expected the same options on every open of it, got durability={durability!r}")
        try:
            store.log(branch)
        except BaseException:
            if store.refs == 0:
                del _stores[key]
                store.close()
            raise
        store.refs += 1
        return Database(store, key, branch)


def _prepare_directory(path: str, readonly: bool, create: bool, io: FileIO) -> None:
    marker = os.path.join(path, MARKER_NAME)
    if os.path.exists(marker):
        return
    if os.path.exists(path) and not os.path.isdir(path):
        raise UsageError(f"cannot open a database at {path}: expected a directory, found a file")
    if os.path.isdir(path) and os.listdir(path):
        raise UsageError(
            f"{path} is not a udrflow database: expected a file named {MARKER_NAME} in it, or an empty directory")
    if readonly or not create:
        raise DatabaseNotFoundError(f"no udrflow database at {path} (expected a directory with a {MARKER_NAME} file)")
    try:
        make_dirs_durably(io, os.path.join(path, "log"))
        write_file_durably(io, marker, FORMAT)
    except OSError as exc:
        raise storage_error_from_os(exc, "create the database", path) from exc


class Database:
    """An open database, on one branch. Thread-safe; close it (or use ``with``) when done."""

    def __init__(self, store: _Store, key, branch: str) -> None:
        self._store = store
        self._key = key
        self._branch = branch
        self._log: EpochLog | None = store.logs[branch]

    @property
    def path(self) -> str:
        return self._store.path

    @property
    def branch(self) -> str:
        return self._branch

    @property
    def readonly(self) -> bool:
        return self._store.readonly

    @property
    def log(self) -> EpochLog:
        """The epoch log of this handle's branch (the source of truth for everything)."""
        if self._log is None:
            raise DatabaseClosedError(f"database {self.path} is closed")
        return self._log

    @property
    def version(self) -> int:
        """The head version of the open branch (0 before the first commit)."""
        log = self.log
        return log.refresh() if log.readonly else log.version

    def close(self) -> None:
        """Release this handle; the last handle in the process closes the files. Idempotent."""
        if self._log is None:
            return
        self._log = None
        with _stores_lock:
            self._store.refs -= 1
            if self._store.refs == 0:
                _stores.pop(self._key, None)
                self._store.close()

    @property
    def closed(self) -> bool:
        return self._log is None

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._log is None else f"version={self._log.version}"
        return f"<udrflow.Database {self.path!r} branch={self._branch!r} {state}{' read-only' if self.readonly else ''}>"
