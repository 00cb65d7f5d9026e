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

import os
import threading

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from udrflow.errors import InternalError, SchemaError

_pool = None
_pool_lock = threading.Lock()


def work_pool():
    """A shared thread pool for Arrow work that releases the GIL (decoding chunks, filtering
    columns): it spreads one read over the cores."""
    global _pool
    with _pool_lock:
        if _pool is None:
            from concurrent.futures import ThreadPoolExecutor

            _pool = ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 2), thread_name_prefix="udrflow-work")
        return _pool


_W = "__weight"


def remove_keys(table: pa.Table, keys: pa.Table, pk: list[str], *, table_sorted: bool = False) -> pa.Table:
    """Rows of ``table`` whose key is not among ``keys`` (order kept for one-column keys).

    ``table_sorted``: the table is sorted by its (one, integer) key, as checkpoints are; the
    keys are then found by binary search instead of hashing every row of the table."""
    if keys.num_rows == 0 or table.num_rows == 0:
        return table
    if table_sorted and sorted_key_like(table, pk):
        return drop_sorted_keys(table, np.sort(keys.column(pk[0]).to_numpy()), pk[0])
    if len(pk) == 1:
        k = pk[0]
        hit = pc.is_in(table.column(k), value_set=pc.unique(keys.column(k).combine_chunks()))
        return filter_columns(table, pc.invert(hit))
    return table.join(keys.select(pk).group_by(pk).aggregate([]), keys=pk, join_type="left anti",
                      use_threads=True).select(table.column_names)


def filter_columns(table: pa.Table, mask: pa.Array | pa.ChunkedArray) -> pa.Table:
    """``table.filter(mask)``, a column at a time: filtering a many-chunk table whole
    realigns the mask with every column's chunks, which costs about twice as much."""
    return pa.Table.from_arrays([column.filter(mask) for column in table.columns], schema=table.schema)


def sorted_key_like(table: pa.Table, pk: list[str]) -> bool:
    """Whether ``drop_sorted_keys`` applies: one key column of an integer-like type."""
    return len(pk) == 1 and _integer_like(table.schema.field(pk[0]).type)


def drop_sorted_keys(table: pa.Table, wanted: np.ndarray, key: str) -> pa.Table:
    """Rows of ``table`` (sorted by its integer-like ``key`` column, unique) whose key is not
    in ``wanted`` (sorted numpy values of the key's type), found by binary search
    chunk by chunk: no copy of the key column, and when the keys fall in few chunks only
    those are copied, the others are kept as they are."""
    if not wanted.size or not table.num_rows:
        return table
    masks: list[np.ndarray | None] = []
    for chunk in table.column(key).chunks:
        n = len(chunk)
        mask = None
        if n:
            column = chunk.to_numpy()
            mine = wanted[np.searchsorted(wanted, column[0], side="left"):
                          np.searchsorted(wanted, column[-1], side="right")]
            if mine.size:
                pos = np.searchsorted(column, mine)  # < n: every one of mine is <= the chunk's last key
                pos = pos[column[pos] == mine]
                if pos.size:
                    mask = np.ones(n, dtype=bool)
                    mask[pos] = False
        masks.append(mask)
    touched = sum(m is not None for m in masks)
    if touched == 0:
        return table
    batches = table.to_batches()
    if touched * 2 <= len(masks) and [b.num_rows for b in batches] == [len(c) for c in table.column(key).chunks]:
        return pa.Table.from_batches(
            [b if m is None else pa.RecordBatch.from_arrays([c.filter(pa.array(m)) for c in b.columns],
                                                            schema=table.schema)
             for b, m in zip(batches, masks, strict=True)], schema=table.schema)
    whole = np.concatenate([np.ones(len(c), dtype=bool) if m is None else m
                            for c, m in zip(table.column(key).chunks, masks, strict=True)])
    return filter_columns(table, pa.array(whole))


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
    n = keys.num_rows
    # Sort by key, stably (equal keys keep their event order), and find each key's last
    # event: where the key differs from the next row's (or at the end).
    last = np.ones(n, dtype=bool)
    if sorted_key_like(keys, pk):
        column = keys.column(pk[0]).to_numpy()
        order = np.argsort(column, kind="stable")
        ordered = column[order]
        last[:-1] = ordered[:-1] != ordered[1:]
    else:
        order = pc.sort_indices(keys, sort_keys=[(k, "ascending") for k in pk]).to_numpy()  # a stable sort
        if n > 1:
            ordered = keys.take(pa.array(order))
            differs = np.zeros(n - 1, dtype=bool)
            for k in pk:
                col = ordered.column(k)
                ne = pc.fill_null(pc.not_equal(col.slice(0, n - 1), col.slice(1)), True)
                differs |= ne.to_numpy(zero_copy_only=False)
            last[:-1] = differs
    final = order[last]  # positions (in the concatenated events) of each key's last event
    final_pidx = pidx[final]
    deleted = keys.take(pa.array(final[final_pidx < 0]))
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

