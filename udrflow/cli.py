"""The ``udrflow`` command line.

Every command names its database with ``--db PATH``, or else the ``UDRFLOW_DB``
environment variable. Errors print one line naming what was expected and found, and
exit with status 1 (2 for usage errors, as argparse does).

Commands today: ``init``, ``tables``, ``read``, ``log``, ``verify``, ``gc``, ``demo``.
(``sql``, ``subscribe``, ``branch``, ``diff``, ``merge``, ``views``, ``ingest``, ``sink`` arrive
with the features they drive.)
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys

import udrflow
from udrflow.errors import UdrflowError


def _db_path(args) -> str:
    path = args.db or os.environ.get("UDRFLOW_DB")
    if not path:
        raise SystemExit("udrflow: error: no database given: expected --db PATH or the UDRFLOW_DB environment variable")
    return path


def _iso(timestamp_us: int) -> str:
    return dt.datetime.fromtimestamp(timestamp_us / 1e6, dt.UTC).isoformat(timespec="microseconds")


def cmd_init(args) -> int:
    path = _db_path(args)
    with udrflow.open(path) as db:
        print(f"initialised {db.path} (branch {db.branch}, version {db.version})")
    return 0


def _describe(payload: bytes, version: int) -> str:
    """One line about a commit: its operations, or the raw bytes if it is not a table commit."""
    from udrflow._commit import decode_header

    try:
        header = decode_header(payload, version)
    except UdrflowError:
        return repr(payload[:40])
    parts = []
    for op in header.ops:
        kind = type(op).__struct_config__.tag
        if kind == "changes":
            parts.append(f"{op.table} +{op.rows_in}/-{op.rows_out}")
        else:
            parts.append(f"{kind} {op.table}")
    return ", ".join(parts) or "(no operations)"


def _version_option(args):
    if getattr(args, "at", None):
        when = dt.datetime.fromisoformat(args.at)
        return when if when.tzinfo else when.replace(tzinfo=dt.UTC)
    return args.version


def cmd_tables(args) -> int:
    with udrflow.open(_db_path(args), readonly=True, create=False, branch=args.branch) as db:
        version = _version_option(args)
        names = db.tables(version=version if isinstance(version, int) else None)
        if not names:
            print("no tables")
        for name in names:
            key = db.primary_key(name)
            rows = db.read(name, version=version).num_rows
            print(f"{name:<30} {rows:>12,} rows  key: {', '.join(key) if key else '(none)'}  "
                  f"columns: {', '.join(db.schema(name).names)}")
    return 0


def cmd_read(args) -> int:
    with udrflow.open(_db_path(args), readonly=True, create=False, branch=args.branch) as db:
        table = db.read(args.table, version=_version_option(args))
        if args.limit is not None:
            table = table.slice(0, args.limit)
        write_table(table, args.format, args.out)
    return 0


def write_table(table, fmt: str, out: str | None) -> None:
    """Print or save an Arrow table as table | csv | json | parquet."""
    if fmt == "parquet":
        import pyarrow.parquet as pq

        if not out:
            raise SystemExit("udrflow: error: --format parquet needs --out FILE")
        pq.write_table(table, out)
        print(f"wrote {table.num_rows} rows to {out}")
        return
    stream = open(out, "w") if out else sys.stdout  # noqa: SIM115 - closed below when it is a file
    try:
        if fmt == "csv":
            import pyarrow.csv as pcsv

            sink = __import__("io").BytesIO()
            pcsv.write_csv(table, sink)
            stream.write(sink.getvalue().decode())
        elif fmt == "json":
            for row in table.to_pylist():
                stream.write(json.dumps(row, default=str) + "\n")
        else:
            names = table.column_names
            rows = [[("" if v is None else str(v)) for v in r.values()] for r in table.to_pylist()]
            widths = [max([len(n)] + [len(r[i]) for r in rows]) for i, n in enumerate(names)]
            stream.write("  ".join(n.ljust(w) for n, w in zip(names, widths, strict=True)) + "\n")
            for r in rows:
                stream.write("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) + "\n")
            stream.write(f"({table.num_rows} rows)\n")
    finally:
        if out:
            stream.close()


def cmd_gc(args) -> int:
    with udrflow.open(_db_path(args), create=False, branch=args.branch) as db:
        if args.since is not None:
            for name, since in db.set_since(args.since).items():
                print(f"since of {name}: {since}")
        report = db.gc()
        print(", ".join(f"{k.replace('_', ' ')}: {v:,}" for k, v in report.items()))
    return 0


def cmd_log(args) -> int:
    path = _db_path(args)
    with udrflow.open(path, readonly=True, branch=args.branch) as db:
        log = db.log
        start = args.from_version if args.from_version is not None else log.since
        if args.follow:
            records = log.follow(start)
        else:
            end = log.version if args.limit is None else min(log.version, start + args.limit - 1)
            records = log.scan(start, end) if start <= end else iter(())
        shown = 0
        try:
            for record in records:
                what = _describe(record.payload, record.version)
                if args.format == "json":
                    print(json.dumps({"version": record.version, "timestamp": _iso(record.timestamp_us),
                                      "bytes": len(record.payload), "operations": what}), flush=args.follow)
                else:
                    print(f"{record.version:>10}  {_iso(record.timestamp_us)}  {len(record.payload):>9} B  {what}",
                          flush=args.follow)
                shown += 1
                if args.limit is not None and shown >= args.limit:
                    break
        except KeyboardInterrupt:
            pass
    return 0


def cmd_verify(args) -> int:
    """Verify, without taking the writer lock: every log frame's CRC32C, every chunk's
    BLAKE3 name, that every checkpoint's chunks exist, and that every table reads at the head."""
    path = _db_path(args)
    with udrflow.open(path, readonly=True, create=False, branch=args.branch) as db:
        log = db.log
        count = 0
        payload_bytes = 0
        for record in log.scan():
            count += 1
            payload_bytes += len(record.payload)
        segments = log.segment_paths
        print(f"ok: log of branch {db.branch}: versions {log.since}..{log.version} ({count} commits, "
              f"{payload_bytes} payload bytes) in {len(segments)} segment(s), every frame checksum verified")
        chunks = db._store.chunks
        digests = list(chunks.digests())
        for digest in digests:
            chunks.get(digest)  # reads the file and checks its BLAKE3 name (CorruptionError if not)
        print(f"ok: {len(digests)} chunk(s), every BLAKE3 name verified")
        engine = db._engine()
        engine.refresh()
        manifests = engine.checkpoints.all_manifests()
        present = set(digests)
        for table, created, version in manifests:
            m = engine.checkpoints.manifest(table, created, version)
            missing = [h for h in [*m.chunks, *m.deleted] if h not in present]
            if missing:
                raise udrflow.CorruptionError(
                    f"checkpoint of table {table!r} at version {version} references {len(missing)} missing chunk(s), "
                    f"first {missing[0]}: expected file {chunks.path_of(missing[0])}", chunks.path_of(missing[0]))
        print(f"ok: {len(manifests)} checkpoint(s), every referenced chunk present")
        for name in db.tables():
            rows = db.read(name).num_rows
            print(f"ok: table {name!r} reads at version {db.version}: {rows:,} rows")
    return 0


def cmd_demo(args) -> int:
    from udrflow import _demo

    _demo.run(args.db or os.environ.get("UDRFLOW_DB"))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="udrflow", description="udrflow: one durable log for batch SQL, "
                                     "change streams and incremental views.")
    parser.add_argument("--version", action="version", version=f"udrflow {udrflow.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.add_argument("--db", help="database directory (default: $UDRFLOW_DB)")
        p.set_defaults(func=func)
        return p

    add("init", cmd_init, "create a database (or check an existing one opens)")
    p = add("tables", cmd_tables, "list the tables (with row counts and keys) at a version")
    p.add_argument("--branch", default="main")
    p.add_argument("--version", type=int, default=None)
    p.add_argument("--at", default=None, help="an ISO time instead of --version (naive = UTC)")
    p = add("read", cmd_read, "print a table as of a version")
    p.add_argument("table")
    p.add_argument("--branch", default="main")
    p.add_argument("--version", type=int, default=None, help="default: the head")
    p.add_argument("--at", default=None, help="an ISO time instead of --version (naive = UTC)")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--format", choices=("table", "csv", "json", "parquet"), default="table")
    p.add_argument("--out", default=None, help="write to this file instead of standard output")
    p = add("gc", cmd_gc, "reclaim space: optionally move every table's since forward, then collect garbage")
    p.add_argument("--branch", default="main")
    p.add_argument("--since", type=int, default=None, help="give up history before this version first")
    p = add("log", cmd_log, "list the commits of a branch's log")
    p.add_argument("--branch", default="main")
    p.add_argument("--from-version", type=int, default=None, help="first version to show (default: the oldest)")
    p.add_argument("--limit", type=int, default=None, help="show at most this many commits")
    p.add_argument("--follow", action="store_true", help="keep following new commits until interrupted")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p = add("verify", cmd_verify, "verify every log checksum, chunk hash and checkpoint, and read every table "
                                  "(no writer lock taken)")
    p.add_argument("--branch", default="main")
    add("demo", cmd_demo, "run the end-to-end demo (in a fresh temporary database unless --db is given)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UdrflowError as exc:
        print(f"udrflow: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
