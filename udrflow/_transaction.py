"""Transactions: a snapshot to read, buffered writes, one atomic commit.

    with db.transaction() as tx:
        seen = tx.read("accounts")             # the snapshot at begin + this transaction's writes
        tx.upsert("accounts", rows)
    tx.version                                 # the commit's version

Isolation (``isolation=``):

- ``"snapshot"`` (default): reads see the database as of begin; at commit, if another
  commit since begin wrote a key this transaction writes (any row, for a table without a
  primary key), this one loses with TransactionConflictError.
- ``"serializable"``: additionally loses if a table it read was written since begin.

A loser leaves nothing visible. ``udrflow.retry(fn)`` re-runs a function that makes a
transaction until it commits, with exponential backoff and full jitter.
"""

from __future__ import annotations

import random
import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

try:
    import cython
except ImportError:  # running from source without Cython: see udrflow/_cython_shim.py
    from udrflow import _cython_shim as cython

from udrflow._fold import fold_keyed, fold_multiset
from udrflow._predicate import filter_where
from udrflow._schema import check_keys, to_arrow, update_columns
from udrflow._tables import Op, TableEngine
from udrflow._view_guard import view_maintenance_active
from udrflow.errors import InvalidOptionError, SchemaError, TransactionConflictError, UsageError

ISOLATION_LEVELS = ("snapshot", "serializable")
_new_lock = threading.Lock  # (bound once: compiled, a module global is a cached lookup, a module's attribute is not)


@cython.cclass
class Transaction:
    # An extension type when compiled (see udrflow/_cython_shim.py): ``self._x`` is a field.
    _db = cython.declare(object, visibility="public")
    _engine = cython.declare(object, visibility="public")
    isolation = cython.declare(object, visibility="public")
    begin_version = cython.declare(object, visibility="public")
    _generation = cython.declare(object, visibility="public")
    _ops = cython.declare(object, visibility="public")
    _read_tables = cython.declare(object, visibility="public")
    _state = cython.declare(object, visibility="public")
    version = cython.declare(object, visibility="public")
    meta = cython.declare(object, visibility="public")
    _lock = cython.declare(object, visibility="public")

    def __init__(self, db, engine: TableEngine, isolation: str = "snapshot") -> None:
        if isolation not in ISOLATION_LEVELS:
            raise InvalidOptionError(f"isolation must be one of {ISOLATION_LEVELS}: got {isolation!r}")
        self._db = db
        self._engine = engine
        self.isolation = isolation
        self.begin_version, self._generation = engine.begin()
        self._ops: list[Op] = []
        self._read_tables: set[str] = set()
        self._state = "open"
        self.version: int | None = None
        # Recorded in the commit (e.g. the input version a view's result reflects, or the
        # Kafka offsets ingested): a dict of msgpack-encodable values.
        self.meta: dict = {}
        self._lock = _new_lock()

    # ---- writes (buffered) -----------------------------------------------------------

    @cython.ccall
    def _check_open(self) -> None:
        if self._state != "open":
            raise UsageError(f"this transaction is {self._state}: start a new one")

    def insert(self, table: str, rows) -> None:
        if self._state != "open":
            self._check_open()
        ops = self._ops
        ops.append(self._db._row_op("insert", table, rows, self.begin_version, ops))

    def upsert(self, table: str, rows) -> None:
        if self._state != "open":
            self._check_open()
        ops = self._ops
        ops.append(self._db._row_op("upsert", table, rows, self.begin_version, ops))

    def update(self, table: str, rows) -> None:
        """Change only the columns given in ``rows`` of the rows with those primary keys;
        the other columns keep their values. Each row must hold the key columns; a key that
        is not in the table raises SchemaError (nothing is written; ``upsert`` inserts)."""
        self._check_open()
        if self._ddl_on(table):
            raise UsageError(f"update of table {table!r}: its definition changes in this transaction; commit "
                             f"that first")
        tdef = self._engine.table_def(table, self.begin_version)
        pk = list(tdef.primary_key)
        if not pk:
            raise UsageError(f"update needs a primary key, and table {table!r} has none: use delete_rows and insert")
        given = update_columns(rows, tdef.schema, table)
        missing_keys = [k for k in pk if k not in given]
        if missing_keys:
            raise SchemaError(f"update of table {table!r}: every row must hold the key column(s) {pk}: "
                              f"missing {missing_keys}")
        changes = to_arrow(rows, tdef.schema, table=table, columns=given)
        check_keys(changes, pk, table_name=table, op="update")
        current = self.read(table)
        # The stored rows of those keys, found by a join on the keys (batch at a time); their
        # other columns are taken by row position (a join carries no list or struct payload).
        row = "__row"
        stored = current.select(pk).append_column(row, pa.array(np.arange(current.num_rows, dtype=np.int64)))
        found = changes.select(pk).append_column("__at", pa.array(np.arange(changes.num_rows, dtype=np.int64)))
        found = found.join(stored, keys=pk, join_type="left outer", use_threads=False).sort_by("__at")
        positions = found.column(row)
        if positions.null_count:
            first = pc.index(pc.is_null(positions), True).as_py()
            key = {k: found.column(k)[first].as_py() for k in pk}
            raise SchemaError(f"update of table {table!r}: no row with key {key} (update changes existing rows; "
                              f"upsert inserts)")
        old = current.take(positions)
        columns = [changes.column(n) if n in given else old.column(n) for n in tdef.schema.names]
        self.upsert(table, pa.Table.from_arrays(columns, schema=tdef.schema))

    def delete(self, table: str, keys=None, *, where: str | None = None) -> None:
        """Delete rows by primary key (``keys``: rows holding the key columns) or by a SQL
        predicate (``where``), evaluated on this transaction's view of the table."""
        self._check_open()
        if (keys is None) == (where is None):
            raise UsageError("delete needs exactly one of keys= or where=")
        if where is not None:
            current = self.read(table)
            matched = filter_where(current, where, table_name=table)
            tdef = self._engine.table_def(table, self.begin_version) if not self._ddl_on(table) else None
            pk = list(tdef.primary_key) if tdef else []
            kind = "delete_keys" if pk else "delete_rows"
            self._ops.append(Op(kind, table, matched.select(pk) if pk else matched))
            return
        self._ops.append(self._db._row_op("delete_keys", table, keys, self.begin_version, self._ops))

    def delete_rows(self, table: str, rows, *, verify: bool = True) -> None:
        """Delete these whole rows, one stored copy per given row (for tables without a
        primary key, whose rows are a multiset); a row not in the table is an error at commit.
        ``verify=False`` skips that check (it reads the whole table): only for writers that
        know their deletions are exact, such as a view's maintenance."""
        self._check_open()
        kind = "delete_rows" if verify else "retract_rows"
        self._ops.append(self._db._row_op(kind, table, rows, self.begin_version, self._ops))

    def create_table(self, name: str, schema: pa.Schema, primary_key=None) -> None:
        self._check_open()
        self._ops.append(self._db._ddl_op("create_table", name, schema=schema, primary_key=primary_key))

    def add_column(self, table: str, column: pa.Field) -> None:
        self._check_open()
        self._ops.append(self._db._ddl_op("add_column", table, column=column))

    def drop_table(self, table: str) -> None:
        """Drop ``table`` at commit (refused, as ``Database.drop_table`` without cascade,
        for a table that views read or a view's own table)."""
        self._check_open()
        db = self._db
        if not view_maintenance_active():
            dependents = db._views_on(table)
            if dependents:
                raise UsageError(db._dependents_message(table, dependents))
        self._ops.append(Op("drop_table", table))

    def _ddl_on(self, table: str) -> bool:
        return any(op.table == table and op.kind in ("create_table", "add_column", "drop_table") for op in self._ops)

    # ---- reads -----------------------------------------------------------------------

    def read(self, table: str) -> pa.Table:
        """``table`` as of this transaction's snapshot, with its own writes applied."""
        self._check_open()
        self._read_tables.add(table)
        tdef = self._engine.table_def(table, self.begin_version)
        base = self._engine.read(table, self.begin_version)
        mine = [op for op in self._ops if op.table == table]
        if not mine:
            return base
        events = []
        for op in mine:
            if op.kind in ("insert", "upsert"):
                events.append((1, op.rows))
            elif op.kind in ("delete_keys", "delete_rows", "retract_rows"):
                events.append((-1, op.rows))
        if tdef.keyed:
            return fold_keyed(base, events, list(tdef.primary_key), tdef.schema)
        return fold_multiset(base, events, tdef.schema)

    # ---- end -------------------------------------------------------------------------

    @cython.ccall
    def commit(self) -> int | None:
        """Commit atomically; return the version (None if nothing was written)."""
        self._lock.acquire()  # (not ``with``: compiled, that costs two bound methods)
        try:
            if self._state != "open":
                self._check_open()
            if not self._ops:
                self._state = "committed"
                self._engine.end(self.begin_version)
                return None
            try:
                # end=True: the engine ends this transaction in the same hold of its lock.
                self.version = self._engine.commit(
                    self._ops, begin=self.begin_version, generation=self._generation,
                    read_tables=self._read_tables if self.isolation == "serializable" else None,
                    meta=self.meta or None, end=True)
            except BaseException:
                self._state = "rolled back"
                raise
            self._state = "committed"
            return self.version
        finally:
            self._lock.release()

    @cython.ccall
    def rollback(self) -> None:
        with self._lock:
            if self._state == "open":
                self._state = "rolled back"
                self._ops = []
                self._engine.end(self.begin_version)

    def __enter__(self) -> Transaction:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.rollback()

    def __repr__(self) -> str:
        return f"<Transaction begin={self.begin_version} {self._state} ops={len(self._ops)} version={self.version}>"


def retry(fn, *, attempts: int = 20, delay_s: float = 0.001, delay_max_s: float = 0.2, rng=None):
    """Call ``fn()`` until it returns without TransactionConflictError, at most ``attempts``
    times, sleeping between tries with exponential backoff and full jitter.

    >>> import tempfile, pyarrow as pa, udrflow
    >>> db = udrflow.open(tempfile.mkdtemp() + "/r.udr")
    >>> _ = db.create_table("t", pa.schema([("k", pa.int64()), ("n", pa.int64())]), primary_key=["k"])
    >>> def bump():
    ...     with db.transaction() as tx:
    ...         n = tx.read("t").num_rows
    ...         tx.upsert("t", [{"k": 1, "n": n}])
    ...     return tx.version
    >>> udrflow.retry(bump)
    2
    >>> db.close()
    """
    rng = rng or random.Random()
    for attempt in range(attempts):
        try:
            return fn()
        except TransactionConflictError:
            if attempt == attempts - 1:
                raise
            time.sleep(rng.uniform(0, min(delay_max_s, delay_s * (2 ** attempt))))
    raise UsageError("retry needs attempts >= 1")
