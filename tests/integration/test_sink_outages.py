"""Issue 3's acceptance drill, per production sink, against the real servers and real processes:

    steady simulator load -> `ingestd run binance` -> one sink
    1. the server goes away for 30 s and comes back: the daemon spools, then replays;
    2. the server goes away again and, while the spool holds data, the daemon gets `kill -9`; it is
       started again while the server is still down, and the server comes back after it;
    then the store must hold every trade of the simulator's ground truth exactly once (count and
    set equality per symbol), from each symbol's first stored trade on.

How each server "goes away": PostgreSQL is stopped with an immediate shutdown (a crash, for the
client) and Redis with SIGTERM; both keep their data on disk, as in production. The Tansu broker
the tests run keeps topics in memory only (its build has no disk storage engine), so a stopped
broker would lose everything it held, which no client could make up for; it is frozen with
SIGSTOP instead: a hung broker, whose connections stay open and whose requests time out, the
harder case for a producer.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import textwrap
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

from tests.harness import (
    SimProcess,
    missing_and_extra,
    start_daemon,
    start_sim,
    stop_process,
    wait_for,
)
from tests.integration.test_postgres_daemon import stored_trade_ids as pg_trade_ids
from tests.integration.test_kafka_daemon import trades_in_kafka
from tests.kafka_server import kafka_server, private_kafka_server  # noqa: F401  (fixtures)
from tests.pg_server import pg_database, pg_server  # noqa: F401  (fixtures)
from tests.redis_server import redis_server, redis_url  # noqa: F401  (fixtures)

pytestmark = pytest.mark.slow

OUTAGE_S = 30.0
SIM_ARGS = ("--symbols", "4", "--rate", "400", "--seed", "23", "--drop-rate", "0.005")


def write_config(tmp: Path, sim: SimProcess, symbols: list[str], sink_toml: str) -> Path:
    path = tmp / "ingestd.toml"
    path.write_text(textwrap.dedent(
        f"""
        [daemon]
        linger_ms = 20
        shutdown_timeout_s = 4.0
        http_port = 0
        stats_socket = "{tmp / 'stats.sock'}"

        [feeds.binance]
        sinks = ["out"]
        ws_url = "{sim.ws_url}"
        rest_url = "{sim.rest_url}"
        symbols = {json.dumps(symbols)}
        fallback_pairs = []
        depth = false
        reconnect_base_s = 0.1
        reconnect_cap_s = 1.0

        [sinks.out]
        """
    ) + textwrap.dedent(sink_toml))
    return path


def spooled_bytes(state_dir: Path) -> int:
    return sum(p.stat().st_size for p in (state_dir / "spool" / "out").rglob("*.seg"))


def outage_drill(
    tmp: Path,
    sink_toml: str,
    down: Callable[[], None],
    up: Callable[[], None],
    read_stored: Callable[[list[str]], dict[str, list[int]]],
) -> None:
    sim = start_sim(tmp, *SIM_ARGS)
    daemon = None
    try:
        symbols = list(sim.truth())
        config = write_config(tmp, sim, symbols, sink_toml)
        daemon = start_daemon(tmp, config, log_name="first.log")
        wait_for(lambda: sum(map(len, read_stored(symbols).values())) > 300, 40, what="trades stored")

        # 1. A 30 s outage under load.
        down()
        try:
            wait_for(lambda: spooled_bytes(daemon.state_dir) > 0, OUTAGE_S, what="the daemon to spool")
            time.sleep(max(0.0, OUTAGE_S - 2))
            assert daemon.proc.poll() is None, daemon.log()
            during = spooled_bytes(daemon.state_dir)
        finally:
            up()
        wait_for(lambda: "spool replayed; back to live" in daemon.log(), 60, what="the spool to be replayed")
        assert during > 0

        # 2. Down again; kill -9 with a non-empty spool; restart while still down; then back up.
        down()
        try:
            wait_for(lambda: spooled_bytes(daemon.state_dir) > 0, 30, what="the daemon to spool again")
            time.sleep(1.0)
            daemon.proc.kill()
            daemon.proc.wait()
            assert spooled_bytes(daemon.state_dir) > 0
            time.sleep(1.0)  # the market moves on while the daemon is dead
            daemon = start_daemon(tmp, config, state_dir=daemon.state_dir, log_name="second.log")
            wait_for(lambda: "resume points for" in daemon.log() or "ready" in daemon.log(), 30,
                     what="the second daemon to start with its sink down")
            time.sleep(2.0)
        finally:
            up()

        sim.post("/_sim/calm")
        time.sleep(1.5)
        sim.post("/_sim/pause")
        truth = sim.truth()
        report: dict = {}

        def settled() -> bool:
            nonlocal report
            stored = read_stored(symbols)
            since = {s: min(ids) for s, ids in stored.items() if ids}
            if set(since) != set(truth):
                report = {"symbols without trades": sorted(set(truth) - set(since))}
                return False
            report = missing_and_extra(stored, truth, since)
            return not report

        try:
            wait_for(settled, 90, interval=0.5, what="the store to match the ground truth")
        except AssertionError:
            raise AssertionError(f"store differs from the ground truth: {report}\n{daemon.log()[-3000:]}") from None
        assert stop_process(daemon.proc) == 0
    finally:
        if daemon is not None and daemon.proc.poll() is None:
            daemon.proc.kill()
        sim.stop()


def test_postgres_outage_of_30_s_and_kill_9_while_spooling(tmp_path, pg_database) -> None:
    server = pg_database.server
    sink = f"""
        type = "postgres"
        host = "{pg_database.host}"
        port = {pg_database.port}
        dbname = "{pg_database.dbname}"
        user = "{pg_database.user}"
        connect_timeout_s = 2
        """
    try:
        outage_drill(tmp_path, sink, lambda: server.stop(immediate=True), server.start,
                     lambda symbols: pg_trade_ids(pg_database))
    finally:
        server.start()


def test_redis_outage_of_30_s_and_kill_9_while_spooling(tmp_path, redis_server, redis_url) -> None:
    client = redis_server.client()
    sink = f"""
        type = "redis"
        url = "{redis_url}"
        stream_maxlen = 1000000000
        """

    def stored(symbols: list[str]) -> dict[str, list[int]]:
        try:
            return {s: [int(f[b"trade_id"]) for _, f in client.xrange(f"trades:{s}")] for s in symbols}
        except Exception:  # the server is down: nothing can be read right now
            return {}

    try:
        outage_drill(tmp_path, sink, redis_server.stop, redis_server.start, stored)
    finally:
        redis_server.start()


@contextlib.contextmanager
def _resumed_at_exit(pid: int) -> Iterator[None]:
    try:
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


def test_kafka_broker_hung_for_30_s_and_kill_9_while_spooling(tmp_path, private_kafka_server) -> None:
    server = private_kafka_server
    topic = server.unique_topic("trades")
    server.create_topic(topic)
    sink = f"""
        type = "kafka"
        bootstrap_servers = ["{server.bootstrap}"]
        trades_topic = "{topic}"
        books_topic = "{server.unique_topic('books')}"
        delivery_timeout_s = 5.0
        """
    pid = server.proc.pid

    def stored(symbols: list[str]) -> dict[str, list[int]]:
        if not server.running:
            return {}
        try:
            return trades_in_kafka(server, topic)
        except Exception:  # frozen broker: reads time out
            return {}

    frozen = {"on": False}

    def down() -> None:
        os.kill(pid, signal.SIGSTOP)
        frozen["on"] = True

    def up() -> None:
        os.kill(pid, signal.SIGCONT)
        frozen["on"] = False

    with _resumed_at_exit(pid):
        outage_drill(tmp_path, sink, down, up, lambda symbols: {} if frozen["on"] else stored(symbols))
