"""Exactly-once ingest under SIGKILL: 100,000 records over 4 partitions are produced in slices
while a child process ingests them (two sources: a keyed table and an append-only one, where a
record applied twice would show as an extra row) and is killed with SIGKILL at a random point
after it has started committing, at least 10 times, then restarted. At the end both tables equal
what the topic says (0 lost, 0 duplicated), the dead letters are exactly the bad records, the
stored offsets are each partition's end, and the offset ranges recorded in the commits tile
every partition without overlap. The seed is printed on failure (UDRFLOW_KAFKA_SEED to replay)."""

from __future__ import annotations

import os
import queue
import random
import signal
import subprocess
import sys
import threading

import pytest
from _kafka import (
    EVENTS,
    KV,
    bad_offsets,
    check_commit_ranges,
    die_with_parent,
    ends,
    fold,
    fresh_topic,
    kv_records,
    produce,
    table_rows,
)

import udrflow
from connectors.kafka import KafkaSource, stored_offsets

HERE = os.path.dirname(os.path.abspath(__file__))
RECORDS = 100_000
PARTITIONS = 4
KILLS = 12


def _lines(proc: subprocess.Popen) -> queue.Queue:
    q: queue.Queue = queue.Queue()

    def pump() -> None:
        for line in proc.stdout:
            q.put(line.strip())
        q.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return q


def _wait_line(q: queue.Queue, prefix: str, ctx: str, timeout_s: float = 60.0) -> None:
    while True:
        try:
            line = q.get(timeout=timeout_s)
        except queue.Empty:
            pytest.fail(f"{ctx}: no '{prefix}' line from the child within {timeout_s} s")
        if line is None:
            pytest.fail(f"{ctx}: the child exited before printing '{prefix}'")
        if line.startswith(prefix):
            return


@pytest.mark.slow
def test_sigkill_during_ingest_loses_and_duplicates_nothing(kafka_broker, tmp_path):
    seed = int(os.environ.get("UDRFLOW_KAFKA_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    ctx = f"seed {seed}"
    topic = fresh_topic(kafka_broker, "crash", PARTITIONS)
    records = kv_records(rng, RECORDS, 40_000, bad_every=2000)
    path = str(tmp_path / "crash.udr")
    with udrflow.open(path) as db:
        db.create_table("kv", KV, primary_key=["k"])
        db.create_table("events", EVENTS)
    cuts = sorted(rng.sample(range(1, RECORDS), KILLS))
    slices = [records[a:b] for a, b in zip([0, *cuts], [*cuts, RECORDS], strict=True)]
    delivered: list = []
    for i, part in enumerate(slices[:KILLS]):
        delivered += produce(kafka_broker.bootstrap, topic, part)
        batch_size = rng.choice([200, 700, 2000, 5000])
        child = subprocess.Popen([sys.executable, os.path.join(HERE, "_kafka.py"), "ingest", path,
                                  kafka_broker.bootstrap, topic, str(batch_size)],
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                 preexec_fn=die_with_parent)
        try:
            lines = _lines(child)
            _wait_line(lines, "started", f"{ctx}, run {i}")
            _wait_line(lines, "commit", f"{ctx}, run {i}")
            threading.Event().wait(rng.uniform(0, 0.25))
            assert child.poll() is None, f"{ctx}, run {i}: the child died on its own (status {child.returncode})"
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait()
    delivered += produce(kafka_broker.bootstrap, topic, slices[KILLS])
    assert len(delivered) == RECORDS
    with udrflow.open(path) as db:
        partial = db.read("events").num_rows
        assert partial < RECORDS, f"{ctx}: the killed children ingested everything already"
        for table, kwargs in (("kv", {}), ("events", {})):
            KafkaSource(db, table, topic, bootstrap=kafka_broker.bootstrap, **kwargs).run_until_caught_up(120)
        delivered.sort()
        end = ends(delivered)
        bad = bad_offsets(delivered)
        assert table_rows(db) == fold(delivered), f"{ctx}: table kv differs from the fold of the topic"
        valid = [int(v.split(b'"amount": ')[1].split(b",")[0]) for _p, _o, _k, v in delivered
                 if v is not None and (_p, _o) not in bad]
        amounts = db.read("events").column("amount").to_pylist()
        assert len(amounts) == len(valid), f"{ctx}: events has {len(amounts)} rows, the topic {len(valid)} valid " \
                                           f"records ({len(amounts) - len(set(amounts))} duplicated)"
        assert sorted(amounts) == sorted(valid), f"{ctx}: events rows are not the topic's records, once each"
        kv_dead = {(r["partition"], r["offset"]) for r in db.read("kv_dead_letters").to_pylist()}
        assert kv_dead == bad, f"{ctx}: kv dead letters {len(kv_dead)}, expected the {len(bad)} bad records"
        tombstones = {(p, o) for p, o, _k, v in delivered if v is None}
        events_dead = db.read("events_dead_letters")
        assert events_dead.num_rows == len(bad) + len(tombstones)
        assert {(r["partition"], r["offset"]) for r in events_dead.to_pylist()} == bad | tombstones
        for consumer in ("kv", "events"):
            assert stored_offsets(db, consumer) == {(topic, p): e for p, e in end.items()}, f"{ctx}: {consumer}"
            check_commit_ranges(db, consumer, topic, end)
