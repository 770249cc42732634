"""The daemon with the Kafka sink as its only sink, against the simulator and a real broker (Tansu):
judged by the simulator's ground truth and what a consumer reads from the topics."""

from __future__ import annotations

import json
import time

import pytest

from tests.harness import missing_and_extra, start_daemon, start_sim, stop_process, wait_for, write_config
from tests.kafka_server import KafkaServer, kafka_server  # noqa: F401  (fixture)

pytestmark = pytest.mark.slow


def kafka_config(tmp_path, sim, server: KafkaServer, symbols, topics: dict[str, str]):
    path = write_config(tmp_path, sim, symbols, sinks=["bus"])
    path.write_text(
        path.read_text()
        + "\n[sinks.bus]\n"
        + 'type = "kafka"\n'
        + f'bootstrap_servers = ["{server.bootstrap}"]\n'
        + f'trades_topic = "{topics["trades"]}"\n'
        + f'books_topic = "{topics["books"]}"\n'
        + "delivery_timeout_s = 5.0\n"
    )
    return path


def trades_in_kafka(server: KafkaServer, topic: str) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for m in server.read_all(topic):
        v = json.loads(m.value)
        assert m.key == f"binance:{v['symbol']}".encode()
        out.setdefault(v["symbol"], []).append(v["trade_id"])
    return out


def test_kill_9_then_restart_delivers_every_trade_to_kafka_exactly_once(tmp_path, kafka_server):
    topics = {"trades": kafka_server.unique_topic("d-trades"), "books": kafka_server.unique_topic("d-books")}
    sim = start_sim(tmp_path, "--symbols", "4", "--rate", "800", "--seed", "11", "--drop-rate", "0.01")
    try:
        symbols = list(sim.truth())
        config = kafka_config(tmp_path, sim, kafka_server, symbols, topics)
        first = start_daemon(tmp_path, config, log_name="first.log")
        wait_for(lambda: sum(map(len, trades_in_kafka(kafka_server, topics["trades"]).values())) > 1500, 30,
                 interval=0.5, what="trades in Kafka")
        first.proc.kill()  # SIGKILL: no flush, no goodbye
        first.proc.wait()
        time.sleep(2)  # the market moves on while the daemon is down
        second = start_daemon(tmp_path, config, state_dir=first.state_dir, log_name="second.log")
        time.sleep(5)
        sim.post("/_sim/calm")
        time.sleep(1.5)
        sim.post("/_sim/pause")
        truth = sim.truth()
        report: dict = {}

        def settled():
            nonlocal report
            stored = trades_in_kafka(kafka_server, topics["trades"])
            since = {s: min(ids) for s, ids in stored.items() if ids}
            report = missing_and_extra(stored, truth, since) if set(since) == set(truth) else {"symbols": sorted(since)}
            return not report

        try:
            wait_for(settled, 40, interval=1.0, what="Kafka to match the ground truth")
        except AssertionError:
            raise AssertionError(f"Kafka differs from the ground truth: {report}\n{second.log()[-3000:]}") from None
        assert "resuming from stored checkpoints" in second.log()
        assert kafka_server.read_all(topics["books"])  # book snapshots went to their own topic
        assert stop_process(second.proc) == 0
    finally:
        sim.stop()
