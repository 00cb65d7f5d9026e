"""Every size and time limit of the Kafka connectors, in one place (STYLE.md 8).
tests/test_kafka_decode.py checks the relationships between them."""

# ---- source ------------------------------------------------------------------------------
SOURCE_BATCH_SIZE_DEFAULT = 20_000          # records per commit (a batch ends at the first limit reached)
SOURCE_BATCH_SIZE_MAX = 1_000_000
SOURCE_BATCH_MS_DEFAULT = 250               # the longest a consumed record waits for its commit
SOURCE_BATCH_MS_MAX = 600_000
SOURCE_BATCH_BYTES_MAX = 64 << 20           # value bytes per commit, whatever batch_size says
SOURCE_BATCHES_QUEUED_MAX = 2               # decoded batches waiting for the committer (back-pressure)
SOURCE_CONSUME_MESSAGES_MAX = 10_000        # records asked of librdkafka per consume() call
SOURCE_POLL_S = 0.1                         # longest consume() wait, so stop() is seen promptly
SOURCE_FETCH_QUEUE_KBYTES_MAX = 64 << 10    # librdkafka's prefetch queue (queued.max.messages.kbytes)
SOURCE_FETCH_WAIT_MS = 100                  # fetch.wait.max.ms: an idle partition reports EOF this soon
SOURCE_BARRIER_WAIT_S = 60.0                # a rebalance waits this long for in-flight batches to commit
SOURCE_METADATA_TIMEOUT_S = 15.0            # topic metadata at start (an unreachable broker fails then)
SOURCE_LAG_INTERVAL_S = 1.0                 # how often lag is recomputed from cached watermarks

# ---- sink --------------------------------------------------------------------------------
SINK_ROUND_RECORDS_DEFAULT = 20_000         # records produced between two flushes (the resend window)
SINK_ROUND_RECORDS_MAX = 1_000_000
SINK_VERSIONS_PER_READ_MAX = 4096           # commits read from the log per step
SINK_IDLE_WAIT_S = 0.05                     # wait for a new commit at most this long between checks
SINK_FLUSH_TIMEOUT_S = 60.0                 # a round not acknowledged by then fails the sink
SINK_SCAN_TIMEOUT_S = 60.0                  # reading the topic's tail on start, per partition
SINK_QUEUE_MESSAGES_MAX = 1_000_000         # librdkafka's producer queue (queue.buffering.max.messages)
