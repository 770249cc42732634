"""KafkaSink with every record kind beyond trades and book tops, against a real Kafka-wire broker
(Tansu): topics, keys, the legacy whale event, exact round trips, replays, crafted values."""

from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta, timezone

import pytest

from ingestd.config import KafkaSinkConfig, parse_config
from ingestd.model import (
    Derivative,
    DexMetric,
    OnchainFlow,
    PredictionBook,
    PredictionTrade,
    Price,
    Trade,
    WhaleTrade,
)
from ingestd.sinks.kafka import KafkaSink
from ingestd.stats import StatsRegistry
from tests import samples
from tests.kafka_server import KafkaServer, kafka_server  # noqa: F401  (fixture)

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
TOPIC_OPTIONS = {
    "trade": "trades_topic", "book": "books_topic", "whale_trade": "whales_topic",
    "prediction_trade": "prediction_trades_topic", "prediction_book": "prediction_books_topic",
    "derivative": "derivatives_topic", "dex_metric": "dex_topic", "onchain_flow": "flows_topic",
    "price": "prices_topic",
}


def us(text: str) -> int:
    return (datetime.fromisoformat(text.replace("Z", "+00:00")) - EPOCH) // timedelta(microseconds=1)


def opt_us(text: str | None) -> int | None:
    return None if text is None else us(text)


def levels(rows: list) -> list[tuple[float, float]]:
    return [tuple(row) for row in rows]


def record_from(v: dict):
    """A message back into its record, independently of the sink's encoder."""
    kind = v["event_type"]
    if kind == "derivative":
        return Derivative(v["venue"], v["symbol"], us(v["timestamp"]), us(v["received_at"]), v["funding_rate"],
                          opt_us(v["next_funding_time"]), v["open_interest"], v["open_interest_value"], v["mark_price"],
                          v["index_price"], v["basis"])
    if kind == "dex_metric":
        return DexMetric(v["chain"], v["pool_address"], us(v["timestamp"]), us(v["received_at"]), v["liquidity"],
                         v["tvl_usd"], v["volume_24h_usd"], v["price"], v["depth_2pct_usd"])
    if kind == "onchain_flow":
        return OnchainFlow(v["chain"], v["block_number"], v["block_hash"], v["tx_hash"], v["log_index"],
                           us(v["timestamp"]), us(v["received_at"]), v["token"], v["from_addr"], v["to_addr"],
                           v["amount"], v["from_tag"], v["to_tag"])
    if kind == "price":
        return Price(v["source"], v["coin_id"], v["symbol"], us(v["timestamp"]), us(v["received_at"]), v["price_usd"],
                     v["market_cap"], v["market_cap_rank"], v["total_volume"], v["high_24h"], v["low_24h"],
                     v["price_change_24h"], v["price_change_pct_24h"], v["circulating_supply"])
    if kind == "prediction_book":
        return PredictionBook(v["venue"], v["market_id"], v["asset_id"], us(v["timestamp"]), us(v["received_at"]),
                              v["hash"], v["best_bid"], v["best_ask"], levels(v["bids"]), levels(v["asks"]))
    if kind == "prediction_trade":
        return PredictionTrade(v["venue"], v["market_id"], v["asset_id"], us(v["timestamp"]), us(v["received_at"]),
                               v["price"], v["size"], v["side"], v["tx_hash"], v["fee_rate_bps"])
    if kind == "whale_trade":
        return WhaleTrade(v["trade_id"], v["trader_address"], v["market_id"], v["token_id"], v["side"], v["size"],
                          v["price"], v["amount"], us(v["timestamp"]), us(v["detected_at"]), v.get("pseudonym"),
                          v.get("title"), v.get("outcome"))
    raise AssertionError(kind)


def expected_back(record):
    """What a message can give back: the whale event's detected_at is milliseconds (the legacy format)."""
    if isinstance(record, WhaleTrade):
        return WhaleTrade(*[getattr(record, f) for f in record.__struct_fields__[:9]], record.detected_us // 1000 * 1000,
                          record.pseudonym, record.title, record.outcome)
    return record


class Topics:
    def __init__(self, server: KafkaServer) -> None:
        self.of = {kind: server.unique_topic(kind.replace("_", "-")) for kind in TOPIC_OPTIONS}
        self.checkpoints = server.unique_topic("checkpoints")

    def config(self, server: KafkaServer, **kw) -> KafkaSinkConfig:
        topics = {option: self.of[kind] for kind, option in TOPIC_OPTIONS.items()}
        return KafkaSinkConfig(name="bus", type="kafka", bootstrap_servers=(server.bootstrap,), delivery_timeout_s=10.0,
                               **{**topics, **kw})


@pytest.fixture
def topics(kafka_server) -> Topics:
    return Topics(kafka_server)


@pytest.fixture
def stats() -> StatsRegistry:
    return StatsRegistry("test")


@pytest.fixture
def make_sink(kafka_server, topics, stats):
    sinks = []

    def make(stats: StatsRegistry | None = stats, **kw) -> KafkaSink:
        sink = KafkaSink("bus", topics.config(kafka_server), stats=stats, checkpoints_topic=topics.checkpoints, **kw)
        sink.open()
        sinks.append(sink)
        return sink

    yield make
    for sink in sinks:
        sink.close()


def messages(server: KafkaServer, topics: Topics, kind: str) -> list:
    return server.read_all(topics.of[kind])


def counters(stats: StatsRegistry) -> dict[str, int]:
    return {k.removeprefix("sink.bus."): v for k, v in stats.counters.items()}


# --- shapes, topics, keys --------------------------------------------------------------------------


def test_every_kind_round_trips_through_its_own_topic_and_key(kafka_server, topics, make_sink, stats):
    batch = [record for i in range(5) for record in samples.one_of_each_new_kind(i)]
    make_sink().write(batch)
    keys = {
        "derivative": b"bybit:BTCUSDT", "dex_metric": b"ethereum:0x88e6a0c2ddd26feeb64f039a2c41296fcb3f5640",
        "onchain_flow": b"ethereum:0xa0b86991c6218b36c1d19d4a2e9eb0ce3606eb48", "price": b"coingecko:bitcoin",
        "prediction_book": b"polymarket:" + b"7" * 77, "prediction_trade": b"polymarket:" + b"7" * 77,
        "whale_trade": b"polymarket:0x1f2dd6d473f3e824cd2f8a89d9c69fb96f6ad0cf",
    }
    for kind, key in keys.items():
        got = messages(kafka_server, topics, kind)
        assert {m.key for m in got} == {key}, kind
        values = [json.loads(m.value) for m in got]
        assert all(list(v)[0] == "event_type" and v["event_type"] == kind for v in values)
        assert [record_from(v) for v in values] == [expected_back(r) for r in batch if r.KIND == kind], kind
    assert messages(kafka_server, topics, "trade") == [] and messages(kafka_server, topics, "book") == []
    assert counters(stats)["rows_written"] == 35


def test_whale_events_have_the_legacy_shape(kafka_server, topics, make_sink):
    bare = WhaleTrade("0x123", "0x1f2dd6d473f3e824cd2f8a89d9c69fb96f6ad0cf", "0xabc", "1234", "BUY", 1000.0, 0.54,
                      540.0, 1_730_464_496_000_000, 1_730_464_496_123_456)
    named = WhaleTrade("0x124", bare.trader_address, "0xabc", "1234", "SELL", 500.0, 0.56, 280.0,
                       1_730_464_500_000_000, 1_730_464_500_050_000, pseudonym="Whale-1", title=None, outcome="Yes")
    make_sink().write([bare, named])
    first, second = [m.value.decode() for m in messages(kafka_server, topics, "whale_trade")]
    assert first == (  # the seed's example, byte for byte apart from its values' JSON spacing
        '{"event_type":"whale_trade","trade_id":"0x123",'
        '"trader_address":"0x1f2dd6d473f3e824cd2f8a89d9c69fb96f6ad0cf","market_id":"0xabc","token_id":"1234",'
        '"side":"BUY","size":1000.0,"price":0.54,"amount":540.0,"timestamp":"2024-11-01T12:34:56Z",'
        '"detected_at":"2024-11-01T12:34:56.123Z"}'
    )
    assert json.loads(second)["pseudonym"] == "Whale-1" and json.loads(second)["outcome"] == "Yes"
    assert "title" not in json.loads(second)


def test_default_topics():
    cfg = parse_config('[sinks.k]\ntype = "kafka"\n').sinks["k"]
    topics = KafkaSink("k", cfg)._topics
    assert topics == {
        "trade": "market_trades", "book": "order_books", "whale_trade": "whale_activity",
        "prediction_trade": "market_trades", "prediction_book": "order_books", "derivative": "derivatives",
        "dex_metric": "dex_metrics", "onchain_flow": "onchain_flows", "price": "prices",
    }


def test_prediction_and_exchange_trades_can_share_a_topic(kafka_server, topics, stats):
    shared = kafka_server.unique_topic("shared")
    cfg = topics.config(kafka_server, trades_topic=shared, prediction_trades_topic=shared)
    sink = KafkaSink("bus", cfg, stats=stats, checkpoints_topic=topics.checkpoints)
    sink.open()
    trade = Trade("binance", "BTCUSDT", 7, 1.0, 2.0, "buy", samples.T0, samples.T0)
    try:
        sink.write([trade, samples.prediction_trade(0)])
    finally:
        sink.close()
    assert sorted(json.loads(m.value)["event_type"] for m in kafka_server.read_all(shared)) == [
        "market_trade", "prediction_trade"]
    again = KafkaSink("bus", cfg, stats=stats, checkpoints_topic=topics.checkpoints)
    again.open()  # the read-back tells the two kinds apart
    try:
        again.write([trade, samples.prediction_trade(0)])
    finally:
        again.close()
    assert len(kafka_server.read_all(shared)) == 2 and counters(stats)["duplicates_skipped"] == 2


# --- replays ----------------------------------------------------------------------------------------


def test_a_replayed_batch_adds_nothing_in_the_same_process_or_the_next(kafka_server, topics, make_sink, stats):
    batch = [record for i in range(30) for record in samples.one_of_each_new_kind(i)]
    make_sink().write(batch)
    make_sink().write(list(reversed(batch)))  # the same sink ...
    later = make_sink()  # ... and a new one, which learns what is there from the broker
    for kind in ("derivative", "dex_metric", "onchain_flow", "price", "prediction_book", "prediction_trade",
                 "whale_trade"):
        record = next(r for r in batch if r.KIND == kind)
        from ingestd.sinks.kafka import ROUTES

        route = ROUTES[kind]
        assert later.delivered(kind, *route.market(record), route.natural_id(record)), kind
    later.write(batch)
    for kind in TOPIC_OPTIONS:
        assert len(messages(kafka_server, topics, kind)) == (30 if kind not in ("trade", "book") else 0), kind
    c = counters(stats)
    assert c["rows_written"] == 210 and c["duplicates_skipped"] == 420 and "beyond_window" not in c


def test_records_of_one_time_with_different_keys_are_all_sent(kafka_server, topics, make_sink):
    flows = [OnchainFlow("ethereum", 19_000_000, "0x" + "ab" * 32, f"0xtx{i}", i, samples.T0, samples.T0 + 9,
                         "0xtoken", "0x1", "0x2", str(i)) for i in range(4)]
    books = [PredictionBook("polymarket", "m", "42", samples.T0, samples.T0, h, 0.5, 0.6, [], []) for h in ("h1", "h2")]
    sink = make_sink()
    sink.write(flows + books)
    sink.write(flows + books)
    assert len(messages(kafka_server, topics, "onchain_flow")) == 4
    assert len(messages(kafka_server, topics, "prediction_book")) == 2


# --- crafted values --------------------------------------------------------------------------------

CRAFTED = ['BTC"USDT', "ETH\nUSDT", "SOL\\USDT", "DOGE\x00\x1f", "ÉTÉ€", "🐋", "A:B:C", "{symbol}", "x" * 10_000,
           "\u2028\u2029", "'; DROP TABLE ticks; --", ""]


def test_crafted_values_travel_verbatim(kafka_server, topics, make_sink, stats):
    records = []
    for i, text in enumerate(CRAFTED):
        records.append(Derivative("bybit", text, samples.T0 + i, samples.T0, funding_rate=0.1))
        records.append(PredictionTrade("polymarket", text, text, samples.T0 + i, samples.T0, 0.5, 1.0, text, text))
        records.append(WhaleTrade(text, text, text, text, text, 1.0, 0.5, 0.5, samples.T0 + i, samples.T0,
                                  pseudonym=text, title=text))
    make_sink().write(records)
    for kind in ("derivative", "prediction_trade", "whale_trade"):
        got = [record_from(json.loads(m.value)) for m in messages(kafka_server, topics, kind)]
        assert sorted(got, key=repr) == sorted((expected_back(r) for r in records if r.KIND == kind), key=repr)
    assert counters(stats)["rows_written"] == 3 * len(CRAFTED)


def test_records_that_cannot_be_messages_are_refused_with_a_reason(kafka_server, topics, make_sink, stats, caplog):
    batch = [
        samples.price(0),
        Price("coingecko", "bit\ud800coin", "BTC", samples.T0, samples.T0),  # its key is not Unicode
        PredictionTrade("polymarket", "m", "1", samples.T0, samples.T0, 0.5, 1.0, "buy", "0x\udfff"),
        Derivative("bybit", "BTCUSDT", 10**30, 0),  # no calendar has that time
        WhaleTrade("0x1", "0xw", "m", "t", "BUY", 1.0, 0.5, 0.5, samples.T0, samples.T0, title="T" * 2_000_000),
        samples.price(1),
    ]
    with caplog.at_level(logging.WARNING, logger="ingestd.sinks.kafka"):
        make_sink().write(batch)
    assert [record_from(json.loads(m.value)) for m in messages(kafka_server, topics, "price")] == [
        samples.price(0), samples.price(1)]
    assert messages(kafka_server, topics, "prediction_trade") == [] and messages(kafka_server, topics, "whale_trade") == []
    assert counters(stats)["records_refused"] == 4
    for reason in ("not valid Unicode", "surrogates not allowed", "out of range"):
        assert reason in caplog.text
    assert "refused 1 more records" in caplog.text and len(caplog.text) < 5000  # the 2 MB title is not logged
