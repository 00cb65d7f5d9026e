"""Waking a reader in another process when the writer publishes a new HEAD.

On Linux we watch the log directory's HEAD file with inotify (through ctypes: no
dependency), so a follower sleeps in ``select`` and wakes within microseconds of the
writer's ``pwrite``. Elsewhere, or if inotify is unavailable, the follower polls with a
short backoff; both paths re-read HEAD, so a missed wake-up only costs one poll interval.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import select
import sys

_IN_MODIFY = 0x00000002
_IN_CREATE = 0x00000100
_IN_MOVED_TO = 0x00000080
_IN_NONBLOCK = 0o4000
_IN_CLOEXEC = 0o2000000

POLL_INTERVAL_MIN_S = 0.0002
POLL_INTERVAL_MAX_S = 0.005

_libc = None
if sys.platform.startswith("linux"):
    try:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        _libc.inotify_init1.argtypes = [ctypes.c_int]
        _libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
    except (OSError, AttributeError):
        _libc = None


class HeadWatcher:
    """Blocks until the directory's HEAD may have changed, or a timeout passes."""

    def __init__(self, directory: str) -> None:
        self._fd = -1
        self._poll_s = POLL_INTERVAL_MIN_S
        if _libc is not None:
            fd = _libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
            if fd >= 0:
                # Watch the directory: HEAD may not exist yet, and segments appear by rename.
                mask = _IN_MODIFY | _IN_CREATE | _IN_MOVED_TO
                if _libc.inotify_add_watch(fd, os.fsencode(directory), mask) >= 0:
                    self._fd = fd
                else:
                    os.close(fd)

    @property
    def uses_inotify(self) -> bool:
        return self._fd >= 0

    def wait(self, timeout_s: float | None) -> None:
        if self._fd >= 0:
            ready, _, _ = select.select([self._fd], [], [], timeout_s)
            if ready:
                try:
                    while os.read(self._fd, 65536):
                        pass
                except BlockingIOError:
                    pass
            return
        delay = self._poll_s if timeout_s is None else min(self._poll_s, timeout_s)
        import time

        time.sleep(delay)
        self._poll_s = min(self._poll_s * 2, POLL_INTERVAL_MAX_S)

    def reset_backoff(self) -> None:
        self._poll_s = POLL_INTERVAL_MIN_S

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
