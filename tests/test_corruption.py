"""Damage to a segment ends in the decision table's outcome, never a crash, hang or wrong data: a small
log is cut at every byte offset and has every bit flipped, and each copy is opened as writer and reader
(a cut tail is truncated, a bad header or mid-log frame raises CorruptionError naming file and byte)."""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import struct

import pytest

from udrflow._ext import _frame
from udrflow._limits import SEGMENT_HEADER_BYTES, SEGMENT_SIZE_BYTES_MIN
from udrflow.errors import CorruptionError
from udrflow.log import EpochLog
from udrflow.log._segment import encode_segment_header, segment_name

PAYLOADS = [b"", b"a", b"hello, world", bytes(range(40)), b"\xff" * 17, b"udrflow " * 9]
SEG1 = segment_name(1)
TS = 1_700_000_000_000_000


def frame_bounds(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of each frame of a valid segment image."""
    bounds, pos = [], SEGMENT_HEADER_BYTES
    while pos < len(data):
        (length,) = struct.unpack_from("<I", data, pos)
        bounds.append((pos, pos + 8 + length))
        pos += 8 + length
    assert pos == len(data)
    return bounds


@pytest.fixture(scope="module")
def small_log(tmp_path_factory):
    """(segment bytes, the records it holds, frame bounds) of a 6-commit log."""
    directory = str(tmp_path_factory.mktemp("source") / "log")
    with EpochLog.open(directory) as log:
        for p in PAYLOADS:
            log.append(p)
        records = list(log.scan())
        (path,) = log.segment_paths
        end = log._segments[-1].end_offset  # the writer preallocates zeros past the last frame
    with open(path, "rb") as f:
        data = f.read(end)
    assert len(data) < 400
    return data, records, frame_bounds(data)


class Dir:
    """A scratch log directory under the test's tmp_path, rewritten for every case."""

    def __init__(self, root) -> None:
        self.path = str(root / "case")

    def write(self, files: dict[str, bytes]) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        os.makedirs(self.path)
        for name, data in files.items():
            with open(os.path.join(self.path, name), "wb") as f:
                f.write(data)

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)


def open_fds() -> set[int]:
    """The descriptors open now (the one listdir used to list them is closed again by now)."""
    fds = set()
    for fd in map(int, os.listdir("/proc/self/fd")):
        with contextlib.suppress(OSError):
            os.fstat(fd)
            fds.add(fd)
    return fds


@contextlib.contextmanager
def bounded_fds(headroom: int = 64):
    """Cap and clean up the descriptors one open may take. Two reader bugs (asserted on their own
    by the last tests of this module) leak a descriptor per failed read-only open, or loop opening
    one per pass; thousands of opens would otherwise exhaust the process and take pytest with it."""
    before = open_fds()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(before) + headroom), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        for fd in open_fds() - before:
            with contextlib.suppress(OSError):
                os.close(fd)


def open_records(directory: str, readonly: bool):
    """Open the log, return (records, recovery.truncated); the log is closed again."""
    with bounded_fds(), EpochLog.open(directory, readonly=readonly) as log:
        return list(log.scan()), log.recovery.truncated


def check_corruption_message(exc: CorruptionError, name: str, ctx: str) -> None:
    msg = str(exc)
    assert name in msg and os.path.basename(exc.path) == name, f"{ctx}: message must name {name}: {msg}"
    if "recovery case 'segment_gap'" in msg:  # a whole-file fact: names both files and the versions
        return
    assert "byte" in msg, f"{ctx}: message must name the byte offset: {msg}"
    if exc.offset:  # frame damage: "at byte <offset> (version <v>)"
        assert f"at byte {exc.offset} (version {exc.version})" in msg, f"{ctx}: {msg}"


# ---- one segment ------------------------------------------------------------------------------------


def test_truncating_at_every_offset(tmp_path, small_log):
    data, records, bounds = small_log
    case = Dir(tmp_path)
    failures: list[str] = []
    for cut in range(len(data) + 1):
        whole = sum(1 for _, end in bounds if end <= cut)  # frames wholly before the cut
        good_end = bounds[whole - 1][1] if whole else SEGMENT_HEADER_BYTES
        for readonly in (False, True):
            ctx = f"cut at byte {cut} of {len(data)}, readonly={readonly}"
            case.write({SEG1: data[:cut]})
            try:
                got, truncated = open_records(case.path, readonly)
            except CorruptionError as exc:
                if cut >= SEGMENT_HEADER_BYTES:
                    failures.append(f"{ctx}: unexpected {exc!r}")
                else:
                    check_corruption_message(exc, SEG1, ctx)
                    assert exc.offset == 0, ctx
                continue
            if cut < SEGMENT_HEADER_BYTES:
                failures.append(f"{ctx}: a {cut}-byte segment (shorter than its header) opened")
                continue
            if got != records[:whole]:
                failures.append(f"{ctx}: recovered {len(got)} records, expected the first {whole} exactly")
            expected_cut = [] if cut == good_end else [(case.file(SEG1), good_end, cut - good_end)]
            if not readonly and truncated != expected_cut:  # a reader only stops; it records nothing
                failures.append(f"{ctx}: recovery.truncated is {truncated}, expected {expected_cut}")
            size = os.path.getsize(case.file(SEG1))
            if size != (cut if readonly else good_end):
                failures.append(f"{ctx}: file is {size} bytes after open, expected {cut if readonly else good_end}")
    assert not failures, f"{len(failures)} failures, first: " + "\n".join(failures[:20])


def test_flipping_every_bit(tmp_path, small_log):
    data, records, bounds = small_log
    n = len(bounds)
    last_start = bounds[-1][0]
    case = Dir(tmp_path)
    failures: list[str] = []
    for byte in range(len(data)):
        frame = next((i for i, (s, e) in enumerate(bounds) if s <= byte < e), None)
        for bit in range(8):
            damaged = bytearray(data)
            damaged[byte] ^= 1 << bit
            for readonly in (False, True):
                ctx = f"bit {bit} of byte {byte} (frame {frame}), readonly={readonly}"
                case.write({SEG1: bytes(damaged)})
                try:
                    got, truncated = open_records(case.path, readonly)
                except CorruptionError as exc:
                    if frame == n - 1:
                        failures.append(f"{ctx}: the last frame should be cut as a torn tail, got {exc!r}")
                        continue
                    check_corruption_message(exc, SEG1, ctx)
                    if frame is not None and (exc.offset, exc.version) != (bounds[frame][0], frame + 1):
                        failures.append(f"{ctx}: error names byte {exc.offset} version {exc.version}, "
                                        f"expected byte {bounds[frame][0]} version {frame + 1}")
                    if frame is None and exc.offset != 0:
                        failures.append(f"{ctx}: a header error should name byte 0: {exc!r}")
                    continue
                if got != records[: len(got)]:
                    failures.append(f"{ctx}: opened with altered data")  # never acceptable
                elif frame != n - 1:
                    failures.append(f"{ctx}: opened ({len(got)} records); expected CorruptionError")
                elif len(got) != n - 1:
                    failures.append(f"{ctx}: {len(got)} records survived, expected the first {n - 1}")
                elif not readonly and truncated != [(case.file(SEG1), last_start, len(data) - last_start)]:
                    failures.append(f"{ctx}: recovery.truncated is {truncated}")
                elif os.path.getsize(case.file(SEG1)) != (len(data) if readonly else last_start):
                    failures.append(f"{ctx}: wrong file size {os.path.getsize(case.file(SEG1))} after open")
    assert not failures, f"{len(failures)} failures, first: " + "\n".join(failures[:20])


# ---- several segments -------------------------------------------------------------------------------


def crafted_segment(first_version: int, bodies: list[bytes]) -> bytes:
    """Frames as sync-mode single commits write them: each fsynced before the next (unsynced index 0)."""
    out, offset = [encode_segment_header(first_version)], SEGMENT_HEADER_BYTES
    for i, body in enumerate(bodies):
        frame, _, count = _frame.encode_frames([body], 0, first_version + i, TS, offset, 1 << 30, 0)
        assert count == 1
        out.append(frame)
        offset += len(frame)
    return b"".join(out)


def three_segments() -> dict[str, bytes]:
    return {segment_name(1): crafted_segment(1, PAYLOADS[:3]),
            segment_name(4): crafted_segment(4, PAYLOADS[3:5]),
            segment_name(6): crafted_segment(6, PAYLOADS[5:])}


def test_the_crafted_segments_open_cleanly(tmp_path):
    case = Dir(tmp_path)
    for readonly in (False, True):
        case.write(three_segments())
        got, truncated = open_records(case.path, readonly)
        assert [r.payload for r in got] == PAYLOADS and [r.version for r in got] == [1, 2, 3, 4, 5, 6]
        assert truncated == []


@pytest.mark.parametrize("sealed", [segment_name(1), segment_name(4)])
def test_any_damage_to_a_sealed_segment_is_corruption(tmp_path, sealed):
    """Sealed segments were fsynced whole before the next one existed: a flipped bit anywhere
    (even in the final frame, which in the last segment would be cut as torn) or a cut anywhere
    is damage, for the writer and for a reader."""
    files = three_segments()
    data = files[sealed]
    case = Dir(tmp_path)
    outcomes: list[tuple[str, object]] = []
    variants = [(f"cut at {cut}", data[:cut]) for cut in range(len(data))]
    for byte in range(len(data)):
        for bit in (0, 3, 7):
            damaged = bytearray(data)
            damaged[byte] ^= 1 << bit
            variants.append((f"bit {bit} of byte {byte}", bytes(damaged)))
    for what, image in variants:
        for readonly in (False, True):
            case.write({**files, sealed: image})
            try:
                got, _ = open_records(case.path, readonly)
                outcomes.append((f"{what} readonly={readonly}", f"opened with {len(got)} records"))
            except CorruptionError as exc:
                check_corruption_message(exc, os.path.basename(exc.path), what)
            except OSError as exc:  # see test_reader_refuses_a_sealed_segment_cut_to_its_header
                outcomes.append((f"{what} readonly={readonly}", repr(exc)))
    assert not outcomes, f"{sealed}: {len(outcomes)} damaged images opened, first: {outcomes[:10]}"


def test_flip_in_the_final_frame_of_a_sealed_segment_rolled_by_the_writer(tmp_path):
    directory = str(tmp_path / "log")
    big = [bytes([i]) * 9_000_000 for i in (1, 2)]  # two frames that cannot share a 16 MiB segment
    with EpochLog.open(directory, segment_size_bytes=SEGMENT_SIZE_BYTES_MIN) as log:
        log.append(big[0])
        log.append(big[1])
        sealed, last = log.segment_paths
    assert os.path.basename(last) == segment_name(2)
    with open(sealed, "r+b") as f:
        f.seek(-1, os.SEEK_END)  # the last byte of the sealed segment's final (only) frame
        byte = f.read(1)[0]
        f.seek(-1, os.SEEK_END)
        f.write(bytes([byte ^ 0x10]))
    for readonly in (True, False):
        with pytest.raises(CorruptionError, match=r"recovery case 'sealed_checksum_bad'") as info:
            EpochLog.open(directory, readonly=readonly)
        assert info.value.path == sealed and info.value.offset == SEGMENT_HEADER_BYTES and info.value.version == 1
        check_corruption_message(info.value, segment_name(1), "sealed final frame")
    assert os.path.getsize(sealed) == SEGMENT_HEADER_BYTES + _frame.FRAME_OVERHEAD_BYTES + 9_000_000  # nothing was cut


def test_a_missing_middle_segment_is_corruption(tmp_path):
    files = three_segments()
    del files[segment_name(4)]
    case = Dir(tmp_path)
    for readonly in (False, True):
        case.write(files)
        with pytest.raises(CorruptionError, match="segment_gap") as info:
            EpochLog.open(case.path, readonly=readonly)
        assert segment_name(6) in str(info.value) or segment_name(4) in str(info.value)
        assert info.value.version == 4
        assert sorted(os.listdir(case.path)) == sorted(files)  # nothing deleted or cut


# ---- the reader must not leak or loop on damage ----------------------------------------------------


def test_reader_refuses_a_sealed_segment_cut_to_its_header(tmp_path):
    """A sealed segment holding only its header ends at version first-1, so "the segment after it"
    is itself. The writer reports the gap; the reader must too, not loop re-opening that segment."""
    files = three_segments()
    files[segment_name(4)] = files[segment_name(4)][:SEGMENT_HEADER_BYTES]
    case = Dir(tmp_path)
    case.write(files)
    with pytest.raises(CorruptionError, match="segment_gap"):
        EpochLog.open(case.path)
    outcome = None
    with bounded_fds(headroom=64):  # today: loops until EMFILE, one descriptor per pass
        try:
            EpochLog.open(case.path, readonly=True).close()
            outcome = "opened"
        except CorruptionError as exc:
            assert "segment_gap" in str(exc) and exc.version == 4, str(exc)
        except OSError as exc:
            outcome = repr(exc)
    assert outcome is None, f"a read-only open of a log with an empty sealed segment: {outcome}"


@pytest.mark.parametrize("damage", ["header", "mid_log_frame", "sealed_frame"])
def test_failed_readonly_open_releases_its_files(tmp_path, damage):
    files = three_segments()
    name = segment_name(6) if damage == "header" else segment_name(1)
    image = bytearray(files[name])
    image[4 if damage == "header" else SEGMENT_HEADER_BYTES + 30] ^= 0x01
    if damage == "mid_log_frame":  # the same flip, in the only (so the last) segment, before two good frames
        files = {segment_name(1): files[segment_name(1)]}
    files[name] = bytes(image)
    case = Dir(tmp_path)
    case.write(files)
    for readonly in (False, True):
        before = open_fds()
        for _ in range(5):
            with pytest.raises(CorruptionError):
                EpochLog.open(case.path, readonly=readonly)
        leaked = open_fds() - before
        for fd in leaked:
            with contextlib.suppress(OSError):
                os.close(fd)
        assert not leaked, f"readonly={readonly}: 5 failed opens left {len(leaked)} descriptors open"
