"""KafkaSource: topics -> a table, exactly once, with the offsets in the same commits.

    source = KafkaSource(db, "orders", ["orders"], bootstrap="127.0.0.1:9092")
    source.run_until_caught_up()      # or source.run(stop_event) until stopped

Two threads: the *fetch* thread consumes (librdkafka prefetches in its own threads),
gathers a batch (up to ``batch_size`` records, ``batch_bytes_max`` value bytes, or
``batch_ms`` after its first record, or sooner when every partition is at its end),
decodes it (connectors.kafka._decode) and queues it; the calling thread commits each
batch as one transaction: the rows, the dead letters and the new offsets together. The
queue holds at most ``SOURCE_BATCHES_QUEUED_MAX`` batches, and librdkafka's own prefetch
queue is bounded too, so a slow disk slows consumption instead of filling memory.

Offsets: on start (or on a group assignment) each partition is positioned at the offset
stored in ``__udrflow_kafka_offsets`` (see _offsets.py), or at the beginning (``start=
"earliest"``) / end (``"latest"``) of a partition this consumer never stored. Kafka's
committed group offsets are not used at all: the log is the one source of truth, so a
restart after any crash (even SIGKILL mid-commit) resumes exactly after the last
committed batch. A stored offset that the broker no longer has (topic recreated or
truncated by retention) is an error, not a silent jump.

Consumer groups: with ``group_id`` the source subscribes and Kafka balances partitions
among the group's members; on assignment each partition is positioned from the database
(never from Kafka), and on revocation the source first commits everything it consumed
from those partitions. Without ``group_id`` (the default) it assigns itself every
partition of the topics as they exist at start.

"Caught up" is detected with partition-EOF events (``enable.partition.eof``), never with
high watermarks, which some brokers report stale.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
import time

import pyarrow as pa

import udrflow
from connectors.kafka._decode import Decoded, Records, RowDecoder
from connectors.kafka._limits import (
    SOURCE_BARRIER_WAIT_S,
    SOURCE_BATCH_BYTES_MAX,
    SOURCE_BATCH_MS_DEFAULT,
    SOURCE_BATCH_MS_MAX,
    SOURCE_BATCH_SIZE_DEFAULT,
    SOURCE_BATCH_SIZE_MAX,
    SOURCE_BATCHES_QUEUED_MAX,
    SOURCE_CONSUME_MESSAGES_MAX,
    SOURCE_FETCH_QUEUE_KBYTES_MAX,
    SOURCE_FETCH_WAIT_MS,
    SOURCE_LAG_INTERVAL_S,
    SOURCE_METADATA_TIMEOUT_S,
    SOURCE_POLL_S,
)
from connectors.kafka._logging import with_logger
from connectors.kafka._offsets import (
    DEAD_LETTER_KEY,
    DEAD_LETTER_SCHEMA,
    OFFSETS_KEY,
    OFFSETS_SCHEMA,
    OFFSETS_TABLE,
    acquire_ledger,
    ensure_table,
    offset_rows,
    release_ledger,
)
from udrflow.errors import ConnectorError, InvalidOptionError, UsageError

ON_ERROR = ("dead_letter", "raise")
STARTS = ("earliest", "latest")


@dataclasses.dataclass
class IngestStats:
    """Progress of a source. ``records``: records reflected in committed batches (rows,
    deletes, dead letters and records superseded by a later one of the same key);
    ``consumed``: records fetched, committed or not; ``lag``: records behind the end of
    the assigned partitions *as the broker reports its high watermarks* (None before the
    first report); ``offsets``: (topic, partition) -> next offset stored."""

    records: int = 0
    rows: int = 0
    deletes: int = 0
    dead_letters: int = 0
    commits: int = 0
    version: int | None = None
    consumed: int = 0
    lag: int | None = None
    caught_up: bool = False
    rewinds: int = 0
    elapsed_s: float = 0.0
    offsets: dict = dataclasses.field(default_factory=dict)

    @property
    def records_per_s(self) -> float:
        return self.records / self.elapsed_s if self.elapsed_s > 0 else 0.0


class _Batch:
    __slots__ = ("records", "decoded", "starts", "ends", "epoch")

    def __init__(self, records: Records, decoded: Decoded, starts: dict, ends: dict, epoch: int) -> None:
        self.records = records
        self.decoded = decoded
        self.starts = starts    # (topic, partition) -> stored offset this batch expects (None: none stored)
        self.ends = ends        # (topic, partition) -> next offset after this batch
        self.epoch = epoch


class _Barrier:
    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = threading.Event()


_CAUGHT_UP = object()
_END = object()


class KafkaSource:
    """Consume Kafka topics into table ``table`` of ``db``, exactly once.

    >>> from connectors.kafka import KafkaSource                      # doctest: +SKIP
    >>> source = KafkaSource(db, "orders", "orders", bootstrap="127.0.0.1:9092")  # doctest: +SKIP
    >>> source.run_until_caught_up().records                           # doctest: +SKIP
    100000

    Options:

    - ``topics``: a topic name or a list of them.
    - ``bootstrap``: the brokers, ``"host:port[,host:port...]"``.
    - ``format``: how values decode: ``"json"`` (default; an object per value),
      ``"msgpack"`` (a map per value), ``"raw"`` (the bytes, into ``value_column``), or a
      function ``fn(value: bytes) -> dict``. Unknown fields are ignored.
    - ``key_format``: how message keys give the primary key: ``"auto"`` (default:
      ``"text"`` for a one-column key, ``"json"`` for a composite one), ``"text"`` (the
      key's text converted to the column's type), ``"json"`` (a scalar, or an object of
      the key columns), ``"none"`` (ignore keys; the value holds the key). Keyed tables
      are upserted (the last record of a key wins) and tombstones delete; tables without
      a primary key get every record inserted.
    - ``name``: the consumer name under which offsets are stored (default: ``group_id``
      if given, else the table's name). Two sources with different names consume
      independently.
    - ``group_id``: join this consumer group (partitions balanced among its members);
      None (default) reads every partition of the topics.
    - ``start``: where a partition with no stored offset starts: ``"earliest"`` (default)
      or ``"latest"``.
    - ``batch_size`` / ``batch_ms`` / ``batch_bytes_max``: a commit happens after this many
      records, this many milliseconds after a batch's first record, or this many value
      bytes, whichever comes first (and at once when every partition is at its end).
    - ``dead_letter_table``: where failed records go (default ``<table>_dead_letters``;
      created if missing). ``on_error``: ``"dead_letter"`` (default: keep going) or
      ``"raise"`` (raise ConnectorError at the first failed record; its batch is not
      committed, so a restart reads it again).
    - ``consumer_config``: extra librdkafka settings (e.g. ``{"session.timeout.ms": 6000}``).
    - ``connect_timeout_s``: how long the start waits for the broker's topic metadata.
    """

    def __init__(self, db, table: str, topics, *, bootstrap: str, format="json", key_format: str = "auto",
                 value_column: str | None = None, name: str | None = None, group_id: str | None = None,
                 start: str = "earliest", batch_size: int = SOURCE_BATCH_SIZE_DEFAULT,
                 batch_ms: int = SOURCE_BATCH_MS_DEFAULT, batch_bytes_max: int = SOURCE_BATCH_BYTES_MAX,
                 dead_letter_table: str | None = None, on_error: str = "dead_letter",
                 consumer_config: dict | None = None, connect_timeout_s: float = SOURCE_METADATA_TIMEOUT_S) -> None:
        if db.readonly:
            raise UsageError(f"a Kafka source writes table {table!r}: open {db.path} without readonly=True")
        self.db = db
        self.table = table
        self.topics = [topics] if isinstance(topics, str) else list(topics)
        if not self.topics or not all(isinstance(t, str) and t for t in self.topics):
            raise InvalidOptionError(f"topics must be a topic name or a non-empty list of names: got {topics!r}")
        if not isinstance(bootstrap, str) or not bootstrap:
            raise InvalidOptionError(f"bootstrap must be 'host:port' (comma-separated for several): got {bootstrap!r}")
        self.bootstrap = bootstrap
        _check_int("batch_size", batch_size, 1, SOURCE_BATCH_SIZE_MAX)
        _check_int("batch_ms", batch_ms, 1, SOURCE_BATCH_MS_MAX)
        _check_int("batch_bytes_max", batch_bytes_max, 1, SOURCE_BATCH_BYTES_MAX)
        if on_error not in ON_ERROR:
            raise InvalidOptionError(f"on_error must be one of {ON_ERROR}: got {on_error!r}")
        if start not in STARTS:
            raise InvalidOptionError(f"start must be one of {STARTS}: got {start!r}")
        self.batch_size, self.batch_ms, self.batch_bytes_max = batch_size, batch_ms, batch_bytes_max
        self.on_error = on_error
        self.start = start
        self.group_id = group_id
        self.name = name or group_id or table
        self.dead_letter_table = dead_letter_table or f"{table}_dead_letters"
        schema = db.schema(table)  # TableNotFoundError names the missing table
        self.primary_key = db.primary_key(table)
        self.decoder = RowDecoder(table, schema, self.primary_key, format, key_format, value_column)
        self.consumer_config = dict(consumer_config or {})
        self.connect_timeout_s = connect_timeout_s
        strategy = str(self.consumer_config.get("partition.assignment.strategy", ""))
        if "cooperative" in strategy:
            raise InvalidOptionError("partition.assignment.strategy must be an eager one (range, roundrobin): the "
                                     f"source commits revoked partitions' batches before letting them go; got {strategy!r}")
        self._stop = threading.Event()
        self._stats = IngestStats()
        self._running = False

    # ---- public ------------------------------------------------------------------------------

    @property
    def stats(self) -> IngestStats:
        """A copy of the current progress (safe to read from any thread)."""
        s = dataclasses.replace(self._stats, offsets=dict(self._stats.offsets))
        if self._running:
            s.elapsed_s = time.monotonic() - self._started
        return s

    @property
    def assignment(self) -> list[tuple[str, int]]:
        """The (topic, partition) pairs this source reads now (with a group: what Kafka
        assigned it; empty before the first assignment and after stopping)."""
        return sorted(self._assigned) if self._running else []

    _assigned: set = frozenset()

    def run(self, stop_event: threading.Event | None = None) -> IngestStats:
        """Consume and commit until ``stop_event`` is set or :meth:`stop` is called; then
        commit what was consumed, leave the group, and return the final stats."""
        return self._run(stop_event, until_caught_up=False, timeout_s=None)

    def run_until_caught_up(self, timeout_s: float | None = None) -> IngestStats:
        """Consume and commit until every assigned partition has been read to its end and
        committed (``stats.caught_up``), or ``timeout_s`` passes; then stop cleanly."""
        return self._run(None, until_caught_up=True, timeout_s=timeout_s)

    def stop(self) -> None:
        """Ask a running source to stop (from any thread): it commits what it consumed."""
        self._stop.set()

    # ---- the calling thread: commits -------------------------------------------------------

    def _run(self, stop_event, until_caught_up: bool, timeout_s: float | None) -> IngestStats:
        from confluent_kafka import Consumer, KafkaException

        if self._running:
            raise UsageError(f"Kafka source {self.name!r} is already running")
        db = self.db
        ensure_table(db, OFFSETS_TABLE, OFFSETS_SCHEMA, OFFSETS_KEY)
        if self.on_error == "dead_letter":
            ensure_table(db, self.dead_letter_table, DEAD_LETTER_SCHEMA, DEAD_LETTER_KEY)
        self._ledger = acquire_ledger(db, self.name, exclusive=self.group_id is None)
        self._stop.clear()
        self._fetch_stop = threading.Event()
        self._abort = threading.Event()
        self._queue: queue.Queue = queue.Queue(SOURCE_BATCHES_QUEUED_MAX)
        self._rewind_epoch = 0
        self._stats = IngestStats(offsets=dict(self._ledger.offsets))
        self._started = time.monotonic()
        self._running = True
        deadline = None if timeout_s is None else self._started + timeout_s
        try:
            try:
                self._consumer = Consumer(with_logger(self._config()))
            except KafkaException as exc:
                raise ConnectorError(f"cannot create a Kafka consumer for {self.bootstrap}: {exc}") from exc
            fetcher = threading.Thread(target=self._fetch_main, name=f"udrflow-kafka-{self.name}", daemon=True)
            fetcher.start()
            try:
                self._commit_loop(stop_event, until_caught_up, deadline)
            finally:
                self._fetch_stop.set()
                if fetcher.is_alive() and not self._fetch_done:
                    self._abort.set()
                    _drain(self._queue)
                fetcher.join()
        finally:
            self._running = False
            self._stats.elapsed_s = time.monotonic() - self._started
            release_ledger(db, self.name, self._ledger)
        return self.stats

    _fetch_done = False  # set when the fetch thread has said its last word (_END)

    def _commit_loop(self, stop_event, until_caught_up: bool, deadline: float | None) -> None:
        self._fetch_done = False
        while True:
            if self._stop.is_set() or (stop_event is not None and stop_event.is_set()) or \
                    (deadline is not None and time.monotonic() > deadline):
                self._fetch_stop.set()
            try:
                item = self._queue.get(timeout=SOURCE_POLL_S)
            except queue.Empty:
                continue
            if isinstance(item, _Batch):
                self._commit(item)
            elif isinstance(item, _Barrier):
                item.done.set()
            elif item is _CAUGHT_UP:
                self._stats.caught_up = True
                if until_caught_up:
                    self._fetch_stop.set()
            elif item is _END:
                self._fetch_done = True
                return
            elif isinstance(item, BaseException):
                raise item

    def _commit(self, batch: _Batch) -> None:
        stats = self._stats
        if batch.epoch < self._rewind_epoch:
            return  # consumed before a rewind: the fetch thread reads these records again
        ledger = self._ledger
        with ledger.lock:
            for tp, start in batch.starts.items():
                if ledger.offsets.get(tp) != start:
                    # Another member of the group committed this partition since we were
                    # positioned: drop the batch and re-read from what is stored.
                    self._rewind_epoch = batch.epoch + 1
                    stats.rewinds += 1
                    return
            version = udrflow.retry(lambda: self._write(batch))
            ledger.offsets.update(batch.ends)
        d = batch.decoded
        stats.records += len(batch.records)
        stats.rows += 0 if d.rows is None else d.rows.num_rows
        stats.deletes += 0 if d.deletes is None else d.deletes.num_rows
        stats.dead_letters += len(d.dead)
        stats.commits += 1
        stats.version = version
        stats.offsets.update(batch.ends)

    def _write(self, batch: _Batch) -> int:
        d = batch.decoded
        with self.db.transaction() as tx:
            if d.rows is not None:
                if self.primary_key:
                    tx.upsert(self.table, d.rows)
                else:
                    tx.insert(self.table, d.rows)
            if d.deletes is not None:
                tx.delete(self.table, keys=d.deletes)
            if d.dead:
                tx.insert(self.dead_letter_table, _dead_rows(self.name, batch.records, d.dead))
            tx.upsert(OFFSETS_TABLE, offset_rows(self.name, self.table, batch.ends))
            tx.meta = {"kafka_source": self.name, "offsets": [[t, p, batch.starts[(t, p)], end]
                                                              for (t, p), end in sorted(batch.ends.items())]}
        return tx.version

    # ---- the fetch thread --------------------------------------------------------------------

    def _config(self) -> dict:
        config = {
            "bootstrap.servers": self.bootstrap,
            "group.id": self.group_id or f"udrflow-{self.name}",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "enable.partition.eof": True,
            # A stored offset the broker does not have is an error, never a silent jump.
            "auto.offset.reset": "error",
            "fetch.wait.max.ms": SOURCE_FETCH_WAIT_MS,
            "queued.max.messages.kbytes": SOURCE_FETCH_QUEUE_KBYTES_MAX,
            "partition.assignment.strategy": "range,roundrobin",
            "error_cb": self._on_client_error,
        }
        config.update(self.consumer_config)
        return config

    def _on_client_error(self, err) -> None:
        if err.fatal():
            self._fatal = ConnectorError(f"Kafka consumer for {self.bootstrap} failed: {err.str()}")

    _fatal: ConnectorError | None = None

    def _fetch_main(self) -> None:
        from confluent_kafka import KafkaException

        try:
            try:
                self._fetch_loop()
            except KafkaException as exc:
                raise ConnectorError(f"Kafka consumer for {self.bootstrap} (topics {self.topics}) failed: "
                                     f"{exc.args[0].str() if exc.args else exc}") from exc
        except BaseException as exc:  # handed to the committing thread, which raises it
            self._fetch_stop.set()
            self._put(exc)
        finally:
            try:
                self._consumer.close()
            except Exception:  # closing after a failure: the first error is the one to report
                pass
            self._put(_END)

    def _fetch_loop(self) -> None:
        from confluent_kafka import OFFSET_BEGINNING, OFFSET_END

        consumer = self._consumer
        self._initial = OFFSET_BEGINNING if self.start == "earliest" else OFFSET_END
        self._positions: dict[tuple[str, int], int | None] = {}
        self._assigned: set[tuple[str, int]] = set()
        self._assignment_seen = False
        self._eof: set[tuple[str, int]] = set()
        self._epoch = 0
        self._new_pending()
        self._caught_up_sent = False
        lag_at = 0.0
        if self.group_id is None:
            self._assign_all()
        else:
            consumer.subscribe(self.topics, on_assign=self._on_assign, on_revoke=self._on_revoke,
                               on_lost=self._on_revoke)
        while not self._fetch_stop.is_set():
            if self._fatal is not None:
                raise self._fatal
            if self._rewind_epoch > self._epoch:
                self._rewind()
            pending = self._pending
            room = self.batch_size - len(pending)
            timeout = SOURCE_POLL_S
            if len(pending):
                timeout = max(0.0, min(timeout, self._first_at + self.batch_ms / 1000 - time.monotonic()))
            msgs = consumer.consume(max(1, min(room, SOURCE_CONSUME_MESSAGES_MAX)), timeout)
            if msgs:
                self._absorb(msgs)
            pending = self._pending
            now = time.monotonic()
            at_end = self._assignment_seen and self._eof >= self._assigned
            if len(pending) and (len(pending) >= self.batch_size or self._pending_bytes >= self.batch_bytes_max
                                 or now - self._first_at >= self.batch_ms / 1000 or at_end):
                self._flush()
            if at_end and not len(self._pending) and not self._caught_up_sent:
                self._caught_up_sent = True
                self._put(_CAUGHT_UP)
            if now - lag_at >= SOURCE_LAG_INTERVAL_S:
                lag_at = now
                self._update_lag()
        self._flush()

    def _new_pending(self) -> None:
        self._pending = Records()
        self._pending_starts: dict[tuple[str, int], int | None] = {}
        self._pending_bytes = 0
        self._first_at = 0.0

    def _absorb(self, msgs) -> None:
        """Append consumed records to the pending batch (the per-record hot loop: plain
        list appends; per-partition bookkeeping only where the partition changes)."""
        from confluent_kafka import KafkaError

        rec = self._pending
        if not len(rec):
            self._first_at = time.monotonic()  # a batch of only EOF events stays empty, and this is reset
        topics, partitions, offsets, keys, values = rec.topics, rec.partitions, rec.offsets, rec.keys, rec.values
        positions, starts, eof = self._positions, self._pending_starts, self._eof
        nbytes = 0
        events = 0
        cur_t = cur_p = None
        last = -1
        for m in msgs:
            err = m.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    eof.add((m.topic(), m.partition()))
                    events += 1
                    continue
                raise ConnectorError(f"Kafka consumer error on topic {m.topic()!r} partition {m.partition()} "
                                     f"at offset {m.offset()}: {err.str()}"
                                     + (" (the stored offset is not on the broker: was the topic recreated or "
                                        "truncated?)" if err.code() == KafkaError._AUTO_OFFSET_RESET else ""))
            t = m.topic()
            p = m.partition()
            o = m.offset()
            v = m.value()
            if p != cur_p or t != cur_t:
                if cur_p is not None:
                    positions[(cur_t, cur_p)] = last + 1
                cur_t, cur_p = t, p
                tp = (t, p)
                if tp not in starts:
                    starts[tp] = positions.get(tp)
                eof.discard(tp)
                self._caught_up_sent = False
            last = o
            topics.append(t)
            partitions.append(p)
            offsets.append(o)
            keys.append(m.key())
            values.append(v)
            if v is not None:
                nbytes += len(v)
        if cur_p is not None:
            positions[(cur_t, cur_p)] = last + 1
        self._pending_bytes += nbytes
        self._stats.consumed += len(msgs) - events

    def _flush(self) -> None:
        """Decode the pending batch and queue it for commit."""
        rec = self._pending
        if not len(rec):
            return
        starts = self._pending_starts
        ends = {tp: self._positions[tp] for tp in starts}
        epoch = self._epoch
        self._new_pending()
        decoded = self.decoder.decode(rec)
        if decoded.dead and self.on_error == "raise":
            i, reason = next(iter(decoded.dead.items()))
            self._put(ConnectorError(
                f"record at offset {rec.offsets[i]} of topic {rec.topics[i]!r} partition {rec.partitions[i]} failed "
                f"for table {self.table!r}: {reason}. Nothing of its batch was committed (on_error='raise'); "
                f"a restart reads it again"))
            self._fetch_stop.set()
            return
        self._put(_Batch(rec, decoded, starts, ends, epoch))

    def _put(self, item) -> None:
        while not self._abort.is_set():
            try:
                self._queue.put(item, timeout=SOURCE_POLL_S)
                return
            except queue.Full:
                continue

    def _position_of(self, stored: int | None) -> int:
        return self._initial if stored is None else stored

    def _assign_all(self) -> None:
        from confluent_kafka import KafkaException, TopicPartition

        try:
            metadata = self._consumer.list_topics(timeout=self.connect_timeout_s)
        except KafkaException as exc:
            raise ConnectorError(f"cannot reach the Kafka broker at {self.bootstrap}: {exc.args[0].str()} "
                                 f"(waited {self.connect_timeout_s:g} s for topic metadata)") from exc
        with self._ledger.lock:
            stored = dict(self._ledger.offsets)
        tps = []
        for topic in self.topics:
            info = metadata.topics.get(topic)
            if info is None or info.error is not None or not info.partitions:
                known = ", ".join(sorted(t for t in metadata.topics if not t.startswith("__"))) or "none"
                raise ConnectorError(f"topic {topic!r} does not exist on {self.bootstrap}: expected one of the "
                                     f"topics there ({known})")
            for p in sorted(info.partitions):
                s = stored.get((topic, p))
                self._positions[(topic, p)] = s
                tps.append(TopicPartition(topic, p, self._position_of(s)))
        self._assigned = {(tp.topic, tp.partition) for tp in tps}
        self._assignment_seen = True
        self._consumer.assign(tps)

    def _on_assign(self, consumer, partitions) -> None:
        with self._ledger.lock:
            stored = dict(self._ledger.offsets)
        for tp in partitions:
            s = stored.get((tp.topic, tp.partition))
            self._positions[(tp.topic, tp.partition)] = s
            tp.offset = self._position_of(s)
        self._assigned = {(tp.topic, tp.partition) for tp in partitions}
        self._eof = {tp for tp in self._eof if tp in self._assigned}
        self._assignment_seen = True
        self._caught_up_sent = False
        consumer.assign(partitions)

    def _on_revoke(self, consumer, partitions) -> None:
        # Commit everything consumed from the revoked partitions before they go: the next
        # owner positions itself from the database, so it must see our last batch there.
        if not self._abort.is_set():
            self._flush()
            barrier = _Barrier()
            self._put(barrier)
            deadline = time.monotonic() + SOURCE_BARRIER_WAIT_S
            while not barrier.done.wait(SOURCE_POLL_S) and not self._abort.is_set():
                if time.monotonic() > deadline:
                    raise ConnectorError(f"partitions {sorted(partitions_of(partitions))} were revoked from Kafka "
                                         f"source {self.name!r}, and its in-flight batches did not commit within "
                                         f"{SOURCE_BARRIER_WAIT_S:g} s")
        gone = {(tp.topic, tp.partition) for tp in partitions}
        self._assigned = self._assigned - gone
        self._eof -= gone
        for tp in gone:
            self._positions.pop(tp, None)
        consumer.unassign()

    def _rewind(self) -> None:
        from confluent_kafka import TopicPartition

        self._new_pending()
        with self._ledger.lock:
            stored = dict(self._ledger.offsets)
        tps = []
        for tp in sorted(self._assigned):
            s = stored.get(tp)
            self._positions[tp] = s
            tps.append(TopicPartition(tp[0], tp[1], self._position_of(s)))
        self._eof.clear()
        self._epoch = self._rewind_epoch
        self._consumer.assign(tps)

    def _update_lag(self) -> None:
        from confluent_kafka import TopicPartition

        total, known = 0, False
        for tp in self._assigned:
            try:
                _low, high = self._consumer.get_watermark_offsets(TopicPartition(*tp), cached=True)
            except Exception:  # a cache miss or a partition in flux: lag is advisory
                continue
            if high is None or high < 0:
                continue
            known = True
            total += max(0, high - (self._positions.get(tp) or 0))
        self._stats.lag = total if known else None


def partitions_of(partitions) -> list[tuple[str, int]]:
    return [(tp.topic, tp.partition) for tp in partitions]


def _check_int(name: str, value, lo: int, hi: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise InvalidOptionError(f"{name} must be an int in [{lo}, {hi}]: got {value!r}")


def _drain(q: queue.Queue) -> None:
    while True:
        try:
            q.get_nowait()
        except queue.Empty:
            return


def _dead_rows(source: str, records: Records, dead: dict[int, str]) -> pa.Table:
    idx = list(dead)
    return pa.table({
        "source": pa.array([source] * len(idx), pa.string()),
        "topic": pa.array([records.topics[i] for i in idx], pa.string()),
        "partition": pa.array([records.partitions[i] for i in idx], pa.int32()),
        "offset": pa.array([records.offsets[i] for i in idx], pa.int64()),
        "key": pa.array([records.keys[i] for i in idx], pa.binary()),
        "value": pa.array([records.values[i] for i in idx], pa.binary()),
        "error": pa.array(list(dead.values()), pa.string()),
    }, schema=DEAD_LETTER_SCHEMA)
