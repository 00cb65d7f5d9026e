"""A damaged recovery store of a view is detected before Bytewax loads it and the view
rebuilds its state from its inputs, so its rows stay equal to the batch oracle (the same
aggregate in SQL at the same version): a flipped bit in a snapshotted state, in the
source position, or in SQLite's pages is never committed as data."""

from __future__ import annotations

import logging
import pickletools
import sqlite3
from pathlib import Path

import pyarrow as pa
import pytest

import udrflow
from udrflow.views import count, sum_


def _setup(path: Path):
    db = udrflow.open(str(path))
    db.create_table("t", pa.schema([pa.field("id", pa.int64(), nullable=False), ("k", pa.int64()),
                                    ("x", pa.int64())]), primary_key="id")
    db.insert("t", [{"id": i, "k": i % 4, "x": i} for i in range(400)])
    db.create_view("s", db.stream("t").group_by("k").agg(total=sum_("x"), n=count()))
    db.insert("t", [{"id": 1000, "k": 1, "x": 7}])
    db.views["s"].refresh()
    return db


def _store(path: Path) -> Path:
    return path / "views" / "main" / "s" / "recovery" / "part-0.sqlite3"


def _flip_state_byte(store: Path) -> None:
    """Flip one bit inside the pickled operator state (not the pickle's framing)."""
    con = sqlite3.connect(store)
    rows = con.execute("SELECT rowid, ser_change FROM snaps WHERE step_id LIKE '%ivm%' AND ser_change IS NOT NULL"
                       ).fetchall()
    assert rows
    rowid, blob = max(rows)
    # The state is a bytes value (BINBYTES) inside the snapshot: flip a bit in its middle.
    spans = [(pos, len(arg)) for opcode, arg, pos in pickletools.genops(blob)
             if isinstance(arg, bytes) and len(arg) > 64]
    pos, n = max(spans, key=lambda s: s[1])
    damaged = bytearray(blob)
    damaged[pos + 5 + n // 2] ^= 0x10  # (pos is the opcode; its length field takes 1-8 bytes)
    con.execute("UPDATE snaps SET ser_change = ? WHERE rowid = ?", (bytes(damaged), rowid))
    con.commit()
    con.close()


def _flip_position(store: Path) -> None:
    import pickle

    con = sqlite3.connect(store)
    rows = con.execute("SELECT rowid, ser_change FROM snaps WHERE step_id LIKE '%log%' AND ser_change IS NOT NULL"
                       ).fetchall()
    rowid, blob = max(rows)
    value = pickle.loads(blob)
    key = next(iter(value["positions"]))
    value["positions"][key] = (value["positions"][key] or 0) ^ 0x4  # the checksum stays the old one
    con.execute("UPDATE snaps SET ser_change = ? WHERE rowid = ?", (pickle.dumps(value), rowid))
    con.commit()
    con.close()


def _garble_pages(store: Path) -> None:
    data = bytearray(store.read_bytes())
    for i in range(len(data) // 2, min(len(data), len(data) // 2 + 64)):
        data[i] ^= 0xFF
    store.write_bytes(bytes(data))


def _flip_in_schema(store: Path) -> None:
    """A bit flipped in a column name of Bytewax's tables (SQLite's own check passes)."""
    con = sqlite3.connect(store)
    con.execute("ALTER TABLE exs RENAME COLUMN resume_epoch TO resume_epocj")
    con.commit()
    con.close()


def _flip_part_count(store: Path) -> None:
    con = sqlite3.connect(store)
    con.execute("UPDATE parts SET part_count = 3")
    con.commit()
    con.close()


@pytest.mark.parametrize("damage", [_flip_state_byte, _flip_position, _garble_pages, _flip_in_schema,
                                    _flip_part_count])
def test_a_damaged_recovery_store_is_detected_and_the_view_stays_equal_to_the_oracle(tmp_path, caplog, damage):
    path = tmp_path / "db.udr"
    _setup(path).close()
    damage(_store(path))
    db = udrflow.open(str(path))
    try:
        db.insert("t", [{"id": 2000, "k": 2, "x": 5}])
        db.delete("t", keys=[{"id": 3}])
        with caplog.at_level(logging.WARNING, logger="udrflow.views"):
            db.views["s"].refresh()
        assert "recovery store" in caplog.text and "damaged" in caplog.text
        got = sorted(db.read("s").to_pylist(), key=lambda r: r["k"])
        want = db.sql("SELECT k, sum(x) AS total, count(*) AS n FROM t GROUP BY k ORDER BY k").to_pylist()
        assert got == want
    finally:
        db.close()
