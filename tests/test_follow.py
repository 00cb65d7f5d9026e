"""Readers: in-process followers are woken by commits; a reader in another process
follows a log being written and sees exactly the committed sequence; one writer per
database directory, any number of readers."""

import os
import subprocess
import sys
import textwrap
import threading

import pytest

import udrflow
from udrflow.errors import DatabaseNotFoundError, UsageError


def test_in_process_follow_sees_every_commit_in_order(tmp_path):
    with udrflow.open(tmp_path / "db") as db:
        db.log.append_batch([b"old"] * 5)
        seen = []
        ready = threading.Event()

        def follow():
            ready.set()
            for record in db.log.follow(3, idle_timeout_s=5):
                seen.append((record.version, record.payload))
                if record.version == 25:
                    return

        t = threading.Thread(target=follow)
        t.start()
        ready.wait()
        for n in range(20):
            db.log.append(f"new{n}".encode())
        t.join(10)
        assert not t.is_alive()
        assert seen == [(v, b"old") for v in (3, 4, 5)] + [(6 + n, f"new{n}".encode()) for n in range(20)]


def test_follow_ends_on_close_stop_and_idle(tmp_path):
    db = udrflow.open(tmp_path / "db")
    db.log.append(b"a")
    assert [r.version for r in db.log.follow(1, idle_timeout_s=0.05)] == [1]
    stop = threading.Event()
    stop.set()
    assert list(db.log.follow(2, stop=stop)) == []
    out = []
    t = threading.Thread(target=lambda: out.extend(db.log.follow(2)))
    t.start()
    db.close()  # closing the database ends the follower
    t.join(5)
    assert not t.is_alive() and out == []


READER = textwrap.dedent("""
    import sys, udrflow
    path, last = sys.argv[1], int(sys.argv[2])
    with udrflow.open(path, readonly=True) as db:
        print("ready", flush=True)
        for record in db.log.follow(1, idle_timeout_s=20):
            print(record.version, record.payload.decode(), flush=True)
            if record.version == last:
                break
""")


def test_a_reader_process_follows_the_writer(tmp_path):
    path = str(tmp_path / "db")
    n = 300
    with udrflow.open(path) as db:
        db.log.append(b"v1")
        reader = subprocess.Popen([sys.executable, "-c", READER, path, str(n)], stdout=subprocess.PIPE, text=True)
        assert reader.stdout.readline().strip() == "ready"
        for v in range(2, n + 1):
            if v % 50 == 0:
                db.log.append_batch([f"v{v}".encode()]) if v % 100 else db.log.append(f"v{v}".encode())
            else:
                db.log.append(f"v{v}".encode())
        # Read through the same buffered stream readline() used (communicate() would
        # read the raw pipe and drop lines readline() had already buffered).
        out = reader.stdout.read()
        assert reader.wait(timeout=60) == 0
    lines = out.split("\n")
    assert [ln for ln in lines if ln] == [f"{v} v{v}" for v in range(1, n + 1)]


def test_second_writer_process_gets_a_clear_error_and_readers_are_fine(tmp_path):
    path = str(tmp_path / "db")
    with udrflow.open(path) as db:
        db.log.append(b"x")
        code = f"import udrflow; udrflow.open({path!r})"
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert proc.returncode != 0
        assert "DatabaseLockedError" in proc.stderr
        assert f"already open for writing by process {os.getpid()}" in proc.stderr
        assert "readonly=True" in proc.stderr
        code = f"import udrflow; db = udrflow.open({path!r}, readonly=True); print(db.version)"
        for _ in range(2):
            proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
            assert proc.stdout.strip() == "1", proc.stderr


def test_lock_is_released_when_the_writer_dies(tmp_path):
    path = str(tmp_path / "db")
    code = f"import os, udrflow; db = udrflow.open({path!r}); db.log.append(b'x'); os._exit(0)"
    subprocess.run([sys.executable, "-c", code], check=True)
    with udrflow.open(path) as db:  # no stale lock
        assert db.version == 1


def test_same_process_opens_share_one_writer(tmp_path):
    a = udrflow.open(tmp_path / "db")
    b = udrflow.open(tmp_path / "db")
    assert a.log is b.log
    a.log.append(b"x")
    assert b.version == 1
    a.close()
    assert b.log.append(b"y") == 2  # the store stays open while a handle remains
    b.close()
    with pytest.raises(udrflow.DatabaseClosedError):
        _ = b.log


def test_opening_things_that_are_not_databases(tmp_path):
    with pytest.raises(DatabaseNotFoundError, match="no udrflow database at"):
        udrflow.open(tmp_path / "missing", readonly=True)
    with pytest.raises(DatabaseNotFoundError):
        udrflow.open(tmp_path / "missing", create=False)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match="is not a udrflow database: expected a file named UDRFLOW"):
        udrflow.open(tmp_path / "full")
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="expected a directory, found a file"):
        udrflow.open(tmp_path / "file")
    assert (tmp_path / "full" / "notes.txt").read_text() == "mine"


def test_deleting_the_lock_file_does_not_let_a_second_writer_in(tmp_path):
    # The lock is the kernel's, on the directory: the LOCK file only names the holder.
    path = str(tmp_path / "db")
    with udrflow.open(path) as db:
        db.log.append(b"x")
        os.remove(os.path.join(path, "LOCK"))
        code = f"import udrflow; udrflow.open({path!r})"
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert proc.returncode != 0
        assert "DatabaseLockedError" in proc.stderr
        assert "already open for writing" in proc.stderr
        assert db.log.append(b"y") == 2
    with udrflow.open(path) as again:  # released with the last handle
        assert again.version == 2
