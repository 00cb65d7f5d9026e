"""The writer's head state for tables with one integer key (``IntKeyedHead``, a Cython hash
map over base and overlay) against a plain dict model, through compactions."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from udrflow import _head
from udrflow._ext._intmap import IntMap
from udrflow._head import IntKeyedHead, KeyedHead, keyed_head

SCHEMA = pa.schema([("id", pa.int32()), ("v", pa.string())])

# One step: ("arrow" | "rows", upserted ids, deleted ids); ids in a small range so they collide.
steps = st.lists(st.tuples(st.sampled_from(["arrow", "rows"]),
                           st.lists(st.integers(-20, 40), unique=True, max_size=12),
                           st.lists(st.integers(-20, 40), unique=True, max_size=6)),
                 max_size=25)


def rows_of(table: pa.Table) -> dict:
    return dict(zip(table.column("id").to_pylist(), table.column("v").to_pylist(), strict=True))


@pytest.mark.parametrize("cls", [IntKeyedHead, KeyedHead])
@settings(max_examples=150, deadline=None)
@given(base_ids=st.lists(st.integers(-20, 40), unique=True, max_size=15), history=steps, data=st.data())
def test_head_matches_a_dict_model(monkeypatch_module, cls, base_ids, history, data):
    model = {k: f"b{k}" for k in base_ids}
    base = pa.table({"id": pa.array(base_ids, pa.int32()), "v": [model[k] for k in base_ids]}, schema=SCHEMA)
    if base.num_rows >= 3:  # a base of several chunks, as a read returns (take goes batch by batch)
        cut = base.num_rows // 3
        base = pa.concat_tables([base.slice(0, cut), base.slice(cut, cut), base.slice(2 * cut)])
    head = cls(SCHEMA, ["id"], base)
    for n, (form, ups, dels) in enumerate(history):
        dels = [k for k in dels if k not in ups]
        new = {k: f"s{n}:{k}" for k in ups}
        if form == "arrow":
            plus = pa.table({"id": pa.array(ups, pa.int32()), "v": [new[k] for k in ups]}, schema=SCHEMA)
            head.apply(plus if ups else None, pa.table({"id": pa.array(dels, pa.int32())}) if dels else None)
        else:
            head.apply_rows([(k, new[k]) for k in ups], list(ups), list(dels))
        model.update(new)
        for k in dels:
            model.pop(k, None)
        probe = data.draw(st.lists(st.integers(-25, 45), max_size=10))
        locs = head.locate(probe)
        assert [loc is not None for loc in locs] == [k in model for k in probe]
        found = [loc for loc in locs if loc is not None]
        assert head.gather(found).column("v").to_pylist() == [model[k] for k in probe if k in model]
        exists, packed = head.locate_found(pa.table({"id": pa.array(probe, pa.int32())}))
        assert exists.tolist() == [k in model for k in probe]
        assert head.gather_found(packed).column("v").to_pylist() == [model[k] for k in probe if k in model]
        assert rows_of(head.materialize()) == model


@pytest.fixture(scope="module")
def monkeypatch_module():
    """Compact after a handful of changed keys, so the histories above cross compactions."""
    mp = pytest.MonkeyPatch()
    mp.setattr(_head, "OVERLAY_KEYS_MIN", 8)
    yield mp
    mp.undo()


def test_only_one_integer_key_column_gets_the_hash_map():
    assert type(keyed_head(SCHEMA, ["id"], SCHEMA.empty_table())) is IntKeyedHead
    text = pa.schema([("id", pa.string()), ("v", pa.string())])
    assert type(keyed_head(text, ["id"], text.empty_table())) is KeyedHead
    two = pa.schema([("a", pa.int64()), ("b", pa.int64())])
    assert type(keyed_head(two, ["a", "b"], two.empty_table())) is KeyedHead
    wide = pa.schema([("id", pa.uint64())])
    assert type(keyed_head(wide, ["id"], wide.empty_table())) is KeyedHead


def test_intmap_against_a_dict():
    rng = np.random.default_rng(7)
    m, model = IntMap(), {}
    for _ in range(30):
        keys = rng.integers(-(1 << 62), 1 << 62, 500).astype(np.int64)
        keys[:100] = rng.integers(-50, 50, 100)  # many repeats
        values = rng.integers(0, 1 << 50, 500).astype(np.int64)
        m.assign(keys, values)
        model.update(zip(keys.tolist(), values.tolist(), strict=True))
    probe = np.concatenate([np.array(list(model), dtype=np.int64), rng.integers(-(1 << 62), 1 << 62, 1000)])
    assert m.lookup(probe).tolist() == [model.get(k, -1) for k in probe.tolist()]
    assert len(m) == len(model)
    assert m.get(123456789012, -7) == model.get(123456789012, -7)
    with pytest.raises(ValueError, match="3 keys but 2 values"):
        m.assign(np.arange(3, dtype=np.int64), np.arange(2, dtype=np.int64))


VALUE_TYPES = [pa.int8(), pa.int16(), pa.int32(), pa.int64(), pa.uint8(), pa.uint16(), pa.uint32(), pa.uint64(),
               pa.float16(), pa.float32(), pa.float64(), pa.bool_(), pa.string(), pa.large_string(), pa.binary()]


@pytest.mark.parametrize("vtype", VALUE_TYPES, ids=str)
def test_value_getters_read_what_as_py_reads(vtype):
    """A row read from an Arrow source (``row_at``) holds exactly what ``as_py()`` gives, for
    columns read through numpy views as for the others: with nulls, sliced, in chunks."""
    rng = np.random.default_rng(7)
    if pa.types.is_floating(vtype):
        edge = [0.0, -0.0, 1.5, float("nan"), float("inf"), -float("inf"), 1e-300 if vtype != pa.float16() else 1e-3]
        values = edge + [float(x) for x in rng.normal(size=40)]
    elif pa.types.is_integer(vtype):
        info = np.iinfo(vtype.to_pandas_dtype())
        values = [int(info.min), int(info.max), 0, 1] + [int(x) for x in rng.integers(info.min, info.max, 40, dtype=info.dtype)]
    elif pa.types.is_boolean(vtype):
        values = [bool(x) for x in rng.integers(0, 2, 44)]
    else:
        values = [f"v{i}é" for i in range(44)]
        if pa.types.is_binary(vtype):
            values = [v.encode() for v in values]
    column = pa.array(values, vtype)
    with_nulls = pa.array([None if i % 7 == 3 else v for i, v in enumerate(values)], vtype)
    for array in (column, with_nulls, column.slice(5), pa.chunked_array([column.slice(0, 10), column.slice(10)])):
        schema = pa.schema([("k", pa.int64()), ("v", vtype)])
        table = pa.table([pa.array(range(len(array)), pa.int64()), array], schema=schema)
        head = KeyedHead(schema, ["k"], table)
        for i in range(len(array)):
            got = head.row_at((-1, i))
            want = (i, table.column("v")[i].as_py())
            assert [(type(v), repr(v)) for v in got] == [(type(v), repr(v)) for v in want], (vtype, i)
        assert head.rows([(-1, 0), (-1, 1)]) == [head.row_at((-1, 0)), head.row_at((-1, 1))]
