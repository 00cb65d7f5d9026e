"""Group commit: many committing threads, one write and one fdatasync per epoch.

A committer encodes nothing itself: it validates its payloads, takes the next versions
and a timestamp under the lock, queues a ticket, and waits. Whichever waiting committer
finds no epoch in flight becomes the leader: it takes the queued tickets (up to
EPOCH_BYTES_MAX), releases the lock, encodes them all in one Cython call per ticket,
writes them with one ``pwritev``, fdatasyncs once, and then, under the lock again,
indexes the frames, raises the visible version and wakes everyone. Tickets queued
meanwhile form the next epoch. With one thread this is write + fdatasync and nothing
else; with many, the fdatasync is shared.

A lone committer (the writer idle, nothing queued, the last epoch a single commit) may
ask ``submit(start=True)`` to *pre-write* its commit: its frame is written at once and
its write-back started (``_fastio.start_writeback``), so the device takes the data while
the committer finishes its bookkeeping; its epoch, led as usual by whoever waits first,
then only needs the fdatasync. A pre-written ticket is always the oldest one queued, so
it heads the next epoch, and its bytes sit exactly where that epoch starts: a failure
undoes them with the rest of the epoch. Nothing is visible, or in HEAD, before the
fdatasync, as for any epoch.

Failure policy (each tested in tests/test_log_faults.py):
- A failed fdatasync poisons the writer: the kernel may have dropped the dirty pages and
  cleared the error, so a retry could "succeed" over lost data (the fsyncgate lesson).
  Every waiting and later commit raises LogPoisonedError until the database is reopened.
- A failed write (ENOSPC, EDQUOT, EIO, ...) inside the epoch's first segment is undone by
  truncating back to the epoch's start; the epoch's commits and every commit queued behind
  them (whose versions follow theirs) fail with the translated StorageError, and the writer
  stays usable. If the undo itself fails, or the epoch had already sealed a segment, the
  writer is poisoned.
"""

from __future__ import annotations

import array
import os
import threading
import time
from collections import deque

try:
    import cython
except ImportError:  # running from source without Cython: see udrflow/_cython_shim.py
    from udrflow import _cython_shim as cython

from udrflow._clock import Clock
from udrflow._ext import _frame
from udrflow._ext._fastio import HAVE_START_WRITEBACK, pwrite_all, start_writeback
from udrflow._fileio import FileIO
from udrflow._limits import (
    EPOCH_BYTES_MAX,
    PENDING_BYTES_MAX,
    PREALLOC_RETRY_S,
    PREALLOC_STEP_BYTES,
    SEGMENT_HEADER_BYTES,
)
from udrflow.errors import (
    CommitOutcomeUnknownError,
    DatabaseClosedError,
    LogPoisonedError,
    StorageError,
    require,
    storage_error_from_os,
)
from udrflow.log._head import HeadWriter
from udrflow.log._segment import Segment, create_segment

_OVERHEAD = _frame.FRAME_OVERHEAD_BYTES
LINGER_S_MIN = 0.00002
LINGER_S_MAX = 0.001
_ZERO_BLOCK = bytes(1024 * 1024)
# Bound once: compiled, a module global is a cached lookup, a module's attribute is not.
_monotonic = time.monotonic
_int64_array = array.array


@cython.ccall
def _stamps(timestamp_us: int, count: int) -> array.array:
    """``count`` copies of one ticket's timestamp, as a segment's index holds them."""
    return _int64_array("q", [timestamp_us] * count)


class Durability:
    """When a commit is acknowledged. Allowed values of ``durability=``:

    - ``"sync"`` (default): after its epoch is fdatasynced. A crash of the process or the
      machine never loses an acknowledged commit.
    - ``"interval"``: after its epoch is written; a background thread fdatasyncs every
      ``fsync_interval_ms``. A process crash loses nothing; a machine crash may lose the
      last interval.
    - ``"none"``: after its epoch is written; fdatasync only when a segment is sealed and
      at close. A machine crash may lose everything since the last seal.
    """

    SYNC = "sync"
    INTERVAL = "interval"
    NONE = "none"
    ALL = (SYNC, INTERVAL, NONE)


@cython.cclass
class _Ticket:
    """One queued append. Its committing thread sleeps on its own lock, so finishing an
    epoch wakes exactly the threads it concerns (its committers and the next leader),
    not every waiter: with many threads a shared condition's notify_all costs more than
    the epoch's write. The lock is made only when the thread first has to sleep: a lone
    committer leads its own epoch and never does."""

    # An extension type when compiled (see udrflow/_cython_shim.py): fields, not a dict.
    bodies = cython.declare(object, visibility="public")
    version_first = cython.declare(object, visibility="public")
    timestamp_us = cython.declare(object, visibility="public")
    nbytes = cython.declare(object, visibility="public")
    done = cython.declare(cython.bint, visibility="public")
    error = cython.declare(object, visibility="public")
    lock = cython.declare(object, visibility="public")
    sleeping = cython.declare(cython.bint, visibility="public")
    prewrite = cython.declare(object, visibility="public")

    def __init__(self, bodies: list[bytes], version_first: int, timestamp_us: int, nbytes: int) -> None:
        self.bodies = bodies
        self.version_first = version_first
        self.timestamp_us = timestamp_us
        self.nbytes = nbytes
        self.done = False
        self.error: BaseException | None = None
        self.lock: threading.Lock | None = None  # held (by its own thread) while it sleeps
        self.sleeping = False
        self.prewrite: _Prewrite | None = None  # see submit(start=True)

    @cython.ccall
    def wake(self) -> None:
        """Called with the writer's lock held."""
        if self.sleeping:
            self.sleeping = False
            self.lock.release()


@cython.cclass
class _Prewrite:
    """A ticket's frames written ahead of its epoch (see ``submit(start=True)``): where,
    and the failure if the write failed (the epoch then fails with it). ``pending``: asked
    for, not yet done (the ticket's epoch may start first and then writes it itself)."""

    pending = cython.declare(cython.bint, visibility="public")
    segment = cython.declare(object, visibility="public")
    offsets = cython.declare(object, visibility="public")
    end = cython.declare(object, visibility="public")
    failure = cython.declare(object, visibility="public")

    def __init__(self) -> None:
        self.pending = True
        self.segment: Segment | None = None
        self.offsets: array.array | None = None
        self.end = 0
        self.failure: _EpochFailed | None = None


class _EpochFailed(Exception):
    """Internal: why an epoch failed and whether the writer survives it."""

    def __init__(self, error: StorageError, poison: bool) -> None:
        super().__init__(str(error))
        self.error = error
        self.poison = poison


@cython.cclass
class LogWriter:
    """Appends commits to the newest segment of a log directory. Owned by an EpochLog."""

    # An extension type when compiled (see udrflow/_cython_shim.py): ``self._x`` is a field.
    _log = cython.declare(object, visibility="public")
    _io = cython.declare(object, visibility="public")
    _pwritev = cython.declare(object, visibility="public")
    _fdatasync = cython.declare(object, visibility="public")
    _start_writeback = cython.declare(object, visibility="public")
    _cond = cython.declare(object, visibility="public")
    _lock = cython.declare(object, visibility="public")
    _durability = cython.declare(object, visibility="public")
    _segment_size_bytes = cython.declare(object, visibility="public")
    _clock = cython.declare(object, visibility="public")
    _pending = cython.declare(object, visibility="public")
    _pending_bytes = cython.declare(object, visibility="public")
    _next_version = cython.declare(object, visibility="public")
    _last_timestamp_us = cython.declare(object, visibility="public")
    _flushing = cython.declare(cython.bint, visibility="public")
    _closed = cython.declare(cython.bint, visibility="public")
    _arrivals = cython.declare(object, visibility="public")
    _lingering = cython.declare(cython.bint, visibility="public")
    _last_epoch_tickets = cython.declare(object, visibility="public")
    _fsync_ema_s = cython.declare(object, visibility="public")
    _poisoned = cython.declare(object, visibility="public")
    _failures = cython.declare(object, visibility="public")
    _last_failure = cython.declare(object, visibility="public")
    _io_lock = cython.declare(object, visibility="public")
    _segment = cython.declare(object, visibility="public")
    _write_offset = cython.declare(object, visibility="public")
    _fd = cython.declare(object, visibility="public")
    _prealloc_end = cython.declare(object, visibility="public")
    _prealloc_retry_at = cython.declare(object, visibility="public")
    _unsynced = cython.declare(cython.bint, visibility="public")
    _unsynced_frames = cython.declare(object, visibility="public")
    _head = cython.declare(object, visibility="public")
    _head_ok = cython.declare(cython.bint, visibility="public")
    _syncer_stop = cython.declare(object, visibility="public")
    _syncer = cython.declare(object, visibility="public")

    def __init__(self, log, io: FileIO, durability: str, fsync_interval_ms: int,
                 segment_size_bytes: int, clock: Clock) -> None:
        self._log = log
        self._io = io
        # The two calls of every epoch, bound once: the real file layer's are the system
        # calls themselves (FileIO.pwritev of bytes is pwrite_all), a subclass keeps its own
        # (udrflow.testing's faulty one must see every call).
        real = type(io) is FileIO
        self._pwritev = pwrite_all if real else io.pwritev
        self._fdatasync = os.fdatasync if real else io.fdatasync
        # Pre-writes (submit(start=True)) only pay in sync mode, and only where the kernel
        # can start a write-back without waiting for it; a file layer of its own may offer
        # ``start_writeback(fd, offset, nbytes)`` (tests use one to inject faults into them).
        self._start_writeback = None
        if durability == Durability.SYNC:
            self._start_writeback = (start_writeback if HAVE_START_WRITEBACK else None) if real \
                else getattr(io, "start_writeback", None)
        self._cond: threading.Condition = log._cond
        # The condition's lock, taken directly on the commit path: ``with`` on a Condition
        # runs its __enter__/__exit__ as Python frames, the lock's are C.
        self._lock = log._lock
        self._durability = durability
        self._segment_size_bytes = segment_size_bytes
        self._clock = clock
        self._pending: deque[_Ticket] = deque()
        self._pending_bytes = 0
        self._next_version = log._visible_version + 1
        last = log._segments[-1]
        self._last_timestamp_us = last.timestamps[-1] if last.count else 0
        self._flushing = False
        self._closed = False
        # Lingering (PostgreSQL's commit_delay idea): when the last epoch held several
        # commits, the next leader waits a little for the committers it just woke to queue
        # again, so epochs stay full instead of alternating between two half-full groups.
        self._arrivals = threading.Condition(log._lock)
        self._lingering = False  # a leader waits on _arrivals (so _enqueue must notify it)
        self._last_epoch_tickets = 1
        self._fsync_ema_s = 0.0
        self._poisoned: LogPoisonedError | None = None
        self._failures = 0
        self._last_failure: StorageError | None = None
        # The active segment, its fd and where the next byte goes. Only the leader of
        # the epoch in flight (or close/the interval syncer, under _io_lock) touches them.
        self._io_lock = threading.Lock()
        self._segment = last
        self._write_offset = last.end_offset
        self._fd = self._open_segment(last.path)
        self._prealloc_end = os.fstat(self._fd).st_size  # zeros beyond _write_offset, if any
        self._prealloc_retry_at = 0.0  # after a failed zero-fill (disk full): when to try again
        self._unsynced = False
        # Commits written since the last successful fdatasync; stamped into each frame
        # (see _frame.pyx) so recovery can tell a torn unsynced run from damage.
        self._unsynced_frames = 0
        self._head = HeadWriter(io, log.directory)
        self._head_ok = True
        self._publish_head(log._visible_version, last.first_version, last.end_offset)
        self._syncer_stop = threading.Event()
        self._syncer: threading.Thread | None = None
        if durability == Durability.INTERVAL:
            self._syncer = threading.Thread(target=self._sync_periodically, args=(fsync_interval_ms / 1000,),
                                            name="udrflow-fsync", daemon=True)
            self._syncer.start()

    # ---- committing -------------------------------------------------------------

    def append(self, bodies: list[bytes], nbytes: int) -> int:
        """Commit each body as one version; return the first version once acknowledged."""
        ticket = self._enqueue(bodies, nbytes)
        self._await(ticket)
        return ticket.version_first

    def submit(self, bodies: list[bytes], nbytes: int, failures_seen: int | None = None,
               start: bool = False) -> _Ticket:
        """Queue the bodies (their versions are fixed now) without waiting; see ``wait``.

        ``failures_seen``: the value of ``failures`` the caller based this commit on. If an
        epoch has failed since, the commit may depend on writes that never happened, so
        it is refused (with that failure's error) before anything is queued.

        ``start=True``: a caller with more work to do before it waits lets a lone commit be
        pre-written (see the module docstring); nothing changes for anyone else."""
        ticket = self._enqueue(bodies, nbytes, failures_seen, start and self._start_writeback is not None)
        if ticket.prewrite is not None:
            self._prewrite(ticket)
        return ticket

    @property
    def failures(self) -> int:
        """How many epochs have failed since open; each failure discards every queued commit."""
        return self._failures

    @cython.locals(ticket=_Ticket)
    def wait(self, ticket: _Ticket) -> int:
        """Block until a submitted ticket is acknowledged; raise its error if it failed."""
        self._await(ticket)
        return ticket.version_first

    @cython.ccall
    @cython.locals(ticket=_Ticket)
    def _enqueue(self, bodies: list[bytes], nbytes: int, failures_seen: int | None = None,
                 prewrite: bool = False) -> _Ticket:
        nbytes += _OVERHEAD * len(bodies)
        self._lock.acquire()  # (not ``with``: compiled, that costs two bound methods)
        try:
            if self._poisoned is not None or self._closed:
                self._check_usable()
            if failures_seen is not None and failures_seen != self._failures:
                raise self._copy_error(self._last_failure)
            # Back-pressure: a burst of committers waits here instead of queueing without bound.
            while self._pending and self._pending_bytes + nbytes > PENDING_BYTES_MAX:
                self._log.wait_locked(None)
                self._check_usable()
            now = self._clock.now_us()
            if now < self._last_timestamp_us:
                now = self._last_timestamp_us  # commit timestamps never go backwards
            self._last_timestamp_us = now
            ticket = _Ticket(bodies, self._next_version, now, nbytes)
            self._next_version += len(bodies)
            self._pending.append(ticket)
            self._pending_bytes += nbytes
            if self._lingering and len(self._pending) >= self._last_epoch_tickets:
                self._arrivals.notify()
            if prewrite and len(self._pending) == 1 and not self._flushing and self._last_epoch_tickets == 1:
                ticket.prewrite = _Prewrite()  # the oldest ticket: it will head the next epoch
            return ticket
        finally:
            self._lock.release()

    @cython.ccall
    @cython.locals(ticket=_Ticket, pre=_Prewrite)
    def _prewrite(self, ticket: _Ticket) -> None:
        """Write ``ticket``'s frames where its epoch will start, and start their write-back.
        Skipped if its epoch has begun meanwhile, or if they do not fit in the active
        segment and its zeros written ahead (the epoch then does it all)."""
        pre = ticket.prewrite
        self._io_lock.acquire()  # (not ``with``: compiled, that costs two bound methods)
        try:
            if not pre.pending:
                return  # its epoch started first and writes it
            pre.pending = False
            pos = self._write_offset
            data, offsets, count = _frame.encode_frames(
                ticket.bodies, 0, ticket.version_first, ticket.timestamp_us, pos,
                min(self._segment_size_bytes, self._prealloc_end) - pos, self._unsynced_frames)
            if count != len(ticket.bodies):
                ticket.prewrite = None
                return
            segment, fd = self._segment, self._fd
            unsynced_at_start = self._unsynced_frames
            self._unsynced_frames += count
            try:
                self._write(segment, fd, [data], pos, pos, False, unsynced_at_start)
            except _EpochFailed as exc:
                pre.failure = exc  # its epoch fails with it (and undoes nothing more: the write did)
                return
            except BaseException as exc:  # e.g. KeyboardInterrupt: what is on disk is unknown
                err = LogPoisonedError(f"the log writer stopped after an unexpected error: {exc!r}",
                                       self._log.directory)
                err.__cause__ = exc
                pre.failure = _EpochFailed(err, poison=True)
                raise
            pre.segment, pre.offsets, pre.end = segment, offsets, pos + len(data)
            try:
                self._start_writeback(fd, pos, len(data))
            except OSError:
                # Only a hint: the fdatasync decides, and reports any write-back error
                # (starting one neither waits for it nor consumes it). Stop asking.
                self._start_writeback = None
        finally:
            self._io_lock.release()

    @cython.ccall
    @cython.locals(ticket=_Ticket, t=_Ticket)
    def _await(self, ticket: _Ticket) -> None:
        cond = self._cond
        lock = self._lock  # (cond's lock: see __init__)
        lock.acquire()  # (not ``with``: compiled, that costs two bound methods)
        try:
            while not ticket.done:
                if self._flushing:
                    if ticket.lock is None:
                        ticket.lock = threading.Lock()
                        ticket.lock.acquire()  # released by ticket.wake(), re-taken by our acquire below
                    ticket.sleeping = True
                    lock.release()
                    try:
                        ticket.lock.acquire()  # until ticket.wake(): done, or lead the next epoch
                    finally:
                        lock.acquire()
                    continue
                self._flushing = True
                if self._last_epoch_tickets > 1:
                    self._linger()
                batch = self._take_epoch()
                lock.release()
                failure: _EpochFailed | None = None
                result = None
                try:
                    result = self._write_epoch(batch)
                except _EpochFailed as exc:
                    failure = exc
                except BaseException as exc:  # a bug or KeyboardInterrupt mid-epoch: stop writing
                    err = LogPoisonedError(f"the log writer stopped after an unexpected error: {exc!r}",
                                           self._log.directory)
                    err.__cause__ = exc
                    failure = _EpochFailed(err, poison=True)
                finally:
                    lock.acquire()
                    self._flushing = False
                if failure is None:
                    self._complete(batch, result)
                    woken = batch
                else:
                    woken = self._fail(batch, failure)
                for t in woken:
                    t.wake()
                for t in self._pending:  # the first committer already waiting leads the next epoch
                    if t.sleeping:
                        t.wake()
                        break
                if self._log._cond_waiters:
                    cond.notify_all()  # followers of the log, back-pressured committers, close()
        finally:
            lock.release()
        if ticket.error is not None:
            raise ticket.error

    @cython.ccall
    def _linger(self) -> None:
        """As the new leader (lock held): if the previous epoch showed concurrency, wait up
        to half an fdatasync for as many commits as it held. Never with a single committer."""
        want = self._last_epoch_tickets
        if want <= 1 or len(self._pending) >= want or self._durability != Durability.SYNC:
            return
        deadline = time.monotonic() + min(max(self._fsync_ema_s / 2, LINGER_S_MIN), LINGER_S_MAX)
        self._lingering = True
        try:
            while len(self._pending) < want:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._arrivals.wait(remaining)
        finally:
            self._lingering = False

    @cython.ccall
    @cython.locals(ticket=_Ticket)
    def _take_epoch(self) -> list[_Ticket]:
        batch = [self._pending.popleft()]
        size = batch[0].nbytes
        while self._pending and size + self._pending[0].nbytes <= EPOCH_BYTES_MAX:
            ticket = self._pending.popleft()
            size += ticket.nbytes
            batch.append(ticket)
        self._pending_bytes -= size
        self._last_epoch_tickets = len(batch)
        return batch

    @cython.ccall
    @cython.locals(pre=_Prewrite, ticket=_Ticket)
    def _write_epoch(self, batch: list[_Ticket]):
        """Encode, write and (in sync mode) fdatasync one epoch. Runs without the lock."""
        self._io_lock.acquire()  # (not ``with``: compiled, that costs two bound methods)
        try:
            pre = batch[0].prewrite
            if pre is not None:
                pre.pending = False  # (if not done yet, it never will be: this epoch writes it)
                if pre.failure is not None:
                    raise pre.failure
                if pre.segment is None:
                    pre = None
                elif len(batch) == 1:
                    return self._finish_prewritten(batch[0], pre)
            if len(batch) == 1 and pre is None:
                updates = self._write_one(batch[0])
                if updates is not None:
                    return updates
            segment, fd = self._segment, self._fd
            epoch_start = self._write_offset
            unsynced_at_start = self._unsynced_frames
            pos = epoch_start
            buffers: list[bytes] = []
            updates: list[tuple[Segment, array.array, array.array, int]] = []
            seg_offsets = array.array("Q")
            seg_stamps = array.array("q")
            sealed_any = False
            if pre is not None:  # the head ticket's frames are on disk already, from epoch_start
                unsynced_at_start -= len(batch[0].bodies)
                seg_offsets.extend(pre.offsets)
                seg_stamps.extend(array.array("q", [batch[0].timestamp_us]) * len(batch[0].bodies))
                pos = pre.end
            for ticket in (batch[1:] if pre is not None else batch):
                bodies, start, n = ticket.bodies, 0, len(ticket.bodies)
                while start < n:
                    budget = self._segment_size_bytes - pos
                    data, offsets, count = _frame.encode_frames(
                        bodies, start, ticket.version_first + start, ticket.timestamp_us, pos, budget,
                        self._unsynced_frames)
                    if count == 0:
                        # The segment is full: seal it (write, cut the preallocated zeros, fdatasync)
                        # and roll. Recovery treats zeros at the end of a sealed segment as damage.
                        require(pos > SEGMENT_HEADER_BYTES, "a body larger than an empty segment passed validation")
                        self._write_frames(segment, fd, buffers, pos, epoch_start, sealed_any, unsynced_at_start)
                        self._cut(segment, fd, pos)
                        self._sync(segment, fd)
                        updates.append((segment, seg_offsets, seg_stamps, pos))
                        segment, fd = self._roll(ticket.version_first + start)
                        self._prealloc_end = SEGMENT_HEADER_BYTES
                        sealed_any = True
                        pos = SEGMENT_HEADER_BYTES
                        buffers, seg_offsets, seg_stamps = [], array.array("Q"), array.array("q")
                        continue
                    self._unsynced_frames += count
                    buffers.append(data)
                    seg_offsets.extend(offsets)
                    seg_stamps.extend(array.array("q", [ticket.timestamp_us]) * count)
                    pos += len(data)
                    start += count
            self._write_frames(segment, fd, buffers, pos, epoch_start, sealed_any, unsynced_at_start)
            if self._durability == Durability.SYNC:
                self._sync(segment, fd)
            else:
                self._unsynced = True
            updates.append((segment, seg_offsets, seg_stamps, pos))
            self._write_offset = pos
            self._publish_head(batch[-1].version_first + len(batch[-1].bodies) - 1, segment.first_version, pos)
            return updates
        finally:
            self._io_lock.release()

    @cython.ccall
    @cython.locals(ticket=_Ticket, pre=_Prewrite)
    def _finish_prewritten(self, ticket: _Ticket, pre: _Prewrite):
        """``_write_epoch`` of an epoch of one pre-written ticket: only the fdatasync is left."""
        self._sync(pre.segment, self._fd)
        self._write_offset = pre.end
        count = len(ticket.bodies)
        self._publish_head(ticket.version_first + count - 1, pre.segment.first_version, pre.end)
        return [(pre.segment, pre.offsets, _stamps(ticket.timestamp_us, count), pre.end)]

    @cython.ccall
    @cython.locals(ticket=_Ticket)
    def _write_one(self, ticket: _Ticket):
        """``_write_epoch`` of an epoch of one ticket whose frames fit in the active segment
        and its zeros written ahead: the lone committer's case, with nothing to roll, fill or
        split. None (nothing done) if it does not fit. Holds ``_io_lock``."""
        pos = self._write_offset
        data, offsets, count = _frame.encode_frames(
            ticket.bodies, 0, ticket.version_first, ticket.timestamp_us, pos,
            min(self._segment_size_bytes, self._prealloc_end) - pos, self._unsynced_frames)
        if count != len(ticket.bodies):
            return None
        segment, unsynced_at_start = self._segment, self._unsynced_frames
        self._unsynced_frames += count
        self._write(segment, self._fd, [data], pos, pos, False, unsynced_at_start)
        if self._durability == Durability.SYNC:
            self._sync(segment, self._fd)
        else:
            self._unsynced = True
        end = pos + len(data)
        self._write_offset = end
        self._publish_head(ticket.version_first + count - 1, segment.first_version, end)
        return [(segment, offsets, _stamps(ticket.timestamp_us, count), end)]

    @cython.ccall
    def _write_frames(self, segment: Segment, fd: int, buffers: list[bytes], end: int,
                      epoch_start: int, sealed_any: bool, unsynced_at_start: int) -> None:
        """Write ``buffers`` so they end at ``end``, first zero-filling ahead if needed."""
        if end > self._prealloc_end and _monotonic() >= self._prealloc_retry_at:
            self._fill_ahead(segment, fd, end)
        self._write(segment, fd, buffers, end - sum(map(len, buffers)), epoch_start, sealed_any, unsynced_at_start)

    def _fill_ahead(self, segment: Segment, fd: int, end: int) -> None:
        """Zero-fill ahead of the log's end (PREALLOC_STEP_BYTES). Only an optimization: if
        the zeros do not fit (disk full), take them back and let the frames grow the file,
        so a commit that fits is written whatever room the zeros would have needed; the
        next try is PREALLOC_RETRY_S later."""
        start = self._prealloc_end
        fill_end = min(max(end, start) + PREALLOC_STEP_BYTES, max(end, self._segment_size_bytes))
        size = fill_end - start
        zeros = [_ZERO_BLOCK] * (size // len(_ZERO_BLOCK))
        if size % len(_ZERO_BLOCK):
            zeros.append(bytes(size % len(_ZERO_BLOCK)))
        try:
            self._pwritev(fd, zeros, start)
        except OSError as exc:
            try:
                self._io.ftruncate(fd, start)  # only zeros lie past ``start``: no frame is touched
            except OSError as undo_exc:
                raise _EpochFailed(self._poison_error("zeros written ahead could not be taken back", undo_exc),
                                   True) from exc
            self._prealloc_retry_at = _monotonic() + PREALLOC_RETRY_S
            return
        self._prealloc_end = fill_end

    def _cut(self, segment: Segment, fd: int, end: int) -> None:
        if self._prealloc_end > end:
            try:
                self._io.ftruncate(fd, end)
            except OSError as exc:
                raise _EpochFailed(self._poison_error(f"cutting {segment.path} to its last frame failed", exc),
                                   True) from exc
            self._prealloc_end = end

    @cython.ccall
    def _write(self, segment: Segment, fd: int, buffers: list[bytes], offset: int,
               epoch_start: int, sealed_any: bool, unsynced_at_start: int) -> None:
        try:
            self._pwritev(fd, buffers, offset)
        except OSError as exc:
            error = storage_error_from_os(exc, "append to the log segment", segment.path)
            error.__cause__ = exc
            if sealed_any:  # part of this epoch is already in a sealed segment: cannot undo
                raise _EpochFailed(self._poison_error("a write failed after a segment was sealed", exc), True) from exc
            try:
                self._io.ftruncate(fd, epoch_start)
            except OSError as undo_exc:
                raise _EpochFailed(self._poison_error("a failed write could not be undone", undo_exc), True) from exc
            self._unsynced_frames = unsynced_at_start
            self._prealloc_end = epoch_start
            raise _EpochFailed(error, poison=False) from exc

    @cython.ccall
    def _sync(self, segment: Segment, fd: int) -> None:
        try:
            started = _monotonic()
            self._fdatasync(fd)
            self._fsync_ema_s += (_monotonic() - started - self._fsync_ema_s) / 8
            self._unsynced_frames = 0
        except OSError as exc:
            raise _EpochFailed(self._poison_error(f"fdatasync of {segment.path} failed", exc), True) from exc

    def _roll(self, first_version: int) -> tuple[Segment, int]:
        try:
            path = create_segment(self._io, self._log.directory, first_version)
            fd = self._open_segment(path)
        except OSError as exc:
            raise _EpochFailed(self._poison_error("could not create the next segment", exc), True) from exc
        self._io.close(self._fd)
        self._segment, self._fd = Segment(path, first_version), fd
        return self._segment, fd

    def _open_segment(self, path: str) -> int:
        try:
            return self._io.open(path, os.O_WRONLY)
        except OSError as exc:
            raise storage_error_from_os(exc, "open the log segment for writing", path) from exc

    def _poison_error(self, what: str, exc: OSError) -> LogPoisonedError:
        err = LogPoisonedError(
            f"the log writer of {self._log.directory} is poisoned: {what} ({exc.strerror or exc}); "
            f"no commit is acknowledged after this. Reopen the database to recover from what is on disk.",
            self._log.directory)
        err.__cause__ = exc
        return err

    @cython.ccall
    def _publish_head(self, version: int, segment_first_version: int, end_offset: int) -> None:
        # HEAD is a hint for readers in other processes; the commits are already durable,
        # so a failure here must not fail them. Readers without HEAD scan to end of file.
        if not self._head_ok:
            return
        try:
            self._head.publish(version, segment_first_version, end_offset, self._durability == Durability.SYNC)
        except OSError:
            self._head_ok = False

    @cython.ccall
    @cython.locals(ticket=_Ticket, last=_Ticket)
    def _complete(self, batch: list[_Ticket], updates) -> None:
        """Index the epoch's frames and make its commits visible. Holds the lock."""
        log = self._log
        for segment, offsets, stamps, end in updates:
            if segment is not log._segments[-1]:
                require(segment.first_version == log._segments[-1].last_version + 1,
                        "a new segment must start right after the previous one")
                log._segments.append(segment)
            segment.offsets.extend(offsets)
            segment.timestamps.extend(stamps)
            segment.end_offset = end
        last = batch[-1]
        visible = last.version_first + len(last.bodies) - 1
        tail = log._segments[-1]
        # (Segment.last_version, inlined: a property of a Python class is a Python frame.
        # Not require(): its message would be built every epoch.)
        if visible != tail.first_version + len(tail.offsets) - 1:
            require(False, f"index ends at {tail.last_version}, epoch ends at {visible}")
        log._visible_version = visible
        for ticket in batch:
            ticket.done = True
            ticket.bodies = None  # let the payloads go now, not when the caller drops the ticket

    def _fail(self, batch: list[_Ticket], failure: _EpochFailed) -> list[_Ticket]:
        """Fail the epoch's tickets and everything queued behind them. Holds the lock."""
        if failure.poison:
            self._poisoned = failure.error
        self._failures += 1
        self._last_failure = failure.error
        failed = list(batch) + list(self._pending)
        self._pending.clear()
        self._pending_bytes = 0
        self._next_version = self._log._visible_version + 1
        written = {id(t) for t in batch}
        for ticket in failed:
            pre = ticket.prewrite
            if failure.poison and (id(ticket) in written or (pre is not None and not pre.pending)):
                # Its frames may be on disk whole although the fsync (or the undo) failed.
                ticket.error = self._unknown_outcome(failure.error, ticket)
            else:
                ticket.error = self._copy_error(failure.error)
            ticket.done = True
            ticket.bodies = None
        return failed

    @cython.ccall
    @cython.locals(ticket=_Ticket)
    def _unknown_outcome(self, error: StorageError, ticket: _Ticket) -> CommitOutcomeUnknownError:
        first = ticket.version_first
        last = first + len(ticket.bodies) - 1
        versions = f"version {first}" if first == last else f"versions {first}..{last}"
        err = CommitOutcomeUnknownError(
            f"the commit at {versions} may or may not be durable: it was written to the log of "
            f"{self._log.directory}, then {error}. Reopen the database and read it to learn whether the commit is "
            f"there before retrying (a retry could apply it twice).", error.path)
        err.__cause__ = error.__cause__
        return err

    @staticmethod
    def _copy_error(error: StorageError) -> StorageError:
        # One exception instance per raiser: threads must not share a traceback.
        err = type(error)(str(error), error.path)
        err.__cause__ = error.__cause__
        return err

    @cython.ccall
    def _check_usable(self) -> None:
        if self._poisoned is not None:
            raise self._copy_error(self._poisoned)
        if self._closed:
            raise DatabaseClosedError(f"the log of {self._log.directory} is closed")

    @property
    def poisoned(self) -> bool:
        return self._poisoned is not None

    # ---- background sync and close ----------------------------------------------

    def _sync_periodically(self, interval_s: float) -> None:
        while not self._syncer_stop.wait(interval_s):
            with self._io_lock:
                if not self._unsynced or self._poisoned is not None:
                    continue
                try:
                    self._io.fdatasync(self._fd)
                    self._unsynced = False
                    self._unsynced_frames = 0
                except OSError as exc:
                    with self._cond:
                        self._poisoned = self._poison_error("the interval fdatasync failed", exc)
                        self._cond.notify_all()
                    return

    def close(self) -> None:
        """Wait for queued commits, make everything written durable, release the files."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            while self._flushing or self._pending:
                if not self._flushing:
                    # Nobody is left to lead the queued commits' epoch (their threads are
                    # gone): lead it here so close never strands them.
                    ticket = self._pending[-1]
                    self._cond.release()
                    try:
                        try:
                            self._await(ticket)
                        except StorageError:
                            pass
                    finally:
                        self._cond.acquire()
                else:
                    self._log.wait_locked(None)
        self._syncer_stop.set()
        if self._syncer is not None:
            self._syncer.join()
        with self._io_lock:
            try:
                if self._poisoned is None and self._prealloc_end > self._write_offset:
                    # Give back the zeros written ahead: a closed log takes only what it holds.
                    self._io.ftruncate(self._fd, self._write_offset)
                    self._prealloc_end = self._write_offset
                    self._unsynced = True
                if self._unsynced and self._poisoned is None:
                    self._io.fdatasync(self._fd)
                    self._unsynced = False
            except OSError as exc:
                raise self._poison_error("the fdatasync at close failed", exc) from exc
            finally:
                self._io.close(self._fd)
                self._head.close()
        if self._poisoned is not None and self._durability != Durability.SYNC:
            # Commits were acknowledged before their fsync, and an fsync failed: close is
            # the last chance to tell the owner that some of them may not be durable.
            self._check_usable()


def check_durability(durability: str) -> str:
    from udrflow.errors import InvalidOptionError

    if durability not in Durability.ALL:
        raise InvalidOptionError(f"durability must be one of {', '.join(map(repr, Durability.ALL))}: got {durability!r}")
    return durability

