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


def encode_commit(commit: Commit) -> bytes:
    return _encoder.encode(commit)


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


def table_to_ipc(table: pa.Table | None) -> bytes:
    if table is None or table.num_rows == 0:
        return b""
    options = _ZSTD if table.nbytes >= _COMPRESS_BYTES_MIN else _PLAIN
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema, options=options) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def ipc_to_table(data: bytes) -> pa.Table | None:
    if not data:
        return None
    return pa.ipc.open_stream(pa.py_buffer(data)).read_all()


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


def _rows_of(changes: Changes, fetch_chunk) -> pa.Table | None:
    data = changes.rows
    if changes.chunks:
        if fetch_chunk is None:
            raise CorruptionError(f"changes to table {changes.table!r} reference chunks but no chunk store is open")
        if changes.chunk_tables:
            return pa.concat_tables([fetch_chunk(h) for h in changes.chunks])
        data = b"".join(fetch_chunk(h) for h in changes.chunks)
    return ipc_to_table(data)


def _check_counts(changes: Changes, rows: pa.Table | None) -> None:
    n = 0 if rows is None else rows.num_rows
    if n != changes.updates + changes.inserts + changes.deletes:
        raise CorruptionError(f"changes to table {changes.table!r} hold {n} rows: the commit header says "
                              f"{changes.updates} updates + {changes.inserts} inserts + {changes.deletes} deletes")


def expand_keyed(changes: Changes, schema: pa.Schema, pk: list[str], fetch_chunk=None) -> tuple[pa.Table, pa.Table]:
    """Like ``expand_changes`` for a keyed table, but the -1 side is only its key columns:
    all a keyed fold needs, and it skips rebuilding the old rows of updates."""
    rows = _rows_of(changes, fetch_chunk)
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
    rows = _rows_of(changes, fetch_chunk)
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
