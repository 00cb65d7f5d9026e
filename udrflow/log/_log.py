"""EpochLog: the append-only, checksummed log one branch of a database is made of.

Writers append commits (group commit, see _writer.py); readers get them back by
version, as ranges, or by following the tail. The same class serves a reader in
another process (``readonly=True``): it never takes the writer lock, never changes a
file, and learns about new commits from the HEAD file the writer publishes.
"""

from __future__ import annotations

import bisect
import os
import threading
import time
from collections.abc import Iterable, Iterator

from udrflow._clock import Clock, SystemClock
from udrflow._ext import _frame
from udrflow._ext._frame import LogRecord
from udrflow._fileio import FileIO, make_dirs_durably, remove_file
from udrflow._limits import (
    COMMIT_BODY_BYTES_MAX,
    FSYNC_INTERVAL_MS_DEFAULT,
    FSYNC_INTERVAL_MS_MAX,
    FSYNC_INTERVAL_MS_MIN,
    READ_BYTES_MAX,
    SEGMENT_HEADER_BYTES,
    SEGMENT_SIZE_BYTES_DEFAULT,
    SEGMENT_SIZE_BYTES_MAX,
    SEGMENT_SIZE_BYTES_MIN,
)
from udrflow.errors import (
    CorruptionError,
    DatabaseClosedError,
    DatabaseNotFoundError,
    InvalidOptionError,
    InvalidPayloadError,
    ReadOnlyError,
    VersionNotFoundError,
    storage_error_from_os,
)
from udrflow.log._head import read_head
from udrflow.log._recovery import Action, Recovered, corruption, recover, scan_segment
from udrflow.log._segment import (
    Segment,
    check_segment_header,
    create_segment,
    parse_segment_name,
    segment_name,
)
from udrflow.log._watch import HeadWatcher
from udrflow.log._writer import Durability, LogWriter, check_durability

try:
    import cython
except ImportError:  # running from source without Cython: see udrflow/_cython_shim.py
    from udrflow import _cython_shim as cython

_STOP_WAIT_SLICE_S = 0.05  # how often a follower with a stop event looks at it


@cython.cclass
class PendingCommit:
    """A queued commit: its ``version`` is fixed; ``wait()`` returns it once durable."""

    # An extension type when compiled (see udrflow/_cython_shim.py): fields, not a dict.
    _writer = cython.declare(object, visibility="public")
    _ticket = cython.declare(object, visibility="public")
    version = cython.declare(object, visibility="public")

    def __init__(self, writer: LogWriter, ticket) -> None:
        self._writer = writer
        self._ticket = ticket
        self.version: int = ticket.version_first

    def wait(self) -> int:
        return self._writer.wait(self._ticket)


@cython.cclass
class EpochLog:
    """One log directory. Open it with :meth:`EpochLog.open`.

    >>> import tempfile
    >>> log = EpochLog.open(tempfile.mkdtemp())
    >>> log.append(b"hello"), log.append_batch([b"a", b"b"])
    (1, range(2, 4))
    >>> [r.payload for r in log.scan(2)]
    [b'a', b'b']
    >>> log.close()
    """

    # An extension type when compiled (see udrflow/_cython_shim.py): ``self._x`` is a field.
    directory = cython.declare(object, visibility="public")
    readonly = cython.declare(object, visibility="public")
    recovery = cython.declare(object, visibility="public")
    _segments = cython.declare(object, visibility="public")
    _lock = cython.declare(object, visibility="public")
    _cond = cython.declare(object, visibility="public")
    _cond_waiters = cython.declare(object, visibility="public")
    _visible_version = cython.declare(object, visibility="public")
    _closed = cython.declare(cython.bint, visibility="public")
    _writer = cython.declare(object, visibility="public")
    _refresh_lock = cython.declare(object, visibility="public")
    _watcher = cython.declare(object, visibility="public")
    salvage = cython.declare(cython.bint, visibility="public")
    damage = cython.declare(object, visibility="public")

    def __init__(self, directory: str, recovered: Recovered, readonly: bool) -> None:
        self.directory = directory
        self.readonly = readonly
        self.recovery = recovered
        self._segments: list[Segment] = recovered.segments
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        # Threads waiting on _cond (see wait_locked): the writer notifies only when there are
        # some, since Condition.notify_all is Python code that every epoch would pay for.
        self._cond_waiters = 0
        self._visible_version = self._segments[-1].last_version if self._segments else 0
        self._closed = False
        self._writer: LogWriter | None = None
        self._refresh_lock = threading.Lock()
        self._watcher: HeadWatcher | None = None
        # Salvage (readers only): at the first damaged frame, stop there and serve every
        # version before it instead of raising; ``damage`` is the CorruptionError that names it.
        self.salvage = False
        self.damage: CorruptionError | None = None

    @classmethod
    def open(cls, directory: str, *, readonly: bool = False, durability: str = Durability.SYNC,
             fsync_interval_ms: int = FSYNC_INTERVAL_MS_DEFAULT,
             segment_size_bytes: int = SEGMENT_SIZE_BYTES_DEFAULT,
             io: FileIO | None = None, clock: Clock | None = None, salvage: bool = False) -> EpochLog:
        """Open (a writer creates it if missing) and recover the log in ``directory``.

        ``salvage=True`` (readers only): a log damaged in the middle opens anyway and
        serves every version before the first bad frame; ``log.damage`` is the
        CorruptionError naming it (None when the log is whole). Without it, such a log
        raises that CorruptionError.

        ``durability``: ``"sync"`` | ``"interval"`` | ``"none"`` (see :class:`Durability`).
        ``segment_size_bytes``: start a new segment file past this size
        (between SEGMENT_SIZE_BYTES_MIN and SEGMENT_SIZE_BYTES_MAX).
        The caller is responsible for there being one writer per directory (the
        database's writer lock does it).
        """
        check_durability(durability)
        if not SEGMENT_SIZE_BYTES_MIN <= segment_size_bytes <= SEGMENT_SIZE_BYTES_MAX:
            raise InvalidOptionError(
                f"segment_size_bytes must be between {SEGMENT_SIZE_BYTES_MIN} and {SEGMENT_SIZE_BYTES_MAX}: "
                f"got {segment_size_bytes}")
        if not FSYNC_INTERVAL_MS_MIN <= fsync_interval_ms <= FSYNC_INTERVAL_MS_MAX:
            raise InvalidOptionError(
                f"fsync_interval_ms must be between {FSYNC_INTERVAL_MS_MIN} and {FSYNC_INTERVAL_MS_MAX}: "
                f"got {fsync_interval_ms}")
        io = io or FileIO()
        directory = os.path.abspath(directory)
        if readonly:
            if not os.path.isdir(directory):
                raise DatabaseNotFoundError(f"no log at {directory}: the directory does not exist")
            log = cls(directory, Recovered([], []), readonly=True)
            log.salvage = salvage
            try:
                log.refresh()
            except BaseException:
                log.close()  # release the segment files it opened before failing
                raise
            return log
        try:
            make_dirs_durably(io, directory)
        except OSError as exc:
            raise storage_error_from_os(exc, "create the log directory", directory) from exc
        recovered = recover(directory, io, writable=True, head=read_head(directory))
        if not recovered.segments:
            try:
                path = create_segment(io, directory, 1)
            except OSError as exc:
                raise storage_error_from_os(exc, "create the first segment in", directory) from exc
            recovered.segments.append(Segment(path, 1))
        log = cls(directory, recovered, readonly=False)
        try:
            log._writer = LogWriter(log, io, durability, fsync_interval_ms, segment_size_bytes,
                                    clock or SystemClock())
        except BaseException:
            log.close()
            raise
        return log

    # ---- state -------------------------------------------------------------------

    @property
    def version(self) -> int:
        """The last visible (acknowledged) version; 0 for an empty log."""
        return self._visible_version

    @property
    def since(self) -> int:
        """The first version still in the log."""
        return self._segments[0].first_version if self._segments else 1

    @property
    def upper(self) -> int:
        """The first version not yet visible."""
        return self._visible_version + 1

    @property
    def durability(self) -> str | None:
        return self._writer._durability if self._writer else None

    @property
    def poisoned(self) -> bool:
        return bool(self._writer and self._writer.poisoned)

    @property
    def segment_paths(self) -> list[str]:
        return [s.path for s in self._segments]

    # ---- writing -----------------------------------------------------------------

    def append(self, payload: bytes | bytearray | memoryview) -> int:
        """Commit ``payload`` as one frame; return its version once acknowledged."""
        body = self._check_payload(payload, "commit payload")
        return self._require_writer().append([body], len(body))

    def append_batch(self, payloads: Iterable[bytes | bytearray | memoryview]) -> range:
        """Commit each payload as its own version, all in as few epochs as fit.

        All payloads are validated before any is written: one bad payload rejects the
        batch. Returns the range of versions given to them."""
        bodies = payloads if isinstance(payloads, list) else list(payloads)
        try:
            total = _frame.validate_bodies(bodies, COMMIT_BODY_BYTES_MAX)
        except TypeError:
            bodies = [self._check_payload(p, f"commit payload at index {i}") for i, p in enumerate(bodies)]
            total = _frame.validate_bodies(bodies, COMMIT_BODY_BYTES_MAX)
        except ValueError as exc:
            raise InvalidPayloadError(f"{exc} (nothing was written)") from None
        if not bodies:
            return range(self._visible_version + 1, self._visible_version + 1)
        first = self._require_writer().append(bodies, total)
        return range(first, first + len(bodies))

    @property
    def failures(self) -> int:
        """How many epochs failed since open (see ``submit(failures_seen=...)``)."""
        return self._writer.failures if self._writer else 0

    def submit(self, payload: bytes | bytearray | memoryview, *, failures_seen: int | None = None,
               start: bool = False) -> PendingCommit:
        """Queue one commit and return at once with its version fixed; ``.wait()`` blocks
        until it is acknowledged (or raises why it failed).

        For callers that must decide a commit's version under their own lock (the
        transaction manager) but should not hold that lock through the fsync.
        ``start=True``: the caller has work to do before it waits, so a lone commit may be
        written now and the device start on it meanwhile (see ``LogWriter.submit``)."""
        if type(payload) is bytes and len(payload) <= COMMIT_BODY_BYTES_MAX:
            body = payload  # the common case, checked without a call: this runs on every commit
        else:
            body = self._check_payload(payload, "commit payload")
        writer = self._writer
        if writer is None:
            writer = self._require_writer()
        return PendingCommit(writer, writer.submit([body], len(body), failures_seen, start))

    @staticmethod
    def _check_payload(payload, where: str) -> bytes:
        if isinstance(payload, bytes):
            body = payload
        elif isinstance(payload, (bytearray, memoryview)):
            body = bytes(payload)
        else:
            raise InvalidPayloadError(
                f"{where}: expected bytes, bytearray or memoryview, got {type(payload).__name__} (nothing was written)")
        if len(body) > COMMIT_BODY_BYTES_MAX:
            raise InvalidPayloadError(
                f"{where}: expected at most {COMMIT_BODY_BYTES_MAX} bytes (COMMIT_BODY_BYTES_MAX), got {len(body)}; "
                f"write large data as chunks (nothing was written)")
        return body

    def _require_writer(self) -> LogWriter:
        if self._writer is None:
            if self._closed:
                raise DatabaseClosedError(f"the log of {self.directory} is closed")
            raise ReadOnlyError(f"the log of {self.directory} is open read-only: open it without readonly=True to write")
        return self._writer

    def forget_removed_segments(self) -> int:
        """Reader only: stop indexing leading segments the writer's gc removed (``since``
        moves up to the first one left, so reads below it are VersionNotFoundError, not a
        missing file). Returns the new ``since``."""
        if not self.readonly:
            return self.since
        with self._refresh_lock:
            while len(self._segments) > 1 and not os.path.exists(self._segments[0].path):
                self._segments.pop(0).close()
        return self.since

    def drop_segments_before(self, version: int) -> list[str]:
        """Writer only: delete every sealed segment whose commits are all below ``version``
        (retention); ``since`` becomes the first version left. Returns the deleted paths."""
        writer = self._require_writer()
        with self._cond:
            doomed = [s for s in self._segments[:-1] if s.last_version < version]
            if not doomed:
                return []
            self._segments = self._segments[len(doomed):]
        for segment in doomed:
            segment.close()
            remove_file(writer._io, segment.path, "log segment")
        try:
            writer._io.fsync_dir(self.directory)
        except OSError as exc:
            raise storage_error_from_os(exc, "sync the log directory", self.directory) from exc
        return [s.path for s in doomed]

    # ---- reading -----------------------------------------------------------------

    def read(self, version: int) -> LogRecord:
        """The commit at ``version``."""
        for record in self.scan(version, version):
            return record
        raise VersionNotFoundError(f"version {version} is not in the log of {self.directory}")

    def scan(self, version_min: int | None = None, version_max: int | None = None) -> Iterator[LogRecord]:
        """Commits with versions in [version_min, version_max], in order.

        ``version_min`` defaults to ``since``; ``version_max`` to the version visible now
        (later commits are not included: use :meth:`follow` for those).
        Raises VersionNotFoundError if ``version_min`` is below ``since`` or
        ``version_max`` above the visible version."""
        self._check_open()
        visible = self._visible_version
        lo = self.since if version_min is None else version_min
        hi = visible if version_max is None else version_max
        if lo < self.since:
            raise VersionNotFoundError(
                f"version {lo} is below since={self.since} of the log of {self.directory}: history before it was removed")
        if hi > visible:
            raise VersionNotFoundError(
                f"version {hi} is not yet in the log of {self.directory}: expected at most {visible} (upper={visible + 1})")
        return self._iter_range(lo, hi)

    def _iter_range(self, lo: int, hi: int) -> Iterator[LogRecord]:
        while lo <= hi:
            segment = self._segment_for(lo)
            i = lo - segment.first_version
            j = min(hi, segment.last_version) - segment.first_version
            while i <= j:
                records, i_next = self._read_block(segment, i, j)
                yield from records
                i = i_next
            lo = segment.first_version + j + 1

    def _segment_for(self, version: int) -> Segment:
        idx = bisect.bisect_right(self._segments, version, key=lambda s: s.first_version) - 1
        return self._segments[max(idx, 0)]

    def _read_block(self, segment: Segment, i: int, j: int) -> tuple[list[LogRecord], int]:
        """Read frames i..k of ``segment`` (k <= j, at most READ_BYTES_MAX unless one frame
        is bigger) with one pread, verifying each frame as it is decoded."""
        offsets = segment.offsets
        start = offsets[i]
        k = bisect.bisect_right(offsets, start + READ_BYTES_MAX, i + 1, j + 1) - 1
        if k < j and k > i:
            k -= 1  # frame k's end is offsets[k+1], which is past the limit
        k = max(k, i)
        end = offsets[k + 1] if k + 1 < len(offsets) else segment.end_offset
        try:
            data = os.pread(segment.read_fd(), end - start, start)
        except OSError as exc:
            raise storage_error_from_os(exc, "read the log segment", segment.path) from exc
        first = segment.first_version + i
        count = k - i + 1
        records, status, stop = _frame.decode_frames(data, first, count)
        if len(records) != count:
            bad = first + len(records)
            raise CorruptionError(
                f"frame of version {bad} in segment {os.path.basename(segment.path)} at byte {start + stop} no longer "
                f"verifies (scan stop code {status}): the file changed after it was indexed [file {segment.path}]",
                segment.path, start + stop, bad)
        return records, k + 1

    def version_at(self, timestamp_us: int) -> int:
        """The last version committed at or before ``timestamp_us``; 0 if none was."""
        visible = self._visible_version
        for segment in reversed(self._segments):
            if segment.first_version > visible or not segment.count:
                continue
            n = min(segment.count, visible - segment.first_version + 1)
            if segment.timestamps[0] <= timestamp_us:
                idx = bisect.bisect_right(segment.timestamps, timestamp_us, 0, n)
                return segment.first_version + idx - 1
        return 0

    def timestamp_of(self, version: int) -> int:
        """The commit timestamp (µs since the epoch, UTC) of ``version``."""
        if not self.since <= version <= self._visible_version:
            raise VersionNotFoundError(
                f"version {version} is not in the log of {self.directory}: expected {self.since}..{self._visible_version}")
        segment = self._segment_for(version)
        return segment.timestamps[version - segment.first_version]

    # ---- following the tail ------------------------------------------------------

    def wait_for(self, version: int, timeout_s: float | None = None) -> bool:
        """Block until ``version`` is visible (True) or ``timeout_s`` passes (False)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            if self.readonly:
                self.refresh()
            if self._visible_version >= version:
                return True
            self._check_open()
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            self._wait_change(version, remaining)

    def wait_locked(self, timeout_s: float | None) -> None:
        """``self._cond.wait(timeout_s)``, counted in ``_cond_waiters``. Holds ``_cond``."""
        self._cond_waiters += 1
        try:
            self._cond.wait(timeout_s)
        finally:
            self._cond_waiters -= 1

    def _wait_change(self, version: int, timeout_s: float | None) -> None:
        if not self.readonly:
            with self._cond:
                if self._visible_version < version and not self._closed:
                    self.wait_locked(timeout_s)
            return
        if self._watcher is None:
            self._watcher = HeadWatcher(self.directory)
        self._watcher.wait(timeout_s)

    def follow(self, version_min: int | None = None, *, idle_timeout_s: float | None = None,
               stop: threading.Event | None = None) -> Iterator[LogRecord]:
        """Yield commits from ``version_min`` on, in order, then wait for new ones.

        In the writing process a new commit wakes the follower directly (no polling
        delay); in another process the HEAD file's change does (inotify on Linux).
        Ends when the log is closed, when ``stop`` is set, or when no new commit
        arrives for ``idle_timeout_s`` seconds."""
        next_version = self.since if version_min is None else version_min
        if next_version < self.since:
            raise VersionNotFoundError(
                f"version {next_version} is below since={self.since} of the log of {self.directory}")
        idle_since = time.monotonic()
        while True:
            if self._closed or (stop is not None and stop.is_set()):
                return
            if self.readonly:
                self.refresh()
            visible = self._visible_version
            if next_version <= visible:
                yield from self._iter_range(next_version, visible)
                next_version = visible + 1
                idle_since = time.monotonic()
                continue
            slice_s = None if idle_timeout_s is None else max(0.0, idle_since + idle_timeout_s - time.monotonic())
            if stop is not None:
                slice_s = _STOP_WAIT_SLICE_S if slice_s is None else min(slice_s, _STOP_WAIT_SLICE_S)
            try:
                arrived = self.wait_for(next_version, slice_s)
            except DatabaseClosedError:
                return  # closing the log ends its followers
            if not arrived and idle_timeout_s is not None and time.monotonic() - idle_since >= idle_timeout_s:
                return

    # ---- readers in other processes ----------------------------------------------

    def refresh(self) -> int:
        """Reader only: index the commits the writer has published since; return the version."""
        if not self.readonly:
            return self._visible_version
        self._check_open()
        head = read_head(self.directory)
        if head is not None and head.version <= self._visible_version:
            return self._visible_version
        if self.damage is not None:
            return self._visible_version  # a salvaged log ends at its damage
        with self._refresh_lock:
            try:
                return self._refresh_locked(head)
            except CorruptionError as exc:
                if not self.salvage:
                    raise
                # Every frame before the damage was indexed and checked: serve those.
                self.damage = exc
                if self._segments:
                    self._visible_version = max(self._visible_version, self._segments[-1].last_version)
                return self._visible_version

    def _refresh_locked(self, head) -> int:
        """``refresh`` with its lock held: index what was published since."""
        if not self._segments:
            first = self._first_segment_on_disk()
            if first is None:
                return 0
            self._segments.append(self._reader_segment(first))
            # A log that starts later (a branch, or after gc) is at least at the version
            # before its first segment, as the writer sees it too.
            self._visible_version = max(self._visible_version, first - 1)
        while True:
            segment = self._segments[-1]
            newer_published = head is not None and head.segment_first_version > segment.first_version
            # A segment is sealed once a successor exists; the writer fsynced it whole first.
            sealed = newer_published or (head is None and self._later_segment_exists(segment))
            try:
                size = os.fstat(segment.read_fd()).st_size
            except OSError as exc:
                raise storage_error_from_os(exc, "read the log segment", segment.path) from exc
            bound = size
            if head is not None and head.segment_first_version == segment.first_version:
                bound = min(size, head.end_offset)
            if bound > segment.end_offset:
                start = segment.end_offset
                data = os.pread(segment.read_fd(), bound - start, start)
                outcome = scan_segment(segment, data, start, last_segment=not sealed)
                if outcome.case.action is Action.CORRUPT:
                    raise corruption(outcome, segment.path)
                self._visible_version = segment.last_version
            if not sealed:
                break
            if segment.count == 0:
                # The writer seals a segment only once it holds a frame; an empty sealed
                # segment means its frames were lost (and the next name would be its own).
                raise CorruptionError(
                    f"sealed segment {os.path.basename(segment.path)} holds no frames: expected at least one "
                    f"before the next segment [recovery case 'segment_gap'; file {segment.path}]",
                    segment.path, SEGMENT_HEADER_BYTES, segment.first_version)
            next_path = os.path.join(self.directory, segment_name(segment.last_version + 1))
            if not os.path.exists(next_path):
                raise CorruptionError(
                    f"segment {segment_name(segment.last_version + 1)} is missing: HEAD says the log continues "
                    f"past version {segment.last_version} [recovery case 'segment_gap'; directory {self.directory}]",
                    next_path, 0, segment.last_version + 1)
            self._segments.append(self._reader_segment(segment.last_version + 1))
        return self._visible_version

    def _reader_segment(self, first_version: int) -> Segment:
        path = os.path.join(self.directory, segment_name(first_version))
        segment = Segment(path, first_version)
        try:
            header = os.pread(segment.read_fd(), SEGMENT_HEADER_BYTES, 0)
            check_segment_header(header, path, first_version)
        except OSError as exc:
            segment.close()
            raise storage_error_from_os(exc, "read the log segment", path) from exc
        except BaseException:
            segment.close()
            raise
        return segment

    def _later_segment_exists(self, segment: Segment) -> bool:
        return any(v > segment.first_version for v in map(parse_segment_name, os.listdir(self.directory)) if v)

    def _first_segment_on_disk(self) -> int | None:
        firsts = [v for v in map(parse_segment_name, os.listdir(self.directory)) if v is not None]
        return min(firsts) if firsts else None

    # ---- closing -----------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise DatabaseClosedError(f"the log of {self.directory} is closed")

    def close(self) -> None:
        """Finish queued commits, fsync what needs it, release every file. Idempotent."""
        if self._closed:
            return
        try:
            if self._writer is not None:
                self._writer.close()
        finally:
            with self._cond:
                self._closed = True
                self._cond.notify_all()
            self._writer = None
            for segment in self._segments:
                segment.close()
            if self._watcher is not None:
                self._watcher.close()

    def __enter__(self) -> EpochLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        mode = "read-only" if self.readonly else f"durability={self.durability}"
        return f"EpochLog({self.directory!r}, version={self.version}, segments={len(self._segments)}, {mode})"


__all__ = ["EpochLog", "LogRecord", "Durability", "SEGMENT_HEADER_BYTES"]
