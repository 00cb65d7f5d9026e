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

import datetime as dt
import os
import threading

import pyarrow as pa

from udrflow._checkpoint import CheckpointStore
from udrflow._chunks import ChunkStore
from udrflow._clock import Clock
from udrflow._fileio import FileIO, make_dirs_durably, write_file_durably
from udrflow._limits import FSYNC_INTERVAL_MS_DEFAULT, SEGMENT_SIZE_BYTES_DEFAULT
from udrflow._lock import WriterLock
from udrflow._names import check_name
from udrflow._schema import check_keys, check_table_schema, to_arrow
from udrflow._tables import Op, TableEngine
from udrflow._transaction import Transaction
from udrflow.errors import (
    DatabaseClosedError,
    DatabaseNotFoundError,
    InvalidOptionError,
    ReadOnlyError,
    UsageError,
    VersionNotFoundError,
    storage_error_from_os,
)
from udrflow.log import Durability, EpochLog

MARKER_NAME = "UDRFLOW"
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
FORMAT = b"udrflow database format 1\n"
DEFAULT_BRANCH = "main"


class _Store:
    """The shared, reference-counted state of one open database directory in this process."""

    def __init__(self, path: str, readonly: bool, options: dict) -> None:
        self.path = path
        self.readonly = readonly
        self.options = options
        self.io = options["io"] or FileIO()
        self.lock = None if readonly else WriterLock(path)
        self.logs: dict[str, EpochLog] = {}
        self.engines: dict[str, TableEngine] = {}
        self.chunks = ChunkStore(os.path.join(path, "chunks"), self.io)
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

    def engine(self, branch: str) -> TableEngine:
        # Built on first use: it decodes every commit header to rebuild the catalog, which
        # log-level users (udrflow verify, crash tests on raw frames) do not need.
        engine = self.engines.get(branch)
        if engine is None:
            checkpoints = CheckpointStore(os.path.join(self.path, "checkpoints", branch), self.io, self.chunks)
            engine = TableEngine(self.log(branch), self.chunks, checkpoints, root=self.path, branch=branch,
                                 io=self.io)
            self.engines[branch] = engine
        return engine

    def close(self) -> None:
        try:
            for engine in self.engines.values():
                engine.close()
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
        if not log.readonly:
            return log.version
        engine = self._store.engines.get(self._branch)
        return engine.refresh() if engine is not None else log.refresh()

    # ---- tables ------------------------------------------------------------------------

    def _engine(self) -> TableEngine:
        if self._log is None:
            raise DatabaseClosedError(f"database {self.path} is closed")
        return self._store.engine(self._branch)

    def _writable_engine(self) -> TableEngine:
        engine = self._engine()
        if self.readonly:
            raise ReadOnlyError(f"database {self.path} is open read-only: open it without readonly=True to write")
        return engine

    def create_table(self, name: str, schema: pa.Schema, primary_key: list[str] | str | None = None) -> int:
        """Create table ``name`` (a commit); return its version.

        >>> import tempfile, pyarrow as pa, udrflow
        >>> db = udrflow.open(tempfile.mkdtemp() + "/t.udr")
        >>> db.create_table("orders", pa.schema([("id", pa.int64()), ("amount", pa.float64())]), primary_key=["id"])
        1
        >>> db.insert("orders", [{"id": 1, "amount": 9.5}])
        2
        >>> db.read("orders").to_pylist()
        [{'id': 1, 'amount': 9.5}]
        >>> db.close()
        """
        return self._writable_engine().commit([self._ddl_op("create_table", name, schema=schema,
                                                            primary_key=primary_key)])

    def add_column(self, table: str, column: pa.Field) -> int:
        """Add a nullable column to ``table`` (a commit); rows written before read it as null."""
        return self._writable_engine().commit([self._ddl_op("add_column", table, column=column)])

    def drop_table(self, table: str) -> int:
        """Drop ``table`` (a commit). Its history stays readable at earlier versions."""
        return self._writable_engine().commit([Op("drop_table", table)])

    def tables(self, version: int | None = None) -> list[str]:
        engine = self._engine()
        return engine.catalog.names(engine.resolve_version(self._version_arg(version)))

    def schema(self, table: str, version: int | None = None) -> pa.Schema:
        engine = self._engine()
        return engine.table_def(table, engine.resolve_version(self._version_arg(version))).schema

    def primary_key(self, table: str, version: int | None = None) -> list[str]:
        engine = self._engine()
        return list(engine.table_def(table, engine.resolve_version(self._version_arg(version))).primary_key)

    def insert(self, table: str, rows) -> int:
        """Insert rows (Arrow table/batch, list of dicts, or a pandas DataFrame); return the version.
        A key already in the table, or twice in ``rows``, is a SchemaError and nothing is written."""
        engine = self._writable_engine()
        return engine.commit([self._row_op("insert", table, rows)])

    def upsert(self, table: str, rows) -> int:
        """Insert rows, replacing any row with the same primary key; return the version."""
        engine = self._writable_engine()
        return engine.commit([self._row_op("upsert", table, rows)])

    def delete(self, table: str, keys=None, *, where: str | None = None) -> int | None:
        """Delete by primary key (``keys``: rows with the key columns) or by a SQL predicate
        (``where="amount < 0"``); return the version (None when nothing matched)."""
        if (keys is None) == (where is None):
            raise UsageError("delete needs exactly one of keys= or where=")
        if where is not None:
            with self.transaction() as tx:
                tx.delete(table, where=where)
            return tx.version
        engine = self._writable_engine()
        return engine.commit([self._row_op("delete_keys", table, keys)])

    def read(self, table: str, version: int | dt.datetime | None = None) -> pa.Table:
        """``table`` as of ``version`` (default: the head): an int version, or a datetime
        (the last commit at or before it; naive datetimes are UTC)."""
        engine = self._engine()
        if self.readonly:
            engine.refresh()
        return engine.read(table, self._version_arg(version))

    def _version_arg(self, version):
        if isinstance(version, dt.datetime):
            when = version if version.tzinfo else version.replace(tzinfo=dt.UTC)
            # Exact integer microseconds (a float timestamp loses 1 us for some instants).
            ts_us = (when - _EPOCH) // dt.timedelta(microseconds=1)
            v = self.log.version_at(ts_us)
            if v == 0:
                raise VersionNotFoundError(f"no commit at or before {when.isoformat()} in {self.path}")
            return v
        return version

    def transaction(self, isolation: str = "snapshot") -> Transaction:
        """Begin a transaction (see udrflow._transaction for the isolation levels)."""
        return Transaction(self, self._writable_engine(), isolation)

    def checkpoint(self, table: str | None = None) -> dict[str, int | None]:
        """Write checkpoints now (of ``table``, or every table) at the head version."""
        engine = self._writable_engine()
        if engine.checkpoint_error is not None:
            err, engine.checkpoint_error = engine.checkpoint_error, None
            raise err
        names = [table] if table else engine.catalog.names(self.log.version)
        return {name: engine.checkpoint(name) for name in names}

    def set_since(self, version: int, tables: list[str] | None = None) -> dict[str, int]:
        """Retention: give up the history of ``tables`` (default: all) before ``version``.
        Reads below it raise VersionNotFoundError; ``gc()`` then reclaims the space."""
        return self._writable_engine().set_since(version, tables)

    def gc(self) -> dict[str, int]:
        """Remove what no retained version can reach: old checkpoints, log segments below
        every table's since, unreferenced chunks. Returns what was removed."""
        return self._writable_engine().gc()

    def _ddl_op(self, kind: str, name: str, *, schema=None, primary_key=None, column=None) -> Op:
        check_name(name, "table")
        if kind == "create_table":
            if not isinstance(schema, pa.Schema):
                raise UsageError(f"create_table({name!r}) needs a pyarrow.Schema: got {type(schema).__name__}")
            if isinstance(primary_key, str):
                primary_key = [primary_key]
            return Op("create_table", name, schema=schema, primary_key=list(primary_key or []))
        if not isinstance(column, pa.Field):
            raise UsageError(f"add_column on {name!r} needs a pyarrow.Field: got {type(column).__name__}")
        return Op("add_column", name, column=column)

    def _row_op(self, kind: str, table: str, rows, *, version: int | None = None, ops=None) -> Op:
        engine = self._engine()
        schema, pk = None, []
        for op in reversed(ops or []):  # a table created or altered earlier in the same transaction
            if op.table == table and op.kind in ("create_table", "add_column", "drop_table"):
                break
        else:
            op = None
        if op is not None and op.kind == "create_table":
            pk = list(op.primary_key)
            schema = check_table_schema(op.schema, pk or None, table=table)
        else:
            tdef = engine.table_def(table, engine.log.version if version is None else version)
            schema, pk = tdef.schema, list(tdef.primary_key)
        if kind == "delete_keys":
            if not pk:
                raise UsageError(f"delete by keys needs a primary key, and table {table!r} has none: "
                                 f"use delete(where=...)")
            data = to_arrow(rows, schema, table=table, columns=pk)
            check_keys(data, pk, table_name=table, op="delete")
            return Op("delete_keys", table, data)
        data = to_arrow(rows, schema, table=table)
        if pk:
            check_keys(data, pk, table_name=table, op=kind)
        return Op(kind, table, data)

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
