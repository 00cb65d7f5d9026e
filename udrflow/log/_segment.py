"""Segment files: naming, the fixed header, durable creation, and the in-memory index.

A segment is one file of the log, ``<first_version:020d>.seg``, holding a 32-byte header
and then frames back to back. Segment files only ever appear whole (temp file, fsync,
rename, fsync the directory), so a missing or damaged header is corruption, never a
crash artefact. Every segment but the newest is sealed: the writer fsyncs it before it
creates the next one.
"""

from __future__ import annotations

import array
import os
import struct

from udrflow._ext._crc32c import crc32c
from udrflow._fileio import FileIO, temp_path_for
from udrflow._limits import SEGMENT_HEADER_BYTES
from udrflow.errors import CorruptionError, require

SEGMENT_MAGIC = b"UDRSEG\x00\x01"
SEGMENT_FORMAT = 1
SEGMENT_SUFFIX = ".seg"
_HEADER = struct.Struct("<8sIIQI")  # magic, format, reserved, first_version, reserved; then crc32c
require(_HEADER.size + 4 == SEGMENT_HEADER_BYTES, "segment header layout must fill SEGMENT_HEADER_BYTES")


def segment_name(first_version: int) -> str:
    return f"{first_version:020d}{SEGMENT_SUFFIX}"


def parse_segment_name(name: str) -> int | None:
    """The first version a segment file name encodes, or None if it is not a segment name."""
    stem, dot, suffix = name.partition(".")
    if "." + suffix != SEGMENT_SUFFIX or len(stem) != 20 or not stem.isdigit():
        return None
    return int(stem)


def encode_segment_header(first_version: int) -> bytes:
    body = _HEADER.pack(SEGMENT_MAGIC, SEGMENT_FORMAT, 0, first_version, 0)
    return body + struct.pack("<I", crc32c(body))


def check_segment_header(data: bytes, path: str, first_version_expected: int) -> None:
    """Raise CorruptionError unless ``data`` is a valid header for ``first_version_expected``."""
    if len(data) < SEGMENT_HEADER_BYTES:
        raise CorruptionError(
            f"segment {path} is {len(data)} bytes long: expected at least the {SEGMENT_HEADER_BYTES}-byte "
            f"header (segment files are created whole, so this is damage)", path, 0, first_version_expected)
    body, (crc,) = data[: _HEADER.size], struct.unpack_from("<I", data, _HEADER.size)
    actual = crc32c(body)
    if actual != crc:
        raise CorruptionError(
            f"checksum mismatch in the header of segment {path} at byte 0: expected 0x{crc:08x}, got 0x{actual:08x}",
            path, 0, first_version_expected)
    magic, fmt, _, first_version, _ = _HEADER.unpack(body)
    if magic != SEGMENT_MAGIC or fmt != SEGMENT_FORMAT:
        raise CorruptionError(
            f"segment {path} has magic {magic!r} format {fmt}: expected {SEGMENT_MAGIC!r} format {SEGMENT_FORMAT}",
            path, 0, first_version_expected)
    if first_version != first_version_expected:
        raise CorruptionError(
            f"segment {path} header says first version {first_version}, its name says {first_version_expected}",
            path, 0, first_version_expected)


def create_segment(io: FileIO, directory: str, first_version: int) -> str:
    """Durably create an empty segment (header only) and return its path."""
    path = os.path.join(directory, segment_name(first_version))
    tmp = temp_path_for(path)
    fd = io.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    try:
        io.pwritev(fd, [encode_segment_header(first_version)], 0)
        io.fdatasync(fd)
    finally:
        io.close(fd)
    io.replace(tmp, path)
    io.fsync_dir(directory)
    return path


class Segment:
    """The index of one segment: where each visible commit's frame starts and its timestamp.

    ``offsets[i]`` is the byte offset of version ``first_version + i``; ``end_offset`` is
    the byte after the last indexed frame. Only the writer (or a reader's refresh)
    extends these, and always before it publishes a higher visible version.
    """

    __slots__ = ("path", "first_version", "offsets", "timestamps", "end_offset", "_read_fd")

    def __init__(self, path: str, first_version: int) -> None:
        self.path = path
        self.first_version = first_version
        self.offsets = array.array("Q")
        self.timestamps = array.array("q")
        self.end_offset = SEGMENT_HEADER_BYTES
        self._read_fd: int | None = None

    @property
    def count(self) -> int:
        return len(self.offsets)

    @property
    def last_version(self) -> int:
        """The last indexed version (first_version - 1 when the segment has no frames)."""
        return self.first_version + len(self.offsets) - 1

    def read_fd(self) -> int:
        if self._read_fd is None:
            self._read_fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        return self._read_fd

    def close(self) -> None:
        if self._read_fd is not None:
            os.close(self._read_fd)
            self._read_fd = None

    def __repr__(self) -> str:
        return f"Segment({os.path.basename(self.path)}, versions {self.first_version}..{self.last_version})"
