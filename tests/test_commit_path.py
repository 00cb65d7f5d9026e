"""The commit path of small writes: a transaction that begins while another commit still
waits for its fdatasync conflicts with it as it would with a durable one (the conflict
tracker keeps commits above the visible version); the fast key check of Python rows
still hands every bad key to the full check, which names the rows; and a lone commit
written ahead of its epoch (a pre-write) is acknowledged only after its fdatasync, fails
with its epoch, and shares its epoch with commits queued behind it. Commits are held inside their fdatasync by a
file layer whose fdatasync waits on an event, so the interleaving is exact, not timed."""

from __future__ import annotations

import errno
import re
import threading

import pyarrow as pa
import pytest

import udrflow
from udrflow._fileio import FileIO
from udrflow._limits import SEGMENT_SIZE_BYTES_MIN
from udrflow.errors import SchemaError, TransactionConflictError
from udrflow.log import EpochLog
from udrflow.testing import FaultyFileIO

SCHEMA = pa.schema([pa.field("id", pa.int64(), nullable=False), ("v", pa.int64())])
HOLD_TIMEOUT_S = 30  # only turns a stranded thread into a failure


class HeldSyncIO(FileIO):
    """Real files; while ``hold`` is clear, an fdatasync waits for it (``entered`` says one does)."""

    def __init__(self) -> None:
        self.hold = threading.Event()
        self.hold.set()
        self.entered = threading.Event()

    def fdatasync(self, fd: int) -> None:
        if not self.hold.is_set():
            self.entered.set()
            if not self.hold.wait(HOLD_TIMEOUT_S):
                raise TimeoutError("fdatasync held too long")
        super().fdatasync(fd)


def _in_flight(db, io: HeldSyncIO, write) -> tuple[threading.Thread, list]:
    """Start ``write`` in a thread and return once its commit is inside its fdatasync."""
    io.entered.clear()
    io.hold.clear()
    errors: list = []

    def run() -> None:
        try:
            write()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    assert io.entered.wait(HOLD_TIMEOUT_S), "the commit never reached its fdatasync"
    return thread, errors


@pytest.mark.parametrize("inflight", ["upsert", "transaction"])
def test_a_transaction_begun_during_anothers_fsync_still_conflicts_with_it(tmp_path, inflight):
    io = HeldSyncIO()
    with udrflow.open(tmp_path / "c.udr", io=io) as db:
        db.create_table("t", SCHEMA, primary_key=["id"])
        db.insert("t", [{"id": 1, "v": 0}])
        before = db.version

        def other_write() -> None:
            if inflight == "upsert":
                db.upsert("t", [{"id": 1, "v": 1}])
            else:
                with db.transaction() as tx:
                    tx.upsert("t", [{"id": 1, "v": 1}])

        thread, errors = _in_flight(db, io, other_write)
        try:
            tx = db.transaction()
            assert tx.begin_version == before  # the other commit is queued, not yet visible
            assert tx.read("t").column("v").to_pylist() == [0]
            tx.upsert("t", [{"id": 1, "v": 10}])
        finally:
            io.hold.set()
            thread.join()
        assert not errors
        assert db.version == before + 1
        with pytest.raises(TransactionConflictError):
            tx.commit()
        assert db.read("t").column("v").to_pylist() == [1]  # the acknowledged write, not lost
        assert db.version == before + 1


def test_a_transaction_begun_after_a_durable_commit_does_not_conflict_with_it(tmp_path):
    with udrflow.open(tmp_path / "c.udr") as db:
        db.create_table("t", SCHEMA, primary_key=["id"])
        db.insert("t", [{"id": 1, "v": 0}])
        db.upsert("t", [{"id": 1, "v": 1}])
        with db.transaction() as tx:
            tx.upsert("t", [{"id": 1, "v": tx.read("t").column("v")[0].as_py() + 1}])
        assert db.read("t").column("v").to_pylist() == [2]


def _error(fn) -> str:
    with pytest.raises(SchemaError) as info:
        fn()
    return str(info.value)


def test_key_checks_of_python_rows_name_the_offending_rows(tmp_path):
    composite = pa.schema([pa.field("a", pa.int64(), nullable=False), pa.field("b", pa.string(), nullable=False),
                           ("v", pa.int64())])
    with udrflow.open(tmp_path / "k.udr") as db:
        db.create_table("t", SCHEMA, primary_key=["id"])
        db.create_table("c", composite, primary_key=["a", "b"])
        head = db.version
        cases = [
            ("upsert", "t", [{"id": None, "v": 1}], r"column 'id' of table 't' is required"),
            ("insert", "t", [{"id": 1, "v": 1}, {"v": 2}], r"column 'id' of table 't' is required"),
            ("upsert", "c", [{"a": 1, "b": "x", "v": 1}, {"a": 1, "b": "y", "v": 2}, {"a": 1, "b": "x", "v": 3}],
             r"duplicate primary key \(a=1, b='x'\) in rows 0 and 2 of the upsert into table 'c'"),
            ("insert", "t", [{"id": 7, "v": 1}, {"id": 7, "v": 2}],
             r"duplicate primary key \(id=7\) in rows 0 and 1 of the insert into table 't'"),
        ]
        for kind, table, dicts, expected in cases:
            message = _error(lambda: getattr(db, kind)(table, dicts))  # noqa: B023 - called at once
            assert re.search(expected, message), message
        dup_keys = [{"a": 1, "b": "x"}, {"a": 1, "b": "x"}]
        assert "duplicate primary key (a=1, b='x') in rows 0 and 1 of the delete from table 'c'" in \
            _error(lambda: db.delete("c", keys=dup_keys))
        assert db.version == head
        db.upsert("c", [{"a": 1, "b": "x", "v": 1}, {"a": 1, "b": "y", "v": 2}])
        db.delete("c", keys=[{"a": 1, "b": "x"}])
        assert db.read("c").to_pylist() == [{"a": 1, "b": "y", "v": 2}]


# ---- pre-writes: a lone commit written at submit, its epoch only fdatasyncs ------------------


class PrewriteIO(FaultyFileIO):
    """Faults as FaultyFileIO, plus ``start_writeback`` (which turns pre-writes on in a log
    with this file layer); while ``hold`` is clear it waits there, holding the writer's
    I/O lock, so a test can queue other commits behind a pre-write in progress."""

    def __init__(self) -> None:
        super().__init__()
        self.started: list[tuple[int, int]] = []
        self.hold = threading.Event()
        self.hold.set()
        self.entered = threading.Event()

    def start_writeback(self, fd: int, offset: int, nbytes: int) -> None:
        self.started.append((offset, nbytes))
        if not self.hold.is_set():
            self.entered.set()
            if not self.hold.wait(HOLD_TIMEOUT_S):
                raise TimeoutError("start_writeback held too long")


def _payloads(path) -> list[bytes]:
    with EpochLog.open(str(path)) as log:
        assert log.recovery.truncated == []
        return [r.payload for r in log.scan()]


def test_a_lone_commit_is_prewritten_and_acknowledged_after_its_fdatasync(tmp_path):
    io = PrewriteIO()
    with EpochLog.open(str(tmp_path), io=io) as log:
        # (A new segment has no zeros written ahead yet: its first epoch writes them, so
        # the first commit is not pre-written.)
        assert log.submit(b"zero", start=True).wait() == 1 and io.started == []
        syncs = io.calls.get("fdatasync", 0)
        pending = log.submit(b"one", start=True)
        assert len(io.started) == 1 and log.version == 1  # written, write-back started, not yet visible
        assert io.calls.get("fdatasync", 0) == syncs
        assert pending.wait() == 2 and log.version == 2
        assert io.calls.get("fdatasync", 0) == syncs + 1
        assert log.submit(b"two").wait() == 3  # start=False: no pre-write
        assert len(io.started) == 1
    assert _payloads(tmp_path) == [b"zero", b"one", b"two"]


def test_a_prewrite_that_fails_fails_its_commit_and_the_writer_carries_on(tmp_path):
    io = PrewriteIO()
    with EpochLog.open(str(tmp_path), io=io) as log:
        assert log.submit(b"a", start=True).wait() == 1
        io.fail("pwritev", errno.ENOSPC)
        writes = io.calls.get("pwritev", 0)
        pending = log.submit(b"lost", start=True)
        assert io.calls.get("pwritev", 0) == writes + 1  # the pre-write, failed already
        with pytest.raises(udrflow.StorageError, match="No space left"):
            pending.wait()
        assert log.version == 1
        assert log.submit(b"b", start=True).wait() == 2  # the version of the failed one, reused
    assert _payloads(tmp_path) == [b"a", b"b"]


@pytest.mark.parametrize("fail_second", [False, True])
def test_commits_queued_behind_a_prewrite_share_its_epoch(tmp_path, fail_second):
    io = PrewriteIO()
    with EpochLog.open(str(tmp_path), io=io) as log:
        assert log.submit(b"first", start=True).wait() == 1
        io.entered.clear()
        io.hold.clear()
        results: dict = {}

        def prewriter() -> None:
            try:
                results["a"] = log.submit(b"A" * 100, start=True).wait()
            except Exception as exc:  # noqa: BLE001 - checked below
                results["a"] = exc

        thread = threading.Thread(target=prewriter)
        thread.start()
        try:
            assert io.entered.wait(HOLD_TIMEOUT_S)  # A is written, its write-back held
            second = log.submit(b"B" * 50)  # queued behind A; its epoch must take A along
            if fail_second:
                io.fail("pwritev", errno.EIO)
            waiter = threading.Thread(target=lambda: results.setdefault("b", _wait(second)))
            waiter.start()
        finally:
            io.hold.set()
        thread.join()
        waiter.join()
        if fail_second:
            assert isinstance(results["a"], udrflow.StorageError)  # one epoch: A fails with B
            assert isinstance(results["b"], udrflow.StorageError)
            assert log.version == 1
            assert log.submit(b"again").wait() == 2
        else:
            assert (results["a"], results["b"]) == (2, 3)
    expected = [b"first", b"again"] if fail_second else [b"first", b"A" * 100, b"B" * 50]
    assert _payloads(tmp_path) == expected


def _wait(pending):
    try:
        return pending.wait()
    except Exception as exc:  # noqa: BLE001 - checked by the caller
        return exc


def test_prewrites_across_segment_rolls_keep_every_commit(tmp_path):
    bodies = [bytes([v % 251]) * (150_000 + 7919 * v) for v in range(1, 181)]  # ~45 MB: rolls
    io = PrewriteIO()
    with EpochLog.open(str(tmp_path), io=io, segment_size_bytes=SEGMENT_SIZE_BYTES_MIN) as log:
        for i, body in enumerate(bodies):
            assert log.submit(body, start=True).wait() == i + 1
        assert len(log.segment_paths) >= 3
        assert 0 < len(io.started) < len(bodies)  # some did not fit: their epochs wrote them
    assert _payloads(tmp_path) == bodies
