"""Hostile table, branch and view names are rejected with the rule they break; ordinary
names pass."""

import pytest

import udrflow
from udrflow._names import NAME_BYTES_MAX, check_name
from udrflow.errors import InvalidNameError

HOSTILE = [
    ("../etc", "path separators"), ("a/b", "path separators"), ("a\\b", "path separators"),
    ("..", "path separators"), (".", "path separators"), ("x..y", "path separators"),
    ("", "must not be empty"), ("tab\there", "control characters"), ("nul\x00", "control characters"),
    ("new\nline", "control characters"), ("x" * (NAME_BYTES_MAX + 1), f"at most {NAME_BYTES_MAX} bytes"),
    ("-dash", "must start with a letter"), ("sp ace", "only letters"), ("é" * 70, "at most"),
    (None, "must be a str"), (3, "must be a str"),
]


@pytest.mark.parametrize("name,rule", HOSTILE)
def test_hostile_names_are_rejected(name, rule):
    with pytest.raises(InvalidNameError, match=rule):
        check_name(name, "branch")


@pytest.mark.parametrize("name", ["orders", "_tmp", "Orders_2024", "dev-1", "v1.2"])
def test_ordinary_names_pass(name):
    assert check_name(name, "table") == name


def test_open_refuses_a_hostile_branch(tmp_path):
    with pytest.raises(InvalidNameError, match="branch name"):
        udrflow.open(tmp_path / "db", branch="../../x")
    assert not (tmp_path / "x").exists()


def test_a_user_table_cannot_take_the_view_registry_name(tmp_path):
    # It used to be created, after which every write raised a raw KeyError.
    import pyarrow as pa

    import udrflow

    with udrflow.open(str(tmp_path / "r.udr")) as db:
        with pytest.raises(InvalidNameError, match="reserved"):
            db.create_table("__udrflow_views", pa.schema([("x", pa.int64())]))
        db.create_table("t", pa.schema([pa.field("k", pa.int64(), nullable=False)]), primary_key="k")
        assert db.insert("t", [{"k": 1}]) == 2
