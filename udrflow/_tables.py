"""The table engine of one branch: reads at any version, and the commit path.

Reads: ``read(T, V)`` = the best base at or below V (a cached snapshot or a checkpoint)
plus the log tail after it, restricted to T, folded (``_fold``). Results are cached by
(table, version); a newer read starts from the newest cached snapshot below it, so
reading the head after each small commit replays one commit, not the tail.

Commits: a transaction's logical operations (insert, upsert, delete by key or rows, DDL)
are resolved, under one short lock, against the writer's head state into weighted
changes, encoded, and queued on the log (which fixes the version); the lock is released
before the fsync, so concurrent transactions share epochs. Conflicts are found by
comparing a transaction's written keys with the keys of commits queued since it began.
Writes of a few rows of plain Python values (``_pyrows.py``) are resolved with dict
lookups and stored as msgpack values, without building any Arrow data on the commit path.
"""

from __future__ import annotations

import bisect
import collections
import os
import queue
import threading

import msgspec

try:
    import cython
except ImportError:  # running from source without Cython: see udrflow/_cython_shim.py
    from udrflow import _cython_shim as cython
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from udrflow._catalog import Catalog, TableDef
from udrflow._checkpoint import DELTA_CHAIN_MAX, DELTA_ROWS_MAX_RATIO, CheckpointStore, chunk_bounds
from udrflow._chunks import ChunkStore
from udrflow._commit import (
    AddColumn,
    Changes,
    Commit,
    CreateTable,
    DropTable,
    decode_commit,
    decode_header,
    encode_commit,
    expand_changes,
    expand_keyed,
    make_changes,
    make_row_update,
    make_value_changes,
    net_keyed_values,
    values_to_ipc,
)
from udrflow._fileio import FileIO, make_dirs_durably, write_file_durably
from udrflow._fold import fold_keyed, fold_multiset, net_keyed
from udrflow._head import KeyedHead, MultisetHead, key_list, keyed_head, keys_table
from udrflow._limits import COMMIT_BODY_BYTES_MAX, COMMIT_INLINE_ROWS_BYTES_MAX
from udrflow._pyrows import PyRows, encodable, key_values, rows_to_table
from udrflow._schema import add_column_schema, check_table_schema, schema_to_bytes
from udrflow._schema import conform as conform_to
from udrflow._sealed import seal, unseal
from udrflow.errors import (
    CorruptionError,
    InternalError,
    SchemaError,
    TableExistsError,
    TableNotFoundError,
    TransactionConflictError,
    UsageError,
    VersionNotFoundError,
    storage_error_from_os,
)
from udrflow.log import EpochLog

SNAPSHOT_CACHE_BYTES_MAX = 1024 * 1024 * 1024
# Checkpoint when the log tail since the last checkpoint has changed twice as many rows as
# the table holds (an update counts once), or has this many commits. A checkpoint of widely
# spread changes is a full copy, so a generous ratio keeps storage close to what changed;
# a read then replays at most ~2x the table's rows of changes, or ~512 commits (the commit
# trigger times the back-pressure factor below).
CHECKPOINT_TAIL_RATIO = 2.0
CHECKPOINT_TAIL_ROWS_MIN = 4096   # ... but never for fewer changed rows than this
CHECKPOINT_TAIL_COMMITS_MAX = 256   # ... or when this many commits changed it since (cheap: see deltas)
# Back-pressure: a committer whose table's tail has grown this many times past the commit
# trigger (the checkpoint thread, sharing the GIL, fell behind a fast writer) waits for the
# checkpoint in flight, so the tail a read replays stays bounded.
CHECKPOINT_TAIL_BACKLOG_FACTOR = 2
# The newest commits this engine made, kept as objects (see TableEngine.recent_commits):
# how many, and the largest encoded size kept.
RECENT_COMMITS_MAX = 64
RECENT_COMMIT_BYTES_MAX = 64 * 1024


# ---- logical operations (what users ask for; resolved at commit) ----------------------

@cython.cclass
class Op:
    """One logical operation. ``kind``: create_table | add_column | drop_table | insert |
    upsert | delete_keys | delete_rows | retract_rows (delete_rows without checking that
    the rows exist). ``rows``: insert/upsert rows, delete_keys keys,
    delete_rows rows, as a pyarrow Table; given PyRows (a few rows of Python values, see
    _pyrows.py), the operation keeps them as ``py`` and builds the Table only if asked."""

    kind = cython.declare(object, visibility="public")
    table = cython.declare(object, visibility="public")
    py = cython.declare(object, visibility="public")
    _rows = cython.declare(object, visibility="public")
    schema = cython.declare(object, visibility="public")
    primary_key = cython.declare(object, visibility="public")
    column = cython.declare(object, visibility="public")

    def __init__(self, kind: str, table: str, rows: pa.Table | PyRows | None = None, schema: pa.Schema | None = None,
                 primary_key: list[str] | None = None, column: pa.Field | None = None) -> None:
        self.kind = kind
        self.table = table
        if type(rows) is PyRows:
            self.py = rows
            self._rows = None
        else:
            self.py = None
            self._rows = rows
        self.schema = schema
        self.primary_key = list(primary_key) if primary_key else []
        self.column = column

    @property
    def rows(self) -> pa.Table | None:
        if self._rows is None and self.py is not None:
            self._rows = self.py.to_table()
        return self._rows

    def __repr__(self) -> str:
        return f"Op({self.kind!r}, {self.table!r}, rows={self.py or self._rows!r})"


_PY_ROW_KINDS = frozenset(("insert", "upsert", "delete_keys"))
_NOT_HERE = object()  # _queue_python: the general path decides


class _RowsEffect:
    """What a commit of Python rows does to the head state: ``rows`` (tuples) whose keys
    are ``keys`` are set, the ``dead`` keys are removed."""

    __slots__ = ("rows", "keys", "dead")

    def __init__(self, rows: list[tuple], keys: list, dead: list) -> None:
        self.rows = rows
        self.keys = keys
        self.dead = dead


class SnapshotCache:
    """Materialized tables by (table, created, version), bounded in bytes, least recently used out."""

    def __init__(self, bytes_max: int = SNAPSHOT_CACHE_BYTES_MAX) -> None:
        self.bytes_max = bytes_max
        self._items: collections.OrderedDict[tuple, pa.Table] = collections.OrderedDict()
        self._by_table: dict[tuple, list[int]] = {}  # sorted cached versions per table
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: tuple, version: int) -> pa.Table | None:
        with self._lock:
            t = self._items.get((*key, version))
            if t is not None:
                self._items.move_to_end((*key, version))
            return t

    def best_below(self, key: tuple, version: int) -> tuple[int, pa.Table] | None:
        with self._lock:
            versions = self._by_table.get(key, [])
            i = bisect.bisect_right(versions, version)
            if i == 0:
                return None
            v = versions[i - 1]
            return v, self._items[(*key, v)]

    def put(self, key: tuple, version: int, table: pa.Table) -> None:
        size = table.nbytes
        if size > self.bytes_max:
            return
        with self._lock:
            k = (*key, version)
            if k in self._items:
                return
            self._items[k] = table
            bisect.insort(self._by_table.setdefault(key, []), version)
            self._bytes += size
            while self._bytes > self.bytes_max:
                (name, created, v), old = self._items.popitem(last=False)
                self._by_table[(name, created)].remove(v)
                self._bytes -= old.nbytes


@cython.cclass
class _Written:
    """One commit's effect on the conflict tracker: the keys it wrote, as an Arrow table
    (``keys``) or as Python key values (``py_keys``, with the table's ``schema`` and ``pk``);
    neither: the whole table (no key, or DDL)."""

    version = cython.declare(object, visibility="public")
    table = cython.declare(object, visibility="public")
    keys = cython.declare(object, visibility="public")
    py_keys = cython.declare(object, visibility="public")
    schema = cython.declare(object, visibility="public")
    pk = cython.declare(object, visibility="public")

    def __init__(self, version: int, table: tuple[str, int], keys: pa.Table | None, py_keys: list | None = None,
                 schema: pa.Schema | None = None, pk: list[str] | None = None) -> None:
        self.version = version
        self.table = table
        self.keys = keys
        self.py_keys = py_keys
        self.schema = schema
        self.pk = pk

    @property
    def whole(self) -> bool:
        return self.keys is None and self.py_keys is None

    def arrow_keys(self) -> pa.Table:
        if self.keys is None:
            self.keys = keys_table(self.py_keys, self.pk, self.schema)
        return self.keys

    def __repr__(self) -> str:
        return f"_Written(version={self.version}, table={self.table!r}, whole={self.whole})"


@cython.cclass
class TableEngine:
    # An extension type when compiled (see udrflow/_cython_shim.py): ``self._x`` is a field.
    log = cython.declare(object, visibility="public")
    parent = cython.declare(object, visibility="public")
    fork = cython.declare(object, visibility="public")
    chunks = cython.declare(object, visibility="public")
    checkpoints = cython.declare(object, visibility="public")
    root = cython.declare(object, visibility="public")
    branch = cython.declare(object, visibility="public")
    _io = cython.declare(object, visibility="public")
    _retention_path = cython.declare(object, visibility="public")
    _retention = cython.declare(object, visibility="public")
    _maintenance_lock = cython.declare(object, visibility="public")
    catalog = cython.declare(object, visibility="public")
    cache = cython.declare(object, visibility="public")
    recent_commits = cython.declare(dict, visibility="public")
    _lock = cython.declare(object, visibility="public")
    _heads = cython.declare(dict, visibility="public")
    _head_version = cython.declare(object, visibility="public")
    _failures_seen = cython.declare(object, visibility="public")
    _recent = cython.declare(object, visibility="public")
    _active = cython.declare(dict, visibility="public")
    _generation = cython.declare(object, visibility="public")
    _catalog_lock = cython.declare(object, visibility="public")
    _checkpoint_queue = cython.declare(object, visibility="public")
    _checkpoint_due = cython.declare(dict, visibility="public")
    _checkpoint_pending = cython.declare(dict, visibility="public")
    _checkpoint_thread = cython.declare(object, visibility="public")
    checkpoint_error = cython.declare(object, visibility="public")
    # Set by udrflow._database (Database._view_names): the views' names and what they were read for.
    _view_names_cache = cython.declare(object, visibility="public")
    __weakref__ = cython.declare(object)  # (udrflow._sql keeps caches by engine, weakly)

    def __init__(self, log: EpochLog, chunks: ChunkStore, checkpoints: CheckpointStore, *,
                 root: str, branch: str, io: FileIO, parent: TableEngine | None = None, fork: int = 0) -> None:
        self.log = log
        # A branch forked from ``parent`` at version ``fork``: its own log starts at fork + 1,
        # and everything at or below the fork is read from the parent (nothing was copied).
        self.parent = parent
        self.fork = fork
        self.chunks = chunks
        self.checkpoints = checkpoints
        self.root = root
        self.branch = branch
        self._io = io
        self._retention_path = os.path.join(root, "retention", f"{branch}.msgpack")
        self._retention: dict[str, tuple[int, int]] = self._load_retention()  # name -> (created, since)
        self._maintenance_lock = threading.Lock()  # checkpoint writes vs gc's sweep
        self.catalog = self._load_catalog_snapshot()
        self.cache = SnapshotCache()
        # version -> Commit: the newest small commits of this writer as it made them, so a
        # reader in this process (a view's source, woken by the commit) takes them without
        # reading the segment and decoding. Set before the commit is visible; cleared when
        # queued commits are discarded (their versions are then used again).
        self.recent_commits: dict[int, Commit] = {}
        self._lock = threading.Lock()  # the commit critical section
        self._heads: dict[tuple[str, int], KeyedHead | MultisetHead] = {}
        self._head_version = 0
        self._failures_seen = 0
        self._recent: collections.deque[_Written] = collections.deque()
        self._active: dict[int, int] = {}  # begin version -> open transactions (a dict: Counter's methods are Python)
        self._generation = 0
        self._catalog_lock = threading.Lock()
        self._checkpoint_queue: queue.Queue | None = None
        self._checkpoint_due: dict[str, list] = {}  # table -> [commits, rows] left before the trigger
        # Tables with a checkpoint queued or running, and the event set when it is done.
        self._checkpoint_pending: dict[tuple[str, int], threading.Event] = {}
        self._checkpoint_thread: threading.Thread | None = None
        self.checkpoint_error: BaseException | None = None
        self._load_catalog(max(self.log.since, self.catalog.version + 1), self.log.version)
        self._head_version = self.log.version
        self._failures_seen = self.log.failures

    # ---- catalog ---------------------------------------------------------------------

    def _load_catalog(self, lo: int, hi: int) -> None:
        if hi < lo:
            return
        for record in self.log.scan(lo, hi):
            header = decode_header(record.payload, record.version)
            if any(type(op).__name__ != "_HChanges" for op in header.ops):
                self.catalog.apply(record.version, decode_commit(record.payload, record.version))
            else:
                self.catalog.apply_changes_only(record.version, header)

    def _catalog_snapshot_path(self, version: int) -> str:
        return os.path.join(self.root, "catalog", self.branch, f"{version:020d}.snap")

    def _load_catalog_snapshot(self) -> Catalog:
        """The log may start after version 1 (gc removed older segments): then the catalog
        as of the version before it was saved as a snapshot, and is the starting point."""
        if self.log.since <= 1:
            return Catalog()
        path = self._catalog_snapshot_path(self.log.since - 1)
        try:
            with open(path, "rb") as f:
                return Catalog.from_snapshot(f.read(), path)
        except FileNotFoundError:
            raise CorruptionError(f"the log of branch {self.branch!r} starts at version {self.log.since}, but the "
                                  f"catalog snapshot of version {self.log.since - 1} is missing: expected {path}",
                                  path) from None

    def _load_retention(self) -> dict[str, tuple[int, int]]:
        try:
            with open(self._retention_path, "rb") as f:
                data = msgspec.msgpack.decode(unseal(f.read(), self._retention_path, "retention file"),
                                              type=dict[str, tuple[int, int]])
        except FileNotFoundError:
            return {}
        except msgspec.DecodeError as exc:
            raise CorruptionError(f"retention file {self._retention_path} does not decode: {exc}",
                                  self._retention_path) from exc
        return data

    def since_of(self, tdef: TableDef) -> int:
        """The first version of ``tdef``'s table that can still be read."""
        entry = self._retention.get(tdef.name)
        if entry is not None and entry[0] == tdef.created:
            return entry[1]
        return max(tdef.created, self.log.since - 1)

    def refresh(self) -> int:
        """Read-only handles: take in commits another process has made since."""
        with self._catalog_lock:
            before = self.catalog.version
            now = self.log.refresh()
            self._load_catalog(before + 1, now)
            return now

    def catalog_snapshot(self, version: int) -> bytes:
        """The catalog as of ``version`` (a branch forked there starts from it)."""
        with self._catalog_lock:
            return self.catalog.snapshot(version)

    def names(self, version: int) -> list[str]:
        """The tables that exist at ``version``."""
        if self.parent is not None and version < self.fork:
            return self.parent.names(version)
        return self.catalog.names(version)

    def table_def(self, name: str, version: int) -> TableDef:
        if self.parent is not None and version < self.fork:
            return self.parent.table_def(name, version)
        tdef = self.catalog.get(name, version)
        if tdef is None:
            known = ", ".join(self.catalog.names(version)) or "none"
            raise TableNotFoundError(f"table {name!r} does not exist at version {version} (tables then: {known})")
        return tdef

    # ---- reads -----------------------------------------------------------------------

    def resolve_version(self, version) -> int:
        visible = self.log.version
        if version is None:
            return visible
        if not isinstance(version, int) or isinstance(version, bool):
            raise UsageError(f"version must be an int (or a datetime): got {type(version).__name__}")
        if version > visible:
            raise VersionNotFoundError(f"version {version} is not yet in the log: expected at most {visible}")
        if self.parent is not None and version <= self.fork:
            return self.parent.resolve_version(version)
        if version < self.log.since - 1 or version < 0:
            raise VersionNotFoundError(f"version {version} is below since={self.log.since}: its history was removed")
        return version

    def read(self, name: str, version: int | None = None) -> pa.Table:
        try:
            return self._read(name, version)
        except CorruptionError as exc:
            # A reader beside the writer's gc: a checkpoint, chunk or segment it knew of is
            # gone. That is no damage if retention removed it: take in what gc changed,
            # then either the read works or the version is below since now.
            if not self.log.readonly or exc.path is None or os.path.exists(exc.path):
                raise
            self.catch_up_with_gc()
            return self._read(name, version)

    def catch_up_with_gc(self) -> None:
        """Readers: take in the writer's retention and gc (since, checkpoints, segments)."""
        self._retention = self._load_retention()
        self.checkpoints.reload()
        self.log.forget_removed_segments()

    def _read(self, name: str, version: int | None = None) -> pa.Table:
        v = self.resolve_version(version)
        if self.parent is not None and v <= self.fork:
            return self.parent.read(name, v)
        tdef = self.table_def(name, v)
        since = self.since_of(tdef)
        if v < since:
            raise VersionNotFoundError(f"table {name!r} cannot be read at version {v}: its history before "
                                       f"since={since} was removed by retention")
        key = (name, tdef.created)
        hit = self.cache.get(key, v)
        if hit is not None:
            return conform_to(hit, tdef.schema)
        base_v, base = tdef.created, tdef.schema.empty_table()
        ckpt = self.checkpoints.nearest(tdef, v)
        cached = self.cache.best_below(key, v)
        if cached is not None and cached[0] >= (ckpt or 0):
            base_v, base = cached
        elif ckpt is not None and tdef.keyed:
            # The checkpoint's net changes (a delta chain's) and the log tail's go into one
            # net change set, applied to the full checkpoint chunk by chunk as it is decoded.
            full = self.checkpoints.base_of(tdef, ckpt)

            def net() -> tuple[pa.Table, pa.Table]:  # runs while the full checkpoint is decoded
                events = self.checkpoints.chain_events(tdef, ckpt, parallel=False) if full else []
                events += self._tail_events(tdef, ckpt, v)
                return net_keyed(events, list(tdef.primary_key), tdef.schema)

            result = self.checkpoints.read_applied(tdef, full or ckpt, net)
            self.cache.put(key, v, result)
            return result
        elif ckpt is not None:
            base_v, base = ckpt, self.checkpoints.read(tdef, ckpt)
        elif self.parent is not None and tdef.created <= self.fork:
            base_v, base = self.fork, self.parent.read(name, self.fork)
        base = conform_to(base, tdef.schema)
        events = self._tail_events(tdef, base_v, v)
        if tdef.keyed:
            result = fold_keyed(base, events, list(tdef.primary_key), tdef.schema)
        else:
            result = fold_multiset(base, events, tdef.schema)
        self.cache.put(key, v, result)
        return result

    def _tail_events(self, tdef: TableDef, after: int, upto: int) -> list[tuple[int, pa.Table]]:
        events: list[tuple[int, pa.Table]] = []
        pk = list(tdef.primary_key)
        run: list[Changes] = []  # consecutive small commits (msgpack rows): netted at once

        def flush() -> None:
            if run:
                rows, deleted = net_keyed_values(run, tdef.schema, pk)
                events.append((-1, deleted))
                events.append((1, rows))
                run.clear()

        for version, changes in self.changes_of(tdef.name, after, upto):
            if pk and changes.columns:
                run.append(changes)
                continue
            flush()
            schema_then = self.catalog.get(tdef.name, version).schema
            if pk:
                plus, minus = expand_keyed(changes, schema_then, pk, self._fetch_for(changes))
            else:
                plus, minus = expand_changes(changes, schema_then, self._fetch_for(changes))
                minus = conform_to(minus, tdef.schema)
            events.append((-1, minus))
            events.append((1, conform_to(plus, tdef.schema)))
        flush()
        return events

    def _fetch_for(self, changes: Changes):
        return self.chunks.get_table if changes.chunk_tables else self.chunks.get

    def changes_of(self, name: str, after: int, upto: int):
        """(version, Changes) of every commit in (after, upto] that changed table ``name``."""
        if self.parent is not None and after < self.fork:
            yield from self.parent.changes_of(name, after, min(upto, self.fork))
            after = self.fork
        versions = self.catalog.change_versions(name, after, upto)
        i = 0
        while i < len(versions):
            j = i
            while j + 1 < len(versions) and versions[j + 1] == versions[j] + 1:
                j += 1
            for record in self.log.scan(versions[i], versions[j]):
                for op in decode_commit(record.payload, record.version).ops:
                    if isinstance(op, Changes) and op.table == name:
                        yield record.version, op
            i = j + 1

    # ---- transactions: begin / validate / commit -------------------------------------

    def begin(self) -> tuple[int, int]:
        """Register a transaction; returns (snapshot version, generation)."""
        self._lock.acquire()  # (not ``with``: compiled, that costs two bound methods)
        try:
            v = self.log.version
            self._active[v] = self._active.get(v, 0) + 1
            return v, self._generation
        finally:
            self._lock.release()

    def end(self, begin: int) -> None:
        with self._lock:
            self._end_locked(begin)

    @cython.ccall
    def _end_locked(self, begin: int) -> None:
        active = self._active
        n = active[begin] - 1
        if n > 0:
            active[begin] = n
        else:
            del active[begin]
        recent = self._recent
        if recent:  # _prune_recent, inlined (this runs for every transaction)
            floor = self.log.version
            if active:
                floor = min(floor, min(active))
            while recent and recent[0].version <= floor:
                recent.popleft()

    @cython.ccall
    def _prune_recent(self) -> None:
        # A transaction that begins now begins at the visible version, which may be below
        # commits still queued for their fsync: the conflict check must keep those.
        floor = self.log.version
        if self._active:
            floor = min(floor, min(self._active))
        recent = self._recent
        while recent and recent[0].version <= floor:
            recent.popleft()

    @cython.locals(op=Op)
    def commit(self, ops: list[Op], *, begin: int | None = None, generation: int | None = None,
               read_tables: set[str] | None = None, meta: dict | None = None, end: bool = False) -> int | None:
        """Resolve, validate and queue ``ops`` as one commit; return its version once durable,
        or None when the operations change nothing (then no commit is written).

        ``begin`` is None for single operations outside a transaction: they apply to the
        newest state and cannot conflict. ``end=True``: the transaction that began at
        ``begin`` ends here whatever happens (as ``end(begin)`` would), in the same hold of
        the lock that checks its conflicts (one lock round trip less per transaction)."""
        self._lock.acquire()  # (not ``with``: compiled, that costs two bound methods)
        try:
            try:
                if not ops:
                    raise UsageError("a commit needs at least one operation")
                if self.log.failures != self._failures_seen:
                    self._reset_after_failure()
                if generation is not None and generation != self._generation:
                    raise TransactionConflictError(
                        "an earlier commit failed after this transaction began; its snapshot may not exist: retry it")
                queued = _NOT_HERE
                if len(ops) == 1:
                    op = ops[0]
                    if op.py is not None and op.kind in _PY_ROW_KINDS:
                        queued = self._queue_python(op, begin, read_tables, meta)
                if queued is _NOT_HERE:
                    queued = self._queue(ops, begin, read_tables, meta)
            finally:
                if end:
                    self._end_locked(begin)  # (prunes the conflict tracker too)
            if queued is not None and not end:
                self._prune_recent()
        finally:
            self._lock.release()
        if queued is None:
            return None
        pending, resolved, adoptions, pinned = queued
        version = pending.version
        try:
            # Before the wait: a lone commit's data is on its way to the device meanwhile (see
            # log.submit(start=True)), so this costs nothing on its path.
            backlog = self._maybe_checkpoint(resolved, version)
            try:
                pending.wait()
            except BaseException:
                with self._lock:
                    self._reset_after_failure()
                raise
            for tdef, digests, chunk_rows in adoptions:
                with self._maintenance_lock:
                    self.checkpoints.adopt(tdef, version, digests, chunk_rows)
        finally:
            if pinned:
                # The commit is visible (a gc scanning the log finds its chunks), or it
                # failed and nothing references them: gc may judge them from now on.
                self.chunks.unpin(pinned)
        for done in backlog:
            done.wait()
        return version

    def _queue(self, ops: list[Op], begin: int | None, read_tables: set[str] | None, meta: dict | None):
        """``commit`` up to the queueing, with the lock held, once the log's state is checked
        (and unless ``_queue_python`` took the commit): (pending commit, resolved operations,
        chunks to adopt as checkpoints), or None if ``ops`` change nothing."""
        written = self._written_by(ops)
        if begin is not None:
            # Conflicts first: a transaction overtaken by another commit must lose with
            # TransactionConflictError (retryable), not with whatever resolving its
            # operations against the newer state would raise.
            self._validate(begin, written, read_tables or set())
        resolved, effects = self._resolve(ops)
        if not resolved:
            return None
        if len(written) > 1 or (written and written[0].table[0] != resolved[0].table):
            changed = {op.table for op in resolved}
            written = [w for w in written if w.table[0] in changed]  # ops that changed nothing wrote nothing
        return self._queue_resolved(resolved, effects, written, meta)

    @cython.ccall
    @cython.locals(op=Op, written=_Written)
    def _queue_python(self, op: Op, begin: int | None, read_tables: set[str] | None, meta: dict | None):
        """``_queue`` of one write of Python rows (the small commit), in one pass: one
        catalog lookup, no grouping, the head state updated in place. ``_NOT_HERE`` when
        the general path must decide (an unknown table, a schema the rows were not checked
        against, columns without a msgpack form, ...); nothing has changed then."""
        name = op.table
        tdef = self.catalog.get(name, self._head_version)
        if tdef is None or not tdef.primary_key:
            return _NOT_HERE
        py = op.py
        schema = tdef.schema
        if py.schema is not schema:
            if not self._python_path(tdef, [op]):
                return _NOT_HERE
        elif not tdef.encodable:
            return _NOT_HERE
        pk = tdef.pk
        cached = py.keys
        keys = cached[1] if cached is not None and cached[0] == pk else _py_keys(py, pk)
        written = _Written(0, tdef.ident, None, keys, schema, pk)
        if begin is not None:
            recent = self._recent
            if recent and recent[-1].version > begin:  # (versions only grow along _recent)
                self._validate(begin, [written], read_tables or set())
        head = self._heads.get(tdef.ident)
        if head is None or head.schema is not schema:
            head = self._head(tdef)
        kind = op.kind
        if kind != "delete_keys" and len(keys) == 1:  # one row set: _python_changes, unrolled
            plus_rows, dead = py.rows, []
            loc = head.locate_one(keys[0])
            if loc is None:
                changes = make_value_changes(name, tdef.names, plus_rows, 1, [], [], pk)
            elif kind == "insert":
                raise SchemaError(f"duplicate primary key {self._fmt_keys(pk, keys)} in the insert into table "
                                  f"{name!r}: already in the table (use upsert to replace rows)")
            else:
                changes = make_row_update(name, tdef.names, plus_rows[0], head.row_at(loc), tdef.value_columns)
        else:
            if kind == "delete_keys":
                plus_rows, minus_keys, inserted = [], keys, False
                keys = []
            else:
                plus_rows, minus_keys, inserted = py.rows, [], kind == "insert"
            changes, dead = self._python_changes(tdef, head, plus_rows, keys, minus_keys, inserted)
            if changes is None:
                return None
        resolved = [changes]
        commit = Commit(ops=resolved, meta=meta or {})
        body = encode_commit(commit)
        if len(body) > COMMIT_INLINE_ROWS_BYTES_MAX:  # large old values: the general tail moves them
            return self._queue_resolved(resolved, {name: _RowsEffect(plus_rows, keys, dead)}, [written], meta)
        pending = self.log.submit(body, failures_seen=self._failures_seen, start=True)
        version = pending.version
        self._remember(version, commit, len(body))
        self._catalog_lock.acquire()  # (not ``with``: compiled, that costs two bound methods)
        try:
            self.catalog.add_change(name, version, changes.rows_in, changes.rows_out)
        finally:
            self._catalog_lock.release()
        written.version = version
        self._recent.append(written)
        head.apply_rows(plus_rows, keys, dead)  # (_apply_heads: the head resolved against is the table's)
        self._head_version = version
        return pending, resolved, (), None

    def _queue_resolved(self, resolved: list, effects: dict, written: list[_Written], meta: dict | None):
        """The rest of ``_queue`` once ``ops`` are resolved: encode (moving large rows to
        chunks), queue on the log, and bring the catalog, conflict tracker and heads up to it."""
        adoptions: list = []
        # Chunks written for this commit stay pinned (gc keeps them) until it is visible.
        pinned: list[str] = []
        spill = values_form = False
        for op in resolved:
            if type(op) is Changes:
                spill = spill or len(op.rows) > COMMIT_INLINE_ROWS_BYTES_MAX
                values_form = values_form or bool(op.columns)
        try:
            if spill:
                self._spill_to_chunks(resolved, effects, adoptions, pinned)
            commit = Commit(ops=resolved, meta=meta or {})
            body = encode_commit(commit)
            if values_form and len(body) > COMMIT_INLINE_ROWS_BYTES_MAX:
                # Python rows whose old values turned out large (a delete of big rows):
                # the Arrow form, which can move to chunks like any large row data.
                self._values_to_arrow(resolved, effects)
                if any(isinstance(op, Changes) and len(op.rows) > COMMIT_INLINE_ROWS_BYTES_MAX for op in resolved):
                    self._spill_to_chunks(resolved, effects, adoptions, pinned)
                commit = Commit(ops=resolved, meta=meta or {})
                body = encode_commit(commit)
            if len(body) > COMMIT_BODY_BYTES_MAX:
                raise UsageError(f"commit is {len(body)} bytes after moving its rows to chunks: expected at most "
                                 f"{COMMIT_BODY_BYTES_MAX} (COMMIT_BODY_BYTES_MAX)")
            # start=True: the bookkeeping below runs while the device takes a lone commit's data.
            pending = self.log.submit(body, failures_seen=self._failures_seen, start=True)
        except BaseException:
            if pinned:
                self.chunks.unpin(pinned)
            raise
        version = pending.version
        self._remember(version, commit, len(body))
        with self._catalog_lock:
            self.catalog.apply(version, commit)
        for w in written:
            w.version = version
            self._recent.append(w)
        self._apply_heads(resolved, effects)
        self._head_version = version
        return pending, resolved, adoptions, pinned

    @cython.ccall
    def _remember(self, version: int, commit: Commit, nbytes: int) -> None:
        recent = self.recent_commits
        if nbytes <= RECENT_COMMIT_BYTES_MAX:
            recent[version] = commit
        else:
            recent.pop(version, None)
        recent.pop(version - RECENT_COMMITS_MAX, None)

    def _reset_after_failure(self) -> None:
        """An epoch failed: every queued commit was discarded. Forget what they did."""
        self.recent_commits.clear()
        visible = self.log.version
        with self._catalog_lock:
            self.catalog = Catalog()
            self._load_catalog(self.log.since, visible)
        self._heads.clear()
        self._recent.clear()
        self._generation += 1
        self._head_version = visible
        self._failures_seen = self.log.failures

    def _written_by(self, ops: list[Op]) -> list[_Written]:
        """What ``ops`` write, as the conflict check sees it: the keys they name for keyed
        tables, the whole table for tables without a key and for DDL."""
        if len(ops) == 1 and ops[0].py is not None:
            # One write of Python rows (the small commit): no grouping to do.
            op = ops[0]
            tdef = self.catalog.get(op.table, self._head_version)
            if tdef is not None and tdef.keyed:
                pk = list(tdef.primary_key)
                return [_Written(0, (op.table, tdef.created), None, _py_keys(op.py, pk), tdef.schema, pk)]
        keys: dict[tuple[str, int], list] = {}
        py_keys: dict[tuple[str, int], tuple[TableDef, list]] = {}
        whole: set[tuple[str, int]] = set()
        for op in ops:
            tdef = self.catalog.get(op.table, self._head_version)
            if tdef is None:
                continue  # created in this transaction: nobody else can have written it
            ident = (op.table, tdef.created)
            if op.kind in ("add_column", "drop_table"):
                whole.add(ident)
            elif op.py is None and (op.rows is None or op.rows.num_rows == 0):
                continue  # e.g. delete(where=...) that matched nothing: it writes nothing
            elif not tdef.keyed:
                whole.add(ident)
            elif op.py is not None:
                pk = list(tdef.primary_key)
                py_keys.setdefault(ident, (tdef, []))[1].extend(_py_keys(op.py, pk))
            else:
                pk = list(tdef.primary_key)
                key_schema = pa.schema([tdef.schema.field(k) for k in pk])
                part = op.rows.select(pk)
                keys.setdefault(ident, []).append(part if part.schema.equals(key_schema) else part.cast(key_schema))
        written = [_Written(0, ident, None) for ident in whole]
        for ident, (tdef, found) in py_keys.items():
            if ident in whole:
                continue
            pk = list(tdef.primary_key)
            if ident in keys:  # Arrow and Python writes to one table: one Arrow table of keys
                keys[ident].append(keys_table(found, pk, tdef.schema))
            else:
                written.append(_Written(0, ident, None, found, tdef.schema, pk))
        written += [_Written(0, ident, parts[0] if len(parts) == 1 else pa.concat_tables(parts))
                    for ident, parts in keys.items() if ident not in whole]
        return written

    def _validate(self, begin: int, written: list[_Written], read_tables: set[str]) -> None:
        mine = {w.table: w for w in written}
        for other in self._recent:
            if other.version <= begin:
                continue
            name = other.table[0]
            if name in read_tables:
                raise TransactionConflictError(
                    f"serializable transaction read table {name!r}, which version {other.version} changed after it "
                    f"began at version {begin}", name, None, other.version)
            w = mine.get(other.table)
            if w is None:
                continue
            if w.whole or other.whole:
                raise TransactionConflictError(
                    f"write-write conflict on table {name!r}: version {other.version} changed it after this "
                    f"transaction began at version {begin} (table-level: the table has no primary key, or its "
                    f"definition changed)", name, None, other.version)
            if w.py_keys is not None and other.py_keys is not None:
                theirs = set(other.py_keys)
                hits = [k for k in w.py_keys if k in theirs]
                clash = [dict(zip(w.pk, k if len(w.pk) > 1 else (k,), strict=True)) for k in hits]
            else:
                mine_keys, their_keys = w.arrow_keys(), other.arrow_keys()
                pk = list(mine_keys.column_names)
                if len(pk) == 1:
                    hit = pc.is_in(mine_keys.column(pk[0]), value_set=their_keys.column(pk[0]))
                    clash = mine_keys.filter(hit).to_pylist()
                else:
                    clash = mine_keys.join(their_keys, keys=pk, join_type="left semi").to_pylist()
            if clash:
                raise TransactionConflictError(
                    f"write-write conflict on table {name!r}: keys {clash[:10]}{' ...' if len(clash) > 10 else ''} "
                    f"were changed by version {other.version} after this transaction began at version {begin}",
                    name, clash, other.version)

    # ---- resolving logical operations into changes -----------------------------------

    def _def_at_head(self, name: str) -> TableDef:
        tdef = self.catalog.get(name, self._head_version)
        if tdef is None:
            known = ", ".join(self.catalog.names(self._head_version)) or "none"
            raise TableNotFoundError(f"table {name!r} does not exist (tables: {known})")
        return tdef

    @cython.ccall
    def _head(self, tdef: TableDef):
        key = (tdef.name, tdef.created)
        head = self._heads.get(key)
        if head is None:
            # Build from the newest visible state; commits still queued are in _heads already,
            # so a missing head means none are queued for this table beyond the visible version.
            base = self.read(tdef.name, self.log.version) if self.log.version >= tdef.created \
                else tdef.schema.empty_table()
            head = keyed_head(tdef.schema, list(tdef.primary_key), base) if tdef.keyed \
                else MultisetHead(tdef.schema, base)
            self._heads[key] = head
        self._sync_head_schema(head, tdef)
        return head

    @staticmethod
    def _sync_head_schema(head, tdef: TableDef) -> None:
        """A column was added: the stored rows and every pending write gain it as nulls,
        each converted from the schema it was written under."""
        if head.schema is tdef.schema:
            return
        if head.schema.equals(tdef.schema):
            head.schema = tdef.schema  # the same: next time the identity check suffices
            return
        before = head.schema.names
        head.schema = tdef.schema
        head.base = conform_to(head.base, tdef.schema)
        if isinstance(head, KeyedHead):
            head._source_columns = {}
            pos = [before.index(n) if n in before else -1 for n in tdef.schema.names]
            head.batches = [[tuple(r[i] if i >= 0 else None for i in pos) for r in b] if type(b) is list
                            else conform_to(b, tdef.schema) for b in head.batches]
        else:
            head.events = [(w, conform_to(t, tdef.schema)) for w, t in head.events]

    def _resolve(self, ops: list[Op]) -> tuple[list, dict]:
        """Turn logical ops into encoded operations, checking them all before anything is queued.

        Nothing in the head state changes here: a transaction with two operations on one
        table is folded into one net change per table first."""
        if len(ops) == 1 and ops[0].py is not None and ops[0].kind in _PY_ROW_KINDS:
            # One write of Python rows (the small commit): straight to its resolution.
            op = ops[0]
            tdef = self._def_at_head(op.table)
            if self._python_path(tdef, ops):
                changes, effect = self._resolve_python(tdef, ops)
                return ([changes], {op.table: effect}) if changes is not None else ([], {})
        resolved: list = []
        pending_ddl: dict[str, TableDef | None] = {}

        def current_def(name: str) -> TableDef | None:
            if name in pending_ddl:
                return pending_ddl[name]
            return self.catalog.get(name, self._head_version)

        row_ops: dict[str, list[Op]] = {}
        effects: dict[str, tuple[pa.Table | None, pa.Table | None]] = {}  # table -> (+1 rows, -1 rows or keys)
        for op in ops:
            if op.kind == "create_table":
                if current_def(op.table) is not None:
                    raise TableExistsError(f"table {op.table!r} already exists")
                schema = check_table_schema(op.schema, op.primary_key or None, table=op.table)
                resolved.append(CreateTable(op.table, schema_to_bytes(schema), list(op.primary_key)))
                pending_ddl[op.table] = TableDef(op.table, schema, tuple(op.primary_key), -1, -1)
            elif op.kind == "add_column":
                tdef = current_def(op.table)
                if tdef is None:
                    raise TableNotFoundError(f"table {op.table!r} does not exist")
                schema = add_column_schema(tdef.schema, op.column, table=op.table)
                resolved.append(AddColumn(op.table, schema_to_bytes(schema)))
                pending_ddl[op.table] = TableDef(op.table, schema, tdef.primary_key, tdef.created, -1)
            elif op.kind == "drop_table":
                tdef = current_def(op.table)
                if tdef is None:
                    raise TableNotFoundError(f"table {op.table!r} does not exist")
                resolved.append(DropTable(op.table))
                pending_ddl[op.table] = None
            else:
                if op.table in pending_ddl:
                    raise UsageError(f"table {op.table!r}: change its rows in a later commit than its DDL")
                row_ops.setdefault(op.table, []).append(op)
        for name, table_ops in row_ops.items():
            tdef = self._def_at_head(name)
            changes, effect = self._resolve_rows(tdef, table_ops)
            if changes is None:
                continue
            resolved.append(changes)
            effects[name] = effect
        return resolved, effects

    def _resolve_rows(self, tdef: TableDef, ops: list[Op]):
        name = tdef.name
        if not tdef.keyed:
            plus_parts, minus_parts = [], []
            verify = False
            for op in ops:
                if op.kind == "insert":
                    plus_parts.append(op.rows)
                elif op.kind in ("delete_rows", "retract_rows"):
                    minus_parts.append(op.rows)
                    verify = verify or op.kind == "delete_rows"
                else:
                    raise UsageError(f"{op.kind.replace('_', ' ')} on table {name!r} needs a primary key, and the "
                                     f"table has none: use insert, or delete(where=...)")
            schema = tdef.schema
            plus = pa.concat_tables([conform_to(t, schema) for t in plus_parts]) if plus_parts else None
            minus = pa.concat_tables([conform_to(t, schema) for t in minus_parts]) if minus_parts else None
            if verify and plus is not None and minus is not None and plus.num_rows and minus.num_rows:
                # (retract_rows comes from a view's consolidated delta: nothing to net.)
                plus, minus = self._net_multiset(schema, plus, minus)
            if verify and minus is not None and minus.num_rows:
                # (retract_rows skips this O(table) check: a view's maintenance knows its
                # deltas are exact, and the oracle tests hold it to that.)
                self._check_rows_exist(tdef, minus)
            if (plus is None or not plus.num_rows) and (minus is None or not minus.num_rows):
                return None, None
            return make_changes(name, plus, minus), (plus, minus)
        if self._python_path(tdef, ops):
            return self._resolve_python(tdef, ops)
        pk = list(tdef.primary_key)
        head = self._head(tdef)
        if len(ops) == 1:
            final_plus, final_minus, inserted = self._single_op_effect(tdef, head, ops[0])
        else:
            final_plus, final_minus, inserted = self._net_effect(tdef, head, ops)
        # final_plus: rows whose key ends set; final_minus: keys that end deleted.
        upd_new = upd_old = ins = dels = None
        if final_plus is not None and final_plus.num_rows:
            exists, found = head.locate_found(final_plus.select(pk))
            if inserted is not None:
                clash_rows = np.flatnonzero(exists & np.asarray(inserted, dtype=bool))
                if clash_rows.size:
                    clash = key_list(final_plus.select(pk).take(pa.array(clash_rows)), pk)
                    raise SchemaError(f"duplicate primary key {self._fmt_keys(pk, clash)} in the insert into table "
                                      f"{name!r}: already in the table (use upsert to replace rows)")
            upd_old = head.gather_found(found)
            if exists.all():  # the common cases need no filtering
                upd_new, ins = final_plus, None
            elif not exists.any():
                upd_new, upd_old, ins = None, None, final_plus
            else:
                mask = pa.array(exists)
                upd_new = final_plus.filter(mask)
                ins = final_plus.filter(pc.invert(mask))
        if final_minus is not None and final_minus.num_rows:
            exists, found = head.locate_found(final_minus.select(pk))
            dels = head.gather_found(found) if exists.any() else None
        rows = sum(t.num_rows for t in (upd_new, ins, dels) if t is not None)
        if rows == 0:
            return None, None
        plus = final_plus if final_plus is not None and final_plus.num_rows else None
        minus_keys = dels.select(pk) if dels is not None and dels.num_rows else None
        return make_changes(name, ins, dels, upd_new, upd_old, pk), (plus, minus_keys)

    @staticmethod
    def _python_path(tdef: TableDef, ops: list[Op]) -> bool:
        """Whether ``ops`` can be resolved and stored as Python values: a keyed table whose
        columns all have a msgpack form, and every operation given as PyRows of its current
        schema (one added since the transaction began sends it the Arrow way)."""
        if not tdef.keyed or not encodable(tdef.schema):
            return False
        for op in ops:
            py = op.py
            if py is None or op.kind not in ("insert", "upsert", "delete_keys"):
                return False
            if py.schema is tdef.schema:
                continue
            if op.kind == "delete_keys":
                if py.schema.names != list(tdef.primary_key):
                    return False
            elif not py.schema.equals(tdef.schema):
                return False
        return True

    def _resolve_python(self, tdef: TableDef, ops: list[Op]):
        """``_resolve_rows`` for Python rows: the same decisions, in the same row order, made
        with dict lookups in the head state, and changes in the msgpack form."""
        pk = tdef.pk
        head = self._head(tdef)
        inserted = False
        if len(ops) == 1:
            op = ops[0]
            keys = _py_keys(op.py, pk)
            if op.kind == "delete_keys":
                plus_rows, plus_keys, minus_keys = [], [], keys
            else:
                plus_rows, plus_keys, minus_keys = op.py.rows, keys, []
                inserted = op.kind == "insert"
        else:
            plus_rows, plus_keys, minus_keys = self._net_python(tdef, head, ops)
        changes, dead = self._python_changes(tdef, head, plus_rows, plus_keys, minus_keys, inserted)
        if changes is None:
            return None, None
        return changes, _RowsEffect(plus_rows, plus_keys, dead)

    def _python_changes(self, tdef: TableDef, head, plus_rows: list, plus_keys: list, minus_keys: list,
                        inserted: bool) -> tuple[Changes | None, list]:
        """The msgpack-form changes of setting ``plus_rows`` (keys ``plus_keys``; ``inserted``:
        each must be new) and deleting ``minus_keys``, against ``head``; and the keys that
        end deleted. (None, []) when nothing changes."""
        upd_new, upd_old, ins, dels, dead = [], [], [], [], []
        if plus_rows:
            locs = head.locate(plus_keys)
            if inserted:
                clash = [k for k, loc in zip(plus_keys, locs, strict=True) if loc is not None]
                if clash:
                    raise SchemaError(f"duplicate primary key {self._fmt_keys(tdef.pk, clash)} in the insert into "
                                      f"table {tdef.name!r}: already in the table (use upsert to replace rows)")
            if len(locs) == 1:
                if locs[0] is not None:
                    upd_old, upd_new = head.rows(locs), plus_rows
                else:
                    ins = plus_rows
            else:
                present = [loc for loc in locs if loc is not None]
                if present:
                    upd_old = head.rows(present)
                    if len(present) == len(locs):
                        upd_new = plus_rows
                    else:
                        upd_new = [r for r, loc in zip(plus_rows, locs, strict=True) if loc is not None]
                        ins = [r for r, loc in zip(plus_rows, locs, strict=True) if loc is None]
                else:
                    ins = plus_rows
        if minus_keys:
            found = [(k, loc) for k, loc in zip(minus_keys, head.locate(minus_keys), strict=True) if loc is not None]
            if found:
                dead = [k for k, _ in found]
                dels = head.rows([loc for _, loc in found])
        if not (upd_new or ins or dels):
            return None, dead
        new_rows = upd_new + ins if ins and upd_new else (upd_new or ins)
        return make_value_changes(tdef.name, tdef.names, new_rows, len(ins), dels, upd_old, tdef.pk), dead

    def _net_python(self, tdef: TableDef, head, ops: list[Op]) -> tuple[list, list, list]:
        """``_net_effect`` for Python rows: (rows whose key ends set, their keys, keys that
        end deleted), in the order the Arrow path gives them."""
        pk = list(tdef.primary_key)
        local: dict = {}  # key -> (part, row) | None
        parts: list[list[tuple]] = []
        for op in ops:
            keys = _py_keys(op.py, pk)
            if op.kind == "delete_keys":
                for k in keys:
                    local[k] = None
                continue
            if op.kind == "insert":
                unseen = [k for k in keys if k not in local]
                existing = {k for k, loc in zip(unseen, head.locate(unseen), strict=True) if loc is not None}
                clash = [k for k in keys if (local.get(k) is not None) or (k not in local and k in existing)]
                if clash:
                    raise SchemaError(f"duplicate primary key {self._fmt_keys(pk, clash)} in the insert into "
                                      f"table {tdef.name!r}: already in the table (use upsert to replace rows)")
            p = len(parts)
            parts.append(op.py.rows)
            for i, k in enumerate(keys):
                local[k] = (p, i)
        by_part: dict[int, list] = {}
        dead = []
        for k, loc in local.items():
            if loc is None:
                dead.append(k)
            else:
                by_part.setdefault(loc[0], []).append((k, loc[1]))
        plus_rows, plus_keys = [], []
        for p, entries in by_part.items():
            rows = parts[p]
            for k, i in entries:
                plus_rows.append(rows[i])
                plus_keys.append(k)
        return plus_rows, plus_keys, dead

    def _values_to_arrow(self, resolved: list, effects: dict) -> None:
        """Turn the msgpack-form changes of ``resolved`` (and their head effects) into the Arrow form."""
        for i, op in enumerate(resolved):
            if not isinstance(op, Changes) or not op.columns:
                continue
            tdef = self._def_at_head(op.table)
            resolved[i] = values_to_ipc(op, tdef.schema)
            effect = effects[op.table]
            plus = rows_to_table(effect.rows, tdef.schema) if effect.rows else None
            minus = keys_table(effect.dead, list(tdef.primary_key), tdef.schema) if effect.dead else None
            effects[op.table] = (plus, minus)

    def _single_op_effect(self, tdef: TableDef, head, op: Op):
        pk = list(tdef.primary_key)
        if op.kind == "insert":
            return conform_to(op.rows, tdef.schema), None, [True] * op.rows.num_rows
        if op.kind == "upsert":
            return conform_to(op.rows, tdef.schema), None, None
        if op.kind in ("delete_keys", "delete_rows"):
            return None, op.rows.select(pk), None
        raise InternalError(f"unknown row operation {op.kind!r}")

    def _net_effect(self, tdef: TableDef, head, ops: list[Op]):
        """Fold several row operations of one transaction on one keyed table into the final
        row (or deletion) of each key, checking inserts against the state they meet."""
        pk = list(tdef.primary_key)
        local: dict = {}  # key -> (part, row, inserted) | None
        parts: list[pa.Table] = []
        for op in ops:
            if op.kind in ("insert", "upsert"):
                keys = key_list(op.rows, pk)
                if op.kind == "insert":
                    unseen = [k for k in keys if k not in local]
                    existing = {k for k, loc in zip(unseen, head.locate(unseen), strict=True) if loc is not None}
                    clash = [k for k in keys if (local.get(k) is not None) or (k not in local and k in existing)]
                    if clash:
                        raise SchemaError(f"duplicate primary key {self._fmt_keys(pk, clash)} in the insert into "
                                          f"table {tdef.name!r}: already in the table (use upsert to replace rows)")
                p = len(parts)
                parts.append(conform_to(op.rows, tdef.schema))
                for i, k in enumerate(keys):
                    local[k] = (p, i)
            elif op.kind in ("delete_keys", "delete_rows"):
                for k in key_list(op.rows, pk):
                    local[k] = None
            else:
                raise InternalError(f"unknown row operation {op.kind!r}")
        live = [(k, loc) for k, loc in local.items() if loc is not None]
        dead = [k for k, loc in local.items() if loc is None]
        plus = None
        if live:
            by_part: dict[int, list[int]] = {}
            for _, (p, i) in live:
                by_part.setdefault(p, []).append(i)
            plus = pa.concat_tables([parts[p].take(pa.array(rows)) for p, rows in by_part.items()])
        minus = keys_table(dead, pk, tdef.schema) if dead else None
        return plus, minus, None

    @staticmethod
    def _net_multiset(schema: pa.Schema, plus: pa.Table, minus: pa.Table) -> tuple[pa.Table, pa.Table]:
        """One transaction's inserts and deletes of whole rows, netted: a row it inserted and
        then deleted cancels out, so only the rest is checked against (and applied to) the table."""
        w = "__weight"
        rows = pa.concat_tables([
            plus.append_column(w, pa.array(np.ones(plus.num_rows, dtype=np.int64))),
            minus.append_column(w, pa.array(np.full(minus.num_rows, -1, dtype=np.int64)))])
        net = rows.group_by(schema.names, use_threads=False).aggregate([(w, "sum")])
        counts = net.column(f"{w}_sum").to_numpy()
        net = net.select(schema.names).cast(schema)
        up = np.flatnonzero(counts > 0)
        down = np.flatnonzero(counts < 0)
        return (net.take(pa.array(np.repeat(up, counts[up]))),
                net.take(pa.array(np.repeat(down, -counts[down]))))

    def _check_rows_exist(self, tdef: TableDef, minus: pa.Table) -> None:
        head = self._head(tdef)
        current = head.materialize()
        try:
            check = fold_multiset(current, [(-1, minus)], tdef.schema) if current.num_rows else None
        except InternalError:
            raise SchemaError(f"delete from table {tdef.name!r}: some of the {minus.num_rows} row(s) to delete are "
                              f"not in the table (a table without a key deletes whole rows that exist)") from None
        if check is None:
            raise SchemaError(f"delete from table {tdef.name!r}: {minus.num_rows} row(s) to delete, but the table is "
                              f"empty")

    @staticmethod
    def _fmt_keys(pk: list[str], keys: list) -> str:
        shown = keys[:5]
        if len(pk) == 1:
            text = ", ".join(f"({pk[0]}={k!r})" for k in shown)
        else:
            text = ", ".join("(" + ", ".join(f"{c}={v!r}" for c, v in zip(pk, k, strict=True)) + ")" for k in shown)
        return text + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")

    def _apply_heads(self, resolved: list, effects: dict) -> None:
        """After queueing: bring the head state up to the new commit, from the tables the
        resolution already built (no re-decoding of what was just encoded)."""
        for op in resolved:
            if isinstance(op, (CreateTable, DropTable)):
                self._heads = {k: v for k, v in self._heads.items() if k[0] != op.table}
            elif isinstance(op, Changes):
                tdef = self.catalog.get(op.table, 1 << 62)
                head = self._heads.get((op.table, tdef.created))
                if head is None:
                    continue
                self._sync_head_schema(head, tdef)
                effect = effects[op.table]
                if type(effect) is _RowsEffect:
                    head.apply_rows(effect.rows, effect.keys, effect.dead)
                    continue
                plus, minus = effect
                if isinstance(head, KeyedHead):
                    head.apply(plus, minus)
                else:
                    head.apply(plus, minus)

    def _spill_to_chunks(self, resolved: list, effects: dict, adoptions: list, pinned: list) -> None:
        """Large row data goes to chunks (durable before the frame is written), and the frame
        references them by hash. Pure inserts into a keyed table are written key-sorted in
        the checkpoint layout, so a checkpoint of that state reuses the very same chunks."""
        for i, op in enumerate(resolved):
            if not isinstance(op, Changes) or len(op.rows) <= COMMIT_INLINE_ROWS_BYTES_MAX:
                continue
            tdef = self._def_at_head(op.table)
            plus = effects[op.table][0]
            if tdef.keyed and op.updates == 0 and op.deletes == 0 and plus is not None:
                pk = list(tdef.primary_key)
                rows = plus.take(pc.sort_indices(plus, sort_keys=[(k, "ascending") for k in pk])).combine_chunks()
                bounds = chunk_bounds(rows, pk)
                digests = self.chunks.put_tables([rows.slice(o, n) for o, n in bounds], pin=True)
                pinned.extend(digests)
                resolved[i] = Changes(op.table, b"", 0, op.inserts, 0, op.rows_in, op.rows_out, digests, True)
                if self.catalog.row_count(op.table, self._head_version) == 0:
                    # Loaded into an empty table: these chunks are the table's whole state, the
                    # checkpoint once the commit is durable (see commit()).
                    adoptions.append((tdef, digests, [n for _, n in bounds]))
            else:
                step = COMMIT_BODY_BYTES_MAX // 2
                pieces = [op.rows[j:j + step] for j in range(0, len(op.rows), step)]
                digests = self.chunks.put_many(pieces, pin=True)
                pinned.extend(digests)
                resolved[i] = Changes(op.table, b"", op.updates, op.inserts, op.deletes, op.rows_in, op.rows_out,
                                      digests)

    # ---- checkpoints -----------------------------------------------------------------

    @cython.ccall
    def _maybe_checkpoint(self, resolved: list, version: int) -> list[threading.Event]:
        """Schedule the checkpoints that ``resolved`` (the commit at ``version``) makes due.
        Returns the checkpoints the committer must wait for before it returns (its table's
        tail is so long that writers must not outrun the checkpointer)."""
        backlog: list[threading.Event] = []
        for op in resolved:
            if type(op) is not Changes:
                if type(op) is not AddColumn:
                    self._checkpoint_due.pop(op.table, None)  # a new table, or none
                continue
            # Between evaluations, a countdown of commits and rows to the trigger: the
            # evaluation below costs several lookups, and runs on every commit's path.
            # (Threads racing on it only move the next evaluation by a commit or two.)
            due = self._checkpoint_due.get(op.table)
            if due is not None:
                due[0] -= 1
                due[1] -= max(op.rows_in, op.rows_out)
                if due[0] > 0 and due[1] > 0:
                    continue
            tdef = self.catalog.get(op.table, version)
            if tdef is None:
                continue
            last = self.checkpoints.nearest(tdef, version) or tdef.created
            commits, rows = self.catalog.changed_rows(op.table, last, version)
            size = max(self.catalog.row_count(op.table, version), 1)
            rows_max = max(CHECKPOINT_TAIL_ROWS_MIN, CHECKPOINT_TAIL_RATIO * size)
            if commits < CHECKPOINT_TAIL_COMMITS_MAX and rows < rows_max:
                self._checkpoint_due[op.table] = [CHECKPOINT_TAIL_COMMITS_MAX - commits, rows_max - rows]
            else:
                self._checkpoint_due.pop(op.table, None)
                self._schedule_checkpoint(op.table, tdef.created)
                if commits >= CHECKPOINT_TAIL_BACKLOG_FACTOR * CHECKPOINT_TAIL_COMMITS_MAX:
                    done = self._checkpoint_pending.get((op.table, tdef.created))
                    if done is not None:
                        backlog.append(done)
        return backlog

    def _schedule_checkpoint(self, name: str, created: int) -> None:
        # One queued checkpoint per table at a time: the trigger keeps holding on every
        # commit until the checkpoint lands, and each extra one would be a full copy.
        with self._catalog_lock:
            if (name, created) in self._checkpoint_pending:
                return
            self._checkpoint_pending[(name, created)] = threading.Event()
            # Started under the lock: two committers starting one each would leave a
            # checkpointer that close() never stops.
            if self._checkpoint_queue is None:
                self._checkpoint_queue = queue.Queue(maxsize=64)
                self._checkpoint_thread = threading.Thread(target=self._checkpointer, name="udrflow-checkpoint",
                                                           daemon=True)
                self._checkpoint_thread.start()
        try:
            self._checkpoint_queue.put_nowait((name, created))
        except queue.Full:
            with self._catalog_lock:
                self._checkpoint_pending.pop((name, created)).set()  # the next commit asks again

    def _checkpointer(self) -> None:
        while True:
            job = self._checkpoint_queue.get()
            if job is None:
                return
            name, created = job
            try:
                tdef = self.catalog.get(name, self.log.version)
                if tdef is not None and tdef.created == created:
                    self.checkpoint(name)  # at the newest visible version: it covers the most
            except BaseException as exc:  # kept for db.checkpoint() to report
                self.checkpoint_error = exc
            finally:
                with self._catalog_lock:
                    self._checkpoint_pending.pop((name, created)).set()

    def checkpoint(self, name: str, version: int | None = None) -> int | None:
        """Write a checkpoint of table ``name`` at ``version`` (default: visible head) unless
        one exists there; returns its version, or None if the table does not exist then."""
        v = self.resolve_version(version)
        if self.parent is not None and v <= self.fork:
            return None  # the parent's history: its checkpoints serve it
        tdef = self.catalog.get(name, v)
        if tdef is None:
            return None
        with self._maintenance_lock:
            nearest = self.checkpoints.nearest(tdef, v)
            if nearest == v:
                return v
            if tdef.keyed and self._write_delta(tdef, v, nearest):
                return v
            self.checkpoints.write(tdef, v, self.read(name, v))
        return v

    def _write_delta(self, tdef: TableDef, v: int, nearest: int | None) -> bool:
        """Write a delta checkpoint at ``v`` if the table changed little since its last full
        one. Chained on the newest delta of that full checkpoint, it holds only the log tail
        since that delta, so it costs what changed since; when the chain is
        DELTA_CHAIN_MAX long, the new delta takes the whole chain in (cost: the changes
        since the full checkpoint) and starts a new chain."""
        full = self.checkpoints.nearest_full(tdef, v)
        if full is None:
            return False
        size = self.catalog.row_count(tdef.name, v)
        _, changed = self.catalog.changed_rows(tdef.name, full, v)
        if changed > DELTA_ROWS_MAX_RATIO * max(size, 1):
            return False
        pk = list(tdef.primary_key)
        chain = []
        if nearest is not None and nearest != full and self.checkpoints.base_of(tdef, nearest) == full:
            chain = self.checkpoints.chain(tdef, nearest)
        if chain and len(chain) < DELTA_CHAIN_MAX:
            rows, deleted = net_keyed(self._tail_events(tdef, nearest, v), pk, tdef.schema)
            self.checkpoints.write_delta(tdef, v, full, rows, deleted, size, parent=nearest)
            return True
        events: list[tuple[int, pa.Table]] = []
        for m in chain:
            rows, deleted = self.checkpoints.read_delta(tdef, m)
            events += [(-1, deleted), (1, rows)]
        events += self._tail_events(tdef, nearest if chain else full, v)
        rows, deleted = net_keyed(events, pk, tdef.schema)
        self.checkpoints.write_delta(tdef, v, full, rows, deleted, size)
        return True

    # ---- retention and garbage collection --------------------------------------------

    def set_since(self, version: int, tables: list[str] | None = None) -> dict[str, int]:
        """Give up history before ``version`` for ``tables`` (default: every table at that
        version). Each table gets a checkpoint at ``version``, so reads from there on never
        need older log; reads below it raise VersionNotFoundError. ``since`` only moves forward."""
        head = self.log.version
        names = tables if tables is not None else self.catalog.names(min(max(version, 0), head))
        for name in names:
            current = self.since_of(self.table_def(name, head))
            if version < current:
                raise UsageError(f"since of table {name!r} is {current}: it only moves forward, got {version}")
        v = self.resolve_version(version)
        changed = {}
        for name in names:
            tdef = self.table_def(name, v)
            self.checkpoint(name, v)
            self._retention[name] = (tdef.created, v)
            changed[name] = v
        try:
            make_dirs_durably(self._io, os.path.dirname(self._retention_path))
            write_file_durably(self._io, self._retention_path, seal(msgspec.msgpack.encode(self._retention)))
        except OSError as exc:
            raise storage_error_from_os(exc, "write the retention file", self._retention_path) from exc
        return changed

    def gc(self) -> dict[str, int]:
        """Mark and sweep: remove checkpoints older than each table's since, log segments
        below every table's since, and chunks that nothing retained references."""
        with self._lock, self._maintenance_lock:
            head = self.log.version
            report = {"manifests_removed": 0, "segments_removed": 0, "chunks_removed": 0, "bytes_removed": 0}
            # 1. Checkpoints below each table's anchor (the checkpoint at its since), except
            #    the full checkpoints and the deltas that retained deltas are built on.
            doomed, needed = [], set()
            for table, created, version in self.checkpoints.all_manifests():
                entry = self._retention.get(table)
                if entry is not None and entry[0] == created and version < entry[1]:
                    doomed.append((table, created, version))
                else:
                    m = self.checkpoints.manifest(table, created, version)
                    if m.base:
                        needed.add((table, created, m.base))
                    while m.parent and m.parent != m.base:  # the deltas a retained delta builds on
                        needed.add((table, created, m.parent))
                        m = self.checkpoints.manifest(table, created, m.parent)
            for table, created, version in doomed:
                if (table, created, version) not in needed:
                    self.checkpoints.delete(table, created, version)
                    report["manifests_removed"] += 1
            # 2. Log segments: every table alive at the cut must have its since at or past it.
            cut = head + 1
            for name in self.catalog.names(head):
                cut = min(cut, self.since_of(self.table_def(name, head)) + 1)
            for dropped, (_created, since) in self._retention.items():
                if self.catalog.get(dropped, head) is None:
                    cut = min(cut, since + 1)
            cut = min(cut, head)
            # Only whole sealed segments go: the log will start at the first version of the
            # segment holding ``cut`` (or later), and the catalog snapshot must be for the
            # version just before that start, which is what a reopen looks for.
            kept = [seg for seg in self.log._segments[:-1] if seg.last_version >= cut] + self.log._segments[-1:]
            cut = kept[0].first_version if kept else cut
            if cut > self.log.since:
                path = self._catalog_snapshot_path(cut - 1)
                try:
                    make_dirs_durably(self._io, os.path.dirname(path))
                    write_file_durably(self._io, path, self.catalog.snapshot(cut - 1))
                except OSError as exc:
                    raise storage_error_from_os(exc, "write the catalog snapshot", path) from exc
                removed = self.log.drop_segments_before(cut)
                report["segments_removed"] = len(removed)
            # 3. Chunks: referenced by a retained manifest (any branch) or a retained commit,
            #    or pinned by a commit or checkpoint still on its way (see ChunkStore.sweeping).
            with self.chunks.sweeping() as sweep:
                live = self._referenced_chunks()
                for digest in list(self.chunks.digests()):
                    if digest not in live:
                        removed = sweep.delete_unless_pinned(digest)
                        if removed is not None:
                            report["bytes_removed"] += removed
                            report["chunks_removed"] += 1
            return report

    def _referenced_chunks(self) -> set[str]:
        live: set[str] = set()
        root = os.path.join(self.root, "checkpoints")
        for branch in os.listdir(root) if os.path.isdir(root) else []:
            store = self.checkpoints if branch == self.branch else CheckpointStore(
                os.path.join(root, branch), self._io, self.chunks)
            for table, created, version in store.all_manifests():
                m = store.manifest(table, created, version)
                live.update(m.chunks)
                live.update(m.deleted)
        logs = [self.log]
        log_root = os.path.join(self.root, "log")
        # Every branch's commits may reference spilled chunks, not only this branch's.
        for branch in sorted(os.listdir(log_root)) if os.path.isdir(log_root) else []:
            if branch != self.branch and os.path.isdir(os.path.join(log_root, branch)):
                logs.append(EpochLog.open(os.path.join(log_root, branch), readonly=True))
        try:
            for log in logs:
                for record in log.scan():
                    for op in decode_header(record.payload, record.version).ops:
                        live.update(h for h in getattr(op, "chunks", ()) if h)
        finally:
            for log in logs[1:]:
                log.close()
        return live

    def close(self) -> None:
        if self._checkpoint_queue is not None:
            self._checkpoint_queue.put(None)
            self._checkpoint_thread.join()


_py_keys = key_values  # the key of each of some PyRows, computed once (see _pyrows.key_values)
