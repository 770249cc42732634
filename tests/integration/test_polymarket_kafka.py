"""Whale trades reach Kafka's whale_activity topic in the legacy service's event shape, with
detected_at, and the tokens' trades and books reach market_trades and order_books."""

from __future__ import annotations

import datetime as dt
import json

import pytest
import trio

from ingestd.config import KafkaSinkConfig
from ingestd.pipeline import Router, SinkRunner
from ingestd.sim.polymarket.server import PolySimConfig, serve
from ingestd.sinks.kafka import KafkaSink
from ingestd.stats import StatsRegistry
from ingestd.venues.polymarket.feed import PolymarketFeed
from tests.integration.test_polymarket_inprocess import feed_config
from tests.kafka_server import kafka_server  # noqa: F401  (session fixture)

LEGACY_FIELDS = ["event_type", "trade_id", "trader_address", "market_id", "token_id", "side", "size", "price",
                 "amount", "timestamp", "detected_at"]


@pytest.mark.trio
async def test_whale_events_in_the_legacy_shape(kafka_server):  # noqa: F811
    topics = {k: kafka_server.unique_topic(f"pm-{k}") for k in ("whales", "trades", "books")}
    cfg = KafkaSinkConfig(name="k", type="kafka", bootstrap_servers=(kafka_server.bootstrap,),
                          whales_topic=topics["whales"], prediction_trades_topic=topics["trades"],
                          prediction_books_topic=topics["books"])
    async with trio.open_nursery() as nursery:
        sim = await nursery.start(serve, PolySimConfig(seed=8, markets=2, whales=2, rate=40, whale_share=0.4))
        whales = [w.address for w in sim.market.whales]
        stats = StatsRegistry("polymarket")
        runner = SinkRunner(KafkaSink("k", cfg, stats=stats), stats, batch_size=500, linger_s=0.01)
        await nursery.start(runner.run)
        feed = PolymarketFeed(feed_config(sim, assets=[], whales=whales), Router([runner]), stats)
        await nursery.start(feed.run)
        await trio.sleep(3)
        sim.pause()
        await trio.sleep(1.5)
        feed.stop()
        await trio.sleep(1)
        truth = {t["transactionHash"]: t for t in sim.truth()["whale_trades"]}
        events = [json.loads(m.value) for m in await trio.to_thread.run_sync(kafka_server.read_all, topics["whales"])]
        trades = await trio.to_thread.run_sync(kafka_server.read_all, topics["trades"])
        books = await trio.to_thread.run_sync(kafka_server.read_all, topics["books"])
        nursery.cancel_scope.cancel()
    assert sorted(e["trade_id"] for e in events) == sorted(truth)
    for e in events:
        t = truth[e["trade_id"]]
        assert list(e)[:len(LEGACY_FIELDS)] == LEGACY_FIELDS
        assert e["event_type"] == "whale_trade" and e["trader_address"] == t["proxyWallet"]
        assert (e["market_id"], e["token_id"], e["side"], e["size"], e["price"]) == (
            t["conditionId"], t["asset"], t["side"], t["size"], t["price"])
        assert e["amount"] == pytest.approx(t["size"] * t["price"])
        assert e["timestamp"] == dt.datetime.fromtimestamp(t["timestamp"], dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        assert e["detected_at"].endswith("Z") and e["detected_at"] >= e["timestamp"].rstrip("Z")
    assert trades and books  # the markets the whales trade, followed
