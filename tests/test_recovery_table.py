"""Every row of the recovery DECISION_TABLE (and every FILE_CASES situation) is built on disk from
hand-encoded frames and opened by a writer and a reader; a spy on decide() proves the row was the one
taken, and the outcome (open, truncate, or CorruptionError naming the row) must be the row's action."""

from __future__ import annotations

import itertools
import os
import shutil
import struct
from dataclasses import dataclass

import pytest

from udrflow._ext import _frame
from udrflow._ext._crc32c import crc32c
from udrflow._limits import FRAME_LENGTH_MAX, SEGMENT_HEADER_BYTES
from udrflow.errors import CorruptionError, InternalError
from udrflow.log import EpochLog
from udrflow.log import _recovery as recovery
from udrflow.log._recovery import DECISION_TABLE, FILE_CASES, Action, FrameState, decide
from udrflow.log._segment import encode_segment_header, segment_name

ROWS = {case.name: case for case in DECISION_TABLE}
ROW_NAMES = [case.name for case in DECISION_TABLE]
TS = 1_700_000_000_000_000


def body(version: int) -> bytes:
    return f"body of version {version}|".encode() * (version % 4 + 1)


def frames(first_version: int, count: int, *, versions: list[int] | None = None) -> list[bytes]:
    """Each frame's bytes; ``versions`` overrides the version written into each frame."""
    versions = versions or list(range(first_version, first_version + count))
    out = []
    for v_body, v in zip(range(first_version, first_version + count), versions, strict=True):
        data, _, n = _frame.encode_frames([body(v_body)], 0, v, TS + v, 0, 1 << 30)
        assert n == 1
        out.append(data)
    return out


def segment(first_version: int, parts: list[bytes]) -> bytes:
    return encode_segment_header(first_version) + b"".join(parts)


def set_length(frame: bytes, length: int) -> bytes:
    return struct.pack("<I", length) + frame[4:]


def flip(frame: bytes, index: int) -> bytes:
    return frame[:index] + bytes([frame[index] ^ 0x40]) + frame[index + 1:]


@dataclass
class Situation:
    """Segment files to write, and what opening them must give."""

    label: str
    files: dict[str, bytes]
    good_versions: int                  # versions a successful open shows
    bad_segment: str | None = None      # CORRUPT / TRUNCATE: the segment where the scan stopped,
    bad_offset: int | None = None       # the byte offset it stopped at,
    bad_version: int | None = None      # the version it expected there,
    found: int | None = None            # and (version_out_of_sequence) the version it found
    reader_decides: bool = True         # False: a reader has no new bytes to scan, so decides nothing


def one_segment(label: str, good: int, tail: bytes) -> Situation:
    """Segment 1 holding ``good`` good frames, then ``tail``."""
    parts = frames(1, good)
    data = segment(1, parts)
    return Situation(label, {segment_name(1): data + tail}, good, segment_name(1), len(data), good + 1)


def sealed_then_next(label: str, good: int, tail: bytes) -> Situation:
    """Sealed segment 1 with ``good`` good frames then ``tail``; the next segment holds 2 frames."""
    first = segment(1, frames(1, good))
    nxt = segment(good + 1, frames(good + 1, 2))
    return Situation(label, {segment_name(1): first + tail, segment_name(good + 1): nxt}, good + 2,
                     segment_name(1), len(first), good + 1)


def build(name: str) -> list[Situation]:
    """Situations on disk that must be decided by row ``name``."""
    f = frames(1, 5)
    if name == "frame_ok":
        return [Situation("three good frames", {segment_name(1): segment(1, frames(1, 3))}, 3)]
    if name == "end_of_log":
        return [Situation("clean end", {segment_name(1): segment(1, frames(1, 3))}, 3),
                Situation("header-only last segment", {segment_name(1): segment(1, [])}, 0, reader_decides=False)]
    if name == "end_of_sealed":
        return [sealed_then_next("sealed then next", 3, b"")]
    if name == "torn_header":
        return [one_segment(f"{k} stray bytes", 3, f[3][:k]) for k in range(1, 8)]
    if name == "preallocated_end":
        return [one_segment("zeroed tail", 3, bytes(8)),
                one_segment("zeroed page", 3, bytes(4096)),
                one_segment("fewer zero bytes than a frame header", 3, bytes(3))]
    if name == "torn_length":
        return [one_segment("zero length then garbage", 3, bytes(8) + b"\x01"),
                one_segment("length too big", 3, set_length(f[3], FRAME_LENGTH_MAX + 1)),
                one_segment("length below the commit header", 3, set_length(f[3], 15))]
    if name == "bad_length_mid_log":
        return [one_segment("zero length then a valid frame", 2, bytes(8) + f[3]),
                one_segment("huge length then the frames after", 2, set_length(f[2], 0xFFFFFFFF) + f[3] + f[4])]
    if name == "torn_payload":
        return [one_segment(f"last frame cut at {k}", 3, f[3][:k]) for k in (8, 9, 24, len(f[3]) - 1)]
    if name == "bad_payload_length_mid_log":
        overrun = len(f[2]) - 8 + len(f[3]) + 100  # runs past the end of the file
        return [one_segment("length overruns the file, valid frame after", 2, set_length(f[2], overrun) + f[3])]
    if name == "torn_checksum":
        return [one_segment("last frame checksum flipped", 3, flip(f[3], 5)),
                one_segment("last frame payload flipped", 3, flip(f[3], 30)),
                one_segment("last frame partly zeroed", 3, f[3][:20] + bytes(len(f[3]) - 20)),
                one_segment("last frame version flipped", 3, flip(f[3], 8))]
    if name == "bad_checksum_mid_log":
        return [one_segment("middle frame payload flipped", 2, flip(f[2], 30) + f[3] + f[4]),
                one_segment("middle frame checksum flipped", 2, flip(f[2], 4) + f[3])]
    if name == "version_out_of_sequence":
        skipped = frames(4, 1, versions=[5])[0]
        repeated = frames(3, 1, versions=[3])[0]
        situations = [
            one_segment("skipped version in the last segment", 3, skipped),
            one_segment("repeated version in the last segment", 3, repeated),
            sealed_then_next("skipped version in a sealed segment", 3, skipped),
            Situation("first frame of a segment has the wrong version",
                      {segment_name(1): segment(1, frames(1, 3)), segment_name(4): segment(4, frames(4, 2, versions=[5, 6]))},
                      3, segment_name(4), SEGMENT_HEADER_BYTES, 4),
        ]
        for situation, found in zip(situations, (5, 3, 5, 5), strict=True):
            situation.found = found
        return situations
    if name == "sealed_header_partial":
        return [sealed_then_next(f"{k} stray bytes", 3, f[3][:k]) for k in (1, 7)]
    if name == "sealed_zero_tail":
        return [sealed_then_next("zeroed tail", 3, bytes(16))]
    if name == "sealed_length_bad":
        return [sealed_then_next("zero length then garbage", 3, bytes(8) + b"\x01" * 8),
                sealed_then_next("length too big", 3, set_length(f[3], FRAME_LENGTH_MAX + 1))]
    if name == "sealed_payload_partial":
        return [sealed_then_next("last frame cut short", 3, f[3][:20])]
    if name == "sealed_checksum_bad":
        return [sealed_then_next("final frame flipped", 3, flip(f[3], 30)),
                Situation("only frame flipped", {segment_name(1): segment(1, [flip(f[0], 30)]),
                                                 segment_name(2): segment(2, frames(2, 2))},
                          3, segment_name(1), SEGMENT_HEADER_BYTES, 1)]
    raise KeyError(f"no situation is built for recovery row {name!r}: add one")


def write(directory: str, files: dict[str, bytes]) -> None:
    shutil.rmtree(directory, ignore_errors=True)
    os.makedirs(directory)
    for name, data in files.items():
        with open(os.path.join(directory, name), "wb") as fh:
            fh.write(data)


@pytest.fixture
def decisions(monkeypatch):
    """The names of the rows decide() returns while the test runs."""
    seen: list[str] = []
    real = recovery.decide

    def spy(state, last_segment, valid_frame_after):
        row = real(state, last_segment, valid_frame_after)
        seen.append(row.name)
        return row

    monkeypatch.setattr(recovery, "decide", spy)
    return seen


def test_every_row_is_tested_and_names_are_unique():
    assert len(set(ROW_NAMES)) == len(ROW_NAMES)
    for name in ROW_NAMES:
        assert build(name), name  # raises KeyError for a row without a situation


@pytest.mark.parametrize("name", ROW_NAMES)
def test_each_row_on_disk(tmp_path, decisions, name):
    row = ROWS[name]
    for situation in build(name):
        for readonly in (False, True):
            ctx = f"row {name}, {situation.label}, readonly={readonly}"
            directory = str(tmp_path / "log")
            write(directory, situation.files)
            sizes = {n: len(d) for n, d in situation.files.items()}
            decisions.clear()
            if row.action is Action.CORRUPT:
                with pytest.raises(CorruptionError) as info:
                    EpochLog.open(directory, readonly=readonly)
                exc = info.value
                msg = str(exc)
                assert f"recovery case '{name}'" in msg, f"{ctx}: {msg}"
                assert os.path.basename(exc.path) == situation.bad_segment and situation.bad_segment in msg, ctx
                assert exc.offset == situation.bad_offset and f"at byte {exc.offset}" in msg, f"{ctx}: {msg}"
                assert exc.version == situation.bad_version and f"(version {exc.version})" in msg, f"{ctx}: {msg}"
                if situation.found is not None:
                    assert f"found version {situation.found}" in msg, f"{ctx}: {msg}"
                assert {n: os.path.getsize(os.path.join(directory, n)) for n in sizes} == sizes, f"{ctx}: files changed"
            else:
                with EpochLog.open(directory, readonly=readonly) as log:
                    records = list(log.scan())
                    assert [r.version for r in records] == list(range(1, situation.good_versions + 1)), ctx
                    assert [r.payload for r in records] == [body(v) for v in range(1, situation.good_versions + 1)], ctx
                    truncated = log.recovery.truncated
                after = {n: os.path.getsize(os.path.join(directory, n)) for n in sizes}
                if row.action is Action.TRUNCATE and not readonly:
                    path = os.path.join(directory, situation.bad_segment)
                    cut = sizes[situation.bad_segment] - situation.bad_offset
                    assert truncated == [(path, situation.bad_offset, cut)], f"{ctx}: {truncated}"
                    assert after == {**sizes, situation.bad_segment: situation.bad_offset}, f"{ctx}: {after}"
                    # The writer carries on right after what it kept, and the next open finds it clean.
                    with EpochLog.open(directory) as log:
                        assert log.recovery.truncated == []
                        assert log.append(body(situation.good_versions + 1)) == situation.good_versions + 1
                    with EpochLog.open(directory, readonly=True) as log:
                        assert [r.payload for r in log.scan()] == [body(v) for v in range(1, situation.good_versions + 2)]
                elif name == "preallocated_end" and not readonly:
                    # Nothing is cut at open; closing the writer gives back the zeros it held.
                    assert truncated == [], f"{ctx}: {truncated}"
                    assert after == {**sizes, situation.bad_segment: situation.bad_offset}, f"{ctx}: {after}"
                else:
                    assert truncated == [], f"{ctx}: {truncated}"
                    assert after == sizes, f"{ctx}: a {'reader' if readonly else row.action.value} changed files"
            if name == "frame_ok":
                # Good frames are accepted inside the scanner's hot loop (one Cython call per
                # segment); decide() is consulted only where the scan stops. Its row for OK is
                # checked in test_decide_returns_exactly_one_row_for_every_combination.
                assert decisions and all(ROWS[n].action is not Action.CORRUPT for n in decisions), ctx
            elif readonly and not situation.reader_decides:
                assert decisions == [], ctx
            else:
                assert name in decisions, f"{ctx}: decide() returned {decisions}, never {name!r}"
            other_actions = {ROWS[n].action for n in decisions} - {Action.ACCEPT, Action.STOP, Action.NEXT_SEGMENT}
            assert other_actions <= {row.action}, f"{ctx}: decisions {decisions}"


# ---- decide() as pure logic -------------------------------------------------------------------------


def test_decide_returns_exactly_one_row_for_every_combination():
    reached = set()
    for state, last, after in itertools.product(FrameState, (True, False), (True, False)):
        matching = [c.name for c in DECISION_TABLE if c.matches(state, last, after)]
        assert len(matching) == 1, f"{state}, last={last}, valid_after={after}: rows {matching}"
        row = decide(state, last, after)
        assert row.name == matching[0]
        reached.add(row.name)
    assert reached == set(ROW_NAMES), f"rows no situation can reach: {set(ROW_NAMES) - reached}"


def test_decide_rejects_a_table_with_a_gap_or_an_overlap(monkeypatch):
    without_ok = tuple(c for c in DECISION_TABLE if c.name != "frame_ok")
    monkeypatch.setattr(recovery, "DECISION_TABLE", without_ok)
    with pytest.raises(InternalError, match="0 rows"):
        decide(FrameState.OK, True, False)
    monkeypatch.setattr(recovery, "DECISION_TABLE", DECISION_TABLE + (ROWS["torn_header"],))
    with pytest.raises(InternalError, match="2 rows"):
        decide(FrameState.HEADER_PARTIAL, True, True)


# ---- FILE_CASES ------------------------------------------------------------------------------------


def test_file_cases_are_the_four_tested_here():
    assert set(FILE_CASES) == {"temp_file_left_over", "segment_header_bad", "segment_gap", "no_segments"}


def test_temp_file_left_over(tmp_path):
    directory = str(tmp_path / "log")
    temps = [segment_name(4) + ".tmp-1234-abcd0123", "UDRFLOW.tmp-99-00ff00ff"]
    files = {segment_name(1): segment(1, frames(1, 3)), **{t: b"half a segment" for t in temps}}
    write(directory, files)
    with EpochLog.open(directory, readonly=True) as log:
        assert [r.version for r in log.scan()] == [1, 2, 3]
    assert all(os.path.exists(os.path.join(directory, t)) for t in temps), "a reader must not delete"
    with EpochLog.open(directory) as log:
        assert [r.version for r in log.scan()] == [1, 2, 3]
        assert log.append(body(4)) == 4 and log.segment_paths == [os.path.join(directory, segment_name(1))]
    assert not any(os.path.exists(os.path.join(directory, t)) for t in temps), "the writer deletes leftovers"


def _bad_headers() -> dict[str, bytes]:
    good = segment(1, frames(1, 2))
    magic = struct.pack("<8sIIQI", b"NOTUDR\x00\x01", 1, 0, 1, 0)
    return {
        "empty file": b"",
        "short header": good[:SEGMENT_HEADER_BYTES - 1],
        "header checksum": flip(good, 3),
        "header crc field": flip(good, 29),
        "bad magic, valid crc": magic + struct.pack("<I", crc32c(magic)) + good[SEGMENT_HEADER_BYTES:],
        "name disagrees with header": encode_segment_header(7) + good[SEGMENT_HEADER_BYTES:],
    }


@pytest.mark.parametrize("variant", list(_bad_headers()))
@pytest.mark.parametrize("position", ["only", "sealed", "last"])
def test_segment_header_bad(tmp_path, variant, position):
    bad = _bad_headers()[variant]
    if position == "only":
        files, name = {segment_name(1): bad}, segment_name(1)
    elif position == "sealed":
        files, name = {segment_name(1): bad, segment_name(3): segment(3, frames(3, 1))}, segment_name(1)
    else:
        files, name = {segment_name(1): segment(1, frames(1, 2)), segment_name(3): bad}, segment_name(3)
        if variant == "name disagrees with header":
            files[name] = encode_segment_header(7) + segment(3, frames(3, 1))[SEGMENT_HEADER_BYTES:]
    directory = str(tmp_path / "log")
    for readonly in (False, True):
        write(directory, files)
        with pytest.raises(CorruptionError) as info:
            EpochLog.open(directory, readonly=readonly)
        assert os.path.basename(info.value.path) == name and name in str(info.value), str(info.value)
        assert info.value.offset == 0
        assert os.path.getsize(os.path.join(directory, name)) == len(files[name]), "a bad header is never cut"


@pytest.mark.parametrize("missing", ["middle", "second of two, with a third"])
def test_segment_gap(tmp_path, missing):
    files = {segment_name(1): segment(1, frames(1, 2)), segment_name(3): segment(3, frames(3, 2)),
             segment_name(5): segment(5, frames(5, 2))}
    del files[segment_name(3)]
    if missing != "middle":
        files[segment_name(7)] = segment(7, frames(7, 1))
    directory = str(tmp_path / "log")
    for readonly in (False, True):
        write(directory, files)
        with pytest.raises(CorruptionError, match="recovery case 'segment_gap'") as info:
            EpochLog.open(directory, readonly=readonly)
        assert info.value.version == 3, str(info.value)


def test_no_segments(tmp_path):
    directory = str(tmp_path / "log")
    os.makedirs(directory)
    with EpochLog.open(directory, readonly=True) as log:
        assert log.version == 0 and list(log.scan()) == []
    assert os.listdir(directory) == [], "a reader creates nothing"
    with EpochLog.open(directory) as log:
        assert log.version == 0 and log.recovery.truncated == []
        assert log.segment_paths == [os.path.join(directory, segment_name(1))]
    with open(os.path.join(directory, segment_name(1)), "rb") as fh:
        assert fh.read() == encode_segment_header(1), "the first segment is a bare header for version 1"
    missing = str(tmp_path / "not" / "yet")
    with EpochLog.open(missing) as log:  # the writer creates the directory too
        assert log.append(b"x") == 1
