"""Benchmark of udrflow tables: storage of versions, reads across history, durable transactions.

Run it with ``.venv/bin/python benchmarks/bench_tables.py`` (``--quick``: ~20x smaller, a smoke
test that finishes in well under a minute). It prints a table with PASS/MISS per target, then one
JSON object, which it also writes to ``benchmarks/results/bench_tables.json`` (``--quick`` writes
``bench_tables.quick.json`` instead, so a smoke test never overwrites the full results).

Every table has the schema ``id int64 (primary key), customer string, amount float64``; ``customer``
is ``"c<n>"`` with n uniform in [0, 100000) and ``amount`` a uniform value in [0, 1000) rounded to
cents. Every database lives in a fresh directory under ``benchmarks/.tmp`` (the same filesystem as
the repository, which is what we want to measure, as /tmp may be a different one), removed
afterwards. "Bytes on disk" is the sum of the sizes of every file under the database directory
(``os.walk``), split into ``log/`` (segments), ``chunks/`` and ``checkpoints/`` (manifests).

(a) Storage of 30 versions. Each scenario is its own database, built with the defaults (durability
    "sync", automatic background checkpoints left exactly as they behave by default): create the
    table, load ROWS rows in one ``insert`` (spec version 1 = udrflow version 2; udrflow version 1
    is the empty ``create_table``), then 29 ``upsert`` commits (spec versions 2..30 = udrflow
    versions 3..31) that each give 5% of the rows (ROWS/20 distinct ids, sent sorted by id) a new
    ``amount`` (``customer`` unchanged). Scenario "random": ids drawn uniformly without
    replacement, afresh for every version. Scenario "block": one contiguous run of ids at a
    random offset, afresh for every version. The database is closed after the last commit, which
    waits for the background checkpoint thread, then measured.

    S (one full copy of the table) is measured in a separate reference database: create, load the
    same rows, ``db.checkpoint("t")``, close; S = bytes under ``chunks/`` + ``checkpoints/``, i.e.
    exactly one checkpoint (its chunk files and its manifest) of the loaded table, in udrflow's own
    compressed format. The log bytes of that load (``S_log``) and the size of the same rows as a
    Parquet file (pyarrow defaults) are reported for context. The theory is what storing only
    what changed would cost: S x (1 + 29 x 0.05) = 2.45 S; the naive peer stores 30 full copies,
    30 S. Target: bytes on disk <= 1.2 x theory, in both scenarios.

    Read time per version: right after each commit, the building process reads the head
    (``db.read("t")``: warm, the previous head is in udrflow's snapshot cache, so it replays one
    commit); after close, every version is read once, each with a fresh ``udrflow.open`` (no
    in-process cache: nearest checkpoint + log tail), which is the time-travel cost.

(b) Reads across a long history. A table is loaded with ROWS rows at udrflow version 2, then
    SMALL_COMMITS single-row ``upsert`` commits (existing ids, uniform, new amount) follow. They
    are made with ``durability="none"`` only to build the history quickly (durable commits are
    measured in (c)); automatic checkpoints behave by default. Then, repeatedly and in rotating
    order, a fresh ``udrflow.open`` and ``db.read`` of the loaded version and of the head: the
    first read after open (no in-process cache) is the measured "cold" read (the OS page cache
    is warm, as it is for Parquet); a second read in the same handle is reported as "warm"
    (udrflow's snapshot cache). Opening, and the catalog rebuild from every commit header that
    the first table access triggers, are timed separately (``open_s``, forced by ``db.schema``)
    so that they, the same for both versions, neither inflate nor dilute the read ratio.
    Target: cold read at head <= 1.5 x cold read at the load version (median over repetitions).
    Baseline: the head's rows written with ``pyarrow.parquet.write_table`` (defaults) to the same
    disk and read back with ``pq.read_table`` (read once to warm, then the median of
    READ_REPETITIONS reads). Parquet is the standard columnar file
    format, read by the same Arrow library that udrflow decodes into, so it is the cost of
    getting the same rows off the same disk into the same in-memory format with no versioning.
    "Any version" is covered by a third version read the same way: the one whose read replays
    the longest log tail after its nearest checkpoint (found from the checkpoint manifests' names).
    Target: the slowest of udrflow's three cold reads <= 2 x Parquet.

(c) Durable single-row transactions. A table preloaded with TX_ROWS rows; each transaction is
    ``with db.transaction() as tx: tx.upsert("t", [row])`` (one dict, an existing id: an update),
    durability "sync" (acknowledged only once fsynced). 1, 4 and 8 threads, each upserting its own
    distinct ids, TX_COMMITS transactions in total per configuration (after a short warm-up). For
    context (no target) ``db.upsert`` outside a transaction with 1 thread. Baseline: stdlib
    ``sqlite3`` in WAL mode with ``synchronous=FULL`` (each COMMIT is durable when it returns, the
    promise udrflow makes), the same table and rows preloaded (``id INTEGER PRIMARY KEY``), each
    transaction ``BEGIN IMMEDIATE; INSERT OR REPLACE ...; COMMIT`` (IMMEDIATE takes the write lock
    up front so concurrent writers wait in the busy handler instead of failing), with one
    connection per thread and a 30 s busy timeout. SQLite is the usual embedded durable store and
    its Python binding releases the GIL while it works, so threads are not an unfair handicap for
    it. Target: udrflow tx/s >= sqlite3 tx/s at every thread count. Context: the peer this work
    compares against (Rhizo) reaches ~360 durable tx/s.

The machine is shared and noisy, so every timed part of (c) is repeated (5 times; 2 with --quick)
with udrflow and sqlite3 back to back in each repetition (order rotated), and the table reports
the MEDIAN over repetitions; the JSON keeps every repetition's value. If one part takes longer
than 10 minutes, the JSON's ``notes`` say so.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import sqlite3
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from _bench_common import (
    DEFAULT_TMP,
    RESULTS_DIR,
    ROOT,
    Scratch,
    Target,
    machine_info,
    print_targets,
    rotated,
    sources_digest,
    targets_json,
    verdict,
    write_result,
)

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import udrflow  # noqa: E402
from udrflow._ext._frame import FRAME_OVERHEAD_BYTES  # noqa: E402
from udrflow._limits import SEGMENT_HEADER_BYTES  # noqa: E402

TABLE = "t"
SCHEMA = pa.schema([pa.field("id", pa.int64(), nullable=False), ("customer", pa.string()),
                    ("amount", pa.float64())])
SPEC_VERSIONS = 30
UPDATE_FRACTION = 0.05
THEORY_FACTOR = 1 + (SPEC_VERSIONS - 1) * UPDATE_FRACTION  # 2.45
RHIZO_TX_PER_S = 360.0
PART_SLOW_S = 600.0


@dataclass(frozen=True)
class Sizes:
    rows: int  # (a), (b): rows of the loaded table
    small_commits: int  # (b): single-row commits after the load
    read_repetitions: int  # (b): fresh-open reads per version, Parquet reads
    tx_rows: int  # (c): preloaded rows
    tx_commits: int  # (c): measured transactions per configuration (split over the threads)
    tx_warmup: int  # (c): transactions before measuring
    thread_counts: tuple[int, ...]
    repetitions: int  # (c)


FULL = Sizes(rows=1_000_000, small_commits=10_000, read_repetitions=5, tx_rows=100_000, tx_commits=2000,
             tx_warmup=50, thread_counts=(1, 4, 8), repetitions=5)
QUICK = Sizes(rows=50_000, small_commits=500, read_repetitions=3, tx_rows=5_000, tx_commits=120,
              tx_warmup=10, thread_counts=(1, 4, 8), repetitions=2)


# ---- helpers ---------------------------------------------------------------------------


def make_base(rows: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    customer = pc.binary_join_element_wise(pa.scalar("c"), pc.cast(pa.array(rng.integers(0, 100_000, rows)),
                                                                   pa.string()), "")
    amount = np.round(rng.random(rows) * 1000, 2)
    return pa.table([pa.array(np.arange(rows, dtype=np.int64)), customer, pa.array(amount)], schema=SCHEMA)


def dir_bytes(path: str) -> int:
    total = 0
    for directory, _, files in os.walk(path):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(directory, name))
            except FileNotFoundError:
                pass
    return total


def disk_usage(db_path: str) -> dict:
    """Bytes under the database directory, in total and per top-level part."""
    parts = {name: dir_bytes(os.path.join(db_path, name)) for name in ("log", "chunks", "checkpoints")}
    total = dir_bytes(db_path)
    return {"total": total, **parts, "other": total - sum(parts.values()),
            "chunk_files": sum(len(f) for _, _, f in os.walk(os.path.join(db_path, "chunks")))}


def log_stats(db_path: str) -> dict:
    """What the log holds: frame bytes per version (payload + framing), and how much of the
    segment files is neither frames nor segment headers (zeros the writer preallocated)."""
    db = udrflow.open(db_path)
    try:
        frames = {r.version: len(r.payload) + FRAME_OVERHEAD_BYTES for r in db.log.scan()}
        segments = len(db.log.segment_paths)
    finally:
        db.close()
    files = dir_bytes(os.path.join(db_path, "log"))
    used = sum(frames.values()) + segments * SEGMENT_HEADER_BYTES
    return {"frame_bytes_by_version": frames, "frame_bytes": sum(frames.values()), "segments": segments,
            "preallocated_bytes": files - used - _log_other_bytes(db_path)}


def _log_other_bytes(db_path: str) -> int:
    """Bytes of log files that are not segments (HEAD and the like)."""
    total = 0
    for directory, _, files in os.walk(os.path.join(db_path, "log")):
        total += sum(os.path.getsize(os.path.join(directory, f)) for f in files if not f.endswith(".seg"))
    return total


def checkpoint_versions(db_path: str, table: str = TABLE) -> list[int]:
    """Versions of the checkpoint manifests of ``table`` on branch main (from their file names,
    ``<created>-<version>.ckpt``)."""
    directory = os.path.join(db_path, "checkpoints", "main", table)
    if not os.path.isdir(directory):
        return []
    out = []
    for name in os.listdir(directory):
        if name.endswith(".ckpt") and ".tmp-" not in name:
            try:
                out.append(int(name[:-len(".ckpt")].rpartition("-")[2]))
            except ValueError:
                pass
    return sorted(out)


def create_and_load(path: str, base: pa.Table,
                    durability: str = "sync") -> tuple[udrflow.Database, int, float]:
    db = udrflow.open(path, durability=durability)
    db.create_table(TABLE, SCHEMA, primary_key=["id"])
    start = time.perf_counter()
    version = db.insert(TABLE, base)
    return db, version, time.perf_counter() - start


def timed(fn: Callable[[], object]) -> tuple[object, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def cold_read(path: str, version: int | None) -> dict:
    """Fresh ``udrflow.open`` plus the table catalog (``db.schema``: it rebuilds the catalog from
    every commit header), timed as ``open_s``; then the first read (cold: no in-process cache)
    and a second one (warm: the snapshot cache)."""
    def open_db() -> udrflow.Database:
        db = udrflow.open(path)
        db.schema(TABLE)
        return db

    db, open_s = timed(open_db)
    try:
        table, cold_s = timed(lambda: db.read(TABLE, version=version))
        _, warm_s = timed(lambda: db.read(TABLE, version=version))
        return {"open_s": open_s, "cold_s": cold_s, "warm_s": warm_s, "rows": table.num_rows}
    finally:
        db.close()


def parquet_read_s(path: str, repetitions: int) -> list[float]:
    pq.read_table(path)  # warm the OS cache
    return [timed(lambda: pq.read_table(path))[1] for _ in range(repetitions)]


def check_amounts(table: pa.Table, expected: np.ndarray) -> None:
    table = table.sort_by("id")
    ids = table.column("id").to_numpy()
    assert np.array_equal(ids, np.arange(len(expected))), "udrflow returned the wrong set of ids"
    assert np.array_equal(table.column("amount").to_numpy(), expected), "udrflow returned wrong amounts"


# ---- (a) storage of 30 versions ------------------------------------------------------------


def measure_reference(scratch: Scratch, base: pa.Table, sizes: Sizes) -> dict:
    """S: one full copy of the loaded table, as one udrflow checkpoint; and the Parquet file."""
    directory = scratch.fresh("a-reference")
    path = os.path.join(directory, "db.udr")
    try:
        db, version, load_s = create_and_load(path, base)
        _, checkpoint_s = timed(lambda: db.checkpoint(TABLE))
        db.close()
        usage = disk_usage(path)
        log = log_stats(path)
        parquet_path = os.path.join(directory, "table.parquet")
        pq.write_table(base, parquet_path)
        pq_reads = parquet_read_s(parquet_path, sizes.read_repetitions)
        return {
            "S_bytes": usage["chunks"] + usage["checkpoints"],
            "S_log_bytes": log["frame_bytes_by_version"][version],
            "log_preallocated_bytes": log["preallocated_bytes"],
            "parquet_bytes": os.path.getsize(parquet_path),
            "arrow_in_memory_bytes": base.nbytes,
            "load_version": version,
            "load_s": load_s,
            "checkpoint_s": checkpoint_s,
            "checkpoints": checkpoint_versions(path),
            "disk": usage,
            "parquet_read_s": statistics.median(pq_reads),
            "parquet_read_runs_s": pq_reads,
        }
    finally:
        scratch.discard(directory)


def make_updates(base: pa.Table, kind: str, seed: int) -> tuple[list[pa.Table], np.ndarray]:
    """The 29 update batches of a scenario, and the amounts expected at the end."""
    rng = np.random.default_rng(seed)
    n = base.num_rows
    k = max(1, round(n * UPDATE_FRACTION))
    amounts = base.column("amount").to_numpy().copy()
    customers = base.column("customer")
    batches = []
    for _ in range(SPEC_VERSIONS - 1):
        if kind == "random":
            ids = np.sort(rng.choice(n, size=k, replace=False)).astype(np.int64)
        else:
            start = int(rng.integers(0, n - k + 1))
            ids = np.arange(start, start + k, dtype=np.int64)
        new = np.round(rng.random(k) * 1000, 2)
        amounts[ids] = new
        batches.append(pa.table([pa.array(ids), customers.take(pa.array(ids)), pa.array(new)], schema=SCHEMA))
    return batches, amounts


def run_versions_scenario(scratch: Scratch, base: pa.Table, kind: str, reference: dict) -> dict:
    updates, expected = make_updates(base, kind, seed=11 if kind == "random" else 12)
    directory = scratch.fresh(f"a-{kind}")
    path = os.path.join(directory, "db.udr")
    try:
        gc.collect()
        started = time.perf_counter()
        db, load_version, load_s = create_and_load(path, base)
        versions = [load_version]
        commit_s = [load_s]
        head_read_s = [timed(lambda: db.read(TABLE))[1]]
        for batch in updates:
            version, secs = timed(lambda b=batch: db.upsert(TABLE, b))
            versions.append(version)
            commit_s.append(secs)
            head_read_s.append(timed(lambda: db.read(TABLE))[1])
        build_s = time.perf_counter() - started
        _, close_s = timed(db.close)  # waits for the background checkpoint thread
        usage = disk_usage(path)
        log = log_stats(path)
        checkpoints = checkpoint_versions(path)
        cold = []
        for version in versions:
            r = cold_read(path, version)
            assert r["rows"] == base.num_rows, f"version {version} has {r['rows']} rows"
            cold.append(r)
        db = udrflow.open(path)
        try:
            check_amounts(db.read(TABLE), expected)
        finally:
            db.close()
    finally:
        scratch.discard(directory)
    s = reference["S_bytes"]
    theory = THEORY_FACTOR * s
    deltas = [log["frame_bytes_by_version"][v] for v in versions[1:]]
    cold_s = [r["cold_s"] for r in cold]
    return {
        "scenario": kind,
        "rows_per_update": updates[0].num_rows,
        "udrflow_versions": versions,
        "bytes_on_disk": usage["total"],
        "disk": usage,
        "theory_bytes": theory,
        "ratio_vs_theory": usage["total"] / theory,
        "ratio_vs_30_full_copies": usage["total"] / (SPEC_VERSIONS * s),
        "in_units_of_S": usage["total"] / s,
        "bytes_on_disk_without_log_preallocation": usage["total"] - log["preallocated_bytes"],
        "ratio_vs_theory_without_log_preallocation": (usage["total"] - log["preallocated_bytes"]) / theory,
        "log_preallocated_bytes": log["preallocated_bytes"],
        "log_frame_bytes_load": log["frame_bytes_by_version"][versions[0]],
        "log_frame_bytes_per_update_median": statistics.median(deltas),
        "log_frame_bytes_per_update_in_S": statistics.median(deltas) / s,
        "checkpoint_bytes": usage["chunks"] + usage["checkpoints"],
        "checkpoints_written": len(checkpoints),
        "checkpoint_versions": checkpoints,
        "build_s": build_s,
        "close_s": close_s,
        "commit_s": commit_s,
        "head_read_after_commit_s": head_read_s,
        "head_read_after_commit_median_s": statistics.median(head_read_s[1:]),
        "head_read_after_commit_max_s": max(head_read_s),
        "cold_read_by_version_s": cold_s,
        "cold_read_median_s": statistics.median(cold_s),
        "cold_read_max_s": max(cold_s),
        "cold_read_max_vs_parquet": max(cold_s) / reference["parquet_read_s"],
        "open_by_version_s": [r["open_s"] for r in cold],
    }


def bench_versions(scratch: Scratch, sizes: Sizes) -> dict:
    base = make_base(sizes.rows, seed=1)
    reference = measure_reference(scratch, base, sizes)
    out: dict = {
        "rows": sizes.rows,
        "spec_versions": SPEC_VERSIONS,
        "update_fraction": UPDATE_FRACTION,
        "theory_factor": THEORY_FACTOR,
        "interpretation": "spec version 1 = the initial load (udrflow version 2; version 1 is create_table), "
                          "spec versions 2..30 = 29 upserts of 5% of the rows each (udrflow versions 3..31)",
        "S_definition": "bytes of chunks/ + checkpoints/ of a reference database holding only the load "
                        "and one checkpoint of it (= one checkpoint's chunk files + its manifest)",
        "reference": reference,
    }
    for kind in ("random", "block"):
        out[kind] = run_versions_scenario(scratch, base, kind, reference)
    return out


# ---- (b) reads across a long history ------------------------------------------------------


def longest_tail(checkpoints: list[int], low: int, head: int) -> tuple[int, int]:
    """The version in [low, head] whose read replays the most commits after its nearest
    checkpoint (the version just before a checkpoint, or the head), and that many commits."""
    cps = sorted(v for v in checkpoints if low <= v <= head) or [low]
    best = (head, head - cps[-1])
    for a, b in zip(cps, cps[1:], strict=False):
        if b - 1 - a > best[1]:
            best = (b - 1, b - 1 - a)
    return best


def bench_history(scratch: Scratch, sizes: Sizes) -> dict:
    base = make_base(sizes.rows, seed=2)
    rng = np.random.default_rng(21)
    keys = rng.integers(0, sizes.rows, sizes.small_commits)
    new_amounts = np.round(rng.random(sizes.small_commits) * 1000, 2)
    customers = base.column("customer").to_pylist()
    rows = [[{"id": k, "customer": customers[k], "amount": a}]
            for k, a in zip(keys.tolist(), new_amounts.tolist(), strict=True)]
    expected = base.column("amount").to_numpy().copy()
    expected[keys] = new_amounts  # later writes of a key win, as in numpy fancy assignment
    directory = scratch.fresh("b-history")
    path = os.path.join(directory, "db.udr")
    try:
        db, load_version, load_s = create_and_load(path, base, durability="none")
        gc.collect()
        start = time.perf_counter()
        upsert = db.upsert
        for row in rows:
            upsert(TABLE, row)
        commits_s = time.perf_counter() - start
        head = db.version
        _, close_s = timed(db.close)
        usage = disk_usage(path)
        checkpoints = checkpoint_versions(path)
        worst, worst_tail = longest_tail(checkpoints, load_version, head)
        reads: dict[str, list[dict]] = {"load": [], "head": [], "worst": []}
        which = {"load": load_version, "head": head, "worst": worst}
        for rep in range(sizes.read_repetitions):
            for name in rotated(list(which), rep):
                r = cold_read(path, which[name])
                assert r["rows"] == sizes.rows, f"read of {name} returned {r['rows']} rows"
                reads[name].append(r)
        db = udrflow.open(path)
        try:
            head_table = db.read(TABLE)
            check_amounts(head_table, expected)
        finally:
            db.close()
        parquet_path = os.path.join(directory, "head.parquet")
        pq.write_table(head_table, parquet_path)
        pq_reads = parquet_read_s(parquet_path, sizes.read_repetitions)
        parquet_bytes = os.path.getsize(parquet_path)
    finally:
        scratch.discard(directory)
    out: dict = {
        "rows": sizes.rows,
        "small_commits": sizes.small_commits,
        "history_durability": "none (history building only; durable commits are measured in (c))",
        "load_version": load_version,
        "head_version": head,
        "load_s": load_s,
        "small_commits_per_s": sizes.small_commits / commits_s,
        "close_s": close_s,
        "disk": usage,
        "checkpoints_written": len(checkpoints),
        "checkpoint_versions_head": [v for v in checkpoints if v > load_version][-5:],
        "head_tail_commits": head - max([v for v in checkpoints if v <= head], default=0),
        "worst_version": worst,
        "worst_tail_commits": worst_tail,
        "worst_definition": "the version whose read replays the longest log tail after its nearest "
                            "checkpoint",
        "parquet_bytes": parquet_bytes,
        "parquet_read_s": statistics.median(pq_reads),
        "parquet_read_runs_s": pq_reads,
    }
    for name, rs in reads.items():
        out[f"read_{name}"] = {
            "version": which[name],
            "cold_s": statistics.median(r["cold_s"] for r in rs),
            "warm_s": statistics.median(r["warm_s"] for r in rs),
            "open_s": statistics.median(r["open_s"] for r in rs),
            "runs": rs,
        }
    cold_load, cold_head = out["read_load"]["cold_s"], out["read_head"]["cold_s"]
    out["ratio_cold_head_vs_load"] = cold_head / cold_load
    out["ratio_warm_head_vs_load"] = out["read_head"]["warm_s"] / out["read_load"]["warm_s"]
    cold_worst = out["read_worst"]["cold_s"]
    out["ratio_cold_worst_vs_load"] = cold_worst / cold_load
    out["ratio_cold_worst_vs_parquet"] = max(cold_load, cold_head, cold_worst) / out["parquet_read_s"]
    out["ratio_cold_head_vs_parquet"] = cold_head / out["parquet_read_s"]
    out["ratio_cold_load_vs_parquet"] = cold_load / out["parquet_read_s"]
    return out


# ---- (c) durable single-row transactions ----------------------------------------------------


def thread_keys(threads: int, per_thread: int, offset: int) -> list[list[int]]:
    """Distinct ids per thread: thread t gets offset + t, offset + t + threads, ..."""
    return [[offset + t + threads * i for i in range(per_thread)] for t in range(threads)]


def run_threads(threads: int, work: Callable[[int], None]) -> float:
    barrier = threading.Barrier(threads + 1)
    errors: list[BaseException] = []

    def body(t: int) -> None:
        barrier.wait()
        try:
            work(t)
        except BaseException as exc:
            errors.append(exc)

    pool = [threading.Thread(target=body, args=(t,)) for t in range(threads)]
    for th in pool:
        th.start()
    gc.collect()
    barrier.wait()
    start = time.perf_counter()
    for th in pool:
        th.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise errors[0]
    return elapsed


def tx_rows_for(base: pa.Table, keys: list[list[int]], seed: int) -> list[list[tuple[int, str, float]]]:
    rng = np.random.default_rng(seed)
    customers = base.column("customer")
    return [[(k, customers[k].as_py(), float(round(rng.random() * 1000, 2))) for k in mine] for mine in keys]


def udrflow_tx(scratch: Scratch, base: pa.Table, sizes: Sizes, threads: int, mode: str) -> dict:
    per = sizes.tx_commits // threads
    warm = tx_rows_for(base, thread_keys(1, sizes.tx_warmup, base.num_rows - sizes.tx_warmup), seed=30)[0]
    shares = tx_rows_for(base, thread_keys(threads, per, 0), seed=31 + threads)
    dict_shares = [[[{"id": k, "customer": c, "amount": a}] for k, c, a in mine] for mine in shares]
    directory = scratch.fresh(f"c-udrflow-{mode}-{threads}t")
    path = os.path.join(directory, "db.udr")
    try:
        db, _, _ = create_and_load(path, base)
        try:
            db.checkpoint(TABLE)
            for k, c, a in warm:
                with db.transaction() as tx:
                    tx.upsert(TABLE, [{"id": k, "customer": c, "amount": a}])
            first = db.version + 1

            if mode == "transaction":
                def work(t: int) -> None:
                    transaction = db.transaction
                    for row in dict_shares[t]:
                        with transaction() as tx:
                            tx.upsert(TABLE, row)
            else:
                def work(t: int) -> None:
                    upsert = db.upsert
                    for row in dict_shares[t]:
                        upsert(TABLE, row)

            elapsed = run_threads(threads, work)
            commits = threads * per
            assert db.version == first + commits - 1, "not every transaction was acknowledged"
        finally:
            db.close()
        checkpoints = checkpoint_versions(path)
        return {"threads": threads, "commits": commits, "elapsed_s": elapsed, "tx_per_s": commits / elapsed,
                "checkpoints_written_during_run": len([v for v in checkpoints if v >= first])}
    finally:
        scratch.discard(directory)


def sqlite_tx(scratch: Scratch, base: pa.Table, sizes: Sizes, threads: int) -> dict:
    per = sizes.tx_commits // threads
    warm = tx_rows_for(base, thread_keys(1, sizes.tx_warmup, base.num_rows - sizes.tx_warmup), seed=30)[0]
    shares = tx_rows_for(base, thread_keys(threads, per, 0), seed=31 + threads)
    directory = scratch.fresh(f"c-sqlite-{threads}t")
    path = os.path.join(directory, "bench.db")
    sql = "INSERT OR REPLACE INTO t (id, customer, amount) VALUES (?, ?, ?)"

    def connect() -> sqlite3.Connection:
        conn = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA synchronous=FULL")  # a per-connection setting
        return conn

    conns: list[sqlite3.Connection] = []
    try:
        setup = connect()
        conns.append(setup)
        mode = setup.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        assert mode == "wal", f"sqlite refused WAL mode: {mode}"
        setup.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, customer TEXT, amount REAL)")
        setup.execute("BEGIN")
        setup.executemany(sql, zip(base.column("id").to_pylist(), base.column("customer").to_pylist(),
                                   base.column("amount").to_pylist(), strict=True))
        setup.execute("COMMIT")
        for row in warm:
            setup.execute("BEGIN IMMEDIATE")
            setup.execute(sql, row)
            setup.execute("COMMIT")
        workers = [connect() for _ in range(threads)]
        conns.extend(workers)

        def work(t: int) -> None:
            execute = workers[t].execute
            for row in shares[t]:
                execute("BEGIN IMMEDIATE")
                execute(sql, row)
                execute("COMMIT")

        elapsed = run_threads(threads, work)
        commits = threads * per
        check = setup.execute("SELECT amount FROM t WHERE id = ?", (shares[0][-1][0],)).fetchone()[0]
        assert check == shares[0][-1][2], "sqlite lost a write"
        return {"threads": threads, "commits": commits, "elapsed_s": elapsed, "tx_per_s": commits / elapsed}
    finally:
        for conn in conns:
            conn.close()
        scratch.discard(directory)


def bench_transactions(scratch: Scratch, sizes: Sizes) -> dict:
    base = make_base(sizes.tx_rows, seed=3)
    runs: dict[str, Callable[[], dict]] = {}
    for n in sizes.thread_counts:
        runs[f"udrflow_tx_{n}t"] = lambda n=n: udrflow_tx(scratch, base, sizes, n, "transaction")
        runs[f"sqlite3_{n}t"] = lambda n=n: sqlite_tx(scratch, base, sizes, n)
    runs["udrflow_upsert_1t"] = lambda: udrflow_tx(scratch, base, sizes, 1, "upsert")
    rounds: dict[str, list[dict]] = {k: [] for k in runs}
    for rep in range(sizes.repetitions):
        for name in rotated(list(runs), rep):
            rounds[name].append(runs[name]())
    out: dict = {"preloaded_rows": sizes.tx_rows, "commits_per_configuration": sizes.tx_commits,
                 "warmup": sizes.tx_warmup}
    for name, rs in rounds.items():
        out[name] = {"tx_per_s": statistics.median(r["tx_per_s"] for r in rs),
                     "runs_tx_per_s": [r["tx_per_s"] for r in rs], "rounds": rs}
    for n in sizes.thread_counts:
        mine = out[f"udrflow_tx_{n}t"]["tx_per_s"]
        out[f"ratio_udrflow_vs_sqlite3_{n}t"] = mine / out[f"sqlite3_{n}t"]["tx_per_s"]
        out[f"ratio_udrflow_vs_rhizo_{n}t"] = mine / RHIZO_TX_PER_S
    return out


# ---- machine info and report ------------------------------------------------------------


def udrflow_sources() -> list[Path]:
    """udrflow's Python and Cython sources, hashed into the results to tie them to the code measured."""
    package = ROOT / "udrflow"
    return sorted([*package.glob("*.py"), *package.glob("log/*.py"), *package.glob("_ext/*.pyx")])


def tables_machine_info(scratch_root: str) -> dict:
    return machine_info(scratch_root, {
        "memory_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
        "pyarrow_version": pa.__version__,
        "numpy_version": np.__version__,
        "sqlite_version": sqlite3.sqlite_version,
        "udrflow_version": udrflow.__version__,
        "udrflow_sources_sha256": sources_digest(udrflow_sources()),
    })


def build_targets(a: dict, b: dict, c: dict, sizes: Sizes) -> list[Target]:
    targets = [
        Target("a_random_bytes_vs_theory", a["random"]["ratio_vs_theory"], "<=", 1.2),
        Target("a_block_bytes_vs_theory", a["block"]["ratio_vs_theory"], "<=", 1.2),
        Target("b_cold_read_head_vs_load", b["ratio_cold_head_vs_load"], "<=", 1.5),
        Target("b_cold_read_worst_vs_parquet", b["ratio_cold_worst_vs_parquet"], "<=", 2.0),
    ]
    for n in sizes.thread_counts:
        targets.append(Target(f"c_tx_per_s_vs_sqlite3_{n}t", c[f"ratio_udrflow_vs_sqlite3_{n}t"], ">=", 1.0))
    return targets


def mb(n: float) -> str:
    return f"{n / 1e6:,.1f} MB"


def print_report(result: dict, targets: list[Target]) -> None:
    a, b, c = result["a_versions_storage"], result["b_history_reads"], result["c_transactions"]
    m, ref = result["machine"], a["reference"]
    s = ref["S_bytes"]
    line = "-" * 104
    print(line)
    print(f"udrflow tables benchmark ({result['mode']}), {result['timestamp']}")
    print(f"python {m['python']}, pyarrow {m['pyarrow_version']}, {m['cpu_count']} CPUs ({m['cpu_model']}), "
          f"sqlite {m['sqlite_version']}, fs {m['filesystem']['fstype']} on {m['filesystem']['device']}")
    print(line)
    print(f"(a) {a['rows']:,} rows, {SPEC_VERSIONS} versions (load + {SPEC_VERSIONS - 1} upserts of "
          f"{UPDATE_FRACTION:.0%} of the rows), default automatic checkpoints")
    print(f"    S = one checkpoint of the load = {mb(s)}   (load in the log: {mb(ref['S_log_bytes'])}; "
          f"Parquet: {mb(ref['parquet_bytes'])}; Arrow in memory: {mb(ref['arrow_in_memory_bytes'])})")
    print(f"    theory {THEORY_FACTOR:.2f} S = {mb(THEORY_FACTOR * s)};  {SPEC_VERSIONS} full copies = "
          f"{mb(SPEC_VERSIONS * s)}")
    print(f"    {'scenario':10s} {'on disk':>11s} {'= x S':>7s} {'/theory':>8s} {'/30 S':>7s} {'log':>10s} "
          f"{'chunks':>10s} {'ckpts':>6s} {'upd log':>8s} {'close s':>8s}")
    for kind in ("random", "block"):
        r = a[kind]
        d = r["disk"]
        print(f"    {kind:10s} {mb(r['bytes_on_disk']):>11s} {r['in_units_of_S']:7.2f} "
              f"{r['ratio_vs_theory']:8.2f} {r['ratio_vs_30_full_copies']:7.2f} {mb(d['log']):>10s} "
              f"{mb(d['chunks']):>10s} {r['checkpoints_written']:6d} "
              f"{r['log_frame_bytes_per_update_in_S']:7.3f}S {r['close_s']:8.1f}  "
              f"{verdict(targets, f'a_{kind}_bytes_vs_theory')}")
    print("    (upd log = median log frame bytes of one 5% update, in units of S; theory counts 0.05 S)")
    for kind in ("random", "block"):
        r = a[kind]
        print(f"    {kind:10s} excluding {mb(r['log_preallocated_bytes'])} of preallocated log zeros: "
              f"{mb(r['bytes_on_disk_without_log_preallocation'])} = "
              f"{r['ratio_vs_theory_without_log_preallocation']:.2f} x theory; checkpoints+chunks "
              f"{mb(r['checkpoint_bytes'])} = {r['checkpoint_bytes'] / s:.2f} S")
    print("    read time per version (s):    head after each commit (warm) median/max | each version after a "
          "fresh open median/max (Parquet read " f"{ref['parquet_read_s']:.3f})")
    for kind in ("random", "block"):
        r = a[kind]
        print(f"    {kind:10s} {r['head_read_after_commit_median_s']:10.4f} / "
              f"{r['head_read_after_commit_max_s']:.4f}   |   {r['cold_read_median_s']:.4f} / "
              f"{r['cold_read_max_s']:.4f}  "
              f"(max = {r['cold_read_max_vs_parquet']:.2f} x Parquet)")
    print(line)
    print(f"(b) {b['rows']:,} rows loaded at version {b['load_version']}, then {b['small_commits']:,} "
          f"single-row upserts ({b['small_commits_per_s']:,.0f} commits/s, durability=none); "
          f"head = {b['head_version']}")
    print(f"    {b['checkpoints_written']} checkpoints on disk, {mb(b['disk']['total'])} on disk, head tail "
          f"{b['head_tail_commits']} commits after its nearest checkpoint; close took {b['close_s']:.1f} s")
    print(f"    {'':40s} {'cold (fresh open)':>18s} {'warm (same handle)':>19s} {'open':>8s}")
    for key, label in (("read_load", f"read at load version {b['load_version']}"),
                       ("read_head", f"read at head {b['head_version']}"),
                       ("read_worst",
                        f"read at {b['worst_version']} (longest tail: {b['worst_tail_commits']})")):
        r = b[key]
        print(f"    {label:40s} {r['cold_s']:16.4f} s {r['warm_s']:17.6f} s {r['open_s']:7.3f} s")
    print(f"    {'pyarrow.parquet.read_table (baseline)':40s} {b['parquet_read_s']:16.4f} s")
    print(f"    cold head/load = {b['ratio_cold_head_vs_load']:.2f}  "
          f"{verdict(targets, 'b_cold_read_head_vs_load')};  "
          f"warm head/load = {b['ratio_warm_head_vs_load']:.2f}")
    print(f"    (longest-tail version / load = {b['ratio_cold_worst_vs_load']:.2f}, no target: the spec "
          f"compares the head)")
    print(f"    slowest of the three cold reads / Parquet = {b['ratio_cold_worst_vs_parquet']:.2f}  "
          f"{verdict(targets, 'b_cold_read_worst_vs_parquet')}")
    print(line)
    print(f"(c) durable single-row upsert transactions, {c['commits_per_configuration']:,} per "
          f"configuration, {c['preloaded_rows']:,} rows preloaded; "
          f"median of {result['sizes']['repetitions']}")
    print(f"    {'threads':>8s} {'udrflow tx/s':>14s} {'sqlite3 tx/s':>14s} {'ratio':>7s} "
          f"{'vs Rhizo 360':>13s}")
    for n in result["sizes"]["thread_counts"]:
        u, q = c[f"udrflow_tx_{n}t"]["tx_per_s"], c[f"sqlite3_{n}t"]["tx_per_s"]
        print(f"    {n:8d} {u:14,.0f} {q:14,.0f} {c[f'ratio_udrflow_vs_sqlite3_{n}t']:7.2f} "
              f"{c[f'ratio_udrflow_vs_rhizo_{n}t']:12.2f}x  "
              f"{verdict(targets, f'c_tx_per_s_vs_sqlite3_{n}t')}")
    print(f"    (context: db.upsert without a transaction, 1 thread: "
          f"{c['udrflow_upsert_1t']['tx_per_s']:,.0f} tx/s)")
    print(line)
    print_targets(targets, line, result["notes"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="~20x smaller sizes: a smoke test (< 30 s)")
    parser.add_argument("--repetitions", type=int, help="repetitions of (c) (default 5, quick 2)")
    parser.add_argument("--parts", default="abc", help="which parts to run, e.g. 'a' or 'bc' (default abc; "
                        "the JSON and the targets need all three)")
    parser.add_argument("--tmp-dir", type=Path, default=DEFAULT_TMP,
                        help="parent of the scratch directories; must be on the filesystem to measure")
    parser.add_argument("--output", type=Path, help="where to write the JSON (default benchmarks/results/"
                        "bench_tables.json, or bench_tables.quick.json with --quick)")
    parser.add_argument("--strict", action="store_true", help="exit with status 1 if any target is missed")
    args = parser.parse_args(argv)

    sizes = QUICK if args.quick else FULL
    if args.repetitions:
        sizes = Sizes(**{**asdict(sizes), "repetitions": args.repetitions})
    output = args.output or RESULTS_DIR / ("bench_tables.quick.json" if args.quick else "bench_tables.json")

    started = time.perf_counter()
    scratch = Scratch(args.tmp_dir, "bench_tables")
    parts: dict[str, dict] = {}
    part_s: dict[str, float] = {}
    benches = {"a": bench_versions, "b": bench_history, "c": bench_transactions}
    try:
        machine = tables_machine_info(scratch.root)
        for key, bench in benches.items():
            if key in args.parts:
                t = time.perf_counter()
                parts[key] = bench(scratch, sizes)
                part_s[key] = time.perf_counter() - t
                print(f"[part ({key}) done in {part_s[key]:.1f} s]", file=sys.stderr, flush=True)
    finally:
        scratch.close()
    machine["loadavg_end"] = list(os.getloadavg())
    if set(parts) != set(benches):
        print(json.dumps({k: parts[k] for k in parts}, indent=2))
        return 0
    notes = [f"part ({k}) took {s:.0f} s, more than {PART_SLOW_S:.0f} s"
             for k, s in part_s.items() if s > PART_SLOW_S]
    targets = build_targets(parts["a"], parts["b"], parts["c"], sizes)
    result = {
        "benchmark": "bench_tables",
        "mode": "quick" if args.quick else "full",
        "timestamp": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "definitions": {
            "bytes_on_disk": "sum of the sizes of every file under the database directory (os.walk)",
            "S": parts["a"]["S_definition"],
            "theory": f"S x (1 + {SPEC_VERSIONS - 1} x {UPDATE_FRACTION}) = {THEORY_FACTOR:.2f} S",
            "versions": parts["a"]["interpretation"],
            "cold_read": "first db.read after a fresh udrflow.open in this process (no in-process cache; "
                         "OS page cache warm); the open and the catalog rebuild (db.schema) are timed "
                         "separately as open_s",
            "warm_read": "second db.read of the same version in the same handle (udrflow's snapshot cache)",
            "parquet_read": "pq.read_table of the same rows, read once to warm, then median of repetitions",
            "tx": "durable (sync) single-row upsert transactions of existing ids, distinct ids per thread; "
                  "sqlite3: WAL, synchronous=FULL, BEGIN IMMEDIATE / INSERT OR REPLACE / COMMIT, one "
                  "connection per thread, busy timeout 30 s",
            "statistic": f"(c): median of {sizes.repetitions} repetitions, contenders back to back with the "
                         f"order rotated; (b): median of {sizes.read_repetitions} fresh-open reads",
        },
        "machine": machine,
        "sizes": asdict(sizes),
        "a_versions_storage": parts["a"],
        "b_history_reads": parts["b"],
        "c_transactions": parts["c"],
        "targets": targets_json(targets),
        "all_pass": all(t.passed for t in targets),
        "part_s": part_s,
        "notes": notes,
        "elapsed_s": time.perf_counter() - started,
    }
    print_report(result, targets)
    write_result(result, output)
    return 1 if args.strict and not result["all_pass"] else 0


if __name__ == "__main__":
    sys.exit(main())
