"""SQL at any version: AS OF, a join across two versions, parameters, the changelog, and a
write that SQL refuses.

Run: python examples/03_sql.py [DB_PATH]
"""

import json
import sys
import tempfile

import pyarrow as pa

import udrflow

path = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp() + "/shop.udr"
db = udrflow.open(path)
db.create_table("orders", pa.schema([("id", pa.int64()), ("customer", pa.string()), ("amount", pa.float64())]),
                primary_key=["id"])
first = db.insert("orders", [{"id": 1, "customer": "ann", "amount": 9.5},
                             {"id": 2, "customer": "bob", "amount": 20.0},
                             {"id": 3, "customer": "ann", "amount": 4.0}])
db.upsert("orders", [{"id": 1, "customer": "ann", "amount": 12.0}])
db.delete("orders", keys=[{"id": 2}])

# The head, and the same query as of the first load (a version number; a time works too).
print(db.sql("SELECT customer, sum(amount) AS total FROM orders GROUP BY customer ORDER BY customer").to_pylist())
then = db.sql(f"SELECT customer, sum(amount) AS total FROM orders AS OF VERSION {first} "
              "GROUP BY customer ORDER BY customer")
assert then.to_pylist() == [{"customer": "ann", "total": 13.5}, {"customer": "bob", "total": 20.0}]

# What changed since then: a join of the table at two versions, in one query.
changed = db.sql("SELECT o.id, o.amount AS before, n.amount AS after "
                 "FROM orders AS OF VERSION $v AS o LEFT JOIN orders AS n ON n.id = o.id "
                 "WHERE n.amount IS DISTINCT FROM o.amount ORDER BY o.id", params={"v": first})
print(changed.to_pylist())
assert changed.to_pylist() == [{"id": 1, "before": 9.5, "after": 12.0}, {"id": 2, "before": 20.0, "after": None}]

# Parameters are values, bound after parsing: this is one odd customer name, not SQL.
assert db.sql("SELECT count(*) AS n FROM orders WHERE customer = $1", params=["ann' OR '1'='1"]).to_pylist() == [
    {"n": 0}]

# Every row change, as subscribe delivers it (an update is a -1 row and a +1 row).
for row in db.sql("SELECT version, op, weight, row FROM __changelog WHERE table_name = 'orders' "
                  "ORDER BY version, weight").to_pylist():
    print(row["version"], row["op"], row["weight"], json.loads(row["row"]))

# SQL only reads: a write is refused before anything runs.
try:
    db.sql("DELETE FROM orders")
except udrflow.SqlReadOnlyError as exc:
    print("refused:", exc)
assert db.read("orders").num_rows == 2
db.close()
