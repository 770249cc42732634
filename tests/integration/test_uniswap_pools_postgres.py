"""The dex_pools table in PostgreSQL (migration 0001): a Uniswap feed writing to a postgres sink
polls the pools listed there for its chain, besides its configured ones."""

from __future__ import annotations

from functools import partial

import psycopg
import pytest
import trio

from ingestd.config import parse_config
from ingestd.pipeline import Router, SinkRunner
from ingestd.sim.thegraph.pools import pool_specs
from ingestd.sim.thegraph.server import GraphSim, SimOptions
from ingestd.sinks.postgres import PostgresSink
from ingestd.stats import StatsRegistry
from ingestd.venues.uniswap.feed import UniswapFeed
from ingestd.venues.uniswap.pools import PostgresPoolStore
from tests.integration.test_postgres_sink import config
from tests.pg_server import Database, pg_database, pg_server  # noqa: F401  (fixtures)

P0, P1, P2 = (spec.address for spec in pool_specs(3))


@pytest.mark.trio
async def test_feed_polls_the_dex_pools_rows_of_its_postgres_sink(pg_database: Database):
    def execute(statement: str, *params) -> list[tuple]:
        with psycopg.connect(pg_database.conninfo) as conn:
            cur = conn.execute(statement, params)
            return cur.fetchall() if cur.description else []

    def stored() -> set[str]:
        return {row[0] for row in execute("SELECT DISTINCT pool_address FROM dex_metrics")}

    async def wait_for_pools(pools: set[str]) -> None:
        with trio.fail_after(20):
            while await trio.to_thread.run_sync(stored) != pools:
                await trio.sleep(0.2)

    async with trio.open_nursery() as nursery:
        sim = GraphSim(SimOptions(seed=2, pools=3))
        listeners = await nursery.start(partial(sim.server.serve, "127.0.0.1", 0))
        url = f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}"
        stats = StatsRegistry("uniswap")
        runner = SinkRunner(PostgresSink("pg", config(pg_database), stats=stats), stats, batch_size=100,
                            linger_s=0.01)
        await nursery.start(runner.run)  # migrates, so dex_pools exists
        insert = "INSERT INTO dex_pools (chain, address, token0, token1, fee_bps) VALUES (%s, %s, 'A', 'B', 30)"
        await trio.to_thread.run_sync(execute, insert, "ethereum", P1)
        await trio.to_thread.run_sync(execute, insert, "polygon", P2)  # not this feed's chain
        cfg = parse_config(
            f'[sinks.pg]\ntype = "postgres"\n[feeds.uniswap]\nsinks = ["pg"]\ngateway_url = "{url}"\n'
            f'pools = ["{P0}"]\npoll_interval_s = 1\npools_reload_s = 1\ntick_page_size = 5\n', environ={},
        ).feeds["uniswap"]
        feed = UniswapFeed(cfg, Router([runner]), stats)
        assert isinstance(feed.store, PostgresPoolStore)
        await nursery.start(feed.run)
        assert feed.symbols == [P0, P1]
        await wait_for_pools({P0, P1})

        await trio.to_thread.run_sync(execute, insert, "Ethereum", P2)  # picked up by the next reload
        await wait_for_pools({P0, P1, P2})
        assert stats.gauges["uniswap.pools_from_table"] == 2
        assert stats.counters.get("uniswap.pools_load_errors", 0) == 0
        feed.stop()
        nursery.cancel_scope.cancel()
