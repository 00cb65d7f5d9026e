"""Benchmark of udrflow's incremental views (issue 6): throughput and single-update latency of two
views over a stream of upserts, against DataFusion recomputation, per-item Bytewax and Pathway.

Run it with ``.venv/bin/python benchmarks/bench_ivm.py`` (``--quick``: 100k rows of state and 10
commits, a smoke test of well under a minute). It prints a table with PASS/MISS per target, then
one JSON object, which it also writes to ``benchmarks/results/bench_ivm.json`` (``--quick`` writes
``bench_ivm.quick.json`` instead, so a smoke test never overwrites the full results). Every
database lives in a fresh directory under ``benchmarks/.tmp`` (the repository's filesystem),
removed afterwards. ``--profile`` runs only udrflow's pipelined scenario and then its latency
samples, under cProfile (one profile per view thread and one of the writer, per phase), plus a
timeline of each latency sample through each view (source pickup, step, result commit); it
prints them, saves the profiles under ``benchmarks/.tmp/profiles`` and writes no results.

Workload (one seed, the same data for every contender):

- ``dim(k int64 primary key, cat int64)``: k in [0, 10000), cat = k % 100, loaded once.
- ``f(id int64 primary key, k int64, v int64)``: STATE rows preloaded (id = 0..STATE-1, k uniform
  over the 10k keys, v uniform in 1..99), so the views start from STATE rows of state.
- Updates: COMMITS commits of 10k rows each (1M updates = 100 commits in the full run). A commit
  is one ``db.upsert`` of 10k rows whose ids are drawn without replacement from the preloaded ids
  (so every update replaces an existing row: a -old/+new change to both views), with a new k
  (uniform over the 10k keys) and a new v (uniform in 1..99).
- V1 = ``f.group_by("k").agg(total=sum_("v"))``; V2 = ``f JOIN dim ON k``, ``group_by("cat")
  .agg(total=sum_("v"))``.

udrflow (durability "sync", the default: every commit is fsynced before it is acknowledged):

(a) pipelined: the views run in the background (``db.views.run()``: both in one thread, each
    round's results of both in one commit); the main thread commits the
    updates back to back; timed from the start of the first commit until both views' ``reached``
    is at or past the last commit's version (the view's result commit is then in the log and
    visible to ``read``). updates/s = updates / that time. Target input.
(b) catch-up: a second database, same load and views (created, then not running); the updates
    are committed first (that time alone is the "writer alone" commit rate), then
    ``v1.refresh()`` and ``v2.refresh()`` are timed; updates/s = updates / (sum of both).
(c) latency: in the database of (a), views still running, LATENCY single-row upserts
    (``db.upsert("f", [row])``: an existing id, a new k, a new v that differs from its current v),
    one after another with a 10 ms pause between them. Each sample is timed from just before
    ``db.upsert`` until the view's ``reached`` is at or past the commit's version (polled every
    ~50 us). Reported per view and for "both" (the later of the two), p50/p99; the target uses
    "both". After each sample (untimed) ``db.read`` of both views is checked against the expected
    totals of the groups it changed.

Correctness: at the end of (a)+(c) and of (b), each view's table equals both the view's
definition evaluated in batch (``view.batch(view.position)``, DataFusion) and the totals computed
by numpy from the workload; the bench exits with status 2 (after printing and writing the
results, with ``"correct": false``) if any differ.

Baselines (same process and run, same data):

- DataFusion recompute: the fact table is kept as an Arrow table; per commit, a vectorized
  upsert (drop the rows whose id is in the commit with ``pc.is_in``, append the commit), then the
  table is registered in a SessionContext (dim registered once) and both views are recomputed
  from scratch with SQL and collected as Arrow tables. updates/s = updates / total time of the
  commits, upsert included (any recomputing system must maintain the state it recomputes from);
  the query-only rate is reported too. No durability, no log.
- Bytewax per item (0.21, ``run_main``, one worker): a ``TestingSource`` (batch size 10k) yields
  (id, k, v) tuples: the STATE load rows, then the updates. ``stateful_map`` keyed by id keeps each
  row's (k, v) and emits its -old/+new contributions; ``flat_map``; ``stateful_map`` keyed by k sums
  V1; ``stateful_map`` keyed by cat (dim as a Python dict lookup: static, unlike udrflow's join,
  which favours Bytewax) sums V2; each view's outputs go to a sink that keeps the latest total per
  key in a dict. Timed from when the source yields the first update until ``run_main`` returns.
  No durability, no log.
- Pathway (in its own venv, ``benchmarks/.venv-pathway``, run in a subprocess by
  ``benchmarks/_ivm_pathway.py``; see that file): a ``pw.io.python`` upsert connector keyed by id,
  the same two views, outputs through ``pw.io.subscribe``; each of our commits is one Pathway
  commit; the load, then every update commit pushed back to back (timed until both views reflect
  the last one), then the same single-row latency samples. If the venv is missing or the run fails
  or times out, the JSON says why and the rest of the bench is unaffected.

The machine is shared and noisy and has few CPUs; each scenario runs once (as the issue asks);
the JSON keeps the raw per-commit and per-sample times.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime
import gc
import io
import json
import os
import pstats
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from importlib.metadata import version as dist_version
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
    sources_digest,
    targets_json,
    write_result,
)

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import udrflow  # noqa: E402
from udrflow.views import sum_  # noqa: E402

# k and cat are declared NOT NULL (the workload has no nulls): a group-by on NOT NULL keys gets
# a view table keyed by them (nullable keys give a table without a key, see docs/views.md).
FACT_SCHEMA = pa.schema([pa.field("id", pa.int64(), nullable=False), pa.field("k", pa.int64(), nullable=False),
                         ("v", pa.int64())])
DIM_SCHEMA = pa.schema([pa.field("k", pa.int64(), nullable=False), pa.field("cat", pa.int64(), nullable=False)])
KEYS = 10_000
CATS = 100
V_MAX = 99
SEED = 6
LATENCY_PAUSE_S = 0.010
WAIT_TIMEOUT_S = 900.0
PATHWAY_DIR = ROOT / "benchmarks" / ".venv-pathway"
PATHWAY_SCRIPT = ROOT / "benchmarks" / "_ivm_pathway.py"
PATHWAY_AUTOCOMMIT_MS = 5

Q_V1 = "SELECT k, sum(v) AS total FROM f GROUP BY k"
Q_V2 = "SELECT d.cat AS cat, sum(f.v) AS total FROM f JOIN dim d ON f.k = d.k GROUP BY d.cat"


@dataclass(frozen=True)
class Sizes:
    state_rows: int  # preloaded fact rows (the views' state)
    commits: int  # update commits
    commit_rows: int  # rows per update commit
    latency_samples: int
    pathway_timeout_s: float


FULL = Sizes(state_rows=1_000_000, commits=100, commit_rows=10_000, latency_samples=300, pathway_timeout_s=420.0)
QUICK = Sizes(state_rows=100_000, commits=10, commit_rows=10_000, latency_samples=30, pathway_timeout_s=120.0)


# ---- the workload ----------------------------------------------------------------------------


@dataclass
class Workload:
    init_k: np.ndarray
    init_v: np.ndarray
    upd_id: list[np.ndarray]
    upd_k: list[np.ndarray]
    upd_v: list[np.ndarray]
    lat_id: np.ndarray
    lat_k: np.ndarray
    lat_v: np.ndarray
    dim_cat: np.ndarray
    after_k: np.ndarray  # every row's k and v after the updates
    after_v: np.ndarray
    final_k: np.ndarray  # ... and after the latency samples too
    final_v: np.ndarray

    @property
    def updates(self) -> int:
        return sum(len(a) for a in self.upd_id)

    def dim_table(self) -> pa.Table:
        return pa.table([pa.array(np.arange(KEYS, dtype=np.int64)), pa.array(self.dim_cat)], schema=DIM_SCHEMA)

    def init_table(self) -> pa.Table:
        n = len(self.init_k)
        return pa.table([pa.array(np.arange(n, dtype=np.int64)), pa.array(self.init_k), pa.array(self.init_v)],
                        schema=FACT_SCHEMA)

    def commit_tables(self) -> list[pa.Table]:
        return [pa.table([pa.array(i), pa.array(k), pa.array(v)], schema=FACT_SCHEMA)
                for i, k, v in zip(self.upd_id, self.upd_k, self.upd_v, strict=True)]


def make_workload(sizes: Sizes, seed: int = SEED) -> Workload:
    rng = np.random.default_rng(seed)
    n = sizes.state_rows
    init_k = rng.integers(0, KEYS, n, dtype=np.int64)
    init_v = rng.integers(1, V_MAX + 1, n, dtype=np.int64)
    upd_id, upd_k, upd_v = [], [], []
    cur_k, cur_v = init_k.copy(), init_v.copy()
    for _ in range(sizes.commits):
        ids = rng.choice(n, size=sizes.commit_rows, replace=False).astype(np.int64)
        k = rng.integers(0, KEYS, sizes.commit_rows, dtype=np.int64)
        v = rng.integers(1, V_MAX + 1, sizes.commit_rows, dtype=np.int64)
        upd_id.append(ids)
        upd_k.append(k)
        upd_v.append(v)
        cur_k[ids], cur_v[ids] = k, v
    after_k, after_v = cur_k.copy(), cur_v.copy()
    lat_id = rng.integers(0, n, sizes.latency_samples, dtype=np.int64)
    lat_k = rng.integers(0, KEYS, sizes.latency_samples, dtype=np.int64)
    lat_v = np.empty(sizes.latency_samples, np.int64)
    for j, i in enumerate(lat_id.tolist()):
        x = int(rng.integers(1, V_MAX + 1))
        while x == cur_v[i]:  # every sample changes both views' totals (Pathway's wait relies on it)
            x = int(rng.integers(1, V_MAX + 1))
        lat_v[j] = x
        cur_k[i], cur_v[i] = lat_k[j], x
    dim_cat = (np.arange(KEYS, dtype=np.int64) % CATS).astype(np.int64)
    return Workload(init_k, init_v, upd_id, upd_k, upd_v, lat_id, lat_k, lat_v, dim_cat, after_k, after_v,
                    cur_k, cur_v)


def expected_views(w: Workload, k: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(V1 total per k, V2 total per cat) of the rows (k, v), as dense int64 arrays."""
    v1 = np.bincount(k, weights=v, minlength=KEYS).astype(np.int64)
    v2 = np.bincount(w.dim_cat[k], weights=v, minlength=CATS).astype(np.int64)
    return v1, v2


def dense(table: pa.Table, key: str, size: int) -> np.ndarray:
    out = np.zeros(size, np.int64)
    out[table.column(key).to_numpy()] = table.column("total").to_numpy()
    return out


def percentile_ms(samples: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(samples), q) * 1e3)


# ---- udrflow --------------------------------------------------------------------------------


def open_loaded(path: str, w: Workload) -> tuple[udrflow.Database, dict]:
    """A database with dim and the preloaded facts, and both views created (backfilled)."""
    db = udrflow.open(path)
    db.create_table("dim", DIM_SCHEMA, primary_key=["k"])
    db.create_table("f", FACT_SCHEMA, primary_key=["id"])
    t0 = time.perf_counter()
    db.insert("dim", w.dim_table())
    db.insert("f", w.init_table())
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    db.create_view("v1", db.stream("f").group_by("k").agg(total=sum_("v")))
    v1_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    db.create_view("v2", db.stream("f").join(db.stream("dim"), on="k").group_by("cat").agg(total=sum_("v")))
    v2_s = time.perf_counter() - t0
    return db, {"load_s": load_s, "create_view_v1_s": v1_s, "create_view_v2_s": v2_s, "loaded_version": db.version}


def wait_reached(views, version: int, timeout_s: float = WAIT_TIMEOUT_S) -> list[float]:
    """Wait until every view's ``reached`` >= version (``view.wait_for``: woken by the view's
    commit, no polling); the perf_counter time each got there. Views are waited for in turn, so
    a view that got there while an earlier one was waited for is stamped when that wait ended
    (an upper bound; "both", the later of the two, is exact)."""
    at: list[float] = []
    deadline = time.perf_counter() + timeout_s
    for v in views:
        try:
            ok = v.wait_for(version, timeout_s=max(0.0, deadline - time.perf_counter()))
        except BaseException as exc:
            raise RuntimeError(f"view {v.name} failed in the background") from exc
        if not ok:
            raise TimeoutError(f"views did not reach version {version} in {timeout_s:.0f} s: "
                               f"{[(w.name, w.reached) for w in views]}")
        at.append(time.perf_counter())
    return at


def check_views(db: udrflow.Database, w: Workload, k: np.ndarray, v: np.ndarray, label: str) -> dict:
    """Each view's table == its batch evaluation at its position == the numpy totals."""
    exp1, exp2 = expected_views(w, k, v)
    out: dict = {}
    for name, key, size, exp in (("v1", "k", KEYS, exp1), ("v2", "cat", CATS, exp2)):
        view = db.views[name]
        position = view.position
        table = view.read()
        batch = view.batch(position)
        cols = [(c, "ascending") for c in table.column_names]
        a = table.sort_by(cols)
        b = batch.select(table.column_names).cast(table.schema).sort_by(cols)
        equal_batch = a.equals(b)
        equal_numpy = bool(np.array_equal(dense(table, key, size), exp)) and table.num_rows == int((exp != 0).sum())
        out[name] = {"position": position, "rows": table.num_rows, "equals_batch": equal_batch,
                     "equals_numpy": equal_numpy}
        if not (equal_batch and equal_numpy):
            print(f"CORRECTNESS FAILURE ({label}): view {name} at input version {position}: equals batch "
                  f"evaluation: {equal_batch}, equals numpy totals: {equal_numpy}", file=sys.stderr, flush=True)
    out["correct"] = all(out[n]["equals_batch"] and out[n]["equals_numpy"] for n in ("v1", "v2"))
    return out


def udrflow_pipelined(scratch: Scratch, w: Workload, sizes: Sizes) -> dict:
    directory = scratch.fresh("udrflow-pipelined")
    path = os.path.join(directory, "db.udr")
    db, setup = open_loaded(path, w)
    try:
        views = [db.views["v1"], db.views["v2"]]
        out = {**setup, **pipelined_updates(db, views, w)}
        out["latency"] = udrflow_latency(db, views, w)
        for view in views:
            view.stop()
        out["correctness"] = check_views(db, w, w.final_k, w.final_v, "pipelined + latency")
        return out
    finally:
        try:
            db.views.stop()
        finally:
            db.close()
            scratch.discard(directory)


def pipelined_updates(db: udrflow.Database, views, w: Workload, writer_prof: cProfile.Profile | None = None) -> dict:
    """(a): start the views, commit every update back to back, wait until both views reflect
    the last one."""
    commits = w.commit_tables()
    db.views.run()  # both views in one thread: one commit per round for both
    wait_reached(views, db.version)
    time.sleep(0.2)
    gc.collect()
    commit_s, versions = [], []
    upsert = db.upsert
    if writer_prof is not None:
        writer_prof.enable()
    start = time.perf_counter()
    for table in commits:
        t0 = time.perf_counter()
        versions.append(upsert("f", table))
        commit_s.append(time.perf_counter() - t0)
    written = time.perf_counter()
    if writer_prof is not None:
        writer_prof.disable()
    at = wait_reached(views, versions[-1])
    end = max(at)
    elapsed = end - start
    return {"updates": w.updates,
            "elapsed_s": elapsed,
            "updates_per_s": w.updates / elapsed,
            "writer_s": written - start,
            "writer_updates_per_s": w.updates / (written - start),
            "lag_after_last_commit_s": end - written,
            "v1_done_s": at[0] - start,
            "v2_done_s": at[1] - start,
            "first_update_version": versions[0],
            "last_update_version": versions[-1],
            "commit_s": commit_s}


def udrflow_latency(db: udrflow.Database, views, w: Workload, trace: list | None = None,
                    samples: range | None = None) -> dict:
    """The latency samples of (c) (``samples``: which, default all), on ``db`` whose views run
    and reflect the updates and the samples before these; ``trace``, if given, receives (start,
    commit returned, version) per sample."""
    samples = samples or range(len(w.lat_id))
    cur_k, cur_v = w.after_k.copy(), w.after_v.copy()
    before = slice(0, samples.start)
    for i, k, v in zip(w.lat_id[before].tolist(), w.lat_k[before].tolist(), w.lat_v[before].tolist(), strict=True):
        cur_k[i], cur_v[i] = k, v
    exp1, exp2 = expected_views(w, cur_k, cur_v)
    both, per_view, commit_only, checked_bad = [], {v.name: [] for v in views}, [], []
    upsert = db.upsert
    gc.collect()
    these = slice(samples.start, samples.stop)
    for j, (i, k, v) in enumerate(zip(w.lat_id[these].tolist(), w.lat_k[these].tolist(), w.lat_v[these].tolist(),
                                      strict=True), start=samples.start):
        time.sleep(LATENCY_PAUSE_S)
        row = [{"id": i, "k": k, "v": v}]
        t0 = time.perf_counter()
        version = upsert("f", row)
        t1 = time.perf_counter()
        at = wait_reached(views, version, timeout_s=60.0)
        if trace is not None:
            trace.append((t0, t1, version))
        both.append(max(at) - t0)
        commit_only.append(t1 - t0)
        for view, a in zip(views, at, strict=True):
            per_view[view.name].append(a - t0)
        # Expected totals after this row, then check the groups it changed (untimed).
        old_k, old_v = int(cur_k[i]), int(cur_v[i])
        exp1[old_k] -= old_v
        exp1[k] += v
        exp2[w.dim_cat[old_k]] -= old_v
        exp2[w.dim_cat[k]] += v
        cur_k[i], cur_v[i] = k, v
        t1v = dense(db.read("v1"), "k", KEYS)
        t2v = dense(db.read("v2"), "cat", CATS)
        for name, got, exp, groups in (("v1", t1v, exp1, (old_k, k)), ("v2", t2v, exp2,
                                                                      (int(w.dim_cat[old_k]), int(w.dim_cat[k])))):
            if any(got[g] != exp[g] for g in groups):
                checked_bad.append({"sample": j, "view": name, "groups": list(groups)})
    if checked_bad:
        print(f"CORRECTNESS FAILURE (latency): {len(checked_bad)} samples read a wrong total right after "
              f"the view reported them reached, first: {checked_bad[0]}", file=sys.stderr, flush=True)
    return {
        "samples": len(both),
        "p50_ms": percentile_ms(both, 50),
        "p99_ms": percentile_ms(both, 99),
        "max_ms": max(both) * 1e3,
        "v1_p50_ms": percentile_ms(per_view["v1"], 50),
        "v1_p99_ms": percentile_ms(per_view["v1"], 99),
        "v2_p50_ms": percentile_ms(per_view["v2"], 50),
        "v2_p99_ms": percentile_ms(per_view["v2"], 99),
        "commit_only_p50_ms": percentile_ms(commit_only, 50),
        "commit_only_p99_ms": percentile_ms(commit_only, 99),
        "read_checks_failed": checked_bad,
        "both_s": both,
        "v1_s": per_view["v1"],
        "v2_s": per_view["v2"],
        "commit_only_s": commit_only,
    }


def udrflow_catchup(scratch: Scratch, w: Workload) -> dict:
    directory = scratch.fresh("udrflow-catchup")
    path = os.path.join(directory, "db.udr")
    commits = w.commit_tables()
    db, setup = open_loaded(path, w)
    try:
        gc.collect()
        upsert = db.upsert
        commit_s = []
        start = time.perf_counter()
        for table in commits:
            t0 = time.perf_counter()
            upsert("f", table)
            commit_s.append(time.perf_counter() - t0)
        writer_s = time.perf_counter() - start
        gc.collect()
        t0 = time.perf_counter()
        db.views["v1"].refresh()
        v1_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        db.views["v2"].refresh()
        v2_s = time.perf_counter() - t0
        return {**setup,
                "updates": w.updates,
                "writer_s": writer_s,
                "writer_updates_per_s": w.updates / writer_s,
                "writer_commits_per_s": len(commits) / writer_s,
                "refresh_v1_s": v1_s,
                "refresh_v2_s": v2_s,
                "refresh_s": v1_s + v2_s,
                "updates_per_s": w.updates / (v1_s + v2_s),
                "v1_updates_per_s": w.updates / v1_s,
                "v2_updates_per_s": w.updates / v2_s,
                "commit_s": commit_s,
                "correctness": check_views(db, w, w.after_k, w.after_v, "catch-up"),
                "latency_durability_none": latency_durability_none(db, path, w)}
    finally:
        db.close()
        scratch.discard(directory)


def latency_durability_none(db: udrflow.Database, path: str, w: Workload) -> dict:
    """Context for (c): the same latency samples with ``durability="none"`` (no fsync of the
    input commit nor of the views' result commits), on the caught-up database reopened: what the
    view machinery itself costs. Closes ``db``; returns the samples and the final check."""
    db.close()
    db = udrflow.open(path, durability="none")
    try:
        views = [db.views["v1"], db.views["v2"]]
        db.views.run()  # both views in one thread: one commit per round for both
        wait_reached(views, max(v.position for v in views))
        time.sleep(0.2)
        out = udrflow_latency(db, views, w)
        for view in views:
            view.stop()
        out["correctness"] = check_views(db, w, w.final_k, w.final_v, "latency, durability none")
        return out
    finally:
        db.views.stop()
        db.close()


# ---- baselines ------------------------------------------------------------------------------


def datafusion_recompute(w: Workload) -> dict:
    import datafusion

    ctx = datafusion.SessionContext()
    ctx.register_record_batches("dim", [w.dim_table().to_batches()])
    fact = w.init_table()
    upsert_s, query_s = [], []
    r1 = r2 = None
    gc.collect()
    for table in w.commit_tables():
        t0 = time.perf_counter()
        keep = pc.invert(pc.is_in(fact.column("id"), value_set=table.column("id")))
        fact = pa.concat_tables([fact.filter(keep), table])
        t1 = time.perf_counter()
        ctx.deregister_table("f")
        ctx.register_record_batches("f", [fact.to_batches()])
        r1 = ctx.sql(Q_V1).to_arrow_table()
        r2 = ctx.sql(Q_V2).to_arrow_table()
        t2 = time.perf_counter()
        upsert_s.append(t1 - t0)
        query_s.append(t2 - t1)
    exp1, exp2 = expected_views(w, w.after_k, w.after_v)
    correct = bool(np.array_equal(dense(r1, "k", KEYS), exp1) and np.array_equal(dense(r2, "cat", CATS), exp2))
    total = sum(upsert_s) + sum(query_s)
    return {"updates": w.updates, "elapsed_s": total, "updates_per_s": w.updates / total,
            "upsert_s": sum(upsert_s), "query_s": sum(query_s), "query_only_updates_per_s": w.updates / sum(query_s),
            "per_commit_upsert_s": upsert_s, "per_commit_query_s": query_s, "correct": correct,
            "datafusion_version": datafusion.__version__}


def bytewax_per_item(w: Workload) -> dict:
    import bytewax.operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.outputs import DynamicSink, StatelessSinkPartition
    from bytewax.testing import TestingSource, run_main

    class DictPartition(StatelessSinkPartition):
        def __init__(self, store: dict) -> None:
            self.store = store

        def write_batch(self, items) -> None:
            self.store.update(items)

    class DictSink(DynamicSink):
        def __init__(self, store: dict) -> None:
            self.store = store

        def build(self, step_id, worker_index, worker_count):
            return DictPartition(self.store)

    cat_of = dict(enumerate(w.dim_cat.tolist()))
    n = len(w.init_k)
    load = list(zip(range(n), w.init_k.tolist(), w.init_v.tolist(), strict=True))
    updates = [row for i, k, v in zip(w.upd_id, w.upd_k, w.upd_v, strict=True)
               for row in zip(i.tolist(), k.tolist(), v.tolist(), strict=True)]
    mark: dict[str, float] = {}

    def items():
        yield from load
        mark["updates_start"] = time.perf_counter()
        yield from updates

    def track(old, row):
        _id, k, v = row
        if old is None:
            return (k, v), [(k, v)]
        return (k, v), [(old[0], -old[1]), (k, v)]

    def add(total, delta):
        total = (total or 0) + delta[1]
        return total, total

    v1_out: dict = {}
    v2_out: dict = {}
    flow = Dataflow("bench_ivm_bytewax")
    rows = op.input("in", flow, TestingSource(items(), batch_size=10_000))
    by_id = op.key_on("by_id", rows, lambda r: str(r[0]))
    contrib = op.flat_map("contrib", op.stateful_map("row", by_id, track), lambda kv: kv[1])
    v1 = op.stateful_map("sum_k", op.key_on("by_k", contrib, lambda d: str(d[0])), add)
    v2 = op.stateful_map("sum_cat", op.key_on("by_cat", contrib, lambda d: str(cat_of[d[0]])), add)
    op.output("v1", v1, DictSink(v1_out))
    op.output("v2", v2, DictSink(v2_out))
    gc.collect()
    start = time.perf_counter()
    run_main(flow)
    end = time.perf_counter()
    elapsed = end - mark["updates_start"]
    exp1, exp2 = expected_views(w, w.after_k, w.after_v)
    got1 = np.zeros(KEYS, np.int64)
    for k, t in v1_out.items():
        got1[int(k)] = t
    got2 = np.zeros(CATS, np.int64)
    for c, t in v2_out.items():
        got2[int(c)] = t
    correct = bool(np.array_equal(got1, exp1) and np.array_equal(got2, exp2))
    return {"updates": w.updates, "load_rows": n, "load_s": mark["updates_start"] - start, "elapsed_s": elapsed,
            "updates_per_s": w.updates / elapsed, "correct": correct, "bytewax_version": dist_version("bytewax")}


def bytewax_plain(w: Workload) -> dict:
    """Context: the simplest per-item Bytewax aggregation, sum(v) by k of the update rows taken
    as inserts (no row state, no retraction, no V2): Bytewax's per-item speed on this machine,
    not a computation of the views."""
    import bytewax.operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.outputs import DynamicSink, StatelessSinkPartition
    from bytewax.testing import TestingSource, run_main

    class DictPartition(StatelessSinkPartition):
        def __init__(self, store: dict) -> None:
            self.store = store

        def write_batch(self, items) -> None:
            self.store.update(items)

    class DictSink(DynamicSink):
        def __init__(self, store: dict) -> None:
            self.store = store

        def build(self, step_id, worker_index, worker_count):
            return DictPartition(self.store)

    def add(total, row):
        total = (total or 0) + row[1]
        return total, total

    rows = [row for k, v in zip(w.upd_k, w.upd_v, strict=True) for row in zip(k.tolist(), v.tolist(), strict=True)]
    out: dict = {}
    flow = Dataflow("bench_ivm_bytewax_plain")
    inp = op.input("in", flow, TestingSource(rows, batch_size=10_000))
    sums = op.stateful_map("sum_k", op.key_on("by_k", inp, lambda r: str(r[0])), add)
    op.output("out", sums, DictSink(out))
    gc.collect()
    start = time.perf_counter()
    run_main(flow)
    elapsed = time.perf_counter() - start
    expect = np.bincount(np.concatenate(w.upd_k), weights=np.concatenate(w.upd_v), minlength=KEYS)
    correct = all(out.get(str(k), 0) == int(t) for k, t in enumerate(expect.tolist()))
    return {"items": len(rows), "elapsed_s": elapsed, "items_per_s": len(rows) / elapsed, "correct": correct}


def pathway_run(scratch: Scratch, w: Workload, sizes: Sizes) -> dict:
    python = PATHWAY_DIR / "bin" / "python"
    if not python.exists():
        return {"available": False, "reason": f"{python} not found: create it with `python3.11 -m venv "
                f"benchmarks/.venv-pathway && benchmarks/.venv-pathway/bin/pip install pathway`"}
    directory = scratch.fresh("pathway")
    data = os.path.join(directory, "workload.npz")
    result = os.path.join(directory, "result.json")
    np.savez(data, init_k=w.init_k, init_v=w.init_v, upd_id=np.concatenate(w.upd_id),
             upd_k=np.concatenate(w.upd_k), upd_v=np.concatenate(w.upd_v), commit_rows=sizes.commit_rows,
             lat_id=w.lat_id, lat_k=w.lat_k, lat_v=w.lat_v, dim_cat=w.dim_cat)
    cmd = [str(python), str(PATHWAY_SCRIPT), data, result, str(PATHWAY_AUTOCOMMIT_MS)]
    env = {**os.environ, "PATHWAY_MONITORING_SERVER": "", "PYTHONPATH": ""}
    try:
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=sizes.pathway_timeout_s, env=env,
                              cwd=directory)
        wall = time.perf_counter() - t0
        if proc.returncode != 0 or not os.path.exists(result):
            return {"available": False, "reason": f"the Pathway run exited with status {proc.returncode}",
                    "stderr_tail": proc.stderr[-3000:]}
        with open(result) as f:
            out = json.load(f)
        if "error" in out:
            return {"available": False, "reason": f"the Pathway run failed: {out['error']}",
                    "stderr_tail": proc.stderr[-3000:], "partial": {k: v for k, v in out.items() if k != "latency_s"}}
        lat = out.pop("latency_s")
        out.update({"available": True, "wall_s": wall, "autocommit_duration_ms": PATHWAY_AUTOCOMMIT_MS,
                    "latency": {"samples": len(lat), "p50_ms": percentile_ms(lat, 50),
                                "p99_ms": percentile_ms(lat, 99), "max_ms": max(lat) * 1e3, "both_s": lat}})
        return out
    except subprocess.TimeoutExpired as exc:
        err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        return {"available": False, "reason": f"the Pathway run timed out after {sizes.pathway_timeout_s:.0f} s",
                "stderr_tail": err[-3000:]}
    except OSError as exc:
        return {"available": False, "reason": f"could not run Pathway: {exc!r}"}
    finally:
        scratch.discard(directory)


# ---- profiling ------------------------------------------------------------------------------


def profile_run(scratch: Scratch, w: Workload, directory: Path) -> dict:
    """--profile: (a) with cProfile on each view thread and on the writer; then the latency
    samples of (c) with a timeline of each view's steps (when its source picked the commit up,
    when its sink got the step's result, when the result commit returned): the first half
    without a profiler, the second half with cProfile on the views (restarted) and the writer."""
    import udrflow.views._view as view_module

    path = os.path.join(scratch.fresh("udrflow-profile"), "db.udr")
    db, setup = open_loaded(path, w)
    out: dict = {"setup": setup}
    try:
        views = [db.views["v1"], db.views["v2"]]
        profiles = profile_threads(views)
        profiles["writer"] = cProfile.Profile()
        out["pipelined"] = pipelined_updates(db, views, w, writer_prof=profiles["writer"])
        out["pipelined"].pop("commit_s")
        for view in views:
            view.stop()
        print("######## (a) pipelined: cProfile of each view thread and of the writer ########")
        out["pipelined_profiles"] = save_profiles(profiles, directory, "pipelined")
        out["pipelined_correctness"] = check_views(db, w, w.after_k, w.after_v, "profile, pipelined")

        events: dict[str, list] = {v.name: [] for v in views}
        original_poll = view_module._ViewReader.poll
        original_commit = view_module._commit_views

        def poll(self):
            batch = original_poll(self)
            if batch:
                events[self._view.name].append(("source", time.perf_counter(), batch[0][0]))
            return batch

        def commit_views(db_, entries):
            t = time.perf_counter()
            original_commit(db_, entries)
            done = time.perf_counter()
            for view, version, _delta, _force in entries:
                events[view.name].append(("sink", t, version, done))

        view_module._ViewReader.poll = poll
        view_module._commit_views = commit_views
        # First half of the samples: the timeline only (no profiler distorting it).
        half = len(w.lat_id) // 2
        trace: list = []
        db.views.run()  # both views in one thread: one commit per round for both
        wait_reached(views, db.version)
        time.sleep(0.2)
        lat = udrflow_latency(db, views, w, trace=trace, samples=range(0, half))
        for view in views:
            view.stop()
        out["latency"] = {k: v for k, v in lat.items() if not k.endswith("_s")}
        out["latency_timeline"] = latency_timeline(trace, events)
        # Second half: under cProfile (views restarted with a profiler in their threads).
        profiles = profile_threads(views)
        profiles["writer"] = cProfile.Profile()
        trace = []
        db.views.run()  # both views in one thread: one commit per round for both
        wait_reached(views, db.version)
        time.sleep(0.2)
        profiles["writer"].enable()
        lat = udrflow_latency(db, views, w, trace=trace, samples=range(half, len(w.lat_id)))
        profiles["writer"].disable()
        for view in views:
            view.stop()
        view_module._ViewReader.poll = original_poll
        view_module._commit_views = original_commit
        print("######## (c) latency: cProfile of each view thread and of the writer ########")
        out["latency_profiles"] = save_profiles(profiles, directory, "latency")
        out["latency_profiled"] = {k: v for k, v in lat.items() if not k.endswith("_s")}
        out["latency_timeline_profiled"] = latency_timeline(trace, events)
        out["latency_correctness"] = check_views(db, w, w.final_k, w.final_v, "profile, latency")
        out["correct"] = out["pipelined_correctness"]["correct"] and out["latency_correctness"]["correct"]
        return out
    finally:
        try:
            db.views.stop()
        finally:
            db.close()


def profile_threads(views) -> dict[str, cProfile.Profile]:
    """A profiler enabled in the views' thread (``db.views.run()`` runs both in one thread, on
    ``_Group._run``: patched for the next start)."""
    import udrflow.views._view as view_module

    prof = cProfile.Profile()
    inner = view_module._Group._run

    def wrapped(self) -> None:
        view_module._Group._run = inner  # only the next start is profiled
        prof.enable()
        try:
            inner(self)
        finally:
            prof.disable()

    view_module._Group._run = wrapped
    return {"views": prof}


def latency_timeline(trace: list, events: dict[str, list]) -> dict:
    """Per view, medians (ms) of: commit returned -> the view's source read it (pickup); ->
    the sink got the step's result (step); -> the view's result commit returned (commit)."""
    out = {}
    for name, evs in events.items():
        sources = [(t, v) for kind, t, v, *_ in evs if kind == "source"]
        sinks = [(t, v, t_end) for kind, t, v, *rest in evs if kind == "sink" for t_end in rest]
        parts: dict[str, list[float]] = {"pickup_ms": [], "step_ms": [], "commit_ms": [], "total_ms": []}
        for t0, t_committed, version in trace:
            src = next(((t, v) for t, v in sources if v >= version and t >= t0), None)
            snk = next(((t, v, te) for t, v, te in sinks if v >= version and t >= t0), None)
            if src is None or snk is None:
                continue
            parts["pickup_ms"].append((src[0] - t_committed) * 1e3)
            parts["step_ms"].append((snk[0] - src[0]) * 1e3)
            parts["commit_ms"].append((snk[2] - snk[0]) * 1e3)
            parts["total_ms"].append((snk[2] - t0) * 1e3)
        out[name] = {k: (statistics.median(v) if v else None) for k, v in parts.items()}
        out[name]["samples"] = len(parts["total_ms"])
    out["input_commit_ms"] = statistics.median((t1 - t0) * 1e3 for t0, t1, _ in trace)
    return out


def save_profiles(profiles: dict[str, cProfile.Profile], directory: Path, phase: str) -> dict:
    directory.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, prof in profiles.items():
        path = directory / f"bench_ivm_{phase}_{name}.prof"
        prof.dump_stats(path)
        for sort in ("tottime", "cumulative"):
            text = io.StringIO()
            pstats.Stats(prof, stream=text).strip_dirs().sort_stats(sort).print_stats(25)
            print(f"==== {phase}: profile of {name}, by {sort} ====\n{text.getvalue()}")
        out[name] = str(path)
    return out


# ---- report ----------------------------------------------------------------------------------


def build_targets(r: dict) -> tuple[list[Target], list[Target]]:
    pipe = r["udrflow"]["pipelined"]
    targets = [
        Target("pipelined_vs_datafusion_recompute", pipe["updates_per_s"] / r["datafusion"]["updates_per_s"],
               ">=", 2.0),
        Target("pipelined_vs_bytewax_per_item", pipe["updates_per_s"] / r["bytewax"]["updates_per_s"], ">=", 10.0),
        Target("latency_p50_ms", pipe["latency"]["p50_ms"], "<=", 2.0),
    ]
    stretch = [Target("stretch_pipelined_updates_per_s", pipe["updates_per_s"], ">=", 1_000_000),
               # Context, not the target: the same 10x against Bytewax's plainest per-item
               # aggregation (inserts only, one view), i.e. against Bytewax's per-item speed itself.
               Target("context_pipelined_vs_bytewax_plain_10x",
                      pipe["updates_per_s"] / r["bytewax"]["plain_sum_by_k"]["items_per_s"], ">=", 10.0)]
    pw = r["pathway"]
    if pw.get("available"):
        stretch.append(Target("stretch_latency_p50_ms_vs_pathway", pipe["latency"]["p50_ms"], "<=",
                              pw["latency"]["p50_ms"]))
    return targets, stretch


def print_report(result: dict, targets: list[Target], stretch: list[Target]) -> None:
    u, df, bw, pw = result["udrflow"], result["datafusion"], result["bytewax"], result["pathway"]
    pipe, cu, lat = u["pipelined"], u["catchup"], u["pipelined"]["latency"]
    m = result["machine"]
    s = result["sizes"]
    line = "-" * 104

    def mark(t: Target) -> str:
        return f"{'PASS' if t.passed else 'MISS'} (target {t.op} {t.target:,.4g})"

    tgt = {t.name: t for t in targets + stretch}
    print(line)
    print(f"udrflow incremental views benchmark ({result['mode']}), {result['timestamp']}")
    print(f"python {m['python']}, {m['cpu_count']} CPUs ({m['cpu_model']}), bytewax {m['bytewax_version']}, "
          f"datafusion {m['datafusion_version']}, fs {m['filesystem']['fstype']}")
    print(f"{s['state_rows']:,} rows of state, {s['commits']} commits x {s['commit_rows']:,} upserts = "
          f"{pipe['updates']:,} updates; V1 = sum(v) by k (10k keys), V2 = sum(v) by cat over f JOIN dim")
    print(line)
    print(f"  {'throughput (updates/s)':58s} {'value':>14s}")
    print(f"  {'udrflow pipelined (commit -> both views committed)':58s} {pipe['updates_per_s']:14,.0f}")
    print(f"  {'  writer during it (commit rate with views running)':58s} {pipe['writer_updates_per_s']:14,.0f}")
    print(f"  {'  views done after the last commit (s)':58s} {pipe['lag_after_last_commit_s']:14.2f}")
    print(f"  {'udrflow catch-up (refresh v1 + refresh v2)':58s} {cu['updates_per_s']:14,.0f}")
    print(f"  {'  refresh v1 / refresh v2 alone':58s} {cu['v1_updates_per_s']:14,.0f} / "
          f"{cu['v2_updates_per_s']:,.0f}")
    print(f"  {'udrflow writer alone (sync commits, no views running)':58s} {cu['writer_updates_per_s']:14,.0f}")
    print(f"  {'DataFusion recompute of both views per commit':58s} {df['updates_per_s']:14,.0f}")
    print(f"  {'  (queries only, without maintaining the Arrow state)':58s} {df['query_only_updates_per_s']:14,.0f}")
    print(f"  {'Bytewax per-item stateful_maps (both views, -old/+new)':58s} {bw['updates_per_s']:14,.0f}")
    print(f"  {'  context: plain per-item sum by k of inserts (items/s)':58s} "
          f"{bw['plain_sum_by_k']['items_per_s']:14,.0f}")
    if pw.get("available"):
        print(f"  {'Pathway ' + pw['pathway_version'] + ' (python upsert connector, subscribe)':58s} "
              f"{pw['updates_per_s']:14,.0f}")
    else:
        print(f"  Pathway: not measured: {pw['reason']}")
    print(line)
    print(f"  single-row upsert -> visible in both views, {lat['samples']} samples, {s['state_rows']:,} rows of state")
    print(f"  {'udrflow p50 / p99 (ms)':58s} {lat['p50_ms']:8.2f} / {lat['p99_ms']:.2f}")
    print(f"  {'  v1 alone, v2 alone: p50 (ms)':58s} {lat['v1_p50_ms']:8.2f} / {lat['v2_p50_ms']:.2f}")
    print(f"  {'  the durable commit alone: p50 / p99 (ms)':58s} {lat['commit_only_p50_ms']:8.2f} / "
          f"{lat['commit_only_p99_ms']:.2f}")
    ln = cu["latency_durability_none"]
    print(f"  {'context: udrflow with durability none: p50 / p99 (ms)':58s} {ln['p50_ms']:8.2f} / "
          f"{ln['p99_ms']:.2f}")
    print(f"  {'  v1 alone, v2 alone: p50 (ms)':58s} {ln['v1_p50_ms']:8.2f} / {ln['v2_p50_ms']:.2f}")
    if pw.get("available"):
        print(f"  {'Pathway p50 / p99 (ms)':58s} {pw['latency']['p50_ms']:8.2f} / {pw['latency']['p99_ms']:.2f}")
    print(line)
    t = tgt["pipelined_vs_datafusion_recompute"]
    print(f"  udrflow pipelined / DataFusion recompute = {t.value:6.2f}   {mark(t)}")
    t = tgt["pipelined_vs_bytewax_per_item"]
    print(f"  udrflow pipelined / Bytewax per item     = {t.value:6.2f}   {mark(t)}")
    t = tgt["context_pipelined_vs_bytewax_plain_10x"]
    print(f"  (context: / plain per-item Bytewax       = {t.value:6.2f}   {mark(t)})")
    t = tgt["latency_p50_ms"]
    print(f"  udrflow latency p50 (ms)                 = {t.value:6.2f}   {mark(t)}")
    t = tgt["stretch_pipelined_updates_per_s"]
    print(f"  stretch: udrflow pipelined updates/s     = {t.value:,.0f}   {mark(t)}")
    if "stretch_latency_p50_ms_vs_pathway" in tgt:
        t = tgt["stretch_latency_p50_ms_vs_pathway"]
        print(f"  stretch: latency p50 below Pathway's     = {t.value:6.2f}   {mark(t)}")
    print(line)
    for label, ok in result["correctness"].items():
        print(f"  correctness {label}: {'ok' if ok else 'FAILED'}")
    print(f"targets: {sum(t.passed for t in targets)}/{len(targets)} pass; stretch and context "
          f"{sum(t.passed for t in stretch)}/{len(stretch)}")
    print(line)


def ivm_machine_info(scratch_root: str) -> dict:
    import datafusion

    package = ROOT / "udrflow"
    files = sorted([*package.glob("*.py"), *package.glob("log/*.py"), *package.glob("views/*.py"),
                    *package.glob("_ext/*.pyx")])
    return machine_info(scratch_root, {
        "memory_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
        "pyarrow_version": pa.__version__,
        "numpy_version": np.__version__,
        "bytewax_version": dist_version("bytewax"),
        "datafusion_version": datafusion.__version__,
        "udrflow_version": udrflow.__version__,
        "udrflow_sources_sha256": sources_digest(files),
    })


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="100k rows of state, 10 commits: a smoke test")
    parser.add_argument("--profile", action="store_true", help="only udrflow's pipelined run and latency samples, "
                        "under cProfile; prints the profiles, saves them under benchmarks/.tmp/profiles, writes no "
                        "results")
    parser.add_argument("--no-pathway", action="store_true", help="skip the Pathway baseline")
    parser.add_argument("--tmp-dir", type=Path, default=DEFAULT_TMP,
                        help="parent of the scratch directories; must be on the filesystem to measure")
    parser.add_argument("--output", type=Path, help="where to write the JSON (default benchmarks/results/"
                        "bench_ivm.json, or bench_ivm.quick.json with --quick)")
    parser.add_argument("--strict", action="store_true", help="exit with status 1 if any target is missed")
    args = parser.parse_args(argv)

    sizes = QUICK if args.quick else FULL
    output = args.output or RESULTS_DIR / ("bench_ivm.quick.json" if args.quick else "bench_ivm.json")
    started = time.perf_counter()
    w = make_workload(sizes)
    scratch = Scratch(args.tmp_dir, "bench_ivm")
    part_s: dict[str, float] = {}

    def part(name: str, fn):
        t = time.perf_counter()
        out = fn()
        part_s[name] = time.perf_counter() - t
        print(f"[{name} done in {part_s[name]:.1f} s]", file=sys.stderr, flush=True)
        return out

    try:
        machine = ivm_machine_info(scratch.root)
        if args.profile:
            out = profile_run(scratch, w, args.tmp_dir / "profiles")
            print(json.dumps(out, indent=2))
            return 0 if out["correct"] else 2
        pipelined = part("udrflow pipelined + latency", lambda: udrflow_pipelined(scratch, w, sizes))
        catchup = part("udrflow catch-up", lambda: udrflow_catchup(scratch, w))
        df = part("datafusion recompute", lambda: datafusion_recompute(w))
        bw = part("bytewax per item", lambda: bytewax_per_item(w))
        bw["plain_sum_by_k"] = part("bytewax plain (context)", lambda: bytewax_plain(w))
        pw = ({"available": False, "reason": "skipped (--no-pathway)"} if args.no_pathway
              else part("pathway", lambda: pathway_run(scratch, w, sizes)))
    finally:
        scratch.close()
    machine["loadavg_end"] = list(os.getloadavg())
    correctness = {
        "udrflow pipelined + latency (views == batch == numpy)": pipelined["correctness"]["correct"],
        "udrflow latency reads": not pipelined["latency"]["read_checks_failed"],
        "udrflow catch-up (views == batch == numpy)": catchup["correctness"]["correct"],
        "datafusion recompute == numpy": df["correct"],
        "bytewax == numpy": bw["correct"],
        "bytewax plain == numpy": bw["plain_sum_by_k"]["correct"],
        "udrflow latency durability none (views == batch == numpy)":
            catchup["latency_durability_none"]["correctness"]["correct"],
        "udrflow latency durability none reads": not catchup["latency_durability_none"]["read_checks_failed"],
    }
    if pw.get("available"):
        correctness["pathway == numpy"] = pw["correct"]
    result = {
        "benchmark": "bench_ivm",
        "mode": "quick" if args.quick else "full",
        "timestamp": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "definitions": {
            "workload": f"dim(k pk, cat = k % {CATS}), {KEYS:,} rows; f(id pk, k, v) preloaded with "
                        f"{sizes.state_rows:,} rows (k uniform over {KEYS:,} keys, v uniform in 1..{V_MAX}); seed {SEED}",
            "updates": f"{sizes.commits} commits x {sizes.commit_rows:,} upserts of existing ids (drawn without "
                       f"replacement per commit), new k and v: every update is -old/+new for both views",
            "views": "V1 = sum(v) by k; V2 = sum(v) by cat over f JOIN dim ON k",
            "udrflow_pipelined": "views running (db.views.run(): both in one thread); time from the start of the first commit until both "
                                 "views' reached >= the last commit's version (result committed, visible to read); "
                                 "durability sync",
            "udrflow_catchup": "separate database; commits first (writer alone), then view.refresh() of v1 and of "
                               "v2, timed; updates / (refresh v1 + refresh v2)",
            "latency": f"views running, {sizes.state_rows:,} rows of state; single-row db.upsert of an existing id "
                       f"(new k, new v != old v), {LATENCY_PAUSE_S * 1e3:.0f} ms apart; from before db.upsert to "
                       f"view.reached >= its version (view.wait_for, woken by the view's commit); 'both' = the later "
                       f"of the two views; every sample's changed groups checked with db.read afterwards",
            "datafusion_recompute": "Arrow table state; per commit: vectorized upsert (is_in filter + concat), "
                                    "register, run both view queries, collect; timed in total (upsert included)",
            "latency_durability_none": "context: the same latency samples on the catch-up database reopened "
                                       "with durability none (no fsync of input or view commits)",
            "bytewax_plain_sum_by_k": "context: per-item sum of v by k over the update rows as inserts, one "
                                      "key_on + stateful_map, dict sink (Bytewax's per-item speed, not the views)",
            "bytewax_per_item": "run_main, TestingSource batch 10k; stateful_map by id (old row) -> flat_map "
                                "(-old/+new) -> stateful_map by k (V1) and by cat (V2, dim as a dict); dict sinks; "
                                "timed from the first update item to the end; no log, no durability",
            "pathway": "subprocess in benchmarks/.venv-pathway: pw.io.python upsert connector keyed by id, one "
                       "Pathway commit per udrflow commit, pw.io.subscribe outputs; throughput timed from the first "
                       "update pushed to the closed time where both views reflect the last commit; latency from "
                       "next()+commit() to the closed time where both views reflect the row",
        },
        "machine": machine,
        "sizes": asdict(sizes),
        "udrflow": {"pipelined": pipelined, "catchup": catchup},
        "datafusion": df,
        "bytewax": bw,
        "pathway": pw,
        "correctness": correctness,
        "correct": all(correctness.values()),
        "part_s": part_s,
        "elapsed_s": time.perf_counter() - started,
    }
    targets, stretch = build_targets(result)
    result["targets"] = targets_json(targets)
    result["stretch_targets"] = targets_json(stretch)
    result["all_pass"] = all(t.passed for t in targets)
    print_report(result, targets, stretch)
    write_result(result, output)
    if not result["correct"]:
        print("CORRECTNESS FAILURE: see 'correctness' above and in the JSON", file=sys.stderr)
        return 2
    return 1 if args.strict and not result["all_pass"] else 0


if __name__ == "__main__":
    sys.exit(main())
