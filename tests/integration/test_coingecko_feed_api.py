"""The CoinGecko feed's operator API (trigger, pause/resume, a discovery that fails) in one Trio loop
with the simulated API over loopback and a real SQLite sink."""

from __future__ import annotations

import json
import sqlite3
from functools import partial

import pytest
import trio

from ingestd.config import parse_config
from ingestd.pipeline import Router, SinkRunner
from ingestd.sim.coingecko.server import CoinGeckoSim, SimOptions
from ingestd.sinks.sqlite import SqliteSink
from ingestd.stats import StatsRegistry
from ingestd.venues.coingecko.feed import CoinGeckoFeed
from tests.harness import wait_until

pytestmark = pytest.mark.trio


def count(path) -> int:
    con = sqlite3.connect(path)
    try:
        return con.execute("SELECT COUNT(*) FROM prices").fetchone()[0]
    except sqlite3.OperationalError:
        return 0
    finally:
        con.close()


async def test_trigger_is_idempotent_pause_resume_and_a_failed_discovery_keeps_the_pairs(tmp_path):
    async with trio.open_nursery() as nursery:
        sim = CoinGeckoSim(SimOptions(seed=4, update_interval_s=3600, api_key="pro-k", plan="pro"))
        listeners = await nursery.start(partial(sim.server.serve, "127.0.0.1", 0))
        url = f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}/api/v3"
        pairs = tmp_path / "pairs.json"
        cfg = parse_config(
            f'[feeds.coingecko]\napi_url = "{url}"\napi_plan = "pro"\napi_key = "pro-k"\n'
            f'prices_cron = "0 0 1 1 *"\ncoins = ["bitcoin", "ethereum", "solana", "ripple"]\n'
            f'pairs_file = "{pairs}"\npairs_limit = 4\nvalidate_pairs = false\nmax_attempts = 2\n',
            environ={}).feeds["coingecko"]
        stats = StatsRegistry("test")
        db = tmp_path / "store.sqlite"
        runner = SinkRunner(SqliteSink("local", db, stats=stats), stats, batch_size=100, linger_s=0.01)
        await nursery.start(runner.run)
        router = Router([runner])
        feed = CoinGeckoFeed(cfg, router, stats)
        await nursery.start(feed.run)

        await wait_until(pairs.exists)
        first = json.loads(pairs.read_text())
        assert first["pairs"] == ["BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT"] and feed.symbols == first["pairs"]

        assert await feed.trigger() == {"records": 4}
        await wait_until(lambda: count(db) == 4)
        assert await feed.trigger() == {"records": 4}  # nothing changed at CoinGecko: same natural keys
        await trio.sleep(0.2)
        assert count(db) == 4

        sim.dice.rates["error"] = 1.0  # every answer a 503 from now on
        assert await feed.trigger() == {"records": 0, "error": "http_503"}
        assert stats.counters["coingecko.poll_failures"] == 1
        await feed.update_symbols([])  # a reload asks for a discovery now
        await wait_until(lambda: stats.counters["coingecko.discovery_failures"] == 1)
        assert json.loads(pairs.read_text()) == first  # the last good list stays
        sim.dice.rates["error"] = 0.0

        feed.pause()
        sim.epoch = lambda: 1  # new market data at CoinGecko
        await trio.sleep(0.2)
        assert count(db) == 4
        feed.resume()  # catches up with a poll now
        await wait_until(lambda: count(db) == 8)
        assert stats.heartbeat_ages()["feed.coingecko"] < 1.0
        feed.stop()
        await router.aclose()
        nursery.cancel_scope.cancel()
