"""Change streams: subscribe from a version, resume from a token, follow the live tail.

Run: python examples/04_change_streams.py [DB_PATH]
"""

import sys
import tempfile
import threading

import pyarrow as pa

import udrflow

path = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp() + "/cdc.udr"
db = udrflow.open(path)
start = db.create_table("orders", pa.schema([("id", pa.int64()), ("amount", pa.float64())]), primary_key=["id"])
db.insert("orders", [{"id": 1, "amount": 9.5}, {"id": 2, "amount": 20.0}])
db.upsert("orders", [{"id": 1, "amount": 12.0}])   # an update: a -1 of the old row, a +1 of the new
db.delete("orders", keys=[{"id": 2}])

# 1. Everything after version `start`, then stop once caught up.
rows = []
with db.subscribe(["orders"], from_version=start) as sub:
    for batch in sub:
        rows += [(batch.version, r["__op"], r["__weight"], r["id"]) for r in batch.changes.to_pylist()]
        if sub.position == db.version:
            break
token = sub.position
assert rows == [(2, "insert", 1, 1), (2, "insert", 1, 2), (3, "update", -1, 1), (3, "update", 1, 1),
                (4, "delete", -1, 2)], rows
print("changes after version", start, "->", rows)

# 2. Resume from the token while another thread writes: exactly the commits after it, in order.
def writer() -> None:
    for i in range(3, 6):
        db.insert("orders", [{"id": i, "amount": float(i)}])


later = []
sub = db.subscribe(["orders"], from_version=token)
thread = threading.Thread(target=writer)
thread.start()
for batch in sub:
    later.append(batch.version)
    if len(later) == 3:
        sub.close()
thread.join()
assert later == [token + 1, token + 2, token + 3], later
print("resumed after", token, "and followed the tail:", later)

# 3. The same changes as SQL: the __changelog table.
print(db.sql("SELECT version, op, weight, row FROM __changelog WHERE table_name = 'orders' ORDER BY version")
      .to_pylist()[:3])
db.close()
