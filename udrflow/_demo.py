"""The end-to-end demo behind ``make demo`` / ``udrflow demo``. It grows with every feature.

Today: tables with keys, inserts/upserts/deletes, a cross-table transaction and a
conflict, concurrent transactions sharing fsyncs, time travel by version and by time,
SQL at any version (AS OF, __changelog),
reopen (recovery), change streams (subscribe), an incremental view kept current by Bytewax,
branches (fork, diff, merge), checkpoints with deduplicated chunks, retention + gc, a reader
following the log, and a checksum pass over everything.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import tempfile
import threading
import time

import numpy as np
import pyarrow as pa

import udrflow
from udrflow.errors import UsageError


def _step(title: str) -> None:
    print(f"\n== {title}")


def _show(table: pa.Table, key: str, limit: int = 6) -> None:
    for row in sorted(table.to_pylist(), key=lambda r: r[key])[:limit]:
        print(f"   {row}")


def _disk_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


DEMO_MARKER = "udrflow_demo"  # the demo only writes a database it made (this table says so)


def run(path: str | None = None) -> None:
    tmp = None
    if path is None:
        tmp = tempfile.TemporaryDirectory(prefix="udrflow-demo-")
        path = os.path.join(tmp.name, "shop.udr")
    try:
        _step(f"1. open an embedded database at {path} and create two tables (DDL is a commit)")
        db = udrflow.open(path)
        existing = db.tables()
        if existing and DEMO_MARKER not in existing:
            db.close()
            raise UsageError(f"udrflow demo writes tables of its own (customers, orders, ...): expected a new database "
                             f"or one an earlier demo made at {path}, found tables {existing[:5]}. Run "
                             f"'udrflow demo' without --db for a fresh temporary database.")
        if existing:
            print("   (the database already holds the demo tables: starting from its head)")
        else:
            db.create_table(DEMO_MARKER, pa.schema([pa.field("run", pa.int64(), nullable=False)]), primary_key="run")
            db.create_table("customers", pa.schema([("name", pa.string()), ("city", pa.string()),
                                                    ("credit", pa.int64())]), primary_key=["name"])
            db.create_table("orders", pa.schema([("id", pa.int64()), ("customer", pa.string()),
                                                 ("amount", pa.float64())]), primary_key=["id"])
        print(f"   tables: {db.tables()}  head version: {db.version}")

        _step("2. durable writes: each returns its commit's version once fdatasynced")
        start_id = db.read("orders").num_rows + 1
        v_insert = db.insert("customers", [{"name": "ann", "city": "Oslo", "credit": 100},
                                           {"name": "bob", "city": "Rome", "credit": 50}]) \
            if db.read("customers").num_rows == 0 else db.version
        v_orders = db.insert("orders", [{"id": start_id + i, "customer": c, "amount": a}
                                        for i, (c, a) in enumerate([("ann", 9.5), ("bob", 20.0), ("ann", -1.0)])])
        v_upsert = db.upsert("orders", [{"id": start_id, "customer": "ann", "amount": 12.0}])
        v_delete = db.delete("orders", where="amount < 0")
        print(f"   customers v{v_insert}, orders v{v_orders}, upsert v{v_upsert}, delete where amount < 0 v{v_delete}")
        _show(db.read("orders"), "id")
        try:
            db.insert("orders", [{"id": start_id, "customer": "x", "amount": "lots"}])
        except udrflow.SchemaError as exc:
            print(f"   bad input is refused, nothing written: {exc}")

        _step("3. a transaction across two tables, and a conflicting one that loses")
        with db.transaction() as tx:
            credit = tx.read("customers").to_pylist()
            ann = next(r for r in credit if r["name"] == "ann")
            tx.upsert("customers", [{**ann, "credit": ann["credit"] - 30}])
            tx.insert("orders", [{"id": start_id + 10, "customer": "ann", "amount": 30.0}])
        print(f"   committed atomically at version {tx.version}")
        a, b = db.transaction(), db.transaction()
        a.upsert("customers", [{"name": "bob", "city": "Rome", "credit": 10}])
        b.upsert("customers", [{"name": "bob", "city": "Rome", "credit": 99}])
        a.commit()
        try:
            b.commit()
        except udrflow.TransactionConflictError as exc:
            print(f"   the second writer of 'bob' loses and leaves no trace: {exc}")

        _step("4. group commit: 8 threads x 40 single-row transactions share fdatasyncs")
        counters = f"counters_v{db.version + 1}"  # a fresh name, so the demo can run again on the same --db
        db.create_table(counters, pa.schema([("k", pa.int64()), ("n", pa.int64())]), primary_key=["k"])
        t0 = time.perf_counter()

        def work(k: int) -> None:
            for n in range(40):
                with db.transaction() as tx:
                    tx.upsert(counters, [{"k": k, "n": n}])

        threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - t0
        print(f"   320 durable transactions in {elapsed * 1000:.0f} ms ({320 / elapsed:,.0f} tx/s)")

        _step("5. time travel: any table at any version, or at a time")
        print(f"   orders at version {v_orders}:")
        _show(db.read("orders", version=v_orders), "id")
        when = dt.datetime.now(dt.UTC)
        db.upsert("orders", [{"id": start_id + 1, "customer": "bob", "amount": 25.0}])
        print(f"   bob's order as of {when.time().isoformat(timespec='milliseconds')} UTC (before the latest upsert): "
              f"{[r['amount'] for r in db.read('orders', version=when).to_pylist() if r['id'] == start_id + 1]}")

        _step("6. SQL on DataFusion at any version: the orders now joined with the orders as of an older version")
        changed = db.sql("SELECT n.id, o.amount AS before, n.amount AS after FROM orders n "
                         "JOIN orders AS OF VERSION $v o ON o.id = n.id "
                         "WHERE o.amount IS DISTINCT FROM n.amount ORDER BY n.id", params={"v": v_orders})
        print(f"   orders whose amount changed since version {v_orders}: {changed.to_pylist()}")
        by_city = db.sql("SELECT c.city, count(*) AS n, sum(o.amount) AS total FROM orders AS OF VERSION $1 o "
                         "JOIN customers c ON c.name = o.customer GROUP BY c.city ORDER BY c.city", params=[v_orders])
        print(f"   revenue by city as of version {v_orders}: {by_city.to_pylist()}")
        changes = db.sql("SELECT op, count(*) AS n FROM __changelog WHERE table_name = 'orders' GROUP BY op "
                         "ORDER BY op")
        print(f"   row changes of orders in the log (__changelog): {changes.to_pylist()}")
        try:
            db.sql("DELETE FROM orders")
        except udrflow.SqlReadOnlyError as exc:
            print(f"   a write through SQL is refused: {exc}")

        _step("7. a bulk load, then a 5% contiguous update: checkpoints share unchanged chunks")
        events = f"events_v{db.version + 1}"
        db.create_table(events, pa.schema([("id", pa.int64()), ("value", pa.float64())]), primary_key=["id"])
        n = 400_000
        db.insert(events, pa.table({"id": np.arange(n), "value": np.arange(n, dtype=np.float64)}))
        db.checkpoint(events)
        before = _disk_bytes(path)
        db.upsert(events, pa.table({"id": np.arange(100_000, 120_000), "value": np.zeros(20_000)}))
        db.checkpoint(events)
        grown = _disk_bytes(path) - before
        print(f"   {n:,} rows loaded; a 20,000-row update plus a second checkpoint added {grown / 1e6:.2f} MB "
              f"(a full copy would add ~{n * 16 / 1e6:.1f} MB)")

        head = db.version
        db.close()
        _step("8. reopen: recovery rebuilds the version index and the catalog from the log")
        db = udrflow.open(path)
        print(f"   reopened at version {db.version} (was {head}); torn tails cut: {db.log.recovery.truncated or 'none'}")
        print(f"   {events} has {db.read(events).num_rows:,} rows; orders at version {v_orders} still has "
              f"{db.read('orders', version=v_orders).num_rows} rows")

        _step("9. a reader follows the log from another thread (woken by each commit, no polling)")
        seen: list[int] = []
        ready = threading.Event()

        def follow() -> None:
            ready.set()
            for record in db.log.follow(db.version + 1, idle_timeout_s=2):
                seen.append(record.version)
                if len(seen) == 3:
                    return

        follower = threading.Thread(target=follow)
        follower.start()
        ready.wait()
        for i in range(3):
            db.upsert("orders", [{"id": start_id + 20 + i, "customer": "cy", "amount": float(i)}])
        follower.join()
        print(f"   the follower saw versions {seen}")

        _step("10. change streams: every row change after a version, exactly once, then the live tail")
        with db.subscribe(["orders"], from_version=v_orders) as sub:
            for batch in sub:
                ops = ", ".join(f"{r['__op']}{'+' if r['__weight'] > 0 else '-'} #{r['id']} {r['amount']}"
                                for r in batch.changes.to_pylist())
                print(f"   v{batch.version} {batch.table}: {ops}")
                if sub.position >= db.version:
                    break
            print(f"   resume token: {sub.position} (subscribe(from_version={sub.position}) continues after it)")

        _step("11. incremental views: defined in Python, maintained by Bytewax, stored back in the log")
        from udrflow.views import col, count, sum_

        revenue = f"revenue_v{db.version + 1}"  # fresh names, so the demo can run again on the same --db
        view = db.create_view(revenue, db.stream("orders").filter(col("amount") > 0)
                              .join(db.stream("customers").select(customer=col("name"), city=col("city")),
                                    on="customer")
                              .group_by("city").agg(total=sum_("amount"), orders=count()))
        print(f"   {revenue} backfilled from the existing orders (reflects input version {view.position}):")
        _show(db.read(revenue), "city")
        view.run()  # keep it current in a background thread (db.views.run() runs every view)
        v_new = db.insert("orders", [{"id": start_id + 30, "customer": "bob", "amount": 100.0}])
        view.wait_for(v_new)
        print(f"   one order committed at v{v_new}; the view's table now (read like any table, "
              f"at log version {db.version}):")
        _show(db.read(revenue), "city")
        print(f"   SQL on the view: {db.sql(f'SELECT city, total FROM {revenue} ORDER BY total DESC LIMIT 1').to_pylist()}")
        view.stop()

        _step("12. branches: a zero-copy fork, a change on it, a row-level diff, a merge in one commit")
        branch = f"what_if_v{db.version + 1}"
        fork = db.create_branch(branch)
        what_if = db.branch(branch)
        what_if.upsert("orders", [{"id": start_id, "customer": "ann", "amount": 99.0}])
        print(f"   {branch} forked at version {fork}; main still has amount "
              f"{db.sql(f'SELECT amount FROM orders WHERE id = {start_id}').column(0)[0].as_py()}, the branch "
              f"{db.sql(f'SELECT amount FROM orders@{branch} WHERE id = {start_id}').column(0)[0].as_py()}")
        print(f"   diff main..{branch}: {db.diff('main', branch, table='orders').to_pylist()}")
        report = db.merge(branch, into="main")
        print(f"   merged ({report['kind']}) at version {report['version']}; the view follows on its next refresh")
        what_if.close()
        db.delete_branch(branch)

        _step("13. retention: give up history before the head, then collect garbage")
        size = _disk_bytes(path)
        db.set_since(db.version)
        report = db.gc()
        print(f"   {report}; disk {size / 1e6:.1f} MB -> {_disk_bytes(path) / 1e6:.1f} MB")
        db.close()

        _step("14. a read-only handle (no lock: another process could do this) verifies every checksum")
        from udrflow._recover import recover
        from udrflow._verify import verify

        with udrflow.open(path, readonly=True) as reader:
            verify(reader, out=lambda line: print(f"   {line}"))

        _step("15. salvage: a bit flipped in the middle of a copy's log; recover keeps every commit before it")
        damaged = path + ".damaged"
        shutil.copytree(path, damaged)
        with udrflow.open(damaged, readonly=True) as reader:
            segment = reader.log._segments[-1]
            middle = segment.first_version + segment.count // 2
            offset = segment.offsets[middle - segment.first_version]
        with open(segment.path, "r+b") as f:
            f.seek(offset + 20)
            bit = f.read(1)[0] ^ 0x01
            f.seek(offset + 20)
            f.write(bytes([bit]))
        report = recover(damaged, damaged + ".recovered", out=lambda line: print(f"   {line[:160]}"))
        print(f"   the recovered copy holds versions up to {report['last_version']}; "
              f"{report['lost_versions']} later commit(s) were lost with the damage")
        shutil.rmtree(damaged, ignore_errors=True)
        shutil.rmtree(damaged + ".recovered", ignore_errors=True)
        print("\nKafka in and out (exactly-once ingest with offsets in the same commits, a change-stream sink): "
              "python examples/06_kafka.py (starts its own local broker; needs the test extra)")
        print("\ndemo finished: every step ran against the embedded database.")
    finally:
        if tmp is not None:
            tmp.cleanup()
