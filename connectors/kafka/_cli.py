"""``udrflow ingest kafka`` and ``udrflow sink kafka`` (registered by udrflow/cli.py).

Both show live progress on standard error: rewritten in place on a terminal, one line
per ``--report-interval`` otherwise. Ctrl-C (or SIGTERM) stops cleanly: the source
commits what it consumed, the sink finishes its round; the final summary goes to
standard output.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time

import pyarrow as pa

import udrflow
from udrflow.errors import InvalidOptionError, TableNotFoundError

SCHEMA_TYPES = {
    "int8": pa.int8(), "int16": pa.int16(), "int32": pa.int32(), "int64": pa.int64(),
    "uint8": pa.uint8(), "uint16": pa.uint16(), "uint32": pa.uint32(), "uint64": pa.uint64(),
    "float32": pa.float32(), "float64": pa.float64(), "bool": pa.bool_(), "string": pa.string(),
    "binary": pa.binary(), "date": pa.date32(), "timestamp": pa.timestamp("us", tz="UTC"),
}


def add_ingest_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bootstrap", required=True, help="Kafka brokers, HOST:PORT[,HOST:PORT...]")
    p.add_argument("--topic", action="append", required=True, help="topic to consume (repeat for several)")
    p.add_argument("--table", required=True, help="the table the records go to")
    p.add_argument("--format", default="json", choices=("json", "msgpack", "raw"), help="how values decode")
    p.add_argument("--key-format", default="auto", choices=("auto", "text", "json", "none"),
                   help="how message keys give the primary key (auto: text for one key column, json for several)")
    p.add_argument("--value-column", default=None, help="--format raw: the column that receives the bytes")
    p.add_argument("--schema", default=None, metavar="COL:TYPE,...",
                   help="create the table if missing, e.g. 'id:int64,name:string' (types: "
                        + ", ".join(SCHEMA_TYPES) + ")")
    p.add_argument("--primary-key", default=None, metavar="COL[,COL]", help="with --schema: the key columns")
    p.add_argument("--group", default=None, help="join this consumer group (partitions shared with its members)")
    p.add_argument("--name", default=None, help="consumer name the offsets are stored under (default: group or table)")
    p.add_argument("--start", default="earliest", choices=("earliest", "latest"),
                   help="where partitions without stored offsets start")
    p.add_argument("--batch-size", type=int, default=None, help="records per commit at most")
    p.add_argument("--batch-ms", type=int, default=None, help="milliseconds a record waits for its commit at most")
    p.add_argument("--dead-letter-table", default=None, help="default: TABLE_dead_letters")
    p.add_argument("--on-error", default="dead_letter", choices=("dead_letter", "raise"))
    p.add_argument("--until-caught-up", action="store_true", help="exit once every partition is read and committed")
    p.add_argument("--report-interval", type=float, default=2.0, help="seconds between progress lines (no terminal)")
    p.add_argument("-X", dest="config", action="append", default=[], metavar="KEY=VALUE",
                   help="a librdkafka consumer setting, e.g. -X session.timeout.ms=6000")


def add_sink_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bootstrap", required=True, help="Kafka brokers, HOST:PORT[,HOST:PORT...]")
    p.add_argument("--topic", required=True, help="the topic to write (must exist)")
    p.add_argument("--table", required=True, help="the table or view whose changes are sent")
    p.add_argument("--from-version", type=int, default=0, help="send the commits after this version (default 0)")
    p.add_argument("--name", default=None, help="names the saved resume state (default: TABLE-TOPIC)")
    p.add_argument("--round-records", type=int, default=None, help="records per acknowledged round")
    p.add_argument("--until-caught-up", action="store_true", help="exit once the head is delivered")
    p.add_argument("--report-interval", type=float, default=2.0, help="seconds between progress lines (no terminal)")
    p.add_argument("-X", dest="config", action="append", default=[], metavar="KEY=VALUE",
                   help="a librdkafka producer setting")


def parse_schema(text: str, key: str | None) -> tuple[pa.Schema, list[str]]:
    fields = []
    for part in text.split(","):
        name, sep, kind = part.strip().partition(":")
        if not sep or kind.strip() not in SCHEMA_TYPES:
            raise InvalidOptionError(f"--schema expects COL:TYPE entries with TYPE one of {', '.join(SCHEMA_TYPES)}: "
                                     f"got {part.strip()!r}")
        fields.append(pa.field(name.strip(), SCHEMA_TYPES[kind.strip()]))
    pk = [k.strip() for k in key.split(",")] if key else []
    names = [f.name for f in fields]
    for k in pk:
        if k not in names:
            raise InvalidOptionError(f"--primary-key column {k!r} is not in --schema (columns: {names})")
    fields = [f.with_nullable(False) if f.name in pk else f for f in fields]
    return pa.schema(fields), pk


def _config(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise InvalidOptionError(f"-X expects KEY=VALUE: got {item!r}")
        out[key] = value
    return out


class _Rate:
    """Records per second since the previous call (the live rate, not the run's average)."""

    def __init__(self) -> None:
        self._at = time.monotonic()
        self._count = 0

    def __call__(self, count: int) -> float:
        now = time.monotonic()
        rate = (count - self._count) / (now - self._at) if now > self._at else 0.0
        self._at, self._count = now, count
        return rate


class _Display:
    """Prints ``line()`` to stderr periodically until stopped."""

    def __init__(self, line, interval_s: float) -> None:
        self._line = line
        self._tty = sys.stderr.isatty()
        self._interval = 0.5 if self._tty else interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="udrflow-progress")
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self._show()

    def _show(self) -> None:
        text = self._line()
        sys.stderr.write(("\r\x1b[K" + text) if self._tty else text + "\n")
        sys.stderr.flush()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._show()
        if self._tty:
            sys.stderr.write("\n")


def _stop_on_signals(stop: threading.Event) -> None:
    def handler(signum, frame) -> None:
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def run_ingest(args, db_path: str) -> int:
    from connectors.kafka import KafkaSource

    with udrflow.open(db_path) as db:
        if args.table not in db.tables():
            if not args.schema:
                raise TableNotFoundError(f"table {args.table!r} does not exist in {db.path}: create it first, or pass "
                                         f"--schema 'col:type,...' --primary-key col to create it")
            schema, pk = parse_schema(args.schema, args.primary_key)
            db.create_table(args.table, schema, primary_key=pk or None)
        options = {}
        if args.batch_size is not None:
            options["batch_size"] = args.batch_size
        if args.batch_ms is not None:
            options["batch_ms"] = args.batch_ms
        source = KafkaSource(db, args.table, args.topic, bootstrap=args.bootstrap, format=args.format,
                             key_format=args.key_format, value_column=args.value_column, name=args.name,
                             group_id=args.group, start=args.start, dead_letter_table=args.dead_letter_table,
                             on_error=args.on_error, consumer_config=_config(args.config), **options)
        stop = threading.Event()
        _stop_on_signals(stop)

        rate = _Rate()

        def line() -> str:
            s = source.stats
            lag = "?" if s.lag is None else f"{s.lag:,}"
            return (f"{args.table}: {s.records:,} records ({rate(s.records):,.0f}/s)  lag {lag}  "
                    f"dead letters {s.dead_letters:,}  commits {s.commits:,}  version {s.version or '-'}")

        display = _Display(line, args.report_interval)
        try:
            if args.until_caught_up:
                watcher = threading.Thread(target=lambda: (stop.wait(), source.stop()), daemon=True)
                watcher.start()
                stats = source.run_until_caught_up()
            else:
                stats = source.run(stop)
        finally:
            display.close()
        offsets = ", ".join(f"{t}[{p}]={o}" for (t, p), o in sorted(stats.offsets.items()))
        print(f"ingested {stats.records:,} records into {args.table} in {stats.elapsed_s:.1f} s: {stats.rows:,} rows "
              f"written, {stats.deletes:,} deleted, {stats.dead_letters:,} dead letters, {stats.commits:,} commits; "
              f"next offsets {offsets or '(none)'}")
    return 0


def run_sink(args, db_path: str) -> int:
    from connectors.kafka import KafkaSink

    # Read-only: a sink never takes the writer lock, so it can follow a database that
    # another process (say, `udrflow ingest kafka`) is writing.
    with udrflow.open(db_path, readonly=True, create=False) as db:
        options = {} if args.round_records is None else {"round_records": args.round_records}
        sink = KafkaSink(db, args.table, args.topic, bootstrap=args.bootstrap, from_version=args.from_version,
                         name=args.name, producer_config=_config(args.config), **options)
        stop = threading.Event()
        _stop_on_signals(stop)

        rate = _Rate()

        def line() -> str:
            s = sink.stats
            return (f"{args.table} -> {args.topic}: version {s.position:,} (lag {s.lag:,})  {s.records:,} records "
                    f"({rate(s.records):,.0f}/s)  skipped as already sent {s.skipped:,}")

        display = _Display(line, args.report_interval)
        try:
            if args.until_caught_up:
                watcher = threading.Thread(target=lambda: (stop.wait(), sink.stop()), daemon=True)
                watcher.start()
                stats = sink.run_until_caught_up()
            else:
                stats = sink.run(stop)
        finally:
            display.close()
        print(f"delivered {args.table} up to version {stats.position:,} to topic {args.topic}: {stats.records:,} "
              f"records in {stats.elapsed_s:.1f} s ({stats.skipped:,} found already there)")
    return 0
