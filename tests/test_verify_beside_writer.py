"""``udrflow verify`` and read-only followers beside a writer that commits, checkpoints,
moves ``since`` and collects garbage report no damage where there is none: the writer's
database is healthy throughout (the model: every acknowledged version at or above since
reads back equal to a plain-Python dict of the rows), so any CorruptionError is a false
report."""

from __future__ import annotations

import os
import random
import threading

import pyarrow as pa

import udrflow
from udrflow import cli
from udrflow._limits import SEGMENT_SIZE_BYTES_MIN
from udrflow.errors import VersionNotFoundError

SEED = int(os.environ.get("UDRFLOW_VERIFY_SEED", "3"))
VERIFIES = int(os.environ.get("UDRFLOW_VERIFIES", "12"))  # full size: 200
GCS_MIN = int(os.environ.get("UDRFLOW_VERIFY_GCS", "4"))    # full size: 40


def test_verify_and_followers_beside_a_checkpointing_collecting_writer_report_no_false_damage(tmp_path):
    path = str(tmp_path / "w.udr")
    db = udrflow.open(path, segment_size_bytes=SEGMENT_SIZE_BYTES_MIN)
    db.create_table("t", pa.schema([pa.field("k", pa.int64(), nullable=False), ("b", pa.binary())]),
                    primary_key="k")
    model: dict[int, bytes] = {}
    history: dict[int, dict[int, bytes]] = {}
    stop = threading.Event()
    errors: list[BaseException] = []
    counts = {"commits": 0, "gcs": 0, "checkpoints": 0}

    def writer() -> None:
        wrng = random.Random(SEED + 1)
        try:
            while not stop.is_set():
                n = wrng.choice([1, 10, 200, 6000])  # 6000 x 200 B: over the inline limit, so chunks
                rows = [{"k": k, "b": wrng.randbytes(200)} for k in wrng.sample(range(20_000), n)]
                v = db.upsert("t", rows)
                model.update({r["k"]: r["b"] for r in rows})
                history[v] = dict(model)
                counts["commits"] += 1
                if counts["commits"] % 7 == 0:
                    db.checkpoint()
                    counts["checkpoints"] += 1
                if counts["commits"] % 11 == 0:
                    db.set_since(max(db.version - 3, 1))
                    db.gc()
                    counts["gcs"] += 1
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    thread = threading.Thread(target=writer)
    thread.start()
    follower = udrflow.open(path, readonly=True)
    try:
        i = 0
        while (i < VERIFIES or counts["gcs"] < GCS_MIN) and not errors:
            i += 1
            assert cli.main(["verify", "--db", path]) == 0, f"seed {SEED}, round {i}: a false report (see stderr)"
            # A follower opened long ago reads whatever is still retained, or is told it is not.
            v = follower.version
            try:
                got = follower.read("t", version=v)
            except VersionNotFoundError:
                continue
            want = history.get(v)
            if want is not None:
                assert dict(zip(got.column("k").to_pylist(), got.column("b").to_pylist(), strict=True)) == want, (
                    f"seed {SEED}, round {i}, version {v}")
    finally:
        stop.set()
        thread.join()
        follower.close()
    assert not errors, f"seed {SEED}: {errors[0]!r}"
    assert counts["gcs"] > 0 and counts["checkpoints"] > 0, counts
    db.close()


def test_a_follower_opened_before_the_writers_gc_reads_or_is_told_the_version_is_gone(tmp_path):
    # It used to raise CorruptionError ("checkpoint manifest ... is missing") for versions
    # whose checkpoints gc had removed: not damage, retention.
    path = str(tmp_path / "f.udr")
    rng = random.Random(SEED)
    w = udrflow.open(path, segment_size_bytes=SEGMENT_SIZE_BYTES_MIN)
    w.create_table("t", pa.schema([pa.field("k", pa.int64(), nullable=False), ("b", pa.binary())]), primary_key="k")
    for _ in range(60):
        w.upsert("t", [{"k": k, "b": rng.randbytes(100)} for k in range(2000)])
    follower = udrflow.open(path, readonly=True)
    assert follower.read("t").num_rows == 2000
    since = w.version - 5
    w.set_since(since)
    w.checkpoint()
    assert w.gc()["manifests_removed"] > 0
    w.upsert("t", [{"k": 1, "b": b"x"}])
    for v in range(12, w.version + 1):
        try:
            assert follower.read("t", version=v).num_rows == 2000
        except VersionNotFoundError:
            assert v < since
        else:
            assert v >= since
    assert follower.sql("SELECT count(*) AS n FROM t").to_pylist() == [{"n": 2000}]
    follower.close()
    w.close()
