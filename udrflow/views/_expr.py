"""Column expressions for view definitions: built in Python, evaluated a batch at a time.

An expression is a small tree (``col("amount") * 2 > lit(10)``). It has three readings,
kept side by side so they cannot drift apart:

- ``eval(table)``: a pyarrow.compute evaluation over a whole Arrow batch (the incremental
  engine's hot path; never a Python call per row);
- ``sql()``: the same expression as DataFusion SQL (the batch oracle of DESIGN.md);
- ``to_json()`` / ``from_json``: the form stored in the log with the view's definition.

>>> import pyarrow as pa
>>> t = pa.table({"a": [1, 2, 3], "b": [1.5, None, 4.0]})
>>> (col("a") * 2 + col("b")).eval(t).to_pylist()
[3.5, None, 10.0]
>>> ((col("a") > 1) & col("b").is_null()).sql()
'(("a" > 1) AND ("b" IS NULL))'
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from udrflow.errors import SchemaError, UsageError

# op -> (arity, pyarrow.compute function, SQL operator)
_BINARY = {
    "add": (pc.add, "+"), "sub": (pc.subtract, "-"), "mul": (pc.multiply, "*"), "div": (pc.divide, "/"),
    "eq": (pc.equal, "="), "ne": (pc.not_equal, "<>"), "lt": (pc.less, "<"), "le": (pc.less_equal, "<="),
    "gt": (pc.greater, ">"), "ge": (pc.greater_equal, ">="),
    "and": (pc.and_kleene, "AND"), "or": (pc.or_kleene, "OR"),
}


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _sql_literal(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    if isinstance(value, dt.datetime):
        return f"TIMESTAMP '{value.isoformat(sep=' ')}'"
    raise UsageError(f"literal of type {type(value).__name__} is not supported in view expressions: "
                     f"expected None, bool, int, float, str or datetime")


class Expr:
    """A column expression. Build with :func:`col` and :func:`lit` and Python operators:
    ``+ - * /``, comparisons ``== != < <= > >=``, ``&`` (and), ``|`` (or), ``~`` (not),
    plus :meth:`is_null`, :meth:`is_in`, :meth:`cast`."""

    __slots__ = ("op", "args")

    def __init__(self, op: str, args: tuple) -> None:
        self.op = op
        self.args = args

    # ---- building ----------------------------------------------------------------------

    def _bin(self, op: str, other, swap: bool = False) -> Expr:
        other = other if isinstance(other, Expr) else lit(other)
        return Expr(op, (other, self) if swap else (self, other))

    def __add__(self, o): return self._bin("add", o)
    def __radd__(self, o): return self._bin("add", o, True)
    def __sub__(self, o): return self._bin("sub", o)
    def __rsub__(self, o): return self._bin("sub", o, True)
    def __mul__(self, o): return self._bin("mul", o)
    def __rmul__(self, o): return self._bin("mul", o, True)
    def __truediv__(self, o): return self._bin("div", o)
    def __rtruediv__(self, o): return self._bin("div", o, True)
    def __eq__(self, o): return self._bin("eq", o)  # type: ignore[override]
    def __ne__(self, o): return self._bin("ne", o)  # type: ignore[override]
    def __lt__(self, o): return self._bin("lt", o)
    def __le__(self, o): return self._bin("le", o)
    def __gt__(self, o): return self._bin("gt", o)
    def __ge__(self, o): return self._bin("ge", o)
    def __and__(self, o): return self._bin("and", o)
    def __or__(self, o): return self._bin("or", o)
    def __invert__(self): return Expr("not", (self,))
    __hash__ = object.__hash__

    def __bool__(self):
        raise UsageError("a view expression has no truth value: use & | ~ instead of and/or/not")

    def is_null(self) -> Expr:
        return Expr("is_null", (self,))

    def is_in(self, values) -> Expr:
        return Expr("is_in", (self, tuple(values)))

    def cast(self, type_name: str) -> Expr:
        """Cast to an Arrow type named as in pyarrow (``"int64"``, ``"float64"``, ``"string"``)."""
        _arrow_type(type_name)
        return Expr("cast", (self, type_name))

    # ---- reading -----------------------------------------------------------------------

    def columns(self) -> set[str]:
        if self.op == "col":
            return {self.args[0]}
        out: set[str] = set()
        for a in self.args:
            if isinstance(a, Expr):
                out |= a.columns()
        return out

    def eval(self, table: pa.Table):
        op, args = self.op, self.args
        if op == "col":
            if args[0] not in table.column_names:
                raise SchemaError(f"view expression refers to column {args[0]!r}: expected one of "
                                  f"{table.column_names}")
            return table.column(args[0])
        if op == "lit":
            value = args[0]
            return pa.nulls(table.num_rows) if value is None else pa.repeat(pa.scalar(value), table.num_rows)
        if op == "not":
            return pc.invert(args[0].eval(table))
        if op == "is_null":
            return pc.is_null(args[0].eval(table))
        if op == "is_in":
            return _is_in(args[0].eval(table), args[1])
        if op == "cast":
            values, to = args[0].eval(table), _arrow_type(args[1])
            if pa.types.is_floating(values.type) and pa.types.is_integer(to):
                values = pc.trunc(values)  # SQL truncates toward zero; Arrow's safe cast refuses 1.5
            return pc.cast(values, to)
        if op == "tumble":
            return _tumble(args[0].eval(table), args[1])
        return _BINARY[op][0](args[0].eval(table), args[1].eval(table))

    def sql(self) -> str:
        op, args = self.op, self.args
        if op == "col":
            return _quote(args[0])
        if op == "lit":
            return _sql_literal(args[0])
        if op == "not":
            return f"(NOT {args[0].sql()})"
        if op == "is_null":
            return f"({args[0].sql()} IS NULL)"
        if op == "is_in":
            return f"({args[0].sql()} IN ({', '.join(_sql_literal(v) for v in args[1])}))"
        if op == "cast":
            return f"CAST({args[0].sql()} AS {_SQL_TYPES[args[1]]})"
        if op == "tumble":
            return f"date_bin(INTERVAL '{args[1]} microseconds', {args[0].sql()}, TIMESTAMP '1970-01-01T00:00:00')"
        return f"({args[0].sql()} {_BINARY[op][1]} {args[1].sql()})"

    def to_json(self):
        if self.op == "col":
            return {"col": self.args[0]}
        if self.op == "lit":
            v = self.args[0]
            return {"lit": v.isoformat() if isinstance(v, dt.datetime) else v,
                    **({"ts": True} if isinstance(v, dt.datetime) else {})}
        return {"op": self.op, "args": [a.to_json() if isinstance(a, Expr) else
                                        (list(a) if isinstance(a, tuple) else a) for a in self.args]}

    @staticmethod
    def from_json(data) -> Expr:
        if "col" in data:
            return col(data["col"])
        if "lit" in data:
            v = data["lit"]
            return lit(dt.datetime.fromisoformat(v) if data.get("ts") else v)
        args = tuple(Expr.from_json(a) if isinstance(a, dict) else (tuple(a) if isinstance(a, list) else a)
                     for a in data["args"])
        return Expr(data["op"], args)

    def __repr__(self) -> str:
        return f"Expr({self.sql()})"


def _is_in(values, options: tuple):
    """SQL's three-valued ``IN``: null for a null input, and for an input found nowhere in a
    list that holds a null; Arrow's is_in would say false (and match null to null)."""
    hit = pc.is_in(values, value_set=pa.array([v for v in options if v is not None], values.type),
                   skip_nulls=True)
    unknown = pa.scalar(None, pa.bool_())
    if any(v is None for v in options):
        hit = pc.if_else(hit, True, unknown)
    return pc.if_else(pc.is_valid(values), hit, unknown)


_UNIT_PER_US = {"s": (1, 1_000_000), "ms": (1, 1000), "us": (1, 1), "ns": (1000, 1)}


def _tumble(ts, every_us: int):
    """The start of the tumbling window of ``every_us`` microseconds (from the epoch) of each
    timestamp, in the timestamp's own type."""
    t = ts.type
    if not pa.types.is_timestamp(t):
        raise SchemaError(f"window() needs a timestamp column: got {t}")
    mul, div = _UNIT_PER_US[t.unit]
    if (every_us * mul) % div:
        raise UsageError(f"window length {every_us} us is not a whole number of the column's unit ({t.unit})")
    every = every_us * mul // div
    if isinstance(ts, pa.ChunkedArray):
        ts = ts.combine_chunks() if ts.num_chunks else pa.array([], t)
    ints = pc.cast(ts, pa.int64()).to_numpy(zero_copy_only=False)
    valid = pc.is_valid(ts).to_numpy(zero_copy_only=False)
    starts = np.where(valid, np.floor_divide(np.where(valid, ints, 0), every) * every, 0)
    return pa.array(starts, pa.int64(), mask=~valid).cast(t)


_SQL_TYPES = {"int8": "TINYINT", "int16": "SMALLINT", "int32": "INT", "int64": "BIGINT", "float32": "REAL",
              "float64": "DOUBLE", "string": "VARCHAR", "bool": "BOOLEAN", "date32": "DATE"}


def _arrow_type(name: str) -> pa.DataType:
    if name not in _SQL_TYPES:
        raise UsageError(f"cast to {name!r} is not supported: expected one of {sorted(_SQL_TYPES)}")
    return pa.type_for_alias(name)


def col(name: str) -> Expr:
    """The column ``name`` of the input."""
    if not isinstance(name, str):
        raise UsageError(f"col() takes a column name (str): got {type(name).__name__}")
    return Expr("col", (name,))


def lit(value) -> Expr:
    """A constant (None, bool, int, float, str or datetime)."""
    _sql_literal(value)  # rejects unsupported types early, with the message
    return Expr("lit", (value,))


def as_expr(value) -> Expr:
    """A column name or an Expr as an Expr."""
    if isinstance(value, Expr):
        return value
    if isinstance(value, str):
        return col(value)
    raise UsageError(f"expected a column name or an expression (col(...)): got {value!r}")
