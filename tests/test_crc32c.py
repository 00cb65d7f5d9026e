"""The Cython CRC32C agrees with a plain-Python bitwise reference on known vectors and
random data, in one call or continued across pieces."""

import random

import pytest

from udrflow._ext._crc32c import crc32c, implementation


def reference_crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    return crc ^ 0xFFFFFFFF


def test_known_vectors():
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(b"") == 0
    assert crc32c(bytes(32)) == 0x8A9136AA  # RFC 3720 B.4
    assert crc32c(b"\xff" * 32) == 0x62A8AB43
    assert implementation() in ("sse4.2", "table")


@pytest.mark.parametrize("seed", range(5))
def test_matches_reference_and_continues(seed):
    rng = random.Random(seed)
    data = rng.randbytes(rng.randint(0, 3000))
    assert crc32c(data) == reference_crc32c(data), f"seed={seed}"
    cut = rng.randint(0, len(data))
    assert crc32c(data[cut:], crc32c(data[:cut])) == crc32c(data), f"seed={seed}"
