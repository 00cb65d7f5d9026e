"""The CLI commands and every file in examples/ run for real against an embedded
database (in subprocesses, as a user would run them)."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

import udrflow

ROOT = pathlib.Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "udrflow.cli"]


def run(*args, env=None, check=True):
    proc = subprocess.run([*CLI, *args], capture_output=True, text=True, env={**os.environ, **(env or {})},
                          timeout=120)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_init_log_verify(tmp_path):
    import pyarrow as pa

    db = str(tmp_path / "shop.udr")
    assert "initialised" in run("init", "--db", db).stdout
    with udrflow.open(db) as handle:
        handle.create_table("t", pa.schema([("k", pa.int64())]), primary_key=["k"])
        for k in range(9):
            handle.insert("t", [{"k": k}])
    out = run("log", "--from-version", "4", "--limit", "3", "--format", "json", env={"UDRFLOW_DB": db}).stdout
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["version"] for r in rows] == [4, 5, 6] and all(r["operations"] == "t +1/-0" for r in rows)
    assert "create_table t" in run("log", "--db", db, "--limit", "1").stdout
    out = run("verify", "--db", db).stdout
    assert "versions 1..10 (10 commits" in out and "table 't' reads at version 10: 9 rows" in out


def test_verify_checks_chunks_checkpoints_and_tables(tmp_path):
    import numpy as np
    import pyarrow as pa

    db = str(tmp_path / "v.udr")
    with udrflow.open(db) as handle:
        handle.create_table("t", pa.schema([("k", pa.int64())]), primary_key=["k"])
        handle.insert("t", pa.table({"k": np.arange(50_000)}))
        handle.checkpoint()
        digest = next(iter(handle._store.chunks.digests()))
        chunk = handle._store.chunks.path_of(digest)
    out = run("verify", "--db", db).stdout
    assert "chunk(s), every BLAKE3 name verified" in out and "table 't' reads at version 2: 50,000 rows" in out
    data = bytearray(pathlib.Path(chunk).read_bytes())
    data[-1] ^= 0x01
    pathlib.Path(chunk).write_bytes(bytes(data))
    proc = run("verify", "--db", db, check=False)
    assert proc.returncode == 1 and f"expected {digest}" in proc.stderr


def test_verify_reports_corruption_with_file_and_offset(tmp_path):
    db = str(tmp_path / "shop.udr")
    with udrflow.open(db) as handle:
        for _ in range(5):  # five durable commits: damage to the first is inside the log, not a torn tail
            handle.log.append(b"x" * 100)
        seg = handle.log.segment_paths[0]
    data = bytearray(pathlib.Path(seg).read_bytes())
    data[32 + 40] ^= 0x01  # inside the first frame's body; durable frames follow it
    pathlib.Path(seg).write_bytes(bytes(data))
    proc = run("verify", "--db", db, check=False)
    assert proc.returncode == 1
    assert "checksum bad in segment 00000000000000000001.seg at byte 32 (version 1)" in proc.stderr


def test_tables_read_gc(tmp_path):
    db = str(tmp_path / "shop.udr")
    with udrflow.open(db) as handle:
        import pyarrow as pa

        handle.create_table("orders", pa.schema([("id", pa.int64()), ("amount", pa.float64())]), primary_key=["id"])
        v = handle.insert("orders", [{"id": 1, "amount": 9.5}, {"id": 2, "amount": 3.0}])
        handle.delete("orders", keys=[{"id": 2}])
    assert "orders" in run("tables", "--db", db).stdout and "1 rows  key: id" in run("tables", "--db", db).stdout
    out = run("read", "orders", "--db", db, "--version", str(v), "--format", "json").stdout
    assert sorted(json.loads(line)["id"] for line in out.splitlines()) == [1, 2]
    assert "(1 rows)" in run("read", "orders", "--db", db).stdout
    assert run("read", "orders", "--db", db, "--format", "csv").stdout == '"id","amount"\n1,9.5\n'
    parquet = tmp_path / "o.parquet"
    run("read", "orders", "--db", db, "--format", "parquet", "--out", str(parquet))
    assert parquet.exists()
    log = run("log", "--db", db).stdout
    assert "create_table orders" in log and "orders +2/-0" in log and "orders +0/-1" in log
    out = run("gc", "--db", db, "--since", str(v + 1)).stdout
    assert "since of orders: 3" in out and "chunks removed" in out
    proc = run("read", "orders", "--db", db, "--version", str(v), check=False)
    assert proc.returncode == 1 and "since=3" in proc.stderr
    proc = run("read", "nope", "--db", db, check=False)
    assert proc.returncode == 1 and "table 'nope' does not exist" in proc.stderr


def test_missing_db_argument_is_a_clear_error():
    env = {k: v for k, v in os.environ.items() if k != "UDRFLOW_DB"}
    proc = subprocess.run([*CLI, "log"], capture_output=True, text=True, env=env)
    assert proc.returncode != 0 and "expected --db PATH or the UDRFLOW_DB" in proc.stderr


def test_demo_runs(tmp_path):
    out = run("demo", "--db", str(tmp_path / "demo.udr")).stdout
    assert "demo finished" in out and "the follower saw versions" in out


@pytest.mark.parametrize("example", sorted(p.name for p in (ROOT / "examples").glob("*.py")))
def test_examples_run(example, tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / example), str(tmp_path / "ex.udr")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_demo_runs_again_on_its_own_database_and_refuses_a_users(tmp_path):
    demo_db = str(tmp_path / "demo.udr")
    run("demo", "--db", demo_db)
    again = run("demo", "--db", demo_db, check=False)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "panicked" not in again.stderr and "demo finished" in again.stdout
    user_db = str(tmp_path / "shop.udr")
    with udrflow.open(user_db) as db:
        db.create_table("orders", udrflow_schema())
        db.insert("orders", [{"id": 1}])
        before = db.version
    proc = run("demo", "--db", user_db, check=False)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and "expected a new database" in proc.stderr
    with udrflow.open(user_db) as db:
        assert db.version == before and db.tables() == ["orders"]
    # $UDRFLOW_DB names the user's database for every other command: the demo ignores it.
    proc = run("demo", env={"UDRFLOW_DB": user_db}, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with udrflow.open(user_db) as db:
        assert db.version == before


def udrflow_schema():
    import pyarrow as pa

    return pa.schema([pa.field("id", pa.int64(), nullable=False)])
