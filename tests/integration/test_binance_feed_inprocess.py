"""The Binance feed and the simulator in one Trio loop, over real loopback sockets and a real SQLite
file: for what only the inside can show (the whole local book, the symbol list a feed settled on)."""

from __future__ import annotations

import functools
import sqlite3

import pytest
import trio

from ingestd.config import parse_config
from ingestd.pipeline import Router, SinkRunner
from ingestd.sim import SimConfig, serve
from ingestd.sinks.sqlite import SqliteSink
from ingestd.stats import StatsRegistry
from ingestd.venues.binance.book import LIVE
from ingestd.venues.binance.feed import BinanceFeed
from tests import harness

# These tests run a venue and a feed in one process: they keep their longer wait (harness: 15 s).
wait_until = functools.partial(harness.wait_until, timeout=20.0)

pytestmark = pytest.mark.trio


def feed_config(sim, symbols, **extra):
    lines = [
        "[feeds.binance]",
        f'ws_url = "{sim.ws_url}"',
        f'rest_url = "{sim.rest_url}"',
        "symbols = [" + ", ".join(f'"{s}"' for s in symbols) + "]",
        "fallback_pairs = []",
        "book_levels = 100",
        "reconnect_base_s = 0.05",
        "reconnect_cap_s = 0.5",
    ] + [f"{k} = {v}" for k, v in extra.items()]
    return parse_config("\n".join(lines), environ={}).feeds["binance"]


async def run_feed(nursery, tmp_path, cfg, name="local"):
    stats = StatsRegistry("test")
    sink = SqliteSink(name, tmp_path / f"{name}.sqlite", stats=stats)
    runner = SinkRunner(sink, stats, batch_size=500, linger_s=0.01)
    await nursery.start(runner.run)
    feed = BinanceFeed(cfg, Router([runner]), stats)
    await nursery.start(feed.run)
    return feed, sink, stats


def as_book(levels):
    return {float(p): float(q) for p, q in levels}


async def test_every_local_book_equals_the_reference_book_after_gaps_and_drops(tmp_path):
    config = SimConfig(symbols=5, rate=800, seed=21, drop_rate=0.03, drop_every_s=2.0)
    async with trio.open_nursery() as nursery:
        sim = await nursery.start(serve, config)
        feed, _, stats = await run_feed(nursery, tmp_path, feed_config(sim, sim.symbols))
        await trio.sleep(6)
        sim.calm()  # faults stop, the market goes on: the next diffs reveal every earlier loss
        await trio.sleep(1.5)
        sim.pause()
        market = sim.market

        def converged():
            return all(
                st.book.state == LIVE and st.book.last_update_id == market.last_update_id(s)
                for s, st in feed._state.items()
            )

        await wait_until(converged)
        for symbol, st in feed._state.items():
            ref = market.depth_snapshot(symbol, limit=None)
            assert st.book.bids == as_book(ref["bids"]), symbol
            assert st.book.asks == as_book(ref["asks"]), symbol
        assert stats.counters["binance.disconnects"] >= 2
        assert sum(st.book.resyncs for st in feed._state.values()) > 0  # gaps really happened
        nursery.cancel_scope.cancel()


async def test_symbols_not_trading_are_dropped_by_exchange_info(tmp_path):
    config = SimConfig(symbols=["BTCUSDT", "ETHUSDT", "SOLUSDT"], rate=100, seed=2, halted={"ETHUSDT": "BREAK"})
    async with trio.open_nursery() as nursery:
        sim = await nursery.start(serve, config)
        cfg = feed_config(sim, ["BTCUSDT", "ETHUSDT", "SOLUSDT", "NOPEUSDT"])
        feed, _, stats = await run_feed(nursery, tmp_path, cfg)
        assert feed.symbols == ["BTCUSDT", "SOLUSDT"]  # ETHUSDT halted, NOPEUSDT unknown
        assert stats.gauges["binance.symbols"] == 2
        nursery.cancel_scope.cancel()


async def test_shards_split_the_symbols_with_no_overlap_and_no_gap(tmp_path):
    config = SimConfig(symbols=12, rate=300, seed=4)
    async with trio.open_nursery() as nursery:
        sim = await nursery.start(serve, config)
        feeds = []
        for i in (1, 2, 3):
            cfg = feed_config(sim, sim.symbols, shard=f'"{i}/3"')
            feed, sink, _ = await run_feed(nursery, tmp_path, cfg, name=f"shard{i}")
            feeds.append((feed, sink))
        owned = [set(f.symbols) for f, _ in feeds]
        assert set().union(*owned) == set(sim.symbols)
        assert sum(len(o) for o in owned) == len(sim.symbols)
        await trio.sleep(2)
        for i, mine in enumerate(owned, start=1):
            stored = _stored_symbols(tmp_path / f"shard{i}.sqlite")
            assert stored and stored <= mine  # each shard stores only its own symbols
        nursery.cancel_scope.cancel()


def _stored_symbols(db) -> set[str]:
    con = sqlite3.connect(db)
    try:
        return {symbol for (symbol,) in con.execute("SELECT DISTINCT symbol FROM ticks")}
    finally:
        con.close()


async def test_symbol_list_change_keeps_unaffected_connections(tmp_path):
    config = SimConfig(symbols=6, rate=600, seed=8)
    async with trio.open_nursery() as nursery:
        sim = await nursery.start(serve, config)
        first, second, third, fourth, fifth, sixth = sim.symbols
        cfg = feed_config(sim, [first, second, third], pairs_per_connection=2)
        feed, sink, stats = await run_feed(nursery, tmp_path, cfg)
        await wait_until(lambda: sum(1 for c in stats.connections.values() if c.state == "up") == 2)
        before = {cid: c.connects for cid, c in stats.connections.items()}

        added, removed = await feed.update_symbols([first, second, fourth, fifth, sixth])
        assert (added, removed) == ([fourth, fifth, sixth], [third])
        await trio.sleep(2)
        # the two original connections were never dropped: same ids, one connect each
        assert all(stats.connections[cid].connects == 1 for cid in before)
        # third's connection took fourth and fifth live; sixth needed a third connection
        assert len(stats.connections) == 3

        def stored():
            con = sqlite3.connect(tmp_path / "local.sqlite")
            try:
                return {s: n for s, n in con.execute("SELECT symbol, MAX(recv_ts) FROM ticks GROUP BY symbol")}
            finally:
                con.close()

        at_change = stored()
        # subscribed live, or on the new connection
        await wait_until(lambda: {fourth, fifth, sixth} <= set(stored()))
        await trio.sleep(1)
        assert stored().get(third) == at_change.get(third)  # unsubscribed: nothing new stored
        assert stats.counters.get("binance.unexpected_symbol", 0) == 0
        nursery.cancel_scope.cancel()
