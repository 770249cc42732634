"""The Tansu test broker helper itself: restart on the same port, read_all past Tansu's latest-offset
quirk, and no orphaned broker when the process that started it dies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from tests.kafka_server import kafka_server, private_kafka_server  # noqa: F401  (fixtures)

REPO = Path(__file__).resolve().parents[2]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purposes
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[1].split()[0] != "Z"
    except OSError:
        return False


def test_read_all_reaches_the_true_end_where_end_offsets_falls_short(kafka_server):
    topic = kafka_server.unique_topic("quirk")
    kafka_server.create_topic(topic, 1)
    producer = KafkaProducer(bootstrap_servers=kafka_server.bootstrap, linger_ms=50)
    try:
        for i in range(30):
            producer.send(topic, value=b"%d" % i, partition=0)
        producer.flush()
    finally:
        producer.close()
    consumer = KafkaConsumer(bootstrap_servers=kafka_server.bootstrap)
    try:
        tp = TopicPartition(topic, 0)
        reported = consumer.end_offsets([tp])[tp]
    finally:
        consumer.close()
    assert reported <= 30  # on Tansu 0.6: the last batch's base offset + 1, e.g. 1
    assert [m.value for m in kafka_server.read_all(topic)] == [b"%d" % i for i in range(30)]


def test_stop_and_start_keep_the_port_and_lose_the_data(private_kafka_server):
    server = private_kafka_server
    port, first_pid = server.port, server.proc.pid
    topic = server.unique_topic("restart")
    producer = KafkaProducer(bootstrap_servers=server.bootstrap)
    producer.send(topic, b"before").get(10)
    producer.close()
    server.stop()
    assert not server.running and not _alive(first_pid)
    server.start()
    assert server.port == port and server.proc.pid != first_pid
    assert server.read_all(topic) == []  # memory storage: the restart lost it


def test_the_broker_dies_with_the_process_that_started_it(tmp_path):
    script = tmp_path / "starter.py"
    script.write_text(textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(REPO)!r})
        from tests.kafka_server import start_kafka_server
        server = start_kafka_server()
        print(server.proc.pid, flush=True)
        time.sleep(60)
    """))
    starter = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, cwd=REPO)
    try:
        broker_pid = int(starter.stdout.readline())
        assert _alive(broker_pid)
    finally:
        starter.send_signal(signal.SIGKILL)  # no finally, no atexit: only PR_SET_PDEATHSIG is left
        starter.wait()
    deadline = time.monotonic() + 5
    while _alive(broker_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(broker_pid)


def test_a_broker_started_from_a_short_lived_thread_outlives_it(private_kafka_server):
    """PR_SET_PDEATHSIG follows the forking thread: trio.to_thread's threads idle out, brokers must not."""
    import threading

    server = private_kafka_server
    server.stop()
    worker = threading.Thread(target=server.start)
    worker.start()
    worker.join()  # the thread that asked for the start is gone
    time.sleep(0.3)
    assert server.running and _alive(server.proc.pid)
    assert server.read_all(server.unique_topic("alive")) == []
