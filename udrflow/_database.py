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
import logging
import os
import threading

import pyarrow as pa

from udrflow import _branches
from udrflow._changefeed import CallbackSubscription, Subscription
from udrflow._checkpoint import CheckpointStore
from udrflow._chunks import ChunkStore
from udrflow._clock import Clock
from udrflow._fileio import FileIO, make_dirs_durably, write_file_durably
from udrflow._limits import FSYNC_INTERVAL_MS_DEFAULT, SEGMENT_SIZE_BYTES_DEFAULT
from udrflow._lock import WriterLock
from udrflow._names import check_name, check_new_name
from udrflow._pyrows import PyRows, keys_valid, python_rows
from udrflow._schema import check_keys, check_table_schema, missing_columns, to_arrow, to_rows
from udrflow._tables import Op, TableEngine
from udrflow._transaction import Transaction
from udrflow._view_guard import REGISTRY, view_writer
from udrflow.errors import (
    DatabaseClosedError,
    DatabaseNotFoundError,
    InvalidOptionError,
    ReadOnlyError,
    SchemaError,
    UsageError,
    VersionNotFoundError,
    storage_error_from_os,
)
from udrflow.log import Durability, EpochLog

_log = logging.getLogger("udrflow")
MARKER_NAME = "UDRFLOW"
_VIEW_REGISTRY = REGISTRY
_view_writer = view_writer  # (views/_view.py imports it from here)
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
        # Logs and engines are built on first use, by whichever thread gets there first:
        # two threads building one each would run two writers over one log and lose
        # acknowledged commits. Reentrant: a branch's engine builds its parent's first.
        self._build_lock = threading.RLock()

    def _built(self, cache: dict, branch: str, build):
        """``cache[branch]``, built by ``build(branch)`` once, under the store's lock."""
        value = cache.get(branch)
        if value is not None:
            return value
        with self._build_lock:
            value = cache.get(branch)
            if value is None:
                value = cache[branch] = build(branch)
        return value

    def log(self, branch: str) -> EpochLog:
        return self._built(self.logs, branch, self._open_log)

    def _open_log(self, branch: str) -> EpochLog:
        _branches.read_meta(self.path, branch)  # BranchNotFoundError for an unknown branch
        o = self.options
        log = EpochLog.open(os.path.join(self.path, "log", branch), readonly=self.readonly,
                            durability=o["durability"], fsync_interval_ms=o["fsync_interval_ms"],
                            segment_size_bytes=o["segment_size_bytes"], io=o["io"], clock=o["clock"],
                            salvage=o["salvage"])
        if log.damage is not None:
            _log.warning("udrflow: opened %s for salvage: serving versions up to %d; %s", self.path,
                         log.version, log.damage)
        return log

    def engine(self, branch: str) -> TableEngine:
        # Built on first use: it decodes every commit header to rebuild the catalog, which
        # log-level users (udrflow verify, crash tests on raw frames) do not need.
        return self._built(self.engines, branch, self._open_engine)

    def _open_engine(self, branch: str) -> TableEngine:
        meta = _branches.read_meta(self.path, branch)
        parent = None if meta is None else self.engine(meta.parent)
        checkpoints = CheckpointStore(os.path.join(self.path, "checkpoints", branch), self.io, self.chunks)
        return TableEngine(self.log(branch), self.chunks, checkpoints, root=self.path, branch=branch,
                           io=self.io, parent=parent, fork=0 if meta is None else meta.fork)

    def close_branch(self, branch: str) -> None:
        """Close a branch's engine and log (before it is deleted)."""
        with self._build_lock:
            self._close_branch_locked(branch)

    def _close_branch_locked(self, branch: str) -> None:
        engine = self.engines.pop(branch, None)
        if engine is not None:
            engine.close()
        log = self.logs.pop(branch, None)
        if log is not None:
            log.close()

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
         clock: Clock | None = None, salvage: bool = False) -> Database:
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
    - ``salvage``: with ``readonly=True`` only. ``True`` opens a database whose log is
      damaged in the middle and serves every version before the first bad frame
      (``db.log.damage`` names it: file, byte, version); ``False`` (default) raises that
      CorruptionError instead. ``udrflow recover`` copies what it serves into a new database.
    - ``io`` / ``clock``: test doubles (``udrflow.testing``).
    """
    path = os.path.abspath(os.fspath(path))
    check_name(branch, "branch")
    if salvage and not readonly:
        raise InvalidOptionError("salvage=True needs readonly=True: a damaged log can be read, never appended to")
    options = dict(durability=durability, fsync_interval_ms=fsync_interval_ms,
                   segment_size_bytes=segment_size_bytes, io=io, clock=clock, salvage=bool(salvage))
    with _stores_lock:
        key = (os.path.realpath(path) if os.path.exists(path) else path, readonly)
        store = _stores.get(key)
        if store is None:
            _prepare_directory(path, readonly, create, io or FileIO())
            store = _Store(path, readonly, options)
            _stores[key] = store
        elif any(options[k] != store.options[k] for k in ("durability", "io", "clock", "salvage")):
            raise InvalidOptionError(
                f"database {path} is already open in this process with durability={store.options['durability']!r}, "
                f"salvage={store.options['salvage']!r}: expected the same options on every open of it, got "
                f"durability={durability!r}, salvage={salvage!r}")
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


class _BranchName(str):
    """A branch's name (a str) that opens a handle on another branch when called."""

    __slots__ = ("_db",)

    def __new__(cls, name: str, db: Database) -> _BranchName:
        obj = super().__new__(cls, name)
        obj._db = db
        return obj

    def __call__(self, name: str) -> Database:
        import udrflow

        o = self._db._store.options  # the same store: the same options
        return udrflow.open(self._db.path, branch=name, readonly=self._db.readonly, durability=o["durability"],
                            fsync_interval_ms=o["fsync_interval_ms"], segment_size_bytes=o["segment_size_bytes"],
                            io=o["io"], clock=o["clock"], salvage=o["salvage"])


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
        """The name of this handle's branch. Also callable: ``db.branch("dev")`` opens another
        handle on the same database, on branch ``dev`` (close it when done)."""
        return _BranchName(self._branch, self)

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

    def drop_table(self, table: str, *, cascade: bool = False) -> int:
        """Drop ``table`` (a commit). Its history stays readable at earlier versions.

        A table that views read (or a view's own table) is not dropped: that raises
        UsageError naming the views, unless ``cascade=True``, which drops those views
        first (and the views that read them), then the table."""
        engine = self._writable_engine()
        if not getattr(_view_writer, "active", False):
            dependents = self._views_on(table)
            if dependents and not cascade:
                raise UsageError(self._dependents_message(table, dependents))
            for name in dependents:
                if name in self.views:
                    self.drop_view(name)
            if table in dependents:
                return self.version  # the view's own table: dropping the view dropped it
        return engine.commit([Op("drop_table", table)])

    def _views_on(self, table: str) -> list[str]:
        """The views that would break without ``table`` (its own view, the views reading it,
        and the views reading those), the readers first."""
        engine = self._engine()
        if engine.catalog.get(_VIEW_REGISTRY, engine.log.version) is None:
            return []
        if table == _VIEW_REGISTRY:
            raise ReadOnlyError(f"table {table!r} is the view registry: use drop_view")
        inputs = {row["name"]: row["inputs"] for row in self.views.list()}
        found: list[str] = []
        todo = [table]
        while todo:
            name = todo.pop()
            for view, reads in inputs.items():
                if (name in reads or view == name) and view not in found:
                    found.append(view)
                    todo.append(view)
        order = {view: i for i, view in enumerate(v.name for v in self.views.ordered())}
        return sorted(found, key=lambda v: -order.get(v, 0))

    @staticmethod
    def _dependents_message(table: str, dependents: list[str]) -> str:
        if dependents == [table]:
            return f"table {table!r} is view {table!r}'s table: drop it with drop_view({table!r})"
        names = ", ".join(repr(v) for v in dependents if v != table)
        return (f"table {table!r} is read by view(s) {names}: drop those first, or drop_table({table!r}, "
                f"cascade=True) to drop them with it")

    def tables(self, version: int | None = None) -> list[str]:
        engine = self._engine()
        return engine.names(engine.resolve_version(self._version_arg(version)))

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

    def update(self, table: str, rows) -> int | None:
        """Change only the columns given in ``rows`` of the existing rows with those primary
        keys (a key not in the table raises SchemaError, and nothing is written); return the
        version (None when nothing changed). Atomic, retried on a conflict with another writer.

        >>> import tempfile, pyarrow as pa, udrflow
        >>> db = udrflow.open(tempfile.mkdtemp() + "/u.udr")
        >>> _ = db.create_table("t", pa.schema([pa.field("id", pa.int64(), nullable=False), ("a", pa.string()),
        ...                                    ("b", pa.int64())]), primary_key="id")
        >>> _ = db.insert("t", [{"id": 1, "a": "x", "b": 10}])
        >>> _ = db.update("t", [{"id": 1, "b": 11}])
        >>> db.read("t").to_pylist()
        [{'id': 1, 'a': 'x', 'b': 11}]
        >>> db.close()
        """
        from udrflow._transaction import retry

        def attempt():
            with self.transaction() as tx:
                tx.update(table, rows)
            return tx.version

        return retry(attempt)

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

    def sql(self, query: str, version: int | dt.datetime | None = None, branch: str | None = None,
            params: list | tuple | dict | None = None) -> pa.Table:
        """Run one read-only SQL query (DataFusion) and return its result.

        >>> import tempfile, pyarrow as pa, udrflow
        >>> db = udrflow.open(tempfile.mkdtemp() + "/t.udr")
        >>> _ = db.create_table("orders", pa.schema([("id", pa.int64()), ("amount", pa.float64())]), primary_key="id")
        >>> v = db.insert("orders", [{"id": 1, "amount": 9.5}])
        >>> _ = db.insert("orders", [{"id": 2, "amount": 3.0}])
        >>> db.sql("SELECT count(*) AS n, sum(amount) AS total FROM orders").to_pylist()
        [{'n': 2, 'total': 12.5}]
        >>> db.sql("SELECT id FROM orders AS OF VERSION $1", params=[v]).to_pylist()
        [{'id': 1}]
        >>> db.close()

        - ``query``: one query (SELECT, VALUES, WITH ... SELECT, EXPLAIN). Statements that
          write (INSERT, UPDATE, DELETE, DDL, COPY, SET, ...) raise SqlReadOnlyError.
          Extensions: ``t AS OF VERSION n``, ``t AS OF TIMESTAMP '2026-01-31 12:00'``
          (naive times are UTC), ``t@branch`` and the ``__changelog`` table (see docs/sql.md).
        - ``version``: the version of every table reference without its own AS OF: an int,
          a datetime (the last commit at or before it), or None for the head (read once, so
          all tables of the query see the same commit).
        - ``branch``: the branch of every table reference without its own ``@branch``
          (default: this handle's); an unknown branch raises BranchNotFoundError.
        - ``params``: values for ``$1, $2, ...`` (a list or tuple) or ``$name`` (a dict),
          bound after parsing (never pasted into the SQL text); also allowed in
          ``AS OF VERSION $1`` / ``AS OF TIMESTAMP $t``.

        Errors: SqlSyntaxError, SqlError (DataFusion's message and the position),
        TableNotFoundError, VersionNotFoundError, BranchNotFoundError.
        """
        from udrflow import _sql

        return _sql.run(self, query, version, branch, params)

    def sql_df(self, query: str, version: int | dt.datetime | None = None, branch: str | None = None,
               params: list | tuple | dict | None = None):
        """Like :meth:`sql`, but return the lazy ``datafusion.DataFrame`` (nothing runs until
        it is collected, e.g. ``.to_arrow_table()``, ``.to_pandas()``, ``.show()``), to keep
        composing it with DataFusion's DataFrame API. The snapshots it reads are fixed when
        ``sql_df`` returns: later commits do not change it. Planning errors raise as in
        :meth:`sql`; errors while it runs are DataFusion's own exceptions."""
        from udrflow import _sql

        return _sql.dataframe(self, query, version, branch, params)

    def subscribe(self, tables: list[str] | str | None = None, from_version: int | None = None, *,
                  callback=None, idle_timeout_s: float | None = None, until_version: int | None = None):
        """Change batches of ``tables`` (default: every table) for each commit after
        ``from_version`` (default: the head, so only new commits), in version order and
        exactly once per version; then follows the tail until closed, until no commit
        arrives for ``idle_timeout_s``, or once ``until_version`` is delivered. Returns a ``Subscription`` (an iterator and an async
        iterator; ``position`` is the resume token), or with ``callback=fn`` a running
        ``CallbackSubscription`` that calls ``fn(batch)`` from a background thread.

        >>> import tempfile, pyarrow as pa, udrflow
        >>> db = udrflow.open(tempfile.mkdtemp() + "/t.udr")
        >>> v = db.create_table("t", pa.schema([("id", pa.int64()), ("x", pa.string())]), primary_key="id")
        >>> _ = db.insert("t", [{"id": 1, "x": "a"}]); _ = db.upsert("t", [{"id": 1, "x": "b"}])
        >>> with db.subscribe(["t"], from_version=v) as sub:
        ...     for batch in sub:
        ...         print(batch.version, batch.changes.to_pylist())
        ...         if sub.position == db.version:
        ...             break
        2 [{'id': 1, 'x': 'a', '__op': 'insert', '__weight': 1}]
        3 [{'id': 1, 'x': 'a', '__op': 'update', '__weight': -1}, {'id': 1, 'x': 'b', '__op': 'update', '__weight': 1}]
        >>> db.close()
        """
        sub = Subscription(self._engine(), tables, from_version, idle_timeout_s=idle_timeout_s,
                           until_version=until_version)
        return sub if callback is None else CallbackSubscription(sub, callback)

    # ---- views -------------------------------------------------------------------------

    def stream(self, table: str):
        """The change stream of ``table`` as the start of a view definition (see
        udrflow.views): ``db.stream("orders").filter(col("amount") > 0)``."""
        from udrflow.views._plan import Source

        return Source(table, self.schema(table))

    @property
    def views(self):
        """The views of this database (``udrflow.views.Views``): ``db.views["name"]``,
        ``list()``, ``refresh()``, ``run()``, ``stop()``."""
        views = self.__dict__.get("_views")
        if views is None:
            from udrflow.views._view import Views

            with self._store._build_lock:  # one Views per handle, or stop() would miss a run()
                views = self.__dict__.get("_views")
                if views is None:
                    views = self.__dict__["_views"] = Views(self)
        return views

    def create_view(self, name: str, definition, *, refresh: bool = True):
        """Create view ``name`` (a table maintained from ``definition``) and, unless
        ``refresh=False``, fill it from the data that exists (backfill). Returns the View."""
        return self.views.create(name, definition, refresh=refresh)

    def drop_view(self, name: str) -> int:
        """Stop and drop view ``name`` (its history stays readable at earlier versions)."""
        return self.views.drop(name)

    def transaction(self, isolation: str = "snapshot") -> Transaction:
        """Begin a transaction (see udrflow._transaction for the isolation levels)."""
        # _writable_engine, inlined: this runs for every transaction.
        if self._log is None:
            raise DatabaseClosedError(f"database {self.path} is closed")
        store = self._store
        engine = store.engines.get(self._branch)
        if engine is None:
            engine = store.engine(self._branch)
        if store.readonly:
            raise ReadOnlyError(f"database {self.path} is open read-only: open it without readonly=True to write")
        return Transaction(self, engine, isolation)

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
        floor = _branches.fork_floor(self.path, self.branch)
        if floor is not None and isinstance(version, int) and version > floor:
            raise UsageError(f"since of branch {self.branch!r} cannot pass version {floor}: a branch forked there "
                             f"still reads it (delete or merge that branch first)")
        return self._writable_engine().set_since(version, tables)

    # ---- branches ----------------------------------------------------------------------

    def create_branch(self, name: str, from_branch: str | None = None, at_version: int | None = None) -> int:
        """Create branch ``name`` forked from ``from_branch`` (default: this handle's branch)
        at ``at_version`` (default: its head). Copies no data; returns the fork version.
        Open it with ``udrflow.open(path, branch=name)`` or ``db.branch(name)``."""
        return _branches.create(self, name, from_branch, at_version)

    def branches(self) -> list[dict]:
        """Every branch: name, parent, fork version, head version."""
        return _branches.describe(self)

    def delete_branch(self, name: str) -> None:
        """Delete branch ``name`` (not main, not one with branches forked from it)."""
        _branches.delete(self, name)

    def diff(self, a, b, table: str | None = None):
        """Row-level changes from state ``a`` to state ``b`` (each a branch name, a version
        of this branch, or ``"branch@version"``): with ``table``, a pyarrow.Table of change
        rows (columns + ``__op`` + ``__weight``); else a dict per table that differs."""
        return _branches.diff(self, a, b, table)

    def merge(self, source: str, into: str | None = None) -> dict:
        """Merge branch ``source`` into ``into`` (default: this handle's branch) in one
        commit: fast-forward or three-way at row level; MergeConflictError lists conflicts
        and applies nothing. See udrflow._branches.merge."""
        if self.readonly:
            raise ReadOnlyError(f"database {self.path} is open read-only: merging writes")
        return _branches.merge(self, source, into)

    def gc(self) -> dict[str, int]:
        """Remove what no retained version can reach: old checkpoints, log segments below
        every table's since, unreferenced chunks. Returns what was removed."""
        return self._writable_engine().gc()

    def _ddl_op(self, kind: str, name: str, *, schema=None, primary_key=None, column=None) -> Op:
        if kind == "create_table":
            check_new_name(name, "table", internal=getattr(_view_writer, "active", False))
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

    def _row_op(self, kind: str, table: str, rows, version: int | None = None, ops=None) -> Op:
        if self._log is None:
            raise DatabaseClosedError(f"database {self.path} is closed")
        engine = self._store.engines.get(self._branch)
        if engine is None:
            engine = self._store.engine(self._branch)
        head = engine.log.version
        catalog = engine.catalog
        # (One lookup, not the list of names: this runs for every write.)
        if catalog.get(_VIEW_REGISTRY, head) is not None and not getattr(_view_writer, "active", False):
            names = catalog.names(head)
            if table in self._view_names(engine, names) or table == _VIEW_REGISTRY:
                raise ReadOnlyError(f"table {table!r} is maintained by a view: it changes only through its "
                                    f"definition (drop the view to write it)" if table != _VIEW_REGISTRY else
                                    f"table {table!r} is the view registry: use create_view/drop_view")
        op = None
        if ops:
            for op in reversed(ops):  # a table created or altered earlier in the same transaction
                if op.table == table and op.kind in ("create_table", "add_column", "drop_table"):
                    break
            else:
                op = None
        if op is not None and op.kind == "create_table":
            pk = list(op.primary_key)
            schema = check_table_schema(op.schema, pk or None, table=table)
        else:
            tdef = engine.table_def(table, head if version is None else version)
            schema, pk = tdef.schema, tdef.pk  # (pk: shared, read only here)
        if kind == "delete_keys":
            if not pk:
                raise UsageError(f"delete by keys needs a primary key, and table {table!r} has none: "
                                 f"use delete(where=...)")
            data = to_rows(rows, schema, table=table, columns=pk)
            if type(data) is not PyRows or not keys_valid(data, pk):
                check_keys(data, pk, table_name=table, op="delete")
            return Op("delete_keys", table, data)
        if kind == "upsert":
            missing = missing_columns(rows, schema)
            if missing:
                raise SchemaError(f"upsert into table {table!r} replaces whole rows: expected every column, the "
                                  f"input lacks {missing} (update() changes only the columns given)")
        data = python_rows(rows, schema)  # to_rows, inlined: this runs for every write
        if data is None:
            data = to_arrow(rows, schema, table=table)
            if pk:
                check_keys(data, pk, table_name=table, op=kind)
        elif pk and not keys_valid(data, pk):
            check_keys(data, pk, table_name=table, op=kind)
        return Op(kind, table, data)

    @staticmethod
    def _view_names(engine: TableEngine, names: list[str]) -> frozenset[str]:
        """The views' names, read from the registry only when the set of tables (by name and
        creating version) changed: creating or dropping a view always changes it."""
        head = engine.log.version
        key = tuple((n, engine.catalog.get(n, head).created) for n in names)
        cached = getattr(engine, "_view_names_cache", None)
        if cached is None or cached[0] != key:
            table = engine.read(_VIEW_REGISTRY, engine.log.version)
            cached = (key, frozenset(table.column("name").to_pylist()))
            engine._view_names_cache = cached
        return cached[1]

    def close(self) -> None:
        """Release this handle; the last handle in the process closes the files. Idempotent.
        Views running in the background on this handle are stopped first."""
        if self._log is None:
            return
        views = self.__dict__.get("_views")
        if views is not None:
            try:
                views.stop()
            except Exception:  # noqa: BLE001 - a view's own failure must not keep the handle open
                pass
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
