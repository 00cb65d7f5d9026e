"""The Kafka source against a real broker (Tansu on loopback, tests/conftest.py): a topic's
records become the table the log says they should (fold per key, tombstones delete), the
offsets stored with them resume a restart exactly, bad records land in the dead-letter
table with their offsets while ingest goes on, consumer groups share partitions, a view
over the ingested table matches its batch oracle while ingest runs, and the CLI does it all."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading

import msgspec
import pyarrow as pa
import pytest
from _kafka import (
    FAST,
    KV,
    bad_offsets,
    check_commit_ranges,
    ends,
    fold,
    fresh_topic,
    kv_records,
    produce,
    table_rows,
    wait_until,
)

import udrflow
from connectors.kafka import OFFSETS_TABLE, KafkaSource, stored_offsets
from udrflow.errors import ConnectorError, InvalidOptionError, TableNotFoundError


@pytest.fixture
def db(tmp_path):
    handle = udrflow.open(str(tmp_path / "k.udr"))
    handle.create_table("kv", KV, primary_key=["k"])
    yield handle
    handle.close()


def test_ingest_folds_the_topic_and_resumes_from_stored_offsets(kafka_broker, db):
    rng = random.Random(11)
    topic = fresh_topic(kafka_broker, "fold", 3)
    first = produce(kafka_broker.bootstrap, topic, kv_records(rng, 3000, 800))
    source = KafkaSource(db, "kv", topic, bootstrap=kafka_broker.bootstrap, batch_size=700)
    stats = source.run_until_caught_up(timeout_s=60)
    assert stats.caught_up and stats.records == 3000 and stats.commits >= 5
    assert table_rows(db) == fold(first)
    assert stored_offsets(db, "kv") == {(topic, p): e for p, e in ends(first).items()}
    second = produce(kafka_broker.bootstrap, topic, kv_records(rng, 1500, 800, start=3000))
    again = KafkaSource(db, "kv", topic, bootstrap=kafka_broker.bootstrap)
    stats = again.run_until_caught_up(timeout_s=60)
    assert stats.records == 1500, "a restart must read only the records after the stored offsets"
    everything = sorted(first + second)
    assert table_rows(db) == fold(everything)
    assert stats.offsets == {(topic, p): e for p, e in ends(everything).items()}
    check_commit_ranges(db, "kv", topic, ends(everything))
    assert KafkaSource(db, "kv", topic, bootstrap=kafka_broker.bootstrap).run_until_caught_up(60).records == 0


def test_dead_letters_keep_ingest_going_and_raise_mode_stops(kafka_broker, db):
    rng = random.Random(12)
    topic = fresh_topic(kafka_broker, "dead", 2)
    delivered = produce(kafka_broker.bootstrap, topic, kv_records(rng, 2000, 300, bad_every=97))
    bad = bad_offsets(delivered)
    assert len(bad) == 20
    raising = KafkaSource(db, "kv", topic, bootstrap=kafka_broker.bootstrap, on_error="raise", batch_size=5000)
    with pytest.raises(ConnectorError, match=r"record at offset \d+ of topic .* partition \d failed for table 'kv': "
                                             r"value .*Nothing of its batch was committed \(on_error='raise'\)"):
        raising.run_until_caught_up(timeout_s=60)
    assert db.read("kv").num_rows == 0 and stored_offsets(db, "kv") == {}
    source = KafkaSource(db, "kv", topic, bootstrap=kafka_broker.bootstrap, batch_size=300)
    stats = source.run_until_caught_up(timeout_s=60)
    assert stats.records == 2000 and stats.dead_letters == len(bad)
    assert table_rows(db) == fold(delivered)
    dead = db.read("kv_dead_letters").to_pylist()
    assert {(r["partition"], r["offset"]) for r in dead} == bad
    by_offset = {(p, o): (k, v) for p, o, k, v in delivered}
    for r in dead:
        assert (r["key"], r["value"]) == by_offset[(r["partition"], r["offset"])]
        assert r["source"] == "kv" and r["topic"] == topic
        assert r["error"].startswith(("value is not valid JSON", "value does not fit table 'kv'"))
    assert stored_offsets(db, "kv") == {(topic, p): e for p, e in ends(delivered).items()}


def test_formats_msgpack_raw_and_a_function(kafka_broker, tmp_path):
    topic = fresh_topic(kafka_broker, "formats", 1)
    values = [msgspec.msgpack.encode({"n": i, "tags": [str(i)]}) for i in range(50)]
    produce(kafka_broker.bootstrap, topic, [(str(i).encode(), v) for i, v in enumerate(values)] + [(b"x", b"\xc1")])
    with udrflow.open(str(tmp_path / "f.udr")) as db:
        db.create_table("m", pa.schema([pa.field("id", pa.int64(), nullable=False), ("n", pa.int32()),
                                        ("tags", pa.list_(pa.string()))]), primary_key="id")
        db.create_table("r", pa.schema([pa.field("key", pa.binary(), nullable=False), ("raw", pa.binary())]),
                        primary_key="key")
        db.create_table("u", pa.schema([("size", pa.int64())]))
        assert KafkaSource(db, "m", topic, bootstrap=kafka_broker.bootstrap, format="msgpack") \
            .run_until_caught_up(60).dead_letters == 1
        assert db.sql("SELECT sum(n) AS s, count(*) AS c FROM m").to_pylist() == [{"s": sum(range(50)), "c": 50}]
        assert db.read("m_dead_letters").column("error")[0].as_py().startswith("message key b'x' is not a valid int64")
        KafkaSource(db, "r", topic, bootstrap=kafka_broker.bootstrap, format="raw").run_until_caught_up(60)
        assert dict(zip(*db.read("r").to_pydict().values(), strict=True))[b"7"] == values[7]
        KafkaSource(db, "u", topic, bootstrap=kafka_broker.bootstrap, format=lambda v: {"size": len(v)}) \
            .run_until_caught_up(60)
        assert sorted(db.read("u").column("size").to_pylist()) == sorted([len(v) for v in values] + [1])


def test_consumer_group_members_share_partitions(kafka_broker, tmp_path):
    rng = random.Random(13)
    topic = fresh_topic(kafka_broker, "group", 4)
    with udrflow.open(str(tmp_path / "g.udr")) as db:
        db.create_table("kv", KV, primary_key=["k"])
        members = [KafkaSource(db, "kv", topic, bootstrap=kafka_broker.bootstrap, group_id=f"g-{topic}",
                               batch_size=400, consumer_config=FAST) for _ in range(2)]
        stop = threading.Event()
        threads = [threading.Thread(target=m.run, args=(stop,), daemon=True) for m in members]
        for t in threads:
            t.start()
        try:
            wait_until(lambda: all(m.assignment for m in members), "both members to get partitions")
            shared = [m.assignment for m in members]
            assert sorted(shared[0] + shared[1]) == [(topic, p) for p in range(4)], shared
            delivered = produce(kafka_broker.bootstrap, topic, kv_records(rng, 4000, 1000))
            want = {(topic, p): e for p, e in ends(delivered).items()}
            wait_until(lambda: stored_offsets(db, f"g-{topic}") == want, "the group to ingest every record")
        finally:
            stop.set()
            for t in threads:
                t.join(60)
        assert table_rows(db) == fold(delivered)
        assert all(m.stats.records > 0 for m in members)
        assert sum(m.stats.records for m in members) == 4000
        check_commit_ranges(db, f"g-{topic}", topic, ends(delivered))
        # The group's position lives in the database, not in Kafka: a source without a group that
        # takes the group's name goes on exactly where the members stopped. (Not a new member of the
        # same group: Tansu keeps a group whose members all left waiting for its old leader.)
        more = produce(kafka_broker.bootstrap, topic, kv_records(rng, 1000, 1000, start=4000))
        stats = KafkaSource(db, "kv", topic, bootstrap=kafka_broker.bootstrap, name=f"g-{topic}") \
            .run_until_caught_up(timeout_s=60)
        assert stats.records == 1000
        assert table_rows(db) == fold(sorted(delivered + more))


def test_a_view_over_the_ingested_table_stays_correct_while_ingest_runs(kafka_broker, db):
    from udrflow.views import count, sum_

    rng = random.Random(14)
    topic = fresh_topic(kafka_broker, "view", 3)
    view = db.create_view("by_g", db.stream("kv").group_by("g").agg(total=sum_("amount"), n=count()))
    view.run()
    source = KafkaSource(db, "kv", topic, bootstrap=kafka_broker.bootstrap, batch_size=250, batch_ms=20)
    stop = threading.Event()
    ingest = threading.Thread(target=source.run, args=(stop,), daemon=True)
    ingest.start()
    delivered: list = []
    checks = 0
    try:
        for part in range(6):
            delivered += produce(kafka_broker.bootstrap, topic, kv_records(rng, 1000, 400, start=part * 1000))
            for _ in range(3):  # while the source is still committing this part
                checks += check_view_now(db, view)
            want = {(topic, p): e for p, e in ends(delivered).items()}
            wait_until(lambda want=want: stored_offsets(db, "kv") == want, "ingest of the part")
            checks += check_view_now(db, view)
    finally:
        stop.set()
        ingest.join(60)
        view.stop()
    assert table_rows(db) == fold(sorted(delivered))
    assert checks >= 6, f"only {checks} checks compared a non-empty view"


def check_view_now(db, view) -> int:
    """The view at the current head equals the definition evaluated in batch at the input
    version it reflects; returns 1 if that was a non-empty result."""
    assert view.wait_for(db.version, timeout_s=60)
    version = db.version
    reflected = view.input_version_at(version)
    got = sorted(db.read("by_g", version=version).to_pylist(), key=lambda r: r["g"])
    # A view that has recorded no input version yet reflects nothing (its inputs may not
    # even exist at version 0): its table must be empty.
    want = sorted(view.batch(reflected).to_pylist(), key=lambda r: r["g"]) if reflected else []
    assert got == want, f"view by_g at version {version} (input {reflected}) differs from its batch oracle"
    return 1 if got else 0  # counts the checks that compared real results


def test_cli_ingest_with_progress_and_summary(kafka_broker, tmp_path):
    rng = random.Random(15)
    topic = fresh_topic(kafka_broker, "cli", 2)
    delivered = produce(kafka_broker.bootstrap, topic, kv_records(rng, 1200, 500, bad_every=300))
    path = str(tmp_path / "cli.udr")
    cmd = [sys.executable, "-m", "udrflow.cli", "ingest", "kafka", "--db", path, "--bootstrap",
           kafka_broker.bootstrap, "--topic", topic, "--table", "kv", "--schema",
           "k:string,g:int64,amount:int64,note:string", "--primary-key", "k", "--batch-size", "200",
           "--until-caught-up", "--report-interval", "0.05"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "ingested 1,200 records into kv" in proc.stdout and "4 dead letters" in proc.stdout
    assert "kv: 1,200 records" in proc.stderr and "dead letters 4" in proc.stderr
    with udrflow.open(path) as db:
        assert table_rows(db) == fold(delivered)
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "ingested 0 records" in again.stdout
    missing = subprocess.run([*cmd[:12], "nope", "--until-caught-up"], capture_output=True, text=True, timeout=60)
    assert missing.returncode == 1
    assert "table 'nope' does not exist" in missing.stderr and "--schema" in missing.stderr


def test_errors_name_what_was_expected(kafka_broker, db):
    topic = fresh_topic(kafka_broker, "errors", 1)
    with pytest.raises(ConnectorError, match=r"topic 'no-such-topic' does not exist on 127\.0\.0\.1:\d+: expected "
                                             r"one of the topics there \(.*errors.*\)"):
        KafkaSource(db, "kv", "no-such-topic", bootstrap=kafka_broker.bootstrap).run_until_caught_up(30)
    with pytest.raises(TableNotFoundError, match="table 'missing' does not exist"):
        KafkaSource(db, "missing", topic, bootstrap=kafka_broker.bootstrap)
    with pytest.raises(InvalidOptionError, match=r"on_error must be one of \('dead_letter', 'raise'\): got 'skip'"):
        KafkaSource(db, "kv", topic, bootstrap=kafka_broker.bootstrap, on_error="skip")
    with pytest.raises(InvalidOptionError, match=r"batch_size must be an int in \[1, 1000000\]: got 0"):
        KafkaSource(db, "kv", topic, bootstrap=kafka_broker.bootstrap, batch_size=0)
    closed_port = _closed_port()
    with pytest.raises(ConnectorError, match=f"cannot reach the Kafka broker at 127.0.0.1:{closed_port}"):
        KafkaSource(db, "kv", topic, bootstrap=f"127.0.0.1:{closed_port}", connect_timeout_s=1).run_until_caught_up(30)
    first = KafkaSource(db, "kv", topic, bootstrap=kafka_broker.bootstrap)
    stop = threading.Event()
    t = threading.Thread(target=first.run, args=(stop,), daemon=True)
    t.start()
    wait_until(lambda: first.assignment, "the first source to start")
    try:
        with pytest.raises(ConnectorError, match="a Kafka source with consumer name 'kv' is already running"):
            KafkaSource(db, "kv", topic, bootstrap=kafka_broker.bootstrap).run_until_caught_up(30)
    finally:
        stop.set()
        t.join(30)
    assert OFFSETS_TABLE in db.tables()


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_source_in_a_read_only_handle_is_refused(tmp_path):
    path = str(tmp_path / "ro.udr")
    with udrflow.open(path) as db:
        db.create_table("kv", KV, primary_key=["k"])
    with udrflow.open(path, readonly=True) as ro, pytest.raises(udrflow.errors.UsageError, match="readonly=True"):
        KafkaSource(ro, "kv", "t", bootstrap="127.0.0.1:1")
    assert os.path.isdir(path)
