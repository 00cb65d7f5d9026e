"""A log damaged in the middle can still be read up to the damage (``salvage=True``) and
copied into a new database (``udrflow recover``), which then holds every version before
the first bad frame, equal to a plain-Python model of the table at each version, with the
same timestamps, and takes new commits. What was lost is reported."""

from __future__ import annotations

import os
import random
import subprocess
import sys

import pyarrow as pa
import pytest

import udrflow
from udrflow.errors import CorruptionError, InvalidOptionError
from udrflow.log import EpochLog

SEED = int(os.environ.get("UDRFLOW_SALVAGE_SEED", "5"))
DAMAGED_VERSION = 21


def _build(path: str, rng: random.Random) -> dict[int, dict[int, str]]:
    history: dict[int, dict[int, str]] = {}
    model: dict[int, str] = {}
    with udrflow.open(path) as db:
        db.create_table("t", pa.schema([pa.field("k", pa.int64(), nullable=False), ("s", pa.string())]),
                        primary_key="k")
        for i in range(40):
            if i == 10:  # a large commit: its rows go to chunks
                rows = [{"k": 1000 + j, "s": rng.randbytes(40).hex()} for j in range(30_000)]
            else:
                rows = [{"k": rng.randrange(50), "s": f"v{i}"}]
            v = db.upsert("t", rows)
            model.update({r["k"]: r["s"] for r in rows})
            history[v] = dict(model)
            if i == 15:
                db.checkpoint()
    return history


def _flip_in_frame(path: str, version: int) -> None:
    log_dir = os.path.join(path, "log", "main")
    with EpochLog.open(log_dir, readonly=True) as log:
        segment = log._segments[0]
        offset = segment.offsets[version - segment.first_version]
        seg_path = segment.path
    with open(seg_path, "r+b") as f:
        f.seek(offset + 20)
        byte = f.read(1)
        f.seek(offset + 20)
        f.write(bytes([byte[0] ^ 0x01]))


def _as_dict(table: pa.Table) -> dict[int, str]:
    return dict(zip(table.column("k").to_pylist(), table.column("s").to_pylist(), strict=True))


def test_a_log_damaged_in_the_middle_is_salvaged_and_recovered(tmp_path):
    rng = random.Random(SEED)
    path = str(tmp_path / "src.udr")
    history = _build(path, rng)
    with udrflow.open(path, readonly=True) as db:
        stamps = {r.version: r.timestamp_us for r in db.log.scan()}
    head = max(history)
    _flip_in_frame(path, DAMAGED_VERSION)

    with pytest.raises(CorruptionError, match=f"version {DAMAGED_VERSION}"):
        udrflow.open(path, readonly=True)
    with pytest.raises(InvalidOptionError, match="readonly=True"):
        udrflow.open(path, salvage=True)
    with udrflow.open(path, readonly=True, salvage=True) as db:
        assert db.version == DAMAGED_VERSION - 1
        assert db.log.damage is not None and db.log.damage.version == DAMAGED_VERSION
        assert "00000000000000000001.seg" in str(db.log.damage)
        for v in range(2, DAMAGED_VERSION):
            assert _as_dict(db.read("t", version=v)) == history[v], f"seed {SEED}, version {v}"

    out = str(tmp_path / "new.udr")
    proc = subprocess.run([sys.executable, "-m", "udrflow.cli", "recover", "--db", path, "--out", out],
                          capture_output=True, text=True)
    assert proc.returncode == 1, proc.stderr  # versions were lost
    assert f"lost: versions {DAMAGED_VERSION}..{head} ({head - DAMAGED_VERSION + 1} acknowledged" in proc.stdout
    assert "Traceback" not in proc.stderr
    with udrflow.open(out) as db:
        assert db.version == DAMAGED_VERSION - 1
        assert {r.version: r.timestamp_us for r in db.log.scan()} == {
            v: t for v, t in stamps.items() if v < DAMAGED_VERSION}
        for v in range(2, DAMAGED_VERSION):
            assert _as_dict(db.read("t", version=v)) == history[v], f"seed {SEED}, version {v}"
        assert db.insert("t", [{"k": 99_999, "s": "after"}]) == DAMAGED_VERSION
    proc = subprocess.run([sys.executable, "-m", "udrflow.cli", "verify", "--db", out], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = subprocess.run([sys.executable, "-m", "udrflow.cli", "verify", "--db", path], capture_output=True,
                          text=True)
    assert proc.returncode == 1 and "udrflow: error:" in proc.stderr and "Traceback" not in proc.stderr


def test_recover_of_a_whole_database_loses_nothing_and_refuses_a_used_target(tmp_path):
    path = str(tmp_path / "src.udr")
    history = _build(path, random.Random(SEED))
    out = str(tmp_path / "copy.udr")
    proc = subprocess.run([sys.executable, "-m", "udrflow.cli", "recover", "--db", path, "--out", out],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "lost: nothing" in proc.stdout
    with udrflow.open(out) as db:
        assert _as_dict(db.read("t")) == history[max(history)]
    proc = subprocess.run([sys.executable, "-m", "udrflow.cli", "recover", "--db", path, "--out", out],
                          capture_output=True, text=True)
    assert proc.returncode == 1 and "expected" in proc.stderr and "Traceback" not in proc.stderr
