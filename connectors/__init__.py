"""udrflow connectors: move data between udrflow's log and outside systems.

Today: Kafka (``connectors.kafka``: :class:`~connectors.kafka.KafkaSource` consumes topics
into tables, :class:`~connectors.kafka.KafkaSink` writes a table's change stream to a
topic). ``connectors.testing`` starts a real Kafka-protocol broker on loopback for tests
and examples. Installed with udrflow itself (``pip install -e .``): nothing else to add.
"""
