"""A subscriber killed with SIGKILL at random points and restarted from its persisted resume token ends
with exactly the log's changes: no gap, no duplicate. Each trial writes a random history (while the
subscriber runs, or before it starts) and kills a subscriber process several times at random delays.

The subscriber persists its output and its token together: one line per version (every batch of that
version for its tables, as JSON), written in two pieces (so a kill can tear a line) and fdatasynced; the token
is the version of the last complete line, and a restart cuts off a torn last line first. Subscribers are
forked from a multiprocessing forkserver that has udrflow imported, so a restart costs milliseconds, not
an interpreter start. Every assertion names the trial's seed."""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import threading
import time
import traceback

import pyarrow as pa

import udrflow
from udrflow._changefeed import batch_json_lines

TRIALS = 22
SEED_BASE = 20_240_500
PEOPLE, TAGS = "people", "tags"
SCHEMA_P = pa.schema([("id", pa.int64()), ("name", pa.string()), ("amount", pa.float64())])
SCHEMA_T = pa.schema([("tag", pa.string()), ("n", pa.int64())])
NAMES = ["a", "b", "", "é", 'q"uote', "back\\slash", "line\nbreak", None]

_ctx = multiprocessing.get_context("forkserver")
# What the forkserver imports once, so that each forked subscriber starts in milliseconds.
PRELOAD = ["udrflow", "udrflow._changefeed", "pyarrow.compute", __name__]


# ---- the subscriber process ------------------------------------------------------------------------------


def recover_output(fd: int) -> tuple[int, int, bool]:
    """Keep the complete lines of the output file, cut a torn tail. Returns (token, number of
    complete lines, whether a tail was cut)."""
    size = os.fstat(fd).st_size
    data = os.pread(fd, size, 0) if size else b""
    good_end, token, lines = 0, 0, 0
    for line in data.splitlines(keepends=True):
        if not line.endswith(b"\n"):
            break
        try:
            record = json.loads(line)
        except ValueError:
            break
        good_end += len(line)
        token = record["v"]
        lines += 1
    torn = good_end < size
    if torn:
        os.ftruncate(fd, good_end)
        os.fsync(fd)
    return token, lines, torn


def encode_version(version: int, batches: list) -> bytes:
    return (json.dumps({"v": version, "b": batches}, ensure_ascii=False) + "\n").encode()


def subscriber_main(path: str, out_path: str, tables: list[str] | None, idle_timeout_s: float | None,
                    pause_s: float, err_path: str) -> None:
    """Consume from the persisted token on, appending one line per version; runs until killed
    (or, with ``idle_timeout_s``, until the log has been quiet that long)."""
    try:
        fd = os.open(out_path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        token, _, _ = recover_output(fd)
        with udrflow.open(path, readonly=True, create=False) as db:
            sub = db.subscribe(tables, from_version=token, idle_timeout_s=idle_timeout_s)
            pending: list = []
            for batch in sub:
                pending.append({"t": batch.table, "k": batch.kind, "rows": batch_json_lines(batch).to_pylist()})
                if not batch.last_in_version:
                    continue
                line = encode_version(batch.version, pending)
                pending = []
                half = len(line) // 2
                os.write(fd, line[:half])
                if pause_s:
                    time.sleep(pause_s)  # widens the window in which a kill tears the line
                os.write(fd, line[half:])
                os.fdatasync(fd)
            assert not pending, f"the subscription ended inside version {sub.position + 1}"
        os.close(fd)
    except BaseException:
        with open(err_path, "a") as f:
            traceback.print_exc(file=f)
        raise


# ---- the writer: a random history ----------------------------------------------------------------------------


def write_history(db, rng: random.Random, commits: int, pause_s_max: float, errors: list) -> None:
    try:
        for i in range(commits):
            r = rng.random()
            ids = rng.sample(range(40), rng.randint(1, 4))
            people = [{"id": k, "name": rng.choice(NAMES), "amount": rng.choice([None, 1.5, -2.0, rng.random()])}
                      for k in ids]
            tags = [{"tag": rng.choice(["a", "b", None]), "n": rng.randint(0, 4)} for _ in range(rng.randint(1, 3))]
            if r < 0.35:
                db.upsert(PEOPLE, people)
            elif r < 0.5:
                db.insert(TAGS, tags)
            elif r < 0.6:
                db.delete(PEOPLE, keys=[{"id": k} for k in ids])  # may match nothing: no commit
            elif r < 0.67:
                db.delete(TAGS, where=f"n = {rng.randint(0, 4)}")
            elif r < 0.72:
                db.delete(PEOPLE, where="amount < 0")
            elif r < 0.9:
                with db.transaction() as tx:
                    tx.upsert(PEOPLE, people)
                    tx.insert(TAGS, tags)
                    if rng.random() < 0.5:
                        tx.delete(TAGS, where="tag = 'b'")
            else:
                # A larger commit (Arrow rows), so replay and JSON encoding take a while.
                n = rng.randint(200, 1500)
                base = rng.randint(0, 3) * 1000
                db.upsert(PEOPLE, pa.table({"id": pa.array(range(base, base + n), pa.int64()),
                                            "name": [f"bulk{i}-{j}" for j in range(n)],
                                            "amount": [float(j) for j in range(n)]}, schema=SCHEMA_P))
            if pause_s_max:
                time.sleep(rng.uniform(0, pause_s_max))
    except BaseException as exc:
        errors.append(exc)


def expected_lines(db, tables: list[str] | None) -> list[bytes]:
    """Every version's line as an undisturbed subscriber writes it (from 0, in this process)."""
    out, pending = [], []
    head = db.version
    with db.subscribe(tables, from_version=0, idle_timeout_s=0.05) as sub:
        for batch in sub:
            pending.append({"t": batch.table, "k": batch.kind, "rows": batch_json_lines(batch).to_pylist()})
            if batch.last_in_version:
                out.append(encode_version(batch.version, pending))
                pending = []
            if sub.position >= head:
                break
    return out


# ---- one trial -------------------------------------------------------------------------------------------


def start_subscriber(path, out_path, tables, idle_timeout_s, pause_s, err_path):
    proc = _ctx.Process(target=subscriber_main, args=(path, out_path, tables, idle_timeout_s, pause_s, err_path),
                        daemon=True)
    proc.start()
    return proc


def run_trial(root: str, trial: int, stats: dict) -> None:
    seed = SEED_BASE + trial
    rng = random.Random(seed)
    mode = "concurrent" if trial % 3 else "before"
    tables = rng.choice([None, [PEOPLE], [TAGS], [PEOPLE, TAGS]])
    ctx = f"trial {trial} (seed {seed}, mode {mode}, tables {tables})"
    path = os.path.join(root, f"db{trial}")
    out_path = os.path.join(root, f"out{trial}.jsonl")
    err_path = os.path.join(root, f"err{trial}.txt")
    db = udrflow.open(path, durability="none")
    try:
        db.create_table(PEOPLE, SCHEMA_P, primary_key="id")
        db.create_table(TAGS, SCHEMA_T)
        errors: list = []
        commits = rng.randint(30, 70)
        writer = threading.Thread(target=write_history, args=(db, rng, commits, 0.004 if mode == "concurrent" else 0,
                                                              errors))
        writer.start()
        if mode == "before":
            writer.join(60)
        pause_s = rng.choice([0.0, 0.0005, 0.002])
        kills = rng.randint(3, 6)
        for k in range(kills):
            proc = start_subscriber(path, out_path, tables, None, pause_s, err_path)
            time.sleep(rng.uniform(0.02, 0.15))
            os.kill(proc.pid, signal.SIGKILL)
            proc.join(10)
            assert proc.exitcode == -signal.SIGKILL, (
                f"{ctx}: subscriber run {k} ended with {proc.exitcode} before the kill: "
                f"{open(err_path).read() if os.path.exists(err_path) else ''}")
            if os.path.exists(out_path):
                with open(out_path, "rb") as f:
                    data = f.read()
                stats["torn"] += bool(data) and not data.endswith(b"\n")
                stats["lines_at_kill"].append(data.count(b"\n"))
            stats["kills"] += 1
        writer.join(60)
        assert not writer.is_alive() and not errors, f"{ctx}: the writer failed: {errors!r}"
        # The last run is not killed: it consumes to the head and ends after a quiet spell.
        proc = start_subscriber(path, out_path, tables, 0.1, 0.0, err_path)
        proc.join(60)
        assert proc.exitcode == 0, (f"{ctx}: the last subscriber run ended with {proc.exitcode}: "
                                    f"{open(err_path).read() if os.path.exists(err_path) else ''}")
        with open(out_path, "rb") as f:
            got = f.read().splitlines(keepends=True)
        want = expected_lines(db, tables)
        got_versions = [json.loads(line)["v"] for line in got]
        want_versions = [json.loads(line)["v"] for line in want]
        duplicates = len(got_versions) - len(set(got_versions))
        gaps = sorted(set(want_versions) - set(got_versions))
        assert duplicates == 0 and not gaps, (
            f"{ctx}: {len(gaps)} gap(s) (versions {gaps[:10]}), {duplicates} duplicate(s); "
            f"got versions {got_versions[:40]}...")
        assert got_versions == want_versions, f"{ctx}: versions out of order or unexpected: {got_versions}"
        for g, w in zip(got, want, strict=True):
            assert g == w, f"{ctx}: the changes of version {json.loads(w)['v']} differ: {g[:300]!r} vs {w[:300]!r}"
        stats["versions"] += len(want_versions)
    finally:
        db.close()


def test_a_killed_subscriber_resumes_from_its_token_without_gaps_or_duplicates(tmp_path):
    _ctx.set_forkserver_preload(PRELOAD)
    stats = {"kills": 0, "torn": 0, "versions": 0, "lines_at_kill": []}
    for trial in range(TRIALS):
        run_trial(str(tmp_path), trial, stats)
    # Kills that happened mid-stream (some lines written, not all) are what this test is about.
    print(f"\n{TRIALS} trials, {stats['kills']} kills, {stats['torn']} torn lines found at a kill, "
          f"{stats['versions']} versions delivered; lines at kill: {stats['lines_at_kill']}")
    assert stats["kills"] >= 3 * TRIALS
