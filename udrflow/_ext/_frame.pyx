# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The frame codec: the byte format of one commit in a segment, and its hot loops.

A frame is ``[u32 length][u32 crc32c][payload]`` (little-endian), where ``length`` counts
the payload bytes and ``crc32c`` covers the four length bytes followed by the payload,
so a flipped length is caught like a flipped payload byte. The payload starts with the
commit header the log itself needs, ``[u64 version][i64 timestamp_us][u32 unsynced_index]``,
followed by the body the layers above own (opaque here).

``unsynced_index`` counts the commits the writer had written since its last successful
fdatasync when it wrote this one: ``version - unsynced_index`` is the first version of
the run of frames that were on their way to disk together. Recovery uses it to tell a
torn unsynced run (pages may reach the disk out of order) from damage to durable frames.

Everything here works on a whole buffer at once (a batch of bodies, a segment's bytes):
one Python call per epoch or per scan, never one per frame.
"""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE, PyBytes_FromStringAndSize, PyBytes_CheckExact
from cpython.array cimport array, clone, resize_smart
from libc.stdint cimport uint32_t, uint64_t, int64_t
from libc.string cimport memcpy
from udrflow._ext.crc32c cimport udr_crc32c, udr_crc32c_init

import array as _pyarray

udr_crc32c_init()

FRAME_HEADER_BYTES = 8
COMMIT_HEADER_BYTES = 20
FRAME_OVERHEAD_BYTES = 28
UNSYNCED_INDEX_MAX = 0xFFFFFFFF

# Why a scan stopped. The recovery decision table (udrflow/log/_recovery.py) maps each
# of these, with where it happened, to exactly one action.
cdef enum Stop:
    S_END = 0              # the buffer ended exactly on a frame boundary
    S_HEADER_PARTIAL = 1   # fewer than 8 bytes left: a frame header was cut short
    S_LENGTH_BAD = 2       # the length field is below the minimum or above the maximum
    S_PAYLOAD_PARTIAL = 3  # the length runs past the end of the buffer
    S_CHECKSUM_BAD = 4     # a whole frame whose checksum does not match
    S_VERSION_BAD = 5      # a valid frame, but not the next version in sequence
    S_COUNT = 6            # decode_frames: the requested number of frames was read
    S_ZERO_TAIL = 7        # every byte from here to the end is zero (space the writer preallocated)

STOP_END = S_END
STOP_HEADER_PARTIAL = S_HEADER_PARTIAL
STOP_LENGTH_BAD = S_LENGTH_BAD
STOP_PAYLOAD_PARTIAL = S_PAYLOAD_PARTIAL
STOP_CHECKSUM_BAD = S_CHECKSUM_BAD
STOP_VERSION_BAD = S_VERSION_BAD
STOP_COUNT = S_COUNT
STOP_ZERO_TAIL = S_ZERO_TAIL

cdef array _U64 = _pyarray.array("Q")
cdef array _I64 = _pyarray.array("q")

cdef inline uint32_t _ld32(const unsigned char *p) nogil:
    cdef uint32_t v
    memcpy(&v, p, 4)
    return v

cdef inline uint64_t _ld64(const unsigned char *p) nogil:
    cdef uint64_t v
    memcpy(&v, p, 8)
    return v

cdef inline bint _all_zero(const unsigned char *p, Py_ssize_t n) nogil:
    cdef Py_ssize_t i
    for i in range(n):
        if p[i]:
            return False
    return True


cdef inline uint32_t _frame_crc(const unsigned char *frame, uint32_t length) nogil:
    # CRC of the length field followed by the payload (skipping the stored crc itself).
    cdef uint32_t c = udr_crc32c(0, frame, 4)
    return udr_crc32c(c, frame + 8, length)


cdef class LogRecord:
    """One commit as read back from the log: its version, timestamp and body bytes."""
    cdef readonly object version
    cdef readonly object timestamp_us
    cdef readonly bytes payload

    def __init__(self, version, timestamp_us, bytes payload):
        self.version = version
        self.timestamp_us = timestamp_us
        self.payload = payload

    def __repr__(self):
        return f"LogRecord(version={self.version}, timestamp_us={self.timestamp_us}, payload=<{len(self.payload)} bytes>)"

    def __eq__(self, other):
        if not isinstance(other, LogRecord):
            return NotImplemented
        return (self.version, self.timestamp_us, self.payload) == (other.version, other.timestamp_us, other.payload)

    def __hash__(self):
        return hash((self.version, self.timestamp_us))

    def __reduce__(self):
        return (LogRecord, (self.version, self.timestamp_us, self.payload))


def validate_bodies(list bodies, Py_ssize_t body_bytes_max):
    """Check that every body is ``bytes`` of at most ``body_bytes_max`` bytes.

    Returns the total body bytes. Raises ``TypeError``/``ValueError`` naming the index of
    the first bad body, so the caller can reject the whole batch before writing anything.
    """
    cdef Py_ssize_t i, n = len(bodies), size, total = 0
    cdef object b
    for i in range(n):
        b = bodies[i]
        if not PyBytes_CheckExact(b):
            raise TypeError(f"commit payload at index {i}: expected bytes, got {type(b).__name__}")
        size = PyBytes_GET_SIZE(b)
        if size > body_bytes_max:
            raise ValueError(f"commit payload at index {i}: expected at most {body_bytes_max} bytes, got {size}")
        total += size
    return total


def encode_frames(list bodies, Py_ssize_t start, uint64_t first_version, int64_t timestamp_us,
                  uint64_t base_offset, Py_ssize_t budget_bytes, uint64_t unsynced_index=0):
    """Encode ``bodies[start:]`` as consecutive frames, as many as fit in ``budget_bytes``.

    Frame ``i`` gets version ``first_version + i`` and unsynced index ``unsynced_index + i``
    (saturating at UNSYNCED_INDEX_MAX). Returns ``(data, offsets, count)``:
    the frames as one ``bytes``, the absolute file offset of each frame (``base_offset``
    plus its position in ``data``) as ``array('Q')``, and how many bodies were encoded
    (0 when not even the first one fits). Bodies must have passed ``validate_bodies``.
    """
    cdef Py_ssize_t n = len(bodies), i, count = 0, total = 0, size
    for i in range(start, n):
        size = PyBytes_GET_SIZE(bodies[i]) + 28
        if total + size > budget_bytes:
            break
        total += size
        count += 1
    cdef bytes out = PyBytes_FromStringAndSize(NULL, total)
    cdef array offsets = clone(_U64, count, False)
    cdef unsigned char *p = <unsigned char *> PyBytes_AS_STRING(out)
    cdef uint64_t *offs = <uint64_t *> offsets.data.as_ulonglongs  # (same width; the cast keeps gcc quiet)
    cdef Py_ssize_t pos = 0
    cdef uint32_t length, crc, unsynced
    cdef uint64_t version, u
    cdef object body
    for i in range(count):
        body = bodies[start + i]
        size = PyBytes_GET_SIZE(body)
        length = <uint32_t>(size + 20)
        version = first_version + i
        u = unsynced_index + i
        unsynced = <uint32_t>(u if u < UNSYNCED_INDEX_MAX else UNSYNCED_INDEX_MAX)
        offs[i] = base_offset + pos
        memcpy(p + pos, &length, 4)
        memcpy(p + pos + 8, &version, 8)
        memcpy(p + pos + 16, &timestamp_us, 8)
        memcpy(p + pos + 24, &unsynced, 4)
        memcpy(p + pos + 28, PyBytes_AS_STRING(body), size)
        crc = _frame_crc(p + pos, length)
        memcpy(p + pos + 4, &crc, 4)
        pos += size + 28
    return out, offsets, count


def scan_frames(const unsigned char[::1] buf, Py_ssize_t start, uint64_t expected_version,
                uint32_t length_max, uint64_t base_offset=0):
    """Walk frames from ``buf[start]`` while each is whole, valid and next in sequence.

    Returns ``(status, stop, count, offsets, timestamps, found_version)``: why and where
    (index into ``buf``) the walk stopped (one of the ``STOP_*`` codes), how many good
    frames precede that point, their offsets (``base_offset`` + index) and commit
    timestamps, and for ``STOP_VERSION_BAD`` the version that was found instead.
    """
    cdef Py_ssize_t n = buf.shape[0], pos = start, count = 0, cap = 1024
    cdef array offsets = clone(_U64, cap, False)
    cdef array stamps = clone(_I64, cap, False)
    cdef uint32_t length, crc
    cdef uint64_t version, found = 0
    cdef int status = S_END
    cdef const unsigned char *p
    if n == 0:
        resize_smart(offsets, 0)
        resize_smart(stamps, 0)
        return S_END, start, 0, offsets, stamps, 0
    p = &buf[0]
    while True:
        if pos == n:
            status = S_END
            break
        if n - pos < 8:
            status = S_ZERO_TAIL if _all_zero(p + pos, n - pos) else S_HEADER_PARTIAL
            break
        length = _ld32(p + pos)
        if length < 20 or length > length_max:
            status = S_ZERO_TAIL if length == 0 and _all_zero(p + pos, n - pos) else S_LENGTH_BAD
            break
        if <Py_ssize_t>length > n - pos - 8:
            status = S_PAYLOAD_PARTIAL
            break
        crc = _ld32(p + pos + 4)
        with nogil:
            if _frame_crc(p + pos, length) != crc:
                status = S_CHECKSUM_BAD
        if status == S_CHECKSUM_BAD:
            break
        version = _ld64(p + pos + 8)
        if version != expected_version:
            status = S_VERSION_BAD
            found = version
            break
        if count == cap:
            cap *= 2
            resize_smart(offsets, cap)
            resize_smart(stamps, cap)
        offsets.data.as_ulonglongs[count] = base_offset + pos
        stamps.data.as_longlongs[count] = <int64_t>_ld64(p + pos + 16)
        count += 1
        expected_version += 1
        pos += 8 + length
    resize_smart(offsets, count)
    resize_smart(stamps, count)
    return status, pos, count, offsets, stamps, found


def find_valid_frame(const unsigned char[::1] buf, Py_ssize_t start, uint64_t version_min,
                     uint32_t length_max):
    """Return the index of the first whole, checksum-valid frame at or after ``start``
    that was written after frames up to ``version_min`` were durable (its unsynced run
    starts above ``version_min``), or -1 if there is none.

    Recovery uses this to tell a torn tail from damage inside the log: a bad frame at
    version x followed only by frames of the same unsynced run is a torn write (the disk
    may keep a later page of a run and lose an earlier one); a frame whose run began
    after x proves x had been made durable, so damage at x is corruption.
    """
    cdef Py_ssize_t n = buf.shape[0], pos, found = -1
    cdef uint32_t length
    cdef const unsigned char *p
    if n == 0:
        return -1
    p = &buf[0]
    with nogil:
        for pos in range(start, n - 23):
            length = _ld32(p + pos)
            if length < 20 or length > length_max or <Py_ssize_t>length > n - pos - 8:
                continue
            if _ld64(p + pos + 8) - <uint64_t>_ld32(p + pos + 24) <= version_min:
                continue
            if _ld64(p + pos + 8) < version_min:
                continue
            if _frame_crc(p + pos, length) == _ld32(p + pos + 4):
                found = pos
                break
    return found


def decode_frames(const unsigned char[::1] buf, uint64_t expected_version, Py_ssize_t count_max):
    """Decode up to ``count_max`` consecutive frames from the start of ``buf``, verifying
    each checksum and version.

    Returns ``(records, status, stop)``: a list of ``LogRecord``, why decoding stopped
    (``STOP_COUNT`` or ``STOP_END`` when all went well, any other ``STOP_*`` code for a
    bad frame) and the index in ``buf`` where it stopped.
    """
    cdef Py_ssize_t n = buf.shape[0], pos = 0, count = 0
    cdef uint32_t length
    cdef uint64_t version
    cdef int64_t stamp
    cdef int status = S_END
    cdef const unsigned char *p
    cdef list records = []
    if n == 0:
        return records, S_END, 0
    p = &buf[0]
    while True:
        if count == count_max:
            status = S_COUNT
            break
        if pos == n:
            status = S_END
            break
        if n - pos < 8:
            status = S_HEADER_PARTIAL
            break
        length = _ld32(p + pos)
        if length < 20 or <Py_ssize_t>length > n - pos - 8:
            status = S_PAYLOAD_PARTIAL if length >= 20 else S_LENGTH_BAD
            break
        if _frame_crc(p + pos, length) != _ld32(p + pos + 4):
            status = S_CHECKSUM_BAD
            break
        version = _ld64(p + pos + 8)
        if version != expected_version:
            status = S_VERSION_BAD
            break
        stamp = <int64_t>_ld64(p + pos + 16)
        records.append(LogRecord(version, stamp,
                                 PyBytes_FromStringAndSize(<const char *>(p + pos + 28), length - 20)))
        count += 1
        expected_version += 1
        pos += 8 + length
    return records, status, pos
