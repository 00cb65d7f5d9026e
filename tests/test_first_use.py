"""Threads that first use a fresh handle together share one engine, so no acknowledged
commit is lost: a counter incremented by several threads that start at the same instant
ends at the number of acknowledged increments, in every trial (a plain-Python model: the
count of successful transactions)."""

from __future__ import annotations

import threading

import pyarrow as pa

import udrflow

THREADS = 4
INCREMENTS = 50
TRIALS = 4


def _increment_together(path: str) -> tuple[int, int]:
    with udrflow.open(path) as setup:
        setup.create_table("c", pa.schema([pa.field("k", pa.int64(), nullable=False), ("n", pa.int64())]),
                           primary_key="k")
        setup.insert("c", [{"k": 1, "n": 0}])
    # A fresh handle whose engine nobody has built yet: the threads' first calls race.
    db = udrflow.open(path)
    start = threading.Barrier(THREADS)
    acked = []
    errors = []

    def bump() -> None:
        with db.transaction() as tx:
            n = tx.read("c").column("n")[0].as_py()
            tx.upsert("c", [{"k": 1, "n": n + 1}])

    def worker() -> None:
        try:
            start.wait()
            for _ in range(INCREMENTS):
                udrflow.retry(bump, attempts=200)
                acked.append(1)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    db.close()
    with udrflow.open(path) as again:
        return len(acked), again.read("c").column("n")[0].as_py()


def test_threads_that_first_use_a_handle_together_lose_no_increment(tmp_path):
    for trial in range(TRIALS):
        acked, count = _increment_together(str(tmp_path / f"db{trial}.udr"))
        assert (trial, count) == (trial, acked) == (trial, THREADS * INCREMENTS)


def test_threads_that_first_use_a_handle_get_one_engine_and_one_views(tmp_path):
    path = str(tmp_path / "one.udr")
    with udrflow.open(path) as setup:
        setup.create_table("t", pa.schema([pa.field("k", pa.int64(), nullable=False)]), primary_key="k")
    db = udrflow.open(path)
    start = threading.Barrier(8)
    engines, views = [], []

    def first_use() -> None:
        start.wait()
        engines.append(db._engine())
        views.append(db.views)

    threads = [threading.Thread(target=first_use) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(e) for e in engines}) == 1
    assert len({id(v) for v in views}) == 1
    db.close()
