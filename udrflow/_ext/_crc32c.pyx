# cython: language_level=3, boundscheck=False, wraparound=False
"""CRC32C for Python callers (segment headers, the HEAD file, tests).

Frames are checksummed inside the frame codec without crossing into Python."""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_CheckExact, PyBytes_GET_SIZE
from libc.stdint cimport uint32_t
from udrflow._ext.crc32c cimport udr_crc32c, udr_crc32c_init, udr_crc32c_mode

udr_crc32c_init()


# Below this many bytes the GIL is kept: releasing it costs more than the CRC.
cdef enum:
    _NOGIL_BYTES_MIN = 4096


def crc32c(data, uint32_t crc=0) -> int:
    """Return the CRC32C of ``data`` (any contiguous buffer), continuing from ``crc`` (0
    starts a new one).

    >>> hex(crc32c(b"123456789"))
    '0xe3069283'
    """
    cdef const unsigned char[::1] view
    cdef const unsigned char *p
    cdef size_t n
    if PyBytes_CheckExact(data):
        # bytes, read in place: acquiring a typed memoryview costs more than the CRC of the
        # small bodies checksummed on every commit (the HEAD file's).
        n = <size_t> PyBytes_GET_SIZE(data)
        p = <const unsigned char *> PyBytes_AS_STRING(data)
    else:
        view = data
        n = view.shape[0]
        p = &view[0] if n else NULL
    if n == 0:
        return crc
    if n < _NOGIL_BYTES_MIN:
        return udr_crc32c(crc, p, n)
    with nogil:
        crc = udr_crc32c(crc, p, n)
    return crc


def implementation() -> str:
    """Which implementation runs here: ``"sse4.2"`` (hardware) or ``"table"``."""
    return "sse4.2" if udr_crc32c_mode == 2 else "table"
