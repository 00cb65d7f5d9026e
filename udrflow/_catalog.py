"""The catalog: which tables exist at each version, with which schema and key, and which
versions changed each table.

It is derived from the log only (DDL is a commit like any other), rebuilt at open by
reading every commit's small header, and extended as commits are made. A table is
identified by its name *and* the version that created it (``created``), so a table that
is dropped and created again is a new table with its own history.
"""

from __future__ import annotations

import array
import bisect
from dataclasses import dataclass
from functools import cached_property

import msgspec
import pyarrow as pa

try:
    import cython
except ImportError:  # running from source without Cython: see udrflow/_cython_shim.py
    from udrflow import _cython_shim as cython

from udrflow._commit import AddColumn, Changes, Commit, CreateTable, DropTable, value_columns
from udrflow._pyrows import encodable
from udrflow._schema import schema_from_bytes, schema_to_bytes
from udrflow._sealed import seal, unseal
from udrflow.errors import CorruptionError


@dataclass(frozen=True)
class TableDef:
    name: str
    schema: pa.Schema
    primary_key: tuple[str, ...]
    created: int        # version of the create_table commit
    defined: int        # version of the DDL that gave this schema

    @property
    def keyed(self) -> bool:
        return bool(self.primary_key)

    # Derived once per definition (the commit path asks on every write). Shared objects:
    # callers must not mutate them.
    @cached_property
    def pk(self) -> list[str]:
        """``primary_key`` as a list."""
        return list(self.primary_key)

    @cached_property
    def ident(self) -> tuple[str, int]:
        """(name, created): the table's identity across drops and re-creations."""
        return (self.name, self.created)

    @cached_property
    def value_columns(self) -> list[tuple[int, str]]:
        """``_commit.value_columns`` of this table: its non-key columns, for ``make_row_update``."""
        return value_columns(self.names, self.pk)

    @cached_property
    def encodable(self) -> bool:
        """Whether rows of this schema may be stored as msgpack values (``_pyrows.encodable``)."""
        return encodable(self.schema)

    @cached_property
    def names(self) -> list[str]:
        """The schema's column names (``Schema.names`` builds a new list on every call)."""
        return self.schema.names


class _TableSnap(msgspec.Struct):
    name: str
    schema: bytes
    primary_key: list[str]
    created: int
    defined: int
    rows: int


class _CatalogSnap(msgspec.Struct):
    version: int
    tables: list[_TableSnap]


_snap_encoder = msgspec.msgpack.Encoder()
_snap_decoder = msgspec.msgpack.Decoder(_CatalogSnap)


@cython.cclass
class _History:
    """One table name's definitions over versions, and the versions that changed its rows."""

    # An extension type when compiled (see udrflow/_cython_shim.py): fields, not a dict.
    versions = cython.declare(list, visibility="public")
    defs = cython.declare(list, visibility="public")
    change_versions = cython.declare(object, visibility="public")
    change_rows_cum = cython.declare(object, visibility="public")
    rows_cum = cython.declare(object, visibility="public")
    rows_base = cython.declare(object, visibility="public")

    def __init__(self) -> None:
        self.versions: list[int] = []           # version at which defs[i] takes effect
        self.defs: list[TableDef | None] = []   # None: dropped
        self.change_versions = array.array("Q")
        # Running sums, so a range costs two lookups however long the history:
        self.change_rows_cum = array.array("Q")  # rows changed (max of in/out per commit) up to each change
        self.rows_cum = array.array("q")         # table size (rows_in - rows_out summed) after each change
        self.rows_base = 0                       # rows before the first change held here (snapshots)

    def add_change(self, version: int, rows_in: int, rows_out: int) -> None:
        self.change_versions.append(version)
        self.change_rows_cum.append((self.change_rows_cum[-1] if self.change_rows_cum else 0)
                                    + max(rows_in, rows_out))
        self.rows_cum.append((self.rows_cum[-1] if self.rows_cum else self.rows_base) + rows_in - rows_out)

    def at(self, version: int) -> TableDef | None:
        i = bisect.bisect_right(self.versions, version) - 1
        return self.defs[i] if i >= 0 else None


@cython.cclass
class Catalog:
    # An extension type when compiled (see udrflow/_cython_shim.py): ``self._x`` is a field.
    _tables = cython.declare(dict, visibility="public")
    version = cython.declare(object, visibility="public")

    def __init__(self) -> None:
        self._tables: dict[str, _History] = {}
        self.version = 0

    def apply(self, version: int, commit: Commit) -> None:
        """Take the DDL and change records of ``commit`` (already validated) into the catalog."""
        tables = self._tables
        for op in commit.ops:
            hist = tables.get(op.table)
            if hist is None:  # (setdefault would build a _History on every commit)
                hist = tables[op.table] = _History()
            if isinstance(op, Changes):
                hist.add_change(version, op.rows_in, op.rows_out)
            elif isinstance(op, CreateTable):
                hist.versions.append(version)
                hist.defs.append(TableDef(op.table, schema_from_bytes(op.schema), tuple(op.primary_key),
                                          version, version))
            elif isinstance(op, AddColumn):
                current = hist.defs[-1] if hist.defs else None
                if current is None:
                    raise CorruptionError(f"commit {version} adds a column to table {op.table!r}, which does not exist",
                                          version=version)
                hist.versions.append(version)
                hist.defs.append(TableDef(op.table, schema_from_bytes(op.schema), current.primary_key,
                                          current.created, version))
            elif isinstance(op, DropTable):
                hist.versions.append(version)
                hist.defs.append(None)
        self.version = max(self.version, version)

    @cython.locals(hist=_History)
    def add_change(self, name: str, version: int, rows_in: int, rows_out: int) -> None:
        """``apply`` of a commit that only changed rows of table ``name`` (the small commit)."""
        hist = self._tables.get(name)
        if hist is None:
            hist = self._tables[name] = _History()
        # (_History.add_change, inlined)
        hist.change_versions.append(version)
        cum = hist.change_rows_cum
        cum.append((cum[-1] if cum else 0) + (rows_in if rows_in > rows_out else rows_out))
        cum = hist.rows_cum
        cum.append((cum[-1] if cum else hist.rows_base) + rows_in - rows_out)
        if version > self.version:
            self.version = version

    def apply_changes_only(self, version: int, header) -> None:
        """Fast path at open for commits without DDL: record which tables they changed."""
        tables = self._tables
        for op in header.ops:
            hist = tables.get(op.table)
            if hist is None:
                hist = tables[op.table] = _History()
            hist.add_change(version, op.rows_in, op.rows_out)
        self.version = max(self.version, version)

    def row_count(self, name: str, version: int) -> int:
        """Rows of table ``name`` at ``version``, from the commit headers alone."""
        hist = self._tables.get(name)
        tdef = None if hist is None else hist.at(version)
        if tdef is None:
            return 0
        cv = hist.change_versions
        lo = bisect.bisect_right(cv, tdef.created)
        hi = bisect.bisect_right(cv, version)
        if hi == lo:
            return hist.rows_base if lo == 0 else 0
        start = hist.rows_cum[lo - 1] if lo > 0 else hist.rows_base
        return (hist.rows_base if lo == 0 else 0) + hist.rows_cum[hi - 1] - start

    # ---- snapshots: the catalog as of a version, so the log before it can be removed ---

    def snapshot(self, version: int) -> bytes:
        tables = []
        for name in self.names(version):
            tdef = self.get(name, version)
            tables.append(_TableSnap(name, schema_to_bytes(tdef.schema), list(tdef.primary_key), tdef.created,
                                     tdef.defined, self.row_count(name, version)))
        return seal(_snap_encoder.encode(_CatalogSnap(version, tables)))

    @classmethod
    def from_snapshot(cls, data: bytes, path: str) -> Catalog:
        try:
            snap = _snap_decoder.decode(unseal(data, path, "catalog snapshot"))
        except msgspec.DecodeError as exc:
            raise CorruptionError(f"catalog snapshot {path} does not decode: {exc}", path) from exc
        catalog = cls()
        for t in snap.tables:
            hist = catalog._tables.setdefault(t.name, _History())
            hist.versions.append(t.defined)
            hist.defs.append(TableDef(t.name, schema_from_bytes(t.schema), tuple(t.primary_key), t.created, t.defined))
            hist.rows_base = t.rows
        catalog.version = snap.version
        return catalog

    @cython.locals(hist=_History)
    def get(self, name: str, version: int) -> TableDef | None:
        hist = self._tables.get(name)
        if hist is None:
            return None
        versions = hist.versions  # (hist.at, inlined: this runs several times per commit)
        if versions and version >= versions[-1]:
            return hist.defs[-1]  # the newest definition: what the writer asks for
        i = bisect.bisect_right(versions, version) - 1
        return hist.defs[i] if i >= 0 else None

    def names(self, version: int) -> list[str]:
        return sorted(n for n, h in self._tables.items() if h.at(version) is not None)

    def change_versions(self, name: str, after: int, upto: int) -> list[int]:
        """Versions in (after, upto] that changed rows of table ``name``."""
        hist = self._tables.get(name)
        if hist is None:
            return []
        cv = hist.change_versions
        lo = bisect.bisect_right(cv, after)
        hi = bisect.bisect_right(cv, upto)
        return cv[lo:hi].tolist()

    def changed_rows(self, name: str, after: int, upto: int) -> tuple[int, int]:
        """(commits, rows changed) for table ``name`` in (after, upto]: the tail a read replays.
        A commit counts the larger of its inserted and deleted rows (an update counts once)."""
        hist = self._tables.get(name)
        if hist is None:
            return 0, 0
        cv = hist.change_versions
        lo = bisect.bisect_right(cv, after)
        hi = bisect.bisect_right(cv, upto)
        if hi == lo:
            return 0, 0
        cum = hist.change_rows_cum
        return hi - lo, cum[hi - 1] - (cum[lo - 1] if lo > 0 else 0)
