# cython: language_level=3, boundscheck=False, wraparound=False
"""Per-row hashes of variable-length key values, for content-defined chunk boundaries.

Works directly on an Arrow large_binary array's offset and data buffers: one call per
column, no Python object per row. The hash is CRC32C (fast, stable across processes and
machines, unlike Python's ``hash``), which is all boundary selection needs.
"""
from cpython.array cimport array, clone
from libc.stdint cimport int64_t, uint32_t
from udrflow._ext.crc32c cimport udr_crc32c, udr_crc32c_init

import array as _pyarray

udr_crc32c_init()
cdef array _U32 = _pyarray.array("I")


def hash_large_binary(const int64_t[::1] offsets, const unsigned char[::1] data, Py_ssize_t offset,
                      Py_ssize_t length):
    """CRC32C of each of ``length`` values starting at array offset ``offset``; returns array('I')."""
    cdef array out = clone(_U32, length, False)
    cdef uint32_t *o = out.data.as_uints
    cdef Py_ssize_t i
    cdef int64_t a, b
    cdef const unsigned char *base = &data[0] if data.shape[0] else NULL
    with nogil:
        for i in range(length):
            a = offsets[offset + i]
            b = offsets[offset + i + 1]
            o[i] = udr_crc32c(0, base + a, <size_t>(b - a)) if b > a else 0
    return out
