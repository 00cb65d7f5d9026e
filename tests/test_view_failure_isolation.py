"""A view that fails stops alone: the other views of its run keep running and stay equal to
the batch oracle, the failed view's error names it and its cause (views.list() and the
CLI report it), a later run rebuilds it, and no Rust panic text reaches the user. The
failure here is the one users met: retention moved past the view's position."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pyarrow as pa
import pytest
from test_views import assert_same_rows, check_view

import udrflow
from udrflow.errors import VersionNotFoundError
from udrflow.views import count, sum_

SCRIPT = textwrap.dedent("""
    import sys
    import pyarrow as pa
    import udrflow
    from udrflow.views import count, sum_

    from udrflow._limits import SEGMENT_SIZE_BYTES_MIN

    path = sys.argv[1]
    db = udrflow.open(path, segment_size_bytes=SEGMENT_SIZE_BYTES_MIN)
    schema = pa.schema([pa.field("id", pa.int64(), nullable=False), ("x", pa.int64()), ("pad", pa.binary())])
    db.create_table("t1", schema, primary_key="id")
    db.create_table("t2", schema, primary_key="id")
    db.insert("t1", [{"id": 1, "x": 1}])
    db.insert("t2", [{"id": 1, "x": 1}])
    a = db.create_view("a", db.stream("t1").group_by("id").agg(n=count()))
    b = db.create_view("b", db.stream("t2").group_by("id").agg(s=sum_("x")))
    db.close()
    db = udrflow.open(path, segment_size_bytes=SEGMENT_SIZE_BYTES_MIN)  # (no state of a left in memory)
    a, b = db.views["a"], db.views["b"]
    import os
    for i in range(40):  # ~24 MB of log: the first segment fills and is sealed
        db.insert("t1", [{"id": 100 + i, "x": i, "pad": os.urandom(600_000)}])
    db.insert("t2", [{"id": 2, "x": 0}])
    db.views["b"].refresh()  # b reflects the head of its input; a is far behind
    db.set_since(b.position)  # a's position is now below t1's since
    assert db.gc()["segments_removed"] >= 1  # and the log that held it is gone
    db.views.run()
    for i in range(5):
        v = db.insert("t2", [{"id": 20 + i, "x": i, "pad": None}])
    assert b.wait_for(v), "b stopped with a"
    assert a.error is not None and not a.running and b.running
    listed = {r["name"]: r for r in db.views.list()}
    print("ERROR-A", listed["a"]["error"])
    print("ERROR-B", listed["b"]["error"])
    try:
        db.views.stop()
    except udrflow.VersionNotFoundError as exc:
        print("STOP-RAISED", type(exc).__name__)
    print("B", sorted(r["s"] for r in db.read("b").to_pylist()))
    db.close()
""")


def test_a_view_past_retention_stops_alone_with_a_clear_error_and_no_panic_text(tmp_path):
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "db.udr")], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "ERROR-B None" in out
    line = next(x for x in out.splitlines() if x.startswith("ERROR-A"))
    assert "VersionNotFoundError" in line and "view 'a' stopped" in line, line
    assert "STOP-RAISED VersionNotFoundError" in out
    assert "B [0, 0, 1, 1, 2, 3, 4]" in out
    assert "panicked" not in proc.stderr and "Box<dyn Any>" not in proc.stderr, proc.stderr[-2000:]
    # In this process: the failed view is rebuilt by a later refresh once nothing blocks it.
    db = udrflow.open(str(tmp_path / "db.udr"))
    with pytest.raises(VersionNotFoundError, match="since|removed"):
        db.views["a"].refresh()
    b = db.views["b"]
    b.refresh()
    assert_same_rows(db.read("b"), b.batch(b.position), "b at the head")  # (history before since is gone)
    db.close()


def fail_on_13(table: pa.Table) -> pa.Table:
    """A user's map function with a bug: it raises on x == 13."""
    if 13 in table.column("x").to_pylist():
        raise ValueError("cannot handle x=13")
    return table


def test_a_failing_map_function_stops_its_view_alone(tmp_path):
    db = udrflow.open(str(tmp_path / "r.udr"))
    schema = pa.schema([pa.field("id", pa.int64(), nullable=False), ("x", pa.int64())])
    db.create_table("t1", schema, primary_key="id")
    db.create_table("t2", schema, primary_key="id")
    db.insert("t1", [{"id": 1, "x": 1}])
    db.insert("t2", [{"id": 1, "x": 1}])
    db.create_view("a", db.stream("t1").map(fail_on_13).group_by("id").agg(n=count()))
    db.create_view("b", db.stream("t2").group_by("id").agg(s=sum_("x")))
    db.views.run()
    db.insert("t1", [{"id": 2, "x": 13}])
    v = db.insert("t2", [{"id": 3, "x": 7}])
    assert db.views["b"].wait_for(v)
    v = db.insert("t2", [{"id": 4, "x": 8}])
    assert db.views["b"].wait_for(v) and db.views["b"].running
    assert not db.views["a"].running
    listed = {r["name"]: r["error"] for r in db.views.list()}
    assert listed["b"] is None and "view 'a' stopped: ValueError: cannot handle x=13" in listed["a"]
    with pytest.raises(ValueError, match="x=13") as info:
        db.views.stop()
    assert any("view 'a' stopped" in note for note in info.value.__notes__)
    check_view(db, "b")
    db.close()
