"""Tables agree with a plain-Python model: a Hypothesis state machine drives a keyed and an unkeyed table
through writes, committed, rolled-back and overtaken transactions, added columns, checkpoints and reopens,
and compares every read, at the head and at past versions, with the model's rows and schema of that version.
Deterministic tests pin checkpointed reads, time travel by datetime, and each bug the machine found; a failure
prints its steps and a @reproduce_failure blob (UDRFLOW_SHRINK=1 also shrinks it)."""

from __future__ import annotations

import collections
import datetime as dt
import os
import shutil
import tempfile

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, Phase, event, note, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import udrflow
from udrflow.testing import ManualClock

PEOPLE, TAGS = "people", "tags"
BASE_COLUMNS = {
    PEOPLE: (("id", pa.int64()), ("name", pa.string()), ("amount", pa.float64())),
    TAGS: (("tag", pa.string()), ("n", pa.int64())),
}
EXTRA_COLUMNS = {  # added one at a time by the add_column rule
    PEOPLE: (("note", pa.string()), ("score", pa.int64())),
    TAGS: (("w", pa.float64()), ("flag", pa.bool_())),
}
DURABILITY = "none"  # the model is about semantics; test_bank and test_crash cover durability
IDS = st.integers(0, 24)
VALUES = {
    "name": st.sampled_from([None, "a", "b", "c", "", "é"]),
    "amount": st.one_of(st.none(), st.sampled_from([0.0, 1.5, 4.5, 5.0, 7.25, -3.0]),
                        st.floats(-1e3, 1e3, allow_nan=False)),
    "note": st.sampled_from([None, "x", "y"]),
    "score": st.one_of(st.none(), st.integers(-5, 5)),
    "tag": st.sampled_from([None, "a", "b", "c"]),
    "n": st.one_of(st.none(), st.integers(0, 4)),
    "w": st.sampled_from([None, 0.5, 2.0]),
    "flag": st.sampled_from([None, True, False]),
}


def _lt(a, b):
    return a is not None and b is not None and a < b


def _ge(a, b):
    return a is not None and b is not None and a >= b


# (SQL predicate, the same predicate in Python with SQL's NULL semantics (a comparison with NULL is not
# true), the added columns it needs)
PREDICATES = {
    PEOPLE: [
        ("amount < 5", lambda r: _lt(r["amount"], 5), ()),
        ("amount >= 5", lambda r: _ge(r["amount"], 5), ()),
        ("NOT (amount < 5)", lambda r: _ge(r["amount"], 5), ()),
        ("amount IS NULL", lambda r: r["amount"] is None, ()),
        ("name = 'a'", lambda r: r["name"] == "a", ()),
        ("id % 3 = 0", lambda r: r["id"] % 3 == 0, ()),
        ("name IS NULL OR amount > 100", lambda r: r["name"] is None or _lt(100, r["amount"]), ()),
        ("score > 0", lambda r: _lt(0, r["score"]), ("score",)),
        ("note = 'x' AND id < 12", lambda r: r["note"] == "x" and r["id"] < 12, ("note",)),
    ],
    TAGS: [
        ("n = 3", lambda r: r["n"] == 3, ()),
        ("tag = 'a'", lambda r: r["tag"] == "a", ()),
        ("n < 2", lambda r: _lt(r["n"], 2), ()),
        ("tag IS NULL", lambda r: r["tag"] is None, ()),
        ("tag = 'b' AND n >= 1", lambda r: r["tag"] == "b" and _ge(r["n"], 1), ()),
        ("w > 1", lambda r: _lt(1, r["w"]), ("w",)),
        ("flag", lambda r: r["flag"] is True, ("flag",)),
    ],
}
PREDICATE_FN = {sql: fn for preds in PREDICATES.values() for sql, fn, _ in preds}


class Rejected(Exception):
    """The model says udrflow must refuse this operation with SchemaError."""


class Snapshot:
    """One version of the database in the model: each table's columns and rows."""

    def __init__(self, columns: dict, people: dict, tags: collections.Counter) -> None:
        self.columns = columns   # table -> tuple of (name, arrow type)
        self.people = people     # id -> row dict (every column)
        self.tags = tags         # row tuple (column order) -> multiplicity

    def copy(self) -> Snapshot:
        return Snapshot(dict(self.columns), {k: dict(r) for k, r in self.people.items()}, collections.Counter(self.tags))

    def names(self, table: str) -> list[str]:
        return [name for name, _ in self.columns[table]]

    def rows(self, table: str) -> collections.Counter:
        if table == PEOPLE:
            names = self.names(PEOPLE)
            return collections.Counter(tuple(r[c] for c in names) for r in self.people.values())
        return collections.Counter(+self.tags)

    def same_rows(self, other: Snapshot) -> bool:
        return self.columns == other.columns and self.people == other.people and +self.tags == +other.tags

    # ---- the semantics of each write, in plain Python ----------------------------------------------------

    def full_row(self, table: str, row: dict) -> dict:
        return {c: row.get(c) for c in self.names(table)}

    def apply(self, op: tuple) -> None:
        kind, table, arg = op
        if kind in ("insert", "upsert") and table == PEOPLE:
            ids = [r["id"] for r in arg]
            if len(set(ids)) != len(ids) or (kind == "insert" and any(i in self.people for i in ids)):
                raise Rejected(op)
            for r in arg:
                self.people[r["id"]] = self.full_row(PEOPLE, r)
        elif kind == "insert":
            for r in arg:
                self.tags[tuple(self.full_row(TAGS, r).values())] += 1
        elif kind == "delete_keys":
            if len(set(arg)) != len(arg):
                raise Rejected(op)
            for i in arg:
                self.people.pop(i, None)
        elif kind == "delete_where":
            test = PREDICATE_FN[arg]
            if table == PEOPLE:
                self.people = {k: r for k, r in self.people.items() if not test(r)}
            else:
                names = self.names(TAGS)
                self.tags = collections.Counter({t: n for t, n in self.tags.items()
                                                 if n > 0 and not test(dict(zip(names, t, strict=True)))})
        elif kind == "add_column":
            self.columns[table] = self.columns[table] + ((arg.name, arg.type),)
            if table == PEOPLE:
                for r in self.people.values():
                    r[arg.name] = None
            else:
                self.tags = collections.Counter({t + (None,): n for t, n in self.tags.items()})
        else:
            raise AssertionError(f"unknown op {op!r}")

    def next_column(self, table: str) -> pa.Field | None:
        """The column the add_column rule adds to ``table`` next (None when all are added)."""
        added = len(self.columns[table]) - len(BASE_COLUMNS[table])
        return pa.field(*EXTRA_COLUMNS[table][added]) if added < len(EXTRA_COLUMNS[table]) else None


def canonical(rows: collections.Counter) -> list:
    return sorted(((repr(t), n) for t, n in rows.items() if n > 0))


def rows_of(table: pa.Table) -> collections.Counter:
    return collections.Counter(tuple(r.values()) for r in table.to_pylist())


class TableModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="udrflow-model-")
        self.path = os.path.join(self.dir, "model.udr")
        self.db = udrflow.open(self.path, durability=DURABILITY)
        columns = {t: BASE_COLUMNS[t] for t in (PEOPLE, TAGS)}
        assert self.db.create_table(PEOPLE, pa.schema(list(columns[PEOPLE])), primary_key=["id"]) == 1
        assert self.db.create_table(TAGS, pa.schema(list(columns[TAGS]))) == 2
        self.first = 2
        self.versions: dict[int, Snapshot] = {2: Snapshot(columns, {}, collections.Counter())}

    def teardown(self) -> None:
        try:
            self.db.close()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    # ---- the model's head and checks --------------------------------------------------------------------

    @property
    def head_version(self) -> int:
        return max(self.versions)

    @property
    def head(self) -> Snapshot:
        return self.versions[self.head_version]

    def committed(self, version, after: Snapshot, *, may_be_empty: bool = False) -> None:
        """A write returned ``version``; ``after`` is the model's state after it."""
        before = self.head
        if version is None:
            assert after.same_rows(before), "a write that changed rows returned no version"
            assert self.db.version == self.head_version
            return
        assert version == self.head_version + 1, f"version {version}, expected {self.head_version + 1}"
        if after.same_rows(before):
            assert may_be_empty, f"version {version} was committed for a write that changes nothing"
        self.versions[version] = after

    def check_table(self, table: str, got: pa.Table, want: Snapshot, where: str) -> None:
        assert [(f.name, f.type) for f in got.schema] == list(want.columns[table]), (
            f"{where}: schema of {table} is {got.schema}, expected {want.columns[table]}")
        rows = rows_of(got)
        if table == PEOPLE:
            assert len(rows) == got.num_rows, f"{where}: a row of {table} appears twice"
        assert canonical(rows) == canonical(want.rows(table)), f"{where}: rows of {table} differ from the model"

    def check_version(self, version: int, where: str = "") -> None:
        want = self.versions[version]
        for table in (PEOPLE, TAGS):
            self.check_table(table, self.db.read(table, version=version), want, f"{where}read at {version}")

    def check_all_versions(self, where: str) -> None:
        for v in range(self.first, self.head_version + 1):
            self.check_version(v, where)

    @invariant()
    def head_matches(self) -> None:
        assert self.db.version == self.head_version
        for table in (PEOPLE, TAGS):
            self.check_table(table, self.db.read(table), self.head, "head")

    # ---- generating operations ------------------------------------------------------------------------

    def draw_row(self, data, table: str, columns, *, omit_ok: bool = True, **fixed) -> dict:
        row = dict(fixed)
        for name, _ in columns:
            if name not in row:
                row[name] = data.draw(IDS if name == "id" else VALUES[name], label=name)
        # An insert may leave nullable columns out (they read as null); an upsert replaces
        # whole rows and must give every column.
        if omit_ok and data.draw(st.booleans(), label="omit nulls"):
            row = {k: v for k, v in row.items() if v is not None or k == "id"}
        return row

    def draw_op(self, data, view: Snapshot, *, clash_ok: bool = True, kinds=None) -> tuple:
        kind = data.draw(st.sampled_from(kinds or ["insert", "upsert", "delete_keys", "delete_where", "insert_tags",
                                                   "delete_tags"]), label="op")
        cols = view.columns
        if kind == "insert":
            fresh = [i for i in range(25) if i not in view.people]
            if not fresh or (clash_ok and view.people and data.draw(st.integers(0, 9), label="clash") == 0):
                ids = data.draw(st.lists(IDS, min_size=1, max_size=3), label="ids (may clash)")
            else:
                ids = data.draw(st.lists(st.sampled_from(fresh), min_size=1, max_size=4, unique=True), label="ids")
            return "insert", PEOPLE, [self.draw_row(data, PEOPLE, cols[PEOPLE], id=i) for i in ids]
        if kind == "upsert":
            dup_ok = clash_ok and data.draw(st.integers(0, 9), label="dup") == 0  # a key twice: refused
            ids = data.draw(st.lists(IDS, min_size=1, max_size=4, unique=not dup_ok), label="ids")
            return "upsert", PEOPLE, [self.draw_row(data, PEOPLE, cols[PEOPLE], omit_ok=False, id=i) for i in ids]
        if kind == "delete_keys":
            return "delete_keys", PEOPLE, data.draw(st.lists(IDS, min_size=1, max_size=4, unique=True), label="ids")
        if kind == "insert_tags":
            n = data.draw(st.integers(1, 4), label="rows")
            return "insert", TAGS, [self.draw_row(data, TAGS, cols[TAGS]) for _ in range(n)]
        table = PEOPLE if kind == "delete_where" else TAGS
        names = set(view.names(table))
        usable = [sql for sql, _, needs in PREDICATES[table] if names.issuperset(needs)]
        return "delete_where", table, data.draw(st.sampled_from(usable), label="where")

    def run_op(self, target, op: tuple):
        kind, table, arg = op
        if kind == "delete_keys":
            return target.delete(table, keys=[{"id": i} for i in arg])
        if kind == "delete_where":
            return target.delete(table, where=arg)
        return getattr(target, kind)(table, arg)  # insert, upsert, add_column

    # ---- rules ------------------------------------------------------------------------------------------

    @rule(data=st.data())
    def single_write(self, data) -> None:
        op = self.draw_op(data, self.head)
        note(f"single write {op}")
        after = self.head.copy()
        try:
            after.apply(op)
        except Rejected:
            with pytest.raises(udrflow.SchemaError):
                self.run_op(self.db, op)
            assert self.db.version == self.head_version, "a refused write left a commit"
            event("single write: refused")
            return
        version = self.run_op(self.db, op)
        if op[0] in ("delete_keys", "delete_where") and after.same_rows(self.head):
            assert version is None, f"{op} deleted nothing, yet committed version {version}"
        # An upsert that rewrites rows with their current values may be a commit of its own.
        self.committed(version, after, may_be_empty=op[0] == "upsert")

    @rule(data=st.data(), end=st.sampled_from(["commit", "rollback", "exception"]),
          isolation=st.sampled_from(["snapshot", "serializable"]))
    def transaction(self, data, end: str, isolation: str) -> None:
        view = self.head.copy()
        ops, rejected = [], False
        for _ in range(data.draw(st.integers(1, 5), label="ops")):
            op = self.draw_op(data, view)
            ops.append(op)
            try:
                view.apply(op)
            except Rejected:
                rejected = True
                break
        note(f"transaction ({isolation}, then {end}): {ops}")

        def body(tx) -> None:
            assert tx.begin_version == self.head_version
            for op in ops:
                self.run_op(tx, op)
            if not rejected:
                for table in (PEOPLE, TAGS):  # the snapshot plus this transaction's own writes
                    self.check_table(table, tx.read(table), view, "tx.read")

        tx = None
        try:
            if end == "rollback":
                tx = self.db.transaction(isolation)
                body(tx)
                tx.rollback()
            else:  # commit when the block ends; leaving it by an exception rolls back
                with self.db.transaction(isolation) as tx:
                    body(tx)
                    if end == "exception":
                        raise _Abort()
        except _Abort:
            pass
        except udrflow.SchemaError:
            assert rejected, "a transaction the model accepts raised SchemaError"
            tx.rollback()
            assert tx.version is None and self.db.version == self.head_version
            event("transaction: refused")
            return
        if end != "commit":
            assert tx.version is None and self.db.version == self.head_version, f"a {end} left a commit"
            event(f"transaction: {end}")
            return
        event("transaction: committed" if tx.version else "transaction: committed nothing")
        assert not rejected, f"a transaction with a refused operation committed version {tx.version}"
        self.committed(tx.version, view, may_be_empty=True)

    @rule(data=st.data(), isolation=st.sampled_from(["snapshot", "serializable"]))
    def concurrent_transaction(self, data, isolation: str) -> None:
        """A transaction that another commit overtakes: it must lose (TransactionConflictError, nothing
        written) iff both wrote a common key of the keyed table or any row of the unkeyed one, or, when
        serializable, the other commit wrote a table the transaction read; otherwise it commits on top."""
        snap = self.head
        cols = snap.columns
        inserted: set[int] = set()  # keys this transaction inserts (fresh, and in no other of its operations)
        upserted: set[int] = set()
        ops = []
        for _ in range(data.draw(st.integers(1, 3), label="ops")):
            fresh = [i for i in range(25) if i not in snap.people and i not in inserted | upserted]
            kind = data.draw(st.sampled_from(["upsert", "insert"] if fresh else ["upsert"]), label="people op")
            pool = fresh if kind == "insert" else [i for i in range(25) if i not in inserted]
            ids = data.draw(st.lists(st.sampled_from(pool), min_size=1, max_size=3, unique=True), label="ids")
            (inserted if kind == "insert" else upserted).update(ids)
            ops.append((kind, PEOPLE, [self.draw_row(data, PEOPLE, cols[PEOPLE], omit_ok=kind == "insert", id=i)
                                       for i in ids]))
        tags_op = data.draw(st.sampled_from([None, "insert", "delete_where"]), label="tags op")
        if tags_op == "insert":
            ops.append(("insert", TAGS, [self.draw_row(data, TAGS, cols[TAGS])]))
        elif tags_op == "delete_where":
            ops.append(self.draw_op(data, snap, kinds=["delete_tags"]))
        ops = data.draw(st.permutations(ops), label="order")
        growable = [t for t in (PEOPLE, TAGS) if snap.next_column(t) is not None]
        other_kind = data.draw(st.sampled_from(["upsert", "insert", "insert_tags", "delete_tags"]
                                               + (["add_column"] if growable else [])), label="other")
        fresh_now = [i for i in range(25) if i not in snap.people]
        if other_kind == "add_column":
            table = data.draw(st.sampled_from(growable), label="table")
            other = ("add_column", table, snap.next_column(table))
        elif other_kind == "insert" and fresh_now:
            other = ("insert", PEOPLE, [self.draw_row(data, PEOPLE, cols[PEOPLE],
                                                      id=data.draw(st.sampled_from(fresh_now), label="id"))])
        elif other_kind in ("upsert", "insert"):
            other = ("upsert", PEOPLE, [self.draw_row(data, PEOPLE, cols[PEOPLE], omit_ok=False,
                                                      id=data.draw(IDS, label="id"))])
        else:
            other = self.draw_op(data, snap, kinds=[other_kind])
        reads = data.draw(st.sets(st.sampled_from([PEOPLE, TAGS])), label="tables read")
        note(f"concurrent ({isolation}): tx reads {sorted(reads)} and does {ops}; overtaken by {other}")

        tx = self.db.transaction(isolation)
        for table in sorted(reads):
            self.check_table(table, tx.read(table), snap, "tx.read before")
        for op in ops:
            self.run_op(tx, op)
        after_other = snap.copy()
        after_other.apply(other)
        other_version = self.run_op(self.db, other)
        self.committed(other_version, after_other, may_be_empty=other[0] == "upsert")

        people_keys = {r["id"] for op in ops if op[1] == PEOPLE for r in op[2]}
        tags_written = False
        for op in ops:
            if op[1] == TAGS:
                probe = snap.copy()
                probe.apply(op)
                tags_written = op[0] == "insert" or not probe.same_rows(snap)
        read_set = reads | {op[1] for op in ops if op[0] == "delete_where"}
        if other_version is None:
            conflict = False
        elif other[0] == "add_column":  # DDL conflicts with every write of the table
            written = bool(people_keys) if other[1] == PEOPLE else tags_written
            conflict = written or (isolation == "serializable" and other[1] in read_set)
        elif other[1] == PEOPLE:
            conflict = other[2][0]["id"] in people_keys or (isolation == "serializable" and PEOPLE in read_set)
        else:
            conflict = tags_written or (isolation == "serializable" and TAGS in read_set)
        if conflict:
            with pytest.raises(udrflow.TransactionConflictError) as info:
                tx.commit()
            assert info.value.table == other[1]
            assert self.db.version == self.head_version, "the loser left a commit"
            event(f"concurrent ({isolation}): conflict")
            return
        event(f"concurrent ({isolation}): no conflict")
        view = self.head.copy()
        for op in ops:
            if op[1] == TAGS and op[0] == "delete_where" and not tags_written:
                continue  # it matched no row of the snapshot, so it deletes nothing (not rows added since)
            view.apply(op)
        self.committed(tx.commit(), view, may_be_empty=True)

    @precondition(lambda self: any(self.head.next_column(t) is not None for t in (PEOPLE, TAGS)))
    @rule(data=st.data())
    def add_column(self, data) -> None:
        table = data.draw(st.sampled_from([t for t in (PEOPLE, TAGS) if self.head.next_column(t) is not None]),
                          label="table")
        op = ("add_column", table, self.head.next_column(table))
        note(f"add_column {table}.{op[2].name}")
        after = self.head.copy()
        after.apply(op)
        version = self.run_op(self.db, op)
        assert version == self.head_version + 1
        self.versions[version] = after

    @rule(data=st.data())
    def read_past_version(self, data) -> None:
        v = data.draw(st.integers(self.first, self.head_version), label="version")
        self.check_version(v)
        for table in (PEOPLE, TAGS):
            schema = self.db.schema(table, version=v)
            assert [(f.name, f.type) for f in schema] == list(self.versions[v].columns[table])

    @rule(data=st.data())
    def checkpoint(self, data) -> None:
        done = self.db.checkpoint()
        assert done == {PEOPLE: self.head_version, TAGS: self.head_version}, done
        self.check_version(data.draw(st.integers(self.first, self.head_version), label="version"), "checkpointed: ")

    @rule(checkpoint_first=st.booleans())
    def reopen(self, checkpoint_first: bool) -> None:
        if checkpoint_first:
            self.db.checkpoint()
        self.db.close()
        self.db = udrflow.open(self.path, durability=DURABILITY)
        assert self.db.version == self.head_version
        self.check_all_versions("after reopen: ")


class _Abort(Exception):
    """Raised inside a transaction to leave it by an exception."""


# Shrinking replays hundreds of database histories and can take minutes, so it is off unless asked for
# (UDRFLOW_SHRINK=1); a failure still prints every step it ran (each rule notes what it did), and the blob
# that replays it (@reproduce_failure).
_PHASES = [Phase.explicit, Phase.reuse, Phase.generate] + ([Phase.shrink] if os.environ.get("UDRFLOW_SHRINK") else [])
TableModel.TestCase.settings = settings(max_examples=100, stateful_step_count=30, deadline=None, print_blob=True,
                                        phases=_PHASES,
                                        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
test_table_model = TableModel.TestCase


# ---- deterministic: checkpoints and time travel --------------------------------------------------------

SCHEMA = pa.schema([("id", pa.int64()), ("v", pa.string())])


def sorted_rows(table: pa.Table) -> list[dict]:
    return sorted(table.to_pylist(), key=lambda r: r["id"])


def test_a_version_reads_the_same_before_and_after_a_later_checkpoint(tmp_path):
    path = tmp_path / "ckpt.udr"
    db = udrflow.open(path)
    try:
        db.create_table("t", SCHEMA, primary_key=["id"])
        db.create_table("bag", pa.schema([("x", pa.int64())]))
        for i in range(12):
            db.upsert("t", [{"id": i % 5, "v": f"a{i}"}, {"id": 100 + i, "v": None}])
            db.insert("bag", [{"x": i % 3}, {"x": i % 3}])
            if i % 4 == 3:
                db.delete("t", where="id >= 100 AND id < 104")
                db.delete("bag", where="x = 0")
        mid = db.version
        db.add_column("t", pa.field("extra", pa.float64()))
        db.upsert("t", [{"id": 1, "v": "late", "extra": 2.5}])
        before = {(t, v): sorted_rows(db.read(t, version=v)) if t == "t" else
                  sorted(db.read(t, version=v).column("x").to_pylist())
                  for v in range(3, db.version + 1) for t in ("t", "bag")}
        assert db.checkpoint() == {"t": db.version, "bag": db.version}
        db.upsert("t", [{"id": 2, "v": "after", "extra": None}])
        assert db.checkpoint("t") == {"t": db.version}
        head = db.version
    finally:
        db.close()
    for reopen in (False, True):  # the live handle (cached), then a fresh open (checkpoints + log tail)
        db = udrflow.open(path)
        try:
            for (t, v), rows in before.items():
                got = db.read(t, version=v)
                got = sorted_rows(got) if t == "t" else sorted(got.column("x").to_pylist())
                assert got == rows, f"reopen={reopen}: {t} at version {v} changed after a later checkpoint"
            assert db.read("t", version=mid).column_names == ["id", "v"]
            assert {"id": 2, "v": "after", "extra": None} in db.read("t", version=head).to_pylist()
        finally:
            db.close()
    assert os.listdir(tmp_path / "ckpt.udr" / "checkpoints" / "main" / "t")


def commit_at(db, clock: ManualClock, us: int, ident: int) -> int:
    clock.set(us)
    return db.upsert("t", [{"id": ident, "v": f"at {us}"}])


def utc(us: int) -> dt.datetime:
    return dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=us)


def test_time_travel_by_datetime_reads_the_last_commit_at_or_before_it(tmp_path):
    clock = ManualClock(1_700_000_000_000_000)
    db = udrflow.open(tmp_path / "tt.udr", clock=clock)
    try:
        t0 = clock.now_us()
        db.create_table("t", SCHEMA, primary_key=["id"])
        stamps = {}
        for k in range(1, 6):
            stamps[commit_at(db, clock, t0 + k * 10_000_000, k)] = t0 + k * 10_000_000
        clock.set(t0 + 60_000_000)
        stamps[db.delete("t", keys=[{"id": 1}])] = t0 + 60_000_000
        states = {v: sorted_rows(db.read("t", version=v)) for v in stamps}
        for v, us in stamps.items():
            assert db.log.timestamp_of(v) == us
            assert sorted_rows(db.read("t", version=utc(us))) == states[v], f"exactly at version {v}'s commit"
            assert sorted_rows(db.read("t", version=utc(us + 1))) == states[v], f"just after version {v}"
            assert sorted_rows(db.read("t", version=utc(us + 9_999_999))) == states[v]
            naive = utc(us).replace(tzinfo=None)  # naive datetimes are UTC
            assert sorted_rows(db.read("t", version=naive)) == states[v]
            tokyo = utc(us).astimezone(dt.timezone(dt.timedelta(hours=9)))
            assert sorted_rows(db.read("t", version=tokyo)) == states[v]
        first = min(stamps)
        assert sorted_rows(db.read("t", version=utc(stamps[first] - 1))) == []  # at the create_table commit
        with pytest.raises(udrflow.VersionNotFoundError):
            db.read("t", version=utc(t0 - 1))
        # Two commits with the same timestamp: the later one wins.
        clock.set(t0 + 70_000_000)
        v1 = db.upsert("t", [{"id": 9, "v": "first"}])
        v2 = db.upsert("t", [{"id": 9, "v": "second"}])
        assert v2 == v1 + 1
        assert {"id": 9, "v": "second"} in db.read("t", version=utc(t0 + 70_000_000)).to_pylist()
    finally:
        db.close()


@pytest.mark.parametrize("us", [1_113_726_542_646_319, 560_860_029_728_182, 1_700_000_000_000_001])
def test_time_travel_at_the_exact_microsecond_of_an_old_commit(tmp_path, us):
    """A datetime holds exact microseconds; the version lookup must not lose one to float rounding."""
    clock = ManualClock(us - 5)
    db = udrflow.open(tmp_path / "old.udr", clock=clock)
    try:
        db.create_table("t", SCHEMA, primary_key=["id"])
        v = commit_at(db, clock, us, 1)
        assert db.log.timestamp_of(v) == us
        assert db.read("t", version=utc(us)).to_pylist() == [{"id": 1, "v": f"at {us}"}], (
            f"read at {utc(us).isoformat()} (= {us} us), the exact time of version {v}, missed it")
    finally:
        db.close()


# ---- regressions: each bug the state machine found, as the smallest history that shows it ------------

def open_tables(path):
    db = udrflow.open(path)
    db.create_table("people", pa.schema([("id", pa.int64()), ("name", pa.string())]), primary_key=["id"])
    db.create_table("tags", pa.schema([("tag", pa.string()), ("n", pa.int64())]))
    return db


@pytest.mark.parametrize("table_empty", [True, False])
def test_a_transaction_deletes_rows_it_inserted_into_a_table_without_key(tmp_path, table_empty):
    db = open_tables(tmp_path / "own.udr")
    try:
        if not table_empty:
            db.insert("tags", [{"tag": "a", "n": 1}])
        with db.transaction() as tx:
            tx.insert("tags", [{"tag": "z", "n": 9}, {"tag": "y", "n": 8}])
            tx.delete("tags", where="n = 9")
            assert sorted(r["n"] for r in tx.read("tags").to_pylist()) == ([8] if table_empty else [1, 8])
        assert sorted(r["n"] for r in db.read("tags").to_pylist()) == ([8] if table_empty else [1, 8])
    finally:
        db.close()


def test_an_insert_overtaken_by_an_insert_of_the_same_key_is_a_conflict(tmp_path):
    db = open_tables(tmp_path / "ins.udr")
    try:
        tx = db.transaction()
        tx.insert("people", [{"id": 7, "name": "tx"}])
        other = db.insert("people", [{"id": 7, "name": "other"}])
        with pytest.raises(udrflow.TransactionConflictError) as info:  # not SchemaError: retrying may succeed
            tx.commit()
        assert (info.value.table, info.value.version) == ("people", other)
        assert db.read("people").to_pylist() == [{"id": 7, "name": "other"}]
    finally:
        db.close()


def test_a_delete_overtaken_by_a_delete_of_the_same_unkeyed_row_is_a_conflict(tmp_path):
    db = open_tables(tmp_path / "del.udr")
    try:
        db.insert("tags", [{"tag": "a", "n": 1}, {"tag": "b", "n": 2}])
        tx = db.transaction()
        tx.delete("tags", where="n = 1")
        other = db.delete("tags", where="n = 1")
        with pytest.raises(udrflow.TransactionConflictError) as info:  # not InternalError
            tx.commit()
        assert (info.value.table, info.value.version) == ("tags", other)
        assert db.read("tags").to_pylist() == [{"tag": "b", "n": 2}]
    finally:
        db.close()


def test_add_column_while_the_writer_holds_pending_rows_of_a_table_without_key(tmp_path):
    db = open_tables(tmp_path / "col.udr")
    try:
        db.insert("tags", [{"tag": "a", "n": 1}, {"tag": "b", "n": 2}])
        db.delete("tags", where="n = 1")            # the writer now keeps a head state of "tags"
        db.insert("tags", [{"tag": "c", "n": 3}])    # ... with a change not yet folded into it
        db.add_column("tags", pa.field("w", pa.float64()))
        db.insert("tags", [{"tag": "d", "n": 4, "w": 0.5}])
        db.delete("tags", where="n = 2")
        db.delete("tags", where="w = 0.5")
        assert db.read("tags").to_pylist() == [{"tag": "c", "n": 3, "w": None}]
    finally:
        db.close()


def test_a_transaction_overtaken_by_add_column_is_a_conflict(tmp_path):
    db = open_tables(tmp_path / "ddl.udr")
    try:
        tx = db.transaction()
        tx.insert("people", [{"id": 1, "name": "a"}])
        tx.upsert("people", [{"id": 2, "name": "b"}])   # two operations: resolved by the multi-op path
        other = db.add_column("people", pa.field("note", pa.string()))
        with pytest.raises(udrflow.TransactionConflictError) as info:  # not KeyError
            tx.commit()
        assert (info.value.table, info.value.version) == ("people", other)
        assert db.read("people").num_rows == 0
    finally:
        db.close()
