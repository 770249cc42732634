"""Pools from the `dex_pools` table: the Uniswap feed in one Trio loop with the simulated gateway over
loopback and a real SQLite sink whose file holds the table (as a user would fill it: plain SQL)."""

from __future__ import annotations

import json
import logging
import sqlite3
from contextlib import asynccontextmanager
from functools import partial

import pytest
import trio

from ingestd.config import parse_config
from ingestd.pipeline import Router, SinkRunner
from ingestd.sim.thegraph.pools import pool_specs
from ingestd.sim.thegraph.server import GraphSim, SimOptions
from ingestd.sinks.sqlite import SqliteSink
from ingestd.stats import StatsRegistry
from ingestd.venues.uniswap.feed import UniswapFeed
from tests.harness import wait_until

pytestmark = pytest.mark.trio

P0, P1, P2 = (spec.address for spec in pool_specs(3))  # the simulator's pools

# The columns of the legacy table (and of migration 0001_reference_tables.sql).
DEX_POOLS = ("CREATE TABLE IF NOT EXISTS dex_pools (chain TEXT NOT NULL, address TEXT NOT NULL, token0 TEXT, "
             "token1 TEXT, fee_bps INTEGER, PRIMARY KEY (chain, address))")


def sql(db, *statements: tuple) -> None:
    con = sqlite3.connect(db, timeout=10, isolation_level=None)
    try:
        for statement in statements:
            con.execute(*statement)
    finally:
        con.close()


def add_pool(db, address: str, chain: str = "ethereum") -> None:
    sql(db, (DEX_POOLS,), ("INSERT INTO dex_pools (chain, address, token0, token1, fee_bps) VALUES (?, ?, ?, ?, ?)",
                           (chain, address, "USDC", "WETH", 30)))


def stored_pools(db) -> set[str]:
    con = sqlite3.connect(db, timeout=10)
    try:
        return {row[0] for row in con.execute("SELECT DISTINCT pool_address FROM dex_metrics")}
    except sqlite3.OperationalError:
        return set()
    finally:
        con.close()


@asynccontextmanager
async def running(tmp_path, *, pools: list[str], before_feed=None, **options):
    """The simulator (3 pools), a SQLite sink at tmp_path/store.sqlite, and the feed writing to it.
    `before_feed(db)` runs once the sink has created the file, before the feed starts."""
    async with trio.open_nursery() as nursery:
        sim = GraphSim(SimOptions(seed=4, pools=3, api_key="k"))
        listeners = await nursery.start(partial(sim.server.serve, "127.0.0.1", 0))
        url = f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}"
        text = (f'[sinks.local]\ntype = "sqlite"\n[feeds.uniswap]\ngateway_url = "{url}"\napi_key = "k"\n'
                f"tick_page_size = 5\npools = {json.dumps(pools)}\n")
        text += "".join(f"{key} = {value}\n" for key, value in options.items())
        cfg = parse_config(text, environ={}).feeds["uniswap"]
        stats = StatsRegistry("test")
        db = tmp_path / "store.sqlite"
        runner = SinkRunner(SqliteSink("local", db, stats=stats), stats, batch_size=100, linger_s=0.01)
        await nursery.start(runner.run)
        if before_feed is not None:
            before_feed(db)
        router = Router([runner])
        feed = UniswapFeed(cfg, router, stats)
        await nursery.start(feed.run)
        assert set(sim.universe.specs) == {P0, P1, P2}
        try:
            yield feed, stats, db
        finally:
            feed.stop()
            await router.aclose()
            nursery.cancel_scope.cancel()


async def test_pools_of_the_dex_pools_table_are_polled_besides_the_configured_ones(tmp_path):
    p0, p1, p2 = P0, P1, P2

    def fill(db):
        add_pool(db, p1.upper().replace("0X", "0x"))  # a checksummed-looking address is the same pool
        add_pool(db, p2, chain="arbitrum")  # another chain: not this feed's
        add_pool(db, p0)  # also configured: polled once

    async with running(tmp_path, pools=[p0], before_feed=fill, poll_interval_s=3600) as (feed, stats, db):
        assert feed.symbols == [p0, p1]  # the table is read before the first poll
        await wait_until(lambda: stored_pools(db) == {p0, p1})  # the first poll runs at start
        assert stats.gauges["uniswap.pools"] == 2
        assert stats.gauges["uniswap.pools_from_table"] == 2
        assert await feed.trigger() == {"records": 2, "failed": 0, "pools": 2}
    assert stored_pools(db) == {p0, p1}
    assert stats.counters.get("uniswap.pools_load_errors", 0) == 0


async def test_a_row_added_later_is_polled_after_a_reload_and_a_deleted_one_no_longer(tmp_path):
    p0, p1, p2 = P0, P1, P2
    async with running(tmp_path, pools=[p0], poll_interval_s=1, pools_reload_s=1) as (feed, stats, db):
        await wait_until(lambda: stored_pools(db) == {p0})
        assert feed.symbols == [p0]
        add_pool(db, p2)
        # read again within pools_reload_s, then polled on schedule (poll_interval_s), no restart
        await wait_until(lambda: stored_pools(db) == {p0, p2}, timeout=10)
        assert feed.symbols == [p0, p2]

        sql(db, ("DELETE FROM dex_pools WHERE address = ?", (p2,)))
        await wait_until(lambda: feed.symbols == [p0], timeout=10)
        assert (await feed.trigger())["records"] == 1  # p0 alone
        assert ("uniswap", p2) not in stats.last_event_us  # no stale last-event time for a dropped pool
        assert ("uniswap", p0) in stats.last_event_us


async def test_an_unreadable_table_keeps_the_pools_followed(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="ingestd.uniswap")
    p0, p1, p2 = P0, P1, P2

    def break_table(db):  # not the dex_pools the feed knows: no chain column
        sql(db, ("DROP TABLE IF EXISTS dex_pools",), ("CREATE TABLE dex_pools (pool TEXT)",),
            ("INSERT INTO dex_pools VALUES (?)", (p1,)))

    async with running(tmp_path, pools=[p0], before_feed=break_table, poll_interval_s=3600,
                       pools_reload_s=1) as (feed, stats, db):
        # at start: the configured pools alone, and the failure is counted and logged
        assert feed.symbols == [p0]
        assert stats.counters["uniswap.pools_load_errors"] == 1
        await wait_until(lambda: stored_pools(db) == {p0})
        warnings = [r for r in caplog.records if "cannot read the dex_pools table" in r.getMessage()]
        assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
        assert warnings[0].store == f"sqlite:{db}"

        sql(db, ("DROP TABLE dex_pools",))
        add_pool(db, p1)
        await wait_until(lambda: feed.symbols == [p0, p1], timeout=10)
        errors = stats.counters["uniswap.pools_load_errors"]

        # unreadable again while running: the pools followed so far stay (the table's p1 too)
        break_table(db)
        await wait_until(lambda: stats.counters["uniswap.pools_load_errors"] >= errors + 2, timeout=10)
        assert feed.symbols == [p0, p1]
        assert await feed.trigger() == {"records": 2, "failed": 0, "pools": 2}
        await wait_until(lambda: stored_pools(db) == {p0, p1})
        # rate-limited: one line per 10 s however often the reload fails
        warnings = [r for r in caplog.records if "cannot read the dex_pools table" in r.getMessage()]
        assert len(warnings) <= 2
