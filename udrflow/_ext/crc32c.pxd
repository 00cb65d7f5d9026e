# Shared C declaration of the CRC32C routine (crc32c_impl.h), cimported by the frame codec.
from libc.stdint cimport uint32_t

cdef extern from "crc32c_impl.h":
    void udr_crc32c_init()
    int udr_crc32c_mode
    uint32_t udr_crc32c(uint32_t crc, const unsigned char *p, size_t n) nogil
