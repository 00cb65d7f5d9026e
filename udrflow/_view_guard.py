"""The view write guard, below both the Database and the views runtime: a view's table
changes only through its definition, so writes to it are refused unless the views' own
maintenance is writing (``view_writer.active``, set per thread)."""

from __future__ import annotations

import threading

REGISTRY = "__udrflow_views"  # the view registry table (see udrflow/views/_view.py)

# Set while a view's own maintenance writes its table (the only writer allowed there).
view_writer = threading.local()


def view_maintenance_active() -> bool:
    return getattr(view_writer, "active", False)
