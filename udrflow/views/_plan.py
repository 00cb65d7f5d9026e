"""View definitions: a relational builder whose every operator has two implementations.

``db.stream("orders").filter(col("amount") > 0).group_by("customer").agg(total=sum_("amount"))``
builds a tree of nodes. Each node knows:

- its output ``schema`` (derived at definition time, so a bad column name fails then);
- ``batch(inputs)``: the definition evaluated in batch by DataFusion on whole tables (the
  oracle of DESIGN.md: the incremental result must equal it at every version);
- ``step(state, deltas)``: its incremental rule, mapping the weighted change batches of
  its inputs to its own change batch, a batch at a time with Arrow kernels and numpy
  (Python work is per changed *group* or *key*, never per row, except in min/max and
  count-distinct, which keep a multiset of values per group);
- ``to_json`` / ``from_json``: the definition as stored in the log.

A change batch here (a "delta") is an Arrow table of the node's columns plus ``__weight``
(int64; +n inserts n copies of the row, -n deletes them). Deltas are Z-sets: adding two
deltas is concatenation, and ``consolidate`` sums the weights of equal rows.

A delta of a few rows made from Python values (a source's batch of a small commit, a
group-by or join step over a few rows) is a :class:`SmallDelta` instead: the same columns
as Python lists, built into an Arrow table only when an operator asks for one
(``Stream.out``). The operators with a row-at-a-time path for a few rows (``GroupBy``,
``Join``'s probe) and the sink take it as it is (``Stream.out_any``, ``pycol``), so a
single-row update crosses a view without building any Arrow object.
"""

from __future__ import annotations

import datetime as dt
import importlib
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from udrflow._changefeed import py_array
from udrflow.errors import SchemaError, UsageError
from udrflow.views import _exact
from udrflow.views._expr import Expr, _quote, as_expr

W = "__weight"
_INT64 = pa.int64()
JOIN_SIDE_COMPACT_ROWS_MIN = 65536        # a probed join side is consolidated past 2x live + this
JOIN_SIDE_UNPROBED_ROWS_MAX = 4_000_000   # ... and an unprobed one past 8x live + this (memory bound)
JOIN_PROBE_SMALL_ROWS = 256               # a change this small probes the other side's key index
JOIN_PROBE_PY_ROWS = 16                   # ... and takes this few matched rows as Python values
JOIN_SIDE_ROW_CACHE_MAX = 65536           # rows of a side kept as Python values for such probes
AGG_FUNCS = ("count", "sum", "min", "max", "avg", "count_distinct")
JOIN_KINDS = ("inner", "left")


# ---- deltas ------------------------------------------------------------------------------


SMALL_DELTA_ROWS_MAX = 64  # a delta built from Python values stays Python up to this many rows


class SmallDelta:
    """A delta of ``num_rows`` rows as Python values: ``columns`` maps each name of
    ``schema`` (weight last) to its list of values. ``table()`` builds (once) the Arrow
    table every other operator takes; until then it costs no Arrow object (pyarrow spends
    microseconds on each table, array and type wrapper it makes, several per operator)."""

    __slots__ = ("schema", "columns", "num_rows", "_table")

    def __init__(self, schema: pa.Schema, columns: dict[str, list], num_rows: int) -> None:
        self.schema = schema
        self.columns = columns
        self.num_rows = num_rows
        self._table = None

    def table(self) -> pa.Table:
        t = self._table
        if t is None:
            names = list(self.columns)
            lists = list(self.columns.values())
            arrays = [py_array(values, typ) for values, typ in zip(lists, schema_types(self.schema), strict=True)]
            t = self._table = remember_columns(pa.Table.from_arrays(arrays, schema=self.schema), names, lists)
        return t

    def take(self, rows: list[int]) -> SmallDelta:
        return SmallDelta(self.schema, {n: [c[i] for i in rows] for n, c in self.columns.items()}, len(rows))

    def __reduce__(self):
        # (Pickled, e.g. in a join side of a state snapshot, as the Arrow table it stands for.)
        return (_identity, (self.table(),))

    def __repr__(self) -> str:
        return f"SmallDelta({self.num_rows} rows: {', '.join(self.columns)})"


def _identity(x):
    return x


def arrow(delta) -> pa.Table:
    """``delta`` as an Arrow table (a :class:`SmallDelta` is built into one)."""
    return delta.table() if type(delta) is SmallDelta else delta


def concat_deltas(parts: list) -> pa.Table | SmallDelta:
    """The sum of ``parts`` (deltas of one schema): Python lists joined while they are all
    small, else one Arrow table."""
    if len(parts) == 1:
        return parts[0]
    if all(type(p) is SmallDelta for p in parts):
        first = parts[0]
        if (sum(p.num_rows for p in parts) <= SMALL_DELTA_ROWS_MAX
                and all(p.schema is first.schema or p.schema.equals(first.schema) for p in parts)):
            return _joined(parts)
    return pa.concat_tables([arrow(p) for p in parts])


def _joined(parts: list[SmallDelta]) -> SmallDelta:
    """Small deltas of one schema as one (their lists joined)."""
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    return SmallDelta(first.schema, {name: [v for p in parts for v in p.columns[name]] for name in first.columns},
                      sum(p.num_rows for p in parts))


def _arrow_runs(chunks: list) -> list[pa.Table]:
    """``chunks`` as Arrow tables, each run of small deltas joined into one table first."""
    out: list[pa.Table] = []
    run: list[SmallDelta] = []
    for c in chunks + [None]:
        if type(c) is SmallDelta and (not run or c.schema is run[0].schema):
            run.append(c)
            continue
        if run:
            out.append(_joined(run).table())
            run = []
        if type(c) is SmallDelta:
            run.append(c)
        elif c is not None:
            out.append(c)
    return out


_TYPES_BY_ID: dict[int, tuple[pa.Schema, list]] = {}


def schema_types(schema: pa.Schema) -> list[pa.DataType]:
    """``schema.types``, once per schema object (each call makes new type wrappers)."""
    found = _TYPES_BY_ID.get(id(schema))
    if found is not None and found[0] is schema:
        return found[1]
    if len(_TYPES_BY_ID) > 1024:
        _TYPES_BY_ID.clear()
    types = schema.types
    _TYPES_BY_ID[id(schema)] = (schema, types)  # holds the schema, so its id() is not reused
    return types


_EMPTY: dict[pa.Schema, pa.Table] = {}
_EMPTY_BY_ID: dict[int, tuple[pa.Schema, pa.Table]] = {}


def empty_delta(schema: pa.Schema) -> pa.Table:
    """A delta with no rows (cached per schema: building an empty table costs ~100 us, and
    tables are immutable). Looked up by the schema object first: hashing a schema costs
    several microseconds, and a node asks with its own schema at every step."""
    found = _EMPTY_BY_ID.get(id(schema))
    if found is not None and found[0] is schema:
        return found[1]
    e = _EMPTY.get(schema)
    if e is None:
        if len(_EMPTY) > 1024:
            _EMPTY.clear()
        e = _EMPTY[schema] = schema.append(pa.field(W, pa.int64())).empty_table()
    if len(_EMPTY_BY_ID) > 1024:
        _EMPTY_BY_ID.clear()
    _EMPTY_BY_ID[id(schema)] = (schema, e)  # holds the schema, so its id() is not reused
    return e


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` with exactly ``schema``: relabelled when only NOT NULL flags differ (no
    copy, no cast kernel), else cast."""
    if table.schema.equals(schema):
        return table
    if table.schema.names == schema.names and table.schema.types == schema.types:
        return pa.Table.from_arrays(table.columns, schema=schema)
    return table.select(schema.names).cast(schema)


def with_weight(table: pa.Table, weight: int | np.ndarray) -> pa.Table:
    w = np.full(table.num_rows, weight, np.int64) if np.isscalar(weight) else weight
    return table.append_column(pa.field(W, pa.int64()), pa.array(w, pa.int64()))


def _groupable(schema: pa.Schema) -> bool:
    return all(not (pa.types.is_nested(f.type) or pa.types.is_dictionary(f.type)) for f in schema)


GROUP_SMALL_ROWS = 8  # a group-by step over at most this many changed rows runs a row at a time
_SMALL_ROWS = 256  # below this, Python beats launching an Arrow hash aggregation


def consolidate(delta: pa.Table) -> pa.Table:
    """Sum the weights of equal rows and drop rows whose weight is 0."""
    if delta.num_rows == 0:
        return delta
    if delta.num_rows <= _SMALL_ROWS:
        return _consolidate_small(delta)
    data = [n for n in delta.column_names if n != W]
    if not data or not _groupable(delta.schema.remove(delta.schema.get_field_index(W))):
        return delta.filter(pc.not_equal(delta.column(W), 0))
    summed = delta.group_by(data, use_threads=False).aggregate([(W, "sum")])
    summed = summed.rename_columns(data + [W]).select(delta.column_names)
    return summed.filter(pc.not_equal(summed.column(W), 0)).cast(delta.schema)


def _consolidate_small(delta: pa.Table) -> pa.Table:
    data = delta.drop_columns([W])
    rows = list(zip(*(c.to_pylist() for c in data.columns), strict=True)) if data.num_columns else []
    sums: dict = {}
    try:
        for row, w in zip(rows, delta.column(W).to_pylist(), strict=True):
            sums[row] = sums.get(row, 0) + w
    except TypeError:  # unhashable values (lists, maps): drop only the zero weights
        return delta.filter(pc.not_equal(delta.column(W), 0))
    if len(sums) == len(rows) and all(sums.values()):
        return delta  # nothing to merge
    first: dict = {}
    for i, row in enumerate(rows):
        first.setdefault(row, i)
    keep = [first[r] for r, w in sums.items() if w]
    out = data.take(pa.array(keep, pa.int64()))
    return out.append_column(pa.field(W, pa.int64()), pa.array([w for w in sums.values() if w], pa.int64()))


def expand(delta: pa.Table) -> tuple[pa.Table, pa.Table]:
    """(plus, minus): the rows to insert and to delete, a copy per unit of weight."""
    w = delta.column(W).to_numpy()
    data = delta.drop_columns([W])
    pos, neg = np.flatnonzero(w > 0), np.flatnonzero(w < 0)
    plus = data.take(np.repeat(pos, w[pos])) if len(pos) else data.schema.empty_table()
    minus = data.take(np.repeat(neg, -w[neg])) if len(neg) else data.schema.empty_table()
    return plus, minus


# The Python values of small deltas built from Python values (a source's batch of a small
# commit, a small group-by or join step): the next operator, and the sink, read them back
# as Python, and ``ChunkedArray.to_pylist`` costs several microseconds a column. Keyed by
# id() with the table held, so an id is never reused while cached; tables are immutable.
_PY_COLUMNS: dict[int, tuple[pa.Table, dict[str, list]]] = {}
_PY_COLUMNS_MAX = 256
_PY_COLUMNS_ROWS_MAX = 64


def remember_columns(table: pa.Table, names: list[str], columns: list[list]) -> pa.Table:
    """Record ``columns`` (one list per name of ``names``: the table's columns) as the
    Python values of ``table``; returns ``table``."""
    if table.num_rows <= _PY_COLUMNS_ROWS_MAX:
        if len(_PY_COLUMNS) >= _PY_COLUMNS_MAX:
            _PY_COLUMNS.clear()
        _PY_COLUMNS[id(table)] = (table, dict(zip(names, columns, strict=True)))
    return table


def _remembered(table: pa.Table) -> dict[str, list] | None:
    hit = _PY_COLUMNS.get(id(table))
    return hit[1] if hit is not None and hit[0] is table else None


def pycol(table: pa.Table | SmallDelta, name: str) -> list:
    """``table.column(name).to_pylist()`` (from the recorded values when there are any)."""
    if type(table) is SmallDelta:
        return table.columns[name]
    hit = _PY_COLUMNS.get(id(table))
    if hit is not None and hit[0] is table:
        return hit[1][name]
    return table.column(name).to_pylist()


def _key_list(table: pa.Table, keys: list[str]) -> list:
    if len(keys) == 1:
        return pycol(table, keys[0])
    return list(zip(*(pycol(table, k) for k in keys), strict=True))


def _has_null_key(key, n_keys: int) -> bool:
    return key is None if n_keys == 1 else any(v is None for v in key)


# ---- nodes -------------------------------------------------------------------------------


class Stream:
    """A node of a view definition; every builder method returns a new Stream."""

    kind = "?"
    schema: pa.Schema
    children: tuple[Stream, ...] = ()

    # builder
    def filter(self, predicate: Expr) -> Stream:
        """Keep the rows where ``predicate`` is true (null counts as false, as in SQL)."""
        return Filter(self, predicate)

    def select(self, *names: str, **exprs: Expr) -> Stream:
        """Keep the named columns, and add computed ones: ``select("id", total=col("a") * 2)``."""
        return Project(self, {**{n: as_expr(n) for n in names}, **exprs}, keep=False)

    def with_columns(self, **exprs: Expr) -> Stream:
        """All columns plus computed ones (a name already present is replaced)."""
        return Project(self, exprs, keep=True)

    def map(self, fn, *, name: str | None = None) -> Stream:
        """Apply ``fn(pyarrow.Table) -> pyarrow.Table`` to each change batch (without the
        weights). ``fn`` must work row by row: the same row always gives the same output
        row, and it returns as many rows as it got. It must be a module-level function
        (stored in the log by its import path)."""
        return Map(self, fn)

    def group_by(self, *keys: str) -> GroupBy:
        """Group by ``keys``; finish with ``.agg(name=sum_("col"), n=count(), ...)``."""
        return GroupBy(self, list(keys), {})

    def join(self, other: Stream, on: str | list[str], how: str = "inner") -> Stream:
        """Equi-join on the columns ``on`` (same names on both sides); ``how``: ``inner`` or
        ``left``. The output has the left columns then the right's other columns."""
        return Join(self, other, [on] if isinstance(on, str) else list(on), how)

    def distinct(self) -> Stream:
        """Each distinct row once."""
        return GroupBy(self, list(self.schema.names), {})

    def union(self, other: Stream) -> Stream:
        """All rows of both (UNION ALL); the schemas must be equal. ``.union(o).distinct()``
        for UNION."""
        return Union(self, other)

    def window(self, column: str, every: dt.timedelta, *, name: str = "window_start") -> Stream:
        """Tumbling windows: add ``name``, the start of the window of length ``every`` that
        holds the timestamp ``column`` (windows start at the Unix epoch). Group by it next."""
        return Project(self, {name: Expr("tumble", (as_expr(column), _every_us(every)))}, keep=True)

    # incremental evaluation
    nid = -1  # stable number of the node in its view (set by number_nodes): keys its state

    def out(self, state: dict, deltas: dict[str, pa.Table]) -> pa.Table:
        """This node's change batch for one step as an Arrow table, computed once per step
        even when the node is shared by several parents."""
        result = self.out_any(state, deltas)
        return result.table() if type(result) is SmallDelta else result

    def out_any(self, state: dict, deltas: dict[str, pa.Table]) -> pa.Table | SmallDelta:
        """``out``, or a :class:`SmallDelta` when the node made one: for the operators that
        read a few changed rows as Python values."""
        memo = state.setdefault("__memo", {})
        result = memo.get(self.nid)
        if result is None:
            result = memo[self.nid] = self.step(state, deltas)
        return result

    # shared
    def inputs(self) -> set[str]:
        out: set[str] = set()
        for c in self.children:
            out |= c.inputs()
        return out

    def primary_key(self) -> list[str]:
        return []

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(self.schema.names)})"


def _every_us(every) -> int:
    if not isinstance(every, dt.timedelta) or every <= dt.timedelta(0):
        raise UsageError(f"window(every=...) must be a positive datetime.timedelta: got {every!r}")
    return every // dt.timedelta(microseconds=1)


class Source(Stream):
    kind = "source"

    def __init__(self, table: str, schema: pa.Schema) -> None:
        self.table = table
        # The table's own NOT NULL flags are kept (the engine refuses nulls there), so a
        # group-by on NOT NULL columns can key the view's table; every change batch of the
        # source is conformed to this schema (``conform``).
        self.schema = schema

    def inputs(self) -> set[str]:
        return {self.table}

    def step(self, state, deltas: dict[str, pa.Table]) -> pa.Table:
        d = deltas.get(self.table)
        return empty_delta(self.schema) if d is None else d

    def batch(self, ctx) -> pa.Table:
        return ctx.tables[self.table].select(self.schema.names).cast(self.schema)

    def to_json(self):
        return {"kind": self.kind, "table": self.table, "schema": _schema_json(self.schema)}


class Filter(Stream):
    kind = "filter"

    def __init__(self, child: Stream, predicate: Expr) -> None:
        if not isinstance(predicate, Expr):
            raise UsageError(f"filter() takes an expression such as col('x') > 0: got {predicate!r}")
        self.children = (child,)
        self.predicate = predicate
        kind = predicate.eval(child.schema.empty_table()).type
        if not pa.types.is_boolean(kind):
            raise SchemaError(f"filter predicate {predicate.sql()} must be boolean: got {kind}")
        self.schema = child.schema

    def step(self, state, deltas) -> pa.Table:
        d = self.children[0].out(state, deltas)
        if d.num_rows == 0:
            return d
        return d.filter(pc.fill_null(self.predicate.eval(d), False))

    def batch(self, ctx) -> pa.Table:
        return ctx.sql(f"SELECT * FROM {{0}} WHERE {self.predicate.sql()}", [self.children[0].batch(ctx)])

    def to_json(self):
        return {"kind": self.kind, "child": self.children[0].to_json(), "predicate": self.predicate.to_json()}


class Project(Stream):
    kind = "project"

    def __init__(self, child: Stream, exprs: dict[str, Expr], keep: bool) -> None:
        self.children = (child,)
        self.exprs = {n: as_expr(e) for n, e in exprs.items()}
        self.keep = keep
        if W in self.exprs:
            raise SchemaError(f"column name {W!r} is reserved for change weights")
        self.schema = self._apply(child.schema.empty_table()).schema

    def _apply(self, table: pa.Table) -> pa.Table:
        cols: dict[str, Any] = {}
        if self.keep:
            for n in table.column_names:
                if n != W:
                    cols[n] = table.column(n)
        for n, e in self.exprs.items():
            cols[n] = e.eval(table)
        return pa.table(cols) if cols else pa.table({})

    def step(self, state, deltas) -> pa.Table:
        d = self.children[0].out(state, deltas)
        out = self._apply(d)
        if out.num_rows != d.num_rows:  # only constant expressions: broadcast
            out = pa.table({n: pa.repeat(c[0], d.num_rows) if len(c) else c for n, c in
                            zip(out.column_names, out.columns, strict=True)})
        return out.append_column(pa.field(W, pa.int64()), d.column(W)).cast(
            self.schema.append(pa.field(W, pa.int64())))

    def batch(self, ctx) -> pa.Table:
        items = []
        if self.keep:
            items += [_quote(n) for n in self.children[0].schema.names if n not in self.exprs]
        items += [f"{e.sql()} AS {_quote(n)}" for n, e in self.exprs.items()]
        out = ctx.sql(f"SELECT {', '.join(items)} FROM {{0}}", [self.children[0].batch(ctx)])
        return out.select(self.schema.names).cast(self.schema)  # DataFusion may pick string_view etc.

    def to_json(self):
        return {"kind": self.kind, "child": self.children[0].to_json(), "keep": self.keep,
                "exprs": [[n, e.to_json()] for n, e in self.exprs.items()]}


class Map(Stream):
    kind = "map"

    def __init__(self, child: Stream, fn) -> None:
        self.children = (child,)
        self.fn = fn
        self.fn_path = _import_path(fn)
        out = self._call(child.schema.empty_table())
        self.schema = out.schema

    def _call(self, table: pa.Table) -> pa.Table:
        out = self.fn(table)
        if isinstance(out, pa.RecordBatch):
            out = pa.Table.from_batches([out])
        if not isinstance(out, pa.Table):
            raise SchemaError(f"map function {self.fn_path} must return a pyarrow.Table: got {type(out).__name__}")
        if out.num_rows != table.num_rows:
            raise SchemaError(f"map function {self.fn_path} must return one row per input row: got "
                              f"{out.num_rows} rows for {table.num_rows}")
        return out

    def step(self, state, deltas) -> pa.Table:
        d = self.children[0].out(state, deltas)
        out = self._call(d.drop_columns([W]))
        return out.cast(self.schema).append_column(pa.field(W, pa.int64()), d.column(W))

    def batch(self, ctx) -> pa.Table:
        return self._call(self.children[0].batch(ctx)).cast(self.schema)

    def to_json(self):
        return {"kind": self.kind, "child": self.children[0].to_json(), "fn": self.fn_path}


def _import_path(fn) -> str:
    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", "")
    if not module or not qualname or "<" in qualname or module == "__main__":
        what = ("a lambda" if "<lambda>" in qualname else "a nested function" if "<" in qualname
                else "a function of the __main__ script" if module == "__main__" else repr(fn))
        raise UsageError(f"map() takes a function defined at the top level of an importable module (the view "
                         f"stores its import path, 'module:name', in the log and imports it again on every run): "
                         f"got {what}. Define it in a module of yours, e.g. in myviews.py "
                         f"'def add_band(table: pyarrow.Table) -> pyarrow.Table: ...', and pass myviews.add_band; "
                         f"a column computed by an expression needs no function: .with_columns(name=col(...) * 2)")
    return f"{module}:{qualname}"


def _import_fn(path: str):
    module, _, qualname = path.partition(":")
    obj = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


class Union(Stream):
    kind = "union"

    def __init__(self, left: Stream, right: Stream) -> None:
        if left.schema.names != right.schema.names or left.schema.types != right.schema.types:
            raise SchemaError(f"union needs equal schemas: left has {_fmt(left.schema)}, right has "
                              f"{_fmt(right.schema)}")
        self.children = (left, right)
        # NOT NULL only where both sides are.
        self.schema = pa.schema([a.with_nullable(a.nullable or b.nullable)
                                 for a, b in zip(left.schema, right.schema, strict=True)])

    def step(self, state, deltas) -> pa.Table:
        out = self._with_weight_schema()
        return pa.concat_tables([conform(c.out(state, deltas), out) for c in self.children])

    def _with_weight_schema(self) -> pa.Schema:
        e = self.__dict__.get("_out_schema")
        if e is None:
            e = self.__dict__["_out_schema"] = empty_delta(self.schema).schema
        return e

    def batch(self, ctx) -> pa.Table:
        return ctx.sql("SELECT * FROM {0} UNION ALL SELECT * FROM {1}",
                       [c.batch(ctx) for c in self.children]).select(self.schema.names)

    def to_json(self):
        return {"kind": self.kind, "children": [c.to_json() for c in self.children]}


def _fmt(schema: pa.Schema) -> str:
    return "(" + ", ".join(f"{f.name} {f.type}" for f in schema) + ")"


# ---- aggregation -------------------------------------------------------------------------


class Agg:
    """An aggregate: ``sum_("amount")``, ``count()``, ``avg("x")`` ... (see the functions below)."""

    __slots__ = ("func", "column")

    def __init__(self, func: str, column: str | None) -> None:
        self.func = func
        self.column = column

    def sql(self) -> str:
        if self.func == "count":
            return "count(*)" if self.column is None else f"count({_quote(self.column)})"
        if self.func == "count_distinct":
            return f"count(DISTINCT {_quote(self.column)})"
        return f"{self.func}({_quote(self.column)})"


def count(column: str | None = None) -> Agg:
    """Rows in the group (``count()``), or non-null values of ``column``."""
    return Agg("count", column)


def sum_(column: str) -> Agg:
    return Agg("sum", column)


def min_(column: str) -> Agg:
    return Agg("min", column)


def max_(column: str) -> Agg:
    return Agg("max", column)


def avg(column: str) -> Agg:
    return Agg("avg", column)


def count_distinct(column: str) -> Agg:
    return Agg("count_distinct", column)


class _GroupState:
    """The state of one group-by: a slot per group, numpy arrays of running values."""

    def __init__(self, n_aggs: int) -> None:
        self.index: dict = {}
        self.keys: list = []                        # slot -> key (scalar or tuple)
        self.rows = np.zeros(0, np.int64)           # rows in the group (sum of weights)
        self.sums: list[np.ndarray | None] = [None] * n_aggs     # sum of values (sum, avg)
        self.nonnull: list[np.ndarray | None] = [None] * n_aggs  # non-null values (count(col), sum, avg)
        self.bags: list[list | None] = [None] * n_aggs    # min/max/count_distinct: slot -> {value: count}
        self.extreme: list[list | None] = [None] * n_aggs  # min/max: slot -> current value
        # Float sum/avg: the exact sum (see _exact.py) and the +inf/-inf/NaN counts per
        # slot; ``sums`` then holds that sum rounded once, the same whatever the path.
        self.exact: list[list | None] = [None] * n_aggs
        self.special: list[np.ndarray | None] = [None] * n_aggs

    def __setstate__(self, state: dict) -> None:
        # A state snapshotted before float sums were exact: start them from the float sums.
        self.__dict__.update(state)
        if "exact" not in state:
            self.exact = [None if a is None or a.dtype != np.float64 else [_exact.exact_of(x) if np.isfinite(x) else 0
                                                                          for x in a.tolist()] for a in self.sums]
            self.special = [None if e is None else np.zeros((len(e), 3), np.int64) for e in self.exact]

    def grow(self, n: int) -> None:
        def g(a):
            return None if a is None else np.concatenate([a, np.zeros(n, a.dtype)])
        self.rows = g(self.rows)
        self.sums = [g(a) for a in self.sums]
        self.nonnull = [g(a) for a in self.nonnull]
        for e in self.exact:
            if e is not None:
                e.extend([0] * n)
        self.special = [None if a is None else np.concatenate([a, np.zeros((n, 3), np.int64)])
                        for a in self.special]
        for lst in (self.bags, self.extreme):
            for b in lst:
                if b is not None:
                    b.extend([{} if lst is self.bags else None for _ in range(n)])


class GroupBy(Stream):
    kind = "group_by"

    def __init__(self, child: Stream, keys: list[str], aggs: dict[str, Agg]) -> None:
        self.children = (child,)
        for k in keys:
            if k not in child.schema.names:
                raise SchemaError(f"group_by key {k!r} is not a column: expected one of {child.schema.names}")
        if not keys:
            raise UsageError("group_by needs at least one key column")
        self.keys = keys
        self.aggs = aggs
        fields = [child.schema.field(k) for k in keys]
        for name, agg in aggs.items():
            if not isinstance(agg, Agg):
                raise UsageError(f"aggregate {name!r} must be count(), sum_(), min_(), max_(), avg() or "
                                 f"count_distinct(): got {agg!r}")
            if name in keys or name == W:
                raise SchemaError(f"aggregate name {name!r} clashes with a key column or {W!r}")
            t = None
            if agg.column is not None:
                if agg.column not in child.schema.names:
                    raise SchemaError(f"aggregate {name}={agg.func}({agg.column!r}): no such column: expected one "
                                      f"of {child.schema.names}")
                t = child.schema.field(agg.column).type
            if agg.func in ("count", "count_distinct"):
                out = pa.int64()
            elif agg.func == "avg":
                _numeric(t, name, agg)
                out = pa.float64()
            elif agg.func == "sum":
                _numeric(t, name, agg)
                out = pa.float64() if pa.types.is_floating(t) else pa.int64()
            else:
                out = t
            fields.append(pa.field(name, out))
        self.schema = pa.schema(fields)

    def agg(self, **aggs: Agg) -> GroupBy:
        return GroupBy(self.children[0], self.keys, {**self.aggs, **aggs})

    def primary_key(self) -> list[str]:
        # A table's primary-key columns cannot hold null, but SQL groups null keys into a
        # group of their own: only keys that cannot be null may key the view's table.
        if any(self.schema.field(k).nullable for k in self.keys):
            return []
        return list(self.keys)

    def _state(self, state) -> _GroupState:
        s = state.get(self.nid)
        if s is None:
            s = _GroupState(len(self.aggs))
            for i, agg in enumerate(self.aggs.values()):
                if agg.func in ("sum", "avg"):
                    t = self.children[0].schema.field(agg.column).type
                    s.sums[i] = np.zeros(0, np.float64 if pa.types.is_floating(t) or agg.func == "avg" else np.int64)
                    if pa.types.is_floating(t):
                        s.exact[i] = []
                        s.special[i] = np.zeros((0, 3), np.int64)
                if agg.func in ("sum", "avg", "count") and agg.column is not None:
                    s.nonnull[i] = np.zeros(0, np.int64)
                if agg.func in ("min", "max", "count_distinct"):
                    s.bags[i] = []
                    s.extreme[i] = []
            state[self.nid] = s
        return s

    def step(self, state, deltas) -> pa.Table | SmallDelta:
        d = self.children[0].out_any(state, deltas)
        s = self._state(state)
        if d.num_rows == 0:
            return self._empty()
        if d.num_rows <= GROUP_SMALL_ROWS and self._scalar_ok:
            return self._step_small(s, d)
        d = arrow(d)
        # Every row's group slot (new groups get one), then numpy scatter-adds of the
        # weighted contributions: no per-row Python, and no hash aggregation to launch.
        row_slots = np.asarray(self._slots(s, _key_list(d, self.keys)), np.int64)
        slots = np.unique(row_slots)
        w = d.column(W).to_numpy()
        old_rows = s.rows[slots].copy()
        old_values = self._values(s, slots)
        np.add.at(s.rows, row_slots, w)
        for i, agg in enumerate(self.aggs.values()):
            if s.nonnull[i] is not None:
                v = d.column(agg.column)
                present = pc.is_valid(v).to_numpy(zero_copy_only=False)
                np.add.at(s.nonnull[i], row_slots, np.where(present, w, 0))
                if s.exact[i] is not None:
                    vals = pc.fill_null(v, 0).to_numpy(zero_copy_only=False)
                    _exact.add_batch(s.exact[i], s.special[i], row_slots, vals, present, w)
                    self._round(s, i, slots.tolist())
                elif s.sums[i] is not None:
                    vals = pc.fill_null(v, 0).to_numpy(zero_copy_only=False).astype(s.sums[i].dtype)
                    np.add.at(s.sums[i], row_slots, vals * w)
            if s.bags[i] is not None:
                self._update_bags(s, i, agg, d, row_slots)
        new_rows = s.rows[slots]
        if (new_rows < 0).any():
            raise SchemaError(f"group_by state went negative for {int((new_rows < 0).sum())} groups: a change "
                              f"deleted rows that were never inserted")
        new_values = self._values(s, slots)
        was, now = old_rows > 0, new_rows > 0
        # A group whose aggregates did not change (its changes cancelled out) emits nothing:
        # then the group-by's output needs no consolidation (no row repeats in it).
        same = was & now
        for old, new in zip(old_values, new_values, strict=True):
            if not same.any():
                break
            eq = pc.fill_null(pc.equal(old, new), False).to_numpy(zero_copy_only=False)
            both_null = pc.and_(pc.is_null(old), pc.is_null(new)).to_numpy(zero_copy_only=False)
            same &= eq | both_null
        if same.any():
            was, now = was & ~same, now & ~same
        out = []
        if was.any():
            out.append(self._rows(s, slots[was], [v.filter(pa.array(was)) for v in old_values], -1))
        if now.any():
            out.append(self._rows(s, slots[now], [v.filter(pa.array(now)) for v in new_values], 1))
        # An emptied group gets only its -1 row (it disappears); its slot stays for the same key.
        return pa.concat_tables(out) if out else self._empty()

    @property
    def _scalar_ok(self) -> bool:
        """Whether ``_step_small`` applies: every aggregate is a running count/sum/avg."""
        ok = self.__dict__.get("_scalar")
        if ok is None:
            ok = self.__dict__["_scalar"] = all(a.func in ("count", "sum", "avg") for a in self.aggs.values())
        return ok

    def _small_plan(self) -> tuple:
        """What ``_step_small`` needs of the node, computed once: key and aggregate output
        types, (index, func, column) per aggregate, the output schema with the weight."""
        plan = self.__dict__.get("_small")
        if plan is None:
            n_keys = len(self.keys)
            out_schema = self._empty().schema
            plan = self.__dict__["_small"] = (
                [self.schema.field(i).type for i in range(n_keys)],
                [self.schema.field(n_keys + i).type for i in range(len(self.aggs))],
                [(i, agg.func, agg.column) for i, agg in enumerate(self.aggs.values())],
                out_schema, out_schema.names)
        return plan

    def _step_small(self, s: _GroupState, d: pa.Table | SmallDelta) -> pa.Table | SmallDelta:
        """``step`` for a few changed rows (a single update): the same arithmetic on the same
        numpy state a row at a time, with no Arrow kernel per aggregate (launching those
        costs more than the work for a handful of rows)."""
        key_types, agg_types, aggs, out_schema, out_names = self._small_plan()
        slots = self._slots(s, _key_list(d, self.keys))
        w = pycol(d, W)
        changed = sorted(set(slots))
        rows = s.rows
        before = {j: (rows.item(j), self._scalar_values(s, j, aggs)) for j in changed}
        for slot, dw in zip(slots, w, strict=True):
            rows[slot] += dw
        for i, _func, column in aggs:
            nonnull = s.nonnull[i]
            if nonnull is None:
                continue
            sums = s.sums[i]
            exact = s.exact[i]
            for slot, value, dw in zip(slots, pycol(d, column), w, strict=True):
                if value is not None:
                    nonnull[slot] += dw
                    if exact is not None:
                        _exact.add_one(exact, s.special[i], slot, float(value), dw)
                    elif sums is not None:
                        sums[slot] += value * dw
            if exact is not None:
                self._round(s, i, changed)
        minus, plus = [], []
        for j in changed:
            old_n, old_values = before[j]
            new_n = rows.item(j)
            if new_n < 0:
                gone = sum(1 for j in changed if rows.item(j) < 0)
                raise SchemaError(f"group_by state went negative for {gone} groups: a change deleted rows that "
                                  f"were never inserted")
            new_values = self._scalar_values(s, j, aggs)
            if old_n > 0 and new_n > 0 and old_values == new_values:
                continue
            if old_n > 0:
                minus.append((j, old_values))
            if new_n > 0:
                plus.append((j, new_values))
        entries = minus + plus
        if not entries:
            return self._empty()
        group_keys = s.keys
        keys = [group_keys[j] for j, _ in entries]
        lists = [keys] if len(key_types) == 1 else [[key[i] for key in keys] for i in range(len(key_types))]
        lists += [[values[i] for _, values in entries] for i in range(len(agg_types))]
        lists.append([-1] * len(minus) + [1] * len(plus))
        return SmallDelta(out_schema, dict(zip(out_names, lists, strict=True)), len(entries))

    @staticmethod
    def _round(s: _GroupState, i: int, slots: list[int]) -> None:
        """Bring the float sums of ``slots`` up to their exact sums."""
        sums, exact, special = s.sums[i], s.exact[i], s.special[i]
        for j in slots:
            sums[j] = _exact.rounded(exact[j], special[j])

    def _scalar_values(self, s: _GroupState, j: int, aggs: list | None = None) -> tuple:
        """Group ``j``'s aggregates as Python values (count/sum/avg only), as ``_values``."""
        out = []
        for i, func, column in aggs or self._small_plan()[2]:
            if func == "count":
                out.append(s.rows.item(j) if column is None else s.nonnull[i].item(j))
                continue
            n = s.nonnull[i].item(j)
            if n == 0:
                out.append(None)
            elif func == "avg":
                out.append(s.sums[i].item(j) / n)
            else:
                out.append(s.sums[i].item(j))
        return tuple(out)

    def _empty(self) -> pa.Table:
        e = self.__dict__.get("_empty_delta")
        if e is None:
            e = self.__dict__["_empty_delta"] = empty_delta(self.schema)
        return e

    def _slots(self, s: _GroupState, key_list: list) -> list[int]:
        index = s.index
        slots = list(map(index.get, key_list))
        if None in slots:
            start = len(s.keys)
            # dict.fromkeys: each key once, in first-seen order (rows repeat keys); the
            # Python-level loop then runs over distinct keys only.
            new = [k for k in dict.fromkeys(key_list) if k not in index]
            index.update(zip(new, range(start, start + len(new)), strict=True))
            s.keys.extend(new)
            s.grow(len(new))
            slots = list(map(index.__getitem__, key_list))
        return slots

    def _values(self, s: _GroupState, slots) -> list[pa.Array]:
        out = []
        for i, agg in enumerate(self.aggs.values()):
            t = self.schema.field(len(self.keys) + i).type
            if agg.func == "count":
                n = s.rows[slots] if agg.column is None else s.nonnull[i][slots]
                out.append(pa.array(n, pa.int64()))
            elif agg.func in ("sum", "avg"):
                n = s.nonnull[i][slots]
                total = s.sums[i][slots]
                vals = total / np.where(n == 0, 1, n) if agg.func == "avg" else total
                out.append(pa.array(vals, t, mask=(n == 0)))
            elif agg.func == "count_distinct":
                bags = s.bags[i]
                out.append(pa.array([len(bags[j]) for j in slots.tolist()], pa.int64()))
            else:
                ext = s.extreme[i]
                out.append(pa.array([ext[j] for j in slots.tolist()], t))
        return out

    def _update_bags(self, s: _GroupState, i: int, agg: Agg, d: pa.Table, row_slots: np.ndarray) -> None:
        """min/max/count_distinct: per group, a multiset of values (nulls ignored, as in SQL).
        Python work per changed row here: the one place a multiset per group is needed."""
        v = d.column(agg.column)
        keep = pc.is_valid(v).to_numpy(zero_copy_only=False)
        if not keep.any():
            return
        bags, extreme = s.bags[i], s.extreme[i]
        changed = set()
        w = d.column(W).to_numpy()
        for slot, value, dw in zip(row_slots[keep].tolist(), v.filter(pa.array(keep)).to_pylist(),
                                   w[keep].tolist(), strict=True):
            bag = bags[slot]
            n = bag.get(value, 0) + dw
            if n:
                bag[value] = n
            else:
                del bag[value]
            changed.add(slot)
        if agg.func in ("min", "max"):
            pick = min if agg.func == "min" else max
            for slot in changed:
                bag = bags[slot]
                extreme[slot] = pick(bag) if bag else None

    def _rows(self, s: _GroupState, slots: np.ndarray, values: list[pa.Array], weight: int) -> pa.Table:
        cols = []
        keys = [s.keys[j] for j in slots.tolist()]
        for i, k in enumerate(self.keys):
            t = self.schema.field(k).type
            cols.append(pa.array(keys if len(self.keys) == 1 else [key[i] for key in keys], t))
        cols += values
        return with_weight(pa.Table.from_arrays(cols, schema=self.schema), weight)

    def batch(self, ctx) -> pa.Table:
        keys = ", ".join(_quote(k) for k in self.keys)
        items = [keys] + [f"{a.sql()} AS {_quote(n)}" for n, a in self.aggs.items()]
        out = ctx.sql(f"SELECT {', '.join(items)} FROM {{0}} GROUP BY {keys}", [self.children[0].batch(ctx)])
        return out.select(self.schema.names).cast(self.schema)

    def to_json(self):
        return {"kind": self.kind, "child": self.children[0].to_json(), "keys": self.keys,
                "aggs": [[n, a.func, a.column] for n, a in self.aggs.items()]}


def _numeric(t, name, agg) -> None:
    if not (pa.types.is_integer(t) or pa.types.is_floating(t)):
        raise SchemaError(f"aggregate {name}={agg.func}({agg.column!r}) needs a numeric column: got {t}")


# ---- joins ---------------------------------------------------------------------------------


class _Side:
    """One input of a join: every change it has seen, as weighted Arrow chunks (a Z-set),
    and live row counts per key. It is consolidated lazily: when a probe needs it and it has
    grown to twice its live size, or when it grows past a memory bound. A side that is
    never probed (the other side never changes, like a fact table joined to a static
    dimension) then costs appends only."""

    def __init__(self, schema: pa.Schema) -> None:
        self.chunks: list[pa.Table] = []
        self.rows = 0
        self.compacted_rows = 0
        self.schema = schema
        self.key_rows: dict = {}

    def __getstate__(self) -> dict:
        # A snapshot keeps the rows, not the caches derived from them (rebuilt on first probe).
        self._arrow_chunks()
        state = dict(self.__dict__)
        for cache in ("_index", "_rows", "_pycols"):
            state.pop(cache, None)
        return state

    def table(self) -> pa.Table:
        """Every row with its weight, for a probe (consolidated first if it has grown)."""
        if not self.chunks:
            return empty_delta(self.schema)
        self._arrow_chunks()
        if self.rows > 2 * self.compacted_rows + JOIN_SIDE_COMPACT_ROWS_MIN:
            self._compact()
        elif len(self.chunks) > 1:
            self.chunks = [pa.concat_tables(self.chunks)]
        return self.chunks[0]

    def _arrow_chunks(self) -> None:
        """Build the small deltas added since the last probe into Arrow (a run of them as
        one table: cheaper than one each, and fewer chunks)."""
        chunks = self.chunks
        for c in chunks:
            if type(c) is SmallDelta:
                self.chunks = _arrow_runs(chunks)
                return

    def _compact(self) -> None:
        self._arrow_chunks()
        live = consolidate(pa.concat_tables(self.chunks))
        self.chunks, self.rows, self.compacted_rows = [live], live.num_rows, live.num_rows
        self._index = None
        self._rows = None
        self._pycols = None

    def index(self, on: list[str]) -> dict:
        """key -> positions in ``table()``; rebuilt only after the side changed."""
        index = self.__dict__.get("_index")
        if index is None:
            index = {}
            for pos, key in enumerate(_key_list(self.table(), on)):
                index.setdefault(key, []).append(pos)
            self._index = index
        return index

    def row(self, pos: int, names: list[str]) -> tuple:
        """Row ``pos`` of ``table()``: the values of ``names`` then the weight, as Python
        (cached while the side does not change; ``names`` is always the same per side). A
        side of up to JOIN_SIDE_ROW_CACHE_MAX rows is converted whole, once: a probe then
        costs list lookups, not an Arrow scalar per value."""
        cols = self.__dict__.get("_pycols")
        if cols is None:
            table = self.table()
            if table.num_rows <= JOIN_SIDE_ROW_CACHE_MAX:
                cols = self._pycols = [table.column(n).to_pylist() for n in names] + [table.column(W).to_pylist()]
            else:
                cols = self._pycols = []  # too big: row by row, below
        if cols:
            return tuple([c[pos] for c in cols])
        rows = self.__dict__.get("_rows")
        if rows is None:
            rows = self._rows = {}
        found = rows.get(pos)
        if found is None:
            if len(rows) >= JOIN_SIDE_ROW_CACHE_MAX:
                rows.clear()
            table = self.table()
            found = rows[pos] = tuple(table.column(n)[pos].as_py() for n in names) + (table.column(W)[pos].as_py(),)
        return found

    def add(self, delta: pa.Table | SmallDelta) -> None:
        if delta.num_rows == 0:
            return
        self.chunks.append(delta)
        self.rows += delta.num_rows
        self._index = None
        self._rows = None
        self._pycols = None
        if self.rows > 8 * self.compacted_rows + JOIN_SIDE_UNPROBED_ROWS_MAX:
            self._compact()


class Join(Stream):
    kind = "join"

    def __init__(self, left: Stream, right: Stream, on: list[str], how: str) -> None:
        if how not in JOIN_KINDS:
            raise UsageError(f"join how={how!r}: expected one of {JOIN_KINDS}")
        for side, s in (("left", left), ("right", right)):
            for k in on:
                if k not in s.schema.names:
                    raise SchemaError(f"join key {k!r} is not a column of the {side} side: expected one of "
                                      f"{s.schema.names}")
        clash = [n for n in right.schema.names if n not in on and n in left.schema.names]
        if clash:
            raise SchemaError(f"join: columns {clash} are on both sides: rename one side with select() first")
        if not on:
            raise UsageError("join needs at least one key column (on=...)")
        self.children = (left, right)
        self.on = on
        self.how = how
        self.right_rest = [n for n in right.schema.names if n not in on]
        # A left join pads unmatched rows with nulls; an inner join keeps the right side's
        # nullability (so a group-by on a NOT NULL right column can key the view's table).
        fields = list(left.schema) + [right.schema.field(n).with_nullable(True) if how == "left"
                                      else right.schema.field(n) for n in self.right_rest]
        self.schema = pa.schema(fields)

    def _state(self, state):
        s = state.get(self.nid)
        if s is None:
            s = (_Side(self.children[0].schema), _Side(self.children[1].schema))
            state[self.nid] = s
        return s

    def _join(self, a: pa.Table, b: pa.Table) -> pa.Table:
        """Inner join of two weighted tables (weights multiply)."""
        if a.num_rows == 0 or b.num_rows == 0:
            return empty_delta(self.schema)
        a = a.rename_columns([n if n != W else "__wl" for n in a.column_names])
        b = b.rename_columns([n if n != W else "__wr" for n in b.column_names])
        j = a.join(b, keys=self.on, join_type="inner", use_threads=False, coalesce_keys=True)
        w = pc.multiply(j.column("__wl"), j.column("__wr"))
        return j.select(self.schema.names).cast(self.schema).append_column(pa.field(W, pa.int64()), w)

    def _probe(self, small: pa.Table | SmallDelta, side: _Side) -> pa.Table | SmallDelta:
        """``small ⋈ side`` through the side's key index: for a few changed rows this skips
        building a hash table over the whole other side (the index is built once and kept
        while that side does not change, as a static dimension table does not)."""
        index = side.index(self.on)
        keys = _key_list(small, self.on)
        n_keys = len(self.on)
        left_rows, right_rows = [], []
        for i, key in enumerate(keys):
            if _has_null_key(key, n_keys):
                continue  # SQL: a null key matches nothing
            hits = index.get(key)
            if hits is not None:
                left_rows.extend([i] * len(hits))
                right_rows.extend(hits)
        if not left_rows:
            return empty_delta(self.schema)
        # Each changed row matching one row (a dimension lookup): the changed rows as they are.
        as_is = len(left_rows) == len(keys) and left_rows == list(range(len(keys)))
        if type(small) is SmallDelta:
            if len(right_rows) <= JOIN_PROBE_PY_ROWS:
                a = small if as_is else small.take(left_rows)
                found = [side.row(pos, self.right_rest) for pos in right_rows]
                columns = dict(a.columns)
                w = columns.pop(W)
                for j, name in enumerate(self.right_rest):
                    columns[name] = [r[j] for r in found]
                columns[W] = [x * r[-1] for x, r in zip(w, found, strict=True)]
                return SmallDelta(self._out_schema(), columns, len(left_rows))
            small = small.table()
        a = small if as_is else small.take(pa.array(left_rows, pa.int64()))
        left_names = self.children[0].schema.names
        cols = [a.column(n) for n in left_names]
        if len(right_rows) <= JOIN_PROBE_PY_ROWS:
            # A few matched rows: their values as Python (cached per position while the side
            # does not change) beat a take kernel over the whole side.
            found = [side.row(pos, self.right_rest) for pos in right_rows]
            lists = [[r[j] for r in found] for j in range(len(self.right_rest))]
            for values, t in zip(lists, self._right_types(), strict=True):
                cols.append(py_array(values, t))
            w = [x * r[-1] for x, r in zip(pycol(a, W), found, strict=True)]
            cols.append(py_array(w, _INT64))
            out_schema = self._out_schema()
            out = pa.Table.from_arrays(cols, schema=out_schema)
            known = _remembered(a)
            if known is not None:
                remember_columns(out, out_schema.names, [known[n] for n in left_names] + lists + [w])
            return out
        b = side.table().take(pa.array(right_rows, pa.int64()))
        cols += [b.column(n) for n in self.right_rest]
        out = pa.Table.from_arrays(cols, schema=self.schema)
        return out.append_column(pa.field(W, pa.int64()), pc.multiply(a.column(W), b.column(W)))

    def _right_types(self) -> list[pa.DataType]:
        t = self.__dict__.get("_rtypes")
        if t is None:
            t = self.__dict__["_rtypes"] = [self.schema.field(n).type for n in self.right_rest]
        return t

    def _out_schema(self) -> pa.Schema:
        e = self.__dict__.get("_out")
        if e is None:
            e = self.__dict__["_out"] = empty_delta(self.schema).schema
        return e

    def step(self, state, deltas) -> pa.Table | SmallDelta:
        dl = self.children[0].out_any(state, deltas)
        dr = self.children[1].out(state, deltas)
        left, right = self._state(state)
        l_old = left.table() if dr.num_rows else None
        right.add(dr)
        out = []
        if dl.num_rows:
            out.append(self._probe(dl, right) if dl.num_rows <= JOIN_PROBE_SMALL_ROWS else
                       self._join(arrow(dl), right.table()))
        if dr.num_rows:
            out.append(self._join(l_old, dr))
        if self.how == "left":
            out.append(self._antijoin_delta(left, right, arrow(dl), dr, l_old))
        left.add(dl)
        out = [o for o in out if o.num_rows]
        # Not consolidated here: weights are linear downstream, and the view's output is
        # consolidated once at the end of the step.
        return (out[0] if len(out) == 1 else pa.concat_tables([arrow(o) for o in out])) if out else (
            empty_delta(self.schema))

    def _antijoin_delta(self, left: _Side, right: _Side, dl, dr, l_old) -> pa.Table:
        """Left rows without a match, padded with nulls: see the case analysis in docs/views.md."""
        counts = right.key_rows
        n_keys = len(self.on)
        flipped_on, flipped_off = [], []
        if dr.num_rows:
            g = dr.group_by(self.on, use_threads=False).aggregate([(W, "sum")])
            for key, dw in zip(_key_list(g, self.on), g.column(f"{W}_sum").to_pylist(), strict=True):
                if _has_null_key(key, n_keys) or dw == 0:
                    continue
                before = counts.get(key, 0)
                after = before + dw
                if after:
                    counts[key] = after
                else:
                    counts.pop(key, None)
                if before == 0 and after > 0:
                    flipped_on.append(key)
                elif before > 0 and after == 0:
                    flipped_off.append(key)
        parts = []
        if dl.num_rows:
            unmatched = pa.array([counts.get(k, 0) == 0 for k in _key_list(dl, self.on)], pa.bool_())
            parts.append(dl.filter(unmatched))
        for keys, sign in ((flipped_on, -1), (flipped_off, 1)):
            if keys and l_old is not None and l_old.num_rows:
                kt = pa.table({k: pa.array([key if n_keys == 1 else key[i] for key in keys],
                                           self.children[0].schema.field(k).type) for i, k in enumerate(self.on)})
                rows = l_old.join(kt, keys=self.on, join_type="left semi", use_threads=False)
                parts.append(rows.set_column(rows.column_names.index(W), W,
                                             pc.multiply(rows.column(W), pa.scalar(sign, pa.int64()))))
        parts = [p for p in parts if p.num_rows]
        if not parts:
            return empty_delta(self.schema)
        left_schema = empty_delta(self.children[0].schema).schema  # (Acero's semi join drops NOT NULL flags)
        rows = pa.concat_tables([conform(p, left_schema) for p in parts])
        pad = [pa.nulls(rows.num_rows, self.children[1].schema.field(n).type) for n in self.right_rest]
        data = rows.drop_columns([W])
        out = pa.Table.from_arrays(list(data.columns) + pad, schema=self.schema)
        return out.append_column(pa.field(W, pa.int64()), rows.column(W))

    def batch(self, ctx) -> pa.Table:
        lcols = ", ".join(f"l.{_quote(n)}" for n in self.children[0].schema.names)
        rcols = "".join(f", r.{_quote(n)}" for n in self.right_rest)
        cond = " AND ".join(f"l.{_quote(k)} = r.{_quote(k)}" for k in self.on)
        how = "JOIN" if self.how == "inner" else "LEFT JOIN"
        out = ctx.sql(f"SELECT {lcols}{rcols} FROM {{0}} AS l {how} {{1}} AS r ON {cond}",
                      [c.batch(ctx) for c in self.children])
        return out.rename_columns(self.schema.names).cast(self.schema)

    def to_json(self):
        return {"kind": self.kind, "children": [c.to_json() for c in self.children], "on": self.on, "how": self.how}


# ---- (de)serialisation and batch evaluation ------------------------------------------------


def _schema_json(schema: pa.Schema) -> str:
    return schema.serialize().to_pybytes().hex()


def from_json(data) -> Stream:
    kind = data["kind"]
    if kind == "source":
        return Source(data["table"], pa.ipc.read_schema(pa.py_buffer(bytes.fromhex(data["schema"]))))
    if kind == "filter":
        return Filter(from_json(data["child"]), Expr.from_json(data["predicate"]))
    if kind == "project":
        return Project(from_json(data["child"]), {n: Expr.from_json(e) for n, e in data["exprs"]}, data["keep"])
    if kind == "map":
        return Map(from_json(data["child"]), _import_fn(data["fn"]))
    if kind == "union":
        return Union(*(from_json(c) for c in data["children"]))
    if kind == "group_by":
        return GroupBy(from_json(data["child"]), data["keys"], {n: Agg(f, c) for n, f, c in data["aggs"]})
    if kind == "join":
        return Join(*(from_json(c) for c in data["children"]), data["on"], data["how"])
    raise UsageError(f"unknown view node kind {kind!r} in a stored definition")


class BatchContext:
    """Runs each node's SQL on DataFusion over its children's results (the oracle)."""

    def __init__(self, tables: dict[str, pa.Table]) -> None:
        import datafusion

        self.tables = tables
        self._ctx = datafusion.SessionContext()
        self._n = 0

    def sql(self, template: str, inputs: list[pa.Table]) -> pa.Table:
        names = []
        for t in inputs:
            self._n += 1
            name = f"__in{self._n}"
            batches = t.to_batches() or [pa.RecordBatch.from_arrays(
                [pa.array([], f.type) for f in t.schema], schema=t.schema)]
            self._ctx.register_record_batches(name, [batches])
            names.append(name)
        return self._ctx.sql(template.format(*names)).to_arrow_table()


def batch_evaluate(stream: Stream, tables: dict[str, pa.Table]) -> pa.Table:
    """The definition evaluated in batch by DataFusion on whole input tables."""
    return stream.batch(BatchContext(tables))


def number_nodes(stream: Stream) -> list[Stream]:
    """Give every distinct node a stable number (preorder), so state keyed by it survives a
    restart (Bytewax recovery pickles the state, not the nodes)."""
    seen: dict[int, Stream] = {}
    order: list[Stream] = []

    def visit(node: Stream) -> None:
        if id(node) in seen:
            return
        seen[id(node)] = node
        node.nid = len(order)
        order.append(node)
        for c in node.children:
            visit(c)

    visit(stream)
    return order


def step_view(stream: Stream, state: dict, deltas: dict[str, pa.Table | SmallDelta],
              small_ok: bool = False) -> pa.Table | SmallDelta:
    """One incremental step of a whole view: its consolidated output change batch (a
    :class:`SmallDelta` if ``small_ok`` and the last operator made one)."""
    state["__memo"] = {}
    try:
        out = stream.out_any(state, deltas)
        # A group-by's output is already minimal (one -1 and/or one +1 row per changed group).
        if not isinstance(stream, GroupBy):
            out = consolidate(arrow(out))
        return out if small_ok else arrow(out)
    finally:
        state["__memo"] = {}
