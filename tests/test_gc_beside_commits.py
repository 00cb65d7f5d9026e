"""gc running beside commits never makes an acknowledged version unreadable.

A commit over COMMIT_INLINE_ROWS_BYTES_MAX writes its rows as chunks before its frame and
waits for its fsync outside the commit lock; a checkpoint writes chunks before its
manifest. A gc that sweeps meanwhile must keep them (ChunkStore pins). The test runs gc in
a loop beside large and small commits and then reads every acknowledged version, comparing
each with a plain-Python model of the table."""

from __future__ import annotations

import os
import random
import threading
import time

import pyarrow as pa

import udrflow
from udrflow._commit import decode_header
from udrflow._fileio import FileIO

SEED = int(os.environ.get("UDRFLOW_GC_SEED", "1"))
ROUNDS = int(os.environ.get("UDRFLOW_GC_ROUNDS", "12"))  # full size: 200
BIG_ROWS = 50_000  # 1.6 MB of random bytes: over the inline limit, so the rows go to chunks
SYNC_DELAY_S = 0.005


class _SlowSync(FileIO):
    """A real file layer whose fdatasync takes a few ms longer, as on a busy disk: it
    widens the window in which a large commit waits, acknowledged by nobody yet."""

    def fdatasync(self, fd: int) -> None:
        time.sleep(SYNC_DELAY_S)
        super().fdatasync(fd)


def _big(rng: random.Random, start: int) -> pa.Table:
    return pa.table({"id": pa.array(range(start, start + BIG_ROWS), pa.int64()),
                     "s": pa.array([rng.randbytes(32) for _ in range(BIG_ROWS)], pa.binary())})


def test_gc_beside_large_and_small_commits_leaves_every_acknowledged_version_readable(tmp_path):
    rng = random.Random(SEED)
    db = udrflow.open(str(tmp_path / "gc.udr"), io=_SlowSync())
    db.create_table("big", pa.schema([pa.field("id", pa.int64(), nullable=False), ("s", pa.binary())]))
    db.create_table("small", pa.schema([pa.field("id", pa.int64(), nullable=False), ("s", pa.string())]),
                    primary_key="id")
    stop = threading.Event()
    errors: list[BaseException] = []
    gcs = [0]

    def collect() -> None:
        try:
            while not stop.is_set():
                db.gc()
                gcs[0] += 1
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    def small_writer() -> None:
        try:
            i = 0
            while not stop.is_set():
                db.upsert("small", [{"id": i % 50, "s": str(i)}])
                i += 1
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=collect), threading.Thread(target=small_writer)]
    for t in threads:
        t.start()
    acked: list[tuple[int, int]] = []  # (version, rows of "big" then)
    total = 0
    try:
        for r in range(ROUNDS):
            v = db.insert("big", _big(rng, r * BIG_ROWS))
            total += BIG_ROWS
            acked.append((v, total))
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, f"seed {SEED}: {errors[0]!r}"
    assert gcs[0] > 0
    db.close()
    # From disk alone (no snapshot cache): every chunk of every acknowledged commit is there
    # and verifies (BLAKE3), and versions read whole (the last few in full; reading each
    # version would cost the square of the history).
    with udrflow.open(str(tmp_path / "gc.udr")) as again:
        chunks = again._store.chunks
        for v, _rows in acked:
            for op in decode_header(again.log.read(v).payload, v).ops:
                for digest in getattr(op, "chunks", ()):
                    chunks.get(digest)  # CorruptionError "chunk ... is missing" if gc took it
        for v, rows in acked[-4:]:
            assert again.read("big", version=v).num_rows == rows, f"seed {SEED}: version {v}"
        again.checkpoint()
        again.gc()
    with udrflow.open(str(tmp_path / "gc.udr")) as again:
        assert again.read("big").num_rows == total


def test_a_sweep_keeps_chunks_pinned_during_it_even_if_unpinned_before_it_ends(tmp_path):
    from udrflow._chunks import ChunkStore

    store = ChunkStore(str(tmp_path / "chunks"))
    kept = store.put(b"written by a commit")
    with store.sweeping() as sweep:
        pinned = store.put_many([b"in flight"], pin=True)[0]
        store.unpin([pinned])  # the commit became durable after the sweep read the references
        assert sweep.delete_unless_pinned(pinned) is None
        assert sweep.delete_unless_pinned(kept) is not None
    assert store.exists(pinned) and not store.exists(kept)
    with store.sweeping() as sweep:  # a later sweep that saw no reference may take it
        assert sweep.delete_unless_pinned(pinned) is not None
