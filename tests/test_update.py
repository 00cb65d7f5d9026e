"""``upsert`` replaces whole rows, so a row missing columns is refused (it used to set them
to NULL silently); ``update``/``tx.update`` change only the columns given, by key, and a key
that is not there raises with nothing written. The model: a dict of rows by key."""

from __future__ import annotations

import random
import threading

import pyarrow as pa
import pytest

import udrflow
from udrflow.errors import SchemaError

SCHEMA = pa.schema([pa.field("id", pa.int64(), nullable=False), ("name", pa.string()), ("n", pa.int64()),
                    ("tags", pa.list_(pa.string()))])


@pytest.fixture
def db(tmp_path):
    d = udrflow.open(str(tmp_path / "u.udr"))
    d.create_table("t", SCHEMA, primary_key="id")
    d.insert("t", [{"id": i, "name": f"n{i}", "n": i, "tags": [str(i)]} for i in range(100)])
    yield d
    d.close()


def _model(db) -> dict:
    return {r["id"]: r for r in db.read("t").to_pylist()}


def test_upsert_with_missing_columns_raises_naming_them(db):
    before = db.version
    with pytest.raises(SchemaError, match=r"lacks \['n', 'tags'\]"):
        db.upsert("t", [{"id": 1, "name": "x"}])
    with pytest.raises(SchemaError, match=r"lacks \['tags'\]"):
        db.upsert("t", [{"id": 1, "name": "x", "n": 1, "tags": None}, {"id": 2, "name": "y", "n": 2}])
    with pytest.raises(SchemaError, match=r"lacks \['name', 'n', 'tags'\]"):
        db.upsert("t", pa.table({"id": pa.array([1], pa.int64())}))
    assert db.version == before
    db.upsert("t", [{"id": 1, "name": "x", "n": None, "tags": None}])  # explicit nulls are fine
    assert _model(db)[1] == {"id": 1, "name": "x", "n": None, "tags": None}


def test_update_changes_only_the_given_columns(db):
    rng = random.Random(3)
    model = _model(db)
    for _ in range(20):
        ids = rng.sample(range(100), rng.randint(1, 5))
        column = rng.choice(["name", "n", "tags"])
        rows = [{"id": i, column: {"name": f"u{i}", "n": -i, "tags": ["a", "b"]}[column]} for i in ids]
        db.update("t", rows)
        for r in rows:
            model[r["id"]] = {**model[r["id"]], **r}
        assert _model(db) == model
    db.update("t", pa.table({"id": pa.array([5, 6], pa.int64()), "n": pa.array([500, 600], pa.int64())}))
    model[5]["n"], model[6]["n"] = 500, 600
    assert _model(db) == model


def test_update_of_a_missing_key_raises_and_writes_nothing(db):
    before = db.version
    with pytest.raises(SchemaError, match=r"no row with key \{'id': 1000\}"):
        db.update("t", [{"id": 3, "n": 33}, {"id": 1000, "n": 1}])
    with pytest.raises(SchemaError, match="key column"):
        db.update("t", [{"n": 1}])
    with pytest.raises(SchemaError, match="no column"):
        db.update("t", [{"id": 1, "nope": 1}])
    assert db.version == before
    with db.transaction() as tx:
        tx.insert("t", [{"id": 500, "name": "new", "n": 1, "tags": None}])
        tx.update("t", [{"id": 500, "n": 2}])  # sees its own insert
    assert _model(db)[500]["n"] == 2


def test_concurrent_updates_of_different_columns_of_one_row_both_land(db):
    start = threading.Barrier(2)

    def bump(column, value):
        start.wait()
        for k in range(20):
            db.update("t", [{"id": 7, column: f"{value}{k}" if column == "name" else k}])

    threads = [threading.Thread(target=bump, args=("name", "w")), threading.Thread(target=bump, args=("n", 0))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    row = _model(db)[7]
    assert row["name"] == "w19" and row["n"] == 19
