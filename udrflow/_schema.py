"""Table schemas, and turning user rows into Arrow data that fits them.

Every write (insert, upsert, delete by keys) arrives as user data: a pyarrow Table or
RecordBatch, a list of dicts, one dict (a single row), a pandas DataFrame, or any object
that exports the Arrow C stream interface (polars, DuckDB). :func:`to_arrow` turns it
into a ``pyarrow.Table`` with exactly the table's schema, or raises :class:`SchemaError`
saying which column, what type was expected, what value was found and at which row
(rows are counted from 0 in the order of the input)::

    >>> import pyarrow as pa
    >>> orders = check_table_schema(pa.schema([("id", pa.int64()), ("amount", pa.float64())]),
    ...                             ["id"], table="orders")
    >>> to_arrow([{"id": 1, "amount": 9.5}, {"id": 2}], orders, table="orders").to_pylist()
    [{'id': 1, 'amount': 9.5}, {'id': 2, 'amount': None}]
    >>> to_arrow([{"id": 1, "amount": "abc"}], orders, table="orders")
    Traceback (most recent call last):
    ...
    udrflow.errors.SchemaError: column 'amount' of table 'orders' expects float64, got str 'abc' at row 0

The conversion policy, in one place:

* **One rule for every input kind.** Everything is first turned into Arrow (Python
  values by pyarrow's own type inference, pandas columns by pyarrow's pandas reader),
  and then each column is cast to its column's type by the same rule: only casts
  between types of the same kind are allowed (integer/float to integer or float,
  integer or decimal to decimal, string and binary to each other, date to date,
  timestamp to timestamp, lists to lists and structs to structs item by item), and the
  cast is Arrow's *safe* cast, which checks every value: an integer that overflows, a
  float with a fraction going into an integer column, an integer too big to be exact
  as a float, a decimal that would lose digits, a timestamp that would lose precision
  are all rejected. A string is never parsed into a number or a date, a bool is not a
  number, a float is not a decimal (binary floats have no exact decimal value), and a
  datetime is not a date (it would lose its time of day). Timestamps may change unit
  (checked) and time zone; a timestamp without a zone is taken as UTC. float64 going
  into a float32 or float16 column rounds as IEEE arithmetic does.
* **Python integers** too large for Arrow's type inference (for example uint64 values
  of 2**63 and up) are read as exact decimals and then cast by the same rule.
* **Where inference is lenient.** pyarrow's inference reads some values as the kind of
  an earlier value in the column: a bool after a float as 1.0, an int after a date as
  a number of days, an int after a datetime as microseconds, a datetime after a date as
  a date. Such values are refused instead (found by a census of the column's Python
  types, one pass in C). Inside lists and structs inference applies as is: a known gap.
* **Missing and unknown columns.** A column missing from the input is null if it is
  nullable, else an error; a column the table does not have is an error that lists the
  table's columns. A dict row may leave out a nullable key.
* **Fast when the input already fits.** A pyarrow Table whose column types equal the
  schema's is returned without copying any data (columns are only selected and
  reordered); only non-nullable columns are checked, by their null counts. A list of
  dicts is read by one pyarrow call in C, never a Python call per row; the slow search
  for the first bad row runs only after a conversion has failed.

Supported column types: int8-int64, uint8-uint64, float16, float32, float64, bool, string,
large_string, binary, large_binary, date32, timestamp (any unit, with or without a
time zone), decimal128, and list, large_list and struct of these. Others are rejected
when a table is created: dictionary (an encoding, not a type: dictionary-encoded input
is decoded instead), map, union, null, time, duration, interval, date64, fixed-size and
view types, decimal256 and extension types. The set is kept small on purpose: every
component (chunks, diffs, merges, SQL, views, Kafka) must handle every type in it.
Fields inside a list or struct must be nullable: NOT NULL is enforced on top-level
columns only. Column names are non-empty strings without control characters, at most
:data:`COLUMN_NAME_BYTES_MAX` bytes, and may not start with ``__`` (reserved for the
columns udrflow adds itself, such as ``__op``, ``__weight`` and ``__version``).

Primary key columns must be integers, strings, binaries, bools, dates, timestamps or
decimals, and are made NOT NULL. Floats are not allowed as keys: NaN is not equal to
itself and -0.0 equals 0.0 while differing in bits, so "the same key" would depend on
which comparison a component uses (hashing, sorting, SQL, Python).
"""

from __future__ import annotations

import datetime as _dt
import numbers
import sys
from collections.abc import Callable, Sequence
from itertools import repeat

import pyarrow as pa
import pyarrow.compute as pc

from udrflow._pyrows import PyRows, python_rows
from udrflow.errors import CorruptionError, SchemaError, UsageError, require

__all__ = [
    "COLUMNS_MAX",
    "COLUMN_NAME_BYTES_MAX",
    "NESTING_DEPTH_MAX",
    "PRIMARY_KEY_COLUMNS_MAX",
    "RESERVED_PREFIX",
    "add_column_schema",
    "check_keys",
    "check_table_schema",
    "conform",
    "schema_from_bytes",
    "schema_to_bytes",
    "to_arrow",
    "to_rows",
]

#: Most columns one table may have (including columns added later).
COLUMNS_MAX = 1024

#: Longest column (or struct field) name, in UTF-8 bytes.
COLUMN_NAME_BYTES_MAX = 255

#: Most columns in one primary key.
PRIMARY_KEY_COLUMNS_MAX = 16

#: Deepest nesting of list and struct types (a plain column is depth 1).
NESTING_DEPTH_MAX = 8

#: Column names starting with this are reserved for udrflow's own columns (__op, __weight, __version).
RESERVED_PREFIX = "__"

#: Longest repr of a found value quoted in an error message.
_VALUE_REPR_CHARS_MAX = 60

#: Longest reason (from Arrow) appended to an error message.
_REASON_CHARS_MAX = 160

# What pyarrow raises when a conversion or cast fails; ArrowInvalid is also a ValueError,
# ArrowTypeError a TypeError, and Python ints overflowing C longs raise OverflowError.
_CONVERSION_ERRORS = (pa.ArrowException, TypeError, ValueError, OverflowError)

# Python ints are read exactly as decimals when Arrow's inference cannot hold them (38
# digits covers every uint64 and int64); the safe cast to the column type then checks range.
_EXACT_INTEGER = pa.decimal128(38, 0)

_SUPPORTED_TEXT = ("int8-int64, uint8-uint64, float16, float32, float64, bool, string, large_string, binary, "
                   "large_binary, date32, timestamp, decimal128, and list, large_list, struct of these")
_KEY_TYPES_TEXT = "integers, string, large_string, binary, large_binary, bool, date32, timestamp, decimal128"


# ---------------------------------------------------------------------------------------------
# Schemas


def check_table_schema(schema: pa.Schema, primary_key: Sequence[str] | None, *, table: str) -> pa.Schema:
    """Check ``schema`` (and ``primary_key``) for ``create_table``; return the schema to store.

    The returned schema equals ``schema`` (field order, types, metadata) except that the
    primary key columns are NOT NULL. ``primary_key`` is None for a table without a key,
    else a list of distinct column names. Raises SchemaError naming the table and the
    rule broken; UsageError when an argument has the wrong Python type.

    >>> s = check_table_schema(pa.schema([("id", pa.int64()), ("name", pa.string())]), ["id"], table="t")
    >>> s.field("id").nullable, s.field("name").nullable
    (False, True)
    """
    if not isinstance(schema, pa.Schema):
        raise UsageError(f"the schema of table {table!r} must be a pyarrow.Schema: "
                         f"got {type(schema).__name__}")
    if len(schema) == 0:
        raise SchemaError(f"table {table!r} needs at least one column: the schema is empty")
    if len(schema) > COLUMNS_MAX:
        raise SchemaError(f"table {table!r} may have at most {COLUMNS_MAX} columns: "
                          f"the schema has {len(schema)}")
    seen: set[str] = set()
    for field in schema:
        _check_column(field, table)
        if field.name in seen:
            raise SchemaError(f"table {table!r} has two columns named {field.name!r}: "
                              f"column names must be unique")
        seen.add(field.name)
    if primary_key is None:
        return schema
    if isinstance(primary_key, str) or not isinstance(primary_key, (list, tuple)):
        raise UsageError(f"the primary key of table {table!r} must be a list of column names (or None): "
                         f"got {type(primary_key).__name__} {_short_repr(primary_key)}")
    if not primary_key:
        raise SchemaError(f"the primary key of table {table!r} must name at least one column "
                          f"(use primary_key=None for a table without a key)")
    if len(primary_key) > PRIMARY_KEY_COLUMNS_MAX:
        raise SchemaError(f"the primary key of table {table!r} may have at most {PRIMARY_KEY_COLUMNS_MAX} "
                          f"columns: got {len(primary_key)}")
    for i, name in enumerate(primary_key):
        if not isinstance(name, str):
            raise UsageError(f"primary key columns of table {table!r} must be named by str: got "
                             f"{type(name).__name__} {_short_repr(name)}")
        if name not in seen:
            raise SchemaError(f"primary key column {name!r} of table {table!r} is not a column of the "
                              f"schema: the columns are {_names_text(schema.names)}")
        if name in primary_key[:i]:
            raise SchemaError(f"the primary key of table {table!r} names column {name!r} twice")
        key_type = schema.field(name).type
        if not _is_key_type(key_type):
            why = (" (floats make poor keys: NaN != NaN, and -0.0 == 0.0 though their bits differ)"
                   if pa.types.is_floating(key_type) else "")
            raise SchemaError(f"primary key column {name!r} of table {table!r} has type "
                              f"{_type_name(key_type)}, which cannot be a key{why}; "
                              f"key types are {_KEY_TYPES_TEXT}")
    keys = set(primary_key)
    fields = [f.with_nullable(False) if f.name in keys else f for f in schema]
    return pa.schema(fields, metadata=schema.metadata)


def add_column_schema(schema: pa.Schema, field: pa.Field, *, table: str) -> pa.Schema:
    """The schema of ``table`` after ADD COLUMN ``field``: ``schema`` with ``field`` appended.

    The new column must be nullable (rows written before it have no value for it, and
    read back as null), must not exist yet, and follows the same name and type rules as
    :func:`check_table_schema`.

    >>> add_column_schema(pa.schema([("id", pa.int64())]), pa.field("note", pa.string()), table="t").names
    ['id', 'note']
    """
    if not isinstance(field, pa.Field):
        raise UsageError(f"a column added to table {table!r} must be a pyarrow.Field: "
                         f"got {type(field).__name__}")
    _check_column(field, table)
    if field.name in schema.names:
        raise SchemaError(f"cannot add column {field.name!r} to table {table!r}: the table already has it")
    if not field.nullable:
        raise SchemaError(f"cannot add column {field.name!r} to table {table!r}: an added column must be "
                          f"nullable (rows written before it have no value for it), got a NOT NULL field")
    if len(schema) + 1 > COLUMNS_MAX:
        raise SchemaError(f"cannot add column {field.name!r} to table {table!r}: a table may have at most "
                          f"{COLUMNS_MAX} columns")
    return schema.append(field)


def schema_to_bytes(schema: pa.Schema) -> bytes:
    """``schema`` as an Arrow IPC schema message (keeps nullability and all metadata)."""
    if not isinstance(schema, pa.Schema):
        raise UsageError(f"schema_to_bytes needs a pyarrow.Schema: got {type(schema).__name__}")
    return schema.serialize().to_pybytes()


def schema_from_bytes(data: bytes) -> pa.Schema:
    """The schema stored by :func:`schema_to_bytes`; CorruptionError if ``data`` is not one."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise UsageError(f"schema_from_bytes needs bytes: got {type(data).__name__}")
    try:
        return pa.ipc.read_schema(pa.py_buffer(data))
    except _CONVERSION_ERRORS as exc:
        raise CorruptionError(f"stored schema ({len(data)} bytes) is not an Arrow IPC schema message: "
                              f"{_first_line(exc)}") from exc


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` (written under an older schema of the same table) fitted to ``schema``.

    Columns added since the data was written appear as nulls; the other columns are
    reused without copying. Columns are only ever added, never changed or removed, so a
    column of ``table`` missing from ``schema`` or of another type is a bug (InternalError).

    >>> old = pa.table({"id": [1, 2]})
    >>> conform(old, pa.schema([("id", pa.int64()), ("note", pa.string())])).to_pylist()
    [{'id': 1, 'note': None}, {'id': 2, 'note': None}]
    """
    if table.schema.equals(schema):  # the common case, on every replayed commit: no work
        return table
    names = table.column_names
    require(len(set(names)) == len(names), f"conform: the stored data repeats a column name: {names}")
    wanted = set(schema.names)
    for name in names:
        require(name in wanted, f"conform: stored column {name!r} is not in the newer schema {schema.names}")
    columns = []
    for field in schema:
        if field.name in names:
            column = table.column(field.name)
            require(column.type.equals(field.type),
                    f"conform: stored column {field.name!r} is {column.type}, the schema says {field.type}")
            columns.append(column)
        else:
            require(field.nullable, f"conform: column {field.name!r} is missing from the stored data and is "
                                    f"not nullable, so it cannot have been added later")
            columns.append(pa.chunked_array([pa.nulls(table.num_rows, field.type)]))
    return pa.Table.from_arrays(columns, schema=schema)


def _check_column(field: pa.Field, table: str) -> None:
    problem = _name_problem(field.name)
    if problem:
        raise SchemaError(f"column name {field.name!r} of table {table!r} {problem}")
    if field.name.startswith(RESERVED_PREFIX):
        raise SchemaError(f"column name {field.name!r} of table {table!r} must not start with "
                          f"{RESERVED_PREFIX!r}: such names are reserved for udrflow's own columns "
                          f"(__op, __weight, __version)")
    problem = _type_problem(field.type, field.name, 1)
    if problem:
        raise SchemaError(f"column {field.name!r} of table {table!r} has type {_type_name(field.type)}: "
                          f"{problem}")


def _name_problem(name: object) -> str | None:
    if not isinstance(name, str):
        return f"must be a str, got {type(name).__name__}"
    if not name:
        return "must not be empty"
    if len(name.encode()) > COLUMN_NAME_BYTES_MAX:
        return f"must be at most {COLUMN_NAME_BYTES_MAX} bytes, got {len(name.encode())}"
    if any(ord(c) < 32 or 127 <= ord(c) < 160 for c in name):
        return "must not contain control characters"
    return None


def _type_problem(t: pa.DataType, path: str, depth: int) -> str | None:
    """Why ``t`` (at ``path`` inside a column) cannot be stored, or None if it can."""
    if depth > NESTING_DEPTH_MAX:
        return f"{path!r} nests lists and structs deeper than {NESTING_DEPTH_MAX} levels"
    if (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t) or pa.types.is_string(t)
            or pa.types.is_large_string(t) or pa.types.is_binary(t) or pa.types.is_large_binary(t)
            or pa.types.is_date32(t) or pa.types.is_decimal128(t)):
        return None
    if pa.types.is_timestamp(t):
        if t.tz is not None:
            try:  # Arrow's own time zone database is the one queries will use.
                pc.local_timestamp(pa.array([0], t))
            except _CONVERSION_ERRORS:
                return f"{path!r} has an unknown time zone {t.tz!r}"
        return None
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        if not t.value_field.nullable:
            return f"the items of {path!r} must be nullable (NOT NULL applies to top-level columns only)"
        return _type_problem(t.value_type, f"{path}[]", depth + 1)
    if pa.types.is_struct(t):
        if t.num_fields == 0:
            return f"struct {path!r} must have at least one field"
        seen = set()
        for child in t:
            problem = _name_problem(child.name)
            if problem:
                return f"field name {child.name!r} in {path!r} {problem}"
            if child.name in seen:
                return f"struct {path!r} has two fields named {child.name!r}"
            seen.add(child.name)
            if not child.nullable:
                return (f"field {f'{path}.{child.name}'!r} must be nullable "
                        f"(NOT NULL applies to top-level columns only)")
            problem = _type_problem(child.type, f"{path}.{child.name}", depth + 1)
            if problem:
                return problem
        return None
    where = "" if depth == 1 else f" at {path!r}"
    return f"type {t}{where} is not supported; supported types are {_SUPPORTED_TEXT}"


def _is_key_type(t: pa.DataType) -> bool:
    return (pa.types.is_integer(t) or pa.types.is_string(t) or pa.types.is_large_string(t)
            or pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_boolean(t)
            or pa.types.is_date32(t) or pa.types.is_timestamp(t) or pa.types.is_decimal128(t))


# ---------------------------------------------------------------------------------------------
# Rows in, Arrow out


def missing_columns(data, schema: pa.Schema) -> list[str]:
    """The columns of ``schema`` that ``data`` (rows as ``to_arrow`` takes them) leaves out:
    for dicts, a column missing from any row; for tables and data frames, from the columns.
    (``to_arrow`` makes a missing nullable column null, which suits an insert; an upsert
    replaces whole rows, so it must not guess.)"""
    names = schema.names
    if isinstance(data, dict):
        return [n for n in names if n not in data]
    if isinstance(data, (list, tuple)):
        wanted = set(names)
        missing: set[str] = set()
        for row in data:
            if isinstance(row, dict) and not wanted <= row.keys():
                missing |= wanted - row.keys()
        return [n for n in names if n in missing]
    if isinstance(data, (pa.Table, pa.RecordBatch)):
        given = set(data.schema.names)
    else:
        columns = getattr(data, "columns", None)  # pandas, polars
        if columns is None:
            return []  # (another Arrow stream: to_arrow checks what it can)
        given = {str(c) for c in columns}
    return [n for n in names if n not in given]


def update_columns(data, schema: pa.Schema, table: str) -> list[str]:
    """The columns an ``update`` gives, in ``schema``'s order: the union of the dicts' keys,
    or a table's or data frame's columns. A name the table does not have is SchemaError."""
    if isinstance(data, dict):
        given = set(data)
    elif isinstance(data, (list, tuple)):
        given = set().union(*(row.keys() for row in data if isinstance(row, dict)))
    elif isinstance(data, (pa.Table, pa.RecordBatch)):
        given = set(data.schema.names)
    else:
        columns = getattr(data, "columns", None)
        if columns is None:
            raise SchemaError(f"update of table {table!r} takes dicts, a pyarrow Table or a data frame: got "
                              f"{type(data).__name__}")
        given = {str(c) for c in columns}
    unknown = sorted(given - set(schema.names))
    if unknown:
        raise SchemaError(f"update of table {table!r}: no column(s) {unknown}: expected some of {schema.names}")
    return [n for n in schema.names if n in given]


def to_arrow(data, schema: pa.Schema, *, table: str, columns: Sequence[str] | None = None) -> pa.Table:
    """``data`` as a pyarrow Table with exactly ``schema`` (or only ``columns``, in that order).

    ``data`` may be a pyarrow Table or RecordBatch, a list (or tuple) of dicts, one dict
    (a single row), a pandas DataFrame, or an object with ``__arrow_c_stream__`` (polars,
    DuckDB). An empty list gives an empty table. Values are converted by the policy in
    this module's docstring; a matching pyarrow Table is returned without copying.

    ``columns`` (a list of column names of ``schema``) restricts the result to those
    columns, as delete-by-keys needs; other columns of the table present in the input
    are then ignored, while names the table does not have are still an error.

    Errors are SchemaError naming the column, the expected type, the value found and
    its row. Rows are 0-based positions in the input (for a DataFrame: positions, not
    index labels). When several rows are bad, the earliest is named.

    >>> s = pa.schema([pa.field("id", pa.int64(), nullable=False), ("tags", pa.list_(pa.string()))])
    >>> to_arrow({"id": 7, "tags": ["a"]}, s, table="t").to_pylist()
    [{'id': 7, 'tags': ['a']}]
    >>> to_arrow([{"tags": []}], s, table="t")
    Traceback (most recent call last):
    ...
    udrflow.errors.SchemaError: column 'id' of table 't' is required (not nullable): missing from the input
    """
    target = _target_schema(schema, columns, table)
    known = dict.fromkeys(schema.names)  # ordered, for messages; a set for lookups
    if isinstance(data, pa.RecordBatch):
        data = pa.Table.from_batches([data])
    if isinstance(data, pa.Table):
        return _from_arrow(data, target, known, table)
    if isinstance(data, dict):
        data = [data]
    if isinstance(data, (list, tuple)):
        return _from_rows(data, target, known, table)
    pandas = sys.modules.get("pandas")  # a DataFrame can only exist if pandas was imported
    if pandas is not None and isinstance(data, pandas.DataFrame):
        return _from_pandas(data, target, known, table)
    if hasattr(type(data), "__arrow_c_stream__"):
        return _from_arrow(pa.table(data), target, known, table)
    raise UsageError(f"rows for table {table!r} must be a pyarrow Table or RecordBatch, a list of dicts, a "
                     f"dict (one row), a pandas DataFrame or an Arrow stream: got {type(data).__name__}")


def to_rows(data, schema: pa.Schema, *, table: str, columns: Sequence[str] | None = None) -> pa.Table | PyRows:
    """Like :func:`to_arrow`, but a few rows of plain Python values come back as
    :class:`~udrflow._pyrows.PyRows` (the same values, not yet in Arrow), which the commit
    path stores without building Arrow at all. Anything else, and every error, is
    ``to_arrow``'s."""
    rows = python_rows(data, schema, columns)
    return rows if rows is not None else to_arrow(data, schema, table=table, columns=columns)


def check_keys(table: pa.Table | PyRows, primary_key: Sequence[str], *, table_name: str, op: str) -> None:
    """Raise SchemaError if a key column of ``table`` has a null, or if a key occurs twice.

    ``op`` names the write in messages ("insert", "upsert", "delete"). The checks are
    whole-column (null counts, one hash group-by); rows are looked up only to report.

    >>> t = pa.table({"id": [4, 5, 6, 5]})
    >>> check_keys(t, ["id"], table_name="orders", op="insert")
    Traceback (most recent call last):
    ...
    udrflow.errors.SchemaError: duplicate primary key (id=5) in rows 1 and 3 of the insert into table 'orders'
    """
    if isinstance(table, PyRows):
        idx = [table.schema.get_field_index(name) for name in primary_key]
        seen = {tuple(r[i] for i in idx) for r in table.rows} if -1 not in idx else ()
        if len(seen) == table.num_rows and all(None not in key for key in seen):
            return
        table = table.to_table()  # the Arrow check below finds and names the rows
    where = f"of the {op} {_PREPOSITIONS.get(op, 'into')} table {table_name!r}"
    names = table.column_names
    for name in primary_key:
        require(name in names, f"check_keys: key column {name!r} is not among the columns {names}")
    nulls = [(_first_null(table.column(name)), name) for name in primary_key if table.column(name).null_count]
    if nulls:
        row, name = min(nulls)
        raise SchemaError(f"primary key column {name!r} is null at row {row} {where}")
    if table.num_rows < 2:
        return
    keys = table.select(list(primary_key))
    if keys.group_by(list(primary_key), use_threads=False).aggregate([]).num_rows == table.num_rows:
        return
    first, second = _first_duplicate(keys, list(primary_key))
    shown = ", ".join(f"{name}={_short_repr(keys.column(name)[first].as_py())}" for name in primary_key)
    raise SchemaError(f"duplicate primary key ({shown}) in rows {first} and {second} {where}")


_PREPOSITIONS = {"insert": "into", "upsert": "into", "delete": "from"}


def _first_duplicate(keys: pa.Table, primary_key: list[str]) -> tuple[int, int]:
    """The earliest row that repeats a key, and the row it repeats (error path only)."""
    rows = keys.append_column("__row", pa.array(range(keys.num_rows), pa.int64()))
    groups = rows.group_by(primary_key, use_threads=False).aggregate([("__row", "list")])
    lists = groups.column("__row_list")
    repeated = lists.filter(pc.greater(pc.list_value_length(lists), 1)).to_pylist()
    require(bool(repeated), "check_keys: the group count saw a duplicate key that the row lists do not show")
    pairs = [sorted(group)[:2] for group in repeated]
    first, second = min(pairs, key=lambda pair: pair[1])
    return first, second


def _target_schema(schema: pa.Schema, columns: Sequence[str] | None, table: str) -> pa.Schema:
    if not isinstance(schema, pa.Schema):
        raise UsageError(f"the schema of table {table!r} must be a pyarrow.Schema: "
                         f"got {type(schema).__name__}")
    if columns is None:
        return schema
    if isinstance(columns, str) or len(set(columns)) != len(columns):
        raise UsageError(f"columns must be a list of distinct column names of table {table!r}: "
                         f"got {columns!r}")
    for name in columns:
        if name not in schema.names:
            raise UsageError(f"columns must name columns of table {table!r}: {name!r} is not one "
                             f"(the columns are {_names_text(schema.names)})")
    return pa.schema([schema.field(name) for name in columns])


# A describer returns how the value at (column, row) looked in the user's input, e.g.
# "str 'abc'" or "string 'abc'", or None when a dict row has no such key at all.
_Describe = Callable[[str, int], "str | None"]


class _Rejected(Exception):
    """A value of a kind the column does not take (a policy rejection, not an Arrow error)."""


# (One name, not ``(_Rejected, *_CONVERSION_ERRORS)`` in each clause: Cython compiles this
# module, and it does not take starred names in an except clause.)
_REJECTED_OR_UNCONVERTIBLE = (_Rejected, *_CONVERSION_ERRORS)


class _Failure(Exception):
    """One bad column, with the row it goes bad at (to raise the earliest of several)."""

    def __init__(self, message: str, column: str, row: int | None) -> None:
        super().__init__(message)
        self.column = column
        self.row = sys.maxsize if row is None else row


def _from_arrow(data: pa.Table, target: pa.Schema, known: dict[str, None], table: str) -> pa.Table:
    def describe(name: str, row: int) -> str:
        column = data.column(name)
        return _describe_arrow(column.type, column[row])

    return _assemble(data, target, known, table, describe)


def _from_rows(rows: Sequence, target: pa.Schema, known: dict[str, None], table: str) -> pa.Table:
    if not rows:
        return target.empty_table()
    # One pass in C over the row types; the generator below only runs to name a bad row.
    if not all(issubclass(kind, dict) for kind in set(map(type, rows))):
        row, value = next((i, r) for i, r in enumerate(rows) if not isinstance(r, dict))
        raise SchemaError(f"row {row} of the input for table {table!r} must be a dict of column values: "
                          f"got {_describe_python(value)}")

    def describe(name: str, row: int) -> str | None:
        value = rows[row].get(name, _ABSENT)
        return None if value is _ABSENT else _describe_python(value)

    try:  # the fast path: pyarrow infers every column of every row in one call, in C
        inferred = pa.array(rows)
    except _CONVERSION_ERRORS:
        inferred = None
    if inferred is not None and pa.types.is_struct(inferred.type):
        data = pa.Table.from_struct_array(inferred)
        _check_unknown_keys(rows, data.column_names, known, table)
        failures = []
        for field in target:
            if field.name in data.column_names and _foreign_kinds(data.column(field.name).type):
                values = list(map(dict.get, rows, repeat(field.name)))
                row = _first_foreign(values, data.column(field.name).type)
                if row is not None:
                    reason = _foreign_reason(values[row], field.type)
                    failures.append(_failure(field, table, describe(field.name, row), row, reason))
        return _assemble(data, target, known, table, describe, failures, num_rows=len(rows))
    # Inference failed on some column (mixed kinds, or an int beyond int64): convert the
    # columns one by one, each by the same rule, and locate bad rows for those that fail.
    keys = set().union(*rows)
    _check_unknown_keys(rows, keys, known, table)
    converted, failures = {}, []
    for field in target:
        if field.name not in keys:
            continue
        values = list(map(dict.get, rows, repeat(field.name)))
        try:
            converted[field.name] = _python_column(values, field)
        except _REJECTED_OR_UNCONVERTIBLE:
            failures.append(_locate_python(values, field, table, describe, from_pandas=False))
    return _assemble(pa.table(converted) if converted else pa.table({}), target, known, table, describe,
                     failures, num_rows=len(rows))


def _from_pandas(df, target: pa.Schema, known: dict[str, None], table: str) -> pa.Table:
    names = list(df.columns)
    for i, name in enumerate(names):
        if name in names[:i]:
            raise SchemaError(f"column {name!r} appears twice in the input for table {table!r}")
        if name not in known:
            raise SchemaError(_unknown_message(name, table, known, ""))

    def describe(name: str, row: int) -> str:
        return _describe_python(df.iloc[row, names.index(name)])

    converted, failures = {}, []
    wanted = {field.name: field for field in target}
    for i, name in enumerate(names):
        field = wanted.get(name)
        if field is None:
            continue
        series = df.iloc[:, i]
        try:  # pyarrow reads the column's numpy or pandas extension dtype in C
            array = pa.array(series, from_pandas=True)
            if series.dtype == object and _foreign_kinds(array.type):  # Python objects: inferred as in rows
                values = series.tolist()
                row = _first_foreign(values, array.type)
                if row is not None:
                    reason = _foreign_reason(values[row], field.type)
                    failures.append(_failure(field, table, describe(name, row), row, reason))
                    continue
            converted[name] = array
        except _CONVERSION_ERRORS:  # an object column of mixed kinds: read it value by value
            values = series.astype(object).where(series.notna(), None).tolist()
            try:
                converted[name] = _python_column(values, field, from_pandas=True)
            except _REJECTED_OR_UNCONVERTIBLE:
                failures.append(_locate_python(values, field, table, describe, from_pandas=True))
    return _assemble(pa.table(converted) if converted else pa.table({}), target, known, table, describe,
                     failures, num_rows=len(df))


def _assemble(data: pa.Table, target: pa.Schema, known: dict[str, None], table: str, describe: _Describe,
              failures: list[_Failure] | None = None, num_rows: int | None = None) -> pa.Table:
    """Cast ``data``'s columns to ``target`` (no copy for those already of the right type)."""
    failures = list(failures or [])
    names = data.column_names
    if len(set(names)) != len(names):
        repeated = next(name for i, name in enumerate(names) if name in names[:i])
        raise SchemaError(f"column {repeated!r} appears twice in the input for table {table!r}")
    for name in names:
        if name not in known:
            raise SchemaError(_unknown_message(name, table, known, ""))
    num_rows = data.num_rows if num_rows is None else num_rows
    failed = {failure.column for failure in failures}
    columns = []
    for field in target:
        if field.name in failed:
            columns.append(None)
            continue
        if field.name not in names:
            if not field.nullable:
                raise SchemaError(f"column {field.name!r} of table {table!r} is required (not nullable): "
                                  f"missing from the input")
            columns.append(pa.chunked_array([pa.nulls(num_rows, field.type)]))
            continue
        try:
            columns.append(_cast_column(data.column(field.name), field, table, describe))
        except _Failure as failure:
            failures.append(failure)
    if failures:
        raise SchemaError(str(min(failures, key=lambda failure: failure.row)))
    return pa.Table.from_arrays(columns, schema=target)


def _cast_column(column: pa.ChunkedArray, field: pa.Field, table: str,
                 describe: _Describe) -> pa.ChunkedArray:
    """``column`` cast to ``field``'s type by the module's rule, or _Failure naming the first bad row."""
    if not column.type.equals(field.type):
        if pa.types.is_dictionary(column.type):  # an encoding, not a type: decoding is always exact
            column = pc.cast(column, column.type.value_type)
        problem = _cast_problem(column.type, field.type)
        if problem is not None:
            row = _first_row_with_values(column)
            if row is None:  # only nulls: they fit any nullable column (checked below)
                column = pa.chunked_array([pa.nulls(len(column), field.type)])
            else:
                raise _failure(field, table, describe(field.name, row), row, problem)
        else:
            try:
                column = _safe_cast(column, field.type)
            except _CONVERSION_ERRORS as exc:
                row, exc = _first_failing_row(len(column), lambda k: _attempt(_safe_cast, _prefix(column, k),
                                                                               field.type), exc)
                raise _failure(field, table, describe(field.name, row) if row is not None else None, row,
                               _first_line(exc)) from None
    if not field.nullable and column.null_count:
        row = _first_null(column)
        found = describe(field.name, row)
        got = f"missing from row {row}" if found is None else f"got {found} at row {row}"
        message = f"column {field.name!r} of table {table!r} is required (not nullable): {got}"
        raise _Failure(message, field.name, row)
    return column


def _cast_problem(source: pa.DataType, target: pa.DataType) -> str | None:
    """None if the rule lets Arrow's safe cast decide (value by value) whether ``source``
    converts to ``target``; else why not ("" for a plain mismatch of kinds)."""
    if source.equals(target) or pa.types.is_null(source):
        return None
    if pa.types.is_dictionary(source):
        return _cast_problem(source.value_type, target)
    t = pa.types
    if t.is_integer(target):
        allowed = t.is_integer(source) or t.is_floating(source) or t.is_decimal(source)
    elif t.is_floating(target):
        allowed = t.is_integer(source) or t.is_floating(source)
    elif t.is_decimal(target):
        allowed = t.is_integer(source) or t.is_decimal(source)
    elif t.is_boolean(target):
        allowed = t.is_boolean(source)
    elif t.is_string(target) or t.is_large_string(target) or t.is_binary(target) or t.is_large_binary(target):
        allowed = _is_text_or_bytes(source)  # bytes into a string column are checked to be UTF-8
    elif t.is_date32(target):
        allowed = t.is_date(source)
    elif t.is_timestamp(target):
        allowed = t.is_timestamp(source)
    elif t.is_list(target) or t.is_large_list(target):
        if not (t.is_list(source) or t.is_large_list(source) or t.is_fixed_size_list(source)):
            return ""
        inner = _cast_problem(source.value_type, target.value_type)
        if inner is None:
            return None
        return f"list items: {inner or _no_conversion(source.value_type, target.value_type)}"
    elif t.is_struct(target):
        if not t.is_struct(source):
            return ""
        target_names = [f.name for f in target]
        for child in source:
            if child.name not in target_names:
                return f"unknown field {child.name!r}; the fields are {_names_text(target_names)}"
            inner = _cast_problem(child.type, target.field(child.name).type)
            if inner is not None:
                return (f"field {child.name!r}: "
                        f"{inner or _no_conversion(child.type, target.field(child.name).type)}")
        return None
    else:
        allowed = False
    return None if allowed else ""


def _safe_cast(column: pa.ChunkedArray, target: pa.DataType) -> pa.ChunkedArray:
    """Arrow's safe cast, which checks every value, via an exact decimal where needed."""
    via = _via_type(column.type, target)
    if via is not None:
        column = pc.cast(column, via, safe=True)
    return pc.cast(column, target, safe=True)


def _via_type(source: pa.DataType, target: pa.DataType) -> pa.DataType | None:
    """The type to cast through first, or None. Arrow casts an integer type to a decimal
    only if the decimal could hold every value of that type (int64 to decimal128(10, 2)
    is refused outright), so integers go through decimal128(38, 0) and the second cast
    checks each actual value against the column's precision."""
    t = pa.types
    if t.is_integer(source) and t.is_decimal(target):
        return _EXACT_INTEGER
    if (t.is_list(source) or t.is_large_list(source)) and (t.is_list(target) or t.is_large_list(target)):
        inner = _via_type(source.value_type, target.value_type)
        if inner is None:
            return None
        return pa.list_(inner) if t.is_list(source) else pa.large_list(inner)
    if t.is_struct(source) and t.is_struct(target):
        target_names = {f.name for f in target}
        children, changed = [], False
        for child in source:
            if child.name not in target_names:
                children.append(child)
                continue
            inner = _via_type(child.type, target.field(child.name).type)
            changed = changed or inner is not None
            children.append(child.with_type(inner) if inner is not None else child)
        return pa.struct(children) if changed else None
    return None


def _is_text_or_bytes(t: pa.DataType) -> bool:
    return (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t)
            or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t)
            or pa.types.is_string_view(t) or pa.types.is_binary_view(t))


def _python_column(values: list, field: pa.Field, *, from_pandas: bool = False) -> pa.ChunkedArray:
    """Python ``values`` converted to ``field``'s type by the module's rule (raises on any problem)."""
    try:
        array = pa.array(values, from_pandas=from_pandas)
    except _CONVERSION_ERRORS:
        # Inference fails on mixed kinds and on ints beyond int64. Integers get one more try
        # as exact decimals (floats are refused there, so nothing is truncated); the other
        # types whose typed conversion is strict (it never drops information) get theirs.
        if pa.types.is_integer(field.type):
            array = pa.array(values, type=_EXACT_INTEGER, from_pandas=from_pandas)
        elif _typed_conversion_is_strict(field.type):
            array = pa.array(values, type=field.type, from_pandas=from_pandas)
        else:
            raise
    row = _first_foreign(values, array.type)
    if row is not None:
        raise _Rejected(_foreign_reason(values[row], field.type))
    column = array if isinstance(array, pa.ChunkedArray) else pa.chunked_array([array])  # >2 GiB: chunked
    problem = _cast_problem(array.type, field.type)
    if problem is not None:
        if _first_row_with_values(column) is not None:
            raise _Rejected(problem)
        return pa.chunked_array([pa.nulls(len(array), field.type)])
    try:
        return _safe_cast(column, field.type)
    except _CONVERSION_ERRORS as exc:
        raise _Rejected(_first_line(exc)) from exc


def _typed_conversion_is_strict(t: pa.DataType) -> bool:
    return (pa.types.is_boolean(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)
            or pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t)
            or pa.types.is_large_binary(t))


def _foreign_kinds(array_type: pa.DataType) -> tuple[type, ...]:
    """Python types that pyarrow's converter for ``array_type`` takes (when inference
    picked that type from an earlier value of the column) but the rule refuses: a bool
    after a float reads as 1.0, an int after a date as a number of days, an int after a
    datetime as a count of microseconds, and a datetime after a date loses its time."""
    if pa.types.is_floating(array_type):
        return (bool,)
    if pa.types.is_date(array_type):
        return (numbers.Integral, _dt.datetime)
    if pa.types.is_timestamp(array_type):
        return (numbers.Integral,)
    return ()


def _first_foreign(values: list, array_type: pa.DataType) -> int | None:
    """The first row holding one of ``_foreign_kinds(array_type)``, or None. The common
    answer (none) costs one pass in C over the value types; the search runs only if one is there."""
    foreign = _foreign_kinds(array_type)
    if not foreign or not any(issubclass(kind, foreign) for kind in set(map(type, values))):
        return None
    return next(i for i, value in enumerate(values) if isinstance(value, foreign))


def _foreign_reason(value, target: pa.DataType) -> str:
    if isinstance(value, _dt.datetime) and pa.types.is_date(target):
        return "a datetime is not a date: it would lose its time of day"
    return ""


def _locate_python(values: list, field: pa.Field, table: str, describe: _Describe, *,
                   from_pandas: bool) -> _Failure:
    """The failure of a Python column, at the first row where converting it goes wrong."""
    def attempt(k: int) -> Exception | None:
        try:
            _python_column(values[:k], field, from_pandas=from_pandas)
        except _REJECTED_OR_UNCONVERTIBLE as exc:
            return exc
        return None

    row, exc = _first_failing_row(len(values), attempt, None)
    # A value pyarrow cannot read as the column's kind needs no reason beyond "expects X,
    # got Y"; rejections by the rule and failed safe casts (overflow, truncation, lost
    # digits) say why.
    reason = str(exc) if isinstance(exc, _Rejected) else ""
    return _failure(field, table, describe(field.name, row) if row is not None else None, row, reason)


def _first_failing_row(n: int, attempt: Callable[[int], Exception | None],
                       error: Exception | None) -> tuple[int | None, Exception | None]:
    """The 0-based row whose inclusion first makes ``attempt`` (on the first k rows) fail.

    Failing is monotone in k (a bad value stays bad as rows are added), so gallop
    (1, 2, 4, ... rows) until a prefix fails, then bisect: the cost grows with the
    position of the bad row, not with the size of the input. Returns (None, ``error``)
    if only the whole input fails.
    """
    good, k = 0, 1
    while True:
        k = min(k, n)
        exc = attempt(k)
        if exc is not None:
            break
        if k >= n:
            return None, error
        good, k = k, 2 * k
    bad = k
    while bad - good > 1:
        mid = (good + bad) // 2
        mid_exc = attempt(mid)
        if mid_exc is None:
            good = mid
        else:
            bad, exc = mid, mid_exc
    return bad - 1, exc


def _prefix(column: pa.ChunkedArray, k: int) -> pa.ChunkedArray:
    # A copy, not a slice: Arrow casts a sliced list array's whole child array, values
    # outside the slice included, so a slice would fail on rows it does not show.
    return column.take(pa.array(range(k), pa.int64()))


def _attempt(function, *args, **kwargs) -> Exception | None:
    try:
        function(*args, **kwargs)
    except _CONVERSION_ERRORS as exc:
        return exc
    return None


def _failure(field: pa.Field, table: str, found: str | None, row: int | None, reason: str) -> _Failure:
    where = f" at row {row}" if row is not None else ""
    got = f", got {found}" if found is not None else ""
    because = f" ({reason})" if reason else ""
    expected = _type_name(field.type)
    return _Failure(f"column {field.name!r} of table {table!r} expects {expected}{got}{where}{because}",
                    field.name, row)


def _check_unknown_keys(rows: Sequence[dict], keys, known: dict[str, None], table: str) -> None:
    unknown = [key for key in keys if key not in known]
    if unknown:
        row = next(i for i, r in enumerate(rows) if any(key in r for key in unknown))
        key = next(key for key in rows[row] if key not in known)
        raise SchemaError(_unknown_message(key, table, known, f" (first at row {row})"))


def _unknown_message(name: object, table: str, known: dict[str, None], where: str) -> str:
    return (f"unknown column {name!r} in the input for table {table!r}{where}: "
            f"the table's columns are {_names_text(known)}")


def _first_null(column: pa.ChunkedArray) -> int:
    return pc.index(pc.is_null(column), True).as_py()


def _first_row_with_values(column: pa.ChunkedArray) -> int | None:
    """The first row holding any non-null value (at any depth of lists and structs), or None."""
    offset = 0
    for chunk in column.chunks:
        row = _first_in_array(chunk)
        if row is not None:
            return offset + row
        offset += len(chunk)
    return None


def _first_in_array(array: pa.Array) -> int | None:
    t = array.type
    if pa.types.is_dictionary(t):
        array = array.dictionary_decode()
    elif pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        item = _first_in_array(array.flatten())
        return None if item is None else pc.list_parent_indices(array)[item].as_py()
    elif pa.types.is_struct(t):
        rows = [row for row in (_first_in_array(child) for child in array.flatten()) if row is not None]
        return min(rows) if rows else None
    if array.null_count == len(array):
        return None
    return pc.index(pc.is_valid(array), True).as_py()


_ABSENT = object()


def _describe_python(value) -> str:
    if value is None:
        return "None"
    shown = value
    if type(value).__module__ == "numpy" and hasattr(value, "item"):
        shown = value.item()  # numpy scalars: show the value, keep the numpy type name
    return f"{type(value).__name__} {_short_repr(shown)}"


def _describe_arrow(arrow_type: pa.DataType, scalar: pa.Scalar) -> str:
    if not scalar.is_valid:
        return "null"
    try:
        shown = _short_repr(scalar.as_py())
    except _CONVERSION_ERRORS:
        shown = _short_repr(str(scalar))
    if pa.types.is_dictionary(arrow_type):
        arrow_type = arrow_type.value_type
    return f"{_type_name(arrow_type)} {shown}"


def _short_repr(value) -> str:
    text = repr(value)
    if len(text) > _VALUE_REPR_CHARS_MAX:
        text = text[:_VALUE_REPR_CHARS_MAX - 3] + "..."
    return text


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) <= _REASON_CHARS_MAX else text[:_REASON_CHARS_MAX - 3] + "..."


def _type_name(t: pa.DataType) -> str:
    """``t`` as messages spell it: floats by their width (float64, not double), lists
    without the item field's name."""
    if pa.types.is_floating(t):
        return f"float{t.bit_width}"
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        kind = "list" if pa.types.is_list(t) else "large_list"
        return f"{kind}<{_type_name(t.value_type)}>"
    if pa.types.is_struct(t):
        return "struct<" + ", ".join(f"{f.name}: {_type_name(f.type)}" for f in t) + ">"
    if pa.types.is_date32(t):
        return "date32"
    return str(t)


def _no_conversion(source: pa.DataType, target: pa.DataType) -> str:
    return f"{_type_name(source)} does not convert to {_type_name(target)}"


def _names_text(names) -> str:
    return ", ".join(repr(name) for name in names)
