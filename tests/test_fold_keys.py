"""The keyed fold's row lookups agree with a plain-Python model: ``locate_keys``, ``remove_keys``,
``patch_rows`` and ``apply_net`` are run by Hypothesis on key-sorted and shuffled tables of many
chunks, with one-column and composite keys of mixed types (int+int, string+int, date+string), and
their results are compared row by row (floats by their bits) with dictionaries. A database test
then reads composite-keyed tables through full and delta checkpoints plus log tails, in fresh
opens, and compares every version with the model."""

from __future__ import annotations

import datetime as dt
import decimal
import math
import random

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import udrflow
from udrflow import _checkpoint, _fold
from udrflow._chunks import _COMPRESSION, decode_table, encode_table
from udrflow._fold import KeyIndex, NetChanges, apply_net, locate_keys, patch_rows, remove_keys

KEYS = {
    "int": [("a", pa.int64())],
    "str": [("s", pa.string())],
    "int+int": [("a", pa.int64()), ("b", pa.int32())],
    "str+int": [("s", pa.string()), ("b", pa.int32())],
    "date+str": [("d", pa.date32()), ("s", pa.large_string())],
}
VALUE_FIELDS = [
    ("x", pa.float64()),
    ("txt", pa.string()),
    ("price", pa.decimal128(15, 2)),
    ("flag", pa.bool_()),
    ("items", pa.list_(pa.int64())),
    ("pair", pa.struct([("p", pa.int64()), ("q", pa.string())])),
]
X = st.sampled_from([0.0, -0.0, 1.5, math.nan, -2.25, None])
VALUES = {
    "x": X,
    "txt": st.sampled_from([None, "", "a", "bb", "é", "long text " * 3]),
    "price": st.sampled_from([None, decimal.Decimal("1.50"), decimal.Decimal("0.00"), decimal.Decimal("99.99")]),
    "flag": st.sampled_from([None, True, False]),
    "items": st.sampled_from([None, [], [1], [1, 2], [2, 1]]),
    "pair": st.sampled_from([None, {"p": 1, "q": "x"}, {"p": 2, "q": None}]),
}
DAY0 = dt.date(2024, 1, 1)
_COMPRESSED = _COMPRESSION is not None  # uncompressed chunks point into their bytes: never written in place


def _key_value(kind: str, i: int, j: int) -> tuple:
    """The key of (first-column group i, row j of the group): groups share the first column."""
    return {
        "int": (i * 7 + j,),
        "str": (f"k{i:03d}-{j}",),
        "int+int": (i * 3 - 40, j),
        "str+int": (f"g{i % 50:02d}" if i % 3 else f"é{i}", j - 2),
        "date+str": (DAY0 + dt.timedelta(days=i), f"s{j}"),
    }[kind]


def _schema(kind: str) -> pa.Schema:
    return pa.schema([pa.field(n, t, nullable=False) for n, t in KEYS[kind]] + [pa.field(n, t) for n, t in VALUE_FIELDS])


def _same(a, b) -> bool:
    """Python values equal, floats by their bits (0.0 is not -0.0, a NaN equals a NaN)."""
    if isinstance(a, float) and isinstance(b, float):
        return np.float64(a).view(np.int64) == np.float64(b).view(np.int64)
    return type(a) is type(b) and a == b


def _rows_equal(got: list[dict], want: list[dict]) -> bool:
    return len(got) == len(want) and all(g.keys() == w.keys() and all(_same(g[k], w[k]) for k in g)
                                         for g, w in zip(got, want, strict=True))


def _table(schema: pa.Schema, rows: list[dict], cuts: list[int]) -> pa.Table:
    """``rows`` as a table of several batches, cut at ``cuts``."""
    whole = pa.Table.from_pylist(rows, schema=schema)
    bounds = sorted({c for c in cuts if 0 < c < len(rows)} | {0, len(rows)})
    batches = [b for lo, hi in zip(bounds, bounds[1:], strict=False) for b in whole.slice(lo, hi - lo).to_batches()]
    return pa.Table.from_batches(batches, schema=schema)


@st.composite
def cases(draw, kind: str | None = None):
    kind = kind or draw(st.sampled_from(sorted(KEYS)))
    schema = _schema(kind)
    pk = [n for n, _ in KEYS[kind]]
    groups = draw(st.integers(1, 30))
    per_group = draw(st.integers(1, 6))
    universe = sorted({_key_value(kind, i, j) for i in range(groups + 3) for j in range(per_group + 2)})
    present = draw(st.lists(st.sampled_from(universe), unique=True, max_size=60))

    def row(key):
        return {**dict(zip(pk, key, strict=True)), **{n: draw(VALUES[n]) for n, _ in VALUE_FIELDS}}

    base = [row(k) for k in present]
    is_sorted = draw(st.booleans())
    if is_sorted:
        base.sort(key=lambda r: tuple(r[k] for k in pk))
    cuts = draw(st.lists(st.integers(0, max(len(base), 1)), max_size=6))
    table = _table(schema, base, cuts)
    # Changes: rows of present and absent keys, deleted keys present or absent; a key is
    # either changed or deleted, as net_keyed gives them.
    changed = draw(st.lists(st.sampled_from(universe), unique=True, max_size=30))
    split = draw(st.integers(0, len(changed)))
    upserted = [row(k) for k in changed[:split]]
    for r in upserted:  # sometimes the very same row: an upsert that changes nothing
        old = next((b for b in base if all(_same(b[k], r[k]) for k in pk)), None)
        if old is not None and draw(st.booleans()):
            r.update(old)
    deleted = changed[split:]
    return kind, schema, pk, base, table, is_sorted, upserted, deleted


def _key(row: dict, pk: list[str]) -> tuple:
    return tuple(row[k] for k in pk)


def _keys_table(schema: pa.Schema, pk: list[str], keys: list[tuple]) -> pa.Table:
    key_schema = pa.schema([schema.field(k) for k in pk])
    return pa.Table.from_pylist([dict(zip(pk, k, strict=True)) for k in keys], schema=key_schema)


SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(case=cases(), data=st.data())
def test_locate_keys_finds_exactly_the_rows_of_the_wanted_keys(case, data):
    kind, schema, pk, base, table, is_sorted, upserted, deleted = case
    wanted = [_key(r, pk) for r in upserted] + deleted
    wanted += data.draw(st.lists(st.sampled_from(wanted), max_size=5)) if wanted else []  # repeats
    keys = _keys_table(schema, pk, wanted)
    positions, matches = locate_keys(table, KeyIndex.of(keys, pk), table_sorted=is_sorted)
    where = {_key(r, pk): i for i, r in enumerate(base)}
    want = sorted({where[k] for k in wanted if k in where})
    assert positions.tolist() == want
    assert [wanted[m] for m in matches.tolist()] == [_key(base[p], pk) for p in want]


@SETTINGS
@given(case=cases())
def test_remove_keys_keeps_the_other_rows_in_order(case):
    kind, schema, pk, base, table, is_sorted, upserted, deleted = case
    gone = {_key(r, pk) for r in upserted} | set(deleted)
    got = remove_keys(table, _keys_table(schema, pk, [_key(r, pk) for r in upserted] + deleted), pk,
                      table_sorted=is_sorted)
    assert got.schema.equals(schema)
    assert _rows_equal(got.to_pylist(), [r for r in base if _key(r, pk) not in gone])


@SETTINGS
@given(case=cases())
def test_apply_net_replaces_in_place_removes_and_appends(case):
    kind, schema, pk, base, table, is_sorted, upserted, deleted = case
    rows = pa.Table.from_pylist(upserted, schema=schema)
    got = apply_net(table, rows, _keys_table(schema, pk, deleted), pk, schema, base_sorted=is_sorted)
    by_key = {_key(r, pk): r for r in upserted}
    gone = set(deleted)
    present = {_key(r, pk) for r in base}
    want = [by_key.get(_key(r, pk), r) for r in base if _key(r, pk) not in gone]
    want += [r for r in upserted if _key(r, pk) not in present]
    assert got.schema.equals(schema)
    assert _rows_equal(got.to_pylist(), want)
    assert _rows_equal(table.to_pylist(), base)  # the input is never changed


@SETTINGS
@given(case=cases(kind="int+int"))
def test_patch_rows_of_an_owned_chunk_writes_fixed_width_columns_in_place(case):
    """A chunk decoded for the read alone (zstd: its buffers are its own) takes new values of
    fixed-width columns without nulls in its own buffers; the result is the same."""
    kind, schema, pk, base, table, is_sorted, upserted, deleted = case
    fixed = pa.schema([pa.field("a", pa.int64(), nullable=False), pa.field("b", pa.int32(), nullable=False),
                       pa.field("n", pa.int64()), pa.field("price", pa.decimal128(15, 2)), pa.field("txt", pa.string())])

    def fit(r: dict, i: int) -> dict:
        return {"a": r["a"], "b": r["b"], "n": i, "price": decimal.Decimal(i) / 4, "txt": r["txt"]}

    base = sorted((fit(r, i) for i, r in enumerate(base)), key=lambda r: (r["a"], r["b"]))
    upserted = [fit(r, 1000 + i) for i, r in enumerate(upserted)]
    chunk = decode_table(encode_table(pa.Table.from_pylist(base, schema=fixed)))
    addresses = [_addresses(c.chunk(0)) for c in chunk.columns] if base else []
    changes = NetChanges(pa.Table.from_pylist(upserted, schema=fixed), _keys_table(fixed, pk, deleted), pk)
    patched, used = patch_rows(chunk, changes, table_sorted=True, owned=True)
    by_key = {_key(r, pk): r for r in upserted}
    want = [by_key.get(_key(r, pk), r) for r in base if _key(r, pk) not in set(deleted)]
    assert _rows_equal(patched.to_pylist(), want)
    if base and not set(deleted) & {_key(r, pk) for r in base} and _COMPRESSED:
        for i in (0, 1, 2, 3):  # the fixed-width columns: the very same buffers
            assert _addresses(patched.column(i).chunk(0)) == addresses[i]


@SETTINGS
@given(case=cases())
def test_patch_rows_copies_only_what_changed(case):
    """Batches no change falls in keep their arrays, and so do columns no replacing row changes."""
    kind, schema, pk, base, table, is_sorted, upserted, deleted = case
    changes = NetChanges(pa.Table.from_pylist(upserted, schema=schema), _keys_table(schema, pk, deleted), pk)
    patched, used = patch_rows(table, changes, table_sorted=is_sorted)
    present = {_key(r, pk) for r in base}
    assert sorted(used.tolist()) == [i for i, r in enumerate(upserted) if _key(r, pk) in present]
    touched = {_key(r, pk) for r in upserted} | set(deleted)
    by_key = {_key(r, pk): r for r in upserted}
    after = [[_addresses(c) for c in b.columns] for b in patched.to_batches()]
    present_deleted = set(deleted) & present
    for i, old in enumerate(table.to_batches()):
        keys = [_key(r, pk) for r in old.to_pylist()]
        if not touched & set(keys):
            assert [_addresses(c) for c in old.columns] in after  # kept as it was
            continue
        if present_deleted:
            continue  # rows were removed somewhere: batches no longer line up
        new = patched.to_batches()[i]
        for name in schema.names:
            changed = any(not _same(by_key[k][name], r[name]) for k, r in zip(keys, old.to_pylist(), strict=True)
                          if k in by_key)
            if not changed and not pa.types.is_nested(schema.field(name).type):
                j = schema.get_field_index(name)
                assert _addresses(new.column(j)) == _addresses(old.column(j)), name


def _addresses(array: pa.Array) -> list:
    return [b.address if b is not None else None for b in array.buffers()]


def test_composite_keys_with_a_first_column_of_few_values_fall_back_to_hashing(monkeypatch):
    """A sorted table whose first key column has few distinct values: the bisection would
    compare too many candidate rows per key, so the chunk is hashed; the answer is the same."""
    n = 5000
    table = pa.table({"tenant": np.repeat(np.arange(3, dtype=np.int64), n), "id": np.tile(np.arange(n), 3),
                      "v": np.arange(3 * n)})
    keys = pa.table({"tenant": pa.array([1, 2, 2, 0], pa.int64()), "id": pa.array([7, 4999, 5000, 0], pa.int64())})
    calls = []
    hashed = _fold._locate_hashed
    monkeypatch.setattr(_fold, "_locate_hashed", lambda *a: calls.append(1) or hashed(*a))
    positions, matches = locate_keys(table, KeyIndex.of(keys, ["tenant", "id"]), table_sorted=True)
    assert calls
    assert positions.tolist() == [0, n + 7, 3 * n - 1]
    assert matches.tolist() == [3, 0, 1]


def test_key_types_of_the_keys_are_cast_to_the_table_s():
    table = pa.table({"a": pa.array([1, 2, 3], pa.int32()), "s": ["x", "y", "z"]})
    keys = pa.table({"a": pa.array([2, 3], pa.int64()), "s": pa.array(["y", "q"], pa.large_string())})
    for is_sorted in (False, True):
        assert remove_keys(table, keys, ["a", "s"], table_sorted=is_sorted).to_pydict() == \
               {"a": [1, 3], "s": ["x", "z"]}


# ---- through the database: checkpoints (full and delta) + log tails, fresh opens --------------------------


@pytest.mark.parametrize("kind", ["int+int", "str+int", "int"])
def test_reads_of_a_composite_keyed_table_match_the_model_at_every_version(tmp_path, monkeypatch, kind):
    # Small chunks (about 256 rows): changes fall in some chunks and not in others.
    monkeypatch.setattr(_checkpoint, "CHUNK_ROWS_TARGET_LOG2", 8)
    monkeypatch.setattr(_checkpoint, "CHUNK_ROWS_MIN", 64)
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    key_fields = {"int+int": [("o", pa.int64()), ("line", pa.int32())],
                  "str+int": [("name", pa.string()), ("line", pa.int32())],
                  "int": [("o", pa.int64())]}[kind]
    pk = [n for n, _ in key_fields]
    schema = pa.schema([pa.field(n, t, nullable=False) for n, t in key_fields]
                       + [("qty", pa.float64()), ("note", pa.string())])

    def key(i: int, j: int) -> tuple:
        return {"int+int": (i, j), "str+int": (f"n{i:05d}", j), "int": (i * 8 + j,)}[kind]

    model: dict[tuple, dict] = {}
    rows = []
    for i in range(6000):
        for j in range(1 + i % 4):
            r = {**dict(zip(pk, key(i, j), strict=True)), "qty": float(i % 50), "note": f"row {i}/{j}"}
            rows.append(r)
            model[key(i, j)] = r
    rng.shuffle(rows)
    history = {}
    path = str(tmp_path / "t.udr")
    with udrflow.open(path, durability="none") as db:
        db.create_table("t", schema, primary_key=pk)
        db.insert("t", pa.Table.from_pylist(rows, schema=schema))  # a bulk load: chunks in checkpoint layout
        history[db.version] = dict(model)
        for step in range(120):
            op = rng.random()
            if op < 0.6:
                batch = []
                for _ in range(rng.randint(1, 4)):
                    k = key(rng.randrange(6100), rng.randrange(4))  # some new keys
                    r = {**dict(zip(pk, k, strict=True)), "qty": rng.choice([1.0, -0.0, 2.5]),
                         "note": model[k]["note"] if k in model and rng.random() < 0.5 else f"v{step}"}
                    if k not in {_key(b, pk) for b in batch}:
                        batch.append(r)
                db.upsert("t", batch)
                for r in batch:
                    model[_key(r, pk)] = r
            elif op < 0.85 and model:
                gone = rng.sample(sorted(model), 2)
                db.delete("t", keys=[dict(zip(pk, k, strict=True)) for k in gone])
                for k in gone:
                    del model[k]
            else:
                db.checkpoint()
            history[db.version] = dict(model)
    versions = sorted(history)
    picks = [versions[0], versions[1], versions[-1]] + rng.sample(versions, 6)
    for v in picks:
        with udrflow.open(path, readonly=True) as db:  # fresh: checkpoint + log tail
            got = db.read("t", version=v).to_pylist()
        want = history[v]
        assert len(got) == len(want), f"seed {seed}: version {v}"
        for r in got:
            assert _rows_equal([r], [want[_key(r, pk)]]), f"seed {seed}: version {v}, row {r}"
