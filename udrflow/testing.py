"""Test doubles that ship with udrflow, for its own tests and for yours.

- :class:`FaultyFileIO`: a file layer that fails chosen operations with a chosen errno,
  and that can simulate a power loss (:meth:`FaultyFileIO.crash`): every byte not yet
  made durable by fsync/fdatasync is lost (optionally leaving a torn part of it), and
  every rename whose directory was not fsynced afterwards is undone.
- :class:`ManualClock`: a clock that only moves when told to.

>>> import errno, tempfile, udrflow
>>> from udrflow.testing import FaultyFileIO
>>> io = FaultyFileIO()
>>> db = udrflow.open(tempfile.mkdtemp() + "/t.udr", io=io)
>>> io.fail("fdatasync", errno.EIO)
>>> db.log.append(b"x")
Traceback (most recent call last):
...
udrflow.errors.LogPoisonedError: ...
>>> db.close()
"""

from __future__ import annotations

import errno as _errno
import os
import random
import threading

from udrflow._fileio import FileIO

__all__ = ["FaultyFileIO", "ManualClock"]


class ManualClock:
    """A clock for tests: ``now_us()`` returns what you set, and moves only by ``advance``."""

    def __init__(self, start_us: int = 1_700_000_000_000_000) -> None:
        self._now_us = start_us

    def now_us(self) -> int:
        return self._now_us

    def advance(self, delta_us: int) -> None:
        self._now_us += delta_us

    def set(self, now_us: int) -> None:
        self._now_us = now_us


class FaultyFileIO(FileIO):
    """A FileIO that can fail operations and forget unsynced writes.

    Operation names: ``open``, ``pwritev``, ``fdatasync``, ``fsync``, ``ftruncate``,
    ``replace``, ``unlink``, ``mkdir``, ``fsync_dir``.
    """

    def __init__(self, seed: int | None = None) -> None:
        self._lock = threading.Lock()
        self._faults: dict[str, list[list]] = {}  # op -> [[skip, errno, times_left], ...]
        self.calls: dict[str, int] = {}
        self._fd_paths: dict[int, str] = {}
        self._synced_size: dict[str, int] = {}  # durable length of each file we wrote
        self._unsynced_renames: list[tuple[str, str]] = []
        self.crashed = False
        self.random = random.Random(seed)

    # ---- fault plan --------------------------------------------------------------

    def fail(self, op: str, code: int = _errno.EIO, *, after: int = 0, times: int = 1) -> None:
        """Make the ``op`` call after the next ``after`` ones fail with ``code``, ``times`` times
        (``times=-1``: forever)."""
        with self._lock:
            self._faults.setdefault(op, []).append([after, code, times])

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def _enter(self, op: str, path: str = "") -> None:
        with self._lock:
            self.calls[op] = self.calls.get(op, 0) + 1
            if self.crashed:
                raise OSError(_errno.EIO, f"simulated machine crash ({op})", path)
            for fault in self._faults.get(op, []):
                if fault[0] > 0:
                    fault[0] -= 1
                    continue
                if fault[2] == 0:
                    continue
                fault[2] -= 1
                raise OSError(fault[1], os.strerror(fault[1]) + f" (injected into {op})", path)

    # ---- operations --------------------------------------------------------------

    def open(self, path, flags, mode=0o644):
        self._enter("open", path)
        existed = os.path.exists(path)
        fd = super().open(path, flags, mode)
        with self._lock:
            self._fd_paths[fd] = path
            if not existed:
                self._synced_size.setdefault(path, 0)
            else:
                self._synced_size.setdefault(path, os.fstat(fd).st_size)
        return fd

    def close(self, fd):
        with self._lock:
            self._fd_paths.pop(fd, None)
        super().close(fd)

    def pwritev(self, fd, buffers, offset):
        self._enter("pwritev", self._fd_paths.get(fd, ""))
        super().pwritev(fd, buffers, offset)

    def _mark_synced(self, fd):
        path = self._fd_paths.get(fd)
        if path is not None:
            with self._lock:
                self._synced_size[path] = os.fstat(fd).st_size

    def fdatasync(self, fd):
        self._enter("fdatasync", self._fd_paths.get(fd, ""))
        super().fdatasync(fd)
        self._mark_synced(fd)

    def fsync(self, fd):
        self._enter("fsync", self._fd_paths.get(fd, ""))
        super().fsync(fd)
        self._mark_synced(fd)

    def ftruncate(self, fd, length):
        self._enter("ftruncate", self._fd_paths.get(fd, ""))
        super().ftruncate(fd, length)

    def replace(self, src, dst):
        self._enter("replace", dst)
        super().replace(src, dst)
        with self._lock:
            self._synced_size[dst] = self._synced_size.pop(src, 0)
            self._unsynced_renames.append((src, dst))

    def unlink(self, path):
        self._enter("unlink", path)
        super().unlink(path)

    def mkdir(self, path):
        self._enter("mkdir", path)
        super().mkdir(path)

    def fsync_dir(self, path):
        self._enter("fsync_dir", path)
        super().fsync_dir(path)
        with self._lock:
            path = os.path.abspath(path)
            self._unsynced_renames = [(s, d) for s, d in self._unsynced_renames
                                      if os.path.dirname(os.path.abspath(d)) != path]

    # ---- power loss --------------------------------------------------------------

    def crash(self, torn: bool = True) -> None:
        """Simulate a machine crash now: from here on every operation fails, and on disk
        each file we wrote keeps only its fsynced bytes (plus, with ``torn``, a random part
        of the lost bytes, some of them zeroed, as a disk may leave), and renames that were
        never followed by an fsync of their directory are undone."""
        with self._lock:
            self.crashed = True
            for _src, dst in reversed(self._unsynced_renames):
                if os.path.exists(dst):
                    os.unlink(dst)
                self._synced_size.pop(dst, None)
            self._unsynced_renames.clear()
            for path, synced in self._synced_size.items():
                if not os.path.exists(path):
                    continue
                size = os.path.getsize(path)
                if size <= synced:
                    continue
                keep = b""
                if torn:
                    with open(path, "rb") as f:
                        f.seek(synced)
                        lost = f.read(size - synced)
                    n = self.random.randint(0, len(lost))
                    keep = bytearray(lost[:n])
                    if keep and self.random.random() < 0.5:  # a page that never made it reads as zeros
                        a = self.random.randrange(len(keep))
                        b = min(len(keep), a + self.random.randint(1, 4096))
                        keep[a:b] = bytes(b - a)
                with open(path, "r+b") as f:
                    f.truncate(synced)
                    if keep:
                        f.seek(synced)
                        f.write(bytes(keep))
