"""The Kafka source's decoding of a batch of records into rows, without a broker: every value
format, every key format, tombstones, the last record per key winning, and each kind of bad
record landing among the dead with a reason that says what was expected, found and where."""

from __future__ import annotations

import datetime as dt

import msgspec
import pyarrow as pa
import pytest

from connectors.kafka import _limits
from connectors.kafka._decode import Records, RowDecoder, bisect
from udrflow.errors import InvalidOptionError

SCHEMA = pa.schema([pa.field("id", pa.int64(), nullable=False), ("name", pa.string()), ("qty", pa.int16()),
                    ("amount", pa.float64()), ("at", pa.timestamp("us", tz="UTC"))])


def records(*items) -> Records:
    """items: (key, value) pairs on partition 0 from offset 0."""
    r = Records()
    for i, (key, value) in enumerate(items):
        r.topics.append("t")
        r.partitions.append(0)
        r.offsets.append(i)
        r.keys.append(key)
        r.values.append(value)
    return r


def rows(decoded) -> list[dict]:
    return sorted(decoded.rows.to_pylist(), key=lambda r: r["id"]) if decoded.rows is not None else []


def test_json_values_keyed_by_the_message_key():
    d = RowDecoder("orders", SCHEMA, ["id"], "json")
    out = d.decode(records((b"1", b'{"name": "ann", "qty": 3, "amount": 9.5, "at": "2026-01-02T03:04:05Z"}'),
                           (b"2", b'{"id": 2, "name": "bob", "unknown": [1, 2]}'),
                           (None, b'{"id": 3}')))
    assert not out.dead and out.deletes is None
    assert rows(out) == [
        {"id": 1, "name": "ann", "qty": 3, "amount": 9.5, "at": dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)},
        {"id": 2, "name": "bob", "qty": None, "amount": None, "at": None},
        {"id": 3, "name": None, "qty": None, "amount": None, "at": None}]
    assert out.rows.schema == SCHEMA


def test_last_record_of_a_key_wins_and_tombstones_delete():
    d = RowDecoder("orders", SCHEMA, ["id"], "json")
    out = d.decode(records((b"1", b'{"name": "a"}'), (b"2", b'{"name": "b"}'), (b"1", b'{"name": "c"}'),
                           (b"2", None), (b"3", None), (b"3", b'{"name": "d"}'), (b"4", b'{"name": "e"}'),
                           (b"4", None)))
    assert [(r["id"], r["name"]) for r in rows(out)] == [(1, "c"), (3, "d")]
    assert sorted(out.deletes.column("id").to_pylist()) == [2, 4]
    assert not out.dead


def test_bad_records_are_dead_with_reasons_and_neighbours_survive():
    d = RowDecoder("orders", SCHEMA, ["id"], "json")
    out = d.decode(records(
        (b"1", b'{"name": "ok"}'),
        (b"2", b"{not json"),
        (b"3", b'{"qty": "many"}'),
        (b"4", b'{"qty": 70000}'),
        (b"x", b'{"name": "bad key"}'),
        (b"6", b'{"id": 7}'),
        (None, b'{"name": "no key at all"}'),
        (None, None),
        (b"9", b'{"name": "ok too"}'),
        (b"10", b"[1, 2]")))
    assert [r["id"] for r in rows(out)] == [1, 9]
    assert list(out.dead) == [1, 2, 3, 4, 5, 6, 7, 9]
    assert out.dead[1].startswith("value is not valid JSON: JSON is malformed")
    assert out.dead[2] == "value does not fit table 'orders': Expected `int | null`, got `str` - at `$.qty`"
    assert out.dead[3] == "value does not fit table 'orders': Expected `int` <= 32767 - at `$.qty`"
    assert out.dead[4].startswith("message key b'x' is not a valid int64 for key column 'id' of table 'orders'")
    assert out.dead[5] == "message key gives id=6 but the value has id=7"
    assert out.dead[6] == ("no value for key column 'id' of table 'orders': the record has no message key and the "
                           "value does not have it")
    assert out.dead[7] == "tombstone (null value) without a message key: nothing says which row of table 'orders' " \
                          "to delete"
    assert out.dead[9] == "value does not fit table 'orders': Expected `object`, got `array`"


def test_required_columns_and_msgpack():
    schema = pa.schema([pa.field("id", pa.int32(), nullable=False), pa.field("tag", pa.string(), nullable=False),
                        ("blob", pa.binary()), ("tags", pa.list_(pa.string()))])
    d = RowDecoder("t", schema, ["id"], "msgpack")
    enc = msgspec.msgpack.encode
    out = d.decode(records((b"1", enc({"tag": "a", "blob": b"\x00\x01", "tags": ["x", None]})),
                           (b"2", enc({"blob": b""})),
                           (b"3", enc({"tag": None})),
                           (b"4", b"\xc1")))
    assert rows(out) == [{"id": 1, "tag": "a", "blob": b"\x00\x01", "tags": ["x", None]}]
    assert out.dead == {1: "value does not fit table 't': Object missing required field `tag`",
                        2: "value does not fit table 't': Expected `str`, got `None` - at `$.tag`",
                        3: out.dead[3]}
    assert out.dead[3].startswith("value is not valid msgpack")


def test_raw_values_and_binary_keys():
    schema = pa.schema([pa.field("k", pa.binary(), nullable=False), ("payload", pa.string())])
    d = RowDecoder("raw", schema, ["k"], "raw")
    out = d.decode(records((b"\xff\x00", b"hello"), (b"b", b"\xff\xfe not utf-8"), (b"c", b"")))
    assert sorted(out.rows.to_pylist(), key=lambda r: r["k"]) == [{"k": b"c", "payload": ""},
                                                                  {"k": b"\xff\x00", "payload": "hello"}]
    assert list(out.dead) == [1] and out.dead[1].startswith("value is not UTF-8 text for column 'payload'")
    with pytest.raises(InvalidOptionError, match="expected exactly one, or name it"):
        RowDecoder("t", SCHEMA, ["id"], "raw")
    with pytest.raises(InvalidOptionError, match="expected a binary or string column, got int16"):
        RowDecoder("t", SCHEMA, ["id"], "raw", value_column="qty")


def test_user_function_decoder():
    def parse(value: bytes) -> dict:
        name, qty = value.decode().split(",")
        return {"name": name, "qty": int(qty)}

    d = RowDecoder("orders", SCHEMA, ["id"], parse)
    out = d.decode(records((b"1", b"ann,3"), (b"2", b"bob"), (b"3", b"cy,99999"), (b"4", b"dee,4")))
    assert [(r["id"], r["name"], r["qty"]) for r in rows(out)] == [(1, "ann", 3), (4, "dee", 4)]
    assert out.dead[1] == "decoder 'parse' raised ValueError: not enough values to unpack (expected 2, got 1)"
    assert out.dead[2].startswith("decoded value does not fit table 'orders': column 'qty'")


def test_composite_keys_from_json_keys_and_tables_without_keys():
    schema = pa.schema([pa.field("a", pa.string(), nullable=False), pa.field("b", pa.int64(), nullable=False),
                        ("v", pa.float64())])
    d = RowDecoder("t", schema, ["a", "b"], "json")
    assert d.key_format == "json"
    out = d.decode(records((b'{"a": "x", "b": 1}', b'{"v": 1.5}'), (b'{"a": "x"}', b'{"v": 2}'),
                           (b'{"a": "y", "b": 2}', None), (b'"nope"', b'{"v": 3}')))
    assert out.rows.to_pylist() == [{"a": "x", "b": 1, "v": 1.5}]
    assert out.deletes.to_pylist() == [{"a": "y", "b": 2}]
    assert sorted(out.dead) == [1, 3]
    single = RowDecoder("orders", SCHEMA, ["id"], "json", key_format="json")
    out = single.decode(records((b"5", b"{}"), (b'{"id": 6}', b"{}")))
    assert [r["id"] for r in rows(out)] == [5, 6]
    plain = RowDecoder("log", pa.schema([("n", pa.int64())]), [], "json")
    out = plain.decode(records((b"k", b'{"n": 1}'), (b"k", b'{"n": 1}'), (b"k", None)))
    assert out.rows.column("n").to_pylist() == [1, 1]
    assert out.dead[2].startswith("tombstone (null value) for table 'log', which has no primary key")


def test_bisect_isolates_failures_in_order():
    bad_items = {3, 4, 17}
    seen = []

    def convert(lo, hi):
        if any(i in bad_items for i in range(lo, hi)):
            raise ValueError("bad")
        return (lo, hi)

    ok = bisect(20, convert, lambda i, exc: seen.append(i))
    assert sorted(seen) == sorted(bad_items)
    covered = [i for lo, hi, _ in ok for i in range(lo, hi)]
    assert covered == [i for i in range(20) if i not in bad_items]


def test_option_errors_name_the_allowed_values():
    with pytest.raises(InvalidOptionError, match=r"format must be one of \('json', 'msgpack', 'raw'\)"):
        RowDecoder("t", SCHEMA, ["id"], "xml")
    with pytest.raises(InvalidOptionError, match="key_format must be one of"):
        RowDecoder("t", SCHEMA, ["id"], "json", key_format="avro")


def test_limits_fit_together():
    assert _limits.SOURCE_BATCH_SIZE_DEFAULT <= _limits.SOURCE_BATCH_SIZE_MAX
    assert _limits.SOURCE_BATCH_MS_DEFAULT <= _limits.SOURCE_BATCH_MS_MAX
    assert _limits.SOURCE_CONSUME_MESSAGES_MAX <= _limits.SOURCE_BATCH_SIZE_MAX
    # The prefetch queue holds at least one full batch of values, so a batch never waits on it.
    assert _limits.SOURCE_FETCH_QUEUE_KBYTES_MAX * 1024 >= _limits.SOURCE_BATCH_BYTES_MAX
    assert _limits.SOURCE_POLL_S * 1000 >= _limits.SOURCE_FETCH_WAIT_MS
    assert _limits.SINK_ROUND_RECORDS_DEFAULT <= _limits.SINK_ROUND_RECORDS_MAX <= _limits.SINK_QUEUE_MESSAGES_MAX
