"""The ``udrflow`` command line.

Every command names its database with ``--db PATH``, or else the ``UDRFLOW_DB``
environment variable. Errors print one line naming what was expected and found, and
exit with status 1 (2 for usage errors, as argparse does).

Commands today: ``init``, ``tables``, ``read``, ``sql``, ``log``, ``subscribe``, ``views``, ``verify``,
``gc``, ``recover``, ``ingest kafka``, ``sink kafka``, ``demo``. (``branch``, ``diff``, ``merge`` arrive with
the features they drive.)
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
        try:
            when = dt.datetime.fromisoformat(args.at)
        except ValueError:
            raise SystemExit(f"udrflow: error: --at expects an ISO time such as 2026-01-31T12:00:00: got "
                             f"{args.at!r}") from None
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
        write_table(table, args.format, args.out, args.limit)
    return 0


def cmd_sql(args) -> int:
    with udrflow.open(_db_path(args), readonly=True, create=False) as db:
        table = db.sql(args.query, version=_version_option(args), branch=args.branch,
                       params=_sql_params(args.param))
        write_table(table, args.format, args.out, args.limit)
    return 0


def _sql_params(raw: list[str] | None):
    """``--param`` values: ``NAME=VALUE`` binds ``$NAME``, a bare ``VALUE`` binds ``$1``, ``$2``, ...
    in order. A VALUE that is JSON (``3``, ``2.5``, ``true``, ``null``, ``"x"``) is that value,
    anything else the text itself."""
    if not raw:
        return None
    named, positional = {}, []
    for item in raw:
        name, eq, text = item.partition("=")
        if eq and name.isidentifier():
            named[name] = _param_value(text)
        else:
            positional.append(_param_value(item))
    if named and positional:
        raise SystemExit("udrflow: error: --param takes either NAME=VALUE (for $NAME) or VALUE (for $1, $2, ...), "
                         "not both in one query")
    return named or positional


def _param_value(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return text


TABLE_ROWS_SHOWN_DEFAULT = 50  # rows printed in table format unless --limit says otherwise


def _json_cell(value) -> str:
    return json.dumps(value, default=str, ensure_ascii=False)


def _flat(table):
    """``table`` with list, struct and map columns as JSON text (CSV has no nesting)."""
    import pyarrow as pa

    for i, field in enumerate(table.schema):
        if pa.types.is_nested(field.type):
            values = [None if v is None else _json_cell(v) for v in table.column(i).to_pylist()]
            table = table.set_column(i, pa.field(field.name, pa.string()), pa.array(values, pa.string()))
    return table


def write_table(table, fmt: str, out: str | None, limit: int | None = None) -> None:
    """Print or save an Arrow table as table | csv | json | parquet. ``limit``: at most this
    many rows (table format: TABLE_ROWS_SHOWN_DEFAULT unless given). A file is written to a
    temporary name and renamed when whole: a failure leaves no partial file behind."""
    total = table.num_rows
    if limit is None and fmt == "table":
        limit = TABLE_ROWS_SHOWN_DEFAULT
    if limit is not None:
        if limit < 0:
            raise SystemExit(f"udrflow: error: --limit must be at least 0: got {limit}")
        table = table.slice(0, limit)
    if fmt == "parquet" and not out:
        raise SystemExit("udrflow: error: --format parquet needs --out FILE")
    if out is None:
        _write(table, fmt, sys.stdout, total)
        return
    tmp = f"{out}.tmp-{os.getpid()}"
    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            pq.write_table(table, tmp)
        else:
            with open(tmp, "w", encoding="utf-8", newline="") as stream:
                _write(table, fmt, stream, total)
        os.replace(tmp, out)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise
    if fmt == "parquet":
        print(f"wrote {table.num_rows} rows to {out}")


def _write(table, fmt: str, stream, total: int) -> None:
    if fmt == "csv":
        import pyarrow.csv as pcsv

        sink = __import__("io").BytesIO()
        pcsv.write_csv(_flat(table), sink)
        stream.write(sink.getvalue().decode())
    elif fmt == "json":
        for row in table.to_pylist():
            stream.write(json.dumps(row, default=str, ensure_ascii=False) + "\n")
    else:
        names = table.column_names
        rows = [[("" if v is None else _json_cell(v) if isinstance(v, (list, dict)) else str(v)) for v in r.values()]
                for r in table.to_pylist()]
        widths = [max([len(n)] + [len(r[i]) for r in rows]) for i, n in enumerate(names)]
        stream.write("  ".join(n.ljust(w) for n, w in zip(names, widths, strict=True)) + "\n")
        for r in rows:
            stream.write("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) + "\n")
        shown = table.num_rows
        more = f" of {total:,}; --limit N shows more" if shown < total else ""
        stream.write(f"({shown:,} rows{more})\n")


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
    """Verify, without taking the writer lock (see udrflow/_verify.py): every log frame's
    CRC32C, every chunk's BLAKE3 name, every sealed metadata file, every checkpoint's
    chunks, the views' recovery stores, and that every table reads at the head. Exit 1 if
    anything is damaged."""
    from udrflow._verify import verify

    with udrflow.open(_db_path(args), readonly=True, create=False, branch=args.branch) as db:
        damaged = verify(db)
    return 1 if damaged else 0


def cmd_recover(args) -> int:
    """Salvage: see udrflow/_recover.py. Exit 0 when nothing was lost, 1 when versions were."""
    from udrflow._recover import recover

    report = recover(_db_path(args), args.out)
    return 1 if report["lost_versions"] or report["bad_chunks"] else 0


def cmd_subscribe(args) -> int:
    from udrflow._changefeed import batch_json_lines

    # Read-only: a subscriber never takes the writer lock, so it can follow a database
    # another process is writing.
    with udrflow.open(_db_path(args), readonly=True, create=False, branch=args.branch) as db:
        sub = db.subscribe(args.tables or None, from_version=args.from_version, idle_timeout_s=args.idle_timeout,
                           until_version=args.until_version)
        try:
            for batch in sub:
                if batch.kind != "changes" and not args.ddl:
                    continue
                if args.format == "json":
                    lines = batch_json_lines(batch).to_pylist()
                    if lines:
                        sys.stdout.write("\n".join(lines) + "\n")
                    elif batch.kind != "changes":
                        sys.stdout.write(json.dumps({"version": batch.version, "commit_ts": batch.timestamp.isoformat(),
                                                     "table": batch.table, "ddl": batch.kind}) + "\n")
                else:
                    print(f"-- version {batch.version} at {batch.timestamp.isoformat()}: {batch.table} "
                          f"{batch.kind} ({batch.num_rows} rows)")
                    if batch.num_rows:
                        write_table(batch.changes, "table", None)
                sys.stdout.flush()
        except KeyboardInterrupt:
            pass
        finally:
            sub.close()
        print(f"-- position {sub.position} (resume with --from-version {sub.position})", file=sys.stderr)
    return 0


def cmd_views(args) -> int:
    path = _db_path(args)
    if args.action == "list":
        with udrflow.open(path, readonly=True, create=False, branch=args.branch) as db:
            rows = db.views.list()
            if not rows:
                print("no views")
            for r in rows:
                failed = f"  ({r['error']})" if r["error"] else ""
                print(f"{r['name']:<30} position {r['position']:>10,}  lag {r['lag']:>8,}  "
                      f"inputs: {', '.join(r['inputs'])}{failed}")
        return 0
    with udrflow.open(path, create=False, branch=args.branch) as db:
        names = args.names or db.views.names()
        if not names:
            print("no views")
            return 0
        if args.action == "drop":
            for name in names:
                print(f"dropped view {name} at version {db.drop_view(name)}")
        elif args.action == "refresh":
            by_name = {v.name: v for v in db.views.ordered()}
            for name in [n for n in by_name if n in names] + [n for n in names if n not in by_name]:
                view = db.views[name]

                def show(reached: int, target: int, name: str = name) -> None:
                    sys.stderr.write(f"\r{name}: input version {reached:,} of {target:,}")
                    sys.stderr.flush()

                reached = view.refresh(progress=show)
                sys.stderr.write("\n")
                print(f"{name}: reflects input version {reached:,}")
        else:  # run
            import time

            views = [db.views[n] for n in names]
            db.views.run(names)  # one thread, one commit per round for all of them
            print(f"maintaining {', '.join(names)} (Ctrl-C to stop)", file=sys.stderr)
            failed: dict[str, BaseException] = {}
            try:
                while len(failed) < len(views):
                    time.sleep(args.report_interval)
                    for v in views:
                        if v.error is not None and v.name not in failed:
                            # It stopped alone; the others keep running.
                            failed[v.name] = v.error
                            print(f"udrflow: error: view {v.name!r} stopped: {type(v.error).__name__}: "
                                  f"{_one_line(v.error)}", file=sys.stderr)
                    print("  ".join(f"{v.name}: {v.reached:,} (lag {max(0, db.version - v.reached):,})"
                                    for v in views if v.name not in failed), file=sys.stderr)
            except KeyboardInterrupt:
                pass
            finally:
                for v in views:
                    try:
                        v.stop()
                    except Exception:  # noqa: BLE001 - reported above, when it failed
                        pass
            return 1 if failed else 0
    return 0


def cmd_ingest(args) -> int:
    from connectors.kafka._cli import run_ingest

    return run_ingest(args, _db_path(args))


def cmd_sink(args) -> int:
    from connectors.kafka._cli import run_sink

    return run_sink(args, _db_path(args))


def cmd_branch(args) -> int:
    path = _db_path(args)
    if args.action == "list":
        with udrflow.open(path, readonly=True, create=False) as db:
            for b in db.branches():
                origin = f"from {b['parent']} at version {b['fork']}" if b["parent"] else "(root)"
                print(f"{b['name']:<24} head {b['head']:>10,}  {origin}")
        return 0
    if not args.name:
        raise SystemExit(f"udrflow: error: branch {args.action} needs a branch NAME")
    with udrflow.open(path, create=False) as db:
        if args.action == "create":
            fork = db.create_branch(args.name, from_branch=args.from_branch, at_version=args.at_version)
            print(f"created branch {args.name} from {args.from_branch or db.branch} at version {fork}")
        else:
            db.delete_branch(args.name)
            print(f"deleted branch {args.name}")
    return 0


def cmd_diff(args) -> int:
    if ".." not in args.range:
        raise SystemExit("udrflow: error: diff takes A..B (branches, versions of main, or branch@version)")
    a, b = args.range.split("..", 1)

    def side(text: str):
        return int(text) if text.isdigit() else text

    with udrflow.open(_db_path(args), readonly=True, create=False) as db:
        result = db.diff(side(a), side(b), table=args.table)
        tables = {args.table: result} if args.table else result
        if not any(t.num_rows for t in tables.values()):
            print("no differences")
        for name, changes in tables.items():
            print(f"-- {name}: {changes.num_rows} row changes")
            if changes.num_rows:
                write_table(changes, args.format, None)
    return 0


def cmd_merge(args) -> int:
    with udrflow.open(_db_path(args), create=False, branch=args.into) as db:
        report = db.merge(args.source, into=args.into)
        if report["version"] is None:
            print(f"nothing to merge from {args.source} into {args.into}")
        else:
            print(f"merged {args.source} into {args.into} ({report['kind']}): {report['rows']} rows in "
                  f"{', '.join(report['tables'])} at version {report['version']}")
    return 0


def cmd_demo(args) -> int:
    from udrflow import _demo

    _demo.run(args.db)  # (not $UDRFLOW_DB: the demo writes tables of its own)
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
    p.add_argument("--limit", type=int, default=None,
                   help=f"at most this many rows (default: {TABLE_ROWS_SHOWN_DEFAULT} in table format, all otherwise)")
    p.add_argument("--format", choices=("table", "csv", "json", "parquet"), default="table")
    p.add_argument("--out", default=None, help="write to this file instead of standard output")
    p = add("sql", cmd_sql, "run one read-only SQL query (DataFusion) at a version; AS OF VERSION/TIMESTAMP, "
                            "t@branch and __changelog work inside it (see docs/sql.md)")
    p.add_argument("query", help="the query, e.g. \"SELECT count(*) FROM orders AS OF VERSION 3\"")
    p.add_argument("--branch", default=None, help="default: the open branch (main)")
    p.add_argument("--version", type=int, default=None, help="version of tables without their own AS OF "
                   "(default: the head)")
    p.add_argument("--at", default=None, help="an ISO time instead of --version (naive = UTC)")
    p.add_argument("--param", "-p", action="append", default=None, metavar="[NAME=]VALUE",
                   help="bind $NAME (or $1, $2, ... in order); VALUE is JSON if it parses, else text")
    p.add_argument("--format", choices=("table", "csv", "json", "parquet"), default="table")
    p.add_argument("--out", default=None, help="write to this file instead of standard output")
    p.add_argument("--limit", type=int, default=None,
                   help=f"at most this many rows (default: {TABLE_ROWS_SHOWN_DEFAULT} in table format, all otherwise)")
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
    p = add("recover", cmd_recover, "copy the intact prefix of a damaged database (every commit before the first "
                                    "bad frame) into a new database, and report what was lost")
    p.add_argument("--out", required=True, help="the new database directory (must not exist, or be empty)")
    p = add("subscribe", cmd_subscribe, "stream the row changes of tables from a version on, then follow new "
                                        "commits until interrupted")
    p.add_argument("tables", nargs="*", help="tables to follow (default: all)")
    p.add_argument("--branch", default="main")
    p.add_argument("--from-version", type=int, default=None,
                   help="deliver the commits after this version (default: the head, so only new ones)")
    p.add_argument("--until-version", type=int, default=None, help="stop once this version is delivered")
    p.add_argument("--idle-timeout", type=float, default=None, help="stop after this many seconds without a commit")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.add_argument("--ddl", action="store_true", help="also show create/alter/drop of the tables")
    p = add("views", cmd_views, "incremental views: list (position, lag), refresh (catch up, with progress), "
                                "run (keep current until interrupted), drop")
    p.add_argument("action", choices=("list", "refresh", "run", "drop"))
    p.add_argument("names", nargs="*", help="views to act on (default: all)")
    p.add_argument("--branch", default="main")
    p.add_argument("--report-interval", type=float, default=5.0, help="run: seconds between position reports")
    from connectors.kafka._cli import add_ingest_arguments, add_sink_arguments

    p = add("ingest", cmd_ingest, "consume a Kafka topic into a table, exactly once, with live progress")
    p.add_argument("source", choices=("kafka",), help="where the records come from")
    add_ingest_arguments(p)
    p = add("sink", cmd_sink, "send a table's (or view's) changes to a Kafka topic, resuming without duplicates")
    p.add_argument("target", choices=("kafka",), help="where the changes go")
    add_sink_arguments(p)
    p = add("branch", cmd_branch, "branches: create (zero-copy fork), list, delete")
    p.add_argument("action", choices=("create", "list", "delete"))
    p.add_argument("name", nargs="?")
    p.add_argument("--from", dest="from_branch", default=None, help="create: the branch to fork (default: main)")
    p.add_argument("--at-version", type=int, default=None, help="create: the version to fork at (default: head)")
    p = add("diff", cmd_diff, "row-level differences between two branches or versions: A..B")
    p.add_argument("range", help="A..B: branch names, versions of main, or branch@version")
    p.add_argument("--table", default=None)
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")
    p = add("merge", cmd_merge, "merge a branch into another: fast-forward or three-way at row level, one commit")
    p.add_argument("source")
    p.add_argument("--into", default="main")
    add("demo", cmd_demo, "run the end-to-end demo (in a fresh temporary database unless --db is given)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UdrflowError as exc:
        print(f"udrflow: error: {_one_line(exc)}", file=sys.stderr)
        return 1
    except OSError as exc:  # a file the user named (--out, a path) the OS refused
        where = f": {exc.filename}" if getattr(exc, "filename", None) else ""
        print(f"udrflow: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug of ours: one line, the traceback only when asked for
        if os.environ.get("UDRFLOW_DEBUG"):
            raise
        print(f"udrflow: internal error: {type(exc).__name__}: {_one_line(exc)} (please report it; "
              f"UDRFLOW_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 2


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


if __name__ == "__main__":
    sys.exit(main())
