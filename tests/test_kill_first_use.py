"""SIGKILL of a writer whose threads start together on a fresh handle (nothing built
before they start) never loses an acknowledged commit and never shows half of one.

Each of THREADS threads moves 1 from its account to the next one's and counts its moves
in its own row, in one transaction, and reports every acknowledged count to the parent.
After the kill the database must satisfy the plain-Python model exactly: the total is
unchanged, each thread's count is at least its last acknowledged one, and every balance
equals what the counts say (initial - own moves + the previous thread's moves), which a
lost update or a partial transaction would break."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import pyarrow as pa

import udrflow

SEED = int(os.environ.get("UDRFLOW_KILL_SEED", "11"))
KILLS = int(os.environ.get("UDRFLOW_KILLS", "5"))  # full size: 200
THREADS = 4
INITIAL = 1_000

CHILD = textwrap.dedent("""
    import sys, threading
    import udrflow

    db = udrflow.open(sys.argv[1])  # a fresh handle: its engine is built by the threads' first calls
    n = int(sys.argv[2])
    start = threading.Barrier(n)
    out = threading.Lock()

    def mover(t):
        start.wait()
        while True:
            def move():
                with db.transaction() as tx:
                    rows = {r["k"]: r for r in tx.read("acct").to_pylist()}
                    a, b, c = f"a{t}", f"a{(t + 1) % n}", f"c{t}"
                    tx.upsert("acct", [{"k": a, "v": rows[a]["v"] - 1}, {"k": b, "v": rows[b]["v"] + 1},
                                       {"k": c, "v": rows[c]["v"] + 1}])
                    return rows[c]["v"] + 1
            count = udrflow.retry(move, attempts=1000)
            with out:
                sys.stdout.write(f"{t} {count}\\n")
                sys.stdout.flush()

    for t in range(n):
        threading.Thread(target=mover, args=(t,), daemon=True).start()
    threading.Event().wait()
""")


def test_sigkill_of_writers_whose_threads_start_together_loses_and_splits_nothing(tmp_path):
    rng = random.Random(SEED)
    path = str(tmp_path / "bank.udr")
    with udrflow.open(path) as db:
        db.create_table("acct", pa.schema([pa.field("k", pa.string(), nullable=False), ("v", pa.int64())]),
                        primary_key="k")
        db.insert("acct", [{"k": f"a{t}", "v": INITIAL} for t in range(THREADS)] +
                  [{"k": f"c{t}", "v": 0} for t in range(THREADS)])
    acked = dict.fromkeys(range(THREADS), 0)
    for kill in range(KILLS):
        proc = subprocess.Popen([sys.executable, "-c", CHILD, path, str(THREADS)], stdout=subprocess.PIPE, text=True)
        deadline = time.monotonic() + rng.uniform(1.6, 2.6)  # (about 1.2 s of it is the import)
        while time.monotonic() < deadline:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate()
        for line in out.splitlines():
            t, count = map(int, line.split())
            acked[t] = max(acked[t], count)
        with udrflow.open(path) as db:
            rows = {r["k"]: r["v"] for r in db.read("acct").to_pylist()}
        ctx = f"seed {SEED}, kill {kill}"
        counts = [rows[f"c{t}"] for t in range(THREADS)]
        assert sum(rows[f"a{t}"] for t in range(THREADS)) == THREADS * INITIAL, f"{ctx}: a partial transfer"
        for t in range(THREADS):
            assert counts[t] >= acked[t], f"{ctx}: thread {t} was acknowledged {acked[t]}, the database has {counts[t]}"
            assert rows[f"a{t}"] == INITIAL - counts[t] + counts[(t - 1) % THREADS], f"{ctx}: a lost update"
    assert sum(acked.values()) > 0
