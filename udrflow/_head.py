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

A table keyed by one integer column (the common case) gets ``IntKeyedHead``: one Cython
hash map (``_ext/_intmap``) from key to a packed location serves base and overlay at once,
and an Arrow upsert is located and applied with whole-array calls (``locate_array``,
``gather_found``), no Python object per row.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

try:
    import cython
except ImportError:  # running from source without Cython: see udrflow/_cython_shim.py
    from udrflow import _cython_shim as cython

from udrflow._ext._intmap import IntMap
from udrflow._fold import filter_columns, fold_multiset, remove_keys, take_rows
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


@cython.cclass
class KeyedHead:
    # An extension type when compiled (see udrflow/_cython_shim.py): ``self._x`` is a field.
    schema = cython.declare(object, visibility="public")
    pk = cython.declare(object, visibility="public")
    base = cython.declare(object, visibility="public")
    _index = cython.declare(object, visibility="public")
    _source_columns = cython.declare(dict, visibility="public")
    batches = cython.declare(list, visibility="public")
    overlay = cython.declare(dict, visibility="public")

    def __init__(self, schema: pa.Schema, pk: list[str], base: pa.Table) -> None:
        self.schema = schema
        self.pk = pk
        self.base = base
        self._index: dict | None = None
        self._source_columns: dict[int, tuple] = {}  # source -> (its table, its getters), see _getters_of
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

    def locate_one(self, key):
        """``locate([key])[0]``."""
        loc = self.overlay.get(key, _MISSING)
        if loc is _MISSING:
            r = self._base_index().get(key)
            loc = None if r is None else (-1, r)
        return loc

    def rows(self, locs: list) -> list[tuple]:
        """The rows at ``locs`` (all not None) as Python tuples in the schema's column order."""
        return [self.row_at(loc) for loc in locs]

    def row_at(self, loc: tuple[int, int]) -> tuple:
        """The row at ``loc`` (not None) as a Python tuple in the schema's column order."""
        src, row = loc
        table = self.batches[src] if src >= 0 else self.base
        if type(table) is list:
            return table[row]
        hit = self._source_columns.get(src)
        getters = hit[1] if hit is not None and hit[0] is table else self._getters_of(src, table)
        return tuple([get(row) for get in getters])  # (compiled: a C loop, no map/call/repeat iterators)

    def _getters_of(self, src: int, table: pa.Table) -> list:
        """For source ``src`` (``table``: the base or an Arrow batch), one function per column
        of the schema giving the value at a row as ``as_py()`` does (see ``_value_getter``);
        built once per source (by identity: a new base or a converted batch is rebuilt)."""
        getters = [_value_getter(c) for c in self._fit(table).columns]
        self._source_columns[src] = (table, getters)
        return getters

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
        return self._gather_arrays(sources, rows)

    def gather_found(self, found) -> pa.Table:
        """``gather`` of what ``locate_found`` returned."""
        return self.gather(found)

    def locate_found(self, table: pa.Table) -> tuple[np.ndarray, list]:
        """For each row of ``table`` (holding the key columns): whether its key is present
        (a numpy bool array), and the locations of the present ones for ``gather_found``."""
        locs = self.locate(key_list(table, self.pk))
        exists = np.fromiter((loc is not None for loc in locs), dtype=bool, count=len(locs))
        return exists, [loc for loc in locs if loc is not None]

    def _gather_arrays(self, sources: np.ndarray, rows: np.ndarray) -> pa.Table:
        """The rows at (source, row) pairs given as two int64 arrays (source -1: the base)."""
        n = len(rows)
        first = sources[0]
        if (sources == first).all():
            table = self.base if first < 0 else self.batches[first]
            if type(table) is list:
                return rows_to_table([table[r] for r in rows.tolist()], self.schema)
            return self._fit(_take(table, rows))
        parts, order = [], []
        for src in np.unique(sources):
            sel = np.flatnonzero(sources == src)
            table = self.base if src < 0 else self.batches[src]
            if type(table) is list:
                parts.append(rows_to_table([table[r] for r in rows[sel].tolist()], self.schema))
            else:
                parts.append(self._fit(_take(table, rows[sel])))
            order.append(sel)
        gathered = pa.concat_tables(parts)
        inverse = np.empty(n, dtype=np.int64)
        inverse[np.concatenate(order)] = np.arange(n)
        return gathered.take(pa.array(inverse))

    def _fit(self, table: pa.Table) -> pa.Table:
        if table.schema.equals(self.schema):
            return table
        return table.select(self.schema.names).cast(self.schema)

    def apply(self, plus: pa.Table | None, minus: pa.Table | None) -> None:
        """A commit's effect: ``plus`` (whole rows whose key is now set) and ``minus`` (the
        key columns of the deleted keys)."""
        if minus is not None:
            for k in key_list(minus, self.pk):
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
        self._source_columns = {}
        self.batches = []
        self.overlay = {}


def _value_getter(column: pa.ChunkedArray):
    """``i -> column[i].as_py()``. A column without nulls in one chunk reads its buffers
    instead, without building an Arrow scalar per value: an integer or float32/float64
    column through a memoryview of its values (indexing one gives the same Python int or
    float as ``as_py()``, and costs less than ``ndarray.item``), a string column by
    decoding the bytes between two offsets (Arrow strings are valid UTF-8)."""
    array = column.chunk(0) if column.num_chunks == 1 else column
    t = array.type
    if type(array) is not pa.ChunkedArray and array.null_count == 0:
        if pa.types.is_integer(t) or pa.types.is_float32(t) or pa.types.is_float64(t):
            return memoryview(array.to_numpy(zero_copy_only=True)).__getitem__
        if pa.types.is_string(t) or pa.types.is_large_string(t):
            offsets_buffer, data_buffer = array.buffers()[1:3]
            if offsets_buffer is not None and data_buffer is not None:
                return _string_getter(array, offsets_buffer, data_buffer)

    def get(i: int):
        return array[i].as_py()

    return get


def _string_getter(array: pa.Array, offsets_buffer: pa.Buffer, data_buffer: pa.Buffer):
    offset_type = np.int64 if pa.types.is_large_string(array.type) else np.int32
    offsets = memoryview(np.frombuffer(offsets_buffer, dtype=offset_type, count=len(array) + 1,
                                       offset=array.offset * np.dtype(offset_type).itemsize))
    data = memoryview(data_buffer)

    def get(i: int) -> str:
        return str(data[offsets[i]:offsets[i + 1]], "utf-8")

    return get


def _take(table: pa.Table, rows: np.ndarray) -> pa.Table:
    """``table.take(rows)`` without copying a many-chunk table into one first (Arrow's take
    on chunked columns does): one row is a slice; more go batch by batch (``take_rows``)."""
    if len(rows) == 1:
        return table.slice(int(rows[0]), 1)
    if table.num_columns == 0 or table.column(0).num_chunks <= 1:
        return table.take(pa.array(rows))
    order = np.argsort(rows, kind="stable")
    taken = take_rows(table, rows[order])
    if (order[1:] > order[:-1]).all():
        return taken
    inverse = np.empty(len(order), dtype=np.int64)
    inverse[order] = np.arange(len(order))
    return taken.take(pa.array(inverse))


_INT_KEY_TYPES = (pa.int8(), pa.int16(), pa.int32(), pa.int64(), pa.uint8(), pa.uint16(), pa.uint32())
_SHIFT = 40                 # a packed location: (source + 1) << 40 | row; the base is source -1
_ROWS = (1 << _SHIFT) - 1
_DELETED = -2               # an IntMap value: the key was deleted since the base (absent is -1)


def keyed_head(schema: pa.Schema, pk: list[str], base: pa.Table) -> KeyedHead:
    """The head of a keyed table: ``IntKeyedHead`` for one integer key column."""
    if len(pk) == 1 and schema.field(pk[0]).type in _INT_KEY_TYPES:
        return IntKeyedHead(schema, pk, base)
    return KeyedHead(schema, pk, base)


def key_array(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """An integer key column as a contiguous int64 numpy array (keys hold no nulls)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()
    if column.type != pa.int64():
        column = column.cast(pa.int64())
    return np.ascontiguousarray(column.to_numpy(zero_copy_only=False), dtype=np.int64)


@cython.cclass
class IntKeyedHead(KeyedHead):
    """``KeyedHead`` for one integer key column: ``_map`` holds every key's packed location
    (base rows and overlay alike; ``_DELETED`` for keys deleted since the base), ``_dead``
    marks base rows replaced or deleted since, and ``_changed`` counts keys written since
    the base (the compaction trigger)."""

    _map = cython.declare(object, visibility="public")
    _dead = cython.declare(object, visibility="public")
    _changed = cython.declare(object, visibility="public")

    def __init__(self, schema: pa.Schema, pk: list[str], base: pa.Table) -> None:
        super().__init__(schema, pk, base)
        self._map: IntMap | None = None
        self._dead: np.ndarray | None = None
        self._changed = 0

    def _intmap(self) -> IntMap:
        if self._map is None:
            keys = key_array(self.base.column(self.pk[0]))
            m = IntMap(len(keys))
            m.assign_range(keys, 0)
            self._map = m
        return self._map

    def locate(self, keys: list) -> list:
        m = self._map
        get = (m if m is not None else self._intmap()).get
        out = []
        for k in keys:
            p = get(k)
            out.append(None if p < 0 else ((p >> _SHIFT) - 1, p & _ROWS))
        return out

    def locate_one(self, key):
        m = self._map
        p = (m if m is not None else self._intmap()).get(key)
        return None if p < 0 else ((p >> _SHIFT) - 1, p & _ROWS)

    def locate_found(self, table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
        packed = self._intmap().lookup(key_array(table.column(self.pk[0])))
        exists = packed >= 0
        return exists, packed[exists]

    def gather_found(self, found) -> pa.Table:
        if not len(found):
            return self.schema.empty_table()
        return self._gather_arrays((found >> _SHIFT) - 1, found & _ROWS)

    def _mark(self, keys: np.ndarray, value: int | None) -> None:
        """Point ``keys`` at ``value + i`` (the rows of a new batch) or at ``_DELETED``
        (value None), marking the base rows they replace as dead."""
        m = self._intmap()
        old = m.lookup(keys)
        hit = old[(old >= 0) & (old <= _ROWS)]
        if hit.size:
            if self._dead is None:
                self._dead = np.zeros(self.base.num_rows, dtype=bool)
            self._dead[hit] = True
        if value is None:
            m.assign_value(keys, _DELETED)
        else:
            m.assign_range(keys, value)
        self._changed += len(keys)

    def apply(self, plus: pa.Table | None, minus: pa.Table | None) -> None:
        if minus is not None and minus.num_rows:
            self._mark(key_array(minus.column(self.pk[0])), None)
        if plus is not None and plus.num_rows:
            b = len(self.batches)
            self.batches.append(plus)
            self._mark(key_array(plus.column(self.pk[0])), (b + 1) << _SHIFT)
        self._maybe_compact()

    def apply_rows(self, rows: list[tuple], keys: list, minus_keys: list) -> None:
        if len(keys) == 1 and not minus_keys:  # one row set (the single-row commit): _mark_few, unrolled
            m = self._map
            if m is None:
                m = self._intmap()
            k = keys[0]
            old = m.get(k)
            if 0 <= old <= _ROWS:
                dead = self._dead
                if dead is None:
                    dead = self._dead = np.zeros(self.base.num_rows, dtype=bool)
                dead[old] = True
            batches = self.batches
            m.set(k, (len(batches) + 1) << _SHIFT)
            batches.append(rows)
            self._changed += 1
            if self._changed > OVERLAY_KEYS_MIN and self._changed > self.base.num_rows // 4:  # _maybe_compact
                self.compact()
            return
        if len(keys) + len(minus_keys) <= 8:
            self._mark_few(rows, keys, minus_keys)
            if self._changed > OVERLAY_KEYS_MIN and self._changed > self.base.num_rows // 4:  # _maybe_compact
                self.compact()
            return
        else:
            if minus_keys:
                self._mark(np.array(minus_keys, dtype=np.int64), None)
            if rows:
                b = len(self.batches)
                self.batches.append(rows)
                self._mark(np.array(keys, dtype=np.int64), (b + 1) << _SHIFT)
        self._maybe_compact()

    def _mark_few(self, rows: list[tuple], keys: list, minus_keys: list) -> None:
        """``apply_rows`` for a handful of keys (the single-row commit): scalar map calls,
        no numpy arrays to build."""
        m = self._map
        if m is None:
            m = self._intmap()
        get, put = m.get, m.set
        dead = self._dead
        for k in minus_keys:
            old = get(k)
            if 0 <= old <= _ROWS:
                if dead is None:
                    dead = self._dead = np.zeros(self.base.num_rows, dtype=bool)
                dead[old] = True
            put(k, _DELETED)
        if rows:
            b = len(self.batches)
            self.batches.append(rows)
            start = (b + 1) << _SHIFT
            for i, k in enumerate(keys):
                old = get(k)
                if 0 <= old <= _ROWS:
                    if dead is None:
                        dead = self._dead = np.zeros(self.base.num_rows, dtype=bool)
                    dead[old] = True
                put(k, start + i)
        self._changed += len(keys) + len(minus_keys)

    def _maybe_compact(self) -> None:
        if self._changed > max(OVERLAY_KEYS_MIN, self.base.num_rows // 4):
            self.compact()

    def materialize(self) -> pa.Table:
        if not self._changed:
            return self.base
        kept = self.base if self._dead is None else filter_columns(self.base, pa.array(~self._dead))
        live = []
        for b, batch in enumerate(self.batches):
            # A batch's rows still current are those whose key still points at them.
            n = len(batch)
            if not n:
                continue
            keys = np.array([r[self._key_pos] for r in batch], dtype=np.int64) if type(batch) is list \
                else key_array(batch.column(self.pk[0]))
            start = (b + 1) << _SHIFT
            current = np.flatnonzero(self._intmap().lookup(keys) == start + np.arange(n, dtype=np.int64))
            if current.size:
                live.append(rows_to_table([batch[i] for i in current.tolist()], self.schema) if type(batch) is list
                            else self._fit(batch.take(pa.array(current))))
        parts = ([kept.cast(self.schema)] if kept.num_rows else []) + live
        return pa.concat_tables(parts) if parts else self.schema.empty_table()

    @property
    def _key_pos(self) -> int:
        return self.schema.get_field_index(self.pk[0])

    def compact(self) -> None:
        self.base = self.materialize()
        self._map = None
        self._dead = None
        self._changed = 0
        self._source_columns = {}
        self.batches = []


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
