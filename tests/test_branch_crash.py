"""A branch create or delete killed (SIGKILL) after any of its file operations leaves the
database in one of the two whole states: the branch exists as created (or as it was
before the delete), or it does not exist and creating it again gives a branch that shows
exactly its fork's rows and keeps every acknowledged write. The kill points are every
file operation the call makes (a file layer that kills the process after the k-th one);
the model is the rows each side holds, computed in plain Python."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pyarrow as pa
import pytest

import udrflow

MAIN_ROWS = [{"k": i, "v": f"main{i}"} for i in range(5)]
DEV_ROWS = [{"k": 100 + i, "v": f"dev{i}"} for i in range(3)]

CHILD = textwrap.dedent("""
    import os, signal, sys
    import udrflow
    from udrflow._fileio import FileIO

    class KillAfter(FileIO):
        armed = False
        left = int(sys.argv[3])
        def _tick(self):
            if KillAfter.armed:
                KillAfter.left -= 1
                if KillAfter.left == 0:
                    os.kill(os.getpid(), signal.SIGKILL)
    for _name in ("open", "pwritev", "fdatasync", "fsync", "ftruncate", "replace", "unlink", "mkdir", "fsync_dir"):
        def _wrap(name=_name):
            base = getattr(FileIO, name)
            def op(self, *args, **kw):
                out = base(self, *args, **kw)
                self._tick()
                return out
            setattr(KillAfter, name, op)
        _wrap()

    db = udrflow.open(sys.argv[1], io=KillAfter())
    KillAfter.armed = True
    if sys.argv[2] == "create":
        db.create_branch("dev")
    else:
        db.delete_branch("dev")
    print("done")
""")


def _setup(path: str, with_dev: bool) -> None:
    with udrflow.open(path) as db:
        db.create_table("t", pa.schema([pa.field("k", pa.int64(), nullable=False), ("v", pa.string())]),
                        primary_key="k")
        db.insert("t", MAIN_ROWS)
        if with_dev:
            db.create_branch("dev")
            with db.branch("dev") as dev:
                dev.insert("t", DEV_ROWS)
            db.delete_branch("dev")  # a deleted namesake first: its files must never come back
            db.create_branch("dev")
            with db.branch("dev") as dev:
                dev.insert("t", DEV_ROWS)


def _rows(db, table="t") -> list[dict]:
    return sorted(db.read(table).to_pylist(), key=lambda r: r["k"])


def _check_a_fresh_dev_keeps_its_writes(path: str, main_rows: list[dict]) -> None:
    with udrflow.open(path, branch="dev") as dev:
        assert _rows(dev) == main_rows
        dev.insert("t", [{"k": 999, "v": "late"}])
    with udrflow.open(path, branch="dev") as dev:  # acknowledged, and visible after a reopen
        assert _rows(dev) == main_rows + [{"k": 999, "v": "late"}]


@pytest.mark.parametrize("action", ["create", "delete"])
def test_a_branch_create_or_delete_killed_at_any_file_operation_leaves_a_whole_state(tmp_path, action):
    kills = 0
    for k in range(1, 200):
        path = str(tmp_path / f"{action}{k}.udr")
        _setup(path, with_dev=action == "delete")
        proc = subprocess.run([sys.executable, "-c", CHILD, path, action, str(k)], capture_output=True, text=True)
        finished = proc.returncode == 0
        assert finished or proc.returncode == -signal.SIGKILL, proc.stderr
        kills += not finished
        with udrflow.open(path) as db:
            assert _rows(db) == MAIN_ROWS  # main is never touched by the killed call
            exists = "dev" in [b["name"] for b in db.branches()]
            if action == "create":
                assert exists or not finished
                main_rows = MAIN_ROWS
                if not exists:
                    # main moves on before the retry, so the new fork is at another version
                    # than the killed one's leftovers
                    main_rows = MAIN_ROWS + [{"k": 50, "v": "moved"}]
                    db.insert("t", main_rows[-1:])
                    db.create_branch("dev")
                _check_a_fresh_dev_keeps_its_writes(path, main_rows)
            else:
                assert not exists or not finished
                if exists:
                    with db.branch("dev") as dev:
                        assert _rows(dev) == sorted(MAIN_ROWS + DEV_ROWS, key=lambda r: r["k"])
                else:
                    db.create_branch("dev")  # a new branch of the old name shows none of the old rows
                    _check_a_fresh_dev_keeps_its_writes(path, MAIN_ROWS)
        if finished:
            break
    else:
        pytest.fail("the call never finished")
    assert kills >= 2
    assert os.path.exists(path)
