"""What one commit of the log holds, and how it is encoded in a frame's body.

A commit is a list of operations on tables (DDL or row changes) plus metadata. The body
is msgpack (msgspec) with Arrow IPC streams for row data, so a reader can learn which
tables a commit touched by decoding a small header (``decode_header``) without touching
any Arrow data.

Row changes are weighted (the change-batch model of DESIGN.md): every table operation
is a set of +1 rows (inserted) and -1 rows (deleted, with all their old values), so
change streams, ``__changelog`` and views never need table state to explain a commit.
An update is a -1 of the old row and a +1 of the new. To keep an update's cost close to
what changed, the old side of an update is not stored whole: ``Changes`` keeps the new
rows of updates first in ``inserts`` (``updates`` of them) and, for just the columns
whose value changed in any of them, the old values (``update_old``). Decoding rebuilds
the full old rows batch-wise: ``old[c] = update_old[c] if c changed else new[c]``.
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
    """Row changes to one table. IPC fields are empty when they hold no rows; ``chunks``
    replaces them (in order inserts, deletes, update_old) for changes too large for a frame."""

    table: str
    inserts: bytes = b""      # +1 rows: the new rows of updates first, then pure inserts
    deletes: bytes = b""      # -1 rows: pure deletes, whole rows
    updates: int = 0          # how many leading rows of inserts are updates
    update_old: bytes = b""   # old values of the updates, only for columns that changed
    rows_in: int = 0          # number of +1 rows
    rows_out: int = 0         # number of -1 rows (updates included)
    chunks: list[str] = []


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


def make_changes(table: str, inserts: pa.Table | None, deletes: pa.Table | None,
                 update_new: pa.Table | None = None, update_old: pa.Table | None = None,
                 key_columns: list[str] = ()) -> Changes:
    """Encode one table's changes. ``update_new``/``update_old`` are aligned row by row
    (same keys, same order): the new and the old version of each updated row."""
    updates = 0 if update_new is None else update_new.num_rows
    old_changed = None
    if updates:
        changed = []
        for name in update_new.column_names:
            if name in key_columns:
                continue
            new_col, old_col = update_new.column(name), update_old.column(name)
            differs = pc.invert(pc.fill_null(pc.equal(new_col, old_col), False))
            # equal() is null when either side is null: both null means unchanged.
            both_null = pc.and_(pc.is_null(new_col), pc.is_null(old_col))
            if pc.any(pc.and_(differs, pc.invert(both_null))).as_py():
                changed.append(name)
        old_changed = update_old.select(changed) if changed else None
        inserts = update_new if inserts is None or inserts.num_rows == 0 else pa.concat_tables(
            [update_new, inserts.cast(update_new.schema)])
    rows_in = 0 if inserts is None else inserts.num_rows
    rows_out = updates + (0 if deletes is None else deletes.num_rows)
    return Changes(table=table, inserts=table_to_ipc(inserts), deletes=table_to_ipc(deletes), updates=updates,
                   update_old=table_to_ipc(old_changed),
                   rows_in=rows_in, rows_out=rows_out)


def expand_changes(changes: Changes, schema: pa.Schema, fetch_chunk=None) -> tuple[pa.Table, pa.Table]:
    """Decode ``changes`` into (plus, minus): the +1 rows and the whole -1 rows, both
    conformed to ``schema`` (the table's schema at that version)."""
    inserts, deletes, update_old = changes.inserts, changes.deletes, changes.update_old
    if changes.chunks:
        if fetch_chunk is None:
            raise CorruptionError(f"changes to table {changes.table!r} reference chunks but no chunk store is open")
        parts = [fetch_chunk(h) if h else b"" for h in changes.chunks]
        inserts, deletes, update_old = (parts + [b"", b"", b""])[:3]
    plus = ipc_to_table(inserts)
    minus = ipc_to_table(deletes)
    empty = schema.empty_table()
    plus = empty if plus is None else conform(plus, schema)
    minus = empty if minus is None else conform(minus, schema)
    if changes.updates:
        new = plus.slice(0, changes.updates)
        old_changed = ipc_to_table(update_old)
        columns = []
        for field in schema:
            if old_changed is not None and field.name in old_changed.column_names:
                columns.append(old_changed.column(field.name).cast(field.type))
            else:
                columns.append(new.column(field.name))
        old = pa.Table.from_arrays(columns, schema=schema)
        minus = old if minus.num_rows == 0 else pa.concat_tables([old, minus])
    return plus, minus

