"""Benchmark of udrflow branches: zero-copy creation, and merges that cost what changed.

Run it with ``.venv/bin/python benchmarks/bench_branches.py`` (``--quick``: ~20x smaller, a smoke
test). It prints a table with PASS/MISS per target, then one JSON object, which it also writes to
``benchmarks/results/bench_branches.json`` (``--quick`` writes ``bench_branches.quick.json``, which
is not committed).

Every table has the schema of bench_tables.py: ``id int64 (primary key), customer string, amount
float64``, loaded in one ``insert`` (ids 0..N-1, ``customer`` "c<n>" with n uniform in [0, 100000),
``amount`` uniform in [0, 1000) rounded to cents). Databases live in fresh directories under
``benchmarks/.tmp`` (the repository's file system), durability "sync" (the default), and are
removed afterwards.

(a) Branch creation. Two databases, SMALL (1k rows) and LARGE (1M rows), each loaded and then
    given 10 single-row upserts (a log tail after the load). Per repetition, alternately on each
    database, ``db.create_branch(name)`` from main's head is timed (``time.perf_counter``, the
    handle already open and its catalog built, as in any process that has used the database), and
    every file under the database directory is stat'ed before and after: "bytes written" is the
    sum of ``st_size`` of the files that are new plus the growth of files that existed (directories
    not counted; the new files' allocated blocks, ``st_blocks`` x 512, are reported for context:
    each small file takes at least one file-system block). The branch is deleted (untimed) after
    each repetition, so every repetition sees the same database. Targets: median time LARGE /
    median time SMALL <= 1.5, and bytes written < 1 KB on both.

(b) Merge cost. A database LARGE of 1M rows and one MEDIUM of 100k rows. Per repetition: create a
    branch ``dev`` at main's head; on dev, upsert C distinct random existing ids (new ``amount``)
    in 10 commits of C/10 rows (Arrow tables); for the three-way cases, main also upserts C other
    random ids (disjoint from dev's) in 10 commits after the fork; then ``db.checkpoint()`` on main
    (untimed, so that every repetition merges into the same shape of history), and the timed
    ``db.merge("dev")`` into main (one commit of C upserted rows). Then dev is deleted (untimed).
    The writer (main's handle) has written the table before, so its in-memory head state is warm,
    as in any long-running writer; the cost of a first merge in a freshly opened process (which
    first builds that state by reading the table once, O(table)) is reported separately
    (``cold_first_merge``) for context.

    Cases: fast-forward with C = 0.1%, 1% and 10% of LARGE (1k, 10k, 100k rows), fast-forward with
    C = 10k rows = 10% of MEDIUM, three-way with C = 10k on both LARGE and MEDIUM. Design of the
    proportionality claim: (i) the same C (10k) on a 10x larger table must cost about the same:
    target time(LARGE, 10k) / time(MEDIUM, 10k) <= 1.5, for fast-forward and three-way; (ii) on
    LARGE, time must grow with C: target time(10%) / time(1%) >= 5 (ideal 10; a merge whose cost
    followed the table, not the change, would give ~1). time(1%) / time(0.1%) and a least-squares
    fit time = fixed + per_row x C over the three LARGE fast-forward points are reported as context
    (at 1k rows the fixed cost of one durable commit weighs in).

Statistic: the median over repetitions (create: 21, 7 with --quick; merge: 7, 2 with --quick), every
merge case once per repetition in rotating order; the JSON keeps every value.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
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

TABLE = "t"
SCHEMA = pa.schema([pa.field("id", pa.int64(), nullable=False), ("customer", pa.string()),
                    ("amount", pa.float64())])
TAIL_COMMITS = 10
CHANGE_COMMITS = 10
PART_SLOW_S = 600.0


@dataclass(frozen=True)
class Sizes:
    small_rows: int    # (a)
    large_rows: int    # (a), (b)
    medium_rows: int   # (b)
    create_repetitions: int
    merge_repetitions: int


FULL = Sizes(small_rows=1_000, large_rows=1_000_000, medium_rows=100_000, create_repetitions=21,
             merge_repetitions=7)
QUICK = Sizes(small_rows=1_000, large_rows=50_000, medium_rows=5_000, create_repetitions=7, merge_repetitions=2)


# ---- helpers ---------------------------------------------------------------------------


def make_rows(ids: np.ndarray, rng: np.random.Generator) -> pa.Table:
    customer = pc.binary_join_element_wise(pa.scalar("c"), pc.cast(pa.array(rng.integers(0, 100_000, len(ids))),
                                                                   pa.string()), "")
    amount = np.round(rng.random(len(ids)) * 1000, 2)
    return pa.table([pa.array(ids.astype(np.int64)), customer, pa.array(amount)], schema=SCHEMA)


def build(path: str, rows: int, seed: int) -> udrflow.Database:
    """A database with ``rows`` rows loaded, then TAIL_COMMITS single-row upserts; left open."""
    rng = np.random.default_rng(seed)
    db = udrflow.open(path)
    db.create_table(TABLE, SCHEMA, primary_key=["id"])
    db.insert(TABLE, make_rows(np.arange(rows), rng))
    for i in range(TAIL_COMMITS):
        db.upsert(TABLE, [{"id": int(i % rows), "customer": "tail", "amount": float(i)}])
    db.tables()  # the catalog is built (as in any process that has used the database)
    return db


def stat_files(path: str) -> dict[str, tuple[int, int]]:
    out = {}
    for directory, _, names in os.walk(path):
        for name in names:
            full = os.path.join(directory, name)
            try:
                st = os.stat(full)
            except FileNotFoundError:
                continue
            out[full] = (st.st_size, st.st_blocks * 512)
    return out


def median(values: list[float]) -> float:
    return statistics.median(values)


# ---- (a) branch creation ---------------------------------------------------------------


def bench_create(scratch: Scratch, sizes: Sizes) -> dict:
    dbs = {"small": build(os.path.join(scratch.fresh("small"), "db.udr"), sizes.small_rows, 1),
           "large": build(os.path.join(scratch.fresh("large"), "db.udr"), sizes.large_rows, 2)}
    runs: dict[str, list[dict]] = {k: [] for k in dbs}
    try:
        for rep in range(sizes.create_repetitions):
            for kind in (("small", "large") if rep % 2 == 0 else ("large", "small")):
                db = dbs[kind]
                name = f"b{rep}"
                before = stat_files(db.path)
                gc.collect()
                t = time.perf_counter()
                fork = db.create_branch(name)
                elapsed = time.perf_counter() - t
                after = stat_files(db.path)
                new = {f: v for f, v in after.items() if f not in before}
                grown = sum(max(0, after[f][0] - before[f][0]) for f in before if f in after)
                runs[kind].append({
                    "s": elapsed, "fork": fork,
                    "bytes_written": sum(v[0] for v in new.values()) + grown,
                    "bytes_grown_existing": grown,
                    "new_files": {os.path.relpath(f, db.path): v[0] for f, v in sorted(new.items())},
                    "new_files_allocated_bytes": sum(v[1] for v in new.values()),
                })
                t = time.perf_counter()
                with udrflow.open(db.path, branch=name) as dev:  # context: opening it and reading its head
                    assert dev.read(TABLE).num_rows == db.read(TABLE).num_rows
                runs[kind][-1]["open_and_read_head_s"] = time.perf_counter() - t
                db.delete_branch(name)
        out: dict = {"rows": {"small": sizes.small_rows, "large": sizes.large_rows}, "runs": runs}
        for kind, rs in runs.items():
            out[f"{kind}_median_s"] = median([r["s"] for r in rs])
            out[f"{kind}_bytes_written_max"] = max(r["bytes_written"] for r in rs)
            out[f"{kind}_allocated_bytes_max"] = max(r["new_files_allocated_bytes"] for r in rs)
            out[f"{kind}_open_and_read_head_median_s"] = median([r["open_and_read_head_s"] for r in rs])
        out["ratio_time_large_vs_small"] = out["large_median_s"] / out["small_median_s"]
        out["files_written"] = sorted(runs["large"][0]["new_files"])
        return out
    finally:
        for db in dbs.values():
            db.close()


# ---- (b) merge cost ----------------------------------------------------------------------


def merge_once(db: udrflow.Database, rows: int, changed: int, three_way: bool, rng: np.random.Generator,
               check: bool) -> tuple[float, float]:
    """One repetition: branch, changes, checkpoint (untimed), merge (timed), delete the branch.
    Returns (merge seconds, setup seconds)."""
    t0 = time.perf_counter()
    name = "dev"
    db.create_branch(name)
    ids = rng.choice(rows, size=changed * (2 if three_way else 1), replace=False)
    mine, theirs = ids[:changed], ids[changed:]
    with udrflow.open(db.path, branch=name) as dev:
        for part in np.array_split(mine, CHANGE_COMMITS):
            dev.upsert(TABLE, make_rows(np.sort(part), rng))
        if three_way:
            for part in np.array_split(theirs, CHANGE_COMMITS):
                db.upsert(TABLE, make_rows(np.sort(part), rng))
        db.checkpoint()
        before = db.version
        gc.collect()
        setup = time.perf_counter() - t0
        t = time.perf_counter()
        report = db.merge(name)
        elapsed = time.perf_counter() - t
        want_kind = "three-way" if three_way else "fast-forward"
        assert report["kind"] == want_kind and report["rows"] == changed and report["version"] == before + 1, report
        if check:  # the merged rows are the branch's
            sample = pa.array(np.sort(mine[:1000]))
            got = db.read(TABLE).filter(pc.is_in(pc.field("id"), sample)).sort_by("id")
            exp = dev.read(TABLE).filter(pc.is_in(pc.field("id"), sample)).sort_by("id")
            assert got.equals(exp), "merged rows differ from the branch's"
    db.delete_branch(name)
    return elapsed, setup


def cold_first_merge(path: str, rows: int, changed: int, seed: int) -> dict:
    """A merge in a freshly opened process state (closed and reopened): it first builds the
    writer's head state of the table (one read of it)."""
    rng = np.random.default_rng(seed)
    with udrflow.open(path) as db:
        db.create_branch("cold")
        with udrflow.open(path, branch="cold") as dev:
            ids = rng.choice(rows, size=changed, replace=False)
            for part in np.array_split(ids, CHANGE_COMMITS):
                dev.upsert(TABLE, make_rows(np.sort(part), rng))
        db.checkpoint()
    with udrflow.open(path) as db:
        db.tables()
        t = time.perf_counter()
        report = db.merge("cold")
        elapsed = time.perf_counter() - t
        db.delete_branch("cold")
    return {"table_rows": rows, "changed_rows": changed, "kind": report["kind"], "merge_s": elapsed}


def bench_merge(scratch: Scratch, sizes: Sizes) -> dict:
    large_path = os.path.join(scratch.fresh("merge-large"), "db.udr")
    medium_path = os.path.join(scratch.fresh("merge-medium"), "db.udr")
    L, M, reps = sizes.large_rows, sizes.medium_rows, sizes.merge_repetitions
    c10k = M // 10  # 10k rows in the full run: 1% of LARGE, 10% of MEDIUM
    large, medium = build(large_path, L, 3), build(medium_path, M, 4)
    plan = [  # name, database, table rows, changed rows, three-way
        ("ff_large_0.1pct", large, L, L // 1000, False),
        ("ff_large_1pct", large, L, L // 100, False),
        ("ff_large_10pct", large, L, L // 10, False),
        ("3w_large_1pct", large, L, L // 100, True),
        ("ff_medium_10pct", medium, M, c10k, False),
        ("3w_medium_10pct", medium, M, c10k, True),
    ]
    runs: dict[str, dict[str, list[float]]] = {p[0]: {"merge_s": [], "setup_s": []} for p in plan}
    rng = np.random.default_rng(10)
    try:
        for rep in range(reps):  # every case once per repetition, in rotating order (drift hits all alike)
            for name, db, rows, changed, three_way in rotated(plan, rep):
                merge_s, setup_s = merge_once(db, rows, changed, three_way, rng, check=rep == 0)
                runs[name]["merge_s"].append(merge_s)
                runs[name]["setup_s"].append(setup_s)
            print(f"[merge repetition {rep + 1}/{reps} done]", file=sys.stderr, flush=True)
    finally:
        large.close()
        medium.close()
    cases = {}
    for name, _, rows, changed, three_way in plan:
        m = median(runs[name]["merge_s"])
        cases[name] = {"table_rows": rows, "changed_rows": changed,
                       "kind": "three-way" if three_way else "fast-forward", **runs[name], "median_s": m,
                       "per_changed_row_us": m / changed * 1e6}
    cold = cold_first_merge(large_path, L, L // 100, seed=14)
    ff = [cases[f"ff_large_{p}"] for p in ("0.1pct", "1pct", "10pct")]
    x = np.array([c["changed_rows"] for c in ff], float)
    y = np.array([c["median_s"] for c in ff])
    slope, intercept = np.polyfit(x, y, 1)
    fit = intercept + slope * x
    r2 = 1 - float(((y - fit) ** 2).sum()) / float(((y - y.mean()) ** 2).sum())
    return {
        "large_rows": L, "medium_rows": M, "change_commits": CHANGE_COMMITS, "cases": cases,
        "cold_first_merge_large_1pct": cold,
        "ratio_ff_large_1pct_vs_0_1pct": ff[1]["median_s"] / ff[0]["median_s"],
        "ratio_ff_large_10pct_vs_1pct": ff[2]["median_s"] / ff[1]["median_s"],
        "ratio_ff_same_change_large_vs_medium": cases["ff_large_1pct"]["median_s"]
        / cases["ff_medium_10pct"]["median_s"],
        "ratio_3w_same_change_large_vs_medium": cases["3w_large_1pct"]["median_s"]
        / cases["3w_medium_10pct"]["median_s"],
        "linear_fit_ff_large": {"fixed_s": float(intercept), "per_changed_row_us": float(slope) * 1e6, "r2": r2},
    }


# ---- report ------------------------------------------------------------------------------


def build_targets(a: dict, b: dict) -> list[Target]:
    return [
        Target("a_create_time_large_vs_small", a["ratio_time_large_vs_small"], "<=", 1.5),
        Target("a_create_bytes_written_large", a["large_bytes_written_max"], "<=", 1023),
        Target("a_create_bytes_written_small", a["small_bytes_written_max"], "<=", 1023),
        Target("b_merge_ff_same_change_large_vs_medium", b["ratio_ff_same_change_large_vs_medium"], "<=", 1.5),
        Target("b_merge_3w_same_change_large_vs_medium", b["ratio_3w_same_change_large_vs_medium"], "<=", 1.5),
        Target("b_merge_ff_large_10pct_vs_1pct", b["ratio_ff_large_10pct_vs_1pct"], ">=", 5.0),
    ]


def print_report(result: dict, targets: list[Target]) -> None:
    a, b, m = result["a_create"], result["b_merge"], result["machine"]
    line = "-" * 100
    print(line)
    print(f"udrflow branches benchmark ({result['mode']}), {result['timestamp']}")
    print(f"python {m['python']}, pyarrow {m['pyarrow_version']}, {m['cpu_count']} CPUs ({m['cpu_model']}), "
          f"fs {m['filesystem']['fstype']} on {m['filesystem']['device']}")
    print(line)
    print(f"(a) create_branch from main's head, median of {result['sizes']['create_repetitions']} "
          f"(durability sync; files written: {', '.join(a['files_written'])})")
    print(f"    {'database':>18s} {'time':>10s} {'bytes written':>14s} {'allocated':>10s} {'open+read head':>15s}")
    for kind in ("small", "large"):
        print(f"    {a['rows'][kind]:>13,} rows {a[f'{kind}_median_s'] * 1e3:8.2f} ms {a[f'{kind}_bytes_written_max']:>12d} B"
              f" {a[f'{kind}_allocated_bytes_max']:>8d} B {a[f'{kind}_open_and_read_head_median_s']:13.3f} s")
    print(f"    time large/small = {a['ratio_time_large_vs_small']:.2f}  "
          f"{verdict(targets, 'a_create_time_large_vs_small')};  bytes written (max): large "
          f"{verdict(targets, 'a_create_bytes_written_large')}, small {verdict(targets, 'a_create_bytes_written_small')}")
    print("    (allocated = the new files' st_blocks x 512: each small file takes a file-system block)")
    print(line)
    print(f"(b) merge into main, warm writer, median of {result['sizes']['merge_repetitions']}; "
          f"changes made in {b['change_commits']} commits per side")
    print(f"    {'case':24s} {'table rows':>11s} {'changed':>9s} {'merge':>10s} {'per row':>10s}")
    for key, c in b["cases"].items():
        print(f"    {key:24s} {c['table_rows']:>11,} {c['changed_rows']:>9,} {c['median_s'] * 1e3:8.1f} ms "
              f"{c['per_changed_row_us']:7.2f} us")
    cold = b["cold_first_merge_large_1pct"]
    print(f"    (context: the first merge after reopening, {cold['changed_rows']:,} of {cold['table_rows']:,} rows, "
          f"{cold['kind']}: {cold['merge_s'] * 1e3:.0f} ms, including one read of the table for the writer's state)")
    fit = b["linear_fit_ff_large"]
    print(f"    same change ({b['cases']['ff_medium_10pct']['changed_rows']:,} rows), 10x larger table: fast-forward "
          f"{b['ratio_ff_same_change_large_vs_medium']:.2f} {verdict(targets, 'b_merge_ff_same_change_large_vs_medium')}"
          f"; three-way {b['ratio_3w_same_change_large_vs_medium']:.2f} "
          f"{verdict(targets, 'b_merge_3w_same_change_large_vs_medium')}")
    print(f"    {b['large_rows']:,}-row table, time(10%)/time(1%) = {b['ratio_ff_large_10pct_vs_1pct']:.2f} (ideal 10) "
          f"{verdict(targets, 'b_merge_ff_large_10pct_vs_1pct')}; time(1%)/time(0.1%) = "
          f"{b['ratio_ff_large_1pct_vs_0_1pct']:.2f} (context)")
    print(f"    fit over the fast-forward points: {fit['fixed_s'] * 1e3:.1f} ms + {fit['per_changed_row_us']:.2f} us "
          f"x changed rows (R^2 {fit['r2']:.3f})")
    print(line)
    print_targets(targets, line, result["notes"])


def branches_sources() -> list[Path]:
    package = ROOT / "udrflow"
    return sorted([*package.glob("*.py"), *package.glob("log/*.py"), *package.glob("_ext/*.pyx")])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="~20x smaller sizes: a smoke test")
    parser.add_argument("--tmp-dir", type=Path, default=DEFAULT_TMP,
                        help="parent of the scratch directories; must be on the filesystem to measure")
    parser.add_argument("--output", type=Path, help="where to write the JSON (default benchmarks/results/"
                        "bench_branches.json, or bench_branches.quick.json with --quick)")
    parser.add_argument("--strict", action="store_true", help="exit with status 1 if any target is missed")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    output = args.output or RESULTS_DIR / ("bench_branches.quick.json" if args.quick else "bench_branches.json")

    started = time.perf_counter()
    scratch = Scratch(args.tmp_dir, "bench_branches")
    part_s: dict[str, float] = {}
    try:
        machine = machine_info(scratch.root, {
            "memory_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
            "pyarrow_version": pa.__version__, "numpy_version": np.__version__,
            "udrflow_version": udrflow.__version__,
            "udrflow_sources_sha256": sources_digest(branches_sources()),
        })
        t = time.perf_counter()
        a = bench_create(scratch, sizes)
        part_s["a"] = time.perf_counter() - t
        print(f"[part (a) done in {part_s['a']:.1f} s]", file=sys.stderr, flush=True)
        t = time.perf_counter()
        b = bench_merge(scratch, sizes)
        part_s["b"] = time.perf_counter() - t
        print(f"[part (b) done in {part_s['b']:.1f} s]", file=sys.stderr, flush=True)
    finally:
        scratch.close()
    machine["loadavg_end"] = list(os.getloadavg())
    targets = build_targets(a, b)
    result = {
        "benchmark": "bench_branches",
        "mode": "quick" if args.quick else "full",
        "timestamp": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "definitions": {
            "create_time": "time.perf_counter around db.create_branch(name) from main's head, handle open and "
                           "catalog built; median over repetitions alternating the two databases",
            "bytes_written": "sum of st_size of files new after create_branch + growth of existing files "
                             "(directories not counted); allocated = new files' st_blocks x 512, for context",
            "merge_time": "time.perf_counter around db.merge('dev') into main (warm writer); setup (branch, "
                          "changes, checkpoint) untimed; median over repetitions",
            "changed_rows": "distinct existing ids upserted on dev (and as many other ids on main for three-way), "
                            f"in {CHANGE_COMMITS} commits per side",
        },
        "machine": machine,
        "sizes": asdict(sizes),
        "a_create": a,
        "b_merge": b,
        "targets": targets_json(targets),
        "all_pass": all(t.passed for t in targets),
        "part_s": part_s,
        "notes": [f"part ({k}) took {s:.0f} s, more than {PART_SLOW_S:.0f} s" for k, s in part_s.items()
                  if s > PART_SLOW_S],
        "elapsed_s": time.perf_counter() - started,
    }
    print_report(result, targets)
    write_result(result, output)
    return 1 if args.strict and not result["all_pass"] else 0


if __name__ == "__main__":
    sys.exit(main())
