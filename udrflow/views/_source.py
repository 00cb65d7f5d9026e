"""The change stream as a Bytewax source: the building block of incremental views.

``ChangeSource`` is a ``FixedPartitionedSource`` with one partition per table. Each
partition emits the table's :class:`~udrflow._changefeed.ChangeBatch` items in version
order, a whole commit's changes as one item (so Bytewax sees large Arrow batches, not
rows), and its state is the last version it emitted: with Bytewax recovery a restarted
dataflow resumes after it, and a partition never emits a version twice.

Bytewax epochs are wall-clock intervals, not log positions, so every item carries its
log version (``batch.version``); downstream operators align on that, never on epochs.

Example::

    import bytewax.operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.testing import run_main
    from udrflow.views import ChangeSource

    flow = Dataflow("orders_changes")
    batches = op.input("in", flow, ChangeSource(db, ["orders"], from_version=0, until_version=db.version))
    op.inspect("show", batches)
    run_main(flow)
"""

from __future__ import annotations

import datetime as dt
import os

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from udrflow._changefeed import ChangeBatch, _check_start, read_changes
from udrflow._clock import utc_now
from udrflow._names import check_name
from udrflow.errors import UsageError

SOURCE_VERSIONS_PER_BATCH_MAX = 256   # commits read per next_batch call (bounds one call's memory)
SOURCE_IDLE_WAKE_MS = 1               # how soon an idle partition looks at the log again


class ChangeSource(FixedPartitionedSource):
    """Change batches of ``tables`` after ``from_version``, one partition per table.

    - ``db``: an open ``udrflow.Database`` (same process), or a database path, which each
      worker opens read-only (so a dataflow may run in its own process next to the writer).
    - ``from_version``: the first run starts after this version (0: from the beginning);
      a run resumed by Bytewax recovery starts after the version in its snapshot instead.
    - ``until_version``: stop once this version is emitted (None: follow the tail forever).
    - ``include_ddl``: also emit ``create_table``/``add_column``/``drop_table`` batches.
    """

    def __init__(self, db, tables: list[str], from_version: int = 0, *, until_version: int | None = None,
                 include_ddl: bool = False) -> None:
        if isinstance(tables, str):
            tables = [tables]
        if not tables:
            raise UsageError("ChangeSource needs at least one table")
        self._tables = [check_name(t, "table") for t in tables]
        self._db = db
        self._from_version = from_version
        self._until_version = until_version
        self._include_ddl = include_ddl

    def list_parts(self) -> list[str]:
        return list(self._tables)

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _TablePartition:
        db = self._db
        owned = False
        if isinstance(db, (str, os.PathLike)):
            import udrflow  # a worker process opens its own read-only handle

            db = udrflow.open(db, readonly=True, create=False)
            owned = True
        engine = db._engine()
        after = self._from_version if resume_state is None else resume_state
        if engine.log.readonly:
            engine.refresh()
        _check_start(engine, {for_part}, after)
        return _TablePartition(db, engine, for_part, after, self._until_version, self._include_ddl, owned)


class _TablePartition(StatefulSourcePartition):
    def __init__(self, db, engine, table: str, after: int, until: int | None, include_ddl: bool,
                 owned: bool) -> None:
        self._db = db
        self._engine = engine
        self._table = table
        self._position = after
        self._until = until
        self._include_ddl = include_ddl
        self._owned = owned
        self._idle = False

    def next_batch(self) -> list[ChangeBatch]:
        if self._until is not None and self._position >= self._until:
            raise StopIteration
        log = self._engine.log
        head = self._engine.refresh() if log.readonly else log.version
        if self._until is not None:
            head = min(head, self._until)
        upto = min(head, self._position + SOURCE_VERSIONS_PER_BATCH_MAX)
        if upto <= self._position:
            self._idle = True
            return []
        out = [b for b in read_changes(self._engine, {self._table}, self._position, upto)
               if self._include_ddl or b.kind == "changes"]
        self._position = upto
        self._idle = False
        return out

    def next_awake(self) -> dt.datetime | None:
        if not self._idle:
            return None
        return utc_now() + dt.timedelta(milliseconds=SOURCE_IDLE_WAKE_MS)

    def snapshot(self) -> int:
        return self._position

    def close(self) -> None:
        if self._owned:
            self._db.close()
