"""Tables end to end through the public API: DDL is versioned, writes have exact
insert/upsert/delete semantics and clear errors, reads at any version (by number or by
time) match what was committed, checkpoints and spilled commits change nothing a reader
sees, and retention + gc reclaim space without breaking reads at or after ``since``.
The oracle is plain Python lists of the rows committed at each version."""

import datetime as dt
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest

import udrflow
from udrflow._limits import SEGMENT_SIZE_BYTES_MIN
from udrflow.errors import (
    CorruptionError,
    SchemaError,
    TableExistsError,
    TableNotFoundError,
    UsageError,
    VersionNotFoundError,
)
from udrflow.testing import ManualClock

ORDERS = pa.schema([("id", pa.int64()), ("customer", pa.string()), ("amount", pa.float64())])


def rows(table: pa.Table, key="id"):
    return sorted(table.to_pylist(), key=lambda r: r[key])


@pytest.fixture
def db(tmp_path):
    handle = udrflow.open(tmp_path / "shop.udr")
    yield handle
    handle.close()


def test_insert_upsert_delete_and_read_at_every_version(db):
    history = {}
    v = db.create_table("orders", ORDERS, primary_key=["id"])
    history[v] = []
    v = db.insert("orders", [{"id": 1, "customer": "ann", "amount": 9.5}, {"id": 2, "customer": "bob", "amount": 1.0}])
    history[v] = [(1, "ann", 9.5), (2, "bob", 1.0)]
    v = db.upsert("orders", pa.table({"id": [2, 3], "customer": ["bob", "cy"], "amount": [2.0, -3.0]}))
    history[v] = [(1, "ann", 9.5), (2, "bob", 2.0), (3, "cy", -3.0)]
    v = db.delete("orders", keys=[{"id": 1}, {"id": 99}])  # a missing key is not an error
    history[v] = [(2, "bob", 2.0), (3, "cy", -3.0)]
    v = db.delete("orders", where="amount < 0")
    history[v] = [(2, "bob", 2.0)]
    assert db.delete("orders", where="amount > 1000") is None
    for version, expected in history.items():
        got = [tuple(r.values()) for r in rows(db.read("orders", version=version))]
        assert got == expected, version
    assert db.version == max(history)


def test_write_errors_name_the_problem_and_change_nothing(db):
    db.create_table("orders", ORDERS, primary_key=["id"])
    db.insert("orders", [{"id": 1, "customer": "ann", "amount": 9.5}])
    head = db.version
    with pytest.raises(SchemaError, match=r"duplicate primary key \(id=1\).*already in the table"):
        db.insert("orders", [{"id": 1, "customer": "x", "amount": 1.0}])
    with pytest.raises(SchemaError, match=r"duplicate primary key \(id=5\) in rows 0 and 1"):
        db.insert("orders", [{"id": 5, "customer": "a", "amount": 1.0}, {"id": 5, "customer": "b", "amount": 2.0}])
    with pytest.raises(SchemaError, match=r"column 'amount' of table 'orders' expects float64, got str 'abc' at row 1"):
        db.insert("orders", [{"id": 7, "customer": "a", "amount": 1.0}, {"id": 8, "customer": "b", "amount": "abc"}])
    with pytest.raises(TableNotFoundError, match=r"table 'nope' does not exist"):
        db.insert("nope", [{"id": 1}])
    with pytest.raises(TableExistsError):
        db.create_table("orders", ORDERS)
    with pytest.raises(UsageError, match="cannot evaluate where="):
        db.delete("orders", where="no_such_column > 1")
    with pytest.raises(UsageError, match="without ';'"):
        db.delete("orders", where="1=1; drop table orders")
    with pytest.raises(udrflow.InvalidNameError):
        db.create_table("../evil", ORDERS)
    assert db.version == head
    assert rows(db.read("orders")) == [{"id": 1, "customer": "ann", "amount": 9.5}]


def test_tables_without_a_key_are_multisets(db):
    db.create_table("events", pa.schema([("tag", pa.string()), ("n", pa.int64())]))
    db.insert("events", [{"tag": "a", "n": 1}, {"tag": "a", "n": 1}, {"tag": "b", "n": 2}])
    db.delete("events", where="tag = 'a'")
    assert db.read("events").to_pylist() == [{"tag": "b", "n": 2}]
    with pytest.raises(UsageError, match="needs a primary key"):
        db.upsert("events", [{"tag": "a", "n": 1}])


def test_ddl_is_versioned(db):
    v1 = db.create_table("orders", ORDERS, primary_key="id")
    v2 = db.insert("orders", [{"id": 1, "customer": "ann", "amount": 1.0}])
    v3 = db.add_column("orders", pa.field("note", pa.string()))
    v4 = db.upsert("orders", [{"id": 2, "customer": "bob", "amount": 2.0, "note": "new"}])
    assert db.schema("orders", version=v2).names == ["id", "customer", "amount"]
    assert db.schema("orders", version=v3).names == ["id", "customer", "amount", "note"]
    assert rows(db.read("orders", version=v4)) == [
        {"id": 1, "customer": "ann", "amount": 1.0, "note": None},
        {"id": 2, "customer": "bob", "amount": 2.0, "note": "new"}]
    assert db.read("orders", version=v2).column_names == ["id", "customer", "amount"]
    v5 = db.drop_table("orders")
    assert db.tables() == [] and db.tables(version=v4) == ["orders"]
    with pytest.raises(TableNotFoundError, match="does not exist at version"):
        db.read("orders")
    assert db.read("orders", version=v4).num_rows == 2  # history survives the drop
    v6 = db.create_table("orders", pa.schema([("id", pa.int64())]), primary_key=["id"])
    assert db.read("orders").num_rows == 0 and v6 == v5 + 1 and v1 == 1


def test_time_travel_by_datetime(tmp_path):
    clock = ManualClock(start_us=int(dt.datetime(2026, 1, 1, tzinfo=dt.UTC).timestamp() * 1e6))
    with udrflow.open(tmp_path / "t.udr", clock=clock) as db:
        db.create_table("t", pa.schema([("k", pa.int64())]), primary_key=["k"])
        for k in range(3):
            clock.advance(3_600_000_000)  # one hour per commit
            db.insert("t", [{"k": k}])
        at = dt.datetime(2026, 1, 1, 2, 30)  # naive = UTC: after the 2nd insert, before the 3rd
        assert sorted(r["k"] for r in db.read("t", version=at).to_pylist()) == [0, 1]
        assert db.read("t", version=at.replace(tzinfo=dt.timezone(dt.timedelta(hours=1)))).num_rows == 1
        with pytest.raises(VersionNotFoundError, match="no commit at or before"):
            db.read("t", version=dt.datetime(2025, 1, 1))


def test_checkpoints_change_no_read_and_dedupe_unchanged_ranges(tmp_path):
    with udrflow.open(tmp_path / "c.udr") as db:
        db.create_table("t", ORDERS, primary_key=["id"])
        n = 200_000
        base = pa.table({"id": np.arange(n), "customer": [f"c{i % 1000}" for i in range(n)],
                         "amount": np.arange(n, dtype=np.float64)})
        v1 = db.insert("t", base)
        db.checkpoint("t")
        chunks_before = set(db._store.chunks.digests())
        block = base.slice(50_000, 5_000).set_column(2, "amount", pa.array(np.full(5_000, -1.0)))
        v2 = db.upsert("t", block)
        expected_v2 = rows(db.read("t", version=v2))
        db.checkpoint("t")
        new_chunks = set(db._store.chunks.digests()) - chunks_before
        # A contiguous 2.5% update rewrites only the chunks covering it (about 16k rows each).
        assert 0 < len(new_chunks) <= 3, len(new_chunks)
        db._engine().cache = type(db._engine().cache)()  # drop snapshots: read from checkpoints
        assert rows(db.read("t", version=v2)) == expected_v2
        assert db.read("t", version=v1).num_rows == n


@pytest.mark.parametrize("pk", [["name"], ["name", "n"]])
def test_checkpoints_with_string_and_composite_keys(tmp_path, pk):
    with udrflow.open(tmp_path / "s.udr") as db:
        db.create_table("t", pa.schema([("name", pa.string()), ("n", pa.int64()), ("v", pa.float64())]),
                        primary_key=pk)
        n = 60_000
        data = pa.table({"name": [f"key-{i:06d}" for i in range(n)], "n": np.arange(n) % 7,
                         "v": np.arange(n, dtype=np.float64)})
        v = db.insert("t", data)
        db.checkpoint("t")
        manifest = db._engine().checkpoints.manifest("t", 1, v)
        assert len(manifest.chunks) > 1 and sum(manifest.chunk_rows) == n  # content-defined cuts happened
        db._engine().cache = type(db._engine().cache)()
        assert sorted(r["name"] for r in db.read("t").to_pylist()) == [f"key-{i:06d}" for i in range(n)]


def test_a_bulk_load_is_stored_once(tmp_path):
    """A large insert goes to chunks in the checkpoint layout, so checkpointing that state
    writes no new chunk: the loaded rows exist on disk once, not in the log and a checkpoint."""
    with udrflow.open(tmp_path / "l.udr") as db:
        db.create_table("t", ORDERS, primary_key=["id"])
        n = 300_000
        rng = np.random.default_rng(7)
        v = db.insert("t", pa.table({"id": rng.permutation(n), "customer": [f"c{i % 977}" for i in range(n)],
                                     "amount": rng.random(n)}))
        assert len(db.log.read(v).payload) < 20_000  # the frame holds chunk references, not rows
        engine = db._engine()
        assert engine.checkpoints.nearest(engine.table_def("t", v), v) == v  # the load is the checkpoint
        chunks = set(db._store.chunks.digests())
        db.upsert("t", [{"id": 0, "customer": "x", "amount": 0.0}])
        db.checkpoint("t")
        assert len(set(db._store.chunks.digests()) - chunks) == 1  # one chunk changed, the rest shared
        db._engine().cache = type(db._engine().cache)()
        assert db.read("t").num_rows == n and db.read("t", version=v).num_rows == n


def test_delta_checkpoints_store_what_changed(tmp_path):
    """Checkpoints of a table that changed a little are deltas on its last full checkpoint:
    they cost the changed rows, reads through them are exact, and gc keeps their base."""
    with udrflow.open(tmp_path / "d.udr", durability="none") as db:
        db.create_table("t", ORDERS, primary_key=["id"])
        n = 200_000
        db.insert("t", pa.table({"id": np.arange(n), "customer": ["c"] * n, "amount": np.zeros(n)}))
        db.checkpoint("t")  # the full checkpoint the deltas build on
        base = db.version
        engine = db._engine()
        rng = np.random.default_rng(3)
        expected = {}
        versions = []
        for round_ in range(3):
            for i in range(300):
                k = int(rng.integers(n))
                if i % 50 == 0:
                    db.delete("t", keys=[{"id": k}])
                    expected[k] = None
                else:
                    db.upsert("t", [{"id": k, "customer": f"r{round_}", "amount": float(i)}])
                    expected[k] = (f"r{round_}", float(i))
            db.checkpoint("t")
            versions.append(db.version)
        tdef = engine.table_def("t", db.version)
        manifests = [engine.checkpoints.manifest("t", tdef.created, v) for v in versions]
        assert [m.base for m in manifests] == [base] * 3
        assert all(sum(m.chunk_rows) <= 900 for m in manifests)  # the changed rows, not the table
        engine.cache = type(engine.cache)()
        got = {r["id"]: (r["customer"], r["amount"]) for r in db.read("t").to_pylist()}
        assert len(got) == n - sum(1 for v in expected.values() if v is None)
        for k, v in expected.items():
            assert got.get(k) == v, k
        chain = [m.version for m in engine.checkpoints.chain(tdef, versions[-1])]
        assert chain[-1] == versions[-1] and all(base < a < b for a, b in zip(chain, chain[1:], strict=False))
        db.set_since(versions[-1])
        db.gc()
        # The full checkpoint and the deltas the retained one builds on stay.
        assert engine.checkpoints.versions("t", tdef.created) == [base, *chain]
        engine.cache = type(engine.cache)()
        assert db.read("t").num_rows == len(got)


def test_delta_chains_are_bounded_and_read_exactly_at_every_checkpoint(tmp_path):
    """Each delta holds the changes since the previous one, and every DELTA_CHAIN_MAX
    deltas one holds everything since the full checkpoint again, so a read applies at most
    DELTA_CHAIN_MAX deltas; every checkpoint, read cold, gives the table as committed."""
    from udrflow._checkpoint import DELTA_CHAIN_MAX

    path = tmp_path / "c.udr"
    history, checkpoints = {}, []
    with udrflow.open(path, durability="none") as db:
        db.create_table("t", pa.schema([("k", pa.int64()), ("v", pa.int64())]), primary_key=["k"])
        db.insert("t", pa.table({"k": np.arange(5000), "v": np.zeros(5000, dtype=np.int64)}))
        db.checkpoint("t")
        state = dict.fromkeys(range(5000), 0)
        rng = np.random.default_rng(5)
        for step in range(3 * DELTA_CHAIN_MAX + 2):
            for _ in range(20):
                k = int(rng.integers(6000))
                if rng.random() < 0.2:
                    db.delete("t", keys=[{"k": k}])
                    state.pop(k, None)
                else:
                    db.upsert("t", [{"k": k, "v": step}])
                    state[k] = step
            db.checkpoint("t")
            checkpoints.append(db.version)
            history[db.version] = dict(state)
        engine = db._engine()
        tdef = engine.table_def("t", db.version)
        chains = [len(engine.checkpoints.chain(tdef, v)) for v in checkpoints]
        assert max(chains) == DELTA_CHAIN_MAX and chains[:DELTA_CHAIN_MAX + 1] == [*range(1, DELTA_CHAIN_MAX + 1), 1]
    with udrflow.open(path) as db:
        for v in checkpoints:
            db._engine().cache = type(db._engine().cache)()
            got = {r["k"]: r["v"] for r in db.read("t", version=v).to_pylist()}
            assert got == history[v], v


def test_automatic_checkpoints_bound_the_tail(tmp_path):
    from udrflow._tables import CHECKPOINT_TAIL_COMMITS_MAX

    with udrflow.open(tmp_path / "a.udr", durability="none") as db:
        db.create_table("t", pa.schema([("k", pa.int64()), ("v", pa.int64())]), primary_key=["k"])
        for i in range(CHECKPOINT_TAIL_COMMITS_MAX + 10):
            db.upsert("t", [{"k": i % 50, "v": i}])
        engine = db._engine()
        engine.close()  # waits for the background checkpointer
        tdef = engine.table_def("t", db.version)
        assert engine.checkpoints.nearest(tdef, db.version) is not None
        assert engine.checkpoint_error is None


def test_big_commit_spills_to_chunks_and_gc_keeps_them(tmp_path):
    with udrflow.open(tmp_path / "b.udr") as db:
        db.create_table("t", pa.schema([("k", pa.int64()), ("blob", pa.binary())]), primary_key=["k"])
        big = pa.table({"k": np.arange(3000), "blob": [os.urandom(8000) for _ in range(3000)]})  # ~24 MB
        v = db.insert("t", big)
        record = db.log.read(v)
        assert len(record.payload) < 1_000_000  # the frame only references chunks
        assert db.gc()["chunks_removed"] == 0
        db._engine().cache = type(db._engine().cache)()
        assert db.read("t").sort_by("k").to_pylist() == big.to_pylist()


def test_retention_and_gc(tmp_path):
    path = tmp_path / "r.udr"
    with udrflow.open(path, segment_size_bytes=SEGMENT_SIZE_BYTES_MIN) as db:
        db.create_table("t", pa.schema([("k", pa.int64()), ("s", pa.binary())]), primary_key=["k"])
        n = 40_000  # ~0.8 MB of incompressible new rows per commit: kept inline in the log, rolling segments
        for r in range(22):
            db.insert("t", pa.table({"k": np.arange(r * n, (r + 1) * n), "s": [os.urandom(16) for _ in range(n)]}))
            if r % 5 == 4:
                db.checkpoint()
        head = db.version
        expected = rows(db.read("t"), key="k")
        segments_before = len(db.log.segment_paths)
        assert db.set_since(head - 1) == {"t": head - 1}
        report = db.gc()
        assert report["manifests_removed"] >= 3 and report["chunks_removed"] > 0
        assert report["segments_removed"] >= 1 and len(db.log.segment_paths) < segments_before
        with pytest.raises(VersionNotFoundError):
            db.read("t", version=2)
        with pytest.raises(UsageError, match="only moves forward"):
            db.set_since(2)
        assert db.read("t", version=head - 1).num_rows == 21 * n
    with udrflow.open(path) as db:  # the log now starts late: the catalog comes from its snapshot
        assert db.log.since > 1 and db.tables() == ["t"]
        assert rows(db.read("t"), key="k") == expected
        db.upsert("t", [{"k": -1, "s": b"after gc"}])
        assert db.read("t").num_rows == 22 * 40_000 + 1


def test_corrupted_chunk_is_detected_on_read(tmp_path):
    with udrflow.open(tmp_path / "x.udr") as db:
        db.create_table("t", pa.schema([("k", pa.int64())]), primary_key=["k"])
        db.insert("t", pa.table({"k": np.arange(10_000)}))
        db.checkpoint()
        digest = next(iter(db._store.chunks.digests()))
        chunk = db._store.chunks.path_of(digest)
    data = bytearray(open(chunk, "rb").read())
    data[len(data) // 2] ^= 0x04
    open(chunk, "wb").write(bytes(data))
    with udrflow.open(tmp_path / "x.udr") as db:
        with pytest.raises(CorruptionError, match=f"expected {digest}"):
            db.read("t")


def test_read_only_handle_in_another_process_sees_tables(tmp_path):
    path = str(tmp_path / "ro.udr")
    with udrflow.open(path) as db:
        db.create_table("t", ORDERS, primary_key=["id"])
        db.insert("t", [{"id": 1, "customer": "ann", "amount": 2.5}])
        code = (f"import udrflow; db = udrflow.open({path!r}, readonly=True); "
                "print(db.tables(), db.read('t').to_pylist())")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        assert out.stdout.strip() == "['t'] [{'id': 1, 'customer': 'ann', 'amount': 2.5}]", out.stderr
        reader = udrflow.open(path, readonly=True)
        db.insert("t", [{"id": 2, "customer": "bob", "amount": 1.0}])
        assert reader.version == db.version and reader.read("t").num_rows == 2
        with pytest.raises(udrflow.ReadOnlyError):
            reader.insert("t", [{"id": 3, "customer": "c", "amount": 0.0}])
        reader.close()
