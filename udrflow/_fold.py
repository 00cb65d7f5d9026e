"""The fold: a table's state after a sequence of weighted changes, a batch at a time.

DESIGN.md's invariant is ``read(T, V) == fold of the log up to V, restricted to T``.
This module is that fold, used by reads (checkpoint + log tail), by a transaction's
view of its own writes, and by checkpoints. No Python call per row: every step is an
Arrow compute kernel, a sort, or a join.

Tables with a primary key: the last event for a key decides (a +1 row sets it, a -1
removes it), so -1 events need only the key columns. Tables without a key are
multisets: each -1 row cancels one equal +1 row.

Applying a keyed table's net changes (``apply_net``, ``patch_rows``) costs what changed,
not the table: the changed keys are found by bisection in a key-sorted table (a
checkpoint) or by hashing its first key column only; a row of a changed key is replaced
where it stands, and only the batches and columns that change are copied (a chunk
decoded for one read has its fixed-width columns written in place). So a read at a
deep version costs about what a read of its checkpoint does, plus the log tail.
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


_EMPTY = np.zeros(0, dtype=np.int64)
_POS, _MATCH = "__pos", "__match"  # "__" names are reserved: no user column can be called so
# A sorted search for a composite key compares every row that shares a wanted key's first
# column value; when there are more such rows than this many per wanted key (a first column
# with few distinct values), hashing the chunk's keys is cheaper.
_CANDIDATES_PER_KEY_MAX = 64


class KeyIndex:
    """Keys to find in a table or in each chunk of one (``locate_keys``), prepared once: each
    key column as one array and, when the first one is integer-like, its values sorted for
    binary search. Keys are never null."""

    def __init__(self, columns: list[pa.Array], pk: list[str]) -> None:
        self.pk = list(pk)
        self.columns = columns
        self.size = len(columns[0]) if columns else 0
        self.types = [c.type for c in columns]
        self.order: np.ndarray | None = None
        self.first_sorted: np.ndarray | None = None
        if self.size and _integer_like(self.types[0]):
            first = _integer_values(columns[0])
            self.order = np.argsort(first, kind="stable")
            self.first_sorted = first[self.order]
        self._first_unique: pa.Array | None = None
        self._integers: dict[int, np.ndarray | None] = {}
        self._like: list[tuple[list[pa.DataType], KeyIndex]] = []
        self._lock = threading.Lock()

    @classmethod
    def of(cls, keys: pa.Table, pk: list[str]) -> KeyIndex:
        return cls([keys.column(k).combine_chunks() for k in pk], pk)

    def like(self, table: pa.Table | pa.RecordBatch) -> KeyIndex:
        """This index with its key columns of ``table``'s types (itself when they are; made
        once per set of types, as every chunk of a table asks)."""
        types = [table.schema.field(k).type for k in self.pk]
        if types == self.types:
            return self
        with self._lock:
            for known, index in self._like:
                if known == types:
                    return index
            index = KeyIndex([c.cast(t) for c, t in zip(self.columns, types, strict=True)], self.pk)
            self._like.append((types, index))
            return index

    def integer_values(self, j: int) -> np.ndarray | None:
        """Key column ``j`` as numpy integers if it is integer-like, else None."""
        with self._lock:
            if j not in self._integers:
                self._integers[j] = _integer_values(self.columns[j]) if _integer_like(self.types[j]) else None
            return self._integers[j]

    def first_unique(self) -> pa.Array:
        with self._lock:  # several workers may ask at once; computed once
            if self._first_unique is None:
                self._first_unique = pc.unique(self.columns[0])
            return self._first_unique

    def table(self) -> pa.Table:
        """The keys, each with its row number in ``_MATCH``."""
        return pa.Table.from_arrays([*self.columns, pa.array(np.arange(self.size, dtype=np.int64))],
                                    names=[*self.pk, _MATCH])


def locate_keys(table: pa.Table | pa.RecordBatch, keys: KeyIndex, *,
                table_sorted: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Where the keys of ``keys`` are in ``table`` (whose keys are unique): ``(positions,
    matches)``, int64 arrays of equal length, ``positions`` ascending: row ``positions[i]`` of
    ``table`` has the key of row ``matches[i]`` of ``keys``. Keys absent from ``table`` are not
    listed; a key listed twice in ``keys`` is matched once.

    ``table_sorted``: the table is sorted by its key (as checkpoints are) and its first key
    column is integer-like: each of its chunks is then searched by bisection on that column,
    and only the rows sharing a wanted key's first value are compared on the other key
    columns; no row of the table is hashed. Otherwise the first key column is hashed against
    the wanted keys' first values and only the rows that match it are compared on them all."""
    if isinstance(table, pa.RecordBatch):
        table = pa.Table.from_batches([table])
    if not keys.size or not table.num_rows:
        return _EMPTY, _EMPTY
    keys = keys.like(table)
    if not (table_sorted and keys.first_sorted is not None):
        return _locate_hashed(table, keys)
    columns = [table.column(k) for k in keys.pk]
    if all(c.num_chunks == 1 for c in columns):  # a decoded chunk: no realigning of batches
        parts = [[c.chunk(0) for c in columns]]
    else:
        parts = [b.columns for b in table.select(keys.pk).to_batches()]
    if len(parts) == 1:
        return _locate_sorted(parts[0], keys)
    found: list[tuple[np.ndarray, np.ndarray]] = []
    offset = 0
    for part in parts:
        n = len(part[0])
        if n:
            pos, match = _locate_sorted(part, keys)
            if pos.size:
                found.append((pos + offset, match))
        offset += n
    if not found:
        return _EMPTY, _EMPTY
    return np.concatenate([p for p, _ in found]), np.concatenate([m for _, m in found])


def _locate_sorted(batch: list[pa.Array], keys: KeyIndex) -> tuple[np.ndarray, np.ndarray]:
    """``locate_keys`` in one batch of key columns (``keys.pk``'s) sorted by key, by bisection."""
    column = _integer_values(batch[0])
    if not len(column):
        return _EMPTY, _EMPTY
    ws = keys.first_sorted
    lo_w = ws.searchsorted(column[0], side="left")
    hi_w = ws.searchsorted(column[-1], side="right")
    if lo_w >= hi_w:
        return _EMPTY, _EMPTY
    mine, which = ws[lo_w:hi_w], keys.order[lo_w:hi_w]
    lo = column.searchsorted(mine, side="left")  # < len(column): every one of mine <= its last value
    if len(keys.pk) == 1:
        hit = column[lo] == mine
        return _unique_positions(lo[hit], which[hit])
    # Rows sharing a wanted key's first value are contiguous: [lo, hi). Compare each of them
    # with that key on the other key columns.
    count = column.searchsorted(mine, side="right") - lo
    total = int(count.sum())
    if total == 0:
        return _EMPTY, _EMPTY
    if total > _CANDIDATES_PER_KEY_MAX * mine.size:
        return _locate_hashed(pa.Table.from_arrays(batch, names=keys.pk), keys)
    some = count > 0
    lo, count, which = lo[some], count[some], which[some]
    pos = np.repeat(lo - (np.cumsum(count) - count), count) + np.arange(total)
    match = np.repeat(which, count)
    same = np.ones(total, dtype=bool)
    for j in range(1, len(keys.pk)):
        wanted = keys.integer_values(j)
        if wanted is not None:
            same &= _integer_values(batch[j])[pos] == wanted[match]
        else:
            equal = pc.equal(batch[j].take(pa.array(pos)), keys.columns[j].take(pa.array(match)))
            same &= equal.to_numpy(zero_copy_only=False)
    return _unique_positions(pos[same], match[same])


def _locate_hashed(table: pa.Table, keys: KeyIndex) -> tuple[np.ndarray, np.ndarray]:
    """``locate_keys`` in any table: its first key column hashed against the keys."""
    first = table.column(keys.pk[0])
    if len(keys.pk) == 1:
        at = pc.index_in(first, value_set=keys.columns[0])  # the first match of a repeated key
        pos = np.flatnonzero(pc.is_valid(at).to_numpy(zero_copy_only=False))
        return pos, pc.drop_null(at).to_numpy().astype(np.int64)
    hit = pc.is_in(first, value_set=keys.first_unique())
    candidates = np.flatnonzero(hit.to_numpy(zero_copy_only=False))
    if not candidates.size:
        return _EMPTY, _EMPTY
    # Only the candidate rows (their first key column matches) meet the keys in a hash join.
    rows = take_rows(table.select(keys.pk), candidates).append_column(_POS, pa.array(candidates))
    joined = rows.join(keys.table(), keys=keys.pk, join_type="inner", use_threads=False)
    return _unique_positions(joined.column(_POS).to_numpy(), joined.column(_MATCH).to_numpy())


def _unique_positions(pos: np.ndarray, match: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions ascending, each once (with the first of its matches)."""
    if pos.size < 2 or (pos[1:] > pos[:-1]).all():  # the common case: already so
        return pos.astype(np.int64, copy=False), match.astype(np.int64, copy=False)
    pos, first = np.unique(pos, return_index=True)
    return pos.astype(np.int64, copy=False), match[first].astype(np.int64, copy=False)


def take_rows(table: pa.Table, positions: np.ndarray) -> pa.Table:
    """``table.take(positions)`` (ascending positions), a batch at a time: no copy of a
    batch no position falls in, nor of the whole table into one."""
    parts = []
    offset = 0
    for batch in table.to_batches():
        a, b = np.searchsorted(positions, [offset, offset + batch.num_rows])
        if b > a:
            parts.append(batch.take(pa.array(positions[a:b] - offset)))
        offset += batch.num_rows
    return pa.Table.from_batches(parts, schema=table.schema)


def drop_rows(table: pa.Table, positions: np.ndarray) -> pa.Table:
    """``table`` without the rows at ``positions`` (ascending), order kept; only the batches
    they fall in are copied, the others are kept as they are."""
    if not positions.size:
        return table
    out = []
    offset = 0
    for batch in table.to_batches():
        n = batch.num_rows
        a, b = np.searchsorted(positions, [offset, offset + n])
        if b > a:
            keep = np.ones(n, dtype=bool)
            keep[positions[a:b] - offset] = False
            batch = batch.filter(pa.array(keep))
        out.append(batch)
        offset += n
    return pa.Table.from_batches(out, schema=table.schema)


def remove_keys(table: pa.Table, keys: pa.Table, pk: list[str], *, table_sorted: bool = False) -> pa.Table:
    """Rows of ``table`` whose key is not among ``keys``, order kept. Only the batches of
    ``table`` that hold such keys are copied.

    ``table_sorted``: the table is sorted by its key, as checkpoints are (see ``locate_keys``)."""
    if keys.num_rows == 0 or table.num_rows == 0:
        return table
    positions, _ = locate_keys(table, KeyIndex.of(keys, pk), table_sorted=table_sorted)
    return drop_rows(table, positions)


def filter_columns(table: pa.Table, mask: pa.Array | pa.ChunkedArray) -> pa.Table:
    """``table.filter(mask)``, a column at a time: filtering a many-chunk table whole
    realigns the mask with every column's chunks, which costs about twice as much."""
    return pa.Table.from_arrays([column.filter(mask) for column in table.columns], schema=table.schema)


def sorted_key_like(table: pa.Table, pk: list[str]) -> bool:
    """One key column of an integer-like type (``net_keyed`` sorts it with numpy)."""
    return len(pk) == 1 and _integer_like(table.schema.field(pk[0]).type)


def first_key_integer_like(schema: pa.Schema, pk: list[str]) -> bool:
    """Whether ``locate_keys`` can search a key-sorted table of ``schema`` by bisection."""
    return bool(pk) and _integer_like(schema.field(pk[0]).type)


class NetChanges:
    """The net changes of a keyed table (``net_keyed``'s final rows and deleted keys), ready to
    be applied to a table, or to each chunk of one (``patch_rows``), then completed by
    ``with_new_rows``."""

    def __init__(self, rows: pa.Table, deleted: pa.Table, pk: list[str]) -> None:
        self.pk = list(pk)
        self.rows = _one_batch(rows)
        key_types = [rows.schema.field(k).type for k in pk]
        columns = []
        for k, t in zip(pk, key_types, strict=True):
            parts = [self.rows.column(k)]
            if deleted.num_rows:
                parts += [c.cast(t) for c in deleted.column(k).chunks]
            columns.append(pa.concat_arrays(parts) if len(parts) > 1 else parts[0])
        # Rows' keys first: a match below len(rows) replaces a row, the others delete one.
        self.keys = KeyIndex(columns, pk)
        self._lock = threading.Lock()
        self._rows_as: list[tuple[pa.Schema, _Rows]] = []  # (hashing a schema costs more than comparing)

    def rows_as(self, schema: pa.Schema) -> _Rows:
        """The rows with the columns (order, types) of ``schema``."""
        with self._lock:
            for known, rows in self._rows_as:
                if known.equals(schema):
                    return rows
            batch = self.rows if self.rows.schema.equals(schema) else self.rows.select(schema.names).cast(schema)
            rows = _Rows(batch)
            self._rows_as.append((schema, rows))
            return rows

    def with_new_rows(self, patched: pa.Table, used: np.ndarray, schema: pa.Schema) -> pa.Table:
        """``patched`` (``patch_rows``'s table; ``used``: the rows it took in, from every part)
        and the rows whose keys it did not have."""
        fresh = self.rows
        if used.size:
            keep = np.ones(fresh.num_rows, dtype=bool)
            keep[used] = False
            fresh = fresh.filter(pa.array(keep))
        if fresh.num_rows == 0:
            return _fit(patched, schema) if self.rows.num_rows else patched
        fresh = pa.Table.from_batches([fresh])
        return pa.concat_tables([_fit(patched, schema), _fit(fresh, schema)]) if patched.num_rows else fresh


class _Rows:
    """Replacing rows as one batch, and for each fixed-width column without nulls a numpy view
    of its values (``_fixed_bytes``): what ``apply_patch`` needs, worked out once."""

    def __init__(self, batch: pa.RecordBatch) -> None:
        self.batch = batch
        self.num_rows = batch.num_rows
        self.fixed = {i: view for i, column in enumerate(batch.columns)
                      if (view := _fixed_bytes(column)) is not None}


class Part:
    """One batch of a table and where the changed keys are in it (``find_changes``): the rows
    to replace (``where``, by rows ``taken`` of the changes), the rows to remove (``gone``),
    and the old values of the replaced rows, to tell which columns change (``apply_patch``)."""

    __slots__ = ("batch", "where", "taken", "gone", "old", "columns")

    def __init__(self, batch: pa.RecordBatch, positions: np.ndarray, matches: np.ndarray, rows_count: int) -> None:
        self.batch = batch
        replace = matches < rows_count
        self.where, self.taken, self.gone = positions[replace], matches[replace], positions[~replace]
        # One take of every column: cheaper than comparing (or writing) column by column here.
        self.old = batch.take(pa.array(self.where)) if self.where.size else None
        self.columns: list[int] = []  # the columns that change, once decided (``apply_patch``)


def find_changes(table: pa.Table, changes: NetChanges, *, table_sorted: bool = False) -> list[Part]:
    """``table``'s batches, each with where ``changes`` fall in it (see ``locate_keys``); the
    first step of ``patch_rows``, which may run for the chunks of one table in several
    threads before ``apply_patch`` takes them all."""
    positions, matches = locate_keys(table, changes.keys, table_sorted=table_sorted)
    n = changes.rows.num_rows
    batches = table.to_batches()
    if len(batches) == 1:
        return [Part(batches[0], positions, matches, n)]
    parts = []
    offset = 0
    for batch in batches:
        a, b = np.searchsorted(positions, [offset, offset + batch.num_rows])
        parts.append(Part(batch, positions[a:b] - offset, matches[a:b], n))
        offset += batch.num_rows
    return parts


def apply_patch(parts: list[Part], changes: NetChanges, *, owned: bool = False,
                pool=None) -> tuple[list[pa.RecordBatch], np.ndarray]:
    """The batches of ``parts`` with their changes applied (see ``patch_rows``), and the rows
    of ``changes`` they took in. Which columns change is decided for all parts at once, a
    column at a time (not a part at a time), by comparing every replaced row's old values
    with its new ones; then each part writes only those: in place if ``owned`` allows
    (see ``patch_rows``), else in a rebuilt batch. ``pool``: the rebuilds (and removals of
    rows) run there."""
    touched = [p for p in parts if p.where.size or p.gone.size]
    used = np.concatenate([p.taken for p in touched] + [_EMPTY])
    if not touched:
        return [p.batch for p in parts], used
    rows = changes.rows_as(touched[0].batch.schema)
    replacing = [p for p in touched if p.old is not None]
    if replacing:
        old = pa.Table.from_batches([p.old for p in replacing]).combine_chunks()
        new = rows.batch.take(pa.array(used))
        sizes = np.array([p.where.size for p in replacing])
        ends = np.cumsum(sizes)
        for i in range(new.num_columns):
            # Differing rows counted up to the end of each part: a part changes the column if
            # its count grows over it.
            count = np.concatenate([[0], np.cumsum(_differs(old.column(i), new.column(i)))])
            for p, changed in zip(replacing, count[ends] > count[ends - sizes], strict=True):
                if changed:
                    p.columns.append(i)
    out = [p.batch for p in parts]
    slow = []
    for k, p in enumerate(parts):
        if owned and p.columns:
            p.columns = _write_in_place(p, rows)
        if p.gone.size or p.columns:
            slow.append(k)
    if slow:
        work = [(parts[k], rows) for k in slow]
        results = list(pool.map(_rebuild, work)) if pool is not None and len(slow) > 1 else map(_rebuild, work)
        for k, batch in zip(slow, results, strict=True):
            out[k] = batch
    return out, used


def _write_in_place(part: Part, rows: _Rows) -> list[int]:
    """Write the part's changed columns that can be (fixed width, no nulls, buffer its own:
    ``_fixed_bytes``) into its own buffers: no allocation, no copy of the column. Returns the
    others, to rebuild."""
    rest = []
    for i in part.columns:
        source = rows.fixed.get(i)
        target = _fixed_bytes(part.batch.column(i), writable=True) if source is not None else None
        if target is None:
            rest.append(i)
        else:
            target[part.where] = source[part.taken]
    return rest


def _rebuild(work: tuple[Part, _Rows]) -> pa.RecordBatch:
    """A new batch for ``part``: its changed columns rebuilt with the replacing values, its
    removed rows filtered out; the other columns are kept as they are."""
    part, rows = work
    batch = part.batch
    columns = batch.columns
    if part.columns:
        flags = np.zeros(batch.num_rows, dtype=bool)
        flags[part.where] = True
        mask = pa.array(flags)
        taken = pa.array(part.taken)
        for i in part.columns:
            columns[i] = _replace_at(columns[i], mask, part.where, rows.batch.column(i).take(taken))
    if part.gone.size:
        keep = np.ones(batch.num_rows, dtype=bool)
        keep[part.gone] = False
        keep = pa.array(keep)
        columns = [c.filter(keep) for c in columns]
    return pa.RecordBatch.from_arrays(columns, schema=batch.schema)


def patch_rows(table: pa.Table, changes: NetChanges, *, table_sorted: bool = False,
               owned: bool = False) -> tuple[pa.Table, np.ndarray]:
    """``table`` (keyed, its keys unique) with ``changes`` applied to the keys it holds: a row
    whose key is among the changed rows is replaced by that row *in place* (order kept), a
    row whose key was deleted is removed. Returns the table and the positions in
    ``changes.rows`` of the rows it took in; the others are new keys (``with_new_rows``).

    Only what changed is copied: batches of ``table`` no key falls in are kept as they are,
    and in the others a column is rebuilt only if a replacing row differs from the old one
    in it (an upsert that changes one column copies that column, not the row).

    ``owned``: nothing else holds ``table``'s arrays (a chunk just decoded for this read, not
    cached): a changed fixed-width column without nulls is then written in place, with no
    copy at all. Otherwise ``table`` is never modified."""
    parts = find_changes(table, changes, table_sorted=table_sorted)
    batches, used = apply_patch(parts, changes, owned=owned)
    if all(b is p.batch for b, p in zip(batches, parts, strict=True)):
        return table, used
    return pa.Table.from_batches(batches, schema=table.schema), used


_FIXED_TYPE_IDS = {t.id for t in (pa.int8(), pa.int16(), pa.int32(), pa.int64(), pa.uint8(), pa.uint16(), pa.uint32(),
                                   pa.uint64(), pa.float16(), pa.float32(), pa.float64(), pa.decimal128(1),
                                   pa.date32(), pa.timestamp("s"))}


def _fixed_bytes(array: pa.Array, writable: bool = False) -> np.ndarray | None:
    """The values of a fixed-width array without nulls as a (rows, width) uint8 numpy view of
    its buffer, or None (another type, or nulls).

    ``writable``: for writing in place, only if the array's values buffer is its own and
    writable (a buffer decoded from a compressed chunk is; one that points into the chunk's
    bytes is not), else None. ``_patch_batch`` writes there only into arrays nobody else holds
    (``patch_rows``'s ``owned``): an upsert of many keys then changes a checkpoint's chunks
    without allocating or copying a column."""
    t = array.type
    if t.id not in _FIXED_TYPE_IDS:
        return None
    validity, data = array.buffers()[:2]
    if validity is not None or data is None:
        return None
    if writable and (not data.is_mutable or data.parent is not None):
        return None
    width = t.bit_width // 8
    view = np.frombuffer(data, dtype=np.uint8)[array.offset * width:(array.offset + len(array)) * width]
    if writable and not view.flags.writeable:
        return None
    return view.reshape(-1, width)


_BITS = {16: pa.int16(), 32: pa.int32(), 64: pa.int64()}


def _differs(a: pa.ChunkedArray | pa.Array, b: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """For each row, whether ``a`` and ``b`` hold different values (a numpy bool array): nulls
    equal nulls, floats are compared by their bits (0.0 and -0.0 differ, a NaN equals
    itself), and nested types always differ (their float fields would compare by value), so
    a column is kept as it is only when it holds the very same values."""
    t = a.type
    if pa.types.is_nested(t) or pa.types.is_dictionary(t):
        return np.ones(len(a), dtype=bool)
    if pa.types.is_floating(t):
        a, b = _bits(a), _bits(b)
    try:
        equal = pc.fill_null(pc.equal(a, b), False).to_numpy(zero_copy_only=False)
    except pa.ArrowNotImplementedError:
        return np.ones(len(a), dtype=bool)
    if a.null_count or b.null_count:
        equal |= pc.is_null(a).to_numpy(zero_copy_only=False) & pc.is_null(b).to_numpy(zero_copy_only=False)
    return ~equal


def _bits(array: pa.ChunkedArray | pa.Array) -> pa.Array:
    """A float array's values as integers of the same width (the same bits)."""
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    return array.view(_BITS[array.type.bit_width])


def _replace_at(column: pa.Array, mask: pa.Array, where: np.ndarray, values: pa.Array) -> pa.Array:
    """``column`` with the values at ``where`` (ascending; True in ``mask``) replaced by ``values``."""
    try:
        return pc.replace_with_mask(column, mask, values)
    except pa.ArrowNotImplementedError:  # lists, structs: gather from the column and the values
        n = len(column)
        index = np.arange(n, dtype=np.int64)
        index[where] = n + np.arange(len(where), dtype=np.int64)
        return pa.concat_arrays([column, values]).take(pa.array(index))


def _one_batch(table: pa.Table) -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays([c.combine_chunks() for c in table.columns], schema=table.schema)


def _integer_values(array: pa.Array) -> np.ndarray:
    """An integer-like array's values as numpy integers, without a copy (a date as its days,
    a timestamp as its ticks: the order is the same)."""
    t = array.type
    if pa.types.is_date32(t):
        array = array.view(pa.int32())
    elif pa.types.is_timestamp(t):
        array = array.view(pa.int64())
    return array.to_numpy()


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
    """``base`` with the net changes (``net_keyed``) applied: rows of keys it holds replaced
    in place (``patch_rows``), deleted keys removed, rows of new keys appended.

    ``base_sorted``: ``base`` is sorted by key, as a full checkpoint is (``locate_keys``)."""
    if rows.num_rows == 0 and deleted.num_rows == 0:
        return base
    changes = NetChanges(_fit(rows, schema), deleted, pk)
    patched, used = patch_rows(base, changes, table_sorted=base_sorted)
    return changes.with_new_rows(patched, used, schema)


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

