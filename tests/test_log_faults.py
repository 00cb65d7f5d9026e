"""Faults a user's machine can produce (a failed fsync, a full disk, a read-only
directory) give the documented error and never an acknowledged commit that is not on
disk. Faults are injected with udrflow.testing.FaultyFileIO; the oracle is the set of
versions whose append returned."""

import errno
import os
import threading

import pytest

import udrflow
from udrflow.errors import LogPoisonedError, StorageError, StorageFullError, StoragePermissionError
from udrflow.log import EpochLog
from udrflow.testing import FaultyFileIO


def test_failed_fdatasync_poisons_the_writer_until_reopen(tmp_path):
    io = FaultyFileIO()
    log = EpochLog.open(str(tmp_path), io=io)
    assert log.append(b"a") == 1
    io.fail("fdatasync", errno.EIO)
    with pytest.raises(LogPoisonedError, match="fdatasync of .*00000000000000000001.seg failed") as info:
        log.append(b"b")
    assert isinstance(info.value.__cause__, OSError) and info.value.__cause__.errno == errno.EIO
    assert log.poisoned and log.version == 1  # b was never acknowledged, nor made visible
    # No retry: every later commit fails, even though fdatasync would now work.
    for payload in (b"c", b"d"):
        with pytest.raises(LogPoisonedError, match="Reopen the database"):
            log.append(payload)
    with pytest.raises(LogPoisonedError):
        log.append_batch([b"e", b"f"])
    assert log.version == 1
    log.close()
    with EpochLog.open(str(tmp_path)) as log:
        payloads = [r.payload for r in log.scan()]
        # "b" reached the page cache before the fsync failed; it may or may not survive a
        # real crash, but nothing acknowledged is missing and nothing after b exists.
        assert payloads[0] == b"a" and payloads[1:] in ([], [b"b"])
        assert log.append(b"g") == len(payloads) + 1


def test_failed_fdatasync_fails_every_waiting_committer(tmp_path):
    io = FaultyFileIO()
    log = EpochLog.open(str(tmp_path), io=io)
    io.fail("fdatasync", errno.EIO, after=3)
    acked, failed = [], []
    lock = threading.Lock()

    def commit(k):
        for n in range(40):
            try:
                v = log.append(f"{k}-{n}".encode())
                with lock:
                    acked.append(v)
            except LogPoisonedError:
                with lock:
                    failed.append((k, n))
                return

    threads = [threading.Thread(target=commit, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(failed) == 6  # every thread ends on the poison
    assert sorted(acked) == list(range(1, len(acked) + 1))
    assert max(acked) == log.version
    log.close()
    with EpochLog.open(str(tmp_path)) as log:
        assert log.version >= max(acked)


def test_disk_full_fails_the_commit_and_the_writer_carries_on(tmp_path):
    io = FaultyFileIO()
    with EpochLog.open(str(tmp_path), io=io) as log:
        log.append(b"a")
        io.fail("pwritev", errno.ENOSPC)
        with pytest.raises(StorageFullError, match="no space left to append to the log segment .*.seg") as info:
            log.append(b"lost")
        assert info.value.path.endswith(".seg")
        assert not log.poisoned
        assert log.append(b"b") == 2
        assert [r.payload for r in log.scan()] == [b"a", b"b"]
    with EpochLog.open(str(tmp_path)) as log:
        assert [r.payload for r in log.scan()] == [b"a", b"b"]


def test_disk_full_whose_undo_fails_poisons(tmp_path):
    io = FaultyFileIO()
    with EpochLog.open(str(tmp_path), io=io) as log:
        log.append(b"a")
        io.fail("pwritev", errno.ENOSPC)
        io.fail("ftruncate", errno.EIO)
        with pytest.raises(LogPoisonedError, match="could not be undone"):
            log.append(b"b")
        with pytest.raises(LogPoisonedError):
            log.append(b"c")


def test_interval_durability_background_fsync_failure_poisons(tmp_path):
    io = FaultyFileIO()
    log = EpochLog.open(str(tmp_path), io=io, durability="interval", fsync_interval_ms=5)
    io.fail("fdatasync", errno.EIO, times=-1)
    log.append(b"a")  # acknowledged after the write; the background fsync then fails
    assert log.wait_for(1, 1)
    for _ in range(200):
        if log.poisoned:
            break
        threading.Event().wait(0.01)
    assert log.poisoned
    with pytest.raises(LogPoisonedError, match="interval fdatasync failed"):
        log.append(b"b")
    with pytest.raises(LogPoisonedError):
        log.close()


@pytest.mark.parametrize("durability", ["interval", "none"])
def test_weaker_durability_modes_keep_everything_on_clean_close(tmp_path, durability):
    io = FaultyFileIO()
    with EpochLog.open(str(tmp_path), io=io, durability=durability) as log:
        syncs = io.calls.get("fdatasync", 0)
        log.append_batch([b"x"] * 50)
        for _ in range(50):
            log.append(b"y")
        if durability == "none":
            assert io.calls.get("fdatasync", 0) == syncs  # none: no fsync per commit
    with EpochLog.open(str(tmp_path)) as log:
        assert log.version == 100


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_unwritable_directory_names_the_path(tmp_path):
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(StoragePermissionError, match=f"permission denied to .*{locked}"):
            udrflow.open(str(locked / "db.udr"))
    finally:
        locked.chmod(0o700)


def test_permission_errors_from_the_file_layer_name_the_path(tmp_path):
    # Runs as root too: the refusal is injected at the file layer.
    io = FaultyFileIO()
    io.fail("mkdir", errno.EACCES)
    target = tmp_path / "nope" / "db.udr"
    with pytest.raises(StoragePermissionError, match=f"permission denied to create the database {target}"):
        udrflow.open(str(target), io=io)


def test_failed_segment_roll_poisons_and_loses_nothing_acknowledged(tmp_path):
    from udrflow._limits import SEGMENT_SIZE_BYTES_MIN

    io = FaultyFileIO()
    log = EpochLog.open(str(tmp_path), io=io, segment_size_bytes=SEGMENT_SIZE_BYTES_MIN)
    chunk = bytes(4_000_000)
    acked = [log.append(chunk) for _ in range(3)]
    io.fail("replace", errno.EIO)  # the rename that publishes the next segment
    with pytest.raises(StorageError):
        for _ in range(3):
            acked.append(log.append(chunk))
    assert log.poisoned
    log.close()
    with EpochLog.open(str(tmp_path)) as log:
        assert log.version >= max(acked)
        assert all(r.payload == chunk for r in log.scan())


def test_a_commit_whose_fdatasync_failed_says_its_outcome_is_unknown(tmp_path):
    # It was written whole before the fsync failed, so it may be there after a reopen: the
    # caller must learn that, not read "failed" and retry a transfer twice.
    import pyarrow as pa

    import udrflow
    from udrflow.errors import CommitOutcomeUnknownError

    io = FaultyFileIO()
    path = str(tmp_path / "bank.udr")
    db = udrflow.open(path, io=io)
    db.create_table("acct", pa.schema([pa.field("id", pa.int64(), nullable=False), ("bal", pa.int64())]),
                    primary_key="id")
    db.insert("acct", [{"id": 1, "bal": 100}])
    io.fail("fdatasync", errno.EIO)
    with pytest.raises(CommitOutcomeUnknownError, match=r"version 3 may or may not be durable") as info:
        db.upsert("acct", [{"id": 1, "bal": 50}])
    assert isinstance(info.value, LogPoisonedError)
    # Later commits were never written: plainly refused, not "unknown".
    with pytest.raises(LogPoisonedError) as later:
        db.upsert("acct", [{"id": 1, "bal": 0}])
    assert not isinstance(later.value, CommitOutcomeUnknownError)
    db.close()
    with udrflow.open(path) as again:
        assert again.read("acct").to_pylist() in ([{"id": 1, "bal": 100}], [{"id": 1, "bal": 50}])


class _SmallDisk(FaultyFileIO):
    """A file layer over a disk with ``free`` bytes left: a write that would grow files
    past it fails with ENOSPC (writing nothing); a truncation gives the room back."""

    def __init__(self, free: int) -> None:
        super().__init__()
        self.free = free

    def pwritev(self, fd: int, buffers: list[bytes], offset: int) -> None:
        size = os.fstat(fd).st_size
        grow = max(0, offset + sum(len(b) for b in buffers) - size)
        if grow > self.free:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        super().pwritev(fd, buffers, offset)
        self.free -= grow

    def ftruncate(self, fd: int, length: int) -> None:
        size = os.fstat(fd).st_size
        super().ftruncate(fd, length)
        self.free += max(0, size - length)


def test_after_disk_full_a_commit_that_fits_is_written(tmp_path):
    # The writer zero-fills 4 MiB ahead of the log's end; with less room than that, a
    # small commit must still go through (the zeros are only an optimization).
    io = _SmallDisk(free=64 * 1024)
    log = EpochLog.open(str(tmp_path), io=io)
    for i in range(20):
        assert log.append(b"x" * 600) == i + 1
    io.free = 100  # now the disk is full for real
    with pytest.raises(StorageFullError):
        log.append(b"y" * 600)
    assert not log.poisoned
    io.free = 2000  # room for this commit's frame, far less than the zeros ahead
    assert log.append(b"z" * 600) == 21
    log.close()
    with EpochLog.open(str(tmp_path)) as log:
        assert [r.payload[:1] for r in log.scan()] == [b"x"] * 20 + [b"z"]
