"""The daemon with Redis as its only sink, against the simulator: every trade exactly once in the
trades:<PAIR> streams through dropped frames, kill -9 of the daemon and an outage of Redis."""

from __future__ import annotations

import json
import textwrap
import re
import time
from pathlib import Path

import pytest

from tests.harness import missing_and_extra, start_daemon, start_sim, stop_process, wait_for
from tests.redis_server import redis_server, redis_url  # noqa: F401  (fixtures)

pytestmark = pytest.mark.slow


def write_config(tmp: Path, sim, symbols: list[str], url: str) -> Path:
    path = tmp / "ingestd.toml"
    path.write_text(textwrap.dedent(
        f"""
        [daemon]
        linger_ms = 20
        shutdown_timeout_s = 4.0
        http_port = 0

        [sinks.r]
        type = "redis"
        url = "{url}"
        stream_maxlen = 1000000000

        [feeds.binance]
        sinks = ["r"]
        ws_url = "{sim.ws_url}"
        rest_url = "{sim.rest_url}"
        symbols = {json.dumps(symbols)}
        fallback_pairs = []
        book_interval_ms = 200
        reconnect_base_s = 0.1
        reconnect_cap_s = 1.0
        """
    ))
    return path


def stored(client, symbols) -> dict[str, list[int]]:
    return {s: [int(f[b"trade_id"]) for _, f in client.xrange(f"trades:{s}")] for s in symbols}


def wait_exactly_once(client, sim, symbols, timeout=40.0) -> None:
    sim.post("/_sim/calm")
    time.sleep(1.5)
    sim.post("/_sim/pause")
    truth = sim.truth()
    report = {}

    def settled():
        nonlocal report
        got = stored(client, symbols)
        since = {s: min(ids) for s, ids in got.items() if ids}
        report = missing_and_extra(got, truth, since) if set(since) == set(truth) else {"no trades for": set(truth) - set(since)}
        return not report

    try:
        wait_for(settled, timeout, interval=0.5, what="Redis to match the ground truth")
    except AssertionError:
        raise AssertionError(f"Redis differs from the ground truth: {report}") from None


def test_kill_9_and_a_redis_outage_every_trade_exactly_once(tmp_path, redis_server, redis_url):
    client = redis_server.client()
    sim = start_sim(tmp_path, "--symbols", "4", "--rate", "800", "--seed", "11", "--drop-rate", "0.01")
    try:
        symbols = list(sim.truth())
        config = write_config(tmp_path, sim, symbols, redis_url)
        first = start_daemon(tmp_path, config, log_name="first.log")
        wait_for(lambda: sum(map(len, stored(client, symbols).values())) > 1500, 20, what="trades in Redis")
        first.proc.kill()  # no flush, no goodbye
        first.proc.wait()
        time.sleep(2)  # the market moves on while the daemon is down
        second = start_daemon(tmp_path, config, state_dir=first.state_dir, log_name="second.log")
        wait_for(lambda: "resuming from stored checkpoints" in second.log(), 20, what="a resume from Redis")
        time.sleep(2)
        with redis_server.down(seconds=3):  # the daemon retries the same batch until Redis is back
            time.sleep(0.5)
            assert second.proc.poll() is None
        time.sleep(4)
        wait_exactly_once(client, sim, symbols)
        assert stop_process(second.proc) == 0, second.log()[-3000:]
        log = second.log()
        assert "write of" in log and "failed" in log  # the outage was noticed...
        # ...and ridden out: by retrying the batch, or by spooling and replaying once Redis was back
        assert re.search(r"write succeeded after|back after \d+ failed attempts; replaying|spool replayed; back to live", log), log[-3000:]
        checkpoints = {k.decode(): int(v) for k, v in client.hgetall("ingestd:checkpoints:binance").items()}
        for symbol, ids in stored(client, symbols).items():
            assert checkpoints[symbol] == max(ids), symbol  # the clean stop's final checkpoints
    finally:
        sim.stop()
        client.close()
