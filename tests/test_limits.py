"""The relations between udrflow's size limits hold (TIGER_STYLE: limits are checked
together, so changing one cannot silently break another)."""

from udrflow import _limits as L
from udrflow._ext import _frame
from udrflow.log._head import HEAD_BYTES


def test_limit_relations():
    assert L.FRAME_BYTES_MAX == L.COMMIT_BODY_BYTES_MAX + _frame.FRAME_OVERHEAD_BYTES
    assert L.FRAME_LENGTH_MAX < 2**32, "the frame length field is a u32"
    # Any single commit fits in an empty segment of the smallest allowed size.
    assert L.SEGMENT_SIZE_BYTES_MIN >= L.SEGMENT_HEADER_BYTES + L.FRAME_BYTES_MAX
    assert L.SEGMENT_SIZE_BYTES_MIN <= L.SEGMENT_SIZE_BYTES_DEFAULT <= L.SEGMENT_SIZE_BYTES_MAX
    # A queued backlog always holds at least one maximal commit; an epoch never exceeds the queue.
    assert L.PENDING_BYTES_MAX >= L.FRAME_BYTES_MAX
    assert L.EPOCH_BYTES_MAX <= L.PENDING_BYTES_MAX
    assert L.READ_BYTES_MAX >= 1 and L.FSYNC_INTERVAL_MS_MIN <= L.FSYNC_INTERVAL_MS_DEFAULT <= L.FSYNC_INTERVAL_MS_MAX
    # Python-value rows (new and old values, up to 4 UTF-8 bytes a character) stay far below
    # the size at which row data moves to chunks.
    assert L.PY_ROWS_BYTES_MAX * 8 <= L.COMMIT_INLINE_ROWS_BYTES_MAX
    assert HEAD_BYTES < 512, "HEAD must be one sector so a torn write is rare and caught by its checksum"
