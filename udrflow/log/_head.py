"""The HEAD file: where the writer tells other processes how far the log is visible.

After each epoch the writer overwrites ``HEAD`` in place with (version, segment, end
offset) and a checksum. It is a hint, not a source of truth: it is never fsynced. One
use in recovery: a HEAD written after its epoch's fdatasync (format 2, ``synced``) proves
that every frame up to its end offset was durable, so a damaged frame below it is
corruption, never a torn tail to cut (a bit flip in the last frames would otherwise drop
acknowledged commits silently). Readers in other processes use it for two things: to know how far
they may read without meeting a frame that is still being written, and (its change
wakes them) to follow the tail. A torn read of HEAD fails its checksum and is retried.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

try:
    import cython
except ImportError:  # running from source without Cython: see udrflow/_cython_shim.py
    from udrflow import _cython_shim as cython

from udrflow._ext._crc32c import crc32c
from udrflow._ext._fastio import pwrite_all
from udrflow._fileio import FileIO

HEAD_NAME = "HEAD"
_MAGIC = b"UDRH"
_BODY = struct.Struct("<4sIQQQ")  # magic, format, version, segment first version, end offset
_CRC = struct.Struct("<I")
_pack_body, _pack_crc = _BODY.pack, _CRC.pack  # (bound once: publish runs every epoch)
HEAD_BYTES = _BODY.size + 4


@dataclass(frozen=True)
class Head:
    version: int
    segment_first_version: int
    end_offset: int
    synced: bool = False  # written after the fdatasync of every frame up to end_offset


def encode_head(head: Head) -> bytes:
    body = _BODY.pack(_MAGIC, 2 if head.synced else 1, head.version, head.segment_first_version, head.end_offset)
    return body + struct.pack("<I", crc32c(body))


def decode_head(data: bytes) -> Head | None:
    if len(data) < HEAD_BYTES:
        return None
    body = data[: _BODY.size]
    if struct.unpack_from("<I", data, _BODY.size)[0] != crc32c(body):
        return None
    magic, fmt, version, seg, end = _BODY.unpack(body)
    if magic != _MAGIC or fmt not in (1, 2):
        return None
    return Head(version, seg, end, fmt == 2)


@cython.cclass
class HeadWriter:
    # An extension type when compiled (see udrflow/_cython_shim.py): ``self._x`` is a field.
    _io = cython.declare(object, visibility="public")
    _pwritev = cython.declare(object, visibility="public")
    path = cython.declare(object, visibility="public")
    _fd = cython.declare(object, visibility="public")

    def __init__(self, io: FileIO, directory: str) -> None:
        self._io = io
        # FileIO.pwritev of bytes is pwrite_all; a subclass (faults) keeps its own.
        self._pwritev = pwrite_all if type(io) is FileIO else io.pwritev
        self.path = os.path.join(directory, HEAD_NAME)
        self._fd = io.open(self.path, os.O_RDWR | os.O_CREAT)

    def publish(self, version: int, segment_first_version: int, end_offset: int, synced: bool = False) -> None:
        # On the commit path of every epoch: pack directly, no intermediate objects.
        body = _pack_body(_MAGIC, 2 if synced else 1, version, segment_first_version, end_offset)
        self._pwritev(self._fd, [body + _pack_crc(crc32c(body))], 0)

    def close(self) -> None:
        self._io.close(self._fd)


def read_head(directory: str, attempts: int = 5) -> Head | None:
    """The last HEAD the writer published, or None if there is none (or it stays torn)."""
    path = os.path.join(directory, HEAD_NAME)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        for _ in range(attempts):
            head = decode_head(os.pread(fd, HEAD_BYTES, 0))
            if head is not None:
                return head
        return None
    finally:
        os.close(fd)
