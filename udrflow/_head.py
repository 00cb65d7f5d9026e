"""The writer's view of each table at the newest queued commit ("head state").

Turning an upsert or a delete into weighted changes needs the rows that are there now:
an upsert of an existing key is an update (its old row is the -1 side), a delete by key
must record the whole old row. Reads serve only visible (durable) versions, so the
writer keeps its own state that already includes commits still waiting for their fsync.

A keyed head is a base table (a snapshot), a dict index from key to base row built on
first use, and an overlay of keys changed since the base (pointing into the +1 batches
of those commits, or None for deleted). When the overlay grows past a quarter of the
base, the head is compacted into a new base with the vectorized fold.

A +1 batch is an Arrow table, or, for small commits made of Python values (see
``_pyrows.py``), a list of row tuples in the schema's column order: those commits read
and extend the head without touching Arrow (``locate`` + ``rows``, ``apply_rows``).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from udrflow._fold import fold_multiset, remove_keys
from udrflow._pyrows import rows_to_table

_MISSING = object()
OVERLAY_KEYS_MIN = 65_536
EVENTS_MAX = 256


def key_list(table: pa.Table, pk: list[str]) -> list:
    """Python values of the key of each row (a scalar for one column, else a tuple)."""
    if len(pk) == 1:
        return table.column(pk[0]).to_pylist()
    return list(zip(*(table.column(k).to_pylist() for k in pk), strict=True))


def keys_table(keys: list, pk: list[str], schema: pa.Schema) -> pa.Table:
    key_schema = pa.schema([schema.field(k) for k in pk])
    if len(pk) == 1:
        return pa.table([pa.array(keys, type=key_schema.field(0).type)], schema=key_schema)
    cols = list(zip(*keys, strict=True)) if keys else [[] for _ in pk]
    return pa.table([pa.array(list(c), type=f.type) for f, c in zip(key_schema, cols, strict=True)],
                    schema=key_schema)


class KeyedHead:
    def __init__(self, schema: pa.Schema, pk: list[str], base: pa.Table) -> None:
        self.schema = schema
        self.pk = pk
        self.base = base
        self._index: dict | None = None
        self._base_columns: list | None = None
        self.batches: list[pa.Table | list[tuple]] = []
        self.overlay: dict = {}

    def _base_index(self) -> dict:
        if self._index is None:
            self._index = dict(zip(key_list(self.base, self.pk), range(self.base.num_rows), strict=True))
        return self._index

    def locate(self, keys: list) -> list:
        """Where each key's current row is: (-1, row) in the base, (batch, row), or None."""
        overlay, index = self.overlay, self._base_index()
        out = []
        for k in keys:
            loc = overlay.get(k, _MISSING)
            if loc is _MISSING:
                r = index.get(k)
                loc = None if r is None else (-1, r)
            out.append(loc)
        return out

    def rows(self, locs: list) -> list[tuple]:
        """The rows at ``locs`` (all not None) as Python tuples in the schema's column order."""
        out = []
        for src, row in locs:
            if src >= 0:
                batch = self.batches[src]
                if type(batch) is list:
                    out.append(batch[row])
                    continue
                columns = self._fit(batch).columns
            else:
                if self._base_columns is None:
                    self._base_columns = self._fit(self.base).columns
                columns = self._base_columns
            out.append(tuple([c[row].as_py() for c in columns]))
        return out

    def gather(self, locs: list) -> pa.Table:
        """The rows at ``locs`` (all not None), in that order, batch-wise."""
        if not locs:
            return self.schema.empty_table()
        if len(locs) == 1:  # the common single-row update: no numpy, no permutation
            src, row = locs[0]
            table = self.base if src < 0 else self.batches[src]
            if type(table) is list:
                return rows_to_table([table[row]], self.schema)
            return self._fit(table.slice(row, 1))
        sources = np.fromiter((b for b, _ in locs), dtype=np.int64, count=len(locs))
        rows = np.fromiter((r for _, r in locs), dtype=np.int64, count=len(locs))
        parts, order = [], []
        for src in np.unique(sources):
            sel = np.flatnonzero(sources == src)
            table = self.base if src < 0 else self.batches[src]
            if type(table) is list:
                parts.append(rows_to_table([table[r] for r in rows[sel].tolist()], self.schema))
            else:
                parts.append(self._fit(table.take(pa.array(rows[sel]))))
            order.append(sel)
        gathered = pa.concat_tables(parts)
        if len(parts) == 1:
            return gathered
        inverse = np.empty(len(locs), dtype=np.int64)
        inverse[np.concatenate(order)] = np.arange(len(locs))
        return gathered.take(pa.array(inverse))

    def _fit(self, table: pa.Table) -> pa.Table:
        if table.schema.equals(self.schema):
            return table
        return table.select(self.schema.names).cast(self.schema)

    def apply(self, plus: pa.Table | None, minus_keys: list) -> None:
        for k in minus_keys:
            self.overlay[k] = None
        if plus is not None and plus.num_rows:
            b = len(self.batches)
            self.batches.append(plus)
            for i, k in enumerate(key_list(plus, self.pk)):
                self.overlay[k] = (b, i)
        if len(self.overlay) > max(OVERLAY_KEYS_MIN, self.base.num_rows // 4):
            self.compact()

    def apply_rows(self, rows: list[tuple], keys: list, minus_keys: list) -> None:
        """Like ``apply``, for Python rows (``keys``: the key of each row)."""
        overlay = self.overlay
        for k in minus_keys:
            overlay[k] = None
        if rows:
            b = len(self.batches)
            self.batches.append(rows)
            for i, k in enumerate(keys):
                overlay[k] = (b, i)
        if len(overlay) > max(OVERLAY_KEYS_MIN, self.base.num_rows // 4):
            self.compact()

    def materialize(self) -> pa.Table:
        if not self.overlay:
            return self.base
        keys = list(self.overlay)
        kept = remove_keys(self.base, keys_table(keys, self.pk, self.schema), self.pk)
        live = [loc for loc in self.overlay.values() if loc is not None]
        added = self.gather(live)
        return pa.concat_tables([kept.cast(self.schema), added]) if kept.num_rows else added

    def compact(self) -> None:
        self.base = self.materialize()
        self._index = None
        self._base_columns = None
        self.batches = []
        self.overlay = {}


class MultisetHead:
    """A table without a key: its base plus the weighted whole-row events since."""

    def __init__(self, schema: pa.Schema, base: pa.Table) -> None:
        self.schema = schema
        self.base = base
        self.events: list[tuple[int, pa.Table]] = []

    def materialize(self) -> pa.Table:
        if self.events:
            self.base = fold_multiset(self.base, self.events, self.schema)
            self.events = []
        return self.base

    def apply(self, plus: pa.Table | None, minus: pa.Table | None) -> None:
        if minus is not None and minus.num_rows:
            self.events.append((-1, minus))
        if plus is not None and plus.num_rows:
            self.events.append((1, plus))
        if len(self.events) > EVENTS_MAX:
            self.materialize()
