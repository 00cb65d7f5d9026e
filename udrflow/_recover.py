"""``udrflow recover``: copy the intact prefix of a damaged database into a new one.

SQLite has ``.recover`` and Kafka truncates a partition to its last good offset; here the
source is opened read-only for salvage (see ``udrflow.open(salvage=True)``): every commit
before the first damaged frame is checked (CRC32C) and served. ``recover`` writes those
commits, in order and with their versions and timestamps, into the log of a new database,
and copies what they need: the chunks they or the copied checkpoints reference (each
verified against its BLAKE3 name), the checkpoint manifests at or below the last good
version, the catalog snapshot a log that starts after version 1 begins from, and the
retention file. It reports what was lost.

Commits after the damage are not carried over even where their frames are whole: each
commit is a change on the state the one before it left, so a history with a hole is no
history of this database. Only branch ``main`` is recovered (a branch forked from it is
named in the report as not carried over); views keep their tables (ordinary tables in the
log) and rebuild their state from their inputs on their next run.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable

import msgspec

from udrflow._checkpoint import CheckpointStore
from udrflow._commit import decode_header
from udrflow._fileio import FileIO, make_dirs_durably, write_file_durably
from udrflow._sealed import seal, unseal
from udrflow.errors import CorruptionError, UdrflowError, UsageError
from udrflow.log._head import read_head
from udrflow.log._segment import create_segment

BRANCH = "main"


class _ReplayClock:
    """The source commit's timestamp, so ``AS OF TIMESTAMP`` means the same in the copy."""

    def __init__(self) -> None:
        self.timestamp_us = 0

    def now_us(self) -> int:
        return self.timestamp_us


def recover(source_path: str, out_path: str, out: Callable[[str], None] = print) -> dict:
    """Write the intact prefix of the database at ``source_path`` into a new database at
    ``out_path`` (which must not exist, or be an empty directory). Returns a report:
    ``last_version`` (the last version copied), ``head_version`` (the last the writer
    acknowledged, from HEAD), ``lost_versions``, ``damage`` (the first bad frame, or None),
    ``commits``, ``chunks``, ``checkpoints``, ``bad_chunks``, ``branches_not_copied``."""
    from udrflow._database import open as open_database

    source_path = os.path.abspath(source_path)
    out_path = os.path.abspath(out_path)
    if os.path.exists(out_path) and (not os.path.isdir(out_path) or os.listdir(out_path)):
        raise UsageError(f"recover writes a new database: expected {out_path} not to exist (or to be an empty "
                         f"directory), found it in use")
    with open_database(source_path, readonly=True, create=False, salvage=True) as src:
        log = src.log
        since, last = log.since, log.version
        head = read_head(log.directory)
        head_version = max(last, head.version if head is not None else last)
        report = {"damage": None if log.damage is None else str(log.damage), "last_version": last,
                  "head_version": head_version, "lost_versions": head_version - last, "commits": 0,
                  "chunks": 0, "checkpoints": 0, "bad_chunks": [],
                  "branches_not_copied": [b["name"] for b in src.branches() if b["name"] != BRANCH]}
        io = FileIO()
        _prepare_target(io, out_path, since)
        needed = _copy_log(src, out_path, since, last, report)
        needed |= _copy_checkpoints(src, io, out_path, last, report)
        _copy_chunks(src, io, out_path, needed, report)
        _copy_small_files(io, source_path, out_path, since, last)
    with open_database(out_path) as copy:  # the copy opens, its catalog loads, its tables read
        for name in copy.tables():
            try:
                copy.read(name)
            except UdrflowError as exc:
                report.setdefault("unreadable_tables", []).append(f"{name}: {exc}")
    _say(report, source_path, out_path, out)
    return report


def _prepare_target(io: FileIO, out_path: str, since: int) -> None:
    from udrflow._database import FORMAT, MARKER_NAME

    log_dir = os.path.join(out_path, "log", BRANCH)
    make_dirs_durably(io, log_dir)
    if since > 1:
        create_segment(io, log_dir, since)  # the copy's log starts where the source's does
    write_file_durably(io, os.path.join(out_path, MARKER_NAME), FORMAT)


def _copy_log(src, out_path: str, since: int, last: int, report: dict) -> set[str]:
    """Append every good commit to the copy's log, with its version and timestamp; return
    the chunks they reference."""
    from udrflow.log import EpochLog

    clock = _ReplayClock()
    needed: set[str] = set()
    target = EpochLog.open(os.path.join(out_path, "log", BRANCH), durability="none", clock=clock)
    try:
        if last >= since:
            for record in src.log.scan(since, last):
                for op in decode_header(record.payload, record.version).ops:
                    needed.update(h for h in getattr(op, "chunks", ()) if h)
                clock.timestamp_us = record.timestamp_us
                version = target.append(record.payload)
                if version != record.version:
                    raise CorruptionError(f"recover: the copy gave version {version} to the source's version "
                                          f"{record.version}: expected the same", out_path)
                report["commits"] += 1
    finally:
        target.close()  # (durability "none": the close makes it all durable)
    return needed


def _copy_checkpoints(src, io: FileIO, out_path: str, last: int, report: dict) -> set[str]:
    chunks = src._store.chunks
    store = CheckpointStore(os.path.join(src.path, "checkpoints", BRANCH), io, chunks)
    needed: set[str] = set()
    for table, created, version in store.all_manifests():
        if version > last:
            continue
        try:
            m = store.manifest(table, created, version)
        except CorruptionError as exc:
            report.setdefault("bad_checkpoints", []).append(str(exc))
            continue
        source = store._path(table, created, version)
        target = os.path.join(out_path, os.path.relpath(source, src.path))
        make_dirs_durably(io, os.path.dirname(target))
        with open(source, "rb") as f:
            write_file_durably(io, target, f.read())
        needed.update(m.chunks)
        needed.update(m.deleted)
        report["checkpoints"] += 1
    return needed


def _copy_chunks(src, io: FileIO, out_path: str, needed: set[str], report: dict) -> None:
    from udrflow._chunks import ChunkStore

    source = src._store.chunks
    target = ChunkStore(os.path.join(out_path, "chunks"), io)
    for digest in sorted(needed):
        try:
            data = source.get(digest)  # verified against its BLAKE3 name
        except CorruptionError as exc:
            report["bad_chunks"].append(str(exc))
            continue
        target.put(data)
        report["chunks"] += 1


def _copy_small_files(io: FileIO, source_path: str, out_path: str, since: int, last: int) -> None:
    if since > 1:
        name = f"{since - 1:020d}.snap"
        snap = os.path.join(source_path, "catalog", BRANCH, name)
        target = os.path.join(out_path, "catalog", BRANCH, name)
        make_dirs_durably(io, os.path.dirname(target))
        shutil.copyfile(snap, target)
    retention = os.path.join(source_path, "retention", f"{BRANCH}.msgpack")
    if os.path.exists(retention):
        with open(retention, "rb") as f:
            entries = msgspec.msgpack.decode(unseal(f.read(), retention, "retention file"),
                                             type=dict[str, tuple[int, int]])
        # A since past the copy's last version would make its head unreadable; the log the
        # copy holds still folds every version from its start, so cap it there.
        entries = {name: (created, min(version, last)) for name, (created, version) in entries.items()}
        target = os.path.join(out_path, "retention", f"{BRANCH}.msgpack")
        make_dirs_durably(io, os.path.dirname(target))
        write_file_durably(io, target, seal(msgspec.msgpack.encode(entries)))


def _say(report: dict, source_path: str, out_path: str, out) -> None:
    out(f"recovered {report['commits']} commit(s) of {source_path} into {out_path}: versions up to "
        f"{report['last_version']}, {report['checkpoints']} checkpoint(s), {report['chunks']} chunk(s)")
    if report["damage"] is not None:
        out(f"lost: versions {report['last_version'] + 1}..{report['head_version']} "
            f"({report['lost_versions']} acknowledged commit(s)) from the first damaged frame on: {report['damage']}")
    else:
        out("lost: nothing (the log was whole)")
    for bad in report["bad_chunks"]:
        out(f"lost: a damaged chunk ({bad}): reads that need it will fail")
    for bad in report.get("unreadable_tables", []):
        out(f"lost: table {bad}")
    for bad in report.get("bad_checkpoints", []):
        out(f"skipped: a damaged checkpoint ({bad}): reads fold the log instead")
    if report["branches_not_copied"]:
        out(f"not copied: branches {', '.join(report['branches_not_copied'])} (recover copies branch main)")
