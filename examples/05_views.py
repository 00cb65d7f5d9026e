"""Incremental views: define in Python, keep current with Bytewax, read at any version.

Run: python examples/05_views.py [DB_PATH]
"""

import sys
import tempfile

import pyarrow as pa

import udrflow
from udrflow.views import avg, col, count, max_, sum_

path = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp() + "/views.udr"
db = udrflow.open(path)
db.create_table("orders", pa.schema([("id", pa.int64()), ("customer", pa.string()), ("amount", pa.float64())]),
                primary_key=["id"])
db.create_table("customers", pa.schema([("customer", pa.string()), ("region", pa.string())]),
                primary_key=["customer"])
db.insert("customers", [{"customer": "ann", "region": "eu"}, {"customer": "bob", "region": "us"}])
db.insert("orders", [{"id": 1, "customer": "ann", "amount": 10.0}, {"id": 2, "customer": "bob", "amount": 5.0},
                     {"id": 3, "customer": "ann", "amount": -1.0}])

# A view over a filter, a join and a group-by; created after data exists, so it backfills.
by_region = db.create_view(
    "revenue_by_region",
    db.stream("orders").filter(col("amount") > 0)
    .join(db.stream("customers"), on="customer")
    .group_by("region").agg(total=sum_("amount"), orders=count(), biggest=max_("amount"), mean=avg("amount")))
print(sorted(db.read("revenue_by_region").to_pylist(), key=lambda r: r["region"]))

# Changes flow in incrementally: an update, a delete, and a change on the joined side.
db.upsert("orders", [{"id": 2, "customer": "bob", "amount": 7.0}])
db.delete("orders", keys=[{"id": 1}])
v = db.upsert("customers", [{"customer": "bob", "region": "eu"}])
reached = by_region.refresh()
rows = sorted(db.read("revenue_by_region").to_pylist(), key=lambda r: r["region"])
print("after refresh to input version", reached, rows)
assert rows == [{"region": "eu", "total": 7.0, "orders": 1, "biggest": 7.0, "mean": 7.0}], rows

# The view is a table: read it at an older log version, query it with SQL, and check it
# against the same definition evaluated in batch (DataFusion) at the version it reflects.
assert sorted(by_region.batch(by_region.position).to_pylist(), key=str) == sorted(rows, key=str)
print(db.sql("SELECT region, total FROM revenue_by_region").to_pylist())

# Views can read views, and one background thread keeps them all current (each round's
# results of every view in one commit).
top = db.create_view("big_regions", db.stream("revenue_by_region").filter(col("total") > 5).select("region"))
db.views.run()
v = db.insert("orders", [{"id": 9, "customer": "ann", "amount": 100.0}])
by_region.wait_for(v)
top.wait_for(db.version)  # big_regions reads revenue_by_region's commit, one round later
print(db.read("big_regions").to_pylist(), db.views.list())
db.views.stop()
db.close()
