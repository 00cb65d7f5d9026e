"""What the CLI prints and writes: table output stops at --limit (50 by default), list and
struct columns survive diff and CSV (JSON text in CSV), a failed write leaves no partial
file, and errors (ours and the OS's) are one line on stderr with exit status 1."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pyarrow as pa

import udrflow

CLI = [sys.executable, "-m", "udrflow.cli"]


def run(*args):
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120)


def _nested_db(path: str) -> None:
    with udrflow.open(path) as db:
        db.create_table("t", pa.schema([pa.field("id", pa.int64(), nullable=False), ("tags", pa.list_(pa.string())),
                                        ("meta", pa.struct([("a", pa.int64()), ("b", pa.string())]))]),
                        primary_key="id")
        db.insert("t", [{"id": i, "tags": ["x", f"t{i}"], "meta": {"a": i, "b": "q,\"r"}} for i in range(120)])
        db.create_branch("dev")
        with db.branch("dev") as dev:
            dev.upsert("t", [{"id": 1, "tags": ["changed"], "meta": None}])
        db.create_table("u", pa.schema([("tags", pa.list_(pa.int64()))]))  # no key: grouped by the list itself
        db.insert("u", [{"tags": [1, 2]}, {"tags": [1, 2]}, {"tags": None}])


def test_read_and_sql_print_at_most_limit_rows_in_table_format(tmp_path):
    db = str(tmp_path / "n.udr")
    _nested_db(db)
    out = run("read", "t", "--db", db).stdout
    assert out.count("\n") == 52 and "(50 rows of 120; --limit N shows more)" in out
    assert '["x", "t0"]' in out  # nested values as JSON
    out = run("read", "t", "--db", db, "--limit", "3").stdout
    assert "(3 rows of 120" in out
    out = run("sql", "SELECT id FROM t ORDER BY id", "--db", db).stdout
    assert "(50 rows of 120" in out
    out = run("sql", "SELECT id FROM t", "--db", db, "--format", "json").stdout
    assert len(out.splitlines()) == 120  # other formats: every row unless --limit


def test_diff_and_csv_handle_list_and_struct_columns(tmp_path):
    db = str(tmp_path / "n.udr")
    _nested_db(db)
    proc = run("diff", "main..dev", "--db", db, "--table", "t", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [(r["id"], r["tags"], r["__weight"]) for r in rows] == [(1, ["x", "t1"], -1), (1, ["changed"], 1)]
    with udrflow.open(db, readonly=True) as d:
        assert d.diff("main", "main", table="u").num_rows == 0
    out = str(tmp_path / "t.csv")
    proc = run("read", "t", "--db", db, "--format", "csv", "--out", out)
    assert proc.returncode == 0, proc.stderr
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 120
    assert json.loads(rows[0]["tags"]) == ["x", "t0"] and json.loads(rows[0]["meta"]) == {"a": 0, "b": 'q,"r'}


def test_a_failed_write_leaves_no_partial_file_and_errors_are_one_line(tmp_path):
    db = str(tmp_path / "n.udr")
    _nested_db(db)
    out = tmp_path / "nowhere" / "t.csv"  # its directory does not exist
    proc = run("read", "t", "--db", db, "--format", "csv", "--out", str(out))
    assert proc.returncode == 1
    assert proc.stderr.startswith("udrflow: error:") and proc.stderr.count("\n") == 1, proc.stderr
    assert not out.parent.exists()
    target = tmp_path / "q.parquet"
    proc = run("sql", "SELECT nosuchcolumn FROM t", "--db", db, "--format", "parquet", "--out", str(target))
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert not target.exists() and not [p for p in os.listdir(tmp_path) if ".tmp-" in p]
    for args in (["read", "nosuch", "--db", db], ["tables", "--db", str(tmp_path / "missing.udr")],
                 ["sql", "SELEC 1", "--db", db], ["read", "t", "--db", db, "--version", "999"],
                 ["read", "t", "--db", db, "--at", "not-a-time"], ["read", "t", "--db", db, "--limit", "-1"]):
        proc = run(*args)
        assert proc.returncode == 1, args
        assert proc.stderr.startswith("udrflow: error:") and proc.stderr.count("\n") == 1, (args, proc.stderr)
