"""The Kafka sink against a real broker: a table's changes, sunk to a topic and consumed back,
equal the table's change stream (subscribe) record for record, keyed by the primary key and in
version order per key; and the sink, killed with SIGKILL at random points and restarted (with
and without its saved state), still leaves every (version, seq) in the topic exactly once."""

from __future__ import annotations

import collections
import json
import os
import queue
import random
import re
import signal
import subprocess
import sys
import threading
import time

import pyarrow as pa
import pytest
from _kafka import die_with_parent, fresh_topic, read_topic, wait_until

import udrflow
from connectors.kafka import KafkaSink
from udrflow.errors import ConnectorError

ORDERS = pa.schema([pa.field("id", pa.int64(), nullable=False), ("customer", pa.string()), ("amount", pa.float64())])


def expected_records(db, table: str, after: int = 0) -> collections.Counter:
    """(version, op, key, before, after) for every row change of ``table`` after ``after``,
    straight from the change stream: updates paired by key, inserts and deletes as they are."""
    pk = db.primary_key(table)
    out: collections.Counter = collections.Counter()
    with db.subscribe([table], from_version=after) as sub:
        if sub.position == db.version:
            return out
        for batch in sub:
            if batch.kind == "changes":
                old, new = {}, {}
                for row in batch.changes.to_pylist():
                    op, weight = row.pop("__op"), row.pop("__weight")
                    key = json.dumps({k: row[k] for k in pk}) if pk else None
                    if op == "update":
                        (old if weight < 0 else new)[key] = row
                    elif op == "insert":
                        out[(batch.version, "c", key, None, _j(row))] += 1
                    else:
                        out[(batch.version, "d", key, _j(row), None)] += 1
                for key, row in new.items():
                    out[(batch.version, "u", key, _j(old[key]), _j(row))] += 1
            if sub.position == db.version:
                return out
    return out


def _j(row: dict | None) -> str | None:
    # JSON has one kind of number (the envelope writes 12.0 as 12): compare numbers as floats.
    if row is None:
        return None
    return json.dumps({k: float(v) if isinstance(v, int | float) and not isinstance(v, bool) else v
                       for k, v in row.items()}, sort_keys=True)


def topic_records(bootstrap: str, topic: str, table: str):
    """The sink's records in ``topic``: a Counter like expected_records, the (version, seq) pairs
    in the order read, and per key the versions in partition order."""
    got: collections.Counter = collections.Counter()
    seqs = []
    per_key: dict = collections.defaultdict(list)
    for _p, _o, key, value in read_topic(bootstrap, topic):
        env = json.loads(value)
        assert env["table"] == table
        k = None if key is None else json.dumps(json.loads(key))
        got[(env["version"], env["op"], k, _j(env["before"]), _j(env["after"]))] += 1
        seqs.append((env["version"], env["seq"], env["count"]))
        per_key[k].append(env["version"])
    return got, seqs, per_key


def check_exactly_once(seqs) -> None:
    pairs = [(v, s) for v, s, _c in seqs]
    dup = [p for p, n in collections.Counter(pairs).items() if n > 1]
    assert not dup, f"{len(dup)} (version, seq) pairs appear more than once, e.g. {dup[:3]}"
    counts: dict[int, set] = collections.defaultdict(set)
    found: dict[int, set] = collections.defaultdict(set)
    for v, seq, c in seqs:
        counts[v].add(c)
        found[v].add(seq)
    for v, cs in counts.items():
        assert len(cs) == 1, f"version {v} has records claiming counts {cs}"
        assert found[v] == set(range(cs.pop())), f"version {v} is missing records"


def make_history(db, rng: random.Random, commits: int, rows: int, start: int = 0) -> None:
    ids = list(range(start, start + rows))
    for c in range(commits):
        kind = rng.random()
        picked = rng.sample(ids, min(len(ids), rng.randint(1, 40)))
        if kind < 0.5:
            db.upsert("orders", [{"id": i, "customer": f"c{i % 13}", "amount": round(rng.random() * 100, 2)}
                                 for i in picked])
        elif kind < 0.7:
            db.delete("orders", keys=[{"id": i} for i in picked[:5]])
        else:
            with db.transaction() as tx:
                tx.upsert("orders", [{"id": i, "customer": None, "amount": float(c)} for i in picked[:10]])
                tx.delete("orders", keys=[{"id": i} for i in picked[10:15]])


def test_round_trip_equals_the_change_stream(kafka_broker, tmp_path):
    topic = fresh_topic(kafka_broker, "sink", 3)
    with udrflow.open(str(tmp_path / "s.udr")) as db:
        db.create_table("orders", ORDERS, primary_key=["id"])
        v1 = db.insert("orders", [{"id": 1, "customer": "ann", "amount": 9.5}])
        db.upsert("orders", [{"id": 1, "customer": "ann", "amount": 12.0}, {"id": 2, "customer": "bob",
                                                                             "amount": 3.0}])
        db.delete("orders", keys=[{"id": 2}])
        make_history(db, random.Random(21), 60, 300)
        stats = KafkaSink(db, "orders", topic, bootstrap=kafka_broker.bootstrap, round_records=100) \
            .run_until_caught_up(60)
        assert stats.caught_up and stats.position == db.version and stats.rounds >= 2
        got, seqs, per_key = topic_records(kafka_broker.bootstrap, topic, "orders")
        assert got == expected_records(db, "orders")
        check_exactly_once(seqs)
        for key, versions in per_key.items():
            assert versions == sorted(versions), f"key {key}: versions out of order in its partition"
        first = [json.loads(v) for _p, _o, k, v in read_topic(kafka_broker.bootstrap, topic)
                 if json.loads(v)["version"] <= v1 + 2]
        first.sort(key=lambda e: (e["version"], e["seq"]))
        assert [(e["op"], e["before"], e["after"]) for e in first] == [
            ("c", None, {"id": 1, "customer": "ann", "amount": 9.5}),
            ("u", {"id": 1, "customer": "ann", "amount": 9.5}, {"id": 1, "customer": "ann", "amount": 12.0}),
            ("c", None, {"id": 2, "customer": "bob", "amount": 3.0}),
            ("d", {"id": 2, "customer": "bob", "amount": 3.0}, None)]
        assert set(first[0]) == {"op", "version", "seq", "count", "acked", "table", "ts", "before", "after"}
        again = KafkaSink(db, "orders", topic, bootstrap=kafka_broker.bootstrap).run_until_caught_up(60)
        assert again.records == 0 and again.position == db.version


def test_restarts_after_sigkill_send_each_record_once(kafka_broker, tmp_path):
    seed = int(os.environ.get("UDRFLOW_KAFKA_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    topic = fresh_topic(kafka_broker, "sink-crash", 4)
    path = str(tmp_path / "sc.udr")
    with udrflow.open(path) as db:
        db.create_table("orders", ORDERS, primary_key=["id"])
        for start in range(0, 50_000, 2_500):
            db.insert("orders", [{"id": i, "customer": f"c{i}", "amount": float(i)} for i in range(start, start + 2_500)])
        make_history(db, rng, 300, 50_000)
        total = sum(expected_records(db, "orders").values())
    state = os.path.join(path, "kafka", "sinks", f"orders-{topic}.json")
    cmd = [sys.executable, "-m", "udrflow.cli", "sink", "kafka", "--db", path, "--bootstrap", kafka_broker.bootstrap,
           "--topic", topic, "--table", "orders", "--round-records", "1500", "--report-interval", "0.01"]
    mid_delivery = 0
    for run in range(8):
        if run == 5 and os.path.exists(state):
            os.remove(state)  # the saved state is only a hint: without it the whole topic is read
        child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                 preexec_fn=die_with_parent)
        try:
            progress = _progress_lines(child)
            deadline = time.monotonic() + 30
            last = None
            while time.monotonic() < deadline:  # kill once this run has delivered a round (or is done)
                try:
                    last = progress.get(timeout=1)
                except queue.Empty:
                    continue
                if last is None or last[0] > 0 or last[1] == 0:
                    break
            threading.Event().wait(rng.uniform(0, 0.2))
            if child.poll() is None and last is not None and last[1] > 0:
                mid_delivery += 1
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait()
    with udrflow.open(path, readonly=True) as db:
        stats = KafkaSink(db, "orders", topic, bootstrap=kafka_broker.bootstrap).run_until_caught_up(120)
        assert stats.position == db.version
        got, seqs, _ = topic_records(kafka_broker.bootstrap, topic, "orders")
        check_exactly_once(seqs)
        assert sum(got.values()) == total and got == expected_records(db, "orders"), f"seed {seed}"
    # At least some kills must land mid-delivery for the test to mean anything; how many depends
    # on the machine's timing, so the bar is low.
    assert mid_delivery >= 2, f"seed {seed}: only {mid_delivery} runs were killed with changes left to deliver"


_PROGRESS = re.compile(r"\(lag ([\d,]+)\)\s+([\d,]+) records")


def _progress_lines(child: subprocess.Popen) -> queue.Queue:
    """(records delivered by this run, lag) from each progress line of a `udrflow sink kafka`
    child; None when it exits. Only lines after the resume scan have a meaningful lag."""
    q: queue.Queue = queue.Queue()

    def pump() -> None:
        for line in child.stderr:
            m = _PROGRESS.search(line)
            if m and "version 0 " not in line:
                q.put((int(m.group(2).replace(",", "")), int(m.group(1).replace(",", ""))))
        q.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return q


def test_sink_follows_new_commits_of_a_view_from_a_read_only_handle(kafka_broker, tmp_path):
    from udrflow.views import count, sum_

    topic = fresh_topic(kafka_broker, "sink-view", 2)
    path = str(tmp_path / "v.udr")
    db = udrflow.open(path)
    try:
        db.create_table("orders", ORDERS, primary_key=["id"])
        db.insert("orders", [{"id": i, "customer": f"c{i % 3}", "amount": 1.0} for i in range(30)])
        view = db.create_view("by_customer", db.stream("orders").group_by("customer")
                              .agg(total=sum_("amount"), n=count()))
        reader = udrflow.open(path, readonly=True)
        sink = KafkaSink(reader, "by_customer", topic, bootstrap=kafka_broker.bootstrap, state_path=False)
        stop = threading.Event()
        t = threading.Thread(target=sink.run, args=(stop,), daemon=True)
        t.start()
        try:
            wait_until(lambda: sink.stats.position >= db.version and sink.stats.caught_up, "the first delivery")
            db.upsert("orders", [{"id": 0, "customer": "c9", "amount": 5.0}])
            view.refresh()
            wait_until(lambda: sink.stats.position >= db.version, "the view's new commit to be delivered")
        finally:
            stop.set()
            t.join(30)
        got, seqs, _ = topic_records(kafka_broker.bootstrap, topic, "by_customer")
        check_exactly_once(seqs)
        assert got == expected_records(db, "by_customer")
        # The group c0 changed: an update if the view's table is keyed, else a delete and an insert.
        assert {op for _v, op, *_ in got} & {"u", "d"} and any(op == "c" for _v, op, *_ in got), got
        reader.close()
    finally:
        db.close()


def test_sink_errors_name_the_topic(kafka_broker, tmp_path):
    with udrflow.open(str(tmp_path / "e.udr")) as db:
        db.create_table("orders", ORDERS, primary_key=["id"])
        with pytest.raises(ConnectorError, match=r"topic 'absent' does not exist on 127\.0\.0\.1:\d+: create it first"):
            KafkaSink(db, "orders", "absent", bootstrap=kafka_broker.bootstrap).run_until_caught_up(30)
        with pytest.raises(udrflow.TableNotFoundError, match="'nope'"):
            KafkaSink(db, "nope", "absent", bootstrap=kafka_broker.bootstrap)
        with pytest.raises(udrflow.VersionNotFoundError, match=r"from_version=5 is not yet in the log .*expected at "
                                                               r"most 1 \(the head\)"):
            KafkaSink(db, "orders", "absent", bootstrap=kafka_broker.bootstrap, from_version=5).run_until_caught_up(30)
        topic = fresh_topic(kafka_broker, "sink-ahead", 1)
        db.insert("orders", [{"id": 1, "customer": "a", "amount": 1.0}])
        KafkaSink(db, "orders", topic, bootstrap=kafka_broker.bootstrap, state_path=False).run_until_caught_up(30)
    with udrflow.open(str(tmp_path / "other.udr")) as other:
        other.create_table("orders", ORDERS, primary_key=["id"])
        with pytest.raises(ConnectorError, match=r"already holds changes of table 'orders' up to version 2, but "
                                                 r"database .* is at version 1"):
            KafkaSink(other, "orders", topic, bootstrap=kafka_broker.bootstrap, state_path=False) \
                .run_until_caught_up(30)
