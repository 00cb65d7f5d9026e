"""Checkpoints: a table's whole state at one version, as content-defined chunks plus a
manifest, so a read at V costs the nearest checkpoint plus a short log tail, however
deep the history.

Chunk boundaries are chosen by the data, not by position. Rows of a keyed table are
sorted by key and a chunk ends after a row whose key hash has its low
``CHUNK_ROWS_TARGET_LOG2`` bits zero (with a minimum and a maximum chunk size). An update
to a few keys therefore changes only the chunks covering those keys; every other chunk
is byte-identical to the one the previous checkpoint wrote, has the same BLAKE3 name,
and is stored once. Tables without a key keep insertion order and cut every
2**CHUNK_ROWS_TARGET_LOG2 rows, so an append-only table shares all its full chunks.

A checkpoint of a keyed table that has changed little since its last full checkpoint is
a *delta*: net changes (final rows of the changed keys, key-sorted and chunked the same
way, and the deleted keys), so a checkpoint every few hundred commits costs what changed,
not a copy of the table. A delta holds the net changes since its ``parent``: the previous
delta of the same full checkpoint, so writing one costs only the commits since that one;
every DELTA_CHAIN_MAX deltas, one holds everything since the full checkpoint again
(``parent`` 0), so a read applies at most that many. Reading a delta is its full
checkpoint plus the chain's net changes (``_fold.net_keyed`` + ``apply_net``). A full
checkpoint is written once the changes reach DELTA_ROWS_MAX_RATIO of the table.

A manifest lives at ``checkpoints/<branch>/<table>/<created>-<version>.ckpt`` and is
written durably after its chunks.
"""

from __future__ import annotations

import bisect
import os
import threading
from collections.abc import Callable

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from udrflow._catalog import TableDef
from udrflow._chunks import ChunkStore, decode_table
from udrflow._ext._keyhash import hash_large_binary
from udrflow._fileio import FileIO, make_dirs_durably, remove_file, write_file_durably
from udrflow._fold import (
    NetChanges,
    Part,
    apply_net,
    apply_patch,
    find_changes,
    first_key_integer_like,
    net_keyed,
    work_pool,
)
from udrflow._schema import conform as conform_to
from udrflow._schema import schema_from_bytes, schema_to_bytes
from udrflow._sealed import seal, unseal
from udrflow.errors import CorruptionError, storage_error_from_os

CHUNK_ROWS_TARGET_LOG2 = 14       # ~16k rows per chunk on average
CHUNK_ROWS_MIN = 1 << 10
CHUNK_ROWS_MAX = 1 << 17
DELTA_ROWS_MAX_RATIO = 0.25  # a delta holds at most this share of the table's rows
DELTA_CHAIN_MAX = 4  # deltas in a chain from a full checkpoint (reads apply at most this many)
_SUFFIX = ".ckpt"


class Manifest(msgspec.Struct):
    table: str
    created: int
    version: int
    schema: bytes
    primary_key: list[str]
    chunks: list[str]          # full: the table's rows; delta: the net changed rows
    chunk_rows: list[int]
    rows: int                  # rows of the table at ``version``
    base: int = 0              # delta: the version of the full checkpoint it applies to
    deleted: list[str] = []    # delta: chunks of the keys deleted since ``parent``
    parent: int = 0            # delta: the delta (of the same base) whose state it changes; 0: ``base``


_enc = msgspec.msgpack.Encoder()
_dec = msgspec.msgpack.Decoder(Manifest)


def key_hashes(table: pa.Table, pk: list[str]) -> np.ndarray:
    """A uint64 hash per row of the key columns, vectorized."""
    h = np.zeros(table.num_rows, dtype=np.uint64)
    for name in pk:
        col = table.column(name).combine_chunks()
        t = col.type
        if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t) \
                or pa.types.is_large_binary(t):
            arr = col.cast(pa.large_binary())
            _, offsets, data = arr.buffers()
            offs = np.frombuffer(offsets, dtype=np.int64)
            raw = np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, dtype=np.uint8)
            vals = np.frombuffer(hash_large_binary(offs, raw, arr.offset, len(arr)), dtype=np.uint32).astype(np.uint64)
        else:
            vals = pc.cast(col, pa.int64(), safe=False).to_numpy(zero_copy_only=False).view(np.uint64)
        with np.errstate(over="ignore"):
            h = (h ^ vals) * np.uint64(0x9E3779B97F4A7C15)
            h ^= h >> np.uint64(29)
    return h


def chunk_bounds(table: pa.Table, pk: list[str]) -> list[tuple[int, int]]:
    """(offset, length) of each chunk of ``table`` (already sorted by key if keyed)."""
    n = table.num_rows
    if n == 0:
        return []
    if not pk:
        step = 1 << CHUNK_ROWS_TARGET_LOG2
        return [(i, min(step, n - i)) for i in range(0, n, step)]
    mask = np.uint64((1 << CHUNK_ROWS_TARGET_LOG2) - 1)
    candidates = np.flatnonzero((key_hashes(table, pk) & mask) == 0) + 1  # cut after these rows
    bounds, start = [], 0
    for cut in candidates.tolist():
        while cut - start > CHUNK_ROWS_MAX:
            bounds.append((start, CHUNK_ROWS_MAX))
            start += CHUNK_ROWS_MAX
        if cut - start >= CHUNK_ROWS_MIN:
            bounds.append((start, cut - start))
            start = cut
    while n - start > CHUNK_ROWS_MAX:
        bounds.append((start, CHUNK_ROWS_MAX))
        start += CHUNK_ROWS_MAX
    if n > start:
        bounds.append((start, n - start))
    return bounds


class CheckpointStore:
    def __init__(self, root: str, io: FileIO, chunks: ChunkStore) -> None:
        self.root = root
        self._io = io
        self.chunks = chunks
        self._lock = threading.Lock()
        self._index: dict[tuple[str, int], list[int]] = {}  # (table, created) -> sorted versions
        self._bases: dict[tuple[str, int, int], int] = {}   # manifest -> its base (0: full), read lazily
        self._index = self._scan()

    def _scan(self) -> dict[tuple[str, int], list[int]]:
        index: dict[tuple[str, int], list[int]] = {}
        if os.path.isdir(self.root):
            for table in os.listdir(self.root):
                tdir = os.path.join(self.root, table)
                try:
                    names = os.listdir(tdir)
                except FileNotFoundError:  # (a reader beside the writer's gc)
                    continue
                for name in names:
                    if not name.endswith(_SUFFIX) or ".tmp-" in name:
                        continue
                    created, _, version = name[: -len(_SUFFIX)].partition("-")
                    index.setdefault((table, int(created)), []).append(int(version))
            for versions in index.values():
                versions.sort()
        return index

    def reload(self) -> None:
        """Readers: list the manifests on disk again (the writer adds some and its gc
        removes others)."""
        index = self._scan()
        with self._lock:
            self._index = index

    def _path(self, table: str, created: int, version: int) -> str:
        return os.path.join(self.root, table, f"{created:020d}-{version:020d}{_SUFFIX}")

    def nearest(self, tdef: TableDef, version: int) -> int | None:
        """The latest checkpoint version <= ``version`` of this table (this incarnation)."""
        with self._lock:
            versions = self._index.get((tdef.name, tdef.created), [])
            i = bisect.bisect_right(versions, version)
            return versions[i - 1] if i else None

    def versions(self, table: str, created: int) -> list[int]:
        with self._lock:
            return list(self._index.get((table, created), []))

    def manifest(self, table: str, created: int, version: int) -> Manifest:
        path = self._path(table, created, version)
        try:
            with open(path, "rb") as f:
                return _dec.decode(unseal(f.read(), path, "checkpoint manifest"))
        except FileNotFoundError as exc:
            raise CorruptionError(f"checkpoint manifest {path} is missing", path) from exc
        except msgspec.DecodeError as exc:
            raise CorruptionError(f"checkpoint manifest {path} does not decode: {exc}", path) from exc

    def read(self, tdef: TableDef, version: int) -> pa.Table:
        """The table as checkpointed at ``version``, conformed to ``tdef``'s schema."""
        m = self.manifest(tdef.name, tdef.created, version)
        if m.base:
            pk = list(tdef.primary_key)
            rows, deleted = net_keyed(self.chain_events(tdef, version), pk, tdef.schema)
            # The base is a full checkpoint: written sorted by key.
            table = apply_net(self.read(tdef, m.base), rows, deleted, pk, tdef.schema, base_sorted=True)
            if table.num_rows != m.rows:
                path = self._path(tdef.name, tdef.created, version)
                raise CorruptionError(f"delta checkpoint {path} gives {table.num_rows} rows: its manifest says "
                                      f"{m.rows}", path)
            return table
        schema = schema_from_bytes(m.schema)
        # Decoding (zstd) releases the GIL: spread a checkpoint's chunks over the cores.
        parts = list(work_pool().map(self.chunks.get_table, m.chunks)) if len(m.chunks) > 1 else \
            [self.chunks.get_table(h) for h in m.chunks]
        table = pa.concat_tables(parts) if parts else schema.empty_table()
        if table.num_rows != m.rows:
            raise CorruptionError(f"checkpoint {self._path(tdef.name, tdef.created, version)} holds {table.num_rows} "
                                  f"rows: its manifest says {m.rows}", self._path(tdef.name, tdef.created, version))
        return conform_to(table, tdef.schema)

    def read_applied(self, tdef: TableDef, version: int,
                     net: Callable[[], tuple[pa.Table, pa.Table]]) -> pa.Table:
        """The full checkpoint at ``version`` with net changes applied, as ``apply_net`` would:
        ``net()`` gives them (``_fold.net_keyed``'s rows and deleted keys) and runs on this
        thread while the pool decodes the chunks. A worker that decodes a chunk once they are
        known also finds where they fall in it (``_fold.find_changes``; the chunks decoded
        before are searched afterwards); then ``_fold.apply_patch`` decides once which
        columns change and writes them (in place for fixed-width ones), and the rows of keys
        no chunk holds are appended.
        ``net`` should not use the pool: its tasks would wait behind the decoding.

        A chunk the changes do not touch is kept as decoded, and in one they touch only the
        columns that changed are written (in place for fixed-width ones: the chunks are
        decoded for this read alone, not taken from the chunk cache), so a read after many
        small updates costs about what a read of the checkpoint alone does, plus the changes."""
        m = self.manifest(tdef.name, tdef.created, version)
        pk = list(tdef.primary_key)
        if m.base or not first_key_integer_like(tdef.schema, pk):
            rows, deleted = net()
            return apply_net(self.read(tdef, version), rows, deleted, pk, tdef.schema, base_sorted=True)
        ready = threading.Event()
        prepared: list[NetChanges] = []

        def find(chunk: pa.Table) -> list[Part]:
            # A full checkpoint is sorted by key: each chunk is searched by bisection.
            return find_changes(chunk, prepared[0], table_sorted=True)

        def load(digest: str) -> tuple[int, pa.Table, list[Part] | None]:
            # Decoded without the chunk cache: the chunk may be changed here, and then its
            # arrays must be ours alone.
            data = self.chunks.get(digest)
            try:
                chunk = decode_table(data)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                path = self.chunks.path_of(digest)
                raise CorruptionError(f"chunk {digest} at {path} is not an Arrow IPC stream: {exc}", path) from exc
            n = chunk.num_rows
            chunk = conform_to(chunk, tdef.schema)
            if not ready.is_set() or not prepared:
                # The changes are not known yet (or there are none): the worker goes on
                # decoding rather than wait; this chunk is searched once they are.
                return n, chunk, None
            return n, chunk, find(chunk)

        pool = work_pool()
        futures = [pool.submit(load, h) for h in m.chunks]
        try:
            rows, deleted = net()
            if rows.num_rows or deleted.num_rows:
                prepared.append(NetChanges(conform_to(rows, tdef.schema), deleted, pk))
        finally:
            ready.set()  # set after ``prepared``: a worker that sees it set may use it
        decoded = [f.result() for f in futures]
        total = sum(n for n, _, _ in decoded)
        if total != m.rows:
            path = self._path(tdef.name, tdef.created, version)
            raise CorruptionError(f"checkpoint {path} holds {total} rows: its manifest says {m.rows}", path)
        if not prepared:
            return pa.concat_tables([t for _, t, _ in decoded]) if decoded else tdef.schema.empty_table()
        late = {i: pool.submit(find, t) for i, (_, t, found) in enumerate(decoded) if found is None}
        parts = [p for i, (_, _, found) in enumerate(decoded) for p in (late[i].result() if i in late else found)]
        # The chunks were decoded for this read alone: their columns may be written in place.
        batches, used = apply_patch(parts, prepared[0], owned=True, pool=pool)
        kept = pa.Table.from_batches(batches, schema=tdef.schema) if batches else tdef.schema.empty_table()
        return prepared[0].with_new_rows(kept, used, tdef.schema)

    def chain(self, tdef: TableDef, version: int) -> list[Manifest]:
        """The delta at ``version`` and the deltas it builds on, oldest first (the full
        checkpoint they all apply to is not included)."""
        out = []
        m = self.manifest(tdef.name, tdef.created, version)
        while True:
            out.append(m)
            if not m.parent or m.parent == m.base:
                break
            if len(out) > DELTA_CHAIN_MAX or not m.base < m.parent < m.version:
                path = self._path(tdef.name, tdef.created, m.version)
                raise CorruptionError(f"delta checkpoint {path} has parent {m.parent}: expected a delta after its "
                                      f"base {m.base}, at most {DELTA_CHAIN_MAX} deep", path)
            m = self.manifest(tdef.name, tdef.created, m.parent)
            if m.base != out[-1].base:
                path = self._path(tdef.name, tdef.created, m.version)
                raise CorruptionError(f"checkpoint {path} is the parent of delta {out[-1].version} but has base "
                                      f"{m.base}: expected {out[-1].base}", path)
        return out[::-1]

    def chain_events(self, tdef: TableDef, version: int, *, parallel: bool = True) -> list[tuple[int, pa.Table]]:
        """The weighted events (``_fold``) of the delta chain at ``version``, oldest first.
        ``parallel=False``: without the decode pool (see ``read_applied``)."""
        events: list[tuple[int, pa.Table]] = []
        for m in self.chain(tdef, version):
            rows, deleted = self.read_delta(tdef, m, parallel=parallel)
            events += [(-1, deleted), (1, rows)]
        return events

    def read_delta(self, tdef: TableDef, m: Manifest, *, parallel: bool = True) -> tuple[pa.Table, pa.Table]:
        """(net rows, deleted keys) of one delta checkpoint (since its parent), conformed to ``tdef``."""
        pk = list(tdef.primary_key)
        key_schema = pa.schema([tdef.schema.field(k) for k in pk])
        if parallel and len(m.chunks) > 1:
            parts = list(work_pool().map(self.chunks.get_table, m.chunks))
        else:
            parts = [self.chunks.get_table(h) for h in m.chunks]
        rows = conform_to(pa.concat_tables(parts), tdef.schema) if parts else tdef.schema.empty_table()
        gone = [self.chunks.get_table(h) for h in m.deleted]
        deleted = pa.concat_tables(gone).cast(key_schema) if gone else key_schema.empty_table()
        return rows, deleted

    def base_of(self, tdef: TableDef, version: int) -> int:
        """0 for a full checkpoint, else the version of the full checkpoint a delta needs."""
        key = (tdef.name, tdef.created, version)
        base = self._bases.get(key)
        if base is None:
            base = self._bases[key] = self.manifest(tdef.name, tdef.created, version).base
        return base

    def nearest_full(self, tdef: TableDef, version: int) -> int | None:
        with self._lock:
            versions = list(self._index.get((tdef.name, tdef.created), []))
        for v in reversed(versions[: bisect.bisect_right(versions, version)]):
            if self.base_of(tdef, v) == 0:
                return v
        return None

    def write_delta(self, tdef: TableDef, version: int, base: int, rows: pa.Table, deleted: pa.Table,
                    table_rows: int, parent: int = 0) -> Manifest:
        pk = list(tdef.primary_key)
        if rows.num_rows:
            rows = rows.take(pc.sort_indices(rows, sort_keys=[(k, "ascending") for k in pk]))
        rows = rows.combine_chunks()
        bounds = chunk_bounds(rows, pk)
        # Pinned until the manifest is durable: a gc of another branch may sweep meanwhile.
        digests = self.chunks.put_tables([rows.slice(o, n) for o, n in bounds], pin=True)
        gone: list[str] = []
        try:
            if deleted.num_rows:
                gone = self.chunks.put_tables([deleted.combine_chunks()], pin=True)
            m = Manifest(tdef.name, tdef.created, version, schema_to_bytes(tdef.schema), pk, digests,
                         [n for _, n in bounds], table_rows, base, gone, parent)
            return self._record(m)
        finally:
            self.chunks.unpin(digests + gone)

    def write(self, tdef: TableDef, version: int, table: pa.Table) -> Manifest:
        pk = list(tdef.primary_key)
        if pk and table.num_rows:
            table = table.take(pc.sort_indices(table, sort_keys=[(k, "ascending") for k in pk]))
        table = table.combine_chunks()
        bounds = chunk_bounds(table, pk)
        digests = self.chunks.put_tables([table.slice(o, n) for o, n in bounds], pin=True)
        try:
            return self.adopt(tdef, version, digests, [n for _, n in bounds])
        finally:
            self.chunks.unpin(digests)

    def adopt(self, tdef: TableDef, version: int, digests: list[str], chunk_rows: list[int]) -> Manifest:
        """Record a checkpoint made of chunks already stored (and durable): a bulk load
        written in the checkpoint layout becomes the table's checkpoint for free."""
        m = Manifest(tdef.name, tdef.created, version, schema_to_bytes(tdef.schema), list(tdef.primary_key),
                     digests, chunk_rows, sum(chunk_rows))
        return self._record(m)

    def _record(self, m: Manifest) -> Manifest:
        version = m.version
        path = self._path(m.table, m.created, version)
        try:
            make_dirs_durably(self._io, os.path.dirname(path))
            write_file_durably(self._io, path, seal(_enc.encode(m)))
        except OSError as exc:
            raise storage_error_from_os(exc, "write the checkpoint manifest", path) from exc
        with self._lock:
            versions = self._index.setdefault((m.table, m.created), [])
            if version not in versions:
                versions.append(version)
                versions.sort()
            self._bases[(m.table, m.created, version)] = m.base
        return m

    def all_manifests(self) -> list[tuple[str, int, int]]:
        with self._lock:
            return [(t, c, v) for (t, c), vs in self._index.items() for v in vs]

    def delete(self, table: str, created: int, version: int) -> None:
        remove_file(self._io, self._path(table, created, version), "checkpoint manifest")
        with self._lock:
            versions = self._index.get((table, created), [])
            if version in versions:
                versions.remove(version)
            self._bases.pop((table, created, version), None)
