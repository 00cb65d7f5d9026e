"""The writer lock: one writing process per database directory.

``flock`` on the database directory itself: the kernel releases it when the process dies,
even by SIGKILL, so a crash never leaves a stale lock, and deleting or replacing a file
cannot let a second writer in (a lock on a file named ``LOCK`` could be: a second writer
would create a new file of that name and lock that instead). The holder writes its pid
into ``<db>/LOCK`` only so a second writer's error can name it. Readers never take it.
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
            self._fd = os.open(db_path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise storage_error_from_os(exc, "open the database directory to lock it", db_path) from exc
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise DatabaseLockedError(
                f"database {db_path} is already open for writing by process {self._holder()} (a lock on the "
                f"directory): expected no other writer. Open it with readonly=True to read while that process "
                f"writes.") from None
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
            try:
                os.write(fd, f"{os.getpid()}\n".encode())
            finally:
                os.close(fd)
        except OSError:
            pass  # the pid is only for the message of a second writer; the lock holds without it

    def _holder(self) -> str:
        try:
            with open(self.path, "rb") as f:
                return f.read(32).decode(errors="replace").strip() or "unknown"
        except OSError:
            return "unknown"

    def release(self) -> None:
        if self._fd >= 0:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = -1
