"""Small row sets as Python values: the commit path of a few rows without Arrow.

A durable single-row transaction is dominated by fixed costs, and building Arrow arrays,
casting them and writing an Arrow IPC stream for one row costs several times the Python
work it replaces. So a write of at most :data:`~udrflow._limits.PY_ROWS_MAX` rows, given
as dicts of plain Python values, is validated here in Python (:func:`python_rows`) into a
:class:`PyRows`: the rows as tuples in the schema's column order, holding exactly the
values that :func:`udrflow._schema.to_arrow` would have produced. The commit then resolves
them against the writer's head state (a dict) and stores them in the log as msgpack
(``Changes.columns``/``Changes.values``), and Arrow is built only when something reads
them (``udrflow._commit`` decodes both forms).

The rule is the one of ``_schema`` (its docstring): this module only accepts what that
rule accepts *and* converts to the same value, and answers "not here" (None) for anything
else: values of other kinds, subclasses, numpy scalars, out-of-range integers, strings
that are not valid UTF-8, missing required columns, unknown columns. The caller then takes
the Arrow path, which converts the value or raises its SchemaError, so every error message
comes from one place.

Accepted here: int8-int64 and uint8-uint64 columns take ``int`` in range; float64 takes
``float``, and ``int`` up to 2**53 in magnitude (the safe cast's exact range); string and
large_string take ``str``; binary and large_binary take ``bytes``; bool takes ``bool``;
every nullable column, of any type, takes None or a missing key.

"Encodable" (:func:`encodable`) is the property of a whole schema that lets its rows live
in commits as msgpack: every column's Python values (as Arrow's ``to_pylist`` gives them)
turn back into the same Arrow value with ``pa.array(values, type)``. That holds for
integers, floats, bool, strings and binaries; tables with other columns (dates,
timestamps, decimals, lists, structs) keep the Arrow form for all their commits.
"""

from __future__ import annotations

import pyarrow as pa

try:
    import cython
except ImportError:  # running from source without Cython: see udrflow/_cython_shim.py
    from udrflow import _cython_shim as cython

from udrflow._limits import PY_ROWS_BYTES_MAX, PY_ROWS_MAX

_ABSENT = object()

# Column kinds of the validator.
_OTHER, _INT, _FLOAT, _STR, _BYTES, _BOOL = range(6)
_FLOAT_EXACT_INT_MAX = 2 ** 53  # ints beyond this are not exact as float64: Arrow's safe cast refuses them

_INT_RANGES = {
    pa.int8(): (-2 ** 7, 2 ** 7 - 1), pa.int16(): (-2 ** 15, 2 ** 15 - 1),
    pa.int32(): (-2 ** 31, 2 ** 31 - 1), pa.int64(): (-2 ** 63, 2 ** 63 - 1),
    pa.uint8(): (0, 2 ** 8 - 1), pa.uint16(): (0, 2 ** 16 - 1),
    pa.uint32(): (0, 2 ** 32 - 1), pa.uint64(): (0, 2 ** 64 - 1),
}


def _kind(t: pa.DataType) -> tuple[int, int, int]:
    if t in _INT_RANGES:
        lo, hi = _INT_RANGES[t]
        return _INT, lo, hi
    if t == pa.float64():
        return _FLOAT, 0, 0
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return _STR, 0, 0
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return _BYTES, 0, 0
    if pa.types.is_boolean(t):
        return _BOOL, 0, 0
    return _OTHER, 0, 0


def _encodable_type(t: pa.DataType) -> bool:
    return (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t) or pa.types.is_string(t)
            or pa.types.is_large_string(t) or pa.types.is_binary(t) or pa.types.is_large_binary(t))


@cython.cclass
class _Plan:
    # An extension type when compiled (see udrflow/_cython_shim.py): fields, not a dict.
    schema = cython.declare(object, visibility="public")
    columns = cython.declare(object, visibility="public")
    target = cython.declare(object, visibility="public")
    cols = cython.declare(object, visibility="public")
    known = cython.declare(object, visibility="public")
    check = cython.declare(object, visibility="public")

    def __init__(self, schema: pa.Schema, columns: tuple[str, ...] | None) -> None:
        self.schema = schema
        self.columns = columns
        self.target = schema if columns is None else pa.schema([schema.field(n) for n in columns])
        self.cols = [(f.name, *_kind(f.type), f.nullable) for f in self.target]
        self.known = frozenset(schema.names)
        self.check = _compile_check(self.cols, self.known)


def _compile_check(cols: list[tuple], known: frozenset) -> object:
    """The validator of ``python_rows`` for one plan, as straight-line Python: ``check(rows)``
    returns the rows as tuples, or None ("not here"). The same tests, in the same order, as
    the generic loop (``_check_rows``) would make for these columns, with each column's
    kind decided once here instead of for every value: the per-value branching was most of
    a small commit's validation cost. Column names go in as ``repr`` literals."""
    body = ["def check(rows):", "    out = []", "    nbytes = 0", "    for r in rows:",
            "        if type(r) is not dict:", "            return None", "        get = r.get"]
    required = sum(1 for c in cols if not c[4])
    nullable_any = required != len(cols)
    if nullable_any:
        body.append(f"        found = {required}")
    for i, (name, k, lo, hi, nullable) in enumerate(cols):
        v = f"v{i}"
        if k == _INT:
            test = [f"if type({v}) is not int or not {lo!r} <= {v} <= {hi!r}:", "    return None"]
        elif k == _FLOAT:
            test = [f"if type({v}) is not float:",
                    f"    if type({v}) is not int or not {-_FLOAT_EXACT_INT_MAX!r} <= {v} <= {_FLOAT_EXACT_INT_MAX!r}:",
                    "        return None",
                    f"    {v} = float({v})"]
        elif k == _STR:
            test = [f"if type({v}) is not str:", "    return None",
                    f"if not {v}.isascii():", "    try:", f"        {v}.encode()",
                    "    except UnicodeEncodeError:", "        return None",
                    f"nbytes += len({v})"]
        elif k == _BYTES:
            test = [f"if type({v}) is not bytes:", "    return None", f"nbytes += len({v})"]
        elif k == _BOOL:
            test = [f"if type({v}) is not bool:", "    return None"]
        else:
            test = ["return None"]  # a value for a column of another type: the Arrow path converts it
        if nullable:  # missing or None: a null
            body += [f"        {v} = get({name!r}, _ABSENT)", f"        if {v} is _ABSENT:", f"            {v} = None",
                     "        else:", "            found += 1", f"            if {v} is not None:"]
            body += ["                " + line for line in test]
        else:  # missing (get gives None) or None: no type test passes None
            body.append(f"        {v} = get({name!r})")
            body += ["        " + line for line in (test if k != _OTHER else ["return None"])]
    count = "found" if nullable_any else str(required)
    body += [f"        if {count} != len(r) and any(key not in known for key in r):",
             "            return None  # an unknown column: the Arrow path names it",
             "        out.append((" + "".join(f"v{i}, " for i in range(len(cols))) + "))",
             "    if nbytes > PY_ROWS_BYTES_MAX:", "        return None", "    return out"]
    namespace = {"_ABSENT": _ABSENT, "known": known, "PY_ROWS_BYTES_MAX": PY_ROWS_BYTES_MAX,
                 "UnicodeEncodeError": UnicodeEncodeError}
    exec(compile("\n".join(body), "<udrflow._pyrows check>", "exec"), namespace)
    return namespace["check"]


# Plans and encodability by schema object: the catalog hands out one schema object per
# table definition, so an identity lookup finds it without hashing the schema.
_PLANS_MAX = 256
_plans: dict[tuple[int, tuple[str, ...] | None], _Plan] = {}
_encodable: dict[int, tuple[pa.Schema, bool]] = {}


def _plan(schema: pa.Schema, columns) -> _Plan | None:
    cols = None if columns is None else tuple(columns)
    plan = _plans.get((id(schema), cols))
    if plan is not None and plan.schema is schema:
        return plan
    if cols is not None and (len(set(cols)) != len(cols) or any(n not in schema.names for n in cols)):
        return None  # a usage error: to_arrow says which
    if len(_plans) >= _PLANS_MAX:
        _plans.clear()
    plan = _plans[(id(schema), cols)] = _Plan(schema, cols)
    return plan


def encodable(schema: pa.Schema) -> bool:
    """Whether rows of ``schema`` may be stored as msgpack values (see the module docstring)."""
    hit = _encodable.get(id(schema))
    if hit is not None and hit[0] is schema:
        return hit[1]
    if len(_encodable) >= _PLANS_MAX:
        _encodable.clear()
    ok = all(_encodable_type(f.type) for f in schema)
    _encodable[id(schema)] = (schema, ok)
    return ok


@cython.cclass
class PyRows:
    """Rows checked by :func:`python_rows`: tuples of Python values in ``schema``'s column
    order, equal to what ``to_arrow`` gives for the same input. ``to_table()`` builds (once)
    the Arrow table, for the code paths that need one."""

    # An extension type when compiled (see udrflow/_cython_shim.py): fields, not a dict.
    schema = cython.declare(object, visibility="public")
    rows = cython.declare(object, visibility="public")
    keys = cython.declare(object, visibility="public")
    _table = cython.declare(object, visibility="public")

    def __init__(self, schema: pa.Schema, rows: list[tuple]) -> None:
        self.schema = schema
        self.rows = rows
        self.keys: tuple[list[str], list] | None = None  # (key columns, the key of each row), once asked
        self._table: pa.Table | None = None

    @property
    def num_rows(self) -> int:
        return len(self.rows)

    @property
    def column_names(self) -> list[str]:
        return self.schema.names

    def to_table(self) -> pa.Table:
        if self._table is None:
            self._table = rows_to_table(self.rows, self.schema)
        return self._table

    def __repr__(self) -> str:
        return f"PyRows({len(self.rows)} rows of {self.schema.names})"


@cython.ccall
@cython.locals(rows=PyRows)
def key_values(rows: PyRows, pk: list[str]) -> list:
    """The key of each of ``rows`` as ``_head.key_list`` spells keys (a value, or a tuple for
    several key columns); computed once per PyRows (the key check, the conflict check and
    the resolution all need them). A key column missing from ``rows`` is a ValueError."""
    cached = rows.keys
    if cached is not None and cached[0] == pk:
        return cached[1]
    global _last_key_index
    schema = rows.schema
    last = _last_key_index
    if last[0] is schema and last[1] is pk:  # (callers pass a table's shared, never mutated pk list)
        idx = last[2]
    else:
        hit = _key_indexes.get((id(schema), *pk))
        idx = hit[1] if hit is not None and hit[0] is schema else _key_index(schema, pk)
        _last_key_index = (schema, pk, idx)
    if idx is None:
        raise ValueError(f"key columns {pk} are not all among the columns {rows.schema.names}")
    if len(idx) == 1:
        i = idx[0]
        keys = [r[i] for r in rows.rows]
    else:
        keys = [tuple([r[i] for i in idx]) for r in rows.rows]
    rows.keys = (pk, keys)
    return keys


_key_indexes: dict[tuple, tuple[pa.Schema, list[int] | None]] = {}  # (id(schema), *pk) -> (schema, positions)
_last_key_index: tuple = (None, None, None)  # key_values' last (schema, pk, positions), by identity


def _key_index(schema: pa.Schema, pk: list[str]) -> list[int] | None:
    """Positions of the ``pk`` columns in ``schema`` (None if one is missing), by schema
    identity like the plans: ``schema.names`` builds a new list on every call."""
    key = (id(schema), *pk)
    hit = _key_indexes.get(key)
    if hit is not None and hit[0] is schema:
        return hit[1]
    if len(_key_indexes) >= _PLANS_MAX:
        _key_indexes.clear()
    names = schema.names
    idx = [names.index(k) for k in pk] if all(k in names for k in pk) else None
    _key_indexes[key] = (schema, idx)
    return idx


@cython.locals(rows=PyRows)
def keys_valid(rows: PyRows, pk: list[str]) -> bool:
    """Whether every row has its whole key (no None) and no key occurs twice: what
    ``_schema.check_keys`` accepts, answered without building anything (False: let
    ``check_keys`` find and name the offending rows)."""
    try:
        keys = key_values(rows, pk)
    except ValueError:  # a key column is missing: check_keys says which
        return False
    if len(pk) == 1:
        if None in keys:
            return False
    elif any(None in k for k in keys):
        return False
    return len(keys) == 1 or len(set(keys)) == len(keys)


def rows_to_table(rows: list[tuple], schema: pa.Schema) -> pa.Table:
    """Python row tuples (in ``schema``'s column order, values as ``to_pylist`` gives them,
    of an encodable schema or None) as an Arrow table of ``schema``."""
    arrays = [pa.array([r[j] for r in rows], type=f.type) for j, f in enumerate(schema)]
    return pa.Table.from_arrays(arrays, schema=schema)


_last_plan: _Plan | None = None  # python_rows' last plan of a whole schema (columns=None)


@cython.locals(plan=_Plan)
def python_rows(data, schema: pa.Schema, columns=None) -> PyRows | None:
    """``data`` (one dict, or a list or tuple of up to PY_ROWS_MAX dicts) as PyRows of
    ``schema`` (or of only ``columns``), or None when the Arrow path must decide."""
    kind = type(data)
    if kind is dict:
        rows = (data,)
    elif kind is list or kind is tuple:
        rows = data
        if not 0 < len(rows) <= PY_ROWS_MAX:
            return None
    else:
        return None
    global _last_plan
    plan = None
    if columns is None:
        plan = _last_plan  # (the same table's writes follow each other: one identity test)
        if plan is None or plan.schema is not schema:
            plan = _plans.get((id(schema), None))  # (_plan's cache, looked up here)
    if plan is None or plan.schema is not schema:
        plan = _plan(schema, columns)
        if plan is None:
            return None
    if columns is None:
        _last_plan = plan
    if cython.compiled:
        out = _check_rows(plan, rows)
    else:
        out = plan.check(rows)  # (_compile_check: what _check_rows does, for this plan's columns)
    return None if out is None else PyRows(plan.target, out)


@cython.ccall
@cython.locals(plan=_Plan, out=list, values=list, d=dict, nbytes=cython.Py_ssize_t, found=cython.Py_ssize_t,
               k=cython.Py_ssize_t, nullable=cython.bint)
def _check_rows(plan: _Plan, rows) -> list[tuple] | None:
    """The rule of ``python_rows`` as one generic loop over the columns: the reference that
    ``_compile_check``'s validators are tested against, and, compiled (where its locals are
    C variables and the dict lookups direct calls), what ``python_rows`` runs: it then costs
    less than the generated validator, which runs in the interpreter."""
    cols = plan.cols
    known = plan.known
    out = []
    nbytes = 0
    for r in rows:
        if type(r) is not dict:
            return None
        d = r
        found = 0
        values = []
        for name, k, lo, hi, nullable in cols:
            v = d.get(name, _ABSENT)
            if v is _ABSENT:
                v = None
            else:
                found += 1
            if v is None:
                if not nullable:
                    return None
            elif k == _INT:
                if type(v) is not int or not lo <= v <= hi:
                    return None
            elif k == _FLOAT:
                if type(v) is not float:
                    if type(v) is not int or not -_FLOAT_EXACT_INT_MAX <= v <= _FLOAT_EXACT_INT_MAX:
                        return None
                    v = float(v)
            elif k == _STR:
                if type(v) is not str:
                    return None
                if not v.isascii():
                    try:
                        v.encode()
                    except UnicodeEncodeError:  # lone surrogates: not UTF-8
                        return None
                nbytes += len(v)
            elif k == _BYTES:
                if type(v) is not bytes:
                    return None
                nbytes += len(v)
            elif k == _BOOL:
                if type(v) is not bool:
                    return None
            else:
                return None  # a value for a column of another type: the Arrow path converts it
            values.append(v)
        if found != len(d):
            for key in d:  # (a loop, not any(...): a generator is a closure, which a ccall cannot hold)
                if key not in known:
                    return None  # an unknown column: the Arrow path names it
        out.append(tuple(values))
    if nbytes > PY_ROWS_BYTES_MAX:
        return None
    return out
