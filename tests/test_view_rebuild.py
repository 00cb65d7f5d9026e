"""A view never becomes unreadable when its state is rebuilt: float sums and averages are
kept exactly (udrflow/views/_exact.py), so the state rebuilt from the inputs after a reopen
gives the very bits of the rows the view stored, and its next retraction finds its row.

The oracle is DataFusion's batch evaluation of each view at the input version each of its
commits records (test_views.check_view), over random histories with nullable group keys,
null and non-finite-free float values, and reopen-and-rebuild (recovery store dropped)
between steps, several views run together."""

from __future__ import annotations

import math
import os
import random
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from test_views import check_view

import udrflow
from udrflow.views import avg, count, count_distinct, max_, min_, sum_
from udrflow.views._exact import add_batch, add_one, rounded

SEEDS = int(os.environ.get("UDRFLOW_REBUILD_SEEDS", "6"))  # full size: 50
STEPS = 14


def test_the_issue_reproduction_reads_after_a_rebuild(tmp_path):
    d = str(tmp_path / "r.udr")
    db = udrflow.open(d)
    db.create_table("t", pa.schema([pa.field("id", pa.int64(), nullable=False), ("k", pa.int64()),
                                    ("x", pa.float64())]), primary_key=["id"])
    db.create_view("s", db.stream("t").group_by("k").agg(s=sum_("x")))
    db.create_view("n", db.stream("t").group_by("k").agg(n=count()))
    db.insert("t", [{"id": 1, "k": 1, "x": 0.1}, {"id": 2, "k": 1, "x": 0.2}])
    db.views.refresh()
    db.delete("t", keys=[{"id": 1}])
    db.views.refresh()
    db.close()
    db = udrflow.open(d)
    db.views.run()
    v = db.insert("t", [{"id": 3, "k": 1, "x": 1.0}])
    db.views["s"].wait_for(v)
    db.views.stop()
    assert db.read("s").to_pylist() == [{"k": 1, "s": 1.2}]
    assert db.read("n").to_pylist() == [{"k": 1, "n": 2}]
    db.close()


def test_exact_sums_do_not_depend_on_order_or_batching():
    rng = random.Random(1)
    values = [rng.choice([0.1, 0.2, 1e300, -1e300, 5e-324, 1e-20, 3.0, -7.25]) * rng.random() for _ in range(400)]
    weights = [rng.choice([1, 1, 1, -1, 2]) for _ in values]
    live = [(v, w) for v, w in zip(values, weights, strict=True) if w > 0]
    # One by one, in one batch, and in shuffled batches: the same exact sum, the same float.
    one, batch = [0], [0]
    special = np.zeros((1, 3), np.int64)
    for v, w in live:
        add_one(one, special, 0, v, w)
    add_batch(batch, special.copy(), np.zeros(len(live), np.int64), np.array([v for v, _ in live]),
              np.ones(len(live), bool), np.array([w for _, w in live], np.int64))
    shuffled = [0]
    order = list(live)
    rng.shuffle(order)
    for start in range(0, len(order), 37):
        part = order[start:start + 37]
        add_batch(shuffled, special.copy(), np.zeros(len(part), np.int64), np.array([v for v, _ in part]),
                  np.ones(len(part), bool), np.array([w for _, w in part], np.int64))
    assert one == batch == shuffled
    assert rounded(one[0], special[0]) == math.fsum(v * w for v, w in live)  # correctly rounded
    # Adding then removing leaves exactly nothing.
    for v, w in live:
        add_one(one, special, 0, v, -w)
    assert one == [0]
    specials = np.zeros((1, 3), np.int64)
    add_one([0], specials, 0, math.inf, 1)
    add_one([0], specials, 0, -math.inf, 1)
    assert math.isnan(rounded(0, specials[0]))


SCHEMA = pa.schema([pa.field("id", pa.int64(), nullable=False), ("k", pa.int64()), ("g", pa.string()),
                    ("x", pa.float64()), ("y", pa.int64())])


def _views(db) -> dict:
    s = db.stream("t")
    return {
        "float_aggs": s.group_by("k").agg(total=sum_("x"), mean=avg("x"), n=count(), nx=count("x"),
                                          lo=min_("x"), hi=max_("x")),
        "two_keys": s.group_by("k", "g").agg(total=sum_("x"), ys=sum_("y"), dy=count_distinct("y")),
        "by_string": s.group_by("g").agg(mean=avg("x"), n=count()),
    }


def _row(rng: random.Random, i: int) -> dict:
    return {"id": i, "k": rng.choice([None, 1, 2, 3]), "g": rng.choice([None, "a", "b"]),
            "x": rng.choice([None, 0.1, 0.2, 0.3, 1e6, -7.5, 2.5, 1 / 3]), "y": rng.choice([None, 1, 2, 3])}


def _lose_recovery_stores(path: Path) -> None:
    views = path / "views"
    if views.exists():
        for store in views.rglob("recovery"):
            shutil.rmtree(store)


@pytest.mark.parametrize("seed", range(SEEDS))
def test_views_with_nullable_keys_and_float_aggregates_survive_rebuilds_and_equal_the_oracle(tmp_path, seed):
    rng = random.Random(seed)
    path = tmp_path / "db.udr"
    db = udrflow.open(str(path))
    db.create_table("t", SCHEMA, primary_key="id")
    db.insert("t", [_row(rng, i) for i in range(20)])
    for name, definition in _views(db).items():
        db.create_view(name, definition)
    next_id = 20
    live = set(range(20))
    for _step in range(STEPS):
        action = rng.random()
        if action < 0.4:
            rows = [_row(rng, next_id + j) for j in range(rng.randint(1, 4))]
            next_id += len(rows)
            db.insert("t", rows)
            live.update(r["id"] for r in rows)
        elif action < 0.7 and live:
            ids = rng.sample(sorted(live), min(len(live), rng.randint(1, 3)))
            db.upsert("t", [_row(rng, i) for i in ids])
        elif live:
            ids = rng.sample(sorted(live), min(len(live), rng.randint(1, 3)))
            db.delete("t", keys=[{"id": i} for i in ids])
            live.difference_update(ids)
        how = rng.random()
        if how < 0.35:
            db.views.refresh()
        elif how < 0.7:
            # Reopen; the state is rebuilt from the inputs when the recovery store is gone.
            db.close()
            if rng.random() < 0.7:
                _lose_recovery_stores(path)
            db = udrflow.open(str(path))
            db.views.refresh()
        else:
            db.views.run()
            v = db.version
            for name in _views(db):
                db.views[name].wait_for(v)
            db.views.stop()
    db.views.refresh()
    for name in _views(db):
        check_view(db, name)
    db.close()
