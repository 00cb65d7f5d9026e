"""The Pathway baseline of bench_ivm.py, run in its own interpreter (benchmarks/.venv-pathway).

Usage: ``python _ivm_pathway.py DATA.npz OUT.json [AUTOCOMMIT_MS]``. DATA.npz holds the workload written by
bench_ivm.py (the same arrays udrflow and the other baselines get); OUT.json receives the
measurements. Only numpy and pathway are needed here, nothing of udrflow.

The program: fact rows enter through a ``pw.io.python`` ConnectorSubject in an ``upsert``
session keyed by ``id`` (a row with a known id replaces the previous one, as ``db.upsert``
does); dim is a static table (``pw.debug.table_from_pandas``). V1 = sum(v) by k, V2 = sum(v)
by cat over fact JOIN dim on k, both observed with ``pw.io.subscribe``. Each udrflow commit
ends with a Pathway commit (``subject.commit()``); the connector's autocommit interval is
AUTOCOMMIT_MS (0: none; bench_ivm.py passes 5, which measured faster than none here). The subscriber keeps every
view's rows in a dict (the "view table") plus the running total of each view, and on each
closed time compares the totals with the totals the workload must reach after the commit
being waited for; the subject thread waits on that event. Phases:

1. load: the initial fact rows, one commit; wait until both views reflect it (not timed
   against the target, reported);
2. throughput: every update commit pushed back to back (pipelined), timed from the first
   push to the closed time at which both views reflect the last commit;
3. latency: single-row upserts, each pushed + committed, timed until both views reflect it.

At the end the view dicts are compared with the expected results (computed with numpy) and
the outcome is reported, not asserted: the parent decides.
"""

from __future__ import annotations

import json
import sys
import threading
import time

import numpy as np
import pandas as pd
import pathway as pw


def main() -> int:
    data_path, out_path = sys.argv[1], sys.argv[2]
    autocommit_ms = int(sys.argv[3]) if len(sys.argv) > 3 and int(sys.argv[3]) > 0 else None
    d = np.load(data_path)
    init_k, init_v = d["init_k"], d["init_v"]
    upd_id, upd_k, upd_v = d["upd_id"], d["upd_k"], d["upd_v"]
    commit_rows = int(d["commit_rows"])
    lat_id, lat_k, lat_v = d["lat_id"], d["lat_k"], d["lat_v"]
    dim_cat = d["dim_cat"]
    n_keys = len(dim_cat)

    # Expected totals after each phase, from a numpy replay of the workload.
    cur_k, cur_v = init_k.copy(), init_v.copy()
    expected_total = [int(cur_v.sum())]  # V1 total == V2 total (every k has a cat)
    for start in range(0, len(upd_id), commit_rows):
        sl = slice(start, start + commit_rows)
        cur_k[upd_id[sl]], cur_v[upd_id[sl]] = upd_k[sl], upd_v[sl]
        expected_total.append(int(cur_v.sum()))
    lat_totals = []
    for i, k, v in zip(lat_id.tolist(), lat_k.tolist(), lat_v.tolist(), strict=True):
        cur_k[i], cur_v[i] = k, v
        lat_totals.append(int(cur_v.sum()))
    exp_v1 = np.bincount(cur_k, weights=cur_v, minlength=n_keys).astype(np.int64)
    exp_v2 = np.bincount(dim_cat[cur_k], weights=cur_v, minlength=int(dim_cat.max()) + 1).astype(np.int64)

    class Fact(pw.Schema):
        id: int = pw.column_definition(primary_key=True)
        k: int
        v: int

    state = {"v1": {}, "v2": {}, "t1": 0, "t2": 0}
    want = {"total": None}
    reached = threading.Event()
    out: dict = {"pathway_version": pw.__version__}

    def on_time_end(_time) -> None:
        w = want["total"]
        if w is not None and state["t1"] == w and state["t2"] == w:
            want["total"] = None
            reached.set()

    def on_v1(key, row, time, is_addition) -> None:
        if is_addition:
            state["v1"][row["k"]] = row["total"]
            state["t1"] += row["total"]
        else:
            state["t1"] -= row["total"]
            if state["v1"].get(row["k"]) == row["total"]:
                del state["v1"][row["k"]]

    def on_v2(key, row, time, is_addition) -> None:
        if is_addition:
            state["v2"][row["cat"]] = row["total"]
            state["t2"] += row["total"]
        else:
            state["t2"] -= row["total"]
            if state["v2"].get(row["cat"]) == row["total"]:
                del state["v2"][row["cat"]]

    def wait(timeout_s: float = 600.0) -> bool:
        return reached.wait(timeout_s)

    def arm(total: int) -> None:
        reached.clear()
        want["total"] = total

    class Subject(pw.io.python.ConnectorSubject):
        def __init__(self) -> None:
            super().__init__(session_type="upsert")

        def run(self) -> None:
            try:
                self._run()
            except BaseException as exc:  # reported, then the run ends
                out["error"] = repr(exc)

        def _run(self) -> None:
            nxt = self.next
            # 1. load
            t0 = time.perf_counter()
            arm(expected_total[0])
            for i, (k, v) in enumerate(zip(init_k.tolist(), init_v.tolist(), strict=True)):
                nxt(id=i, k=k, v=v)
            self.commit()
            pushed = time.perf_counter()
            if not wait():
                out["error"] = "timeout waiting for the load"
                return
            out["load_rows"] = len(init_k)
            out["load_push_s"] = pushed - t0
            out["load_s"] = time.perf_counter() - t0
            # 2. throughput (pipelined)
            ids, ks, vs = upd_id.tolist(), upd_k.tolist(), upd_v.tolist()
            arm(expected_total[-1])
            t0 = time.perf_counter()
            for start in range(0, len(ids), commit_rows):
                for j in range(start, min(start + commit_rows, len(ids))):
                    nxt(id=ids[j], k=ks[j], v=vs[j])
                self.commit()
            pushed = time.perf_counter()
            if not wait():
                out["error"] = "timeout waiting for the updates"
                return
            elapsed = time.perf_counter() - t0
            out["updates"] = len(ids)
            out["updates_push_s"] = pushed - t0
            out["updates_s"] = elapsed
            out["updates_per_s"] = len(ids) / elapsed
            # 3. latency
            lat = []
            for i, k, v, total in zip(lat_id.tolist(), lat_k.tolist(), lat_v.tolist(), lat_totals, strict=True):
                time.sleep(0.005)
                arm(total)
                t0 = time.perf_counter()
                nxt(id=i, k=k, v=v)
                self.commit()
                if not wait(30.0):
                    out["error"] = f"timeout waiting for latency sample {len(lat)}"
                    return
                lat.append(time.perf_counter() - t0)
            out["latency_s"] = lat

    facts = pw.io.python.read(Subject(), schema=Fact, autocommit_duration_ms=autocommit_ms)
    dim = pw.debug.table_from_pandas(pd.DataFrame({"k": np.arange(n_keys, dtype=np.int64),
                                                   "cat": dim_cat.astype(np.int64)}))
    v1 = facts.groupby(pw.this.k).reduce(pw.this.k, total=pw.reducers.sum(pw.this.v))
    joined = facts.join(dim, facts.k == dim.k).select(cat=dim.cat, v=facts.v)
    v2 = joined.groupby(pw.this.cat).reduce(pw.this.cat, total=pw.reducers.sum(pw.this.v))
    pw.io.subscribe(v1, on_change=on_v1, on_time_end=on_time_end)
    pw.io.subscribe(v2, on_change=on_v2, on_time_end=on_time_end)
    started = time.perf_counter()
    pw.run(monitoring_level=pw.MonitoringLevel.NONE)
    out["run_s"] = time.perf_counter() - started
    got_v1 = np.zeros(n_keys, np.int64)
    for k, total in state["v1"].items():
        got_v1[k] = total
    got_v2 = np.zeros(len(exp_v2), np.int64)
    for c, total in state["v2"].items():
        got_v2[c] = total
    out["correct"] = bool(np.array_equal(got_v1, exp_v1) and np.array_equal(got_v2, exp_v2))
    with open(out_path, "w") as f:
        json.dump(out, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
