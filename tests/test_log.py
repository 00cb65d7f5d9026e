"""The epoch log's contract seen from its API: versions are dense and ordered, reads
return exactly what was committed (at any version, across segment rolls and reopen),
bad payloads are refused before anything is written, and concurrent committers share
epochs. The oracle is a plain Python list of what was committed."""

import threading

import pytest

from udrflow._limits import COMMIT_BODY_BYTES_MAX, SEGMENT_SIZE_BYTES_MIN
from udrflow.errors import (
    DatabaseClosedError,
    InvalidOptionError,
    InvalidPayloadError,
    ReadOnlyError,
    VersionNotFoundError,
)
from udrflow.log import EpochLog, LogRecord
from udrflow.testing import FaultyFileIO, ManualClock


def payload(v: int) -> bytes:
    return f"commit-{v}-".encode() * (v % 13 + 1)


def test_versions_are_dense_and_reads_match(tmp_path):
    with EpochLog.open(str(tmp_path)) as log:
        assert log.version == 0 and log.since == 1 and log.upper == 1
        assert [log.append(payload(v)) for v in (1, 2, 3)] == [1, 2, 3]
        assert log.append_batch([payload(v) for v in range(4, 104)]) == range(4, 104)
        assert [r.payload for r in log.scan()] == [payload(v) for v in range(1, 104)]
        assert [r.version for r in log.scan(50, 52)] == [50, 51, 52]
        assert log.read(77).payload == payload(77)
        assert log.append_batch([]) == range(104, 104)


def test_reads_outside_since_upper_raise(tmp_path):
    with EpochLog.open(str(tmp_path)) as log:
        log.append(b"a")
        with pytest.raises(VersionNotFoundError, match="not yet in the log.*expected at most 1"):
            log.read(2)
        with pytest.raises(VersionNotFoundError, match="below since=1"):
            list(log.scan(0))


def test_reopen_and_segment_rolls_keep_every_commit(tmp_path):
    big = [bytes([v % 251]) * 300_000 for v in range(1, 121)]  # ~36 MB: several 16 MiB segments
    with EpochLog.open(str(tmp_path), segment_size_bytes=SEGMENT_SIZE_BYTES_MIN) as log:
        log.append_batch(big[:60])
        for b in big[60:]:
            log.append(b)
        assert len(log.segment_paths) >= 3
    with EpochLog.open(str(tmp_path), segment_size_bytes=SEGMENT_SIZE_BYTES_MIN) as log:
        assert log.version == 120 and log.recovery.truncated == []
        assert [r.payload for r in log.scan()] == big
        assert log.append(b"after") == 121
    with EpochLog.open(str(tmp_path), readonly=True) as reader:
        assert reader.version == 121 and reader.read(121).payload == b"after"


def test_garbage_payload_rejected_before_anything_is_written(tmp_path):
    with EpochLog.open(str(tmp_path)) as log:
        log.append(b"ok")
        with pytest.raises(InvalidPayloadError, match="expected bytes, bytearray or memoryview, got str"):
            log.append("not bytes")
        with pytest.raises(InvalidPayloadError, match="index 2: expected bytes, bytearray or memoryview, got int"):
            log.append_batch([b"a", b"b", 7, b"d"])
        with pytest.raises(InvalidPayloadError, match=f"at most {COMMIT_BODY_BYTES_MAX} bytes"):
            log.append_batch([b"a", bytes(COMMIT_BODY_BYTES_MAX + 1)])
        assert log.version == 1
        assert log.append(bytearray(b"ba")) == 2 and log.append(memoryview(b"mv")) == 3
    with EpochLog.open(str(tmp_path)) as log:
        assert [r.payload for r in log.scan()] == [b"ok", b"ba", b"mv"]


def test_options_are_checked(tmp_path):
    with pytest.raises(InvalidOptionError, match="durability must be one of 'sync', 'interval', 'none': got 'fast'"):
        EpochLog.open(str(tmp_path), durability="fast")
    with pytest.raises(InvalidOptionError, match="segment_size_bytes must be between"):
        EpochLog.open(str(tmp_path), segment_size_bytes=1000)


def test_closed_and_readonly_logs_refuse_writes(tmp_path):
    log = EpochLog.open(str(tmp_path))
    log.append(b"x")
    with EpochLog.open(str(tmp_path), readonly=True) as reader:
        with pytest.raises(ReadOnlyError, match="read-only"):
            reader.append(b"y")
    log.close()
    log.close()  # idempotent
    with pytest.raises(DatabaseClosedError):
        log.append(b"z")
    with pytest.raises(DatabaseClosedError):
        list(log.scan())


def test_timestamps_never_go_backwards_and_find_versions(tmp_path):
    clock = ManualClock(start_us=1_000_000)
    with EpochLog.open(str(tmp_path), clock=clock) as log:
        log.append(b"a")              # t=1.0s
        clock.advance(1_000_000)
        log.append(b"b")              # t=2.0s
        clock.set(500_000)            # the wall clock steps back
        log.append(b"c")              # still t=2.0s
        clock.set(5_000_000)
        log.append(b"d")              # t=5.0s
        assert [r.timestamp_us for r in log.scan()] == [1_000_000, 2_000_000, 2_000_000, 5_000_000]
        assert log.version_at(999_999) == 0
        assert log.version_at(1_000_000) == 1
        assert log.version_at(2_500_000) == 3
        assert log.version_at(10**18) == 4
        assert log.timestamp_of(4) == 5_000_000


def test_concurrent_committers_share_epochs(tmp_path):
    io = FaultyFileIO()  # only used here to count fdatasyncs
    threads_n, per_thread = 8, 100
    results: list[list[int]] = [[] for _ in range(threads_n)]
    with EpochLog.open(str(tmp_path), io=io) as log:
        syncs_before = io.calls.get("fdatasync", 0)
        barrier = threading.Barrier(threads_n)

        def commit(k: int) -> None:
            barrier.wait()
            for n in range(per_thread):
                results[k].append(log.append(f"{k}:{n}".encode()))

        threads = [threading.Thread(target=commit, args=(k,)) for k in range(threads_n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        syncs = io.calls["fdatasync"] - syncs_before
        all_versions = sorted(v for r in results for v in r)
        assert all_versions == list(range(1, threads_n * per_thread + 1))
        for k, versions in enumerate(results):
            assert versions == sorted(versions)  # each thread's commits keep its order
            assert [log.read(v).payload for v in versions] == [f"{k}:{n}".encode() for n in range(per_thread)]
        # Group commit: fewer fdatasyncs than commits (exact sharing depends on scheduling).
        assert syncs < threads_n * per_thread


def test_log_record_behaves_like_a_value():
    a, b = LogRecord(1, 2, b"x"), LogRecord(1, 2, b"x")
    assert a == b and hash(a) == hash(b) and "version=1" in repr(a)
    import pickle

    assert pickle.loads(pickle.dumps(a)) == a
