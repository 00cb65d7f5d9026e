"""Change streams: the log's row changes from a version on, as weighted Arrow batches.

One reader serves three consumers, so they agree by construction: ``db.subscribe``
(iterator, async iterator, callback), the ``__changelog`` table of SQL, and the Bytewax
source of views (udrflow/_bytewax_source.py).

A change batch holds the changes of one commit to one table: the table's columns (as of
that version) plus ``__op`` (``insert``, ``update`` or ``delete``) and ``__weight`` (+1 or
-1). An update is two rows, both with ``__op = "update"``: weight -1 with the old values
and +1 with the new. Within a batch the -1 rows come first, so applying a batch in row
order to keyed state never sees a key twice.

Positions: ``from_version=V`` delivers every commit in (V, head] and then follows the
tail. The resume token is the last version fully delivered (``Subscription.position``):
subscribing again from it yields exactly what came after. A commit that changed several
tables yields one batch per table, all with the same version; the last of them has
``last_in_version`` set, and only then does ``position`` reach that version.

Memory is bounded because the iterator is pulled: nothing is read from the log before
the consumer asks for it, so a slow consumer simply reads the log later (the log is the
buffer). The callback form calls the callback on the reading thread and the async form
reads one batch per worker-thread step, so both apply back-pressure the same way.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
from collections.abc import Callable, Iterator

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from udrflow._commit import (
    OLD_PREFIX,
    AddColumn,
    Changes,
    CreateTable,
    DropTable,
    decode_commit,
    decode_header,
    expand_changes,
)
from udrflow._names import check_name
from udrflow.errors import CorruptionError, TableNotFoundError, UsageError, VersionNotFoundError

OP_COLUMN = "__op"
WEIGHT_COLUMN = "__weight"
OPS = ("insert", "update", "delete")
KINDS = ("changes", "create_table", "add_column", "drop_table")

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_OP_NAMES = pa.array(["insert", "update", "delete"], pa.string())
_INSERT, _UPDATE, _DELETE = 0, 1, 2
_OP_FIELD = pa.field(OP_COLUMN, pa.string(), nullable=False)
_WEIGHT_FIELD = pa.field(WEIGHT_COLUMN, pa.int8(), nullable=False)
# The __op/__weight arrays of small commits, by (updates, inserts, deletes): a single-row
# commit's batch then builds only its row columns (Arrow arrays are immutable, so sharing
# them is safe). Bounded: cleared when full.
_OP_ARRAYS_ROWS_MAX = 64
_OP_ARRAYS_CACHE_MAX = 1024
_op_arrays: dict[tuple[int, int, int], tuple[pa.Array, pa.Array]] = {}
_PLANS_CACHE_MAX = 256
_plans: dict[tuple, tuple] = {}
# A commit body this small is decoded whole at once: cheaper than decoding its header first
# to learn whether it touches the subscribed tables, then decoding it again.
_WHOLE_DECODE_BYTES_MAX = 4096


class ChangeBatch:
    """The changes of one commit to one table.

    - ``version``: the commit's version; ``timestamp_us`` / ``timestamp``: its commit time.
    - ``table``: the table's name.
    - ``kind``: ``"changes"`` for row changes; ``"create_table"``, ``"add_column"`` or
      ``"drop_table"`` for DDL (then ``changes`` has no rows, and its columns are the
      table's schema after the DDL, or before it for ``drop_table``).
    - ``changes``: a pyarrow.Table of the row columns plus ``__op`` and ``__weight``.
    - ``last_in_version``: True on the last batch of its commit (for this subscription).
    """

    __slots__ = ("version", "timestamp_us", "table", "kind", "changes", "last_in_version")

    def __init__(self, version: int, timestamp_us: int, table: str, kind: str, changes: pa.Table,
                 last_in_version: bool) -> None:
        self.version = version
        self.timestamp_us = timestamp_us
        self.table = table
        self.kind = kind
        self.changes = changes
        self.last_in_version = last_in_version

    @property
    def timestamp(self) -> dt.datetime:
        return _EPOCH + dt.timedelta(microseconds=self.timestamp_us)

    @property
    def num_rows(self) -> int:
        return self.changes.num_rows

    def __repr__(self) -> str:
        return (f"ChangeBatch(version={self.version}, table={self.table!r}, kind={self.kind!r}, "
                f"rows={self.changes.num_rows}, last_in_version={self.last_in_version})")


def _with_op_columns(rows: pa.Table, ops: np.ndarray, weights: np.ndarray) -> pa.Table:
    rows = rows.append_column(pa.field(OP_COLUMN, pa.string(), nullable=False), _OP_NAMES.take(pa.array(ops)))
    return rows.append_column(pa.field(WEIGHT_COLUMN, pa.int8(), nullable=False), pa.array(weights, pa.int8()))


def empty_changes(schema: pa.Schema) -> pa.Table:
    return _with_op_columns(schema.empty_table(), np.zeros(0, np.int8), np.zeros(0, np.int8))


def change_rows(changes: Changes, schema: pa.Schema, fetch_chunk) -> pa.Table:
    """One table's changes in one commit as a change batch (see the module docstring)."""
    if changes.columns:
        return _change_rows_from_values(changes, schema)
    plus, minus = expand_changes(changes, schema, fetch_chunk)
    u = changes.updates
    ops = np.empty(minus.num_rows + plus.num_rows, np.int8)
    ops[:u] = _UPDATE
    ops[u:minus.num_rows] = _DELETE
    ops[minus.num_rows:minus.num_rows + u] = _UPDATE
    ops[minus.num_rows + u:] = _INSERT
    weights = np.ones(len(ops), np.int8)
    weights[:minus.num_rows] = -1
    rows = minus if plus.num_rows == 0 else plus if minus.num_rows == 0 else pa.concat_tables([minus, plus])
    return _with_op_columns(rows, ops, weights)


def _op_arrays_for(u: int, i: int, d: int) -> tuple[pa.Array, pa.Array]:
    key = (u, i, d)
    found = _op_arrays.get(key)
    if found is not None:
        return found
    ops = pa.array(["update"] * u + ["delete"] * d + ["update"] * u + ["insert"] * i, pa.string())
    weights = pa.array([-1] * (u + d) + [1] * (u + i), pa.int8())
    if u + i + d <= _OP_ARRAYS_ROWS_MAX:
        if len(_op_arrays) >= _OP_ARRAYS_CACHE_MAX:
            _op_arrays.clear()
        _op_arrays[key] = (ops, weights)
    return ops, weights


def _values_plan(columns: list[str], schema: pa.Schema) -> tuple | None:
    """For msgpack-form columns ``columns`` of a table with ``schema``: (the change batch's
    schema, per schema field the index of its values or None, per field the index of its
    ``__old_`` values or None, which indexes hold ``__old_`` values). None if a column is not
    the table's (corrupt). Cached by (schema identity, columns): both repeat on every commit."""
    key = (id(schema), tuple(columns))
    found = _plans.get(key)
    if found is not None and found[0] is schema:
        return found[1]
    where = {name: k for k, name in enumerate(columns)}
    if len(where) != len(columns):
        return None
    old_at = []
    for name in columns:
        old = name.startswith(OLD_PREFIX)
        if schema.get_field_index(name[len(OLD_PREFIX):] if old else name) < 0:
            return None
        old_at.append(old)
    names = schema.names
    plan = (schema.append(_OP_FIELD).append(_WEIGHT_FIELD), [where.get(n) for n in names],
            [where.get(OLD_PREFIX + n) for n in names], old_at)
    if len(_plans) >= _PLANS_CACHE_MAX:
        _plans.clear()
    _plans[key] = (schema, plan)  # holds the schema, so its id() is not reused while cached
    return plan


def _change_rows_from_values(changes: Changes, schema: pa.Schema) -> pa.Table:
    """``change_rows`` for a commit in the msgpack form (small commits, see udrflow/_pyrows.py),
    built straight from its Python values: one ``pa.array`` per column, instead of decoding
    to Arrow first and then slicing, rebuilding old rows and concatenating (which costs
    several times more for the one-row commits that dominate tail-following latency).

    Same rows, same order and same checks as the generic path: the values are the new rows
    of updates, inserts, then deleted rows; ``__old_<c>`` lists hold the old values of the
    update rows for the columns that changed. Out: old rows of updates, deleted rows (-1),
    then new rows of updates, inserts (+1)."""
    u, i, d = changes.updates, changes.inserts, changes.deletes
    change_schema, at, old_at, _ = _check_values(changes, schema)
    arrays = _value_arrays(changes, schema, schema, _value_lists(changes, at, old_at))
    ops, weights = _op_arrays_for(u, i, d)
    arrays.append(ops)
    arrays.append(weights)
    return pa.Table.from_arrays(arrays, schema=change_schema)


def _check_values(changes: Changes, schema: pa.Schema) -> tuple:
    """The plan of ``changes`` (msgpack form) for ``schema``, after checking its shape."""
    columns, values = changes.columns, changes.values
    if len(values) != len(columns):
        raise CorruptionError(f"changes to table {changes.table!r} name {len(columns)} columns but hold "
                              f"{len(values)} lists of values")
    plan = _values_plan(columns, schema)
    if plan is None:
        raise CorruptionError(f"changes to table {changes.table!r} hold columns {columns}: expected columns of "
                              f"the table ({schema.names}), each once")
    u = changes.updates
    n = u + changes.inserts + changes.deletes
    for k, old in enumerate(plan[3]):
        expected = u if old else n
        if len(values[k]) != expected:
            raise CorruptionError(f"changes to table {changes.table!r} hold column {columns[k]!r} with "
                                  f"{len(values[k])} values: expected {expected}")
    return plan


_INT64_ID = pa.int64().id
_FLOAT64_ID = pa.float64().id


def py_array(values: list, type: pa.DataType) -> pa.Array:
    """``pa.array(values, type)``, through numpy for a plain int64 or float64 list (no
    nulls): a few rows then skip Arrow's Python-sequence converter, which costs ~1.5 us
    more per call (it reads an environment variable every time)."""
    t = type.id
    if t == _INT64_ID:
        for v in values:
            if v.__class__ is not int:
                return pa.array(values, type)
        return pa.array(np.array(values, np.int64))  # (its type is int64: passing it costs a cast check)
    if t == _FLOAT64_ID:
        for v in values:
            if v.__class__ is not float:
                return pa.array(values, type)
        return pa.array(np.array(values, np.float64))
    return pa.array(values, type)


def _value_lists(changes: Changes, at, old_at) -> list[list]:
    """One list of values per field (``at``/``old_at``: the indexes of each field's values
    and old values in ``changes.values``, None for a column the commit does not name: nulls,
    as ``conform`` fills), rows in change-batch order: old rows of updates, deleted rows,
    new rows of updates, inserts."""
    u, i, d = changes.updates, changes.inserts, changes.deletes
    values = changes.values
    lists = []
    for k, k_old in zip(at, old_at, strict=True):
        if k is None:
            lists.append([None] * (2 * u + i + d))
            continue
        vals = values[k]
        if u:
            old = vals[:u] if k_old is None else values[k_old]
            lists.append(old + vals[u + i:] + vals[:u + i] if d else old + vals)
        else:
            lists.append(vals[i:] + vals[:i] if d and i else vals)
    return lists


def _value_arrays(changes: Changes, schema: pa.Schema, fields, lists: list[list]) -> list[pa.Array]:
    """One Arrow array per field of ``fields`` (a list of ``_value_lists``; a list of
    nulls for a column the commit does not name). A value not of its field's type is
    corruption: the writer checked every value against ``schema``."""
    try:
        return [py_array(values, field.type) for field, values in zip(fields, lists, strict=True)]
    except (pa.ArrowException, TypeError, ValueError, OverflowError) as exc:
        raise CorruptionError(f"changes to table {changes.table!r} hold values that are not of the types of "
                              f"{schema}: {exc}") from exc


_PLAIN_CLASSES = {pa.int64().id: int, pa.float64().id: float, pa.string().id: str, pa.large_string().id: str,
                  pa.bool_().id: bool}


def plain_values(lists: list[list], types: list[pa.DataType]) -> bool:
    """Whether each of ``lists`` holds only values of the Python class of its Arrow type
    (int64, float64, strings, bool) or None: values Arrow takes as they are, so that reading
    them from the lists is reading the Arrow array ``py_array`` would build of them."""
    for values, t in zip(lists, types, strict=True):
        cls = _PLAIN_CLASSES.get(t.id)
        if cls is None:
            return False
        for v in values:
            if v.__class__ is not cls and v is not None:
                return False
    return True


# ---- reading commits as change batches -------------------------------------------------


class _Reader:
    """Turns log records into change batches, with the table definitions they need."""

    def __init__(self, engine, tables: set[str] | None) -> None:
        self.engine = engine
        self.tables = tables

    def _catalog_at(self, version: int):
        engine = self.engine
        if engine.catalog.version < version:
            # A read-only handle learns of other processes' commits here; in the writing
            # process the catalog takes a commit before the commit becomes visible.
            engine.refresh()
        return engine.catalog

    def _ops(self, record) -> list | None:
        """The operations of ``record``; None if none touches the wanted tables."""
        version = record.version
        payload = record.payload
        wanted = self.tables
        if wanted is None or len(payload) <= _WHOLE_DECODE_BYTES_MAX:
            ops = decode_commit(payload, version).ops
            if wanted is not None:
                for op in ops:
                    if op.table in wanted:
                        return ops
                return None
            return ops
        header = decode_header(payload, version)
        if not any(op.table in wanted for op in header.ops):
            return None
        return decode_commit(payload, version).ops

    def raw(self, record) -> list[RawChange]:
        """``batches`` without building the change batches' Arrow tables (see ``RawChange``)."""
        ops = self._ops(record)
        if ops is None:
            return []
        return self.raw_ops(record.version, ops)

    def raw_ops(self, version: int, ops: list) -> list[RawChange]:
        """``raw`` of a commit's operations, already decoded (or never encoded: the writer's own)."""
        wanted = self.tables
        if wanted is not None and not any(op.table in wanted for op in ops):
            return []
        catalog = self._catalog_at(version)
        out: list[RawChange] = []
        for op in ops:
            if wanted is not None and op.table not in wanted:
                continue
            if isinstance(op, Changes):
                out.append(RawChange(version, op.table, "changes", op, catalog.get(op.table, version).schema,
                                     self.engine.chunks))
            else:
                kind = _DDL_KINDS[type(op)]
                tdef = catalog.get(op.table, version - 1 if kind == "drop_table" else version)
                out.append(RawChange(version, op.table, kind, None, tdef.schema, None))
        return out

    def batches(self, record) -> list[ChangeBatch]:
        ops = self._ops(record)
        if ops is None:
            return []
        version = record.version
        wanted = self.tables
        catalog = self._catalog_at(version)
        out: list[ChangeBatch] = []
        for op in ops:
            if wanted is not None and op.table not in wanted:
                continue
            if isinstance(op, Changes):
                tdef = catalog.get(op.table, version)
                fetch = self.engine.chunks.get_table if op.chunk_tables else self.engine.chunks.get
                rows = change_rows(op, tdef.schema, fetch)
                kind = "changes"
            else:
                kind = _DDL_KINDS[type(op)]
                tdef = catalog.get(op.table, version - 1 if kind == "drop_table" else version)
                rows = empty_changes(tdef.schema)
            out.append(ChangeBatch(version, record.timestamp_us, op.table, kind, rows, False))
        if out:
            out[-1].last_in_version = True
        return out


_DDL_KINDS = {CreateTable: "create_table", AddColumn: "add_column", DropTable: "drop_table"}


def _check_start(engine, tables: set[str] | None, after: int) -> None:
    while engine.parent is not None and after < engine.fork:
        engine = engine.parent  # a branch's changes up to its fork are its parent's
    log = engine.log
    head = log.version
    if not isinstance(after, int) or isinstance(after, bool) or after < 0:
        raise UsageError(f"from_version must be a version (an int >= 0): got {after!r}")
    if after > head:
        raise VersionNotFoundError(f"from_version={after} is not yet in the log: expected at most {head} (the head)")
    if after < log.since - 1:
        raise VersionNotFoundError(f"from_version={after} is below since={log.since}: the changes after it were "
                                   f"removed by gc; the earliest possible from_version is {log.since - 1}")
    for name in sorted(tables or ()):
        tdef = engine.catalog.get(name, max(after, 1)) or engine.catalog.get(name, head)
        if tdef is None:
            if engine.catalog.change_versions(name, 0, head) or engine.catalog.get(name, 1 << 62) is not None:
                continue  # dropped, or created after ``after``: its changes are still in range
            known = ", ".join(engine.catalog.names(head)) or "none"
            raise TableNotFoundError(f"cannot subscribe to table {name!r}: it does not exist at version {head} "
                                     f"(tables then: {known})")
        since = engine.since_of(tdef)
        if after < since and after >= tdef.created:
            raise VersionNotFoundError(f"from_version={after} is below since={since} of table {name!r}: its "
                                       f"history before it was removed by retention")


class RawChange:
    """One table's operation in one commit, decoded but not yet built as Arrow: what a view's
    source needs to build its own weighted batch (``change_delta``) without the ``__op``
    column, and once per distinct source schema for all the views that read the table."""

    __slots__ = ("version", "table", "kind", "op", "schema", "chunks")

    def __init__(self, version: int, table: str, kind: str, op: Changes | None, schema: pa.Schema, chunks) -> None:
        self.version = version
        self.table = table
        self.kind = kind
        self.op = op            # the Changes (kind "changes"), else None
        self.schema = schema    # the table's schema at the version (before it, for drop_table)
        self.chunks = chunks

    @property
    def num_rows(self) -> int:
        op = self.op
        return 0 if op is None else 2 * op.updates + op.inserts + op.deletes

    def change_rows(self) -> pa.Table:
        """The change batch's rows (as ``ChangeBatch.changes``)."""
        if self.op is None:
            return empty_changes(self.schema)
        op = self.op
        return change_rows(op, self.schema, self.chunks.get_table if op.chunk_tables else self.chunks.get)


_W64_ARRAYS_CACHE_MAX = 1024
_w64_arrays: dict[tuple[int, int, int], pa.Array] = {}


def _w64_for(u: int, i: int, d: int) -> pa.Array:
    key = (u, i, d)
    found = _w64_arrays.get(key)
    if found is None:
        found = pa.array([-1] * (u + d) + [1] * (u + i), pa.int64())
        if u + i + d <= _OP_ARRAYS_ROWS_MAX:
            if len(_w64_arrays) >= _W64_ARRAYS_CACHE_MAX:
                _w64_arrays.clear()
            _w64_arrays[key] = found
    return found


def _delta_plan(columns: list[str], table_schema: pa.Schema, schema: pa.Schema, out_schema: pa.Schema) -> tuple | None:
    """For ``change_delta``: per field of ``schema``, the indexes of its values and ``__old_``
    values in ``columns`` (msgpack form of a table with ``table_schema``); None when a field
    is not the table's with the same type (then the caller converts the generic way)."""
    key = (id(table_schema), id(out_schema), tuple(columns))
    found = _plans.get(key)
    if found is not None and found[0] is table_schema and found[1] is out_schema:
        return found[2]
    plan = _values_plan(columns, table_schema)
    if plan is None:
        return None
    _, at, old_at, _ = plan
    names = table_schema.names
    out_at, out_old = [], []
    for field in schema:
        j = table_schema.get_field_index(field.name)
        if j < 0 or not table_schema.field(j).type.equals(field.type) or names.count(field.name) != 1:
            return None
        out_at.append(at[j])
        out_old.append(old_at[j])
    result = (out_at, out_old)
    if len(_plans) >= _PLANS_CACHE_MAX:
        _plans.clear()
    _plans[key] = (table_schema, out_schema, result)  # holds both, so their id()s are not reused
    return result


def change_delta(raw: RawChange, schema: pa.Schema, out_schema: pa.Schema) -> tuple[pa.Table, list[list]] | None:
    """``raw``'s rows as a view's weighted batch: the columns of ``schema`` (a subset of the
    table's, same types; NOT NULL flags as in ``schema``) plus ``__weight`` int64, with
    ``out_schema`` = ``schema`` + that column; and its columns' values as Python lists.
    Built straight from the msgpack values of a small commit (one ``pa.array`` per column,
    a shared weight array); None for the Arrow form or when the types differ: then the
    caller converts ``raw.change_rows()``."""
    lists = change_lists(raw, schema, out_schema)
    if lists is None:
        return None
    op = raw.op
    arrays = _value_arrays(op, raw.schema, schema, lists[:-1])
    arrays.append(_w64_for(op.updates, op.inserts, op.deletes))
    return pa.Table.from_arrays(arrays, schema=out_schema), lists


def change_lists(raw: RawChange, schema: pa.Schema, out_schema: pa.Schema) -> list[list] | None:
    """``change_delta``'s Python lists alone (the weights last), with no Arrow built."""
    op = raw.op
    if not op.columns:
        return None
    _check_values(op, raw.schema)
    plan = _delta_plan(op.columns, raw.schema, schema, out_schema)
    if plan is None:
        return None
    lists = _value_lists(op, plan[0], plan[1])
    u, i, d = op.updates, op.inserts, op.deletes
    lists.append([-1] * (u + d) + [1] * (u + i))
    return lists


def read_raw_changes(engine, tables: set[str] | None, after: int, upto: int) -> Iterator[RawChange]:
    """``read_changes`` as ``RawChange`` items (no Arrow built yet)."""
    if upto <= after:
        return
    if engine.parent is not None and after < engine.fork:
        yield from read_raw_changes(engine.parent, tables, after, min(upto, engine.fork))
        after = engine.fork
        if upto <= after:
            return
    reader = _Reader(engine, tables)
    # The newest commits of the writing process, as its engine made them: no read from the
    # segment and no decoding (a view's source reads the commit that just woke it).
    recent = engine.recent_commits
    v = after + 1
    while v <= upto:
        commit = recent.get(v)
        if commit is None:
            break
        yield from reader.raw_ops(v, commit.ops)
        v += 1
    if v <= upto:
        for record in engine.log.scan(v, upto):
            yield from reader.raw(record)


def read_changes(engine, tables: set[str] | None, after: int, upto: int) -> Iterator[ChangeBatch]:
    """Change batches of the commits in (after, upto], without following the tail."""
    if upto <= after:
        return
    if engine.parent is not None and after < engine.fork:
        # A branch: what lies at or below its fork is the parent's log.
        yield from read_changes(engine.parent, tables, after, min(upto, engine.fork))
        after = engine.fork
        if upto <= after:
            return
    reader = _Reader(engine, tables)
    for record in engine.log.scan(after + 1, upto):
        yield from reader.batches(record)


class Subscription:
    """An iterator of :class:`ChangeBatch` (see the module docstring); also an async
    iterator. ``position`` is the resume token; ``close()`` ends it (also from another
    thread). Made by ``Database.subscribe``."""

    def __init__(self, engine, tables: list[str] | None, from_version: int | None, *,
                 idle_timeout_s: float | None = None, until_version: int | None = None) -> None:
        names = None
        if tables is not None:
            if isinstance(tables, str):
                tables = [tables]
            names = {check_name(t, "table") for t in tables}
        if engine.log.readonly:
            engine.refresh()
        after = engine.log.version if from_version is None else from_version
        _check_start(engine, names, after)
        self._engine = engine
        self._reader = _Reader(engine, names)
        self._stop = threading.Event()
        self._early: Iterator[ChangeBatch] | None = None
        follow_from = after
        if engine.parent is not None and after < engine.fork:
            # On a branch, the commits up to its fork come from its parent's log first.
            self._early = read_changes(engine.parent, names, after, engine.fork)
            follow_from = engine.fork
        self._records = engine.log.follow(follow_from + 1, idle_timeout_s=idle_timeout_s, stop=self._stop)
        self._pending: list[ChangeBatch] = []
        self._inflight = None  # the async form's step in a worker thread, if one is running
        self.position = after
        self.until_version = until_version
        self.tables = None if names is None else sorted(names)

    def __iter__(self) -> Subscription:
        return self

    def __next__(self) -> ChangeBatch:
        if self.until_version is not None and self.position >= self.until_version and not self._pending:
            raise StopIteration
        if self._early is not None:
            batch = next(self._early, None)
            if batch is not None:
                if batch.last_in_version:
                    self.position = batch.version
                return batch
            self._early = None
            self.position = max(self.position, self._engine.fork)
        while not self._pending:
            record = next(self._records)  # StopIteration ends the subscription
            batches = self._reader.batches(record)
            if not batches:
                self.position = record.version
                if self.until_version is not None and self.position >= self.until_version:
                    raise StopIteration
                continue
            batches.reverse()
            self._pending = batches
        batch = self._pending.pop()
        if batch.last_in_version:
            self.position = batch.version
        return batch

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> ChangeBatch:
        # One worker-thread step per batch: waiting for the next commit never blocks the
        # event loop, and the log stays the only buffer (back-pressure as in the sync form).
        # The step in flight outlives a cancelled await (asyncio.shield), so the batch it
        # takes is handed to the next __anext__ instead of being lost.
        step = self._inflight
        if step is None:
            step = self._inflight = asyncio.ensure_future(asyncio.to_thread(_next_or_none, self))
        batch = await asyncio.shield(step)
        self._inflight = None
        if batch is None:
            raise StopAsyncIteration
        return batch

    def close(self) -> None:
        """End the subscription: iteration stops within a few tens of milliseconds."""
        self._stop.set()

    @property
    def closed(self) -> bool:
        return self._stop.is_set()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Subscription(tables={self.tables}, position={self.position}, closed={self.closed})"


def _next_or_none(sub: Subscription) -> ChangeBatch | None:
    return next(sub, None)


class CallbackSubscription:
    """``Database.subscribe(..., callback=fn)``: calls ``fn(batch)`` for every batch from a
    background thread until ``close()``. An exception from ``fn`` (or from reading) ends
    the subscription; ``join()`` and ``close()`` re-raise it. ``position`` is the last
    version whose batches ``fn`` has all returned from."""

    def __init__(self, subscription: Subscription, callback: Callable[[ChangeBatch], object]) -> None:
        self._sub = subscription
        self._callback = callback
        self.position = subscription.position
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="udrflow-subscription", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for batch in self._sub:
                self._callback(batch)
                if batch.last_in_version:
                    self.position = batch.version
                elif not self._sub._pending:
                    self.position = self._sub.position
        except BaseException as exc:  # handed to join()/close(): the thread has no one else to tell
            self.error = exc

    def join(self, timeout_s: float | None = None) -> bool:
        """Wait for the subscription to end; True if it did. Re-raises the callback's error."""
        self._thread.join(timeout_s)
        if self.error is not None:
            raise self.error
        return not self._thread.is_alive()

    def close(self, timeout_s: float | None = 5.0) -> None:
        self._sub.close()
        if threading.current_thread() is not self._thread:
            self.join(timeout_s)

    @property
    def closed(self) -> bool:
        return self._sub.closed

    def __enter__(self) -> CallbackSubscription:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---- __changelog: the same batches as one SQL table ------------------------------------

CHANGELOG_SCHEMA = pa.schema([
    pa.field("version", pa.int64(), nullable=False),
    pa.field("commit_ts", pa.timestamp("us", tz="UTC"), nullable=False),
    pa.field("table_name", pa.string(), nullable=False),
    pa.field("op", pa.string(), nullable=False),
    pa.field("weight", pa.int8(), nullable=False),
    pa.field("row", pa.string(), nullable=False),
])


def changelog_table(db, version_max: int, version_min: int = 0, tables: list[str] | None = None,
                    engine=None) -> pa.Table:
    """Every row change in (version_min, version_max] as one table (``CHANGELOG_SCHEMA``):
    what ``subscribe`` delivers, flattened, with each row's columns as a JSON object.
    ``engine``: another branch's engine (default: the handle's)."""
    engine = engine or db._engine()
    if engine.log.readonly:
        engine.refresh()
    names = None if tables is None else set(tables)
    root = engine
    while root.parent is not None and version_min < root.fork:
        root = root.parent  # a branch's history below its fork is its parent's
    after = max(version_min, root.log.since - 1)
    if version_min < root.log.since - 1:
        raise VersionNotFoundError(f"the changelog from version {version_min} is not available: the log starts at "
                                   f"since={engine.log.since}")
    parts = []
    for batch in read_changes(engine, names, after, version_max):
        n = batch.changes.num_rows
        if n == 0:
            continue
        parts.append(pa.table({
            "version": pa.array(np.full(n, batch.version, np.int64)),
            "commit_ts": pa.array(np.full(n, batch.timestamp_us, np.int64)).cast(pa.timestamp("us", tz="UTC")),
            "table_name": pa.array([batch.table]).take(pa.array(np.zeros(n, np.int32))),
            "op": batch.changes.column(OP_COLUMN),
            "weight": batch.changes.column(WEIGHT_COLUMN),
            "row": rows_to_json(batch.changes.drop_columns([OP_COLUMN, WEIGHT_COLUMN])),
        }, schema=CHANGELOG_SCHEMA))
    if not parts:
        return CHANGELOG_SCHEMA.empty_table()
    return pa.concat_tables(parts).combine_chunks()


# ---- rows as JSON objects, a column at a time -------------------------------------------

_JSON_ESCAPES = [("\\", "\\\\"), ('"', '\\"'), ("\n", "\\n"), ("\r", "\\r"), ("\t", "\\t"),
                 ("\b", "\\b"), ("\f", "\\f")]
_OTHER_CONTROL = r"[\x00-\x07\x0b\x0e-\x1f]"


def _json_values(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """Each value of ``column`` as JSON text (null -> ``null``), vectorized for the common
    types; other types (nested, binary, rare control characters) go through msgspec."""
    t = column.type
    if pa.types.is_integer(t) or pa.types.is_decimal(t):
        text = pc.cast(column, pa.string())
    elif pa.types.is_floating(t):
        finite = pc.is_finite(column)
        text = pc.if_else(finite, pc.cast(column, pa.string()), pa.scalar(None, pa.string()))
    elif pa.types.is_boolean(t):
        text = pc.if_else(column, "true", "false")
    elif pa.types.is_string(t) or pa.types.is_large_string(t):
        text = pc.cast(column, pa.string())
        if pc.any(pc.match_substring_regex(text, _OTHER_CONTROL)).as_py():
            return _json_values_slow(column)
        for raw, escaped in _JSON_ESCAPES:
            text = pc.replace_substring(text, raw, escaped)
        text = pc.binary_join_element_wise('"', text, '"', "")
    elif pa.types.is_timestamp(t) or pa.types.is_date(t) or pa.types.is_time(t):
        text = pc.binary_join_element_wise('"', pc.cast(column, pa.string()), '"', "")
    else:
        return _json_values_slow(column)
    return pc.fill_null(text, "null")


def _json_values_slow(column: pa.ChunkedArray) -> pa.ChunkedArray:
    encode = msgspec.json.Encoder().encode
    return pa.chunked_array([pa.array([encode(v).decode() for v in _jsonable(column.to_pylist())], pa.string())])


def _jsonable(values: list) -> list:
    out = []
    for v in values:
        if isinstance(v, bytes):
            v = v.hex()
        elif isinstance(v, float) and v != v:
            v = None
        out.append(v)
    return out


def rows_to_json(rows: pa.Table) -> pa.ChunkedArray:
    """One JSON object per row of ``rows``, keys in column order."""
    if rows.num_columns == 0:
        return pa.chunked_array([pa.array(["{}"] * rows.num_rows, pa.string())])
    pieces: list = []
    for i, name in enumerate(rows.column_names):
        key = msgspec.json.encode(name).decode()
        pieces.append(("{" if i == 0 else ",") + key + ":")
        pieces.append(_json_values(rows.column(i)))
    pieces.append("}")
    return pc.binary_join_element_wise(*pieces, "")


def batch_json_lines(batch: ChangeBatch) -> pa.ChunkedArray:
    """One JSON object per row change of ``batch``: ``{"version", "commit_ts", "table", "op",
    "weight", "row"}`` (the shape of ``udrflow subscribe --format json`` and of ``__changelog``)."""
    rows = batch.changes
    head = ('{"version":' + str(batch.version) + ',"commit_ts":"' + batch.timestamp.isoformat()
            + '","table":' + msgspec.json.encode(batch.table).decode() + ',"op":"')
    return pc.binary_join_element_wise(
        head, rows.column(OP_COLUMN), '","weight":', pc.cast(rows.column(WEIGHT_COLUMN), pa.string()),
        ',"row":', rows_to_json(rows.drop_columns([OP_COLUMN, WEIGHT_COLUMN])), "}", "")
