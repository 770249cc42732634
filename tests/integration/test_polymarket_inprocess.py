"""The Polymarket feed and its simulator in one Trio loop, over real loopback sockets: what only the
inside shows (the feed's own books, its trigger), plus a ground-truth check under every fault."""

from __future__ import annotations

import functools
import json
import math

import pytest
import trio

from ingestd.config import parse_config
from ingestd.model import Checkpoint, PredictionBook, PredictionTrade, WhaleTrade
from ingestd.pipeline import Router, SinkRunner
from ingestd.sim.polymarket.server import PolySimConfig, serve
from ingestd.sinks.base import Sink
from ingestd.stats import StatsRegistry
from ingestd.venues.polymarket.feed import PolymarketFeed
from tests import harness

# These tests run a venue and a feed in one process: they keep their longer wait (harness: 15 s).
wait_until = functools.partial(harness.wait_until, timeout=25.0)

pytestmark = pytest.mark.trio


class CollectingSink(Sink):
    def __init__(self, name: str = "collect") -> None:
        self.name = name
        self.records: list = []

    def open(self) -> None:
        pass

    def write(self, batch) -> None:
        self.records.extend(batch)

    def close(self) -> None:
        pass

    def of(self, cls):
        return [r for r in self.records if type(r) is cls]


def feed_config(sim, *, assets, whales, **extra):
    feed = {
        "sinks": ["collect"], "ws_url": sim.ws_url, "data_api_url": sim.http_url, "asset_ids": list(assets),
        "whale_addresses": list(whales), "book_levels": 1000, "book_interval_ms": 100, "poll_interval_s": 0.5,
        "ping_interval_s": 1, "reconnect_base_s": 0.05, "reconnect_cap_s": 0.5, "backfill_max_s": 3600,
        "page_size": 50, **extra,
    }
    # Only the sink's name matters: the test builds its own sink.
    lines = ["[sinks.collect]", 'type = "sqlite"', "[feeds.polymarket]"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in feed.items()]
    return parse_config("\n".join(lines), environ={}).feeds["polymarket"]


async def start_feed(nursery, cfg, **feed_args):
    """A feed (PolymarketFeed's keyword arguments: resume, store) writing to a CollectingSink."""
    stats = StatsRegistry("polymarket")
    sink = CollectingSink()
    runner = SinkRunner(sink, stats, batch_size=500, linger_s=0.01)
    await nursery.start(runner.run)
    router = Router([runner])
    feed = PolymarketFeed(cfg, router, stats, **feed_args)
    await nursery.start(feed.run)
    return feed, sink, stats, router


def expected_tape(truth, followed, whales):
    """Per followed token, the trades from where its tape must start: its first subscription's
    second, or the second of the earliest trade an enabled whale made in it, if earlier."""
    start: dict[str, float] = {}
    for asset in followed:
        subs = truth["subscribed_ms"].get(asset)
        start[asset] = subs[0] // 1000 if subs else math.inf
    for t in truth["whale_trades"]:
        if t["proxyWallet"] in whales and t["asset"] in start:
            start[t["asset"]] = min(start[t["asset"]], t["timestamp"])
    return {(t["asset_id"], t["tx_hash"]): t for t in truth["trades"]
            if t["asset_id"] in start and t["ts_ms"] // 1000 >= start[t["asset_id"]]}


async def test_ground_truth_under_drops_malformed_frames_and_data_api_faults():
    config = PolySimConfig(seed=7, markets=4, whales=3, rate=60, drop_every_s=1.5, malformed_rate=0.05,
                           data_429_rate=0.15, data_malformed_rate=0.1, ping_timeout_s=5)
    async with trio.open_nursery() as nursery:
        sim = await nursery.start(serve, config)
        market = sim.market
        configured = [o.asset_id for o in market.markets[0].outcomes]
        enabled = [w.address for w in market.whales[:2]]  # the third whale is not watched
        await trio.sleep(1.0)  # whale history before the feed starts
        feed, sink, stats, router = await start_feed(nursery, feed_config(sim, assets=configured, whales=enabled))
        await trio.sleep(7)
        sim.calm()
        await trio.sleep(1.5)
        sim.pause()
        truth = sim.truth()
        whale_truth = {(t["transactionHash"], t["asset"]) for t in truth["whale_trades"] if t["proxyWallet"] in enabled}
        await wait_until(lambda: {(w.trade_id, w.token_id) for w in sink.of(WhaleTrade)} >= whale_truth,
                         what="every whale trade")
        followed = set(feed._assets)
        want = expected_tape(truth, followed, set(enabled))

        def books_match():
            latest = {}
            for b in sink.of(PredictionBook):
                latest[b.asset_id] = b
            for asset in followed:
                b, ref = latest.get(asset), truth["books"][asset]
                if b is None or b.bids != [tuple(x) for x in ref["bids"]] or b.asks != [tuple(x) for x in ref["asks"]]:
                    return False
            return True

        await wait_until(lambda: {(t.asset_id, t.tx_hash) for t in sink.of(PredictionTrade)} >= set(want),
                         what="the whole tape")
        await wait_until(books_match, what="books equal to the venue's")
        feed.stop()
        await trio.sleep(0.5)

        whale_rows = sink.of(WhaleTrade)
        assert len(whale_rows) == len({(w.trade_id, w.token_id) for w in whale_rows}), "whale trade duplicates"
        assert {(w.trade_id, w.token_id) for w in whale_rows} == whale_truth
        by_key = {(t["transactionHash"], t["asset"]): t for t in truth["whale_trades"]}
        for w in whale_rows:
            t = by_key[(w.trade_id, w.token_id)]
            assert (w.trader_address, w.side, w.size, w.price, w.ts_us) == (
                t["proxyWallet"], t["side"], t["size"], t["price"], t["timestamp"] * 1_000_000)
            assert w.market_id == t["conditionId"] and w.detected_us >= w.ts_us

        trades = sink.of(PredictionTrade)
        keys = [(t.asset_id, t.tx_hash) for t in trades]
        assert len(keys) == len(set(keys)), "market trade duplicates"
        assert set(keys) == set(want)
        for t in trades:
            ref = want[(t.asset_id, t.tx_hash)]
            assert (t.price, t.size, t.side.upper(), t.market) == (ref["price"], ref["size"], ref["side"], ref["market"])
            assert t.ts_us // 1_000_000 == ref["ts_ms"] // 1000
        # Whales' markets were followed, beyond the configured one.
        whale_assets = {t["asset"] for t in truth["whale_trades"] if t["proxyWallet"] in enabled}
        assert followed == set(configured) | whale_assets
        assert len(followed) > len(configured)

        c = stats.counters
        assert c["polymarket.disconnects"] >= 2
        assert sum(v for k, v in c.items() if k.startswith("polymarket.decode_errors.")) > 0
        assert c["polymarket.rest.http_429"] > 0
        assert sum(v for k, v in c.items() if k.startswith("polymarket.malformed_payloads.")) > 0
        assert c["polymarket.trades_backfilled"] > 0
        assert c["polymarket.messages.book"] > 0 and c["polymarket.messages.price_change"] > 0
        detected = sum(v for k, v in c.items() if k.startswith("polymarket.whale_trades_detected."))
        assert detected == len(whale_rows)
        checkpoints = {r.symbol: r.trade_id for r in sink.of(Checkpoint)}
        assert set(enabled) <= set(checkpoints) <= set(enabled) | followed
        for asset in set(checkpoints) & followed:  # a token's resume point: every trade before it is stored
            before = {k for k, t in want.items() if k[0] == asset and t["ts_ms"] // 1000 < checkpoints[asset]}
            assert before <= set(keys)
        assert len(set(checkpoints) & followed) >= len(followed) // 2
        nursery.cancel_scope.cancel()


async def test_trigger_polls_every_whale_now():
    config = PolySimConfig(seed=3, markets=2, whales=2, rate=40, whale_share=0.5)
    async with trio.open_nursery() as nursery:
        sim = await nursery.start(serve, config)
        whales = [w.address for w in sim.market.whales]
        cfg = feed_config(sim, assets=[], whales=whales, poll_interval_s=3600, follow_whale_markets=False)
        feed, sink, stats, _ = await start_feed(nursery, cfg)
        await trio.sleep(1.5)  # the first round ran at start; whales have traded since, unpolled
        before = len(sink.of(WhaleTrade))
        made = {t.tx_hash for t in sim.market.trades if t.taker.is_whale}
        result = await feed.trigger()
        assert result["whales"] == 2
        await trio.sleep(0.3)
        stored = {w.trade_id for w in sink.of(WhaleTrade)}
        assert len(sink.of(WhaleTrade)) - before == result["records"] > 0
        assert stored >= made
        assert stats.counters["polymarket.whale_poll_rounds"] >= 1
        nursery.cancel_scope.cancel()


class UnreadableWhales:
    """A whales table that cannot be read (database down, or not migrated yet)."""
    description = "unreadable"

    def load(self, enabled_only: bool = False):
        raise ConnectionError("database is down")


async def test_configured_whales_are_watched_while_the_whales_table_cannot_be_read():
    config = PolySimConfig(seed=3, markets=2, whales=2, rate=40, whale_share=0.5)
    async with trio.open_nursery() as nursery:
        sim = await nursery.start(serve, config)
        whales = [w.address for w in sim.market.whales]
        cfg = feed_config(sim, assets=[], whales=whales, poll_interval_s=0.3, follow_whale_markets=False)
        feed, sink, stats, _ = await start_feed(nursery, cfg, store=UnreadableWhales())
        await wait_until(lambda: len(sink.of(WhaleTrade)) > 0, what="a configured whale's trade")
        assert set(feed._whales) == {a.lower() for a in whales}
        assert stats.counters["polymarket.whales_load_errors"] >= 1
        nursery.cancel_scope.cancel()


async def test_pause_resume_reconnect_and_a_new_token_list_keep_the_tape_whole():
    config = PolySimConfig(seed=9, markets=3, whales=1, rate=40, whale_share=0.0)
    async with trio.open_nursery() as nursery:
        sim = await nursery.start(serve, config)
        m0, m1, m2 = ([o.asset_id for o in m.outcomes] for m in sim.market.markets)
        feed, sink, stats, _ = await start_feed(nursery, feed_config(sim, assets=m0 + m1, whales=[]))
        await wait_until(lambda: len(sim.sessions) == 1 and feed.symbols == m0 + m1)
        await trio.sleep(1)
        feed.pause()
        await wait_until(lambda: not sim.sessions, what="connections closed while paused")
        await trio.sleep(1.5)  # the market goes on
        feed.resume()
        await wait_until(lambda: len(sim.sessions) == 1, what="reconnected")
        assert feed.reconnect() == 1
        await trio.sleep(1)
        added, removed = await feed.update_symbols(m0 + m2)
        assert (added, removed) == (m2, m1)
        await wait_until(lambda: all(s.assets == set(m0 + m2) for s in sim.sessions) and sim.sessions,
                         what="the connection's subscription follows the new list")
        await trio.sleep(0.5)
        m1_trades = len([t for t in sink.of(PredictionTrade) if t.asset_id in m1])
        await trio.sleep(1.5)
        sim.pause()
        truth = sim.truth()
        tape = expected_tape(truth, set(m0 + m2), set())
        got = lambda: {(t.asset_id, t.tx_hash) for t in sink.of(PredictionTrade) if t.asset_id in set(m0 + m2)}
        await wait_until(lambda: got() >= set(tape), what="every trade of the followed tokens")
        assert got() == set(tape)
        assert len([t for t in sink.of(PredictionTrade) if t.asset_id in m1]) == m1_trades > 0  # no longer followed
        assert stats.counters["polymarket.trades_backfilled"] > 0  # the pause and the reconnect left holes
        nursery.cancel_scope.cancel()
