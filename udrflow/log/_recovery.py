"""Recovery: how opening a log decides what every byte on disk means.

The decision table below is the whole policy. Each row is one situation, described by
three facts (what the scanner found at a position, whether the segment is the last
one, and whether a valid frame follows the position) and maps to exactly one action.
tests/test_recovery_table.py builds each row's situation on disk and checks that opening the
log takes that row's action, and that no situation matches two rows.

The two ways a crash can damage the log are both at the tail of the last segment: a
write the kernel only partly made (a SIGKILL mid-``pwritev`` leaves a prefix), and, on
power loss, pages of the last unsynced run of frames that did not reach the disk (in any
order: a later page may survive an earlier one). Every frame records its index in the
run of frames written since the writer's last successful fdatasync, so a valid frame
*after* a bad spot tells which case we are in: if its run began after the bad spot's
version, the bad spot had been fsynced before that frame was written, so it is damage
inside the log and we refuse to open; if it belongs to the same unsynced run, the whole
run from the bad spot on is a torn write and is truncated.

One limit is named on purpose: damage to the final run of frames (e.g. a bit flipped in
the very last frame after its fsync) looks exactly like a torn write, so it is truncated
like one. Only a second copy (a replica, issue "log over Kafka") can tell those apart.
"""

from __future__ import annotations

import enum
import mmap
import os
from dataclasses import dataclass

from udrflow._ext import _frame
from udrflow._fileio import TEMP_MARKER, FileIO, remove_file
from udrflow._limits import FRAME_LENGTH_MAX, SEGMENT_HEADER_BYTES
from udrflow.errors import CorruptionError, InternalError, storage_error_from_os
from udrflow.log._segment import Segment, check_segment_header, parse_segment_name


class FrameState(enum.Enum):
    """What the scanner found where it stopped (or at a good frame)."""

    OK = "ok"                           # whole, checksum-valid, next version in sequence
    END = "end"                         # the segment ends exactly on a frame boundary
    HEADER_PARTIAL = "header_partial"   # fewer than 8 bytes left for a frame header
    LENGTH_BAD = "length_bad"           # length field below the minimum or above the maximum
    PAYLOAD_PARTIAL = "payload_partial" # the length runs past the end of the file
    CHECKSUM_BAD = "checksum_bad"       # a whole frame whose checksum does not match
    VERSION_BAD = "version_bad"         # checksum-valid, but not the expected next version
    ZERO_TAIL = "zero_tail"             # every byte from here to the end of the file is zero


_STATE_OF_STOP = {
    _frame.STOP_END: FrameState.END,
    _frame.STOP_HEADER_PARTIAL: FrameState.HEADER_PARTIAL,
    _frame.STOP_LENGTH_BAD: FrameState.LENGTH_BAD,
    _frame.STOP_PAYLOAD_PARTIAL: FrameState.PAYLOAD_PARTIAL,
    _frame.STOP_CHECKSUM_BAD: FrameState.CHECKSUM_BAD,
    _frame.STOP_VERSION_BAD: FrameState.VERSION_BAD,
    _frame.STOP_ZERO_TAIL: FrameState.ZERO_TAIL,
}


class Action(enum.Enum):
    ACCEPT = "accept"              # index the frame and go on
    STOP = "stop"                  # the log ends here
    NEXT_SEGMENT = "next_segment"  # go on in the next segment
    TRUNCATE = "truncate"          # cut the file here (a writer does; a reader just stops)
    CORRUPT = "corrupt"            # raise CorruptionError naming file, offset and version


ANY = None  # a row that does not depend on this fact


@dataclass(frozen=True)
class Case:
    name: str
    state: FrameState
    last_segment: bool | None
    valid_frame_after: bool | None
    action: Action
    reason: str

    def matches(self, state: FrameState, last_segment: bool, valid_frame_after: bool) -> bool:
        return (self.state is state
                and self.last_segment in (ANY, last_segment)
                and self.valid_frame_after in (ANY, valid_frame_after))


_S = FrameState
_A = Action
DECISION_TABLE: tuple[Case, ...] = (
    Case("frame_ok", _S.OK, ANY, ANY, _A.ACCEPT, "a whole, checksum-valid frame with the next version"),
    Case("end_of_log", _S.END, True, ANY, _A.STOP, "the last segment ends on a frame boundary: a clean end"),
    Case("end_of_sealed", _S.END, False, ANY, _A.NEXT_SEGMENT,
         "a sealed segment ends on a frame boundary; its successor must start at the next version"),
    Case("preallocated_end", _S.ZERO_TAIL, True, ANY, _A.STOP,
         "only zeros to the end of the last segment: space the writer preallocated (or pages a crash "
         "never wrote): the log ends here"),
    Case("sealed_zero_tail", _S.ZERO_TAIL, False, ANY, _A.CORRUPT,
         "sealed segments are cut to their last frame before they are sealed, so zeros there are damage"),
    Case("torn_header", _S.HEADER_PARTIAL, True, ANY, _A.TRUNCATE,
         "a crash cut the last frame's header short; it was never acknowledged"),
    Case("torn_length", _S.LENGTH_BAD, True, False, _A.TRUNCATE,
         "zeroed or garbage bytes followed by no frame written after them was durable: a torn unsynced run"),
    Case("bad_length_mid_log", _S.LENGTH_BAD, True, True, _A.CORRUPT,
         "an impossible length followed by a frame written after it was durable: damage inside the log"),
    Case("torn_payload", _S.PAYLOAD_PARTIAL, True, False, _A.TRUNCATE,
         "the frame runs past the end of the file: a write cut short by a crash"),
    Case("bad_payload_length_mid_log", _S.PAYLOAD_PARTIAL, True, True, _A.CORRUPT,
         "a length that overruns the file, yet a frame written after it was durable follows: the length was damaged"),
    Case("torn_checksum", _S.CHECKSUM_BAD, True, False, _A.TRUNCATE,
         "a checksum-bad frame followed only by frames of its own unsynced run: pages reached the disk in part"),
    Case("bad_checksum_mid_log", _S.CHECKSUM_BAD, True, True, _A.CORRUPT,
         "a checksum-bad frame followed by a frame written after it was durable: damage inside the log"),
    Case("version_out_of_sequence", _S.VERSION_BAD, ANY, ANY, _A.CORRUPT,
         "a valid frame with the wrong version: a frame is missing or repeated"),
    Case("sealed_header_partial", _S.HEADER_PARTIAL, False, ANY, _A.CORRUPT,
         "sealed segments were fsynced whole before the next one existed"),
    Case("sealed_length_bad", _S.LENGTH_BAD, False, ANY, _A.CORRUPT,
         "sealed segments were fsynced whole before the next one existed"),
    Case("sealed_payload_partial", _S.PAYLOAD_PARTIAL, False, ANY, _A.CORRUPT,
         "sealed segments were fsynced whole before the next one existed"),
    Case("sealed_checksum_bad", _S.CHECKSUM_BAD, False, ANY, _A.CORRUPT,
         "sealed segments were fsynced whole before the next one existed"),
)

#: Situations about whole files, decided before any frame is read.
FILE_CASES = {
    "temp_file_left_over": "a temp file from an interrupted create or rename: the writer deletes it, readers ignore it",
    "segment_header_bad": "segment files appear whole by rename, so a short or bad header is damage: CorruptionError",
    "segment_gap": "a segment's first version must follow the previous segment's last: CorruptionError",
    "no_segments": "an empty log: the writer creates the first segment at version 1",
}


def decide(state: FrameState, last_segment: bool, valid_frame_after: bool) -> Case:
    """The one row of DECISION_TABLE that matches; InternalError if none or several do."""
    rows = [c for c in DECISION_TABLE if c.matches(state, last_segment, valid_frame_after)]
    if len(rows) != 1:
        raise InternalError(f"recovery table has {len(rows)} rows for {state}, last={last_segment}, "
                            f"valid_after={valid_frame_after}: expected exactly one")
    return rows[0]


@dataclass
class ScanOutcome:
    """What scanning one segment (or its new bytes) found."""

    case: Case
    stop_offset: int        # file offset where the scan stopped
    next_version: int       # the version expected at stop_offset
    found_version: int = 0  # for VERSION_BAD, the version found instead


def scan_segment(segment: Segment, data, data_offset: int, last_segment: bool) -> ScanOutcome:
    """Index the good frames of ``data`` (the segment's bytes from file offset
    ``data_offset``) into ``segment``, and decide what the stopping point means."""
    expected = segment.last_version + 1
    status, stop, count, offsets, stamps, found = _frame.scan_frames(
        data, 0, expected, FRAME_LENGTH_MAX, data_offset)
    segment.offsets.extend(offsets)
    segment.timestamps.extend(stamps)
    segment.end_offset = data_offset + stop
    expected += count
    state = _STATE_OF_STOP[status]
    valid_after = False
    if last_segment and state in (_S.LENGTH_BAD, _S.PAYLOAD_PARTIAL, _S.CHECKSUM_BAD):
        valid_after = _frame.find_valid_frame(data, stop + 1, expected, FRAME_LENGTH_MAX) >= 0
    return ScanOutcome(decide(state, last_segment, valid_after), data_offset + stop, expected, found)


def corruption(outcome: ScanOutcome, path: str) -> CorruptionError:
    case = outcome.case
    found = f" (found version {outcome.found_version})" if case.state is _S.VERSION_BAD else ""
    return CorruptionError(
        f"{case.state.value.replace('_', ' ')} in segment {os.path.basename(path)} at byte {outcome.stop_offset} "
        f"(version {outcome.next_version}){found}: {case.reason} [recovery case '{case.name}'; file {path}]",
        path, outcome.stop_offset, outcome.next_version)


def map_file(path: str) -> tuple[object, int]:
    """(buffer, size) of a whole file for scanning; an mmap, or b'' for an empty file."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            return b"", 0
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ), size


@dataclass
class Recovered:
    segments: list[Segment]
    truncated: list[tuple[str, int, int]]  # (path, offset, bytes cut) per torn tail


def recover(directory: str, io: FileIO, writable: bool, head=None) -> Recovered:
    """Open every segment in ``directory``, apply the decision table, and return the index.

    A writer truncates a torn tail (and fsyncs the truncation before anything new is
    appended); a reader leaves the files alone and simply stops where the writer would cut.
    ``head``: the HEAD file's content, if any. A ``synced`` HEAD proves its frames were
    durable, so a "torn tail" below its end offset is damage: CorruptionError, no cut.
    """
    try:
        names = sorted(os.listdir(directory))
    except OSError as exc:
        raise storage_error_from_os(exc, "list the log directory", directory) from exc
    segments: list[Segment] = []
    truncated: list[tuple[str, int, int]] = []
    seg_names = []
    for name in names:
        if TEMP_MARKER in name:
            if writable:
                remove_file(io, os.path.join(directory, name), "leftover temp file")
            continue
        first = parse_segment_name(name)
        if first is not None:
            seg_names.append((first, name))
    seg_names.sort()
    for i, (first, name) in enumerate(seg_names):
        path = os.path.join(directory, name)
        last = i == len(seg_names) - 1
        if segments and first != segments[-1].last_version + 1:
            prev = segments[-1]
            raise CorruptionError(
                f"segment {name} starts at version {first}: expected {prev.last_version + 1}, the version after "
                f"the end of {os.path.basename(prev.path)} [recovery case 'segment_gap'; file {path}]",
                path, 0, prev.last_version + 1)
        data, size = map_file(path)
        try:
            check_segment_header(bytes(data[:SEGMENT_HEADER_BYTES]), path, first)
            segment = Segment(path, first)
            view = memoryview(data)[SEGMENT_HEADER_BYTES:]
            try:
                outcome = scan_segment(segment, view, SEGMENT_HEADER_BYTES, last)
            finally:
                view.release()
        finally:
            if isinstance(data, mmap.mmap):
                data.close()
        action = outcome.case.action
        if action is Action.CORRUPT:
            raise corruption(outcome, path)
        if (action is Action.TRUNCATE and head is not None and head.synced and head.segment_first_version == first
                and outcome.stop_offset < head.end_offset):
            raise CorruptionError(
                f"damaged frame in segment {name} at byte {outcome.stop_offset} (version {outcome.next_version}): "
                f"HEAD says versions up to {head.version} were durable through byte {head.end_offset}, so this is "
                f"not a torn tail to cut [recovery case 'damage_below_head'; file {path}]",
                path, outcome.stop_offset, outcome.next_version)
        if action is Action.TRUNCATE:
            cut = size - outcome.stop_offset
            if writable:
                _truncate(io, path, outcome.stop_offset)
            truncated.append((path, outcome.stop_offset, cut))
        segments.append(segment)
    return Recovered(segments, truncated)


def _truncate(io: FileIO, path: str, offset: int) -> None:
    try:
        fd = io.open(path, os.O_WRONLY)
        try:
            io.ftruncate(fd, offset)
            io.fdatasync(fd)
        finally:
            io.close(fd)
    except OSError as exc:
        raise storage_error_from_os(exc, f"truncate the torn tail at byte {offset} of", path) from exc
