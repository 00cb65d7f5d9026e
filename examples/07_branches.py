"""Branches: fork the database without copying, change it, compare, merge.

Run: python examples/07_branches.py [DB_PATH]
"""

import sys
import tempfile

import pyarrow as pa

import udrflow

path = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp() + "/branches.udr"
db = udrflow.open(path)
# "stock" combines concurrent changes on two branches by summing their deltas.
db.create_table("items", pa.schema([pa.field("sku", pa.string(), nullable=False), pa.field("price", pa.float64()),
                                    udrflow.merge_field("stock", pa.int64(), "sum")]), primary_key=["sku"])
db.insert("items", [{"sku": "a", "price": 1.0, "stock": 10}, {"sku": "b", "price": 2.0, "stock": 5}])

fork = db.create_branch("repricing")           # zero-copy: three small files
dev = db.branch("repricing")
dev.upsert("items", [{"sku": "a", "price": 1.5, "stock": 10}, {"sku": "c", "price": 9.0, "stock": 1}])
dev.upsert("items", [{"sku": "b", "price": 2.0, "stock": 3}])     # 2 sold on the branch
db.upsert("items", [{"sku": "b", "price": 2.0, "stock": 4}])      # 1 sold on main meanwhile

print("main sees", db.read("items").num_rows, "items; the branch sees", dev.read("items").num_rows)
print(db.sql("SELECT m.sku, m.price AS main_price, d.price AS branch_price FROM items m "
             "JOIN items@repricing d ON d.sku = m.sku ORDER BY m.sku").to_pylist())
print(db.diff("main", "repricing", table="items").to_pylist())

report = db.merge("repricing", into="main")    # three-way: stock 5 -> 4 (main) and 3 (branch) = 2
print(report)
rows = {r["sku"]: r for r in db.read("items").to_pylist()}
assert rows["a"]["price"] == 1.5 and rows["c"]["stock"] == 1 and rows["b"]["stock"] == 2, rows

# A conflict: both sides set a different price for the same item; nothing is applied.
dev.upsert("items", [{"sku": "a", "price": 3.0, "stock": 10}])
db.upsert("items", [{"sku": "a", "price": 4.0, "stock": 10}])
head = db.version
try:
    db.merge("repricing", into="main")
except udrflow.MergeConflictError as exc:
    print("conflict:", exc.conflicts[0])
assert db.version == head
dev.close()
db.delete_branch("repricing")
print([b["name"] for b in db.branches()])
db.close()
