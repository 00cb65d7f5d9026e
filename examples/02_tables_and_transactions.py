"""Tables with keys, a cross-table transaction, a conflict, and time travel.

Run: python examples/02_tables_and_transactions.py [DB_PATH]
"""

import sys
import tempfile

import pyarrow as pa

import udrflow

path = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp() + "/bank.udr"
db = udrflow.open(path)
db.create_table("accounts", pa.schema([("id", pa.int64()), ("owner", pa.string()), ("balance", pa.int64())]),
                primary_key=["id"])
db.create_table("transfers", pa.schema([("id", pa.int64()), ("src", pa.int64()), ("dst", pa.int64()),
                                        ("amount", pa.int64())]), primary_key=["id"])
opened = db.insert("accounts", [{"id": 1, "owner": "ann", "balance": 100}, {"id": 2, "owner": "bob", "balance": 0}])


def transfer(transfer_id: int, src: int, dst: int, amount: int) -> int:
    with db.transaction() as tx:  # snapshot isolation; both tables change in one commit
        balances = {r["id"]: r for r in tx.read("accounts").to_pylist()}
        tx.upsert("accounts", [{**balances[src], "balance": balances[src]["balance"] - amount},
                               {**balances[dst], "balance": balances[dst]["balance"] + amount}])
        tx.insert("transfers", [{"id": transfer_id, "src": src, "dst": dst, "amount": amount}])
    return tx.version


v = udrflow.retry(lambda: transfer(1, 1, 2, 30))  # retries on TransactionConflictError with backoff
print("transfer committed at version", v)

# Two transactions touching the same key: the second to commit loses and leaves nothing behind.
a, b = db.transaction(), db.transaction()
a.upsert("accounts", [{"id": 2, "owner": "bob", "balance": 1}])
b.upsert("accounts", [{"id": 2, "owner": "bob", "balance": 2}])
a.commit()
try:
    b.commit()
except udrflow.TransactionConflictError as exc:
    print("conflict:", exc.table, exc.keys)

then = {r["id"]: r["balance"] for r in db.read("accounts", version=opened).to_pylist()}
now = {r["id"]: r["balance"] for r in db.read("accounts").to_pylist()}
print("balances when opened:", then, " now:", now)
assert then == {1: 100, 2: 0} and now == {1: 70, 2: 1}
assert db.read("transfers").num_rows == 1
db.close()
