"""The ``udrflow`` command line.

Every command names its database with ``--db PATH``, or else the ``UDRFLOW_DB``
environment variable. Errors print one line naming what was expected and found, and
exit with status 1 (2 for usage errors, as argparse does).

Commands today: ``init``, ``log``, ``verify``, ``demo``. (``tables``, ``sql``, ``read``,
``subscribe``, ``branch``, ``diff``, ``merge``, ``views``, ``ingest``, ``sink``, ``gc`` arrive
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
                if args.format == "json":
                    print(json.dumps({"version": record.version, "timestamp": _iso(record.timestamp_us),
                                      "bytes": len(record.payload)}), flush=args.follow)
                else:
                    preview = record.payload[:40]
                    print(f"{record.version:>10}  {_iso(record.timestamp_us)}  {len(record.payload):>9} B  {preview!r}",
                          flush=args.follow)
                shown += 1
                if args.limit is not None and shown >= args.limit:
                    break
        except KeyboardInterrupt:
            pass
    return 0


def cmd_verify(args) -> int:
    """Read every frame of every segment with checksums, without taking the writer lock."""
    path = _db_path(args)
    with udrflow.open(path, readonly=True, create=False, branch=args.branch) as db:
        log = db.log
        count = 0
        payload_bytes = 0
        for record in log.scan():
            count += 1
            payload_bytes += len(record.payload)
        segments = log.segment_paths
        print(f"ok: {db.path} branch {db.branch}: versions {log.since}..{log.version} ({count} commits, "
              f"{payload_bytes} payload bytes) in {len(segments)} segment(s), every checksum verified")
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
    p = add("log", cmd_log, "list the commits of a branch's log")
    p.add_argument("--branch", default="main")
    p.add_argument("--from-version", type=int, default=None, help="first version to show (default: the oldest)")
    p.add_argument("--limit", type=int, default=None, help="show at most this many commits")
    p.add_argument("--follow", action="store_true", help="keep following new commits until interrupted")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p = add("verify", cmd_verify, "verify every checksum of a branch's log without taking the writer lock")
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
