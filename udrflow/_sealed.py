"""Small metadata files with a checksum: branch metadata, retention, catalog snapshots and
checkpoint manifests.

A sealed file is ``MAGIC`` (4 bytes), the CRC32C of the body (4 bytes, little-endian),
then the body (msgpack). Before this existed, these files were the body alone, and one
flipped bit in a fork version or a row count changed every read with ``verify`` clean.
``unseal`` checks the checksum and names file, expected and found value on a mismatch.

A file without the magic is read as an older, unsealed body (databases written before
this format): it still decodes, but only the decoder guards it. A flipped bit in the magic
of a sealed file makes the body start with the magic's bytes, which no msgpack decoder of
these types accepts, so it is found too.
"""

from __future__ import annotations

import struct

from udrflow._ext._crc32c import crc32c
from udrflow.errors import CorruptionError

MAGIC = b"UDS1"
_HEADER = struct.Struct("<4sI")
HEADER_BYTES = _HEADER.size


def seal(body: bytes) -> bytes:
    """``body`` with the magic and its checksum in front."""
    return _HEADER.pack(MAGIC, crc32c(body)) + body


def unseal(data: bytes, path: str, what: str) -> bytes:
    """The body of sealed file ``data`` (read from ``path``; ``what`` names it in errors),
    or ``data`` itself if it was written before files were sealed."""
    if data[:4] != MAGIC:
        return data
    if len(data) < HEADER_BYTES:
        raise CorruptionError(f"{what} {path} is cut short: expected at least {HEADER_BYTES} bytes, found "
                              f"{len(data)}", path)
    _, expected = _HEADER.unpack_from(data)
    body = data[HEADER_BYTES:]
    found = crc32c(body)
    if found != expected:
        raise CorruptionError(f"checksum mismatch in {what} {path}: expected 0x{expected:08x}, got 0x{found:08x} "
                              f"over its {len(body)} bytes", path)
    return body


def is_sealed(data: bytes) -> bool:
    return data[:4] == MAGIC
