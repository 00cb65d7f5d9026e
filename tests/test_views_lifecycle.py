"""Views started in the background end cleanly: a script that exits with ``db.views.run()``
active exits normally (it used to abort with SIGABRT), and after ``stop()`` the registry
records exactly how far each view got (``input_version_at(head)`` is the head)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pyarrow as pa

import udrflow
from udrflow.views import col, count, sum_


def test_a_script_that_exits_with_views_running_exits_normally(tmp_path):
    script = textwrap.dedent("""
        import sys
        import pyarrow as pa, udrflow
        from udrflow.views import count
        db = udrflow.open(sys.argv[1])
        db.create_table("t", pa.schema([pa.field("id", pa.int64(), nullable=False), ("k", pa.int64())]),
                        primary_key="id")
        db.create_view("n", db.stream("t").group_by("id").agg(n=count()))
        db.views.run()
        v = db.insert("t", [{"id": 1, "k": 1}])
        db.views["n"].wait_for(v)
        print("done")
    """)
    for run in range(3):
        proc = subprocess.run([sys.executable, "-c", script, str(tmp_path / f"x{run}.udr")], capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
        assert "done" in proc.stdout
        assert "panicked" not in proc.stderr


def test_after_stop_the_recorded_position_is_exact(tmp_path):
    db = udrflow.open(str(tmp_path / "p.udr"))
    db.create_table("t", pa.schema([pa.field("id", pa.int64(), nullable=False), ("x", pa.int64())]),
                    primary_key="id")
    db.create_table("other", pa.schema([pa.field("id", pa.int64(), nullable=False)]), primary_key="id")
    db.insert("t", [{"id": 1, "x": 5}])
    view = db.create_view("big", db.stream("t").filter(col("x") > 100).group_by("id").agg(n=count(), s=sum_("x")))
    db.views.run()
    for i in range(5):
        v = db.insert("t", [{"id": 10 + i, "x": 1}])  # filtered out: the view's rows do not change
        db.insert("other", [{"id": i}])
    assert view.wait_for(v)
    db.views.stop()
    head = db.version
    assert view.input_version_at(head) >= v  # it reflects the last commit of its input (it used to say 5)
    assert db.read("big").num_rows == 0
    db.close()
