"""Every size limit of udrflow, in one place (TIGER_STYLE: put a limit on everything).

The relations between limits are checked by tests/test_limits.py, so changing one
here cannot silently break another.
"""

from udrflow._ext._frame import COMMIT_HEADER_BYTES, FRAME_HEADER_BYTES

MIB = 1024 * 1024

#: Largest body of one commit. Bigger commits (bulk loads) write their rows as chunks
#: first and reference them by hash, so frames stay small enough to buffer whole.
COMMIT_BODY_BYTES_MAX = 16 * MIB

#: A commit's row data for one table larger than this (encoded) goes to chunks, referenced
#: from the frame: big loads stay out of the log and share chunks with checkpoints.
COMMIT_INLINE_ROWS_BYTES_MAX = 1 * MIB

#: Largest frame length field the scanner accepts (commit header + body).
FRAME_LENGTH_MAX = COMMIT_BODY_BYTES_MAX + COMMIT_HEADER_BYTES

#: Largest frame on disk.
FRAME_BYTES_MAX = FRAME_LENGTH_MAX + FRAME_HEADER_BYTES

#: Fixed size of the header at the start of every segment file.
SEGMENT_HEADER_BYTES = 32

#: Default and allowed range of the size at which the writer starts a new segment.
SEGMENT_SIZE_BYTES_DEFAULT = 64 * MIB
SEGMENT_SIZE_BYTES_MIN = SEGMENT_HEADER_BYTES + FRAME_BYTES_MAX
SEGMENT_SIZE_BYTES_MAX = 1024 * MIB

#: Most bytes one epoch writes (one group-commit round). Larger backlogs take several
#: epochs; a single commit bigger than this still goes out whole in its own epoch.
EPOCH_BYTES_MAX = 8 * MIB

#: The writer keeps up to this many zero bytes written ahead of the log's end, so an
#: epoch's fdatasync overwrites allocated blocks instead of growing the file (which costs
#: a file-system journal commit on every fsync). Recovery reads the zeros as the end.
PREALLOC_STEP_BYTES = 4 * MIB

#: After zeros written ahead did not fit (disk full), commits grow the file frame by frame
#: and the writer tries the zeros again only this many seconds later.
PREALLOC_RETRY_S = 1.0

#: Committers block (back-pressure) while this many bytes wait for an epoch.
PENDING_BYTES_MAX = 64 * MIB

#: Largest single read when scanning or replaying a segment.
READ_BYTES_MAX = 4 * MIB

#: Default and allowed range of the fsync interval for durability="interval".
FSYNC_INTERVAL_MS_DEFAULT = 10
FSYNC_INTERVAL_MS_MIN = 1
FSYNC_INTERVAL_MS_MAX = 60_000

#: In-memory cache of decoded chunks (Arrow tables), shared by every reader of a database.
CHUNK_CACHE_BYTES_MAX = 512 * MIB

#: Chunk files are written in one batch of at most this many files per fsync round.
CHUNK_WRITE_BATCH_MAX = 256

#: Writes of at most this many rows, given as dicts of plain Python values, are checked and
#: committed as Python values (msgpack in the frame) instead of Arrow; see udrflow/_pyrows.py.
PY_ROWS_MAX = 64

#: ... and only while their strings and binaries sum to at most this many bytes (larger row
#: data goes the Arrow way, which can move it to chunks).
PY_ROWS_BYTES_MAX = 64 * 1024
