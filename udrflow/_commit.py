"""What one commit of the log holds, and how it is encoded in a frame's body.

A commit is a list of operations on tables (DDL or row changes) plus metadata. The body
is msgpack (msgspec) with Arrow IPC streams for row data, so a reader can learn which
tables a commit touched by decoding a small header (``decode_header``) without touching
any Arrow data.

Row changes are weighted (the change-batch model of DESIGN.md): every table operation
is a set of +1 rows (inserted) and -1 rows (deleted, with all their old values), so
change streams, ``__changelog`` and views never need table state to explain a commit.
An update is a -1 of the old row and a +1 of the new.

One table's changes in one commit are one Arrow IPC stream (one writer to run, one
reader to decode), rows in this order: the new rows of updates, pure inserts, then pure
deletes (whole rows). To keep an update's cost close to what changed, its old row is not
stored whole: for each column whose value changed in any update, an extra column
``__old_<name>`` holds the old values (meaningful on the update rows only), and the old
row is rebuilt batch-wise as ``old[c] = __old_c if present else new[c]``.

Small commits (see ``udrflow/_pyrows.py``) hold the same rows as msgpack values instead of
an Arrow stream: ``Changes.columns`` names the columns (the table's, then ``__old_<name>``
ones) and ``Changes.values`` holds one list of Python values per column, in the same row
order (an ``__old_`` list holds only the update rows). The functions below decode both
forms to the same Arrow tables; they are the one place row data is decoded.
"""

from __future__ import annotations

from typing import Any

import msgspec
import pyarrow as pa
import pyarrow.compute as pc

from udrflow._schema import conform
from udrflow.errors import CorruptionError

COMMIT_FORMAT = 1
WEIGHT = "__weight"
_COMPRESS_BYTES_MIN = 64 * 1024  # below this, zstd costs more latency than it saves


class CreateTable(msgspec.Struct, tag="create_table"):
    table: str
    schema: bytes  # Arrow IPC-serialised schema
    primary_key: list[str] = []


class AddColumn(msgspec.Struct, tag="add_column"):
    table: str
    schema: bytes  # the table's whole new schema


class DropTable(msgspec.Struct, tag="drop_table"):
    table: str


class Changes(msgspec.Struct, tag="changes"):
    """Row changes to one table: ``rows`` is one Arrow IPC stream of ``updates`` update rows,
    then ``inserts`` inserted rows, then ``deletes`` deleted rows (see the module docstring).
    ``chunks`` replaces ``rows`` (same bytes, stored as chunks) for changes too large to
    keep in a frame."""

    table: str
    rows: bytes = b""
    updates: int = 0
    inserts: int = 0
    deletes: int = 0
    rows_in: int = 0          # +1 rows: updates + inserts
    rows_out: int = 0         # -1 rows: updates + deletes
    chunks: list[str] = []
    # True: each chunk is a whole Arrow table (key-sorted, content-defined: the layout a
    # checkpoint writes, so they are shared with it); False: pieces of the ``rows`` bytes.
    chunk_tables: bool = False
    # The msgpack form (small commits) replaces ``rows``: column names, and one list of
    # values per column (see the module docstring).
    columns: list[str] = []
    values: list[list[Any]] = []


Op = CreateTable | AddColumn | DropTable | Changes


class Commit(msgspec.Struct):
    ops: list[Op]
    meta: dict[str, Any] = {}
    format: int = COMMIT_FORMAT


# Header-only views: same tags, only the small fields, so decoding skips the row bytes.
class _HCreateTable(msgspec.Struct, tag="create_table"):
    table: str


class _HAddColumn(msgspec.Struct, tag="add_column"):
    table: str


class _HDropTable(msgspec.Struct, tag="drop_table"):
    table: str


class _HChanges(msgspec.Struct, tag="changes"):
    table: str
    rows_in: int = 0
    rows_out: int = 0
    chunks: list[str] = []


class CommitHeader(msgspec.Struct):
    ops: list[_HCreateTable | _HAddColumn | _HDropTable | _HChanges]
    meta: dict[str, Any] = {}
    format: int = COMMIT_FORMAT


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Commit)
_header_decoder = msgspec.msgpack.Decoder(CommitHeader)


encode_commit = _encoder.encode  # (commit: Commit) -> bytes; the encoder itself: no Python frame per commit


def decode_commit(payload: bytes, version: int) -> Commit:
    try:
        commit = _decoder.decode(payload)
    except msgspec.DecodeError as exc:
        raise CorruptionError(f"commit at version {version} does not decode: {exc}", version=version) from exc
    if commit.format != COMMIT_FORMAT:
        raise CorruptionError(f"commit at version {version} has format {commit.format}: expected {COMMIT_FORMAT}",
                              version=version)
    return commit


def decode_header(payload: bytes, version: int) -> CommitHeader:
    try:
        return _header_decoder.decode(payload)
    except msgspec.DecodeError as exc:
        raise CorruptionError(f"commit at version {version} does not decode: {exc}", version=version) from exc


# ---- Arrow IPC for row data ----------------------------------------------------------

_ZSTD = pa.ipc.IpcWriteOptions(compression="zstd") if pa.Codec.is_available("zstd") else pa.ipc.IpcWriteOptions()
_PLAIN = pa.ipc.IpcWriteOptions()


# Short strings and binaries of compressed row data are written as view types: a view of
# at most this many bytes holds its value inline next to its length, which zstd compresses
# far better than a separate buffer of ever-growing offsets (a 5% update of a table of
# short strings takes ~13% fewer bytes in the log). ``_rows_of`` casts them back.
_VIEW_INLINE_BYTES_MAX = 12


def table_to_ipc(table: pa.Table | None) -> bytes:
    if table is None or table.num_rows == 0:
        return b""
    if table.nbytes >= _COMPRESS_BYTES_MIN:
        options = _ZSTD
        table = _short_strings_as_views(table)
    else:
        options = _PLAIN
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema, options=options) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def ipc_to_table(data: bytes) -> pa.Table | None:
    if not data:
        return None
    return pa.ipc.open_stream(pa.py_buffer(data)).read_all()


def _short_strings_as_views(table: pa.Table) -> pa.Table:
    for i, field in enumerate(table.schema):
        t = field.type
        if pa.types.is_string(t) or pa.types.is_large_string(t):
            view = pa.string_view()
        elif pa.types.is_binary(t) or pa.types.is_large_binary(t):
            view = pa.binary_view()
        else:
            continue
        longest = pc.max(pc.binary_length(table.column(i))).as_py()
        if longest is not None and longest <= _VIEW_INLINE_BYTES_MAX:
            table = table.set_column(i, field.with_type(view), table.column(i).cast(view))
    return table


def _views_back(rows: pa.Table, schema: pa.Schema) -> pa.Table:
    """Columns stored as views (``_short_strings_as_views``) cast back to their column's type."""
    for i, field in enumerate(rows.schema):
        if not (pa.types.is_string_view(field.type) or pa.types.is_binary_view(field.type)):
            continue
        name = field.name[len(OLD_PREFIX):] if field.name.startswith(OLD_PREFIX) else field.name
        j = schema.get_field_index(name)
        if j < 0:
            raise CorruptionError(f"stored row data has column {field.name!r}, which the schema {schema.names} "
                                  f"does not have")
        t = schema.field(j).type
        rows = rows.set_column(i, field.with_type(t), rows.column(i).cast(t))
    return rows


# ---- building and expanding change batches ---------------------------------------------


OLD_PREFIX = "__old_"
_SMALL_ROWS = 64  # below this, comparing Python values beats launching compute kernels


def make_changes(table: str, inserts: pa.Table | None, deletes: pa.Table | None,
                 update_new: pa.Table | None = None, update_old: pa.Table | None = None,
                 key_columns: list[str] = ()) -> Changes:
    """Encode one table's changes. ``update_new``/``update_old`` are aligned row by row
    (same keys, same order): the new and the old version of each updated row."""
    parts = [t for t in (update_new, inserts, deletes) if t is not None and t.num_rows]
    schema = parts[0].schema
    updates = 0 if update_new is None else update_new.num_rows
    n_ins = 0 if inserts is None else inserts.num_rows
    n_del = 0 if deletes is None else deletes.num_rows
    rows = parts[0] if len(parts) == 1 else pa.concat_tables([p.cast(schema) for p in parts])
    if updates:
        total = rows.num_rows
        for name in update_new.column_names:
            if name in key_columns or not _column_changed(update_new.column(name), update_old.column(name)):
                continue
            old = update_old.column(name).combine_chunks()
            if total > updates:
                old = pa.concat_arrays([old, pa.nulls(total - updates, old.type)])
            rows = rows.append_column(pa.field(OLD_PREFIX + name, old.type), old)
    return Changes(table=table, rows=table_to_ipc(rows), updates=updates, inserts=n_ins, deletes=n_del,
                   rows_in=updates + n_ins, rows_out=updates + n_del)


def _column_changed(new_col, old_col) -> bool:
    """Whether any row's value differs between the new and the old side of an update."""
    if len(new_col) <= _SMALL_ROWS:
        return new_col.to_pylist() != old_col.to_pylist()
    differs = pc.invert(pc.fill_null(pc.equal(new_col, old_col), False))
    # equal() is null when either side is null: both null means unchanged.
    both_null = pc.and_(pc.is_null(new_col), pc.is_null(old_col))
    return pc.any(pc.and_(differs, pc.invert(both_null))).as_py()


def make_value_changes(table: str, names: list[str], new_rows: list[tuple], inserts: int, deleted: list[tuple],
                       old_rows: list[tuple], key_columns: list[str]) -> Changes:
    """Encode one table's changes in the msgpack form: ``new_rows`` are the new rows of the
    updates then the inserted rows, ``old_rows`` the old rows of the updates (aligned with
    the first ``len(old_rows)`` of ``new_rows``), ``deleted`` the whole deleted rows; every
    row a tuple in the order of ``names`` (the table's columns at this version)."""
    updates = len(old_rows)
    n_del = len(deleted)
    columns = list(names)
    if len(new_rows) + n_del == 1:  # one row (the small commit): no transposing
        row = new_rows[0] if new_rows else deleted[0]
        values = [[v] for v in row]
        if updates:
            old_row = old_rows[0]
            if len(old_row) != len(row):
                raise ValueError(f"an update's old row has {len(old_row)} values, its new row {len(row)}")
            for j in range(len(row)):
                new, old = row[j], old_row[j]
                # (As the tuples of column values below compare: the same object, or equal.)
                if new is not old and new != old and names[j] not in key_columns:
                    columns.append(OLD_PREFIX + names[j])
                    values.append([old])
        return Changes(table=table, updates=updates, inserts=inserts, deletes=n_del, rows_in=updates + inserts,
                       rows_out=updates + n_del, columns=columns, values=values)
    rows = new_rows + deleted if deleted else new_rows
    values = list(map(list, zip(*rows, strict=True)))
    if updates:
        updated = new_rows[:updates] if len(new_rows) > updates else new_rows
        for j, (new, old) in enumerate(zip(zip(*updated, strict=True), zip(*old_rows, strict=True), strict=True)):
            if new != old and names[j] not in key_columns:
                columns.append(OLD_PREFIX + names[j])
                values.append(list(old))
    return Changes(table=table, updates=updates, inserts=inserts, deletes=n_del, rows_in=updates + inserts,
                   rows_out=updates + n_del, columns=columns, values=values)


def value_columns(names: list[str], key_columns: list[str]) -> list[tuple[int, str]]:
    """(position, ``__old_`` column name) of each column of ``names`` not in ``key_columns``:
    the columns whose old values an update may have to keep (``make_row_update``)."""
    return [(j, OLD_PREFIX + name) for j, name in enumerate(names) if name not in key_columns]


def make_row_update(table: str, names: list[str], new_row: tuple, old_row: tuple,
                    columns_to_compare: list[tuple[int, str]]) -> Changes:
    """``make_value_changes(table, names, [new_row], 0, [], [old_row], key_columns)`` for one
    updated row (the small commit), given ``value_columns(names, key_columns)``."""
    if len(old_row) != len(new_row):
        raise ValueError(f"an update's old row has {len(old_row)} values, its new row {len(new_row)}")
    columns = list(names)
    values = [[v] for v in new_row]
    for j, old_name in columns_to_compare:
        new, old = new_row[j], old_row[j]
        if new is not old and new != old:  # (as make_value_changes compares: the same object, or equal)
            columns.append(old_name)
            values.append([old])
    return Changes(table=table, updates=1, inserts=0, deletes=0, rows_in=1, rows_out=1, columns=columns,
                   values=values)


def values_to_ipc(changes: Changes, schema: pa.Schema) -> Changes:
    """The same changes with their msgpack-form rows moved to the Arrow IPC form."""
    return msgspec.structs.replace(changes, rows=table_to_ipc(_values_table(changes, schema)), columns=[], values=[])


def _values_table(changes: Changes, schema: pa.Schema) -> pa.Table:
    """The msgpack form as the Arrow table the IPC form would hold. Column types come from
    ``schema``, the table's schema at the commit's version or later (columns are only ever
    added, never changed)."""
    n = changes.updates + changes.inserts + changes.deletes
    if len(changes.values) != len(changes.columns):
        raise CorruptionError(f"changes to table {changes.table!r} name {len(changes.columns)} columns but hold "
                              f"{len(changes.values)} lists of values")
    fields, arrays = [], []
    for name, values in zip(changes.columns, changes.values, strict=True):
        old = name.startswith(OLD_PREFIX)
        base = name[len(OLD_PREFIX):] if old else name
        i = schema.get_field_index(base)
        expected = changes.updates if old else n
        if i < 0 or len(values) != expected:
            raise CorruptionError(f"changes to table {changes.table!r} hold column {name!r} with {len(values)} "
                                  f"values: expected a column of the table with {expected}")
        field = schema.field(i)
        try:
            if old:
                array = pa.array(values + [None] * (n - expected) if n > expected else values, type=field.type)
                field = pa.field(name, field.type)
            else:
                array = pa.array(values, type=field.type)
        except (pa.ArrowException, TypeError, ValueError, OverflowError) as exc:
            raise CorruptionError(f"changes to table {changes.table!r} hold values of column {name!r} that are "
                                  f"not {field.type}: {exc}") from exc
        fields.append(field)
        arrays.append(array)
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def _rows_of(changes: Changes, fetch_chunk, schema: pa.Schema) -> pa.Table | None:
    if changes.columns:
        return _values_table(changes, schema)
    data = changes.rows
    if changes.chunks:
        if fetch_chunk is None:
            raise CorruptionError(f"changes to table {changes.table!r} reference chunks but no chunk store is open")
        if changes.chunk_tables:
            return pa.concat_tables([fetch_chunk(h) for h in changes.chunks])
        data = b"".join(fetch_chunk(h) for h in changes.chunks)
    rows = ipc_to_table(data)
    return rows if rows is None else _views_back(rows, schema)


def net_keyed_values(run: list[Changes], schema: pa.Schema, pk: list[str]) -> tuple[pa.Table, pa.Table]:
    """The net effect of consecutive msgpack-form changes to a keyed table, decoded at once:
    (rows, deleted keys) as ``_fold.net_keyed`` gives them for the ``expand_keyed`` events of
    the same commits (the final row of each key whose last event is +1, in the order of
    those last events; the keys whose last event is -1). A tail of many small commits thus
    builds Arrow once, not per commit. ``schema``: the table's schema at the last of them."""
    width = len(schema)
    plans: dict[tuple[str, ...], tuple] = {}
    state: dict = {}
    pop = state.pop
    for changes in run:
        columns, values = changes.columns, changes.values
        plan = plans.get(tuple(columns))
        if plan is None:
            plan = plans[tuple(columns)] = _value_plan(changes, schema, pk)
        data, places, keys_at = plan
        n_plus = changes.updates + changes.inserts
        n = n_plus + changes.deletes
        columns_ok = len(values) == len(columns)
        for c in data:
            columns_ok = columns_ok and len(values[c]) == n
        if not columns_ok:
            raise CorruptionError(f"changes to table {changes.table!r} hold columns of other lengths than the "
                                  f"{n} rows their header counts")
        keys = values[keys_at[0]] if len(keys_at) == 1 else list(zip(*[values[c] for c in keys_at], strict=True))
        for i in range(n_plus, n):
            k = keys[i]
            pop(k, None)  # re-inserted: dict order is the order of each key's last event
            state[k] = None
        if places is None:  # the columns are the schema's, in its order
            rows = list(zip(*[values[c] for c in data], strict=True)) if n_plus else []
        else:
            rows = []
            for i in range(n_plus):
                row = [None] * width
                for c, j in zip(data, places, strict=True):
                    row[j] = values[c][i]
                rows.append(tuple(row))
        for i in range(n_plus):
            k = keys[i]
            pop(k, None)
            state[k] = rows[i]
    rows = [r for r in state.values() if r is not None]
    deleted = [k for k, r in state.items() if r is None]
    key_fields = [schema.field(k) for k in pk]
    try:
        table = pa.Table.from_arrays([pa.array([r[j] for r in rows], type=f.type) for j, f in enumerate(schema)],
                                     schema=schema)
        cols = [deleted] if len(pk) == 1 else ([list(c) for c in zip(*deleted, strict=True)] if deleted
                                               else [[] for _ in pk])
        gone = pa.Table.from_arrays([pa.array(c, type=f.type) for c, f in zip(cols, key_fields, strict=True)],
                                    schema=pa.schema(key_fields))
    except (pa.ArrowException, TypeError, ValueError, OverflowError) as exc:
        raise CorruptionError(f"changes to table {run[0].table!r} hold values that do not fit its schema "
                              f"{schema}: {exc}") from exc
    return table, gone


def _value_plan(changes: Changes, schema: pa.Schema, pk: list[str]) -> tuple:
    """Where the msgpack columns of ``changes`` go: (indexes of its row columns, their
    positions in ``schema`` or None when they are exactly the schema's columns in order,
    indexes of the key columns)."""
    data, places = [], []
    for c, name in enumerate(changes.columns):
        if name.startswith(OLD_PREFIX):
            continue
        j = schema.get_field_index(name)
        if j < 0:
            raise CorruptionError(f"changes to table {changes.table!r} hold column {name!r}, which the table's "
                                  f"schema {schema.names} does not have")
        data.append(c)
        places.append(j)
    if any(k not in changes.columns for k in pk):
        raise CorruptionError(f"changes to table {changes.table!r} lack key column(s) {pk}")
    keys_at = [changes.columns.index(k) for k in pk]
    return data, None if places == list(range(len(schema))) else places, keys_at


def _check_counts(changes: Changes, rows: pa.Table | None) -> None:
    n = 0 if rows is None else rows.num_rows
    if n != changes.updates + changes.inserts + changes.deletes:
        raise CorruptionError(f"changes to table {changes.table!r} hold {n} rows: the commit header says "
                              f"{changes.updates} updates + {changes.inserts} inserts + {changes.deletes} deletes")


def expand_keyed(changes: Changes, schema: pa.Schema, pk: list[str], fetch_chunk=None) -> tuple[pa.Table, pa.Table]:
    """Like ``expand_changes`` for a keyed table, but the -1 side is only its key columns:
    all a keyed fold needs, and it skips rebuilding the old rows of updates."""
    rows = _rows_of(changes, fetch_chunk, schema)
    _check_counts(changes, rows)
    if rows is None:
        return schema.empty_table(), schema.empty_table().select(pk)
    n_plus = changes.updates + changes.inserts
    plus = conform(rows.slice(0, n_plus).select([n for n in rows.column_names if not n.startswith(OLD_PREFIX)]),
                   schema)
    keys = rows.select(pk)
    if changes.deletes == 0:
        minus = keys.slice(0, changes.updates)
    elif changes.updates == 0:
        minus = keys.slice(n_plus)
    else:
        minus = pa.concat_tables([keys.slice(0, changes.updates), keys.slice(n_plus)])
    return plus, minus


def expand_changes(changes: Changes, schema: pa.Schema, fetch_chunk=None) -> tuple[pa.Table, pa.Table]:
    """Decode ``changes`` into (plus, minus): the +1 rows and the whole -1 rows, both
    conformed to ``schema`` (the table's schema at that version)."""
    rows = _rows_of(changes, fetch_chunk, schema)
    _check_counts(changes, rows)
    if rows is None:
        return schema.empty_table(), schema.empty_table()
    names = [n for n in rows.column_names if not n.startswith(OLD_PREFIX)]
    n_plus = changes.updates + changes.inserts
    plain = rows.select(names)
    plus = conform(plain.slice(0, n_plus), schema)
    deleted = conform(plain.slice(n_plus), schema)
    if not changes.updates:
        return plus, deleted
    new = rows.slice(0, changes.updates)
    old = pa.Table.from_arrays(
        [new.column(OLD_PREFIX + n) if OLD_PREFIX + n in rows.column_names else new.column(n) for n in names],
        schema=plain.schema)
    old = conform(old, schema)
    return plus, (old if changes.deletes == 0 else pa.concat_tables([old, deleted]))
