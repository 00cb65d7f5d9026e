"""``udrflow verify``: check every checksum of a database without taking the writer lock.

It runs beside a live writer that commits, checkpoints and collects garbage, so what it
lists may change while it looks. The rule that keeps it from false reports: a file that
is gone by the time it is read was removed by the writer (gc removes a checkpoint before
its chunks and a segment only below ``since``; a chunk a live commit or checkpoint needs
is pinned), so a missing file counts as damage only while whatever references it still
exists. Bytes that are there and fail a checksum are always damage.

What it checks: the log frames of the branch (CRC32C), every chunk (its BLAKE3 name),
every checkpoint manifest of every branch (seal, and that its chunks exist), every
branch's metadata, retention file and catalog snapshots (seals), the views' recovery
stores (SQLite's check and each snapshot's checksum: damage there is reported, and is
harmless, since a view rebuilds a damaged store from its inputs), and that every table
reads at the head.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from udrflow import _branches
from udrflow._catalog import Catalog
from udrflow._checkpoint import CheckpointStore
from udrflow._sealed import unseal
from udrflow.errors import CorruptionError, StorageError

SCAN_RESTARTS_MAX = 8  # a log scan restarted after the writer's gc removed a segment under it


def _gone(exc: StorageError) -> bool:
    return exc.path is not None and not os.path.exists(exc.path)


def verify(db, out: Callable[[str], None] = print) -> int:
    """Check ``db`` (a read-only handle); print what was checked; raise CorruptionError at
    the first damage that matters. Returns the number of damaged recovery stores (views
    rebuild those, so they are reported, not raised)."""
    _verify_log(db, out)
    _verify_chunks_and_checkpoints(db, out)
    _verify_metadata(db, out)
    damaged = _verify_recovery_stores(db, out)
    for name in db.tables():
        rows = db.read(name).num_rows
        out(f"ok: table {name!r} reads at version {db.version}: {rows:,} rows")
    return damaged


def _verify_log(db, out) -> None:
    log = db.log
    for _ in range(SCAN_RESTARTS_MAX):
        count = payload_bytes = 0
        try:
            for record in log.scan():
                count += 1
                payload_bytes += len(record.payload)
        except StorageError as exc:
            if not _gone(exc):
                raise
            log.forget_removed_segments()  # the writer's gc moved since: scan from there
            continue
        if log.damage is not None:  # (a handle opened with salvage=True)
            raise log.damage
        out(f"ok: log of branch {db.branch}: versions {log.since}..{log.version} ({count} commits, "
            f"{payload_bytes} payload bytes) in {len(log.segment_paths)} segment(s), every frame checksum verified")
        return
    raise StorageError(f"the log of {db.path} kept losing segments to gc while verify read it: "
                       f"expected a scan to finish within {SCAN_RESTARTS_MAX} tries", db.path)


def _verify_chunks_and_checkpoints(db, out) -> None:
    chunks = db._store.chunks
    checked = gone = 0
    for digest in list(chunks.digests()):
        try:
            chunks.get(digest)  # reads the file and checks its BLAKE3 name
            checked += 1
        except CorruptionError:
            if chunks.exists(digest):
                raise
            gone += 1  # removed by gc since it was listed
    out(f"ok: {checked} chunk(s), every BLAKE3 name verified" + (f" ({gone} removed by gc meanwhile)" if gone else ""))
    root = os.path.join(db.path, "checkpoints")
    manifests = 0
    for branch in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        store = CheckpointStore(os.path.join(root, branch), db._store.io, chunks)  # listed now, not at open
        for table, created, version in store.all_manifests():
            path = store._path(table, created, version)
            try:
                m = store.manifest(table, created, version)
            except CorruptionError as exc:
                if _gone(exc):
                    continue  # removed by gc since it was listed
                raise
            missing = [h for h in [*m.chunks, *m.deleted] if not chunks.exists(h)]
            if missing and os.path.exists(path):
                raise CorruptionError(
                    f"checkpoint of table {table!r} at version {version} (branch {branch}) references "
                    f"{len(missing)} missing chunk(s), first {missing[0]}: expected file "
                    f"{chunks.path_of(missing[0])}", chunks.path_of(missing[0]))
            manifests += 1
    out(f"ok: {manifests} checkpoint(s), every manifest's checksum verified and every referenced chunk present")


def _read_if_present(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


def _verify_metadata(db, out) -> None:
    root = db.path
    names = _branches.list_names(root)
    for name in names:
        _branches.read_meta(root, name)  # checks the seal
    files = 0
    retention = os.path.join(root, "retention")
    for f in sorted(os.listdir(retention)) if os.path.isdir(retention) else []:
        path = os.path.join(retention, f)
        data = _read_if_present(path)
        if data is not None:
            unseal(data, path, "retention file")
            files += 1
    catalog = os.path.join(root, "catalog")
    for branch in sorted(os.listdir(catalog)) if os.path.isdir(catalog) else []:
        d = os.path.join(catalog, branch)
        for f in sorted(os.listdir(d)) if os.path.isdir(d) else []:
            path = os.path.join(d, f)
            data = _read_if_present(path)
            if data is not None and f.endswith(".snap"):
                Catalog.from_snapshot(data, path)  # checks the seal, then decodes
                files += 1
    out(f"ok: {len(names)} branch(es), {files} retention file(s) and catalog snapshot(s), every seal verified")


def _verify_recovery_stores(db, out) -> int:
    views = os.path.join(db.path, "views")
    stores = sorted(Path(views).rglob("part-0.sqlite3")) if os.path.isdir(views) else []
    if not stores:
        return 0
    from udrflow.views._view import _check_recovery_store  # (imports Bytewax: only when needed)

    damaged = 0
    for store in stores:
        why = _check_recovery_store(store.parent)
        if why is not None:
            damaged += 1
            out(f"damaged: view recovery store {store.parent}: {why} (harmless: the view rebuilds it from its "
                f"inputs on its next run)")
    out(f"ok: {len(stores) - damaged} of {len(stores)} view recovery store(s) verified")
    return damaged
