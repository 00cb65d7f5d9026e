"""The fold: a table's state after a sequence of weighted changes, a batch at a time.

DESIGN.md's invariant is ``read(T, V) == fold of the log up to V, restricted to T``.
This module is that fold, used by reads (checkpoint + log tail), by a transaction's
view of its own writes, and by checkpoints. No Python call per row: every step is an
Arrow compute kernel, a sort, or a join.

Tables with a primary key: the last event for a key decides (a +1 row sets it, a -1
removes it), so -1 events need only the key columns. Tables without a key are
multisets: each -1 row cancels one equal +1 row.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from udrflow.errors import InternalError, SchemaError

_SEQ = "__seq"
_PIDX = "__pidx"
_W = "__weight"


def remove_keys(table: pa.Table, keys: pa.Table, pk: list[str], *, table_sorted: bool = False) -> pa.Table:
    """Rows of ``table`` whose key is not among ``keys`` (order kept for one-column keys).

    ``table_sorted``: the table is sorted by its (one, integer) key, as checkpoints are; the
    keys are then found by binary search instead of hashing every row of the table."""
    if keys.num_rows == 0 or table.num_rows == 0:
        return table
    if table_sorted and len(pk) == 1 and _integer_like(table.schema.field(pk[0]).type):
        column = table.column(pk[0]).to_numpy()
        wanted = keys.column(pk[0]).to_numpy()
        pos = np.searchsorted(column, wanted)
        pos = pos[pos < len(column)]
        pos = pos[np.isin(column[pos], wanted)] if pos.size else pos
        mask = np.ones(len(column), dtype=bool)
        mask[pos] = False
        return table.filter(pa.array(mask))
    if len(pk) == 1:
        k = pk[0]
        hit = pc.is_in(table.column(k), value_set=pc.unique(keys.column(k).combine_chunks()))
        return table.filter(pc.invert(hit))
    return table.join(keys.select(pk).group_by(pk).aggregate([]), keys=pk, join_type="left anti",
                      use_threads=True).select(table.column_names)


def _integer_like(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_date32(t) or pa.types.is_timestamp(t)


def _fit(table: pa.Table, schema: pa.Schema) -> pa.Table:
    return table if table.schema.equals(schema) else table.cast(schema)


def net_keyed(events: list[tuple[int, pa.Table]], pk: list[str], schema: pa.Schema) -> tuple[pa.Table, pa.Table]:
    """The net effect of ``events`` on a keyed table: (rows, deleted keys). ``rows`` holds
    the final row of every key whose last event is +1; ``deleted`` the keys whose last
    event is -1. Applying them to any state before the events (remove the keys of both,
    add ``rows``) gives the state after them."""
    key_schema = pa.schema([schema.field(k) for k in pk])
    events = [(w, t) for w, t in events if t is not None and t.num_rows]
    if not events:
        return schema.empty_table(), key_schema.empty_table()
    if any(w == 0 for w, _ in events):
        raise InternalError("a change event must have weight +1 or -1")
    # One table of every event's keys, with its sequence number and, for +1 rows, its row
    # in the concatenated +1 rows (-1 for deletions), built from the event lengths.
    lengths = np.fromiter((t.num_rows for _, t in events), dtype=np.int64, count=len(events))
    positive = np.fromiter((w > 0 for w, _ in events), dtype=bool, count=len(events))
    is_plus = np.repeat(positive, lengths)
    pidx = np.where(is_plus, np.cumsum(is_plus) - 1, -1)
    keys = pa.concat_tables([_fit(t.select(pk), key_schema) for _, t in events])
    keys = keys.append_column(_SEQ, pa.array(np.arange(len(pidx), dtype=np.int64)))
    keys = keys.append_column(_PIDX, pa.array(pidx))
    order = pc.sort_indices(keys, sort_keys=[(k, "ascending") for k in pk] + [(_SEQ, "ascending")])
    keys = keys.take(order)
    n = keys.num_rows
    # The last event of each key: where the key differs from the next row's (or at the end).
    last = np.zeros(n, dtype=bool)
    last[-1] = True
    if n > 1:
        differs = np.zeros(n - 1, dtype=bool)
        for k in pk:
            col = keys.column(k)
            ne = pc.fill_null(pc.not_equal(col.slice(0, n - 1), col.slice(1)), True)
            differs |= ne.to_numpy(zero_copy_only=False)
        last[:-1] = differs
    final = keys.filter(pa.array(last))
    final_pidx = final.column(_PIDX).to_numpy()
    deleted = final.filter(pa.array(final_pidx < 0)).select(pk)
    survivors = np.sort(final_pidx[final_pidx >= 0])
    if not survivors.size:
        return schema.empty_table(), deleted
    plus = pa.concat_tables([_fit(t.select(schema.names), schema) for w, t in events if w > 0])
    return plus.take(pa.array(survivors)), deleted


def apply_net(base: pa.Table, rows: pa.Table, deleted: pa.Table, pk: list[str], schema: pa.Schema, *,
              base_sorted: bool = False) -> pa.Table:
    """``base`` with the net changes (``net_keyed``) applied."""
    if rows.num_rows == 0 and deleted.num_rows == 0:
        return base
    touched = pa.concat_tables([rows.select(pk), deleted]) if deleted.num_rows else rows.select(pk)
    kept = remove_keys(base, touched, pk, table_sorted=base_sorted)
    if rows.num_rows == 0:
        return kept
    return pa.concat_tables([_fit(kept, schema), rows]) if kept.num_rows else rows


def fold_keyed(base: pa.Table, events: list[tuple[int, pa.Table]], pk: list[str], schema: pa.Schema) -> pa.Table:
    """Apply ``events`` (weight, rows) in order to ``base``, a table keyed by ``pk``.

    A +1 table holds whole rows; a -1 table needs only the key columns.
    """
    events = [(w, t) for w, t in events if t is not None and t.num_rows]
    if not events:
        return base
    if base.num_rows == 0 and len(events) == 1 and events[0][0] > 0:
        # A first load: its keys are unique (checked at write), so it is the state as it is.
        return _fit(events[0][1].select(schema.names), schema)
    rows, deleted = net_keyed(events, pk, schema)
    return apply_net(base, rows, deleted, pk, schema)


def fold_multiset(base: pa.Table, events: list[tuple[int, pa.Table]], schema: pa.Schema) -> pa.Table:
    """Apply weighted whole-row ``events`` to ``base``, a table without a key (a multiset)."""
    events = [(w, t.select(schema.names).cast(schema)) for w, t in events if t is not None and t.num_rows]
    if not events:
        return base
    if all(w > 0 for w, _ in events):
        return pa.concat_tables([base.cast(schema)] + [t for _, t in events])
    parts = [base.cast(schema).append_column(_W, pa.array(np.ones(base.num_rows, dtype=np.int64)))]
    for w, t in events:
        parts.append(t.append_column(_W, pa.array(np.full(t.num_rows, w, dtype=np.int64))))
    rows = pa.concat_tables(parts)
    try:
        grouped = rows.group_by(schema.names, use_threads=False).aggregate([(_W, "sum")])
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid) as exc:
        raise SchemaError(f"rows of a table without a primary key can only be deleted when every column can be "
                          f"compared; got {schema}: {exc}") from exc
    counts = grouped.column(f"{_W}_sum").to_numpy()
    if (counts < 0).any():
        raise InternalError("a table without a key would hold a row a negative number of times")
    grouped = grouped.drop_columns([f"{_W}_sum"]).select(schema.names)
    idx = np.repeat(np.arange(grouped.num_rows), counts)
    return grouped.take(pa.array(idx)).cast(schema)

