# cython: language_level=3, boundscheck=False, wraparound=False
"""Positional writes of a list of byte strings, without giving up the GIL for small ones,
and starting the write-back of what was written.

``os.pwritev`` always releases the GIL. For the few hundred bytes of a typical epoch
the syscall takes microseconds, but getting the GIL back after it can take tens of
microseconds when other committing threads grab it meanwhile; the log writer holds it
across small writes instead (measured in benchmarks/bench_log.py, part c).

``start_writeback`` asks the kernel to start writing a byte range to the device now
(Linux ``sync_file_range(SYNC_FILE_RANGE_WRITE)``), without waiting and without any
durability promise: the fdatasync that follows still decides. About half of an
fdatasync of a small append is that data write (the other half the device's cache
flush), so a committer that starts it, does its bookkeeping, and only then calls
fdatasync hides that half behind the bookkeeping (measured in benchmarks/bench_tables.py,
part c). Write-out errors are not lost: the write-only form neither waits nor consumes
the file's write-back error state, so the fdatasync reports them.
"""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE, PyBytes_CheckExact
from libc.errno cimport EINTR, errno
from libc.stdlib cimport free, malloc
from posix.types cimport off_t

cdef extern from "sys/uio.h" nogil:
    struct iovec:
        void *iov_base
        size_t iov_len
    ssize_t pwritev(int fd, const iovec *iov, int iovcnt, off_t offset)

cdef extern from "fastio_impl.h" nogil:
    int fastio_start_writeback(int fd, long long offset, long long nbytes)
    int FASTIO_HAVE_WRITEBACK

import os

GIL_RELEASE_BYTES_MIN = 256 * 1024
_IOV_MAX = 1024


def pwrite_all(int fd, list buffers, off_t offset):
    """Write every ``bytes`` in ``buffers`` back to back at ``offset``, looping over short
    writes and EINTR. Holds the GIL below GIL_RELEASE_BYTES_MIN bytes. Raises OSError."""
    cdef Py_ssize_t n = len(buffers), i, total = 0, k
    cdef iovec *iov
    cdef ssize_t written
    cdef int count
    cdef object b
    if n == 0:
        return
    for i in range(n):
        b = buffers[i]
        if not PyBytes_CheckExact(b):
            raise TypeError(f"pwrite_all: buffer {i} is {type(b).__name__}, expected bytes")
        total += PyBytes_GET_SIZE(b)
    iov = <iovec *> malloc(n * sizeof(iovec))
    if iov == NULL:
        raise MemoryError()
    try:
        for i in range(n):
            b = buffers[i]
            iov[i].iov_base = <void *> PyBytes_AS_STRING(b)
            iov[i].iov_len = PyBytes_GET_SIZE(b)
        k = 0
        while k < n:
            count = <int>(n - k if n - k < _IOV_MAX else _IOV_MAX)
            if total >= GIL_RELEASE_BYTES_MIN:
                with nogil:
                    written = pwritev(fd, iov + k, count, offset)
            else:
                written = pwritev(fd, iov + k, count, offset)
            if written < 0:
                if errno == EINTR:
                    continue
                raise OSError(errno, os.strerror(errno))
            offset += written
            # Skip what was written; a short write leaves part of one buffer.
            while k < n and <size_t>written >= iov[k].iov_len:
                written -= iov[k].iov_len
                k += 1
            if k < n and written:
                iov[k].iov_base = <void *>(<char *> iov[k].iov_base + written)
                iov[k].iov_len -= written
    finally:
        free(iov)


HAVE_START_WRITEBACK = bool(FASTIO_HAVE_WRITEBACK)


def start_writeback(int fd, long long offset, long long nbytes):
    """Start writing ``nbytes`` at ``offset`` of ``fd`` to the device, without waiting.
    Raises OSError if the kernel refuses (the caller may then stop asking); a no-op
    where the call does not exist (HAVE_START_WRITEBACK is False)."""
    cdef int rc
    with nogil:
        rc = fastio_start_writeback(fd, offset, nbytes)
    if rc != 0:
        raise OSError(rc, os.strerror(rc))
