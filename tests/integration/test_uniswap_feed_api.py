"""The Uniswap feed's operator API (trigger, pause/resume, update_symbols, stop) in one Trio loop with
the simulated gateway over loopback and a real SQLite sink."""

from __future__ import annotations

import sqlite3
from functools import partial

import pytest
import trio

from ingestd.config import parse_config
from ingestd.pipeline import Router, SinkRunner
from ingestd.sim.thegraph.server import GraphSim, SimOptions
from ingestd.sinks.sqlite import SqliteSink
from ingestd.stats import StatsRegistry
from ingestd.venues.uniswap.feed import UniswapFeed
from tests.harness import wait_until

pytestmark = pytest.mark.trio


def rows(path) -> list[tuple[str, int]]:
    con = sqlite3.connect(path)
    try:
        return con.execute("SELECT pool_address, ts FROM dex_metrics ORDER BY ts").fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        con.close()


async def test_trigger_pause_resume_and_a_new_pool_list(tmp_path):
    async with trio.open_nursery() as nursery:
        sim = GraphSim(SimOptions(seed=3, pools=3, api_key="k"))
        listeners = await nursery.start(partial(sim.server.serve, "127.0.0.1", 0))
        url = f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}"
        pools = list(sim.universe.specs)
        cfg = parse_config(
            f'[feeds.uniswap]\ngateway_url = "{url}"\napi_key = "k"\npoll_interval_s = 3600\n'
            f'pools = ["{pools[0]}", "{pools[1]}"]\ntick_page_size = 3\n', environ={}).feeds["uniswap"]
        stats = StatsRegistry("test")
        db = tmp_path / "store.sqlite"
        runner = SinkRunner(SqliteSink("local", db, stats=stats), stats, batch_size=100, linger_s=0.01)
        await nursery.start(runner.run)
        router = Router([runner])
        feed = UniswapFeed(cfg, router, stats)
        done = trio.Event()

        async def run_feed(task_status=trio.TASK_STATUS_IGNORED):
            await feed.run(task_status=task_status)
            done.set()

        await nursery.start(run_feed)

        await wait_until(lambda: len(rows(db)) == 2)  # the first poll runs at start
        assert stats.connections["uniswap/thegraph"].state == "up"
        assert stats.gauges["uniswap.connections_planned"] == 1
        assert stats.heartbeat_ages()["feed.uniswap"] < 1.0

        assert await feed.trigger() == {"records": 2, "failed": 0, "pools": 2}
        await wait_until(lambda: len(rows(db)) == 4)

        added, removed = await feed.update_symbols([pools[2]])
        assert (added, removed) == ([pools[2]], [pools[0], pools[1]])
        await wait_until(lambda: rows(db)[-1][0] == pools[2])  # read at once, not in an hour
        assert feed.symbols == [pools[2]]

        feed.pause()
        assert stats.connections["uniswap/thegraph"].state == "paused"
        count = len(rows(db))
        await trio.sleep(0.3)
        assert len(rows(db)) == count
        feed.resume()  # catches up with a poll now
        await wait_until(lambda: len(rows(db)) == count + 1)

        feed.stop()  # run() returns: nothing is left running
        with trio.fail_after(5):
            await done.wait()
        assert stats.connections["uniswap/thegraph"].state == "closed"
        await router.aclose()
        nursery.cancel_scope.cancel()
