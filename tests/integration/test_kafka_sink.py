"""KafkaSink against a real Kafka-wire broker (Tansu): shapes, keys, delivery, duplicates, outages."""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest

from ingestd.config import KafkaSinkConfig
from ingestd.model import BookTop, Checkpoint, Trade, spread_bps
from ingestd.sinks.base import SinkError
from ingestd.sinks.kafka import KafkaSink
from ingestd.stats import StatsRegistry
from tests.kafka_server import KafkaServer, kafka_server, private_kafka_server  # noqa: F401  (fixtures)

REPO = Path(__file__).resolve().parents[2]
T0 = 1_700_000_000_123_456  # 2023-11-14T22:13:20.123456Z


def trade(trade_id: int, symbol: str = "BTCUSDT", venue: str = "binance", **kw) -> Trade:
    fields = dict(price=65_000.0 + trade_id, qty=0.5, side="buy", ts_us=T0 + trade_id * 1000,
                  recv_us=T0 + trade_id * 1000 + 800)
    fields.update(kw)
    return Trade(venue, symbol, trade_id, **fields)


def book(update_id: int, symbol: str = "BTCUSDT", venue: str = "binance") -> BookTop:
    bids = [(100.0 - i * 0.5, 1.0 + i) for i in range(5)]
    asks = [(100.5 + i * 0.5, 2.0 + i) for i in range(5)]
    return BookTop(
        venue, symbol, update_id, T0, T0 + 500, bids[0][0], bids[0][1], asks[0][0], asks[0][1],
        spread_bps(bids[0][0], asks[0][0]), bids, asks,
    )


class Topics:
    """Per-test topic names, so tests sharing the session broker never see each other's messages."""

    def __init__(self, server: KafkaServer, partitions: int = 1) -> None:
        self.trades = server.unique_topic("trades")
        self.books = server.unique_topic("books")
        self.whales = server.unique_topic("whales")
        self.checkpoints = server.unique_topic("checkpoints")
        for topic in (self.trades, self.books):
            server.create_topic(topic, partitions)


def make_sink(server: KafkaServer, topics: Topics, stats: StatsRegistry | None = None, *, name: str = "bus",
              delivery_timeout_s: float = 10.0, **kwargs) -> KafkaSink:
    cfg = KafkaSinkConfig(
        name=name, type="kafka", bootstrap_servers=(server.bootstrap,), trades_topic=topics.trades,
        books_topic=topics.books, whales_topic=topics.whales, delivery_timeout_s=delivery_timeout_s,
    )
    return KafkaSink(name, cfg, stats=stats, checkpoints_topic=topics.checkpoints, **kwargs)


def counters(stats: StatsRegistry, name: str = "bus") -> dict[str, int]:
    prefix = f"sink.{name}."
    return {k[len(prefix):]: v for k, v in stats.counters.items() if k.startswith(prefix)}


def trade_ids(server: KafkaServer, topic: str) -> Counter:
    return Counter((json.loads(m.value)["symbol"], json.loads(m.value)["trade_id"]) for m in server.read_all(topic))


@pytest.fixture
def stats() -> StatsRegistry:
    return StatsRegistry("test")


@pytest.fixture
def topics(kafka_server) -> Topics:
    return Topics(kafka_server, partitions=3)


@pytest.fixture
def sink(kafka_server, topics, stats):
    s = make_sink(kafka_server, topics, stats)
    s.open()
    yield s
    s.close()


# --- shapes and keys -----------------------------------------------------------------------------


def test_messages_have_the_documented_shapes_keys_and_topics(kafka_server, topics, sink):
    t = Trade("binance", "BTCUSDT", 3141592, 65000.1, 0.012, "sell", 1730464496123456, 1730464496125999)
    b = book(987654)
    sink.write([t, b, Checkpoint("binance", "BTCUSDT", 3141592)])

    [tm] = kafka_server.read_all(topics.trades)
    assert tm.key == b"binance:BTCUSDT"
    assert json.loads(tm.value) == {
        "event_type": "market_trade", "venue": "binance", "symbol": "BTCUSDT", "trade_id": 3141592,
        "side": "sell", "price": 65000.1, "size": 0.012, "amount": 65000.1 * 0.012,
        "timestamp": "2024-11-01T12:34:56.123Z", "timestamp_ms": 1730464496123,
        "received_at": "2024-11-01T12:34:56.125Z",
    }
    assert list(json.loads(tm.value))[0] == "event_type"

    [bm] = kafka_server.read_all(topics.books)
    assert bm.key == b"binance:BTCUSDT"
    assert json.loads(bm.value) == {
        "event_type": "order_book", "venue": "binance", "symbol": "BTCUSDT", "update_id": 987654,
        "timestamp": "2023-11-14T22:13:20.123Z", "timestamp_ms": T0 // 1000,
        "received_at": "2023-11-14T22:13:20.123Z",
        "best_bid": 100.0, "best_bid_size": 1.0, "best_ask": 100.5, "best_ask_size": 2.0,
        "spread_bps": b.spread_bps,
        "bids": [list(level) for level in b.bids], "asks": [list(level) for level in b.asks],
    }

    # The checkpoint is not market data: only in the internal topic.
    [cm] = kafka_server.read_all(topics.checkpoints)
    assert cm.key == b"binance:BTCUSDT"
    value = json.loads(cm.value)
    assert {k: value[k] for k in ("event_type", "venue", "symbol", "trade_id")} == {
        "event_type": "checkpoint", "venue": "binance", "symbol": "BTCUSDT", "trade_id": 3141592,
    }
    assert value["updated_at"].endswith("Z")
    assert kafka_server.read_all(topics.whales) == []


def test_every_record_of_a_batch_is_delivered_one_market_per_partition_in_order(kafka_server, topics, sink, stats):
    symbols = [f"SYM{i:02d}USDT" for i in range(20)]
    batch = [trade(i // 20, symbols[i % 20]) for i in range(5000)] + [book(u, s) for u in range(10) for s in symbols]
    sink.write(batch)

    messages = kafka_server.read_all(topics.trades)
    assert len(messages) == 5000
    seen: dict[bytes, list[int]] = {}
    partition_of: dict[bytes, int] = {}
    for m in messages:
        v = json.loads(m.value)
        assert m.key == f"binance:{v['symbol']}".encode()
        assert partition_of.setdefault(m.key, m.partition) == m.partition  # a market stays in one partition
        seen.setdefault(m.key, []).append(v["trade_id"])
    assert len(set(partition_of.values())) > 1  # 20 markets spread over the 3 partitions
    for key, ids in seen.items():
        assert ids == list(range(250)), key  # all, once, in order
    assert len(kafka_server.read_all(topics.books)) == 200
    assert counters(stats) == {"rows_written": 5200, "duplicates_skipped": 0, "batches": 1}


def test_partitions_match_the_java_default_partitioner(kafka_server, topics, sink):
    """Other clients (Java, librdkafka with murmur2_random) put a market's key in the same partition."""
    from kafka.partitioner import murmur2

    symbols = [f"SYM{i}" for i in range(30)]
    sink.write([trade(1, s) for s in symbols])
    for m in kafka_server.read_all(topics.trades):
        assert m.partition == (murmur2(m.key) & 0x7FFFFFFF) % 3


# --- duplicates --------------------------------------------------------------------------------------


def test_a_retried_batch_and_duplicates_inside_a_batch_are_stored_once(kafka_server, topics, sink, stats):
    batch = [trade(i) for i in range(100)] + [trade(5), book(1), book(1)]
    sink.write(batch)
    sink.write(batch)
    assert trade_ids(kafka_server, topics.trades) == Counter({("BTCUSDT", i): 1 for i in range(100)})
    assert len(kafka_server.read_all(topics.books)) == 1
    assert counters(stats) == {"rows_written": 101, "duplicates_skipped": 2 + 103, "batches": 2}


def test_a_new_instance_skips_what_an_earlier_one_delivered(kafka_server, topics, stats):
    """A spool replay after a restart (same batch) and a resume that refetches (overlapping batch)."""
    first = make_sink(kafka_server, topics)
    first.open()
    first.write([trade(i, s) for i in range(500) for s in ("A", "B")] + [book(7), Checkpoint("binance", "A", 400)])
    first.close()

    second = make_sink(kafka_server, topics, stats)
    second.open()
    try:
        assert second.resume_points("binance") == {"A": 400}
        assert second.resume_points("bybit") == {}
        assert second.delivered("trade", "binance", "A", 499) and second.delivered("book", "binance", "BTCUSDT", 7)
        # Replay of the very same batch: nothing new.
        second.write([trade(i, s) for i in range(500) for s in ("A", "B")] + [book(7)])
        # A resume from the checkpoint refetches 401.. and goes on with new trades.
        second.write([trade(i, "A") for i in range(401, 700)])
    finally:
        second.close()

    ids = trade_ids(kafka_server, topics.trades)
    assert ids == Counter({**{("A", i): 1 for i in range(700)}, **{("B", i): 1 for i in range(500)}})
    assert len(kafka_server.read_all(topics.books)) == 1
    c = counters(stats)
    assert c["rows_written"] == 200 and c["duplicates_skipped"] == 1001 + 99
    assert c.get("beyond_window", 0) == 0


def test_kill_9_mid_stream_then_replay_of_everything_stores_each_record_once(kafka_server, topics, tmp_path):
    """A writer process is SIGKILLed while writing; its successor replays every batch (what a spool
    replay plus a resume can amount to). Kafka ends with every record exactly once."""
    script = tmp_path / "writer.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(REPO)!r})
        from tests.integration.test_kafka_sink import batches_for_kill_test
        from ingestd.config import KafkaSinkConfig
        from ingestd.sinks.kafka import KafkaSink
        cfg = KafkaSinkConfig(name="bus", type="kafka", bootstrap_servers=({kafka_server.bootstrap!r},),
                              trades_topic={topics.trades!r}, books_topic={topics.books!r})
        sink = KafkaSink("bus", cfg, checkpoints_topic={topics.checkpoints!r})
        sink.open()
        for n, batch in enumerate(batches_for_kill_test()):
            sink.write(batch)
            print("wrote", n, flush=True)
    """))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=REPO)
    try:
        for line in proc.stdout:
            if line.startswith(b"wrote 3"):
                break
        time.sleep(0.02)  # let batch 4 get under way
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    before = sum(trade_ids(kafka_server, topics.trades).values())
    assert 4 * 1000 <= before < 12 * 1000

    stats = StatsRegistry("test")
    successor = make_sink(kafka_server, topics, stats)
    successor.open()
    try:
        for batch in batches_for_kill_test():
            successor.write(batch)
    finally:
        successor.close()
    ids = trade_ids(kafka_server, topics.trades)
    assert set(ids.values()) == {1} and len(ids) == 12 * 1000
    assert counters(stats)["duplicates_skipped"] == before


def batches_for_kill_test() -> list[list[Trade]]:
    return [[trade(n * 100 + i // 10, f"S{i % 10}") for i in range(1000)] for n in range(12)]


def test_the_window_is_bounded_and_says_when_it_cannot_tell(kafka_server, topics, stats, caplog):
    """The documented limit: a duplicate older than the window is sent again, and counted."""
    first = make_sink(kafka_server, topics)
    first.open()
    first.write([trade(i) for i in range(100)])
    first.close()

    second = make_sink(kafka_server, topics, stats, tail_per_partition=30, dedup_window=1000)
    second.open()
    try:
        with caplog.at_level(logging.WARNING, logger="ingestd.sinks.kafka"):
            second.write([trade(i) for i in range(100)])
    finally:
        second.close()
    # The last 30 were read back and skipped; the 70 before them could not be told apart.
    c = counters(stats)
    assert c["duplicates_skipped"] == 30 and c["rows_written"] == 70 and c["beyond_window"] == 70
    assert "older than the de-duplication window" in caplog.text
    assert sum(trade_ids(kafka_server, topics.trades).values()) == 170

    third = make_sink(kafka_server, topics, StatsRegistry("x"), dedup_window=50)
    third.open()
    try:
        assert len(third._window) == 50  # in memory too, never more than the window
    finally:
        third.close()


def test_checkpoints_only_move_forward(kafka_server, topics, sink):
    sink.write([trade(1), Checkpoint("binance", "BTCUSDT", 10), Checkpoint("binance", "BTCUSDT", 12)])
    sink.write([Checkpoint("binance", "BTCUSDT", 11), Checkpoint("binance", "ETHUSDT", 3)])
    assert sink.resume_points("binance") == {"BTCUSDT": 12, "ETHUSDT": 3}
    stored = [json.loads(m.value)["trade_id"] for m in kafka_server.read_all(topics.checkpoints)]
    assert stored == [12, 3]


def test_an_unknown_record_type_is_a_programming_error(sink):
    with pytest.raises(TypeError):
        sink.write([object()])


# --- crafted values ----------------------------------------------------------------------------------

CRAFTED_SYMBOLS = [
    'BTC"USDT', "ETH\nUSDT", "SOL\\USDT", "DOGE\x00\x1f", "ÉTÉ€", "🐋WHALE", "A:B:C", "",
    "x" * 10_000, "\u2028\u2029", "'; DROP TABLE ticks; --", "<script>alert(1)</script>",
]


def test_crafted_strings_travel_verbatim(kafka_server, topics, sink, stats):
    batch = [trade(i, symbol) for i, symbol in enumerate(CRAFTED_SYMBOLS)]
    batch.append(trade(99, "NANUSDT", price=math.nan, qty=math.inf))
    batch.append(trade(100, "BTCUSDT", side='sell"\n'))
    sink.write(batch)

    got = {}
    for m in kafka_server.read_all(topics.trades):
        v = json.loads(m.value)
        assert m.key == f"binance:{v['symbol']}".encode()
        got[v["symbol"]] = v
    assert set(got) == set(CRAFTED_SYMBOLS) | {"NANUSDT", "BTCUSDT"}
    assert got["NANUSDT"]["price"] is None and got["NANUSDT"]["size"] is None  # JSON has no NaN/inf
    assert got["BTCUSDT"]["side"] == 'sell"\n'
    assert counters(stats)["rows_written"] == len(batch)


def test_records_that_cannot_be_messages_are_refused_and_logged_the_rest_is_written(kafka_server, topics, sink,
                                                                                     stats, caplog):
    huge = "H" * 2_000_000
    batch = [
        trade(1),
        trade(2, huge),  # over max_record_bytes
        trade(3, "BAD\ud800"),  # a lone surrogate is not Unicode: no JSON, no UTF-8 key
        trade(4, ts_us=10**30),  # beyond any calendar the C library knows
        trade(5),
        Checkpoint("binance", "BTCUSDT", 5),
    ]
    with caplog.at_level(logging.WARNING, logger="ingestd.sinks.kafka"):
        sink.write(batch)
    assert trade_ids(kafka_server, topics.trades) == Counter({("BTCUSDT", 1): 1, ("BTCUSDT", 5): 1})
    assert counters(stats)["records_refused"] == 3
    assert "exceeds max_record_bytes" in caplog.text and "not valid Unicode" in caplog.text
    assert len(caplog.text) < 5000  # the 2 MB symbol is not copied into the log
    assert "\n'" not in caplog.text
    assert sink.resume_points("binance") == {"BTCUSDT": 5}
    # Refusal is final: a retry of the batch does not fail, and does not double the good ones.
    sink.write(batch)
    assert sum(trade_ids(kafka_server, topics.trades).values()) == 2


def test_a_record_the_broker_rejects_for_good_is_refused_and_does_not_block_its_batch(sink, kafka_server, topics,
                                                                                      stats):
    """Broker-side verdicts (too large for the topic, failed validation) may cover a whole request: the
    records they failed are sent again one by one; the one still rejected alone is refused and
    remembered (a retry of its batch skips it), its neighbours are delivered."""
    from confluent_kafka import KafkaError

    real_produce = sink._produce
    verdicts = {"NEIGHBOUR": 1}  # the neighbour fails once, with the request it shared with the poison

    def produce(topic, value, key, **kw):  # the broker's verdicts, as librdkafka reports them
        if b"POISON" in key or verdicts.get(key.decode().split(":")[1], 0) > 0:
            verdicts["NEIGHBOUR"] = 0
            sink._delivery_errors.reports.append((KafkaError(KafkaError.INVALID_RECORD), topic, key, value))
            return None
        return real_produce(topic, value, key, **kw)

    sink._produce = produce
    batch = [trade(1, "A"), trade(2, "POISON"), trade(3, "NEIGHBOUR")]
    sink.write(batch)
    assert trade_ids(kafka_server, topics.trades) == Counter({("A", 1): 1, ("NEIGHBOUR", 3): 1})
    sink.write(batch)  # a retry of the whole batch: the poison is skipped without another try
    assert trade_ids(kafka_server, topics.trades) == Counter({("A", 1): 1, ("NEIGHBOUR", 3): 1})
    c = counters(stats)
    assert c["records_refused"] == 2 and c["rows_written"] == 2 and c["duplicates_skipped"] == 2


def test_client_errors_while_isolating_a_rejected_request_are_sink_errors(sink, kafka_server, topics, stats):
    """The one-by-one resend after a broker verdict meets a full queue, then a client failure: write()
    raises SinkError (what the pipeline retries and spools), never the client's own exceptions."""
    from confluent_kafka import KafkaError, KafkaException

    real_produce = sink._produce
    calls = []

    def produce(topic, value, key, **kw):
        if b"SUSPECT" in key:
            calls.append(key)
            if len(calls) == 1:  # the batch's request is rejected as a whole
                sink._delivery_errors.reports.append((KafkaError(KafkaError.INVALID_RECORD), topic, key, value))
                return None
            if len(calls) == 2:
                raise BufferError("Local: Queue full")
            raise KafkaException(KafkaError(KafkaError._TRANSPORT))
        return real_produce(topic, value, key, **kw)

    sink._produce = produce
    batch = [trade(1, "A"), trade(2, "SUSPECT"), trade(3, "B")]
    with pytest.raises(SinkError, match="producing to"):
        sink.write(batch)
    assert len(calls) == 3
    sink.write(batch)  # a fresh producer: the pipeline's retry
    assert trade_ids(kafka_server, topics.trades) == Counter({("A", 1): 1, ("SUSPECT", 2): 1, ("B", 3): 1})


def test_a_transient_failure_fails_the_write_and_a_retry_sends_the_rest(sink, kafka_server, topics, stats):
    from confluent_kafka import KafkaError

    real_produce = sink._produce

    def produce(topic, value, key, **kw):
        if b"FLAKY" in key:
            sink._delivery_errors.reports.append((KafkaError(KafkaError.NOT_ENOUGH_REPLICAS), topic, key, value))
            return None
        return real_produce(topic, value, key, **kw)

    sink._produce = produce
    batch = [trade(1, "A"), trade(2, "FLAKY"), trade(3, "B")]
    with pytest.raises(SinkError, match="1 of 3 records not acknowledged"):
        sink.write(batch)
    sink.write(batch)  # a fresh producer: the pipeline's retry
    assert trade_ids(kafka_server, topics.trades) == Counter({("A", 1): 1, ("FLAKY", 2): 1, ("B", 3): 1})
    assert counters(stats)["rows_written"] == 3


# --- outages -------------------------------------------------------------------------------------------


def test_broker_down_write_fails_within_the_delivery_timeout_then_succeeds(private_kafka_server, stats):
    server = private_kafka_server
    topics = Topics(server, partitions=2)
    sink = make_sink(server, topics, stats, delivery_timeout_s=2.0)
    sink.open()
    try:
        sink.write([trade(i) for i in range(100)])
        before = trade_ids(server, topics.trades)  # what a consumer read before the outage
        assert len(before) == 100

        server.stop()
        outage = [trade(i) for i in range(100, 300)] + [Checkpoint("binance", "BTCUSDT", 299)]
        started = time.monotonic()
        with pytest.raises(SinkError):
            sink.write(outage)
        assert time.monotonic() - started < 2.0 + 1.5
        # Still down: the next attempt (a reconnect) fails as fast.
        started = time.monotonic()
        with pytest.raises(SinkError):
            sink.write(outage)
        assert time.monotonic() - started < 2.0 + 1.5

        server.start()  # memory storage: the new broker holds nothing; topics are auto-created
        sink.write(outage)
        after = trade_ids(server, topics.trades)
    finally:
        sink.close()
    # Every record reached a consumer exactly once, counting before and after the restart.
    assert before + after == Counter({("BTCUSDT", i): 1 for i in range(300)})
    assert sink.resume_points("binance") == {"BTCUSDT": 299}
    assert counters(stats)["rows_written"] == 300


def test_open_fails_cleanly_when_no_broker_answers(tmp_path):
    from tests.kafka_server import free_port

    cfg = KafkaSinkConfig(name="bus", type="kafka", bootstrap_servers=(f"127.0.0.1:{free_port()}",),
                          delivery_timeout_s=1.0)
    sink = KafkaSink("bus", cfg)
    started = time.monotonic()
    with pytest.raises(SinkError):
        sink.open()
    assert time.monotonic() - started < 5
    with pytest.raises(SinkError):
        sink.write([trade(1)])
    sink.close()


@pytest.mark.parametrize("codec", ["none", "snappy", "lz4", "zstd"])
def test_every_codec_delivers_and_is_read_back(kafka_server, codec, stats):
    """librdkafka has every codec built in (kafka-python, which the tests read with, may not: the sink's
    own read-back is the reader here)."""
    topics = Topics(kafka_server)
    cfg = KafkaSinkConfig(name="bus", type="kafka", bootstrap_servers=(kafka_server.bootstrap,), compression=codec,
                          trades_topic=topics.trades, books_topic=topics.books)
    sink = KafkaSink("bus", cfg, stats=stats, checkpoints_topic=topics.checkpoints)
    sink.open()
    try:
        sink.write([trade(i) for i in range(50)] + [Checkpoint("binance", "BTCUSDT", 49)])
    finally:
        sink.close()
    again = KafkaSink("bus", cfg, checkpoints_topic=topics.checkpoints)
    again.open()
    try:
        assert again.delivered("trade", "binance", "BTCUSDT", 0) and again.delivered("trade", "binance", "BTCUSDT", 49)
        assert again.resume_points("binance") == {"BTCUSDT": 49}
    finally:
        again.close()


def test_a_codec_librdkafka_does_not_know_fails_at_open(kafka_server):
    cfg = KafkaSinkConfig(name="bus", type="kafka", bootstrap_servers=(kafka_server.bootstrap,), compression="brotli")
    with pytest.raises(SinkError, match="cannot make a Kafka producer"):
        KafkaSink("bus", cfg).open()


def test_the_pipeline_rides_out_a_broker_restart(private_kafka_server):
    """SinkRunner + KafkaSink: the broker goes away mid-stream and comes back; the runner retries the
    same batch, and every record reaches a consumer once (counted before the stop plus after)."""
    import trio

    from ingestd.pipeline import Router, SinkRunner

    server = private_kafka_server
    topics = Topics(server, partitions=2)
    stats = StatsRegistry("test")
    sink = make_sink(server, topics, stats, delivery_timeout_s=1.0)
    read_before: list[Counter] = []

    async def main() -> None:
        runner = SinkRunner(sink, stats, batch_size=500, linger_s=0.02, retry_base_s=0.05, retry_cap_s=0.3)
        async with trio.open_nursery() as nursery:
            await nursery.start(runner.run)
            router = Router([runner])
            for n in range(40):
                await router.send([trade(n * 50 + i, f"S{i % 5}") for i in range(50)])
                if n == 19:
                    await trio.sleep(0.5)  # let the first half be stored
                    read_before.append(await trio.to_thread.run_sync(trade_ids, server, topics.trades))
                    await trio.to_thread.run_sync(server.stop)
                    nursery.start_soon(restart_later)
                await trio.sleep(0.005)
            await router.aclose()

    async def restart_later() -> None:
        await trio.sleep(2.5)
        await trio.to_thread.run_sync(server.start)

    trio.run(main)
    after = trade_ids(server, topics.trades)
    total = read_before[0] + after
    assert len(total) == 2000 and set(total.values()) == {1}
    assert stats.counters["sink.bus.write_errors"] >= 1
