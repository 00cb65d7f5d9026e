"""Dropping a table a view owns or reads is refused with an error naming the views (it
used to break views.list(), drop_view and views.run() for good); ``cascade=True`` drops
those views first, readers before what they read."""

from __future__ import annotations

import pyarrow as pa
import pytest

import udrflow
from udrflow.errors import ReadOnlyError, UsageError
from udrflow.views import count, sum_


def _db(tmp_path):
    db = udrflow.open(str(tmp_path / "d.udr"))
    db.create_table("t", pa.schema([pa.field("id", pa.int64(), nullable=False), ("k", pa.int64())]), primary_key="id")
    db.create_table("other", pa.schema([pa.field("id", pa.int64(), nullable=False)]), primary_key="id")
    db.insert("t", [{"id": 1, "k": 1}, {"id": 2, "k": 1}])
    db.create_view("by_k", db.stream("t").group_by("id").agg(n=count()))
    db.create_view("total", db.stream("by_k").group_by("id").agg(s=sum_("n")))
    return db


def test_dropping_a_table_that_views_need_is_refused_and_changes_nothing(tmp_path):
    db = _db(tmp_path)
    before = db.version
    with pytest.raises(UsageError, match=r"read by view\(s\) 'total', 'by_k'|read by view\(s\) 'by_k', 'total'"):
        db.drop_table("t")
    with pytest.raises(UsageError, match="drop it with drop_view"):
        db.drop_table("total")
    with pytest.raises(UsageError, match="read by view"):
        with db.transaction() as tx:
            tx.drop_table("by_k")
    with pytest.raises(ReadOnlyError, match="view registry"):
        db.drop_table("__udrflow_views")
    assert db.version == before
    assert [r["name"] for r in db.views.list()] == ["by_k", "total"]
    db.drop_table("other")  # a table no view needs
    db.insert("t", [{"id": 3, "k": 2}])
    db.views.refresh()
    assert db.read("total").num_rows == 3
    db.close()


def test_cascade_drops_the_views_then_the_table(tmp_path):
    db = _db(tmp_path)
    db.drop_table("t", cascade=True)
    assert db.views.list() == []
    assert "t" not in db.tables() and "by_k" not in db.tables() and "total" not in db.tables()
    db.views.run()  # nothing left to break it
    db.views.stop()
    db.close()
