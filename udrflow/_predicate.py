"""Evaluating a SQL predicate (``delete(where="amount < 0")``) over an Arrow table, with DataFusion."""

from __future__ import annotations

import pyarrow as pa

from udrflow.errors import UsageError


def filter_where(table: pa.Table, predicate: str, *, table_name: str) -> pa.Table:
    """Rows of ``table`` for which the SQL boolean expression ``predicate`` is true."""
    if not isinstance(predicate, str) or not predicate.strip():
        raise UsageError(f"where= must be a SQL boolean expression over the columns of {table_name!r}: "
                         f"got {predicate!r}")
    if ";" in predicate:
        raise UsageError(f"where= must be one SQL expression, without ';': got {predicate!r}")
    import datafusion

    ctx = datafusion.SessionContext()
    ctx.register_record_batches("t", [table.to_batches() or [pa.RecordBatch.from_pylist([], schema=table.schema)]])
    try:
        result = ctx.sql(f"SELECT * FROM t WHERE ({predicate})").to_arrow_table()
    except Exception as exc:  # DataFusion raises plain Exceptions for parse and plan errors
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UsageError(f"cannot evaluate where={predicate!r} on table {table_name!r} "
                         f"(columns: {', '.join(table.column_names)}): {message}") from None
    return result.cast(table.schema) if result.num_rows else table.schema.empty_table()
