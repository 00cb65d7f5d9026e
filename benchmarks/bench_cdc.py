"""Benchmark of udrflow change streams (issue 5): commit -> subscriber latency, in-process and across
processes, and replay throughput from version 0.

Run it with ``.venv/bin/python benchmarks/bench_cdc.py`` (``--quick``: ~20x smaller, a smoke test of a
few seconds). It prints a table with PASS/MISS per target, then one JSON object, which it also writes to
``benchmarks/results/bench_cdc.json`` (``--quick`` writes ``bench_cdc.quick.json`` instead, so a smoke
test never overwrites the full results).

Every database is a fresh directory under ``benchmarks/.tmp`` (the repository's filesystem), removed
afterwards. Timestamps are ``time.clock_gettime_ns(CLOCK_MONOTONIC)``, which on Linux is one clock for
every process, so a timestamp taken by a writer process and one taken by a subscriber process compare.

(a) In-process latency. A writer thread commits LATENCY_COMMITS single-row ``db.upsert`` calls (table
    ``id int64 primary key, x float64``, ids cycling over 1,000 so most are updates: a batch of two
    rows) with durability ``"sync"`` (the default: each commit is acknowledged after its fdatasync),
    sleeping PAUSE_MS between commits so the subscriber is waiting at the tail when each commit lands.
    A subscriber thread iterates ``db.subscribe(["t"], from_version=v0)`` and notes the time at which
    each batch is handed to it. Two definitions of latency are reported, per commit:

    - ``ack``: from the moment ``db.upsert`` returned to the writer (the commit is durable and
      acknowledged) to the subscriber holding the batch. The subscriber is woken by the log when the
      epoch becomes visible, which is before the writer thread's own call returns, so this can be
      negative (the subscriber had the batch before the committer did); it is reported signed. This is
      the notification delay a user sees, and the one the targets are about.
    - ``call``: from just before ``db.upsert`` was called to the subscriber holding the batch: the
      commit's own latency (mostly the fdatasync) plus the notification delay.

    The first LATENCY_WARMUP commits are not counted. Baselines, same writer, same machine, back to
    back: ``log_follow``, the raw log records from ``db.log.follow`` (woken the same way, but no
    decoding into Arrow change batches: the floor of the wake-up path), and ``poll_1ms``, a loop that
    reads ``db.version`` every millisecond and decodes the new commits with the same reader
    (``read_changes``): the latency a user gets without tail-following. For context (no target), the
    cost of building a one-row Arrow table right after a 1 ms sleep vs back to back, which is what a
    woken subscriber pays on this machine whatever its code.

(b) Cross-process latency. The same writer runs in a child process (``--child-writer``), which opens
    the database as the writer while the parent has it open read-only (readers take no lock) and is
    already subscribed. Modes as in (a): ``subscribe`` (woken by inotify on the HEAD file),
    ``log_follow`` and ``poll_1ms``.

(c) Replay throughput. REPLAY_ROWS rows (``id int64 primary key, customer string, amount float64``)
    inserted in commits of 10,000 rows (the target) and of 1,000 rows, built with durability
    ``"none"`` (building is not measured). Measured: a fresh read-only ``udrflow.open`` (timed
    separately), then ``db.subscribe(["t"], from_version=0)`` iterated until its position is the head,
    touching each batch's row count: row changes per second. Baselines: ``pyarrow.parquet.read_table``
    of the same rows from one Parquet file (pyarrow defaults) on the same disk: getting the same rows
    into the same in-memory format with no log, no versions, no change columns; and ``log_scan``, the
    raw frames of the same commits (``db.log.scan``: reading and checksumming, no decoding). For
    context, the Bytewax ``ChangeSource`` replaying the same log through ``run_main``.

The machine is shared and noisy, so every part is repeated (3 times by default) with the contender and
its baselines back to back (order rotated per repetition), and the table reports the MEDIAN over the
repetitions; the JSON keeps every repetition.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import os
import statistics
import subprocess
import sys
import threading
import time
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
    write_result,
)

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

import udrflow  # noqa: E402
from udrflow._changefeed import read_changes  # noqa: E402

LATENCY_SCHEMA = pa.schema([("id", pa.int64()), ("x", pa.float64())])
REPLAY_SCHEMA = pa.schema([("id", pa.int64()), ("customer", pa.string()), ("amount", pa.float64())])
LATENCY_IDS = 1000
POLL_INTERVAL_S = 0.001


def now_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


@dataclass(frozen=True)
class Sizes:
    latency_commits: int  # (a), (b): measured commits per run
    latency_warmup: int  # (a), (b): commits before measuring
    pause_ms: float  # (a), (b): writer pause between commits
    replay_rows: int  # (c)
    replay_commit_rows: tuple[int, ...]  # (c): rows per commit; the first is the target's
    repetitions: int


FULL = Sizes(latency_commits=2000, latency_warmup=200, pause_ms=1.0, replay_rows=1_000_000,
             replay_commit_rows=(10_000, 1_000), repetitions=3)
QUICK = Sizes(latency_commits=150, latency_warmup=20, pause_ms=1.0, replay_rows=50_000,
              replay_commit_rows=(10_000, 1_000), repetitions=3)


def percentile(sorted_values, q: float) -> float:
    """Nearest-rank percentile of an ascending sequence (q in 0..100)."""
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return float(sorted_values[rank - 1])


# ---- (a), (b) latency --------------------------------------------------------------------------------------


def write_commits(db, count: int, pause_s: float) -> list[tuple[int, int, int]]:
    """The writer: ``count`` single-row upserts; returns (version, t_call_ns, t_ack_ns) of each."""
    out = []
    upsert = db.upsert
    for i in range(count):
        row = [{"id": i % LATENCY_IDS, "x": float(i)}]
        t_call = now_ns()
        v = upsert("t", row)
        t_ack = now_ns()
        out.append((v, t_call, t_ack))
        time.sleep(pause_s)
    return out


def consume(db, mode: str, v0: int, last: int, received: np.ndarray, ready: threading.Event,
            errors: list) -> None:
    """Note in ``received[v - v0 - 1]`` when version v reached the subscriber, until ``last``."""
    try:
        if mode == "subscribe":
            sub = db.subscribe(["t"], from_version=v0)
            ready.set()
            for batch in sub:
                received[batch.version - v0 - 1] = now_ns()
                if batch.version >= last:
                    break
            sub.close()
        elif mode == "log_follow":
            records = db.log.follow(v0 + 1)
            ready.set()
            for record in records:
                received[record.version - v0 - 1] = now_ns()
                if record.version >= last:
                    break
        elif mode == "poll_1ms":
            engine = db._engine()
            tables = {"t"}
            seen = v0
            ready.set()
            while seen < last:
                head = db.version  # a read-only handle refreshes from HEAD here
                if head > seen:
                    for batch in read_changes(engine, tables, seen, head):
                        received[batch.version - v0 - 1] = now_ns()
                    seen = head
                else:
                    time.sleep(POLL_INTERVAL_S)
        else:
            raise ValueError(mode)
    except BaseException as exc:
        errors.append(exc)
        ready.set()


def latency_stats(sent: list[tuple[int, int, int]], received: np.ndarray, v0: int, warmup: int) -> dict:
    measured = sent[warmup:]
    ack = sorted(int(received[v - v0 - 1]) - t_ack for v, _, t_ack in measured)
    call = sorted(int(received[v - v0 - 1]) - t_call for v, t_call, _ in measured)
    commit = sorted(t_ack - t_call for _, t_call, t_ack in measured)
    return {
        "commits": len(measured),
        "ack_p50_us": percentile(ack, 50) / 1e3, "ack_p99_us": percentile(ack, 99) / 1e3,
        "ack_negative_fraction": sum(1 for x in ack if x < 0) / len(ack),
        "call_p50_us": percentile(call, 50) / 1e3, "call_p99_us": percentile(call, 99) / 1e3,
        "commit_p50_us": percentile(commit, 50) / 1e3, "commit_p99_us": percentile(commit, 99) / 1e3,
    }


def make_latency_db(path: str) -> int:
    with udrflow.open(path) as db:
        return db.create_table("t", LATENCY_SCHEMA, primary_key="id")


def run_in_process(scratch: Scratch, sizes: Sizes, mode: str) -> dict:
    directory = scratch.fresh(f"a-{mode}")
    path = os.path.join(directory, "db")
    try:
        v0 = make_latency_db(path)
        n = sizes.latency_warmup + sizes.latency_commits
        received = np.zeros(n, np.int64)
        errors: list = []
        ready = threading.Event()
        with udrflow.open(path) as db:
            consumer = threading.Thread(target=consume, args=(db, mode, v0, v0 + n, received, ready, errors))
            consumer.start()
            ready.wait(30)
            gc.collect()
            sent = write_commits(db, n, sizes.pause_ms / 1e3)
            consumer.join(60)
        if errors:
            raise errors[0]
        assert not consumer.is_alive(), f"{mode}: the consumer did not reach the last commit"
        assert [v for v, _, _ in sent] == list(range(v0 + 1, v0 + n + 1)), "unexpected versions"
        assert received.all(), f"{mode}: some commits never reached the subscriber"
        return latency_stats(sent, received, v0, sizes.latency_warmup)
    finally:
        scratch.discard(directory)


def run_cross_process(scratch: Scratch, sizes: Sizes, mode: str) -> dict:
    directory = scratch.fresh(f"b-{mode}")
    path = os.path.join(directory, "db")
    try:
        v0 = make_latency_db(path)
        n = sizes.latency_warmup + sizes.latency_commits
        received = np.zeros(n, np.int64)
        errors: list = []
        ready = threading.Event()
        with udrflow.open(path, readonly=True) as reader:
            consumer = threading.Thread(target=consume, args=(reader, mode, v0, v0 + n, received, ready, errors))
            consumer.start()
            ready.wait(30)
            out_path = os.path.join(directory, "sent.json")
            child = subprocess.run([sys.executable, __file__, "--child-writer", path, str(n), str(sizes.pause_ms),
                                    out_path], capture_output=True, text=True, timeout=600)
            if child.returncode != 0:
                raise RuntimeError(f"the writer process failed: {child.stderr}")
            consumer.join(60)
        if errors:
            raise errors[0]
        assert not consumer.is_alive(), f"{mode}: the consumer did not reach the last commit"
        sent = [tuple(x) for x in json.loads(Path(out_path).read_text())]
        assert [v for v, _, _ in sent] == list(range(v0 + 1, v0 + n + 1)), "unexpected versions"
        assert received.all(), f"{mode}: some commits never reached the subscriber"
        return latency_stats(sent, received, v0, sizes.latency_warmup)
    finally:
        scratch.discard(directory)


def child_writer(path: str, count: int, pause_ms: float, out_path: str) -> int:
    with udrflow.open(path) as db:  # the writer lock: the parent is a read-only subscriber
        sent = write_commits(db, count, pause_ms / 1e3)
    Path(out_path).write_text(json.dumps(sent))
    return 0


LATENCY_MODES = ("subscribe", "log_follow", "poll_1ms")


def cold_wake_cost(samples: int) -> dict:
    """Context for the latencies: what building a one-row, two-column Arrow table costs right
    after a 1 ms sleep (what a subscriber does when a commit wakes it) vs back to back, and the
    same for a few lines of plain Python. On a shared VM the first microseconds after a wake run
    several times slower (cold caches, a descheduled vCPU), whatever the code."""
    schema = pa.schema([("id", pa.int64()), ("x", pa.float64())])

    def arrow():
        return pa.Table.from_arrays([pa.array([1], type=pa.int64()), pa.array([1.0], type=pa.float64())],
                                    schema=schema)

    def python():
        return sum(i * 2 for i in range(20))

    out = {}
    for name, fn in (("arrow_table_us", arrow), ("python_us", python)):
        cold, warm = [], []
        for _ in range(samples):
            time.sleep(0.001)
            t0 = time.perf_counter_ns()
            fn()
            t1 = time.perf_counter_ns()
            fn()
            t2 = time.perf_counter_ns()
            cold.append(t1 - t0)
            warm.append(t2 - t1)
        out[name] = {"after_1ms_sleep_p50": statistics.median(cold) / 1e3, "back_to_back_p50": statistics.median(warm) / 1e3}
    return out


def bench_latency(scratch: Scratch, sizes: Sizes, run) -> dict:
    rounds: dict[str, list[dict]] = {m: [] for m in LATENCY_MODES}
    for rep in range(sizes.repetitions):
        for mode in rotated(list(LATENCY_MODES), rep):
            rounds[mode].append(run(scratch, sizes, mode))
    out: dict = {"commits": sizes.latency_commits, "warmup": sizes.latency_warmup, "pause_ms": sizes.pause_ms,
                 "durability": "sync", "cold_wake_context": cold_wake_cost(sizes.latency_commits // 4)}
    for mode, rs in rounds.items():
        out[mode] = {k: statistics.median(r[k] for r in rs) for k in rs[0]}
        out[mode]["rounds"] = rs
    sub, follow, poll = out["subscribe"], out["log_follow"], out["poll_1ms"]
    out["ratio_ack_p50_subscribe_vs_log_follow"] = sub["ack_p50_us"] / follow["ack_p50_us"]
    out["ratio_ack_p50_subscribe_vs_poll_1ms"] = sub["ack_p50_us"] / poll["ack_p50_us"]
    out["ratio_call_p50_subscribe_vs_poll_1ms"] = sub["call_p50_us"] / poll["call_p50_us"]
    return out


# ---- (c) replay --------------------------------------------------------------------------------------------


def replay_rows(count: int) -> pa.Table:
    rng = np.random.default_rng(7)
    customers = pa.array([f"c{k}" for k in rng.integers(0, 100_000, count)], pa.string())
    amounts = pa.array(np.round(rng.uniform(0, 1000, count), 2))
    return pa.table([pa.array(np.arange(count, dtype=np.int64)), customers, amounts], schema=REPLAY_SCHEMA)


def build_replay_db(path: str, rows: pa.Table, commit_rows: int) -> int:
    with udrflow.open(path, durability="none") as db:
        db.create_table("t", REPLAY_SCHEMA, primary_key="id")
        for start in range(0, rows.num_rows, commit_rows):
            db.insert("t", rows.slice(start, commit_rows))
        return db.version


def replay_subscribe(path: str, head: int) -> dict:
    gc.collect()
    t0 = time.perf_counter()
    db = udrflow.open(path, readonly=True, create=False)
    try:
        t1 = time.perf_counter()
        rows = batches = 0
        sub = db.subscribe(["t"], from_version=0)
        for batch in sub:
            rows += batch.num_rows
            batches += 1
            if sub.position >= head:
                break
        t2 = time.perf_counter()
        sub.close()
    finally:
        db.close()
    return {"rows": rows, "batches": batches, "open_s": t1 - t0, "replay_s": t2 - t1}


def replay_log_scan(path: str, head: int) -> dict:
    gc.collect()
    with udrflow.open(path, readonly=True, create=False) as db:
        t1 = time.perf_counter()
        nbytes = records = 0
        for record in db.log.scan(1, head):
            nbytes += len(record.payload)
            records += 1
        t2 = time.perf_counter()
    return {"records": records, "payload_bytes": nbytes, "replay_s": t2 - t1}


def replay_change_source(path: str, head: int) -> dict:
    import bytewax.operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.testing import run_main

    from udrflow.views import ChangeSource

    counted = [0]
    flow = Dataflow("replay")
    stream = op.input("in", flow, ChangeSource(path, ["t"], from_version=0, until_version=head))

    def count(batch):
        counted[0] += batch.num_rows

    op.inspect("count", stream, lambda _step, batch: count(batch))
    gc.collect()
    t1 = time.perf_counter()
    run_main(flow)
    return {"rows": counted[0], "replay_s": time.perf_counter() - t1}


def replay_parquet(parquet_path: str) -> dict:
    gc.collect()
    t1 = time.perf_counter()
    table = pq.read_table(parquet_path)
    return {"rows": table.num_rows, "replay_s": time.perf_counter() - t1}


def bench_replay(scratch: Scratch, sizes: Sizes) -> dict:
    rows = replay_rows(sizes.replay_rows)
    directory = scratch.fresh("c")
    out: dict = {"rows": sizes.replay_rows}
    try:
        parquet_path = os.path.join(directory, "rows.parquet")
        pq.write_table(rows, parquet_path)
        replay_parquet(parquet_path)  # warm the page cache, as the log is warm after building it
        for commit_rows in sizes.replay_commit_rows:
            path = os.path.join(directory, f"db{commit_rows}")
            head = build_replay_db(path, rows, commit_rows)
            replay_subscribe(path, head)  # warm-up: page cache
            runs = {
                "subscribe": lambda p=path, h=head: replay_subscribe(p, h),
                "log_scan": lambda p=path, h=head: replay_log_scan(p, h),
                "parquet": lambda: replay_parquet(parquet_path),
                "change_source": lambda p=path, h=head: replay_change_source(p, h),
            }
            rounds: dict[str, list[dict]] = {k: [] for k in runs}
            for rep in range(sizes.repetitions):
                for name in rotated(list(runs), rep):
                    rounds[name].append(runs[name]())
            part: dict = {"commit_rows": commit_rows, "commits": head - 1}
            for name, rs in rounds.items():
                if "rows" in rs[0]:
                    assert all(r["rows"] == sizes.replay_rows for r in rs), f"{name} replayed {rs[0]['rows']} rows"
                rates = [sizes.replay_rows / r["replay_s"] for r in rs]
                part[name] = {"rows_per_s": statistics.median(rates), "replay_s": statistics.median(
                    r["replay_s"] for r in rs), "rounds": rs}
            part["subscribe"]["open_s"] = statistics.median(r["open_s"] for r in rounds["subscribe"])
            part["ratio_subscribe_vs_parquet"] = part["subscribe"]["rows_per_s"] / part["parquet"]["rows_per_s"]
            part["ratio_subscribe_vs_log_scan"] = part["subscribe"]["rows_per_s"] / part["log_scan"]["rows_per_s"]
            out[f"commits_of_{commit_rows}"] = part
            scratch.discard(path)
    finally:
        scratch.discard(directory)
    return out


# ---- report ------------------------------------------------------------------------------------------------


def cdc_sources() -> list[Path]:
    return [ROOT / "udrflow" / "_changefeed.py", ROOT / "udrflow" / "views" / "_source.py",
            ROOT / "udrflow" / "_commit.py", *sorted((ROOT / "udrflow" / "log").glob("*.py"))]


def build_targets(a: dict | None, b: dict | None, c: dict | None, sizes: Sizes) -> list[Target]:
    targets = []
    if a is not None:
        targets.append(Target("a_in_process_ack_p50_us", a["subscribe"]["ack_p50_us"], "<=", 100))
    if b is not None:
        targets.append(Target("b_cross_process_ack_p50_us", b["subscribe"]["ack_p50_us"], "<=", 1000))
    if c is not None:
        main = c[f"commits_of_{sizes.replay_commit_rows[0]}"]
        targets.append(Target("c_replay_rows_per_s", main["subscribe"]["rows_per_s"], ">=", 2_000_000))
    return targets


def print_report(result: dict, targets: list[Target], sizes: Sizes) -> None:
    a, b, c = result["a_in_process_latency"], result["b_cross_process_latency"], result["c_replay"]
    m = result["machine"]
    line = "-" * 104
    verdicts = {t.name: f"{'PASS' if t.passed else 'MISS'} (target {t.op} {t.target:g})" for t in targets}
    print(line)
    print(f"udrflow change-stream benchmark ({result['mode']}), {result['timestamp']}; median of "
          f"{sizes.repetitions} repetitions")
    print(f"python {m['python']}, {m['cpu_count']} CPUs ({m['cpu_model']}), fs {m['filesystem']['fstype']}")
    print(line)
    for label, part, target in (("(a) in-process", a, "a_in_process_ack_p50_us"),
                                ("(b) cross-process", b, "b_cross_process_ack_p50_us")):
        if part is None:
            continue
        print(f"{label} latency, {part['commits']:,} single-row upserts (durability {part['durability']}), "
              f"{part['pause_ms']} ms apart; microseconds")
        print(f"    {'':34s} {'ack p50':>9s} {'ack p99':>9s} {'ack<0':>6s} {'call p50':>9s} {'call p99':>9s} "
              f"{'commit p50':>10s}")
        for mode, desc in (("subscribe", "db.subscribe"), ("log_follow", "db.log.follow (raw records)"),
                           ("poll_1ms", "poll db.version every 1 ms")):
            r = part[mode]
            print(f"    {desc:34s} {r['ack_p50_us']:9.1f} {r['ack_p99_us']:9.1f} {r['ack_negative_fraction']:6.2f} "
                  f"{r['call_p50_us']:9.1f} {r['call_p99_us']:9.1f} {r['commit_p50_us']:10.1f}")
        cw = part["cold_wake_context"]
        print(f"    context: a 1-row Arrow table costs {cw['arrow_table_us']['after_1ms_sleep_p50']:.1f} us right "
              f"after a 1 ms sleep, {cw['arrow_table_us']['back_to_back_p50']:.1f} us back to back "
              f"(plain Python: {cw['python_us']['after_1ms_sleep_p50']:.1f} vs "
              f"{cw['python_us']['back_to_back_p50']:.1f} us)")
        print(f"    ack p50 subscribe: {verdicts[target]};  subscribe/log_follow = "
              f"{part['ratio_ack_p50_subscribe_vs_log_follow']:.2f}, subscribe/poll_1ms = "
              f"{part['ratio_ack_p50_subscribe_vs_poll_1ms']:.2f} (ack), "
              f"{part['ratio_call_p50_subscribe_vs_poll_1ms']:.2f} (call)")
        print(line)
    if c is not None:
        print_replay(c, verdicts, sizes)
        print(line)
    print_targets(targets, line)


def print_replay(c: dict, verdicts: dict, sizes: Sizes) -> None:
    print(f"(c) replay of {c['rows']:,} row changes from version 0 (rows/s)")
    for commit_rows in sizes.replay_commit_rows:
        part = c[f"commits_of_{commit_rows}"]
        print(f"    commits of {commit_rows:,} rows ({part['commits']} commits):")
        for name, desc in (("subscribe", "db.subscribe from 0"), ("log_scan", "db.log.scan (raw frames)"),
                           ("parquet", "pq.read_table (baseline)"), ("change_source", "bytewax ChangeSource")):
            r = part[name]
            print(f"        {desc:34s} {r['rows_per_s']:>14,.0f} rows/s  {r['replay_s'] * 1e3:9.1f} ms")
        print(f"        open (read-only) {part['subscribe']['open_s'] * 1e3:.1f} ms;  subscribe/parquet = "
              f"{part['ratio_subscribe_vs_parquet']:.2f};  subscribe/log_scan = "
              f"{part['ratio_subscribe_vs_log_scan']:.2f}")
    print(f"    {sizes.replay_commit_rows[0]:,}-row commits: {verdicts['c_replay_rows_per_s']}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child-writer":
        return child_writer(argv[1], int(argv[2]), float(argv[3]), argv[4])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="~20x smaller sizes: a smoke test of a few seconds")
    parser.add_argument("--repetitions", type=int, help="repetitions of every timed part (default 3)")
    parser.add_argument("--only", choices=("a", "b", "c"), action="append",
                        help="run only these parts (repeatable); the JSON is written only for a whole run")
    parser.add_argument("--tmp-dir", type=Path, default=DEFAULT_TMP,
                        help="parent of the scratch directories; must be on the filesystem to measure")
    parser.add_argument("--output", type=Path, help="where to write the JSON (default benchmarks/results/"
                        "bench_cdc.json, or bench_cdc.quick.json with --quick)")
    parser.add_argument("--strict", action="store_true", help="exit with status 1 if any target is missed")
    args = parser.parse_args(argv)

    sizes = QUICK if args.quick else FULL
    if args.repetitions:
        sizes = Sizes(**{**asdict(sizes), "repetitions": args.repetitions})
    output = args.output or RESULTS_DIR / ("bench_cdc.quick.json" if args.quick else "bench_cdc.json")
    parts = set(args.only or ("a", "b", "c"))

    started = time.perf_counter()
    started_at = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    scratch = Scratch(args.tmp_dir, "bench_cdc")
    try:
        machine = machine_info(scratch.root, {
            "udrflow_version": udrflow.__version__,
            "pyarrow_version": pa.__version__,
            "udrflow_cdc_sources_sha256": sources_digest(cdc_sources()),
        })
        a = bench_latency(scratch, sizes, run_in_process) if "a" in parts else None
        b = bench_latency(scratch, sizes, run_cross_process) if "b" in parts else None
        c = bench_replay(scratch, sizes) if "c" in parts else None
    finally:
        scratch.close()
    machine["loadavg_end"] = list(os.getloadavg())
    targets = build_targets(a, b, c, sizes)
    result = {
        "benchmark": "bench_cdc",
        "mode": "quick" if args.quick else "full",
        "timestamp": started_at,
        "statistic": f"median of {sizes.repetitions} repetitions (contender and baselines back to back, "
                     f"order rotated per repetition); ratios are taken between the medians",
        "latency_definitions": {
            "ack": "subscriber receipt minus the moment db.upsert returned (durable, acknowledged); signed: "
                   "negative when the subscriber had the batch before the writer's call returned",
            "call": "subscriber receipt minus the moment just before db.upsert was called (includes the "
                    "commit's own fdatasync)",
        },
        "machine": machine,
        "sizes": asdict(sizes),
        "a_in_process_latency": a,
        "b_cross_process_latency": b,
        "c_replay": c,
        "targets": targets_json(targets),
        "all_pass": all(t.passed for t in targets),
        "elapsed_s": time.perf_counter() - started,
    }
    print_report(result, targets, sizes)
    if parts != {"a", "b", "c"}:
        return 0  # a partial run is for looking, not for the results file
    write_result(result, output)
    return 1 if args.strict and not result["all_pass"] else 0


if __name__ == "__main__":
    sys.exit(main())
