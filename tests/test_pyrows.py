"""Small writes of plain Python values skip Arrow (udrflow/_pyrows.py) and are stored as
msgpack values in their commit. These tests prove the shortcut changes nothing anyone can
observe: the validator accepts exactly what ``to_arrow`` accepts, with the same values, and
otherwise hands over to it (so errors are the same); the msgpack form decodes to the same
change batches as the Arrow form; and tables read the same whichever form their commits
took, for every supported column type. Large commits keep the Arrow IPC form, with short
strings written as view types (they compress better): those decode exactly too.
Randomized tests take a seed and print it on failure."""

import datetime as dt
import decimal
import random

import msgspec
import numpy as np
import pyarrow as pa
import pytest

import udrflow
from udrflow import _head, _pyrows
from udrflow._commit import (
    Changes,
    decode_commit,
    expand_changes,
    expand_keyed,
    make_changes,
    make_row_update,
    make_value_changes,
    net_keyed_values,
    value_columns,
    values_to_ipc,
)
from udrflow._fold import net_keyed
from udrflow._pyrows import PyRows, encodable, python_rows
from udrflow._schema import check_keys, to_arrow, to_rows
from udrflow.errors import CorruptionError, SchemaError, TransactionConflictError

TYPES = [
    pa.int8(), pa.int16(), pa.int32(), pa.int64(), pa.uint8(), pa.uint16(), pa.uint32(), pa.uint64(),
    pa.float16(), pa.float32(), pa.float64(), pa.bool_(), pa.string(), pa.large_string(), pa.binary(),
    pa.large_binary(), pa.date32(), pa.timestamp("s"), pa.timestamp("us"), pa.timestamp("ms", "UTC"),
    pa.timestamp("ns", "Europe/Paris"), pa.decimal128(10, 2), pa.list_(pa.int64()), pa.large_list(pa.string()),
    pa.struct([("a", pa.int32()), ("b", pa.string())]),
]


class _Int(int):
    pass


class _Str(str):
    pass


# Values of every kind, including ones the rule refuses or converts, at the edges of ranges.
POOL = [
    0, 1, -1, 127, 128, -129, 255, 256, 2**31, 2**53, 2**53 + 1, -2**53, -2**53 - 1, 2**63 - 1, 2**63, 2**64 - 1,
    2**64, -2**63, -2**63 - 1, 1.5, 0.1, -0.0, 2.0, float("nan"), float("inf"), 1e300, True, False, "a", "héllo",
    "\ud800", "", "x" * 70, b"x", b"\xff", bytearray(b"x"), None, dt.date(2020, 1, 2),
    dt.datetime(2020, 1, 2, 3, 4, 5), dt.datetime(2020, 1, 2, tzinfo=dt.UTC), decimal.Decimal("1.25"),
    decimal.Decimal("1.255"), [1, 2], ["a", None], [], {"a": 1, "b": "x"}, {"a": None}, np.int64(5),
    np.float64(1.5), _Int(3), _Str("s"),
]


def _canon(table: pa.Table) -> list:
    """Rows as exact text (NaN equals NaN, -0.0 differs from 0.0), with the schema."""
    return [repr(table.schema), [repr(sorted(r.items())) for r in table.to_pylist()]]


def _random_input(rng: random.Random, names: list[str]):
    rows = []
    for _ in range(rng.randint(1, 4)):
        row = {}
        for name in names:
            if rng.random() < 0.85:
                row[name] = rng.choice(POOL) if name != "k" or rng.random() < 0.1 else rng.randint(0, 5)
        if rng.random() < 0.05:
            row["zz"] = 1
        rows.append(row)
    return rows[0] if len(rows) == 1 and rng.random() < 0.3 else rows


@pytest.mark.parametrize("vtype", TYPES, ids=str)
def test_python_rows_accept_only_what_to_arrow_accepts_and_give_the_same_values(vtype):
    schema = pa.schema([pa.field("k", pa.int64(), nullable=False), ("v", vtype),
                        pa.field("w", pa.string(), nullable=False)])
    accepted = 0
    for seed in range(400):
        rng = random.Random(seed)
        data = _random_input(rng, ["k", "v", "w"])
        for columns in (None, ["k"]):
            where = f"seed {seed}, type {vtype}, columns {columns}, input {data!r}"
            try:
                expected, error = to_arrow(data, schema, table="t", columns=columns), None
            except SchemaError as exc:
                expected, error = None, str(exc)
            py = python_rows(data, schema, columns)
            if py is not None:
                accepted += 1
                assert error is None, f"{where}: accepted what to_arrow refuses with {error}"
                assert _canon(py.to_table()) == _canon(expected), where
            try:
                got = to_rows(data, schema, table="t", columns=columns)
            except SchemaError as exc:
                assert str(exc) == error, where
            else:
                assert error is None, where
                table = got.to_table() if isinstance(got, PyRows) else got
                assert _canon(table) == _canon(expected), where
    assert accepted > 0


def test_compiled_validators_decide_like_the_generic_loop():
    """Each plan's generated validator (``_compile_check``) gives what the generic loop
    (``_check_rows``) gives: the same rows, the same values of the same types, or None."""
    fields = [pa.field(f"c{i}", t, nullable=i % 2 == 0) for i, t in enumerate(TYPES)]
    fields += [pa.field(f"n{i}", t, nullable=False) for i, t in enumerate(TYPES)]
    schema = pa.schema([pa.field("k", pa.int64(), nullable=False), *fields])
    names = schema.names
    accepted = 0
    for seed in range(300):
        rng = random.Random(seed)
        picked = ["k", *rng.sample(names[1:], 3)]
        sub = pa.schema([schema.field(n) for n in picked])
        for columns in (None, ["k"], picked[1:]):
            plan = _pyrows._plan(sub, columns)
            for _ in range(20):
                data = _random_input(rng, picked)
                rows = (data,) if isinstance(data, dict) else data
                want, got = _pyrows._check_rows(plan, rows), plan.check(rows)
                where = f"seed {seed}, schema {sub}, columns {columns}, input {data!r}"
                assert (want is None) == (got is None), where
                if want is not None:
                    accepted += 1
                    assert [[(type(v), repr(v)) for v in r] for r in got] == \
                        [[(type(v), repr(v)) for v in r] for r in want], where
    assert accepted > 100


def test_one_row_update_encodes_like_make_value_changes():
    names = ["k", "a", "b", "c"]
    pool = [0, 1, -1, 1.0, -0.0, True, False, None, "a", "b", b"a", float("nan"), 2**63 - 1]
    for seed in range(3000):
        rng = random.Random(seed)
        new = tuple(rng.choice(pool) for _ in names)
        old = tuple(rng.choice([*pool, new[1], new[2]]) for _ in names)
        keys = rng.choice([["k"], ["k", "a"], []])
        want = make_value_changes("t", names, [new], 0, [], [old], keys)
        got = make_row_update("t", names, new, old, value_columns(names, keys))
        assert msgspec.msgpack.encode(got) == msgspec.msgpack.encode(want), f"seed {seed}"


def test_python_rows_leave_other_inputs_to_arrow():
    schema = pa.schema([pa.field("id", pa.int64(), nullable=False), ("s", pa.string())])
    assert python_rows({"id": 1}, schema) is not None
    for data in ([], [{"id": i} for i in range(65)], pa.table({"id": [1]}), ({"id": 1},), "x",
                 [{"id": 1, "s": "x" * 70_000}], [1], [{"id": 1}, 2]):
        if isinstance(data, tuple):
            assert python_rows(data, schema) is not None  # a tuple of dicts is a list of dicts
        else:
            assert python_rows(data, schema) is None, data


def test_check_keys_on_python_rows_names_the_same_duplicate():
    schema = pa.schema([pa.field("id", pa.int64(), nullable=False)])
    data = [{"id": 4}, {"id": 5}, {"id": 6}, {"id": 5}]
    with pytest.raises(SchemaError) as arrow_error:
        check_keys(to_arrow(data, schema, table="orders"), ["id"], table_name="orders", op="insert")
    with pytest.raises(SchemaError) as py_error:
        check_keys(python_rows(data, schema), ["id"], table_name="orders", op="insert")
    assert str(py_error.value) == str(arrow_error.value)


# ---- the msgpack form in commits ------------------------------------------------------------


def _value(rng: random.Random, t: pa.DataType):
    """A random Python value that ``to_arrow`` accepts for type ``t`` (None one time in five)."""
    if rng.random() < 0.2:
        return None
    if pa.types.is_integer(t):
        bits = t.bit_width
        return rng.randint(0, 2**bits - 1) if pa.types.is_unsigned_integer(t) else rng.randint(-2**(bits - 1),
                                                                                              2**(bits - 1) - 1)
    if pa.types.is_floating(t):
        return rng.choice([rng.uniform(-1e3, 1e3), 0.5, -0.0, float("inf"), float(rng.randint(-9, 9))])
    if pa.types.is_boolean(t):
        return rng.random() < 0.5
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return rng.choice(["", "a", "héllo", "x" * rng.randint(0, 30)])
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return bytes(rng.randrange(256) for _ in range(rng.randint(0, 5)))
    if pa.types.is_date32(t):
        return dt.date(2000, 1, 1) + dt.timedelta(days=rng.randint(0, 9000))
    if pa.types.is_timestamp(t):
        return dt.datetime(2000, 1, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=rng.randint(0, 10**8))
    if pa.types.is_decimal(t):
        return decimal.Decimal(rng.randint(-10**6, 10**6)).scaleb(-2)
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return [_value(rng, t.value_type) for _ in range(rng.randint(0, 3))]
    if pa.types.is_struct(t):
        return {f.name: _value(rng, f.type) for f in t}
    raise AssertionError(t)


def _check_commit(db, version: int, schema: pa.Schema, counts: dict) -> None:
    """Both forms of the commit's changes decode to the same change batches."""
    commit = decode_commit(db.log.read(version).payload, version)
    for op in commit.ops:
        if not isinstance(op, Changes):
            continue
        if not op.columns:
            counts["arrow"] += 1
            continue
        counts["values"] += 1
        assert encodable(schema)
        as_ipc = values_to_ipc(op, schema)
        assert not as_ipc.columns and as_ipc.rows
        for a, b in zip(expand_changes(op, schema), expand_changes(as_ipc, schema), strict=True):
            assert _canon(a) == _canon(b), version
        for a, b in zip(expand_keyed(op, schema, ["k"]), expand_keyed(as_ipc, schema, ["k"]), strict=True):
            assert _canon(a) == _canon(b), version


def _model_rows(model: dict, schema: pa.Schema) -> list:
    return sorted(repr(sorted(r.items())) for r in model.values())


@pytest.mark.parametrize("vtype", TYPES, ids=str)
def test_small_commits_of_every_type_read_and_decode_like_arrow_commits(tmp_path, vtype):
    seed = TYPES.index(vtype)
    rng = random.Random(seed)
    schema = pa.schema([pa.field("k", pa.int64(), nullable=False), ("v", vtype), ("w", pa.string())])
    db = udrflow.open(tmp_path / "db.udr")
    try:
        db.create_table("t", schema, primary_key=["k"])
        schema = db.schema("t")
        model: dict = {}
        history: dict[int, list] = {}
        counts = {"values": 0, "arrow": 0}

        def row(k):
            r = {"k": k, "v": _value(rng, vtype), "w": rng.choice([None, "x", "yy"])}
            return to_arrow(r, schema, table="t").to_pylist()[0]  # the value as stored

        for step in range(60):
            where = f"seed {seed}, step {step}"
            kind = rng.choice(["insert", "upsert", "upsert", "delete", "tx", "arrow"])
            keys = rng.sample(range(12), rng.randint(1, 3))
            if kind == "insert":
                new = [k for k in keys if k not in model]
                if not new:
                    continue
                rows = [row(k) for k in new]
                v = db.insert("t", rows)
                model.update({r["k"]: r for r in rows})
            elif kind == "upsert":
                rows = [row(k) for k in keys]
                v = db.upsert("t", rows)
                model.update({r["k"]: r for r in rows})
            elif kind == "delete":
                v = db.delete("t", keys=[{"k": k} for k in keys])
                if v is None:
                    assert not any(k in model for k in keys), where
                    continue
                for k in keys:
                    model.pop(k, None)
            elif kind == "arrow":  # the Arrow path on the same table, mixed with the rest
                rows = [row(k) for k in keys]
                v = db.upsert("t", pa.Table.from_pylist(rows, schema=schema))
                model.update({r["k"]: r for r in rows})
            else:
                with db.transaction() as tx:
                    a, b = [row(k) for k in keys], row(keys[0])
                    tx.upsert("t", a)
                    tx.delete("t", keys=[{"k": keys[-1]}])
                    tx.upsert("t", [b])
                    mine = {r["k"]: r for r in tx.read("t").to_pylist()}
                v = tx.version
                model.update({r["k"]: r for r in a})
                model.pop(keys[-1], None)
                model[b["k"]] = b
                assert _model_rows(mine, schema) == _model_rows(model, schema), where
            history[v] = _model_rows(model, schema)
            _check_commit(db, v, schema, counts)
            got = {r["k"]: r for r in db.read("t").to_pylist()}
            assert _model_rows(got, schema) == history[v], where
        if pa.types.is_integer(vtype) or vtype in (pa.float64(), pa.bool_(), pa.string(), pa.binary()):
            assert counts["values"] > 0, "the msgpack form was never used"
    finally:
        db.close()
    db = udrflow.open(tmp_path / "db.udr")  # cold: every version from checkpoints and the log
    try:
        for v, expected in history.items():
            got = {r["k"]: r for r in db.read("t", version=v).to_pylist()}
            assert _model_rows(got, schema) == expected, f"seed {seed}, version {v}"
    finally:
        db.close()


def test_net_keyed_values_equals_net_keyed_of_the_expanded_commits(tmp_path):
    rng = random.Random(7)
    db = udrflow.open(tmp_path / "db.udr")
    try:
        schema = pa.schema([pa.field("k", pa.int64(), nullable=False), ("a", pa.float64())])
        db.create_table("t", schema, primary_key=["k"])
        for step in range(120):
            if step == 60:
                db.add_column("t", pa.field("b", pa.string()))
            keys = rng.sample(range(30), rng.randint(1, 4))
            if rng.random() < 0.3:
                db.delete("t", keys=[{"k": k} for k in keys])
            else:
                extra = {"b": rng.choice(["x", None])} if step >= 60 else {}  # (upsert: every column)
                db.upsert("t", [{"k": k, "a": rng.random(), **extra} for k in keys])
        final = db.schema("t")
        run, events = [], []
        for record in db.log.scan(2):
            for op in decode_commit(record.payload, record.version).ops:
                if isinstance(op, Changes):
                    assert op.columns
                    run.append(op)
                    then = db.schema("t", version=record.version)
                    plus, minus = expand_keyed(op, then, ["k"])
                    events += [(-1, minus), (1, udrflow._schema.conform(plus, final))]
        rows, deleted = net_keyed_values(run, final, ["k"])
        want_rows, want_deleted = net_keyed(events, ["k"], final)
        assert _canon(rows) == _canon(want_rows)
        assert sorted(deleted.column("k").to_pylist()) == sorted(want_deleted.column("k").to_pylist())
    finally:
        db.close()


def test_python_rows_in_the_head_survive_compaction_and_added_columns(tmp_path, monkeypatch):
    monkeypatch.setattr(_head, "OVERLAY_KEYS_MIN", 3)  # compact the writer's head state often
    db = udrflow.open(tmp_path / "db.udr")
    try:
        db.create_table("t", pa.schema([("k", pa.int64()), ("a", pa.int64())]), primary_key=["k"])
        db.insert("t", pa.table({"k": list(range(10)), "a": [0] * 10}))
        expected = {k: {"k": k, "a": 0} for k in range(10)}
        for step in range(40):
            k = step % 13
            if step == 20:
                db.add_column("t", pa.field("c", pa.string()))
                for r in expected.values():
                    r["c"] = None
            # (step 20: c given as null, since an upsert gives every column)
            row = {"k": k, "a": step} | ({"c": f"s{step}" if step > 20 else None} if step >= 20 else {})
            db.upsert("t", [row])
            expected[k] = row | ({"c": row.get("c")} if step >= 20 else {})
            if step % 7 == 3:
                db.delete("t", keys=[{"k": (k + 5) % 13}])
                expected.pop((k + 5) % 13, None)
            got = sorted(db.read("t").to_pylist(), key=lambda r: r["k"])
            assert got == sorted(expected.values(), key=lambda r: r["k"]), step
        # the old row of an update of a key last written as Python rows, before the column was added
        feed = [op for r in db.log.scan(db.version) for op in decode_commit(r.payload, r.version).ops]
        assert feed and all(isinstance(op, Changes) for op in feed)
    finally:
        db.close()


def test_conflicts_between_python_and_arrow_writes(tmp_path):
    db = udrflow.open(tmp_path / "db.udr")
    try:
        db.create_table("t", pa.schema([("k", pa.int64()), ("a", pa.int64())]), primary_key=["k"])
        db.insert("t", [{"k": 1, "a": 1}, {"k": 2, "a": 2}])
        for first, second in (("py", "py"), ("py", "arrow"), ("arrow", "py")):
            t1, t2 = db.transaction(), db.transaction()
            rows = {"py": [{"k": 1, "a": 5}], "arrow": pa.table({"k": [1], "a": [6]})}
            t1.upsert("t", rows[first])
            t2.upsert("t", rows[second])
            t2.upsert("t", [{"k": 2, "a": 7}])
            t1.commit()
            with pytest.raises(TransactionConflictError, match=r"keys \[\{'k': 1\}\] were changed by version"):
                t2.commit()
    finally:
        db.close()


def test_deleting_large_rows_by_small_keys_moves_them_to_chunks(tmp_path):
    db = udrflow.open(tmp_path / "db.udr")
    try:
        db.create_table("t", pa.schema([("k", pa.int64()), ("blob", pa.binary())]), primary_key=["k"])
        blobs = [random.Random(i).randbytes(100_000) for i in range(20)]  # incompressible
        db.insert("t", pa.table({"k": list(range(20)), "blob": blobs}))
        v = db.delete("t", keys=[{"k": k} for k in range(15)])
        (op,) = decode_commit(db.log.read(v).payload, v).ops
        assert not op.columns and op.chunks  # 1.5 MB of old rows: Arrow form, in chunks
        plus, minus = expand_changes(op, db.schema("t"), db._engine().chunks.get)
        assert plus.num_rows == 0 and minus.column("blob").to_pylist() == blobs[:15]
        assert sorted(db.read("t").column("k").to_pylist()) == list(range(15, 20))
    finally:
        db.close()


def test_damaged_msgpack_rows_raise_corruption():
    schema = pa.schema([pa.field("k", pa.int64(), nullable=False), ("a", pa.string())])
    good = Changes("t", updates=0, inserts=2, rows_in=2, columns=["k", "a"], values=[[1, 2], ["x", None]])
    assert expand_changes(good, schema)[0].to_pylist() == [{"k": 1, "a": "x"}, {"k": 2, "a": None}]
    for bad in (Changes("t", inserts=2, rows_in=2, columns=["k", "a"], values=[[1], ["x", None]]),
                Changes("t", inserts=2, rows_in=2, columns=["k", "zz"], values=[[1, 2], ["x", None]]),
                Changes("t", inserts=2, rows_in=2, columns=["k", "a"], values=[[1, "two"], ["x", None]]),
                Changes("t", inserts=1, rows_in=1, columns=["k", "a"], values=[[1]])):
        with pytest.raises(CorruptionError):
            expand_changes(bad, schema)
        with pytest.raises(CorruptionError):
            net_keyed_values([bad], schema, ["k"])


@pytest.mark.parametrize("stype", [pa.string(), pa.large_string(), pa.binary(), pa.large_binary()], ids=str)
def test_large_commits_store_short_strings_as_views_and_decode_them_exactly(stype):
    # Row data over 64 KiB is compressed, and its columns of short strings go as views.
    rng = random.Random(3)
    n = 6000
    short = [None if i % 7 == 0 else f"c{rng.randrange(10**6)}" for i in range(n)]
    long = [None if i % 5 == 0 else "y" * rng.randint(0, 40) for i in range(n)]
    if pa.types.is_binary(stype) or pa.types.is_large_binary(stype):
        short = [None if v is None else v.encode() for v in short]
        long = [None if v is None else v.encode() for v in long]
    schema = pa.schema([pa.field("k", pa.int64(), nullable=False), ("s", stype), ("l", stype)])
    new = pa.table({"k": list(range(n)), "s": short, "l": long}, schema=schema)
    old = new.set_column(1, "s", pa.array(list(reversed(short)), stype))
    changes = make_changes("t", None, None, new, old, ["k"])
    stored = pa.ipc.open_stream(changes.rows).read_all().schema
    assert stored.field("s").type in (pa.string_view(), pa.binary_view())
    assert stored.field("__old_s").type in (pa.string_view(), pa.binary_view())
    assert stored.field("l").type == stype  # values over 12 bytes: not inline, kept as they are
    plus, minus = expand_changes(changes, schema)
    assert plus.equals(new) and minus.equals(old)
