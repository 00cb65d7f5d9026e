"""TPC-H as an oracle for SQL at any version: SF 0.1 generated offline by tpchgen-cli,
loaded through udrflow in several commits (a partial load, the rest, deletes of orders
and their lineitems, upserts, re-inserts), then all 22 queries run at several versions on
udrflow (DataFusion over udrflow snapshots) and on DuckDB over ``db.read(t, version=v)``
of the same version; the rows must agree (floats within a tolerance; in order where the
query's ORDER BY is total)."""

from __future__ import annotations

import datetime as dt
import decimal
import math
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import udrflow
from udrflow import _sql

QUERIES = pathlib.Path(__file__).resolve().parent / "tpch" / "queries"
SCALE_FACTOR = 0.1
KEYS = {
    "region": ["r_regionkey"], "nation": ["n_nationkey"], "supplier": ["s_suppkey"], "customer": ["c_custkey"],
    "part": ["p_partkey"], "partsupp": ["ps_partkey", "ps_suppkey"], "orders": ["o_orderkey"],
    "lineitem": ["l_orderkey", "l_linenumber"],
}
# Queries whose ORDER BY is a total order of the result: compared row by row in order. The
# others (ties possible in their sort keys) are compared as multisets.
ORDERED = {1, 2, 4, 5, 7, 8, 9, 12, 13, 15, 16, 20, 21, 22}


def tpchgen() -> str:
    exe = shutil.which("tpchgen-cli") or str(pathlib.Path(sys.executable).parent / "tpchgen-cli")
    if not os.path.exists(exe):
        pytest.fail("tpchgen-cli is missing: install the test extra (pip install -e '.[test]' or "
                    "pip install tpchgen-cli)")
    return exe


def query_text(n: int) -> str:
    return (QUERIES / f"q{n}.sql").read_text()


def load_parquet(directory: pathlib.Path, name: str) -> pa.Table:
    """A generated table with plain string columns (tpchgen writes string_view)."""
    table = pq.read_table(directory / f"{name}.parquet")
    schema = pa.schema([pa.field(f.name, pa.string() if pa.types.is_string_view(f.type) else f.type, nullable=False)
                        for f in table.schema])
    return table.cast(schema)


@pytest.fixture(scope="session")
def tpch_parquet(tmp_path_factory) -> pathlib.Path:
    out = tmp_path_factory.mktemp("tpch-sf01")
    subprocess.run([tpchgen(), "parquet", "-s", str(SCALE_FACTOR), "-o", str(out), "-q"], check=True, timeout=300)
    return out


@pytest.fixture(scope="session")
def tpch_db(tpch_parquet, tmp_path_factory):
    """The database, and the versions to test by label."""
    data = {name: load_parquet(tpch_parquet, name) for name in KEYS}
    db = udrflow.open(tmp_path_factory.mktemp("tpch-db") / "tpch.udr", durability="none")
    for name, key in KEYS.items():
        db.create_table(name, data[name].schema, primary_key=key)
    orders, lineitem = data["orders"], data["lineitem"]
    order_keys = orders["o_orderkey"].to_numpy()

    def lines_of(keys) -> pa.Table:
        return lineitem.filter(pc.is_in(lineitem["l_orderkey"], value_set=pa.array(keys)))

    def replaced(table: pa.Table, column: str, values) -> pa.Table:
        i = table.schema.get_field_index(column)
        return table.set_column(i, table.schema.field(i), pa.array(values).cast(table.schema.field(i).type))

    versions = {}
    # 1. Every dimension table and the orders with even keys (and their lineitems), in one transaction.
    even = order_keys % 2 == 0
    with db.transaction() as tx:
        for name in ("region", "nation", "supplier", "customer", "part", "partsupp"):
            tx.insert(name, data[name])
        tx.insert("orders", orders.filter(even))
        tx.insert("lineitem", lines_of(order_keys[even]))
    versions["half"] = tx.version
    # 2. The other half: orders and lineitems in two commits.
    db.insert("orders", orders.filter(~even))
    db.insert("lineitem", lines_of(order_keys[~even]))
    versions["full"] = db.version
    # 3. Delete every order with key % 10 == 3, and its lineitems, atomically.
    doomed = order_keys[order_keys % 10 == 3]
    with db.transaction() as tx:
        tx.delete("orders", keys=pa.table({"o_orderkey": doomed}))
        tx.delete("lineitem", keys=lines_of(doomed).select(["l_orderkey", "l_linenumber"]))
    versions["deleted"] = tx.version
    # 4. Upserts: every 7th order (still there) becomes urgent, its lineitems ship by MAIL
    #    with one more unit; every 5th customer's balance changes sign.
    urgent = orders.filter((order_keys % 7 == 0) & (order_keys % 10 != 3))
    urgent = replaced(urgent, "o_orderpriority", ["1-URGENT"] * urgent.num_rows)
    lines = lines_of(urgent["o_orderkey"])
    lines = replaced(lines, "l_quantity", pc.add(lines["l_quantity"], pa.scalar(decimal.Decimal("1.00"))))
    lines = replaced(lines, "l_shipmode", ["MAIL"] * lines.num_rows)
    customers = data["customer"]
    flipped = customers.filter(customers["c_custkey"].to_numpy() % 5 == 0)
    flipped = replaced(flipped, "c_acctbal", pc.negate(flipped["c_acctbal"]))
    with db.transaction() as tx:
        tx.upsert("orders", urgent)
        tx.upsert("lineitem", lines)
        tx.upsert("customer", flipped)
    # 5. Half of the deleted orders come back, dated a year later.
    back_keys = doomed[doomed % 4 == 1]
    back = orders.filter(pc.is_in(orders["o_orderkey"], value_set=pa.array(back_keys)))
    back = replaced(back, "o_orderdate", back["o_orderdate"].to_numpy() + np.timedelta64(365, "D"))
    with db.transaction() as tx:
        tx.insert("orders", back)
        tx.insert("lineitem", lines_of(back_keys))
    versions["head"] = db.version
    yield db, versions
    db.close()


@pytest.fixture(scope="session")
def duckdb_at(tpch_db):
    """A DuckDB connection per version, over ``db.read(t, version=v)`` of every table."""
    import duckdb

    db, _ = tpch_db
    connections = {}

    def get(version: int):
        if version not in connections:
            con = duckdb.connect()
            for name in KEYS:
                con.register(name, db.read(name, version=version))
            connections[version] = con
        return connections[version]

    yield get
    for con in connections.values():
        con.close()


def normalized(value):
    if isinstance(value, (decimal.Decimal, float)):
        return float(value)
    return value


def assert_same_rows(got: list[tuple], expected: list[tuple], ordered: bool, what: str) -> None:
    assert len(got) == len(expected), f"{what}: {len(got)} rows, DuckDB has {len(expected)}"
    got = [tuple(normalized(v) for v in row) for row in got]
    expected = [tuple(normalized(v) for v in row) for row in expected]
    if not ordered:
        def key(row):
            return tuple((v is None, v if v is not None else 0) for v in row)
        got, expected = sorted(got, key=key), sorted(expected, key=key)
    for i, (a, b) in enumerate(zip(got, expected, strict=True)):
        assert len(a) == len(b), f"{what}: row {i} has {len(a)} columns, DuckDB's has {len(b)}"
        for j, (x, y) in enumerate(zip(a, b, strict=True)):
            if isinstance(x, float) or isinstance(y, float):
                ok = x is not None and y is not None and math.isclose(x, y, rel_tol=1e-6, abs_tol=1e-6)
            else:
                ok = x == y
            assert ok, f"{what}: row {i} column {j}: udrflow {x!r}, DuckDB {y!r}\nudrflow row {a}\nDuckDB row {b}"


def run_both(db, duck, n: int, text: str, duck_text: str | None = None, **kwargs) -> list[tuple]:
    """Query ``n`` on udrflow (``text``, ``kwargs`` for db.sql) and on DuckDB (``duck_text``,
    default the same text); assert the rows agree."""
    rows = [tuple(r.values()) for r in db.sql(text, **kwargs).to_pylist()]
    expected = duck.execute(duck_text or text).fetchall()
    assert_same_rows(rows, expected, n in ORDERED, f"q{n}")
    return rows


@pytest.mark.parametrize("label", ["half", "deleted", "head"])
@pytest.mark.parametrize("n", range(1, 23))
def test_tpch_query_matches_duckdb(tpch_db, duckdb_at, n, label):
    db, versions = tpch_db
    version = versions[label]
    rows = run_both(db, duckdb_at(version), n, query_text(n), version=None if label == "head" else version)
    if n == 1:
        assert rows, "q1 returns rows at every version"


def with_as_of(text: str, version: int) -> str:
    """``text`` with ``AS OF VERSION <version>`` after every table reference."""
    tokens = _sql.tokenize(text)
    refs, _ = _sql.find_table_refs(tokens, _sql.match_parens(tokens, text), text)
    out, pos = [], 0
    for ref in refs:
        if ref.name not in KEYS:
            continue
        end = tokens[ref.name_end - 1].end
        out += [text[pos:end], f" AS OF VERSION {version}"]
        pos = end
    return "".join(out) + text[pos:]


@pytest.mark.parametrize("n", range(1, 23))
def test_tpch_with_as_of_in_the_text(tpch_db, duckdb_at, n):
    """The queries with ``AS OF VERSION v`` written after every table reference, run while
    the head is newer: every reference (in subqueries, joins, CTEs) reads version v."""
    db, versions = tpch_db
    v = versions["deleted"]
    text = with_as_of(query_text(n), v)
    assert " AS OF VERSION " in text
    run_both(db, duckdb_at(v), n, text, query_text(n))


def test_table_references_of_tpch_queries_are_exactly_the_from_items():
    """q8 and q9 use ``nation`` as a column alias and q15 a CTE named revenue0: only FROM
    items count as tables."""
    expected = {8: ["part", "supplier", "lineitem", "orders", "customer", "nation", "nation", "region"],
                9: ["part", "supplier", "lineitem", "partsupp", "orders", "nation"],
                15: ["lineitem", "supplier", "revenue0", "revenue0"],
                22: ["customer", "customer", "orders"],
                7: ["supplier", "lineitem", "orders", "customer", "nation", "nation"]}
    for n, names in expected.items():
        text = query_text(n)
        tokens = _sql.tokenize(text)
        refs, ctes = _sql.find_table_refs(tokens, _sql.match_parens(tokens, text), text)
        assert [r.name for r in refs] == names, n
        assert ctes == ({"revenue0"} if n == 15 else set()), n


def test_mixed_versions_in_one_query_match_duckdb(tpch_db):
    """orders at one version joined with lineitem at another, in one query."""
    import duckdb

    db, versions = tpch_db
    a, b = versions["full"], versions["head"]
    text = ("SELECT o.o_orderpriority, count(*) AS n, sum(l.l_quantity) AS qty "
            "FROM orders AS OF VERSION {a} o JOIN lineitem AS OF VERSION {b} l ON l.l_orderkey = o.o_orderkey "
            "GROUP BY o.o_orderpriority ORDER BY o.o_orderpriority")
    got = db.sql(text.format(a=a, b=b))
    con = duckdb.connect()
    con.register("orders_a", db.read("orders", version=a))
    con.register("lineitem_b", db.read("lineitem", version=b))
    expected = con.execute(text.replace("orders AS OF VERSION {a}", "orders_a")
                           .replace("lineitem AS OF VERSION {b}", "lineitem_b")).fetchall()
    assert_same_rows([tuple(r.values()) for r in got.to_pylist()], expected, True, "mixed versions")
    assert a != b and len(expected) == 5
    # And the plain query at version a differs from it (the upserts changed priorities).
    assert db.sql(text.format(a=a, b=a)).to_pylist() != got.to_pylist()


def test_as_of_timestamp_resolves_to_the_commit_at_or_before_it(tpch_db):
    db, versions = tpch_db
    v = versions["deleted"]
    when = dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=db.log.timestamp_of(v))
    by_time = db.sql(f"SELECT count(*) AS n FROM orders AS OF TIMESTAMP '{when.isoformat()}'").to_pylist()
    assert by_time == db.sql("SELECT count(*) AS n FROM orders", version=v).to_pylist()
