"""Table schemas and the conversion of user rows into Arrow (udrflow._schema): every accepted
input kind yields exactly the table's schema (a matching Arrow table without a copy), and
every kind of bad input is refused with a message naming the column, the expected type,
the value found and its row. A Hypothesis property round-trips random rows through
random schemas (a failure prints the falsifying example and a reproduction blob)."""

import datetime as dt
import doctest
import re
from decimal import Decimal

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from udrflow import _schema
from udrflow._schema import (
    COLUMNS_MAX,
    NESTING_DEPTH_MAX,
    add_column_schema,
    check_keys,
    check_table_schema,
    conform,
    schema_from_bytes,
    schema_to_bytes,
    to_arrow,
)
from udrflow.errors import CorruptionError, InternalError, SchemaError, UsageError

ORDERS = check_table_schema(
    pa.schema([("id", pa.int64()), ("customer", pa.string()), ("amount", pa.float64())], metadata={"m": "1"}),
    ["id"], table="orders")

# One column of every supported kind, to catch a type the conversion forgets.
WIDE = check_table_schema(pa.schema([
    ("id", pa.int64()), ("i8", pa.int8()), ("u64", pa.uint64()), ("f32", pa.float32()), ("f64", pa.float64()),
    ("flag", pa.bool_()), ("name", pa.string()), ("big_name", pa.large_string()), ("blob", pa.binary()),
    ("day", pa.date32()), ("at", pa.timestamp("ms")), ("at_utc", pa.timestamp("us", tz="UTC")),
    ("price", pa.decimal128(10, 2)), ("tags", pa.list_(pa.int64())), ("notes", pa.large_list(pa.string())),
    ("addr", pa.struct([("zip", pa.string()), ("no", pa.int32())])),
]), ["id"], table="wide")

WIDE_ROW = {
    "id": 1, "i8": -5, "u64": 2**64 - 1, "f32": 1.5, "f64": 2.25, "flag": True, "name": "ann",
    "big_name": "b",
    "blob": b"\x00\xff", "day": dt.date(2024, 2, 29), "at": dt.datetime(2024, 1, 1, 12, 0, 0, 5000),
    "at_utc": dt.datetime(2024, 1, 1, 12, tzinfo=dt.UTC), "price": Decimal("9.99"), "tags": [1, None, 3],
    "notes": ["x"], "addr": {"zip": "8000", "no": 7},
}


def rows_orders(n):
    return [{"id": i, "customer": f"c{i % 7}", "amount": i * 0.5} for i in range(n)]


class ArrowStream:
    """Any object exporting the Arrow C stream interface (as polars and DuckDB do)."""

    def __init__(self, table):
        self.table = table

    def __arrow_c_stream__(self, requested_schema=None):
        return self.table.__arrow_c_stream__(requested_schema)


# --- good input -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["list", "tuple", "dict", "table", "batch", "reordered", "chunked",
                                  "stream"])
def test_every_accepted_kind_gives_exactly_the_schema(kind):
    rows = rows_orders(3)
    table = pa.Table.from_pylist(rows)  # inferred types, nullable key: the cast fits them
    data = {
        "list": rows, "tuple": tuple(rows), "dict": rows[0], "table": table, "batch": table.to_batches()[0],
        "reordered": table.select(["amount", "id", "customer"]),
        "chunked": pa.concat_tables([table.slice(0, 1), table.slice(1)]), "stream": ArrowStream(table),
    }[kind]
    result = to_arrow(data, ORDERS, table="orders")
    assert result.schema.equals(ORDERS, check_metadata=True)
    assert result.to_pylist() == (rows[:1] if kind == "dict" else rows)


def test_every_supported_type_converts_from_python_and_from_arrow():
    result = to_arrow([WIDE_ROW, {"id": 2}], WIDE, table="wide")
    assert result.schema.equals(WIDE)
    back = result.to_pylist()
    assert back[0] == WIDE_ROW
    assert back[1] == {name: (2 if name == "id" else None) for name in WIDE.names}
    again = to_arrow(result, WIDE, table="wide")
    assert again.to_pylist() == back


def test_a_matching_table_is_returned_without_copying():
    n = 1_000_000
    table = pa.table({"id": pa.array(range(n)), "customer": pa.array(["x"] * n),
                      "amount": pa.array([0.5] * n)})
    result = to_arrow(table, ORDERS, table="orders")
    for name in ORDERS.names:
        address = table.column(name).chunk(0).buffers()[1].address
        assert result.column(name).chunk(0).buffers()[1].address == address
    keys = to_arrow(table, ORDERS, table="orders", columns=["id"])
    assert keys.column(0).chunk(0).buffers()[1].address == table.column(0).chunk(0).buffers()[1].address
    batch = table.to_batches()[0]
    from_batch = to_arrow(batch, ORDERS, table="orders")
    assert from_batch.column(0).chunk(0).buffers()[1].address == batch.column(0).buffers()[1].address


def test_an_empty_list_gives_an_empty_table_with_the_schema():
    result = to_arrow([], ORDERS, table="orders")
    assert result.num_rows == 0 and result.schema.equals(ORDERS, check_metadata=True)


def test_missing_nullable_columns_and_keys_are_null():
    result = to_arrow([{"id": 1}, {"id": 2, "amount": 3}], ORDERS, table="orders")
    assert result.to_pylist() == [{"id": 1, "customer": None, "amount": None},
                                  {"id": 2, "customer": None, "amount": 3.0}]
    assert to_arrow(pa.table({"id": [5]}), ORDERS, table="orders").to_pylist() == [
        {"id": 5, "customer": None, "amount": None}]


def test_lossless_conversions_are_accepted():
    # Whole floats fit integer columns and ints fit float and decimal columns: the safe
    # cast checks each value, so only a value that would change is refused.
    rows = [{"id": 1.0, "amount": 3}, {"id": 2, "amount": 2**53}]
    assert to_arrow(rows, ORDERS, table="orders").to_pylist() == [
        {"id": 1, "customer": None, "amount": 3.0}, {"id": 2, "customer": None, "amount": float(2**53)}]
    wide = to_arrow([{"id": 1, "price": 3, "u64": 2**63, "at": dt.datetime(2024, 1, 1, 0, 0, 1)}], WIDE,
                    table="wide").to_pylist()[0]
    assert wide["price"] == Decimal("3.00") and wide["u64"] == 2**63
    assert wide["at"] == dt.datetime(2024, 1, 1, 0, 0, 1)
    arrow = pa.table({"id": pa.array([1], pa.int8()), "customer": pa.array(["a"]).dictionary_encode(),
                      "amount": pa.array([1.5], pa.float32())})
    assert to_arrow(arrow, ORDERS, table="orders").to_pylist() == [{"id": 1, "customer": "a", "amount": 1.5}]


def test_columns_keeps_only_those_columns_and_ignores_the_tables_others():
    rows = [{"id": 1, "amount": "not checked: a delete needs only the key"}]
    result = to_arrow(rows, ORDERS, table="orders", columns=["id"])
    assert result.schema.names == ["id"] and result.column(0).to_pylist() == [1]
    with pytest.raises(SchemaError, match="unknown column 'nope'"):
        to_arrow([{"id": 1, "nope": 2}], ORDERS, table="orders", columns=["id"])
    missing = "column 'id' of table 'orders' is required (not nullable): missing from the input"
    with pytest.raises(SchemaError, match=re.escape(missing)):
        to_arrow([{"amount": 1.0}], ORDERS, table="orders", columns=["id"])
    with pytest.raises(UsageError, match="'idx' is not one"):
        to_arrow([{"id": 1}], ORDERS, table="orders", columns=["idx"])


# --- bad input --------------------------------------------------------------------------------

BAD_VALUES = [
    # (input rows or table, schema, exact message)
    ([*rows_orders(17), {"id": 17, "amount": "abc"}], ORDERS,
     "column 'amount' of table 'orders' expects float64, got str 'abc' at row 17"),
    (pa.table({"id": [1, 2], "amount": ["1.5", "abc"]}), ORDERS,
     "column 'amount' of table 'orders' expects float64, got string '1.5' at row 0"),
    ([{"id": 1}, {"id": 2**63}], ORDERS,
     "column 'id' of table 'orders' expects int64, got int 9223372036854775808 at row 1 "
     "(Integer value out of bounds)"),
    ([{"id": 1, "i8": 300}], WIDE,
     "column 'i8' of table 'wide' expects int8, got int 300 at row 0 "
     "(Integer value 300 not in range: -128 to 127)"),
    (pa.table({"id": [1], "i8": [300]}), WIDE,
     "column 'i8' of table 'wide' expects int8, got int64 300 at row 0 "
     "(Integer value 300 not in range: -128 to 127)"),
    ([{"id": 1}, {"id": 2.5}], ORDERS,
     "column 'id' of table 'orders' expects int64, got float 2.5 at row 1 "
     "(Float value 2.500000 was truncated converting to int64)"),
    (pa.table({"id": [1.0, 2.5]}), ORDERS,
     "column 'id' of table 'orders' expects int64, got float64 2.5 at row 1 "
     "(Float value 2.500000 was truncated converting to int64)"),
    ([{"id": 1, "u64": 2**64 - 1}, {"id": 2, "u64": 0.5}], WIDE,
     "column 'u64' of table 'wide' expects uint64, got float 0.5 at row 1"),
    ([{"id": 1, "amount": 2**53 + 1}], ORDERS,
     "column 'amount' of table 'orders' expects float64, got int 9007199254740993 at row 0 (Integer value "
     "9007199254740993 not in range: -9007199254740992 to 9007199254740992)"),
    ([{"id": True}], ORDERS, "column 'id' of table 'orders' expects int64, got bool True at row 0"),
    ([{"id": 1, "flag": 1}], WIDE, "column 'flag' of table 'wide' expects bool, got int 1 at row 0"),
    ([{"id": 1, "customer": 5}], ORDERS,
     "column 'customer' of table 'orders' expects string, got int 5 at row 0"),
    ([{"id": 1, "customer": "a"}, {"id": 2, "customer": 5}], ORDERS,
     "column 'customer' of table 'orders' expects string, got int 5 at row 1"),
    ([{"id": 1, "name": b"\xff"}], WIDE,
     "column 'name' of table 'wide' expects string, got bytes b'\\xff' at row 0 (Invalid UTF8 payload)"),
    ([{"id": 1, "price": Decimal("1.234")}], WIDE,
     "column 'price' of table 'wide' expects decimal128(10, 2), got Decimal Decimal('1.234') at row 0 "
     "(Rescaling Decimal value would cause data loss)"),
    ([{"id": 1, "price": 1.5}], WIDE,
     "column 'price' of table 'wide' expects decimal128(10, 2), got float 1.5 at row 0"),
    ([{"id": 1, "day": dt.date(2024, 1, 1)}, {"id": 2, "day": dt.datetime(2024, 1, 1, 12)}], WIDE,
     "column 'day' of table 'wide' expects date32, "
     "got datetime datetime.datetime(2024, 1, 1, 12, 0) at row 1 "
     "(a datetime is not a date: it would lose its time of day)"),
    ([{"id": 1, "at": dt.datetime(2024, 1, 1, 0, 0, 0, 1)}], WIDE,
     "column 'at' of table 'wide' expects timestamp[ms], "
     "got datetime datetime.datetime(2024, 1, 1, 0, 0, 0, 1) "
     "at row 0 (Casting from timestamp[us] to timestamp[ms] would lose data: 1704067200000001)"),
    ([{"id": 1, "at": 5}], WIDE, "column 'at' of table 'wide' expects timestamp[ms], got int 5 at row 0"),
    ([{"id": 1, "tags": [1]}, {"id": 2, "tags": []}, {"id": 3, "tags": [1.5]}], WIDE,
     "column 'tags' of table 'wide' expects list<int64>, got list [1.5] at row 2 "
     "(Float value 1.500000 was truncated converting to int64)"),
    ([{"id": 1, "tags": []}, {"id": 2, "tags": ["x"]}], WIDE,
     "column 'tags' of table 'wide' expects list<int64>, got list ['x'] at row 1 "
     "(list items: string does not convert to int64)"),
    (pa.table({"id": [1], "tags": [["x"]]}), WIDE,
     "column 'tags' of table 'wide' expects list<int64>, got list<string> ['x'] at row 0 "
     "(list items: string does not convert to int64)"),
    ([{"id": 1, "addr": {"zip": "1"}}, {"id": 2, "addr": {"zip": "2", "typo": 1}}], WIDE,
     "column 'addr' of table 'wide' expects struct<zip: string, no: int32>, got dict {'zip': '1'} at row 0 "
     "(unknown field 'typo'; the fields are 'zip', 'no')"),
    # kinds pyarrow's inference would take after an earlier value of another kind
    ([{"id": 1, "amount": 1.5}, {"id": 2, "amount": True}], ORDERS,
     "column 'amount' of table 'orders' expects float64, got bool True at row 1"),
    ([{"id": 1.0}, {"id": False}], ORDERS,
     "column 'id' of table 'orders' expects int64, got bool False at row 1"),
    ([{"id": 1, "day": dt.date(2024, 1, 1)}, {"id": 2, "day": 5}], WIDE,
     "column 'day' of table 'wide' expects date32, got int 5 at row 1"),
    ([{"id": 1, "at": dt.datetime(2024, 1, 1)}, {"id": 2, "at": 5}], WIDE,
     "column 'at' of table 'wide' expects timestamp[ms], got int 5 at row 1"),
    # nulls in a NOT NULL column: None, a missing key, an Arrow null
    ([{"id": 1}, {"id": None}], ORDERS,
     "column 'id' of table 'orders' is required (not nullable): got None at row 1"),
    ([{"id": 1}, {"amount": 1.0}], ORDERS,
     "column 'id' of table 'orders' is required (not nullable): missing from row 1"),
    (pa.table({"id": [1, None, None]}), ORDERS,
     "column 'id' of table 'orders' is required (not nullable): got null at row 1"),
    # the earliest bad row wins, whichever column it is in
    ([{"id": 1, "amount": 1.0}, {"id": 2, "customer": 3}, {"id": 3, "amount": "x"}], ORDERS,
     "column 'customer' of table 'orders' expects string, got int 3 at row 1"),
]


@pytest.mark.parametrize("data,schema,message", BAD_VALUES)
def test_bad_values_name_column_expected_type_found_value_and_row(data, schema, message):
    with pytest.raises(SchemaError) as info:
        to_arrow(data, schema, table=schema is ORDERS and "orders" or "wide")
    assert str(info.value) == message


def test_missing_and_unknown_columns():
    with pytest.raises(SchemaError) as info:
        to_arrow([{"customer": "ann"}], ORDERS, table="orders")
    assert str(info.value) == ("column 'id' of table 'orders' is required (not nullable): "
                               "missing from the input")
    with pytest.raises(SchemaError) as info:
        to_arrow([{"id": 1}, {"id": 2, "amt": 3}], ORDERS, table="orders")
    assert str(info.value) == ("unknown column 'amt' in the input for table 'orders' (first at row 1): "
                               "the table's columns are 'id', 'customer', 'amount'")
    with pytest.raises(SchemaError) as info:
        to_arrow(pa.table({"id": [1], "amt": [3]}), ORDERS, table="orders")
    assert str(info.value) == ("unknown column 'amt' in the input for table 'orders': "
                               "the table's columns are 'id', 'customer', 'amount'")
    with pytest.raises(SchemaError, match=re.escape("unknown column 5 in the input for table 'orders' "
                                                    "(first at row 0)")):
        to_arrow([{"id": 1, 5: "x"}], ORDERS, table="orders")
    twice = pa.Table.from_arrays([pa.array([1]), pa.array([2])], names=["id", "id"])
    with pytest.raises(SchemaError, match="column 'id' appears twice in the input for table 'orders'"):
        to_arrow(twice, ORDERS, table="orders")


def test_rows_that_are_not_dicts_and_inputs_of_no_known_kind():
    with pytest.raises(SchemaError) as info:
        to_arrow([{"id": 1}, [1, 2]], ORDERS, table="orders")
    assert str(info.value) == ("row 1 of the input for table 'orders' must be a dict of column values: "
                               "got list [1, 2]")
    with pytest.raises(UsageError, match="must be a pyarrow Table or RecordBatch, .* got int"):
        to_arrow(5, ORDERS, table="orders")
    with pytest.raises(UsageError, match="must be a pyarrow Table or RecordBatch, .* got generator"):
        to_arrow((row for row in rows_orders(2)), ORDERS, table="orders")


def test_long_values_are_shortened_in_messages():
    with pytest.raises(SchemaError) as info:
        to_arrow([{"id": 1, "amount": "x" * 500}], ORDERS, table="orders")
    assert str(info.value) == ("column 'amount' of table 'orders' expects float64, got str '" + "x" * 56
                               + "... at row 0")


def test_dataframes_are_converted_by_the_same_rule():
    pd = pytest.importorskip("pandas",
                             reason="pandas is optional; the DataFrame path is tested when it is installed")
    frame = pd.DataFrame({"id": [1, 2], "customer": pd.Categorical(["a", None]), "amount": [1, 2]},
                         index=[10, 20])
    result = to_arrow(frame, ORDERS, table="orders")
    assert result.schema.equals(ORDERS, check_metadata=True)
    assert result.to_pylist() == [{"id": 1, "customer": "a", "amount": 1.0}, {"id": 2, "customer": None,
                                                                          "amount": 2.0}]
    with pytest.raises(SchemaError) as info:  # rows are positions, not index labels
        to_arrow(pd.DataFrame({"id": [1, 2], "amount": [1.5, "abc"]}, index=[10, 20]), ORDERS, table="orders")
    assert str(info.value) == "column 'amount' of table 'orders' expects float64, got str 'abc' at row 1"
    with pytest.raises(SchemaError) as info:
        to_arrow(pd.DataFrame({"id": [1.0, 2.5]}), ORDERS, table="orders")
    assert str(info.value) == ("column 'id' of table 'orders' expects int64, got float64 2.5 at row 1 "
                               "(Float value 2.500000 was truncated converting to int64)")
    with pytest.raises(SchemaError, match="unknown column 'zz' in the input for table 'orders'"):
        to_arrow(pd.DataFrame({"id": [1], "zz": [2]}), ORDERS, table="orders")
    with pytest.raises(SchemaError) as info:
        to_arrow(pd.DataFrame({"id": [1, 2], "amount": pd.Series([1.5, True], dtype=object)}), ORDERS,
                 table="orders")
    assert str(info.value) == "column 'amount' of table 'orders' expects float64, got bool True at row 1"
    big = to_arrow(pd.DataFrame({"id": [1], "u64": [2**64 - 1]}), WIDE, table="wide")
    assert big.column("u64").to_pylist() == [2**64 - 1]


# --- primary keys -----------------------------------------------------------------------------


def test_duplicate_keys_name_the_key_and_both_rows():
    table = to_arrow([{"id": i % 6} for i in range(10)], ORDERS, table="orders")
    with pytest.raises(SchemaError) as info:
        check_keys(table, ["id"], table_name="orders", op="insert")
    assert str(info.value) == "duplicate primary key (id=0) in rows 0 and 6 of the insert into table 'orders'"


def test_duplicate_composite_keys_and_the_delete_wording():
    table = pa.table({"a": [1, 1, 2, 1], "b": ["x", "y", "x", "y"]})
    check_keys(table.slice(0, 3), ["a", "b"], table_name="t", op="upsert")
    with pytest.raises(SchemaError) as info:
        check_keys(table, ["a", "b"], table_name="t", op="delete")
    assert str(info.value) == ("duplicate primary key (a=1, b='y') in rows 1 and 3 "
                               "of the delete from table 't'")


def test_null_keys_are_refused():
    table = pa.table({"a": [1, 2, 3], "b": ["x", None, "z"]})
    with pytest.raises(SchemaError) as info:
        check_keys(table, ["a", "b"], table_name="t", op="insert")
    assert str(info.value) == "primary key column 'b' is null at row 1 of the insert into table 't'"


@pytest.mark.parametrize("column", [pa.array([b"a", b"b"]), pa.array([True, False]),
                                    pa.array([1, 2], pa.uint64()),
                                    pa.array([Decimal("1.5"), Decimal("2")], pa.decimal128(5, 2)),
                                    pa.array([0, 1], pa.timestamp("ns", tz="Europe/Paris")),
                                    pa.array([dt.date(2024, 1, 1), dt.date(2024, 1, 2)]),
                                    pa.array(["a", "b"], pa.large_string())])
def test_distinct_keys_of_every_key_type_pass(column):
    check_keys(pa.table({"k": column}), ["k"], table_name="t", op="insert")
    with pytest.raises(SchemaError, match="duplicate primary key"):
        check_keys(pa.table({"k": pa.concat_arrays([column, column])}), ["k"], table_name="t", op="insert")


# --- schemas ----------------------------------------------------------------------------------


def test_check_table_schema_makes_keys_not_null_and_keeps_the_rest():
    schema = pa.schema([pa.field("id", pa.int64(), metadata={"doc": "key"}), ("v", pa.string())],
                       metadata={"owner": "me"})
    checked = check_table_schema(schema, ("id",), table="t")
    assert checked.field("id").nullable is False and checked.field("v").nullable is True
    assert checked.field("id").metadata == {b"doc": b"key"} and checked.metadata == {b"owner": b"me"}
    assert check_table_schema(schema, None, table="t") is schema
    assert check_table_schema(WIDE, ["id", "name", "day", "at_utc", "price", "flag", "blob"], table="wide")


REJECTED_SCHEMAS = [
    (pa.schema([]), None, "table 't' needs at least one column: the schema is empty"),
    (pa.schema([("__op", pa.int64())]), None,
     "column name '__op' of table 't' must not start with '__': such names are reserved"),
    (pa.schema([("a", pa.int64()), ("a", pa.string())]), None,
     "table 't' has two columns named 'a': column names must be unique"),
    (pa.schema([("", pa.int64())]), None, "column name '' of table 't' must not be empty"),
    (pa.schema([("a\nb", pa.int64())]), None,
     "column name 'a\\nb' of table 't' must not contain control characters"),
    (pa.schema([("x" * 256, pa.int64())]), None, "must be at most 255 bytes, got 256"),
    (pa.schema([("d", pa.dictionary(pa.int32(), pa.string()))]), None,
     "column 'd' of table 't' has type dictionary<values=string, indices=int32, ordered=0>: type dictionary"),
    (pa.schema([("m", pa.map_(pa.string(), pa.int64()))]), None,
     "is not supported; supported types are int8-int64"),
    (pa.schema([("t", pa.time64("us"))]), None, "type time64[us] is not supported"),
    (pa.schema([("n", pa.null())]), None, "type null is not supported"),
    (pa.schema([("l", pa.list_(pa.float64()))]), ["l"],
     "primary key column 'l' of table 't' has type list<float64>"),
    (pa.schema([("s", pa.struct([("x", pa.date64())]))]), None, "type date64[ms] at 's.x' is not supported"),
    (pa.schema([("s", pa.struct([pa.field("x", pa.int64(), nullable=False)]))]), None,
     "field 's.x' must be nullable (NOT NULL applies to top-level columns only)"),
    (pa.schema([("l", pa.list_(pa.field("item", pa.int64(), nullable=False)))]), None,
     "the items of 'l' must be nullable"),
    (pa.schema([("s", pa.struct([]))]), None, "struct 's' must have at least one field"),
    (pa.schema([("ts", pa.timestamp("s", tz="Mars/Olympus"))]), None,
     "'ts' has an unknown time zone 'Mars/Olympus'"),
    (pa.schema([("a", pa.int64())]), ["b"],
     "primary key column 'b' of table 't' is not a column of the schema: the columns are 'a'"),
    (pa.schema([("a", pa.int64())]), ["a", "a"], "the primary key of table 't' names column 'a' twice"),
    (pa.schema([("a", pa.int64())]), [], "the primary key of table 't' must name at least one column"),
    (pa.schema([("f", pa.float64())]), ["f"],
     "primary key column 'f' of table 't' has type float64, which cannot be a key (floats make poor keys: "
     "NaN != NaN, and -0.0 == 0.0 though their bits differ)"),
]


@pytest.mark.parametrize("schema,primary_key,message", REJECTED_SCHEMAS)
def test_check_table_schema_rejects_with_the_rule(schema, primary_key, message):
    with pytest.raises(SchemaError) as info:
        check_table_schema(schema, primary_key, table="t")
    assert message in str(info.value)


def test_check_table_schema_limits_and_argument_types():
    with pytest.raises(SchemaError, match=f"at most {COLUMNS_MAX} columns"):
        check_table_schema(pa.schema([(f"c{i}", pa.int8()) for i in range(COLUMNS_MAX + 1)]), None, table="t")
    deep = pa.int64()
    for _ in range(NESTING_DEPTH_MAX):
        deep = pa.list_(deep)
    with pytest.raises(SchemaError, match=f"deeper than {NESTING_DEPTH_MAX} levels"):
        check_table_schema(pa.schema([("deep", deep)]), None, table="t")
    with pytest.raises(UsageError, match="must be a list of column names .or None.: got str 'id'"):
        check_table_schema(ORDERS, "id", table="orders")
    with pytest.raises(UsageError, match="must be a pyarrow.Schema: got dict"):
        check_table_schema({"id": "int64"}, None, table="orders")


def test_schema_bytes_round_trip_keeps_nullability_and_metadata():
    schema = pa.schema([pa.field("id", pa.int64(), nullable=False, metadata={"k": "v"}),
                        ("addr", pa.struct([pa.field("zip", pa.string(), metadata={"doc": "postal"})])),
                        ("at", pa.timestamp("us", tz="Europe/Paris"))], metadata={"table": "orders"})
    back = schema_from_bytes(schema_to_bytes(schema))
    assert back.equals(schema, check_metadata=True)
    assert back.field("id").nullable is False
    assert back.field("addr").type.field("zip").metadata == {b"doc": b"postal"}
    assert schema_from_bytes(bytearray(schema_to_bytes(WIDE))).equals(WIDE, check_metadata=True)


def test_garbage_schema_bytes_are_corruption():
    with pytest.raises(CorruptionError,
                       match=re.escape("stored schema (7 bytes) is not an Arrow IPC schema message")):
        schema_from_bytes(b"garbage")
    with pytest.raises(UsageError):
        schema_from_bytes("not bytes")


def test_add_column_schema_appends_a_new_nullable_column():
    schema = add_column_schema(ORDERS, pa.field("note", pa.string()), table="orders")
    assert schema.names == ["id", "customer", "amount", "note"] and schema.metadata == ORDERS.metadata


@pytest.mark.parametrize("field,error,message", [
    (pa.field("amount", pa.float64()), SchemaError,
     "cannot add column 'amount' to table 'orders': the table already has it"),
    (pa.field("note", pa.string(), nullable=False), SchemaError,
     "an added column must be nullable (rows written before it have no value for it)"),
    (pa.field("__version", pa.int64()), SchemaError, "must not start with '__'"),
    (pa.field("t", pa.time32("s")), SchemaError, "type time32[s] is not supported"),
    ("note", UsageError, "must be a pyarrow.Field: got str"),
])
def test_add_column_schema_rules(field, error, message):
    with pytest.raises(error) as info:
        add_column_schema(ORDERS, field, table="orders")
    assert message in str(info.value)


def test_conform_fills_added_columns_with_nulls_without_copying_the_rest():
    old = to_arrow(rows_orders(3), ORDERS, table="orders")
    newer = add_column_schema(ORDERS, pa.field("note", pa.string()), table="orders")
    result = conform(old.select(["amount", "id", "customer"]), newer)
    assert result.schema.equals(newer, check_metadata=True)
    assert result.column("note").to_pylist() == [None] * 3
    assert result.column("id").chunk(0).buffers()[1].address == old.column("id").chunk(0).buffers()[1].address
    assert conform(old, ORDERS).to_pylist() == old.to_pylist()


def test_conform_refuses_data_that_no_add_column_explains():
    old = pa.table({"id": [1], "gone": [2]})
    with pytest.raises(InternalError, match="stored column 'gone' is not in the newer schema"):
        conform(old, ORDERS)
    with pytest.raises(InternalError, match="stored column 'id' is int32, the schema says int64"):
        conform(pa.table({"id": pa.array([1], pa.int32())}), ORDERS)


def test_the_docstring_examples_run():
    assert doctest.testmod(_schema, optionflags=doctest.ELLIPSIS).failed == 0


# --- property ---------------------------------------------------------------------------------

# Each supported kind with a strategy for its values, and values chosen so that equality
# after the round trip is plain ==: no NaN, float32-exact floats, decimals with at most
# the column's places, datetimes at the column's precision.
_UTC_MS = st.datetimes(timezones=st.just(dt.UTC)).map(
    lambda d: d.replace(microsecond=d.microsecond // 1000 * 1000))
_KINDS = {
    "int64": (pa.int64(), st.integers(-2**63, 2**63 - 1)),
    "int16": (pa.int16(), st.integers(-2**15, 2**15 - 1)),
    "uint8": (pa.uint8(), st.integers(0, 255)),
    "uint64": (pa.uint64(), st.integers(0, 2**64 - 1)),
    "float64": (pa.float64(), st.floats(allow_nan=False)),
    "float32": (pa.float32(), st.floats(width=32, allow_nan=False)),
    "bool": (pa.bool_(), st.booleans()),
    "string": (pa.string(), st.text(max_size=8)),
    "large_string": (pa.large_string(), st.text(max_size=8)),
    "binary": (pa.binary(), st.binary(max_size=8)),
    "date32": (pa.date32(), st.dates()),
    "timestamp_us": (pa.timestamp("us"), st.datetimes()),
    "timestamp_ms_utc": (pa.timestamp("ms", tz="UTC"), _UTC_MS),
    "decimal": (pa.decimal128(12, 2), st.decimals(min_value=-10**9, max_value=10**9, places=2)),
    "list": (pa.list_(pa.int32()), st.lists(st.none() | st.integers(-2**31, 2**31 - 1), max_size=3)),
    "struct": (pa.struct([("a", pa.int64()), ("b", pa.string())]),
               st.fixed_dictionaries({"a": st.none() | st.integers(-5, 5),
                                      "b": st.none() | st.text(max_size=3)})),
}


@st.composite
def schemas_and_rows(draw):
    kinds = draw(st.lists(st.sampled_from(sorted(_KINDS)), min_size=1, max_size=5))
    names = [f"c{i}" for i in range(len(kinds))]
    schema = pa.schema([(name, _KINDS[kind][0]) for name, kind in zip(names, kinds, strict=True)])
    row = st.fixed_dictionaries({}, optional={name: st.none() | _KINDS[kind][1]
                                              for name, kind in zip(names, kinds, strict=True)})
    return schema, draw(st.lists(row, max_size=12))


@settings(max_examples=300, deadline=None, database=None, print_blob=True)
@given(schemas_and_rows())
def test_random_rows_round_trip_through_random_schemas(case):
    schema, rows = case
    result = to_arrow(rows, schema, table="t")
    assert result.schema.equals(schema)
    assert result.to_pylist() == [{name: row.get(name) for name in schema.names} for row in rows]
