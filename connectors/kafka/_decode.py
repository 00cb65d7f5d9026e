"""Kafka records -> the rows of one table, a batch at a time.

A batch of consumed records (parallel lists: topic, partition, offset, key, value) is
decoded into what one commit writes to the table:

- ``rows``: for a keyed table, the last row of every key whose last record in the batch
  has a value (upserted); for a table without a primary key, every decoded row, in the
  order consumed (inserted).
- ``deletes``: for a keyed table, the key of every key whose last record is a tombstone
  (a record with a null value).
- ``dead``: the records that failed, each with a one-line reason; they go to the
  dead-letter table (or make the source raise, with ``on_error="raise"``).

Values (``format``): ``"json"`` and ``"msgpack"`` are decoded by msgspec into a Struct
type generated from the table's schema, so types, ranges and required columns are
checked while decoding, each record on its own (a bad record never spoils its
neighbours, and the reason names the field: "Expected `int`, got `str` - at `$.amount`").
Unknown fields are ignored. ``"raw"`` stores the value's bytes in one binary (or UTF-8
string) column. A callable ``fn(value: bytes) -> dict`` is a user decoder: its dicts are
converted by udrflow's own rules (as ``db.insert`` would).

Keys (``key_format``) map the message key to the primary key: ``"text"`` (the key's UTF-8
text converted to the key column's type, e.g. ``b"42"`` -> 42; the raw bytes for a binary
column), ``"json"`` (a JSON scalar for a one-column key, or an object with the key
columns), ``"none"`` (keys are ignored: the value must hold the key columns, and
tombstones cannot be applied). ``"auto"`` is ``"text"`` for a one-column key and
``"json"`` for a composite one. When both the key and the value give a key column they
must agree; a record whose key column ends up null is dead.

Hot paths are batch-at-a-time: one msgspec call per value (the C decoder), one Arrow
array per column, vectorized key casts, merges and de-duplication. Per-record Python
work beyond that happens only for a batch that contains a failure, by bisection: a
vectorized conversion that fails is retried on halves until the failing records are
isolated, so k bad records among n cost O(k log n) conversions.
"""

from __future__ import annotations

import datetime as dt
import decimal
from collections.abc import Callable
from operator import attrgetter
from typing import Annotated, Any

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from udrflow._schema import to_arrow
from udrflow.errors import InvalidOptionError, UdrflowError

FORMATS = ("json", "msgpack", "raw")
KEY_FORMATS = ("auto", "text", "json", "none")
ERROR_TEXT_CHARS_MAX = 500  # a dead letter's reason is cut to this length

# What a failed vectorized conversion raises (and bisection then isolates).
_CONVERSION_ERRORS = (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OverflowError,
                      TypeError, ValueError, UdrflowError)


class Records:
    """One batch of consumed records as parallel lists (index i is one record)."""

    __slots__ = ("topics", "partitions", "offsets", "keys", "values")

    def __init__(self) -> None:
        self.topics: list[str] = []
        self.partitions: list[int] = []
        self.offsets: list[int] = []
        self.keys: list[bytes | None] = []
        self.values: list[bytes | None] = []

    def __len__(self) -> int:
        return len(self.offsets)


class Decoded:
    """What one batch writes: ``rows`` (upsert, or insert without a primary key),
    ``deletes`` (key columns), ``dead`` (record index -> reason, in record order)."""

    __slots__ = ("rows", "deletes", "dead")

    def __init__(self, rows: pa.Table | None, deletes: pa.Table | None, dead: dict[int, str]) -> None:
        self.rows = rows
        self.deletes = deletes
        self.dead = dead


# ---- msgspec types generated from an Arrow schema ----------------------------------------


def _int_bounds(t: pa.DataType) -> tuple[int, int]:
    info = np.iinfo(t.to_pandas_dtype())
    return int(info.min), int(info.max)


def msgspec_type(t: pa.DataType):
    """The msgspec type that decodes a JSON/msgpack value for an Arrow column of type ``t``
    (``Any`` where Arrow's own conversion decides, e.g. structs and maps)."""
    types = pa.types
    if types.is_boolean(t):
        return bool
    if types.is_integer(t):
        lo, hi = _int_bounds(t)
        return Annotated[int, msgspec.Meta(ge=lo, le=hi)]
    if types.is_floating(t):
        return float
    if types.is_string(t) or types.is_large_string(t):
        return str
    if types.is_binary(t) or types.is_large_binary(t) or types.is_fixed_size_binary(t):
        return bytes
    if types.is_timestamp(t):
        return dt.datetime
    if types.is_date(t):
        return dt.date
    if types.is_time(t):
        return dt.time
    if types.is_duration(t):
        return dt.timedelta
    if types.is_decimal(t):
        return decimal.Decimal
    if types.is_list(t) or types.is_large_list(t) or types.is_fixed_size_list(t):
        return list[msgspec_type(t.value_type) | None]
    return Any


def value_struct(schema: pa.Schema, optional: set[str]) -> type[msgspec.Struct]:
    """A Struct type with one field per column: nullable columns and those in ``optional``
    (key columns that the message key may supply) default to None; the others are required."""
    fields = []
    for i, field in enumerate(schema):
        kind = msgspec_type(field.type)
        if field.nullable or field.name in optional or kind is Any:
            fields.append((f"f{i}", kind | None if kind is not Any else Any, None))
        else:
            fields.append((f"f{i}", kind))
    required = [f for f in fields if len(f) == 2]
    defaulted = [f for f in fields if len(f) == 3]
    rename = {f"f{i}": field.name for i, field in enumerate(schema)}
    # gc=False: decoded values hold no reference cycles, and skipping GC tracking makes
    # allocating a few million of them noticeably cheaper.
    return msgspec.defstruct("Row", required + defaulted, rename=rename, gc=False)


# ---- bisection: isolate the records a vectorized conversion fails on ---------------------


def bisect(n: int, convert: Callable[[int, int], Any], bad: Callable[[int, BaseException], None]) -> list:
    """Run ``convert(lo, hi)`` on [0, n); where it raises, split the range in halves until
    single failing items remain, reported with ``bad(i, exc)``. Returns the successful
    ``(lo, hi, result)`` ranges in ascending order."""
    out: list = []
    stack = [(0, n)]
    while stack:
        lo, hi = stack.pop()
        if lo >= hi:
            continue
        try:
            out.append((lo, hi, convert(lo, hi)))
        except _CONVERSION_ERRORS as exc:
            if hi - lo == 1:
                bad(lo, exc)
            else:
                mid = (lo + hi) // 2
                stack.append((mid, hi))
                stack.append((lo, mid))
    return out


def _aligned(pieces: list, n: int, t: pa.DataType) -> pa.Array:
    """The results of ``bisect`` over arrays as one array of length n, null where an item failed."""
    parts, at = [], 0
    for lo, hi, arr in pieces:
        if lo > at:
            parts.append(pa.nulls(lo - at, t))
        parts.append(arr)
        at = hi
    if at < n:
        parts.append(pa.nulls(n - at, t))
    if len(parts) == 1:
        return parts[0]
    return pa.concat_arrays([p.combine_chunks() if isinstance(p, pa.ChunkedArray) else p for p in parts])


def _line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:ERROR_TEXT_CHARS_MAX]


def _short(value: bytes | None) -> str:
    if value is None:
        return "null"
    return repr(value[:40]) + ("..." if len(value) > 40 else "")


# ---- the decoder ---------------------------------------------------------------------------


class RowDecoder:
    """Decodes batches of records into rows of table ``table`` (schema ``schema``, key
    ``primary_key``). See the module docstring for ``format`` and ``key_format``."""

    def __init__(self, table: str, schema: pa.Schema, primary_key: list[str], format="json",
                 key_format: str = "auto", value_column: str | None = None) -> None:
        self.table = table
        self.schema = schema
        self.primary_key = list(primary_key)
        if not callable(format) and format not in FORMATS:
            raise InvalidOptionError(f"format must be one of {FORMATS} or a function fn(value: bytes) -> dict: "
                                     f"got {format!r}")
        if key_format not in KEY_FORMATS:
            raise InvalidOptionError(f"key_format must be one of {KEY_FORMATS}: got {key_format!r}")
        if key_format == "auto":
            key_format = "text" if len(self.primary_key) == 1 else "json" if self.primary_key else "none"
        if key_format == "text" and len(self.primary_key) > 1:
            raise InvalidOptionError(f"key_format='text' needs a one-column primary key, and table {table!r} has "
                                     f"{self.primary_key}: use key_format='json' (an object with the key columns)")
        self.format = format
        self.key_format = key_format if self.primary_key else "none"
        keyed_by_message = self.key_format != "none"
        # Key columns may come from the message key, so the value need not hold them; the
        # merged key is checked for nulls after the merge.
        relaxed = [f.with_nullable(True) if f.name in self.primary_key and keyed_by_message else f for f in schema]
        self.value_schema = pa.schema(relaxed)
        self.value_column = None
        if format == "raw":
            self.value_column = self._raw_column(value_column)
        elif value_column is not None:
            raise InvalidOptionError(f"value_column applies to format='raw' only: got format={format!r}")
        if format in ("json", "msgpack"):
            struct = value_struct(self.value_schema, set())
            module = msgspec.json if format == "json" else msgspec.msgpack
            self._decode_one = module.Decoder(struct).decode
            self._getters = [attrgetter(f"f{i}") for i in range(len(schema))]
        if self.key_format == "json":
            key_schema = pa.schema([schema.field(k) for k in self.primary_key])
            key_struct = value_struct(key_schema, set(self.primary_key))
            if len(self.primary_key) == 1:
                self._key_struct = key_struct
                self._decode_key = msgspec.json.Decoder(msgspec_type(key_schema[0].type) | key_struct).decode
            else:
                self._key_struct = key_struct
                self._decode_key = msgspec.json.Decoder(key_struct).decode

    def _raw_column(self, value_column: str | None) -> str:
        others = [f.name for f in self.schema if f.name not in self.primary_key]
        if value_column is None:
            if len(others) != 1:
                raise InvalidOptionError(f"format='raw' needs value_column=: table {self.table!r} has {len(others)} "
                                         f"columns besides its key ({others}); expected exactly one, or name it")
            value_column = others[0]
        if value_column not in self.schema.names:
            raise InvalidOptionError(f"value_column {value_column!r} is not a column of table {self.table!r} "
                                     f"(columns: {self.schema.names})")
        t = self.schema.field(value_column).type
        if not (pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_string(t)
                or pa.types.is_large_string(t)):
            raise InvalidOptionError(f"format='raw' stores values in column {value_column!r} of table "
                                     f"{self.table!r}: expected a binary or string column, got {t}")
        for f in self.schema:
            if f.name not in self.primary_key and f.name != value_column and not f.nullable:
                raise InvalidOptionError(f"format='raw' leaves column {f.name!r} of table {self.table!r} null, "
                                         f"but it is not nullable")
        return value_column

    # ---- one batch ----------------------------------------------------------------------

    def decode(self, records: Records) -> Decoded:
        n = len(records)
        values = records.values
        dead: dict[int, str] = {}
        vi = [i for i, v in enumerate(values) if v is not None]
        ti = [i for i, v in enumerate(values) if v is None] if len(vi) < n else []
        rows, vi = self._values([values[i] for i in vi], vi, dead)
        keys = self._keys(records.keys, dead) if self.key_format != "none" else None
        if self.primary_key:
            rows, vi = self._merge_keys(rows, vi, keys, records, dead)
            deletes, ti = self._tombstone_keys(ti, keys, dead)
            rows, deletes = self._last_per_key(rows, vi, deletes, ti)
        else:
            for i in ti:
                dead[i] = (f"tombstone (null value) for table {self.table!r}, which has no primary key: a tombstone "
                           f"can only delete by key")
            deletes = None
        return Decoded(rows if rows.num_rows else None, deletes, dict(sorted(dead.items())))

    # ---- values --------------------------------------------------------------------------

    def _values(self, values: list[bytes], vi: list[int], dead: dict[int, str]) -> tuple[pa.Table, np.ndarray]:
        if self.format in ("json", "msgpack"):
            return self._structs(values, vi, dead)
        if self.format == "raw":
            return self._raw(values, vi, dead)
        return self._user(values, vi, dead)

    def _structs(self, values, vi, dead):
        decode = self._decode_one
        try:
            structs = list(map(decode, values))
            kept = vi
        except (msgspec.DecodeError, msgspec.ValidationError):
            structs, kept = [], []
            what = self.format.upper() if self.format == "json" else self.format
            for i, v in zip(vi, values, strict=True):
                try:
                    structs.append(decode(v))
                    kept.append(i)
                except msgspec.ValidationError as exc:
                    dead[i] = f"value does not fit table {self.table!r}: {_line(exc)}"
                except msgspec.DecodeError as exc:
                    dead[i] = f"value is not valid {what}: {_line(exc)}"
        columns = []
        bad_rows: dict[int, str] = {}
        for field, getter in zip(self.value_schema, self._getters, strict=True):
            items = list(map(getter, structs))
            try:
                columns.append(pa.array(items, type=field.type))
            except _CONVERSION_ERRORS:
                columns.append(self._locate_column(items, field, bad_rows))
        table = pa.Table.from_arrays(columns, schema=self.value_schema)
        return self._drop(table, np.asarray(kept, np.int64), bad_rows, dead)

    def _locate_column(self, items: list, field: pa.Field, bad_rows: dict[int, str]) -> pa.Array:
        def bad(j: int, exc: BaseException) -> None:
            bad_rows.setdefault(j, f"value does not fit table {self.table!r}: column {field.name!r} expects "
                                   f"{field.type}, got {_line(exc)}")

        pieces = bisect(len(items), lambda lo, hi: pa.array(items[lo:hi], type=field.type), bad)
        return _aligned(pieces, len(items), field.type)

    def _drop(self, table: pa.Table, kept: np.ndarray, bad_rows: dict[int, str], dead: dict[int, str]):
        """Remove rows (positions in ``table``) found bad, recording them as dead records."""
        if not bad_rows:
            return table, kept
        for j, reason in bad_rows.items():
            dead[int(kept[j])] = reason
        mask = np.ones(table.num_rows, bool)
        mask[list(bad_rows)] = False
        return table.filter(pa.array(mask)), kept[mask]

    def _raw(self, values, vi, dead):
        field = self.value_schema.field(self.value_column)
        binary = pa.array(values, pa.binary())
        bad_rows: dict[int, str] = {}
        if pa.types.is_string(field.type) or pa.types.is_large_string(field.type):
            def bad(j: int, exc: BaseException) -> None:
                bad_rows[j] = f"value is not UTF-8 text for column {field.name!r} of table {self.table!r}: {_line(exc)}"

            column = _aligned(bisect(len(binary), lambda lo, hi: binary.slice(lo, hi - lo).cast(field.type), bad),
                              len(binary), field.type)
        else:
            column = binary.cast(field.type)
        columns = [column if f.name == self.value_column else pa.nulls(len(values), f.type) for f in self.value_schema]
        table = pa.Table.from_arrays(columns, schema=self.value_schema)
        return self._drop(table, np.asarray(vi, np.int64), bad_rows, dead)

    def _user(self, values, vi, dead):
        fn = self.format
        rows, kept = [], []
        for i, v in zip(vi, values, strict=True):
            try:
                row = fn(v)
            except Exception as exc:  # the user's code: any failure is this record's dead letter
                dead[i] = f"decoder {getattr(fn, '__name__', fn)!r} raised {type(exc).__name__}: {_line(exc)}"
                continue
            if not isinstance(row, dict):
                dead[i] = (f"decoder {getattr(fn, '__name__', fn)!r} returned {type(row).__name__}: expected a dict "
                           f"of column values")
                continue
            rows.append(row)
            kept.append(i)
        bad_rows: dict[int, str] = {}

        def bad(j: int, exc: BaseException) -> None:
            bad_rows[j] = f"decoded value does not fit table {self.table!r}: {_line(exc)}"

        pieces = bisect(len(rows), lambda lo, hi: to_arrow(rows[lo:hi], self.value_schema, table=self.table), bad)
        tables = [t for _lo, _hi, t in pieces]
        table = pa.concat_tables(tables) if tables else self.value_schema.empty_table()
        kept_arr = np.asarray(kept, np.int64)
        if bad_rows:
            for j, reason in bad_rows.items():
                dead[int(kept_arr[j])] = reason
            mask = np.ones(len(rows), bool)
            mask[list(bad_rows)] = False
            kept_arr = kept_arr[mask]
        return table, kept_arr

    # ---- keys ------------------------------------------------------------------------------

    def _keys(self, keys: list[bytes | None], dead: dict[int, str]) -> dict[str, pa.Array]:
        """The key columns given by the message keys, one entry per record (null where a
        record has no key or its key is bad; bad keys are dead)."""
        n = len(keys)
        if self.key_format == "text":
            name = self.primary_key[0]
            t = self.schema.field(name).type
            raw = pa.array(keys, pa.binary())
            if pa.types.is_binary(t) or pa.types.is_large_binary(t):
                return {name: raw.cast(t)}

            def convert(lo: int, hi: int) -> pa.Array:
                return pc.cast(raw.slice(lo, hi - lo).cast(pa.string()), t)

            def bad(i: int, exc: BaseException) -> None:
                dead[i] = (f"message key {_short(keys[i])} is not a valid {t} for key column {name!r} of table "
                           f"{self.table!r}: {_line(exc)}")

            return {name: _aligned(bisect(n, convert, bad), n, t)}
        # json
        decode, struct = self._decode_key, self._key_struct
        got: list = [None] * n
        for i, k in enumerate(keys):
            if k is None:
                continue
            try:
                got[i] = decode(k)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                dead[i] = f"message key {_short(k)} does not give the key {self.primary_key} of table {self.table!r}: " \
                          f"{_line(exc)}"
        out = {}
        for j, name in enumerate(self.primary_key):
            getter = attrgetter(f"f{j}")
            items = [None if g is None else getter(g) if isinstance(g, struct) else g for g in got]
            out[name] = pa.array(items, type=self.schema.field(name).type)
        return out

    def _merge_keys(self, rows: pa.Table, vi: np.ndarray, keys, records: Records, dead: dict[int, str]):
        """Key columns of the rows: the message key's, checked against the value's own."""
        bad = np.zeros(rows.num_rows, bool)
        reasons: dict[int, str] = {}
        if keys is not None and rows.num_rows:
            take = pa.array(vi)
            for name in self.primary_key:
                from_key = keys[name].take(take)
                from_value = rows.column(name)
                clash = pc.fill_null(pc.not_equal(from_key, from_value), False)
                if pc.any(clash).as_py():
                    for j in np.flatnonzero(clash.to_numpy(zero_copy_only=False)):
                        bad[j] = True
                        reasons.setdefault(int(j), f"message key gives {name}={from_key[j].as_py()!r} but the value "
                                                   f"has {name}={from_value[j].as_py()!r}")
                merged = pc.coalesce(from_key, from_value)
                rows = rows.set_column(rows.schema.get_field_index(name), name, merged)
        for name in self.primary_key:
            column = rows.column(name)
            if column.null_count:
                for j in np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False)):
                    bad[j] = True
                    where = "the record has no message key and" if records.keys[int(vi[j])] is None or \
                        self.key_format == "none" else "the message key gives none and"
                    reasons.setdefault(int(j), f"no value for key column {name!r} of table {self.table!r}: {where} "
                                               f"the value does not have it")
        if bad.any():
            for j, reason in reasons.items():
                dead.setdefault(int(vi[j]), reason)  # a bad message key's own reason comes first
            rows, vi = rows.filter(pa.array(~bad)), vi[~bad]
        return rows.cast(self.schema), vi

    def _tombstone_keys(self, ti: list[int], keys, dead: dict[int, str]):
        if not ti:
            return None, np.zeros(0, np.int64)
        if keys is None:
            for i in ti:
                dead[i] = (f"tombstone (null value) for table {self.table!r}, but key_format='none': message keys "
                           f"are ignored, so it cannot say which row to delete")
            return None, np.zeros(0, np.int64)
        take = pa.array(ti, pa.int64())
        table = pa.table({name: keys[name].take(take) for name in self.primary_key})
        valid = np.ones(len(ti), bool)
        for name in self.primary_key:
            valid &= table.column(name).is_valid().to_numpy(zero_copy_only=False)
        for j in np.flatnonzero(~valid):
            if ti[j] not in dead:
                dead[ti[j]] = f"tombstone (null value) without a message key: nothing says which row of table " \
                              f"{self.table!r} to delete"
        ti_arr = np.asarray(ti, np.int64)
        if not valid.all():
            table, ti_arr = table.filter(pa.array(valid)), ti_arr[valid]
        return table, ti_arr

    def _last_per_key(self, rows: pa.Table, vi: np.ndarray, deletes: pa.Table | None, ti: np.ndarray):
        """Keep, per key, only the batch's last record: its row, or its deletion."""
        pk = self.primary_key
        n_del = 0 if deletes is None else deletes.num_rows
        if n_del == 0:
            if rows.num_rows < 2 or rows.select(pk).group_by(pk, use_threads=False).aggregate([]).num_rows \
                    == rows.num_rows:
                return rows, None
        keys = rows.select(pk).append_column("__i", pa.array(vi, pa.int64()))
        if n_del:
            keys = pa.concat_tables([keys, deletes.cast(pa.schema([self.schema.field(k) for k in pk]))
                                     .append_column("__i", pa.array(ti, pa.int64()))])
        last = keys.group_by(pk, use_threads=False).aggregate([("__i", "max")]).column("__i_max")
        rows = rows.filter(pc.is_in(pa.array(vi, pa.int64()), value_set=last))
        if n_del:
            deletes = deletes.filter(pc.is_in(pa.array(ti, pa.int64()), value_set=last))
        return rows, deletes if n_del and deletes.num_rows else None
