"""Incremental views: defined in Python, maintained by Bytewax, stored back in the log.

>>> from udrflow.views import col, sum_, count
>>> # db.create_view("revenue", db.stream("orders").filter(col("amount") > 0)
>>> #                .group_by("customer").agg(total=sum_("amount"), n=count()))

Pieces: the expression builder (:func:`col`, :func:`lit`), aggregates (:func:`count`,
:func:`sum_`, :func:`min_`, :func:`max_`, :func:`avg`, :func:`count_distinct`), the
relational builder (:class:`Stream`, from ``db.stream(table)``), the runtime
(:class:`View`, :class:`Views`) and the change stream as a Bytewax source
(:class:`ChangeSource`). See docs/views.md.
"""

from udrflow.views._expr import Expr as Expr
from udrflow.views._expr import col as col
from udrflow.views._expr import lit as lit
from udrflow.views._plan import Stream as Stream
from udrflow.views._plan import avg as avg
from udrflow.views._plan import batch_evaluate as batch_evaluate
from udrflow.views._plan import count as count
from udrflow.views._plan import count_distinct as count_distinct
from udrflow.views._plan import max_ as max_
from udrflow.views._plan import min_ as min_
from udrflow.views._plan import sum_ as sum_
from udrflow.views._source import ChangeSource as ChangeSource
from udrflow.views._view import View as View
from udrflow.views._view import Views as Views

__all__ = ["ChangeSource", "Expr", "Stream", "View", "Views", "avg", "batch_evaluate", "col", "count",
           "count_distinct", "lit", "max_", "min_", "sum_"]
