"""Crashes never lose an acknowledged commit nor show a partial one: a forked child commits in a loop
(one thread, group commit, batches, segment rolls) until SIGKILL, and FaultyFileIO.crash() simulates
power loss in-process; reopening must show versions 1..N dense, intact, and covering every ack."""

from __future__ import annotations

import hashlib
import os
import random
import select
import shutil
import signal
import struct
import threading
import time
import traceback

import pytest

import udrflow
from udrflow._ext import _frame
from udrflow._limits import SEGMENT_HEADER_BYTES, SEGMENT_SIZE_BYTES_DEFAULT, SEGMENT_SIZE_BYTES_MIN
from udrflow.errors import StorageError, UdrflowError
from udrflow.log import EpochLog
from udrflow.testing import FaultyFileIO

# ---- payloads: every payload says which commit it is and is derivable from that ----------------------

# A commit's key is (run, thread, counter): the child process (run) that made it, the committing
# thread, and that thread's commit count. The payload starts with the key and the rest (and its
# size) is derived from the key, so a reader can tell an intact payload from a torn or wrong one.
_KEY = struct.Struct("<Q")
_REPORT = struct.Struct("<QQ")  # (version, key) of one acknowledged commit; (0, 0) means "opened"
_FRAME_OVERHEAD = _frame.FRAME_OVERHEAD_BYTES
THREADS = 4


def make_key(run: int, tid: int, counter: int) -> int:
    return (run << 40) | (tid << 32) | counter


def split_key(key: int) -> tuple[int, int, int]:
    return key >> 40, (key >> 32) & 0xFF, key & 0xFFFFFFFF


def payload_for(key: int, fixed_size: int) -> bytes:
    """The payload of commit ``key``. ``fixed_size`` 0: a mix of tiny, ~10 KB and ~100 KB bodies."""
    d = hashlib.blake2b(_KEY.pack(key), digest_size=64).digest()
    if fixed_size:
        size = fixed_size
    else:
        r = d[0] % 100
        if r < 55:
            size = d[1]                                              # 0..255 bytes
        elif r < 85:
            size = 1_000 + int.from_bytes(d[2:4], "little") % 15_000   # ~10 KB
        else:
            size = 60_000 + int.from_bytes(d[2:5], "little") % 90_000  # ~100 KB
    return _KEY.pack(key) + (d * (size // 64 + 1))[:size]


def check_log(log: EpochLog, acked: dict[int, int], fixed_size: int, ctx: str) -> list[int]:
    """Assert the log is dense from 1, every record intact, each thread's commits in order
    without gaps, and every acknowledged (version -> key) present. Returns the key of each version."""
    top = log.version
    max_acked = max(acked, default=0)
    assert top >= max_acked, f"{ctx}: log ends at {top} but version {max_acked} was acknowledged"
    keys: list[int] = []
    next_counter: dict[tuple[int, int], int] = {}
    last_run, last_ts = 0, None
    for rec in log.scan():
        v = len(keys) + 1
        assert rec.version == v, f"{ctx}: expected version {v}, got {rec.version}"
        assert len(rec.payload) >= 8, f"{ctx}: version {v} has a {len(rec.payload)}-byte payload"
        (key,) = _KEY.unpack_from(rec.payload)
        expected = payload_for(key, fixed_size)
        assert rec.payload == expected, (
            f"{ctx}: version {v} (key {split_key(key)}) is not intact: {len(rec.payload)} bytes, "
            f"expected {len(expected)}")
        run, tid, counter = split_key(key)
        assert run >= last_run, f"{ctx}: version {v} from run {run} follows a commit of run {last_run}"
        assert counter == next_counter.get((run, tid), 0), (
            f"{ctx}: version {v} is commit {counter} of run {run} thread {tid}; expected "
            f"{next_counter.get((run, tid), 0)} (a commit is missing or repeated)")
        next_counter[(run, tid)] = counter + 1
        assert last_ts is None or rec.timestamp_us >= last_ts, f"{ctx}: timestamp went back at version {v}"
        last_run, last_ts = run, rec.timestamp_us
        keys.append(key)
    assert len(keys) == top, f"{ctx}: scan returned {len(keys)} records, log.version is {top}"
    for v, key in acked.items():
        assert keys[v - 1] == key, (
            f"{ctx}: acknowledged version {v} should hold commit {split_key(key)}, holds {split_key(keys[v - 1])}")
    return keys


def check_segment_layout(paths: list[str], fixed_size: int, ctx: str) -> None:
    """With a fixed payload size every segment holds the same number of frames, so where the
    writer rolled is known exactly: a crash mid-roll must not leave segments elsewhere."""
    per_segment = (SEGMENT_SIZE_BYTES_MIN - SEGMENT_HEADER_BYTES) // (fixed_size + 8 + _FRAME_OVERHEAD)
    firsts = [int(os.path.basename(p).split(".")[0]) for p in paths]
    assert firsts[0] == 1 and all((f - 1) % per_segment == 0 for f in firsts), (
        f"{ctx}: segments start at {firsts}, expected 1 + k*{per_segment}")


def verify_database(path: str, acked: dict[int, int], fixed_size: int, ctx: str) -> tuple[int, int]:
    """Reopen read-only (no recovery writes), then as the writer (recovery truncates), then again
    (recovery must now find nothing to cut). Returns (version, number of segments)."""
    try:
        return _verify_database(path, acked, fixed_size, ctx)
    except UdrflowError as exc:
        pytest.fail(f"{ctx}: reopening after the crash raised {exc!r}", pytrace=True)


def _verify_database(path: str, acked: dict[int, int], fixed_size: int, ctx: str) -> tuple[int, int]:
    with udrflow.open(path, readonly=True) as db:
        check_log(db.log, acked, fixed_size, ctx + " [read-only]")
    with udrflow.open(path) as db:
        log = db.log
        for seg_path, offset, cut in log.recovery.truncated:
            assert seg_path == log.segment_paths[-1] and cut > 0, f"{ctx}: odd truncation {log.recovery.truncated}"
            assert os.path.getsize(seg_path) == offset, f"{ctx}: {seg_path} not truncated to {offset}"
        check_log(log, acked, fixed_size, ctx + " [writer]")
        version, segments = log.version, log.segment_paths
        if fixed_size:
            check_segment_layout(segments, fixed_size, ctx)
    with udrflow.open(path) as db:
        assert db.log.recovery.truncated == [], f"{ctx}: second recovery cut again: {db.log.recovery.truncated}"
        assert db.version == version, f"{ctx}: version {version} became {db.version} on a clean reopen"
    return version, len(segments)


# ---- the child process -----------------------------------------------------------------------------


def _commit_loop(log: EpochLog, wfd: int, run: int, tid: int, batch: bool, fixed_size: int, seed: int) -> None:
    rng = random.Random(seed * 1000 + tid)
    counter = 0
    while True:
        n = rng.randint(1, 8) if batch else 1
        keys = [make_key(run, tid, counter + i) for i in range(n)]
        payloads = [payload_for(k, fixed_size) for k in keys]
        if batch:
            versions = list(log.append_batch(payloads))
        elif rng.random() < 0.5:
            versions = [log.append(payloads[0])]
        else:  # the transaction path's way: a lone commit is pre-written at submit (see _writer.py)
            versions = [log.submit(payloads[0], start=True).wait()]
        assert len(versions) == n
        os.write(wfd, b"".join(_REPORT.pack(v, k) for v, k in zip(versions, keys, strict=True)))
        counter += n


def _child(path: str, mode: str, segment_size: int, run: int, fixed_size: int, seed: int, wfd: int,
           err_path: str) -> None:
    """Runs in the forked child; never returns (os._exit in every path)."""
    code = 3
    try:
        db = udrflow.open(path, segment_size_bytes=segment_size)
        log = db.log
        os.write(wfd, _REPORT.pack(0, 0))
        if mode == "threads":
            def worker(tid: int) -> None:
                try:
                    # Even threads append one commit at a time, odd ones append batches.
                    _commit_loop(log, wfd, run, tid, tid % 2 == 1, fixed_size, seed)
                except BaseException:
                    with open(err_path, "w") as f:
                        traceback.print_exc(file=f)
                finally:
                    os._exit(4)

            for tid in range(THREADS):
                threading.Thread(target=worker, args=(tid,), daemon=True).start()
            threading.Event().wait()
        else:
            _commit_loop(log, wfd, run, 0, mode == "batch", fixed_size, seed)
    except BaseException:
        with open(err_path, "w") as f:
            traceback.print_exc(file=f)
    finally:
        os._exit(code)


def kill_one_child(path: str, mode: str, segment_size: int, run: int, fixed_size: int, seed: int,
                   rng: random.Random, acked: dict[int, int], kill_at_version: int | None, ctx: str) -> bool:
    """Fork a committing child, SIGKILL it (a random 5-150 ms after it opened the database, or
    right after ``kill_at_version`` is acknowledged) and add what it acknowledged to ``acked``.
    Returns whether ``kill_at_version`` was reached (always True without one)."""
    err_path = os.path.join(os.path.dirname(path), f"child-{run}.err")
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: must never return into pytest
        try:
            os.close(rfd)
            _child(path, mode, segment_size, run, fixed_size, seed, wfd, err_path)
        finally:
            os._exit(5)
    os.close(wfd)
    buf = b""
    reports: list[tuple[int, int]] = []
    opened_at = kill_at = None
    reached = kill_at_version is None
    eof = False
    max_seen = 0
    safety = time.monotonic() + 60  # a hang guard only: the trial stays valid whenever the kill lands
    try:
        while not eof:
            now = time.monotonic()
            if kill_at is not None and now >= kill_at or now >= safety:
                break
            timeout = 0.05 if kill_at is None else max(0.0, kill_at - now)
            if select.select([rfd], [], [], timeout)[0]:
                chunk = os.read(rfd, 1 << 16)
                eof = not chunk
                buf += chunk
                n = len(buf) // _REPORT.size * _REPORT.size
                new = list(_REPORT.iter_unpack(buf[:n]))
                reports.extend(new)
                max_seen = max([max_seen, *(v for v, _ in new)])
                buf = buf[n:]
            if opened_at is None and reports:
                opened_at = time.monotonic()
                if kill_at_version is None:
                    kill_at = opened_at + rng.uniform(0.005, 0.150)
            if kill_at_version is not None and kill_at is None and max_seen >= kill_at_version:
                reached = True
                kill_at = time.monotonic() + rng.uniform(0, 0.003)  # land somewhere in the next epoch(s)
    finally:
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        while chunk := os.read(rfd, 1 << 16):
            buf += chunk
        os.close(rfd)
    n = len(buf) // _REPORT.size * _REPORT.size
    reports.extend(_REPORT.iter_unpack(buf[:n]))
    if not (os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL):
        detail = "(no traceback)"
        if os.path.exists(err_path):
            with open(err_path) as f:
                detail = f.read()
        pytest.fail(f"{ctx}: the child ended on its own (status {status:#x}) before the kill:\n{detail}")
    assert reports and reports[0] == (0, 0), f"{ctx}: the child never reported opening the database"
    for v, key in reports[1:]:
        assert v not in acked, f"{ctx}: version {v} acknowledged twice ({split_key(acked[v])}, {split_key(key)})"
        acked[v] = key
    return reached


# ---- the SIGKILL trials -----------------------------------------------------------------------------

# (mode, rolls, kills of one database): "rolls" uses the smallest segment size and ~100-300 KB
# payloads of one size, and kills just after a commit near a segment boundary.
PLAN: list[tuple[str, bool, int]] = (
    [(mode, False, 1) for mode in ("single", "threads", "batch") for _ in range(10)]
    + [(mode, False, 4) for mode in ("single", "threads", "batch") for _ in range(4)]
    + [(mode, True, 3) for mode in ("single", "threads", "batch") for _ in range(3)]
)
SIGKILL_TRIALS = sum(kills for _, _, kills in PLAN)


def test_plan_has_at_least_100_sigkill_trials():
    assert SIGKILL_TRIALS >= 100


@pytest.mark.parametrize("seed,mode,rolls,kills", [(i, *p) for i, p in enumerate(PLAN)],
                         ids=[f"{i}-{m}-{'roll' if r else 'plain'}-x{k}" for i, (m, r, k) in enumerate(PLAN)])
def test_sigkill_loses_no_acknowledged_commit(tmp_path, seed, mode, rolls, kills):
    rng = random.Random(seed)
    path = str(tmp_path / "db.udr")
    segment_size = SEGMENT_SIZE_BYTES_MIN if rolls else SEGMENT_SIZE_BYTES_DEFAULT
    fixed_size = rng.randrange(100_000, 300_000) if rolls else 0
    per_segment = (SEGMENT_SIZE_BYTES_MIN - SEGMENT_HEADER_BYTES) // (fixed_size + 8 + _FRAME_OVERHEAD)
    acked: dict[int, int] = {}
    version, all_reached = 0, True
    for run in range(1, kills + 1):
        ctx = f"seed={seed} mode={mode} rolls={rolls} run={run}/{kills}"
        target = None
        if rolls:  # just before, at or after the first roll at least 3 versions ahead
            roll_version = ((version + 3) // per_segment + 1) * per_segment + 1
            target = max(version + 1, roll_version - rng.randint(0, 2))
        all_reached &= kill_one_child(path, mode, segment_size, run, fixed_size, seed, rng, acked, target, ctx)
        version, segments = verify_database(path, acked, fixed_size, ctx)
    if rolls and all_reached:
        assert segments >= 2, f"seed={seed}: the trial should have rolled a segment, has {segments}"
    shutil.rmtree(tmp_path, ignore_errors=True)  # up to ~50 MB per trial


# ---- simulated power loss ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(30))
def test_power_loss_loses_no_acknowledged_commit(tmp_path, seed):
    rng = random.Random(seed)
    rolls = seed % 3 == 0
    fixed_size = rng.randrange(150_000, 400_000) if rolls else 0
    per_segment = (SEGMENT_SIZE_BYTES_MIN - SEGMENT_HEADER_BYTES) // (fixed_size + 8 + _FRAME_OVERHEAD)
    # Crash after this many acknowledged commits (for rolls: around the first segment boundary).
    crash_after = per_segment - rng.randint(0, 3) if rolls else rng.randint(0, 300)
    path = str(tmp_path / "db.udr")
    io = FaultyFileIO(seed)
    db = udrflow.open(path, io=io, segment_size_bytes=SEGMENT_SIZE_BYTES_MIN if rolls else SEGMENT_SIZE_BYTES_DEFAULT)
    log = db.log
    cond = threading.Condition()
    acked: dict[int, int] = {}
    state = {"crashed": False}
    unexpected: list[str] = []

    def committer(tid: int) -> None:
        trng = random.Random(seed * 1000 + tid)
        counter = 0
        while True:
            n = trng.randint(1, 6) if tid % 2 else 1
            keys = [make_key(1, tid, counter + i) for i in range(n)]
            payloads = [payload_for(k, fixed_size) for k in keys]
            try:
                versions = list(log.append_batch(payloads)) if tid % 2 else [log.append(payloads[0])]
            except StorageError as exc:
                with cond:
                    if not state["crashed"]:
                        unexpected.append(f"thread {tid}: {exc!r} before the crash")
                return
            except BaseException as exc:
                with cond:
                    unexpected.append(f"thread {tid}: {exc!r}")
                return
            with cond:
                if state["crashed"]:
                    return  # returned after the crash began: not counted as acknowledged
                acked.update(zip(versions, keys, strict=True))
                cond.notify_all()
            counter += n

    def crasher() -> None:
        with cond:
            while len(acked) < crash_after and not unexpected:
                cond.wait(0.1)
        time.sleep(rng.uniform(0, 0.002))  # let the next epoch get under way
        with cond:
            state["crashed"] = True
            io.crash()

    threads = [threading.Thread(target=committer, args=(t,)) for t in range(THREADS)]
    threads.append(threading.Thread(target=crasher))
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), f"seed={seed}: a committer hung after the crash"
    try:
        db.close()
    except StorageError:
        pass  # the writer is poisoned: every I/O fails after crash()
    assert not unexpected, f"seed={seed}: {unexpected}"
    ctx = f"seed={seed} power loss after {len(acked)} acks, max acked version {max(acked, default=0)} (rolls={rolls})"
    verify_database(path, acked, fixed_size, ctx)
    # And the log carries on from what recovery kept.
    with udrflow.open(path) as db:
        v = db.log.append(payload_for(make_key(2, 0, 0), fixed_size))
        assert v == db.version and v >= max(acked, default=0) + 1, ctx


def test_power_loss_inside_one_epoch_is_a_torn_tail(tmp_path):
    """Deterministic form of what the power-loss trials above hit: one epoch (one pwritev, one
    fdatasync) holds several frames; the power fails before its fdatasync returns, and the disk kept
    the epoch's second page but not its first (which reads as zeros). Nothing of the epoch was
    acknowledged, so recovery must cut it like any torn tail, not refuse to open the log."""
    page = 4096
    log_dir = str(tmp_path / "log")
    with EpochLog.open(log_dir) as log:
        acked = [log.append(payload_for(make_key(1, 0, c), 0)) for c in range(3)]
        durable_end = log._segments[-1].end_offset  # the file itself may extend past it (preallocated zeros)
        with open(os.path.join(log_dir, "HEAD"), "rb") as f:
            head_before = f.read()  # the power fails before the epoch's fdatasync returns: no HEAD after it
        # The unacknowledged epoch: a 5 KB frame that crosses a page boundary, then small ones.
        epoch = [b"a" * 5000] + [b"b" * 40, b"c" * 40, b"d" * 40]
        log.append_batch(epoch)
        seg = log.segment_paths[-1]
        epoch_end = log._segments[-1].end_offset
    lost_page_end = (durable_end // page + 1) * page  # the epoch's first (partial) page is lost
    assert lost_page_end < durable_end + 5000 + _FRAME_OVERHEAD < epoch_end
    with open(seg, "r+b") as f:
        f.seek(durable_end)
        f.write(bytes(lost_page_end - durable_end))
    with open(os.path.join(log_dir, "HEAD"), "wb") as f:
        f.write(head_before)
    size = os.path.getsize(seg)
    with EpochLog.open(log_dir) as log:  # today: CorruptionError [recovery case 'bad_checksum_mid_log']
        assert log.version == len(acked)
        assert [r.payload for r in log.scan()] == [payload_for(make_key(1, 0, c), 0) for c in range(3)]
        assert log.recovery.truncated == [(seg, durable_end, size - durable_end)]
        assert os.path.getsize(seg) == durable_end
