"""Helpers for the Kafka tests and benchmark: a real broker (connectors.testing.LocalBroker),
producing records with their offsets, and reading a topic back to its end.

Also runnable as a child process for the crash trials::

    python tests/_kafka.py ingest DB BOOTSTRAP TOPIC BATCH_SIZE

runs two sources over TOPIC until killed (a keyed table ``kv`` and an append-only table
``events``), printing one line per commit of ``kv``.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import sys
import time

import msgspec
import pyarrow as pa

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from connectors.testing import BrokerUnavailableError, LocalBroker, broker_binary, die_with_parent  # noqa: E402
from udrflow._commit import decode_commit  # noqa: E402

__all__ = ["LocalBroker", "BrokerUnavailableError", "broker_binary", "die_with_parent", "produce", "read_topic",
           "fresh_topic"]

_topic_counter = itertools.count()


def fresh_topic(broker: LocalBroker, prefix: str, partitions: int) -> str:
    """A new topic with a name no other test uses (one broker serves the whole session)."""
    name = f"{prefix}-{os.getpid()}-{next(_topic_counter)}"
    broker.create_topic(name, partitions)
    return name


def produce(bootstrap: str, topic: str, records, *, partition: int | None = None) -> list[tuple[int, int, bytes | None,
                                                                                                   bytes | None]]:
    """Produce ``records`` ((key, value) pairs, in order) with an idempotent producer and
    return them as delivered: (partition, offset, key, value), in production order."""
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5,
                         "partitioner": "murmur2_random", "queue.buffering.max.messages": 1_000_000})
    delivered: list = []
    failures: list = []

    def on_delivery(err, msg) -> None:
        if err is not None:
            failures.append(err.str())
        else:
            delivered.append((msg.partition(), msg.offset(), msg.key(), msg.value()))

    for i, (key, value) in enumerate(records):
        kwargs = {} if partition is None else {"partition": partition}
        while True:
            try:
                producer.produce(topic, value=value, key=key, on_delivery=on_delivery, **kwargs)
                break
            except BufferError:
                producer.poll(0.05)
        if i % 10_000 == 0:
            producer.poll(0)
    left = producer.flush(60)
    assert left == 0 and not failures, f"{left} records not delivered, failures: {failures[:3]}"
    return sorted(delivered, key=lambda r: (r[0], r[1]))


def read_topic(bootstrap: str, topic: str, timeout_s: float = 60.0) -> list[tuple[int, int, bytes | None,
                                                                                    bytes | None]]:
    """Every record of ``topic`` as (partition, offset, key, value), read up to each
    partition's end (partition EOF: the broker's high watermarks are not trusted)."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "udrflow-tests-reader",
                         "enable.auto.commit": False, "enable.partition.eof": True, "fetch.wait.max.ms": 100})
    try:
        partitions = sorted(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        waiting = set(partitions)
        out = []
        deadline = time.monotonic() + timeout_s
        while waiting:
            assert time.monotonic() < deadline, f"topic {topic} not read to its end in {timeout_s} s: {waiting}"
            for m in consumer.consume(10_000, 0.2):
                if m.error() is not None:
                    assert m.error().code() == KafkaError._PARTITION_EOF, m.error().str()
                    waiting.discard(m.partition())
                    continue
                waiting.add(m.partition())
                out.append((m.partition(), m.offset(), m.key(), m.value()))
        return sorted(out, key=lambda r: (r[0], r[1]))
    finally:
        consumer.close()


# ---- kv records: upserts, tombstones and bad values, and what the table should hold

KV = pa.schema([pa.field("k", pa.string(), nullable=False), ("g", pa.int64()), ("amount", pa.int64()),
                ("note", pa.string())])
FAST = {"session.timeout.ms": 2000, "heartbeat.interval.ms": 300}


def kv_records(rng: random.Random, n: int, keys: int, start: int = 0, bad_every: int = 0):
    """(key, value) pairs: upserts of random keys, some tombstones, and (every ``bad_every``) a bad value."""
    out = []
    for i in range(start, start + n):
        key = f"k{rng.randrange(keys)}".encode()
        if bad_every and i % bad_every == bad_every - 1:
            out.append((key, rng.choice([b"{oops", b'{"amount": "lots"}', b"[]"])))
        elif rng.random() < 0.05:
            out.append((key, None))
        else:
            out.append((key, json.dumps({"g": i % 7, "amount": i, "note": f"n{i}"}).encode()))
    return out


def fold(delivered) -> dict[str, dict]:
    """The table a topic of kv records should give: per key (one partition each), in offset order."""
    state: dict[str, dict] = {}
    for _p, _o, key, value in delivered:
        k = key.decode()
        if value is None:
            state.pop(k, None)
            continue
        try:
            row = msgspec.json.decode(value)
        except msgspec.DecodeError:
            continue
        if not isinstance(row, dict) or not isinstance(row.get("amount", 0), int):
            continue
        state[k] = {"k": k, "g": row.get("g"), "amount": row.get("amount"), "note": row.get("note")}
    return state


def bad_offsets(delivered) -> set[tuple[int, int]]:
    return {(p, o) for p, o, _k, v in delivered
            if v is not None and (v.startswith(b"{oops") or v.startswith(b"[") or b'"lots"' in v)}


def ends(delivered) -> dict[int, int]:
    out: dict[int, int] = {}
    for p, o, _k, _v in delivered:
        out[p] = max(out.get(p, 0), o + 1)
    return out


def table_rows(db, table: str = "kv") -> dict[str, dict]:
    return {r["k"]: r for r in db.read(table).to_pylist()}


def check_commit_ranges(db, consumer: str, topic: str, end: dict[int, int]) -> None:
    """Every commit of ``consumer`` records the offset range it applied; per partition the ranges
    must tile [0, end) exactly: nothing applied twice, nothing skipped."""
    at: dict[int, int | None] = {}
    for record in db.log.scan():
        meta = decode_commit(record.payload, record.version).meta or {}
        if meta.get("kafka_source") != consumer:
            continue
        for t, p, start, stop in meta["offsets"]:
            assert t == topic
            assert start == at.get(p), f"partition {p}: commit at version {record.version} starts at {start}, " \
                                       f"the previous one ended at {at.get(p)}"
            at[p] = stop
    assert {p: o for p, o in at.items()} == end


def wait_until(predicate, what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


# ---- the child process of the crash trials -------------------------------------------------------


EVENTS = pa.schema([("g", pa.int64()), ("amount", pa.int64()), ("note", pa.string())])


def _ingest_child(db_path: str, bootstrap: str, topic: str, batch_size: int) -> None:
    """Two sources over one topic in one process: ``kv`` (keyed: upserts and deletes) and
    ``events`` (no key: every valid record appended, so a record applied twice would show).
    Prints ``commit N`` whenever either has committed more, so the parent can kill mid-stream."""
    import threading

    import udrflow
    from connectors.kafka import KafkaSource

    db = udrflow.open(db_path)
    kv = KafkaSource(db, "kv", topic, bootstrap=bootstrap, batch_size=batch_size, batch_ms=50)
    events = KafkaSource(db, "events", topic, bootstrap=bootstrap, batch_size=max(1, batch_size // 2), batch_ms=30)
    threading.Thread(target=events.run, daemon=True).start()
    threading.Thread(target=kv.run, daemon=True).start()
    print("started", flush=True)
    seen = 0
    while True:
        commits = kv.stats.commits + events.stats.commits
        if commits != seen:
            seen = commits
            print(f"commit {commits}", flush=True)
        time.sleep(0.002)


if __name__ == "__main__":
    if sys.argv[1] == "ingest":
        _ingest_child(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
    else:
        raise SystemExit(f"unknown command {sys.argv[1]!r}")
