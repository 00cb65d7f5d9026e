# cython: language_level=3, boundscheck=False, wraparound=False
"""CRC32C for Python callers (segment headers, the HEAD file, tests).

Frames are checksummed inside the frame codec without crossing into Python."""
from libc.stdint cimport uint32_t
from udrflow._ext.crc32c cimport udr_crc32c, udr_crc32c_init, udr_crc32c_mode

udr_crc32c_init()


def crc32c(const unsigned char[::1] data, uint32_t crc=0) -> int:
    """Return the CRC32C of ``data``, continuing from ``crc`` (0 starts a new one).

    >>> hex(crc32c(b"123456789"))
    '0xe3069283'
    """
    cdef size_t n = data.shape[0]
    if n == 0:
        return crc
    with nogil:
        crc = udr_crc32c(crc, &data[0], n)
    return crc


def implementation() -> str:
    """Which implementation runs here: ``"sse4.2"`` (hardware) or ``"table"``."""
    return "sse4.2" if udr_crc32c_mode == 2 else "table"
