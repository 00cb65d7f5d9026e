"""Branches: named logs forked from another branch at a version, copying no data.

A branch ``dev`` forked from ``main`` at version F is three small files::

    branches/dev.msgpack          {"parent": "main", "fork": F}
    catalog/dev/<F>.snap          main's catalog (table definitions, row counts) at F
    log/dev/<F+1>.seg             an empty segment: dev's own commits get versions F+1, ...

Reads of dev at a version <= F go to main (``TableEngine.parent``); above F, a read starts
from main's state at F (or a checkpoint of dev) and folds dev's log on it. Writes on dev
go to dev's log only, so they are invisible elsewhere. Creation writes well under 1 KB,
whatever the size of the data.

``diff`` compares two (branch, version) states row by row; ``merge`` applies the net
changes one branch made since the fork to the other, in one atomic commit, after a
three-way check at row level (see :func:`merge`).
"""

from __future__ import annotations

import collections
import json
import os
import shutil

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from udrflow._changefeed import OP_COLUMN, WEIGHT_COLUMN, read_changes
from udrflow._fileio import make_dirs_durably, remove_file, write_file_durably
from udrflow._names import check_name
from udrflow._sealed import seal, unseal
from udrflow.errors import (
    BranchNotFoundError,
    CorruptionError,
    MergeConflictError,
    UsageError,
    VersionNotFoundError,
    storage_error_from_os,
)
from udrflow.log._segment import create_segment

DEFAULT_BRANCH = "main"
MERGE_FUNCS = ("sum", "max", "min")
MERGE_METADATA_KEY = b"udrflow.merge"
CONFLICTS_SHOWN_MAX = 10


class BranchMeta(msgspec.Struct):
    parent: str
    fork: int


def meta_path(root: str, name: str) -> str:
    check_name(name, "branch")  # a branch name becomes a file and directory name
    return os.path.join(root, "branches", f"{name}.msgpack")


def read_meta(root: str, name: str) -> BranchMeta | None:
    """The fork of branch ``name``; None for the main branch; BranchNotFoundError if unknown.
    Every way a branch name comes in (open, SQL ``t@b``, diff, merge, delete) passes here
    first, so the name rule is checked here: InvalidNameError, never a path outside."""
    check_name(name, "branch")
    if name == DEFAULT_BRANCH:
        return None
    path = meta_path(root, name)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise BranchNotFoundError(f"branch {name!r} does not exist in {root} (branches: "
                                  f"{', '.join(list_names(root))})") from None
    try:
        return msgspec.msgpack.decode(unseal(data, path, "branch file"), type=BranchMeta)
    except msgspec.DecodeError as exc:
        raise CorruptionError(f"branch file {path} does not decode: {exc}", path) from exc


def list_names(root: str) -> list[str]:
    d = os.path.join(root, "branches")
    names = [f[: -len(".msgpack")] for f in os.listdir(d) if f.endswith(".msgpack")] if os.path.isdir(d) else []
    return [DEFAULT_BRANCH] + sorted(names)


def create(db, name: str, from_branch: str | None = None, at_version: int | None = None) -> int:
    """Create branch ``name`` from ``from_branch`` (default: the handle's branch) at
    ``at_version`` (default: its head); return the fork version."""
    check_name(name, "branch")
    store = db._store
    root = db.path
    if db.readonly:
        from udrflow.errors import ReadOnlyError

        raise ReadOnlyError(f"database {root} is open read-only: branches are created by the writer")
    if name in list_names(root):
        raise UsageError(f"branch {name!r} already exists in {root}")
    source = str(from_branch or db.branch)
    parent = store.engine(source)  # raises BranchNotFoundError for an unknown source
    fork = parent.resolve_version(at_version)
    if at_version is not None and parent.parent is not None and fork <= parent.fork:
        raise UsageError(f"branch {source!r} starts at version {parent.fork + 1}: fork {name!r} from "
                         f"{parent_name(root, source)!r} to branch at version {fork}")
    # A table whose history at the fork was given up (retention) could never be read or
    # written on the new branch: refuse, as reading it there would.
    owner = parent
    while owner.parent is not None and fork <= owner.fork:
        owner = owner.parent
    for table in owner.names(fork):
        since = owner.since_of(owner.table_def(table, fork))
        if fork < since:
            raise VersionNotFoundError(f"cannot fork branch {name!r} at version {fork}: the history of table "
                                       f"{table!r} before since={since} was removed by retention")
    io = store.io
    snap = os.path.join(root, "catalog", name, f"{fork:020d}.snap")
    try:
        # The name does not exist (no meta file), so anything under it is what a create or
        # delete killed half-way left behind: it must not become part of the new branch
        # (a segment of the deleted namesake would show its rows; one of an earlier fork,
        # at other versions, would hide the new branch's writes).
        _remove_branch_files(root, name)
        make_dirs_durably(io, os.path.dirname(snap))
        write_file_durably(io, snap, parent.catalog_snapshot(fork))
        log_dir = os.path.join(root, "log", name)
        make_dirs_durably(io, log_dir)
        create_segment(io, log_dir, fork + 1)
        # Last: the branch exists once its meta file does (written to a temp file, fsynced,
        # renamed, directory fsynced). A crash before leaves only files that the next
        # create of the name removes first.
        make_dirs_durably(io, os.path.join(root, "branches"))
        write_file_durably(io, meta_path(root, name), seal(msgspec.msgpack.encode(BranchMeta(source, fork))))
    except OSError as exc:
        raise storage_error_from_os(exc, f"create branch {name!r} in", root) from exc
    return fork


def parent_name(root: str, name: str) -> str | None:
    meta = read_meta(root, name)
    return None if meta is None else meta.parent


def describe(db) -> list[dict]:
    """name, parent, fork and head of every branch."""
    out = []
    for name in list_names(db.path):
        meta = read_meta(db.path, name)
        engine = db._store.engine(name)
        out.append({"name": name, "parent": meta.parent if meta else None, "fork": meta.fork if meta else 0,
                    "head": engine.refresh() if engine.log.readonly else engine.log.version})
    return out


def delete(db, name: str) -> None:
    root = db.path
    if name == DEFAULT_BRANCH:
        raise UsageError("the main branch cannot be deleted")
    read_meta(root, name)  # BranchNotFoundError if unknown
    children = [n for n in list_names(root) if n != DEFAULT_BRANCH and read_meta(root, n).parent == name]
    if children:
        raise UsageError(f"branch {name!r} cannot be deleted: branches {children} were forked from it")
    if name == db.branch:
        raise UsageError(f"branch {name!r} is open in this handle: delete it from a handle on another branch")
    db._store.close_branch(name)
    io = db._store.io
    try:
        # First, durably: the branch is gone once its meta file is (unlink, then fsync of
        # the directory). A crash after it leaves files that the next create removes.
        remove_file(io, meta_path(root, name), f"branch {name!r}")
        io.fsync_dir(os.path.join(root, "branches"))
    except OSError as exc:
        raise storage_error_from_os(exc, f"delete branch {name!r} in", root) from exc
    _remove_branch_files(root, name)


def _remove_branch_files(root: str, name: str) -> None:
    """Every file of branch ``name`` but its meta file: log, checkpoints, catalog
    snapshots, view state, retention."""
    for part in ("log", "checkpoints", "catalog", "views"):
        shutil.rmtree(os.path.join(root, part, name), ignore_errors=True)
    retention = os.path.join(root, "retention", f"{name}.msgpack")
    if os.path.exists(retention):
        os.remove(retention)


def fork_floor(root: str, name: str) -> int | None:
    """The lowest version of ``name`` that a child branch still reads (its fork), if any."""
    forks = [m.fork for n in list_names(root) if n != DEFAULT_BRANCH
             for m in [read_meta(root, n)] if m.parent == name]
    return min(forks) if forks else None


# ---- diff ---------------------------------------------------------------------------------


def _state(db, ref) -> tuple[object, int]:
    """(engine, version) of a diff side: a branch name (its head), an int (a version of the
    handle's branch), or ``"branch@version"``."""
    store = db._store
    if isinstance(ref, int) and not isinstance(ref, bool):
        engine = store.engine(db.branch)
        return engine, engine.resolve_version(ref)
    if not isinstance(ref, str):
        raise UsageError(f"a diff side is a branch name, a version (int) or 'branch@version': got {ref!r}")
    name, _, at = ref.partition("@")
    engine = store.engine(name)
    if engine.log.readonly:
        engine.refresh()
    if at:
        try:
            v = int(at)
        except ValueError:
            raise UsageError(f"diff side {ref!r}: expected 'branch@version' with an integer version") from None
        return engine, engine.resolve_version(v)
    return engine, engine.log.version


def diff(db, a, b, table: str | None = None):
    """Row-level changes that turn state ``a`` into state ``b``, as change batches (the row
    columns + ``__op`` insert/update/delete + ``__weight``; an update is -1 old, +1 new).
    With ``table`` a pyarrow.Table; otherwise a dict of table name -> pyarrow.Table for
    every table whose rows differ (a table on one side only counts as all inserted or
    all deleted)."""
    ea, va = _state(db, a)
    eb, vb = _state(db, b)
    names = [table] if table is not None else sorted(set(ea.names(va)) | set(eb.names(vb)))
    out = {}
    for name in names:
        has_a, has_b = name in ea.names(va), name in eb.names(vb)
        if not has_a and not has_b:
            ea.table_def(name, va)  # raises TableNotFoundError with the message
        tdef = (eb if has_b else ea).table_def(name, vb if has_b else va)
        old = ea.read(name, va) if has_a else tdef.schema.empty_table()
        new = eb.read(name, vb) if has_b else tdef.schema.empty_table()
        changes = _table_diff(old, new, list(tdef.primary_key))
        if table is not None:
            return changes
        if changes.num_rows:
            out[name] = changes
    return out


def _table_diff(old: pa.Table, new: pa.Table, pk: list[str]) -> pa.Table:
    if not old.schema.equals(new.schema):
        names = [n for n in new.schema.names if n in old.schema.names]
        extra_new = [n for n in new.schema.names if n not in names]
        extra_old = [n for n in old.schema.names if n not in names]
        for n in extra_new:
            old = old.append_column(new.schema.field(n), pa.nulls(old.num_rows, new.schema.field(n).type))
        for n in extra_old:
            new = new.append_column(old.schema.field(n), pa.nulls(new.num_rows, old.schema.field(n).type))
        order = new.schema.names
        old = old.select(order).cast(new.schema)
    w, first = "__w", "__first"
    both = pa.concat_tables([old.append_column(w, pa.array(np.full(old.num_rows, -1, np.int64))),
                             new.append_column(w, pa.array(np.ones(new.num_rows, np.int64)))])
    data = new.schema.names
    # Arrow cannot group by list, struct or map columns: those group by their JSON text, and
    # each group's first row gives back the values themselves.
    group_cols = []
    for name in data:
        if pa.types.is_nested(new.schema.field(name).type):
            text = [None if v is None else json.dumps(v, sort_keys=True, default=str)
                    for v in both.column(name).to_pylist()]
            both = both.append_column(f"__json_{name}", pa.array(text, pa.string()))
            group_cols.append(f"__json_{name}")
        else:
            group_cols.append(name)
    both = both.append_column(first, pa.array(np.arange(both.num_rows, dtype=np.int64)))
    net = both.group_by(group_cols, use_threads=False).aggregate([(w, "sum"), (first, "min")])
    weights = net.column(f"{w}_sum").to_numpy()
    net = both.take(net.column(f"{first}_min")).select(data).cast(new.schema)
    idx = np.flatnonzero(weights)
    rows = net.take(pa.array(np.repeat(idx, np.abs(weights[idx]))))
    signs = np.repeat(np.sign(weights[idx]), np.abs(weights[idx])).astype(np.int8)
    minus = np.flatnonzero(signs < 0)
    plus = np.flatnonzero(signs > 0)
    rows = rows.take(pa.array(np.concatenate([minus, plus]).astype(np.int64)))
    signs = np.concatenate([signs[minus], signs[plus]])
    ops = np.where(signs < 0, "delete", "insert").astype(object)
    if pk and len(minus) and len(plus):
        keys_minus = set(_keys(rows.slice(0, len(minus)), pk))
        keys_plus = _keys(rows.slice(len(minus)), pk)
        updated = {k for k in keys_plus if k in keys_minus}
        if updated:
            all_keys = _keys(rows, pk)
            ops = np.array(["update" if k in updated else o for k, o in zip(all_keys, ops, strict=True)], object)
    rows = rows.append_column(pa.field(OP_COLUMN, pa.string(), nullable=False), pa.array(list(ops), pa.string()))
    return rows.append_column(pa.field(WEIGHT_COLUMN, pa.int8(), nullable=False), pa.array(signs, pa.int8()))


def _keys(table: pa.Table, pk: list[str]) -> list:
    cols = [table.column(k).to_pylist() for k in pk]
    return cols[0] if len(pk) == 1 else list(zip(*cols, strict=True))


# ---- merge --------------------------------------------------------------------------------


def _net_changes(engine, table: str, after: int, upto: int, pk: list[str], skip: frozenset = frozenset()):
    """The net effect of the commits in (after, upto] (except the versions in ``skip``) on
    table ``table``: for a keyed table, (final rows of keys set, keys deleted); for a
    multiset, (rows added, rows removed)."""
    parts = [b.changes for b in read_changes(engine, {table}, after, upto)
             if b.kind == "changes" and b.num_rows and b.version not in skip]
    if not parts:
        return None
    rows = pa.concat_tables(parts)
    if not pk:
        data = rows.drop_columns([OP_COLUMN])
        w = data.column(WEIGHT_COLUMN)
        data = data.set_column(data.column_names.index(WEIGHT_COLUMN), WEIGHT_COLUMN, pc.cast(w, pa.int64()))
        net = data.group_by([n for n in data.column_names if n != WEIGHT_COLUMN],
                            use_threads=False).aggregate([(WEIGHT_COLUMN, "sum")])
        weights = net.column(f"{WEIGHT_COLUMN}_sum").to_numpy()
        net = net.drop_columns([f"{WEIGHT_COLUMN}_sum"])
        up, down = np.flatnonzero(weights > 0), np.flatnonzero(weights < 0)
        return (net.take(pa.array(np.repeat(up, weights[up]))), net.take(pa.array(np.repeat(down, -weights[down]))))
    # The last change of each key decides: a +1 row is its final value, a -1 (with no +1
    # after it in the same commit) a deletion.
    seq = pa.array(np.arange(rows.num_rows, dtype=np.int64))
    tagged = rows.append_column("__seq", seq)
    last = tagged.group_by(pk, use_threads=False).aggregate([("__seq", "max")])
    final = tagged.take(last.column("__seq_max"))
    alive = pc.greater(final.column(WEIGHT_COLUMN), 0)
    kept = final.filter(alive).drop_columns([OP_COLUMN, WEIGHT_COLUMN, "__seq"])
    gone = final.filter(pc.invert(alive)).select(pk)
    return kept, gone


def _common_fork(store, source: str, into: str) -> int:
    s, t = store.engine(source), store.engine(into)
    if s.parent is t:
        return s.fork
    if t.parent is s:
        return t.fork
    # Two branches of a common ancestor: the lower of their forks from it.
    line_s, line_t = _lineage(s), _lineage(t)
    for eng, fork_s in line_s:
        for eng2, fork_t in line_t:
            if eng is eng2:
                return min(fork_s, fork_t)
    raise UsageError(f"branches {source!r} and {into!r} have no common history")


def _lineage(engine) -> list:
    out = [(engine, engine.log.version)]
    while engine.parent is not None:
        out.append((engine.parent, engine.fork))
        engine = engine.parent
    return out


def merge(db, source: str, into: str | None = None) -> dict:
    """Apply the changes ``source`` made since it diverged from ``into`` (default: the
    handle's branch) to ``into``, as one commit. Returns ``{"version", "kind", "tables",
    "rows"}`` (kind ``"fast-forward"`` when ``into`` did not change since the fork, else
    ``"three-way"``; version None when there was nothing to apply).

    Three-way at row level from the fork: a key changed on one side only takes that
    side's final row (or deletion); a key changed on both sides to the same final state is
    no conflict; otherwise columns declared commutative (field metadata
    ``{"udrflow.merge": "sum" | "max" | "min"}``) combine (sum: base + both deltas), and
    any other difference is a conflict. Conflicts raise MergeConflictError listing table,
    key and both values, and nothing is applied. Tables created, altered or dropped on
    either side since the fork are not merged (UsageError)."""
    import udrflow

    into = str(into or db.branch)
    check_name(source, "branch")
    check_name(into, "branch")
    if source == into:
        raise UsageError(f"cannot merge branch {source!r} into itself")
    store = db._store
    s, t = store.engine(source), store.engine(into)
    fork = _common_fork(store, source, into)
    s_head, t_head = s.log.version, t.log.version
    # Earlier merges between the two move the base: what ``into`` took from ``source``
    # (up to base_s) is not applied again, and merge commits that carried one side's own
    # changes to the other are not that side's changes (so they never come back).
    into_took = _merges_from(t, source, fork)         # into's merge commits from source
    source_took = _merges_from(s, into, fork)         # source's merge commits from into
    base_s = max([fork] + list(into_took.values()))   # source's changes after this are new to into
    base_t = max([fork] + list(source_took.values())) # into's changes after this are new to source
    skip_s, skip_t = frozenset(source_took), frozenset(into_took)
    tables_s = _changed_tables(s, base_s, s_head, skip_s)
    tables_t = _changed_tables(t, base_t, t_head, skip_t) if t_head > base_t else set()
    for eng, name_b, head in ((s, source, s_head), (t, into, t_head)):
        ddl = [b for b in read_changes(eng, None, fork, head) if b.kind != "changes" and b.version not in
               (skip_s if eng is s else skip_t)] if head > fork else []
        if ddl:
            raise UsageError(f"branch {name_b!r} changed table definitions since the fork at version {fork} "
                             f"({ddl[0].kind} {ddl[0].table!r} at version {ddl[0].version}): merging schema "
                             f"changes is not supported; apply the DDL on {into!r} first")
    kind = "fast-forward" if t_head == base_t and not into_took else "three-way"
    conflicts: list[dict] = []
    plan: list[tuple[str, list[str], pa.Table | None, pa.Table | None]] = []
    rows = 0
    for name in sorted(tables_s):
        tdef = t.table_def(name, t_head)
        pk = list(tdef.primary_key)
        theirs = _net_changes(s, name, base_s, s_head, pk, skip_s)
        if theirs is None:
            continue
        ours = _net_changes(t, name, base_t, t_head, pk, skip_t) if name in tables_t else None
        plus, minus = theirs
        if pk and ours is not None:
            plus, minus = _three_way(s, name, base_s, pk, tdef.schema, theirs, ours, conflicts)
        elif ours is not None:
            plus, minus = _multiset_three_way(theirs, ours)
        plan.append((name, pk, plus, minus))
        rows += (plus.num_rows if plus is not None else 0) + (minus.num_rows if minus is not None else 0)
    if conflicts:
        shown = "; ".join(f"{c['table']} key {c['key']}: {into}={c['ours']} vs {source}={c['theirs']}"
                          for c in conflicts[:CONFLICTS_SHOWN_MAX])
        more = f" (and {len(conflicts) - CONFLICTS_SHOWN_MAX} more)" if len(conflicts) > CONFLICTS_SHOWN_MAX else ""
        raise MergeConflictError(f"merging {source!r} into {into!r}: {len(conflicts)} conflicting rows, nothing "
                                 f"applied: {shown}{more}", conflicts)
    if not plan:
        return {"version": None, "kind": kind, "tables": [], "rows": 0}
    # Another branch: a handle with this store's options (a second open of the same directory
    # in this process must repeat them, e.g. durability="none").
    target = udrflow.open(db.path, branch=into, **store.options) if into != db.branch else db
    try:
        with target.transaction() as tx:
            for name, pk, plus, minus in plan:
                if pk:
                    if minus is not None and minus.num_rows:
                        tx.delete(name, keys=minus)
                    if plus is not None and plus.num_rows:
                        tx.upsert(name, plus)
                else:
                    if minus is not None and minus.num_rows:
                        tx.delete_rows(name, minus)
                    if plus is not None and plus.num_rows:
                        tx.insert(name, plus)
            tx.meta = {"merge": {"source": source, "fork": fork, "source_version": s_head}}
    finally:
        if target is not db:
            target.close()
    return {"version": tx.version, "kind": kind, "tables": [p[0] for p in plan], "rows": rows}


def _changed_tables(engine, after: int, upto: int, skip: frozenset = frozenset()) -> set[str]:
    if upto <= after:
        return set()
    return {b.table for b in read_changes(engine, None, after, upto) if b.kind == "changes" and b.version not in skip}


def _merges_from(engine, other: str, after: int) -> dict[int, int]:
    """The merge commits on ``engine``'s own log after ``after`` that merged branch
    ``other`` in: version -> the version of ``other`` they took in."""
    from udrflow._commit import decode_header

    out: dict[int, int] = {}
    lo = max(after, engine.fork if engine.parent is not None else 0) + 1
    if lo > engine.log.version:
        return out
    for record in engine.log.scan(lo, engine.log.version):
        merge_meta = decode_header(record.payload, record.version).meta.get("merge")
        if isinstance(merge_meta, dict) and merge_meta.get("source") == other:
            out[record.version] = int(merge_meta["source_version"])
    return out


def _multiset_three_way(theirs, ours):
    """A table without key: both sides' inserts stand (rows may repeat); a row both sides
    deleted is deleted once, on ``into`` already."""
    t_plus, t_minus = theirs
    _o_plus, o_minus = ours
    if not t_minus.num_rows or not o_minus.num_rows:
        return t_plus, t_minus
    gone = collections.Counter(tuple(r.values()) for r in o_minus.to_pylist())
    keep = []
    for r in t_minus.to_pylist():
        key = tuple(r.values())
        if gone[key] > 0:
            gone[key] -= 1
            keep.append(False)
        else:
            keep.append(True)
    return t_plus, t_minus.filter(pa.array(keep, pa.bool_()))


def _three_way(s, name: str, base_s: int, pk: list[str], schema: pa.Schema, theirs, ours, conflicts: list):
    """Keys changed on both sides: equal outcomes pass, commutative columns combine, the
    rest are conflicts. Returns what to apply on ``into``: (rows to upsert, keys to delete)."""
    t_plus, t_minus = theirs
    o_plus, o_minus = ours
    their_rows = dict(zip(_keys(t_plus, pk), t_plus.to_pylist(), strict=True))
    their_dead = set(_keys(t_minus, pk))
    our_rows = dict(zip(_keys(o_plus, pk), o_plus.to_pylist(), strict=True))
    our_dead = set(_keys(o_minus, pk))
    both = (set(their_rows) | their_dead) & (set(our_rows) | our_dead)
    if not both:
        return t_plus, t_minus
    funcs = {f.name: (f.metadata or {}).get(MERGE_METADATA_KEY, b"").decode() for f in schema}
    base_rows = None
    resolved: dict = {}
    for key in both:
        mine, other = our_rows.get(key), their_rows.get(key)
        if mine == other:
            resolved[key] = None  # the same outcome on both sides: nothing to apply
            continue
        if mine is not None and other is not None:
            if base_rows is None:
                # The source's rows before its changes that ``into`` has not taken yet: a
                # commutative column adds the source's delta from there to ``into``'s value.
                base = s.read(name, base_s)
                base_rows = dict(zip(_keys(base, pk), base.to_pylist(), strict=True))
            row = _combine(base_rows.get(key), mine, other, funcs)
            if row is not None:
                resolved[key] = row
                continue
        conflicts.append({"table": name, "key": dict(zip(pk, key if len(pk) > 1 else (key,), strict=True)),
                          "ours": mine if mine is not None else "deleted",
                          "theirs": other if other is not None else "deleted"})
    keep_plus = [k not in both for k in _keys(t_plus, pk)]
    keep_minus = [k not in both for k in _keys(t_minus, pk)]
    plus = t_plus.filter(pa.array(keep_plus, pa.bool_()))
    extra = [r for r in resolved.values() if r is not None]
    if extra:
        plus = pa.concat_tables([plus, pa.Table.from_pylist(extra, schema=plus.schema)])
    return plus, t_minus.filter(pa.array(keep_minus, pa.bool_()))


def _combine(base: dict | None, mine: dict, other: dict, funcs: dict) -> dict | None:
    out = dict(mine)
    for col, a in mine.items():
        b = other[col]
        if a == b:
            continue
        how = funcs.get(col)
        if how == "sum" and base is not None and None not in (a, b, base[col]):
            out[col] = a + (b - base[col])
        elif how == "max" and None not in (a, b):
            out[col] = max(a, b)
        elif how == "min" and None not in (a, b):
            out[col] = min(a, b)
        else:
            return None
    return out


def merge_field(name: str, type_: pa.DataType, how: str) -> pa.Field:
    """A column whose concurrent changes on two branches combine at merge: ``how`` is
    ``"sum"`` (base + both deltas), ``"max"`` or ``"min"``."""
    if how not in MERGE_FUNCS:
        raise UsageError(f"merge function must be one of {MERGE_FUNCS}: got {how!r}")
    return pa.field(name, type_, metadata={MERGE_METADATA_KEY: how.encode()})
