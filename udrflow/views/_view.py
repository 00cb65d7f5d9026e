"""Views: definitions stored in the log, maintained by a Bytewax dataflow, results in the log.

A view named ``v`` is an ordinary table ``v`` (keyed by its group-by keys when its last
operator is a group-by or distinct; a multiset otherwise) plus a row in the registry
table ``__udrflow_views`` holding its definition (JSON), the version that created it and
``input_version``: the input version its table reflects. Every commit of view results
writes the changed rows and that registry row together, and records the same
``input_version`` in the commit's metadata: the table at any version reflects its inputs
at exactly one version, and a restart knows where it stands.

The dataflow (one per run: one view's ``run()``/``refresh()``, or all the views started
together by ``db.views.run()``) is::

    ViewSource (log -> per view and step: (view key, (input version, each input's change batch)))
      -> stateful_map (keyed by view: the view's whole operator tree; batch-at-a-time Arrow work)
      -> ViewSink (one commit per round for every view with results, skipping steps at or
         below each view's recorded input_version)

With Bytewax recovery (a recovery store under ``<db>/views/<branch>/<name>/``, or one per
set of views run together), a restart resumes
the operator state and the source position from the last snapshot and replays only the
log after it; the sink drops what was already committed, so every input version is
reflected exactly once. Without a snapshot (first run, or a lost recovery store), the
source backfills: it reads the inputs at the starting version as one +1 change batch.
"""

from __future__ import annotations

import atexit
import datetime as dt
import hashlib
import json
import logging
import pickle
import shutil
import sqlite3
import threading
import weakref
from pathlib import Path

import bytewax.operators as op
import numpy as np
import pyarrow as pa
from bytewax.dataflow import Dataflow
from bytewax.errors import BytewaxRuntimeError
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import run_main

from udrflow._changefeed import (
    WEIGHT_COLUMN,
    RawChange,
    change_delta,
    change_lists,
    plain_values,
    read_raw_changes,
)
from udrflow._clock import utc_now
from udrflow._database import _view_writer
from udrflow._ext._crc32c import crc32c
from udrflow._limits import PY_ROWS_MAX
from udrflow._names import check_new_name
from udrflow.errors import CorruptionError, TableExistsError, TableNotFoundError, UdrflowError, UsageError
from udrflow.views._plan import (
    SMALL_DELTA_ROWS_MAX,
    SmallDelta,
    Source,
    Stream,
    W,
    arrow,
    batch_evaluate,
    concat_deltas,
    conform,
    consolidate,
    empty_delta,
    expand,
    from_json,
    number_nodes,
    pycol,
    remember_columns,
    schema_types,
    step_view,
)

_W_FIELD = pa.field(W, pa.int64())
REGISTRY = "__udrflow_views"
REGISTRY_SCHEMA = pa.schema([
    pa.field("name", pa.string(), nullable=False),
    pa.field("definition", pa.string()),
    pa.field("input_version", pa.int64()),
])
VIEW_VERSIONS_PER_STEP_MAX = 4096   # input versions folded into one step (bounds a step's memory)
VIEW_IDLE_WAKE_MS = 1               # how soon an idle view source looks at the log again (read-only)
VIEW_IDLE_WAIT_S = 0.005            # how long an idle view source waits for a commit in one call
_log = logging.getLogger("udrflow.views")
GROUP_DIR_PREFIX = "__udrflow_groups"  # recovery stores of views run together (no view has this name)
VIEW_EPOCH_INTERVAL_S = 30.0        # Bytewax snapshot interval in the long-running mode: a snapshot
                                    # pickles and stores the whole state (a join side: all its rows),
                                    # and a restart replays at most this much log
PROGRESS_VERSIONS_MIN = 1000        # record progress without result changes at most this often


def registry_rows(db, version: int | None = None) -> dict[str, dict]:
    if REGISTRY not in db.tables(version=version):
        return {}
    return {r["name"]: r for r in db.read(REGISTRY, version=version).to_pylist()}


class View:
    """A view of database ``db``: ``refresh()`` catches up, ``run()`` keeps it current in a
    background thread, ``read(version)`` reads its table."""

    def __init__(self, db, name: str, definition: Stream, created: int) -> None:
        self._db = db
        self.name = name
        self.definition = definition
        self.created = created
        self._nodes = number_nodes(definition)
        self._primary_key = definition.primary_key()  # the key of the view's table
        self._group: _Group | None = None  # the background run maintaining it, if any
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.error: BaseException | None = None
        self._row: dict | None = None
        self._progress = None
        self._reached_changed = threading.Condition()
        self._reached = self.position  # input version reached in this process
        # The operator state after the last step of a run in this process, and that step's
        # input version: a later run (another set of views, another recovery store) continues
        # from it instead of rebuilding the state from the inputs. Dropped when a run fails.
        self._live: tuple[ViewState, int] | None = None
        self._adopt: ViewState | None = None

    # ---- positions ---------------------------------------------------------------------

    @property
    def position(self) -> int:
        """The input version the view's table reflects (as last committed)."""
        row = registry_rows(self._db).get(self.name)
        if row is None:
            raise TableNotFoundError(f"view {self.name!r} does not exist (it was dropped)")
        return int(row["input_version"])

    @property
    def lag(self) -> int:
        """Commits that changed the view's inputs and are not yet reflected."""
        return _input_commits(self._db, self.definition.inputs(), self.position, self._db.version)

    def input_version_at(self, version: int) -> int:
        """The input version that the view's table at log ``version`` reflects."""
        row = registry_rows(self._db, version).get(self.name)
        if row is None:
            raise TableNotFoundError(f"view {self.name!r} does not exist at version {version}")
        return int(row["input_version"])

    def read(self, version: int | None = None) -> pa.Table:
        return self._db.read(self.name, version=version)

    def batch(self, input_version: int) -> pa.Table:
        """The definition evaluated in batch (DataFusion) on the inputs at ``input_version``:
        what the view's table holds once it reflects that version."""
        tables = {t: self._db.read(t, version=input_version) for t in self.definition.inputs()}
        return batch_evaluate(self.definition, tables)

    # ---- maintenance -----------------------------------------------------------------------

    def refresh(self, progress=None) -> int:
        """Catch up with the log as of now; return the input version reached.
        ``progress(reached, target)``, if given, is called after each step (the CLI's
        progress display uses it)."""
        with self._lock:
            if self.running:
                raise UsageError(f"view {self.name!r} is running in the background: refresh() is not needed")
            target = self._db.version
            # A stop() since the last run leaves the flag set: the source would end at once,
            # and the target below would be recorded as reflected without being read.
            self._stop.clear()
            self._progress = None if progress is None else (lambda reached: progress(reached, target))
            self.error = None
            try:
                _run_dataflow([self], until=target, epoch_interval_s=None)
                if self.error is not None:
                    error, self.error = self.error, None
                    raise error
                self._record_progress(target)
            finally:
                self._progress = None
            return self.reached

    def run(self) -> None:
        """Keep the view current in a background thread of its own until ``stop()``
        (``db.views.run()`` keeps several views current in one thread instead)."""
        if not self.running:
            _Group([self]).start()

    def stop(self, timeout_s: float | None = 30.0) -> None:
        """Stop the background maintenance (if running; a view started by ``db.views.run()``
        stops with the others of its thread); re-raise its error if it failed."""
        group = self._group
        if group is not None:
            group.stop(timeout_s)
        else:
            self._stop.set()
        if self.error is not None:
            error, self.error = self.error, None
            raise error

    @property
    def reached(self) -> int:
        """The input version the view reflects in this process (its table, as committed)."""
        return self._reached

    @reached.setter
    def reached(self, version: int) -> None:
        if version != self._reached:
            with self._reached_changed:
                self._reached = version
                self._reached_changed.notify_all()

    def wait_for(self, input_version: int, timeout_s: float = 30.0) -> bool:
        """Wait until the running view reflects ``input_version``; True if it does. Woken by
        the view's commit itself (no polling delay)."""
        import time

        deadline = time.monotonic() + timeout_s
        with self._reached_changed:
            while self._reached < input_version:
                if self.error is not None:
                    raise self.error
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                # Bounded: an error of the background run does not notify.
                self._reached_changed.wait(min(remaining, 0.05))
        return True

    @property
    def running(self) -> bool:
        group = self._group
        return (group is not None and group.thread is not None and group.thread.is_alive()
                and self.error is None)  # (a view that failed stopped alone; its group may go on)

    @property
    def _key(self) -> str:
        """Names the view's state and source position in a recovery store: a view dropped
        and created again under the same name is another view."""
        return f"{self.name}@{self.created}"

    def _recovery_dir(self) -> Path:
        # Per branch: a view maintained on a branch keeps its own state from the fork on.
        return Path(self._db.path) / "views" / str(self._db.branch) / self.name / "recovery"

    def _fail(self, exc: BaseException) -> None:
        """Stop this view alone (the others of its run go on); ``error`` says why, naming
        the view. Its state is dropped: a later run rebuilds it from the recorded position."""
        if self.error is None:
            exc.add_note(f"view {self.name!r} stopped on this error at input version {self.reached}; the other "
                         f"views of its run keep running")
            self.error = exc
        self._live = self._adopt = None

    def _step(self, state, item):
        version, deltas = item
        adopt, self._adopt = self._adopt, None
        if adopt is not None:
            state = adopt  # the reader chose to continue from the state an earlier run left
        elif state is None:
            state = ViewState()
        out = step_view(self.definition, state, deltas, small_ok=True)
        self._live = (state, version)
        return state, (version, out)

    # ---- writing results -----------------------------------------------------------------

    def _commit(self, version: int, delta: pa.Table, force: bool = False) -> None:
        _commit_views(self._db, [(self, version, delta, force)])

    def _record_progress(self, version: int) -> None:
        position = self.position
        if version <= position:
            return
        if not _inputs_changed(self._db, self.definition.inputs(), position, version):
            # Nothing the view reads changed: it already reflects ``version`` too, and a
            # progress commit would only make every other view lag behind a new head.
            self.reached = max(self.reached, version)
            return
        self._commit(version, empty_delta(self.definition.schema), force=True)

    def __repr__(self) -> str:
        return f"View({self.name!r}, position={self.position}, running={self.running})"


def _input_commits(db, inputs: set[str], after: int, upto: int) -> int:
    """How many commits in (after, upto] changed any of ``inputs`` (from the catalog)."""
    if upto <= after:
        return 0
    engine = db._engine()
    versions: set[int] = set()
    while engine is not None:
        lo = max(after, engine.fork) if engine.parent is not None else after
        for name in inputs:
            versions.update(engine.catalog.change_versions(name, lo, upto))
        if engine.parent is None or after >= engine.fork:
            break
        upto, engine = min(upto, engine.fork), engine.parent
    return len(versions)


def _inputs_changed(db, inputs: set[str], after: int, upto: int) -> bool:
    return _input_commits(db, inputs, after, upto) > 0


class ViewState(dict):
    """The operator states of one view (node number -> state). Bytewax snapshots state
    with ``copy.deepcopy`` and then pickles the copy; a deep copy of many small Python
    objects is ~10x slower than pickling them, so the copy *is* the pickle."""

    def __deepcopy__(self, memo) -> _FrozenViewState:
        return _FrozenViewState(pickle.dumps(dict(self), protocol=5))


class _FrozenViewState:
    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __reduce__(self):
        # The checksum travels with the state into the recovery store: one flipped bit
        # there once made a view commit a count of 274,877,907,344 where 400 was true.
        return (_thaw, (self.data, crc32c(self.data)))


def _thaw(data: bytes, crc: int | None = None) -> ViewState:
    if crc is not None and crc32c(data) != crc:
        raise CorruptionError(f"a view's state in its recovery store fails its checksum: expected 0x{crc:08x}, "
                              f"got 0x{crc32c(data):08x} over {len(data)} bytes")
    return ViewState(pickle.loads(data))


def _positions_crc(positions: dict) -> int:
    return crc32c(repr(sorted(positions.items())).encode())


def _check_recovery_store(rec: Path) -> str | None:
    """Why the recovery store at ``rec`` cannot be trusted (a page fails SQLite's check, a
    snapshot does not load or fails its checksum), or None if it is sound. Run before
    Bytewax opens it, so a damaged store is found here, not as a panic inside a run."""
    path = rec / "part-0.sqlite3"
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            check = con.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                return f"SQLite's check of {path} says: {check}"
            schema = con.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall()
            if schema != _recovery_schema():
                return f"{path} does not have the tables of a Bytewax recovery store (its schema was changed)"
            parts = con.execute("SELECT part_index, part_count FROM parts").fetchall()
            if parts != [(0, 1)]:
                return f"{path} says it is partition(s) {parts} of its store: expected [(0, 1)] (one partition)"
            workers = {n for (n,) in con.execute("SELECT worker_count FROM exs")}
            if not workers <= {1}:
                return f"{path} records runs of {sorted(workers)} workers: expected 1"
            for step_id, key, blob in con.execute("SELECT step_id, state_key, ser_change FROM snaps"):
                if blob is None:
                    continue
                try:
                    value = pickle.loads(blob)
                except CorruptionError as exc:
                    return f"{exc} (snapshot of {step_id!r}, key {key!r})"
                if isinstance(value, dict) and "positions" in value:
                    _source_positions(value)
        finally:
            con.close()
    except CorruptionError as exc:
        return str(exc)
    except Exception as exc:  # noqa: BLE001 - any damage that keeps the store from loading
        return f"{path} does not load: {type(exc).__name__}: {exc}"
    return None


_recovery_schema_cache: list = []


def _recovery_schema() -> list:
    """The tables of a fresh Bytewax recovery store (made once per process to compare with)."""
    if not _recovery_schema_cache:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="udrflow-recovery-") as tmp:
            init_db_dir(Path(tmp), 1)
            con = sqlite3.connect(Path(tmp) / "part-0.sqlite3")
            try:
                _recovery_schema_cache.append(
                    con.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall())
            finally:
                con.close()
    return _recovery_schema_cache[0]


def _source_positions(resume_state) -> dict:
    """The views' positions in a source snapshot (see _GroupPartition.snapshot)."""
    if not isinstance(resume_state, dict):
        return {}
    if "positions" not in resume_state:
        return resume_state  # written before snapshots carried a checksum
    positions, crc = resume_state["positions"], resume_state.get("crc")
    if crc != _positions_crc(positions):
        raise CorruptionError(f"the views' source positions in their recovery store fail their checksum: "
                              f"expected {crc!r}, got 0x{_positions_crc(positions):08x}")
    return positions


def _keys_of(table: pa.Table, pk: list[str]) -> list:
    cols = [table.column(k).to_pylist() for k in pk]
    return cols[0] if len(pk) == 1 else list(zip(*cols, strict=True))


def _apply(tx, table: str, pk: list[str], delta: pa.Table | SmallDelta) -> None:
    if pk and delta.num_rows <= PY_ROWS_MAX:
        # A small change (the common case of a view kept current): as Python rows it takes
        # the small-commit path (no Arrow encoding of the commit), about half the CPU. A keyed
        # view's delta is consolidated: at most one -1 and one +1 row per key.
        names = list(delta.columns) if type(delta) is SmallDelta else delta.schema.names
        cols = [pycol(delta, n) for n in names]
        at = names.index(W)
        del names[at]
        weights = cols.pop(at)
        key_at = [names.index(k) for k in pk]
        rows, gone = [], {}
        for w, values in zip(weights, zip(*cols, strict=True), strict=True):
            if w > 0:
                rows.append(dict(zip(names, values, strict=True)))
            elif w < 0:
                gone[tuple([values[i] for i in key_at])] = None
        for r in rows:
            gone.pop(tuple([r[k] for k in pk]), None)  # updated in place: upserted, not deleted
        if gone:
            tx.delete(table, keys=[dict(zip(pk, k, strict=True)) for k in gone])
        if rows:
            tx.upsert(table, rows)
        return
    plus, minus = expand(arrow(delta))
    if pk:
        gone = minus.select(pk)
        if plus.num_rows and gone.num_rows:
            # Keys updated in place are upserted, not deleted: only keys absent from plus go.
            if gone.num_rows + plus.num_rows <= 512:
                kept = set(_keys_of(plus, pk))
                gone = gone.filter(pa.array([k not in kept for k in _keys_of(gone, pk)], pa.bool_()))
            else:
                gone = gone.join(plus.select(pk), keys=pk, join_type="left anti", use_threads=False)
        if gone.num_rows:
            tx.delete(table, keys=gone)
        if plus.num_rows:
            tx.upsert(table, plus)
    else:
        if minus.num_rows:
            tx.delete_rows(table, minus, verify=False)
        if plus.num_rows:
            tx.insert(table, plus)


def _commit_views(db, entries: list[tuple[View, int, pa.Table, bool]]) -> None:
    """Commit the results of one or more views in one transaction: each view's changed rows
    and its registry row (its new ``input_version``); the commit's metadata names them.
    ``entries``: (view, input version reached, consolidated delta, force). A step at or below
    a view's recorded position is dropped (a replay after a restart); an empty one is
    committed only when forced or when the position has fallen far behind."""
    todo = []
    for view, version, delta, force in entries:
        if view._row is None:
            view._row = dict(registry_rows(db)[view.name])
        recorded = int(view._row["input_version"])
        if version <= recorded:
            view.reached = max(view.reached, version)
            continue
        if delta.num_rows == 0 and not force and version - recorded < PROGRESS_VERSIONS_MIN:
            view.reached = version
            continue
        todo.append((view, version, delta))
    if not todo:
        return
    rows = [dict(view._row, input_version=version) for view, version, _ in todo]
    _view_writer.active = True
    try:
        with db.transaction() as tx:
            for view, _version, delta in todo:
                if delta.num_rows:
                    _apply(tx, view.name, view._primary_key, delta)
            tx.upsert(REGISTRY, rows)
            tx.meta = ({"view": todo[0][0].name, "input_version": todo[0][1]} if len(todo) == 1 else
                       {"views": {view.name: version for view, version, _ in todo}})
    finally:
        _view_writer.active = False
    for (view, version, _), row in zip(todo, rows, strict=True):
        view._row = row
        view.reached = version
        if view._progress is not None:
            view._progress(version)


# ---- the dataflow's source and sink ------------------------------------------------------


class _Group:
    """Views kept current together by one background thread running one dataflow: one
    source reads the log for all of them, each view's operator tree is its own keyed state,
    and each round's results of every view go into one commit (one fsync for all)."""

    def __init__(self, views: list[View]) -> None:
        self.views = views
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        for v in self.views:
            v._stop.clear()
            v.error = None
            v._group = self
        self.thread = threading.Thread(target=self._run, daemon=True,
                                       name=f"udrflow-views-{','.join(v.name for v in self.views)}"[:60])
        _running_groups.add(self)
        self.thread.start()

    def _run(self) -> None:
        try:
            _run_dataflow(self.views, until=None, epoch_interval_s=VIEW_EPOCH_INTERVAL_S)
        except BaseException as exc:  # surfaced by stop()/wait_for(); the thread has no caller
            for v in self.views:
                v.error = exc

    def stop(self, timeout_s: float | None = 30.0) -> None:
        for v in self.views:
            v._stop.set()
        thread = self.thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)
        _running_groups.discard(self)
        for v in self.views:
            if v._group is self:
                v._group = None
        if thread is not None and not thread.is_alive():
            self._record_positions()

    def _record_positions(self) -> None:
        """Steps that changed no rows are recorded only now and then while running; on stop,
        record where each view got to, so ``input_version_at(head)`` is exact."""
        behind = [(v, v.reached, empty_delta(v.definition.schema), True) for v in self.views
                  if v.error is None and v._row is not None and v.reached > int(v._row["input_version"])]
        db = self.views[0]._db
        if behind and not db.closed and not db.readonly:
            try:
                _commit_views(db, behind)
            except UdrflowError as exc:  # reported like a failure of the run itself
                for v, *_ in behind:
                    v.error = exc


# Groups running now: stopped at interpreter exit, before Python tears down under the
# Bytewax threads (a daemon thread inside Rust at finalization aborts the process).
_running_groups: weakref.WeakSet = weakref.WeakSet()


@atexit.register
def _stop_running_views() -> None:
    for group in list(_running_groups):
        try:
            group.stop(timeout_s=10.0)
        except BaseException:  # noqa: BLE001 - exiting: nothing is left to report to
            pass


def _group_recovery_dir(views: list[View]) -> Path:
    """One view: its own store. Several: a store named after the set of views (a different
    set starts from their recorded positions, rebuilding state once)."""
    if len(views) == 1:
        return views[0]._recovery_dir()
    db = views[0]._db
    tag = hashlib.blake2b("\n".join(sorted(v._key for v in views)).encode(), digest_size=8).hexdigest()
    return Path(db.path) / "views" / str(db.branch) / GROUP_DIR_PREFIX / tag / "recovery"


def _run_dataflow(views: list[View], until: int | None, epoch_interval_s: float | None) -> None:
    """Run the dataflow maintaining ``views`` until ``until`` (None: until they are stopped)."""
    for v in views:
        v._row = None  # the registry row, read once per run (only this view writes it)
    rec = _group_recovery_dir(views)
    if (rec / "part-0.sqlite3").exists():
        damage = _check_recovery_store(rec)
        if damage is not None:
            # Detected, and harmless once dropped: without a store, each view rebuilds its
            # state from its inputs at the version its table reflects (as on a first run).
            names = ", ".join(repr(v.name) for v in views)
            _log.warning("udrflow: the recovery store of view(s) %s is damaged and is rebuilt from the inputs: %s",
                         names, damage)
            shutil.rmtree(rec, ignore_errors=True)
    if not (rec / "part-0.sqlite3").exists():
        if len(views) > 1:  # stores of other sets of views are stale now
            shutil.rmtree(rec.parent.parent, ignore_errors=True)
        rec.mkdir(parents=True, exist_ok=True)
        init_db_dir(rec, 1)
    by_key = {v._key: v for v in views}
    flow = Dataflow("udrflow_views")
    items = op.input("log", flow, _ViewSource(views, until))

    def step(state, item):  # Bytewax passes the value only: it carries its view's key
        key, version, deltas, reset = item
        view = by_key[key]
        if view.error is not None:
            return None, (version, None)
        try:
            return view._step(None if reset else state, (version, deltas))
        except Exception as exc:  # this view stops alone; None drops its (half-stepped) state
            view._fail(exc)
            return None, (version, None)

    results = op.stateful_map("ivm", items, step)
    op.output("commit", results, _ViewSink(by_key))
    try:
        run_main(flow, epoch_interval=dt.timedelta(seconds=epoch_interval_s) if epoch_interval_s else None,
                 recovery_config=RecoveryConfig(rec))
    except BaseException as exc:
        for v in views:  # a step may have failed half-way through its state
            v._live = v._adopt = None
        if not isinstance(exc, BytewaxRuntimeError):
            raise
        # Bytewax wraps what our source, step or sink raised (TableNotFoundError, a map
        # function's own error, ...) in one or more BytewaxRuntimeErrors: raise the original.
        cause = exc
        while isinstance(cause, BytewaxRuntimeError) and cause.__cause__ is not None:
            cause = cause.__cause__
        if cause is exc:
            raise
        names = ", ".join(repr(v.name) for v in views)
        cause.add_note(f"raised in the dataflow of view{'s' if len(views) > 1 else ''} {names}: {exc}")
        raise cause.with_traceback(cause.__traceback__) from None


class _ViewSource(FixedPartitionedSource):
    """One partition for all the views of a run; its items are ``(view key, (input
    version, {table: change batch}))``, which is also the key Bytewax keeps state by."""

    def __init__(self, views: list[View], until: int | None) -> None:
        self._views = views
        self._until = until

    def list_parts(self) -> list[str]:
        return ["views"]

    def build_part(self, step_id: str, for_part: str, resume_state):
        positions = _source_positions(resume_state)
        return _GroupPartition([_ViewReader(v, self._until, positions.get(v._key)) for v in self._views])


class _GroupPartition(StatefulSourcePartition):
    def __init__(self, readers: list[_ViewReader]) -> None:
        self._readers = readers
        self._engine = readers[0]._engine
        self._tables = set().union(*(r.tables for r in readers))

    def next_batch(self):
        readers = [r for r in self._readers if not r.done()]
        if not readers:
            raise StopIteration
        engine = self._engine
        seen = engine.log.version  # before polling: a commit landing during the poll ends the wait
        out = self._poll(readers)
        if out:
            return out
        if not engine.log.readonly:
            # In the writing process a commit wakes this at once (a condition variable), so
            # the views see a commit without a polling delay; the short bound keeps the
            # worker responsive to stop(). (Returning no items would cost Bytewax's 1 ms
            # back-off before the next call.)
            if engine.log.wait_for(seen + 1, VIEW_IDLE_WAIT_S):
                out = self._poll([r for r in readers if not r.done()])
        return out

    def _poll(self, readers: list[_ViewReader]) -> list:
        out = []
        shared: dict = {}  # (after, upto) -> the change batches of every table any view reads
        tables = self._tables
        for r in readers:
            try:
                items = r.poll(shared, tables)
            except Exception as exc:  # (e.g. retention passed its position): this view stops alone
                r._view._fail(exc)
                continue
            out.extend((r.key, (r.key, *item)) for item in items)
        return out

    def next_awake(self):
        if not self._engine.log.readonly:
            return None
        return utc_now() + dt.timedelta(milliseconds=VIEW_IDLE_WAKE_MS)

    def snapshot(self):
        # A failed view's position is left out: its next run rebuilds it (its state was dropped).
        positions = {r.key: r.snapshot() for r in self._readers if r._view.error is None}
        return {"positions": positions, "crc": _positions_crc(positions)}


class _ViewReader:
    """One view's side of the source: its position, its backfill, its replay alignment."""

    def __init__(self, view: View, until: int | None, resume_state: int | None) -> None:
        self._view = view
        self.key = view._key
        self._db = view._db
        self._engine = view._db._engine()
        self._until = until
        self._sources = {n.table: n for n in view._nodes if isinstance(n, Source)}
        # No snapshot: continue from the state an earlier run in this process left, if that is
        # newer; else rebuild the state from the inputs at a version the view's table already
        # reflects (or, for a new view, at the head), as one +1 change batch.
        self._position = None if resume_state is None else int(resume_state)
        live = view._live
        view._adopt = None
        self._adopting = live is not None and (self._position is None or live[1] > self._position)
        if self._adopting:
            view._adopt, self._position = live
        # A snapshot older than the recorded position (the last run committed steps after its
        # last snapshot, then died): replay up to that position as steps of their own, which
        # the sink drops, so that no step folds committed and new versions together.
        self._replay_to = view.position
        self._emitted = 0  # the last input version emitted as a step

    def done(self) -> bool:
        if self._view._stop.is_set() or self._view.error is not None:
            return True
        return self._until is not None and self._position is not None and self._position >= self._until

    def _backfill(self):
        recorded = self._view.position
        at = recorded if recorded > 0 else self._db.version
        if self._until is not None:
            at = min(at, max(self._until, recorded))
        deltas = {}
        for table, node in self._sources.items():
            rows = conform(self._db.read(table, version=at).select(node.schema.names), node.schema)
            deltas[table] = rows.append_column(pa.field(W, pa.int64()), pa.array(np.ones(rows.num_rows, np.int64)))
        self._position = at
        self._emitted = at
        return [(at, deltas, True)]  # (True: the step starts from an empty state)

    @property
    def tables(self) -> set[str]:
        return set(self._sources)

    def poll(self, shared: dict | None = None, tables: set[str] | None = None) -> list:
        """The next step's item, if the log has moved past this view's position (no waiting).
        ``shared``: change batches read by the other views of the group in this round, keyed by
        range: views at the same position read (and decode) the log once, for ``tables``."""
        if self._position is None:
            return self._backfill()
        if self._adopting:
            # A first, empty step hands the adopted state to the stateful map, so that this
            # run's snapshots hold it along with the position.
            self._adopting = False
            self._emitted = self._position
            return [(self._position, {}, False)]
        engine = self._engine
        upto = self._upto()
        if upto <= self._position:
            return []
        parts: dict[str, list[pa.Table]] = {}
        if shared is None:
            shared = {}
            batches = read_raw_changes(engine, set(self._sources), self._position, upto)
        else:
            batches = shared.get((self._position, upto))
            if batches is None:
                batches = shared[(self._position, upto)] = list(read_raw_changes(engine, tables, self._position,
                                                                                 upto))
        sources = self._sources
        for batch in batches:
            node = sources.get(batch.table)
            if node is None:
                continue
            if batch.kind == "drop_table":
                raise TableNotFoundError(f"view {self._view.name!r} reads table {batch.table!r}, which version "
                                         f"{batch.version} dropped: drop the view or recreate it")
            if batch.kind != "changes" or batch.num_rows == 0:
                continue
            part = parts.get(batch.table)
            if part is None:
                part = parts[batch.table] = []
            part.append(_source_delta(batch, node, shared))
        self._position = upto
        view = self._view
        deltas = {table: concat_deltas(p) for table, p in parts.items()}
        if not deltas and view.reached >= self._emitted and upto > self._replay_to:
            # Nothing the view reads changed (e.g. another view's result commit), and every
            # step emitted so far is committed: the view reflects ``upto`` as it is, with no
            # step through the dataflow and no commit (the sink would make none either).
            view.reached = max(view.reached, upto)
            return []
        self._emitted = upto
        return [(upto, deltas, False)]

    def _upto(self) -> int:
        engine = self._engine
        head = engine.refresh() if engine.log.readonly else engine.log.version
        if self._until is not None:
            head = min(head, self._until)
        upto = min(head, self._position + VIEW_VERSIONS_PER_STEP_MAX)
        if self._position < self._replay_to < upto:
            upto = self._replay_to
        return upto

    def snapshot(self):
        return self._position


def _source_delta(batch: RawChange, node: Source, shared: dict) -> pa.Table | SmallDelta:
    """``batch`` as the weighted batch of source ``node`` (its columns, conformed to its
    schema, and an int64 weight), built once per round for all the views whose source of
    that table has an equal schema (``shared``: the round's memo). A small commit's rows
    of plain types stay Python values (a ``SmallDelta``)."""
    out_schema = node.__dict__.get("_delta_schema")
    if out_schema is None:
        out_schema = node.__dict__["_delta_schema"] = node.schema.append(_W_FIELD)
        node.__dict__["_delta_names"] = out_schema.names
    memo = shared.get(batch)
    if memo is None:
        memo = shared[batch] = []
    for schema, delta in memo:
        if schema is out_schema or schema.equals(out_schema):
            return delta
    lists = change_lists(batch, node.schema, out_schema)
    if lists is not None and len(lists[-1]) <= SMALL_DELTA_ROWS_MAX and plain_values(lists[:-1],
                                                                                  schema_types(node.schema)):
        delta = SmallDelta(out_schema, dict(zip(node.__dict__["_delta_names"], lists, strict=True)), len(lists[-1]))
        memo.append((out_schema, delta))
        return delta
    found = change_delta(batch, node.schema, out_schema) if lists is not None else None
    if found is not None:
        delta = remember_columns(found[0], out_schema.names, found[1])
    else:
        changes = batch.change_rows()
        rows = conform(changes.select(node.schema.names), node.schema)
        w = changes.column(WEIGHT_COLUMN)
        if w.type != pa.int64():
            w = w.cast(pa.int64())
        delta = rows.append_column(_W_FIELD, w)
    memo.append((out_schema, delta))
    return delta


class _ViewSink(DynamicSink):
    def __init__(self, views: dict[str, View]) -> None:
        self._views = views

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _ViewSinkPartition:
        return _ViewSinkPartition(self._views)


class _ViewSinkPartition(StatelessSinkPartition):
    def __init__(self, views: dict[str, View]) -> None:
        self._views = views

    def write_batch(self, items) -> None:
        # Several steps arrived together: per view, one change reflecting the last of them;
        # all views' changes in one commit.
        steps: dict[str, list] = {}
        for key, step in items:
            if step[1] is None or self._views[key].error is not None:
                continue  # the view failed in this run
            steps.setdefault(key, []).append(step)
        entries = []
        for key, mine in steps.items():
            view = self._views[key]
            version = max(v for v, _d in mine)
            # Steps at or below the recorded position were committed before a restart: drop
            # them before folding the rest into one change (else they would apply twice).
            if view._row is None:
                view._row = dict(registry_rows(view._db)[view.name])
            recorded = int(view._row["input_version"])
            deltas = [d for v, d in mine if v > recorded and d.num_rows]
            if len(deltas) > 1:
                delta = consolidate(pa.concat_tables([arrow(d) for d in deltas]))
            else:
                delta = deltas[0] if deltas else empty_delta(view.definition.schema)
            entries.append((view, version, delta, False))
        if not entries:
            return
        db = entries[0][0]._db
        try:
            _commit_views(db, entries)
        except Exception:
            # One view's results may be what failed: commit each alone, and stop only those
            # that fail by themselves.
            for entry in entries:
                try:
                    _commit_views(db, [entry])
                except Exception as exc:
                    entry[0]._fail(exc)


# ---- the registry: create, list, drop ----------------------------------------------------


class Views:
    """``db.views``: the views of a database. ``db.views["name"]``, ``list()``, ``refresh()``
    (all, inputs before the views that read them), ``run()`` / ``stop()`` (all)."""

    def __init__(self, db) -> None:
        self._db = db
        self._open: dict[str, View] = {}

    def _load(self, name: str, row: dict) -> View:
        created = self._db._engine().table_def(name, self._db.version).created
        view = self._open.get(name)
        if view is None or view.created != created:
            view = View(self._db, name, from_json(json.loads(row["definition"])), created)
            self._open[name] = view
        return view

    def __getitem__(self, name: str) -> View:
        row = registry_rows(self._db).get(name)
        if row is None:
            known = ", ".join(sorted(registry_rows(self._db))) or "none"
            raise TableNotFoundError(f"view {name!r} does not exist (views: {known})")
        return self._load(name, row)

    def __contains__(self, name: str) -> bool:
        return name in registry_rows(self._db)

    def names(self) -> list[str]:
        return sorted(registry_rows(self._db))

    def list(self) -> list[dict]:
        """One dict per view: name, inputs, position (input version reflected), lag, running."""
        head = self._db.version
        out = []
        for name, row in sorted(registry_rows(self._db).items()):
            view = self._load(name, row)
            error = view.error
            out.append({"name": name, "inputs": sorted(view.definition.inputs()), "created": view.created,
                        "error": None if error is None else (f"view {name!r} stopped: {type(error).__name__}: "
                                                             f"{' '.join(str(error).split())}"),
                        "position": int(row["input_version"]),
                        # A running view that found nothing to change records no new position.
                        "lag": _input_commits(self._db, view.definition.inputs(),
                                              max(int(row["input_version"]), view.reached), head),
                        "running": view.running})
        return out

    def ordered(self) -> list[View]:
        """Every view, each after the views it reads."""
        rows = registry_rows(self._db)
        views = {n: self._load(n, r) for n, r in rows.items()}
        done: list[View] = []
        seen: set[str] = set()

        def visit(name: str) -> None:
            if name in seen:
                return
            seen.add(name)
            for dep in views[name].definition.inputs():
                if dep in views:
                    visit(dep)
            done.append(views[name])

        for n in sorted(views):
            visit(n)
        return done

    def refresh(self) -> dict[str, int]:
        return {v.name: v.refresh() for v in self.ordered()}

    def run(self, names: list[str] | None = None) -> None:
        """Keep the views (all, or those named) that are not running yet current, together in
        one background thread: one source reads the log for all of them and each round's
        results go into one commit. ``stop()`` on any of them stops them all."""
        wanted = None if names is None else {self[n].name for n in names}
        views = [v for v in self.ordered() if not v.running and (wanted is None or v.name in wanted)]
        if views:
            _Group(views).start()

    def stop(self) -> None:
        """Stop every running view; re-raise the first error any of them failed with."""
        first = None
        for v in list(self._open.values()):
            try:
                v.stop()
            except BaseException as exc:  # stop the others before raising
                first = first or exc
        if first is not None:
            raise first

    def create(self, name: str, definition: Stream, *, refresh: bool = True) -> View:
        db = self._db
        check_new_name(name, "view")
        if not isinstance(definition, Stream):
            raise UsageError(f"create_view needs a definition built from db.stream(...): got {definition!r}")
        if name.startswith("__udrflow"):
            raise UsageError(f"view name {name!r} is reserved")
        if name in definition.inputs():
            raise UsageError(f"view {name!r} cannot read itself")
        if name in db.tables():
            raise TableExistsError(f"cannot create view {name!r}: a table with that name exists")
        for t in definition.inputs():
            db.schema(t)  # raises TableNotFoundError naming the missing input
        text = json.dumps(definition.to_json())
        from_json(json.loads(text))  # a definition that does not round-trip must fail now, not at restart
        shutil.rmtree(Path(db.path) / "views" / str(db.branch) / name, ignore_errors=True)  # a leftover of a dropped namesake
        _view_writer.active = True
        try:
            if REGISTRY not in db.tables():
                try:
                    db.create_table(REGISTRY, REGISTRY_SCHEMA, primary_key=["name"])
                except TableExistsError:
                    pass  # another thread created it first
            with db.transaction() as tx:
                tx.create_table(name, definition.schema, primary_key=definition.primary_key() or None)
                tx.upsert(REGISTRY, [{"name": name, "definition": text, "input_version": 0}])
                tx.meta = {"view": name, "create_view": True}
        finally:
            _view_writer.active = False
        view = self._load(name, {"definition": text})
        if refresh:
            view.refresh()
        return view

    def drop(self, name: str) -> int:
        view = self[name]
        group = view._group
        others = [] if group is None else [v for v in group.views if v is not view]
        view.stop()  # a view run together with others stops them too: they restart below
        db = self._db
        _view_writer.active = True
        try:
            with db.transaction() as tx:
                tx.drop_table(name)
                tx.delete(REGISTRY, keys=[{"name": name}])
                tx.meta = {"view": name, "drop_view": True}
        finally:
            _view_writer.active = False
        self._open.pop(name, None)
        shutil.rmtree(Path(db.path) / "views" / str(db.branch) / name, ignore_errors=True)
        if others:
            _Group(others).start()
        return tx.version
