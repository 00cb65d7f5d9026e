"""The file operations that durability depends on, behind one injectable object.

The log never calls ``os.write``/``os.fsync``/``os.replace`` directly: it goes through a
:class:`FileIO`, so ``udrflow.testing.FaultyFileIO`` can make any of them fail or lose
unsynced bytes, and tests can prove what survives. Methods raise plain ``OSError``;
callers translate it with :func:`udrflow.errors.storage_error_from_os`, which knows
the path and the action.
"""

from __future__ import annotations

import os
import secrets

from udrflow._ext._fastio import pwrite_all

_IOV_MAX = 1024  # the most buffers one pwritev may take on Linux


class FileIO:
    """Real file operations. Subclass it to inject faults (see ``udrflow.testing``)."""

    def open(self, path: str, flags: int, mode: int = 0o644) -> int:
        return os.open(path, flags | os.O_CLOEXEC, mode)

    def close(self, fd: int) -> None:
        os.close(fd)

    def pwritev(self, fd: int, buffers: list[bytes], offset: int) -> None:
        """Write all ``buffers`` back to back at ``offset``, looping over short writes."""
        if all(type(b) is bytes for b in buffers):
            pwrite_all(fd, buffers, offset)  # Cython: keeps the GIL for small writes
            return
        views = [memoryview(b) for b in buffers if len(b)]
        while views:
            batch = views[:_IOV_MAX]
            written = os.pwritev(fd, batch, offset)
            offset += written
            # Drop what was written; a short write leaves the rest of one buffer.
            while views and written >= len(views[0]):
                written -= len(views[0])
                views.pop(0)
            if written:
                views[0] = views[0][written:]

    def fdatasync(self, fd: int) -> None:
        os.fdatasync(fd)

    def fsync(self, fd: int) -> None:
        os.fsync(fd)

    def ftruncate(self, fd: int, length: int) -> None:
        os.ftruncate(fd, length)

    def replace(self, src: str, dst: str) -> None:
        os.replace(src, dst)

    def unlink(self, path: str) -> None:
        os.unlink(path)

    def mkdir(self, path: str) -> None:
        os.mkdir(path, 0o755)

    def fsync_dir(self, path: str) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


TEMP_MARKER = ".tmp-"


def temp_path_for(path: str) -> str:
    """A unique sibling temp name; leftovers are recognised (and removed) by TEMP_MARKER."""
    return f"{path}{TEMP_MARKER}{os.getpid()}-{secrets.token_hex(4)}"


def write_file_durably(io: FileIO, path: str, data: bytes) -> None:
    """Create or replace ``path`` with ``data`` so a crash leaves the old or the new file,
    never a mix: write a temp file, fsync it, rename it over ``path``, fsync the directory."""
    tmp = temp_path_for(path)
    fd = io.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    try:
        io.pwritev(fd, [data], 0)
        io.fsync(fd)
    except BaseException:
        io.close(fd)
        try:
            io.unlink(tmp)
        except OSError:
            pass
        raise
    io.close(fd)
    io.replace(tmp, path)
    io.fsync_dir(os.path.dirname(os.path.abspath(path)))


def remove_file(io: FileIO, path: str, what: str) -> bool:
    """Unlink ``path`` (a ``what``, for the error message); False if it was already gone."""
    from udrflow.errors import storage_error_from_os

    try:
        io.unlink(path)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise storage_error_from_os(exc, f"remove the {what}", path) from exc
    return True


def make_dirs_durably(io: FileIO, path: str) -> None:
    """Create ``path`` and any missing parents, fsyncing each parent so the new entries survive."""
    path = os.path.abspath(path)
    missing = []
    while not os.path.isdir(path):
        missing.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    for p in reversed(missing):
        try:
            io.mkdir(p)
        except FileExistsError:
            continue
        io.fsync_dir(os.path.dirname(p))
