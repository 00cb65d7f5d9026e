"""Change streams deliver exactly the log's changes: for random histories (a keyed and an unkeyed table,
transactions, updates, deletes by key and by predicate, added columns, reopens) and a random start version,
the batches of ``subscribe`` equal a plain-Python model of each commit's changes, fold from ``read(t, V)`` to
``read(t, head)``, and equal ``__changelog``. Deterministic tests cover resuming, following the tail (sync,
async, callback), errors, a reader in another process, the Bytewax source with recovery, back-pressure and
the CLI. Randomized tests are seeded; a failure prints its steps (Hypothesis ``note``)."""

from __future__ import annotations

import asyncio
import collections
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st

import udrflow
from udrflow import _changefeed
from udrflow._changefeed import (
    OP_COLUMN,
    WEIGHT_COLUMN,
    CallbackSubscription,
    Subscription,
    change_rows,
    changelog_table,
)
from udrflow._commit import Changes, decode_commit, values_to_ipc
from udrflow.errors import CorruptionError, TableNotFoundError, UdrflowError, UsageError, VersionNotFoundError

PEOPLE, TAGS = "people", "tags"
BASE_COLUMNS = {
    PEOPLE: (("id", pa.int64()), ("name", pa.string()), ("amount", pa.float64())),
    TAGS: (("tag", pa.string()), ("n", pa.int64())),
}
EXTRA_COLUMNS = {  # added one at a time by add_column
    PEOPLE: (("note", pa.string()), ("flag", pa.bool_())),
    TAGS: (("w", pa.float64()), ("score", pa.int64())),
}
# Strings that JSON must escape (quote, backslash, control characters) and non-ASCII ones, so the
# comparison with __changelog's JSON rows also checks the escaping.
NAMES = [None, "a", "b", "", "é", 'q"uote', "back\\slash", "line\nbreak", "tab\t", "ctl\x01", "bell\x07", "😀"]
VALUES = {
    "name": st.sampled_from(NAMES),
    "amount": st.one_of(st.none(), st.sampled_from([0.0, 1.5, 4.5, 5.0, -3.0, 0.1, 1e300, -0.0, 2.5e-8]),
                        st.floats(-1e6, 1e6, allow_nan=False)),
    "note": st.sampled_from([None, "x", "y", "}{"]),
    "flag": st.sampled_from([None, True, False]),
    "tag": st.sampled_from([None, "a", "b", "c"]),
    "n": st.one_of(st.none(), st.integers(0, 3), st.just(2**62)),
    "w": st.sampled_from([None, 0.5, 2.0]),
    "score": st.one_of(st.none(), st.integers(-5, 5)),
}
IDS = range(12)


def _lt(a, b):
    return a is not None and b is not None and a < b


# (SQL predicate, the same in Python with SQL's NULL semantics, the added column it needs or None)
PREDICATES = {
    PEOPLE: [
        ("amount < 5", lambda r: _lt(r["amount"], 5), None),
        ("amount IS NULL", lambda r: r["amount"] is None, None),
        ("id % 3 = 0", lambda r: r["id"] % 3 == 0, None),
        ("name = 'a'", lambda r: r["name"] == "a", None),
        ("flag", lambda r: r["flag"] is True, "flag"),
    ],
    TAGS: [
        ("tag = 'a'", lambda r: r["tag"] == "a", None),
        ("n < 2", lambda r: _lt(r["n"], 2), None),
        ("tag IS NULL", lambda r: r["tag"] is None, None),
        ("score > 0", lambda r: _lt(0, r["score"]), "score"),
    ],
}


# ---- the model: each commit's expected changes, in plain Python ------------------------------------------


class Model:
    """The state of both tables and, per version, the batches a subscriber must get: a list of
    (table, kind, Counter of (op, weight, row tuple in the table's column order then))."""

    def __init__(self) -> None:
        self.columns = {t: list(cols) for t, cols in BASE_COLUMNS.items()}
        self.people: dict[int, dict] = {}
        self.tags: collections.Counter = collections.Counter()  # row tuple -> multiplicity
        self.commits: dict[int, list[tuple[str, str, collections.Counter]]] = {}

    def names(self, table: str) -> list[str]:
        return [n for n, _ in self.columns[table]]

    def schema(self, table: str) -> pa.Schema:
        return pa.schema(self.columns[table])

    def full(self, table: str, row: dict) -> tuple:
        return tuple(row.get(c) for c in self.names(table))

    def tag_rows(self) -> list[dict]:
        names = self.names(TAGS)
        return [dict(zip(names, t, strict=True)) for t in self.tags.elements()]

    def apply(self, ops: list[tuple]) -> list[tuple[str, str, collections.Counter]]:
        """Apply one commit's ops; return its batches in the order the log holds them: DDL first
        (in op order), then one batch per table with net row changes (in order of first row op)."""
        ddl, row_tables = [], []
        for kind, table, _ in ops:
            if kind == "add_column":
                ddl.append(table)
            elif table not in row_tables:
                row_tables.append(table)
        batches = []
        for kind, table, arg in ops:
            if kind == "add_column":
                self.columns[table].append(arg)
                if table == PEOPLE:
                    for r in self.people.values():
                        r[arg[0]] = None
                else:
                    self.tags = collections.Counter({t + (None,): n for t, n in self.tags.items()})
                batches.append((table, "add_column", collections.Counter()))
        for table in row_tables:
            mine = [(k, a) for k, t, a in ops if t == table and k != "add_column"]
            changes = self._people(mine) if table == PEOPLE else self._tags(mine)
            if changes:
                batches.append((table, "changes", changes))
        return batches

    def _people(self, ops) -> collections.Counter:
        local: dict[int, dict | None] = {}  # key -> its row at the end of the commit (None: deleted)

        def current(k):
            return local[k] if k in local else self.people.get(k)

        for kind, arg in ops:
            if kind in ("insert", "upsert"):
                for r in arg:
                    assert kind == "upsert" or current(r["id"]) is None, "the generator made a bad insert"
                    local[r["id"]] = {c: r.get(c) for c in self.names(PEOPLE)}
            elif kind == "delete_keys":
                for k in arg:
                    local[k] = None
            else:  # delete_where
                test = PREDICATE_FN[arg]
                for k in set(self.people) | set(local):
                    r = current(k)
                    if r is not None and test(r):
                        local[k] = None
        out = collections.Counter()
        for k, after in local.items():
            before = self.people.get(k)
            if before is None and after is None:
                continue
            if before is not None and after is not None:
                out["update", -1, self.full(PEOPLE, before)] += 1
                out["update", 1, self.full(PEOPLE, after)] += 1
                self.people[k] = after
            elif after is not None:
                out["insert", 1, self.full(PEOPLE, after)] += 1
                self.people[k] = after
            else:
                out["delete", -1, self.full(PEOPLE, before)] += 1
                del self.people[k]
        return out

    def _tags(self, ops) -> collections.Counter:
        delta = collections.Counter()
        names = self.names(TAGS)
        for kind, arg in ops:
            if kind == "insert":
                for r in arg:
                    delta[self.full(TAGS, r)] += 1
            else:  # delete_where, on this commit's view of the table
                test = PREDICATE_FN[arg]
                for row in set(self.tags) | set(delta):
                    m = self.tags[row] + delta[row]
                    if m > 0 and test(dict(zip(names, row, strict=True))):
                        delta[row] -= m
        out = collections.Counter()
        for row, d in delta.items():
            if d > 0:
                out["insert", 1, row] += d
            elif d < 0:
                out["delete", -1, row] += -d
            self.tags[row] += d
        self.tags = +self.tags
        return out


PREDICATE_FN = {sql: fn for preds in PREDICATES.values() for sql, fn, _ in preds}


# ---- drawing a random history ----------------------------------------------------------------------------


def draw_row(data, model: Model, table: str, key: int | None = None) -> dict:
    row = {} if key is None else {"id": key}
    for name in model.names(table):
        if name != "id":
            row[name] = data.draw(VALUES[name], label=name)
    return row


def draw_op(data, model: Model, table: str, local_people: dict) -> tuple | None:
    """One row operation on ``table`` valid against the state the commit has reached so far
    (``local_people``: the keyed table's rows as of the previous ops of the same commit)."""
    if table == PEOPLE:
        kind = data.draw(st.sampled_from(["insert", "upsert", "upsert", "delete_keys", "delete_where"]), label="op")
        if kind == "insert":
            free = [k for k in IDS if local_people.get(k) is None]
            if not free:
                return None
            keys = data.draw(st.lists(st.sampled_from(free), min_size=1, max_size=4, unique=True), label="ids")
            return kind, table, [draw_row(data, model, table, k) for k in keys]
        if kind == "upsert":
            keys = data.draw(st.lists(st.sampled_from(IDS), min_size=1, max_size=5, unique=True), label="ids")
            return kind, table, [draw_row(data, model, table, k) for k in keys]
        if kind == "delete_keys":
            keys = data.draw(st.lists(st.sampled_from(IDS), min_size=1, max_size=4, unique=True), label="ids")
            return kind, table, keys
    else:
        kind = data.draw(st.sampled_from(["insert", "insert", "delete_where"]), label="op")
        if kind == "insert":
            n = data.draw(st.integers(1, 4), label="rows")
            return kind, table, [draw_row(data, model, table) for _ in range(n)]
    names = set(model.names(table))
    preds = [sql for sql, _, needs in PREDICATES[table] if needs is None or needs in names]
    return "delete_where", table, data.draw(st.sampled_from(preds), label="where")


def local_after(model: Model, local: dict, op: tuple) -> None:
    """Track the keyed table's rows through a commit's ops, so later inserts pick free keys."""
    kind, table, arg = op
    if table != PEOPLE:
        return
    if kind in ("insert", "upsert"):
        for r in arg:
            local[r["id"]] = r
    elif kind == "delete_keys":
        for k in arg:
            local[k] = None
    elif kind == "delete_where":
        for k, r in list(local.items()):
            if r is not None and PREDICATE_FN[arg]({c: r.get(c) for c in model.names(PEOPLE)}):
                local[k] = None


def as_arrow(model: Model, table: str, rows: list[dict]) -> pa.Table:
    schema = model.schema(table)
    return pa.Table.from_pylist([{c: r.get(c) for c in schema.names} for r in rows], schema=schema)


def run_commit(db, ops: list[tuple], as_tx: bool, arrow: bool, model: Model) -> int | None:
    def rows_arg(table, rows):
        return as_arrow(model, table, rows) if arrow else rows

    if not as_tx:
        (kind, table, arg), = ops
        if kind == "add_column":
            return db.add_column(table, pa.field(*arg))
        if kind in ("insert", "upsert"):
            return getattr(db, kind)(table, rows_arg(table, arg))
        if kind == "delete_keys":
            return db.delete(table, keys=[{"id": k} for k in arg])
        return db.delete(table, where=arg)
    with db.transaction() as tx:
        for kind, table, arg in ops:
            if kind == "add_column":
                tx.add_column(table, pa.field(*arg))
            elif kind in ("insert", "upsert"):
                getattr(tx, kind)(table, rows_arg(table, arg))
            elif kind == "delete_keys":
                tx.delete(table, keys=[{"id": k} for k in arg])
            else:
                tx.delete(table, where=arg)
    return tx.version


def build_history(data, path: str, model: Model, commits: int):
    """Create both tables and make ``commits`` random commits; returns the open database."""
    db = udrflow.open(path, durability="none")
    for table in (PEOPLE, TAGS):
        v = db.create_table(table, model.schema(table), primary_key=["id"] if table == PEOPLE else None)
        model.commits[v] = [(table, "create_table", collections.Counter())]
    for step in range(commits):
        if data.draw(st.integers(0, 14), label="reopen?") == 0:
            note(f"step {step}: reopen")
            db.close()
            db = udrflow.open(path, durability="none")
        ops: list[tuple] = []
        extra = [(t, c) for t in (PEOPLE, TAGS) for c in EXTRA_COLUMNS[t] if c[0] not in model.names(t)]
        if extra and data.draw(st.integers(0, 9), label="add column?") == 0:
            table, column = extra[0] if len(extra) == 1 else data.draw(st.sampled_from(extra), label="column")
            ops.append(("add_column", table, column))
        n_ops = data.draw(st.integers(0 if ops else 1, 3), label="row ops")
        local = {k: dict(r) for k, r in model.people.items()}
        for _ in range(n_ops):
            tables = [t for t in (PEOPLE, TAGS) if not any(o[0] == "add_column" and o[1] == t for o in ops)]
            op = draw_op(data, model, data.draw(st.sampled_from(tables), label="table"), local)
            if op is not None:
                local_after(model, local, op)
                ops.append(op)
        if not ops:
            continue
        as_tx = len(ops) > 1 or data.draw(st.booleans(), label="in a transaction?")
        arrow = data.draw(st.booleans(), label="arrow rows?")
        note(f"step {step}: {'tx ' if as_tx else ''}{'arrow ' if arrow else ''}{ops!r}")
        version = run_commit(db, ops, as_tx, arrow, model)
        batches = model.apply(ops)
        for table, kind, changes in batches:
            event(f"batch {kind}" + (" (multi-table commit)" if len(batches) > 1 else ""))
            event(f"{table}: " + "/".join(sorted({op for op, _, _ in changes})) if changes else f"{table}: ddl")
        if not batches:
            assert version is None, f"step {step}: the model says nothing changed, but version {version} was written"
            continue
        assert version == max(model.commits) + 1, f"step {step}: got version {version}, expected the next one"
        model.commits[version] = batches
    return db


# ---- comparing batches with the model ----------------------------------------------------------------------


def row_tuple(row: dict, names: list[str]) -> tuple:
    return tuple(row.get(c) for c in names)


def batch_counter(batch) -> collections.Counter:
    names = [n for n in batch.changes.column_names if n not in (OP_COLUMN, WEIGHT_COLUMN)]
    return collections.Counter((r[OP_COLUMN], r[WEIGHT_COLUMN], row_tuple(r, names))
                               for r in batch.changes.to_pylist())


def collect(db, tables, after: int, head: int) -> list:
    """Subscribe from ``after`` and take every batch up to ``head`` (the idle timeout ends it when
    the last commits touch none of ``tables``)."""
    got = []
    with db.subscribe(tables, from_version=after, idle_timeout_s=0.05) as sub:
        if after < head:
            for batch in sub:
                got.append(batch)
                if sub.position >= head:
                    break
        assert sub.position == head, f"subscription stopped at {sub.position}, expected the head {head}"
    return got


def expected_batches(model: Model, tables, after: int) -> list[tuple]:
    out = []
    for version in sorted(model.commits):
        if version <= after:
            continue
        mine = [b for b in model.commits[version] if tables is None or b[0] in tables]
        for i, (table, kind, changes) in enumerate(mine):
            out.append((version, table, kind, i == len(mine) - 1, changes))
    return out


def check_batch_shape(db, batch) -> None:
    """Columns: the table's at that version, then __op (string) and __weight (int8); -1 rows first."""
    schema = db.schema(batch.table, batch.version - 1 if batch.kind == "drop_table" else batch.version)
    changes = batch.changes
    assert changes.column_names == [*schema.names, OP_COLUMN, WEIGHT_COLUMN], batch
    for field in schema:
        assert changes.schema.field(field.name).type == field.type, (batch, field)
    assert changes.schema.field(OP_COLUMN).type == pa.string()
    assert changes.schema.field(WEIGHT_COLUMN).type == pa.int8()
    weights = changes.column(WEIGHT_COLUMN).to_pylist()
    assert weights == sorted(weights), f"{batch}: -1 rows must come before +1 rows, got weights {weights}"
    ops = changes.column(OP_COLUMN).to_pylist()
    assert ops.count("update") % 2 == 0 and weights.count(-1) - ops.count("delete") == ops.count("update") // 2


def fold_rows(db, table: str, after: int, head: int, batches: list) -> None:
    """read(t, after) + the weighted changes == read(t, head), as multisets over the head's columns."""
    names = db.schema(table, head).names
    try:
        state = collections.Counter(row_tuple(r, names) for r in db.read(table, after).to_pylist())
    except TableNotFoundError:
        state = collections.Counter()
    for batch in batches:
        if batch.table != table or batch.kind != "changes":
            continue
        for r in batch.changes.to_pylist():
            key = row_tuple(r, names)
            state[key] += r[WEIGHT_COLUMN]
            assert state[key] >= 0, f"{batch} deletes a row that is not there: {key}"
    want = collections.Counter(row_tuple(r, names) for r in db.read(table, head).to_pylist())
    assert +state == want, f"folding the batches of {table!r} from {after} does not give read({table!r}, {head})"


def check_value_form_matches_arrow_form(db) -> None:
    """Small commits hold Python values (msgpack) and the change feed builds their batches
    straight from them; the same changes in the Arrow IPC form must give the same batch."""
    engine = db._engine()
    for record in db.log.scan():
        for op in decode_commit(record.payload, record.version).ops:
            if isinstance(op, Changes) and op.columns:
                schema = db.schema(op.table, record.version)
                fast = change_rows(op, schema, None)
                generic = change_rows(values_to_ipc(op, schema), schema, engine.chunks.get)
                assert fast.equals(generic, check_metadata=True), (
                    f"version {record.version}: {fast.to_pylist()} != {generic.to_pylist()}")
                assert fast.schema.equals(generic.schema, check_metadata=True)
                event("value-form commit" + (" with old values" if any(
                    c.startswith("__old_") for c in op.columns) else ""))


def changelog_rows(batches: list) -> collections.Counter:
    out = collections.Counter()
    for b in batches:
        if b.kind != "changes":
            continue
        names = [n for n in b.changes.column_names if n not in (OP_COLUMN, WEIGHT_COLUMN)]
        for r in b.changes.to_pylist():
            out[b.version, b.table, r[OP_COLUMN], r[WEIGHT_COLUMN], tuple((c, r[c]) for c in names)] += 1
    return out


def json_rows(table: pa.Table) -> collections.Counter:
    return collections.Counter((r["version"], r["table_name"], r["op"], r["weight"], tuple(json.loads(r["row"]).items()))
                               for r in table.to_pylist())


HISTORY_SETTINGS = settings(max_examples=100, deadline=None, derandomize=True, database=None,
                            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@HISTORY_SETTINGS
@given(st.data())
def test_batches_equal_the_model_fold_to_the_head_and_equal_the_changelog(data):
    root = tempfile.mkdtemp(prefix="udr-sub-")
    model = Model()
    try:
        db = build_history(data, os.path.join(root, "db"), model, data.draw(st.integers(3, 30), label="commits"))
        try:
            head = db.version
            assert head == max(model.commits)
            after = data.draw(st.integers(0, head), label="from_version")
            tables = data.draw(st.sampled_from([None, [PEOPLE], [TAGS], [PEOPLE, TAGS]]), label="tables")
            note(f"head={head} from_version={after} tables={tables}")
            got = collect(db, tables, after, head)
            want = expected_batches(model, tables, after)
            assert [(b.version, b.table, b.kind, b.last_in_version) for b in got] == [w[:4] for w in want]
            for batch, (*_, changes) in zip(got, want, strict=True):
                assert batch_counter(batch) == changes, f"{batch}: rows differ from the model"
                check_batch_shape(db, batch)
                assert batch.timestamp_us == db.log.timestamp_of(batch.version)
            for table in tables or (PEOPLE, TAGS):
                fold_rows(db, table, after, head, got)
            check_value_form_matches_arrow_form(db)
            # __changelog: the same rows, flattened (each row as a JSON object).
            everything = got if tables is None else collect(db, None, after, head)
            assert json_rows(changelog_table(db, head, after)) == changelog_rows(everything)
            assert json_rows(db.sql(f"SELECT * FROM __changelog WHERE version > {after}")) == changelog_rows(everything)
        finally:
            db.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_value_form_batches_check_their_shape_and_caches_are_bounded():
    schema = pa.schema([("id", pa.int64()), ("name", pa.string())])
    good = Changes("t", updates=1, inserts=1, deletes=1, rows_in=2, rows_out=2,
                   columns=["id", "name", "__old_name"], values=[[1, 2, 3], ["b", "c", "d"], ["a"]])
    assert change_rows(good, schema, None).to_pylist() == [
        {"id": 1, "name": "a", "__op": "update", "__weight": -1},
        {"id": 3, "name": "d", "__op": "delete", "__weight": -1},
        {"id": 1, "name": "b", "__op": "update", "__weight": 1},
        {"id": 2, "name": "c", "__op": "insert", "__weight": 1},
    ]
    bad = [
        (Changes("t", inserts=2, columns=["id", "name"], values=[[1, 2], ["x"]]), "'name' with 1 values: expected 2"),
        (Changes("t", inserts=1, columns=["id", "nope"], values=[[1], ["x"]]), "hold columns ['id', 'nope']"),
        (Changes("t", inserts=1, columns=["id", "name"], values=[[1]]), "name 2 columns but hold 1 lists"),
        (Changes("t", inserts=1, columns=["id", "name"], values=[["x"], ["x"]]), "not of the types"),
        (Changes("t", updates=1, columns=["id", "name", "__old_name"], values=[[1], ["b"], []]),
         "'__old_name' with 0 values: expected 1"),
    ]
    for changes, message in bad:
        with pytest.raises(CorruptionError, match=re.escape(message)):
            change_rows(changes, schema, None)
    for n in range(_changefeed._OP_ARRAYS_CACHE_MAX + 50):
        _changefeed._op_arrays_for(n % 7, n // 7, 1)
    assert len(_changefeed._op_arrays) <= _changefeed._OP_ARRAYS_CACHE_MAX
    assert _changefeed._OP_ARRAYS_ROWS_MAX <= 64 and _changefeed._PLANS_CACHE_MAX <= 1024


# ---- fixtures for the deterministic tests -----------------------------------------------------------------

SCHEMA_P = pa.schema([("id", pa.int64()), ("name", pa.string())])
SCHEMA_T = pa.schema([("tag", pa.string()), ("n", pa.int64())])


@pytest.fixture
def db(tmp_path):
    handle = udrflow.open(tmp_path / "db", durability="none")
    handle.create_table(PEOPLE, SCHEMA_P, primary_key="id")
    handle.create_table(TAGS, SCHEMA_T)
    yield handle
    handle.close()


def summary(batches) -> list[tuple]:
    return [(b.version, b.table, b.kind, b.changes.drop_columns([WEIGHT_COLUMN]).to_pylist()) for b in batches]


def take_until(sub, version: int) -> list:
    out = []
    for batch in sub:
        out.append(batch)
        if sub.position >= version:
            break
    return out


# ---- resume tokens and multi-table commits -----------------------------------------------------------------


def test_resuming_from_the_position_yields_exactly_the_rest(db):
    for i in range(30):
        db.upsert(PEOPLE, [{"id": i % 7, "name": f"n{i}"}])
        if i % 4 == 0:
            db.insert(TAGS, [{"tag": f"t{i}", "n": i}])
    head = db.version
    whole = summary(take_until(db.subscribe(None, from_version=0), head))
    for cut in (1, 5, 17, len(whole) - 1):
        sub = db.subscribe(None, from_version=0)
        first = [next(sub) for _ in range(cut)]
        token = sub.position
        sub.close()
        # Every batch up to the token came from commits <= token; the rest start after it.
        assert all(b.version <= token for b in first)
        rest = take_until(db.subscribe(None, from_version=token), head) if token < head else []
        done = [b for b in summary(first) if b[0] <= token]
        assert done + summary(rest) == whole, f"resuming at {token} after {cut} batches"


def test_a_multi_table_commit_is_one_batch_per_table_with_one_version(db):
    v0 = db.version
    with db.transaction() as tx:
        tx.insert(TAGS, [{"tag": "x", "n": 1}])
        tx.upsert(PEOPLE, [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}])
    db.upsert(PEOPLE, [{"id": 1, "name": "A"}])
    sub = db.subscribe(None, from_version=v0)
    first = next(sub)
    assert (first.version, first.table, first.last_in_version) == (tx.version, TAGS, False)
    assert sub.position == v0, "the position must not pass a version until all its batches are taken"
    second = next(sub)
    assert (second.version, second.table, second.last_in_version) == (tx.version, PEOPLE, True)
    assert sub.position == tx.version
    third = next(sub)
    assert third.changes.to_pylist() == [{"id": 1, "name": "a", "__op": "update", "__weight": -1},
                                         {"id": 1, "name": "A", "__op": "update", "__weight": 1}]
    assert sub.position == tx.version + 1
    sub.close()
    # Subscribed to one table only, that table's batch is the last of its version.
    only = db.subscribe([PEOPLE], from_version=v0)
    assert [(b.table, b.last_in_version) for b in take_until(only, tx.version)] == [(PEOPLE, True)]
    only.close()


def test_commits_stored_as_chunks_and_arrow_only_types(tmp_path):
    # Large commits keep their rows in chunks, not in the frame (COMMIT_INLINE_ROWS_BYTES_MAX);
    # timestamp and decimal columns keep every commit in the Arrow form. Both must come through.
    import datetime as dt
    import decimal

    schema = pa.schema([("id", pa.int64()), ("at", pa.timestamp("us", tz="UTC")), ("price", pa.decimal128(9, 2)),
                        ("blob", pa.string())])
    n = 40_000
    with udrflow.open(tmp_path / "db", durability="none") as db:
        db.create_table("big", schema, primary_key="id")
        at = dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
        rows = pa.table({"id": pa.array(range(n), pa.int64()), "at": pa.array([at] * n, schema.field("at").type),
                         "price": pa.array([decimal.Decimal("1.25")] * n, schema.field("price").type),
                         "blob": [os.urandom(24).hex() for _ in range(n)]}, schema=schema)
        v_insert = db.insert("big", rows)
        changed = rows.slice(0, n // 2).set_column(3, "blob", pa.array([f"new{i}" for i in range(n // 2)]))
        v_update = db.upsert("big", changed)
        v_delete = db.delete("big", where="id >= 39990")
        record = decode_commit(db.log.read(v_insert).payload, v_insert)
        assert record.ops[0].chunks, "the insert should be large enough to be stored as chunks"
        got = collect(db, ["big"], 1, db.version)
        assert [(b.version, b.num_rows) for b in got] == [(v_insert, n), (v_update, n), (v_delete, 10)]
        assert got[1].changes.column(OP_COLUMN).to_pylist() == ["update"] * n
        assert got[1].changes.slice(0, 1).to_pylist() == [
            {"id": 0, "at": at, "price": decimal.Decimal("1.25"), "blob": rows.column("blob")[0].as_py(),
             "__op": "update", "__weight": -1}]
        fold_rows(db, "big", 1, db.version, got)
        # __changelog renders timestamps and decimals as JSON strings/numbers, one row per change.
        log = db.sql(f"SELECT version, op, weight, row FROM __changelog WHERE version = {v_delete} ORDER BY row")
        first = json.loads(log.column("row")[0].as_py())
        assert log.num_rows == 10 and first["id"] == 39990 and first["at"].startswith("2024-01-02")


def test_from_version_defaults_to_the_head_and_ddl_is_delivered(db):
    db.insert(TAGS, [{"tag": "old", "n": 0}])
    sub = db.subscribe()  # only commits after now
    assert sub.position == db.version
    v = db.add_column(TAGS, pa.field("w", pa.float64()))
    db.insert(TAGS, [{"tag": "new", "n": 1, "w": 0.5}])
    ddl, rows = next(sub), next(sub)
    sub.close()
    assert (ddl.version, ddl.kind, ddl.num_rows, ddl.changes.column_names) == (
        v, "add_column", 0, ["tag", "n", "w", OP_COLUMN, WEIGHT_COLUMN])
    assert rows.changes.to_pylist() == [{"tag": "new", "n": 1, "w": 0.5, "__op": "insert", "__weight": 1}]
    assert rows.timestamp_us == db.log.timestamp_of(rows.version) and rows.timestamp.tzinfo is not None


# ---- following the tail in-process: iterator, async iterator, callback ---------------------------------------


def writer_thread(db, count: int, start_event: threading.Event | None = None, pace=None):
    versions: list[int] = []
    errors: list[BaseException] = []

    def run():
        try:
            if start_event is not None:
                start_event.wait(10)
            for i in range(count):
                if pace is not None:
                    pace(i)
                versions.append(db.upsert(PEOPLE, [{"id": i % 13, "name": f"w{i}"}]))
                if i % 10 == 0:
                    with db.transaction() as tx:
                        tx.insert(TAGS, [{"tag": f"t{i}", "n": i}])
                        tx.delete(PEOPLE, keys=[{"id": (i + 5) % 13}])
                    versions.append(tx.version)
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=run)
    return t, versions, errors


def expected_from_log(db, after: int, upto: int, tables=None) -> list[tuple]:
    """What a subscriber must get, read afterwards from a fresh subscription (already checked
    against the model above)."""
    return summary(b for b in collect(db, tables, after, upto))


def test_in_process_subscriber_follows_a_writer_thread(db):
    v0 = db.version
    sub = db.subscribe(None, from_version=v0)
    started = threading.Event()
    t, versions, errors = writer_thread(db, 300, started)
    t.start()
    got, seen_versions = [], []
    started.set()
    for batch in sub:
        got.append(batch)
        if batch.last_in_version:
            seen_versions.append(batch.version)
        if len(seen_versions) == 300 + 30:
            break
    sub.close()
    t.join(30)
    assert not errors and not t.is_alive()
    assert seen_versions == sorted(versions) == list(range(v0 + 1, v0 + 331))
    assert summary(got) == expected_from_log(db, v0, db.version)


def test_async_for_follows_the_tail_without_blocking_the_event_loop(db):
    v0 = db.version
    count = 40
    ticked = threading.Event()

    def pace(i):
        # The writer commits only after the event loop has run a ticker while the subscriber
        # waits: if waiting for a commit blocked the loop, this would time out.
        assert ticked.wait(10), "the event loop did not run while the subscriber waited"
        ticked.clear()

    t, versions, errors = writer_thread(db, count, pace=pace)

    async def ticker(stop: asyncio.Event):
        while not stop.is_set():
            ticked.set()
            await asyncio.sleep(0.001)

    async def consume():
        stop = asyncio.Event()
        tick = asyncio.create_task(ticker(stop))
        got = []
        sub = db.subscribe(None, from_version=v0)
        try:
            async for batch in sub:
                got.append(batch)
                if sub.position == v0 + count + count // 10:
                    break
        finally:
            sub.close()
            stop.set()
            await tick
        return got

    t.start()
    got = asyncio.run(consume())
    t.join(30)
    assert not errors and not t.is_alive()
    assert summary(got) == expected_from_log(db, v0, db.version)

    async def ended():
        # An async subscription that reaches its idle timeout ends the `async for`.
        return [b async for b in db.subscribe([TAGS], from_version=v0, idle_timeout_s=0.05)]

    assert summary(asyncio.run(ended())) == expected_from_log(db, v0, db.version, [TAGS])


def test_a_cancelled_anext_loses_nothing(db):
    v0 = db.version

    async def main():
        sub = db.subscribe([PEOPLE], from_version=v0)
        try:
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(sub.__anext__(), 0.05)  # no commit yet: times out
            db.upsert(PEOPLE, [{"id": 1, "name": "a"}])
            db.upsert(PEOPLE, [{"id": 2, "name": "b"}])
            first = await asyncio.wait_for(sub.__anext__(), 3)
            second = await asyncio.wait_for(sub.__anext__(), 3)
            return [first.version, second.version]
        finally:
            sub.close()

    assert asyncio.run(main()) == [v0 + 1, v0 + 2]


def wait_for(predicate, what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.002)


def test_callback_subscription_position_close_and_errors(db):
    v0 = db.version
    got = []
    cs = db.subscribe(None, from_version=v0, callback=got.append)
    assert isinstance(cs, CallbackSubscription) and not cs.closed
    t, versions, errors = writer_thread(db, 50)
    t.start()
    t.join(30)
    assert not errors
    head = db.version
    wait_for(lambda: cs.position == head, "the callback subscription to reach the head")
    cs.close()
    assert cs.closed and cs.join(1) is True
    assert summary(got) == expected_from_log(db, v0, head)

    # An exception from the callback ends the subscription; join() and close() re-raise it, and
    # the position is the last version whose batches all returned.
    calls = []

    def boom(batch):
        calls.append(batch.version)
        if len(calls) == 5:
            raise ValueError(f"bad batch at version {batch.version}")

    failing = db.subscribe(None, from_version=v0, callback=boom)
    with pytest.raises(ValueError) as err:
        failing.join(10)
    assert str(err.value) == f"bad batch at version {calls[4]}" and len(calls) == 5
    # calls[3] is a single-table commit's batch (the writer's multi-table commits come every 11).
    assert failing.position == calls[3] and isinstance(failing.error, ValueError)
    with pytest.raises(ValueError):
        failing.close()


# ---- errors --------------------------------------------------------------------------------------------------


def test_from_version_above_the_head_and_bad_arguments(db):
    head = db.version
    with pytest.raises(VersionNotFoundError) as err:
        db.subscribe(None, from_version=head + 5)
    assert isinstance(err.value, UdrflowError)
    assert f"from_version={head + 5}" in str(err.value) and f"at most {head}" in str(err.value)
    for bad in ("3", -1, 2.0, True):
        with pytest.raises(UsageError, match="from_version must be a version"):
            db.subscribe(None, from_version=bad)
    with pytest.raises(TableNotFoundError) as err:
        db.subscribe(["nope"], from_version=0)
    assert isinstance(err.value, UsageError) and isinstance(err.value, UdrflowError)
    assert "'nope'" in str(err.value) and PEOPLE in str(err.value) and TAGS in str(err.value)
    with pytest.raises(UdrflowError):
        db.subscribe(["bad name!"], from_version=0)
    with pytest.raises(TableNotFoundError):
        db.subscribe([PEOPLE, "nope"], from_version=0, callback=print)
    db.close()
    with pytest.raises(udrflow.DatabaseClosedError):
        db.subscribe(None, from_version=0)


def test_from_version_below_since_names_the_versions(tmp_path):
    # gc removes whole sealed segments; segments are at least SEGMENT_SIZE_BYTES_MIN (~16 MiB),
    # so write ~20 MiB of incompressible commits small enough to stay inline in the log.
    from udrflow._limits import SEGMENT_SIZE_BYTES_MIN

    with udrflow.open(tmp_path / "db", durability="none", segment_size_bytes=SEGMENT_SIZE_BYTES_MIN) as db:
        db.create_table("blobs", pa.schema([("k", pa.int64()), ("b", pa.string())]), primary_key="k")
        for i in range(48):  # hex compresses ~2x: ~0.4 MiB of log per commit
            db.upsert("blobs", [{"k": j, "b": os.urandom(4000).hex()} for j in range(i * 100, i * 100 + 100)])
        assert len(db.log.segment_paths) >= 2
        head = db.version
        db.set_since(head)
        db.gc()
        since = db.log.since
        assert since > 2, "gc should have removed the first segment"
        with pytest.raises(VersionNotFoundError) as err:
            db.subscribe(None, from_version=0)
        assert f"from_version=0 is below since={since}" in str(err.value)
        assert f"earliest possible from_version is {since - 1}" in str(err.value)
        with pytest.raises(VersionNotFoundError, match=f"from_version={since - 2} is below since={since}"):
            db.subscribe(["blobs"], from_version=since - 2)
        # Within the log but below the table's retained since: refused as well, never silent.
        with pytest.raises(VersionNotFoundError, match=f"below since={head} of table 'blobs'"):
            db.subscribe(["blobs"], from_version=since)
        with pytest.raises(VersionNotFoundError):
            changelog_table(db, head, 0)
        # From the table's since on, it works.
        db.upsert("blobs", [{"k": 0, "b": "x"}])
        assert [b.version for b in db.subscribe(["blobs"], from_version=head, idle_timeout_s=0.05)] == [head + 1]


# ---- a subscriber in another process -------------------------------------------------------------------------

WRITER_SCRIPT = textwrap.dedent("""
    import sys, udrflow
    path, count = sys.argv[1], int(sys.argv[2])
    with udrflow.open(path) as db:  # takes the writer lock: the subscriber must not hold it
        print("opened", db.version, flush=True)
        for i in range(count):
            if i % 9 == 8:
                with db.transaction() as tx:
                    tx.insert("tags", [{"tag": f"t{i}", "n": i}])
                    tx.delete("people", keys=[{"id": (i + 3) % 7}])
            else:
                db.upsert("people", [{"id": i % 7, "name": f"p{i}"}])
        print("done", db.version, flush=True)
""")


def writer_model(count: int, v0: int) -> list[tuple]:
    """The batches WRITER_SCRIPT's commits must produce (its own little model), and the people
    table's rows at the end."""
    people: dict[int, str] = {}
    out, v = [], v0
    for i in range(count):
        v += 1
        if i % 9 == 8:
            out.append((v, TAGS, "changes", [{"tag": f"t{i}", "n": i, "__op": "insert"}]))
            k = (i + 3) % 7
            if k in people:  # deleting a missing key changes nothing: then only the tags batch
                out.append((v, PEOPLE, "changes", [{"id": k, "name": people.pop(k), "__op": "delete"}]))
        else:
            k, new = i % 7, f"p{i}"
            if k in people:
                rows = [{"id": k, "name": people[k], "__op": "update"}, {"id": k, "name": new, "__op": "update"}]
            else:
                rows = [{"id": k, "name": new, "__op": "insert"}]
            people[k] = new
            out.append((v, PEOPLE, "changes", rows))
    return out, people


def test_a_read_only_subscriber_follows_a_writer_process(tmp_path):
    path = str(tmp_path / "db")
    with udrflow.open(path) as w:
        w.create_table(PEOPLE, SCHEMA_P, primary_key="id")
        w.create_table(TAGS, SCHEMA_T)
        v0 = w.version
    count = 200
    with udrflow.open(path, readonly=True) as reader:
        sub = reader.subscribe(None, from_version=v0)
        got: list = []
        consumer = threading.Thread(target=lambda: got.extend(take_until(sub, v0 + count)))
        consumer.start()  # the subscriber is waiting before the writer process even opens
        proc = subprocess.run([sys.executable, "-c", WRITER_SCRIPT, path, str(count)], capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.split() == ["opened", str(v0), "done", str(v0 + count)]
        consumer.join(30)
        sub.close()
        assert not consumer.is_alive()
        assert sub.position == v0 + count
        want, people = writer_model(count, v0)
        assert summary(got) == want
        assert sorted(reader.read(PEOPLE).to_pylist(), key=lambda r: r["id"]) == [
            {"id": k, "name": people[k]} for k in sorted(people)]


# ---- the Bytewax source ------------------------------------------------------------------------------------


def run_source(db, recovery: pathlib.Path, until: int, tables=(PEOPLE, TAGS), workers: int = 1) -> list:
    import datetime as dt

    import bytewax.operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.recovery import RecoveryConfig
    from bytewax.testing import TestingSink, cluster_main

    from udrflow.views import ChangeSource

    out: list = []
    flow = Dataflow("changes")
    stream = op.input("in", flow, ChangeSource(db, list(tables), from_version=0, until_version=until))
    op.output("out", stream, TestingSink(out))
    cluster_main(flow, [], 0, epoch_interval=dt.timedelta(milliseconds=5),
                 recovery_config=RecoveryConfig(recovery), worker_count_per_proc=workers)
    return out


def per_table(batches) -> dict[str, list[tuple]]:
    out: dict[str, list[tuple]] = {}
    for b in batches:
        out.setdefault(b.table, []).append((b.version, b.changes.to_pylist()))
    return out


@pytest.mark.parametrize("workers", [1, 2])
def test_bytewax_source_resumes_from_its_recovered_version(db, tmp_path, workers):
    from bytewax.recovery import init_db_dir

    recovery = tmp_path / "recovery"
    recovery.mkdir()
    init_db_dir(recovery, 1)
    t, _, errors = writer_thread(db, 60)
    t.start()
    t.join(30)
    assert not errors
    first_until = db.version - 17
    first = run_source(db, recovery, first_until, workers=workers)
    t, _, errors = writer_thread(db, 40)
    t.start()
    t.join(30)
    assert not errors
    second_until = db.version - 3
    second = run_source(db, recovery, second_until, workers=workers)
    third = run_source(db, recovery, db.version, workers=workers)

    def want(after, upto):
        return per_table(b for b in collect(db, None, after, upto) if b.kind == "changes")

    # Each partition (one per table) emits its table's commits in version order, and each run
    # exactly the versions after the previous run's: no gap, no duplicate.
    assert per_table(first) == want(0, first_until)
    assert per_table(second) == want(first_until, second_until)
    assert per_table(third) == want(second_until, db.version)
    assert {b.kind for b in first + second + third} == {"changes"}


def test_bytewax_source_from_a_path_and_ddl(db, tmp_path):
    from bytewax.recovery import init_db_dir

    db.insert(TAGS, [{"tag": "a", "n": 1}])
    db.add_column(TAGS, pa.field("w", pa.float64()))
    db.insert(TAGS, [{"tag": "b", "n": 2, "w": 1.0}])
    recovery = tmp_path / "recovery"
    recovery.mkdir()
    init_db_dir(recovery, 1)

    import datetime as dt

    import bytewax.operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.recovery import RecoveryConfig
    from bytewax.testing import TestingSink, run_main

    from udrflow.views import ChangeSource

    out: list = []
    flow = Dataflow("path")
    # A path: each worker opens its own read-only handle (as a dataflow in another process would).
    source = ChangeSource(db.path, TAGS, from_version=0, until_version=db.version, include_ddl=True)
    op.output("out", op.input("in", flow, source), TestingSink(out))
    run_main(flow, epoch_interval=dt.timedelta(milliseconds=5), recovery_config=RecoveryConfig(recovery))
    assert [(b.version, b.kind) for b in out] == [(2, "create_table"), (3, "changes"), (4, "add_column"),
                                                  (5, "changes")]
    with pytest.raises(UsageError):
        ChangeSource(db, [], from_version=0)


# ---- back-pressure: the log is the buffer -----------------------------------------------------------------


def test_a_slow_subscriber_gets_everything_and_buffers_at_most_one_commit(db):
    v0 = db.version
    sub = db.subscribe(None, from_version=v0)
    assert isinstance(sub, Subscription)
    db.upsert(PEOPLE, [{"id": 0, "name": "first"}])
    first = next(sub)
    assert first.version == v0 + 1
    # The subscriber "sleeps" (takes nothing) while 2,000 commits are written; multi-table
    # commits among them have two batches each.
    for i in range(2000):
        if i % 100 == 0:
            with db.transaction() as tx:
                tx.upsert(PEOPLE, [{"id": i % 50, "name": f"s{i}"}])
                tx.insert(TAGS, [{"tag": "bulk", "n": i}])
        else:
            db.upsert(PEOPLE, [{"id": i % 50, "name": f"s{i}"}])
    head = db.version
    assert len(sub._pending) == 0, "nothing may be read from the log before the consumer asks"
    got, pending_max = [first], 0
    for batch in sub:
        pending_max = max(pending_max, len(sub._pending))
        got.append(batch)
        if sub.position == head:
            break
    sub.close()
    assert pending_max <= 1, f"the subscription held {pending_max} batches beyond the one it returned"
    assert [b.version for b in got if b.last_in_version] == list(range(v0 + 1, head + 1))
    assert summary(got) == expected_from_log(db, v0, head)


def test_a_slow_subscriber_thread_keeps_up_with_a_fast_writer_in_order(db):
    v0 = db.version
    got: list = []
    pending_max = [0]

    def slow(batch):
        got.append(batch)
        time.sleep(0.0002)

    cs = db.subscribe(None, from_version=v0, callback=slow)
    for i in range(2000):
        db.upsert(PEOPLE, [{"id": i % 50, "name": f"s{i}"}])
        pending_max[0] = max(pending_max[0], len(cs._sub._pending))
    head = db.version
    wait_for(lambda: cs.position == head, "the slow callback to reach the head", timeout_s=60)
    cs.close()
    assert pending_max[0] <= 1
    assert [b.version for b in got] == list(range(v0 + 1, head + 1))
    assert summary(got) == expected_from_log(db, v0, head)


# ---- the CLI ---------------------------------------------------------------------------------------------

CLI = [sys.executable, "-m", "udrflow.cli"]


def expected_json(db, after: int, upto: int, tables) -> list[dict]:
    out = []
    for b in collect(db, tables, after, upto):
        if b.kind != "changes":
            continue
        for r in b.changes.to_pylist():
            op, weight = r.pop(OP_COLUMN), r.pop(WEIGHT_COLUMN)
            out.append({"version": b.version, "commit_ts": b.timestamp.isoformat(), "table": b.table, "op": op,
                        "weight": weight, "row": r})
    return out


@pytest.mark.parametrize("until_offset", [
    13,  # a commit of people: the CLI stops right after printing it
    14,  # a commit of another table: the CLI still stops once the position reaches it
])
def test_cli_subscribe_json_until_version_follows_the_writer(db, until_offset):
    for i in range(10):
        db.upsert(PEOPLE, [{"id": i % 4, "name": f'q"{i}\n'}])
    head = db.version
    start = head - 6
    # Commits below: people at every i, then tags when i % 3 == 0: head + 13 is a commit of
    # people, head + 14 one of tags only, which this subscriber (people) does not follow.
    until = head + until_offset
    proc = subprocess.Popen([*CLI, "subscribe", PEOPLE, "--db", db.path, "--from-version", str(start), "--format",
                             "json", "--until-version", str(until)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        # The CLI (another process, read-only) follows this process's commits until `until`.
        tags_only = []
        for i in range(20):
            db.upsert(PEOPLE, [{"id": i % 5, "name": f"later{i}"}])
            if i % 3 == 0:
                tags_only.append(db.insert(TAGS, [{"tag": "not followed", "n": i}]))
        assert (until in tags_only) == (until_offset == 14)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert lines == [r for r in expected_json(db, start, db.version, [PEOPLE]) if r["version"] <= until]
    assert f"-- position {until} (resume with --from-version {until})" in err


def test_cli_subscribe_idle_timeout_and_table_format(db):
    db.insert(TAGS, [{"tag": "a", "n": 1}, {"tag": "a", "n": 1}])
    db.upsert(PEOPLE, [{"id": 1, "name": "x"}])
    db.delete(TAGS, where="n = 1")
    proc = subprocess.run([*CLI, "subscribe", "--db", db.path, "--from-version", "0", "--format", "json",
                           "--idle-timeout", "0.3"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert [json.loads(line) for line in proc.stdout.splitlines()] == expected_json(db, 0, db.version, None)
    assert f"-- position {db.version}" in proc.stderr
    env = {**os.environ, "UDRFLOW_DB": db.path}
    proc = subprocess.run([*CLI, "subscribe", TAGS, "--from-version", "2", "--idle-timeout", "0.3", "--ddl"],
                          capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "-- version 3 at" in proc.stdout and "tags changes (2 rows)" in proc.stdout
    assert "tags changes (2 rows)" in proc.stdout.split("-- version 5")[1]
    proc = subprocess.run([*CLI, "subscribe", "--db", db.path, "--from-version", "99"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 1 and "from_version=99 is not yet in the log" in proc.stderr


def test_raw_changes_from_the_writers_recent_commits_equal_the_log(tmp_path):
    """A reader in the writing process takes the newest small commits as the engine made them
    (TableEngine.recent_commits); what it gets equals what reading and decoding the log gives,
    including a commit whose rows went to chunks and one of another table."""
    from udrflow._changefeed import read_raw_changes
    from udrflow._tables import RECENT_COMMIT_BYTES_MAX

    db = udrflow.open(str(tmp_path / "r.udr"))
    db.create_table("t", pa.schema([("k", pa.int64()), ("s", pa.string())]), primary_key=["k"])
    db.create_table("u", pa.schema([("k", pa.int64())]))
    start = db.version
    db.upsert("t", [{"k": 1, "s": "a"}])
    db.upsert("t", [{"k": 1, "s": "b"}, {"k": 2, "s": None}])
    db.insert("u", [{"k": 7}])
    db.upsert("t", [{"k": 3, "s": "x" * (RECENT_COMMIT_BYTES_MAX + 1)}])
    db.delete("t", [{"k": 2}])
    engine = db._engine()
    # (the large upsert's rows went to chunks: its commit is small, and kept, with the chunks named)
    assert all(v in engine.recent_commits for v in range(start + 1, start + 6))

    def seen(tables):
        return [(c.version, c.table, c.kind, c.num_rows, c.change_rows().to_pylist())
                for c in read_raw_changes(engine, tables, start, db.version)]

    cached = seen({"t"}), seen(None)
    engine.recent_commits.clear()
    assert (seen({"t"}), seen(None)) == cached
    assert [v for v, *_ in cached[0]] == [start + 1, start + 2, start + 4, start + 5]
    assert cached[0][1][4] == [
        {"k": 1, "s": "a", "__op": "update", "__weight": -1},
        {"k": 1, "s": "b", "__op": "update", "__weight": 1},
        {"k": 2, "s": None, "__op": "insert", "__weight": 1},
    ]
    db.close()
