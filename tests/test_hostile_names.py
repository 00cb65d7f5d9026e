"""Names given to every API that takes one (tables, branches, views, diff sides, SQL
``t@branch``) never escape the database directory and never raise outside the
``UdrflowError`` tree: generated hostile names (path tricks, NUL and control characters,
lone surrogates, very long and odd Unicode) either work as names or raise
InvalidNameError / another UdrflowError. The model: the set of files outside the database
must not change."""

from __future__ import annotations

import os
import random

import pyarrow as pa
import pytest

import udrflow
from udrflow.errors import InvalidNameError, UdrflowError

SEED = int(os.environ.get("UDRFLOW_NAMES_SEED", "7"))
NAMES = int(os.environ.get("UDRFLOW_NAMES", "1500"))  # full size: 10000

_PIECES = ["..", "/", "\\", ".", "~", "\x00", "\n", "\t", "\x7f", "\ud800", " ", "'", '"', "`", "$HOME", "*",
           "?", "@", "#", "%", "main", "dev", "branches", "log", "..%2f", "\u202e", "é", "日本", "\U0001f600",
           "_", "-", "a", "Z", "9", "CON", "__changelog", "__udrflow_views", ":"]
_TRAVERSALS = ["../../other/branches/dev", "../other", "/tmp/x", "./main", "a/../../b", "..", ".", "",
               "x" * 300, "é" * 70, "a\x00b", "\ud800", "main/", "dev\n", "../" * 10 + "etc"]


def hostile_names(rng: random.Random, n: int) -> list[str]:
    out = list(_TRAVERSALS)
    while len(out) < n:
        out.append("".join(rng.choice(_PIECES) for _ in range(rng.randint(1, 6))))
    return out[:n]


def _files_outside(root: str, db_dir: str) -> set[str]:
    found = set()
    for d, dirs, files in os.walk(root):
        if os.path.abspath(d).startswith(db_dir):
            dirs[:] = []
            continue
        found.update(os.path.join(d, f) for f in files + dirs)
    return found


def _calls(db, name: str):
    schema = pa.schema([pa.field("k", pa.int64(), nullable=False)])
    yield lambda: db.create_table(name, schema, primary_key="k")
    yield lambda: db.insert(name, [{"k": 1}])
    yield lambda: db.read(name)
    yield lambda: db.schema(name)
    yield lambda: db.delete(name, keys=[{"k": 1}])
    yield lambda: db.checkpoint(name)
    yield lambda: db.subscribe([name], from_version=0, until_version=0).close()
    yield lambda: db.drop_table(name)
    yield lambda: db.create_branch(name)
    yield lambda: db.branch(name).close()
    yield lambda: udrflow.open(db.path, branch=name, readonly=True).close()
    yield lambda: db.diff("main", name)
    yield lambda: db.diff("main", f"{name}@1")
    yield lambda: db.merge(name)
    yield lambda: db.sql(f'SELECT * FROM t@"{name}"')
    yield lambda: db.sql(f"SELECT * FROM t@{name}")
    yield lambda: db.delete_branch(name)
    yield lambda: db.create_view(name, db.stream("t"))
    yield lambda: db.drop_view(name)


def test_hostile_names_stay_inside_the_database_and_raise_only_udrflow_errors(tmp_path):
    rng = random.Random(SEED)
    (tmp_path / "other" / "branches").mkdir(parents=True)
    db_dir = str(tmp_path / "inner" / "db.udr")
    db = udrflow.open(db_dir)
    db.create_table("t", pa.schema([pa.field("k", pa.int64(), nullable=False)]), primary_key="k")
    db.create_branch("dev")
    before = _files_outside(str(tmp_path), db_dir)
    outcomes = {"ok": 0, "invalid": 0, "other": 0}
    for name in hostile_names(rng, NAMES):
        for call in _calls(db, name):
            try:
                call()
                outcomes["ok"] += 1
            except InvalidNameError:
                outcomes["invalid"] += 1
            except UdrflowError:
                outcomes["other"] += 1
            except Exception as exc:  # noqa: BLE001 - the defect this test looks for
                pytest.fail(f"seed {SEED}: name {name!r} raised {type(exc).__name__}: {exc}")
    assert _files_outside(str(tmp_path), db_dir) == before, f"seed {SEED}"
    assert outcomes["invalid"] > NAMES  # most generated names break the rule
    db.close()
    with udrflow.open(db_dir) as again:  # and the database is still whole
        assert "t" in again.tables()


@pytest.mark.parametrize("name", ["../../other/branches/dev", "a/b", "..", "\ud800", "x\x00"])
def test_branch_names_are_checked_wherever_they_enter(tmp_path, name):
    db = udrflow.open(str(tmp_path / "db.udr"))
    db.create_table("t", pa.schema([pa.field("k", pa.int64(), nullable=False)]), primary_key="k")
    for call in (lambda: db.sql(f'SELECT * FROM t@"{name}"'), lambda: db.diff("main", name),
                 lambda: db.delete_branch(name), lambda: udrflow.open(db.path, branch=name, readonly=True),
                 lambda: db.merge(name)):
        with pytest.raises(InvalidNameError, match="branch name"):
            call()
    db.close()
