"""SQL at any log position: results agree with DuckDB run over ``db.read(t, version=v)`` of
the same version (the oracle), AS OF / @branch / __changelog behave as documented, the
tokenizer never takes text in strings or comments for a table, parameters are bound as
values, writes are refused before anything runs, and every error names what and where.
Everything runs against a real embedded database; nothing is mocked."""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import subprocess
import sys

import datafusion
import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import udrflow
from udrflow import _sql
from udrflow._limits import SEGMENT_SIZE_BYTES_MIN
from udrflow.errors import (
    BranchNotFoundError,
    SqlError,
    SqlReadOnlyError,
    SqlSyntaxError,
    TableNotFoundError,
    UsageError,
    VersionNotFoundError,
)
from udrflow.testing import ManualClock

ORDERS = pa.schema([("id", pa.int64()), ("customer", pa.string()), ("amount", pa.float64())])
CUSTOMERS = pa.schema([("name", pa.string()), ("city", pa.string()), ("credit", pa.int64())])
START = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


@pytest.fixture
def shop(tmp_path):
    """Two tables over eight versions, one commit an hour from 2026-01-01 00:00 UTC:

    1 create customers, 2 create orders, 3 customers ann/bob/cy, 4 orders 1-4,
    5 upsert order 1 (amount 9.5 -> 12) + insert order 5, 6 delete order 2,
    7 bob moves to Oslo, 8 orders 6-7."""
    clock = ManualClock(start_us=int(START.timestamp() * 1e6))
    db = udrflow.open(tmp_path / "shop.udr", clock=clock)

    def commit(fn):
        clock.advance(3_600_000_000)
        return fn()

    commit(lambda: db.create_table("customers", CUSTOMERS, primary_key="name"))
    commit(lambda: db.create_table("orders", ORDERS, primary_key="id"))
    commit(lambda: db.insert("customers", [{"name": "ann", "city": "Oslo", "credit": 100},
                                           {"name": "bob", "city": "Rome", "credit": 50},
                                           {"name": "cy", "city": "Rome", "credit": 0}]))
    commit(lambda: db.insert("orders", [{"id": 1, "customer": "ann", "amount": 9.5},
                                        {"id": 2, "customer": "bob", "amount": 20.0},
                                        {"id": 3, "customer": "ann", "amount": 1.25},
                                        {"id": 4, "customer": "cy", "amount": None}]))
    commit(lambda: db.upsert("orders", [{"id": 1, "customer": "ann", "amount": 12.0},
                                        {"id": 5, "customer": "bob", "amount": 7.0}]))
    commit(lambda: db.delete("orders", keys=[{"id": 2}]))
    commit(lambda: db.upsert("customers", [{"name": "bob", "city": "Oslo", "credit": 50}]))
    commit(lambda: db.insert("orders", [{"id": 6, "customer": "cy", "amount": 3.0},
                                        {"id": 7, "customer": "dee", "amount": 4.0}]))
    assert db.version == 8
    yield db
    db.close()


def oracle(db, query: str, version: int) -> list[tuple]:
    """``query`` on DuckDB over every table as udrflow reads it at ``version``."""
    con = duckdb.connect()
    try:
        for name in db.tables(version=version):
            con.register(name, db.read(name, version=version))
        return con.execute(query).fetchall()
    finally:
        con.close()


def tuples(table: pa.Table) -> list[tuple]:
    return [tuple(r.values()) for r in table.to_pylist()]


def same(a: list[tuple], b: list[tuple]) -> bool:
    if len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        for u, v in zip(x, y, strict=True):
            if isinstance(u, float) and isinstance(v, float):
                if not math.isclose(u, v, rel_tol=1e-9):
                    return False
            elif u != v:
                return False
    return True


# ---- results match the oracle ---------------------------------------------------------------

ORACLE_QUERIES = [
    "SELECT id, customer, amount FROM orders ORDER BY id",
    "SELECT customer, count(*) AS n, sum(amount) AS total FROM orders GROUP BY customer ORDER BY customer",
    "SELECT c.city, count(o.id) AS n, coalesce(sum(o.amount), 0) AS total FROM customers c "
    "LEFT JOIN orders o ON o.customer = c.name GROUP BY c.city ORDER BY c.city",
    "SELECT name FROM customers WHERE name NOT IN (SELECT customer FROM orders WHERE amount > 5) ORDER BY name",
    "SELECT id, amount, rank() OVER (PARTITION BY customer ORDER BY amount DESC NULLS LAST, id) AS r "
    "FROM orders ORDER BY id",
    "WITH big AS (SELECT * FROM orders WHERE amount >= 3) SELECT customer, max(amount) AS m FROM big "
    "GROUP BY customer ORDER BY customer",
    "SELECT o.id FROM orders o, customers c WHERE o.customer = c.name AND c.city = 'Oslo' ORDER BY o.id",
    "SELECT count(*) AS n FROM orders WHERE amount IS NULL",
]


@pytest.mark.parametrize("version", [4, 5, 6, 8])
@pytest.mark.parametrize("query", ORACLE_QUERIES)
def test_results_match_duckdb_at_every_version(shop, query, version):
    expected = oracle(shop, query, version)
    assert same(tuples(shop.sql(query, version=version)), expected)


def test_head_is_the_default_and_one_version_for_the_whole_query(shop):
    assert tuples(shop.sql("SELECT count(*) FROM orders")) == [(6,)]
    assert tuples(shop.sql("SELECT count(*) FROM orders", version=4)) == [(4,)]
    # version= as a datetime: the last commit at or before it (commit 5 is at 05:00).
    at = START + dt.timedelta(hours=5, minutes=30)
    assert tuples(shop.sql("SELECT amount FROM orders WHERE id = 1", version=at)) == [(12.0,)]
    assert tuples(shop.sql("SELECT amount FROM orders WHERE id = 1", version=at.replace(tzinfo=None))) == [(12.0,)]


def test_select_without_tables_values_and_explain(shop):
    assert tuples(shop.sql("SELECT 1 + 1 AS two")) == [(2,)]
    assert tuples(shop.sql("VALUES (1, 'a'), (2, 'b')")) == [(1, "a"), (2, "b")]
    plan = shop.sql("EXPLAIN SELECT * FROM orders AS OF VERSION 4 WHERE amount > 1")
    assert plan.num_rows >= 1 and "orders AS OF VERSION 4" in " ".join(map(str, plan.column(1).to_pylist()))


def test_empty_table_keeps_its_schema(tmp_path):
    with udrflow.open(tmp_path / "e.udr") as db:
        db.create_table("t", ORDERS, primary_key="id")
        out = db.sql("SELECT * FROM t")
        assert out.num_rows == 0 and out.schema.names == ["id", "customer", "amount"]
        assert tuples(db.sql("SELECT count(*), sum(amount) FROM t")) == [(0, None)]


def test_table_without_a_key_and_names_that_need_quotes(tmp_path):
    with udrflow.open(tmp_path / "q.udr") as db:
        db.create_table("event-log.v2", pa.schema([("kind", pa.string())]))
        db.create_table("Orders", ORDERS, primary_key="id")
        db.insert("event-log.v2", [{"kind": "a"}, {"kind": "a"}, {"kind": "b"}])
        db.insert("Orders", [{"id": 1, "customer": "x", "amount": 1.0}])
        assert tuples(db.sql('SELECT kind, count(*) FROM "event-log.v2" GROUP BY kind ORDER BY kind')) == [
            ("a", 2), ("b", 1)]
        assert tuples(db.sql('SELECT count(*) FROM "event-log.v2" AS OF VERSION 2')) == [(0,)]
        # Unquoted names fold to lower case; the only table they can mean is found anyway.
        assert tuples(db.sql("SELECT id FROM Orders")) == [(1,)]
        assert tuples(db.sql('SELECT id FROM "Orders" AS OF VERSION 4')) == [(1,)]
        with pytest.raises(TableNotFoundError, match="table 'ORDERS' does not exist"):
            db.sql('SELECT id FROM "ORDERS"')


def test_snapshots_are_registered_without_copying(shop):
    snapshot = shop.read("orders")
    parts = _sql.partitions(snapshot, 2)
    first = parts[0][0].column(0).buffers()[1]
    assert first.address == snapshot.column(0).chunks[0].buffers()[1].address
    big = pa.table({"x": pa.array(range(3 * _sql.BATCH_ROWS_MAX + 5))})
    parts = _sql.partitions(big, 2)
    assert len(parts) == 2 and sum(b.num_rows for p in parts for b in p) == big.num_rows
    assert all(b.num_rows <= _sql.BATCH_ROWS_MAX for p in parts for b in p)
    # Slices share the table's buffers: same memory, a different offset.
    assert parts[1][0].column(0).buffers()[1].address == big.column(0).chunks[0].buffers()[1].address
    assert parts[1][0].column(0).offset > 0


# ---- AS OF, mixing versions, @branch ------------------------------------------------------------


def test_as_of_version_and_mixing_versions_in_one_query(shop):
    q = ("SELECT new.id, old.amount AS before, new.amount AS after FROM orders AS OF VERSION 4 old "
         "JOIN orders new ON new.id = old.id WHERE old.amount IS DISTINCT FROM new.amount ORDER BY new.id")
    assert tuples(shop.sql(q)) == [(1, 9.5, 12.0)]
    # Unaliased, an AS OF reference is still called by its table name.
    assert tuples(shop.sql("SELECT orders.id FROM orders AS OF VERSION 4 WHERE orders.id > 3")) == [(4,)]
    # Two versions of two tables: orders at 8 with customers at 6 (bob still in Rome).
    q = ("SELECT c.city, count(*) AS n FROM orders AS OF VERSION 8 AS o JOIN customers AS OF VERSION 6 AS c "
         "ON o.customer = c.name GROUP BY c.city ORDER BY c.city")
    assert tuples(shop.sql(q)) == [("Oslo", 2), ("Rome", 3)]
    assert tuples(shop.sql(q.replace("VERSION 6", "VERSION 7"))) == [("Oslo", 3), ("Rome", 2)]
    # The whole-query version applies only to references without their own AS OF.
    q = "SELECT (SELECT count(*) FROM orders) AS now, (SELECT count(*) FROM orders AS OF VERSION 8) AS head"
    assert tuples(shop.sql(q, version=4)) == [(4, 6)]


def test_as_of_timestamp(shop):
    # Commit v is at START + v hours.
    q = "SELECT count(*) FROM orders AS OF TIMESTAMP '{}'"
    assert tuples(shop.sql(q.format("2026-01-01 06:00:00"))) == [(4,)]  # exactly commit 6
    assert tuples(shop.sql(q.format("2026-01-01T05:59:59.999999"))) == [(5,)]  # commit 5
    assert tuples(shop.sql(q.format("2026-01-01T07:00:00+01:00"))) == [(4,)]  # 06:00 UTC
    assert tuples(shop.sql(q.format("2026-01-02"))) == [(6,)]
    with pytest.raises(VersionNotFoundError, match=r"no commit at or before 2025-12-31T00:00:00\+00:00.*"
                                                   r"at line 1, column 45 of the query"):
        shop.sql(q.format("2025-12-31"))
    with pytest.raises(SqlSyntaxError, match=r"expects an ISO time .* got 'yesterday': at line 1, column 45"):
        shop.sql(q.format("yesterday"))


def test_at_branch(shop):
    assert tuples(shop.sql("SELECT count(*) FROM orders@main")) == [(6,)]
    assert tuples(shop.sql("SELECT count(*) FROM orders@main AS OF VERSION 4 o")) == [(4,)]
    assert tuples(shop.sql("SELECT count(*) FROM orders", branch="main")) == [(6,)]
    # No branch but main exists: the error names the branch and where the query names it.
    with pytest.raises(BranchNotFoundError, match=r"branch 'dev' .*: at line 2, column 13 of the query$"):
        shop.sql("SELECT *\nFROM orders@dev")
    with pytest.raises(BranchNotFoundError, match="branch 'feature-x'"):
        shop.sql('SELECT * FROM orders@"feature-x" AS OF VERSION 4')
    with pytest.raises(BranchNotFoundError, match="branch 'dev'"):
        shop.sql("SELECT 1", branch="dev")


# ---- the tokenizer: strings, comments, identifiers ----------------------------------------------


def test_table_names_in_strings_and_comments_are_not_references(shop):
    q = """-- FROM nope AS OF VERSION 99; DROP TABLE orders
    SELECT 'FROM nope AS OF VERSION 99' AS s, E'it\\'s orders@dev' AS e, $$nope AS OF VERSION 1$$ AS d,
           /* a /* nested */ FROM nope */ count(*) AS n
    FROM orders /* AS OF VERSION 1 */ WHERE customer <> 'orders AS OF VERSION 2'"""
    assert tuples(shop.sql(q)) == [("FROM nope AS OF VERSION 99", "it's orders@dev", "nope AS OF VERSION 1", 6)]
    # A column or alias that happens to be called like a table is not a table.
    q = ('SELECT o.customer AS customers, "orders".id FROM orders WHERE EXTRACT(YEAR FROM DATE \'2026-01-01\') '
         "= 2026 AND substring(customer FROM 1 FOR 1) = 'a' ORDER BY 2")
    assert tuples(shop.sql(q.replace("o.customer", "orders.customer"))) == [("ann", 1), ("ann", 3)]


def test_tokenize_positions_and_kinds():
    toks = _sql.tokenize("SELECT \"a\"\"b\", 'it''s', E'x\\'y', $1, $name, 1.5e3, x@y /* c */ -- d\n;")
    assert [(t.kind, t.text) for t in toks] == [
        ("ident", "SELECT"), ("qident", '"a""b"'), ("op", ","), ("string", "'it''s'"), ("op", ","),
        ("string", "E'x\\'y'"), ("op", ","), ("param", "$1"), ("op", ","), ("param", "$name"), ("op", ","),
        ("number", "1.5e3"), ("op", ","), ("ident", "x"), ("op", "@"), ("ident", "y"), ("op", ";"), ("eof", "")]
    assert _sql.ident_name(toks[1]) == 'a"b' and _sql.ident_name(toks[0]) == "select"
    assert _sql.position("ab\ncd", 4) == (2, 2)


@pytest.mark.parametrize("query, message", [
    ("SELECT 'abc", r"unterminated string literal: the ' is never closed: at line 1, column 8"),
    ('SELECT "abc', r"unterminated quoted identifier: the \" is never closed: at line 1, column 8"),
    ("SELECT 1 /* a /* b */", r"unterminated /\* comment: at line 1, column 10"),
    ("SELECT $$abc", r"unterminated dollar-quoted string \$\$...\$\$: at line 1, column 8"),
    ("SELECT (1", r"unbalanced parentheses: this '\(' is never closed: at line 1, column 8"),
    ("SELECT 1)", r"unbalanced parentheses: this '\)' closes nothing: at line 1, column 9"),
    ("", r"the query is empty"),
    ("  -- only a comment\n", r"the query is empty"),
    ("selec * from orders", r"expected SELECT, VALUES, WITH or EXPLAIN, got 'selec': at line 1, column 1"),
    ("SELECT * FROM orders AS OF VERSION 'x'", r"AS OF VERSION expects a version \(an integer >= 0\) or a parameter, "
                                              r"got \"'x'\": at line 1, column 36"),
    ("SELECT * FROM orders AS OF VERSION -1", r"AS OF VERSION expects a version .* got '-': at line 1, column 36"),
    ("SELECT * FROM orders AS OF SYSTEM TIME 3", r"expected VERSION or TIMESTAMP after AS OF, got 'SYSTEM'"),
    ("SELECT * FROM orders AS OF TIMESTAMP 5", r"AS OF TIMESTAMP expects a quoted time"),
    ("SELECT * FROM (SELECT 1) AS OF VERSION 3", r"AS OF VERSION must follow a table name in FROM or JOIN: "
                                                r"at line 1, column 26"),
    ("SELECT 1; SELECT 2", r"expected one statement per query, found a second one: at line 1, column 11"),
    ("SELECT * FROM orders AS OF", r"expected VERSION or TIMESTAMP after AS OF, got the end of the query: "
                                  r"at line 1, column 27"),
    ("SELECT * FROM orders@", r"expected a branch name after '@', got the end of the query: at line 1, column 22"),
    ("WITH x", r"expected AS in the common table expression, got the end of the query"),
    ("WITH x AS (SELECT 1)", r"expected SELECT, VALUES, WITH or EXPLAIN, got the end of the query"),
    ("EXPLAIN", r"expected SELECT, VALUES, WITH or EXPLAIN, got the end of the query: at line 1, column 8"),
])
def test_syntax_errors_name_the_position(shop, query, message):
    with pytest.raises(SqlSyntaxError, match=message):
        shop.sql(query)


def test_datafusion_errors_keep_its_text_and_the_position_in_the_original_query(shop):
    with pytest.raises(SqlSyntaxError) as err:
        shop.sql("SELECT *\nFROM orders AS OF VERSION 4\nWHERE amount >> > 1")
    assert str(err.value) == ('SQL error: ParserError("Expected: an expression, found: >"): '
                              "at line 3, column 17 of the query")
    assert (err.value.line, err.value.column) == (3, 17) and err.value.query.startswith("SELECT *\nFROM")
    with pytest.raises(SqlSyntaxError, match=r"found: EOF.*at line 1, column 45 of the query"):
        shop.sql("SELECT * FROM orders AS OF VERSION 4 o WHERE")
    with pytest.raises(SqlError, match=r"No field named nope: at line 1, column 14 of the query\n"
                                       r"Valid fields are orders.id, orders.customer, orders.amount"):
        shop.sql("SELECT id,   nope FROM orders AS OF VERSION 4")
    with pytest.raises(SqlError, match=r"Invalid function 'nope': at line 1, column 8 of the query"):
        shop.sql("SELECT nope(amount) FROM orders")
    with pytest.raises(TableNotFoundError, match=r"table 'datafusion.information_schema.tables' not found: "
                                                 r"at line 1, column 34 of the query"):
        shop.sql("SELECT * FROM information_schema.tables")
    with pytest.raises(SqlError, match="Divide by zero") as err:
        shop.sql("SELECT 1 / (count(*) - 6) FROM orders")
    assert not isinstance(err.value, SqlSyntaxError)


# ---- unknown tables and versions -----------------------------------------------------------------


def test_unknown_tables_and_versions_are_errors_with_positions(shop):
    with pytest.raises(TableNotFoundError, match=r"^table 'nope' does not exist at version 8( of branch 'main')? "
                                                 r"\(tables then: customers, orders\): at line 1, column 29 of the "
                                                 r"query$"):
        shop.sql("SELECT * FROM orders o JOIN nope n ON o.id = n.id")
    # orders was created at version 2.
    with pytest.raises(TableNotFoundError, match=r"table 'orders' does not exist at version 1( of branch 'main')? "
                                                 r"\(tables then: customers\): at line 1, column 15"):
        shop.sql("SELECT * FROM orders AS OF VERSION 1")
    with pytest.raises(TableNotFoundError, match="table 'orders' does not exist at version 1"):
        shop.sql("SELECT * FROM orders", version=1)
    with pytest.raises(VersionNotFoundError, match=r"version 99 is not yet in the log: expected at most 8: "
                                                   r"at line 1, column 36 of the query"):
        shop.sql("SELECT * FROM orders AS OF VERSION 99")
    with pytest.raises(VersionNotFoundError, match="version 99 is not yet in the log"):
        shop.sql("SELECT 1", version=99)
    # A common table expression is not a table, even in FROM position.
    assert tuples(shop.sql("WITH nope AS (SELECT 1 AS x) SELECT x FROM nope")) == [(1,)]
    with pytest.raises(TableNotFoundError, match="table 'nope' does not exist at version 4"):
        shop.sql("WITH nope AS (SELECT 1 AS x) SELECT x FROM nope AS OF VERSION 4")


def test_dropped_table_and_retention(tmp_path):
    with udrflow.open(tmp_path / "r.udr") as db:
        db.create_table("t", ORDERS, primary_key="id")
        v = db.insert("t", [{"id": 1, "customer": "a", "amount": 1.0}])
        db.insert("t", [{"id": 2, "customer": "b", "amount": 2.0}])
        db.drop_table("t")
        assert tuples(db.sql(f"SELECT count(*) FROM t AS OF VERSION {v}")) == [(1,)]
        with pytest.raises(TableNotFoundError, match="table 't' does not exist at version 4"):
            db.sql("SELECT count(*) FROM t")
        db.create_table("u", ORDERS, primary_key="id")
        w = db.insert("u", [{"id": 1, "customer": "a", "amount": 1.0}])
        db.insert("u", [{"id": 2, "customer": "a", "amount": 1.0}])
        db.set_since(w + 1, ["u"])
        with pytest.raises(VersionNotFoundError, match=rf"table 'u' cannot be read at version {w}.*since={w + 1}.*"
                                                       r"at line 1, column 22 of the query"):
            db.sql(f"SELECT count(*) FROM u AS OF VERSION {w}")


# ---- parameters ------------------------------------------------------------------------------------


def test_parameters_are_values_never_sql_text(shop):
    assert tuples(shop.sql("SELECT id FROM orders WHERE customer = $1 AND amount > $2 ORDER BY id",
                           params=["ann", 1.0])) == [(1,), (3,)]
    assert tuples(shop.sql("SELECT id FROM orders WHERE customer = $who ORDER BY id",
                           params={"who": "bob"})) == [(5,)]
    assert tuples(shop.sql("SELECT id FROM orders WHERE customer = $who", params={"$who": "dee"})) == [(7,)]
    # An injection attempt is just a string that matches nothing.
    evil = "ann' OR '1'='1"
    assert tuples(shop.sql("SELECT count(*) FROM orders WHERE customer = $1", params=[evil])) == [(0,)]
    assert tuples(shop.sql("SELECT $1 AS s", params=["x'); DROP TABLE orders; --"])) == [
        ("x'); DROP TABLE orders; --",)]
    # A $1 inside a string or comment is not a placeholder.
    assert tuples(shop.sql("SELECT '$1' AS s /* $2 */")) == [("$1",)]
    # Parameters in AS OF.
    assert tuples(shop.sql("SELECT count(*) FROM orders AS OF VERSION $v", params={"v": 4})) == [(4,)]
    assert tuples(shop.sql("SELECT count(*) FROM orders AS OF TIMESTAMP $1 WHERE amount > $2",
                           params=[START + dt.timedelta(hours=5), 5.0])) == [(3,)]
    assert tuples(shop.sql("SELECT count(*) FROM orders AS OF TIMESTAMP $t",
                           params={"t": "2026-01-01 04:00"})) == [(4,)]
    assert tuples(shop.sql("SELECT count(*) FROM orders WHERE amount IS NOT DISTINCT FROM $1",
                           params=[None])) == [(1,)]
    assert tuples(shop.sql("SELECT id FROM orders WHERE id IN ($1, $2) ORDER BY id LIMIT $3",
                           params=(5, 6, 1))) == [(5,)]


def test_a_parameter_in_as_of_and_in_the_query_body(shop):
    assert tuples(shop.sql("SELECT count(*) FROM orders AS OF VERSION $1 WHERE id < $1", params=[4])) == [(3,)]


def test_parameter_errors(shop):
    with pytest.raises(SqlError, match=r"no value for parameter \$2 at line 1, column 47 of the query "
                                       r"\(params given: \$1\)"):
        shop.sql("SELECT id FROM orders WHERE id = $1 OR id =   $2", params=[1])
    with pytest.raises(SqlError, match=r"no value for parameter \$1 .*\(params given: none\)"):
        shop.sql("SELECT $1")
    with pytest.raises(SqlError, match=r"params \$2 are not used by the query \(it uses: \$1\)"):
        shop.sql("SELECT $1", params=[1, 2])
    with pytest.raises(UsageError, match=r"parameter \$v of AS OF VERSION must be an int: got str '4': "
                                         r"at line 1, column 36"):
        shop.sql("SELECT * FROM orders AS OF VERSION $v", params={"v": "4"})
    with pytest.raises(UsageError, match="params must be a list/tuple"):
        shop.sql("SELECT $1", params="x")
    with pytest.raises(UsageError, match=r"parameter \$1: cannot use a object as an SQL value"):
        shop.sql("SELECT $1", params=[object()])


# ---- read-only -------------------------------------------------------------------------------------


@pytest.mark.parametrize("statement", [
    "INSERT INTO orders VALUES (9, 'x', 1.0)",
    "insert into orders select * from orders",
    "UPDATE orders SET amount = 0",
    "DELETE FROM orders",
    "CREATE TABLE t2 AS SELECT * FROM orders",
    "CREATE VIEW v AS SELECT 1",
    "DROP TABLE orders",
    "ALTER TABLE orders ADD COLUMN x INT",
    "TRUNCATE orders",
    "COPY orders TO '/tmp/udrflow-sql-test.csv'",
    "SET datafusion.execution.batch_size = 1",
    "SHOW TABLES",
    "EXPLAIN INSERT INTO orders VALUES (9, 'x', 1.0)",
    "WITH x AS (SELECT * FROM orders) INSERT INTO orders SELECT * FROM x",
    "WITH d AS (DELETE FROM orders RETURNING *) SELECT * FROM d",
    "SELECT 1; DROP TABLE orders",
    "/* SELECT */ -- SELECT\n DROP TABLE orders",
    "(INSERT INTO orders VALUES (9, 'x', 1.0))",
])
def test_statements_that_write_are_refused_before_anything_runs(shop, statement):
    before = shop.version, shop.read("orders")
    with pytest.raises(SqlReadOnlyError, match=r"udrflow SQL only reads: expected a query \(SELECT, VALUES, WITH "
                                               r"\.\.\. SELECT or EXPLAIN\), got the statement [A-Z]+ at line"):
        shop.sql(statement)
    assert (shop.version, shop.read("orders")) == before
    assert not os.path.exists("/tmp/udrflow-sql-test.csv")


def test_read_only_message_names_the_statement_and_what_to_do(shop):
    with pytest.raises(SqlReadOnlyError) as err:
        shop.sql("SELECT 1;\n  update orders set amount = 0")
    assert str(err.value) == (
        "udrflow SQL only reads: expected a query (SELECT, VALUES, WITH ... SELECT or EXPLAIN), got the statement "
        "UPDATE at line 2, column 3 of the query; change tables with db.insert, db.upsert, db.delete or a "
        "transaction")
    assert (err.value.line, err.value.column) == (2, 3)
    # Words of statements inside strings, comments and identifiers do not count.
    assert tuples(shop.sql("/* DELETE */ SELECT 'DROP TABLE orders' AS \"insert\" -- UPDATE")) == [
        ("DROP TABLE orders",)]


# ---- __changelog ------------------------------------------------------------------------------------


def test_changelog_is_what_subscribe_delivers(shop):
    expected = []
    with shop.subscribe(None, from_version=0) as sub:
        for batch in sub:
            if batch.kind == "changes":
                for row in batch.changes.to_pylist():
                    op, weight = row.pop("__op"), row.pop("__weight")
                    expected.append((batch.version, batch.timestamp, batch.table, op, weight, row))
            if sub.position == shop.version:
                break
    got = shop.sql("SELECT version, commit_ts, table_name, op, weight, row FROM __changelog")
    assert [(*r[:5], json.loads(r[5])) for r in tuples(got)] == expected
    assert got.schema.field("commit_ts").type == pa.timestamp("us", tz="UTC")
    # The update of order 1 is two rows; the delete of order 2 one.
    q = "SELECT version, op, weight, row FROM __changelog WHERE table_name = 'orders' AND version > 4 ORDER BY 1, 3, 4"
    assert [(v, op, w, json.loads(r)) for v, op, w, r in tuples(shop.sql(q))] == [
        (5, "update", -1, {"id": 1, "customer": "ann", "amount": 9.5}),
        (5, "update", 1, {"id": 1, "customer": "ann", "amount": 12.0}),
        (5, "insert", 1, {"id": 5, "customer": "bob", "amount": 7.0}),
        (6, "delete", -1, {"id": 2, "customer": "bob", "amount": 20.0}),
        (8, "insert", 1, {"id": 6, "customer": "cy", "amount": 3.0}),
        (8, "insert", 1, {"id": 7, "customer": "dee", "amount": 4.0}),
    ]


def test_changelog_as_of_and_after_new_commits(shop):
    count = "SELECT count(*) FROM __changelog"
    assert tuples(shop.sql(count)) == [(15,)]
    assert tuples(shop.sql(count + " AS OF VERSION 4")) == [(7,)]
    assert tuples(shop.sql(count, version=5)) == [(10,)]
    assert tuples(shop.sql("SELECT max(version) FROM __changelog AS OF VERSION $1", params=[6])) == [(6,)]
    shop.insert("orders", [{"id": 8, "customer": "ann", "amount": 1.0}])
    assert tuples(shop.sql(count)) == [(16,)]
    assert tuples(shop.sql(count, version=8)) == [(15,)]
    # The changelog joins like any table: the net weight per table is its row count.
    q = ("SELECT c.table_name, sum(c.weight) AS rows FROM __changelog c GROUP BY c.table_name "
         "ORDER BY c.table_name")
    assert tuples(shop.sql(q)) == [("customers", 3), ("orders", 7)]


def test_changelog_follows_many_commits_and_retention(tmp_path):
    big = os.urandom(250_000).hex()  # 80 commits of this fill more than one (smallest) log segment
    with udrflow.open(tmp_path / "c.udr", segment_size_bytes=SEGMENT_SIZE_BYTES_MIN) as db:
        db.create_table("t", ORDERS, primary_key="id")
        for i in range(80):  # a query after every commit extends the cached changelog by one commit
            db.insert("t", [{"id": i, "customer": big, "amount": float(i)}])
            assert tuples(db.sql("SELECT count(*), max(version) FROM __changelog")) == [(i + 1, i + 2)]
        assert tuples(db.sql("SELECT sum(weight) FROM __changelog AS OF VERSION 41")) == [(40,)]
        db.upsert("t", [{"id": 0, "customer": "c", "amount": -1.0}])
        rows_by_version = {v: 1 for v in range(2, 82)} | {82: 2}
        db.set_since(db.version)
        db.gc()
        since = db.log.since
        assert since > 2, "gc removed no log segment: the test needs more commits"
        # What gc removed from the log is gone from the changelog too; the rest is still there.
        assert tuples(db.sql("SELECT min(version), count(*) FROM __changelog")) == [
            (since, sum(n for v, n in rows_by_version.items() if v >= since))]


def test_snapshot_providers_live_as_long_as_their_snapshot():
    table = pa.table({"x": [1, 2, 3]})
    provider = _sql._provider(table)
    assert _sql._provider(table) is provider and id(table) in _sql._providers
    key = id(table)
    del table
    assert key not in _sql._providers


# ---- lazy DataFrames and read-only handles -------------------------------------------------------------


def test_sql_df_is_lazy_and_fixed_to_its_snapshots(shop):
    df = shop.sql_df("SELECT id, amount FROM orders WHERE amount > $1", params=[5.0])
    assert isinstance(df, datafusion.DataFrame)
    shop.insert("orders", [{"id": 100, "customer": "ann", "amount": 50.0}])
    assert sorted(tuples(df.to_arrow_table())) == [(1, 12.0), (5, 7.0)]
    assert df.count() == 2
    with pytest.raises(TableNotFoundError):
        shop.sql_df("SELECT * FROM nope")


def test_read_only_handle_sees_the_writers_commits(shop):
    with udrflow.open(shop.path, readonly=True) as reader:
        assert tuples(reader.sql("SELECT count(*) FROM orders")) == [(6,)]
        shop.insert("orders", [{"id": 50, "customer": "ann", "amount": 1.0}])
        assert tuples(reader.sql("SELECT count(*) FROM orders")) == [(7,)]
        assert tuples(reader.sql("SELECT count(*) FROM __changelog")) == [(16,)]


def test_closed_database_and_bad_arguments(tmp_path):
    db = udrflow.open(tmp_path / "c.udr")
    with pytest.raises(UsageError, match="a SQL query must be a str: got bytes"):
        db.sql(b"SELECT 1")
    db.close()
    with pytest.raises(udrflow.DatabaseClosedError):
        db.sql("SELECT 1")


# ---- the CLI ----------------------------------------------------------------------------------------


def cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "udrflow.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=120)


def test_cli_sql(shop, tmp_path):
    path = shop.path
    shop.close()
    out = cli("sql", "SELECT id, amount FROM orders AS OF VERSION 4 WHERE amount > $1 ORDER BY id", "--db", path,
              "--param", "5", "--format", "json")
    assert out.returncode == 0, out.stderr
    assert [json.loads(line) for line in out.stdout.splitlines()] == [{"id": 1, "amount": 9.5},
                                                                     {"id": 2, "amount": 20.0}]
    out = cli("sql", "SELECT count(*) AS n FROM orders WHERE customer = $who", "-p", "who=ann", "--version", "4",
              "--format", "csv", env={"UDRFLOW_DB": path})
    assert out.returncode == 0 and out.stdout == '"n"\n2\n'
    out = cli("sql", "SELECT name FROM customers ORDER BY name", "--db", path, "--at", "2026-01-01T03:30:00")
    assert out.returncode == 0 and out.stdout.split() == ["name", "ann", "bob", "cy", "(3", "rows)"]
    parquet = tmp_path / "out.parquet"
    out = cli("sql", "SELECT * FROM orders", "--db", path, "--format", "parquet", "--out", str(parquet))
    assert out.returncode == 0 and pq.read_table(parquet).num_rows == 6
    out = cli("sql", "DELETE FROM orders", "--db", path)
    assert out.returncode == 1 and "udrflow: error: udrflow SQL only reads" in out.stderr
    out = cli("sql", "SELECT * FROM orders", "--db", path, "--branch", "dev")
    assert out.returncode == 1 and "udrflow: error: branch 'dev'" in out.stderr
    out = cli("sql", "SELECT * FROM nope", "--db", path)
    assert out.returncode == 1 and "table 'nope' does not exist at version 8" in out.stderr
