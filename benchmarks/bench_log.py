"""Benchmark of the udrflow epoch log against the physical limit and against SQLite.

Run it with ``.venv/bin/python benchmarks/bench_log.py`` (``--quick``: ~20x smaller, a smoke
test that finishes in seconds). It prints a table with PASS/MISS per target, then one JSON
object, which it also writes to ``benchmarks/results/bench_log.json`` (``--quick`` writes
``bench_log.quick.json`` instead, so a smoke test never overwrites the full results).

What is measured, and why each baseline is fair:

(a) Batched throughput: 1,000,000 commits of 100-byte payloads through ``append_batch``
    (10,000 per call). With ``durability="sync"`` each call is one epoch: one ``pwritev``
    and one ``fdatasync``; with ``durability="none"`` only ``close()`` syncs. Baseline: a
    plain Python loop of ``os.write`` calls writing the same bytes to a file on the same
    disk (one write per record of exactly a udrflow frame's size: the 100-byte payload plus
    ``FRAME_OVERHEAD_BYTES`` of framing, read from udrflow so the two always match) followed
    by one ``fdatasync``. It moves the same bytes to the same disk with no framing,
    checksums, index or version bookkeeping, and it syncs *less* often than udrflow's sync
    mode (once instead of once per batch), so it is the cost of the data movement alone. For context (no target) we also time the same bytes written
    as one ``os.write`` per 10,000-record batch plus one ``fdatasync`` per batch, i.e. the
    I/O pattern of udrflow's sync mode with zero software overhead.

(b) Durable single-commit latency: ``log.append(100-byte payload)`` one at a time (each is
    acknowledged only after its own fdatasync). Baselines: ``os.write(one frame's bytes)`` +
    ``os.fdatasync`` per commit (the floor for durably appending to a growing file, which
    is what the log does; overwriting preallocated space syncs faster on ext4), and stdlib ``sqlite3`` in WAL mode with ``synchronous=FULL`` doing a one-row INSERT
    (integer primary key + 100-byte blob) and COMMIT per transaction, the usual embedded
    durable store, configured so that each COMMIT is durable when it returns, the same
    promise ``log.append`` makes.

(c) Group commit: 8 threads each calling ``log.append`` with single 100-byte payloads vs
    1 thread doing the same, same durability. One disk sync is shared by every commit
    queued while the previous epoch was being synced, so the aggregate rate should grow
    with the number of committers. Commits per epoch are counted in a separate,
    untimed-for-the-ratio run whose file layer (``udrflow.testing.FaultyFileIO``) counts
    the ``fdatasync`` calls (one per epoch in sync mode).

Every data set (payloads, frames, batches) is built before its timer starts; every run gets
a fresh directory under ``benchmarks/.tmp`` (same filesystem as the repository, which is
what we want to measure, as /tmp may be a different one), removed afterwards. The machine is
shared and noisy, so every timed part is repeated (3 times by default) with the contender
and its baselines run back to back in each repetition (order rotated), and the table
reports the MEDIAN over the repetitions; the JSON also keeps every repetition's value.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import math
import os
import platform
import random
import sqlite3
import statistics
import struct
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

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
from udrflow._ext import _crc32c  # noqa: E402
from udrflow._ext._frame import COMMIT_HEADER_BYTES, FRAME_OVERHEAD_BYTES  # noqa: E402
from udrflow._limits import SEGMENT_HEADER_BYTES  # noqa: E402
from udrflow.log import EpochLog  # noqa: E402
from udrflow.log._head import read_head  # noqa: E402
from udrflow.testing import FaultyFileIO  # noqa: E402

PAYLOAD_BYTES = 100
RECORD_BYTES = PAYLOAD_BYTES + FRAME_OVERHEAD_BYTES  # what one commit puts on disk
# The raw baselines write records shaped like frames: [u32 length][u32 crc][u64 version]
# [i64 timestamp_us], zero-padded to FRAME_OVERHEAD_BYTES, then the payload. The checksum
# field is left zero: file content does not change what a write or an fdatasync costs.
_RAW_HEADER = struct.Struct("<IIQq")
_RAW_PAD = bytes(FRAME_OVERHEAD_BYTES - _RAW_HEADER.size)


@dataclass(frozen=True)
class Sizes:
    records: int  # (a) commits appended in batches
    batch_size: int  # (a) payloads per append_batch call
    single_commits: int  # (b) measured commits per system and repetition
    single_warmup: int  # (b) commits before measuring
    threads: int  # (c) committing threads
    commits_per_thread: int  # (c)
    repetitions: int


FULL = Sizes(records=1_000_000, batch_size=10_000, single_commits=2000, single_warmup=200,
             threads=8, commits_per_thread=1500, repetitions=3)
QUICK = Sizes(records=50_000, batch_size=10_000, single_commits=100, single_warmup=10,
              threads=8, commits_per_thread=75, repetitions=3)


# ---- helpers ---------------------------------------------------------------------------


def make_payloads(count: int, seed: int) -> list[bytes]:
    """``count`` distinct, incompressible 100-byte payloads (reproducible)."""
    blob = random.Random(seed).randbytes(count * PAYLOAD_BYTES)
    return [blob[i:i + PAYLOAD_BYTES] for i in range(0, len(blob), PAYLOAD_BYTES)]


def make_raw_records(payloads: list[bytes]) -> list[bytes]:
    """The payloads as frame-shaped records of RECORD_BYTES each, for the raw baselines."""
    pack, pad, ts = _RAW_HEADER.pack, _RAW_PAD, time.time_ns() // 1000
    return [pack(PAYLOAD_BYTES + COMMIT_HEADER_BYTES, 0, v, ts) + pad + p for v, p in enumerate(payloads, 1)]


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (q in 0..100)."""
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def segment_data_bytes(directory: str) -> int:
    """Frame bytes in a log directory: sealed segments whole (minus headers), the last one up
    to the end HEAD records (the writer preallocates zeros past its last frame)."""
    head = read_head(directory)
    names = sorted(n for n in os.listdir(directory) if n.endswith(".seg"))
    total = 0
    for name in names[:-1]:
        total += os.path.getsize(os.path.join(directory, name)) - SEGMENT_HEADER_BYTES
    if names:
        total += head.end_offset - SEGMENT_HEADER_BYTES
    return total


def open_raw(directory: str) -> int:
    return os.open(os.path.join(directory, "raw.bin"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)


# ---- (a) batched throughput --------------------------------------------------------------


def run_log_batches(scratch: Scratch, batches: list[list[bytes]], records: int, durability: str) -> float:
    directory = scratch.fresh(f"a-{durability}")
    try:
        log = EpochLog.open(directory, durability=durability)
        try:
            append_batch = log.append_batch
            last = range(0)
            gc.collect()
            start = time.perf_counter()
            for batch in batches:
                last = append_batch(batch)
            log.close()  # durability="none" syncs here; part of the cost
            elapsed = time.perf_counter() - start
        finally:
            log.close()
        assert last.stop - 1 == records, f"expected last version {records}, got {last.stop - 1}"
        assert segment_data_bytes(directory) == records * RECORD_BYTES, "udrflow wrote an unexpected byte count"
        return elapsed
    finally:
        scratch.discard(directory)


def run_raw_writes(scratch: Scratch, chunks: list[bytes], expected_bytes: int, sync_each: bool) -> float:
    """One os.write per chunk, then fdatasync once (or after every chunk with ``sync_each``)."""
    directory = scratch.fresh("a-raw")
    fd = open_raw(directory)
    try:
        write, fdatasync = os.write, os.fdatasync
        gc.collect()
        start = time.perf_counter()
        if sync_each:
            for chunk in chunks:
                write(fd, chunk)
                fdatasync(fd)
        else:
            for chunk in chunks:
                write(fd, chunk)
            fdatasync(fd)
        elapsed = time.perf_counter() - start
        assert os.fstat(fd).st_size == expected_bytes, "short write in the raw baseline"
        return elapsed
    finally:
        os.close(fd)
        scratch.discard(directory)


def bench_batched(scratch: Scratch, sizes: Sizes) -> dict:
    n, bs = sizes.records, sizes.batch_size
    payloads = make_payloads(n, seed=1)
    batches = [payloads[i:i + bs] for i in range(0, n, bs)]
    raw_records = make_raw_records(payloads)
    raw_batches = [b"".join(raw_records[i:i + bs]) for i in range(0, n, bs)]
    total_bytes = n * RECORD_BYTES
    runs: dict[str, Callable[[], float]] = {
        "udrflow_sync": lambda: run_log_batches(scratch, batches, n, "sync"),
        "udrflow_none": lambda: run_log_batches(scratch, batches, n, "none"),
        "raw_os_write": lambda: run_raw_writes(scratch, raw_records, total_bytes, sync_each=False),
        "raw_batched_reference": lambda: run_raw_writes(scratch, raw_batches, total_bytes, sync_each=True),
    }
    times: dict[str, list[float]] = {k: [] for k in runs}
    for rep in range(sizes.repetitions):
        for name in rotated(list(runs), rep):
            times[name].append(runs[name]())
    out: dict = {"records": n, "batch_size": bs, "bytes_per_record": RECORD_BYTES, "total_bytes": total_bytes}
    for name, secs in times.items():
        rates = [n / s for s in secs]
        out[name] = {"records_per_s": statistics.median(rates), "best_records_per_s": max(rates),
                     "runs_s": secs, "runs_records_per_s": rates}
    raw = out["raw_os_write"]["records_per_s"]
    out["ratio_sync_vs_raw"] = out["udrflow_sync"]["records_per_s"] / raw
    out["ratio_none_vs_raw"] = out["udrflow_none"]["records_per_s"] / raw
    out["ratio_sync_vs_raw_batched_reference"] = (
        out["udrflow_sync"]["records_per_s"] / out["raw_batched_reference"]["records_per_s"])
    return out


# ---- (b) single-commit latency ----------------------------------------------------------


def measure_commits(commit: Callable[[bytes], object], payloads: list[bytes], warmup: int) -> dict:
    for p in payloads[:warmup]:
        commit(p)
    measured = payloads[warmup:]
    samples: list[int] = []
    clock, record = time.perf_counter_ns, samples.append
    gc.collect()
    start = clock()
    for p in measured:
        t = clock()
        commit(p)
        record(clock() - t)
    total_ns = clock() - start
    samples.sort()
    return {"p50_us": percentile(samples, 50) / 1e3, "p99_us": percentile(samples, 99) / 1e3,
            "commits_per_s": len(measured) / (total_ns / 1e9)}


def latency_udrflow(scratch: Scratch, payloads: list[bytes], warmup: int) -> dict:
    directory = scratch.fresh("b-udrflow")
    try:
        with EpochLog.open(directory, durability="sync") as log:
            return measure_commits(log.append, payloads, warmup)
    finally:
        scratch.discard(directory)


def latency_raw(scratch: Scratch, payloads: list[bytes], warmup: int) -> dict:
    records = make_raw_records(payloads)
    directory = scratch.fresh("b-raw")
    fd = open_raw(directory)
    try:
        write, fdatasync = os.write, os.fdatasync
        index = iter(range(len(records)))

        def commit(_payload: bytes) -> None:
            write(fd, records[next(index)])
            fdatasync(fd)

        return measure_commits(commit, payloads, warmup)
    finally:
        os.close(fd)
        scratch.discard(directory)


def latency_sqlite(scratch: Scratch, payloads: list[bytes], warmup: int) -> dict:
    directory = scratch.fresh("b-sqlite")
    conn = sqlite3.connect(os.path.join(directory, "bench.db"))
    try:
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        assert mode == "wal", f"sqlite refused WAL mode: {mode}"
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("CREATE TABLE commits (id INTEGER PRIMARY KEY, body BLOB NOT NULL)")
        conn.commit()
        execute, commit_tx = conn.execute, conn.commit
        sql = "INSERT INTO commits (body) VALUES (?)"

        def commit(payload: bytes) -> None:
            execute(sql, (payload,))
            commit_tx()

        return measure_commits(commit, payloads, warmup)
    finally:
        conn.close()
        scratch.discard(directory)


def bench_latency(scratch: Scratch, sizes: Sizes) -> dict:
    payloads = make_payloads(sizes.single_warmup + sizes.single_commits, seed=2)
    w = sizes.single_warmup
    runs: dict[str, Callable[[], dict]] = {
        "udrflow": lambda: latency_udrflow(scratch, payloads, w),
        "raw_write_fdatasync": lambda: latency_raw(scratch, payloads, w),
        "sqlite3_wal_full": lambda: latency_sqlite(scratch, payloads, w),
    }
    rounds: dict[str, list[dict]] = {k: [] for k in runs}
    for rep in range(sizes.repetitions):
        for name in rotated(list(runs), rep):
            rounds[name].append(runs[name]())
    out: dict = {"commits": sizes.single_commits, "warmup": w, "payload_bytes": PAYLOAD_BYTES}
    for name, rs in rounds.items():
        out[name] = {key: statistics.median(r[key] for r in rs) for key in ("p50_us", "p99_us", "commits_per_s")}
        out[name]["rounds"] = rs
    out["ratio_p50_udrflow_vs_raw"] = out["udrflow"]["p50_us"] / out["raw_write_fdatasync"]["p50_us"]
    out["ratio_p99_udrflow_vs_raw"] = out["udrflow"]["p99_us"] / out["raw_write_fdatasync"]["p99_us"]
    out["ratio_commits_per_s_udrflow_vs_sqlite3"] = (
        out["udrflow"]["commits_per_s"] / out["sqlite3_wal_full"]["commits_per_s"])
    out["rounds_ratio_p50_udrflow_vs_raw"] = [
        u["p50_us"] / r["p50_us"] for u, r in zip(rounds["udrflow"], rounds["raw_write_fdatasync"], strict=True)]
    return out


# ---- (c) group commit -------------------------------------------------------------------


def run_committers(scratch: Scratch, n_threads: int, per_thread: int, io: FaultyFileIO | None = None) -> dict:
    """``n_threads`` threads each committing ``per_thread`` single payloads durably."""
    payloads = make_payloads(n_threads * per_thread, seed=3 + n_threads)
    shares = [payloads[i * per_thread:(i + 1) * per_thread] for i in range(n_threads)]
    directory = scratch.fresh(f"c-{n_threads}t")
    try:
        log = EpochLog.open(directory, durability="sync", io=io)
        try:
            barrier = threading.Barrier(n_threads + 1)
            errors: list[BaseException] = []

            def committer(mine: list[bytes]) -> None:
                append = log.append
                barrier.wait()
                try:
                    for p in mine:
                        append(p)
                except BaseException as exc:
                    errors.append(exc)

            threads = [threading.Thread(target=committer, args=(s,)) for s in shares]
            for t in threads:
                t.start()
            syncs_before = io.calls.get("fdatasync", 0) if io else 0
            gc.collect()
            barrier.wait()
            start = time.perf_counter()
            for t in threads:
                t.join()
            elapsed = time.perf_counter() - start
            syncs = (io.calls.get("fdatasync", 0) - syncs_before) if io else None
            if errors:
                raise errors[0]
            assert log.version == n_threads * per_thread, "not every commit was acknowledged"
        finally:
            log.close()
        commits = n_threads * per_thread
        result: dict = {"threads": n_threads, "commits": commits, "elapsed_s": elapsed,
                        "commits_per_s": commits / elapsed}
        if syncs is not None:
            result["fdatasync_calls"] = syncs
            result["commits_per_epoch"] = commits / syncs if syncs else None
        return result
    finally:
        scratch.discard(directory)


def bench_group_commit(scratch: Scratch, sizes: Sizes) -> dict:
    k, per = sizes.threads, sizes.commits_per_thread
    runs: dict[str, Callable[[], dict]] = {
        "one_thread": lambda: run_committers(scratch, 1, per),
        "many_threads": lambda: run_committers(scratch, k, per),
    }
    rounds: dict[str, list[dict]] = {name: [] for name in runs}
    for rep in range(sizes.repetitions):
        for name in rotated(list(runs), rep):
            rounds[name].append(runs[name]())
    out: dict = {"threads": k, "commits_per_thread": per}
    for name, rs in rounds.items():
        rates = [r["commits_per_s"] for r in rs]
        out[name] = {"threads": rs[0]["threads"], "commits": rs[0]["commits"],
                     "commits_per_s": statistics.median(rates), "runs_commits_per_s": rates}
    out["ratio_many_vs_one"] = out["many_threads"]["commits_per_s"] / out["one_thread"]["commits_per_s"]
    # Separate run that counts fdatasync calls (= epochs); its speed is not used for the ratio.
    out["count_run"] = {"one_thread": run_committers(scratch, 1, per, io=FaultyFileIO()),
                        "many_threads": run_committers(scratch, k, per, io=FaultyFileIO())}
    return out


# ---- machine info and report ------------------------------------------------------------


def log_sources() -> list[Path]:
    """The log's sources, hashed into the results to tie them to the code measured."""
    return [*sorted((ROOT / "udrflow" / "log").glob("*.py")), ROOT / "udrflow" / "_fileio.py",
            *sorted((ROOT / "udrflow" / "_ext").glob("*.pyx"))]


def log_machine_info(scratch_root: str) -> dict:
    return machine_info(scratch_root, {
        "python_implementation": platform.python_implementation(),
        "crc32c_implementation": _crc32c.implementation(),
        "sqlite_version": sqlite3.sqlite_version,
        "udrflow_version": udrflow.__version__,
        "udrflow_log_sources_sha256": sources_digest(log_sources()),
    })


def build_targets(a: dict, b: dict, c: dict) -> list[Target]:
    return [
        Target("a_sync_records_per_s", a["udrflow_sync"]["records_per_s"], ">=", 1_000_000),
        Target("a_sync_vs_raw_os_write", a["ratio_sync_vs_raw"], ">=", 0.5),
        Target("b_p50_udrflow_vs_raw", b["ratio_p50_udrflow_vs_raw"], "<=", 1.3),
        Target("b_commits_per_s_udrflow_vs_sqlite3", b["ratio_commits_per_s_udrflow_vs_sqlite3"], ">=", 1.0),
        Target("c_many_threads_vs_one", c["ratio_many_vs_one"], ">=", 4.0),
    ]


def print_report(result: dict, targets: list[Target]) -> None:
    a, b, c = result["a_batched_append"], result["b_single_commit_latency"], result["c_group_commit"]
    m = result["machine"]
    reps = result["sizes"]["repetitions"]
    line = "-" * 100
    print(line)
    print(f"udrflow epoch log benchmark ({result['mode']}), {result['timestamp']}; median of {reps} repetitions")
    print(f"python {m['python']}, {m['cpu_count']} CPUs ({m['cpu_model']}), crc32c={m['crc32c_implementation']}, "
          f"sqlite {m['sqlite_version']}, fs {m['filesystem']['fstype']} on {m['filesystem']['device']}")
    print(line)
    print(f"(a) {a['records']:,} commits x {PAYLOAD_BYTES} B in batches of {a['batch_size']:,} "
          f"({a['bytes_per_record']} B/record on disk)")
    print(f"    {'udrflow append_batch, durability=sync':52s} {a['udrflow_sync']['records_per_s']:>14,.0f} rec/s  "
          f"{verdict(targets, 'a_sync_records_per_s')}")
    print(f"    {'udrflow append_batch, durability=none (+close)':52s} {a['udrflow_none']['records_per_s']:>14,.0f} rec/s")
    print(f"    {'raw os.write x N + 1 fdatasync (baseline)':52s} {a['raw_os_write']['records_per_s']:>14,.0f} rec/s")
    print(f"    {'raw os.write per batch + fdatasync (reference)':52s} "
          f"{a['raw_batched_reference']['records_per_s']:>14,.0f} rec/s")
    print(f"    ratio sync/raw = {a['ratio_sync_vs_raw']:.2f}  {verdict(targets, 'a_sync_vs_raw_os_write')};  "
          f"none/raw = {a['ratio_none_vs_raw']:.2f};  sync/batched reference = "
          f"{a['ratio_sync_vs_raw_batched_reference']:.2f}")
    print(line)
    print(f"(b) durable single commits, {b['commits']:,} after {b['warmup']} warm-up "
          f"{'p50 us':>10s} {'p99 us':>10s} {'commits/s':>12s}")
    for key, label in (("udrflow", "udrflow log.append (sync)"),
                       ("raw_write_fdatasync", "raw os.write + fdatasync"),
                       ("sqlite3_wal_full", "sqlite3 WAL, synchronous=FULL")):
        r = b[key]
        print(f"    {label:52s} {r['p50_us']:10.1f} {r['p99_us']:10.1f} {r['commits_per_s']:12,.0f}")
    print(f"    p50 udrflow/raw = {b['ratio_p50_udrflow_vs_raw']:.2f}  {verdict(targets, 'b_p50_udrflow_vs_raw')};  "
          f"p99 udrflow/raw = {b['ratio_p99_udrflow_vs_raw']:.2f}")
    print(f"    commits/s udrflow/sqlite3 = {b['ratio_commits_per_s_udrflow_vs_sqlite3']:.2f}  "
          f"{verdict(targets, 'b_commits_per_s_udrflow_vs_sqlite3')}")
    print(line)
    print(f"(c) group commit, {c['commits_per_thread']:,} durable single commits per thread")
    cr = c["count_run"]
    for key in ("one_thread", "many_threads"):
        r = c[key]
        epoch = cr[key].get("commits_per_epoch")
        print(f"    {r['threads']} thread(s) {'':40s} {r['commits_per_s']:>14,.0f} commits/s   "
              f"{epoch:.2f} commits/epoch (count run)")
    print(f"    ratio {c['threads']} threads / 1 thread = {c['ratio_many_vs_one']:.2f}x  "
          f"{verdict(targets, 'c_many_threads_vs_one')}")
    print(line)
    print_targets(targets, line)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="~20x smaller sizes: a smoke test of a few seconds")
    parser.add_argument("--repetitions", type=int, help="repetitions of every timed part (default 3)")
    parser.add_argument("--tmp-dir", type=Path, default=DEFAULT_TMP,
                        help="parent of the scratch directories; must be on the filesystem to measure")
    parser.add_argument("--output", type=Path, help="where to write the JSON (default benchmarks/results/"
                        "bench_log.json, or bench_log.quick.json with --quick)")
    parser.add_argument("--strict", action="store_true", help="exit with status 1 if any target is missed")
    args = parser.parse_args(argv)

    sizes = QUICK if args.quick else FULL
    if args.repetitions:
        sizes = Sizes(**{**asdict(sizes), "repetitions": args.repetitions})
    output = args.output or RESULTS_DIR / ("bench_log.quick.json" if args.quick else "bench_log.json")

    started = time.perf_counter()
    started_at = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    scratch = Scratch(args.tmp_dir, "bench_log")
    try:
        machine = log_machine_info(scratch.root)
        a = bench_batched(scratch, sizes)
        b = bench_latency(scratch, sizes)
        c = bench_group_commit(scratch, sizes)
    finally:
        scratch.close()
    machine["loadavg_end"] = list(os.getloadavg())
    targets = build_targets(a, b, c)
    result = {
        "benchmark": "bench_log",
        "mode": "quick" if args.quick else "full",
        "timestamp": started_at,  # when the run started (UTC)
        "statistic": f"median of {sizes.repetitions} repetitions (contender and baselines back to back, "
                     f"order rotated per repetition); ratios are taken between the medians",
        "machine": machine,
        "sizes": asdict(sizes),
        "a_batched_append": a,
        "b_single_commit_latency": b,
        "c_group_commit": c,
        "targets": targets_json(targets),
        "all_pass": all(t.passed for t in targets),
        "elapsed_s": time.perf_counter() - started,
    }
    print_report(result, targets)
    write_result(result, output)
    return 1 if args.strict and not result["all_pass"] else 0


if __name__ == "__main__":
    sys.exit(main())
