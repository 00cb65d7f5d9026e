"""librdkafka's own log lines go through Python ``logging`` (logger ``udrflow.kafka``, level
WARNING), not straight to standard error: pointed at a port with no broker, the client
used to print about 1,400 lines before the connector's own one-line error. A library adds
a NullHandler to its logger, so nothing is printed unless the application configures
logging (``logging.basicConfig()`` shows them; ``logging.getLogger("udrflow.kafka")
.setLevel(logging.DEBUG)`` shows librdkafka's debug lines too)."""

from __future__ import annotations

import logging

LOGGER = logging.getLogger("udrflow.kafka")
if LOGGER.level == logging.NOTSET:
    LOGGER.setLevel(logging.WARNING)
LOGGER.addHandler(logging.NullHandler())


def with_logger(config: dict) -> dict:
    """``config`` for a confluent-kafka client, its logs sent to LOGGER (unless it names one)."""
    config.setdefault("logger", LOGGER)
    return config
