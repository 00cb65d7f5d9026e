"""A Kafka source pointed at a port where no broker listens fails with its one clear
error, and librdkafka's own log lines go to Python logging (logger ``udrflow.kafka``)
instead of standard error: they used to be about 1,400 lines before the error."""

from __future__ import annotations

import logging

import pyarrow as pa
import pytest

import udrflow
from connectors.kafka import KafkaSource
from udrflow.errors import ConnectorError


def test_no_broker_gives_one_error_and_librdkafka_lines_go_to_logging(tmp_path, capfd, caplog):
    db = udrflow.open(str(tmp_path / "k.udr"))
    db.create_table("orders", pa.schema([pa.field("id", pa.int64(), nullable=False), ("amount", pa.float64())]),
                    primary_key=["id"])
    source = KafkaSource(db, "orders", "orders", bootstrap="127.0.0.1:9", connect_timeout_s=2)
    with caplog.at_level(logging.WARNING, logger="udrflow.kafka"):
        with pytest.raises(ConnectorError, match="cannot reach the Kafka broker at 127.0.0.1:9"):
            source.run_until_caught_up(timeout_s=10)
    out, err = capfd.readouterr()
    assert "rdkafka" not in err and "Connection refused" not in err, err[:500]
    assert any("Connection refused" in r.getMessage() or "rdkafka" in r.name or r.name == "udrflow.kafka"
               for r in caplog.records)
    db.close()
