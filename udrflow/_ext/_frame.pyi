import array
from collections.abc import Buffer

FRAME_HEADER_BYTES: int
COMMIT_HEADER_BYTES: int
FRAME_OVERHEAD_BYTES: int
UNSYNCED_INDEX_MAX: int
STOP_END: int
STOP_HEADER_PARTIAL: int
STOP_LENGTH_BAD: int
STOP_PAYLOAD_PARTIAL: int
STOP_CHECKSUM_BAD: int
STOP_VERSION_BAD: int
STOP_COUNT: int
STOP_ZERO_TAIL: int

class LogRecord:
    version: int
    timestamp_us: int
    payload: bytes
    def __init__(self, version: int, timestamp_us: int, payload: bytes) -> None: ...

def validate_bodies(bodies: list[bytes], body_bytes_max: int) -> int: ...
def encode_frames(
    bodies: list[bytes],
    start: int,
    first_version: int,
    timestamp_us: int,
    base_offset: int,
    budget_bytes: int,
    unsynced_index: int = 0,
) -> tuple[bytes, array.array[int], int]: ...
def scan_frames(
    buf: Buffer, start: int, expected_version: int, length_max: int, base_offset: int = 0
) -> tuple[int, int, int, array.array[int], array.array[int], int]: ...
def find_valid_frame(buf: Buffer, start: int, version_min: int, length_max: int) -> int: ...
def decode_frames(buf: Buffer, expected_version: int, count_max: int) -> tuple[list[LogRecord], int, int]: ...
