"""Kafka connectors: a source that consumes topics into a table and a sink that writes a
table's change stream to a topic, both exactly once as seen from the other side.

    from connectors.kafka import KafkaSource, KafkaSink

    KafkaSource(db, "orders", "orders", bootstrap="127.0.0.1:9092").run_until_caught_up()
    KafkaSink(db, "orders", "orders-changes", bootstrap="127.0.0.1:9092").run_until_caught_up()

See docs/kafka.md for the guarantees and every option; ``udrflow ingest kafka`` and
``udrflow sink kafka`` run them from the command line.
"""

from connectors.kafka._decode import FORMATS as FORMATS
from connectors.kafka._decode import KEY_FORMATS as KEY_FORMATS
from connectors.kafka._offsets import DEAD_LETTER_SCHEMA as DEAD_LETTER_SCHEMA
from connectors.kafka._offsets import OFFSETS_TABLE as OFFSETS_TABLE
from connectors.kafka._offsets import stored_offsets as stored_offsets
from connectors.kafka._sink import KafkaSink as KafkaSink
from connectors.kafka._sink import SinkStats as SinkStats
from connectors.kafka._source import IngestStats as IngestStats
from connectors.kafka._source import KafkaSource as KafkaSource

__all__ = ["KafkaSource", "KafkaSink", "IngestStats", "SinkStats", "OFFSETS_TABLE", "DEAD_LETTER_SCHEMA",
           "FORMATS", "KEY_FORMATS", "stored_offsets"]
