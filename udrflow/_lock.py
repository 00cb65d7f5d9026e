"""The writer lock: one writing process per database directory.

``flock`` on ``<db>/LOCK``: the kernel releases it when the process dies, even by
SIGKILL, so a crash never leaves a stale lock. The holder writes its pid into the file
so a second writer's error can name it. Readers never take it.
"""

from __future__ import annotations

import fcntl
import os

from udrflow.errors import DatabaseLockedError, storage_error_from_os

LOCK_NAME = "LOCK"


class WriterLock:
    def __init__(self, db_path: str) -> None:
        self.path = os.path.join(db_path, LOCK_NAME)
        try:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise storage_error_from_os(exc, "create the lock file", self.path) from exc
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(self._fd)
            raise DatabaseLockedError(
                f"database {db_path} is already open for writing by process {holder} (lock file {self.path}): "
                f"expected no other writer. Open it with readonly=True to read while that process writes.") from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        if self._fd >= 0:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = -1
