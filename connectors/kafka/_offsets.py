"""Where a Kafka source stands, kept in the database itself.

The table ``__udrflow_kafka_offsets`` holds, per consumer (a source's ``name``, or its
consumer group), topic and partition, ``next_offset``: the offset of the first record
not yet reflected in the database. A source writes it in the same transaction as the
rows those records produced, so the log alone says where to resume: after a crash the
database holds either a batch's rows *and* its offsets, or neither. Kafka's own committed
group offsets are never read or written.

Within one process a :class:`Ledger` mirrors the stored offsets of one consumer, so a
commit checks without reading the table that the batch starts where the stored offsets
say (a compare-and-set): a batch consumed before another member of the same group moved
the partition on is dropped and re-read, never applied twice. Only one process can
write a database (its writer lock), so the in-process ledger sees every offset write.

Failed records go to a dead-letter table (default ``<table>_dead_letters``) with the
consuming ``source``, ``topic``, ``partition``, ``offset``, the raw ``key`` and ``value``
bytes and the ``error``; it is keyed by (source, topic, partition, offset).
"""

from __future__ import annotations

import os
import threading

import pyarrow as pa
import pyarrow.compute as pc

from udrflow.errors import TableExistsError

OFFSETS_TABLE = "__udrflow_kafka_offsets"
OFFSETS_SCHEMA = pa.schema([
    pa.field("consumer", pa.string(), nullable=False),
    pa.field("topic", pa.string(), nullable=False),
    pa.field("partition", pa.int32(), nullable=False),
    pa.field("next_offset", pa.int64(), nullable=False),
    pa.field("table", pa.string()),
])
OFFSETS_KEY = ["consumer", "topic", "partition"]

DEAD_LETTER_SCHEMA = pa.schema([
    pa.field("source", pa.string(), nullable=False),
    pa.field("topic", pa.string(), nullable=False),
    pa.field("partition", pa.int32(), nullable=False),
    pa.field("offset", pa.int64(), nullable=False),
    pa.field("key", pa.binary()),
    pa.field("value", pa.binary()),
    pa.field("error", pa.string(), nullable=False),
])
DEAD_LETTER_KEY = ["source", "topic", "partition", "offset"]


def ensure_table(db, name: str, schema: pa.Schema, key: list[str]) -> None:
    """Create table ``name`` unless it exists (another thread may create it first)."""
    if name in db.tables():
        return
    try:
        db.create_table(name, schema, primary_key=key)
    except TableExistsError:
        pass


def stored_offsets(db, consumer: str) -> dict[tuple[str, int], int]:
    """(topic, partition) -> next offset, as stored for ``consumer`` at the head."""
    if OFFSETS_TABLE not in db.tables():
        return {}
    t = db.read(OFFSETS_TABLE)
    t = t.filter(pc.equal(t.column("consumer"), consumer))
    return {(r["topic"], r["partition"]): r["next_offset"] for r in t.select(["topic", "partition", "next_offset"])
            .to_pylist()}


def offset_rows(consumer: str, table: str, ends: dict[tuple[str, int], int]) -> pa.Table:
    items = sorted(ends.items())
    return pa.table({
        "consumer": pa.array([consumer] * len(items), pa.string()),
        "topic": pa.array([tp[0] for tp, _ in items], pa.string()),
        "partition": pa.array([tp[1] for tp, _ in items], pa.int32()),
        "next_offset": pa.array([end for _, end in items], pa.int64()),
        "table": pa.array([table] * len(items), pa.string()),
    }, schema=OFFSETS_SCHEMA)


class Ledger:
    """The stored offsets of one consumer in one database, shared by the sources of this
    process that use it. ``lock`` is held around each compare-and-set commit."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.offsets: dict[tuple[str, int], int] = {}
        self.users = 0       # sources using it now
        self.exclusive = False  # held by a source without a consumer group


_ledgers: dict[tuple[str, str, str], Ledger] = {}
_ledgers_lock = threading.Lock()


def acquire_ledger(db, consumer: str, exclusive: bool) -> Ledger:
    """The ledger of ``consumer`` in ``db``; loaded from the table when no source of this
    process is using it. ``exclusive`` (a source without a group) refuses to share it."""
    from udrflow.errors import ConnectorError

    key = (os.path.realpath(db.path), db.branch, consumer)
    with _ledgers_lock:
        ledger = _ledgers.setdefault(key, Ledger())
        if ledger.users and (exclusive or ledger.exclusive):
            raise ConnectorError(f"a Kafka source with consumer name {consumer!r} is already running on "
                                 f"{db.path} in this process: expected one at a time without a consumer group "
                                 f"(give each source its own name=, or the same group_id= to share partitions)")
        if ledger.users == 0:
            with ledger.lock:
                ledger.offsets = stored_offsets(db, consumer)
        ledger.users += 1
        ledger.exclusive = exclusive
        return ledger


def release_ledger(db, consumer: str, ledger: Ledger) -> None:
    with _ledgers_lock:
        ledger.users -= 1
        if ledger.users == 0:
            ledger.exclusive = False
