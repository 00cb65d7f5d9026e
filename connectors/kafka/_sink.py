"""KafkaSink: a table's (or view's) change stream -> a topic, exactly once for readers.

    sink = KafkaSink(db, "orders", "orders-changes", bootstrap="127.0.0.1:9092")
    sink.run_until_caught_up()        # or sink.run(stop_event) to keep following the log

Every row change of every commit after ``from_version`` becomes one record, keyed by the
primary key (a JSON object of the key columns; no key for tables without one), whose
value is a Debezium-like JSON envelope::

    {"op": "c" | "u" | "d", "version": 17, "seq": 0, "count": 3, "acked": 16,
     "table": "orders", "ts": "2026-01-31T12:00:00.123456+00:00",
     "before": {...} | null, "after": {...} | null}

``op`` is create (insert), update or delete; ``before``/``after`` are the row before and
after (null for an insert's before and a delete's after). ``version`` is the commit's
version; ``seq`` numbers the commit's records for this table from 0 and ``count`` says how
many there are, so a reader can tell a version is complete; ``acked`` says every version
up to it had been fully acknowledged by the broker when this record was sent.

The guarantee, precisely: once the sink has run (and, after any crash, been restarted)
up to version V, the topic holds exactly one record for each (version, seq) of every
version <= V, and for every key the records of that key appear in version order (a key
always maps to one partition). No Kafka transactions are involved: the sink produces in
rounds (``round_records`` records, whole versions), waits until the broker acknowledged
the round (idempotent producer, so a retry inside a round never duplicates and a
partition's records land in order), and only then starts the next. A crash can therefore
leave at most the last round partially written. On start the sink reads the topic's
tail (from the per-partition offsets it saved after its last acknowledged round, or the
whole topic if it has no saved state) until every partition's end, takes the highest
``acked`` it finds as the last fully delivered version, notes which (version, seq) of
the later versions are already there, and resumes after it, sending only the records
that are missing. Records of other tables in the same topic are left alone.

Readers that also want to be robust to a second writer or a misconfigured producer can
deduplicate on (table, version, seq), which is unique by construction.

The saved state (``<db>/kafka/sinks/<name>.json`` by default) is a hint that makes the
start-up read short; losing it costs a full read of the topic, never correctness.
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
import time

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from connectors.kafka._limits import (
    SINK_FLUSH_TIMEOUT_S,
    SINK_IDLE_WAIT_S,
    SINK_QUEUE_MESSAGES_MAX,
    SINK_ROUND_RECORDS_DEFAULT,
    SINK_ROUND_RECORDS_MAX,
    SINK_SCAN_TIMEOUT_S,
    SINK_VERSIONS_PER_READ_MAX,
)
from connectors.kafka._logging import with_logger
from udrflow._changefeed import OP_COLUMN, WEIGHT_COLUMN, read_changes, rows_to_json
from udrflow._fileio import FileIO, make_dirs_durably, write_file_durably
from udrflow._names import check_name
from udrflow.errors import ConnectorError, InvalidOptionError, UsageError, VersionNotFoundError

OPS = {"insert": "c", "update": "u", "delete": "d"}


class _Envelope(msgspec.Struct):
    """The fields of a record's value that resuming needs (the rest is ignored)."""

    table: str
    version: int
    seq: int
    count: int
    acked: int


@dataclasses.dataclass
class SinkStats:
    """Progress of a sink: ``position`` is the last version fully delivered (every record
    of it and before it acknowledged); ``records`` were produced and acknowledged by this
    run; ``skipped`` were found already in the topic when resuming (not sent again)."""

    position: int = 0
    records: int = 0
    versions: int = 0
    skipped: int = 0
    rounds: int = 0
    lag: int = 0
    caught_up: bool = False
    elapsed_s: float = 0.0

    @property
    def records_per_s(self) -> float:
        return self.records / self.elapsed_s if self.elapsed_s > 0 else 0.0


class KafkaSink:
    """Write the changes of table (or view) ``table`` after ``from_version`` to ``topic``.

    Options: ``bootstrap`` (``"host:port"``); ``from_version`` (deliver the commits after
    it; default 0, everything; a topic that already holds later changes of this table
    resumes after those instead); ``name`` (names the saved state; default
    ``"<table>-<topic>"``); ``round_records`` (records per acknowledged round: the most
    that a crash can leave half-written); ``state_path`` (where the resume hint is saved;
    None for the default, ``False`` for none: every start then reads the whole topic);
    ``producer_config`` (extra librdkafka settings). The database may be open read-only,
    so a sink can follow a database another process writes.
    """

    def __init__(self, db, table: str, topic: str, *, bootstrap: str, from_version: int = 0,
                 name: str | None = None, round_records: int = SINK_ROUND_RECORDS_DEFAULT,
                 state_path: str | bool | None = None, producer_config: dict | None = None) -> None:
        check_name(table, "table")
        if not isinstance(topic, str) or not topic:
            raise InvalidOptionError(f"topic must be a topic name: got {topic!r}")
        if not isinstance(bootstrap, str) or not bootstrap:
            raise InvalidOptionError(f"bootstrap must be 'host:port' (comma-separated for several): got {bootstrap!r}")
        if not isinstance(from_version, int) or isinstance(from_version, bool) or from_version < 0:
            raise InvalidOptionError(f"from_version must be a version (an int >= 0): got {from_version!r}")
        if not isinstance(round_records, int) or not 1 <= round_records <= SINK_ROUND_RECORDS_MAX:
            raise InvalidOptionError(f"round_records must be an int in [1, {SINK_ROUND_RECORDS_MAX}]: "
                                     f"got {round_records!r}")
        db.schema(table)  # TableNotFoundError names a missing table
        self.db = db
        self.table = table
        self.topic = topic
        self.bootstrap = bootstrap
        self.from_version = from_version
        self.name = check_name(name or f"{table}-{topic}", "sink")
        self.round_records = round_records
        if state_path is None:
            state_path = os.path.join(db.path, "kafka", "sinks", f"{self.name}.json")
        self.state_path = state_path or None
        self.producer_config = dict(producer_config or {})
        self._stop = threading.Event()
        self._stats = SinkStats()
        self._running = False
        self._table_json = msgspec.json.encode(table).decode()

    # ---- public ------------------------------------------------------------------------------

    @property
    def stats(self) -> SinkStats:
        s = dataclasses.replace(self._stats)
        if self._running:
            s.elapsed_s = time.monotonic() - self._started
        return s

    def run(self, stop_event: threading.Event | None = None) -> SinkStats:
        """Deliver, then follow the log, until ``stop_event`` is set or :meth:`stop` is called."""
        return self._run(stop_event, until_caught_up=False, timeout_s=None)

    def run_until_caught_up(self, timeout_s: float | None = None) -> SinkStats:
        """Deliver every change up to the head (as it is when the sink gets there), then return."""
        return self._run(None, until_caught_up=True, timeout_s=timeout_s)

    def stop(self) -> None:
        self._stop.set()

    # ---- running -----------------------------------------------------------------------------

    def _run(self, stop_event, until_caught_up: bool, timeout_s: float | None) -> SinkStats:
        from confluent_kafka import KafkaException, Producer

        if self._running:
            raise UsageError(f"Kafka sink {self.name!r} is already running")
        self._stop.clear()
        self._running = True
        self._started = time.monotonic()
        deadline = None if timeout_s is None else self._started + timeout_s
        try:
            if self.from_version > self.db.version:
                raise VersionNotFoundError(f"from_version={self.from_version} is not yet in the log of {self.db.path}: "
                                           f"expected at most {self.db.version} (the head)")
            partitions = self._partitions()
            position, present, ends = self._resume(partitions)
            self._stats = SinkStats(position=position)
            self._ends = ends
            self._failed: list[str] = []
            config = {
                "bootstrap.servers": self.bootstrap,
                # Idempotence: retries inside a round never duplicate, and each partition
                # receives a round's records in order, so a crash leaves a prefix of each.
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 5,
                "partitioner": "murmur2_random",  # the Java client's: same key, same partition
                "queue.buffering.max.messages": SINK_QUEUE_MESSAGES_MAX,
            }
            config.update(self.producer_config)
            if not config.get("enable.idempotence", True):
                config.setdefault("max.in.flight.requests.per.connection", 1)
            try:
                producer = Producer(with_logger(config))
            except KafkaException as exc:
                raise ConnectorError(f"cannot create a Kafka producer for {self.bootstrap}: {exc}") from exc
            try:
                self._deliver(producer, position, present, stop_event, until_caught_up, deadline)
            finally:
                producer.flush(SINK_FLUSH_TIMEOUT_S)
        finally:
            self._running = False
            self._stats.elapsed_s = time.monotonic() - self._started
        return self.stats

    def _stopping(self, stop_event, deadline) -> bool:
        return self._stop.is_set() or (stop_event is not None and stop_event.is_set()) or \
            (deadline is not None and time.monotonic() > deadline)

    def _deliver(self, producer, position: int, present: dict[int, set[int]], stop_event, until_caught_up: bool,
                 deadline) -> None:
        db = self.db
        engine = db._engine()
        stats = self._stats
        top = max(position, max(present, default=0))
        if top > db.version:
            raise ConnectorError(f"topic {self.topic!r} already holds changes of table {self.table!r} up to version "
                                 f"{top}, but database {db.path} is at version {db.version}: is it the same "
                                 f"database (and branch) that was sunk there?")
        while not self._stopping(stop_event, deadline):
            head = db.version
            stats.lag = head - position
            if head <= position:
                stats.caught_up = True
                if until_caught_up:
                    return
                db.log.wait_for(position + 1, SINK_IDLE_WAIT_S)
                continue
            stats.caught_up = False
            upto = min(head, position + SINK_VERSIONS_PER_READ_MAX)
            produced, reached, versions = 0, upto, 0
            for batch in read_changes(engine, {self.table}, position, upto):
                if batch.kind == "changes" and batch.num_rows:
                    produced += self._produce_batch(producer, batch, position, present.pop(batch.version, None))
                    versions += 1
                if batch.last_in_version and produced >= self.round_records:
                    reached = batch.version
                    break
            self._finish_round(producer, reached)
            position = reached
            stats.position = position
            stats.versions += versions
            stats.records += produced
            stats.rounds += 1
            self._save_state(position)

    def _finish_round(self, producer, reached: int) -> None:
        left = producer.flush(SINK_FLUSH_TIMEOUT_S)
        if left:
            raise ConnectorError(f"{left} record(s) for topic {self.topic!r} were not acknowledged within "
                                 f"{SINK_FLUSH_TIMEOUT_S:g} s (versions up to {reached}); restart the sink: it "
                                 f"reads the topic's tail and sends only what is missing")
        if self._failed:
            raise ConnectorError(f"{len(self._failed)} record(s) for topic {self.topic!r} failed (versions up to "
                                 f"{reached}), first: {self._failed[0]}; restart the sink: it reads the topic's "
                                 f"tail and sends only what is missing")

    def _on_delivery(self, err, msg) -> None:
        if err is not None:
            if len(self._failed) < 10:
                self._failed.append(f"partition {msg.partition()}: {err.str()}")
            else:
                self._failed.append("")
            return
        p = msg.partition()
        end = msg.offset() + 1
        if end > self._ends.get(p, 0):
            self._ends[p] = end

    def _produce_batch(self, producer, batch, acked: int, present: set[int] | None) -> int:
        """Produce the records of one change batch; return how many were sent."""
        keys, values = self.envelopes(batch, acked)
        topic, deliver = self.topic, self._on_delivery
        produced = 0
        for seq, (key, value) in enumerate(zip(keys, values, strict=True)):
            if present is not None and seq in present:
                self._stats.skipped += 1
                continue
            while True:
                try:
                    producer.produce(topic, value=value, key=key, on_delivery=deliver)
                    break
                except BufferError:  # librdkafka's queue is full: let deliveries drain it
                    producer.poll(0.05)
            produced += 1
        producer.poll(0)
        return produced

    def envelopes(self, batch, acked: int) -> tuple[list, list[str]]:
        """The (keys, values) of one change batch's records, built a column at a time."""
        changes = batch.changes
        rows = changes.drop_columns([OP_COLUMN, WEIGHT_COLUMN])
        weights = changes.column(WEIGHT_COLUMN).to_numpy()
        n_minus = int((weights < 0).sum())
        u = int(pc.sum(pc.equal(changes.column(OP_COLUMN), "update")).as_py() or 0) // 2
        old, dels = rows.slice(0, u), rows.slice(u, n_minus - u)
        new, ins = rows.slice(n_minus, u), rows.slice(n_minus + u)
        pk = self._key_columns(batch.version)
        if u and pk:
            old, new = _paired(old, new, pk)
        head = (',"version":' + str(batch.version) + ',"count":' + str(changes.num_rows - u) + ',"acked":'
                + str(acked) + ',"table":' + self._table_json + ',"ts":"' + batch.timestamp.isoformat() + '","seq":')
        keys: list = []
        values: list[str] = []
        seq = 0
        for op, before, after in (("u", old, new), ("d", dels, None), ("c", None, ins)):
            n = (before if before is not None else after).num_rows
            if n == 0:
                continue
            seqs = pc.cast(pa.array(np.arange(seq, seq + n, dtype=np.int64)), pa.string())
            b = rows_to_json(before) if before is not None else "null"
            a = rows_to_json(after) if after is not None else "null"
            values.extend(pc.binary_join_element_wise('{"op":"' + op + '"' + head, seqs, ',"before":', b,
                                                      ',"after":', a, "}", "").to_pylist())
            if pk:
                keyed = after if after is not None else before
                keys.extend(rows_to_json(keyed.select(pk)).to_pylist())
            else:
                keys.extend([None] * n)
            seq += n
        return keys, values

    def _key_columns(self, version: int) -> list[str]:
        engine = self.db._engine()
        tdef = engine.catalog.get(self.table, version)
        return list(tdef.primary_key) if tdef is not None else []

    # ---- resuming ---------------------------------------------------------------------------

    def _partitions(self) -> list[int]:
        from confluent_kafka import KafkaException
        from confluent_kafka.admin import AdminClient

        admin = AdminClient(with_logger({"bootstrap.servers": self.bootstrap}))
        try:
            metadata = admin.list_topics(timeout=SINK_SCAN_TIMEOUT_S)
        except KafkaException as exc:
            raise ConnectorError(f"cannot reach the Kafka broker at {self.bootstrap}: {exc.args[0].str()}") from exc
        info = metadata.topics.get(self.topic)
        if info is None or info.error is not None or not info.partitions:
            known = ", ".join(sorted(t for t in metadata.topics if not t.startswith("__"))) or "none"
            raise ConnectorError(f"topic {self.topic!r} does not exist on {self.bootstrap}: create it first "
                                 f"(topics there: {known})")
        return sorted(info.partitions)

    def _load_state(self) -> dict | None:
        if not self.state_path or not os.path.exists(self.state_path):
            return None
        try:
            with open(self.state_path, "rb") as f:
                state = json.loads(f.read())
        except (OSError, ValueError):
            return None  # a hint only: without it the whole topic is read
        if state.get("topic") != self.topic or state.get("table") != self.table:
            return None
        return state

    def _save_state(self, position: int) -> None:
        if not self.state_path:
            return
        state = {"topic": self.topic, "table": self.table, "acked": position,
                 "offsets": {str(p): end for p, end in sorted(self._ends.items())}}
        try:
            io = FileIO()
            make_dirs_durably(io, os.path.dirname(self.state_path))
            write_file_durably(io, self.state_path, json.dumps(state).encode())
        except OSError:
            self.state_path = None  # a read-only place: keep going without the hint

    def _resume(self, partitions: list[int]) -> tuple[int, dict[int, set[int]], dict[int, int]]:
        """Read the topic's tail: (last fully delivered version, the (version -> seqs)
        already present after it, each partition's end offset)."""
        state = self._load_state()
        if state is not None:
            hinted = {int(p): int(o) for p, o in state.get("offsets", {}).items()}
            try:
                return self._scan(partitions, hinted, int(state.get("acked", 0)))
            except _HintBeyondEnd:
                pass  # the topic was recreated or truncated: read all of it
        return self._scan(partitions, {}, 0)

    def _scan(self, partitions: list[int], start: dict[int, int], acked: int):
        from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

        consumer = Consumer(with_logger({"bootstrap.servers": self.bootstrap, "group.id": f"udrflow-sink-{self.name}",
                                         "enable.auto.commit": False, "enable.partition.eof": True,
                                         "auto.offset.reset": "error", "fetch.wait.max.ms": 100}))
        decode = msgspec.json.Decoder(_Envelope).decode
        table = self.table
        best = acked
        seen: dict[int, set[int]] = {}
        ends = {p: start.get(p, 0) for p in partitions}
        waiting = set(partitions)
        deadline = time.monotonic() + SINK_SCAN_TIMEOUT_S
        try:
            consumer.assign([TopicPartition(self.topic, p, start.get(p, OFFSET_BEGINNING)) for p in partitions])
            while waiting:
                if time.monotonic() > deadline:
                    raise ConnectorError(f"reading the tail of topic {self.topic!r} did not reach the end of "
                                         f"partitions {sorted(waiting)} within {SINK_SCAN_TIMEOUT_S:g} s")
                for m in consumer.consume(10_000, 0.2):
                    err = m.error()
                    if err is not None:
                        if err.code() == KafkaError._PARTITION_EOF:
                            waiting.discard(m.partition())
                            ends[m.partition()] = max(ends[m.partition()], m.offset())
                            continue
                        if err.code() == KafkaError._AUTO_OFFSET_RESET and start:
                            raise _HintBeyondEnd()
                        raise ConnectorError(f"reading topic {self.topic!r} partition {m.partition()}: {err.str()}")
                    waiting.add(m.partition())
                    ends[m.partition()] = m.offset() + 1
                    try:
                        env = decode(m.value())
                    except (msgspec.DecodeError, TypeError):
                        continue  # not one of ours: left alone
                    if env.table != table:
                        continue
                    if env.acked > best:
                        best = env.acked
                    if env.version > best:
                        seen.setdefault(env.version, set()).add(env.seq)
        except KafkaException as exc:
            raise ConnectorError(f"reading topic {self.topic!r} on {self.bootstrap}: {exc}") from exc
        finally:
            consumer.close()
        position = max(best, self.from_version)
        present = {v: seqs for v, seqs in seen.items() if v > position}
        return position, present, ends


class _HintBeyondEnd(Exception):
    pass


def _paired(old: pa.Table, new: pa.Table, pk: list[str]) -> tuple[pa.Table, pa.Table]:
    """Old and new rows of the updates, row i of each being the same key."""
    aligned = all(pc.all(pc.equal(old.column(k), new.column(k))).as_py() for k in pk)
    if aligned:
        return old, new
    order = [(k, "ascending") for k in pk]
    return old.take(pc.sort_indices(old, sort_keys=order)), new.take(pc.sort_indices(new, sort_keys=order))
