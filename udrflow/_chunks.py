"""The chunk store: immutable, content-addressed blobs named by their BLAKE3 hash.

A chunk is the bytes of one Arrow IPC stream; table state at a version is a list of
chunk digests, so unchanged data yields identical chunks and is stored once across
versions, tables and branches. On disk::

    <root>/ab/cd/abcd0123…(64 lowercase hex digits)

Why this layout:

- **Named by content.** The file name *is* the BLAKE3 hash of the bytes, so writing the
  same content twice is a no-op (dedup), a chunk never changes once written, and every
  read can be verified: a mismatch raises :class:`~udrflow.errors.CorruptionError`
  naming the path, the expected and the actual hash. A referenced chunk that is missing
  is corruption too.
- **Two levels of fan-out** (``ab/cd/``) keep each directory small (65,536 leaves; a
  million chunks leave ~15 files per directory), so lookups and directory fsyncs stay cheap.
- **Durable before acknowledged.** A new chunk is written to a temp sibling
  (:func:`udrflow._fileio.temp_path_for`), fsynced, renamed into place, and its directory
  fsynced before ``put`` returns: a crash leaves either no file or the whole file, never
  a torn one at the final name. Leftover temp files carry ``TEMP_MARKER`` and are never
  mistaken for chunks.
- **Cached by hash.** Decoded tables are kept in an in-memory LRU bounded by
  ``cache_bytes_max``; a hash never needs invalidation because its content cannot change.

Encoding is deterministic so that equal tables give equal digests: every column is
rebuilt into one exactly sized array (so how the in-memory table happens to be split,
sliced or chunked does not change the bytes), then written as one record batch to an
Arrow IPC *stream* with zstd-compressed buffers (uncompressed if this pyarrow lacks zstd).

>>> import tempfile, pyarrow as pa
>>> store = ChunkStore(tempfile.mkdtemp())
>>> digest = store.put_table(pa.table({"id": [1, 2], "name": ["a", "b"]}))
>>> len(digest), store.get_table(digest).to_pydict()
(64, {'id': [1, 2], 'name': ['a', 'b']})
>>> store.put_table(pa.table({"id": [1, 2], "name": ["a", "b"]})) == digest  # stored once
True
"""

from __future__ import annotations

import collections
import os
import re
import threading
from collections.abc import Iterator

import blake3
import pyarrow as pa
import pyarrow.ipc as ipc

from udrflow._fileio import TEMP_MARKER, FileIO, make_dirs_durably, remove_file, temp_path_for
from udrflow._limits import CHUNK_CACHE_BYTES_MAX, CHUNK_WRITE_BATCH_MAX
from udrflow.errors import CorruptionError, UsageError, require, storage_error_from_os

__all__ = ["ChunkStore", "encode_table", "decode_table", "digest_of", "DIGEST_HEX_CHARS"]

#: A digest is the 32-byte BLAKE3 hash as 64 lowercase hex characters.
DIGEST_HEX_CHARS = 64

_DIGEST_RE = re.compile(r"[0-9a-f]{64}")
_FANOUT_RE = re.compile(r"[0-9a-f]{2}")

# Compression is part of the encoding, so it is chosen once per process. zstd keeps
# chunks small; without it, chunks are plain IPC (still deterministic, just larger).
_COMPRESSION = "zstd" if pa.Codec.is_available("zstd") else None
_WRITE_OPTIONS = ipc.IpcWriteOptions(compression=_COMPRESSION)


class _Write:
    """One chunk file in flight: others wait on ``done`` and then read ``ok``."""

    __slots__ = ("done", "ok")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.ok = False


# Chunk files being written right now by any ChunkStore of this process, by final path.
# A put that finds its file already renamed into place must not report it durable
# before the writer has fsynced the directory, so it waits for the writer instead.
_inflight_lock = threading.Lock()
_inflight: dict[str, _Write] = {}

# Serialises directory creation: make_dirs_durably checks isdir() first, so without it
# a second thread could see a directory that exists but whose entry in its parent is not
# fsynced yet, put a chunk in it and return before the directory itself is durable.
_mkdir_lock = threading.Lock()


# ---- encoding -----------------------------------------------------------------------


def _as_table(table: pa.Table | pa.RecordBatch) -> pa.Table:
    if isinstance(table, pa.RecordBatch):
        return pa.Table.from_batches([table])
    if isinstance(table, pa.Table):
        return table
    raise UsageError(f"a chunk holds a pyarrow.Table or pyarrow.RecordBatch, got {type(table).__name__}")


def _encode_buffer(table: pa.Table | pa.RecordBatch) -> pa.Buffer:
    """Encode without copying the result out of Arrow memory (``put_table`` hashes and
    writes the buffer directly)."""
    table = _as_table(table)
    sink = pa.BufferOutputStream()
    with ipc.new_stream(sink, table.schema, options=_WRITE_OPTIONS) as writer:
        # An empty table is its schema alone, whatever its chunking was.
        if table.num_rows:
            writer.write_batch(_canonical_batch(table))
    return sink.getvalue()


def _canonical_batch(table: pa.Table) -> pa.RecordBatch:
    """The rows of ``table`` as one record batch whose buffers hold exactly those rows.

    The IPC writer does not always trim a sliced array's buffers to the slice (as a
    checkpoint slices a table into chunks): with pyarrow 26 a sliced string column with
    nulls can carry string data after the slice, and a validity bitmap the bits of
    neighbouring rows in its last byte, so the same rows would hash differently
    depending on what they were sliced from. ``concat_arrays`` rebuilds each column
    into fresh, exactly sized buffers at offset 0 (nested children included), so equal
    rows give equal bytes however they were split, sliced or chunked in memory. It does
    not rewrite the value under a null slot nor re-encode a dictionary: tables that
    differ only there hash differently, which costs dedup, never correctness.
    """
    if table.num_columns == 0:
        # No column to carry the row count: a struct<> array of that length does.
        rows = pa.repeat(pa.scalar({}, pa.struct([])), table.num_rows)
        return pa.RecordBatch.from_struct_array(rows)  # the stream carries the schema metadata
    arrays = [pa.concat_arrays(column.chunks) for column in table.columns]
    return pa.RecordBatch.from_arrays(arrays, schema=table.schema)


def encode_table(table: pa.Table | pa.RecordBatch) -> bytes:
    """The chunk bytes of ``table``: one Arrow IPC stream. Equal rows (and schema) give
    equal bytes, however the table is chunked or sliced in memory (the exceptions, which
    only cost dedup, are listed in ``_canonical_batch``).

    >>> import pyarrow as pa
    >>> encode_table(pa.table({"x": [1, 2]})) == encode_table(pa.table({"x": [1, 2]}))
    True
    """
    return _encode_buffer(table).to_pybytes()


def decode_table(data: bytes | pa.Buffer) -> pa.Table:
    """Decode chunk bytes made by :func:`encode_table` back into a table.

    Uncompressed columns reference ``data`` without copying; zstd-compressed ones (the
    default) are decompressed into new buffers.

    >>> import pyarrow as pa
    >>> decode_table(encode_table(pa.table({"x": [1, 2]}))).to_pydict()
    {'x': [1, 2]}
    """
    return ipc.open_stream(pa.py_buffer(data)).read_all()


def digest_of(data: bytes | pa.Buffer) -> str:
    """The chunk name of ``data``: its BLAKE3 hash as 64 lowercase hex characters."""
    # Single-threaded hashing measured as fast (~4-6 GB/s) as blake3.AUTO here, for
    # 64 KiB to 64 MiB inputs, and it does not compete with Arrow's compression threads.
    return blake3.blake3(data).hexdigest()


def _check_digest(digest: object) -> str:
    if not isinstance(digest, str) or not _DIGEST_RE.fullmatch(digest):
        raise UsageError(f"malformed chunk digest {digest!r}: expected {DIGEST_HEX_CHARS} lowercase hex "
                         "characters (a BLAKE3 hash)")
    return digest


def _check_data(data: object) -> bytes | pa.Buffer:
    if isinstance(data, bytes | pa.Buffer):
        return data
    if isinstance(data, bytearray | memoryview):
        # Copy mutable buffers: the bytes hashed must be the bytes written.
        return bytes(data)
    raise UsageError(f"chunk data must be bytes, got {type(data).__name__}")


# ---- the store ----------------------------------------------------------------------


class ChunkStore:
    """Content-addressed, immutable blobs under ``<root>/ab/cd/<hex blake3>``.

    ``io`` is the file layer every write goes through (``udrflow.testing.FaultyFileIO``
    injects faults). ``cache_bytes_max`` bounds the in-memory cache of decoded tables
    (counted as ``table.nbytes``); 0 disables it. All methods are thread-safe.

    >>> import tempfile
    >>> store = ChunkStore(tempfile.mkdtemp())
    >>> d = store.put(b"hello")
    >>> store.get(d), store.exists(d), list(store.digests()) == [d]
    (b'hello', True, True)
    """

    def __init__(self, root: str, io: FileIO | None = None,
                 cache_bytes_max: int = CHUNK_CACHE_BYTES_MAX) -> None:
        if not isinstance(cache_bytes_max, int) or cache_bytes_max < 0:
            raise UsageError(f"cache_bytes_max must be an int >= 0, got {cache_bytes_max!r}")
        self.root = os.path.abspath(root)
        self.io = io if io is not None else FileIO()
        self.cache_bytes_max = cache_bytes_max
        # Directories known to exist (created or seen by this store), to skip the
        # isdir() walk of make_dirs_durably on every put. At most 65,536 + 256 entries.
        self._dirs_ready: set[str] = set()
        # Directories this store has fsynced since it was opened. A file found already in
        # place may have been renamed there by a process that died before fsyncing the
        # directory; one fsync of the directory by us makes every earlier entry durable.
        self._dirs_synced: set[str] = set()
        self._dirs_lock = threading.Lock()
        self._cache: collections.OrderedDict[str, tuple[pa.Table, int]] = collections.OrderedDict()
        self._cache_lock = threading.Lock()
        self._cache_bytes = 0
        self._hits = 0
        self._misses = 0
        self._evictions = 0
        # Pins (see ``sweeping``): digest -> holders. ``_released`` collects what was
        # unpinned while a sweep runs, which that sweep must keep too.
        self._pin_lock = threading.Lock()
        self._pins: dict[str, int] = {}
        self._sweeps = 0
        self._released: set[str] = set()

    def __repr__(self) -> str:
        return f"ChunkStore({self.root!r})"

    def path_of(self, digest: str) -> str:
        """The file of chunk ``digest`` (which need not exist)."""
        _check_digest(digest)
        return os.path.join(self.root, digest[0:2], digest[2:4], digest)

    # ---- writing ----------------------------------------------------------------

    def put(self, data: bytes) -> str:
        """Store ``data`` and return its digest. Durable when it returns; content already
        stored is not written again."""
        return self.put_many([data])[0]

    def put_many(self, blobs: list[bytes], pin: bool = False) -> list[str]:
        """Store every blob; return their digests in order. Durable when it returns.

        New files are written in batches of at most ``CHUNK_WRITE_BATCH_MAX``: all temp
        files are written, each fsynced, each renamed, then each distinct directory is
        fsynced once, so a checkpoint of N chunks costs N file fsyncs plus one per
        directory rather than 2N. On failure nothing partial is visible at a chunk's
        name; chunks of the batch that were already durable may stay (they are valid and
        unreferenced, for GC to reclaim).

        ``pin=True``: each digest is pinned before its file is looked for or written, so
        a concurrent gc keeps it (even a copy that was already stored) until the caller's
        ``unpin(digests)``, once a durable record references it.
        """
        blobs = [_check_data(b) for b in blobs]
        digests = [digest_of(b) for b in blobs]
        unique = list(dict(zip(digests, blobs, strict=True)).items())
        if pin:
            self.pin(digests)
        try:
            for start in range(0, len(unique), CHUNK_WRITE_BATCH_MAX):
                self._put_batch(unique[start:start + CHUNK_WRITE_BATCH_MAX])
        except BaseException:
            if pin:
                self.unpin(digests)
            raise
        return digests

    def put_table(self, table: pa.Table | pa.RecordBatch) -> str:
        """Store ``table`` as one chunk (see :func:`encode_table`); return its digest."""
        return self.put_many([_encode_buffer(table)])[0]

    def put_tables(self, tables: list[pa.Table | pa.RecordBatch], pin: bool = False) -> list[str]:
        """Store each table as one chunk, in one batched write; return their digests
        (``pin``: as in :meth:`put_many`)."""
        return self.put_many([_encode_buffer(t) for t in tables], pin=pin)

    # ---- pins: chunks that gc must keep although no durable record references them yet ----

    def pin(self, digests: list[str]) -> None:
        """Keep ``digests`` from any gc until as many ``unpin`` calls (a commit or checkpoint
        that wrote them and whose record is not durable yet)."""
        with self._pin_lock:
            pins = self._pins
            for d in digests:
                pins[d] = pins.get(d, 0) + 1

    def unpin(self, digests: list[str]) -> None:
        with self._pin_lock:
            pins = self._pins
            for d in digests:
                n = pins[d] - 1
                if n:
                    pins[d] = n
                else:
                    del pins[d]
                if self._sweeps:
                    # A sweep that started before the record became durable did not see it.
                    self._released.add(d)

    def pinned(self) -> frozenset[str]:
        with self._pin_lock:
            return frozenset(self._pins)

    def sweeping(self) -> _Sweep:
        """A gc's sweep: enter it *before* collecting what is referenced, then delete with
        ``delete_unless_pinned``. A chunk pinned at any moment since the sweep began is
        kept: its record may have become durable after the sweep read the references."""
        return _Sweep(self)

    def _put_batch(self, items: list[tuple[str, bytes | pa.Buffer]]) -> None:
        pending = items
        while pending:
            mine: list[tuple[str, bytes | pa.Buffer, _Write]] = []
            theirs: list[tuple[str, bytes | pa.Buffer, _Write]] = []
            present: list[str] = []
            with _inflight_lock:
                for digest, data in pending:
                    path = self.path_of(digest)
                    write = _inflight.get(path)
                    if write is not None:
                        theirs.append((digest, data, write))
                    elif os.path.exists(path):
                        present.append(path)
                    else:
                        write = _inflight[path] = _Write()
                        mine.append((digest, data, write))
            try:
                self._write_new(mine)
                for _, _, write in mine:
                    write.ok = True
            finally:
                with _inflight_lock:
                    for digest, _, write in mine:
                        del _inflight[self.path_of(digest)]
                        write.done.set()
            self._sync_dirs_of(present)
            # Chunks another thread was writing: done once that write succeeded. If it
            # failed, its directory is no longer trusted and the chunk is tried again.
            pending = []
            for digest, data, write in theirs:
                write.done.wait()
                if not write.ok:
                    with self._dirs_lock:
                        self._dirs_synced.discard(os.path.dirname(self.path_of(digest)))
                    pending.append((digest, data))

    def _ensure_dir(self, directory: str) -> None:
        with self._dirs_lock:
            if directory in self._dirs_ready:
                return
        with _mkdir_lock:
            try:
                make_dirs_durably(self.io, directory)
            except OSError as exc:
                raise storage_error_from_os(exc, "create chunk directory", directory) from exc
        with self._dirs_lock:
            self._dirs_ready.add(directory)

    def _sync_dirs_of(self, paths: list[str]) -> None:
        """Make the directory entries of files found already in place durable (see
        ``_dirs_synced``): one fsync per directory this store has not fsynced yet."""
        with self._dirs_lock:
            todo = sorted({os.path.dirname(p) for p in paths} - self._dirs_synced)
        for directory in todo:
            try:
                self.io.fsync_dir(directory)
            except OSError as exc:
                raise storage_error_from_os(exc, "fsync chunk directory", directory) from exc
            with self._dirs_lock:
                self._dirs_synced.add(directory)

    def _write_new(self, items: list[tuple[str, bytes | pa.Buffer, _Write]]) -> None:
        """Write chunks that do not exist yet: temp files, fsync each, rename each, fsync
        each distinct directory once. On failure remove what is not durable and raise."""
        if not items:
            return
        io = self.io
        finals = [self.path_of(digest) for digest, _, _ in items]
        directories = sorted({os.path.dirname(p) for p in finals})
        for directory in directories:
            self._ensure_dir(directory)
        temps: list[str] = []  # created and not yet renamed
        fds: list[int] = []
        renamed: list[str] = []  # renamed into place, directory not yet fsynced
        action, where = "write chunk", finals[0]
        try:
            try:
                for final, (_, data, _) in zip(finals, items, strict=True):
                    tmp = temp_path_for(final)
                    action, where = "create chunk temp file", tmp
                    fds.append(io.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL))
                    temps.append(tmp)
                    action = "write chunk temp file"
                    io.pwritev(fds[-1], [data], 0)
                # Fsync after writing all, so the kernel can write back earlier files
                # while later ones are still being written.
                for fd, tmp in zip(fds, temps, strict=True):
                    action, where = "fsync chunk temp file", tmp
                    io.fsync(fd)
            finally:
                while fds:
                    io.close(fds.pop())
            for tmp, final in zip(list(temps), finals, strict=True):
                action, where = "rename chunk into place at", final
                io.replace(tmp, final)
                temps.remove(tmp)
                renamed.append(final)
            for directory in directories:
                action, where = "fsync chunk directory", directory
                io.fsync_dir(directory)
                renamed = [p for p in renamed if os.path.dirname(p) != directory]
                with self._dirs_lock:
                    self._dirs_synced.add(directory)
        except OSError as exc:
            self._discard_after_failure(temps, renamed)
            raise storage_error_from_os(exc, action, where) from exc
        except BaseException:
            self._discard_after_failure(temps, renamed)
            raise
        require(not temps and not renamed, f"chunk write left work undone: {temps} {renamed}")

    def _discard_after_failure(self, temps: list[str], renamed: list[str]) -> None:
        # Renamed files whose directory fsync failed are complete (each was fsynced before
        # its rename) but their names may not survive a crash; remove them so a later put
        # writes them again rather than trusting them. Best effort: the original error is
        # what the caller needs to see.
        with self._dirs_lock:
            for path in renamed:
                self._dirs_synced.discard(os.path.dirname(path))
        for path in temps + renamed:
            try:
                self.io.unlink(path)
            except OSError:
                pass

    # ---- reading ----------------------------------------------------------------

    def get(self, digest: str) -> bytes:
        """The bytes of chunk ``digest``, verified against it (never from the cache).

        Raises CorruptionError if the file is missing or its BLAKE3 hash differs.
        """
        path = self.path_of(digest)
        try:
            with open(path, "rb", buffering=0) as f:
                data = f.read()
        except FileNotFoundError:
            raise CorruptionError(f"chunk {digest} is missing: expected file {path}", path) from None
        except OSError as exc:
            raise storage_error_from_os(exc, "read chunk", path) from exc
        actual = digest_of(data)
        if actual != digest:
            raise CorruptionError(f"chunk checksum mismatch in {path} ({len(data)} bytes): "
                                  f"expected {digest}, got {actual}", path)
        return data

    def get_table(self, digest: str) -> pa.Table:
        """The table stored as chunk ``digest``, from the cache or read, verified and decoded."""
        _check_digest(digest)
        with self._cache_lock:
            entry = self._cache.get(digest)
            if entry is not None:
                self._cache.move_to_end(digest)
                self._hits += 1
                return entry[0]
            self._misses += 1
        data = self.get(digest)
        try:
            table = decode_table(data)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            # The hash matched, so these are the bytes that were put: not a table chunk.
            path = self.path_of(digest)
            raise CorruptionError(f"chunk {digest} at {path} is not an Arrow IPC stream: {exc}",
                                  path) from exc
        self._cache_put(digest, table)
        return table

    def _cache_put(self, digest: str, table: pa.Table) -> None:
        nbytes = table.nbytes
        if nbytes > self.cache_bytes_max:
            return  # would evict everything and still not fit
        with self._cache_lock:
            if digest in self._cache:  # another thread decoded it meanwhile
                return
            self._cache[digest] = (table, nbytes)
            self._cache_bytes += nbytes
            while self._cache_bytes > self.cache_bytes_max:
                _, (_, evicted) = self._cache.popitem(last=False)
                self._cache_bytes -= evicted
                self._evictions += 1
            require(0 <= self._cache_bytes <= self.cache_bytes_max,
                    f"chunk cache holds {self._cache_bytes} bytes, limit {self.cache_bytes_max}")

    def clear_cache(self) -> None:
        """Drop every cached table (counters are kept)."""
        with self._cache_lock:
            self._cache.clear()
            self._cache_bytes = 0

    @property
    def cache_stats(self) -> dict[str, int]:
        """``hits``, ``misses``, ``evictions`` of get_table; ``bytes`` and ``entries`` held now."""
        with self._cache_lock:
            return {"hits": self._hits, "misses": self._misses, "evictions": self._evictions,
                    "bytes": self._cache_bytes, "entries": len(self._cache)}

    def exists(self, digest: str) -> bool:
        """Whether chunk ``digest`` has a file (not verified: ``get`` does that)."""
        return os.path.exists(self.path_of(digest))

    # ---- listing and GC -----------------------------------------------------------

    def _files(self) -> Iterator[os.DirEntry]:
        """Every file in a fan-out directory (chunks and temp files), in name order."""
        for top in _scandir_sorted(self.root):
            if not (top.is_dir() and _FANOUT_RE.fullmatch(top.name)):
                continue
            for sub in _scandir_sorted(top.path):
                if not (sub.is_dir() and _FANOUT_RE.fullmatch(sub.name)):
                    continue
                for entry in _scandir_sorted(sub.path):
                    if entry.is_file():
                        yield entry

    def digests(self) -> Iterator[str]:
        """Every chunk on disk, in digest order (temp files and stray names skipped)."""
        for entry in self._files():
            name = entry.name
            if _DIGEST_RE.fullmatch(name) and entry.path == self.path_of(name):
                yield name

    def bytes_on_disk(self) -> int:
        """Total size of the chunk files (temp files not counted)."""
        return sum(os.path.getsize(self.path_of(d)) for d in self.digests())

    def delete(self, digest: str) -> None:
        """Remove chunk ``digest`` (for GC; a missing chunk is fine) and drop it from the cache.

        The caller must know no version references it and no put of it is under way. The
        directory is not fsynced: a deletion undone by a crash only leaves garbage for the
        next GC, never a dangling reference.
        """
        path = self.path_of(digest)
        with self._cache_lock:
            entry = self._cache.pop(digest, None)
            if entry is not None:
                self._cache_bytes -= entry[1]
        try:
            self.io.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise storage_error_from_os(exc, "delete chunk", path) from exc

    def _delete_unless_pinned(self, digest: str) -> int | None:
        # Under the pin lock: a put pins before it looks for the file, so it either sees
        # this deletion done (and writes the chunk again) or keeps it from happening.
        with self._pin_lock:
            if digest in self._pins or digest in self._released:
                return None
            path = self.path_of(digest)
            try:
                size = os.path.getsize(path)
            except FileNotFoundError:
                return None
            self.delete(digest)
            return size

    def remove_temp_files(self) -> int:
        """Remove temp files left by writers that died mid-put; return how many.

        Call it only while no put is under way in any process (e.g. when opening the
        database with the writer lock held): a live writer's temp file looks the same.
        """
        removed = 0
        for entry in self._files():
            if TEMP_MARKER in entry.name and remove_file(self.io, entry.path, "chunk temp file"):
                removed += 1
        return removed


class _Sweep:
    """``with store.sweeping() as sweep:`` (see ChunkStore.sweeping)."""

    def __init__(self, store: ChunkStore) -> None:
        self._store = store

    def __enter__(self) -> _Sweep:
        with self._store._pin_lock:
            self._store._sweeps += 1
        return self

    def __exit__(self, *exc) -> None:
        store = self._store
        with store._pin_lock:
            store._sweeps -= 1
            if not store._sweeps:
                store._released.clear()

    def delete_unless_pinned(self, digest: str) -> int | None:
        """Delete chunk ``digest`` unless pinned now or since the sweep began; return the
        bytes removed, or None if it was kept (or already gone)."""
        return self._store._delete_unless_pinned(digest)


def _scandir_sorted(path: str) -> list[os.DirEntry]:
    try:
        with os.scandir(path) as it:
            return sorted(it, key=lambda e: e.name)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise storage_error_from_os(exc, "list chunk directory", path) from exc
